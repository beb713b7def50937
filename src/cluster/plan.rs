//! What a role change must do, decided from what the nodes report: which standby to promote,
//! which standbys hold WAL past it, who re-points and who rejoins, and how a former primary
//! comes back (follow, pg_rewind or re-clone).
//!
//! Pure: no server, no file, no `Cluster`. The manual commands (`failover`, `switchover`,
//! `rejoin` in `role`) and the HA agent feed it the same plain data (probes, the sync states
//! pg_stat_replication shows, a stopped node's pg_control and the primary's timeline history)
//! and carry out the plan it returns.

use serde::{Deserialize, Serialize};

use super::topology::ControlFile;
use crate::ids::{SystemId, TimelineId};
use crate::lsn::Lsn;

/// How far a node is, as it reports itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProbe {
    pub name: String,
    pub reachable: bool,
    pub in_recovery: Option<bool>,
    /// The timeline a primary writes, or a standby receives (its last restartpoint's when no
    /// WAL receiver runs).
    pub timeline: Option<TimelineId>,
    /// Received and flushed (standby) or flushed (primary).
    pub received_lsn: Option<Lsn>,
    pub replayed_lsn: Option<Lsn>,
}

impl NodeProbe {
    /// A node that did not answer.
    pub fn unreachable(name: &str) -> NodeProbe {
        NodeProbe {
            name: name.to_owned(),
            reachable: false,
            in_recovery: None,
            timeline: None,
            received_lsn: None,
            replayed_lsn: None,
        }
    }

    /// The furthest WAL position this node holds.
    pub fn position(&self) -> Option<Lsn> {
        self.received_lsn.max(self.replayed_lsn)
    }
}

/// `failover --max-lag`'s default: replaying 64 MB takes about a second here.
pub const DEFAULT_MAX_LAG: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverOptions {
    pub to: Option<String>,
    /// Promote the given target without letting it catch up with the standbys that hold more
    /// WAL (those are past the fork and are rejoined), whatever its lag.
    pub force: bool,
    /// Rejoin the standbys `force` leaves past the fork with pg_rewind where it can.
    pub rewind: bool,
    /// Bytes of WAL the target may have left to replay (against the newest any node reports)
    /// before it is refused without `force`: promotion waits for that replay.
    pub max_lag: u64,
    pub dry_run: bool,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            to: None,
            force: false,
            rewind: false,
            max_lag: DEFAULT_MAX_LAG,
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinOptions {
    /// Try pg_rewind before a re-clone when the node's WAL runs past the fork.
    pub rewind: bool,
    pub dry_run: bool,
    /// The agents own the primary's synchronous_standby_names (they change it only after the
    /// sync record allows it): start the node and leave the primary as it is.
    #[serde(default)]
    pub agents: bool,
}

/// Why a role change is refused before anything changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no standby answers: there is nothing to promote")]
    NoStandby,
    #[error("`{0}` is not a standby of this cluster")]
    NotAStandby(String),
    #[error("`{0}` does not answer as a standby; it cannot be promoted")]
    TargetDown(String),
    #[error(
        "`{target}` has {lag} bytes of WAL left to replay, over the --max-lag limit of {max_lag}: promoting it would wait \
         for that replay; let it catch up and retry, choose another standby with --to, raise --max-lag, or add --force"
    )]
    TooFarBehind {
        target: String,
        lag: u64,
        max_lag: u64,
    },
    #[error("`{0}` is already the primary")]
    AlreadyPrimary(String),
    #[error("the primary `{primary}` does not answer: a switchover needs it; use `pgrepl failover --to {to}`")]
    PrimaryDown { primary: String, to: String },
    #[error("`{to}` is not streaming from `{primary}`; a switchover would lose its WAL")]
    NotStreaming { to: String, primary: String },
    #[error("`{0}` is the primary; rejoin brings back a former primary")]
    RejoinPrimary(String),
    #[error(
        "`{0}` is the primary; {1} rebuilds a standby (switch over first to rebuild this node)"
    )]
    RebuildPrimary(String, &'static str),
    #[error("`{0}` streams from the primary: a {1} would copy for nothing; give --force to rebuild it anyway")]
    RebuildStreaming(String, &'static str),
}

/// A standby holding WAL past the failover target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ahead {
    pub name: String,
    pub position: Lsn,
    /// How far past the target.
    pub bytes: u64,
}

/// What a failover does once the primary is fenced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverPlan {
    pub old_primary: String,
    pub target: String,
    pub target_position: Option<Lsn>,
    /// WAL the target has yet to replay against the newest position any node reports.
    pub replay_lag: u64,
    /// The standbys holding more WAL than the target, most advanced first.
    pub ahead: Vec<Ahead>,
    /// Without `force`: the most advanced standby the target first catches up from.
    pub catch_up_from: Option<Ahead>,
    /// With `force`: the standbys left past the fork, rejoined after the promotion.
    pub rejoin: Vec<String>,
    /// The other standbys, re-pointed at the target (the old primary is not among them).
    pub repoint: Vec<String>,
}

