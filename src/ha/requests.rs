//! What people ask of the agents, as pure rules: the pause flag, a switchover the leader's
//! agent carries out, and the failover target an election prefers. `decide` applies them on
//! every agent; `pgrepl switchover` / `failover` run the same checks before writing a request,
//! so the command and the agents refuse for the same reasons.
//!
//! The argument for each rule is in proto-notes/08-ha.md ("Pause", "Switchover and failover
//! through the agents").

use super::election::{as_safe_as, candidate, NoCandidate, NotAsSafe};
use super::model::{Action, Decision, Local, View};
use super::records::{MemberRecord, RoleRequest};
use crate::cluster::history::ChangeKind;

/// Why a standby cannot take over from the leader by a switchover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFit {
    #[error("`{to}` is already the primary")]
    AlreadyPrimary { to: String },
    /// `members`: the sync record of this leader, `None` when it wrote none yet.
    #[error(
        "`{to}` is not in the sync record ({}): only a standby that may hold every acknowledged commit is promoted",
        .members.as_ref().map_or("none for this leader yet".into(), |m| m.join(", "))
    )]
    NotInRecord {
        to: String,
        members: Option<Vec<String>>,
    },
    #[error("`{to}` has no live agent")]
    NoAgent { to: String },
    #[error("`{to}` is not a running standby")]
    NotRunningStandby { to: String },
    #[error("`{to}`'s server does not answer its agent: its state is unknown")]
    Unknown { to: String },
    #[error("`{to}` does not stream from `{from}`")]
    NotStreaming { to: String, from: String },
}

/// Why `pgrepl switchover` through the agents is refused before any request is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchoverRefused {
    #[error("no leader holds the key (an election is under way, or none can be held): `pgrepl status` shows why")]
    NoLeader,
    #[error("the agents are paused: `pgrepl resume` first")]
    Paused,
    #[error("a switchover from `{from}` to `{to}` is under way")]
    UnderWay { from: String, to: String },
    /// The standby asked for.
    #[error(transparent)]
    Target(NotFit),
    /// None asked for, and none of the sync record's standbys fits, each for its reason.
    #[error("no standby can take over from `{from}`: {}", join(.why))]
    NoneFits { from: String, why: Vec<NotFit> },
}

/// Why `pgrepl failover` through the agents is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailoverRefused {
    #[error("`{leader}` leads: the agents fail over by themselves; use switchover to move a healthy primary")]
    LeaderLives { leader: String },
    #[error("the agents are paused and elect nobody: `pgrepl resume` lets them fail over")]
    Paused,
    #[error("no sync record: the cluster never had a leader, and the primary's agent takes the key once it runs")]
    NoSyncRecord,
    #[error("no standby can be elected without risking acknowledged commits: {0}")]
    NoCandidate(NoCandidate),
    /// The node asked for; the election would pick `best`.
    #[error("{why}; the agents elect `{best}`")]
    NotAsSafe { why: NotAsSafe, best: String },
}

fn join(why: &[NotFit]) -> String {
    let why: Vec<String> = why.iter().map(ToString::to_string).collect();
    why.join("; ")
}

/// While paused, nothing touches a server: no election, promotion, restart, rejoin, fencing or
/// re-pointing. A node whose data is a primary's may still take the leader key (bookkeeping:
/// the last leader, or the first primary, claiming what it already is); an election, which only
/// a standby starts, may not. Every other decision becomes a wait that says what it would have
/// been, so the log shows what resuming will do.
pub fn while_paused(local: Option<&Local>, decision: Decision) -> Decision {
    let primary_data = local.is_some_and(|local| {
        if local.server.running {
            !local.server.in_recovery
        } else {
            !local.standby_signal
        }
    });
    match decision.action {
        Action::Wait => decision,
        Action::TakeLeadership | Action::Reclaim { .. } | Action::RecordSystemId
            if primary_data =>
        {
            decision
        }
        action => Decision {
            action: Action::Wait,
            reason: format!("paused (otherwise {action:?}: {})", decision.reason),
        },
    }
}

