//! The cluster file (`pgrepl.toml`): what `pgrepl up` builds. The defaults are the manual
//! recipe's: primary `pg_master`, sync standby `pg_slave`, async standby `pg_asyncslave`, role
//! `replicator`, `FIRST 1 (pg_slave, pg_asyncslave)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sync_policy::{SyncMethod, SyncPolicy};

mod ha;
mod tls;

pub use self::ha::{HaSpec, DEFAULT_START_TIMEOUT_S, DEFAULT_TTL_S};
pub use self::tls::{NodeTlsFiles, TlsMode, TlsSpec};

/// Which runtime hosts the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// initdb/postgres processes from the machine's PostgreSQL, on 127.0.0.1.
    #[default]
    Local,
    /// Containers through the Docker engine API.
    Docker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Primary,
    Standby,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub role: NodeRole,
    /// The address the node's server listens on and everyone reaches it at: pgrepl, the other
    /// nodes' replication and the agents. Another machine's address for a node that runs
    /// there (its own agent builds and runs it). Local runtime only; absent: 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Host port: the local server's port, or the port a container publishes on 127.0.0.1.
    pub port: u16,
    /// Where the node's agent serves its HTTP API (`IP:PORT`; absent: `up` picks a port on
    /// 127.0.0.1 and records it in the state dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<std::net::SocketAddr>,
}

/// Where a node listens when the cluster file gives no host.
pub const LOOPBACK: &str = "127.0.0.1";

impl NodeSpec {
    /// The node's address: its `host`, else 127.0.0.1.
    pub fn host(&self) -> &str {
        self.host.as_deref().unwrap_or(LOOPBACK)
    }
}

/// An IP address or a DNS name (`_` allowed: Docker names containers `pg_master`). Nothing
/// else is accepted: the host goes into pg_ctl's command line (run through a shell),
/// listen_addresses and pg_hba.conf.
fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `[sync]`: how commits wait for standbys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SyncSection", into = "SyncSection")]
pub struct SyncSpec {
    /// The standbys, in priority order; none: asynchronous replication only.
    pub policy: SyncPolicy,
    /// `synchronous_commit` on the primary.
    pub synchronous_commit: String,
}

/// `[sync]` as the file spells it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncSection {
    /// `FIRST` (priority) or `ANY` (quorum), in any case.
    #[serde(default)]
    method: SyncMethod,
    #[serde(default = "default_num_sync")]
    num_sync: u32,
    standbys: Vec<String>,
    #[serde(default = "default_synchronous_commit")]
    synchronous_commit: String,
}

impl From<SyncSection> for SyncSpec {
    fn from(section: SyncSection) -> SyncSpec {
        SyncSpec {
            policy: SyncPolicy::new(section.method, section.num_sync, section.standbys),
            synchronous_commit: section.synchronous_commit,
        }
    }
}

impl From<SyncSpec> for SyncSection {
    fn from(sync: SyncSpec) -> SyncSection {
        SyncSection {
            method: sync.policy.method,
            num_sync: sync.policy.num,
            standbys: sync.policy.names,
            synchronous_commit: sync.synchronous_commit,
        }
    }
}

fn default_num_sync() -> u32 {
    1
}
fn default_synchronous_commit() -> String {
    "on".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationRole {
    pub user: String,
    /// Inline password (the cluster file is then a secret: keep it 0600), or `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A file holding just the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSettings {
    pub image: String,
    pub network: String,
    /// uid:gid of the image's postgres user, who must own the volumes.
    pub postgres_uid: u32,
    pub postgres_gid: u32,
}

/// `[local]`: how the local runtime's servers meet the network, for nodes that each run on a
/// machine of their own (a container, a host) rather than side by side on 127.0.0.1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// listen_addresses for every server (e.g. `*` where the machine's address can change);
    /// absent: the node's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Networks (`address/prefix`) whose clients the primary's pg_hba admits with a password,
    /// beside loopback and the nodes' hosts: replication and the superuser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// A file holding the superuser's password, which initdb sets (relative to the cluster
    /// file); absent: the superuser has no password and logs in over the socket only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superuser_password_file: Option<PathBuf>,
}

