//! A model of each PostgreSQL server, as faithful as the agents' decisions need it: WAL
//! positions (flushed to disk, received this session, replayed), timelines and the forks
//! between them, standby.signal and primary_conninfo, the walsenders of a primary with the sync
//! configuration each one has applied (a reload reaches each at its own time), the commits
//! waiting for them, and a clean shutdown's checkpoint.
//!
//! What moves it (streaming, replay, crash, promotion) lives in `world`, which owns the clock.

use pgrepl::sync_policy::{SyncMethod, SyncPolicy};

/// A WAL position; one unit per record (a commit, a shutdown checkpoint).
pub type Pos = u64;

/// Index of a timeline in [`Timelines`]: unique even when two servers both promote to the same
/// timeline number, so a history that diverged is never taken for the same one.
pub type Tl = usize;

#[derive(Debug, Clone)]
pub struct Timeline {
    /// The number PostgreSQL gives it (what the probe reports and history files are named by).
    pub number: u32,
    /// The timeline it forked from, and where.
    pub parent: Option<(Tl, Pos)>,
}

#[derive(Debug, Clone, Default)]
pub struct Timelines(pub Vec<Timeline>);

impl Timelines {
    pub fn first() -> Timelines {
        Timelines(vec![Timeline {
            number: 1,
            parent: None,
        }])
    }

    /// A new timeline forking off `parent` at `at`, numbered as a promotion numbers it: one
    /// more than the newest history file the promoted server holds, `top` (its own timeline's
    /// number, or a placeholder's above it).
    pub fn fork(&mut self, parent: Tl, at: Pos, top: u32) -> Tl {
        let number = self.0[parent].number.max(top) + 1;
        self.0.push(Timeline {
            number,
            parent: Some((parent, at)),
        });
        self.0.len() - 1
    }

    pub fn number(&self, tl: Tl) -> u32 {
        self.0[tl].number
    }

    /// Whether the history that ends at (`tl`, `end`) holds the WAL at (`at_tl`, `at`).
    pub fn contains(&self, tl: Tl, end: Pos, at_tl: Tl, at: Pos) -> bool {
        let (mut cur, mut end) = (tl, end);
        loop {
            if cur == at_tl {
                return at <= end;
            }
            match self.0[cur].parent {
                Some((parent, fork)) => {
                    cur = parent;
                    end = end.min(fork);
                }
                None => return false,
            }
        }
    }

    /// Where the history of `upstream` leaves `tl` (`None`: `tl` is not on it). The upstream's
    /// own timeline never ends there.
    pub fn end_of(&self, upstream: Tl, tl: Tl) -> Option<Pos> {
        let mut cur = upstream;
        let mut end = Pos::MAX;
        loop {
            if cur == tl {
                return Some(end);
            }
            let (parent, fork) = self.0[cur].parent?;
            cur = parent;
            end = fork;
        }
    }

    /// The timeline of `upstream`'s history that carries the number `number` (a standby asks
    /// for WAL by timeline number, as PostgreSQL does).
    pub fn by_number(&self, upstream: Tl, number: u32) -> Option<Tl> {
        let mut cur = upstream;
        loop {
            if self.0[cur].number == number {
                return Some(cur);
            }
            cur = self.0[cur].parent?.0;
        }
    }
}

/// A synchronous_standby_names as the walsenders apply it (no names: no synchronous
/// replication, commits are acknowledged at once).
pub fn parse_config(text: &str) -> SyncPolicy {
    text.parse().expect("the agents write valid names")
}

/// The priority a walsender for `name` takes under `config` (0: asynchronous).
pub fn priority(config: &SyncPolicy, name: &str) -> usize {
    config
        .names
        .iter()
        .position(|n| n == name)
        .map_or(0, |i| i + 1)
}

/// One walsender of a primary (or of a standby feeding a cascade).
#[derive(Debug, Clone)]
pub struct Walsender {
    pub standby: usize,
    /// The standby's flushed position, as its last reply said.
    pub flush: Pos,
    /// The configuration this walsender applied at its last reload, and the priority it took.
    pub config: SyncPolicy,
    pub priority: usize,
    /// A reload it has not processed yet: when it will.
    pub reload_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Stopped; `clean`: by a fast shutdown (pg_control says "shut down").
    Stopped {
        clean: bool,
    },
    /// Started, in crash recovery or replaying until `ready_at`: the probe is refused.
    Starting {
        ready_at: u64,
    },
    Running,
}

