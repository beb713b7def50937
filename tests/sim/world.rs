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
use pgrepl::Lsn;

use crate::etcd::{Etcd, EXPIRY_CHECK_MS};
use crate::faults::{Fault, Peer, Schedule};
use crate::pg::{Pos, Run, Server, SyncConfig, Timelines, Waiter, Walsender};

/// From the end of the faults to the first acknowledged write, at most: a lease expiring
/// (TTL, plus the lessor's half-second check) and an election, a stuck standby rewound
/// (`STUCK_AFTER`) or a hung one killed (`HUNG_AFTER`) and restarted, a re-clone: 3 × TTL +
/// 10 s + 6 s. With a server that cannot start (which the cluster routes around rather than
/// waits for), from when that began: the start timeout, then the same 3 × TTL + 1 s.
pub fn liveness_bound(schedule: &Schedule) -> u64 {
    let timing = Timing::default();
    let ttl = timing.ttl_s * 1_000;
    let healed = 3 * ttl + 10_000 + 6_000;
    if schedule.faults.iter().any(|(_, f)| f.routed_around()) {
        healed.max(timing.start_timeout_s * 1_000 + 3 * ttl + 1_000)
    } else {
        healed
    }
}

/// How long the simulation runs past the faults when no write comes.
const SQL_TIMEOUT: u64 = 1_000;
const CLIENT_TIMEOUT: u64 = 1_000;
/// wal_retrieve_retry_interval as the agents set it.
const RETRY_MS: u64 = 200;

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
    Granted(Option<LeaseId>),
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
        let mut spec = ClusterSpec::default();
        spec.nodes = names
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
            })
            .collect();
        spec.sync.method = if schedule.policy.quorum {
            "ANY"
        } else {
            "FIRST"
        }
        .into();
        spec.sync.num_sync = schedule.policy.num;
        spec.sync.standbys = names[1..].to_vec();
        let system_id = 7_000_000_000_000_000_000 + schedule.seed % 1_000_000;
        let mut servers: Vec<Server> = (0..n).map(|i| Server::new(i == 0, system_id)).collect();
        let ssn_text = spec.synchronous_standby_names();
        let ssn = SyncConfig::parse(&ssn_text);
        servers[0].ssn_text = ssn_text;
        servers[0].ssn = ssn.clone();
        for i in 1..n {
            servers[i].conninfo = Some(0);
            servers[i].upstream = Some(0);
            let priority = ssn.priority(&names[i]);
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
            | Effect::Promote
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

/// The agents' executor: what `pgrepl::ha::agent` does with I/O, done against the models.
impl World {
    fn agent_start(&mut self, node: usize) {
        let agent = &mut self.agents[node];
        agent.core = None;
        agent.phase = Phase::Idle;
        agent.lease_effects.clear();
        agent.grant_sent = self.now;
        // `Agent::start`: agree on the timing, take a lease.
        self.request(node, Lane::Lease, Req::Grant, 2);
    }

    fn agent_started(&mut self, node: usize, lease: LeaseId) {
        let sent = Time::from_millis(self.agents[node].grant_sent);
        let core = Core::new(
            &self.names[node],
            self.spec.clone(),
            self.timing,
            lease,
            sent,
        );
        let deadline = core.fence_deadline().as_millis();
        let inc = self.agents[node].inc;
        self.agents[node].core = Some(core);
        self.agents[node].awake_at = self.now;
        self.log(|| format!("n{}: agent runs (lease {lease})", node + 1));
        self.after(0, Ev::Renew { node, inc });
        self.at(deadline, Ev::Watchdog { node, inc });
        self.schedule_tick(node, 0);
    }

    fn core(&mut self, node: usize) -> &mut Core {
        self.agents[node].core.as_mut().expect("a running agent")
    }

    fn schedule_tick(&mut self, node: usize, delay: u64) {
        let agent = &mut self.agents[node];
        agent.tick_seq += 1;
        agent.tick_at = self.now + delay;
        let (inc, seq) = (agent.inc, agent.tick_seq);
        self.after(delay, Ev::Tick { node, inc, seq });
    }

    /// The etcd watch: every agent whose loop is idle decides again soon.
    fn wake_all(&mut self, except: Option<usize>) {
        for node in 0..self.agents.len() {
            let agent = &self.agents[node];
            if Some(node) == except
                || agent.core.is_none()
                || !matches!(agent.phase, Phase::Idle)
                || !self.reachable(Peer::Node(node), Peer::Etcd)
            {
                continue;
            }
            let due = agent.tick_at;
            let delay = self.net() + 1;
            // A round due about then anyway serves.
            if due > self.now + delay + 5 {
                self.schedule_tick(node, delay);
            }
        }
    }

    fn loop_begin(&mut self, node: usize) {
        if !matches!(self.agents[node].phase, Phase::Idle) || self.agents[node].core.is_none() {
            return;
        }
        self.agents[node].phase = Phase::Probing;
        self.request(node, Lane::Loop, Req::Probe, 0);
    }

    /// Sends `req` from `node`'s agent on `lane`; `hops` extra round trips it takes.
    fn request(&mut self, node: usize, lane: Lane, req: Req, hops: u64) {
        if let Req::Effect(effect, _) = &req {
            self.check_effect(node, lane, effect);
        }
        self.op_seq += 1;
        let op = self.op_seq;
        let agent = &mut self.agents[node];
        agent.lane_op[lane as usize] = op;
        let inc = agent.inc;
        // The agent reaches its own server on its own machine; etcd and other nodes over the
        // network.
        let local = match &req {
            Req::Probe => true,
            Req::Effect(effect, _) => is_local(effect),
            _ => false,
        };
        let mut delay = if local {
            self.rng.u64(1..3)
        } else {
            self.net()
        };
        // A read takes effect where it arrives and changes nothing: the way back is folded
        // into the way there, and its answer handled on arrival (one event, not two).
        if matches!(req, Req::Probe | Req::View(_)) {
            delay += if local {
                self.rng.u64(1..3)
            } else {
                self.net()
            };
        }
        for _ in 0..hops {
            delay += self.net() * 2;
        }
        self.after(
            delay,
            Ev::Arrive {
                node,
                inc,
                lane,
                op,
                req: Box::new(req),
                sent: self.now,
            },
        );
    }

    fn respond(&mut self, node: usize, inc: u32, lane: Lane, op: u64, reply: Reply, at: u64) {
        let agent = &self.agents[node];
        if at == self.now && agent.inc == inc && !agent.frozen {
            if agent.lane_op[lane as usize] == op {
                self.reply(node, lane, reply);
            }
            return;
        }
        self.at(
            at,
            Ev::Reply {
                node,
                inc,
                lane,
                op,
                reply: Box::new(reply),
            },
        );
    }

    fn arrive(&mut self, node: usize, inc: u32, lane: Lane, op: u64, req: Req, sent: u64) {
        let timeout = sent + self.timing.request_timeout().as_millis() as u64;
        let etcd_ok = self.etcd.available(self.now) && self.reachable(Peer::Node(node), Peer::Etcd);
        let local = match &req {
            Req::Probe => true,
            Req::Effect(effect, _) => is_local(effect),
            _ => false,
        };
        let back = self.now
            + if local {
                self.rng.u64(1..3)
            } else {
                self.net()
            };
        // An etcd request answered after the agent's deadline is a timeout to it, whatever
        // etcd did with it.
        let answer = |w: &mut World, reply: Reply, failed: Reply| {
            if back <= timeout {
                w.respond(node, inc, lane, op, reply, back);
            } else {
                w.respond(node, inc, lane, op, failed, timeout);
            }
        };
        match req {
            Req::Probe => {
                let probed = self.probe(node);
                let at = match probed {
                    Probed::Silent { .. } => sent + SQL_TIMEOUT,
                    _ => self.now,
                };
                self.respond(node, inc, lane, op, Reply::Probed(probed), at);
            }
            Req::Publish(record, lease) => {
                if !etcd_ok {
                    return self.respond(node, inc, lane, op, Reply::Published(false), timeout);
                }
                let ok = self.etcd.publish(record, lease);
                if ok {
                    self.wake_all(Some(node));
                }
                answer(self, Reply::Published(ok), Reply::Published(false));
            }
            Req::View(lease) => {
                if !etcd_ok {
                    return self.respond(node, inc, lane, op, Reply::View(None, 0), timeout);
                }
                let view = self.etcd.shared_view(lease);
                let taken = self.now;
                if taken <= timeout {
                    self.respond(node, inc, lane, op, Reply::View(Some(view), taken), taken);
                } else {
                    self.respond(node, inc, lane, op, Reply::View(None, 0), timeout);
                }
            }
            Req::Renew(lease) => {
                if !etcd_ok {
                    return self.respond(
                        node,
                        inc,
                        lane,
                        op,
                        Reply::Renewal(Renewal::Failed),
                        timeout,
                    );
                }
                let outcome = match self.etcd.renew(self.now, lease) {
                    true => Renewal::Alive,
                    false => Renewal::Gone,
                };
                answer(
                    self,
                    Reply::Renewal(outcome),
                    Reply::Renewal(Renewal::Failed),
                );
            }
            Req::Grant => {
                if !etcd_ok {
                    return self.respond(node, inc, lane, op, Reply::Granted(None), timeout);
                }
                let ttl = self.timing.ttl().as_millis() as u64;
                let lease = self.etcd.grant(self.now, ttl);
                answer(self, Reply::Granted(Some(lease)), Reply::Granted(None));
            }
            Req::Effect(effect, lease) => {
                let target = (node, inc, lane, op);
                self.effect(target, effect, lease, etcd_ok, timeout, back);
            }
        }
    }

    /// What the agent's probe of its own server reads.
    fn probe(&self, node: usize) -> Probed {
        let s = &self.servers[node];
        let local = |running: bool| Local {
            server: ServerState {
                running,
                in_recovery: running && s.standby_signal,
                timeline: running.then(|| TimelineId::new(self.tls.number(s.tl))),
                position: running.then(|| Lsn::new(s.reported_position())),
                // No walreceiver, no primary_conninfo, and a position that cannot grow:
                // replay reached the end of the WAL the server holds.
                detached: !running
                    || (s.conninfo.is_none() && s.upstream.is_none() && s.replayed >= s.flushed),
                follows: s
                    .conninfo
                    .filter(|_| running)
                    .map(|n| self.names[n].clone()),
            },
            standby_signal: s.standby_signal,
            standby_names: if running {
                s.ssn_text.clone()
            } else {
                String::new()
            },
            caught_up: if running && !s.standby_signal {
                s.senders
                    .iter()
                    .filter(|w| w.flush >= s.flushed)
                    .map(|w| self.names[w.standby].clone())
                    .collect()
            } else {
                Vec::new()
            },
            shutdown_checkpoint: match s.run {
                Run::Stopped { clean: true } if !s.standby_signal => s.shutdown_checkpoint,
                _ => None,
            }
            .map(Lsn::new),
            system_id: Some(SystemId::new(s.system_id)),
        };
        match s.run {
            Run::Stopped { .. } => Probed::Known(local(false)),
            Run::Starting { .. } if s.hung => Probed::Silent {
                standby_signal: s.standby_signal,
            },
            Run::Starting { .. } => Probed::Refused {
                standby_signal: s.standby_signal,
            },
            Run::Running if s.hung => Probed::Silent {
                standby_signal: s.standby_signal,
            },
            Run::Running => Probed::Known(local(true)),
        }
    }

    fn reply(&mut self, node: usize, lane: Lane, reply: Reply) {
        match lane {
            Lane::Loop => self.loop_reply(node, reply),
            Lane::Lease => self.lease_reply(node, reply),
            Lane::Watchdog => {
                if let Reply::Done(ok) = reply {
                    let now = Time::from_millis(self.now);
                    self.core(node).done(now, &Effect::Kill, ok);
                }
            }
        }
    }

    fn loop_reply(&mut self, node: usize, reply: Reply) {
        let phase = std::mem::replace(&mut self.agents[node].phase, Phase::Idle);
        match (phase, reply) {
            (Phase::Probing, Reply::Probed(probed)) => {
                let (record, lease) = {
                    let core = self.core(node);
                    (core.to_publish(&probed), core.lease())
                };
                match record {
                    Some(record) => {
                        self.agents[node].phase = Phase::Publishing(probed, record.clone(), lease);
                        self.request(node, Lane::Loop, Req::Publish(record, lease), 0);
                    }
                    None => {
                        self.agents[node].phase = Phase::Viewing(probed);
                        self.request(node, Lane::Loop, Req::View(lease), 0);
                    }
                }
            }
            (Phase::Publishing(probed, record, lease), Reply::Published(ok)) => {
                if ok {
                    self.core(node).published(record, lease);
                    self.agents[node].phase = Phase::Viewing(probed);
                    self.request(node, Lane::Loop, Req::View(lease), 0);
                } else {
                    // `read_view` failed: the core decides without a view.
                    self.agents[node].decided_on = None;
                    self.decide(node, probed, None);
                }
            }
            (Phase::Viewing(probed), Reply::View(view, taken)) => {
                let taken = view.is_some().then_some(taken);
                let agent = &mut self.agents[node];
                agent.view_at = taken.or(agent.view_at);
                agent.decided_on = taken;
                self.decide(node, probed, view)
            }
            (Phase::Acting { step, next }, Reply::Done(ok)) => {
                let now = Time::from_millis(self.now);
                let effect = &step.effects[next];
                self.core(node).done(now, effect, ok);
                let promoting = matches!(step.decision.action, Action::Promote { .. });
                if ok && promoting && matches!(effect, Effect::WriteSync(_)) {
                    if let Some(down_ms) = self.agents[node].die_after_sync.take() {
                        self.log(|| format!("n{}: dies after the sync record", node + 1));
                        return self.agent_dies(node, self.now + down_ms);
                    }
                }
                if !ok {
                    let what = format!("{effect:?}");
                    self.log(|| format!("n{}:   {what} failed", node + 1));
                }
                if !ok && !effect.best_effort() {
                    let pause = self.timing.loop_ms;
                    return self.loop_end(node, &step, pause);
                }
                self.act(node, step, next + 1);
            }
            (phase, reply) => panic!("n{}: {reply:?} in {phase:?}", node + 1),
        }
    }

    fn decide(&mut self, node: usize, probed: Probed, view: Option<Rc<View>>) {
        let now = Time::from_millis(self.now);
        let was_paused = self.core(node).paused();
        let step = self.core(node).decide(now, &probed, view.as_deref());
        if was_paused && !self.core(node).paused() {
            self.agents[node].awake_at = self.now;
        }
        if step.changed {
            let (action, reason) = (&step.decision.action, &step.decision.reason);
            let line = format!("n{}: {action:?}: {reason}", node + 1);
            self.log(|| line);
        }
        self.act(node, step, 0);
    }

    /// Carries out effect `next` of `step`, or ends the round.
    fn act(&mut self, node: usize, step: Step, next: usize) {
        let Some(effect) = step.effects.get(next).cloned() else {
            return self.loop_end(node, &step, 0);
        };
        let lease = self.core(node).lease();
        self.agents[node].phase = Phase::Acting { step, next };
        self.request(node, Lane::Loop, Req::Effect(effect, lease), 0);
    }

    fn loop_end(&mut self, node: usize, step: &Step, pause: u64) {
        self.agents[node].phase = Phase::Idle;
        let delay = if step.decision.action == Action::Wait {
            self.timing.loop_ms
        } else {
            20
        };
        self.schedule_tick(node, delay + pause);
    }

    fn renew(&mut self, node: usize) {
        if !self.agents[node].lease_effects.is_empty() || self.agents[node].core.is_none() {
            return;
        }
        self.agents[node].renew_sent = self.now;
        let lease = self.core(node).lease();
        self.request(node, Lane::Lease, Req::Renew(lease), 0);
    }

    fn lease_reply(&mut self, node: usize, reply: Reply) {
        let now = Time::from_millis(self.now);
        match reply {
            Reply::Granted(lease) if self.agents[node].core.is_none() => match lease {
                Some(lease) => self.agent_started(node, lease),
                // The agent fails to start; its service manager starts it again.
                None => {
                    let inc = self.agents[node].inc;
                    self.after(1_000, Ev::AgentStart { node, inc });
                }
            },
            Reply::Renewal(outcome) => {
                let sent = Time::from_millis(self.agents[node].renew_sent);
                let lease = self.core(node).lease();
                let step = self.core(node).renewed(sent, lease, outcome);
                if let Some(note) = step.note {
                    self.log(|| format!("n{}: {note}", node + 1));
                }
                self.agents[node].lease_effects = step.effects;
                self.lease_next(node);
            }
            Reply::Granted(lease) => {
                if let Some(lease) = lease {
                    let sent = Time::from_millis(self.agents[node].grant_sent);
                    self.core(node).granted(sent, lease);
                }
                self.core(node).done(now, &Effect::Grant, lease.is_some());
                self.lease_next(node);
            }
            Reply::Done(ok) => {
                self.core(node).done(now, &Effect::Kill, ok);
                self.lease_next(node);
            }
            other => panic!("lease lane: {other:?}"),
        }
    }

    /// The lease lane's next effect, or the next renewal.
    fn lease_next(&mut self, node: usize) {
        if self.agents[node].lease_effects.is_empty() {
            let sent = Time::from_millis(self.agents[node].renew_sent);
            let now = Time::from_millis(self.now);
            let next = self.core(node).next_renewal(sent, now);
            let inc = self.agents[node].inc;
            return self.at(next.as_millis(), Ev::Renew { node, inc });
        }
        let effect = self.agents[node].lease_effects.remove(0);
        if effect == Effect::Kill {
            self.log(|| format!("n{}: fencing: lease expired", node + 1));
        }
        if effect == Effect::Grant {
            self.agents[node].grant_sent = self.now;
            return self.request(node, Lane::Lease, Req::Grant, 0);
        }
        let lease = self.core(node).lease();
        self.request(node, Lane::Lease, Req::Effect(effect, lease), 0);
    }

    fn watchdog(&mut self, node: usize) {
        let now = Time::from_millis(self.now);
        let (fence, wake) = self.core(node).watch(now);
        if let Some(effect) = fence {
            self.log(|| {
                format!(
                    "n{}: watchdog fences: no renewal confirmed in time",
                    node + 1
                )
            });
            let lease = self.core(node).lease();
            self.request(node, Lane::Watchdog, Req::Effect(effect, lease), 0);
        }
        let inc = self.agents[node].inc;
        self.at(wake.as_millis(), Ev::Watchdog { node, inc });
    }
}

/// The effects, against the server and etcd models.
impl World {
    fn effect(
        &mut self,
        target: (usize, u32, Lane, u64),
        effect: Effect,
        lease: LeaseId,
        etcd_ok: bool,
        timeout: u64,
        back: u64,
    ) {
        let (node, inc, lane, op) = target;
        let done =
            |w: &mut World, ok: bool, at: u64| w.respond(node, inc, lane, op, Reply::Done(ok), at);
        // etcd writes: applied when etcd serves them, answered unless too late.
        let etcd = |w: &mut World, ok: bool| {
            if back <= timeout {
                done(w, ok, back)
            } else {
                done(w, false, timeout)
            }
        };
        match effect {
            Effect::TakeLeadership { .. }
            | Effect::Reclaim { .. }
            | Effect::Release
            | Effect::RecordSystemId(_)
            | Effect::WriteSync(_)
            | Effect::HandOver { .. }
            | Effect::RefuseSwitchover(_)
            | Effect::RecordPromotion { .. }
            | Effect::Grant
                if !etcd_ok =>
            {
                done(self, false, timeout)
            }
            Effect::TakeLeadership { system_id } => {
                let name = self.names[node].clone();
                if self.etcd.take_leadership(&name, lease, system_id.as_u64()) {
                    self.log(|| format!("n{}:   holds the leader key", node + 1));
                    self.wake_all(Some(node));
                }
                etcd(self, true);
            }
            Effect::Reclaim { from } => {
                let name = self.names[node].clone();
                if self.etcd.reclaim(&name, from, lease) {
                    self.log(|| format!("n{}:   took over its earlier run's key", node + 1));
                    self.wake_all(Some(node));
                }
                etcd(self, true);
            }
            Effect::Release => {
                if self.etcd.release(lease) {
                    self.log(|| format!("n{}:   released the leader key", node + 1));
                    self.wake_all(Some(node));
                }
                etcd(self, true);
            }
            Effect::RecordSystemId(system_id) => {
                self.etcd.record_system_id(lease, system_id.as_u64());
                etcd(self, true);
            }
            Effect::WriteSync(record) => {
                let ok = self.etcd.write_sync(record, lease);
                if ok {
                    self.wake_all(Some(node));
                }
                etcd(self, ok);
            }
            Effect::HandOver { to } => {
                if self.etcd.hand_over(lease, &to) {
                    self.log(|| format!("n{}:   handed the key to {to}", node + 1));
                    self.wake_all(Some(node));
                }
                etcd(self, true);
            }
            Effect::RefuseSwitchover(request) => {
                self.etcd.refuse_switchover(request);
                etcd(self, true);
            }
            Effect::RecordPromotion { .. } | Effect::Grant => etcd(self, true),
            Effect::Kill => {
                self.kill(node);
                done(self, true, back);
            }
            Effect::Start => {
                let s = &self.servers[node];
                if s.run != (Run::Stopped { clean: true })
                    && s.run != (Run::Stopped { clean: false })
                {
                    return done(self, true, back);
                }
                if self.now < self.cannot_start[node] {
                    self.log(|| format!("n{}:   postgres: FATAL, it does not start", node + 1));
                    return done(self, false, back + 200);
                }
                let ready = self.start(node);
                done(self, true, ready + 1);
            }
            Effect::PointAt { leader } => {
                if !self.servers[node].running() || self.servers[node].hung {
                    return done(self, false, back);
                }
                let to = leader.map(|l| self.index(&l));
                self.point(node, to);
                done(self, true, back);
            }
            Effect::Repoint { node: other } => {
                let other = self.index(&other);
                let s = &self.servers[other];
                if !s.running() || s.hung || !self.reachable(Peer::Node(node), Peer::Node(other)) {
                    return done(self, false, self.now + SQL_TIMEOUT);
                }
                self.point(other, Some(node));
                done(self, true, back);
            }
            Effect::SetStandbyNames(text) => {
                if !self.servers[node].running() || self.servers[node].hung {
                    return done(self, false, back);
                }
                self.set_standby_names(node, text);
                done(self, true, back);
            }
            Effect::Promote => {
                let s = &self.servers[node];
                if !s.running() || s.hung || !s.standby_signal {
                    return done(self, false, back);
                }
                let replay = self.replay_left(node);
                self.log(|| format!("n{}:   promoting after {replay} ms of replay", node + 1));
                let at = self.now + replay + self.rng.u64(80..250);
                let run = self.runs[node];
                self.at(
                    at,
                    Ev::Finish {
                        node,
                        run,
                        work: Work::Promote,
                        agent: target,
                    },
                );
            }
            Effect::Rejoin { leader } => {
                let leader = self.index(&leader);
                let l = &self.servers[leader];
                if !l.writable() || !self.reachable(Peer::Node(node), Peer::Node(leader)) {
                    return done(self, false, self.now + SQL_TIMEOUT);
                }
                self.kill(node);
                let s = &self.servers[node];
                let clean = s.run == (Run::Stopped { clean: true });
                let follows = clean
                    && self
                        .tls
                        .end_of(self.servers[leader].tl, s.tl)
                        .is_some_and(|end| s.flushed <= end);
                let took = if follows {
                    self.rng.u64(300..900)
                } else {
                    self.rng.u64(1_000..4_000)
                };
                let run = self.runs[node];
                self.after(
                    took,
                    Ev::Finish {
                        node,
                        run,
                        work: Work::Rejoin {
                            leader,
                            rewind: !follows,
                        },
                        agent: target,
                    },
                );
            }
            Effect::StopFast => {
                if !self.servers[node].running() {
                    return done(self, true, back);
                }
                self.stop_fast_begin(node);
                let run = self.runs[node];
                let took = self.rng.u64(50..300);
                self.after(
                    took,
                    Ev::Finish {
                        node,
                        run,
                        work: Work::StopFast,
                        agent: target,
                    },
                );
            }
        }
    }

    fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).expect("a node")
    }

    fn finish(&mut self, node: usize, run: u64, work: Work, agent: (usize, u32, Lane, u64)) {
        let (a, inc, lane, op) = agent;
        if self.runs[node] != run {
            return self.respond(a, inc, lane, op, Reply::Done(false), self.now);
        }
        match work {
            Work::Promote => {
                let ok = self.servers[node].running() && !self.servers[node].hung;
                if ok {
                    self.promote(node);
                }
                self.respond(a, inc, lane, op, Reply::Done(ok), self.now + 1);
            }
            Work::Rejoin { leader, rewind } => {
                let ok = self.servers[leader].writable()
                    && self.reachable(Peer::Node(node), Peer::Node(leader));
                if ok {
                    self.rejoined(node, leader, rewind);
                }
                self.respond(a, inc, lane, op, Reply::Done(ok), self.now + 1);
            }
            Work::StopFast => {
                self.stop_fast_end(node);
                self.respond(a, inc, lane, op, Reply::Done(true), self.now + 1);
            }
        }
    }
}

