//! The agent's API over TLS when the cluster has TLS, with its node's server certificate (the
//! one PostgreSQL serves, which the cluster CA signed for the node's names). Handshakes run in
//! tasks of their own, so a client that stalls in one holds up no health check; the certificate
//! is read again when its file changes (`pgrepl tls rotate`), so the API follows a rotation
//! without a restart, as PostgreSQL does on its reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client gets this long to finish its handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);

/// Accepted TCP connections, handed on once their handshake is done.
pub(super) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    /// Serves `cert` and `key` (PEM files, read at each handshake after they change).
    pub(super) fn new(listener: TcpListener, cert: PathBuf, key: PathBuf) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(Reloading {
            cert,
            key,
            provider: provider.clone(),
            loaded: Mutex::new(None),
            failed: Mutex::new(None),
        });
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (done, ready) = mpsc::channel(16);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    // Out of descriptors, say: try again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("API client {peer}: TLS handshake: {e}"),
                        Err(_) => tracing::debug!(
                            "API client {peer}: no TLS handshake within {HANDSHAKE_LIMIT:?}"
                        ),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task holds a sender for as long as it runs, which is until drop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The node's certificate, loaded again when the certificate file's modification time changes.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    loaded: Mutex<Option<(SystemTime, Arc<CertifiedKey>)>>,
    /// The last load's failure, said once (health checks come every 500 ms).
    failed: Mutex<Option<String>>,
}

impl Reloading {
    fn load(&self) -> Result<CertifiedKey, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect())
            .map_err(|e| format!("`{}`: {e}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("`{}`: {e}", self.key.display()))?;
        CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| e.to_string())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut loaded = self.loaded.lock().expect("certificate lock");
        let now = modified(&self.cert);
        let stale = match (&*loaded, now) {
            (Some((at, _)), Some(now)) => *at != now,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if stale {
            let mut failed = self.failed.lock().expect("failure lock");
            match (self.load(), now) {
                (Ok(key), Some(at)) => {
                    *loaded = Some((at, Arc::new(key)));
                    *failed = None;
                }
                (Err(e), _) => {
                    if failed.as_ref() != Some(&e) {
                        tracing::warn!("the HTTP API cannot use its certificate: {e}");
                        *failed = Some(e);
                    }
                }
                (Ok(_), None) => {}
            }
        }
        loaded.as_ref().map(|(_, key)| key.clone())
    }
}
