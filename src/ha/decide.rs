//! The agent's decision, as a pure function: what this node's server is doing and what etcd
//! says, in; one action with its reason, out. No I/O here, so every scenario is a table test,
//! and the simulator (tests/sim) runs it under every interleaving it can generate.
//!
//! The safety argument these rules implement is in proto-notes/08-ha.md.

use std::time::Duration;

use crate::cluster::spec::ClusterSpec;
use crate::ids::TimelineId;

use super::election;
use super::model::{Action, Decision, Leader, Local, Probed, View};
use super::records::SyncRecord;
use super::requests;
use super::Timing;

/// Everything one decision looks at.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub me: &'a str,
    pub probe: &'a Probed,
    /// `None`: etcd did not answer.
    pub view: Option<&'a View>,
    /// The cluster file's topology and sync policy.
    pub spec: &'a ClusterSpec,
    pub timing: &'a Timing,
    /// The pause key exists (or existed when etcd last answered): only bookkeeping in etcd,
    /// nothing on a server.
    pub paused: bool,
    pub clocks: Clocks,
}

/// What the core's timers say, measured on the agent's own clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clocks {
    /// The lease may expire elsewhere soon: the last renewal etcd confirmed was sent longer ago
    /// than the lease time less the fencing margin.
    pub fence_due: bool,
    /// How long the running server has left the probe unanswered.
    pub silent_for: Duration,
    /// How long [`behind_leader`] has held with this standby's position unchanged.
    pub stuck_for: Duration,
    /// How long this leader's server has not been a running primary.
    pub down_for: Duration,
    /// A start of the server failed since it last ran, and when the next may be tried.
    pub start_failed: bool,
    pub start_retry_in: Option<Duration>,
    /// How long the server has had the synchronous_standby_names it has now.
    pub names_for: Duration,
}

/// The next step for this node.
pub fn decide(s: &Situation<'_>) -> Decision {
    let decision = match s.probe {
        Probed::Known(local) => decide_known(s, local),
        Probed::Refused { .. } => gone_too_long(s)
            .unwrap_or_else(|| Decision::wait("the server runs but refuses the probe")),
        Probed::Silent { .. } => gone_too_long(s).unwrap_or_else(|| silent(s.clocks.silent_for)),
    };
    if s.paused {
        requests::while_paused(s.probe.local(), decision)
    } else {
        decision
    }
}

/// How long a standby may point at the leader from an older timeline without moving before it
/// is rejoined: its WAL runs past the point where the leader's timeline forked (a standby
/// outside the sync record may have received more of the old primary's WAL than the promoted
/// one), and PostgreSQL refuses the new timeline on every retry. One catching up on the old
/// timeline moves, which restarts the clock.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

/// How long new synchronous_standby_names must have been in force before the sync record drops
/// what they no longer name. A reload reaches each walsender at its own time, and one that has
/// not applied it still releases commits by the old names. A walsender applies a pending reload
/// at the top of every loop iteration, before it reads standby replies (walsender.c,
/// `WalSndLoop`: `ConfigReloadPending` is handled before `ProcessRepliesIfAny`), so this is how
/// long a walsender may go without running at all.
pub const RELOAD_GRACE: Duration = Duration::from_secs(1);

/// This running standby points at the leader, which runs as a primary on a newer timeline than
/// this standby's.
pub fn behind_leader(local: &Local, view: &View) -> Option<Behind> {
    let leader = view.leader.as_ref().filter(|l| !l.mine)?;
    if !(local.server.running && local.server.in_recovery)
        || local.server.follows.as_deref() != Some(leader.node.as_str())
    {
        return None;
    }
    let primary = view
        .members
        .iter()
        .find(|m| m.node == leader.node && m.server.running && !m.server.in_recovery)?;
    match (local.server.timeline, primary.server.timeline) {
        (Some(mine), Some(theirs)) if mine < theirs => Some(Behind::Fork),
        // Starved on the leader's timeline while it has more: the WAL it needs may be gone.
        (Some(mine), Some(theirs))
            if mine == theirs
                && local.starved
                && matches!((local.server.position, primary.server.position), (Some(m), Some(p)) if m < p) =>
        {
            Some(Behind::Starved)
        }
        _ => None,
    }
}

/// Why a standby following the leader cannot catch up as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// It is on an older timeline than the leader's.
    Fork,
    /// It streams nothing while the leader is ahead on its timeline.
    Starved,
}

/// `node`'s member record shows a running primary.
fn runs_as_primary(view: &View, node: &str) -> bool {
    view.members
        .iter()
        .any(|m| m.node == node && m.server.running && !m.server.in_recovery)
}

/// How long a running server may leave the probe unanswered before its agent kills it. A hung
/// primary would otherwise keep the leader key, and every write waiting, for as long as it hangs
/// (its agent renews the lease all along); a hung sync standby holds every commit until the
/// primary's wal_sender_timeout. Long enough that a busy server is not killed for a slow moment:
/// the probe is one trivial query with 1 s to answer, over a superuser's reserved connection.
pub const HUNG_AFTER: Duration = Duration::from_secs(10);

