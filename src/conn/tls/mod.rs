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
            None => match home_dir() {
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

/// The home directory as libpq finds it first: `$HOME`.
fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
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
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::names::{dns_name_matches, host_matches, AltName};
    use super::*;
    use crate::conn::ConnParams;

    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    fn end_point_hex(pem: &str) -> Option<String> {
        tls_server_end_point(&der(pem)).map(hex::encode)
    }

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        // Expected values: `openssl x509 -outform DER | openssl dgst -sha256` (or -sha384, -sha512).
        assert_eq!(
            end_point_hex(NAMES_CERT).as_deref(),
            Some("2cb03d39809a8475fe76dd728acf95eca93425e2df31548f47f1aaa5e7e13b26")
        );
        assert_eq!(
            end_point_hex(P384_SHA384_CERT).as_deref(),
            Some("86eaa1b2734be2fb43702c719893de025c2f3e07889a367edc179f54d1a4054bf73505cd165ff6351946e83b4f7e067a")
        );
        assert_eq!(
            end_point_hex(PSS_SHA512_CERT).as_deref(),
            Some(
                "a97a176b7c6934bb0dd3bba1b2001fe434acb39b40636d766bd5b57e9c2b612d\
                 b57b4429ccf570bdd910c475d34b380ea1aa0d4dd55cfe68dbedde8adafdf956"
            )
        );
    }

    #[test]
    fn end_point_hash_replaces_sha1_with_sha256() {
        assert_eq!(
            end_point_hex(ECDSA_SHA1_CERT).as_deref(),
            Some("931a03e3b20c4a3498f8e13bfb59d457856f0ec560b04d93dcb61b7b5ecf18e4")
        );
        assert_eq!(
            end_point_hex(PSS_DEFAULT_CERT).as_deref(),
            Some("634a1b9f1b845aa9f329e7e67fc5e11b369cd383087e6569b325c22f136b67bd")
        );
    }

    #[test]
    fn end_point_hash_is_absent_without_a_signature_hash() {
        assert_eq!(end_point_hex(ED25519_CERT), None);
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
    }

    #[test]
    fn host_names_are_matched_against_alt_names() {
        let cert = der(NAMES_CERT);
        for host in [
            "localhost",
            "LocalHost",
            "db.example.com",
            "DB.Example.COM",
            "127.0.0.1",
            "::1",
        ] {
            assert_eq!(check_host_name(&cert, host), Ok(()), "{host}");
        }
        // DNS entries rule out the Common Name for a DNS host.
        assert_eq!(
            check_host_name(&cert, "pg.test").unwrap_err(),
            "server certificate for `localhost` (and 3 other names) does not match host `pg.test`"
        );
        for host in [
            "example.com",
            "a.b.example.com",
            "127.0.0.2",
            "::2",
            "localhost.",
        ] {
            assert!(check_host_name(&cert, host).is_err(), "{host}");
        }
    }

    #[test]
    fn common_name_is_used_only_without_alt_names_of_the_host_kind() {
        assert_eq!(host_matches("db.test", &[], Some("db.test")), Ok(()));
        assert_eq!(host_matches("x.db.test", &[], Some("*.db.test")), Ok(()));
        // libpq's documented departure from RFC 6125: an IP host may match the CN beside DNS SANs.
        assert_eq!(
            host_matches("10.0.0.1", &[AltName::Dns("db.test")], Some("10.0.0.1")),
            Ok(())
        );
        assert_eq!(
            host_matches("10.0.0.1", &[AltName::Ip(&[10, 0, 0, 2])], Some("10.0.0.1")).unwrap_err(),
            "server certificate for `10.0.0.2` does not match host `10.0.0.1`"
        );
        assert_eq!(
            host_matches("db.test", &[AltName::Dns("other.test")], Some("db.test")).unwrap_err(),
            "server certificate for `other.test` does not match host `db.test`"
        );
        // An IP SAN does not rule out the CN for a DNS host.
        assert_eq!(
            host_matches("db.test", &[AltName::Ip(&[10, 0, 0, 2])], Some("db.test")),
            Ok(())
        );
        // A DNS SAN holding the address text matches an IP host, as in libpq.
        assert_eq!(
            host_matches("10.0.0.1", &[AltName::Dns("10.0.0.1")], None),
            Ok(())
        );
    }

    #[test]
    fn malformed_certificate_names_are_errors() {
        assert_eq!(
            host_matches("db.test", &[], None).unwrap_err(),
            "the server certificate names no host (checking against host `db.test`)"
        );
        assert!(
            host_matches("db.test", &[AltName::Dns("db.test\0.evil")], None)
                .unwrap_err()
                .contains("embedded null")
        );
        assert!(host_matches("db.test", &[], Some("db.test\0.evil"))
            .unwrap_err()
            .contains("embedded null"));
        assert!(host_matches("10.0.0.1", &[AltName::Ip(&[10, 0, 0])], None)
            .unwrap_err()
            .contains("invalid length 3"));
    }

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(dns_name_matches("*.example.com", "a.example.com"));
        assert!(dns_name_matches("*.Example.com", "A.EXAMPLE.com"));
        assert!(!dns_name_matches("*.example.com", "example.com"));
        assert!(!dns_name_matches("*.example.com", ".example.com"));
        assert!(!dns_name_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_name_matches("a*.example.com", "ab.example.com"));
        assert!(!dns_name_matches("*", "example"));
        assert!(!dns_name_matches("*.", "a."));
        assert!(!dns_name_matches("*.é.test", "a.b.test"));
    }

    #[test]
    fn sni_only_for_dns_names() {
        assert!(server_name("db.example.com").1);
        assert!(!server_name("127.0.0.1").1);
        assert!(!server_name("::1").1);
        assert!(!server_name("under_score..bad").1);
    }

    /// The SNI a TLS server saw when `negotiate` connected for `host` under sslmode=require.
    async fn sni_seen(host: &str) -> Option<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.read_exact(&mut [0u8; 8]).await.unwrap();
            socket.write_all(b"S").await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(server_config(LEAF_CERT, LEAF_KEY));
            let stream = acceptor.accept(socket).await.unwrap();
            stream.get_ref().1.server_name().map(str::to_owned)
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let options = options("sslmode=require sslrootcert=/nonexistent");
        negotiate(tcp, &options, host).await.unwrap();
        server.await.unwrap()
    }

    #[tokio::test]
    async fn sni_is_sent_for_host_names_only() {
        assert_eq!(
            sni_seen("db.example.com").await.as_deref(),
            Some("db.example.com")
        );
        assert_eq!(sni_seen("127.0.0.1").await, None);
        assert_eq!(sni_seen("::1").await, None);
    }

    fn options(conninfo: &str) -> ConnectOptions {
        let params = ConnParams::parse(&format!("host=127.0.0.1 user=test {conninfo}")).unwrap();
        ConnectOptions::resolve(params, &|_| None).unwrap()
    }

    /// Always serves one certificate. (`with_single_cert` would refuse a version 1 one.)
    #[derive(Debug)]
    struct OneCert(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for OneCert {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    fn server_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
        let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = provider.key_provider.load_private_key(key).unwrap();
        let served = OneCert(Arc::new(rustls::sign::CertifiedKey::new(certs, key)));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(served));
        Arc::new(config)
    }

    /// A server on 127.0.0.1 that checks the SSLRequest, answers `answer`, and then (with `tls`)
    /// accepts a TLS handshake. Returns the client's end.
    async fn scripted_server(
        answer: &'static [u8],
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 8];
            // A client that fails before SSLRequest just closes; nothing to check then.
            if socket.read_exact(&mut request).await.is_err() {
                return;
            }
            assert_eq!(request, SSL_REQUEST);
            socket.write_all(answer).await.unwrap();
            match tls {
                Some(config) => {
                    // The client may refuse the certificate; that is the test's business.
                    if let Ok(mut stream) =
                        tokio_rustls::TlsAcceptor::from(config).accept(socket).await
                    {
                        let _ = stream.read(&mut [0u8; 1]).await;
                    }
                }
                None => {
                    let _ = socket.read(&mut [0u8; 1]).await;
                }
            }
        });
        TcpStream::connect(addr).await.unwrap()
    }

    async fn negotiate_with(
        answer: &'static [u8],
        tls: Option<Arc<rustls::ServerConfig>>,
        conninfo: &str,
        host: &str,
    ) -> Result<(Socket, Option<Vec<u8>>), ConnectionError> {
        let tcp = scripted_server(answer, tls).await;
        negotiate(tcp, &options(conninfo), host).await
    }

    /// A root certificate file in a fresh directory (kept alive by the returned guard).
    fn root_file(pem: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.crt");
        std::fs::write(&path, pem).unwrap();
        let path = path.to_str().unwrap().to_owned();
        (dir, path)
    }

    fn leaf_server() -> Option<Arc<rustls::ServerConfig>> {
        Some(server_config(LEAF_CERT, LEAF_KEY))
    }

    #[tokio::test]
    async fn refused_ssl_is_plain_for_prefer_and_an_error_for_require() {
        let (socket, binding) = negotiate_with(b"N", None, "sslmode=prefer", "127.0.0.1")
            .await
            .unwrap();
        assert!(matches!(socket, Socket::Tcp(_)) && binding.is_none());
        for mode in ["require", "verify-ca", "verify-full"] {
            let (_dir, ca) = root_file(CA_CERT);
            let conninfo = format!("sslmode={mode} sslrootcert={ca}");
            let err = negotiate_with(b"N", None, &conninfo, "localhost")
                .await
                .err()
                .unwrap();
            assert_eq!(
                err.to_string(),
                format!("TLS: sslmode={mode} but the server does not support SSL")
            );
        }
    }

    #[tokio::test]
    async fn error_and_garbage_answers_are_refused() {
        let err = negotiate_with(b"E", None, "sslmode=prefer", "127.0.0.1")
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("TLS: the server answered SSLRequest with an error"),
            "{err}"
        );
        let err = negotiate_with(b"H", None, "sslmode=prefer", "127.0.0.1")
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("with `H` instead of `S` or `N`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn data_after_the_ssl_answer_is_refused() {
        // CVE-2021-23222: plaintext appended to 'S' by a man in the middle.
        let err = negotiate_with(
            b"SE\0\0\0\x08injected",
            None,
            "sslmode=require sslrootcert=/nonexistent",
            "x",
        )
        .await
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("received unencrypted data"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn require_skips_verification_and_returns_the_binding_hash() {
        // A missing root file under `require` just means no verification (libpq's rule); the
        // certificate is then for the wrong host and from an unknown CA, and still accepted.
        let (socket, binding) = negotiate_with(
            b"S",
            leaf_server(),
            "sslmode=require sslrootcert=/nonexistent",
            "db.other",
        )
        .await
        .unwrap();
        assert!(matches!(socket, Socket::Tls(_)));
        assert_eq!(
            binding.map(hex::encode).as_deref(),
            Some("45ffbc184a937ab5c1204963ac85457f7e0e2a8e521357ef5437514f274864d3")
        );
    }

    #[tokio::test]
    async fn require_with_a_root_file_verifies_the_chain() {
        let (_dir, wrong_ca) = root_file(P384_SHA384_CERT);
        let err = negotiate_with(
            b"S",
            leaf_server(),
            &format!("sslmode=require sslrootcert={wrong_ca}"),
            "localhost",
        )
        .await
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            format!("TLS: the server certificate is not signed by a CA in `{wrong_ca}`")
        );
        let (_dir, ca) = root_file(CA_CERT);
        let conninfo = format!("sslmode=require sslrootcert={ca}");
        negotiate_with(b"S", leaf_server(), &conninfo, "db.other")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn verify_ca_checks_the_chain_but_not_the_name() {
        let (_dir, ca) = root_file(CA_CERT);
        let conninfo = format!("sslmode=verify-ca sslrootcert={ca}");
        let (_, binding) = negotiate_with(b"S", leaf_server(), &conninfo, "db.other")
            .await
            .unwrap();
        assert!(binding.is_some());
        let (_dir, wrong_ca) = root_file(P384_SHA384_CERT);
        let conninfo = format!("sslmode=verify-ca sslrootcert={wrong_ca}");
        let err = negotiate_with(b"S", leaf_server(), &conninfo, "localhost")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("not signed by a CA in"), "{err}");
    }

    #[tokio::test]
    async fn verify_full_checks_the_chain_and_the_name() {
        let (_dir, ca) = root_file(CA_CERT);
        let conninfo = format!("sslmode=verify-full sslrootcert={ca}");
        for host in ["localhost", "127.0.0.1"] {
            negotiate_with(b"S", leaf_server(), &conninfo, host)
                .await
                .unwrap();
        }
        let err = negotiate_with(b"S", leaf_server(), &conninfo, "db.other")
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "TLS: server certificate for `localhost` (and 1 other name) does not match host `db.other`"
        );
        let (_dir, wrong_ca) = root_file(P384_SHA384_CERT);
        let conninfo = format!("sslmode=verify-full sslrootcert={wrong_ca}");
        let err = negotiate_with(b"S", leaf_server(), &conninfo, "localhost")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("not signed by a CA in"), "{err}");
    }

    #[tokio::test]
    async fn verify_modes_need_a_root_file() {
        let err = negotiate_with(
            b"S",
            leaf_server(),
            "sslmode=verify-ca sslrootcert=/nonexistent/ca.crt",
            "localhost",
        )
        .await
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "TLS: root certificate file `/nonexistent/ca.crt` (sslrootcert) does not exist; sslmode=verify-ca \
             needs the CA that signed the server certificate there"
        );
        let (_dir, not_pem) = root_file("not a certificate\n");
        let err = negotiate_with(
            b"S",
            leaf_server(),
            &format!("sslmode=verify-full sslrootcert={not_pem}"),
            "localhost",
        )
        .await
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
        let err = negotiate_with(
            b"S",
            leaf_server(),
            "sslmode=require sslrootcert=system",
            "localhost",
        )
        .await
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "TLS: sslmode=require may not be used with sslrootcert=system; use sslmode=verify-full"
        );
    }

    #[tokio::test]
    async fn a_self_signed_certificate_in_the_root_file_is_trusted() {
        let ed25519 = || Some(server_config(ED25519_CERT, ED25519_KEY));
        let (_dir, itself) = root_file(ED25519_CERT);
        let conninfo = format!("sslmode=verify-full sslrootcert={itself}");
        // Without subjectAltName, verify-full falls back to the Common Name.
        negotiate_with(b"S", ed25519(), &conninfo, "ed")
            .await
            .unwrap();
        let err = negotiate_with(b"S", ed25519(), &conninfo, "localhost")
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "TLS: server certificate for `ed` does not match host `localhost`"
        );
        let (_dir, ca) = root_file(CA_CERT);
        let conninfo = format!("sslmode=verify-ca sslrootcert={ca}");
        let err = negotiate_with(b"S", ed25519(), &conninfo, "ed")
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("TLS: the server certificate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn version_1_certificates_work_where_libpq_takes_them() {
        let v1 = || Some(server_config(V1_CERT, V1_KEY));
        let conninfo = "sslmode=require sslrootcert=/nonexistent";
        let (_, binding) = negotiate_with(b"S", v1(), conninfo, "localhost")
            .await
            .unwrap();
        assert!(binding.is_some());
        let (_dir, itself) = root_file(V1_CERT);
        let conninfo = format!("sslmode=verify-full sslrootcert={itself}");
        negotiate_with(b"S", v1(), &conninfo, "v1").await.unwrap();
        // A chain through a version 1 certificate is beyond webpki.
        let (_dir, ca) = root_file(CA_CERT);
        let conninfo = format!("sslmode=verify-ca sslrootcert={ca}");
        let err = negotiate_with(b"S", v1(), &conninfo, "v1")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("X.509 version 1"), "{err}");
    }

    #[tokio::test]
    async fn ed25519_certificates_give_no_binding_hash() {
        let ed25519 = Some(server_config(ED25519_CERT, ED25519_KEY));
        let (socket, binding) = negotiate_with(
            b"S",
            ed25519,
            "sslmode=require sslrootcert=/nonexistent",
            "localhost",
        )
        .await
        .unwrap();
        assert!(matches!(socket, Socket::Tls(_)));
        assert_eq!(binding, None);
    }

    /// Test CA (P-256, ecdsa-with-SHA256), signs LEAF_CERT.
    const CA_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIBiDCCAS+gAwIBAgIUPCC2F/n5qMP3LULFgD1waj5Z990wCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOcGdyZXBsIHRlc3QgQ0EwIBcNMjYxMTI1MTkxNTQzWhgPMjEy
