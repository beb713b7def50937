//! What one simulated schedule runs: the cluster's shape and policy, the faults and when, and
//! the seed of everything else (latencies, start and replay times). A schedule is generated
//! from one seed and can be shrunk by dropping faults.

use std::fmt;

use pgrepl::sync_policy::{SyncMethod, SyncPolicy};

/// One end of a network cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Node(usize),
    Etcd,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Node(i) => write!(f, "n{}", i + 1),
            Peer::Etcd => write!(f, "etcd"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The agent dies (SIGKILL) and is started again after `down_ms` (or at the heal).
    AgentCrash { node: usize, down_ms: u64 },
    /// The server is SIGKILLed; its agent lives.
    ServerCrash { node: usize },
    /// Agent and server die together; the agent starts again after `down_ms`.
    NodeLoss { node: usize, down_ms: u64 },
    /// The agent is SIGSTOPped for `ms`.
    AgentFreeze { node: usize, ms: u64 },
    /// Every process of the server is SIGSTOPped for `ms`.
    ServerHang { node: usize, ms: u64 },
    /// The server hangs in uninterruptible I/O for `ms`: it answers nothing and a kill does
    /// not end it.
    ServerStuck { node: usize, ms: u64 },
    /// Nothing passes between `a` and `b` for `ms`.
    Partition { a: Peer, b: Peer, ms: u64 },
    /// etcd elects a new leader: no request is served for `ms`, then every lease restarts.
    EtcdLeaderChange { ms: u64 },
    /// etcd loses quorum for `ms`.
    EtcdQuorumLoss { ms: u64 },
    /// The server replays one record per `per_record_ms` for `ms`.
    SlowReplay {
        node: usize,
        ms: u64,
        per_record_ms: u64,
    },
    /// The server's fsync of received WAL takes `fsync_ms` for `ms`.
    SlowFsync { node: usize, ms: u64, fsync_ms: u64 },
    /// Every start of the server fails (a bad setting, a full disk) for `ms`.
    CannotStart { node: usize, ms: u64 },
    /// Messages take up to `extra_ms` more for `ms`: delayed and reordered.
    Jitter { ms: u64, extra_ms: u64 },
    /// Walsenders apply a reload up to `delay_ms` late for `ms`.
    SlowReload { ms: u64, delay_ms: u64 },
    /// `pgrepl pause`, and `resume` after `ms`.
    Pause { ms: u64 },
    /// `pgrepl switchover` to `to` (the most advanced fit standby when `None`).
    Switchover { to: Option<usize> },
    /// The primary writes `size` records that commit nothing (a bulk load in progress).
    BulkWrite { size: u64 },
    /// The agent dies right after it wrote a promotion's sync record, before it promotes (as
    /// `PGREPL_FAULT=after_sync_record` makes a real one), and starts again after `down_ms`.
    AgentDiesAfterSyncRecord { node: usize, down_ms: u64 },
    /// The cluster file's policy becomes `policy`; each agent restarts with it, one after the
    /// other.
    PolicyChange { policy: Policy },
    /// Another cluster with the same scope writes its leader key (naming `leader`, one of this
    /// cluster's node names), sync record and system identifier into the same etcd, for `ms`.
    ForeignCluster { leader: usize, ms: u64 },
}

impl Fault {
    /// How long after it starts the fault is over by itself (0: an instant).
    pub fn duration(&self) -> u64 {
        match *self {
            Fault::AgentCrash { down_ms, .. } | Fault::NodeLoss { down_ms, .. } => down_ms,
            Fault::AgentFreeze { ms, .. }
            | Fault::ServerHang { ms, .. }
            | Fault::ServerStuck { ms, .. }
            | Fault::Partition { ms, .. }
            | Fault::EtcdLeaderChange { ms }
            | Fault::EtcdQuorumLoss { ms }
            | Fault::SlowReplay { ms, .. }
            | Fault::SlowFsync { ms, .. }
            | Fault::CannotStart { ms, .. }
            | Fault::Jitter { ms, .. }
            | Fault::SlowReload { ms, .. }
            | Fault::Pause { ms } => ms,
            Fault::ForeignCluster { ms, .. } => ms,
            Fault::AgentDiesAfterSyncRecord { down_ms, .. } => down_ms,
            Fault::ServerCrash { .. }
            | Fault::Switchover { .. }
            | Fault::PolicyChange { .. }
            | Fault::BulkWrite { .. } => 0,
        }
    }

