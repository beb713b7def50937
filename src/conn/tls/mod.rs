//! SSLRequest negotiation and TLS (rustls), with libpq's `sslmode` rules.
//!
//! The rules are libpq's, so that a connection string means the same to pgrepl as to psql:
//!
//! - `disable`, `allow`: no SSLRequest. (libpq's `allow` tries TLS only after a plain attempt is
//!   refused, which a server that accepts plain connections never does.)
//! - `prefer`: TLS when the server offers it, the certificate unchecked; plain otherwise.
//! - `require`: TLS or fail, the certificate unchecked; but when a root certificate file exists
//!   (`sslrootcert`, else `~/.postgresql/root.crt`) it is checked as for `verify-ca`.
//! - `verify-ca`: the certificate chain must lead to a CA in the root certificate file, or the
//!   certificate must be self-signed and in that file itself (OpenSSL accepts both).
//! - `verify-full`: as `verify-ca`, and the certificate must name the host, matched as libpq
//!   matches it (subjectAltName DNS and IP entries, else the Common Name; `*.` covers one label).
//!
//! `sslrootcert=system` means OpenSSL's default CA file (`SSL_CERT_FILE`, else the distribution's
//! bundle) and, as in libpq, only goes with `verify-full`.
//!
//! Handshake signatures are always checked, even when the certificate is not: they prove the
//! server holds the key of the certificate whose hash SCRAM channel binding then sends, which is
//! what lets `channel_binding` catch a man in the middle under `prefer` and `require`.
//!
//! Not supported: client certificates (`sslcert`, `sslkey`), CRLs, OpenSSL's CA directories,
//! direct TLS (`sslnegotiation=direct`), and libpq's plaintext retry after a failed `prefer`
//! handshake.
//!
//! Files: `names` checks host names (verify-full), `binding` computes the channel-binding hash,
//! `sql` adapts all this to tokio-postgres for SQL sessions.
//!
//! Neighbours: `socket` wraps the stream made here; `auth` uses the channel-binding hash.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, verify_tls13_signature_with_raw_key,
    CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate, X509Version};

mod binding;
mod names;
mod sql;

use self::binding::tls_server_end_point;
use self::names::check_host_name;
use self::sql::SqlTls;

use super::config::SslMode;
use super::socket::Socket;
use super::{ConnectOptions, ConnectionError};

/// The server's one-byte answers to SSLRequest.
/// <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-SSL>
const SSL_ACCEPTED: u8 = b'S';
const SSL_REFUSED: u8 = b'N';
/// Sent instead when the server fails before answering (fork failure, too many connections).
const SSL_ERROR_RESPONSE: u8 = b'E';

/// The ALPN name PostgreSQL 17 registered. libpq 17 offers it; older servers ignore the extension.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Where libpq looks for the CA when `sslrootcert` is not set, relative to the home directory.
const DEFAULT_ROOT_CERT: &str = ".postgresql/root.crt";

