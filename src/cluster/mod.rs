//! A replicated cluster from nothing: the manual recipe (primary, a sync and an async standby,
//! replication role, pg_hba line, one base backup into both standbys, the sync policy, and the
//! checks) done natively and idempotently by `pgrepl up`.
//!
//! Each step first looks at what exists, so `up` on a healthy cluster changes nothing and on a
//! half-built one continues where it stopped. Nodes live in a [`runtime::Runtime`]: local
//! processes or Docker containers, with the same steps and checks.
//!
//! Files, by what they answer:
//! - building: `build` (the steps of `up`), `sql_steps` (the SQL those steps send),
//!   `bootstrap` (one node alone, for agents on several machines), `tls` and `tls_own` (the
//!   certificates `up` makes or copies);
//! - changing: `role` (failover, switchover, rejoin, reinit, resync), `settings` (`pgrepl
//!   config`), `drill` (the recipe's checks), `check_failed` (what a check saw instead);
//! - deciding, pure: `plan` (what a role change must do), `ports` (is a port free);
//! - remembering: `spec` (the cluster file), `record` (what `up` built), `open` (where a
//!   command finds its cluster), `topology` (the primary now), `history` (role changes);
//! - running nodes: `runtime` (the interface), `local` and `docker` (the two runtimes),
//!   `runtime_error`, `server_log` (why a server did not start), `server_version` (majors);
//! - for applications: `client_uris` (multi-host addresses).
//!
//! Neighbours: `backup` (the standbys' data), `conn::sql` (pgrepl's own SQL sessions).

mod bootstrap;
mod build;
pub mod check_failed;
pub mod client_uris;
pub mod docker;
pub mod drill;
pub mod history;
pub mod local;
pub mod open;
pub mod plan;
pub mod ports;
pub mod record;
pub mod role;
pub use self::role::Rebuild;
pub mod runtime;
pub mod runtime_error;
mod server_log;
pub mod server_version;
pub mod settings;
pub mod spec;
mod sql_steps;
pub mod tls;
mod tls_own;
pub mod topology;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

pub use self::build::expected_sync_states;
pub use self::open::{Purpose, RuntimeChoice};
use self::runtime::Runtime;
use self::spec::{ClusterSpec, NodeSpec};
pub(crate) use self::sql_steps::{
    alter_system, conf_load_time, node_err_sql, refuses_writes, reload, replay_lsn,
    streaming_standbys,
};
use crate::backup::{self, BackupTarget, BaseBackupOptions};
use crate::conn::SslMode;
use crate::conn::{sql, ConnectOptions, ConnectionError, Host, Password};
// Standard SQL quoting is the same as the replication grammar's: `''` and `""` doubling.
use crate::proto::command::{quote_ident, quote_literal};

/// application_name of pgrepl's own SQL sessions (never a standby name).
const SESSION_NAME: &str = "pgrepl";