NjExMDExOTE1NDNaMBkxFzAVBgNVBAMMDnBncmVwbCB0ZXN0IENBMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAELOMU6Q6cPZ29yhf4l+9QDVnHNxMP4LVDZPv0yPN+
HxoyPiBAYfyU7Nc84o4xgbY0l4VyCCKXRyQnZvLNpJkDeaNTMFEwHQYDVR0OBBYE
FLh7GSxK7t5RNhrzptfIhLRsxAMhMB8GA1UdIwQYMBaAFLh7GSxK7t5RNhrzptfI
hLRsxAMhMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgb1S0pqmg
WCtzLUQlizRRJZUrNbABL0cTnt3FvgMY34QCIBbpnItJtLKRmn8dQ6hXdvdnOaoG
aN7SpHiYb9+V3AHM
-----END CERTIFICATE-----
";

    /// CN=localhost, SAN DNS:localhost and IP:127.0.0.1, ecdsa-with-SHA256, signed by CA_CERT.
    const LEAF_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIBxTCCAWqgAwIBAgIUEyqt2YYDf4cs8aCZuQDtBqEEbR8wCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOcGdyZXBsIHRlc3QgQ0EwIBcNMjYxMTI1MTkxNTQzWhgPMjEy
NjExMDExOTE1NDNaMBQxEjAQBgNVBAMMCWxvY2FsaG9zdDBZMBMGByqGSM49AgEG
CCqGSM49AwEHA0IABNX3kcPPfZX95kHUXVcLHRp5OiUAiL6hu4KeHWi9nqAJYsg3
ZhD4VAxoB061079pgrc7kB5IU1TpOh1Q17yvjOijgZIwgY8wDAYDVR0TAQH/BAIw
ADAOBgNVHQ8BAf8EBAMCB4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwGgYDVR0RBBMw
EYIJbG9jYWxob3N0hwR/AAABMB0GA1UdDgQWBBRdt5+V6L9r13NjdzCNqDViK73U
tzAfBgNVHSMEGDAWgBS4exksSu7eUTYa86bXyIS0bMQDITAKBggqhkjOPQQDAgNJ
ADBGAiEAzgSDaFr83/i3d24hvxbOGghxx7IXOQs3F0LEEUt5ChMCIQC+gVISWiFi
BfTsbAqJOivuceI/nDCFFcQc4MfRcNE16g==
-----END CERTIFICATE-----
";

    /// LEAF_CERT's key.
    const LEAF_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgt9XPjQoC4EyZ7+IF
