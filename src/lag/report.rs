//! The report of one round: what `--json` prints, field for field. The schema is documented in
//! the module doc of [`crate::lag`]; add fields, never rename or remove them.

use serde::Serialize;

use super::sync::SyncReport;
use crate::ids::TimelineId;
use crate::lsn::Lsn;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Wall time of the round (connect, query and, with `--probe`, the probe), in milliseconds.
    pub round_ms: f64,
    /// The node taken as the primary (with several, the one on the highest timeline).
    pub primary: Option<String>,
    /// The system identifier of the cluster: the primary's, else the most common one.
    /// A string because it does not fit in a JSON number without losing digits.
    pub system_identifier: Option<String>,
    pub nodes: Vec<NodeReport>,
    pub standbys: Vec<StandbyReport>,
    /// Synchronous replication on the primary.
    pub sync: Option<SyncReport>,
    /// With no primary reachable: the standby to promote.
    pub promotion_candidate: Option<PromotionCandidate>,
    /// Everything that makes the exit code 2.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Standby,
    /// Not reachable over SQL.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    pub name: String,
    /// Without the password.
    pub conninfo: String,
    pub role: Role,
    /// The node answered SQL.
    pub reachable: bool,
    /// From `IDENTIFY_SYSTEM`, as a string (see [`Report::system_identifier`]).
    pub system_identifier: Option<String>,
    pub timeline: Option<TimelineId>,
    /// `IDENTIFY_SYSTEM`'s position: the flush position of a primary, the received or
    /// replayed position of a standby, whichever is further.
    pub lsn: Option<Lsn>,
    pub server_version: Option<String>,
    /// A standby's walreceiver state (`streaming`, `waiting`, ...), `None` when none runs.
    pub receiver_status: Option<String>,
    /// Where a standby's walreceiver is connected, `host:port`.
    pub upstream: Option<String>,
    pub replay_paused: Option<bool>,
    /// Settings waiting for a restart to take effect.
    pub pending_restart: Vec<String>,
    /// Not part of the cluster: another system identifier than the primary's.
    pub other_system: bool,
    /// A standby on an older timeline than the primary.
    pub older_timeline: bool,
    /// Why the node, or part of what pgrepl asks it, did not answer.
    pub error: Option<String>,
}

/// The replication stages a standby reports, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Write,
    Flush,
    Replay,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Write, Stage::Flush, Stage::Replay];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Write => "write",
            Stage::Flush => "flush",
            Stage::Replay => "replay",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StandbyReport {
    /// The name the standby streams under (its `primary_conninfo` application_name).
    pub application_name: Option<String>,
    /// The node this standby is, when it was given; `None` for a walsender with no given node
    /// (another standby, `pg_basebackup`, `pg_receivewal`).
    pub node: Option<String>,
    /// Whether that node answered; `None` when there is no node.
    pub reachable: Option<bool>,
    /// The node whose walsender serves this standby, when it was given.
    pub upstream: Option<String>,
    /// The walsender's state (`streaming`, `catchup`, `backup`, ...), else the walreceiver's,
    /// else `disconnected`.
    pub state: Option<String>,
    /// `sync`, `potential`, `quorum` or `async`.
    pub sync_state: Option<String>,
    pub sync_priority: Option<i32>,
    /// How old the walsender's view is: the age of the standby's last reply.
    pub reply_age_ms: Option<f64>,
    pub client_addr: Option<String>,
    pub timeline: Option<TimelineId>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub write_lag_bytes: Option<u64>,
    pub flush_lag_bytes: Option<u64>,
    pub replay_lag_bytes: Option<u64>,
    pub write_lag_ms: Option<f64>,
    pub flush_lag_ms: Option<f64>,
    pub replay_lag_ms: Option<f64>,
    pub replay_paused: Option<bool>,
    /// Age of the last replayed commit: for information, it grows while the primary is idle.
    pub last_xact_replay_age_ms: Option<f64>,
    /// With `--probe`: from writing the heartbeat on the primary to seeing it here.
    pub probe_ms: Option<f64>,
    /// With `--probe`: the heartbeat did not show up within the probe's wait.
    pub probe_timed_out: bool,
}

impl StandbyReport {
    /// The name to show: the application_name, else the node.
    pub fn label(&self) -> &str {
        self.application_name
            .as_deref()
            .or(self.node.as_deref())
            .unwrap_or("?")
    }

    pub fn lag_bytes(&self, stage: Stage) -> Option<u64> {
        match stage {
            Stage::Write => self.write_lag_bytes,
            Stage::Flush => self.flush_lag_bytes,
            Stage::Replay => self.replay_lag_bytes,
        }
    }

    pub fn lag_ms(&self, stage: Stage) -> Option<f64> {
        match stage {
            Stage::Write => self.write_lag_ms,
            Stage::Flush => self.flush_lag_ms,
            Stage::Replay => self.replay_lag_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromotionCandidate {
    pub node: String,
    pub timeline: Option<TimelineId>,
    /// The furthest WAL it has: received or replayed.
    pub lsn: Option<Lsn>,
    /// How far ahead of the next standby on the same timeline it is, in bytes.
    pub ahead_bytes: Option<u64>,
    /// Another standby has exactly as much WAL.
    pub tied: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Unreachable,
    ReplicationConnection,
    NoStatsPrivilege,
    OtherSystem,
    OlderTimeline,
    MultiplePrimaries,
    NoPrimary,
    NotStreaming,
    DuplicateApplicationName,
    ProbeFailed,
}

/// Something wrong with a node or the cluster's shape (exit code 2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub node: Option<String>,
    pub message: String,
}
