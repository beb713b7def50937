//! The agent's decision, as a pure function: what this node's server is doing and what etcd
//! says, in; one action with its reason, out. No I/O here, so every scenario is a table test.
//!
//! The safety argument these rules implement is in proto-notes/08-ha.md.

use std::time::Duration;

use crate::cluster::plan::{plan_failover, FailoverOptions, NodeProbe};
use crate::cluster::spec::ClusterSpec;
use crate::Lsn;

use super::records::{MemberRecord, PauseRecord, RoleRequest, ServerState, SyncRecord};
use super::requests;

/// This node's server, as the agent just probed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// What the member record publishes.
    pub server: ServerState,
    /// The data directory has standby.signal (a stopped standby, not a former primary).
    pub standby_signal: bool,
    /// synchronous_standby_names in force (a running primary).
    pub standby_names: String,
    /// Standbys whose flushed position has reached the primary's current one.
    pub caught_up: Vec<String>,
    /// A stopped server whose pg_control says it shut down cleanly as a primary: where its
    /// shutdown checkpoint is (a standby holding WAL past it holds every commit).
    pub shutdown_checkpoint: Option<Lsn>,
}

/// The leader key as this agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub node: String,
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
}

/// Everything one decision looks at.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub me: &'a str,
    pub local: Local,
    /// `None`: etcd did not answer.
    pub view: Option<View>,
    /// The lease may expire elsewhere soon: the last renewal etcd confirmed was sent longer ago
    /// than the lease time less the fencing margin.
    pub fence_due: bool,
    /// The cluster file's topology and sync policy.
    pub spec: &'a ClusterSpec,
    /// The pause key exists (or existed when etcd last answered): only bookkeeping in etcd,
    /// nothing on a server.
    pub paused: bool,
    /// How long [`behind_leader`] has held with this standby's position unchanged.
    pub stuck_for: Duration,
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
    /// Kill the server that runs but has not answered for [`HUNG_AFTER`]: it then starts again
    /// as the node's role wants (a leader in place, a standby as a standby).
    KillHung,
    /// Make the former primary a standby of `leader` (follow, pg_rewind or re-clone).
    Rejoin { leader: String },
    /// Point primary_conninfo at `leader`.
    Follow { leader: String },
    /// Empty primary_conninfo: stop receiving from a primary that lost its lease.
    Detach,
    /// Create the leader key under this agent's lease, if nobody holds it.
    TakeLeadership,
    /// This node holds the key and is still a standby: record `sync`, take every other standby
    /// off the old primary (`repoint` them here), set `standby_names`, promote.
    Promote {
        sync: SyncRecord,
        standby_names: String,
        repoint: Vec<String>,
    },
    /// Replace the sync record (the leader's own, guarded by its key).
    WriteSync(SyncRecord),
    /// Set synchronous_standby_names on this primary.
    SetStandbyNames(String),
    /// A switchover away from this leader: fast shutdown, so the target gets every commit.
    StopForSwitchover { to: String },
    /// Put the leader key under `to`'s lease: it promotes as an elected node does.
    HandOver { to: String },
    /// Mark the switchover request refused, saying why (the CLI reports it).
    RefuseSwitchover(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
}

fn decision(action: Action, reason: impl Into<String>) -> Decision {
    Decision {
        action,
        reason: reason.into(),
    }
}

/// The next step for this node.
pub fn decide(s: &Situation<'_>) -> Decision {
    let decision = decide_unpaused(s);
    if s.paused {
        requests::while_paused(&s.local, decision)
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
        decision(Action::Wait, "the server runs but does not answer SQL")
    } else if paused {
        decision(
            Action::Wait,
            // No count of seconds: the reason would change, and be logged, on every tick.
            format!(
                "paused (otherwise KillHung: the server has not answered SQL for {} s or more)",
                HUNG_AFTER.as_secs()
            ),
        )
    } else {
        decision(
            Action::KillHung,
            format!("the server has not answered SQL for {secs} s: killing it so it starts again"),
        )
    }
}

fn decide_unpaused(s: &Situation<'_>) -> Decision {
    let local = &s.local;
    let primary_running = local.server.running && !local.server.in_recovery;
    let Some(view) = &s.view else {
        if primary_running && s.fence_due {
            return decision(
                Action::Fence,
                "etcd does not answer and the leader lease may expire before it renews: stop taking writes",
            );
        }
        return decision(Action::Wait, "etcd does not answer");
    };
    match &view.leader {
        Some(leader) if leader.mine => lead(s, view),
        Some(leader) => follow(s, &leader.node),
        None => leaderless(s, view),
    }
}