/// The next step for a server that runs but has not answered the probe for `silent_for`: no
/// decision rests on a guess of its state, until it has been silent for [`HUNG_AFTER`].
pub fn silent(silent_for: Duration) -> Decision {
    if silent_for < HUNG_AFTER {
        Decision::wait("the server runs but does not answer SQL")
    } else {
        // No count of seconds: a paused agent logs this reason whenever it changes.
        Decision::new(
            Action::KillHung,
            format!(
                "the server has not answered SQL for {} s or more: killing it so it starts again",
                HUNG_AFTER.as_secs()
            ),
        )
    }
}

/// A leader whose server runs but does not serve (starting up: crash recovery; hung, even
/// past a kill, in uninterruptible I/O) lets go once that lasted the start timeout.
fn gone_too_long(s: &Situation<'_>) -> Option<Decision> {
    let view = s.view?;
    view.leader.as_ref().filter(|l| l.mine)?;
    give_up(s, view)
}

/// The leader's server has not run as a primary for the start timeout and a standby can be
/// elected: the key goes, so that one is (Patroni's `primary_start_timeout`).
fn give_up(s: &Situation<'_>, view: &View) -> Option<Decision> {
    if s.clocks.down_for < s.timing.start_timeout() {
        return None;
    }
    let record = view.sync.as_ref()?;
    election::electable(record, &view.members).ok()?;
    Some(Decision::new(
        Action::Release,
        format!(
            "this node leads but its server has not run for {} s (the start timeout) and a standby can take over",
            s.timing.start_timeout_s
        ),
    ))
}

fn decide_known(s: &Situation<'_>, local: &Local) -> Decision {
    // A standby being promoted may take writes as soon as it finishes.
    let primary_running = local.server.running && (!local.server.in_recovery || local.promoting);
    let Some(view) = s.view else {
        if primary_running && s.clocks.fence_due {
            return Decision::new(
                Action::Fence,
                "etcd does not answer and the leader lease may expire before it renews: stop taking writes",
            );
        }
        return Decision::wait("etcd does not answer");
    };
    if let (Some(theirs), Some(mine)) = (view.system_id, local.system_id) {
        if theirs != mine {
            return Decision::wait(format!(
                "the keys in etcd belong to the cluster with system identifier {theirs} and this node's data to {mine}: another cluster shares this scope (give [ha] scope a name of its own), or etcd holds another cluster's data; nothing is done"
            ));
        }
    }
    let leads = view.leader.as_ref().is_some_and(|l| l.mine);
    if local.promoting && !leads {
        // Killed, it starts again as a standby: the postmaster drops a pending promotion
        // signal when it starts (postmaster.c, `RemovePromoteSignalFiles`).
        return Decision::new(
            Action::Fence,
            "a promotion asked of this standby may still complete, and this node does not lead: stop it first",
        );
    }
    match &view.leader {
        Some(leader) if leader.mine => lead(s, local, view),
        Some(leader) => follow(s, local, view, leader),
        None => leaderless(s, local, view),
    }
}

/// This agent holds the leader key.
fn lead(s: &Situation<'_>, local: &Local, view: &View) -> Decision {
    if let Some(step) = view
        .switchover
        .as_ref()
        .and_then(|request| requests::switchover_step(s.me, local, view, request))
    {
        return step;
    }
    // A server started or promoted now would outlive the lease's fence deadline: the watchdog
    // kills it at once. Wait for a renewal.
    let serving = local.server.running && !local.server.in_recovery;
    if s.clocks.fence_due && !serving {
        return Decision::wait(
            "this node leads, but no renewal of its lease was confirmed in time: no restart or promotion before one is",
        );
    }
    if !local.server.running {
        if let Some(release) = give_up(s, view) {
            return release;
        }
        if let Some(retry) = s.clocks.start_retry_in {
            return Decision::wait(format!(
                "this node leads; its server did not start: next attempt in {} s",
                retry.as_secs().max(1)
            ));
        }
        return Decision::new(
            Action::RestartInPlace,
            "this node leads and its server is down: restarting in place is faster than a failover",
        );
    }
    let desired = SyncRecord::desired(s.spec, s.me);
    if local.server.in_recovery {
        let repoint = s
            .spec
            .nodes
            .iter()
            .map(|n| &n.name)
            .filter(|n| *n != s.me && view.sync.as_ref().is_none_or(|r| &r.leader != *n))
            // A detached standby's own agent points it here, after it publishes that its
            // position may grow again (`Core`): pointed from here, its record would still say
            // it cannot.
            .filter(|n| {
                !view
                    .members
                    .iter()
                    .any(|m| &m.node == *n && m.server.detached)
            })
            .cloned()
            .collect();
        let standby_names = desired.policy.clone();
        // Until this node's standbys hold what its predecessors acknowledged, their records
        // stay in force. Not one of this node's own, from an earlier attempt: it is still in
        // recovery, so it acknowledged nothing under it (and kept in `prior`, it named a
        // former primary that may never answer as a standby again: no election could pass).
        let covering = covering(s.me, local, desired);
        let timeline = promoted_timeline(local, view);
        let sync = match &view.sync {
            Some(record) => {
                let mut rules = election::rules_in_force(record, &view.members);
                rules.retain(|r| r.leader != s.me);
                covering.after(&rules)
            }
            None => covering,
        }
        .on_timeline(Some(timeline));
        let (kind, reason) = requests::promotion_reason(s.me, view);
        return Decision::new(
            Action::Promote {
                sync,
                standby_names,
                repoint,
                timeline,
                kind,
            },
            reason,
        );
    }
    if view.system_id.is_none() && local.system_id.is_some() {
        return Decision::new(
            Action::RecordSystemId,
            "etcd does not say which cluster its keys belong to yet",
        );
    }
    // The newest timeline a promotion recorded, carried in every record this leader writes.
    let newest = view.sync.as_ref().and_then(SyncRecord::newest_timeline);
    let desired = desired.on_timeline(newest);
    match &view.sync {
        Some(record) if record.covers(&desired) => {
            if local.standby_names.as_ref() != Ok(&desired.policy) {
                Decision::new(
                    Action::SetStandbyNames(desired.policy.clone()),
                    "the sync record already allows the policy's standbys",
                )
            } else if *record != desired
                && s.clocks.names_for >= RELOAD_GRACE
                && desired
                    .policy
                    .names
                    .iter()
                    .filter(|m| local.caught_up.contains(m))
                    .count()
                    >= desired.policy.num as usize
            {
                Decision::new(
                    Action::WriteSync(desired),
                    "synchronous_standby_names no longer names the others and the policy's standbys caught up",
                )
            } else {
                Decision::wait("leading")
            }
        }
        // Written before synchronous_standby_names may name anyone new.
        Some(record) if record.leader == s.me => Decision::new(
            Action::WriteSync(record.union(&desired)),
            "the policy names standbys the sync record lacks",
        ),
        _ => Decision::new(
            Action::WriteSync(covering(s.me, local, desired)),
            "no sync record for this leader yet",
        ),
    }
}

