//! Role changes carried out: failover (the primary is gone or must go), switchover (planned,
//! lossless) and rejoin (a former primary comes back as a standby).
//!
//! Every change probes the nodes (`probe`), asks the pure `plan` what to do (`--dry-run` stops
//! there), then carries it out step by step with timings. The primary is fenced before a
//! standby is promoted, so two primaries never take writes; the other standbys are re-pointed
//! with ALTER SYSTEM and a reload and follow the new timeline; the sync policy is applied with
//! the names swapped. This file holds the report and the steps the three commands share.
//!
//! The changes are the crate's own (`pub(crate)`): a caller reaches them through
//! `ha::route`, which sends them to the agents when agents run and refuses what would fight
//! them; the drill and the agents themselves call them directly.

mod failover;
mod probe;
mod reinit;
mod rejoin;
mod resync;
mod switchover;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use self::reinit::Rebuild;
pub use self::resync::{incremental_applies, NoIncremental};
use super::check_failed::CheckFailed;
use super::history::{now_unix_ms, switch_point, ChangeKind, RoleChange};
use super::spec::{ClusterSpec, NodeSpec};
use super::topology::{HistoryEntry, Topology};
use super::{alter_system, node_err_sql, reload, Cluster, ClusterError, StepLog};

/// What a role change did, for the table and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct RoleChangeReport {
    pub action: &'static str,
    pub old_primary: String,
    pub new_primary: String,
    /// What the nodes reported before anything changed: roles, timelines, positions and how
    /// far each standby is behind the most advanced, the old primary's slots.
    pub checks: Vec<String>,
    pub plan: Vec<String>,
    pub steps: Vec<TimedStep>,
    pub dry_run: bool,
    pub elapsed_ms: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimedStep {
    pub step: String,
    pub ms: u128,
}

/// Records each step with how long it took, and echoes it to the step log.
struct Steps<'a> {
    log: &'a dyn StepLog,
    started: Instant,
    last: Instant,
    done: Vec<TimedStep>,
}

