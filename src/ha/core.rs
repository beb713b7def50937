//! The agent as a state machine, as etcd's raft is one: observations and time go in, effects
//! come out, and nothing here does I/O or reads a clock. `agent` carries the effects out against
//! etcd and the servers; the simulator (tests/sim) carries them out against models of both. So
//! the real agent and the simulated ones run this very code, timers and all.
//!
//! What it keeps between decisions: the lease and when its last renewal was confirmed (the fence
//! deadline), whether the server may take writes (what a fence kills), the pause flag as etcd
//! last said it, and the clocks `decide` reads (how long the server has been silent, how long a
//! standby has been stuck behind the leader's timeline).

use std::time::Duration;

use crate::cluster::history::ChangeKind;
use crate::cluster::spec::ClusterSpec;
use crate::ids::{SystemId, TimelineId};
use crate::sync_policy::{SyncNamesError, SyncPolicy};
use crate::Lsn;

use super::decide::{behind_leader, decide, Clocks, Situation};
use super::model::{Action, Decision, Probed, Time, View};
use super::records::{LeaseId, MemberRecord, RoleRequest, ServerState, SyncRecord};
use super::Timing;

/// One piece of I/O the executor carries out, in the order a decision lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// SIGKILL the server (a fence, or a hung server).
    Kill,
    /// Start the stopped server as its data says (standby.signal or not).
    Start,
    /// Make this node a standby of `leader`: follow, pg_rewind or re-clone.
    Rejoin { leader: String },
    /// Point this standby's primary_conninfo at `leader`, or empty it (`None`), and reload.
    PointAt { leader: Option<String> },
    /// Create the leader key under this agent's lease if nobody holds it and the keys belong
    /// to the cluster `system_id` (which it records when none is).
    TakeLeadership { system_id: SystemId },
    /// Move the leader key from an earlier run's lease to this one's.
    Reclaim { from: LeaseId },
    /// Delete the leader key (guarded by holding it).
    Release,
    /// Record the cluster's system identifier (guarded by holding the key).
    RecordSystemId(SystemId),
    /// Write the sync record, guarded by holding the leader key; failing when not written.
    WriteSync(SyncRecord),
    /// Point another node's standby at this node (best effort: one this agent cannot reach
    /// cannot acknowledge for the old primary either).
    Repoint { node: String },
    /// Set synchronous_standby_names on this server and reload.
    SetStandbyNames(SyncPolicy),
    /// pg_promote to `timeline`, waiting for it to finish: history files first for the
    /// numbers below it this server has none of, so PostgreSQL numbers its timeline so.
    Promote { timeline: TimelineId },
    /// Record the promotion: this state directory's topology and a history key.
    RecordPromotion {
        from: Option<String>,
        kind: ChangeKind,
        reason: String,
    },
    /// Fast shutdown (a switchover: the standbys get every commit).
    StopFast,
    /// Put the leader key under `to`'s member lease.
    HandOver { to: String },
    /// Mark the switchover request refused (the request as it was, with the reason set).
    RefuseSwitchover(RoleRequest),
    /// Take a new lease (the old one is gone).
    Grant,
    /// Publish this member record under `lease`, before the server may do what the record
    /// etcd holds says it cannot: receive WAL (a detached standby pointed at a leader again),
    /// or take writes (a standby asked to promote).
    Publish {
        record: MemberRecord,
        lease: LeaseId,
    },
}

impl Effect {
    /// A failure that does not stop the steps after it.
    pub fn best_effort(&self) -> bool {
        matches!(self, Effect::Repoint { .. })
    }
}

/// What a renewal of the lease came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// etcd confirmed it.
    Alive,
    /// etcd no longer has the lease: it expired.
    Gone,
    /// No answer (etcd unreachable, no quorum, a timeout).
    Failed,
}

/// One decision and the effects that carry it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub decision: Decision,
    pub effects: Vec<Effect>,
    /// The decision differs from the last one (what the agent logs).
    pub changed: bool,
}

/// What the lease machinery asks of the executor, and what to log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseStep {
    pub effects: Vec<Effect>,
    pub note: Option<String>,
}

/// A renewal is tried again this soon after a failure (a failure may be quick: every endpoint
/// refusing), not at the next interval: every renewal lost is one the fence deadline does not
/// get back.
const RENEW_RETRY: Duration = Duration::from_millis(50);

/// A server that failed to start is tried again after 1, 2, 4, 8, then every 10 s: its log (and
/// the agent's, which quotes its reason) stays readable, and a standby takes over at the start
/// timeout anyway.
const START_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const START_BACKOFF_MAX: Duration = Duration::from_secs(10);

