//! Where each node stands before a role change: the probes the plan decides from, and the
//! pre-flight checks a role change prints.

use std::time::Duration;

use super::super::plan::NodeProbe;
use super::super::spec::{ClusterSpec, NodeSpec};
use super::super::{node_err_sql, Cluster, ClusterError};
use crate::conn::Connection;
use crate::ids::TimelineId;
use crate::lsn::Lsn;

/// How long one node's probe may take.
const PROBE_LIMIT: Duration = Duration::from_secs(3);

impl Cluster {
    /// Asks every node where it stands, in parallel, each bounded by a short timeout; one
    /// probe per node, in the cluster file's order.
    pub async fn probe_all(&self) -> Vec<NodeProbe> {
        futures_util::future::join_all(self.spec.nodes.iter().map(|node| self.probe_within(node)))
            .await
    }

    /// `probe_all`, asked again (for at most `limit`) of each node that did not answer while
    /// its server runs. A loaded machine can hold a session past the probe's timeout, and a
    /// standby the plan leaves out for that may be the most advanced: promoting another would
    /// leave it past the fork, and what only it received would be lost.
    pub(super) async fn probe_running(&self, limit: Duration) -> Vec<NodeProbe> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut probes = self.probe_all().await;
        loop {
            let mut silent = Vec::new();
            for (i, node) in self.spec.nodes.iter().enumerate() {
                if !probes[i].reachable && self.runtime.is_running(node).await {
                    silent.push(i);
                }
            }
            if silent.is_empty() || tokio::time::Instant::now() >= deadline {
                return probes;
            }
            tracing::info!(
                "{} did not answer but runs: asking again",
                silent
                    .iter()
                    .map(|&i| format!("`{}`", self.spec.nodes[i].name))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            for i in silent {
                probes[i] = self.probe_within(&self.spec.nodes[i]).await;
            }
        }
    }

    /// One node's probe, bounded by a short timeout: a node that does not answer in time is
    /// unreachable.
    async fn probe_within(&self, node: &NodeSpec) -> NodeProbe {
        tokio::time::timeout(PROBE_LIMIT, self.probe(node))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| NodeProbe::unreachable(&node.name))
    }

    /// Waits (at most `limit`) until no standby's walreceiver streams any more: once the
    /// primary is fenced, each one flushes what it received as it exits, so positions read
    /// before that may be short of what the standby will hold. A receiver whose primary's
    /// machine vanished notices only at `wal_receiver_timeout`: the wait ends at `limit` and
    /// the probe's written position covers what it holds unflushed.
    pub(super) async fn wait_receivers_stopped(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let streaming =
                futures_util::future::join_all(self.spec.nodes.iter().map(|node| async move {
                    let ask = async {
                        let client = self.sql(node).await.ok()?;
                        let row = client
                        .query_one(
                            "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                            &[],
                        )
                        .await
                        .ok()?;
                        Some(row.get::<_, i64>(0) > 0)
                    };
                    tokio::time::timeout(Duration::from_secs(1), ask)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(false)
                }))
                .await;
            if !streaming.contains(&true) || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The timeline of the last WAL record a standby replayed: IDENTIFY_SYSTEM over a
    /// replication session to it (a cascading walsender answers with its replay timeline,
    /// walsender.c `GetStandbyFlushRecPtr`), as Patroni reads a replica's timeline. SQL has
    /// no such value: pg_stat_wal_receiver is empty while no receiver runs, and the last
    /// restartpoint's timeline can be older than the WAL the standby holds.
    pub(crate) async fn replay_timeline(
        &self,
        node: &NodeSpec,
        limit: Duration,
    ) -> Result<TimelineId, ClusterError> {
        let mut options = self.superuser(node)?;
        options.dbname = None;
        options.connect_timeout = Some(limit);
        let failed = |source| ClusterError::Node {
            node: node.name.clone(),
            source: Box::new(source),
        };
        let mut conn = Connection::connect(&options).await.map_err(failed)?;
        let system = conn.identify_system().await.map_err(failed)?;
        conn.close().await;
        Ok(system.timeline)
    }

    async fn probe(&self, node: &NodeSpec) -> Result<NodeProbe, ClusterError> {
        let client = self.sql(node).await?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), \
                        CASE WHEN pg_is_in_recovery() \
                             THEN greatest(pg_last_wal_receive_lsn(), (SELECT written_lsn FROM pg_stat_wal_receiver)) \
                             ELSE pg_current_wal_flush_lsn() END::text, \
                        CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END::text, \
                        CASE WHEN NOT pg_is_in_recovery() \
                             THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
                &[],
            )
            .await
            .map_err(|e| node_err_sql(node, e))?;
        let lsn = |i: usize| row.get::<_, Option<String>>(i).and_then(|t| t.parse().ok());
        let in_recovery: bool = row.get(0);
        let timeline = match row.get::<_, Option<i32>>(3) {
            Some(primary) => TimelineId::new(primary as u32),
            None => self.replay_timeline(node, PROBE_LIMIT).await?,
        };
        Ok(NodeProbe {
            name: node.name.clone(),
            reachable: true,
            in_recovery: Some(in_recovery),
            timeline: Some(timeline),
            received_lsn: lsn(1),
            replayed_lsn: lsn(2),
        })
    }

    /// The pre-flight checks a role change prints: each node's role, timeline and position, how
    /// far each standby is behind the most advanced one, the sync names in force, and the old
    /// primary's replication slots (read from its data directory, so also when it is down),
    /// which are not on any standby.
    pub(super) fn preflight(
        &self,
        spec: &ClusterSpec,
        probes: &[NodeProbe],
    ) -> Result<Vec<String>, ClusterError> {
        let furthest = probes
            .iter()
            .filter(|p| p.in_recovery == Some(true))
            .filter_map(NodeProbe::position)
            .max();
        let mut checks: Vec<String> = probes
            .iter()
            .map(|p| {
                let timeline = p.timeline.map_or("?".into(), |t| t.to_string());
                let at = |l: Option<Lsn>| l.map_or("?".into(), |l| l.to_string());
                match p.in_recovery {
                    None => format!("`{}` does not answer", p.name),
                    Some(false) => format!(
                        "`{}` is a primary on timeline {timeline}, flushed to {}",
                        p.name,
                        at(p.received_lsn)
                    ),
                    Some(true) => format!(
                        "`{}` is a standby on timeline {timeline}, received {}, replayed {}, {} bytes behind the most advanced standby",
                        p.name,
                        at(p.received_lsn),
                        at(p.replayed_lsn),
                        furthest
                            .zip(p.position())
                            .map_or(0, |(f, at)| f.saturating_sub(at))
                    ),
                }
            })
            .collect();
        checks.push(format!(
            "sync names for `{}`: {}",
            spec.primary().name,
            spec.sync.policy
        ));
        let old = spec.primary();
        let slot_dir = self.runtime.data_dir(old).join("pg_replslot");
        let mut slots: Vec<String> = match std::fs::read_dir(&slot_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(ClusterError::io(
                    format!("read `{}`", slot_dir.display()),
                    e,
                ))
            }
        };
        slots.sort();
        checks.push(if slots.is_empty() {
            format!("replication slots on `{}`: none", old.name)
        } else {
            format!(
                "replication slots on `{}`: {} (slots stay behind on the old primary: create them again on the new one)",
                old.name,
                slots.join(", ")
            )
        });
        Ok(checks)
    }
}