TrG9kx6HMcCoBAAJoXnLmxpoMN+hRANCAATV95HDz32V/eZB1F1XCx0aeTolAIi+
obuCnh1ovZ6gCWLIN2YQ+FQMaAdOtdO/aYK3O5AeSFNU6TodUNe8r4zo
-----END PRIVATE KEY-----
";

    /// Self-signed, CN=pg.test, SAN DNS:localhost, DNS:*.example.com, IP:127.0.0.1, IP:::1; ecdsa-with-SHA256.
    const NAMES_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIBujCCAWCgAwIBAgIUCQ5zCZbxWbIdENLzGvBczn8I36EwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHcGcudGVzdDAgFw0yNjExMjUxOTE1MjFaGA8yMTI2MTEwMTE5
MTUyMVowEjEQMA4GA1UEAwwHcGcudGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABMKV6oyNdoJhDaH9qK/oiI8fBtTC/XuiuhLv/NrF002B6hlFT6bgeIIGUl1X
WjMYxPw8oIFCVxivHN6lV9k+Ab6jgZEwgY4wHQYDVR0OBBYEFMFKiywm8KQP5v4x
36FyvjzLbNtfMB8GA1UdIwQYMBaAFMFKiywm8KQP5v4x36FyvjzLbNtfMA8GA1Ud
EwEB/wQFMAMBAf8wOwYDVR0RBDQwMoIJbG9jYWxob3N0gg0qLmV4YW1wbGUuY29t
hwR/AAABhxAAAAAAAAAAAAAAAAAAAAABMAoGCCqGSM49BAMCA0gAMEUCIQCg+L1C
d4F4kBPTXXQEFi/EGFo93//0nHD/hr34FsL8/AIgKeFTiKELafYAT818TMzSP+OS
/qEUejc8+X6aT1KsJRQ=
-----END CERTIFICATE-----
";

    /// Self-signed CA, ecdsa-with-SHA384; also the wrong CA for LEAF_CERT.
    const P384_SHA384_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIBsTCCATigAwIBAgIUXqp5CTkgnh/bPgUqAgd0QPOavmgwCgYIKoZIzj0EAwMw