pub struct Core {
    me: String,
    spec: ClusterSpec,
    timing: Timing,
    lease: LeaseId,
    /// When the last renewal etcd confirmed was sent: the lease cannot expire before this plus
    /// the TTL, whatever etcd's clock says.
    confirmed_at: Time,
    renewal_failing: bool,
    /// The server may take writes: what a fence kills. Set when the probe sees a running
    /// primary; cleared when it sees otherwise and after a kill or a stop.
    armed: bool,
    /// The pause key, as etcd last said.
    paused: bool,
    /// Since when the running server has not answered the probe.
    silent_since: Option<Time>,
    /// Since when this standby has been behind the leader's timeline, and at which position.
    stuck: Option<(Time, Option<Lsn>)>,
    /// Since when this leader's server has not run as a primary.
    down_since: Option<Time>,
    /// Starts that failed since the server last ran: how many, the last one when.
    start_failures: Option<(u32, Time)>,
    /// The synchronous_standby_names the server has, and since when.
    names: Option<(Result<SyncPolicy, SyncNamesError>, Time)>,
    /// The member record etcd holds, and under which lease.
    published: Option<(MemberRecord, LeaseId)>,
    /// A publish failed, and a request that timed out may still land: etcd holds that record
    /// or the one before, so the next probe publishes whatever it finds.
    publish_unsure: bool,
    last: Option<Decision>,
}

impl Core {
    /// An agent for node `me` whose lease was granted by a request sent at the time given with
    /// it; `paused`: the pause key existed when the agent started.
    pub fn new(
        me: &str,
        spec: ClusterSpec,
        timing: Timing,
        (lease, sent): (LeaseId, Time),
        paused: bool,
    ) -> Core {
        Core {
            me: me.to_owned(),
            spec,
            timing,
            lease,
            confirmed_at: sent,
            renewal_failing: false,
            // Until the first probe says otherwise, the server may be a primary.
            armed: true,
            paused,
            silent_since: None,
            stuck: None,
            down_since: None,
            start_failures: None,
            names: None,
            published: None,
            publish_unsure: false,
            last: None,
        }
    }

    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The pause key, as etcd last said.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The server may take writes (the agent stops it before releasing its lease on exit).
    pub fn may_write(&self) -> bool {
        self.armed
    }

    /// The member record to publish for this probe under the current lease, when etcd does not
    /// hold it already (the lease keeps it otherwise). Nothing is known of a server that did
    /// not answer.
    /// A server that stops answering keeps its record, marked unknown: whatever it said, the
    /// server may be receiving WAL now, and an election must not count it. So is one being
    /// promoted: it is a primary from any moment on.
    pub fn to_publish(&self, probe: &Probed) -> Option<MemberRecord> {
        let server = match probe.local() {
            Some(local) if local.promoting => ServerState {
                unknown: true,
                ..local.server.clone()
            },
            Some(local) => local.server.clone(),
            None => ServerState {
                unknown: true,
                detached: false,
                ..self.published.as_ref()?.0.server.clone()
            },
        };
        let record = MemberRecord {
            node: self.me.clone(),
            paused: self.paused,
            server,
        };
        match &self.published {
            Some((held, lease))
                if *held == record && *lease == self.lease && !self.publish_unsure =>
            {
                None
            }
            _ => Some(record),
        }
    }

    /// etcd holds `record` under `lease` now.
    pub fn published(&mut self, record: MemberRecord, lease: LeaseId) {
        self.published = Some((record, lease));
        self.publish_unsure = false;
    }

    /// A publish failed: it may still land.
    pub fn publish_failed(&mut self) {
        self.publish_unsure = true;
    }

