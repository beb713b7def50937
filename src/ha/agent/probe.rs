//! The agent's probe of its own server: running or not, role, timeline, position, whom it
//! follows, and its sync settings, over one SQL round trip with a time limit; a server that runs
//! but does not answer is told apart from one that answers with an error.

use tokio_postgres::Client;

use super::{Agent, SQL_TIMEOUT};
use crate::cluster::topology::ControlFile;
use crate::cluster::{node_err_sql, ClusterError};
use crate::ha::model::{Local, Probed};
use crate::ha::records::ServerState;
use crate::ids::TimelineId;
use crate::sync_policy::SyncPolicy;

/// The state of the server in one round trip. A standby's position is the furthest WAL it holds
/// (received and flushed, or replayed); it is final only once the startup process replayed all
/// the WAL the server has and waits for more (`RecoveryRetrieveRetryInterval`, xlogrecovery.c
/// `WaitForWALToBecomeAvailable`): a standby restarted with replay lag otherwise reports a
/// replay position that still climbs, and until replay ends, the timeline of its last WAL
/// (which [`Agent::replay_timeline`] reads) may not be the one its newest WAL is on.
const PROBE: &str = "\
    SELECT pg_is_in_recovery() AS in_recovery, \
           CASE WHEN pg_is_in_recovery() \
                THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                ELSE pg_current_wal_flush_lsn() END::text AS position, \
           coalesce((SELECT wait_event FROM pg_stat_activity \
                     WHERE backend_type = 'startup') = 'RecoveryRetrieveRetryInterval', \
                    false) AS position_final, \
           CASE WHEN pg_is_in_recovery() \
                THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                              (SELECT timeline_id FROM pg_control_checkpoint())) \
                ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
           END AS timeline, \
           current_setting('primary_conninfo') AS conninfo, \
           (SELECT count(*) FROM pg_stat_wal_receiver WHERE pid IS NOT NULL) = 0 AS no_receiver, \
           (SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming') = 0 \
               AS not_streaming, \
           current_setting('synchronous_standby_names') AS standby_names, \
           pg_postmaster_start_time()::text AS started, \
           CASE WHEN pg_is_in_recovery() THEN '{}'::text[] \
                ELSE ARRAY(SELECT application_name FROM pg_stat_replication \
                           WHERE flush_lsn >= pg_current_wal_flush_lsn()) END AS caught_up";

impl Agent {
    /// This node's server, and a session to it when it answers.
    pub(super) async fn probe(&self) -> (Probed, Option<Client>) {
        let control = ControlFile::read(&self.cluster.runtime.data_dir(&self.node)).ok();
        let down = Local {
            server: ServerState {
                running: false,
                in_recovery: false,
                timeline: None,
                position: None,
                detached: true,
                follows: None,
                unknown: false,
            },
            standby_signal: self
                .cluster
                .runtime
                .data_dir(&self.node)
                .join("standby.signal")
                .exists(),
            standby_names: Ok(SyncPolicy::default()),
            caught_up: Vec::new(),
            shutdown_checkpoint: None,
            promoting: false,
            system_id: control.as_ref().map(|c| c.system_identifier),
            history_top: self.history_top(),
            starved: false,
        };
        if !self.cluster.runtime.is_running(&self.node).await {
            let shutdown_checkpoint = control
                .filter(|c| c.state == ControlFile::SHUT_DOWN)
                .map(|c| c.checkpoint);
            let local = Local {
                shutdown_checkpoint,
                ..down
            };
            return (Probed::Known(local), None);
        }
        let answer = tokio::time::timeout(SQL_TIMEOUT, self.query_state()).await;
        // It may have stopped meanwhile.
        if answer.as_ref().map_or(true, Result::is_err)
            && !self.cluster.runtime.is_running(&self.node).await
        {
            return (Probed::Known(down), None);
        }
        let standby_signal = down.standby_signal;
        match answer {
            Ok(Ok((local, client))) => (
                Probed::Known(Local {
                    standby_signal: down.standby_signal,
                    system_id: down.system_id,
                    history_top: down.history_top,
                    ..local
                }),
                Some(client),
            ),
            Ok(Err(e)) => {
                tracing::debug!(
                    "probe `{}`: {}",
                    self.node.name,
                    crate::cluster::error_chain(&e)
                );
                let probed = if server_answered(&e) {
                    Probed::Refused { standby_signal }
                } else {
                    Probed::Silent { standby_signal }
                };
                (probed, None)
            }
            Err(_) => (Probed::Silent { standby_signal }, None),
        }
    }

    async fn query_state(&self) -> Result<(Local, Client), ClusterError> {
        let client = self.session(&self.node).await?;
        let row = client
            .query_one(PROBE, &[])
            .await
            .map_err(|e| node_err_sql(&self.node, e))?;
        // primary_conninfo holds the replication password: it is only compared, never logged.
        let conninfo: String = row.get("conninfo");
        let position = match row.get::<_, Option<String>>("position") {
            Some(text) => Some(text.parse().map_err(|_| ClusterError::NotAnLsn {
                node: self.node.name.clone(),
                text: text.clone(),
            })?),
            None => None,
        };
        let in_recovery: bool = row.get("in_recovery");
        let mut timeline = row
            .get::<_, Option<i32>>("timeline")
            .map(|t| TimelineId::new(t as u32));
        let mut final_position = row.get::<_, bool>("position_final");
        if in_recovery {
            // The SQL one falls back to the last restartpoint's when no walreceiver runs, which
            // can lag the WAL by minutes (across a timeline switch too): an election would rank
            // this standby on an older timeline than it is on.
            match self.replay_timeline().await {
                Ok(replayed) => timeline = Some(replayed),
                Err(e) => {
                    tracing::warn!(
                        "IDENTIFY_SYSTEM on `{}`: {e}; its position counts for no election",
                        self.node.name
                    );
                    final_position = false;
                }
            }
        }
        let local = Local {
            server: ServerState {
                running: true,
                in_recovery,
                position,
                timeline,
                detached: conninfo.is_empty()
                    && row.get::<_, bool>("no_receiver")
                    && final_position,
                unknown: false,
                follows: self.followed_node(&conninfo),
            },
            standby_signal: false,
            standby_names: row.get::<_, &str>("standby_names").parse(),
            caught_up: row.get("caught_up"),
            shutdown_checkpoint: None,
            system_id: None,
            promoting: in_recovery
                && self.promotion_asked().as_deref() == Some(row.get::<_, &str>("started")),
            history_top: None,
            // A receiver that fails at once (its WAL gone) comes and goes every
            // wal_retrieve_retry_interval, and the startup process's wait event with it: only
            // "not streaming" holds from one probe to the next.
            starved: in_recovery && !conninfo.is_empty() && row.get::<_, bool>("not_streaming"),
        };
        Ok((local, client))
    }

    /// The newest timeline number with a history file in pg_wal. Unreadable, `None`: the
    /// promotion's own check then refuses a number a file already has.
    fn history_top(&self) -> Option<TimelineId> {
        let pg_wal = self.cluster.runtime.data_dir(&self.node).join("pg_wal");
        super::timelines::newest(&pg_wal).unwrap_or_else(|e| {
            tracing::warn!("reading the history files in {}: {e}", pg_wal.display());
            None
        })
    }

    /// The timeline of the last WAL record a standby replayed (`Cluster::replay_timeline`).
    async fn replay_timeline(&self) -> Result<TimelineId, ClusterError> {
        self.cluster.replay_timeline(&self.node, SQL_TIMEOUT).await
    }

    /// The node whose address primary_conninfo names.
    fn followed_node(&self, conninfo: &str) -> Option<String> {
        let (host, port) = conninfo_address(conninfo)?;
        self.cluster
            .spec
            .nodes
            .iter()
            .find(|n| self.cluster.runtime.primary_address_for_standbys(n) == (host.clone(), port))
            .map(|n| n.name.clone())
    }
}

/// Whether the server itself answered, with an error (starting up, too many connections):
/// then it runs. Anything else (no connection, a timeout) is silence: a stopped postmaster
/// accepts nothing, and once clients have filled its accept queue a connection fails at once
/// (EAGAIN) rather than timing out, which must not pass for an answer.
fn server_answered(error: &ClusterError) -> bool {
    error
        .connection_error()
        .and_then(|e| e.sqlstate())
        .is_some()
}

/// `host` and `port` of a conninfo string (the agent's own are `key=value` pairs; neither value
/// is ever quoted).
fn conninfo_address(conninfo: &str) -> Option<(String, u16)> {
    let value = |key: &str| {
        conninfo
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('\''))
    };
    Some((value("host")?.to_owned(), value("port")?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_out_of_a_primary_conninfo() {
        assert_eq!(
            conninfo_address("host=127.0.0.1 port=54321 user=replicator password=secret application_name=pg_slave"),
            Some(("127.0.0.1".into(), 54321))
        );
        assert_eq!(conninfo_address(""), None);
        assert_eq!(conninfo_address("host=db"), None);
    }
}