impl FailoverPlan {
    /// Refuses a target whose replay would hold the promotion up, unless `force`.
    pub fn check_lag(&self, options: &FailoverOptions) -> Result<(), PlanError> {
        if self.replay_lag > options.max_lag && !options.force {
            return Err(PlanError::TooFarBehind {
                target: self.target.clone(),
                lag: self.replay_lag,
                max_lag: options.max_lag,
            });
        }
        Ok(())
    }
}

/// Plans a failover away from `primary`: the target is the one asked for or the most advanced
/// reachable standby. `probes` holds one probe per node of the cluster, in the cluster's order.
pub fn plan_failover(
    primary: &str,
    probes: &[NodeProbe],
    options: &FailoverOptions,
) -> Result<FailoverPlan, PlanError> {
    let candidates: Vec<&NodeProbe> = probes
        .iter()
        .filter(|p| p.name != primary && p.reachable && p.in_recovery == Some(true))
        .collect();
    // Timeline first: a standby left on an older timeline holds none of the newer one's WAL,
    // however far its own runs (it is past the fork).
    let best = candidates
        .iter()
        .copied()
        .max_by_key(|p| (p.timeline, p.position()))
        .ok_or(PlanError::NoStandby)?;
    let target = match &options.to {
        Some(name) => {
            if name == primary || !probes.iter().any(|p| &p.name == name) {
                return Err(PlanError::NotAStandby(name.clone()));
            }
            candidates
                .iter()
                .copied()
                .find(|p| &p.name == name)
                .ok_or_else(|| PlanError::TargetDown(name.clone()))?
        }
        None => best,
    };
    let at = target.position().unwrap_or_default();
    // Only WAL on the target's timeline is WAL it could catch up on.
    let mut ahead: Vec<Ahead> = candidates
        .iter()
        .filter(|p| p.timeline == target.timeline)
        .map(|p| {
            let position = p.position().unwrap_or_default();
            Ahead {
                name: p.name.clone(),
                position,
                bytes: position.saturating_sub(at),
            }
        })
        .filter(|a| a.bytes > 0)
        .collect();
    ahead.sort_by_key(|a| std::cmp::Reverse(a.bytes));
    let (catch_up_from, rejoin) = if options.force {
        (None, ahead.iter().map(|a| a.name.clone()).collect())
    } else {
        (ahead.first().cloned(), Vec::new())
    };
    let repoint = probes
        .iter()
        .map(|p| &p.name)
        .filter(|n| *n != primary && **n != target.name && !rejoin.contains(*n))
        .cloned()
        .collect();
    Ok(FailoverPlan {
        old_primary: primary.to_owned(),
        target: target.name.clone(),
        target_position: target.position(),
        replay_lag: replay_lag(probes, target),
        ahead,
        catch_up_from,
        rejoin,
        repoint,
    })
}

/// How much WAL `target` has yet to replay against the newest position any node reports.
pub fn replay_lag(probes: &[NodeProbe], target: &NodeProbe) -> u64 {
    let newest = probes
        .iter()
        .filter_map(NodeProbe::position)
        .max()
        .unwrap_or_default();
    newest.saturating_sub(target.replayed_lsn.unwrap_or_default())
}

/// Refuses a switchover to `to` that cannot be lossless: `to` is the primary already, or the
/// primary does not answer (`probes`).
pub fn check_switchover(primary: &str, to: &str, probes: &[NodeProbe]) -> Result<(), PlanError> {
    if to == primary {
        return Err(PlanError::AlreadyPrimary(to.to_owned()));
    }
    if probes.iter().any(|p| p.name == primary && !p.reachable) {
        return Err(PlanError::PrimaryDown {
            primary: primary.to_owned(),
            to: to.to_owned(),
        });
    }
    Ok(())
}

/// Refuses a switchover to a standby the primary does not stream to: `streaming` is
/// `(application_name, sync_state)` of the primary's streaming walsenders.
pub fn check_streams(
    primary: &str,
    to: &str,
    streaming: &[(String, String)],
) -> Result<(), PlanError> {
    if streaming.iter().any(|(name, _)| name == to) {
        Ok(())
    } else {
        Err(PlanError::NotStreaming {
            to: to.to_owned(),
            primary: primary.to_owned(),
        })
    }
}

/// How a node becomes a standby of the current primary again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejoinMethod {
    /// Its WAL ends before the fork: it follows the new timeline as it is.
    Follow,
    /// pg_rewind takes it back to the fork; a re-clone if that fails.
    Rewind,
    /// A fresh base backup replaces its data.
    Reclone,
}

