//! The simulated world: one clock, one seeded random source and one event queue, in which the
//! agents (each a `pgrepl::ha::core::Core`, the real decision code, under a simulated
//! executor), etcd, the PostgreSQL servers and the clients act. Nothing here is concurrent: an
//! event is handled, then the invariants are checked, then the next event; so a seed replays
//! exactly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;

use pgrepl::cluster::spec::{ClusterSpec, NodeRole, NodeSpec};
use pgrepl::ha::core::{Core, Effect, Renewal, Step};
use pgrepl::ha::model::{Action, Local, Probed, Time, View};
use pgrepl::ha::records::{LeaseId, MemberRecord, PauseRecord, RoleRequest, ServerState};
use pgrepl::ha::Timing;
use pgrepl::ids::{SystemId, TimelineId};
use pgrepl::sync_policy::{SyncMethod, SyncPolicy};
use pgrepl::Lsn;

use crate::etcd::{Etcd, EXPIRY_CHECK_MS};
use crate::faults::{Fault, Peer, Schedule};
use crate::pg::{parse_config, priority, Pos, Run, Server, Timelines, Waiter, Walsender};

mod agents;
mod checks;
mod clients;
mod effects;
mod inject;
mod servers;

/// From the end of the faults to the first acknowledged write, at most: a lease expiring
/// (TTL, plus the lessor's half-second check) and an election, a stuck standby rewound
/// (`STUCK_AFTER`) or a hung one killed (`HUNG_AFTER`) and restarted, a re-clone: 3 × TTL +
/// 10 s + 6 s. With a server that cannot start or cannot be killed (which the cluster routes
/// around rather than waits for), from when that began: the start timeout (and for a standby
/// that cannot be killed, its walsender's timeout), then 3 × TTL + 1 s.
pub fn liveness_bound(schedule: &Schedule) -> u64 {
    let timing = Timing::default();
    let ttl = timing.ttl_s * 1_000;
    let healed = 3 * ttl + 10_000 + 6_000;
    let routed = |f: &Fault| match f {
        Fault::CannotStart { .. } => timing.start_timeout_s * 1_000,
        // A sync standby that cannot be killed holds commits until its walsender times out.
        Fault::ServerStuck { .. } => (timing.start_timeout_s * 1_000).max(WAL_SENDER_TIMEOUT),
        _ => 0,
    };
    let longest = schedule
        .faults
        .iter()
        .map(|(_, f)| routed(f))
        .max()
        .unwrap_or(0);
    healed.max(longest + 3 * ttl + 1_000)
}

/// How long the simulation runs past the faults when no write comes.
const SQL_TIMEOUT: u64 = 1_000;
const CLIENT_TIMEOUT: u64 = 1_000;
/// wal_retrieve_retry_interval as the agents set it.
const RETRY_MS: u64 = 200;
/// PostgreSQL's default wal_sender_timeout.
pub const WAL_SENDER_TIMEOUT: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Loop,
    Lease,
    Watchdog,
}

#[derive(Debug, Clone)]
enum Req {
    Probe,
    Publish(MemberRecord, LeaseId),
    View(LeaseId),
    Renew(LeaseId),
    Grant,
    Effect(Effect, LeaseId),
}

#[derive(Debug, Clone)]
enum Reply {
    Probed(Probed),
    Published(bool),
    /// And when etcd took it.
    View(Option<Rc<View>>, u64),
    Renewal(Renewal),
    /// A lease, and (to a starting agent) whether the pause key exists.
    Granted(Option<(LeaseId, bool)>),
    Done(bool),
}