/// This agent holds the leader key.
fn lead(s: &Situation<'_>, view: &View) -> Decision {
    let local = &s.local;
    if let Some(step) = view
        .switchover
        .as_ref()
        .and_then(|request| requests::switchover_step(s.me, local, view, request))
    {
        return step;
    }
    if !local.server.running {
        return decision(
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
        return decision(
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
                decision(
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
                decision(
                    Action::WriteSync(desired),
                    "synchronous_standby_names no longer names the others and the policy's standbys caught up",
                )
            } else {
                decision(Action::Wait, "leading")
            }
        }
        // Written before synchronous_standby_names may name anyone new.
        Some(record) if record.leader == s.me => decision(
            Action::WriteSync(record.union(&desired)),
            "the policy names standbys the sync record lacks",
        ),
        _ => decision(
            Action::WriteSync(desired),
            "no sync record for this leader yet",
        ),
    }
}

/// Another node holds the leader key.
fn follow(s: &Situation<'_>, leader: &str) -> Decision {
    let local = &s.local;
    if leader == s.me {
        // A key from this agent's earlier run: it expires with that run's lease.
        return decision(
            Action::Wait,
            "the leader key is from an earlier run of this agent",
        );
    }
    if local.server.running && !local.server.in_recovery {
        return decision(
            Action::Fence,
            format!("`{leader}` leads: this primary must not take another write"),
        );
    }
    if !local.server.running {
        return if local.standby_signal {
            decision(
                Action::Start,
                format!("a stopped standby, `{leader}` leads"),
            )
        } else {
            decision(
                Action::Rejoin {
                    leader: leader.to_owned(),
                },
                format!("former primary data while `{leader}` leads"),
            )
        };
    }
    if local.server.follows.as_deref() != Some(leader) {
        return decision(
            Action::Follow {
                leader: leader.to_owned(),
            },
            format!("`{leader}` leads"),
        );
    }
    if s.stuck_for >= STUCK_AFTER {
        return decision(
            Action::Rejoin {
                leader: leader.to_owned(),
            },
            format!(
                "following `{leader}` from an older timeline without moving for {} s: its WAL runs past `{leader}`'s fork",
                s.stuck_for.as_secs()
            ),
        );
    }
    decision(Action::Wait, format!("following `{leader}`"))
}

/// Nobody holds the leader key.
fn leaderless(s: &Situation<'_>, view: &View) -> Decision {
    let local = &s.local;
    let Some(record) = &view.sync else {
        // Never led: the primary `up` built claims the key; standbys stay as they are.
        return if local.server.running && !local.server.in_recovery {
            decision(
                Action::TakeLeadership,
                "no leader yet and this node is the primary",
            )
        } else {
            decision(
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
            (true, true) => decision(
                Action::TakeLeadership,
                "no leader and this node was the last: it holds every acknowledged commit",
            ),
            (true, false) if local.server.running => decision(
                Action::Fence,
                format!(
                    "no leader and the sync record names `{}`: this primary must not take writes",
                    record.leader
                ),
            ),
            (true, false) => decision(
                Action::Wait,
                "former primary data and no leader: rejoins once a leader is elected",
            ),
            (false, _) => decision(Action::Start, "a stopped standby"),
        };
    }
    if !local.server.detached {
        return decision(
            Action::Detach,
            format!(
                "the leader `{}` lost its lease: stop receiving from it so it cannot acknowledge commits",
                record.leader
            ),
        );
    }
    match requests::elect(record, &view.members, view.failover.as_ref()) {
        Ok(best) if best == s.me => decision(
            Action::TakeLeadership,
            "no leader and this node is the most advanced of the sync record's reachable members",
        ),
        Ok(best) => decision(
            Action::Wait,
            format!("no leader; `{best}` is the most advanced and should take over"),
        ),
        Err(reason) => decision(Action::Wait, format!("no leader; {reason}")),
    }
}

/// Who may be promoted: each acknowledged commit is on at least `num` of the record's `m`
/// members, so any `m - num + 1` of them include one holding it, and on one timeline the most
/// advanced of those holds them all. Only detached members count: their positions are final.
pub fn candidate<'r>(record: &SyncRecord, members: &'r [MemberRecord]) -> Result<&'r str, String> {
    let listed: Vec<&String> = record
        .members
        .iter()
        .filter(|m| **m != record.leader)
        .collect();
    if listed.is_empty() {
        return Err(
            "the sync record lists no standby: no standby can be promoted without loss".into(),
        );
    }
    let live = |name: &String| {
        members
            .iter()
            .find(|r| &r.node == name && r.server.running && r.server.in_recovery)
    };
    let pending: Vec<&str> = listed
        .iter()
        .filter_map(|n| live(n))
        .filter(|r| !r.server.detached)
        .map(|r| r.node.as_str())
        .collect();
    if !pending.is_empty() {
        return Err(format!("waiting for {} to detach", pending.join(", ")));
    }
    let eligible: Vec<&MemberRecord> = listed.iter().filter_map(|n| live(n)).collect();
    let need = (listed.len() + 1).saturating_sub(record.num.max(1) as usize);
    if eligible.len() < need {
        return Err(format!(
            "{} of the sync record's {} members answer and {need} are needed ({} {} of them may hold a commit alone)",
            eligible.len(),
            listed.len(),
            record.method,
            record.num
        ));
    }
    // The manual failover's choice among them: the most advanced. It keeps the last of equals,
    // so the probes go in reverse for a tie to go to the policy's first.
    let probes: Vec<NodeProbe> = eligible
        .iter()
        .rev()
        .map(|r| NodeProbe {
            name: r.node.clone(),
            reachable: true,
            in_recovery: Some(true),
            timeline: r.server.timeline,
            received_lsn: r.server.position,
            replayed_lsn: None,
        })
        .collect();
    let plan = plan_failover(&record.leader, &probes, &FailoverOptions::default())
        .map_err(|e| e.to_string())?;
    Ok(eligible
        .iter()
        .map(|r| r.node.as_str())
        .find(|n| *n == plan.target)
        .expect("the plan's target is one of the probes"))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        }
    }

    fn replica(detached: bool) -> Local {
        Local {
            server: standby("me", 100, detached).server,
            standby_signal: true,
            standby_names: String::new(),
            caught_up: Vec::new(),
            shutdown_checkpoint: None,
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
            local,
            view,
            fence_due,
            spec: &spec,
            paused: false,
            stuck_for: Duration::ZERO,
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
        let v = || view(leader("pg_slave", false), vec![], None);
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
        let at = |stuck_for| {
            decide(&Situation {
                me: "pg_asyncslave",
                local: me.clone(),
                view: Some(v.clone()),
                fence_due: false,
                spec: &spec,
                paused: false,
                stuck_for,
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
    fn quorum_arithmetic_for_any_and_first() {
        let three = ["a", "b", "c"];
        let members = |names: &[(&str, u64)]| -> Vec<MemberRecord> {
            names.iter().map(|(n, at)| standby(n, *at, true)).collect()
        };
        // ANY 2 of 3: two answering members intersect every quorum.
        let any2 = record("p", "ANY", 2, &three);
        assert_eq!(candidate(&any2, &members(&[("a", 5), ("c", 9)])), Ok("c"));
        assert!(candidate(&any2, &members(&[("a", 5)])).is_err());
        // FIRST 3 of 3: every commit is on all, one member is enough.
        let first3 = record("p", "FIRST", 3, &three);
        assert_eq!(candidate(&first3, &members(&[("b", 5)])), Ok("b"));
        // ANY 1 of 3: all three must answer.
        let any1 = record("p", "ANY", 1, &three);
        assert!(candidate(&any1, &members(&[("a", 5), ("b", 6)])).is_err());
        // A tie goes to the policy's order.
        assert_eq!(
            candidate(&any1, &members(&[("c", 5), ("b", 5), ("a", 5)])),
            Ok("a")
        );
        // Non-members never count, however advanced.
        assert!(candidate(&any2, &members(&[("x", 99), ("a", 5)])).is_err());
        // A member whose server is down does not count either.
        let mut down = members(&[("a", 5), ("b", 6)]);
        down[1].server.running = false;
        assert!(candidate(&any2, &down).is_err());
        // No standby recorded: asynchronous replication can lose commits, nobody is promoted.
        assert!(candidate(&record("p", "FIRST", 1, &[]), &members(&[("a", 5)])).is_err());
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