/// Why `to` cannot take over from the leader `from` (`None`: it can): it must be in the sync
/// record (only those may hold every acknowledged commit), its agent alive, and its server a
/// running standby streaming from `from`.
pub fn switchover_refusal(view: &View, from: &str, to: &str) -> Option<NotFit> {
    let to_owned = || to.to_owned();
    if to == from {
        return Some(NotFit::AlreadyPrimary { to: to_owned() });
    }
    let record = view.sync.as_ref().filter(|r| r.leader == from);
    if !record.is_some_and(|r| r.policy.names.iter().any(|m| m == to)) {
        return Some(NotFit::NotInRecord {
            to: to_owned(),
            members: record.map(|r| r.policy.names.clone()),
        });
    }
    let Some(member) = view.members.iter().find(|m| m.node == to) else {
        return Some(NotFit::NoAgent { to: to_owned() });
    };
    if !(member.server.running && member.server.in_recovery) {
        return Some(NotFit::NotRunningStandby { to: to_owned() });
    }
    if member.server.unknown {
        return Some(NotFit::Unknown { to: to_owned() });
    }
    if member.server.follows.as_deref() != Some(from) {
        return Some(NotFit::NotStreaming {
            to: to_owned(),
            from: from.to_owned(),
        });
    }
    None
}

/// What the leader's agent does with a switchover request, `None` when it does not concern it
/// (already refused, or asked of another leader): the target must have caught up; then a fast
/// shutdown (the walsenders send the shutdown checkpoint before they exit); once the target's
/// published position is past that checkpoint it holds every commit, and the key goes to it.
/// A server that did not stop cleanly falls back to the usual rules (a restart in place).
pub fn switchover_step(
    me: &str,
    local: &Local,
    view: &View,
    request: &RoleRequest,
) -> Option<Decision> {
    if request.refused.is_some() || request.from != me {
        return None;
    }
    let to = &request.to;
    if local.server.running && !local.server.in_recovery {
        if let Some(why) = switchover_refusal(view, me, to) {
            return Some(Decision::new(
                Action::RefuseSwitchover(why.to_string()),
                format!("switchover to `{to}` refused: {why}"),
            ));
        }
        if !local.caught_up.contains(to) {
            return Some(Decision::new(
                Action::Wait,
                format!("switchover to `{to}`: waiting for it to catch up"),
            ));
        }
        return Some(Decision::new(
            Action::StopForSwitchover { to: to.clone() },
            format!("switchover to `{to}`: a fast shutdown sends it every commit"),
        ));
    }
    let checkpoint = local
        .shutdown_checkpoint
        .filter(|_| !local.server.running)?;
    let target = view
        .members
        .iter()
        .find(|m| &m.node == to && m.server.running && m.server.in_recovery)?;
    Some(if target.server.position > Some(checkpoint) {
        Decision::new(
            Action::HandOver { to: to.clone() },
            format!("switchover: `{to}` holds WAL past the shutdown checkpoint {checkpoint}"),
        )
    } else {
        Decision::new(
            Action::Wait,
            format!(
                "switchover: waiting for `{to}` to receive the shutdown checkpoint {checkpoint}"
            ),
        )
    })
}

/// Why a standby that holds the leader key promotes, for the log and the history.
pub fn promotion_reason(me: &str, view: &View) -> (ChangeKind, String) {
    let asked = |r: &Option<RoleRequest>| r.as_ref().is_some_and(|r| r.to == me);
    if asked(&view.switchover) {
        (
            ChangeKind::Switchover,
            "the leader handed this node its key (switchover)".into(),
        )
    } else if asked(&view.failover) {
        (
            ChangeKind::ManualFailover,
            "this node won the leader key, as `pgrepl failover --to` asked".into(),
        )
    } else {
        (
            ChangeKind::Failover,
            "this node won the leader key and is still a standby".into(),
        )
    }
}

