//! SSLRequest negotiation and TLS (rustls), with libpq's `sslmode` rules.
//!
//! The rules are libpq's, so that a connection string means the same to pgrepl as to psql:
//!
//! - `disable`, `allow`: no SSLRequest. (libpq's `allow` tries TLS only after a plain attempt is
//!   refused, which a server that accepts plain connections never does.)
//! - `prefer`: TLS when the server offers it, the certificate unchecked; plain otherwise.
//! - `require`: TLS or fail, the certificate unchecked; but when a root certificate file exists
//!   (`sslrootcert`, else `~/.postgresql/root.crt`) it is checked as for `verify-ca`.
//! - `verify-ca`: the certificate chain must lead to a CA in the root certificate file.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host, matched as libpq
//!   matches it (subjectAltName DNS and IP entries, else the Common Name; `*.` covers one label).
//!
//! Handshake signatures are always checked, even when the certificate is not: they prove the
//! server holds the key of the certificate whose hash SCRAM channel binding then sends, which is
//! what lets `channel_binding` catch a man in the middle under `prefer` and `require`.
//!
//! Not supported: client certificates (`sslcert`, `sslkey`), CRLs, `sslrootcert=system`, direct
//! TLS (`sslnegotiation=direct`), and libpq's plaintext retry after a failed `prefer` handshake.
//!
//! Neighbours: `socket` wraps the stream made here; `auth` uses the channel-binding hash.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::AlgorithmIdentifier;

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

/// Negotiates encryption per `sslmode`. Returns the socket to speak the protocol on and, for TLS,
/// the `tls-server-end-point` channel-binding hash of the server certificate.
pub(super) async fn negotiate(
    mut tcp: TcpStream,
    options: &ConnectOptions,
    host: &str,
) -> Result<(Socket, Option<Vec<u8>>), ConnectionError> {
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
                "received unencrypted data after the server accepted SSL (a man in the middle?)".into(),
            ))
        }
        Err(e) => return Err(ConnectionError::io("read after the answer to SSLRequest")(e)),
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

/// What to check of the server certificate.
enum CertCheck {
    /// Only the handshake signatures (`prefer`, `require` without a root file).
    Nothing,
    /// The chain against `roots`, and for verify-full the host name.
    Verify { roots: RootCertStore, file: PathBuf, host_name: bool },
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
        let explicit = options.sslrootcert.as_deref();
        if explicit == Some(Path::new("system")) {
            return Err(ConnectionError::Tls(
                "sslrootcert=system (the operating system's CA store) is not supported; \
                 set sslrootcert to the file of the CA that signed the server certificate"
                    .into(),
            ));
        }
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
            .map_err(ConnectionError::io(format!("look for root certificate file `{}`", file.display())))?;
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
        let roots = load_roots(&file).await?;
        Ok(CertCheck::Verify { roots, file, host_name })
    }

    fn root_file(&self) -> Option<&Path> {
        match self {
            CertCheck::Nothing => None,
            CertCheck::Verify { file, .. } => Some(file),
        }
    }
}

/// The home directory as libpq finds it first: `$HOME`.
fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|home| !home.is_empty()).map(PathBuf::from)
}

/// All certificates in a PEM file. Like OpenSSL, which libpq uses, refuse a file with an
/// unreadable certificate rather than silently trusting fewer CAs.
async fn load_roots(file: &Path) -> Result<RootCertStore, ConnectionError> {
    let shown = file.display();
    let pem = tokio::fs::read(file)
        .await
        .map_err(ConnectionError::io(format!("read root certificate file `{shown}`")))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| ConnectionError::Tls(format!("root certificate file `{shown}`: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ConnectionError::Tls(format!("root certificate file `{shown}` has an unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ConnectionError::Tls(format!(
            "root certificate file `{shown}` holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")"
        )));
    }
    Ok(roots)
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
        Err(_) => (ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()), false),
    }
}

