//! A replicated cluster from nothing: the manual recipe (primary, a sync and an async standby,
//! replication role, pg_hba line, one base backup into both standbys, the sync policy, and the
//! checks) done natively and idempotently by `pgrepl up`.
//!
//! Each step first looks at what exists, so `up` on a healthy cluster changes nothing and on a
//! half-built one continues where it stopped. Nodes live in a [`runtime::Runtime`]: local
//! processes or Docker containers, with the same steps and checks.
//!
//! Neighbours: `spec` (the cluster file), `runtime`/`local` (where nodes run), `backup` (the
//! standbys' data), `conn::sql` (pgrepl's own SQL sessions).

mod bootstrap;
pub mod docker;
pub mod drill;
pub mod local;
pub mod open;
pub mod plan;
pub mod ports;
pub mod record;
pub mod role;
pub mod runtime;
pub mod runtime_error;
pub mod server_version;
pub mod spec;
mod sql_steps;
pub mod topology;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

pub use self::open::{Purpose, RuntimeChoice};
use self::runtime::Runtime;
use self::spec::{ClusterSpec, NodeSpec};
pub(crate) use self::sql_steps::{
    alter_system, conf_load_time, node_err_sql, refuses_writes, reload, streaming_standbys,
};
use crate::backup::{self, BackupTarget, BaseBackupOptions};
use crate::conn::{sql, ConnectOptions, ConnectionError, Host, Password};
// Standard SQL quoting is the same as the replication grammar's: `''` and `""` doubling.
use crate::proto::command::{quote_ident, quote_literal};