/// The servers: start, stop, streaming, replay, promotion, sync replication.
impl World {
    fn kill(&mut self, node: usize) {
        self.epoch += 1;
        if self.servers[node].run == (Run::Stopped { clean: false })
            || self.servers[node].run == (Run::Stopped { clean: true })
        {
            return;
        }
        self.log(|| format!("n{}:   postgres killed", node + 1));
        self.runs[node] += 1;
        self.disconnect(node);
        self.drop_senders(node);
        let s = &mut self.servers[node];
        s.run = Run::Stopped { clean: false };
        s.hung = false;
        s.waiters.clear();
        s.replay_due = None;
    }

    /// Starts a stopped server; when it will be ready.
    fn start(&mut self, node: usize) -> u64 {
        self.runs[node] += 1;
        let run = self.runs[node];
        let ready = self.now
            + if self.servers[node].standby_signal {
                self.rng.u64(150..700)
            } else {
                self.rng.u64(200..1_500)
            };
        self.servers[node].run = Run::Starting { ready_at: ready };
        self.at(ready, Ev::Ready { node, run });
        ready
    }

    fn ready(&mut self, node: usize, run: u64) {
        self.epoch += 1;
        if self.runs[node] != run {
            return;
        }
        let s = &mut self.servers[node];
        s.run = Run::Running;
        s.shutdown_checkpoint = None;
        if s.standby_signal {
            // Hot standby: connections are accepted while local WAL is still replayed.
            s.received = None;
            self.schedule_replay(node);
        } else {
            s.replayed = s.flushed;
        }
        self.log(|| format!("n{}:   postgres ready", node + 1));
        self.try_connect(node);
        self.reconnect_downstreams(node);
    }