/// The certificate checks for one connection (see [`CertCheck`]).
#[derive(Debug)]
struct PgCertVerifier {
    /// rustls' verifier against the root file, whose name check is replaced by libpq's.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// For verify-full: the host as written in the connection string.
    host: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PgCertVerifier {
    fn new(check: CertCheck, host: &str, provider: &Arc<CryptoProvider>) -> Result<Self, ConnectionError> {
        let algorithms = provider.signature_verification_algorithms;
        Ok(match check {
            CertCheck::Nothing => PgCertVerifier { chain: None, host: None, algorithms },
            CertCheck::Verify { roots, file, host_name } => {
                let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| ConnectionError::Tls(format!("root certificate file `{}`: {e}", file.display())))?;
                PgCertVerifier { chain: Some(chain), host: host_name.then(|| host.to_owned()), algorithms }
            }
        })
    }
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
            match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                Ok(_) => {}
                // webpki checks the name only after the whole chain has passed, so this error
                // means the chain is good. Names are libpq's business (below, for verify-full).
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(host) = &self.host {
            check_host_name(end_entity, host).map_err(|message| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NameMismatch(message)))))
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
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
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
    let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
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
            CertificateError::Other(other) => match other.0.downcast_ref::<NameMismatch>() {
                Some(mismatch) => mismatch.0.clone(),
                None => format!("the server certificate was rejected: {other}"),
            },
            other => format!("the server certificate was rejected: {other}"),
        },
        rustls::Error::AlertReceived(alert) => format!("the server ended the handshake with alert `{alert:?}`"),
        other => format!("handshake failed: {other}"),
    };
    ConnectionError::Tls(message)
}

/// A name from a certificate's subjectAltName extension.
#[derive(Debug, Clone, Copy)]
enum AltName<'a> {
    Dns(&'a str),
    /// Network byte order, 4 or 16 bytes when well formed.
    Ip(&'a [u8]),
}

/// verify-full's host name check on a DER certificate.
fn check_host_name(der: &[u8], host: &str) -> Result<(), String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("could not parse the server certificate: {e}"))?;
    let alt_names: Vec<AltName<'_>> = match cert.subject_alternative_name() {
        Ok(Some(extension)) => extension
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(AltName::Dns(dns)),
                GeneralName::IPAddress(ip) => Some(AltName::Ip(ip)),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("could not read the server certificate's subjectAltName: {e}")),
    };
    // libpq looks at the first Common Name only.
    let common_name = match cert.subject().iter_common_name().next() {
        Some(cn) => Some(
            cn.as_str()
                .map_err(|_| "the server certificate's Common Name is not a text string".to_owned())?,
        ),
        None => None,
    };
    host_matches(host, &alt_names, common_name)
}

