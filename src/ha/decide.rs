//! The agent's decision, as a pure function: what this node's server is doing and what etcd
//! says, in; one action with its reason, out. No I/O here, so every scenario is a table test.
//!
//! The safety argument these rules implement is in proto-notes/08-ha.md.

use std::time::Duration;

use crate::cluster::spec::ClusterSpec;

use super::election;
use super::model::{Action, Decision, Local, Probed, View};
use super::records::SyncRecord;
use super::requests;

/// Everything one decision looks at.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub me: &'a str,
    pub probe: &'a Probed,
    /// `None`: etcd did not answer.
    pub view: Option<&'a View>,
    /// The cluster file's topology and sync policy.
    pub spec: &'a ClusterSpec,
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
}

/// The next step for this node.
pub fn decide(s: &Situation<'_>) -> Decision {
    let Some(local) = s.probe.local() else {
        return decide_silent(s.clocks.silent_for, s.paused);
    };
    let decision = decide_unpaused(s, local);
    if s.paused {
        requests::while_paused(local, decision)
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

/// This running standby points at the leader, which runs as a primary on a newer timeline than
/// this standby's.
pub fn behind_leader(local: &Local, view: &View) -> bool {
    let Some(leader) = view.leader.as_ref().filter(|l| !l.mine) else {
        return false;
    };
    if !(local.server.running && local.server.in_recovery)
        || local.server.follows.as_deref() != Some(leader.node.as_str())
    {
        return false;
    }
    let leader_timeline = view
        .members
        .iter()
        .find(|m| m.node == leader.node && m.server.running && !m.server.in_recovery)
        .and_then(|m| m.server.timeline);
    matches!((local.server.timeline, leader_timeline), (Some(mine), Some(theirs)) if mine < theirs)
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
pub fn decide_silent(silent_for: Duration, paused: bool) -> Decision {
    let secs = silent_for.as_secs();
    if silent_for < HUNG_AFTER {
        Decision::new(Action::Wait, "the server runs but does not answer SQL")
    } else if paused {
        Decision::new(
            Action::Wait,
            // No count of seconds: the reason would change, and be logged, on every tick.
            format!(
                "paused (otherwise KillHung: the server has not answered SQL for {} s or more)",
                HUNG_AFTER.as_secs()
            ),
        )
    } else {
        Decision::new(
            Action::KillHung,
            format!("the server has not answered SQL for {secs} s: killing it so it starts again"),
        )
    }
}

fn decide_unpaused(s: &Situation<'_>, local: &Local) -> Decision {
    let primary_running = local.server.running && !local.server.in_recovery;
    let Some(view) = s.view else {
        if primary_running && s.clocks.fence_due {
            return Decision::new(
                Action::Fence,
                "etcd does not answer and the leader lease may expire before it renews: stop taking writes",
            );
        }
        return Decision::new(Action::Wait, "etcd does not answer");
    };
    match &view.leader {
        Some(leader) if leader.mine => lead(s, local, view),
        Some(leader) => follow(s, local, view, &leader.node),
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
    if !local.server.running {
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
            .cloned()
            .collect();
        let standby_names = desired.standby_names();
        return Decision::new(
            Action::Promote {
                sync: desired,
                standby_names,
                repoint,
            },
            requests::promotion_reason(s.me, view),
        );
    }
    let desired_names = desired.standby_names();
    match &view.sync {
        Some(record) if record.covers(&desired) => {
            if local.standby_names != desired_names {
                Decision::new(
                    Action::SetStandbyNames(desired_names),
                    "the sync record already allows the policy's standbys",
                )
            } else if *record != desired
                && desired
                    .members
                    .iter()
                    .filter(|m| local.caught_up.contains(m))
                    .count()
                    >= desired.num as usize
            {
                Decision::new(
                    Action::WriteSync(desired),
                    "synchronous_standby_names no longer names the others and the policy's standbys caught up",
                )
            } else {
                Decision::new(Action::Wait, "leading")
            }
        }
        // Written before synchronous_standby_names may name anyone new.
        Some(record) if record.leader == s.me => Decision::new(
            Action::WriteSync(record.union(&desired)),
            "the policy names standbys the sync record lacks",
        ),
        _ => Decision::new(
            Action::WriteSync(desired),
            "no sync record for this leader yet",
        ),
    }
}

/// Another node holds the leader key.
fn follow(s: &Situation<'_>, local: &Local, view: &View, leader: &str) -> Decision {
    if leader == s.me {
        // A key from this agent's earlier run: it expires with that run's lease.
        return Decision::new(
            Action::Wait,
            "the leader key is from an earlier run of this agent",
        );
    }
    if local.server.running && !local.server.in_recovery {
        return Decision::new(
            Action::Fence,
            format!("`{leader}` leads: this primary must not take another write"),
        );
    }
    if !local.server.running {
        return if local.standby_signal {
            Decision::new(
                Action::Start,
                format!("a stopped standby, `{leader}` leads"),
            )
        } else if !runs_as_primary(view, leader) {
            // Its WAL is what a rejoin compares this node's against.
            Decision::wait(format!(
                "former primary data; `{leader}` leads but its server is no primary yet"
            ))
        } else {
            Decision::new(
                Action::Rejoin {
                    leader: leader.to_owned(),
                },
                format!("former primary data while `{leader}` leads"),
            )
        };
    }
    if local.server.follows.as_deref() != Some(leader) {
        return Decision::new(
            Action::Follow {
                leader: leader.to_owned(),
            },
            format!("`{leader}` leads"),
        );
    }
    if s.clocks.stuck_for >= STUCK_AFTER {
        return Decision::new(
            Action::Rejoin {
                leader: leader.to_owned(),
            },
            format!(
                "following `{leader}` from an older timeline without moving for {} s: its WAL runs past `{leader}`'s fork",
                s.clocks.stuck_for.as_secs()
            ),
        );
    }
    Decision::new(Action::Wait, format!("following `{leader}`"))
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
            Decision::new(
                Action::Wait,
                "no leader yet; waiting for the primary's agent",
            )
        };
    };
    let was_leader = record.leader == s.me;
    if !local.server.running || !local.server.in_recovery {
        // A primary's data (running, or stopped without standby.signal).
        let primary_data = local.server.running || !local.standby_signal;
        return match (primary_data, was_leader) {
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
            (true, false) => Decision::new(
                Action::Wait,
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
        Ok(best) => Decision::new(
            Action::Wait,
            format!("no leader; `{best}` is the most advanced and should take over"),
        ),
        Err(reason) => Decision::new(Action::Wait, format!("no leader; {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::model::Leader;
    use crate::ha::records::{LeaseId, MemberRecord, ServerState};
    use crate::ids::TimelineId;
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
            },
        }
    }

    fn record(leader: &str, method: &str, num: u32, members: &[&str]) -> SyncRecord {
        SyncRecord {
            leader: leader.into(),
            method: method.into(),
            num,
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn a_silent_server_is_killed_only_after_hung_after_and_never_while_paused() {
        let short = decide_silent(HUNG_AFTER - Duration::from_millis(1), false);
        assert_eq!(short.action, Action::Wait);
        let hung = decide_silent(HUNG_AFTER, false);
        assert_eq!(hung.action, Action::KillHung);
        assert!(hung.reason.contains("10 s"), "{}", hung.reason);
        let paused = decide_silent(HUNG_AFTER * 3, true);
        assert_eq!(paused.action, Action::Wait);
        assert!(paused.reason.starts_with("paused"), "{}", paused.reason);
    }

    fn primary() -> Local {
        Local {
            server: ServerState {
                running: true,
                in_recovery: false,
                timeline: Some(TimelineId::new(1)),
                position: lsn(100),
                detached: true,
                follows: None,
            },
            standby_signal: false,
            standby_names: "FIRST 1 (pg_slave, pg_asyncslave)".into(),
            caught_up: vec!["pg_slave".into(), "pg_asyncslave".into()],
            shutdown_checkpoint: None,
            system_id: None,
        }
    }

    fn replica(detached: bool) -> Local {
        Local {
            server: standby("me", 100, detached).server,
            standby_signal: true,
            standby_names: String::new(),
            caught_up: Vec::new(),
            shutdown_checkpoint: None,
            system_id: None,
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
        decide(&Situation {
            me,
            probe: &Probed::Known(local),
            view: view.as_ref(),
            spec: &spec,
            paused: false,
            clocks: Clocks {
                fence_due,
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
        spec.sync.standbys = vec!["pg_slave".into(), "pg_asyncslave".into()];
        let narrow = record("pg_master", "FIRST", 1, &["pg_slave"]);
        let mut local = primary();
        local.standby_names = "FIRST 1 (pg_slave)".into();
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
            Action::SetStandbyNames("FIRST 1 (pg_slave, pg_asyncslave)".into())
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
        } = d.action
        else {
            panic!("{d:?}")
        };
        assert_eq!(
            sync,
            record("pg_slave", "FIRST", 1, &["pg_master", "pg_asyncslave"])
        );
        assert_eq!(standby_names, "FIRST 1 (pg_master, pg_asyncslave)");
        // Not the old primary: its own agent fences it.
        assert_eq!(repoint, vec!["pg_asyncslave".to_string()]);
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
        assert!(behind_leader(&me, &v));
        let spec = ClusterSpec::default();
        let probe = Probed::Known(me.clone());
        let at = |stuck_for| {
            decide(&Situation {
                me: "pg_asyncslave",
                probe: &probe,
                view: Some(&v),
                spec: &spec,
                paused: false,
                clocks: Clocks {
                    stuck_for,
                    ..Clocks::default()
                },
            })
        };
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
        assert!(!behind_leader(&same, &v));
        let mut elsewhere = me.clone();
        elsewhere.server.follows = Some("pg_master".into());
        assert!(!behind_leader(&elsewhere, &v));
        let unpromoted = view(
            leader("pg_slave", false),
            vec![standby("pg_slave", 150, true)],
            None,
        )
        .unwrap();
        assert!(!behind_leader(&me, &unpromoted));
    }

    #[test]
    fn a_key_left_by_an_earlier_run_of_this_agent_is_left_to_expire() {
        let d = run(
            "pg_master",
            primary(),
            view(leader("pg_master", false), vec![], Some(initial())),
            false,
        );
        assert_eq!(d.action, Action::Wait);
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
}