/// The cheapest safe way back for a stopped node: `follows` from [`follows`].
pub fn rejoin_method(has_data: bool, follows: bool, rewind: bool) -> RejoinMethod {
    match (has_data, follows, rewind) {
        (true, true, _) => RejoinMethod::Follow,
        (true, false, true) => RejoinMethod::Rewind,
        _ => RejoinMethod::Reclone,
    }
}

/// What the primary says about itself over a replication session (IDENTIFY_SYSTEM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryIdentity {
    pub system_id: SystemId,
    pub timeline: TimelineId,
}

/// Whether a stopped node (its pg_control) can follow `primary` as it is: it stopped cleanly
/// and all its WAL lies before the point where the primary's timeline forked from the node's.
/// `None` when the answer needs the primary's timeline history file, which the caller then
/// fetches and passes as `history`.
pub fn follows(
    control: &ControlFile,
    primary: PrimaryIdentity,
    history: Option<&str>,
) -> Option<bool> {
    if !control.shut_down_cleanly() || primary.system_id != control.system_identifier {
        return Some(false);
    }
    if primary.timeline == control.checkpoint_timeline {
        return Some(true);
    }
    // A standby's checkpoint is its last restartpoint, and the WAL it received may run on
    // past it and past the fork; only a primary's shutdown checkpoint ends its WAL.
    if control.state != ControlFile::SHUT_DOWN {
        return Some(false);
    }
    let history = history?;
    Some(
        fork_point(history, control.checkpoint_timeline)
            .is_some_and(|fork| control.checkpoint < fork),
    )
}