    fn stop_fast_begin(&mut self, node: usize) {
        let s = &mut self.servers[node];
        // A fast shutdown ends every session: commits waiting for a standby are not
        // acknowledged.
        s.waiters.clear();
        if !s.standby_signal {
            s.flushed += 1;
            self.send_wal(node);
        }
    }

    fn stop_fast_end(&mut self, node: usize) {
        self.epoch += 1;
        // The walsenders send everything, the shutdown checkpoint included, to the standbys
        // they reach before they exit.
        let upto = self.servers[node].flushed;
        let standbys: Vec<usize> = self.servers[node]
            .senders
            .iter()
            .map(|w| w.standby)
            .collect();
        for standby in standbys {
            if self.reachable(Peer::Node(node), Peer::Node(standby))
                && self.servers[standby].running()
                && !self.servers[standby].hung
            {
                let s = &mut self.servers[standby];
                s.flushed = s.flushed.max(upto);
                s.received = Some(s.received.unwrap_or(0).max(upto));
                self.schedule_replay(standby);
            }
        }
        self.runs[node] += 1;
        self.disconnect(node);
        self.drop_senders(node);
        let s = &mut self.servers[node];
        s.run = Run::Stopped { clean: true };
        s.shutdown_checkpoint = (!s.standby_signal).then(|| s.flushed - 1);
        self.log(|| format!("n{}:   postgres stopped (fast)", node + 1));
    }

