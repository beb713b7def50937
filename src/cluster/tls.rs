//! The cluster's certificate authority and each node's server certificate, made by `up` with
//! rcgen (no openssl), so that TLS needs no person:
//!
//! - `<state_dir>/tls/ca.crt` and `ca.key` (0600): the CA, made once, valid 10 years;
//! - each node's TLS directory (`Runtime::tls_dir`, named `tls` beside its data directory):
//!   `server.crt` and `server.key` (0600, owned by the server's user), valid 2 years, naming
//!   the node's name and every address it is reached by; and `ca.crt`.
//!
//! The server settings name the files relative to the data directory (`../tls/server.crt`):
//! standbys inherit the primary's postgresql.auto.conf through the base backup, and each still
//! finds its own certificate. A walreceiver runs in the data directory, so `sslrootcert` in
//! primary_conninfo is relative too.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::spec::NodeSpec;
use super::{Cluster, ClusterError, StepLog};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The server settings TLS adds, relative to each node's data directory.
pub const SERVER_SETTINGS: [(&str, &str); 3] = [
    ("ssl", "on"),
    ("ssl_cert_file", "../tls/server.crt"),
    ("ssl_key_file", "../tls/server.key"),
];

/// `sslrootcert` in a standby's primary_conninfo: the CA beside its data directory.
pub const STANDBY_ROOT_CERT: &str = "../tls/ca.crt";

const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 730;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("make {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("`{}` is not a PEM certificate or key: give the file itself, as PEM", .0.display())]
    Unreadable(PathBuf),
    #[error("[tls] ca_cert `{}` is not a CA certificate (no basicConstraints CA:TRUE)", .0.display())]
    NotCa(PathBuf),
    #[error("[tls.nodes.{node}] cert `{}` is not signed by [tls] ca_cert: give a certificate your CA signed", .cert.display())]
    NotSigned { node: String, cert: PathBuf },
    #[error("`{}` is not the key of `{}`: give the key the certificate was made for", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("no cluster CA in `{}` for `{node}`, whose agent builds it on this machine: copy `ca.crt` and `ca.key` there from the machine where `up` or the first agent made them, or set `[tls] mode = \"off\"` in the cluster file", .dir.display())]
    NoCa { dir: PathBuf, node: String },
}

/// What a certificate proves: a server's identity (a PostgreSQL node), a client's (an etcd
/// user: etcd takes the common name as the user name), or both (an etcd member is its peers'
/// client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    ServerAndClient,
}

/// A certificate the cluster CA signs: `<dir>/<stem>.crt` and `<stem>.key`, with the CA's
/// certificate copied beside them as `ca.crt`.
pub struct Leaf {
    /// The common name: the node's or etcd member's name, or the etcd user.
    pub name: String,
    pub dir: PathBuf,
    pub stem: String,
    /// Host names and IP addresses clients reach it by (verify-full checks them).
    pub names: Vec<String>,
    pub usage: Usage,
}

impl Leaf {
    /// A PostgreSQL node's server certificate, `server.crt` in its TLS directory.
    pub fn server(name: &str, dir: PathBuf, names: Vec<String>) -> Leaf {
        Leaf {
            name: name.to_owned(),
            dir,
            stem: "server".into(),
            names,
            usage: Usage::Server,
        }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join(format!("{}.crt", self.stem))
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.stem))
    }
}

/// The cluster CA's files.
pub fn ca_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tls")
}

pub fn ca_cert_path(state_dir: &Path) -> PathBuf {
    ca_dir(state_dir).join("ca.crt")
}