/// The record a leader writes first: the policy's, and the names its server has now too, which
/// may be another policy's (an earlier run of this agent set them before the cluster file
/// changed, or before it was stopped mid-promotion). It shrinks to the policy's once the server
/// has the policy's names.
fn covering(me: &str, local: &Local, desired: SyncRecord) -> SyncRecord {
    let running = local.standby_names.as_ref().ok();
    match running.and_then(|policy| SyncRecord::running(me, policy)) {
        Some(current) if current != desired => current.union(&desired),
        _ => desired,
    }
}

/// The timeline a promotion of this node takes: past every number it or the cluster may have
/// used. PostgreSQL would take the one after this server's newest history file, which a leader
/// that promoted and then went silent never sent it: that number would name two histories, and
/// pg_rewind takes two servers on the same timeline number for one history (proto-notes/08-ha.md,
/// rule 9).
fn promoted_timeline(local: &Local, view: &View) -> TimelineId {
    let members = view.members.iter().map(|m| m.server.timeline);
    let records = view.sync.as_ref().and_then(SyncRecord::newest_timeline);
    [local.server.timeline, local.history_top, records]
        .into_iter()
        .chain(members)
        .flatten()
        .max()
        .unwrap_or(TimelineId::new(1))
        .next()
}

/// Another node holds the leader key.
fn follow(s: &Situation<'_>, local: &Local, view: &View, leader: &Leader) -> Decision {
    let name = leader.node.as_str();
    if name == s.me {
        // An earlier run of this agent led: this one carries on rather than letting the key
        // lapse, which would make the standbys detach and elect.
        return Decision::new(
            Action::Reclaim { from: leader.lease },
            "the leader key is from an earlier run of this agent: taking it over",
        );
    }
    if local.server.running && !local.server.in_recovery {
        return Decision::new(
            Action::Fence,
            format!("`{name}` leads: this primary must not take another write"),
        );
    }
    if !local.server.running {
        return if local.standby_signal {
            Decision::new(Action::Start, format!("a stopped standby, `{name}` leads"))
        } else if !runs_as_primary(view, name) {
            // Its WAL is what a rejoin compares this node's against.
            Decision::wait(format!(
                "former primary data; `{name}` leads but its server is no primary yet"
            ))
        } else {
            Decision::new(
                Action::Rejoin {
                    leader: name.to_owned(),
                },
                format!("former primary data while `{name}` leads"),
            )
        };
    }
    if local.server.follows.as_deref() != Some(name) {
        return Decision::new(
            Action::Follow {
                leader: name.to_owned(),
            },
            format!("`{name}` leads"),
        );
    }
    if s.clocks.stuck_for >= STUCK_AFTER {
        let why = if behind_leader(local, view) == Some(Behind::Starved) {
            "receiving nothing while `{name}` is ahead on its timeline: the WAL it needs may be gone"
        } else {
            "following from an older timeline: its WAL runs past `{name}`'s fork"
        };
        return Decision::new(
            Action::Rejoin {
                leader: name.to_owned(),
            },
            format!(
                "{} (not moving for {} s)",
                why.replace("{name}", name),
                s.clocks.stuck_for.as_secs()
            ),
        );
    }
    Decision::wait(format!("following `{name}`"))
}