/// `sslrootcert=system` without `SSL_CERT_FILE`: the CA bundles of the common distributions
/// (Debian/Ubuntu/Arch, Fedora/RHEL, openSUSE, Alpine/BSD), where OpenSSL's default file points.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Negotiates encryption per `sslmode`. Returns the socket to speak the protocol on and, for TLS,
/// the `tls-server-end-point` channel-binding hash of the server certificate.
pub(super) async fn negotiate(
    mut tcp: TcpStream,
    options: &ConnectOptions,
    host: &str,
) -> Result<(Socket, Option<Vec<u8>>), ConnectionError> {
    // libpq refuses this combination whatever the mode: trusting every public CA is only safe
    // when the host name is checked as well.
    if is_system(options) && !matches!(options.sslmode, SslMode::VerifyFull) {
        return Err(ConnectionError::Tls(format!(
            "sslmode={} may not be used with sslrootcert=system; use sslmode=verify-full",
            options.sslmode
        )));
    }
    if matches!(options.sslmode, SslMode::Disable | SslMode::Allow) {
        return Ok((Socket::Tcp(tcp), None));
    }
    // Read the root certificates before saying anything, so a configuration mistake is reported
    // as such and not after a round trip.
    let check = CertCheck::for_options(options).await?;

    let mut request = bytes::BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut request);
    tcp.write_all(&request)
        .await
        .map_err(ConnectionError::io("send SSLRequest"))?;
    // Exactly one byte: whatever follows it belongs to the TLS handshake (see below).
    let answer = match tcp.read_u8().await {
        Ok(answer) => answer,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ConnectionError::Closed),
        Err(e) => return Err(ConnectionError::io("read the answer to SSLRequest")(e)),
    };
    match answer {
        SSL_ACCEPTED => {}
        SSL_REFUSED if matches!(options.sslmode, SslMode::Prefer) => return Ok((Socket::Tcp(tcp), None)),
        SSL_REFUSED => {
            return Err(ConnectionError::Tls(format!(
                "sslmode={} but the server does not support SSL",
                options.sslmode
            )))
        }
        // libpq fails here too (it never falls back to plain on 'E'). The message that follows is
        // not read: nothing has authenticated the server yet, so its text proves nothing.
        SSL_ERROR_RESPONSE => {
            return Err(ConnectionError::Tls(
                "the server answered SSLRequest with an error (too many connections? out of memory?); \
                 its server log has the reason"
                    .into(),
            ))
        }
        other => {
            return Err(ConnectionError::Tls(format!(
                "the server answered SSLRequest with `{}` instead of `S` or `N`; is this a PostgreSQL server?",
                std::ascii::escape_default(other)
            )))
        }
    }
    // CVE-2021-23222: a man in the middle can append plaintext to the 'S' so that it is read as
    // if it had come through TLS. Nothing of it is buffered here (the answer was read alone), but
    // data already waiting means someone other than the server wrote it: refuse, as libpq does.
    let mut probe = [0u8; 1];
    match tcp.try_read(&mut probe) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Ok(0) => return Err(ConnectionError::Closed),
        Ok(_) => {
            return Err(ConnectionError::Tls(
                "received unencrypted data after the server accepted SSL (a man in the middle?)"
                    .into(),
            ))
        }
        Err(e) => {
            return Err(ConnectionError::io("read after the answer to SSLRequest")(
                e,
            ))
        }
    }

    let root_file = check.root_file().map(Path::to_path_buf);
    let mut config = client_config(check, host)?;
    let (server_name, sni) = server_name(host);
    // libpq sends SNI only for names, never for literal addresses (RFC 6066 §3).
    config.enable_sni = sni;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| handshake_error(e, root_file.as_deref()))?;

    let binding = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| tls_server_end_point(leaf));
    if binding.is_none() {
        tracing::debug!("server certificate has no usable hash for channel binding; SCRAM-SHA-256-PLUS not offered");
    }
    Ok((Socket::Tls(Box::new(tls)), binding))
}

/// The TLS side of an SQL session (tokio-postgres): the same sslmode rules and certificate
/// checks as [`negotiate`], with tokio-postgres sending the SSLRequest. `None` when `sslmode`
/// asks for no encryption or the host is a socket directory (no TLS there, as in libpq).
pub(super) async fn sql_connector(
    options: &ConnectOptions,
) -> Result<Option<SqlTls>, ConnectionError> {
    if is_system(options) && !matches!(options.sslmode, SslMode::VerifyFull) {
        return Err(ConnectionError::Tls(format!(
            "sslmode={} may not be used with sslrootcert=system; use sslmode=verify-full",
            options.sslmode
        )));
    }
    let host = match &options.host {
        super::config::Host::Tcp(host) => host,
        super::config::Host::Unix(_) => return Ok(None),
    };
    if matches!(options.sslmode, SslMode::Disable | SslMode::Allow) {
        return Ok(None);
    }
    let check = CertCheck::for_options(options).await?;
    let mut config = client_config(check, host)?;
    let (server_name, sni) = server_name(host);
    config.enable_sni = sni;
    Ok(Some(SqlTls {
        config: Arc::new(config),
        server_name,
    }))
}