DzENMAsGA1UEAwwEcDM4NDAgFw0yNjExMjUxOTE1MjFaGA8yMTI2MTEwMTE5MTUy
MVowDzENMAsGA1UEAwwEcDM4NDB2MBAGByqGSM49AgEGBSuBBAAiA2IABH1NmaBk
jvRTMJO4OklnTe1hT+4aQvEOlrZUcGXnIbEPGzdQ/nvUUrLWDZLNosx3o5C8pwd0
k4vb+7njlly7e4RdMmbvo6fPZTY3UfI5iN1DOk3zHW0pv7Rayjygpz/+5aNTMFEw
HQYDVR0OBBYEFHwGAfjMvyaSnE3j71Xx14tQoN0XMB8GA1UdIwQYMBaAFHwGAfjM
vyaSnE3j71Xx14tQoN0XMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwMDZwAw
ZAIwB7wvdOCodgM46Fhzg/S8fUtvQtZue+2hvorapCO976k8nTjeGoEowsz7qrBu
bQhjAjAdFEUCfdVlwQlXEwdEAPrG4OMAjd/6C+rdUVthjzUXCsKxuRgPgVpmDOi7
xrFRZQE=
-----END CERTIFICATE-----
";

    /// ecdsa-with-SHA1.
    const ECDSA_SHA1_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIBcjCCARqgAwIBAgIUT++l447RwZA08w2DyL/AU5Tak+EwCQYHKoZIzj0EATAP