#[derive(Debug, Clone)]
enum Ev {
    AgentStart {
        node: usize,
        inc: u32,
    },
    Tick {
        node: usize,
        inc: u32,
        seq: u64,
    },
    Renew {
        node: usize,
        inc: u32,
    },
    Watchdog {
        node: usize,
        inc: u32,
    },
    Arrive {
        node: usize,
        inc: u32,
        lane: Lane,
        op: u64,
        req: Box<Req>,
        sent: u64,
    },
    Reply {
        node: usize,
        inc: u32,
        lane: Lane,
        op: u64,
        reply: Box<Reply>,
    },
    Unfreeze {
        node: usize,
        inc: u32,
    },
    Expiry,
    /// Every walreceiver that is not streaming tries its primary_conninfo again
    /// (wal_retrieve_retry_interval, which the agents set to 200 ms).
    Retry,
    Flush {
        node: usize,
        upto: Pos,
        gen: u64,
    },
    Feedback {
        primary: usize,
        standby: usize,
        flush: Pos,
        gen: u64,
    },
    Replay {
        node: usize,
        run: u64,
    },
    Ready {
        node: usize,
        run: u64,
    },
    /// A promotion, rejoin or fast stop finishing; the agent's reply follows.
    Finish {
        node: usize,
        run: u64,
        work: Work,
        agent: (usize, u32, Lane, u64),
    },
    Reload {
        node: usize,
        standby: usize,
    },
    ClientTick {
        client: usize,
    },
    ClientGiveUp {
        client: usize,
        commit: usize,
    },
    FaultStart(usize),
    FaultEnd(usize),
    /// A rolling restart of the agents, with the cluster file's new policy.
    Restart {
        node: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Promote,
    Rejoin { leader: usize, rewind: bool },
    StopFast,
}

/// The queue holds (when, order, slot) and the events wait in a slab: the heap moves 24 bytes,
/// not an event.
type Key = Reverse<(u64, u64, u32)>;

/// What the loop of an agent waits for.
#[derive(Debug)]
enum Phase {
    Idle,
    Probing,
    Publishing(Probed, MemberRecord, LeaseId),
    Viewing(Probed),
    Acting { step: Step, next: usize },
}

struct AgentProc {
    /// Bumped when the process dies: the events of an earlier one are void.
    inc: u32,
    frozen: bool,
    parked: Vec<Ev>,
    core: Option<Core>,
    phase: Phase,
    tick_seq: u64,
    /// When its next round is due.
    tick_at: u64,
    /// The operation each lane waits for.
    lane_op: [u64; 3],
    /// Effects the lease lane still has to carry out, and when its renewal was sent.
    lease_effects: Vec<Effect>,
    renew_sent: u64,
    grant_sent: u64,
    /// When etcd took the last view the agent read, and the one its last decision read.
    view_at: Option<u64>,
    decided_on: Option<u64>,
    /// `Fault::AgentDiesAfterSyncRecord`: dies after the next promotion's sync record, and
    /// comes back after this long.
    die_after_sync: Option<u64>,
    /// When it last began to run (started, let run again after a freeze, or unpaused): its
    /// watchdog may fence from then on.
    awake_at: u64,
}

struct ClientProc {
    node: Option<usize>,
    inflight: Option<usize>,
    start: usize,
    /// Its give-up timer is set.
    timer: bool,
}

#[derive(Debug, Clone)]
pub struct Commit {
    pub node: usize,
    pub tl: usize,
    pub at: Pos,
    pub sent_at: u64,
    pub acked_at: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub violation: Option<String>,
    pub trace: Vec<String>,
    pub acked: usize,
    /// From the end of the faults to the first acknowledged write.
    pub recovery_ms: Option<u64>,
    pub events: u64,
    /// The nodes that held the leader key, in order (one entry per change; `-`: none).
    pub leaders: Vec<String>,
    /// The longest time between two acknowledged writes.
    pub max_gap_ms: u64,
}

pub struct World {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Key>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    rng: fastrand::Rng,
    schedule: Schedule,
    spec: ClusterSpec,
    timing: Timing,
    names: Vec<String>,
    etcd: Etcd,
    tls: Timelines,
    servers: Vec<Server>,
    /// Bumped at every start, stop and kill: events of an earlier run are void.
    runs: Vec<u64>,
    /// The run of each server a promotion was last asked of (it completes unless that run ends).
    promotion_asked: Vec<Option<u64>>,
    /// Bumped at every (dis)connection of a standby's walreceiver.
    conns: Vec<u64>,
    agents: Vec<AgentProc>,
    clients: Vec<ClientProc>,
    commits: Vec<Commit>,
    /// Acknowledged commits, in order; the newest one of each timeline.
    acks: Vec<usize>,
    frontier: Vec<(usize, usize)>,
    cuts: Vec<(Peer, Peer)>,
    jitter: (u64, u64),
    reload_delay: (u64, u64),
    slow_replay: Vec<(u64, u64)>,
    slow_fsync: Vec<(u64, u64)>,
    cannot_start: Vec<u64>,
    /// Until when a server's processes survive a kill (uninterruptible I/O), and since when a
    /// hung one is.
    stuck: Vec<u64>,
    hung_at: Vec<u64>,
    /// A kill sent to a stuck server, delivered when it wakes.
    kill_pending: Vec<bool>,
    heal_at: u64,
    first_ack_after_heal: Option<u64>,
    op_seq: u64,
    violation: Option<String>,
    trace: Option<Vec<String>>,
    events: u64,
    /// Since when the pause key exists; since when another cluster's keys are in etcd.
    pause_since: Option<u64>,
    foreign_since: Option<u64>,
    /// Our sync record while another cluster's replaced it, and which fault did.
    ours: Option<pgrepl::ha::records::SyncRecord>,
    foreign: Option<usize>,
    leaders: Vec<String>,
    max_gap_ms: u64,
    /// How long past the faults the run goes on at least.
    settle: u64,
    /// Bumped by every change of a server's role, walsenders or sync configuration; with
    /// etcd's revision, what the last invariant check saw.
    epoch: u64,
    checked: (u64, u64),
}

impl World {
    pub fn new(schedule: &Schedule, trace: bool) -> World {
        let n = schedule.nodes;
        let names: Vec<String> = (0..n).map(|i| format!("n{}", i + 1)).collect();
        let timing = Timing::default();
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, name)| NodeSpec {
                name: name.clone(),
                role: if i == 0 {
                    NodeRole::Primary
                } else {
                    NodeRole::Standby
                },
                host: None,
                port: 5432 + i as u16,
                api: None,
            })
            .collect();
        let mut spec = ClusterSpec {
            nodes,
            ..ClusterSpec::default()
        };
        spec.sync.policy = schedule.policy.over(&names[1..]);
        let system_id = 7_000_000_000_000_000_000 + schedule.seed % 1_000_000;
        let mut servers: Vec<Server> = (0..n).map(|i| Server::new(i == 0, system_id)).collect();
        let ssn_text = spec.sync.policy.to_string();
        let ssn = parse_config(&ssn_text);
        servers[0].ssn_text = ssn_text;
        servers[0].ssn = ssn.clone();
        for i in 1..n {
            servers[i].conninfo = Some(0);
            servers[i].upstream = Some(0);
            let priority = priority(&ssn, &names[i]);
            servers[0].senders.push(Walsender {
                standby: i,
                flush: 1,
                config: ssn.clone(),
                priority,
                reload_at: None,
            });
        }
        let mut world = World {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            rng: fastrand::Rng::with_seed(schedule.seed ^ 0x9E37_79B9_7F4A_7C15),
            heal_at: schedule.heal_at(),
            schedule: schedule.clone(),
            spec,
            timing,
            names,
            etcd: Etcd::default(),
            tls: Timelines::first(),
            servers,
            runs: vec![0; n],
            promotion_asked: vec![None; n],
            conns: vec![0; n],
            agents: (0..n)
                .map(|_| AgentProc {
                    inc: 0,
                    frozen: false,
                    parked: Vec::new(),
                    core: None,
                    phase: Phase::Idle,
                    tick_seq: 0,
                    tick_at: 0,
                    lane_op: [0; 3],
                    lease_effects: Vec::new(),
                    renew_sent: 0,
                    grant_sent: 0,
                    view_at: None,
                    decided_on: None,
                    die_after_sync: None,
                    awake_at: 0,
                })
                .collect(),
            clients: (0..2)
                .map(|c| ClientProc {
                    node: None,
                    inflight: None,
                    start: c,
                    timer: false,
                })
                .collect(),
            commits: Vec::new(),
            acks: Vec::new(),
            frontier: Vec::new(),
            cuts: Vec::new(),
            jitter: (0, 0),
            reload_delay: (0, 0),
            slow_replay: vec![(0, 0); n],
            slow_fsync: vec![(0, 0); n],
            cannot_start: vec![0; n],
            stuck: vec![0; n],
            hung_at: vec![0; n],
            kill_pending: vec![false; n],
            first_ack_after_heal: None,
            op_seq: 0,
            violation: None,
            trace: trace.then(Vec::new),
            events: 0,
            pause_since: None,
            foreign_since: None,
            ours: None,
            foreign: None,
            leaders: Vec::new(),
            max_gap_ms: 0,
            settle: 2 * timing.ttl().as_millis() as u64,
            epoch: 0,
            checked: (u64::MAX, 0),
        };
        for node in 0..n {
            let at = world.rng.u64(0..200);
            world.at(at, Ev::AgentStart { node, inc: 0 });
        }
        for client in 0..world.clients.len() {
            world.at(1_000 + client as u64 * 37, Ev::ClientTick { client });
        }
        world.at(EXPIRY_CHECK_MS, Ev::Expiry);
        world.at(RETRY_MS, Ev::Retry);
        for i in 0..world.schedule.faults.len() {
            let at = world.schedule.faults[i].0;
            world.at(at, Ev::FaultStart(i));
        }
        world
    }

    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(ev);
                slot
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.queue.push(Reverse((at.max(self.now), self.seq, slot)));
    }

    fn after(&mut self, delay: u64, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            let text = line();
            trace.push(format!("{:>7.3}s {text}", self.now as f64 / 1000.0));
        }
    }

    fn name(&self, node: usize) -> &str {
        &self.names[node]
    }

    fn reachable(&self, a: Peer, b: Peer) -> bool {
        !self
            .cuts
            .iter()
            .any(|&(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    /// One network hop.
    fn net(&mut self) -> u64 {
        let extra = if self.now < self.jitter.0 {
            self.rng.u64(0..=self.jitter.1)
        } else {
            0
        };
        self.rng.u64(1..4) + extra
    }

    /// Runs to the end: the liveness bound after the faults, or a violation.
    pub fn run(mut self) -> Outcome {
        let bound = liveness_bound(&self.schedule);
        let end = self.heal_at + bound;
        while let Some(Reverse((at, _, slot))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            self.events += 1;
            let ev = self.slab[slot as usize].take().expect("a queued event");
            self.free.push(slot);
            self.handle(ev);
            if self.violation.is_none() {
                self.check();
            }
            if self.violation.is_some() {
                break;
            }
            // Done: a write after the faults stopped, and long enough for what they left
            // behind (a stale key, a lease) to expire.
            if self
                .first_ack_after_heal
                .is_some_and(|at| self.now > at + 500)
                && self.now > self.heal_at + self.settle
            {
                break;
            }
        }
        if self.violation.is_none() && self.first_ack_after_heal.is_none() {
            self.violation = Some(format!(
                "liveness: no acknowledged write within {bound} ms after the faults stopped (at {} ms)",
                self.heal_at
            ));
        }
        Outcome {
            violation: self.violation,
            trace: self.trace.unwrap_or_default(),
            acked: self.acks.len(),
            recovery_ms: self.first_ack_after_heal.map(|at| at - self.heal_at),
            events: self.events,
            leaders: self.leaders,
            max_gap_ms: self.max_gap_ms,
        }
    }

    fn handle(&mut self, ev: Ev) {
        // Events of a frozen agent wait until it runs again.
        if let Some((node, inc)) = agent_of(&ev) {
            let agent = &mut self.agents[node];
            if agent.inc != inc {
                return;
            }
            if agent.frozen && !matches!(ev, Ev::Unfreeze { .. }) {
                agent.parked.push(ev);
                return;
            }
        }
        match ev {
            Ev::AgentStart { node, .. } => self.agent_start(node),
            Ev::Tick { node, seq, .. } => {
                if self.agents[node].tick_seq == seq {
                    self.loop_begin(node);
                }
            }
            Ev::Renew { node, .. } => self.renew(node),
            Ev::Watchdog { node, .. } => self.watchdog(node),
            Ev::Arrive {
                node,
                inc,
                lane,
                op,
                req,
                sent,
            } => self.arrive(node, inc, lane, op, *req, sent),
            Ev::Reply {
                node,
                lane,
                op,
                reply,
                ..
            } => {
                if self.agents[node].lane_op[lane as usize] == op {
                    self.reply(node, lane, *reply);
                }
            }
            Ev::Unfreeze { node, .. } => {
                let agent = &mut self.agents[node];
                agent.frozen = false;
                agent.awake_at = self.now;
                let parked = std::mem::take(&mut agent.parked);
                for ev in parked {
                    self.after(0, ev);
                }
            }
            Ev::Expiry => {
                if self.etcd.available(self.now) && self.etcd.expire(self.now) {
                    self.log(|| "etcd: leases expired".into());
                    self.wake_all(None);
                }
                self.after(EXPIRY_CHECK_MS, Ev::Expiry);
            }
            Ev::Retry => {
                for node in 0..self.servers.len() {
                    self.try_connect(node);
                    // A walsender whose standby has said nothing for wal_sender_timeout ends.
                    let silent = self.servers[node].hung
                        && self.now >= self.hung_at[node] + WAL_SENDER_TIMEOUT;
                    if silent && self.servers[node].upstream.is_some() {
                        self.disconnect(node);
                    }
                }
                self.after(RETRY_MS, Ev::Retry);
            }
            Ev::Flush { node, upto, gen } => self.flush(node, upto, gen),
            Ev::Feedback {
                primary,
                standby,
                flush,
                gen,
            } => self.feedback(primary, standby, flush, gen),
            Ev::Replay { node, run } => self.replay(node, run),
            Ev::Ready { node, run } => self.ready(node, run),
            Ev::Finish {
                node,
                run,
                work,
                agent,
            } => self.finish(node, run, work, agent),
            Ev::Reload { node, standby } => self.reload(node, standby),
            Ev::ClientTick { client } => self.client_tick(client),
            Ev::ClientGiveUp { client, commit } => {
                let c = &mut self.clients[client];
                c.timer = false;
                // A later commit in flight: its own second.
                if let Some(later) = c.inflight.filter(|&n| n != commit) {
                    let at = self.commits[later].sent_at + CLIENT_TIMEOUT;
                    c.timer = true;
                    self.at(
                        at,
                        Ev::ClientGiveUp {
                            client,
                            commit: later,
                        },
                    );
                } else if c.inflight == Some(commit) {
                    c.inflight = None;
                    c.start = c.node.map_or(c.start, |n| n + 1);
                    c.node = None;
                    self.after(50, Ev::ClientTick { client });
                }
            }
            Ev::FaultStart(i) => self.fault_start(i),
            Ev::FaultEnd(i) => self.fault_end(i),
            Ev::Restart { node } => {
                let back = self.now + 50;
                self.agent_dies(node, back);
            }
        }
    }
}

/// An effect on the agent's own server (not etcd, not another node).
fn is_local(effect: &Effect) -> bool {
    matches!(
        effect,
        Effect::Kill
            | Effect::Start
            | Effect::PointAt { .. }
            | Effect::SetStandbyNames(_)
            | Effect::Promote { .. }
            | Effect::StopFast
    )
}

fn agent_of(ev: &Ev) -> Option<(usize, u32)> {
    match *ev {
        Ev::AgentStart { node, inc }
        | Ev::Tick { node, inc, .. }
        | Ev::Renew { node, inc }
        | Ev::Watchdog { node, inc }
        | Ev::Reply { node, inc, .. }
        | Ev::Unfreeze { node, inc } => Some((node, inc)),
        _ => None,
    }
}