/// `pgrepl switchover`: the leader and the target to write in the request (`to`, or a standby
/// that passes the checks: one the primary waits for now first, as Patroni's synchronous mode
/// allows only those; then the most advanced; ties to the policy's order), or why not.
pub fn switchover_target(
    view: &View,
    to: Option<&str>,
) -> Result<(String, String), SwitchoverRefused> {
    let Some(leader) = &view.leader else {
        return Err(SwitchoverRefused::NoLeader);
    };
    if view.pause.is_some() {
        return Err(SwitchoverRefused::Paused);
    }
    if let Some(r) = view.switchover.as_ref().filter(|r| r.refused.is_none()) {
        return Err(SwitchoverRefused::UnderWay {
            from: r.from.clone(),
            to: r.to.clone(),
        });
    }
    let from = leader.node.clone();
    if let Some(to) = to {
        return match switchover_refusal(view, &from, to) {
            Some(why) => Err(SwitchoverRefused::Target(why)),
            None => Ok((from, to.to_owned())),
        };
    }
    let policy = view
        .sync
        .as_ref()
        .map(|r| r.policy.names.clone())
        .unwrap_or_default();
    let mut fit: Vec<&MemberRecord> = policy
        .iter()
        .filter(|n| switchover_refusal(view, &from, n).is_none())
        .filter_map(|n| view.members.iter().find(|m| &m.node == n))
        .collect();
    // The published positions are each agent's last probe, taken at different moments: an
    // asynchronous standby a few bytes ahead in them is noise, a synchronous one holds every
    // acknowledged commit. Stable: among equals the policy's first stays first.
    let synchronous = super::health::synchronous(view);
    fit.sort_by_key(|m| {
        let sync = synchronous.contains(&m.node.as_str());
        std::cmp::Reverse((sync, m.server.position))
    });
    match fit.first() {
        Some(best) => Ok((from, best.node.clone())),
        None => Err(SwitchoverRefused::NoneFits {
            why: policy
                .iter()
                .filter_map(|n| switchover_refusal(view, &from, n))
                .collect(),
            from,
        }),
    }
}

