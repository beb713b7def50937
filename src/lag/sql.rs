//! The SQL pgrepl reads lag from, and the typed facts parsed out of its answers.
//!
//! Every node, primary or standby, gets the same batch in one simple-query round trip: the
//! role-dependent calls are guarded by `CASE` (volatile functions are evaluated lazily), and the
//! views that do not apply to a role are simply empty there. One round trip per node keeps a
//! round fast, and it means a cascading standby's own walsenders are read as well.
//!
//! Values are read as text (the simple query protocol) and parsed here; intervals and ages are
//! turned into milliseconds by the server so that `IntervalStyle` cannot change their format.

use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

use super::LagError;
use crate::ids::TimelineId;
use crate::lsn::Lsn;

/// The `application_name` of pgrepl's own sessions. Our replication connection occupies a
/// walsender slot and so shows up in the primary's `pg_stat_replication` (state `startup`);
/// [`SENDERS`] leaves out rows with this name so that neither we nor a concurrent `pgrepl lag`
/// are mistaken for a standby.
pub const SESSION_APPLICATION_NAME: &str = "pgrepl lag";

/// Role, settings, privileges and the node's own WAL positions. `pg_has_role` is also true for
/// superusers; without `pg_read_all_stats` the statistics views hide everything but `pid`.
pub const NODE: &str = "\
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('server_version') AS server_version,
       current_setting('synchronous_standby_names') AS synchronous_standby_names,
       current_setting('synchronous_commit') AS synchronous_commit,
       pg_has_role('pg_read_all_stats', 'USAGE') AS can_read_stats,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_flush_lsn() END AS flush_lsn,
       pg_last_wal_receive_lsn() AS receive_lsn,
       pg_last_wal_replay_lsn() AS replay_lsn,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused,
       (SELECT string_agg(name, ',' ORDER BY name) FROM pg_settings WHERE pending_restart)
           AS pending_restart,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000
           AS last_xact_replay_age_ms";

/// One row per walsender on this node: what each standby last reported, and the lag intervals
/// the walsender measured.
pub const SENDERS: &str = "\
SELECT application_name, client_addr, state, sent_lsn, write_lsn, flush_lsn, replay_lsn,
       extract(epoch FROM write_lag) * 1000 AS write_lag_ms,
       extract(epoch FROM flush_lag) * 1000 AS flush_lag_ms,
       extract(epoch FROM replay_lag) * 1000 AS replay_lag_ms,
       sync_priority, sync_state,
       extract(epoch FROM clock_timestamp() - reply_time) * 1000 AS reply_age_ms
FROM pg_stat_replication
WHERE application_name IS DISTINCT FROM 'pgrepl lag'
ORDER BY application_name, pid";

/// The standby's walreceiver, if one runs. `SELECT *` because the columns changed in 13
/// (`received_lsn` became `written_lsn` and `flushed_lsn`).
pub const RECEIVER: &str = "\
SELECT * FROM pg_stat_wal_receiver";

/// Sessions whose commit waits for synchronous standbys. The query text is left out on purpose:
/// it may carry secrets (`ALTER ROLE ... PASSWORD` waits on SyncRep like any other write).
pub const SYNC_WAITERS: &str = "\
SELECT pid, usename, application_name, client_addr,
       extract(epoch FROM clock_timestamp() - state_change) * 1000 AS waiting_ms
FROM pg_stat_activity
WHERE wait_event = 'SyncRep'
ORDER BY state_change, pid";

/// The probe's table: one row, overwritten by every probe.
pub const CREATE_HEARTBEAT: &str = "\
CREATE TABLE IF NOT EXISTS pgrepl_heartbeat (
    id int PRIMARY KEY,
    token text NOT NULL,
    written_at timestamptz NOT NULL
)";