    /// A fault whose end the cluster must not wait for: liveness is owed while it lasts (a
    /// server that cannot start is replaced).
    pub fn routed_around(&self) -> bool {
        matches!(self, Fault::CannotStart { .. } | Fault::ServerStuck { .. })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |i: usize| format!("n{}", i + 1);
        match *self {
            Fault::AgentCrash { node, down_ms } => {
                write!(f, "{}'s agent killed, back after {down_ms} ms", n(node))
            }
            Fault::ServerCrash { node } => write!(f, "{}'s postgres killed", n(node)),
            Fault::NodeLoss { node, down_ms } => {
                write!(f, "{} lost (agent and postgres), agent back after {down_ms} ms", n(node))
            }
            Fault::AgentFreeze { node, ms } => write!(f, "{}'s agent frozen for {ms} ms", n(node)),
            Fault::ServerHang { node, ms } => write!(f, "{}'s postgres hung for {ms} ms", n(node)),
            Fault::ServerStuck { node, ms } => {
                write!(f, "{}'s postgres stuck, unkillable, for {ms} ms", n(node))
            }
            Fault::Partition { a, b, ms } => write!(f, "{a} cut from {b} for {ms} ms"),
            Fault::EtcdLeaderChange { ms } => write!(f, "etcd elects a new leader ({ms} ms)"),
            Fault::EtcdQuorumLoss { ms } => write!(f, "etcd without quorum for {ms} ms"),
            Fault::SlowReplay {
                node,
                ms,
                per_record_ms,
            } => write!(
                f,
                "{} replays one record per {per_record_ms} ms for {ms} ms",
                n(node)
            ),
            Fault::SlowFsync { node, ms, fsync_ms } => {
                write!(f, "{}'s fsync takes {fsync_ms} ms for {ms} ms", n(node))
            }
            Fault::CannotStart { node, ms } => {
                write!(f, "{}'s postgres cannot start for {ms} ms", n(node))
            }
            Fault::Jitter { ms, extra_ms } => {
                write!(f, "messages up to {extra_ms} ms late for {ms} ms")
            }
            Fault::SlowReload { ms, delay_ms } => {
                write!(f, "walsenders reload up to {delay_ms} ms late for {ms} ms")
            }
            Fault::Pause { ms } => write!(f, "pause, resume after {ms} ms"),
            Fault::Switchover { to } => match to {
                Some(to) => write!(f, "switchover to {}", n(to)),
                None => write!(f, "switchover"),
            },
            Fault::AgentDiesAfterSyncRecord { node, down_ms } => write!(
                f,
                "{}'s agent dies after its promotion's sync record, back after {down_ms} ms",
                n(node)
            ),
            Fault::PolicyChange { policy } => {
                write!(f, "the policy becomes {policy}; agents restart one by one")
            }
            Fault::BulkWrite { size } => write!(f, "the primary writes {size} records"),
            Fault::ForeignCluster { leader, ms } => write!(
                f,
                "another cluster's leader key ({}), sync record and system identifier in etcd for {ms} ms",
                n(leader)
            ),
        }
    }
}

/// A sync policy over the standbys: `FIRST num` or `ANY num`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub quorum: bool,
    pub num: u32,
}

impl Policy {
    /// This policy over `standbys`.
    pub fn over(&self, standbys: &[String]) -> SyncPolicy {
        let method = if self.quorum {
            SyncMethod::Quorum
        } else {
            SyncMethod::Priority
        };
        SyncPolicy::new(method, self.num, standbys)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = if self.quorum { "ANY" } else { "FIRST" };
        write!(f, "{method} {}", self.num)
    }
}

/// The policies the simulator covers.
pub const POLICIES: [Policy; 4] = [
    Policy {
        quorum: false,
        num: 1,
    },
    Policy {
        quorum: false,
        num: 2,
    },
    Policy {
        quorum: true,
        num: 1,
    },
    Policy {
        quorum: true,
        num: 2,
    },
];

#[derive(Debug, Clone)]
pub struct Schedule {
    pub seed: u64,
    pub nodes: usize,
    pub policy: Policy,
    /// (when, fault), in time order.
    pub faults: Vec<(u64, Fault)>,
}

impl Schedule {
    /// When the faults are over: the last one's end (and at least its start). A fault the
    /// cluster must route around (a server that cannot start) counts from its start only when
    /// it begins on a cluster the other faults left healthy (after they ended and twice the TTL
    /// passed); otherwise to its end.
    pub fn heal_at(&self) -> u64 {
        let others = self
            .faults
            .iter()
            .filter(|(_, f)| !f.routed_around())
            .map(|(at, f)| at + f.duration())
            .max()
            .unwrap_or(0);
        self.faults
            .iter()
            .map(|(at, f)| match f.routed_around() && *at >= others + 4_000 {
                true => *at,
                false => at + f.duration(),
            })
            .max()
            .unwrap_or(0)
    }