MQ0wCwYDVQQDDARzaGExMCAXDTI2MTEyNTE5MTUyMVoYDzIxMjYxMTAxMTkxNTIx
WjAPMQ0wCwYDVQQDDARzaGExMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwFmP
PuEouraXJRVPYY9xU1y/wAkUpaVvR9Dvdm+5nICGx9McYqyrcGWeGs5frOhriOJW
Qp1WO4MButiB+SInf6NTMFEwHQYDVR0OBBYEFCgxQC9aCfhCd+QBxVRY9NTBhXdg
MB8GA1UdIwQYMBaAFCgxQC9aCfhCd+QBxVRY9NTBhXdgMA8GA1UdEwEB/wQFMAMB
Af8wCQYHKoZIzj0EAQNHADBEAiBax6Vdn2pfKJmC4h3NwAEd/hMyPW82yQDH3fF5
LWmhSwIgOuyOG0lWSLw7fyawNoZYjLNqjBgI6VLZ8MNU5n6J2PM=
-----END CERTIFICATE-----
";

    /// RSASSA-PSS, hashAlgorithm SHA-512.
    const PSS_SHA512_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIICYjCCAZegAwIBAgIUA/8ntx2AwGaL8GOivKdGuqeV6iUwQQYJKoZIhvcNAQEK
MDSgDzANBglghkgBZQMEAgMFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQMEAgMF
AKIDAgE+MA4xDDAKBgNVBAMMA3BzczAgFw0yNjExMjUxOTE1MjFaGA8yMTI2MTEw
MTE5MTUyMVowDjEMMAoGA1UEAwwDcHNzMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCB
iQKBgQCYpXTaR1bIwKEeQls5dCQC4XwCax8gCo5GsN0u0PFFfNS/eT374HS65rU6
tNq5d6d5nF1zbs2icND2dHzmtrYk+8SU+0DMD4cENzH+vSvIlbnxAnVsmERu2/Ss
GfPUZBgbqBwIEw9VDJvp08/ORuYIk9rPiRxt73r0QKLJYKM2gQIDAQABo1MwUTAd
BgNVHQ4EFgQUxgo5BYChH1CKfzP9JGRVXSRgq+wwHwYDVR0jBBgwFoAUxgo5BYCh
H1CKfzP9JGRVXSRgq+wwDwYDVR0TAQH/BAUwAwEB/zBBBgkqhkiG9w0BAQowNKAP
MA0GCWCGSAFlAwQCAwUAoRwwGgYJKoZIhvcNAQEIMA0GCWCGSAFlAwQCAwUAogMC
AT4DgYEAavHpI+FBKbornEAqQZI/sHhYCGMI122Tq8rn1i2FPpm44ePhKeniEwNS
1B6f7HTM3X84Tmt+BMNc/SyJQInOlve0PWYjOO3kd7BmIcvDw+LK/2RBXgKX4QvB
MrzMw6Df6hYX6WlLkANvSZKbihUGBlp42ZGcIuAn3cEgISUZQ1g=
-----END CERTIFICATE-----
";

    /// Ed25519, so no separate hash; self-signed CA, CN=ed, no subjectAltName.
    const ED25519_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIBMDCB46ADAgECAhRh1VhBbNlmRPmvhr5MpXjK4qU26TAFBgMrZXAwDTELMAkG