pub const WRITE_HEARTBEAT: &str = "\
INSERT INTO pgrepl_heartbeat (id, token, written_at) VALUES (1, $1, clock_timestamp())
ON CONFLICT (id) DO UPDATE SET token = excluded.token, written_at = excluded.written_at";

pub const READ_HEARTBEAT: &str = "SELECT token FROM pgrepl_heartbeat WHERE id = 1";

/// The statements of one round, in the order [`NodeFacts::parse`] expects their results.
pub fn round_batch() -> String {
    [NODE, SENDERS, RECEIVER, SYNC_WAITERS].join(";\n")
}

/// What the SQL batch says about one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    pub in_recovery: bool,
    pub server_version: String,
    pub synchronous_standby_names: String,
    pub synchronous_commit: String,
    /// False when the role can see only `pid` in the statistics views.
    pub can_read_stats: bool,
    /// `pg_current_wal_flush_lsn()` on a primary: everything a standby can have received.
    pub flush_lsn: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()` on a standby (received and flushed).
    pub receive_lsn: Option<Lsn>,
    /// `pg_last_wal_replay_lsn()` on a standby.
    pub replay_lsn: Option<Lsn>,
    pub replay_paused: Option<bool>,
    /// Settings changed in the files that take effect only at the next restart.
    pub pending_restart: Vec<String>,
    /// Age of `pg_last_xact_replay_timestamp()`; grows while the primary is idle, so it is shown
    /// for information only and never used as the lag.
    pub last_xact_replay_age_ms: Option<f64>,
    pub senders: Vec<SenderRow>,
    pub receiver: Option<ReceiverRow>,
    pub sync_waiters: Vec<SyncWaiterRow>,
}

/// One row of `pg_stat_replication`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderRow {
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    /// NULL when the role cannot read statistics.
    pub state: Option<String>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub write_lag_ms: Option<f64>,
    pub flush_lag_ms: Option<f64>,
    pub replay_lag_ms: Option<f64>,
    pub sync_priority: Option<i32>,
    pub sync_state: Option<String>,
    /// Age of the standby's last reply: how old this row's positions are.
    pub reply_age_ms: Option<f64>,
}

/// The row of `pg_stat_wal_receiver`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReceiverRow {
    pub status: Option<String>,
    /// `written_lsn` (13+).
    pub written_lsn: Option<Lsn>,
    /// `flushed_lsn` (13+), `received_lsn` before.
    pub flushed_lsn: Option<Lsn>,
    pub received_tli: Option<TimelineId>,
    pub sender_host: Option<String>,
    pub sender_port: Option<u16>,
    /// The name this standby's walsender row carries on its upstream.
    pub application_name: Option<String>,
}

/// A session in `pg_stat_activity` waiting on `SyncRep`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SyncWaiterRow {
    pub pid: i32,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub waiting_ms: Option<f64>,
}

impl NodeFacts {
    /// Parses the answer to [`round_batch`].
    pub fn parse(messages: &[SimpleQueryMessage]) -> Result<NodeFacts, LagError> {
        let sets = result_sets(messages);
        let [node, senders, receiver, waiters] = sets.as_slice() else {
            return Err(LagError::Unexpected(format!(
                "{} result sets from the lag queries, expected 4",
                sets.len()
            )));
        };
        let [row] = node.as_slice() else {
            return Err(LagError::Unexpected(format!(
                "{} rows from the node query, expected 1",
                node.len()
            )));
        };
        Ok(NodeFacts {
            in_recovery: required(row, "in_recovery", parse_bool)?,
            server_version: required(row, "server_version", |s| Some(s.to_owned()))?,
            synchronous_standby_names: required(row, "synchronous_standby_names", |s| {
                Some(s.to_owned())
            })?,
            synchronous_commit: required(row, "synchronous_commit", |s| Some(s.to_owned()))?,
            can_read_stats: required(row, "can_read_stats", parse_bool)?,
            flush_lsn: optional(row, "flush_lsn", parse_lsn)?,
            receive_lsn: optional(row, "receive_lsn", parse_lsn)?,
            replay_lsn: optional(row, "replay_lsn", parse_lsn)?,
            replay_paused: optional(row, "replay_paused", parse_bool)?,
            pending_restart: optional(row, "pending_restart", |s| {
                Some(s.split(',').map(str::to_owned).collect())
            })?
            .unwrap_or_default(),
            last_xact_replay_age_ms: optional(row, "last_xact_replay_age_ms", parse_f64)?,
            senders: senders
                .iter()
                .map(|r| SenderRow::parse(r))
                .collect::<Result<_, _>>()?,
            receiver: receiver
                .first()
                .map(|r| ReceiverRow::parse(r))
                .transpose()?,
            sync_waiters: waiters
                .iter()
                .map(|r| SyncWaiterRow::parse(r))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl SenderRow {
    pub(crate) fn parse(row: &SimpleQueryRow) -> Result<SenderRow, LagError> {
        Ok(SenderRow {
            application_name: optional(row, "application_name", text)?,
            client_addr: optional(row, "client_addr", text)?,
            state: optional(row, "state", text)?,
            sent_lsn: optional(row, "sent_lsn", parse_lsn)?,
            write_lsn: optional(row, "write_lsn", parse_lsn)?,
            flush_lsn: optional(row, "flush_lsn", parse_lsn)?,
            replay_lsn: optional(row, "replay_lsn", parse_lsn)?,
            write_lag_ms: optional(row, "write_lag_ms", parse_f64)?,
            flush_lag_ms: optional(row, "flush_lag_ms", parse_f64)?,
            replay_lag_ms: optional(row, "replay_lag_ms", parse_f64)?,
            sync_priority: optional(row, "sync_priority", parse_num)?,
            sync_state: optional(row, "sync_state", text)?,
            reply_age_ms: optional(row, "reply_age_ms", parse_f64)?,
        })
    }
}

impl ReceiverRow {
    fn parse(row: &SimpleQueryRow) -> Result<ReceiverRow, LagError> {
        let flushed_lsn = match optional(row, "flushed_lsn", parse_lsn) {
            Err(LagError::MissingColumn(_)) => optional(row, "received_lsn", parse_lsn)?,
            other => other?,
        };
        let written_lsn = match optional(row, "written_lsn", parse_lsn) {
            Err(LagError::MissingColumn(_)) => None,
            other => other?,
        };
        let conninfo: Option<String> = optional(row, "conninfo", text)?;
        Ok(ReceiverRow {
            status: optional(row, "status", text)?,
            written_lsn,
            flushed_lsn,
            received_tli: optional(row, "received_tli", parse_num)?,
            sender_host: optional(row, "sender_host", text)?,
            sender_port: optional(row, "sender_port", parse_num)?,
            application_name: conninfo.as_deref().and_then(walreceiver_application_name),
        })
    }
}

impl SyncWaiterRow {
    fn parse(row: &SimpleQueryRow) -> Result<SyncWaiterRow, LagError> {
        Ok(SyncWaiterRow {
            pid: required(row, "pid", parse_num)?,
            usename: optional(row, "usename", text)?,
            application_name: optional(row, "application_name", text)?,
            client_addr: optional(row, "client_addr", text)?,
            waiting_ms: optional(row, "waiting_ms", parse_f64)?,
        })
    }
}

/// The `application_name` a walreceiver sends, from `pg_stat_wal_receiver.conninfo`:
/// `application_name` from primary_conninfo, else `fallback_application_name` (which the
/// walreceiver always sets, to `cluster_name` or `walreceiver`).
///
/// That column is not a conninfo string libpq could parse: the server writes every option as
/// `key=value` joined by spaces, unquoted and unescaped (`libpqrcv_get_conninfo`). A value with
/// a space therefore continues up to the next word that looks like `keyword=`.
pub fn walreceiver_application_name(display_conninfo: &str) -> Option<String> {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for word in display_conninfo.split(' ') {
        let keyword = word
            .split_once('=')
            .map(|(k, _)| k)
            .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        match (keyword, pairs.last_mut()) {
            (Some(key), _) => pairs.push((key, word[key.len() + 1..].to_owned())),
            (None, Some((_, value))) => {
                value.push(' ');
                value.push_str(word);
            }
            (None, None) => {}
        }
    }
    let find = |key: &str| {
        pairs
            .iter()
            .find(|(k, v)| *k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    find("application_name").or_else(|| find("fallback_application_name"))
}

/// Splits the simple-query answer into the rows of each statement.
fn result_sets(messages: &[SimpleQueryMessage]) -> Vec<Vec<&SimpleQueryRow>> {
    let mut sets = Vec::new();
    let mut current = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::Row(row) => current.push(row),
            SimpleQueryMessage::CommandComplete(_) => sets.push(std::mem::take(&mut current)),
            // Column names are read through each row.
            _ => {}
        }
    }
    sets
}

fn optional<T>(
    row: &SimpleQueryRow,
    column: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, LagError> {
    let value = row
        .try_get(column)
        .map_err(|_| LagError::MissingColumn(column))?;
    match value {
        None => Ok(None),
        Some(text) => parse(text)
            .map(Some)
            .ok_or_else(|| LagError::Unexpected(format!("`{text}` in column `{column}`"))),
    }
}

fn required<T>(
    row: &SimpleQueryRow,
    column: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, LagError> {
    optional(row, column, parse)?
        .ok_or_else(|| LagError::Unexpected(format!("NULL in column `{column}`")))
}

fn text(s: &str) -> Option<String> {
    Some(s.to_owned())
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "t" => Some(true),
        "f" => Some(false),
        _ => None,
    }
}

fn parse_lsn(s: &str) -> Option<Lsn> {
    s.parse().ok()
}

fn parse_f64(s: &str) -> Option<f64> {
    s.parse().ok().filter(|v: &f64| v.is_finite())
}

fn parse_num<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_from_the_walreceiver_display_conninfo() {
        // As PostgreSQL 15 shows it for a standby written by `pgrepl basebackup -R`.
        let shown = "user=rep_scram password=******** channel_binding=prefer dbname=replication \
                     host=127.0.0.1 port=40123 application_name=standby_a \
                     fallback_application_name=walreceiver sslmode=prefer sslcompression=0 \
                     sslsni=1 ssl_min_protocol_version=TLSv1.2 gssencmode=prefer \
                     krbsrvname=postgres target_session_attrs=any";
        assert_eq!(
            walreceiver_application_name(shown).as_deref(),
            Some("standby_a")
        );
        // No application_name: the fallback (cluster_name or "walreceiver") is what the primary sees.
        let fallback =
            "user=rep host=db1 port=5432 fallback_application_name=main_b sslmode=prefer";
        assert_eq!(
            walreceiver_application_name(fallback).as_deref(),
            Some("main_b")
        );
        // Unquoted values with spaces run on to the next keyword.
        let spaced = "host=db1 application_name=my standby x fallback_application_name=walreceiver";
        assert_eq!(
            walreceiver_application_name(spaced).as_deref(),
            Some("my standby x")
        );
        assert_eq!(walreceiver_application_name(""), None);
        assert_eq!(walreceiver_application_name("host=db1 port=5432"), None);
    }

    #[test]
    fn the_batch_lists_every_statement_once() {
        let batch = round_batch();
        // Four statements, NODE's with one subquery (the settings pending a restart).
        assert_eq!(batch.matches("SELECT").count(), 5);
        assert_eq!(batch.matches(';').count(), 3);
        assert!(SENDERS.contains(&format!("'{SESSION_APPLICATION_NAME}'")));
        assert!(CREATE_HEARTBEAT.contains("pgrepl_heartbeat"));
    }
}