/// Makes what is missing: the CA (when `may_create_ca`), then each leaf's certificate and key,
/// owned by `owner`; with `renew`, a new certificate and key for every leaf in `nodes`. Returns
/// a line per thing made, for the step log. Existing files are kept otherwise.
pub fn ensure(
    state_dir: &Path,
    nodes: &[Leaf],
    owner: Option<(u32, u32)>,
    may_create_ca: bool,
    renew: bool,
) -> Result<Vec<String>, TlsError> {
    let mut made = Vec::new();
    let dir = ca_dir(state_dir);
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let missing: Vec<&Leaf> = nodes
        .iter()
        .filter(|n| renew || !n.cert().exists() || !n.key().exists())
        .collect();
    if !ca_crt.exists() || !ca_key.exists() {
        if !may_create_ca {
            if let Some(node) = missing.first() {
                return Err(TlsError::NoCa {
                    dir,
                    node: node.name.clone(),
                });
            }
            return Ok(made);
        }
        let (cert, key) = new_ca()?;
        create_dir(&dir)?;
        write_file(&ca_key, key.as_bytes(), 0o600, None)?;
        write_file(&ca_crt, cert.as_bytes(), 0o644, None)?;
        made.push(format!("create the cluster CA in `{}`", dir.display()));
    }
    let ca_pem = read(&ca_crt)?;
    for node in nodes {
        create_dir(&node.dir)?;
        write_if_changed(&node.dir.join("ca.crt"), &ca_pem, 0o644, owner)?;
    }
    if missing.is_empty() {
        return Ok(made);
    }
    let ca_key = KeyPair::from_pem(&read(&ca_key)?).map_err(generate("the CA's key"))?;
    let ca = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(generate("the CA certificate"))?;
    for node in missing {
        let what = format!("`{}`'s certificate", node.name);
        let key = KeyPair::generate().map_err(generate(&what))?;
        let mut params = CertificateParams::new(node.names.clone()).map_err(generate(&what))?;
        // libpq before 15 matches the host only against dNSName entries: an address is there
        // as text too, which later libpq and pgrepl never read for an address.
        for name in &node.names {
            if name.parse::<std::net::IpAddr>().is_ok() {
                let text = Ia5String::try_from(name.as_str()).map_err(generate(&what))?;
                params.subject_alt_names.push(SanType::DnsName(text));
            }
        }
        params
            .distinguished_name
            .push(DnType::CommonName, node.name.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match node.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, SERVER_DAYS);
        let cert = params.signed_by(&key, &ca).map_err(generate(&what))?;
        write_file(&node.key(), key.serialize_pem().as_bytes(), 0o600, owner)?;
        write_file(&node.cert(), cert.pem().as_bytes(), 0o644, owner)?;
        made.push(if node.names.is_empty() {
            format!("certificate for `{}`", node.name)
        } else {
            format!(
                "certificate for `{}` ({})",
                node.name,
                node.names.join(", ")
            )
        });
    }
    Ok(made)
}

/// When the certificate in `path` expires.
pub fn not_after(path: &Path) -> Result<time::OffsetDateTime, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Io {
        what: format!("read `{}`", path.display()),
        source,
    })?;
    let unreadable = || TlsError::Io {
        what: format!("read `{}`", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a PEM certificate"),
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|_| unreadable())?;
    let cert = pem.parse_x509().map_err(|_| unreadable())?;
    Ok(cert.validity().not_after.to_datetime())
}

fn new_ca() -> Result<(String, String), TlsError> {
    let what = "the cluster CA";
    let key = KeyPair::generate().map_err(generate(what))?;
    let mut params = CertificateParams::new(Vec::new()).map_err(generate(what))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "pgrepl cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key).map_err(generate(what))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// From an hour ago (clocks between machines differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn generate(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |source| TlsError::Generate {
        what: what.to_owned(),
        source,
    }
}

pub(crate) fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        what: format!("read `{}`", path.display()),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        what: format!("create `{}`", dir.display()),
        source,
    })
}

/// [`create_dir`], then the directory is `owner`'s (an agent that runs as another user
/// creates the rest in it).
pub(crate) fn create_owned_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), TlsError> {
    create_dir(dir)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|source| TlsError::Io {
            what: format!("chown `{}`", dir.display()),
            source,
        })?;
    }
    Ok(())
}

/// [`write_file`] unless `path` holds `text` already (every `up` would rewrite and sync it);
/// whether it wrote.
pub(crate) fn write_if_changed(
    path: &Path,
    text: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<bool, TlsError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    write_file(path, text.as_bytes(), mode, owner)?;
    Ok(true)
}

/// Writes `bytes` to a new file beside `path` with `mode` (and `owner`), then renames it into
/// place: a reader never sees half a key, and a key is never readable by others, even briefly.
fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), TlsError> {
    let io = |what: &str| {
        let what = format!("{what} `{}`", path.display());
        move |source| TlsError::Io { what, source }
    };
    let temp = path.with_extension("new");
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(io("create"))?;
    file.write_all(bytes).map_err(io("write"))?;
    file.sync_all().map_err(io("write"))?;
    // The umask may have narrowed `mode`.
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&temp, Some(uid), Some(gid)).map_err(io("chown"))?;
    }
    std::fs::rename(&temp, path).map_err(io("write"))
}

/// A certificate of the cluster and when it expires.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Expiry {
    /// `CA`, or the node's name.
    pub of: String,
    pub path: PathBuf,
    /// RFC 3339.
    pub not_after: String,
}

impl Cluster {
    fn node_certs(&self, nodes: &[&NodeSpec]) -> Vec<Leaf> {
        nodes
            .iter()
            .map(|node| {
                Leaf::server(
                    &node.name,
                    self.runtime.tls_dir(node),
                    self.runtime.tls_names(node),
                )
            })
            .collect()
    }