/// application_name of pgrepl's own SQL sessions (never a standby name).
const SESSION_NAME: &str = "pgrepl";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("{0}")]
    Setup(String),
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
    Check(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
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
    /// The host of the machine this process runs on, when nodes may run on several (an
    /// agent's: its node's host). `None`: every node is here (`up` and the other commands).
    machine: Option<String>,
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
        self.machine = Some(node.host().to_owned());
    }

    pub(crate) fn replication_password(&self) -> &str {
        &self.replication_password
    }

    /// Whether `node` runs on this machine (its data, socket and processes are here).
    pub(crate) fn is_here(&self, node: &NodeSpec) -> bool {
        self.machine
            .as_deref()
            .is_none_or(|host| host == node.host())
    }

    /// The superuser's session options for a node on this machine (over its socket). A node on
    /// another machine has no superuser session from here: the socket path would name a
    /// server of this machine with the same port.
    pub(crate) fn superuser(&self, node: &NodeSpec) -> Result<ConnectOptions, ClusterError> {
        if !self.is_here(node) {
            if let Runtime::Local(local) = &self.runtime {
                if let Some(options) = local.remote_superuser(node)? {
                    return Ok(options);
                }
            }
            return Err(ClusterError::Setup(format!(
                "`{}` runs on another machine ({}): pgrepl reaches it there over replication only",
                node.name,
                node.host()
            )));
        }
        Ok(self.runtime.superuser(node))
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
    pub fn node_connections(&self) -> Vec<(String, ConnectOptions)> {
        self.spec
            .nodes
            .iter()
            .map(|n| (n.name.clone(), self.runtime.superuser(n)))
            .collect()
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
        connect
    }

    /// What `standby` puts in primary_conninfo to follow `primary`.
    pub(crate) fn primary_conninfo(&self, primary: &NodeSpec, standby: &NodeSpec) -> String {
        let mut connect = self.replication_connect(primary);
        let (host, port) = self.runtime.primary_address_for_standbys(primary);
        connect.host = Host::Tcp(host);
        connect.port = port;
        connect.primary_conninfo(Some(&standby.name), true)
    }

    async fn sql(&self, node: &NodeSpec) -> Result<Client, ClusterError> {
        sql::connect(&self.superuser(node)?, SESSION_NAME)
            .await
            .map_err(ClusterError::node(node))
    }

    /// Builds (or completes) the cluster and checks it.
    pub async fn up(
        &self,
        options: &UpOptions,
        log: &dyn StepLog,
    ) -> Result<UpSummary, ClusterError> {
        let started = Instant::now();
        // Opened first, so a missing or non-SQL dump stops `up` before anything is created.
        let dump = options
            .dump
            .as_deref()
            .map(crate::dump::DumpFile::open)
            .transpose()?;
        if let Some((a, b)) = self.spec.shared_port() {
            return Err(ClusterError::Setup(format!(
                "nodes `{}` and `{}` share port {}: `up` runs every node on this machine; for nodes on several machines run `pgrepl agent --node NAME` on each, which builds its node",
                a.name, b.name, a.port
            )));
        }
        let primary = self.spec.primary();
        self.runtime.prepare(&self.spec.nodes).await?;
        // Before anything is created, so an interrupted `up` is found again by every command.
        self.save_record()?;

        let fresh = !self.runtime.data_dir(primary).join("PG_VERSION").exists();
        if fresh {
            log.step(&format!("initialise primary `{}`", primary.name));
            self.runtime.init_primary(primary).await?;
            self.save_record()?;
        }
        self.ensure_running(primary, log).await?;
        // Before replication exists, so the standbys' base backup carries the data.
        if let Some(dump) = dump {
            let path = dump.path().display().to_string();
            if fresh {
                log.step(&format!("restore `{path}` into `{}`", primary.name));
                let (superuser, step) = (self.runtime.superuser(primary), |s: &str| log.step(s));
                // An UpOptions::default() names no database: the default one.
                let database = Some(options.dump_database.as_str()).filter(|d| !d.is_empty());
                let database = database.unwrap_or(sql::DEFAULT_DATABASE);
                let summary = crate::dump::restore(&superuser, dump, database, &step).await?;
                log.step(&format!("restored `{path}`: {summary}"));
            } else {
                log.step(&format!(
                    "dump `{path}` not applied: primary `{}` existed before this run and may hold data already \
                     (`pgrepl down --purge`, then `up --dump` again, restores into a new cluster)",
                    primary.name
                ));
            }
        }
        self.configure_primary(primary, log).await?;

        let missing: Vec<&NodeSpec> = self
            .spec
            .standbys()
            .filter(|s| !self.runtime.data_dir(s).join("PG_VERSION").exists())
            .collect();
        if !missing.is_empty() {
            self.clone_standbys(primary, &missing, &options.cancel, log)
                .await?;
        }
        for standby in self.spec.standbys() {
            self.refuse_a_second_primary(&self.spec, standby)?;
        }
        // Standbys start in parallel: each waits for its own recovery to reach consistency.
        futures_util::future::try_join_all(
            self.spec.standbys().map(|s| self.ensure_running(s, log)),
        )
        .await?;
        let primary_sql = self.sql(primary).await?;
        let names: Vec<&str> = self.spec.standbys().map(|s| s.name.as_str()).collect();
        log.step(&format!("wait until {} stream", names.join(" and ")));
        wait_until(
            Duration::from_secs(60),
            "every standby to stream",
            || async {
                let streaming = streaming_standbys(&primary_sql).await?;
                Ok(names
                    .iter()
                    .all(|n| streaming.iter().any(|(name, _)| name == n)))
            },
        )
        .await?;

        self.apply_sync_policy(&self.spec, &primary_sql, log)
            .await?;
        self.check(primary, &primary_sql, log).await?;

        let states = streaming_standbys(&primary_sql).await?;
        let nodes = self
            .spec
            .nodes
            .iter()
            .map(|n| NodeStatus {
                name: n.name.clone(),
                role: format!("{:?}", n.role).to_lowercase(),
                port: n.port,
                conninfo: self.runtime.psql_conninfo(n),
                sync_state: states
                    .iter()
                    .find(|(name, _)| name == &n.name)
                    .map(|(_, s)| s.clone()),
            })
            .collect();
        Ok(UpSummary {
            nodes,
            synchronous_standby_names: self.spec.synchronous_standby_names(),
            elapsed_ms: started.elapsed().as_millis(),
        })
    }

    async fn ensure_running(&self, node: &NodeSpec, log: &dyn StepLog) -> Result<(), ClusterError> {
        if !self.runtime.is_running(node).await {
            log.step(&format!("start `{}`", node.name));
            self.runtime.start(node).await?;
        }
        Ok(())
    }

    /// GUCs via ALTER SYSTEM, the replication role, the pg_hba line; restarts only when a
    /// changed setting needs it.
    async fn configure_primary(
        &self,
        primary: &NodeSpec,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        let client = self.sql(primary).await?;
        let mut changed = false;
        for (name, value) in &self.spec.settings {
            let current: String = client
                .query_one("SELECT current_setting($1)", &[name])
                .await
                .map_err(|e| match e.code().map(|c| c.code()) {
                    // undefined_object: the server has no such parameter.
                    Some("42704") => ClusterError::Setup(format!(
                        "unknown setting `{name}` in the cluster file: {e}"
                    )),
                    _ => node_err_sql(primary, e),
                })?
                .get(0);
            if !same_setting(&current, value) {
                log.step(&format!("set {name} = '{value}' on `{}`", primary.name));
                alter_system(&client, primary, name, value).await?;
                changed = true;
            }
        }
        let user = &self.spec.replication.user;
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[user])
            .await
            .map_err(|e| node_err_sql(primary, e))?
            .is_some();
        if !exists {
            log.step(&format!("create role `{user}` (LOGIN REPLICATION)"));
            client
                // A SCRAM verifier, not the password: statement text can end up in the server log
                // (log_statement) and in client logs.
                .batch_execute(&format!(
                    "CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}",
                    quote_ident(user),
                    quote_literal(&postgres_protocol::password::scram_sha_256(
                        self.replication_password.as_bytes()
                    ))
                ))
                .await
                .map_err(|e| node_err_sql(primary, e))?;
        }
        // The superuser too: `status` and `lag` read each node over a replication session as
        // the superuser, which from the host reaches a container over TCP (locally, the socket).
        let hba_lines: Vec<String> = self
            .runtime
            .replication_clients(&self.spec.nodes)
            .await?
            .iter()
            .map(|client| format!("host replication {user},postgres {client} scram-sha-256"))
            .collect();
        let hba_path = self.runtime.data_dir(primary).join("pg_hba.conf");
        let hba = std::fs::read_to_string(&hba_path)
            .map_err(|e| ClusterError::io(format!("read `{}`", hba_path.display()), e))?;
        let missing: Vec<&String> = hba_lines
            .iter()
            .filter(|line| {
                !hba.lines()
                    .any(|l| l.split_whitespace().eq(line.split_whitespace()))
            })
            .collect();
        if !missing.is_empty() {
            let mut text = hba.clone();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            for line in missing {
                log.step(&format!("add `{line}` to pg_hba.conf"));
                text.push_str(&format!("# added by pgrepl up\n{line}\n"));
            }
            std::fs::write(&hba_path, text)
                .map_err(|e| ClusterError::io(format!("write `{}`", hba_path.display()), e))?;
            changed = true;
        }
        if changed {
            let before = conf_load_time(&client, primary).await?;
            reload(&client, primary).await?;
            // Reload is asynchronous: pending_restart is known once this session has re-read
            // the files, which shows as pg_conf_load_time() moving past its old value.
            wait_until(
                Duration::from_secs(10),
                "the primary to reload its settings",
                || async { Ok(conf_load_time(&client, primary).await? != before) },
            )
            .await?;
            let pending: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_settings WHERE pending_restart",
                    &[],
                )
                .await
                .map_err(|e| node_err_sql(primary, e))?
                .get(0);
            if pending > 0 {
                drop(client);
                log.step(&format!(
                    "restart `{}` for settings that need it",
                    primary.name
                ));
                self.runtime.stop(primary, true).await?;
                self.runtime.start(primary).await?;
            }
        }
        Ok(())
    }

    /// One native base backup pass into every standby that has no data yet.
    async fn clone_standbys(
        &self,
        primary: &NodeSpec,
        standbys: &[&NodeSpec],
        cancel: &tokio_util::sync::CancellationToken,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        let names: Vec<&str> = standbys.iter().map(|s| s.name.as_str()).collect();
        log.step(&format!(
            "base backup of `{}` into {} (one pass)",
            primary.name,
            names.join(" and ")
        ));
        let connect = self.replication_connect(primary);
        let targets = standbys
            .iter()
            .map(|s| BackupTarget {
                dir: self.runtime.data_dir(s),
                application_name: Some(s.name.clone()),
            })
            .collect();
        let mut options = BaseBackupOptions::new(targets);
        options.write_recovery_conf = true;
        options.fast_checkpoint = true;
        options.owner = self.runtime.data_owner();
        options.primary_host_override = Some(self.runtime.primary_address_for_standbys(primary));
        options.label = "pgrepl up".into();
        let summary = backup::base_backup(
            &connect,
            &options,
            Arc::new(backup::NoProgress),
            cancel.clone(),
        )
        .await?;
        log.step(&format!(
            "copied {} files ({} MiB) into each standby, manifest verified",
            summary.files,
            summary.bytes / (1 << 20)
        ));
        Ok(())
    }

    /// `synchronous_commit` and `synchronous_standby_names`, then waits until
    /// pg_stat_replication shows the intended sync states.
    async fn apply_sync_policy(
        &self,
        spec: &ClusterSpec,
        primary_sql: &Client,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        let primary = spec.primary();
        let names = spec.synchronous_standby_names();
        let wanted = [
            ("synchronous_commit", spec.sync.synchronous_commit.clone()),
            ("synchronous_standby_names", names.clone()),
        ];
        let mut changed = false;
        for (setting, value) in &wanted {
            let current: String = primary_sql
                .query_one("SELECT current_setting($1)", &[setting])
                .await
                .map_err(|e| node_err_sql(primary, e))?
                .get(0);
            if &current != value {
                log.step(&format!("set {setting} = '{value}'"));
                alter_system(primary_sql, primary, setting, value).await?;
                changed = true;
            }
        }
        if changed {
            reload(primary_sql, primary).await?;
        }
        let expected = expected_sync_states(spec);
        wait_until(
            Duration::from_secs(30),
            "the sync states of the policy",
            || async {
                let states = streaming_standbys(primary_sql).await?;
                Ok(expected
                    .iter()
                    .all(|(name, state)| states.iter().any(|(n, s)| n == name && s == state)))
            },
        )
        .await?;
        let described: Vec<String> = expected.iter().map(|(n, s)| format!("{n} {s}")).collect();
        log.step(&format!("sync policy {names}: {}", described.join(", ")));
        Ok(())
    }

    /// The recipe's checks: a row written on the primary is read on every standby, and a write
    /// on a standby is refused as read-only.
    async fn check(
        &self,
        primary: &NodeSpec,
        primary_sql: &Client,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        primary_sql
            .batch_execute("CREATE TABLE IF NOT EXISTS pgrepl_check(id bigint PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now())")
            .await
            .map_err(|e| node_err_sql(primary, e))?;
        let id: i64 = primary_sql
            .query_one("INSERT INTO pgrepl_check(id) SELECT coalesce(max(id), 0) + 1 FROM pgrepl_check RETURNING id", &[])
            .await
            .map_err(|e| node_err_sql(primary, e))?
            .get(0);
        for standby in self.spec.standbys() {
            let client = self.sql(standby).await?;
            wait_until(
                Duration::from_secs(30),
                &format!("check row {id} on `{}`", standby.name),
                || async {
                    match client
                        .query_opt("SELECT 1 FROM pgrepl_check WHERE id = $1", &[&id])
                        .await
                    {
                        Ok(found) => Ok(found.is_some()),
                        // An asynchronous standby may not have replayed the CREATE TABLE yet.
                        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => Ok(false),
                        Err(e) => Err(node_err_sql(standby, e)),
                    }
                },
            )
            .await?;
            refuses_writes(&client, standby, "INSERT INTO pgrepl_check(id) VALUES (-1)").await?;
        }
        log.step(&format!(
            "check: row {id} written on `{}` is on every standby; standbys refuse writes",
            primary.name
        ));
        Ok(())
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
            return Err(ClusterError::Setup(format!(
                "`{0}` holds a former primary's data (no standby.signal): bring it back with `pgrepl rejoin {0}`",
                node.name
            )));
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

/// What pg_stat_replication.sync_state should say for each standby under `spec`'s policy when
/// all of them stream.
pub fn expected_sync_states(spec: &ClusterSpec) -> Vec<(String, String)> {
    let sync = &spec.sync;
    let quorum = sync.method.eq_ignore_ascii_case("ANY");
    spec.standbys()
        .map(|s| {
            let state = match sync.standbys.iter().position(|n| n == &s.name) {
                None => "async",
                Some(_) if quorum => "quorum",
                Some(rank) if rank < sync.num_sync as usize => "sync",
                Some(_) => "potential",
            };
            (s.name.clone(), state.to_owned())
        })
        .collect()
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

/// Settings compare loosely: `on`/`true`, and units the server normalises.
fn same_setting(current: &str, wanted: &str) -> bool {
    let norm = |s: &str| match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => "on".to_owned(),
        "false" | "no" | "0" => "off".to_owned(),
        other => other.to_owned(),
    };
    norm(current) == norm(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_states_follow_the_policy() {
        let mut spec = ClusterSpec::default();
        let states = expected_sync_states(&spec);
        assert_eq!(
            states,
            vec![
                ("pg_slave".into(), "sync".into()),
                ("pg_asyncslave".into(), "potential".into())
            ]
        );
        spec.sync.method = "ANY".into();
        assert!(expected_sync_states(&spec)
            .iter()
            .all(|(_, s)| s == "quorum"));
        spec.sync.standbys = vec!["pg_asyncslave".into()];
        assert_eq!(
            expected_sync_states(&spec)[0],
            ("pg_slave".into(), "async".into())
        );
    }

    #[test]
    fn settings_compare_like_the_server_prints_them() {
        assert!(same_setting("on", "true"));
        assert!(same_setting("replica", "replica"));
        assert!(!same_setting("10", "4"));
    }
}