/// Where timeline `timeline` ended, from a history file's `parent<TAB>switchpoint<TAB>reason`
/// lines.
pub fn fork_point(history: &str, timeline: TimelineId) -> Option<Lsn> {
    history.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let parent: TimelineId = fields.next()?.parse().ok()?;
        let switchpoint: Lsn = fields.next()?.parse().ok()?;
        (parent == timeline).then_some(switchpoint)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &str, lsn: u64) -> NodeProbe {
        NodeProbe {
            name: name.into(),
            reachable: true,
            in_recovery: Some(true),
            timeline: Some(TimelineId::new(1)),
            received_lsn: Some(Lsn::new(lsn)),
            replayed_lsn: Some(Lsn::new(lsn)),
        }
    }

    fn three() -> Vec<NodeProbe> {
        vec![
            NodeProbe::unreachable("pg_master"),
            probe("pg_slave", 100),
            probe("pg_asyncslave", 5000),
        ]
    }

    #[test]
    fn the_most_advanced_standby_is_chosen_and_a_lagging_one_catches_up() {
        let probes = three();
        let best = plan_failover("pg_master", &probes, &FailoverOptions::default()).unwrap();
        assert_eq!(best.target, "pg_asyncslave");
        assert!(best.ahead.is_empty() && best.catch_up_from.is_none());
        assert_eq!(best.repoint, ["pg_slave"]);
        let to_slave = FailoverOptions {
            to: Some("pg_slave".into()),
            ..FailoverOptions::default()
        };
        let lagging = plan_failover("pg_master", &probes, &to_slave).unwrap();
        assert_eq!(lagging.target, "pg_slave");
        let ahead = Ahead {
            name: "pg_asyncslave".into(),
            position: Lsn::new(5000),
            bytes: 4900,
        };
        assert_eq!(lagging.ahead, std::slice::from_ref(&ahead));
        assert_eq!(lagging.catch_up_from, Some(ahead));
        assert!(lagging.rejoin.is_empty());
        assert_eq!(lagging.repoint, ["pg_asyncslave"]);
        let to_primary = FailoverOptions {
            to: Some("pg_master".into()),
            ..FailoverOptions::default()
        };
        assert_eq!(
            plan_failover("pg_master", &probes, &to_primary),
            Err(PlanError::NotAStandby("pg_master".into()))
        );
        assert_eq!(
            plan_failover("pg_master", &[], &FailoverOptions::default()),
            Err(PlanError::NoStandby)
        );
    }

    #[test]
    fn force_leaves_the_standbys_past_the_target_to_rejoin() {
        let options = FailoverOptions {
            to: Some("pg_slave".into()),
            force: true,
            ..FailoverOptions::default()
        };
        let plan = plan_failover("pg_master", &three(), &options).unwrap();
        assert_eq!(plan.catch_up_from, None);
        assert_eq!(plan.rejoin, ["pg_asyncslave"]);
        assert!(plan.repoint.is_empty());
        let mut down = three();
        down[1].reachable = false;
        let options = FailoverOptions {
            to: Some("pg_slave".into()),
            ..FailoverOptions::default()
        };
        assert_eq!(
            plan_failover("pg_master", &down, &options),
            Err(PlanError::TargetDown("pg_slave".into()))
        );
    }

    #[test]
    fn a_target_over_max_lag_is_refused_unless_forced() {
        let mut probes = three();
        probes[1].replayed_lsn = Some(Lsn::new(0));
        let mut options = FailoverOptions {
            to: Some("pg_slave".into()),
            max_lag: 4999,
            ..FailoverOptions::default()
        };
        let plan = plan_failover("pg_master", &probes, &options).unwrap();
        assert_eq!(plan.replay_lag, 5000);
        assert!(matches!(
            plan.check_lag(&options),
            Err(PlanError::TooFarBehind {
                lag: 5000,
                max_lag: 4999,
                ..
            })
        ));
        options.force = true;
        assert_eq!(plan.check_lag(&options), Ok(()));
    }

    #[test]
    fn replay_lag_counts_from_the_newest_position_any_node_reports() {
        let mut primary = probe("pg_master", 9000);
        primary.in_recovery = Some(false);
        let mut lagging = probe("pg_slave", 8000);
        lagging.replayed_lsn = Some(Lsn::new(1000));
        let probes = vec![primary, lagging, probe("pg_asyncslave", 5000)];
        assert_eq!(replay_lag(&probes, &probes[1]), 8000);
        assert_eq!(replay_lag(&probes, &probes[2]), 4000);
        assert_eq!(replay_lag(&probes[1..2], &probes[1]), 7000);
    }

    #[test]
    fn a_switchover_needs_a_live_primary_streaming_to_the_target() {
        let mut probes = three();
        assert_eq!(
            check_switchover("pg_master", "pg_master", &probes),
            Err(PlanError::AlreadyPrimary("pg_master".into()))
        );
        assert!(matches!(
            check_switchover("pg_master", "pg_slave", &probes),
            Err(PlanError::PrimaryDown { .. })
        ));
        probes[0].reachable = true;
        assert_eq!(check_switchover("pg_master", "pg_slave", &probes), Ok(()));
        let streaming = [("pg_slave".to_owned(), "sync".to_owned())];
        assert_eq!(check_streams("pg_master", "pg_slave", &streaming), Ok(()));
        assert!(check_streams("pg_master", "pg_asyncslave", &streaming).is_err());
    }

    #[test]
    fn fork_points_come_from_the_history_file() {
        let history =
            "1\t0/3000150\tno recovery target specified\n\n2\t0/5000000\tat restore point\n";
        assert_eq!(
            fork_point(history, TimelineId::new(1)),
            Some("0/3000150".parse().unwrap())
        );
        assert_eq!(
            fork_point(history, TimelineId::new(2)),
            Some("0/5000000".parse().unwrap())
        );
        assert_eq!(fork_point(history, TimelineId::new(3)), None);
    }

    #[test]
    fn a_node_follows_only_when_its_wal_ends_before_the_fork() {
        let control = ControlFile {
            system_identifier: SystemId::new(7),
            state: ControlFile::SHUT_DOWN,
            checkpoint: "0/3000028".parse().unwrap(),
            redo: "0/3000028".parse().unwrap(),
            checkpoint_timeline: TimelineId::new(1),
        };
        let primary = PrimaryIdentity {
            system_id: SystemId::new(7),
            timeline: TimelineId::new(2),
        };
        assert_eq!(follows(&control, primary, None), None);
        assert_eq!(
            follows(&control, primary, Some("1\t0/3000150\tx\n")),
            Some(true)
        );
        assert_eq!(
            follows(&control, primary, Some("1\t0/3000000\tx\n")),
            Some(false)
        );
        let same_timeline = PrimaryIdentity {
            timeline: TimelineId::new(1),
            ..primary
        };
        assert_eq!(follows(&control, same_timeline, None), Some(true));
        let other_system = PrimaryIdentity {
            system_id: SystemId::new(8),
            ..primary
        };
        assert_eq!(follows(&control, other_system, None), Some(false));
        let standby = ControlFile {
            state: ControlFile::SHUT_DOWN_IN_RECOVERY,
            ..control
        };
        assert_eq!(follows(&standby, primary, None), Some(false));
        let crashed = ControlFile {
            state: 4,
            ..control
        };
        assert_eq!(follows(&crashed, same_timeline, None), Some(false));
        assert_eq!(rejoin_method(true, true, false), RejoinMethod::Follow);
        assert_eq!(rejoin_method(true, false, true), RejoinMethod::Rewind);
        assert_eq!(rejoin_method(false, false, true), RejoinMethod::Reclone);
        assert_eq!(rejoin_method(true, false, false), RejoinMethod::Reclone);
    }
}