/// libpq's `pgtls_verify_peer_name_matches_certificate_guts`, on names already taken out of the
/// certificate. subjectAltName entries of the host's kind (DNS name or IP address) rule out the
/// Common Name; DNS entries are compared as text even to an IP address host, as libpq does.
fn host_matches(host: &str, alt_names: &[AltName<'_>], common_name: Option<&str>) -> Result<(), String> {
    let host_ip: Option<IpAddr> = host.parse().ok();
    let mut check_common_name = true;
    let mut first_name: Option<String> = None;
    let mut examined = 0usize;
    let mut note = |name: String| {
        examined += 1;
        first_name.get_or_insert(name);
    };
    for alt_name in alt_names {
        match *alt_name {
            AltName::Dns(name) => {
                if host_ip.is_none() {
                    check_common_name = false;
                }
                reject_embedded_nul(name)?;
                note(name.to_owned());
                if dns_name_matches(name, host) {
                    return Ok(());
                }
            }
            AltName::Ip(bytes) => {
                if host_ip.is_some() {
                    check_common_name = false;
                }
                let address = match *bytes {
                    [a, b, c, d] => IpAddr::from([a, b, c, d]),
                    _ => match <[u8; 16]>::try_from(bytes) {
                        Ok(v6) => IpAddr::from(v6),
                        Err(_) => {
                            return Err(format!(
                                "the server certificate holds an IP address of invalid length {}",
                                bytes.len()
                            ))
                        }
                    },
                };
                note(address.to_string());
                if host_ip == Some(address) {
                    return Ok(());
                }
            }
        }
    }
    if check_common_name {
        if let Some(name) = common_name {
            reject_embedded_nul(name)?;
            note(name.to_owned());
            if dns_name_matches(name, host) {
                return Ok(());
            }
        }
    }
    Err(match (first_name, examined) {
        (Some(first), 1) => format!("server certificate for `{first}` does not match host `{host}`"),
        (Some(first), n) => format!(
            "server certificate for `{first}` (and {} other name{}) does not match host `{host}`",
            n - 1,
            if n == 2 { "" } else { "s" }
        ),
        (None, _) => format!("the server certificate names no host (checking against host `{host}`)"),
    })
}

/// A NUL inside a certificate name is an attack on C string handling (CVE-2009-4034).
fn reject_embedded_nul(name: &str) -> Result<(), String> {
    if name.contains('\0') {
        return Err("the server certificate holds a name with an embedded null".into());
    }
    Ok(())
}

/// Exact match ignoring ASCII case, or libpq's wildcard: a leading `*.` stands for exactly one
/// non-empty label.
fn dns_name_matches(pattern: &str, host: &str) -> bool {
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let (pattern, host) = (pattern.as_bytes(), host.as_bytes());
    let Some(suffix) = pattern.strip_prefix(b"*") else {
        return false;
    };
    if pattern.len() < 3 || !suffix.starts_with(b".") || host.len() <= suffix.len() {
        return false;
    }
    let (label, host_suffix) = host.split_at(host.len() - suffix.len());
    host_suffix.eq_ignore_ascii_case(suffix) && !label.contains(&b'.')
}

/// The hash function of `tls-server-end-point` channel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl EndPointHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            EndPointHash::Sha224 => Sha224::digest(data).to_vec(),
            EndPointHash::Sha256 => Sha256::digest(data).to_vec(),
            EndPointHash::Sha384 => Sha384::digest(data).to_vec(),
            EndPointHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// `tls-server-end-point` data (RFC 5929 §4.1): the certificate's DER hashed with the hash of
/// its signature algorithm, SHA-256 instead of MD5 or SHA-1.
///
/// `None` when the signature has no separate hash (Ed25519, Ed448) or an unknown one. The server
/// cannot compute the value then either (PostgreSQL's `be_tls_get_certificate_hash` fails), so
/// SCRAM must go without channel binding; libpq instead fails the connection.
fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(end_point_hash(&cert.signature_algorithm)?.digest(der))
}

fn end_point_hash(algorithm: &AlgorithmIdentifier<'_>) -> Option<EndPointHash> {
    use EndPointHash::*;
    let oid = algorithm.algorithm.to_id_string();
    Some(match oid.as_str() {
        // RSASSA-PSS names its hash in the parameters, SHA-1 when absent (RFC 4055).
        "1.2.840.113549.1.1.10" => match SignatureAlgorithm::try_from(algorithm).ok()? {
            SignatureAlgorithm::RSASSA_PSS(params) => digest_hash(&params.hash_algorithm_oid().to_id_string())?,
            _ => return None,
        },
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1, dsa-with-sha1, the old OIW sha1WithRSA.
        "1.2.840.113549.1.1.4" | "1.2.840.113549.1.1.5" | "1.2.840.10045.4.1" | "1.2.840.10040.4.3"
        | "1.3.14.3.2.29" => Sha256,
        // sha224WithRSA, ecdsa-with-SHA224, dsa-with-sha224.
        "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" | "2.16.840.1.101.3.4.3.1" => Sha224,
        // sha256WithRSA, ecdsa-with-SHA256, dsa-with-sha256.
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" | "2.16.840.1.101.3.4.3.2" => Sha256,
        // sha384WithRSA, ecdsa-with-SHA384, dsa-with-sha384.
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" | "2.16.840.1.101.3.4.3.3" => Sha384,
        // sha512WithRSA, ecdsa-with-SHA512, dsa-with-sha512.
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" | "2.16.840.1.101.3.4.3.4" => Sha512,
        _ => return None,
    })
}

/// A bare digest OID, as found in RSASSA-PSS parameters.
fn digest_hash(oid: &str) -> Option<EndPointHash> {
    Some(match oid {
        // MD5, SHA-1: SHA-256 instead.
        "1.2.840.113549.2.5" | "1.3.14.3.2.26" => EndPointHash::Sha256,
        "2.16.840.1.101.3.4.2.4" => EndPointHash::Sha224,
        "2.16.840.1.101.3.4.2.1" => EndPointHash::Sha256,
        "2.16.840.1.101.3.4.2.2" => EndPointHash::Sha384,
        "2.16.840.1.101.3.4.2.3" => EndPointHash::Sha512,
        _ => return None,
    })
}