    /// One round of the loop: the probe of the server and etcd's view (`None`: etcd did not
    /// answer), both as of `now`; the decision and the effects that carry it out.
    pub fn decide(&mut self, now: Time, probe: &Probed, view: Option<&View>) -> Step {
        // When etcd is silent, the last word it said holds.
        if let Some(view) = view {
            self.paused = view.pause.is_some();
        }
        let mut stuck_for = Duration::ZERO;
        let mut silent_for = Duration::ZERO;
        // What a fence kills: a server that may take writes, answering or not.
        self.armed = probe.may_write();
        match probe {
            Probed::Known(local) => {
                self.silent_since = None;
                let server = &local.server;
                if server.running {
                    self.start_failures = None;
                }
                if self
                    .names
                    .as_ref()
                    .is_none_or(|(n, _)| *n != local.standby_names)
                {
                    self.names = Some((local.standby_names.clone(), now));
                }
                let behind = view.is_some_and(|v| behind_leader(local, v).is_some());
                stuck_for = self.stuck_for(now, behind, server.position);
            }
            Probed::Refused { .. } => self.silent_since = None,
            Probed::Silent { .. } => silent_for = now.since(*self.silent_since.get_or_insert(now)),
        }
        self.track_down(now, probe, view);
        let situation = self.situation(now, probe, view, silent_for, stuck_for);
        let decision = decide(&situation);
        match decision.action {
            Action::KillHung => {
                self.silent_since = None;
                self.armed = false;
            }
            // Not a stop for a switchover: the server takes writes until it is down, and the
            // lease may lapse meanwhile (`done` disarms once it stopped).
            Action::Fence => self.armed = false,
            // The server may take writes from the moment it is asked to: a fence must kill it
            // from then on, not from the next probe.
            Action::RestartInPlace | Action::Promote { .. } => self.armed = true,
            _ => {}
        }
        let local = probe.local();
        self.step(decision, view, local.and_then(|l| l.system_id))
    }

    /// How long this leader's server has not run as a primary: counted while this agent holds
    /// the key (as etcd last said), from the first probe that did not find one.
    fn track_down(&mut self, now: Time, probe: &Probed, view: Option<&View>) {
        let Some(view) = view else { return };
        let leads = view.leader.as_ref().is_some_and(|l| l.mine);
        let serving = probe
            .local()
            .is_some_and(|l| l.server.running && !l.server.in_recovery);
        if leads && !serving {
            self.down_since.get_or_insert(now);
        } else {
            self.down_since = None;
        }
    }