    fn promote(&mut self, node: usize) {
        self.epoch += 1;
        self.disconnect(node);
        self.drop_senders(node);
        let s = &mut self.servers[node];
        s.replayed = s.flushed;
        s.replay_due = None;
        let tl = self.tls.fork(s.tl, s.flushed);
        s.tl = tl;
        s.standby_signal = false;
        let number = self.tls.number(tl);
        self.log(|| format!("n{}:   promoted, timeline {number}", node + 1));
        self.reconnect_downstreams(node);
    }

    fn rejoined(&mut self, node: usize, leader: usize, rewind: bool) {
        self.epoch += 1;
        let (ltl, lflushed) = (self.servers[leader].tl, self.servers[leader].flushed);
        let s = &mut self.servers[node];
        if rewind {
            // pg_rewind: the leader's history up to now, replayed from the fork.
            let fork = self.tls.end_of(ltl, s.tl).unwrap_or(0).min(s.flushed);
            s.tl = ltl;
            s.flushed = lflushed;
            s.replayed = fork;
        } else {
            s.tl = ltl;
        }
        s.standby_signal = true;
        s.conninfo = Some(leader);
        s.shutdown_checkpoint = None;
        // Its settings files are the leader's now: one that kept it from starting is gone.
        self.cannot_start[node] = 0;
        let how = if rewind { "rewound" } else { "follows" };
        self.log(|| format!("n{}:   rejoined n{} ({how})", node + 1, leader + 1));
        self.start(node);
    }

