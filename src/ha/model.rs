//! The vocabulary of the agent's decisions: its own server as the probe saw it, etcd's view of
//! the cluster, the clock the core reads, and the action chosen with its reason. Plain data,
//! shared by `election`, `decide`, `requests` and `core`; nothing here does I/O.

use std::time::Duration;

use super::records::{LeaseId, MemberRecord, PauseRecord, RoleRequest, ServerState, SyncRecord};
use crate::cluster::history::ChangeKind;
use crate::ids::{SystemId, TimelineId};
use crate::sync_policy::{SyncNamesError, SyncPolicy};
use crate::Lsn;

/// A moment on one agent's monotonic clock, counted from an origin of the caller's choosing (the
/// agent's start; the simulator's zero). The core never reads a clock: time is an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(Duration);

impl Time {
    pub const ZERO: Time = Time(Duration::ZERO);

    pub const fn from_millis(ms: u64) -> Time {
        Time(Duration::from_millis(ms))
    }

    pub const fn since_origin(elapsed: Duration) -> Time {
        Time(elapsed)
    }

    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;

    fn add(self, d: Duration) -> Time {
        Time(self.0 + d)
    }
}

/// This node's server, as the agent just probed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// What the member record publishes.
    pub server: ServerState,
    /// The data directory has standby.signal (a stopped standby, not a former primary).
    pub standby_signal: bool,
    /// synchronous_standby_names in force (a running primary); `Err`: a setting pgrepl cannot
    /// read (the server took it), which equals no policy.
    pub standby_names: Result<SyncPolicy, SyncNamesError>,
    /// Standbys whose flushed position has reached the primary's current one.
    pub caught_up: Vec<String>,
    /// A stopped server whose pg_control says it shut down cleanly as a primary: where its
    /// shutdown checkpoint is (a standby holding WAL past it holds every commit).
    pub shutdown_checkpoint: Option<Lsn>,
    /// pg_control's system identifier (`None`: no data yet).
    pub system_id: Option<SystemId>,
    /// A promotion was asked of this running standby (by this run of the agent or an earlier
    /// one) and may complete at any moment: it may take writes.
    pub promoting: bool,
    /// The highest timeline number with a history file in pg_wal: a promotion here numbers its
    /// timeline after it (xlogrecovery.c `findNewestTimeLine`).
    pub history_top: Option<TimelineId>,
    /// A running standby pointed at a primary does not stream from it: it waits for WAL it
    /// cannot get, for now or (its primary having recycled it) for ever. (It may still replay
    /// WAL it holds: its position then moves.)
    pub starved: bool,
}

/// What the probe learnt of this node's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    /// Its state (running or not).
    Known(Local),
    /// It runs and answered with an error (starting up, out of connections): alive, not hung.
    /// `standby_signal`: its data directory has one (it cannot take writes).
    Refused { standby_signal: bool },
    /// It runs and did not answer in time: stalled for a moment, or hung.
    Silent { standby_signal: bool },
}

impl Probed {
    pub fn local(&self) -> Option<&Local> {
        match self {
            Probed::Known(local) => Some(local),
            Probed::Refused { .. } | Probed::Silent { .. } => None,
        }
    }

    /// The server runs, or may, and its data is a primary's: it may take writes.
    pub fn may_write(&self) -> bool {
        match self {
            Probed::Known(local) => {
                local.server.running && (!local.server.in_recovery || local.promoting)
            }
            Probed::Refused { standby_signal } | Probed::Silent { standby_signal } => {
                !standby_signal
            }
        }
    }
}

/// The leader key as this agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub node: String,
    /// The lease holding the key.
    pub lease: LeaseId,
    /// Held under this agent's current lease (not a key left by an earlier run of it).
    pub mine: bool,
}

/// What etcd holds, read in one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    pub leader: Option<Leader>,
    /// Records of agents whose lease is alive.
    pub members: Vec<MemberRecord>,
    pub sync: Option<SyncRecord>,
    /// `pgrepl pause`: no automatic action on any server.
    pub pause: Option<PauseRecord>,
    /// `pgrepl switchover`: the leader's agent hands its key to `to`.
    pub switchover: Option<RoleRequest>,
    /// `pgrepl failover --to`: the election prefers `to` when it is as safe as its own choice.
    pub failover: Option<RoleRequest>,
    /// The system identifier these keys belong to (`None`: written by no leader yet).
    pub system_id: Option<SystemId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to change.
    Wait,
    /// Kill the server now: it is a primary that must not take another write.
    Fence,
    /// This node leads and its server is down: start it again as it is.
    RestartInPlace,
    /// Start the stopped standby as it is.
    Start,
    /// Kill the server that runs but has not answered for `decide::HUNG_AFTER`: it then starts
    /// again as the node's role wants (a leader in place, a standby as a standby).
    KillHung,
    /// Make the former primary a standby of `leader` (follow, pg_rewind or re-clone).
    Rejoin { leader: String },
    /// Point primary_conninfo at `leader`.
    Follow { leader: String },
    /// Empty primary_conninfo: stop receiving from a primary that lost its lease.
    Detach,
    /// Create the leader key under this agent's lease, if nobody holds it (and the keys are
    /// this cluster's).
    TakeLeadership,
    /// Move the leader key an earlier run of this agent holds under `from` to this run's lease.
    Reclaim { from: LeaseId },
    /// Give the leader key up: this node's server does not start, and a standby can take over.
    Release,
    /// Write this cluster's system identifier beside the keys (a leader from before it was).
    RecordSystemId,
    /// This node holds the key and is still a standby: record `sync`, take every other standby
    /// off the old primary (`repoint` them here), set `standby_names`, promote to `timeline`.
    Promote {
        sync: SyncRecord,
        standby_names: SyncPolicy,
        repoint: Vec<String>,
        timeline: TimelineId,
        /// Why, for the history.
        kind: ChangeKind,
    },
    /// Replace the sync record (the leader's own, guarded by its key).
    WriteSync(SyncRecord),
    /// Set synchronous_standby_names on this primary.
    SetStandbyNames(SyncPolicy),
    /// A switchover away from this leader: fast shutdown, so the target gets every commit.
    StopForSwitchover { to: String },
    /// Put the leader key under `to`'s lease: it promotes as an elected node does.
    HandOver { to: String },
    /// Mark the switchover request refused, saying why (the CLI reports it).
    RefuseSwitchover(String),
}

/// An action and why: one sentence the agent logs when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
}

impl Decision {
    pub fn new(action: Action, reason: impl Into<String>) -> Decision {
        Decision {
            action,
            reason: reason.into(),
        }
    }

    pub fn wait(reason: impl Into<String>) -> Decision {
        Decision::new(Action::Wait, reason)
    }
}