/// `pgrepl failover` with agents: refused while a leader lives or the agents are paused;
/// otherwise the node the election picks, or `to` when it is as safe; or why not.
pub fn failover_target(view: &View, to: Option<&str>) -> Result<String, FailoverRefused> {
    if let Some(leader) = &view.leader {
        return Err(FailoverRefused::LeaderLives {
            leader: leader.node.clone(),
        });
    }
    if view.pause.is_some() {
        return Err(FailoverRefused::Paused);
    }
    let Some(record) = &view.sync else {
        return Err(FailoverRefused::NoSyncRecord);
    };
    let best = candidate(record, &view.members).map_err(FailoverRefused::NoCandidate)?;
    match to {
        None => Ok(best.to_owned()),
        Some(to) if to == best => Ok(best.to_owned()),
        Some(to) => as_safe_as(record, &view.members, to, best)
            .map(|()| to.to_owned())
            .map_err(|why| FailoverRefused::NotAsSafe {
                why,
                best: best.to_owned(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::ClusterSpec;
    use crate::ha::decide::{decide, Clocks, Situation, RELOAD_GRACE};
    use crate::ha::election::elect;
    use crate::ha::model::{Leader, Probed};
    use crate::ha::records::{LeaseId, PauseRecord, ServerState, SyncRecord};
    use crate::ha::Timing;
    use crate::ids::TimelineId;
    use crate::Lsn;

    fn server(running: bool, in_recovery: bool, at: u64, follows: Option<&str>) -> ServerState {
        ServerState {
            running,
            in_recovery,
            timeline: Some(TimelineId::new(1)),
            position: Some(Lsn::new(at)),
            detached: follows.is_none(),
            follows: follows.map(String::from),
            unknown: false,
        }
    }

    fn member(node: &str, server: ServerState) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            paused: false,
            server,
        }
    }

    fn local(server: ServerState, standby_signal: bool) -> Local {
        Local {
            server,
            standby_signal,
            standby_names: "FIRST 1 (pg_slave, pg_asyncslave)".parse(),
            caught_up: vec!["pg_slave".into(), "pg_asyncslave".into()],
            shutdown_checkpoint: None,
            promoting: false,
            system_id: None,
            history_top: None,
            starved: false,
        }
    }

    fn primary() -> Local {
        local(server(true, false, 100, None), false)
    }

    fn record() -> SyncRecord {
        SyncRecord::of("pg_master", "FIRST", 1, &["pg_slave", "pg_asyncslave"])
    }

    fn request(from: &str, to: &str) -> RoleRequest {
        RoleRequest {
            from: from.into(),
            to: to.into(),
            by: "test@host".into(),
            at_unix_ms: 0,
            refused: None,
        }
    }

    fn streaming(at_slave: u64, at_async: u64) -> Vec<MemberRecord> {
        vec![
            member("pg_slave", server(true, true, at_slave, Some("pg_master"))),
            member(
                "pg_asyncslave",
                server(true, true, at_async, Some("pg_master")),
            ),
        ]
    }

    fn led_by(node: &str, mine: bool) -> View {
        View {
            leader: Some(Leader {
                node: node.into(),
                lease: LeaseId(if mine { 1 } else { 2 }),
                mine,
            }),
            members: streaming(100, 90),
            sync: Some(record()),
            ..View::default()
        }
    }

    fn run(me: &str, local: Local, view: View, paused: bool) -> Decision {
        let spec = ClusterSpec::default();
        decide(&Situation {
            me,
            probe: &Probed::Known(local),
            view: Some(&view),
            spec: &spec,
            timing: &Timing::default(),
            paused,
            clocks: Clocks {
                names_for: RELOAD_GRACE,
                ..Clocks::default()
            },
        })
    }

    #[test]
    fn paused_agents_touch_no_server() {
        // A leader whose server died is not restarted; the key stays.
        let mut dead = primary();
        dead.server.running = false;
        let d = run("pg_master", dead, led_by("pg_master", true), true);
        assert_eq!(d.action, Action::Wait);
        assert!(
            d.reason.starts_with("paused (otherwise RestartInPlace"),
            "{}",
            d.reason
        );
        // Standbys neither detach nor elect when the leader is gone.
        let mut leaderless = led_by("pg_master", false);
        leaderless.leader = None;
        let standby = local(server(true, true, 100, Some("pg_master")), true);
        let d = run("pg_slave", standby.clone(), leaderless.clone(), true);
        assert_eq!(d.action, Action::Wait, "{}", d.reason);
        let mut detached = standby;
        detached.server = server(true, true, 200, None);
        leaderless.members = vec![
            member("pg_slave", server(true, true, 200, None)),
            member("pg_asyncslave", server(true, true, 100, None)),
        ];
        assert_eq!(
            run("pg_slave", detached.clone(), leaderless.clone(), false).action,
            Action::TakeLeadership
        );
        assert_eq!(
            run("pg_slave", detached, leaderless.clone(), true).action,
            Action::Wait
        );
        // A second primary is not fenced (no demotion in maintenance, as in Patroni).
        let d = run("pg_slave", primary(), led_by("pg_master", false), true);
        assert_eq!(d.action, Action::Wait);
        // A stopped former primary is not rejoined, a stopped standby not started.
        let mut stopped = primary();
        stopped.server.running = false;
        assert_eq!(
            run(
                "pg_slave",
                stopped.clone(),
                led_by("pg_master", false),
                true
            )
            .action,
            Action::Wait
        );
        stopped.standby_signal = true;
        assert_eq!(
            run("pg_slave", stopped, led_by("pg_master", false), true).action,
            Action::Wait
        );
        // Bookkeeping still happens: the last leader, a running primary, takes its key back.
        assert_eq!(
            run("pg_master", primary(), leaderless, true).action,
            Action::TakeLeadership
        );
        // And no fence when etcd is silent, whatever the lease says.
        let spec = ClusterSpec::default();
        let probe = Probed::Known(primary());
        let silent = |paused| {
            decide(&Situation {
                me: "pg_master",
                probe: &probe,
                view: None,
                spec: &spec,
                timing: &Timing::default(),
                paused,
                clocks: Clocks {
                    fence_due: true,
                    ..Clocks::default()
                },
            })
            .action
        };
        assert_eq!(silent(false), Action::Fence);
        assert_eq!(silent(true), Action::Wait);
    }

    #[test]
    fn a_switchover_stops_the_leader_then_hands_the_key_to_a_target_past_its_checkpoint() {
        let mut view = led_by("pg_master", true);
        view.switchover = Some(request("pg_master", "pg_slave"));
        // Not caught up yet: wait.
        let mut behind = primary();
        behind.caught_up = vec!["pg_asyncslave".into()];
        let d = run("pg_master", behind, view.clone(), false);
        assert_eq!(d.action, Action::Wait);
        assert!(d.reason.contains("catch up"), "{}", d.reason);
        // Caught up: fast shutdown.
        assert_eq!(
            run("pg_master", primary(), view.clone(), false).action,
            Action::StopForSwitchover {
                to: "pg_slave".into()
            }
        );
        // Stopped cleanly at 0/96: the target at 0/64 lacks it; at 0/100 it holds it.
        let mut stopped = primary();
        stopped.server.running = false;
        stopped.shutdown_checkpoint = Some(Lsn::new(96));
        view.members = streaming(96, 90);
        let d = run("pg_master", stopped.clone(), view.clone(), false);
        assert_eq!(d.action, Action::Wait);
        assert!(
            d.reason.contains("shutdown checkpoint 0/60"),
            "{}",
            d.reason
        );
        view.members = streaming(120, 90);
        assert_eq!(
            run("pg_master", stopped.clone(), view.clone(), false).action,
            Action::HandOver {
                to: "pg_slave".into()
            }
        );
        // The target died meanwhile: the old leader restarts in place.
        view.members.remove(0);
        assert_eq!(
            run("pg_master", stopped.clone(), view.clone(), false).action,
            Action::RestartInPlace
        );
        // A crash (no clean checkpoint) is not a switchover either.
        stopped.shutdown_checkpoint = None;
        view.members = streaming(120, 90);
        assert_eq!(
            run("pg_master", stopped, view.clone(), false).action,
            Action::RestartInPlace
        );
        // Paused: nothing.
        assert_eq!(run("pg_master", primary(), view, true).action, Action::Wait);
    }

    #[test]
    fn the_target_promotes_as_an_elected_node_and_the_old_leader_rejoins_it() {
        let mut view = led_by("pg_slave", true);
        view.switchover = Some(request("pg_master", "pg_slave"));
        let standby = local(server(true, true, 120, Some("pg_master")), true);
        let d = run("pg_slave", standby, view.clone(), false);
        assert!(matches!(d.action, Action::Promote { .. }), "{d:?}");
        assert!(d.reason.contains("switchover"), "{}", d.reason);
        // The old leader, stopped cleanly, sees another leader promoted: rejoin it.
        view.leader = Some(Leader {
            node: "pg_slave".into(),
            lease: LeaseId(2),
            mine: false,
        });
        view.members[0].server = server(true, false, 130, None);
        let mut stopped = primary();
        stopped.server.running = false;
        stopped.shutdown_checkpoint = Some(Lsn::new(96));
        assert_eq!(
            run("pg_master", stopped, view, false).action,
            Action::Rejoin {
                leader: "pg_slave".into()
            }
        );
    }

    #[test]
    fn switchover_requests_are_refused_for_the_reasons_the_cli_gives() {
        let view = led_by("pg_master", true);
        assert!(matches!(
            switchover_refusal(&view, "pg_master", "pg_master"),
            Some(NotFit::AlreadyPrimary { .. })
        ));
        let mut outside = view.clone();
        outside.sync.as_mut().unwrap().policy.names = vec!["pg_slave".into()];
        assert!(switchover_refusal(&outside, "pg_master", "pg_asyncslave")
            .unwrap()
            .to_string()
            .contains("not in the sync record (pg_slave)"));
        let mut gone = view.clone();
        gone.members.remove(0);
        assert!(matches!(
            switchover_refusal(&gone, "pg_master", "pg_slave"),
            Some(NotFit::NoAgent { .. })
        ));
        let mut elsewhere = view.clone();
        elsewhere.members[0].server.follows = Some("pg_asyncslave".into());
        assert!(matches!(
            switchover_refusal(&elsewhere, "pg_master", "pg_slave"),
            Some(NotFit::NotStreaming { .. })
        ));
        let mut silent = view.clone();
        silent.members[0].server.unknown = true;
        assert!(switchover_refusal(&silent, "pg_master", "pg_slave")
            .unwrap()
            .to_string()
            .contains("does not answer its agent"));
        assert_eq!(switchover_refusal(&view, "pg_master", "pg_slave"), None);

        // The agent refuses what no longer holds, and marks the request.
        let mut asked = gone;
        asked.switchover = Some(request("pg_master", "pg_slave"));
        let d = run("pg_master", primary(), asked.clone(), false);
        assert!(
            matches!(d.action, Action::RefuseSwitchover(ref why) if why.contains("no live agent")),
            "{d:?}"
        );
        // A refused or stale request is ignored.
        asked.switchover.as_mut().unwrap().refused = Some("x".into());
        assert_eq!(
            run("pg_master", primary(), asked.clone(), false).action,
            Action::Wait
        );
        asked.switchover = Some(request("pg_asyncslave", "pg_slave"));
        assert_eq!(
            run("pg_master", primary(), asked, false).action,
            Action::Wait
        );
    }

    #[test]
    fn the_cli_picks_a_synchronous_then_the_most_advanced_fit_standby_and_refuses_paused_or_busy_clusters(
    ) {
        let mut view = led_by("pg_master", false);
        assert_eq!(
            switchover_target(&view, None),
            Ok(("pg_master".into(), "pg_slave".into()))
        );
        // The synchronous standby first, even a little behind in the published positions.
        view.members = streaming(90, 100);
        assert_eq!(switchover_target(&view, None).unwrap().1, "pg_slave");
        // Among synchronous ones (ANY), the most advanced.
        view.sync = Some(SyncRecord::of(
            "pg_master",
            "ANY",
            1,
            &["pg_slave", "pg_asyncslave"],
        ));
        assert_eq!(switchover_target(&view, None).unwrap().1, "pg_asyncslave");
        // Ties go to the policy's order.
        view.members = streaming(100, 100);
        assert_eq!(switchover_target(&view, None).unwrap().1, "pg_slave");
        assert_eq!(
            switchover_target(&view, Some("pg_asyncslave")).unwrap().1,
            "pg_asyncslave"
        );
        assert!(switchover_target(&view, Some("pg_master")).is_err());
        let mut busy = view.clone();
        busy.switchover = Some(request("pg_master", "pg_slave"));
        assert!(matches!(
            switchover_target(&busy, None),
            Err(SwitchoverRefused::UnderWay { .. })
        ));
        let mut paused = view.clone();
        paused.pause = Some(PauseRecord {
            by: "x".into(),
            at_unix_ms: 0,
        });
        assert_eq!(
            switchover_target(&paused, None),
            Err(SwitchoverRefused::Paused)
        );
        let mut none = view;
        none.leader = None;
        assert!(switchover_target(&none, None).is_err());
        let mut dead = led_by("pg_master", false);
        dead.members.clear();
        let why = switchover_target(&dead, None).unwrap_err().to_string();
        assert!(
            why.contains("`pg_slave` has no live agent; `pg_asyncslave` has no live agent"),
            "{why}"
        );
    }

    #[test]
    fn failover_with_agents_is_refused_under_a_live_leader_and_honours_only_safe_targets() {
        let why = failover_target(&led_by("pg_master", false), None).unwrap_err();
        assert_eq!(
            why.to_string(),
            "`pg_master` leads: the agents fail over by themselves; use switchover to move a healthy primary"
        );
        let mut view = led_by("pg_master", false);
        view.leader = None;
        view.members = vec![
            member("pg_slave", server(true, true, 100, None)),
            member("pg_asyncslave", server(true, true, 100, None)),
        ];
        assert_eq!(failover_target(&view, None).as_deref(), Ok("pg_slave"));
        // A tie: the other one is as safe, and the election then prefers it.
        assert_eq!(
            failover_target(&view, Some("pg_asyncslave")).as_deref(),
            Ok("pg_asyncslave")
        );
        let wanted = request("pg_master", "pg_asyncslave");
        assert_eq!(
            elect(&record(), &view.members, Some(&wanted)),
            Ok("pg_asyncslave")
        );
        assert_eq!(elect(&record(), &view.members, None), Ok("pg_slave"));
        // Behind: refused, and the election ignores such a request.
        view.members[1].server.position = Some(Lsn::new(50));
        let why = failover_target(&view, Some("pg_asyncslave"))
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("is behind `pg_slave`") && why.contains("the agents elect `pg_slave`"),
            "{why}"
        );
        assert_eq!(
            elect(&record(), &view.members, Some(&wanted)),
            Ok("pg_slave")
        );
        // Not electable at all: say why.
        view.members.remove(1);
        let why = failover_target(&view, None).unwrap_err().to_string();
        assert!(
            why.contains("1 of the sync record's 2 members answer"),
            "{why}"
        );
        view.pause = Some(PauseRecord {
            by: "x".into(),
            at_unix_ms: 0,
        });
        assert_eq!(failover_target(&view, None), Err(FailoverRefused::Paused));
    }
}