/// How long opening a SQL session to a node may take.
const SQL_CONNECT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("nodes `{0}` and `{1}` share port {2}: `up` runs every node on this machine; for nodes on several machines run `pgrepl agent --node NAME` on each, which builds its node")]
    SharedPort(String, String, u16),
    #[error("node `{0}` has a host: hosts are for the local runtime (one `pgrepl agent` per machine); remove it for the docker runtime")]
    HostOnDocker(String),
    #[error("unknown setting `{name}` in the cluster file: {detail}")]
    UnknownSetting { name: String, detail: String },
    #[error("`{node}` runs on another machine ({host}): `{what}` acts on this machine's servers only; run `pgrepl agent --node NAME` on each machine with [ha] in the cluster file, and `switchover`/`failover` go through the agents")]
    NotAllHere {
        node: String,
        host: String,
        what: String,
    },
    #[error(
        "`{node}` runs on another machine ({host}): pgrepl reaches it there over replication only"
    )]
    NoSessionFromHere { node: String, host: String },
    #[error("`{0}` holds a former primary's data (no standby.signal): bring it back with `pgrepl rejoin {0}`")]
    FormerPrimaryData(String),
    #[error("`{node}` reported the WAL position `{text}`, which is no LSN")]
    NotAnLsn { node: String, text: String },
    #[error("asking `{node}` for WAL")]
    WalQuery {
        node: String,
        #[source]
        source: Box<crate::replication::ReplicationError>,
    },
    #[error("the cluster in `{}` runs PostgreSQL {major} (`{}`), not {asked}; drop --pg-version, or remove it first with `pgrepl down --purge`", .state_dir.display(), .bin_dir.display())]
    OtherMajor {
        state_dir: PathBuf,
        major: u32,
        bin_dir: PathBuf,
        asked: u32,
    },
    #[error("the cluster runs without TLS ([tls] mode = \"off\" or ssl = \"off\"): there is no certificate to rotate")]
    TlsOff,
    #[error(transparent)]
    Runtime(#[from] runtime_error::RuntimeError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node `{node}`")]
    Node {
        node: String,
        #[source]
        source: Box<ConnectionError>,
    },
    // Boxed: the errors below are large and every cluster step returns this type.
    #[error("base backup")]
    Backup(#[source] Box<backup::BackupError>),
    #[error("check failed: {0}")]
    Check(check_failed::CheckFailed),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("no cluster here: no `pgrepl.toml` and nothing in `{}` (run `pgrepl up` first, or give --cluster FILE)", .0.display())]
    NoCluster(PathBuf),
    #[error("cluster file `{}` does not exist (`pgrepl init --cluster FILE` writes one)", .0.display())]
    NoClusterFile(PathBuf),
    /// The command line names another runtime, image or file than the cluster was built with.
    #[error(transparent)]
    Contradiction(#[from] record::Contradiction),
    #[error("no node named `{0}` in the cluster file (nodes: {1})")]
    UnknownNode(String, String),
    #[error(transparent)]
    Dump(Box<crate::dump::DumpError>),
    /// A role change refused before anything changed.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
}

impl From<backup::BackupError> for ClusterError {
    fn from(error: backup::BackupError) -> Self {
        Self::Backup(Box::new(error))
    }
}

// Not `#[from]`: that would make the check the error's source as well, and the chain would
// print it twice.
impl From<check_failed::CheckFailed> for ClusterError {
    fn from(check: check_failed::CheckFailed) -> Self {
        Self::Check(check)
    }
}

impl From<crate::dump::DumpError> for ClusterError {
    fn from(error: crate::dump::DumpError) -> Self {
        Self::Dump(Box::new(error))
    }
}

impl ClusterError {
    /// The connection failure underneath, if that is what went wrong (for hints).
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        match self {
            Self::Node { source, .. } => Some(source),
            Self::Backup(e) => e.connection_error(),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    fn node(node: &NodeSpec) -> impl FnOnce(ConnectionError) -> ClusterError + '_ {
        move |source| ClusterError::Node {
            node: node.name.clone(),
            source: Box::new(source),
        }
    }
}

/// A cluster file opened with its runtime.
pub struct Cluster {
    /// The topology as it is now (the file's, with roles swapped after a failover).
    pub spec: ClusterSpec,
    /// The topology as the file describes it; every role change is derived from it, so the
    /// sync policy after several changes does not depend on the path taken.
    pub(crate) file_spec: ClusterSpec,
    pub runtime: Runtime,
    replication_password: String,
    pub(crate) state_dir: PathBuf,
    /// The cluster file read, or `None` for the built-in defaults.
    cluster_file: Option<PathBuf>,
    /// The node hosts that are this machine's, when nodes run on several machines (an agent's:
    /// its node's host; a command's: the hosts it can bind). `None`: every node is here.
    machine: Option<Vec<String>>,
}

/// What `up` does besides building the topology.
#[derive(Debug, Default, Clone)]
pub struct UpOptions {
    /// A plain-format SQL dump restored into the primary when this run initialises it.
    pub dump: Option<PathBuf>,
    /// The database the dump is restored into (created when absent); `postgres` by default.
    pub dump_database: String,
    /// Ctrl-C: the base backup stops and removes what it staged.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// Where a step reports progress, so the CLI can print as it goes.
pub trait StepLog: Send + Sync {
    fn step(&self, text: &str);
}

/// What `up` did and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpSummary {
    pub nodes: Vec<NodeStatus>,
    pub synchronous_standby_names: String,
    pub elapsed_ms: u128,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    pub port: u16,
    /// A conninfo stock psql can use (no password).
    pub conninfo: String,
    pub sync_state: Option<String>,
}

impl Cluster {
    /// The cluster file this cluster was opened from, `None` for the built-in defaults.
    pub fn cluster_file(&self) -> Option<&std::path::Path> {
        self.cluster_file.as_deref()
    }

    /// Where the cluster's data, logs and state live.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// Declares that this process runs on the machine of `node` (an agent): nodes with another
    /// host run elsewhere, with their own state directory, reached only over the network.
    pub fn on_machine_of(&mut self, node: &NodeSpec) {
        self.machine = Some(vec![node.host().to_owned()]);
    }

    pub(crate) fn replication_password(&self) -> &str {
        &self.replication_password
    }

    /// Whether `node` runs on this machine (its data, socket and processes are here).
    pub(crate) fn is_here(&self, node: &NodeSpec) -> bool {
        self.machine
            .as_ref()
            .is_none_or(|hosts| hosts.iter().any(|h| h == node.host()))
    }

    /// Refuses `what` (a manual role change, a drill) when some node runs on another machine:
    /// it stops, starts and rewrites servers through this machine's runtime.
    pub fn all_here(&self, what: &str) -> Result<(), ClusterError> {
        match self.spec.nodes.iter().find(|n| !self.is_here(n)) {
            None => Ok(()),
            Some(node) => Err(ClusterError::NotAllHere {
                node: node.name.clone(),
                host: node.host().to_string(),
                what: what.to_owned(),
            }),
        }
    }

    /// The superuser's session options for a node on this machine (over its socket). A node on
    /// another machine has no superuser session from here: the socket path would name a
    /// server of this machine with the same port.
    pub(crate) fn superuser(&self, node: &NodeSpec) -> Result<ConnectOptions, ClusterError> {
        if !self.is_here(node) {
            if let Runtime::Local(local) = &self.runtime {
                if let Some(options) = local.remote_superuser(node)? {
                    return Ok(self.verified(options));
                }
            }
            return Err(ClusterError::NoSessionFromHere {
                node: node.name.clone(),
                host: node.host().to_string(),
            });
        }
        Ok(self.verified(self.runtime.superuser(node)))
    }

    /// With TLS, a session over TCP checks the server's certificate against the cluster CA
    /// and its name (`verify-full`); a socket carries no TLS.
    fn verified(&self, mut options: ConnectOptions) -> ConnectOptions {
        if self.spec.tls_on() && matches!(options.host, Host::Tcp(_)) {
            options.sslmode = SslMode::VerifyFull;
            options.sslrootcert = Some(tls::ca_cert_path(&self.state_dir));
        }
        options
    }

    /// The topology as it is now: the recorded primary may have changed since `open`.
    pub(crate) fn current_spec(&self) -> Result<ClusterSpec, ClusterError> {
        match topology::Topology::load(&self.state_dir)? {
            Some(topology) => Ok(self.file_spec.with_primary(&topology.primary)?),
            None => Ok(self.file_spec.clone()),
        }
    }

    pub fn node(&self, name: &str) -> Result<&NodeSpec, ClusterError> {
        self.spec.node(name).ok_or_else(|| {
            let names: Vec<&str> = self.spec.nodes.iter().map(|n| n.name.as_str()).collect();
            ClusterError::UnknownNode(name.to_owned(), names.join(", "))
        })
    }

    /// Every node with a superuser connection from this host (for `status`, `lag --cluster`).
    /// A node on another machine without `[local] superuser_password_file` is reached over TCP
    /// with the password libpq would find (PGPASSWORD, PGPASSFILE, `~/.pgpass`).
    pub fn node_connections(&self) -> Vec<(String, ConnectOptions)> {
        self.spec
            .nodes
            .iter()
            .map(|n| {
                let options = self
                    .superuser(n)
                    .unwrap_or_else(|_| self.superuser_over_tcp(n));
                (n.name.clone(), options)
            })
            .collect()
    }

    fn superuser_over_tcp(&self, node: &NodeSpec) -> ConnectOptions {
        let env = |key: &str| std::env::var(key).ok();
        let mut options = ConnectOptions::resolve(Default::default(), &env)
            .unwrap_or_else(|_| self.runtime.superuser(node));
        options.host = Host::Tcp(node.host().to_owned());
        options.port = node.port;
        options.user = "postgres".into();
        options.dbname = Some("postgres".into());
        options
    }

    /// The replication role's session to `node` from this host.
    fn replication_connect(&self, node: &NodeSpec) -> ConnectOptions {
        let (host, port) = self.runtime.host_address(node);
        let mut connect = ConnectOptions::resolve(Default::default(), &|_| None)
            .expect("defaults always resolve");
        connect.host = Host::Tcp(host);
        connect.port = port;
        connect.user = self.spec.replication.user.clone();
        connect.password = Some(Password::from(self.replication_password.clone()));
        connect.application_name = Some(SESSION_NAME.into());
        self.verified(connect)
    }

    /// What `standby` puts in primary_conninfo to follow `primary`.
    pub(crate) fn primary_conninfo(&self, primary: &NodeSpec, standby: &NodeSpec) -> String {
        let mut connect = self.replication_connect(primary);
        let (host, port) = self.runtime.primary_address_for_standbys(primary);
        connect.host = Host::Tcp(host);
        connect.port = port;
        if self.spec.tls_on() {
            connect.sslrootcert = Some(tls::STANDBY_ROOT_CERT.into());
        }
        connect.primary_conninfo(Some(&standby.name), true)
    }

    /// A base backup of `primary` into `targets` that become its standbys: primary_conninfo
    /// as [`Self::primary_conninfo`] writes it, the data owned by the servers' user.
    pub(crate) fn standby_backup_options(
        &self,
        primary: &NodeSpec,
        targets: Vec<BackupTarget>,
        label: String,
    ) -> BaseBackupOptions {
        let mut options = BaseBackupOptions::new(targets);
        options.write_recovery_conf = true;
        options.fast_checkpoint = true;
        options.owner = self.runtime.data_owner();
        options.primary_host_override = Some(self.runtime.primary_address_for_standbys(primary));
        options.primary_sslrootcert = self.spec.tls_on().then(|| tls::STANDBY_ROOT_CERT.into());
        options.label = label;
        options
    }

    /// A superuser session to `node`, opened within [`SQL_CONNECT`]: a server that accepts the
    /// socket but never answers (stopped, swapping) would otherwise hold a command for ever.
    async fn sql(&self, node: &NodeSpec) -> Result<Client, ClusterError> {
        tokio::time::timeout(
            SQL_CONNECT,
            sql::connect(&self.superuser(node)?, SESSION_NAME),
        )
        .await
        .map_err(|_| ClusterError::Timeout(SQL_CONNECT, format!("a session to `{}`", node.name)))?
        .map_err(ClusterError::node(node))
    }

    /// Stops (and with `purge` deletes) every node.
    pub async fn down(&self, purge: bool) -> Result<(), ClusterError> {
        self.runtime.remove(&self.spec.nodes, purge).await?;
        if purge {
            topology::Topology::remove(&self.state_dir)?;
            let path = record::ClusterRecord::path(&self.state_dir);
            record::ClusterRecord::remove(&self.state_dir)
                .map_err(|e| ClusterError::io(format!("remove `{}`", path.display()), e))?;
        }
        Ok(())
    }

    pub async fn start_node(&self, name: &str) -> Result<(), ClusterError> {
        let node = self.node(name)?;
        if !self.runtime.is_running(node).await {
            self.refuse_a_second_primary(&self.current_spec()?, node)?;
            self.runtime.start(node).await?;
        }
        Ok(())
    }

    pub async fn stop_node(&self, name: &str) -> Result<(), ClusterError> {
        self.runtime.stop(self.node(name)?, true).await
    }

    pub async fn restart_node(&self, name: &str) -> Result<(), ClusterError> {
        let node = self.node(name)?;
        self.refuse_a_second_primary(&self.current_spec()?, node)?;
        self.runtime.stop(node, true).await?;
        self.runtime.start(node).await
    }

    /// A node that should be a standby but whose data has no standby.signal is a former
    /// primary: starting it would make a second primary that takes writes.
    fn refuse_a_second_primary(
        &self,
        spec: &ClusterSpec,
        node: &NodeSpec,
    ) -> Result<(), ClusterError> {
        let data = self.runtime.data_dir(node);
        if spec.primary().name != node.name
            && data.join("PG_VERSION").exists()
            && !data.join("standby.signal").exists()
        {
            return Err(ClusterError::FormerPrimaryData(node.name.clone()));
        }
        Ok(())
    }
}

/// The error and its causes on one line, as the CLI prints errors.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

/// Polls `check` every 100 ms until it is true.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<(), ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, ClusterError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout(limit, what.to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