/// What to check of the server certificate.
enum CertCheck {
    /// Only the handshake signatures (`prefer`, `require` without a root file).
    Nothing,
    /// The chain against `roots`, and for verify-full the host name.
    Verify {
        roots: RootCertStore,
        /// The file's certificates as they were, to recognise a self-signed server certificate.
        pinned: Vec<CertificateDer<'static>>,
        file: PathBuf,
        host_name: bool,
    },
}

impl CertCheck {
    async fn for_options(options: &ConnectOptions) -> Result<CertCheck, ConnectionError> {
        let mode = &options.sslmode;
        let host_name = matches!(mode, SslMode::VerifyFull);
        let must_verify = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
        // libpq checks the chain in any mode once a root file exists; pgrepl keeps `prefer`
        // unchecked because it cannot retry in plaintext when that check fails, as libpq would.
        if !must_verify && !matches!(mode, SslMode::Require) {
            return Ok(CertCheck::Nothing);
        }
        if is_system(options) {
            let (roots, file) = system_roots().await?;
            return Ok(CertCheck::Verify {
                roots,
                pinned: Vec::new(),
                file,
                host_name,
            });
        }
        let explicit = options.sslrootcert.as_deref();
        let file = match explicit {
            Some(path) => path.to_path_buf(),
            None => match crate::os_user::home_dir() {
                Some(home) => home.join(DEFAULT_ROOT_CERT),
                None if must_verify => {
                    return Err(ConnectionError::Tls(format!(
                        "sslmode={mode} needs the CA that signed the server certificate: set sslrootcert \
                         (there is no home directory to look for `~/{DEFAULT_ROOT_CERT}` in)"
                    )))
                }
                None => return Ok(CertCheck::Nothing),
            },
        };
        let exists = tokio::fs::try_exists(&file)
            .await
            .map_err(ConnectionError::io(format!(
                "look for root certificate file `{}`",
                file.display()
            )))?;
        if !exists {
            if !must_verify {
                // libpq's rule: with `require`, a missing root file just means no verification.
                tracing::debug!(file = %file.display(), "no root certificate file; server certificate not verified");
                return Ok(CertCheck::Nothing);
            }
            return Err(ConnectionError::Tls(match explicit {
                Some(_) => format!(
                    "root certificate file `{}` (sslrootcert) does not exist; sslmode={mode} needs the CA \
                     that signed the server certificate there",
                    file.display()
                ),
                None => format!(
                    "sslmode={mode} needs the CA that signed the server certificate: put it in `{}` \
                     or point sslrootcert at it",
                    file.display()
                ),
            }));
        }
        let (roots, pinned) = load_roots(&file, false).await?;
        Ok(CertCheck::Verify {
            roots,
            pinned,
            file,
            host_name,
        })
    }

    fn root_file(&self) -> Option<&Path> {
        match self {
            CertCheck::Nothing => None,
            CertCheck::Verify { file, .. } => Some(file),
        }
    }
}

fn is_system(options: &ConnectOptions) -> bool {
    options.sslrootcert.as_deref() == Some(Path::new("system"))
}

/// The CA bundle for `sslrootcert=system`.
async fn system_roots() -> Result<(RootCertStore, PathBuf), ConnectionError> {
    let file = system_ca_file().map_err(|looked| {
        ConnectionError::Tls(format!(
            "sslrootcert=system but no system CA bundle was found (looked for {looked}); \
             install the distribution's CA certificates or set SSL_CERT_FILE"
        ))
    })?;
    let (roots, _) = load_roots(&file, true).await?;
    Ok((roots, file))
}

/// `SSL_CERT_FILE`, else the first of [`SYSTEM_CA_FILES`] that exists; when none does, the
/// files looked for, for the message.
pub(crate) fn system_ca_file() -> Result<PathBuf, String> {
    if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
        return Ok(PathBuf::from(file));
    }
    SYSTEM_CA_FILES
        .iter()
        .map(PathBuf::from)
        .find(|f| f.exists())
        .ok_or_else(|| {
            SYSTEM_CA_FILES
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        })
}