    /// A random schedule: 3–5 nodes, one of the policies (FIRST/ANY 2 need three standbys),
    /// one to four faults in the first 12 s, some of them overlapping.
    pub fn generate(seed: u64) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(seed);
        let policy = POLICIES[rng.usize(..POLICIES.len())];
        let nodes = if policy.num == 2 {
            rng.usize(4..=5)
        } else {
            rng.usize(3..=5)
        };
        let count = rng.usize(1..=4);
        let mut faults: Vec<(u64, Fault)> = (0..count)
            .map(|_| (rng.u64(2_000..12_000), random_fault(&mut rng, nodes)))
            .collect();
        faults.sort_by_key(|(at, _)| *at);
        Schedule {
            seed,
            nodes,
            policy,
            faults,
        }
    }

    /// The schedule without fault `i`.
    pub fn without(&self, i: usize) -> Schedule {
        let mut shrunk = self.clone();
        shrunk.faults.remove(i);
        shrunk
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} | {} nodes | {} of the standbys",
            self.seed, self.nodes, self.policy
        )?;
        for (at, fault) in &self.faults {
            writeln!(f, "  at {:>6} ms: {fault}", at)?;
        }
        Ok(())
    }
}

fn random_fault(rng: &mut fastrand::Rng, nodes: usize) -> Fault {
    let node = rng.usize(..nodes);
    let ttl = 2_000;
    // Around the lease: shorter, just under, just over, much longer.
    let around_ttl = |rng: &mut fastrand::Rng| match rng.u8(..4) {
        0 => rng.u64(100..1_500),
        1 => rng.u64(ttl - 600..ttl),
        2 => rng.u64(ttl..ttl + 800),
        _ => rng.u64(ttl + 800..ttl * 4),
    };
    let peer = |rng: &mut fastrand::Rng| {
        if rng.u8(..4) == 0 {
            Peer::Etcd
        } else {
            Peer::Node(rng.usize(..nodes))
        }
    };
    match rng.u8(..16) {
        0 | 1 => Fault::AgentCrash {
            node,
            down_ms: around_ttl(rng),
        },
        2 => match rng.bool() {
            true => Fault::ServerCrash { node },
            false => Fault::BulkWrite {
                size: rng.u64(1..2_000),
            },
        },
        3 | 4 => Fault::NodeLoss {
            node,
            down_ms: rng.u64(500..8_000),
        },
        5 | 6 => Fault::AgentFreeze {
            node,
            ms: around_ttl(rng),
        },
        7 => match rng.u8(..4) {
            0 => Fault::ServerStuck {
                node,
                ms: rng.u64(5_000..60_000),
            },
            _ => Fault::ServerHang {
                node,
                ms: rng.u64(500..14_000),
            },
        },
        8 | 9 => {
            let a = Peer::Node(node);
            let mut b = peer(rng);
            if b == a {
                b = Peer::Etcd;
            }
            Fault::Partition {
                a,
                b,
                ms: around_ttl(rng) * rng.u64(1..3),
            }
        }
        10 => match rng.bool() {
            true => Fault::EtcdLeaderChange {
                ms: rng.u64(100..2_500),
            },
            false => Fault::EtcdQuorumLoss {
                ms: around_ttl(rng),
            },
        },
        11 => Fault::SlowReplay {
            node,
            ms: rng.u64(2_000..10_000),
            per_record_ms: rng.u64(50..400),
        },
        12 => Fault::SlowFsync {
            node,
            ms: rng.u64(1_000..6_000),
            fsync_ms: rng.u64(20..600),
        },
        13 => Fault::CannotStart {
            node,
            ms: rng.u64(2_000..40_000),
        },
        14 => match rng.u8(..3) {
            0 => Fault::Jitter {
                ms: rng.u64(1_000..8_000),
                extra_ms: rng.u64(10..400),
            },
            // A walsender applies a reload before it handles its next reply (walsender.c):
            // late only by as long as it is not scheduled.
            1 => Fault::SlowReload {
                ms: rng.u64(1_000..8_000),
                delay_ms: rng.u64(10..500),
            },
            _ => Fault::Pause {
                ms: rng.u64(500..6_000),
            },
        },
        15 => match rng.u8(..4) {
            0 => Fault::AgentDiesAfterSyncRecord {
                node,
                down_ms: around_ttl(rng),
            },
            1 => Fault::ForeignCluster {
                leader: node,
                ms: rng.u64(500..5_000),
            },
            2 => Fault::PolicyChange {
                policy: POLICIES[rng.usize(..POLICIES.len())],
            },
            _ => Fault::Switchover {
                to: rng.bool().then(|| rng.usize(..nodes)),
            },
        },
        _ => unreachable!("rng.u8(..16)"),
    }
}
