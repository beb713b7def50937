//! Lag over time: each standby's write, flush and replay position against the primary's, a few
//! times a second while the load runs and more often while the standbys catch up after it.
//!
//! The primary's `pg_stat_replication` (the query `pgrepl lag` uses) gives every stage and the
//! walsender's time lags, but a standby only reports when it receives WAL or every
//! `wal_receiver_status_interval`: once the load stops, its replay position there can stay
//! stale for seconds. So where the standby is one of the given nodes, its replay position is
//! also read on the standby itself (`pg_last_wal_replay_lsn()`), and the fresher one counts.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio_postgres::{Client, SimpleQueryMessage, Statement};

use super::BenchError;
use crate::lag::sql::{walreceiver_application_name, SenderRow, SENDERS};
use crate::lag::Node;
use crate::lsn::Lsn;

/// One standby at one moment, as lags behind the primary's current position.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LagPoint {
    /// Since the mode's load started.
    pub t_ms: f64,
    pub write_lag_bytes: Option<u64>,
    pub flush_lag_bytes: Option<u64>,
    pub replay_lag_bytes: Option<u64>,
    /// The walsender's measured time lags; `null` when the standby has caught up.
    pub write_lag_ms: Option<f64>,
    pub flush_lag_ms: Option<f64>,
    pub replay_lag_ms: Option<f64>,
}

/// One round over the primary and the standby nodes.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub primary_lsn: Lsn,
    /// Per standby (walsender `application_name`): its lag, and its replay position.
    pub standbys: BTreeMap<String, (LagPoint, Option<Lsn>)>,
    /// Walsenders in `streaming` state, for the sync policy.
    pub streaming: Vec<String>,
}

/// The sessions a round reads from.
pub struct Sampler {
    primary: Client,
    current_lsn: Statement,
    /// Standby nodes by the application name their walsender shows on the primary.
    standbys: Vec<(String, Client, Statement)>,
}

impl Sampler {
    /// `primary` is an open session; each standby node is asked once under which name it
    /// streams. A standby node that cannot be read is left out with a warning: its lag is still
    /// seen from the primary.
    pub async fn new(
        primary: Client,
        standby_nodes: Vec<(Node, Client)>,
    ) -> Result<Sampler, BenchError> {
        let current_lsn = primary
            .prepare("SELECT pg_current_wal_lsn()::text")
            .await
            .map_err(BenchError::sql("prepare the WAL position query"))?;
        let mut standbys = Vec::new();
        for (node, client) in standby_nodes {
            let conninfo = client
                .query_opt("SELECT conninfo FROM pg_stat_wal_receiver", &[])
                .await
                .map_err(BenchError::sql(format!(
                    "read the WAL receiver of `{}`",
                    node.name
                )))?
                .and_then(|row| row.get::<_, Option<String>>(0));
            let Some(name) = conninfo.as_deref().and_then(walreceiver_application_name) else {
                tracing::warn!(node = %node.name, "standby has no WAL receiver; its lag is read from the primary only");
                continue;
            };
            let replay = client
                .prepare("SELECT pg_last_wal_replay_lsn()::text")
                .await
                .map_err(BenchError::sql(format!(
                    "prepare the replay query on `{}`",
                    node.name
                )))?;
            standbys.push((name, client, replay));
        }
        Ok(Sampler {
            primary,
            current_lsn,
            standbys,
        })
    }

    /// Reads every position once; `origin` is when the load started.
    pub async fn sample(&self, origin: Instant) -> Result<Snapshot, BenchError> {
        let (senders, lsn, replays) = tokio::join!(
            self.primary.simple_query(SENDERS),
            self.primary.query_one(&self.current_lsn, &[]),
            futures_util::future::join_all(self.standbys.iter().map(
                |(name, client, statement)| async move {
                    let lsn = client
                        .query_one(statement, &[])
                        .await
                        .ok()
                        .and_then(|row| row.get::<_, Option<String>>(0))
                        .and_then(|text| text.parse::<Lsn>().ok());
                    (name.as_str(), lsn)
                }
            )),
        );
        let t_ms = origin.elapsed().as_secs_f64() * 1000.0;
        let primary_lsn: Lsn = lsn
            .map_err(BenchError::sql("read the primary's WAL position"))?
            .get::<_, String>(0)
            .parse()
            .map_err(|e| BenchError::Invalid(format!("primary's WAL position: {e}")))?;
        let senders = senders.map_err(BenchError::sql("read pg_stat_replication"))?;
        let mut snapshot = Snapshot {
            primary_lsn,
            standbys: BTreeMap::new(),
            streaming: Vec::new(),
        };
        for message in &senders {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let sender = SenderRow::parse(row)
                .map_err(|e| BenchError::Invalid(format!("pg_stat_replication: {e}")))?;
            let Some(name) = sender.application_name.clone() else {
                continue;
            };
            if sender.state.as_deref() == Some("streaming") {
                snapshot.streaming.push(name.clone());
            }
            let own_replay = replays
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, lsn)| *lsn);
            let replay = sender.replay_lsn.max(own_replay);
            let behind = |lsn: Option<Lsn>| lsn.map(|l| primary_lsn.saturating_sub(l));
            let point = LagPoint {
                t_ms,
                write_lag_bytes: behind(sender.write_lsn),
                flush_lag_bytes: behind(sender.flush_lsn),
                replay_lag_bytes: behind(replay),
                write_lag_ms: sender.write_lag_ms,
                flush_lag_ms: sender.flush_lag_ms,
                replay_lag_ms: sender.replay_lag_ms,
            };
            snapshot.standbys.insert(name, (point, replay));
        }
        Ok(snapshot)
    }
}
