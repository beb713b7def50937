//! Replication health for every node: roles, positions, lag in bytes and time from both ends,
//! synchronous replication in words, and the promotion candidate (`pgrepl lag`, `pgrepl status`).
//!
//! One round visits every node at once, each within its own time limit, so a node that does not
//! answer costs one timeout and the others are still reported. Per node pgrepl opens a
//! replication session (`IDENTIFY_SYSTEM`: system identifier, timeline, WAL position) and an SQL
//! session (the views in [`sql`]), then hands everything to the pure [`analysis`], which builds
//! the [`Report`]. Rendering (table, JSON, Prometheus) belongs to the CLI.
//!
//! Not here: choosing nodes (the command line or the cluster file), the SQL session's settings
//! ([`crate::conn::sql`]: the same sslmode, certificate and channel-binding rules as the
//! replication session, over rustls),
//! and any change to the cluster other than the probe's one-row table `pgrepl_heartbeat`.
//!
//! # JSON schema (`pgrepl lag --json`, `pgrepl status --json`)
//! Stable: fields are added, never renamed or removed. LSNs are strings (`"0/3000060"`), lags
//! in bytes are integers, times are milliseconds as numbers, and an unknown value is `null`.
//! - `round_ms`: how long the round took.
//! - `primary`: name of the node taken as the primary, or `null`.
//! - `system_identifier`: the cluster's, as a string (it does not fit a JSON number exactly).
//! - `nodes[]`: `name`, `conninfo` (never with a password), `role` (`primary`, `standby`,
//!   `unknown`), `reachable`, `system_identifier`, `timeline`, `lsn`, `server_version`,
//!   `receiver_status`, `upstream`, `replay_paused`, `pending_restart` (names of the settings
//!   waiting for a restart), `other_system`, `older_timeline`, `error`.
//! - `standbys[]`: `application_name`, `node` (`null` for a walsender no given node matches),
//!   `reachable`, `upstream`, `state`, `sync_state`, `sync_priority`, `reply_age_ms`,
//!   `client_addr`, `timeline`, `sent_lsn`, `write_lsn`, `flush_lsn`, `replay_lsn`,
//!   `write_lag_bytes`, `flush_lag_bytes`, `replay_lag_bytes`, `write_lag_ms`, `flush_lag_ms`,
//!   `replay_lag_ms`, `replay_paused`, `last_xact_replay_age_ms`, `probe_ms`, `probe_timed_out`.
//! - `sync`: `synchronous_standby_names`, `synchronous_commit`, `method` (`priority`, `quorum`),
//!   `required`, `commit_waits_for` (`none`, `write`, `flush`, `apply`), `sync[]`,
//!   `potential[]`, `quorum[]`, `listed_not_connected[]`, `commits_block`,
//!   `waiting_sessions[]` {`pid`, `usename`, `application_name`, `client_addr`, `waiting_ms`},
//!   `explanation[]`.
//! - `promotion_candidate`: `node`, `timeline`, `lsn`, `ahead_bytes`, `tied` (only when no
//!   primary is reachable).
//! - `problems[]`: `kind`, `node`, `message`; any problem means exit code 2.
//!
//! How standbys are matched to walsenders and how lag is computed: see [`analysis`].
//!
//! Neighbours: [`crate::conn`] opens both sessions.

pub mod analysis;
mod collect;
pub mod report;
pub mod serve;
pub mod sql;
pub mod sync;

use std::time::{Duration, Instant};

use futures_util::future::join_all;

pub use self::analysis::{analyze, Exceeded, Observation, Round, Thresholds, Verdict};
pub use self::report::{NodeReport, Problem, ProblemKind, Report, Role, Stage, StandbyReport};
pub use self::sync::SyncReport;
use crate::conn::{ConnectOptions, ConnectionError, Host};

/// Why one node, or the probe, could not be read. Reported per node, never fatal to a round.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("no column `{0}` in the answer")]
    MissingColumn(&'static str),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// A node to visit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// How the node is shown: a cluster file's node name, or `host:port`.
    pub name: String,
    pub connect: ConnectOptions,
}

impl Node {
    /// A node named after where it listens, `host:port` (`[v6]:port`, `socket-dir:port`).
    pub fn at(connect: ConnectOptions) -> Node {
        let name = match &connect.host {
            Host::Tcp(host) if host.contains(':') => format!("[{host}]:{}", connect.port),
            host => format!("{host}:{}", connect.port),
        };
        Node { name, connect }
    }
}

/// How a round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatherOptions {
    /// Per node and per session; a node's `connect_timeout` may shorten it.
    pub timeout: Duration,
    /// Write a heartbeat on the primary and wait this long for every standby to see it.
    /// Make it at least the time limit the result is judged against: a heartbeat that never
    /// arrives then counts as over the limit ([`Report::verdict`]).
    pub probe_wait: Option<Duration>,
}

/// Visits every node at once and reports on the cluster they form.
pub async fn gather(nodes: &[Node], options: &GatherOptions) -> Report {
    let started = Instant::now();
    let visits = join_all(nodes.iter().map(|node| {
        let limit = node
            .connect
            .connect_timeout
            .map_or(options.timeout, |t| t.min(options.timeout));
        collect::visit(node, limit)
    }))
    .await;
    let mut observations: Vec<Observation> = visits.iter().map(|v| v.observation.clone()).collect();
    let mut probe_error = None;
    if let Some(wait) = options.probe_wait {
        probe_error = run_probe(&visits, &mut observations, wait).await.err();
    }
    analysis::analyze(&Round {
        observations,
        probe_error: probe_error.map(|e| collect::describe(&e)),
        round_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// The probe goes from the primary to every reachable standby of the same system.
async fn run_probe(
    visits: &[collect::Visit],
    observations: &mut [Observation],
    wait: Duration,
) -> Result<(), LagError> {
    let (_, primary) = analysis::primaries(observations);
    let Some((p, primary_client)) = primary.and_then(|p| Some((p, visits[p].client.as_ref()?)))
    else {
        return Ok(());
    };
    let system = |o: &Observation| o.identity.as_ref().ok().map(|id| id.system_id);
    let standbys: Vec<(usize, &tokio_postgres::Client)> = visits
        .iter()
        .enumerate()
        .filter(|(_, v)| v.observation.facts.as_ref().is_ok_and(|f| f.in_recovery))
        .filter(|(_, v)| system(&v.observation) == system(&observations[p]))
        .filter_map(|(i, v)| Some((i, v.client.as_ref()?)))
        .collect();
    for (i, outcome) in collect::probe(primary_client, &standbys, wait).await? {
        observations[i].probe = Some(outcome);
    }
    Ok(())
}