    fn situation<'a>(
        &'a self,
        now: Time,
        probe: &'a Probed,
        view: Option<&'a View>,
        silent_for: Duration,
        stuck_for: Duration,
    ) -> Situation<'a> {
        let start_retry_in = self.start_failures.and_then(|(failed, at)| {
            let wait = START_BACKOFF_FIRST * 2u32.saturating_pow(failed - 1);
            let due = at + wait.min(START_BACKOFF_MAX);
            (due > now).then(|| due.since(now))
        });
        Situation {
            me: &self.me,
            probe,
            view,
            spec: &self.spec,
            timing: &self.timing,
            paused: self.paused,
            clocks: Clocks {
                fence_due: now >= self.fence_deadline(),
                silent_for,
                stuck_for,
                down_for: self.down_since.map_or(Duration::ZERO, |t| now.since(t)),
                start_failed: self.start_failures.is_some(),
                start_retry_in,
                names_for: self
                    .names
                    .as_ref()
                    .map_or(Duration::ZERO, |(_, t)| now.since(*t)),
            },
        }
    }

    fn step(
        &mut self,
        decision: Decision,
        view: Option<&View>,
        system_id: Option<SystemId>,
    ) -> Step {
        let changed = self.last.as_ref() != Some(&decision);
        if changed {
            self.last = Some(decision.clone());
        }
        let mut effects = effects(&decision, view, system_id);
        if let Some(publish) = self.attaching(&effects) {
            effects.insert(0, publish);
        }
        if let Some(at) = effects
            .iter()
            .position(|e| matches!(e, Effect::Promote { .. }))
        {
            // From pg_promote on, a record saying "standby" would make an election take this
            // leader's record for void (it never promoted) while the server takes writes.
            if let Some(publish) = self.promoting() {
                effects.insert(at, publish);
            }
        }
        Step {
            effects,
            decision,
            changed,
        }
    }

    /// The record to publish before asking for a promotion: the one etcd holds, unknown.
    fn promoting(&self) -> Option<Effect> {
        let (held, lease) = self.published.as_ref().filter(|(r, _)| !r.server.unknown)?;
        let mut record = held.clone();
        record.server.unknown = true;
        record.server.detached = false;
        Some(Effect::Publish {
            record,
            lease: *lease,
        })
    }

    /// The record to publish before `effects` point this server at a leader, when etcd holds
    /// one saying it is detached: an election counts a detached standby's position as final,
    /// and until the next probe publishes again (never, if the server then stops answering)
    /// that record would hide WAL the standby received and acknowledged.
    fn attaching(&self, effects: &[Effect]) -> Option<Effect> {
        let leader = effects.iter().find_map(|e| match e {
            Effect::PointAt {
                leader: Some(leader),
            }
            | Effect::Rejoin { leader } => Some(leader),
            _ => None,
        })?;
        let (held, lease) = self.published.as_ref().filter(|(r, _)| r.server.detached)?;
        let mut record = held.clone();
        record.server.detached = false;
        record.server.follows = Some(leader.clone());
        Some(Effect::Publish {
            record,
            lease: *lease,
        })
    }

    /// How long the standby has been behind the leader's timeline at `position`; moving
    /// restarts the clock.
    fn stuck_for(&mut self, now: Time, behind: bool, position: Option<Lsn>) -> Duration {
        if !behind {
            self.stuck = None;
            return Duration::ZERO;
        }
        match self.stuck {
            Some((since, at)) if at == position => now.since(since),
            _ => {
                self.stuck = Some((now, position));
                Duration::ZERO
            }
        }
    }

    /// An effect finished at `now`; `ok` says whether it did what it was asked. (A kill
    /// disarms the fence when it is decided, not here: a decision taken meanwhile may have armed
    /// it again for a server it starts.)
    pub fn done(&mut self, now: Time, effect: &Effect, ok: bool) {
        if let Effect::Publish { record, lease } = effect {
            match ok {
                true => self.published(record.clone(), *lease),
                false => self.publish_failed(),
            }
        }
        if *effect == Effect::StopFast && ok {
            self.armed = false;
        }
        if *effect == Effect::Start && !ok {
            let failed = self.start_failures.map_or(0, |(n, _)| n);
            self.start_failures = Some((failed + 1, now));
        }
    }

    /// A renewal of `lease` sent at `sent` came back with `outcome`.
    pub fn renewed(&mut self, sent: Time, lease: LeaseId, outcome: Renewal) -> LeaseStep {
        if lease != self.lease {
            return LeaseStep::default();
        }
        match outcome {
            Renewal::Alive => {
                let before = std::mem::replace(&mut self.confirmed_at, sent);
                let note = std::mem::take(&mut self.renewal_failing).then(|| {
                    format!(
                        "lease renewed again, {} ms after the last confirmed renewal was sent",
                        sent.since(before).as_millis()
                    )
                });
                LeaseStep {
                    effects: Vec::new(),
                    note,
                }
            }
            Renewal::Gone => {
                let mut effects: Vec<Effect> = self.fence().into_iter().collect();
                effects.push(Effect::Grant);
                LeaseStep {
                    effects,
                    note: Some(format!(
                        "the lease expired (this agent was stopped or cut off for longer than its {} s TTL); taking a new one",
                        self.timing.ttl_s
                    )),
                }
            }
            Renewal::Failed => {
                let first = !std::mem::replace(&mut self.renewal_failing, true);
                LeaseStep {
                    effects: Vec::new(),
                    note: first.then(|| "lease renewal failed".to_owned()),
                }
            }
        }
    }

    /// A new lease, granted by a request sent at `sent`.
    pub fn granted(&mut self, sent: Time, lease: LeaseId) {
        self.lease = lease;
        self.confirmed_at = sent;
        self.renewal_failing = false;
    }

    /// When to send the next renewal, the last one having been sent at `sent`.
    pub fn next_renewal(&self, sent: Time, now: Time) -> Time {
        let regular = sent + self.timing.renew();
        if self.renewal_failing {
            regular.min(now + RENEW_RETRY)
        } else {
            regular
        }
    }

    /// The fence deadline: the lease may expire elsewhere soon after it.
    pub fn fence_deadline(&self) -> Time {
        self.confirmed_at + self.timing.fence_after()
    }

    /// The watchdog at `now`: a fence when no renewal was confirmed in time, and when to look
    /// again.
    pub fn watch(&mut self, now: Time) -> (Option<Effect>, Time) {
        let deadline = self.fence_deadline();
        let fence = if now >= deadline { self.fence() } else { None };
        (fence, deadline.max(now + Duration::from_millis(20)))
    }

    /// Kills the server if it may take writes, unless the agents are paused: then nobody
    /// elects, so no other primary can appear (proto-notes/08-ha.md, "Pause").
    fn fence(&mut self) -> Option<Effect> {
        if self.paused || !std::mem::take(&mut self.armed) {
            return None;
        }
        Some(Effect::Kill)
    }
}