    /// The CA's and each node's (on this machine) expiry, soonest first; empty without TLS or
    /// before `up` made them.
    pub fn tls_expiries(&self) -> Result<Vec<Expiry>, ClusterError> {
        if !self.spec.tls_on() {
            return Ok(Vec::new());
        }
        let mut files = vec![("CA".to_owned(), ca_cert_path(&self.state_dir))];
        for node in self.spec.nodes.iter().filter(|n| self.is_here(n)) {
            files.push((
                node.name.clone(),
                self.runtime.tls_dir(node).join("server.crt"),
            ));
        }
        let mut expiries = Vec::new();
        for (of, path) in files.into_iter().filter(|(_, p)| p.exists()) {
            let at = not_after(&path)?;
            expiries.push((at, of, path));
        }
        expiries.sort_by_key(|(at, ..)| *at);
        Ok(expiries
            .into_iter()
            .map(|(at, of, path)| Expiry {
                of,
                path,
                not_after: at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// `pgrepl tls rotate`: a new certificate and key for every node on this machine from the
    /// cluster CA, then a reload of each running server (PostgreSQL reloads its TLS files on
    /// SIGHUP; sessions already open keep theirs), then a `verify-full` session to each, which
    /// proves the server took a certificate the CA signed for its name. No restart.
    pub async fn rotate_tls(&self, log: &dyn StepLog) -> Result<Vec<Expiry>, ClusterError> {
        if !self.spec.tls_on() {
            return Err(ClusterError::TlsOff);
        }
        let nodes: Vec<&NodeSpec> = self.spec.nodes.iter().filter(|n| self.is_here(n)).collect();
        // The user's own certificates are copied again (they replaced their files); `up`'s
        // own are made anew from the CA.
        for line in self.install_tls(&nodes, false, true)? {
            log.step(&format!("new {line}"));
        }
        for node in nodes {
            if !self.runtime.is_running(node).await {
                continue;
            }
            let client = self.sql(node).await?;
            super::reload(&client, node).await?;
            // The reload is asynchronous: a new session sees the new files once it is done.
            super::wait_until(
                std::time::Duration::from_secs(10),
                &format!("`{}` to serve its new certificate", node.name),
                || async {
                    let mut conn =
                        match crate::conn::Connection::connect(&self.replication_connect(node))
                            .await
                        {
                            Ok(conn) => conn,
                            Err(_) => return Ok(false),
                        };
                    let ok = conn.identify_system().await.is_ok();
                    conn.close().await;
                    Ok(ok)
                },
            )
            .await?;
            log.step(&format!("`{}` reloaded its certificate", node.name));
        }
        self.tls_expiries()
    }

    /// When the cluster has TLS: the CA (unless it exists, and only with `may_create_ca`: an
    /// agent building its node alone must not make a second CA beside `up`'s) and the
    /// certificates of `nodes` that have none.
    pub(crate) fn ensure_tls(
        &self,
        nodes: &[NodeSpec],
        may_create_ca: bool,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        if !self.spec.tls_on() {
            return Ok(());
        }
        for made in self.install_tls(&nodes.iter().collect::<Vec<_>>(), may_create_ca, false)? {
            log.step(&made);
        }
        Ok(())
    }

    /// The user's CA and node certificates from `[tls]`, copied into place after their checks;
    /// then `up`'s own for the other nodes (all of them anew with `renew`, or when the user's
    /// CA replaced the one they were signed by). A line per thing made.
    fn install_tls(
        &self,
        nodes: &[&NodeSpec],
        may_create_ca: bool,
        renew: bool,
    ) -> Result<Vec<String>, ClusterError> {
        let tls = &self.spec.tls;
        let ca_changed = super::tls_own::install_ca(&self.state_dir, tls)?;
        let mut made = Vec::new();
        if ca_changed {
            made.push(format!(
                "the cluster CA is `{}`",
                tls.ca_cert.as_deref().unwrap_or(Path::new("")).display()
            ));
        }
        let (own, generated): (Vec<&NodeSpec>, Vec<&NodeSpec>) =
            nodes.iter().partition(|n| tls.nodes.contains_key(&n.name));
        if !own.is_empty() {
            let ca_pem = read(&ca_cert_path(&self.state_dir))?;
            for (node, leaf) in own.iter().zip(self.node_certs(&own)) {
                let files = &tls.nodes[&node.name];
                if super::tls_own::install_node(&leaf, files, &ca_pem, self.runtime.data_owner())? {
                    made.push(format!(
                        "certificate for `{}` from `{}`",
                        node.name,
                        files.cert.display()
                    ));
                }
            }
        }
        made.extend(ensure(
            &self.state_dir,
            &self.node_certs(&generated),
            self.runtime.data_owner(),
            may_create_ca && tls.ca_cert.is_none(),
            renew || ca_changed,
        )?);
        Ok(made)
    }

    /// Writes TLS's server settings into a new primary's postgresql.auto.conf, so its first
    /// start already offers TLS: pgrepl's own sessions over TCP (docker's) require it.
    pub(crate) fn tls_settings_into(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        if !self.spec.tls_on() {
            return Ok(());
        }
        let path = self.runtime.data_dir(node).join("postgresql.auto.conf");
        let lines: String = SERVER_SETTINGS
            .iter()
            .map(|(name, value)| format!("{name} = '{value}'\n"))
            .collect();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(lines.as_bytes()))
            .map_err(|source| {
                TlsError::Io {
                    what: format!("write `{}`", path.display()),
                    source,
                }
                .into()
            })
    }

    /// Copies the cluster CA (certificate and key) into another state directory on this
    /// machine, one the agent of `node` uses in its container, where it makes its node's
    /// certificate; or puts there the node's own from `[tls.nodes]`.
    pub(crate) fn share_tls(
        &self,
        state_dir: &Path,
        owner: Option<(u32, u32)>,
        node: &NodeSpec,
    ) -> Result<(), ClusterError> {
        if !self.spec.tls_on() {
            return Ok(());
        }
        let (from, to) = (ca_dir(&self.state_dir), ca_dir(state_dir));
        let node_dir = state_dir.join(&node.name);
        // The agent creates the rest of its state directory: these are its user's.
        for dir in [state_dir, to.as_path(), node_dir.as_path()] {
            create_owned_dir(dir, owner)?;
        }
        for (file, mode) in [("ca.crt", 0o644), ("ca.key", 0o600)] {
            // A CA of the user's own may come without its key: the nodes then bring their own.
            if file == "ca.key" && !from.join(file).exists() {
                continue;
            }
            let text = read(&from.join(file))?;
            write_file(&to.join(file), text.as_bytes(), mode, owner)?;
        }
        if let Some(files) = self.spec.tls.nodes.get(&node.name) {
            // Where the machine's local runtime looks for it (`<state_dir>/<node>/tls`).
            let leaf = Leaf::server(&node.name, node_dir.join("tls"), Vec::new());
            let ca_pem = read(&from.join("ca.crt"))?;
            super::tls_own::install_node(&leaf, files, &ca_pem, owner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path, name: &str) -> Leaf {
        Leaf::server(
            name,
            dir.join(name).join("tls"),
            vec![name.into(), "127.0.0.1".into(), "localhost".into()],
        )
    }

    #[test]
    fn the_ca_signs_each_node_once_and_keys_are_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let nodes = [node(tmp.path(), "a"), node(tmp.path(), "b")];
        let made = ensure(tmp.path(), &nodes, None, true, false).unwrap();
        assert_eq!(made.len(), 3, "{made:?}");
        for key in [
            ca_dir(tmp.path()).join("ca.key"),
            nodes[0].dir.join("server.key"),
        ] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        // The chain verifies, and the certificate names what it was made for.
        let ca_pem = std::fs::read(ca_cert_path(tmp.path())).unwrap();
        let server_pem = std::fs::read(nodes[1].dir.join("server.crt")).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(&ca_pem).unwrap();
        let (_, server) = x509_parser::pem::parse_x509_pem(&server_pem).unwrap();
        let (ca, server) = (ca.parse_x509().unwrap(), server.parse_x509().unwrap());
        server.verify_signature(Some(ca.public_key())).unwrap();
        let sans = format!("{:?}", server.subject_alternative_name().unwrap().unwrap());
        assert!(
            sans.contains("DNSName(\"b\")") && sans.contains("IPAddress([127, 0, 0, 1])"),
            "{sans}"
        );
        // A second run makes nothing; a lost node certificate is made again by the same CA.
        assert!(ensure(tmp.path(), &nodes, None, true, false)
            .unwrap()
            .is_empty());
        std::fs::remove_file(nodes[0].dir.join("server.crt")).unwrap();
        assert_eq!(
            ensure(tmp.path(), &nodes, None, true, false).unwrap().len(),
            1
        );
        let again = std::fs::read(nodes[0].dir.join("server.crt")).unwrap();
        let (_, again) = x509_parser::pem::parse_x509_pem(&again).unwrap();
        again
            .parse_x509()
            .unwrap()
            .verify_signature(Some(ca.public_key()))
            .unwrap();
    }

    #[test]
    fn a_node_built_elsewhere_needs_the_ca_copied_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let error = ensure(tmp.path(), &[node(tmp.path(), "n2")], None, false, false).unwrap_err();
        assert!(
            error.to_string().contains("copy `ca.crt` and `ca.key`"),
            "{error}"
        );
    }
}