/// Nobody holds the leader key.
fn leaderless(s: &Situation<'_>, local: &Local, view: &View) -> Decision {
    let Some(record) = &view.sync else {
        // Never led: the primary `up` built claims the key; standbys stay as they are.
        return if local.server.running && !local.server.in_recovery {
            Decision::new(
                Action::TakeLeadership,
                "no leader yet and this node is the primary",
            )
        } else {
            Decision::wait("no leader yet; waiting for the primary's agent")
        };
    };
    // The last leader that may have acknowledged anything: the record's, unless that one never
    // promoted (its record is void), then the one before. Its data holds every acknowledged
    // commit (a primary flushes a commit before it is acknowledged), so it may lead again.
    let rules = election::rules_in_force(record, &view.members);
    let was_leader = rules.first().is_some_and(|r| r.leader == s.me);
    if !local.server.running || !local.server.in_recovery {
        // A primary's data (running, or stopped without standby.signal).
        let primary_data = local.server.running || !local.standby_signal;
        let failing = !local.server.running && s.clocks.start_failed;
        return match (primary_data, was_leader) {
            (true, true) if failing && election::electable(record, &view.members).is_ok() => {
                Decision::wait(
                    "no leader: this node's server does not start, and a standby can be elected",
                )
            }
            (true, true) => Decision::new(
                Action::TakeLeadership,
                "no leader and this node was the last: it holds every acknowledged commit",
            ),
            (true, false) if local.server.running => Decision::new(
                Action::Fence,
                format!(
                    "no leader and the sync record names `{}`: this primary must not take writes",
                    record.leader
                ),
            ),
            (true, false) => Decision::wait(
                "former primary data and no leader: rejoins once a leader is elected",
            ),
            (false, _) => Decision::new(Action::Start, "a stopped standby"),
        };
    }
    if !local.server.detached {
        return Decision::new(
            Action::Detach,
            format!(
                "the leader `{}` lost its lease: stop receiving from it so it cannot acknowledge commits",
                record.leader
            ),
        );
    }
    match election::elect(record, &view.members, view.failover.as_ref()) {
        Ok(best) if best == s.me => Decision::new(
            Action::TakeLeadership,
            "no leader and this node is the most advanced of the sync record's reachable members",
        ),
        Ok(best) => Decision::wait(format!(
            "no leader; `{best}` is the most advanced and should take over"
        )),
        Err(reason) => Decision::wait(format!("no leader; {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::history::ChangeKind;
    use crate::ha::records::{LeaseId, MemberRecord, ServerState};
    use crate::ids::SystemId;
    use crate::ids::TimelineId;
    use crate::sync_policy::SyncPolicy;
    use crate::Lsn;

    fn lsn(v: u64) -> Option<Lsn> {
        Some(Lsn::new(v))
    }

    fn standby(node: &str, at: u64, detached: bool) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            paused: false,
            server: ServerState {
                running: true,
                in_recovery: true,
                timeline: Some(TimelineId::new(1)),
                position: lsn(at),
                detached,
                follows: (!detached).then(|| "pg_master".into()),
                unknown: false,
            },
        }
    }

    fn record(leader: &str, method: &str, num: u32, members: &[&str]) -> SyncRecord {
        SyncRecord::of(leader, method, num, members)
    }

    #[test]
    fn a_silent_server_is_killed_only_after_hung_after_and_never_while_paused() {
        let probe = Probed::Silent {
            standby_signal: false,
        };
        let spec = ClusterSpec::default();
        let at = |silent_for, paused| {
            decide(&Situation {
                me: "pg_master",
                probe: &probe,
                view: None,
                spec: &spec,
                timing: &Timing::default(),
                paused,
                clocks: Clocks {
                    silent_for,
                    ..Clocks::default()
                },
            })
        };
        assert_eq!(
            at(HUNG_AFTER - Duration::from_millis(1), false).action,
            Action::Wait
        );
        let hung = at(HUNG_AFTER, false);
        assert_eq!(hung.action, Action::KillHung);
        assert!(hung.reason.contains("10 s"), "{}", hung.reason);
        let paused = at(HUNG_AFTER * 3, true);
        assert_eq!(paused.action, Action::Wait);
        assert!(paused.reason.starts_with("paused"), "{}", paused.reason);
        // The reason is the same however long it lasts: it is logged when it changes.
        assert_eq!(paused, at(HUNG_AFTER * 4, true));
    }

    fn primary() -> Local {
        Local {
            server: ServerState {
                running: true,
                in_recovery: false,
                timeline: Some(TimelineId::new(1)),
                position: lsn(100),
                detached: true,
                unknown: false,
                follows: None,
            },
            standby_signal: false,
            standby_names: "FIRST 1 (pg_slave, pg_asyncslave)".parse(),
            caught_up: vec!["pg_slave".into(), "pg_asyncslave".into()],
            shutdown_checkpoint: None,
            promoting: false,
            system_id: None,
            history_top: None,
            starved: false,
        }
    }

    fn replica(detached: bool) -> Local {
        Local {
            server: standby("me", 100, detached).server,
            standby_signal: true,
            standby_names: Ok(SyncPolicy::default()),
            caught_up: Vec::new(),
            shutdown_checkpoint: None,
            promoting: false,
            system_id: None,
            history_top: None,
            starved: false,
        }
    }

    fn stopped(standby_signal: bool) -> Local {
        let mut local = replica(true);
        local.server.running = false;
        local.standby_signal = standby_signal;
        local
    }

    fn leader(node: &str, mine: bool) -> Option<Leader> {
        Some(Leader {
            node: node.into(),
            lease: LeaseId(if mine { 1 } else { 2 }),
            mine,
        })
    }

    fn initial() -> SyncRecord {
        record("pg_master", "FIRST", 1, &["pg_slave", "pg_asyncslave"])
    }

    fn run(me: &str, local: Local, view: Option<View>, fence_due: bool) -> Decision {
        let spec = ClusterSpec::default();
        // A record settled long ago: the grace for a shrink has passed.
        decide(&Situation {
            me,
            probe: &Probed::Known(local),
            view: view.as_ref(),
            spec: &spec,
            timing: &Timing::default(),
            paused: false,
            clocks: Clocks {
                fence_due,
                names_for: RELOAD_GRACE,
                ..Clocks::default()
            },
        })
    }

    fn view(
        leader: Option<Leader>,
        members: Vec<MemberRecord>,
        sync: Option<SyncRecord>,
    ) -> Option<View> {
        Some(View {
            leader,
            members,
            sync,
            ..View::default()
        })
    }

    #[test]
    fn a_healthy_leader_only_renews() {
        let d = run(
            "pg_master",
            primary(),
            view(leader("pg_master", true), vec![], Some(initial())),
            false,
        );
        assert_eq!(d.action, Action::Wait, "{}", d.reason);
    }

    #[test]
    fn the_running_names_compare_with_the_policy_as_values() {
        let at = |names: &str| {
            let mut local = primary();
            local.standby_names = names.parse();
            let v = view(leader("pg_master", true), vec![], Some(initial()));
            run("pg_master", local, v, false).action
        };
        // Another spelling of the same policy is left as it is.
        for same in [
            "FIRST 1 (pg_slave, pg_asyncslave)",
            "pg_slave, pg_asyncslave",
            "first 1 (pg_slave, \"pg_asyncslave\")",
        ] {
            assert_eq!(at(same), Action::Wait, "{same}");
        }
        let policy = initial().policy;
        for other in [
            "ANY 1 (pg_slave, pg_asyncslave)",
            "pg_asyncslave, pg_slave",
            "",
            "a;b",
        ] {
            assert_eq!(
                at(other),
                Action::SetStandbyNames(policy.clone()),
                "{other}"
            );
        }
    }

    #[test]
    fn the_primary_up_built_claims_the_key_and_records_its_sync_standbys() {
        let d = run("pg_master", primary(), view(None, vec![], None), false);
        assert_eq!(d.action, Action::TakeLeadership);
        let d = run(
            "pg_master",
            primary(),
            view(leader("pg_master", true), vec![], None),
            false,
        );
        assert_eq!(d.action, Action::WriteSync(initial()));
        // Standbys do not detach from a primary that never led.
        let d = run("pg_slave", replica(false), view(None, vec![], None), false);
        assert_eq!(d.action, Action::Wait);
    }

    #[test]
    fn the_record_grows_before_the_standby_names_and_shrinks_after() {
        let mut spec = ClusterSpec::default();
        spec.sync.policy.names = vec!["pg_slave".into(), "pg_asyncslave".into()];
        let narrow = record("pg_master", "FIRST", 1, &["pg_slave"]);
        let mut local = primary();
        local.standby_names = "FIRST 1 (pg_slave)".parse();
        let wide = initial();
        // The record lacks pg_asyncslave: grow it first.
        let d = run(
            "pg_master",
            local.clone(),
            view(leader("pg_master", true), vec![], Some(narrow.clone())),
            false,
        );
        assert_eq!(d.action, Action::WriteSync(narrow.union(&wide)));
        // Then the names.
        let d = run(
            "pg_master",
            local.clone(),
            view(leader("pg_master", true), vec![], Some(wide.clone())),
            false,
        );
        assert_eq!(
            d.action,
            Action::SetStandbyNames("FIRST 1 (pg_slave, pg_asyncslave)".parse().unwrap())
        );
        // A wider record than the policy shrinks only once the policy's standbys caught up.
        let wider = record(
            "pg_master",
            "FIRST",
            1,
            &["pg_slave", "pg_asyncslave", "pg_old"],
        );
        let mut behind = primary();
        behind.caught_up.clear();
        let d = run(
            "pg_master",
            behind,
            view(leader("pg_master", true), vec![], Some(wider.clone())),
            false,
        );
        assert_eq!(d.action, Action::Wait);
        let d = run(
            "pg_master",
            primary(),
            view(leader("pg_master", true), vec![], Some(wider)),
            false,
        );
        assert_eq!(d.action, Action::WriteSync(wide));
    }

    #[test]
    fn a_leader_whose_server_died_restarts_it_in_place() {
        let d = run(
            "pg_master",
            stopped(false),
            view(leader("pg_master", true), vec![], Some(initial())),
            false,
        );
        assert_eq!(d.action, Action::RestartInPlace);
    }

    #[test]
    fn a_standby_that_won_the_key_records_detaches_the_others_and_promotes() {
        let d = run(
            "pg_slave",
            replica(true),
            view(leader("pg_slave", true), vec![], Some(initial())),
            false,
        );
        let Action::Promote {
            sync,
            standby_names,
            repoint,
            timeline,
            kind,
        } = d.action
        else {
            panic!("{d:?}")
        };
        // The old leader's record stays in force until the new one's standbys caught up.
        assert_eq!(timeline, TimelineId::new(2));
        assert_eq!(kind, ChangeKind::Failover);
        assert_eq!(
            sync,
            record("pg_slave", "FIRST", 1, &["pg_master", "pg_asyncslave"])
                .after(&[&initial()])
                .on_timeline(Some(timeline))
        );
        assert_eq!(
            standby_names.to_string(),
            "FIRST 1 (pg_master, pg_asyncslave)"
        );
        // Not the old primary: its own agent fences it.
        assert_eq!(repoint, vec!["pg_asyncslave".to_string()]);
    }

    /// A leader that promoted to timeline 2 and went silent sent its history file nowhere: a
    /// standby on timeline 1 elected after it must not name its own timeline 2 as well.
    #[test]
    fn a_promotion_takes_a_timeline_past_every_one_recorded() {
        let promoted_before = initial().on_timeline(Some(TimelineId::new(2)));
        let d = run(
            "pg_slave",
            replica(true),
            view(leader("pg_slave", true), vec![], Some(promoted_before)),
            false,
        );
        let Action::Promote { sync, timeline, .. } = d.action else {
            panic!("{d:?}")
        };
        assert_eq!(timeline, TimelineId::new(3));
        assert_eq!(sync.timeline, Some(timeline));
        // A placeholder of an earlier attempt counts as PostgreSQL counts it.
        let mut local = replica(true);
        local.history_top = Some(TimelineId::new(4));
        let d = run(
            "pg_slave",
            local,
            view(leader("pg_slave", true), vec![], Some(initial())),
            false,
        );
        assert!(
            matches!(d.action, Action::Promote { timeline, .. } if timeline == TimelineId::new(5))
        );
    }

    #[test]
    fn under_another_leader_a_primary_is_fenced_and_comes_back_as_a_standby() {
        let mut promoted = standby("pg_slave", 150, true);
        promoted.server.in_recovery = false;
        let v = || view(leader("pg_slave", false), vec![promoted.clone()], None);
        assert_eq!(
            run("pg_master", primary(), v(), false).action,
            Action::Fence
        );
        assert_eq!(
            run("pg_master", stopped(false), v(), false).action,
            Action::Rejoin {
                leader: "pg_slave".into()
            }
        );
        // Not before the leader's server runs as a primary: its WAL is what a rejoin reads.
        let unpromoted = view(leader("pg_slave", false), vec![], None);
        assert_eq!(
            run("pg_master", stopped(false), unpromoted, false).action,
            Action::Wait
        );
        assert_eq!(
            run("pg_master", stopped(true), v(), false).action,
            Action::Start
        );
        assert_eq!(
            run("pg_master", replica(true), v(), false).action,
            Action::Follow {
                leader: "pg_slave".into()
            }
        );
        let mut following = replica(false);
        following.server.follows = Some("pg_slave".into());
        assert_eq!(run("pg_master", following, v(), false).action, Action::Wait);
    }

    #[test]
    fn a_standby_stuck_on_an_older_timeline_than_the_leader_is_rejoined() {
        let mut new_leader = standby("pg_slave", 150, true);
        new_leader.server.in_recovery = false;
        new_leader.server.timeline = Some(TimelineId::new(2));
        let v = view(leader("pg_slave", false), vec![new_leader.clone()], None).unwrap();
        let mut me = replica(false);
        me.server.follows = Some("pg_slave".into());
        assert_eq!(behind_leader(&me, &v), Some(Behind::Fork));
        let spec = ClusterSpec::default();
        let at_with = |probe: &Probed, stuck_for| {
            decide(&Situation {
                me: "pg_asyncslave",
                probe,
                view: Some(&v),
                spec: &spec,
                timing: &Timing::default(),
                paused: false,
                clocks: Clocks {
                    stuck_for,
                    ..Clocks::default()
                },
            })
        };
        let probe = Probed::Known(me.clone());
        let at = |stuck_for| at_with(&probe, stuck_for);
        assert_eq!(
            at(STUCK_AFTER - Duration::from_secs(1)).action,
            Action::Wait
        );
        let d = at(STUCK_AFTER);
        assert_eq!(
            d.action,
            Action::Rejoin {
                leader: "pg_slave".into()
            }
        );
        assert!(d.reason.contains("past `pg_slave`'s fork"), "{}", d.reason);

        // Not behind: on the leader's timeline, following another node, or a leader that is
        // no primary yet.
        let mut same = me.clone();
        same.server.timeline = Some(TimelineId::new(2));
        assert_eq!(None, behind_leader(&same, &v));
        // On the leader's timeline, starved (no receiver, all replayed) while the leader is
        // ahead: the WAL it needs may be gone; level with it, it just waits for more.
        let mut starved = same.clone();
        starved.starved = true;
        assert_eq!(behind_leader(&starved, &v), Some(Behind::Starved));
        let d = at_with(&Probed::Known(starved.clone()), STUCK_AFTER);
        assert!(matches!(d.action, Action::Rejoin { .. }));
        assert!(
            d.reason.contains("the WAL it needs may be gone"),
            "{}",
            d.reason
        );
        starved.server.position = new_leader.server.position;
        assert_eq!(None, behind_leader(&starved, &v));
        let mut elsewhere = me.clone();
        elsewhere.server.follows = Some("pg_master".into());
        assert_eq!(None, behind_leader(&elsewhere, &v));
        let unpromoted = view(
            leader("pg_slave", false),
            vec![standby("pg_slave", 150, true)],
            None,
        )
        .unwrap();
        assert_eq!(None, behind_leader(&me, &unpromoted));
    }

    /// D9: a restarted agent carries its earlier run's key on rather than letting it lapse.
    #[test]
    fn a_key_left_by_an_earlier_run_of_this_agent_is_taken_over() {
        let d = run(
            "pg_master",
            primary(),
            view(leader("pg_master", false), vec![], Some(initial())),
            false,
        );
        assert_eq!(d.action, Action::Reclaim { from: LeaseId(2) });
    }

    /// D8: keys of another cluster in the same scope are never acted on.
    #[test]
    fn keys_of_another_cluster_are_left_alone() {
        let mut local = primary();
        local.system_id = Some(SystemId::new(7));
        let mut v = view(leader("pg_slave", false), vec![], Some(initial())).unwrap();
        v.system_id = Some(SystemId::new(8));
        let d = run("pg_master", local.clone(), Some(v.clone()), false);
        assert_eq!(d.action, Action::Wait);
        assert!(d.reason.contains("another cluster"), "{}", d.reason);
        v.system_id = Some(SystemId::new(7));
        assert_eq!(
            run("pg_master", local, Some(v), false).action,
            Action::Fence
        );
    }

    /// D4: a leader whose server does not start tries again later, then lets a standby take
    /// over once the start timeout passed and one can be elected.
    #[test]
    fn a_leader_whose_server_does_not_start_gives_the_key_up_after_the_start_timeout() {
        let spec = ClusterSpec::default();
        let timing = Timing::default();
        let streaming = vec![
            standby("pg_slave", 100, false),
            standby("pg_asyncslave", 90, false),
        ];
        let v = view(leader("pg_master", true), streaming, Some(initial())).unwrap();
        let probe = Probed::Known(stopped(false));
        let at = |clocks: Clocks, v: &View| {
            decide(&Situation {
                me: "pg_master",
                probe: &probe,
                view: Some(v),
                spec: &spec,
                timing: &timing,
                paused: false,
                clocks,
            })
            .action
        };
        let failed = Clocks {
            start_failed: true,
            start_retry_in: Some(Duration::from_secs(2)),
            down_for: Duration::from_secs(5),
            ..Clocks::default()
        };
        assert_eq!(at(failed, &v), Action::Wait);
        let retry = Clocks {
            start_retry_in: None,
            ..failed
        };
        assert_eq!(at(retry, &v), Action::RestartInPlace);
        let timed_out = Clocks {
            down_for: timing.start_timeout(),
            ..failed
        };
        assert_eq!(at(timed_out, &v), Action::Release);
        // Not when nobody could be elected without risking a commit: it keeps trying.
        let mut alone = v.clone();
        alone.members.pop();
        assert_eq!(at(timed_out, &alone), Action::Wait);
        // Released, it does not take the key back while a standby can be elected.
        let mut released = v.clone();
        released.leader = None;
        assert_eq!(at(timed_out, &released), Action::Wait);
        let mut up = timed_out;
        up.start_failed = false;
        assert_eq!(at(up, &released), Action::TakeLeadership);
    }

    /// D5: the record drops names only once the new synchronous_standby_names have been in
    /// force long enough for every walsender to have applied them.
    #[test]
    fn the_record_shrinks_only_after_the_reload_grace() {
        let spec = ClusterSpec::default();
        let wider = record(
            "pg_master",
            "FIRST",
            1,
            &["pg_slave", "pg_asyncslave", "pg_old"],
        );
        let v = view(leader("pg_master", true), vec![], Some(wider)).unwrap();
        let probe = Probed::Known(primary());
        let at = |names_for| {
            decide(&Situation {
                me: "pg_master",
                probe: &probe,
                view: Some(&v),
                spec: &spec,
                timing: &Timing::default(),
                paused: false,
                clocks: Clocks {
                    names_for,
                    ..Clocks::default()
                },
            })
            .action
        };
        assert_eq!(at(RELOAD_GRACE - Duration::from_millis(1)), Action::Wait);
        assert_eq!(at(RELOAD_GRACE), Action::WriteSync(initial()));
    }

    #[test]
    fn without_etcd_a_primary_is_fenced_only_once_its_lease_may_expire() {
        assert_eq!(
            run("pg_master", primary(), None, false).action,
            Action::Wait
        );
        assert_eq!(
            run("pg_master", primary(), None, true).action,
            Action::Fence
        );
        // A standby acknowledges nothing alone: it waits.
        assert_eq!(
            run("pg_slave", replica(false), None, true).action,
            Action::Wait
        );
    }

    #[test]
    fn on_leader_loss_standbys_detach_then_the_most_advanced_member_takes_over() {
        let members = |a: bool, b: bool| {
            vec![
                standby("pg_slave", 200, a),
                standby("pg_asyncslave", 300, b),
            ]
        };
        assert_eq!(
            run(
                "pg_slave",
                replica(false),
                view(None, members(false, false), Some(initial())),
                false
            )
            .action,
            Action::Detach
        );
        // pg_asyncslave has not detached: its position may still move.
        let d = run(
            "pg_slave",
            replica(true),
            view(None, members(true, false), Some(initial())),
            false,
        );
        assert_eq!(d.action, Action::Wait);
        assert!(d.reason.contains("pg_asyncslave to detach"), "{}", d.reason);
        // Both detached: the async-looking one is further, and it is a record member.
        let d = run(
            "pg_asyncslave",
            replica(true),
            view(None, members(true, true), Some(initial())),
            false,
        );
        assert_eq!(d.action, Action::TakeLeadership, "{}", d.reason);
        let d = run(
            "pg_slave",
            replica(true),
            view(None, members(true, true), Some(initial())),
            false,
        );
        assert_eq!(d.action, Action::Wait);
        assert!(
            d.reason.contains("`pg_asyncslave` is the most advanced"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn first_one_of_two_needs_both_members_because_either_may_have_acknowledged_alone() {
        let only_slave = vec![standby("pg_slave", 200, true)];
        let d = run(
            "pg_slave",
            replica(true),
            view(None, only_slave, Some(initial())),
            false,
        );
        assert_eq!(d.action, Action::Wait);
        assert!(
            d.reason
                .contains("1 of the sync record's 2 members answer and 2 are needed"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn leaderless_primaries_and_stopped_nodes() {
        let v = |members| view(None, members, Some(initial()));
        // The last leader (lease lost, e.g. a frozen agent that resumed) claims the key back.
        assert_eq!(
            run("pg_master", primary(), v(vec![]), false).action,
            Action::TakeLeadership
        );
        assert_eq!(
            run("pg_master", stopped(false), v(vec![]), false).action,
            Action::TakeLeadership
        );
        // Another primary than the recorded one is fenced.
        assert_eq!(
            run("pg_slave", primary(), v(vec![]), false).action,
            Action::Fence
        );
        // A stopped standby starts; a stopped former primary waits for a leader to rejoin.
        assert_eq!(
            run("pg_slave", stopped(true), v(vec![]), false).action,
            Action::Start
        );
        assert_eq!(
            run("pg_slave", stopped(false), v(vec![]), false).action,
            Action::Wait
        );
    }

    /// A promotion an earlier run of the agent asked for outlives it: the standby is a primary
    /// from any moment on, so a node that does not lead stops it; the leader carries it on.
    #[test]
    fn a_pending_promotion_is_stopped_unless_this_node_leads() {
        let promoting = Local {
            promoting: true,
            ..replica(false)
        };
        assert!(Probed::Known(promoting.clone()).may_write());
        for v in [
            view(leader("pg_slave", false), vec![], Some(initial())),
            view(None, vec![], Some(initial())),
        ] {
            assert_eq!(run("me", promoting.clone(), v, false).action, Action::Fence);
        }
        let d = run("me", promoting.clone(), None, true);
        assert_eq!(d.action, Action::Fence, "{}", d.reason);
        let d = run(
            "me",
            promoting,
            view(leader("me", true), vec![], Some(initial())),
            false,
        );
        assert!(matches!(d.action, Action::Promote { .. }), "{}", d.reason);
    }

    /// A new leader points only standbys that did not detach: a detached one's agent first
    /// publishes that its position may grow again.
    #[test]
    fn a_new_leader_repoints_no_detached_standby() {
        let members = vec![
            standby("pg_slave", 100, true),
            standby("pg_asyncslave", 90, false),
        ];
        let d = run(
            "me",
            replica(true),
            view(leader("me", true), members, Some(initial())),
            false,
        );
        let Action::Promote { repoint, .. } = d.action else {
            panic!("{}", d.reason)
        };
        assert!(!repoint.contains(&"pg_slave".to_owned()), "{repoint:?}");
        assert!(repoint.contains(&"pg_asyncslave".to_owned()), "{repoint:?}");
    }
}