/// All certificates in a PEM file. A file the user chose is refused whole for one unusable
/// certificate, as OpenSSL would refuse it; a system bundle (`lenient`) may hold a few that
/// webpki cannot use, which are skipped.
async fn load_roots(
    file: &Path,
    lenient: bool,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), ConnectionError> {
    let shown = file.display();
    let pem = tokio::fs::read(file)
        .await
        .map_err(ConnectionError::io(format!(
            "read root certificate file `{shown}`"
        )))?;
    let mut roots = RootCertStore::empty();
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert
            .map_err(|e| ConnectionError::Tls(format!("root certificate file `{shown}`: {e}")))?;
        certs.push(cert.clone());
        match roots.add(cert) {
            Ok(()) => {}
            Err(e) if lenient => {
                tracing::debug!(file = %shown, "skipping an unusable CA certificate: {e}")
            }
            Err(e) => {
                return Err(ConnectionError::Tls(format!(
                    "root certificate file `{shown}` has an unusable certificate: {e}"
                )))
            }
        }
    }
    if roots.is_empty() {
        return Err(ConnectionError::Tls(format!(
            "root certificate file `{shown}` holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")"
        )));
    }
    Ok((roots, certs))
}

fn client_config(check: CertCheck, host: &str) -> Result<ClientConfig, ConnectionError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PgCertVerifier::new(check, host, &provider)?;
    // TLS 1.2 and 1.3: libpq's default ssl_min_protocol_version is TLSv1.2.
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConnectionError::Tls(format!("configure rustls: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(config)
}

/// The name rustls is given, and whether to send it as SNI. Certificate names are checked by
/// [`PgCertVerifier`] against `host` itself, never against this.
fn server_name(host: &str) -> (ServerName<'static>, bool) {
    match ServerName::try_from(host.to_owned()) {
        Ok(name @ ServerName::DnsName(_)) => (name, true),
        Ok(address) => (address, false),
        // Not a valid DNS name (libpq would still connect): rustls needs some name, and without
        // SNI nobody sees it.
        Err(_) => (
            ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
            false,
        ),
    }
}

/// The certificate checks for one connection (see [`CertCheck`]).
#[derive(Debug)]
struct PgCertVerifier {
    /// rustls' verifier against the root file, whose name check is replaced by libpq's.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// The root file's certificates; a self-signed server certificate among them is trusted.
    pinned: Vec<CertificateDer<'static>>,
    /// For verify-full: the host as written in the connection string.
    host: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PgCertVerifier {
    fn new(
        check: CertCheck,
        host: &str,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, ConnectionError> {
        let algorithms = provider.signature_verification_algorithms;
        Ok(match check {
            CertCheck::Nothing => PgCertVerifier {
                chain: None,
                pinned: Vec::new(),
                host: None,
                algorithms,
            },
            CertCheck::Verify {
                roots,
                pinned,
                file,
                host_name,
            } => {
                let chain =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| {
                            ConnectionError::Tls(format!(
                                "root certificate file `{}`: {e}",
                                file.display()
                            ))
                        })?;
                PgCertVerifier {
                    chain: Some(chain),
                    pinned,
                    host: host_name.then(|| host.to_owned()),
                    algorithms,
                }
            }
        })
    }
}

impl PgCertVerifier {
    /// Whether `cert` is in the root file byte for byte and self-signed (issuer = subject).
    /// OpenSSL ends a chain only at a self-signed certificate, so a CA-issued server
    /// certificate in the root file does not count.
    fn is_pinned(&self, cert: &CertificateDer<'_>) -> bool {
        self.pinned.iter().any(|p| p.as_ref() == cert.as_ref())
            && X509Certificate::from_der(cert)
                .map(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
                .unwrap_or(false)
    }
}

/// The validity period check that webpki would have made.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let invalid = |e: CertificateError| rustls::Error::InvalidCertificate(e);
    let (_, parsed) =
        X509Certificate::from_der(cert).map_err(|_| invalid(CertificateError::BadEncoding))?;
    let now = i64::try_from(now.as_secs())
        .ok()
        .and_then(|secs| ASN1Time::from_timestamp(secs).ok())
        .ok_or_else(|| invalid(CertificateError::Expired))?;
    let validity = parsed.validity();
    if now < validity.not_before {
        return Err(invalid(CertificateError::NotValidYet));
    }
    if now > validity.not_after {
        return Err(invalid(CertificateError::Expired));
    }
    Ok(())
}

impl ServerCertVerifier for PgCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(chain) = &self.chain {
            match chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => {}
                // webpki checks the name only after the whole chain has passed, so this error
                // means the chain is good. Names are libpq's business (below, for verify-full).
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => {}
                // The PostgreSQL docs' first recipe: a self-signed server certificate, given
                // as its own root. OpenSSL (so libpq) accepts it; webpki refuses a CA
                // certificate as end entity. The user trusts these exact bytes, and the
                // handshake signature proves the server holds the key, so only the validity
                // period is left to check.
                Err(_) if self.is_pinned(end_entity) => check_validity(end_entity, now)?,
                Err(e) => return Err(e),
            }
        }
        if let Some(host) = &self.host {
            check_host_name(end_entity, host).map_err(|message| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    NameMismatch(message),
                ))))
            })?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match old_version_public_key(cert) {
            Some(spki) => {
                verify_tls13_signature_with_raw_key(message, &spki, dss, &self.algorithms)
            }
            None => verify_tls12_signature(message, cert, dss, &self.algorithms),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match old_version_public_key(cert) {
            Some(spki) => {
                verify_tls13_signature_with_raw_key(message, &spki, dss, &self.algorithms)
            }
            None => verify_tls13_signature(message, cert, dss, &self.algorithms),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The public key of an X.509 version 1 or 2 certificate, to check handshake signatures with.
///
/// webpki reads keys only out of version 3 certificates, but `openssl x509 -req` without
/// extensions makes version 1 ones (the PostgreSQL docs' CA recipe), which libpq accepts under
/// `prefer` and `require`. The bare key does as well for the signature. Under TLS 1.2 this
/// applies TLS 1.3's stricter scheme rules (no RSA PKCS#1), which servers that also offer PSS
/// satisfy.
fn old_version_public_key(cert: &CertificateDer<'_>) -> Option<SubjectPublicKeyInfoDer<'static>> {
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    (parsed.version() != X509Version::V3)
        .then(|| SubjectPublicKeyInfoDer::from(parsed.public_key().raw.to_vec()))
}

/// A verify-full host name failure, carried through rustls to [`handshake_error`].
#[derive(Debug)]
struct NameMismatch(String);

impl fmt::Display for NameMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for NameMismatch {}

/// One line for a failed handshake, naming the usual causes plainly.
fn handshake_error(error: io::Error, root_file: Option<&Path>) -> ConnectionError {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return ConnectionError::io("TLS handshake")(error);
    };
    let message = match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => match root_file {
                Some(file) => format!(
                    "the server certificate is not signed by a CA in `{}`",
                    file.display()
                ),
                None => "the server certificate is not signed by a known CA".into(),
            },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server certificate is not valid yet (check the clocks)".into()
            }
            CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "the server certificate chain is signed with an algorithm rustls does not verify \
                 (MD5, SHA-1, DSA, or RSA-PSS with a salt length other than its hash length)"
                    .into()
            }
            CertificateError::Other(other) => match other.0.downcast_ref::<NameMismatch>() {
                Some(mismatch) => mismatch.0.clone(),
                // webpki's errors reach here as their Debug names; these two are what the
                // PostgreSQL docs' openssl recipes produce, and libpq accepts them.
                None => match other.to_string().as_str() {
                    "UnsupportedCertVersion" => "the server certificate is X.509 version 1 (made \
                        without extensions), whose chain rustls cannot verify; reissue it with \
                        extensions (`openssl x509 -req ... -extfile` giving subjectAltName)"
                        .into(),
                    "CaUsedAsEndEntity" => "the server certificate is a CA certificate \
                        (basicConstraints CA:TRUE) that is not in the root certificate file; \
                        put it there or issue a separate server certificate"
                        .into(),
                    _ => format!("the server certificate was rejected: {other}"),
                },
            },
            other => format!("the server certificate was rejected: {other}"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!("the server ended the handshake with alert `{alert:?}`")
        }
        other => format!("handshake failed: {other}"),
    };
    ConnectionError::Tls(message)
}

#[cfg(test)]
mod tests;