impl<'a> Steps<'a> {
    fn new(log: &'a dyn StepLog) -> Self {
        let now = Instant::now();
        Steps {
            log,
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn done(&mut self, step: String) {
        let now = Instant::now();
        self.log.step(&step);
        self.done.push(TimedStep {
            step,
            ms: now.duration_since(self.last).as_millis(),
        });
        self.last = now;
    }

    /// Closes `report` with the steps taken and the time they took.
    fn finish(self, report: &mut RoleChangeReport) {
        report.elapsed_ms = self.started.elapsed().as_millis();
        report.steps = self.done;
    }
}

impl Cluster {
    /// Promotes the standby and waits until it is out of recovery (60 s at most). Not
    /// `pg_promote(wait => true)`: that statement holds a snapshot while the startup process
    /// replays the WAL left, a replay conflict with it then waits max_standby_streaming_delay
    /// (30 s by default) before cancelling it, and a standby with apply lag has such WAL.
    pub(crate) async fn promote(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        const LIMIT: Duration = Duration::from_secs(60);
        let client = self.sql(node).await?;
        let sql = |e| node_err_sql(node, e);
        client
            .query_one("SELECT pg_promote(false)", &[])
            .await
            .map_err(sql)?;
        let deadline = Instant::now() + LIMIT;
        loop {
            let recovering: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(sql)?
                .get(0);
            if !recovering {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CheckFailed::PromotionUnfinished {
                    node: node.name.clone(),
                    within: LIMIT,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After a manual promotion of `to`: its timeline and where it began, in the history.
    async fn record_change(
        &self,
        kind: ChangeKind,
        from: &str,
        to: &NodeSpec,
        by: &str,
    ) -> Result<(), ClusterError> {
        let (timeline, lsn) = match self.sql(to).await {
            Ok(client) => switch_point(&client).await,
            Err(_) => (None, None),
        };
        let change = RoleChange {
            at_unix_ms: now_unix_ms(),
            kind,
            from: Some(from.to_owned()),
            to: to.name.clone(),
            timeline,
            lsn,
            by: by.to_owned(),
            reason: format!("{kind} {from} -> {}", to.name),
        };
        self.record_primary(&to.name, HistoryEntry::Change(change))
    }

    pub(crate) fn record_primary(
        &self,
        primary: &str,
        event: HistoryEntry,
    ) -> Result<(), ClusterError> {
        let mut topology = Topology::load(&self.state_dir)?.unwrap_or(Topology {
            primary: primary.to_owned(),
            history: Vec::new(),
        });
        topology.primary = primary.to_owned();
        topology.history.push(event);
        topology.save(&self.state_dir)
    }

    /// Points running standbys at `primary`; they follow its new timeline by themselves
    /// (`recovery_target_timeline = 'latest'`).
    async fn repoint(
        &self,
        primary: &NodeSpec,
        standbys: &[&NodeSpec],
    ) -> Result<(), ClusterError> {
        for standby in standbys {
            if !self.runtime.is_running(standby).await {
                continue;
            }
            let client = self.sql(standby).await?;
            let conninfo = self.primary_conninfo(primary, standby);
            alter_system(&client, standby, "primary_conninfo", &conninfo).await?;
            reload(&client, standby).await?;
        }
        Ok(())
    }

    async fn set_sync_names(&self, spec: &ClusterSpec) -> Result<(), ClusterError> {
        let primary = spec.primary();
        let client = self.sql(primary).await?;
        alter_system(
            &client,
            primary,
            "synchronous_standby_names",
            &spec.sync.policy.to_string(),
        )
        .await?;
        reload(&client, primary).await
    }

    /// A replication session to `node`, and what IDENTIFY_SYSTEM says of it.
    async fn identified(
        &self,
        node: &NodeSpec,
    ) -> Result<(crate::conn::Connection, crate::conn::IdentifySystem), ClusterError> {
        let mut conn = crate::conn::Connection::connect(&self.replication_connect(node))
            .await
            .map_err(ClusterError::node(node))?;
        let system = conn
            .identify_system()
            .await
            .map_err(ClusterError::node(node))?;
        Ok((conn, system))
    }

    /// Waits (60 s at most) until each running standby in `standbys` streams from `primary`
    /// and has flushed what the primary had when the wait began. `state` alone proves
    /// nothing: a standby left past the fork of the primary's timeline streams the old
    /// timeline up to the fork, again and again, and never confirms a commit.
    async fn wait_streaming(
        &self,
        primary: &NodeSpec,
        standbys: &[&NodeSpec],
    ) -> Result<(), ClusterError> {
        const LIMIT: Duration = Duration::from_secs(60);
        let client = self.sql(primary).await?;
        let sql = |e| node_err_sql(primary, e);
        let since: String = client
            .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
            .await
            .map_err(sql)?
            .get(0);
        let mut waiting = Vec::new();
        for standby in standbys {
            if self.runtime.is_running(standby).await {
                waiting.push(standby.name.clone());
            }
        }
        let deadline = Instant::now() + LIMIT;
        loop {
            let caught_up: Vec<String> = client
                .query(
                    "SELECT application_name FROM pg_stat_replication \
                     WHERE state = 'streaming' AND flush_lsn >= $1::text::pg_lsn",
                    &[&since],
                )
                .await
                .map_err(sql)?
                .iter()
                .map(|row| row.get(0))
                .collect();
            waiting.retain(|name| !caught_up.contains(name));
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CheckFailed::NotStreaming {
                    nodes: waiting,
                    primary: primary.name.clone(),
                    since,
                    within: LIMIT,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn names(nodes: &[&NodeSpec]) -> String {
    let names: Vec<String> = nodes.iter().map(|n| format!("`{}`", n.name)).collect();
    if names.is_empty() {
        "no other standby".into()
    } else {
        names.join(", ")
    }
}