/// A commit waiting for the synchronous standbys.
#[derive(Debug, Clone, Copy)]
pub struct Waiter {
    pub at: Pos,
    pub commit: usize,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub run: Run,
    /// SIGSTOPped: runs, answers nothing, streams nothing.
    pub hung: bool,
    pub standby_signal: bool,
    pub tl: Tl,
    pub flushed: Pos,
    /// pg_last_wal_receive_lsn: none since the start until a walreceiver connected.
    pub received: Option<Pos>,
    pub replayed: Pos,
    /// primary_conninfo: the node it names.
    pub conninfo: Option<usize>,
    /// The node its walreceiver streams from now.
    pub upstream: Option<usize>,
    /// synchronous_standby_names as written (ALTER SYSTEM) and reloaded, as a session reads
    /// it, and parsed.
    pub ssn_text: String,
    pub ssn: SyncPolicy,
    pub senders: Vec<Walsender>,
    pub waiters: Vec<Waiter>,
    /// A clean shutdown as a primary: its shutdown checkpoint.
    pub shutdown_checkpoint: Option<Pos>,
    pub system_id: u64,
    /// When replay of the next record completes (a standby with WAL left to replay).
    pub replay_due: Option<u64>,
    /// The newest placeholder history file the agent wrote in pg_wal (0: none). The other
    /// history files are those of its own timeline's history.
    pub placeholders: u32,
}

impl Server {
    pub fn new(primary: bool, system_id: u64) -> Server {
        Server {
            run: Run::Running,
            hung: false,
            standby_signal: !primary,
            tl: 0,
            flushed: 1,
            received: (!primary).then_some(1),
            replayed: 1,
            conninfo: None,
            upstream: None,
            ssn_text: String::new(),
            ssn: SyncPolicy::default(),
            senders: Vec::new(),
            waiters: Vec::new(),
            shutdown_checkpoint: None,
            system_id,
            replay_due: None,
            placeholders: 0,
        }
    }

    pub fn running(&self) -> bool {
        self.run == Run::Running
    }

    /// Running and out of recovery.
    pub fn primary(&self) -> bool {
        self.running() && !self.standby_signal
    }

    /// Takes writes and answers: a primary that is not hung.
    pub fn writable(&self) -> bool {
        self.primary() && !self.hung
    }

    /// The furthest WAL it holds as the probe reports it: received or replayed (standby),
    /// flushed (primary).
    pub fn reported_position(&self) -> Pos {
        if self.standby_signal {
            self.received.unwrap_or(0).max(self.replayed)
        } else {
            self.flushed
        }
    }

    /// The sync configuration's release point for the walsender `from`, as PostgreSQL's
    /// SyncRepGetSyncRecPtr computes it with that walsender's own configuration and every
    /// walsender's own priority (`None`: it releases nothing).
    pub fn release_point(&self, from: usize) -> Option<Pos> {
        let me = &self.senders[from];
        if me.priority == 0 {
            return None;
        }
        let config = &me.config;
        let num = config.num as usize;
        // (priority, flush) of every candidate; a handful at most, so no allocation.
        let mut candidates = [(0usize, 0 as Pos, 0usize); 8];
        let mut count = 0;
        for w in self.senders.iter().filter(|w| w.priority > 0).take(8) {
            candidates[count] = (w.priority, w.flush, w.standby);
            count += 1;
        }
        let candidates = &mut candidates[..count];
        if count < num || num == 0 {
            return None;
        }
        if config.method == SyncMethod::Quorum {
            candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.1));
            Some(candidates[num - 1].1)
        } else {
            candidates.sort_unstable_by_key(|c| c.0);
            let chosen = &candidates[..num];
            // Only a walsender that is one of the synchronous ones releases (am_sync).
            if !chosen.iter().any(|c| c.2 == me.standby) {
                return None;
            }
            chosen.iter().map(|c| c.1).min()
        }
    }

    /// Whether the walsenders connected now could satisfy the configuration (or none is
    /// needed): this primary could acknowledge a commit.
    pub fn can_acknowledge(&self) -> bool {
        if !self.writable() {
            return false;
        }
        if self.ssn.names.is_empty() {
            return true;
        }
        let candidates = self.senders.iter().filter(|w| w.priority > 0).count();
        self.senders
            .iter()
            .any(|w| w.priority > 0 && candidates >= w.config.num as usize)
    }
}