    /// primary_conninfo changed and reloaded: the walreceiver restarts.
    fn point(&mut self, node: usize, to: Option<usize>) {
        self.disconnect(node);
        self.servers[node].conninfo = to;
        self.try_connect(node);
    }

    fn set_standby_names(&mut self, node: usize, text: String) {
        self.epoch += 1;
        let config = SyncConfig::parse(&text);
        let s = &mut self.servers[node];
        s.ssn_text = text;
        s.ssn = config;
        let slow = self.now < self.reload_delay.0;
        for i in 0..self.servers[node].senders.len() {
            let delay = if slow {
                self.rng.u64(0..=self.reload_delay.1)
            } else {
                self.rng.u64(0..3)
            };
            let standby = self.servers[node].senders[i].standby;
            self.servers[node].senders[i].reload_at = Some(self.now + delay);
            self.after(delay, Ev::Reload { node, standby });
        }
        if self.servers[node].ssn.names.is_empty() {
            self.release_all(node);
        }
    }

    fn reload(&mut self, node: usize, standby: usize) {
        self.epoch += 1;
        let s = &mut self.servers[node];
        let Some(i) = s.senders.iter().position(|w| w.standby == standby) else {
            return;
        };
        if s.senders[i].reload_at.is_none_or(|at| at > self.now) {
            return;
        }
        let config = s.ssn.clone();
        let w = &mut s.senders[i];
        w.priority = config.priority(&self.names[standby]);
        w.config = config;
        w.reload_at = None;
        for i in 0..self.servers[node].senders.len() {
            self.release(node, i);
        }
    }

    /// A standby's walreceiver tries its primary_conninfo.
    fn try_connect(&mut self, node: usize) {
        let s = &self.servers[node];
        let Some(up) = s.conninfo else { return };
        if s.upstream.is_some() || !s.running() || s.hung || !s.standby_signal {
            return;
        }
        let u = &self.servers[up];
        if !u.running() || u.hung || !self.reachable(Peer::Node(node), Peer::Node(up)) {
            return;
        }
        // As PostgreSQL asks: the timeline by its number in the upstream's history, from the
        // standby's position.
        let number = self.tls.number(s.tl);
        let Some(theirs) = self.tls.by_number(u.tl, number) else {
            return;
        };
        if theirs != s.tl {
            self.violation = Some(format!(
                "{} streams from {}: the same timeline number {number} names two histories",
                self.names[node], self.names[up]
            ));
            return;
        }
        let end = self.tls.end_of(u.tl, s.tl).expect("on its history");
        if s.flushed > end || s.flushed > u.flushed {
            return; // past the fork, or ahead of the upstream: refused
        }
        let (flushed, standby_name) = (s.flushed, self.names[node].clone());
        let config = u.ssn.clone();
        let priority = config.priority(&standby_name);
        let upstream_tl = u.tl;
        self.conns[node] += 1;
        self.epoch += 1;
        let s = &mut self.servers[node];
        s.upstream = Some(up);
        s.tl = upstream_tl;
        s.received = Some(s.received.unwrap_or(flushed).max(flushed));
        self.servers[up].senders.push(Walsender {
            standby: node,
            flush: flushed,
            config,
            priority,
            reload_at: None,
        });
        if self.servers[up].flushed > flushed {
            let upto = self.servers[up].flushed;
            self.ship(node, upto);
        }
    }