/// The effects that carry a decision out, in order. A promotion's order is the zero-loss
/// argument's (proto-notes/08-ha.md, "Takeover order"). `view` is what the decision read,
/// `system_id` the server's.
fn effects(decision: &Decision, view: Option<&View>, system_id: Option<SystemId>) -> Vec<Effect> {
    match &decision.action {
        Action::Wait => Vec::new(),
        Action::Fence | Action::KillHung => vec![Effect::Kill],
        Action::RestartInPlace | Action::Start => vec![Effect::Start],
        Action::Rejoin { leader } => vec![Effect::Rejoin {
            leader: leader.clone(),
        }],
        Action::Follow { leader } => vec![Effect::PointAt {
            leader: Some(leader.clone()),
        }],
        Action::Detach => vec![Effect::PointAt { leader: None }],
        // Only a node with data leads.
        Action::TakeLeadership => system_id
            .map(|system_id| Effect::TakeLeadership { system_id })
            .into_iter()
            .collect(),
        Action::Reclaim { from } => vec![Effect::Reclaim { from: *from }],
        Action::Release => vec![Effect::Release],
        Action::RecordSystemId => system_id.map(Effect::RecordSystemId).into_iter().collect(),
        Action::Promote {
            sync,
            standby_names,
            repoint,
            timeline,
            kind,
        } => {
            let mut steps = vec![Effect::WriteSync(sync.clone())];
            steps.extend(
                repoint
                    .iter()
                    .map(|node| Effect::Repoint { node: node.clone() }),
            );
            steps.extend([
                Effect::SetStandbyNames(standby_names.clone()),
                Effect::Promote {
                    timeline: *timeline,
                },
                Effect::RecordPromotion {
                    from: view.and_then(|v| v.sync.as_ref()).map(|r| r.leader.clone()),
                    kind: *kind,
                    reason: decision.reason.clone(),
                },
            ]);
            steps
        }
        Action::WriteSync(record) => vec![Effect::WriteSync(record.clone())],
        Action::SetStandbyNames(names) => vec![Effect::SetStandbyNames(names.clone())],
        Action::StopForSwitchover { .. } => vec![Effect::StopFast],
        Action::HandOver { to } => vec![Effect::HandOver { to: to.clone() }],
        Action::RefuseSwitchover(why) => view
            .and_then(|v| v.switchover.clone())
            .map(|request| {
                Effect::RefuseSwitchover(RoleRequest {
                    refused: Some(why.clone()),
                    ..request
                })
            })
            .into_iter()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::model::Local;

    fn detached_standby() -> Local {
        Local {
            server: ServerState {
                running: true,
                in_recovery: true,
                timeline: None,
                position: Some(Lsn::new(100)),
                detached: true,
                unknown: false,
                follows: None,
            },
            standby_signal: true,
            standby_names: Ok(SyncPolicy::default()),
            caught_up: Vec::new(),
            shutdown_checkpoint: None,
            system_id: None,
            promoting: false,
            history_top: None,
            starved: false,
        }
    }

    fn core() -> Core {
        let spec = ClusterSpec::default();
        Core::new(
            "me",
            spec,
            Timing::default(),
            (LeaseId(7), Time::ZERO),
            false,
        )
    }

    /// What etcd holds of a detached standby never outruns the standby: the record says it may
    /// receive again before it is pointed at a leader, and it is marked unknown once the server
    /// stops answering.
    #[test]
    fn a_published_detached_record_never_outlives_the_detachment() {
        let mut core = core();
        let probe = Probed::Known(detached_standby());
        let record = core.to_publish(&probe).expect("nothing published yet");
        core.published(record.clone(), LeaseId(7));
        assert_eq!(core.to_publish(&probe), None);

        let step = core.step(
            Decision::new(Action::Follow { leader: "a".into() }, "test"),
            None,
            None,
        );
        let Effect::Publish { record: first, .. } = &step.effects[0] else {
            panic!("{:?}", step.effects)
        };
        assert!(!first.server.detached);
        assert_eq!(first.server.follows.as_deref(), Some("a"));
        assert!(matches!(step.effects[1], Effect::PointAt { .. }));

        let silent = Probed::Silent {
            standby_signal: true,
        };
        let unknown = core.to_publish(&silent).expect("the record changes");
        assert!(unknown.server.unknown && !unknown.server.detached);
    }

    /// A publish that timed out may land later: until one is confirmed, the next probe
    /// publishes again even when it matches the record last confirmed.
    #[test]
    fn a_failed_publish_is_published_again() {
        let mut core = core();
        let probed = Probed::Known(detached_standby());
        let record = core.to_publish(&probed).expect("nothing published yet");
        core.published(record.clone(), LeaseId(7));
        assert_eq!(core.to_publish(&probed), None);
        let mut unknown = record.clone();
        unknown.server.unknown = true;
        let effect = Effect::Publish {
            record: unknown,
            lease: LeaseId(7),
        };
        core.done(Time::ZERO, &effect, false);
        assert_eq!(core.to_publish(&probed), Some(record));
    }
}
