//! The agents' HTTP API as a client sees it, and where stock psql lands through an address
//! the cluster gives (the primary's, a standby's, a proxy's).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::harness::PgInstall;

/// One request, over TLS verified against `ca` (the cluster's, when it has TLS: the agents'
/// API is then HTTPS only); `None` when the agent does not answer within a second (frozen,
/// gone).
pub(crate) fn http(
    addr: SocketAddr,
    ca: Option<&Path>,
    method: &str,
    path: &str,
) -> Option<(u16, String)> {
    let timeout = Duration::from_secs(1);
    let stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    match ca {
        Some(ca) => {
            let mut tls = rustls::StreamOwned::new(tls_client(ca, addr), stream);
            tls.write_all(request.as_bytes()).ok()?;
            // The agent closes without close_notify when it is done: what was read is the answer.
            let _ = tls.read_to_string(&mut response);
        }
        None => {
            let mut stream = stream;
            stream.write_all(request.as_bytes()).ok()?;
            stream.read_to_string(&mut response).ok()?;
        }
    }
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Some((code, body))
}

/// A TLS session that trusts only the cluster CA in `ca` and checks the agent's address.
fn tls_client(ca: &Path, addr: SocketAddr) -> rustls::ClientConnection {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap()
}

/// The superuser's password for sessions over TCP (the local runtime's is by socket only).
pub(crate) const PASSWORD: &str = "through-the-proxy";

/// Where stock psql lands with `conninfo`: whether that server is in recovery, and its port
/// (`None`: it reached none).
pub(crate) fn psql_lands(conninfo: &str) -> Option<(String, String)> {
    psql_lands_with(conninfo, Some(PASSWORD))
}

/// The same with `password` as PGPASSWORD, or none: only what `conninfo` names.
pub(crate) fn psql_lands_with(conninfo: &str, password: Option<&str>) -> Option<(String, String)> {
    let psql = PgInstall::default_install().bin_dir.join("psql");
    let mut command = Command::new(psql);
    command
        .args(["-X", "-A", "-t", "-c"])
        .arg("SELECT pg_is_in_recovery(), current_setting('port')")
        .arg(conninfo)
        .env("PGCONNECT_TIMEOUT", "2")
        .env_remove("PGPASSFILE");
    match password {
        Some(password) => command.env("PGPASSWORD", password),
        None => command.env_remove("PGPASSWORD"),
    };
    let out = command.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (recovery, port) = text.split_once('|')?;
    Some((recovery.to_owned(), port.to_owned()))
}