    fn disconnect(&mut self, node: usize) {
        self.epoch += 1;
        if let Some(up) = self.servers[node].upstream.take() {
            self.conns[node] += 1;
            self.servers[up].senders.retain(|w| w.standby != node);
        }
    }

    /// Every walsender of `node` goes (it stopped, or promoted).
    fn drop_senders(&mut self, node: usize) {
        let standbys: Vec<usize> = self.servers[node]
            .senders
            .iter()
            .map(|w| w.standby)
            .collect();
        for standby in standbys {
            self.disconnect(standby);
        }
    }

    /// The standbys naming `node` try again (it started, or promoted).
    fn reconnect_downstreams(&mut self, node: usize) {
        for other in 0..self.servers.len() {
            if self.servers[other].conninfo == Some(node) {
                self.try_connect(other);
            }
        }
    }

    /// `node`'s walsenders send what it flushed. One event per standby: the WAL arrives, is
    /// flushed (fsync), and the reply reaches the walsender, all at once after the sum of the
    /// three (the standby's flushed position shows a network hop late).
    fn send_wal(&mut self, node: usize) {
        if self.servers[node].hung {
            return;
        }
        let upto = self.servers[node].flushed;
        for i in 0..self.servers[node].senders.len() {
            let to = self.servers[node].senders[i].standby;
            if self.reachable(Peer::Node(node), Peer::Node(to)) {
                self.ship(to, upto);
            }
        }
    }

    fn ship(&mut self, to: usize, upto: Pos) {
        let gen = self.conns[to];
        let fsync = if self.now < self.slow_fsync[to].0 {
            self.slow_fsync[to].1
        } else {
            self.rng.u64(0..3)
        };
        let delay = self.net() + fsync + self.net();
        self.after(
            delay,
            Ev::Flush {
                node: to,
                upto,
                gen,
            },
        );
    }

    fn flush(&mut self, node: usize, upto: Pos, gen: u64) {
        let s = &mut self.servers[node];
        if self.conns[node] != gen || s.hung || s.upstream.is_none() || upto <= s.flushed {
            return;
        }
        s.flushed = upto;
        s.received = Some(s.received.unwrap_or(0).max(upto));
        let up = s.upstream.expect("connected");
        self.schedule_replay(node);
        self.feedback(up, node, upto, gen);
        self.send_wal(node);
    }

    fn feedback(&mut self, primary: usize, standby: usize, flush: Pos, gen: u64) {
        if self.conns[standby] != gen || self.servers[primary].hung {
            return;
        }
        let Some(i) = self.servers[primary]
            .senders
            .iter()
            .position(|w| w.standby == standby)
        else {
            return;
        };
        let w = &mut self.servers[primary].senders[i];
        w.flush = w.flush.max(flush);
        self.release(primary, i);
    }

    /// Walsender `i` of `node` releases the commits its configuration allows.
    fn release(&mut self, node: usize, i: usize) {
        if self.servers[node].waiters.is_empty() {
            return;
        }
        let Some(point) = self.servers[node].release_point(i) else {
            return;
        };
        // Waiters are in WAL order: release the front.
        while self.servers[node]
            .waiters
            .first()
            .is_some_and(|w| w.at <= point)
        {
            let w = self.servers[node].waiters.remove(0);
            self.acknowledge(w.commit);
        }
    }

    fn release_all(&mut self, node: usize) {
        for w in std::mem::take(&mut self.servers[node].waiters) {
            self.acknowledge(w.commit);
        }
    }

    /// How long until the server has replayed all it holds: slow while the fault lasts.
    fn replay_left(&self, node: usize) -> u64 {
        let s = &self.servers[node];
        let per = self.replay_rate(node);
        let slow_for = self.slow_replay[node].0.saturating_sub(self.now);
        ((s.flushed - s.replayed.min(s.flushed)) * per).min(slow_for)
    }

    fn replay_rate(&self, node: usize) -> u64 {
        if self.now < self.slow_replay[node].0 {
            self.slow_replay[node].1
        } else {
            0
        }
    }

    fn schedule_replay(&mut self, node: usize) {
        let per = self.replay_rate(node);
        let s = &mut self.servers[node];
        if per == 0 {
            s.replayed = s.replayed.max(s.flushed);
            return;
        }
        if s.replay_due.is_none() && s.replayed < s.flushed && s.running() {
            s.replay_due = Some(self.now + per);
            let run = self.runs[node];
            self.after(per, Ev::Replay { node, run });
        }
    }

    fn replay(&mut self, node: usize, run: u64) {
        if self.runs[node] != run || self.servers[node].hung {
            self.servers[node].replay_due = None;
            return;
        }
        let per = self.replay_rate(node);
        let s = &mut self.servers[node];
        s.replay_due = None;
        if per == 0 {
            s.replayed = s.flushed;
            return;
        }
        s.replayed = (s.replayed + 1).min(s.flushed);
        self.schedule_replay(node);
    }
}

/// The clients: each commits one row at a time on a node that takes writes, as a libpq client
/// with several hosts would find it, and gives up after a second without an answer.
impl World {
    fn client_tick(&mut self, client: usize) {
        if self.clients[client].inflight.is_some() {
            return;
        }
        let n = self.servers.len();
        let current = self.clients[client]
            .node
            .filter(|&i| self.servers[i].writable());
        let start = self.clients[client].start;
        let node = current.or_else(|| {
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| self.servers[i].writable())
        });
        let Some(node) = node else {
            self.clients[client].node = None;
            return self.after(100, Ev::ClientTick { client });
        };
        let s = &mut self.servers[node];
        s.flushed += 1;
        let commit = self.commits.len();
        self.commits.push(Commit {
            node,
            tl: s.tl,
            at: s.flushed,
            sent_at: self.now,
            acked_at: None,
        });
        let c = &mut self.clients[client];
        c.node = Some(node);
        c.inflight = Some(commit);
        // One timer per client: when it fires for an acknowledged commit, it is set again for
        // the one in flight then.
        if !self.clients[client].timer {
            self.clients[client].timer = true;
            self.after(CLIENT_TIMEOUT, Ev::ClientGiveUp { client, commit });
        }
        if self.servers[node].ssn.names.is_empty() {
            return self.acknowledge(commit);
        }
        let at = self.servers[node].flushed;
        self.servers[node].waiters.push(Waiter { at, commit });
        self.send_wal(node);
    }

    fn acknowledge(&mut self, commit: usize) {
        let Some(client) = self.clients.iter().position(|c| c.inflight == Some(commit)) else {
            return; // the client gave up on it: not acknowledged to anyone
        };
        self.clients[client].inflight = None;
        self.commits[commit].acked_at = Some(self.now);
        self.check_acknowledged(commit);
        if let Some(&last) = self.acks.last() {
            let (at, node) = (
                self.commits[last].acked_at.unwrap_or(0),
                self.commits[last].node,
            );
            self.max_gap_ms = self.max_gap_ms.max(self.now - at);
            if node != self.commits[commit].node {
                let new = self.commits[commit].node;
                self.log(|| format!("clients: n{} acknowledges writes now", new + 1));
            }
        }
        self.acks.push(commit);
        if self.now >= self.heal_at && self.first_ack_after_heal.is_none() {
            self.first_ack_after_heal = Some(self.now);
        }
        let pause = self.rng.u64(80..200);
        self.after(pause, Ev::ClientTick { client });
    }
}

