//! tokio-postgres over TLS for the tests' own SQL sessions (the writers): a server whose
//! pg_hba admits password logins from other machines only over `hostssl` wants it. The
//! server's certificate is checked against the cluster CA and the host dialled.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

/// Connects with TLS when the server offers it (`sslmode=prefer`, libpq's default), trusting
/// only `ca`.
#[derive(Clone)]
pub(crate) struct Tls(Arc<rustls::ClientConfig>);

impl Tls {
    pub(crate) fn trusting(ca: &Path) -> Tls {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("the cluster CA") {
            roots.add(cert.expect("a PEM certificate")).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Tls(Arc::new(config))
    }
}

impl MakeTlsConnect<Socket> for Tls {
    type Stream = Stream;
    type TlsConnect = Connect;
    type Error = io::Error;

    /// `host` is empty for a Unix socket, where the server offers no TLS (`prefer` goes on in
    /// clear, and this is never asked to connect).
    fn make_tls_connect(&mut self, host: &str) -> io::Result<Connect> {
        Ok(Connect(
            self.0.clone(),
            ServerName::try_from(host.to_owned()).ok(),
        ))
    }
}

pub(crate) struct Connect(Arc<rustls::ClientConfig>, Option<ServerName<'static>>);

impl TlsConnect<Socket> for Connect {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<Stream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        let Connect(config, name) = self;
        Box::pin(async move {
            let name = name.ok_or_else(|| io::Error::other("TLS to a host without a name"))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            Ok(Stream(connector.connect(name, socket).await?))
        })
    }
}

pub(crate) struct Stream(tokio_rustls::client::TlsStream<Socket>);

impl tokio_postgres::tls::TlsStream for Stream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