A1UEAwwCZWQwIBcNMjYxMTI1MTkxNTIxWhgPMjEyNjExMDExOTE1MjFaMA0xCzAJ
BgNVBAMMAmVkMCowBQYDK2VwAyEAihd/XoOnS4gfvLlNGY1dsYk22ZeoNaMMoxOr
/NGcEWWjUzBRMB0GA1UdDgQWBBRPAxq5vr824lBxjjniXibDZQX3WTAfBgNVHSME
GDAWgBRPAxq5vr824lBxjjniXibDZQX3WTAPBgNVHRMBAf8EBTADAQH/MAUGAytl
cANBAGbwTiFSGFSJ5J7ViNxJZEdcZP4uL7m6TosorPWdcJnwEtXljHDBeaRc86fk
PM3abMPkTJHZ+IjXLdWLkR/DmQ0=
-----END CERTIFICATE-----
";

    /// ED25519_CERT's key.
    const ED25519_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIADGEeBhV5JDgPhhX/gbmm6A7HToCpcPReEC2ypHUqh8
-----END PRIVATE KEY-----
";

    /// X.509 version 1 (no extensions), self-signed, CN=v1, ecdsa-with-SHA256.
    const V1_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIBFTCBvQIUD4LukjyCt/8M+ZR1xaGDy5lssdEwCgYIKoZIzj0EAwIwDTELMAkG
A1UEAwwCdjEwIBcNMjYxMTI1MTkyMjE3WhgPMjEyNjExMDExOTIyMTdaMA0xCzAJ
BgNVBAMMAnYxMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEigMLBRMtmplCHzeo
PaJT6oU3NKBFVCydFk167O4KbTdpLjvTzrYs8Qo/QG+Ad55BBlpVTtNiOgy0BVnm
gQZN0jAKBggqhkjOPQQDAgNHADBEAiADdEuMH615X6Wo4zUNoQ91SQhibNyXWF05
FYaxaqd2MgIgIsDWB8j/15cwWiUyYZ105Nty0o0EINZUwj0YFNZSqT8=
-----END CERTIFICATE-----
";

    /// V1_CERT's key.
    const V1_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIPxr3XeLb32IG8wH
7/stJWkRjVvR7TbVUFctNmSjOyehRANCAASKAwsFEy2amUIfN6g9olPqhTc0oEVU
LJ0WTXrs7gptN2kuO9POtizxCj9Ab4B3nkEGWlVO02I6DLQFWeaBBk3S
-----END PRIVATE KEY-----
";

    /// RSASSA-PSS with the hashAlgorithm left out, so SHA-1 (RFC 4055).
    const PSS_DEFAULT_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIICBjCCAWqgAwIBAgIUCxUAYMhnFYc29vMEw72XyDE/QCwwEgYJKoZIhvcNAQEK
MAWiAwIBajAPMQ0wCwYDVQQDDARwc3MxMCAXDTI2MTEyNTE5MTUyNVoYDzIxMjYx
MTAxMTkxNTI1WjAPMQ0wCwYDVQQDDARwc3MxMIGfMA0GCSqGSIb3DQEBAQUAA4GN
ADCBiQKBgQCWKoLUSp198L3sSDXAa8hWa38lCPpdU52K2WbEBJnEutSN2220bcd8
vhsOnCSqBA1Puv5CX8r7EEClkk4bhNVo65korMdzIvgBANLJaE8a/AjeS/ee2fxh
yuCUCrmW6HOvqPf/K76uiMngriyXGAeqaUchdmUdKPbvsPHCA0Mo+wIDAQABo1Mw
UTAdBgNVHQ4EFgQUQBXzuhFXj+iz+HQeI73Z+USWSkAwHwYDVR0jBBgwFoAUQBXz
uhFXj+iz+HQeI73Z+USWSkAwDwYDVR0TAQH/BAUwAwEB/zASBgkqhkiG9w0BAQow
BaIDAgFqA4GBADvQZnXXm/qjAjGOIpCaBCGb+zPaXp3nM6ZZKPINYNA+fQXWCblU
JIilXH4w5yFAtBZbXtp1+WmQg1aEjoP2DtY5153NvWxD2E3c/sTxXeHz3QD3i+a4
z4rR6l9Y6tn5cFLliBFsQlIjaKoCyCoep+xKrTCEJ/ZJ7y8FqCTPsQbJ
-----END CERTIFICATE-----
";
}