/// The faults of the schedule.
impl World {
    fn fault_start(&mut self, i: usize) {
        self.epoch += 1;
        let fault = self.schedule.faults[i].1.clone();
        self.log(|| format!("FAULT {fault}"));
        let end = self.now + fault.duration();
        match fault {
            Fault::AgentCrash { node, .. } => self.agent_dies(node, end),
            Fault::NodeLoss { node, .. } => {
                self.agent_dies(node, end);
                self.kill(node);
            }
            Fault::ServerCrash { node } => self.kill(node),
            Fault::AgentFreeze { node, .. } => {
                if self.agents[node].core.is_some() {
                    self.agents[node].frozen = true;
                    let inc = self.agents[node].inc;
                    self.at(end, Ev::Unfreeze { node, inc });
                }
            }
            Fault::ServerHang { node, .. } => {
                if self.servers[node].run != (Run::Stopped { clean: false })
                    && self.servers[node].run != (Run::Stopped { clean: true })
                {
                    self.servers[node].hung = true;
                    self.at(end, Ev::FaultEnd(i));
                }
            }
            Fault::Partition { a, b, .. } => {
                self.cuts.push((a, b));
                if let (Peer::Node(x), Peer::Node(y)) = (a, b) {
                    for (s, u) in [(x, y), (y, x)] {
                        if self.servers[s].upstream == Some(u) {
                            self.disconnect(s);
                        }
                    }
                }
                self.at(end, Ev::FaultEnd(i));
            }
            Fault::EtcdLeaderChange { .. } | Fault::EtcdQuorumLoss { .. } => {
                self.etcd.down_until = self.etcd.down_until.max(end);
                self.at(end, Ev::FaultEnd(i));
            }
            Fault::SlowReplay {
                node,
                per_record_ms,
                ..
            } => self.slow_replay[node] = (end, per_record_ms),
            Fault::SlowFsync { node, fsync_ms, .. } => self.slow_fsync[node] = (end, fsync_ms),
            Fault::CannotStart { node, .. } => self.cannot_start[node] = end,
            Fault::Jitter { extra_ms, .. } => self.jitter = (end, extra_ms),
            Fault::SlowReload { delay_ms, .. } => self.reload_delay = (end, delay_ms),
            Fault::Pause { .. } => {
                self.etcd.set_pause(Some(PauseRecord {
                    by: "sim".into(),
                    at_unix_ms: self.now,
                }));
                self.pause_since = Some(self.now);
                self.wake_all(None);
                self.at(end, Ev::FaultEnd(i));
            }
            Fault::Switchover { to } => self.switchover(to),
            Fault::BulkWrite { size } => {
                if let Some(node) = (0..self.servers.len()).find(|&i| self.servers[i].writable()) {
                    self.servers[node].flushed += size;
                    self.send_wal(node);
                }
            }
            Fault::AgentDiesAfterSyncRecord { node, down_ms } => {
                self.agents[node].die_after_sync = Some(down_ms);
            }
            Fault::PolicyChange { policy } => {
                self.spec.sync.method = if policy.quorum { "ANY" } else { "FIRST" }.into();
                self.spec.sync.num_sync = policy.num;
                for node in 0..self.agents.len() {
                    self.after(300 * node as u64, Ev::Restart { node });
                }
            }
            // One other cluster at a time.
            Fault::ForeignCluster { .. } if self.foreign.is_some() => {}
            Fault::ForeignCluster { leader, .. } => {
                self.foreign = Some(i);
                let name = self.names[leader].clone();
                let others = self.names.iter().filter(|n| **n != name).cloned().collect();
                let lease = self.etcd.grant(self.now, 3_600_000);
                self.ours = self.etcd.sync.take();
                self.etcd.foreign(
                    name.clone(),
                    lease,
                    pgrepl::ha::records::SyncRecord {
                        leader: name,
                        method: "FIRST".into(),
                        num: 1,
                        members: others,
                        prior: Vec::new(),
                    },
                    self.servers[0].system_id + 1,
                );
                self.foreign_since = Some(self.now);
                self.wake_all(None);
                self.at(end, Ev::FaultEnd(i));
            }
        }
    }

    fn fault_end(&mut self, i: usize) {
        self.epoch += 1;
        let fault = self.schedule.faults[i].1.clone();
        self.log(|| format!("END {fault}"));
        match fault {
            Fault::ServerHang { node, .. } => {
                if self.servers[node].hung {
                    self.servers[node].hung = false;
                    // Its walsenders and walreceiver pick up where they stopped.
                    self.send_wal(node);
                    for j in 0..self.servers[node].senders.len() {
                        let w = &self.servers[node].senders[j];
                        let (standby, flush) = (w.standby, self.servers[w.standby].flushed);
                        let gen = self.conns[standby];
                        self.after(
                            1,
                            Ev::Feedback {
                                primary: node,
                                standby,
                                flush,
                                gen,
                            },
                        );
                    }
                    self.try_connect(node);
                    self.schedule_replay(node);
                }
            }
            Fault::Partition { a, b, .. } => {
                if let Some(k) = self.cuts.iter().position(|&c| c == (a, b)) {
                    self.cuts.remove(k);
                }
                for node in 0..self.servers.len() {
                    self.try_connect(node);
                }
                self.wake_all(None);
            }
            Fault::EtcdLeaderChange { .. } | Fault::EtcdQuorumLoss { .. } => {
                if self.etcd.available(self.now) {
                    self.etcd.promote_leader(self.now);
                    self.wake_all(None);
                }
            }
            Fault::Pause { .. } => {
                self.etcd.set_pause(None);
                self.pause_since = None;
                self.wake_all(None);
            }
            Fault::ForeignCluster { .. } if self.foreign == Some(i) => {
                self.foreign = None;
                let ours = self.ours.take();
                self.etcd.unforeign(ours);
                self.foreign_since = None;
                self.wake_all(None);
            }
            _ => {}
        }
    }