/// `address/prefix` with a prefix that fits the address.
fn valid_cidr(text: &str) -> bool {
    let Some((address, prefix)) = text.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            image: "postgres:17".into(),
            network: "pg_net".into(),
            postgres_uid: 999,
            postgres_gid: 999,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// Data, logs and the cluster state, relative to the cluster file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub replication: ReplicationRole,
    /// Server settings applied with ALTER SYSTEM on the primary (standbys inherit them).
    pub settings: BTreeMap<String, String>,
    pub sync: SyncSpec,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub docker: DockerSettings,
    #[serde(default, skip_serializing_if = "is_default")]
    pub local: LocalSettings,
    /// Present: `up` starts an agent per node and failover is automatic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaSpec>,
    /// Present (with `[ha]`): `up` starts HAProxy in front of the nodes, routed by the agents'
    /// health API; `down` stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    /// `[tls]`: TLS between the nodes and for pgrepl's own sessions, on unless turned off.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: TlsSpec,
}

/// `[proxy]`: where the application's two addresses listen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// Loopback unless another interface is named.
    #[serde(default = "default_proxy_bind")]
    pub bind: std::net::IpAddr,
    /// Reaches the primary (Patroni's example: 5000).
    #[serde(default = "default_write_port")]
    pub write_port: u16,
    /// Reaches the standbys, the primary when none answers.
    #[serde(default = "default_read_port")]
    pub read_port: u16,
    /// The docker runtime's HAProxy image (`compose/build-image haproxy` builds the default
    /// from the machine's HAProxy when no registry answers).
    #[serde(
        default = "default_proxy_image",
        skip_serializing_if = "is_default_proxy_image"
    )]
    pub image: String,
}

const DEFAULT_PROXY_IMAGE: &str = "pgrepl-local/haproxy:2.6";

fn default_proxy_image() -> String {
    DEFAULT_PROXY_IMAGE.into()
}

fn is_default_proxy_image(image: &str) -> bool {
    image == DEFAULT_PROXY_IMAGE
}

fn default_proxy_bind() -> std::net::IpAddr {
    std::net::Ipv4Addr::LOCALHOST.into()
}

fn default_write_port() -> u16 {
    5000
}

fn default_read_port() -> u16 {
    5001
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".pgrepl")
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("read cluster file `{path}`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster file `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cluster file: {0}")]
    Invalid(String),
}

impl Default for ClusterSpec {
    fn default() -> Self {
        let settings = [
            ("wal_level", "replica"),
            ("max_wal_senders", "4"),
            // pg_rewind needs it (or data checksums) to rejoin a former primary cheaply.
            ("wal_log_hints", "on"),
            // WAL kept for a standby that was away (no slots, so none is held forever) and for
            // pg_rewind, which reads a former primary's WAL back to the last common checkpoint:
            // as much as max_wal_size (1GB by default) lets pass between two checkpoints.
            ("wal_keep_size", "1GB"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let node = |name: &str, role, port| NodeSpec {
            name: name.into(),
            role,
            host: None,
            port,
            api: None,
        };
        ClusterSpec {
            runtime: RuntimeKind::Local,
            state_dir: default_state_dir(),
            replication: ReplicationRole {
                user: "replicator".into(),
                password: Some("pass".into()),
                password_file: None,
            },
            settings,
            sync: SyncSpec {
                policy: SyncPolicy::new(SyncMethod::Priority, 1, ["pg_slave", "pg_asyncslave"]),
                synchronous_commit: default_synchronous_commit(),
            },
            nodes: vec![
                node("pg_master", NodeRole::Primary, 54320),
                node("pg_slave", NodeRole::Standby, 54321),
                node("pg_asyncslave", NodeRole::Standby, 54322),
            ],
            docker: DockerSettings::default(),
            local: LocalSettings::default(),
            ha: None,
            proxy: None,
            tls: TlsSpec::default(),
        }
    }
}

impl ClusterSpec {
    /// Reads and validates a cluster file; unknown keys are errors, not silently ignored.
    pub fn load(path: &Path) -> Result<ClusterSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        let spec: ClusterSpec = toml::from_str(&text).map_err(|e| SpecError::Parse {
            path: path.to_owned(),
            message: one_line(&e.to_string()),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The documented default file, as `pgrepl init` writes it.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("a spec always serializes");
        format!(
            "# pgrepl cluster file: `pgrepl up` builds this topology, `pgrepl down` removes it.\n\
             # runtime: local (initdb/postgres processes) or docker (containers via the engine API).\n\
             # TLS is on: `up` makes a cluster CA and a certificate per node; [tls] mode = \"off\" turns it off.\n\
             # Unknown keys are errors. See docs/cluster-file.md.\n\n{body}"
        )
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |m: String| Err(SpecError::Invalid(m));
        let primaries = self
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Primary)
            .count();
        if primaries != 1 {
            return invalid(format!(
                "exactly one node must have role = \"primary\", found {primaries}"
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.name.is_empty()
                || !node
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return invalid(format!(
                    "node name `{}` must be letters, digits, `_` or `-`",
                    node.name
                ));
            }
            if let Some(host) = node.host.as_deref().filter(|h| !valid_host(h)) {
                return invalid(format!(
                    "node `{}`: host `{host}` must be an IP address or a DNS name",
                    node.name
                ));
            }
            if let Some(other) = self.nodes[..i]
                .iter()
                .find(|o| o.name == node.name || (o.port == node.port && o.host() == node.host()))
            {
                return invalid(format!(
                    "nodes `{}` and `{}` share a name or port on host {}",
                    other.name,
                    node.name,
                    node.host()
                ));
            }
        }
        if let Some(listen) = self
            .local
            .listen
            .as_deref()
            .filter(|l| *l != "*" && !valid_host(l))
        {
            return invalid(format!(
                "local.listen `{listen}` must be `*`, an IP address or a DNS name"
            ));
        }
        if let Some(client) = self.local.clients.iter().find(|c| !valid_cidr(c)) {
            return invalid(format!(
                "local.clients `{client}` must be an address/prefix such as 10.0.0.0/24"
            ));
        }
        if let Some(Err(message)) = self.ha.as_ref().map(HaSpec::validate_etcd) {
            return invalid(message);
        }
        if let Err(message) = self.tls.validate(&self.nodes) {
            return invalid(message);
        }
        if let Some(proxy) = &self.proxy {
            if self.ha.is_none() {
                return invalid(
                    "[proxy] routes by the agents' health API: add [ha], or remove [proxy]".into(),
                );
            }
            let taken = self.nodes.iter().map(|n| n.port);
            if let Some(port) = [proxy.write_port, proxy.read_port]
                .into_iter()
                .find(|p| *p == 0 || taken.clone().any(|t| t == *p))
            {
                return invalid(format!(
                    "proxy port {port} is 0 or a node's: give [proxy] write_port and read_port ports of their own"
                ));
            }
            if proxy.write_port == proxy.read_port {
                return invalid(format!(
                    "[proxy] write_port and read_port are both {}: give two ports",
                    proxy.write_port
                ));
            }
        }
        let standbys: Vec<&str> = self.standbys().map(|n| n.name.as_str()).collect();
        let policy = &self.sync.policy;
        for name in &policy.names {
            if !standbys.contains(&name.as_str()) {
                return invalid(format!(
                    "sync.standbys names `{name}`, which is no standby (standbys: {})",
                    standbys.join(", ")
                ));
            }
        }
        if policy.num as usize > policy.names.len() || (policy.num == 0 && policy.is_synchronous())
        {
            return invalid(format!(
                "sync.num_sync = {} is impossible with {} listed standbys",
                policy.num,
                policy.names.len()
            ));
        }
        if !matches!(
            self.sync.synchronous_commit.as_str(),
            "on" | "off" | "local" | "remote_write" | "remote_apply"
        ) {
            return invalid(format!(
                "sync.synchronous_commit `{}` is not a valid setting",
                self.sync.synchronous_commit
            ));
        }
        if self.replication.password.is_none() && self.replication.password_file.is_none() {
            return invalid("replication needs `password` or `password_file`".into());
        }
        Ok(())
    }

    pub fn primary(&self) -> &NodeSpec {
        self.nodes
            .iter()
            .find(|n| n.role == NodeRole::Primary)
            .expect("validated: one primary")
    }

    pub fn standbys(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.iter().filter(|n| n.role == NodeRole::Standby)
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Two nodes with the same port (on different hosts): they cannot all run on one machine,
    /// whose socket directory names sockets by port.
    pub fn shared_port(&self) -> Option<(&NodeSpec, &NodeSpec)> {
        self.nodes.iter().enumerate().find_map(|(i, node)| {
            self.nodes[..i]
                .iter()
                .find(|o| o.port == node.port)
                .map(|o| (o, node))
        })
    }

    /// The same cluster after `new_primary` took over: roles swap, and in the sync list the new
    /// primary's name is replaced by the old primary's, keeping its rank (the recipe's last
    /// step: `FIRST 1 (pg_master, pg_asyncslave)` once `pg_slave` is primary).
    pub fn with_primary(&self, new_primary: &str) -> Result<ClusterSpec, SpecError> {
        let old_primary = self.primary().name.clone();
        if old_primary == new_primary {
            return Ok(self.clone());
        }
        if self.node(new_primary).is_none() {
            return Err(SpecError::Invalid(format!(
                "the recorded primary `{new_primary}` is no node of this cluster"
            )));
        }
        let mut spec = self.clone();
        for node in &mut spec.nodes {
            node.role = if node.name == new_primary {
                NodeRole::Primary
            } else {
                NodeRole::Standby
            };
        }
        spec.sync.policy = self.sync_with_primary(new_primary);
        Ok(spec)
    }

    /// The sync policy with `new_primary` as primary: its name swapped out of the standby list
    /// for the file's primary's.
    pub fn sync_with_primary(&self, new_primary: &str) -> SyncPolicy {
        let old_primary = &self.primary().name;
        let mut policy = self.sync.policy.clone();
        for name in &mut policy.names {
            if name == new_primary {
                *name = old_primary.clone();
            }
        }
        policy
    }

    /// Whether the cluster runs with TLS: `[tls] mode`, unless `[settings]` turns `ssl` off
    /// (as cluster files written before `[tls]` existed do).
    pub fn tls_on(&self) -> bool {
        self.tls.mode == TlsMode::On && self.settings.get("ssl").map(String::as_str) != Some("off")
    }

    /// What ALTER SYSTEM sets on the primary: TLS's settings, then the file's `[settings]`.
    pub fn server_settings(&self) -> BTreeMap<String, String> {
        let tls = self
            .tls_on()
            .then_some(super::tls::SERVER_SETTINGS)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        tls.chain(self.settings.clone()).collect()
    }

    /// The replication password, from the file or inline.
    pub fn replication_password(&self, base: &Path) -> Result<String, SpecError> {
        if let Some(file) = &self.replication.password_file {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| SpecError::Read { path, source })?;
            return Ok(text.trim_end_matches(['\n', '\r']).to_owned());
        }
        Ok(self.replication.password.clone().unwrap_or_default())
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_recipe_and_round_trips() {
        let spec = ClusterSpec::default();
        assert_eq!(
            spec.sync.policy.to_string(),
            "FIRST 1 (pg_slave, pg_asyncslave)"
        );
        assert_eq!(spec.primary().name, "pg_master");
        let text = spec.to_toml();
        let back: ClusterSpec = toml::from_str(&text).unwrap();
        assert_eq!(back, spec);
        back.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_impossible_policies_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pgrepl.toml");
        let text = ClusterSpec::default().to_toml().replace(
            "runtime = \"local\"",
            "runtime = \"local\"\ncolour = \"blue\"",
        );
        std::fs::write(&path, text).unwrap();
        let err = ClusterSpec::load(&path).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");

        let mut spec = ClusterSpec::default();
        spec.sync.policy.names.push("pg_ghost".into());
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("`pg_ghost`, which is no standby"), "{err}");

        let mut spec = ClusterSpec::default();
        spec.sync.policy.num = 3;
        assert!(spec
            .validate()
            .unwrap_err()
            .to_string()
            .contains("num_sync = 3"));

        let mut spec = ClusterSpec::default();
        spec.nodes[2].port = spec.nodes[1].port;
        assert!(spec
            .validate()
            .unwrap_err()
            .to_string()
            .contains("share a name or port"));
    }

    #[test]
    fn hosts_are_addresses_or_names_and_one_port_may_serve_several_hosts() {
        let mut spec = ClusterSpec::default();
        for (node, host) in spec
            .nodes
            .iter_mut()
            .zip(["10.0.0.1", "db-2.example", "::1"])
        {
            node.host = Some(host.into());
            node.port = 5432;
        }
        spec.validate().unwrap();
        assert_eq!(spec.nodes[0].host(), "10.0.0.1");
        assert_eq!(ClusterSpec::default().nodes[0].host(), "127.0.0.1");
        assert!(spec.shared_port().is_some());
        assert!(ClusterSpec::default().shared_port().is_none());
        let text = spec.to_toml();
        assert!(text.contains("host = \"db-2.example\""), "{text}");
        assert_eq!(toml::from_str::<ClusterSpec>(&text).unwrap(), spec);

        spec.nodes[2].host = Some("10.0.0.1".into());
        let err = spec.validate().unwrap_err().to_string();
        assert!(
            err.contains("share a name or port on host 10.0.0.1"),
            "{err}"
        );
        for bad in ["", "a b", "x;rm -rf /", "-lead.example", "a..b"] {
            spec.nodes[2].host = Some(bad.into());
            let err = spec.validate().unwrap_err().to_string();
            assert!(
                err.contains("must be an IP address or a DNS name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn local_settings_take_star_or_a_host_and_clients_as_cidrs() {
        let mut spec = ClusterSpec::default();
        assert!(!spec.to_toml().contains("[local]"), "absent when default");
        spec.local = LocalSettings {
            listen: Some("*".into()),
            clients: vec!["172.18.0.0/16".into(), "fd00::/64".into()],
            superuser_password_file: Some("superuser.password".into()),
        };
        spec.validate().unwrap();
        let text = spec.to_toml();
        assert!(text.contains("[local]"), "{text}");
        assert_eq!(toml::from_str::<ClusterSpec>(&text).unwrap(), spec);
        spec.local.listen = Some("a b".into());
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("local.listen `a b`"), "{err}");
        spec.local.listen = None;
        for bad in ["172.18.0.0", "172.18.0.0/33", "pg_net/16", "::/129"] {
            spec.local.clients = vec![bad.into()];
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains("must be an address/prefix"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_new_primary_swaps_roles_and_sync_names() {
        let spec = ClusterSpec::default().with_primary("pg_slave").unwrap();
        assert_eq!(spec.primary().name, "pg_slave");
        assert_eq!(
            spec.sync.policy.to_string(),
            "FIRST 1 (pg_master, pg_asyncslave)"
        );
        spec.validate().unwrap();
        let back = spec.with_primary("pg_master").unwrap();
        assert_eq!(back, ClusterSpec::default());
        assert!(ClusterSpec::default().with_primary("nope").is_err());
    }

    /// `[sync]` as `pgrepl init` wrote it before the policy had a type of its own.
    const SYNC_SECTION: &str = "[sync]
method = \"FIRST\"
num_sync = 1
standbys = [
    \"pg_slave\",
    \"pg_asyncslave\",
]
synchronous_commit = \"on\"
";

    #[test]
    fn the_sync_section_reads_and_writes_as_it_always_did() {
        let text = ClusterSpec::default().to_toml();
        assert!(text.contains(SYNC_SECTION), "{text}");
        // Any case, as the server reads the keywords; written back as the keyword.
        for (written, method) in [
            ("FIRST", SyncMethod::Priority),
            ("first", SyncMethod::Priority),
            ("ANY", SyncMethod::Quorum),
            ("Any", SyncMethod::Quorum),
        ] {
            let file = text.replace("method = \"FIRST\"", &format!("method = \"{written}\""));
            let spec: ClusterSpec = toml::from_str(&file).unwrap();
            spec.validate().unwrap();
            assert_eq!(spec.sync.policy.method, method, "{written}");
            let again = spec.to_toml();
            assert!(
                again.contains(&format!("method = \"{}\"", method.keyword())),
                "{again}"
            );
        }
        // What a file may leave out; and an asynchronous one.
        let short = text.replace("method = \"FIRST\"\nnum_sync = 1\n", "");
        let spec: ClusterSpec = toml::from_str(&short).unwrap();
        assert_eq!(spec, ClusterSpec::default());
        let async_only = text.replace(
            "num_sync = 1\nstandbys = [\n    \"pg_slave\",\n    \"pg_asyncslave\",\n]",
            "num_sync = 0\nstandbys = []",
        );
        let spec: ClusterSpec = toml::from_str(&async_only).unwrap();
        spec.validate().unwrap();
        assert!(!spec.sync.policy.is_synchronous());
        assert_eq!(spec.sync.policy.to_string(), "");
        assert!(spec
            .to_toml()
            .contains("[sync]\nmethod = \"FIRST\"\nnum_sync = 0\nstandbys = []\n"));
    }

    #[test]
    fn a_bad_method_or_an_unknown_sync_key_is_refused_in_one_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pgrepl.toml");
        let text = ClusterSpec::default().to_toml();
        for (from, to, says) in [
            (
                "method = \"FIRST\"",
                "method = \"MOST\"",
                "sync.method `MOST` must be FIRST or ANY",
            ),
            ("num_sync = 1", "num_sync = 1\nquorum = true", "quorum"),
        ] {
            std::fs::write(&path, text.replace(from, to)).unwrap();
            let err = ClusterSpec::load(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn own_certificates_and_etcd_credentials_come_whole_or_are_refused_in_one_line() {
        let refused = |spec: &ClusterSpec| spec.validate().unwrap_err().to_string();
        let mut spec = ClusterSpec::default();
        spec.tls.ca_cert = Some("ca.crt".into());
        assert!(refused(&spec).contains("no ca_key to sign a certificate for `pg_master`"));
        spec.tls.ca_key = Some("ca.key".into());
        spec.validate().unwrap();
        spec.tls.nodes.insert(
            "pg_ghost".into(),
            NodeTlsFiles {
                cert: "a".into(),
                key: "b".into(),
            },
        );
        assert!(refused(&spec).contains("[tls.nodes.pg_ghost] names no node"));
        let mut spec = ClusterSpec::default();
        spec.tls.ca_key = Some("ca.key".into());
        assert!(refused(&spec).contains("need ca_cert"));
        spec.tls.mode = TlsMode::Off;
        assert!(refused(&spec).contains("mode = \"off\""));

        let mut spec = ClusterSpec::default();
        let ha = |f: &dyn Fn(&mut HaSpec)| {
            let mut ha = HaSpec {
                etcd: vec!["https://10.0.0.1:2379".into()],
                etcd_ca: Some("ca.crt".into()),
                ..HaSpec::default()
            };
            f(&mut ha);
            Some(ha)
        };
        spec.ha = ha(&|_| {});
        spec.validate().unwrap();
        spec.ha = ha(&|h| h.etcd_ca = None);
        assert!(refused(&spec).contains("give etcd_ca"));
        spec.ha = ha(&|h| h.etcd_cert = Some("c".into()));
        assert!(refused(&spec).contains("etcd_cert and etcd_key go together"));
        spec.ha = ha(&|h| h.etcd_user = Some("u".into()));
        assert!(refused(&spec).contains("etcd_password_file"));
        spec.ha = ha(&|h| h.etcd = vec![]);
        assert!(refused(&spec).contains("etcd of your own"));
        spec.ha = ha(&|h| h.etcd.push("http://10.0.0.2:2379".into()));
        assert!(refused(&spec).contains("mixes http:// and https://"));
    }
}