    /// The agent process dies (its lease lives on until it expires); its service manager
    /// starts it again at `back_at`.
    fn agent_dies(&mut self, node: usize, back_at: u64) {
        let agent = &mut self.agents[node];
        agent.inc += 1;
        agent.frozen = false;
        agent.parked.clear();
        agent.core = None;
        agent.phase = Phase::Idle;
        agent.lease_effects.clear();
        let inc = agent.inc;
        self.log(|| format!("n{}: agent killed", node + 1));
        self.at(back_at, Ev::AgentStart { node, inc });
    }

    /// `pgrepl switchover [--to]`: the command's checks, then the request under its lease.
    fn switchover(&mut self, to: Option<usize>) {
        let view = self.etcd.view(LeaseId(0));
        let to = to.map(|t| self.names[t].clone());
        let Ok((from, to)) = pgrepl::ha::requests::switchover_target(&view, to.as_deref()) else {
            return self.log(|| "switchover refused by the command's checks".into());
        };
        let request = RoleRequest {
            from,
            to,
            by: "sim".into(),
            at_unix_ms: self.now,
            refused: None,
        };
        if self.etcd.available(self.now) && self.etcd.request_switchover(self.now, request, 10_000)
        {
            self.wake_all(None);
        }
    }
}

/// The invariants, after every event.
impl World {
    /// A paused agent touches no server; no agent acts on another cluster's keys.
    fn check_effect(&mut self, node: usize, lane: Lane, effect: &Effect) {
        let touches = matches!(
            effect,
            Effect::Kill
                | Effect::Start
                | Effect::Rejoin { .. }
                | Effect::PointAt { .. }
                | Effect::Repoint { .. }
                | Effect::SetStandbyNames(_)
                | Effect::Promote
                | Effect::StopFast
        );
        if !touches {
            return;
        }
        let (seen, decided_on) = (self.agents[node].view_at, self.agents[node].decided_on);
        if self
            .pause_since
            .is_some_and(|since| seen.is_some_and(|at| since <= at))
        {
            self.violation = Some(format!(
                "n{}'s agent read the pause key, yet carries out {effect:?}",
                node + 1
            ));
        }
        // Its own lease's fence is its own business, and so is a server that hangs; the rest
        // of the loop acts on what etcd says.
        let foreign = self
            .foreign_since
            .is_some_and(|since| decided_on.is_some_and(|at| since <= at));
        let own_health = matches!(
            &self.agents[node].phase,
            Phase::Acting { step, .. } if step.decision.action == Action::KillHung
        );
        if lane == Lane::Loop && foreign && !own_health {
            self.violation = Some(format!(
                "n{}'s agent carries out {effect:?} on another cluster's keys",
                node + 1
            ));
        }
    }

    /// No acknowledged commit is missing from the history of the server that acknowledges the
    /// next one.
    fn check_acknowledged(&mut self, commit: usize) {
        let c = &self.commits[commit];
        let s = &self.servers[c.node];
        // On one timeline, a later position holds the earlier ones: only the newest
        // acknowledged commit of each timeline needs checking.
        for &(tl, earlier) in &self.frontier {
            let e = &self.commits[earlier];
            if tl == c.tl && e.at <= c.at {
                continue;
            }
            if !self.tls.contains(s.tl, s.flushed, e.tl, e.at) {
                self.violation = Some(format!(
                    "lost: commit {earlier} (acknowledged by {} at timeline {}, {}) is not in the history of {}, which acknowledged commit {commit} (timeline {}, {})",
                    self.names[e.node],
                    self.tls.number(e.tl),
                    e.at,
                    self.names[c.node],
                    self.tls.number(c.tl),
                    c.at
                ));
                return;
            }
        }
        let tl = c.tl;
        match self.frontier.iter_mut().find(|(t, _)| *t == tl) {
            Some(entry) if self.commits[entry.1].at < self.commits[commit].at => entry.1 = commit,
            Some(_) => {}
            None => self.frontier.push((tl, commit)),
        }
    }

    fn check(&mut self) {
        // A primary whose agent runs, unpaused, is fenced at its deadline.
        for node in 0..self.agents.len() {
            if !self.servers[node].primary() {
                continue;
            }
            let agent = &self.agents[node];
            let Some(core) = agent.core.as_ref().filter(|_| !agent.frozen) else {
                continue;
            };
            // A watchdog that just ran again gets a moment to fire.
            let due = core.fence_deadline().as_millis().max(agent.awake_at);
            let late = self.now > due + 200;
            if late && !core.paused() && self.servers[node].primary() {
                self.violation = Some(format!(
                    "n{}'s server runs as a primary {} ms past its agent's fence deadline",
                    node + 1,
                    self.now - core.fence_deadline().as_millis()
                ));
                return;
            }
        }
        // The rest reads only etcd and the servers' roles and walsenders: when neither changed,
        // it holds as it did.
        let state = (self.etcd.revision, self.epoch);
        if self.checked == state {
            return;
        }
        self.checked = state;
        let holder = self.etcd.leader.as_ref().map_or("-", |(n, _)| n.as_str());
        if self.leaders.last().map(String::as_str) != Some(holder) {
            self.leaders.push(holder.to_owned());
        }
        if self.servers.iter().filter(|s| s.can_acknowledge()).count() > 1 {
            let names: Vec<&str> = (0..self.servers.len())
                .filter(|&i| self.servers[i].can_acknowledge())
                .map(|i| self.name(i))
                .collect();
            self.violation = Some(format!(
                "two writers: {} could each acknowledge a commit",
                names.join(" and ")
            ));
            return;
        }
        // The sync record covers every configuration its leader's walsenders may apply.
        let Some(record) = &self.etcd.sync else {
            return;
        };
        let Some(leader) = self.names.iter().position(|n| *n == record.leader) else {
            return;
        };
        let s = &self.servers[leader];
        if !s.primary() {
            return;
        }
        let configs = std::iter::once(&s.ssn).chain(s.senders.iter().map(|w| &w.config));
        for config in configs {
            let covered = !config.names.is_empty()
                && config.num >= record.num
                && config.names.iter().all(|n| record.members.contains(n));
            if !covered {
                self.violation = Some(format!(
                    "the sync record ({} {} of {:?}) does not cover {}'s synchronous_standby_names ({} of {:?})",
                    record.method, record.num, record.members, record.leader, config.num, config.names
                ));
                return;
            }
        }
    }
}
