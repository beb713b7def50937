//! From what each node said to the report: roles, flags, matching standbys to walsenders, lag
//! in bytes and time, the promotion candidate and the verdict. Pure: no I/O, no clock.
//!
//! # How a standby is matched to its walsender
//! By `application_name`: the name in the standby's own `pg_stat_wal_receiver.conninfo` (its
//! primary_conninfo `application_name`, else the walreceiver's fallback `cluster_name` or
//! `walreceiver`) against `pg_stat_replication.application_name` on every given node. It is the
//! name synchronous replication matches on, so it is the identity that matters; the TCP
//! addresses would be more unique but the standby cannot see its walreceiver's local port. A
//! name used by more than one walsender or standby is reported instead of guessed.
//!
//! # How lag is computed
//! Each stage's position is the further of what the standby last reported to its walsender
//! (`pg_stat_replication`, up to `wal_receiver_status_interval` old) and what the standby says
//! now (`written_lsn`, `pg_last_wal_receive_lsn()`, `pg_last_wal_replay_lsn()`). Lag in bytes
//! is the primary's `pg_current_wal_flush_lsn()` minus that position. Lag in time is 0 when no
//! byte is pending, whatever stale interval the walsender still shows; otherwise it is the
//! walsender's measured `*_lag`. While replay is paused that interval no longer moves, so the
//! replay time lag is reported as unknown (`None`) rather than as a number that looks fine.

use std::collections::HashMap;
use std::time::Duration;

use super::report::{
    NodeReport, Problem, ProblemKind, PromotionCandidate, Report, Role, Stage, StandbyReport,
};
use super::sql::{NodeFacts, SenderRow};
use super::sync::SyncReport;
use crate::ids::{SystemId, TimelineId};
use crate::lsn::Lsn;

/// `IDENTIFY_SYSTEM` and the server version, over the replication connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub system_id: SystemId,
    pub timeline: TimelineId,
    pub lsn: Lsn,
    pub server_version: Option<String>,
}

/// How the heartbeat probe went on one standby.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    Arrived { ms: f64 },
    TimedOut,
    Failed(String),
}

/// What one node said in one round; errors are kept as the text the report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub name: String,
    /// Without the password.
    pub conninfo: String,
    pub identity: Result<Identity, String>,
    pub facts: Result<NodeFacts, String>,
    pub probe: Option<ProbeOutcome>,
}

/// Everything gathered in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub observations: Vec<Observation>,
    /// The probe could not be written on the primary.
    pub probe_error: Option<String>,
    pub round_ms: f64,
}

/// Limits from the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    pub max_lag_bytes: Option<u64>,
    pub max_lag_time: Option<Duration>,
}

/// A standby over a limit.
#[derive(Debug, Clone, PartialEq)]
pub enum Exceeded {
    Bytes {
        standby: String,
        stage: Stage,
        lag: u64,
        limit: u64,
    },
    Time {
        standby: String,
        stage: Stage,
        lag_ms: f64,
        limit_ms: f64,
    },
    /// The heartbeat took longer than the limit; `delay_ms` is `None` when it never arrived.
    Probe {
        standby: String,
        delay_ms: Option<f64>,
        limit_ms: f64,
    },
}

/// The outcome a health check acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Healthy,
    OverThreshold(Vec<Exceeded>),
    /// A node is unreachable or the cluster is misconfigured (see [`Report::problems`]).
    Broken,
}

impl Verdict {
    /// 0 healthy, 1 over a threshold, 2 unreachable or misconfigured.
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Healthy => 0,
            Verdict::OverThreshold(_) => 1,
            Verdict::Broken => 2,
        }
    }
}

impl Report {
    pub fn verdict(&self, limits: &Thresholds) -> Verdict {
        if !self.problems.is_empty() {
            return Verdict::Broken;
        }
        let mut over = Vec::new();
        for standby in &self.standbys {
            let label = standby.label().to_owned();
            let worst_bytes = Stage::ALL
                .into_iter()
                .filter_map(|s| standby.lag_bytes(s).map(|b| (b, s)))
                .max_by_key(|(b, _)| *b);
            if let (Some(limit), Some((lag, stage))) = (limits.max_lag_bytes, worst_bytes) {
                if lag > limit {
                    over.push(Exceeded::Bytes {
                        standby: label.clone(),
                        stage,
                        lag,
                        limit,
                    });
                }
            }
            let Some(limit) = limits.max_lag_time else {
                continue;
            };
            let limit_ms = limit.as_secs_f64() * 1000.0;
            let worst_time = Stage::ALL
                .into_iter()
                .filter_map(|s| standby.lag_ms(s).map(|ms| (ms, s)))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((lag_ms, stage)) = worst_time.filter(|(ms, _)| *ms > limit_ms) {
                over.push(Exceeded::Time {
                    standby: label.clone(),
                    stage,
                    lag_ms,
                    limit_ms,
                });
            }
            // The probe waits at least as long as the limit (see `GatherOptions::probe_wait`),
            // so one that never arrived is over it.
            if standby.probe_timed_out || standby.probe_ms.is_some_and(|ms| ms > limit_ms) {
                over.push(Exceeded::Probe {
                    standby: label,
                    delay_ms: standby.probe_ms,
                    limit_ms,
                });
            }
        }
        if over.is_empty() {
            Verdict::Healthy
        } else {
            Verdict::OverThreshold(over)
        }
    }
}

/// Builds the report of one round.
pub fn analyze(round: &Round) -> Report {
    let nodes = &round.observations;
    let facts = |i: usize| nodes[i].facts.as_ref().ok();
    let identity = |i: usize| nodes[i].identity.as_ref().ok();
    let mut problems = Vec::new();

    let (primaries, primary) = primaries(nodes);
    if primaries.len() > 1 {
        let names: Vec<String> = primaries
            .iter()
            .map(|&i| format!("`{}`", nodes[i].name))
            .collect();
        problems.push(Problem {
            kind: ProblemKind::MultiplePrimaries,
            node: None,
            message: format!(
                "{} are all primaries (not in recovery): a split brain, or nodes of different \
                 clusters",
                names.join(", ")
            ),
        });
    }

    let system_id = primary
        .and_then(|p| identity(p).map(|id| id.system_id))
        .or_else(|| {
            most_common(
                nodes
                    .iter()
                    .filter_map(|o| o.identity.as_ref().ok())
                    .map(|id| id.system_id),
            )
        });
    let primary_timeline = primary.and_then(identity).map(|id| id.timeline);
    let reference = primary.and_then(facts).and_then(|f| f.flush_lsn);

    let node_reports: Vec<NodeReport> = nodes
        .iter()
        .map(|o| node_report(o, system_id, primary_timeline, &mut problems))
        .collect();
    let in_cluster = |i: usize| !node_reports[i].other_system;

    let standbys = match_standbys(nodes, &node_reports, primary, reference, &mut problems);

    if primary.is_none() {
        problems.push(Problem {
            kind: ProblemKind::NoPrimary,
            node: None,
            message: "no primary among the reachable nodes".into(),
        });
    }
    if let Some(error) = &round.probe_error {
        problems.push(Problem {
            kind: ProblemKind::ProbeFailed,
            node: primary.map(|p| nodes[p].name.clone()),
            message: format!("probe: {error}"),
        });
    }
    for o in nodes {
        if let Some(ProbeOutcome::Failed(error)) = &o.probe {
            problems.push(Problem {
                kind: ProblemKind::ProbeFailed,
                node: Some(o.name.clone()),
                message: format!("probe: {error}"),
            });
        }
    }

    let sync = primary.and_then(facts).map(|f| {
        SyncReport::build(
            &f.synchronous_standby_names,
            &f.synchronous_commit,
            &f.senders,
            &f.sync_waiters,
        )
    });
    let promotion_candidate = match primary {
        Some(_) => None,
        None => promotion_candidate(
            (0..nodes.len())
                .filter(|&i| in_cluster(i) && node_reports[i].role == Role::Standby)
                .map(|i| (&nodes[i], &node_reports[i])),
        ),
    };

    Report {
        round_ms: round.round_ms,
        primary: primary.map(|p| nodes[p].name.clone()),
        system_identifier: system_id.map(|id| id.to_string()),
        nodes: node_reports,
        standbys,
        sync,
        promotion_candidate,
        problems,
    }
}

/// The nodes not in recovery, and the one taken as the primary: with several, the one that has
/// moved on furthest (highest timeline, then most WAL), the first given on a tie.
pub(super) fn primaries(nodes: &[Observation]) -> (Vec<usize>, Option<usize>) {
    let facts = |i: usize| nodes[i].facts.as_ref().ok();
    let all: Vec<usize> = (0..nodes.len())
        .filter(|&i| facts(i).is_some_and(|f| !f.in_recovery))
        .collect();
    let chosen = all.iter().copied().max_by_key(|&i| {
        (
            nodes[i].identity.as_ref().ok().map(|id| id.timeline),
            facts(i).and_then(|f| f.flush_lsn),
            std::cmp::Reverse(i),
        )
    });
    (all, chosen)
}

fn node_report(
    o: &Observation,
    system_id: Option<SystemId>,
    primary_timeline: Option<TimelineId>,
    problems: &mut Vec<Problem>,
) -> NodeReport {
    let mut problem = |kind, message: String| {
        problems.push(Problem {
            kind,
            node: Some(o.name.clone()),
            message,
        })
    };
    let facts = o.facts.as_ref().ok();
    let identity = o.identity.as_ref().ok();
    let role = match facts {
        Some(f) if f.in_recovery => Role::Standby,
        Some(_) => Role::Primary,
        None => Role::Unknown,
    };
    let error = match (&o.facts, &o.identity) {
        (Err(e), _) => {
            problem(
                ProblemKind::Unreachable,
                format!("`{}` is unreachable: {e}", o.name),
            );
            Some(e.clone())
        }
        (Ok(_), Err(e)) => {
            problem(
                ProblemKind::ReplicationConnection,
                format!(
                    "`{}` answers SQL but not on a replication connection: {e}",
                    o.name
                ),
            );
            Some(format!("replication connection: {e}"))
        }
        (Ok(_), Ok(_)) => None,
    };
    if facts.is_some_and(|f| !f.can_read_stats) {
        problem(
            ProblemKind::NoStatsPrivilege,
            format!(
                "the role connecting to `{}` cannot read replication statistics: use a superuser \
                 or GRANT pg_read_all_stats TO it",
                o.name
            ),
        );
    }
    let other_system =
        matches!((identity, system_id), (Some(id), Some(sys)) if id.system_id != sys);
    if other_system {
        problem(
            ProblemKind::OtherSystem,
            format!(
                "`{}` is not part of this cluster: system identifier {} instead of {}",
                o.name,
                identity.map_or_else(|| "?".into(), |id| id.system_id.to_string()),
                system_id.map_or_else(|| "?".into(), |s| s.to_string())
            ),
        );
    }
    let older_timeline = role == Role::Standby
        && !other_system
        && matches!((identity, primary_timeline), (Some(id), Some(tl)) if id.timeline < tl);
    if older_timeline {
        problem(
            ProblemKind::OlderTimeline,
            format!(
                "standby `{}` is on timeline {} but the primary is on {}: it has not followed \
                 a promotion",
                o.name,
                identity.map_or(TimelineId::default(), |id| id.timeline),
                primary_timeline.unwrap_or_default()
            ),
        );
    }
    let receiver = facts.and_then(|f| f.receiver.as_ref());
    NodeReport {
        name: o.name.clone(),
        conninfo: o.conninfo.clone(),
        role,
        reachable: facts.is_some(),
        system_identifier: identity.map(|id| id.system_id.to_string()),
        timeline: identity.map(|id| id.timeline),
        lsn: identity.map(|id| id.lsn),
        server_version: facts
            .map(|f| f.server_version.clone())
            .or_else(|| identity.and_then(|id| id.server_version.clone())),
        receiver_status: receiver.and_then(|r| r.status.clone()),
        upstream: receiver.and_then(|r| match (&r.sender_host, r.sender_port) {
            (Some(host), Some(port)) if host.contains(':') => Some(format!("[{host}]:{port}")),
            (Some(host), Some(port)) => Some(format!("{host}:{port}")),
            (Some(host), None) => Some(host.clone()),
            _ => None,
        }),
        replay_paused: facts.and_then(|f| f.replay_paused),
        pending_restart: facts.map(|f| f.pending_restart.clone()).unwrap_or_default(),
        other_system,
        older_timeline,
        error,
    }
}

/// Pairs walsender rows with standby nodes and computes each standby's lag.
fn match_standbys(
    nodes: &[Observation],
    reports: &[NodeReport],
    primary: Option<usize>,
    reference: Option<Lsn>,
    problems: &mut Vec<Problem>,
) -> Vec<StandbyReport> {
    let facts = |i: usize| nodes[i].facts.as_ref().ok();
    let usable = |i: usize| reports[i].reachable && !reports[i].other_system;
    // Rows without a state are all a role without pg_read_all_stats sees; reported already.
    let rows: Vec<(usize, &SenderRow)> = (0..nodes.len())
        .filter(|&i| usable(i))
        .flat_map(|i| {
            facts(i)
                .into_iter()
                .flat_map(move |f| f.senders.iter().map(move |r| (i, r)))
        })
        .filter(|(_, r)| r.state.is_some())
        .collect();
    let standby_nodes: Vec<usize> = (0..nodes.len())
        .filter(|&i| usable(i) && reports[i].role == Role::Standby)
        .collect();
    let standby_name = |i: usize| {
        facts(i)
            .and_then(|f| f.receiver.as_ref())
            .and_then(|r| r.application_name.clone())
    };

    let mut rows_named: HashMap<&str, usize> = HashMap::new();
    for (_, row) in &rows {
        if let Some(name) = row.application_name.as_deref() {
            *rows_named.entry(name).or_default() += 1;
        }
    }
    let mut nodes_named: HashMap<String, Vec<usize>> = HashMap::new();
    for &i in &standby_nodes {
        if let Some(name) = standby_name(i) {
            nodes_named.entry(name).or_default().push(i);
        }
    }
    let mut reported_duplicates = Vec::new();
    let node_for_row =
        |row: &SenderRow, reported: &mut Vec<String>, problems: &mut Vec<Problem>| {
            let name = row.application_name.as_deref()?;
            let candidates = nodes_named.get(name)?;
            let walsenders = rows_named.get(name).copied().unwrap_or(0);
            if let ([only], 1) = (candidates.as_slice(), walsenders) {
                return Some(*only);
            }
            if !reported.iter().any(|r| r == name) {
                reported.push(name.to_owned());
                let standbys: Vec<String> = candidates
                    .iter()
                    .map(|&i| format!("`{}`", nodes[i].name))
                    .collect();
                problems.push(Problem {
                    kind: ProblemKind::DuplicateApplicationName,
                    node: None,
                    message: format!(
                    "application_name `{name}` is used by {walsenders} walsender(s) and by the \
                     standbys {}: give each standby its own name in primary_conninfo",
                    standbys.join(", ")
                ),
                });
            }
            None
        };

    let mut out = Vec::new();
    let mut paired = vec![false; nodes.len()];
    for &(upstream, row) in &rows {
        let node = node_for_row(row, &mut reported_duplicates, problems);
        if let Some(i) = node {
            paired[i] = true;
        }
        out.push(standby_report(
            Some((&nodes[upstream].name, row)),
            node.map(|i| &nodes[i]),
            reference,
        ));
    }
    for &i in &standby_nodes {
        if paired[i] {
            continue;
        }
        let report = standby_report(None, Some(&nodes[i]), reference);
        let streaming = facts(i)
            .and_then(|f| f.receiver.as_ref())
            .is_some_and(|r| r.status.as_deref() == Some("streaming"));
        if primary.is_some() && !streaming {
            problems.push(Problem {
                kind: ProblemKind::NotStreaming,
                node: Some(nodes[i].name.clone()),
                message: format!(
                    "standby `{}` is not streaming (walreceiver {}); check its primary_conninfo \
                     and its log",
                    nodes[i].name,
                    report.state.as_deref().unwrap_or("not running")
                ),
            });
        }
        out.push(report);
    }
    // With a primary reachable, every other node is expected to be one of its standbys.
    if primary.is_some() {
        for (i, r) in reports.iter().enumerate() {
            if !r.reachable {
                out.push(StandbyReport {
                    node: Some(nodes[i].name.clone()),
                    reachable: Some(false),
                    ..Default::default()
                });
            }
        }
    }
    out
}

fn standby_report(
    walsender: Option<(&str, &SenderRow)>,
    node: Option<&Observation>,
    reference: Option<Lsn>,
) -> StandbyReport {
    let row = walsender.map(|(_, r)| r);
    let facts = node.and_then(|n| n.facts.as_ref().ok());
    let receiver = facts.and_then(|f| f.receiver.as_ref());
    let write_lsn = max_known(
        row.and_then(|r| r.write_lsn),
        receiver.and_then(|r| r.written_lsn),
    );
    let flush_lsn = max_known(
        row.and_then(|r| r.flush_lsn),
        facts.and_then(|f| f.receive_lsn),
    );
    let replay_lsn = max_known(
        row.and_then(|r| r.replay_lsn),
        facts.and_then(|f| f.replay_lsn),
    );
    let pending = |pos: Option<Lsn>| Some(reference?.saturating_sub(pos?));
    let replay_paused = facts.and_then(|f| f.replay_paused);
    let (write_lag_bytes, flush_lag_bytes, replay_lag_bytes) =
        (pending(write_lsn), pending(flush_lsn), pending(replay_lsn));
    let state = row
        .and_then(|r| r.state.clone())
        .or_else(|| receiver.and_then(|r| r.status.clone()))
        .or_else(|| facts.map(|_| "disconnected".to_owned()));
    StandbyReport {
        application_name: row
            .and_then(|r| r.application_name.clone())
            .or_else(|| receiver.and_then(|r| r.application_name.clone())),
        node: node.map(|n| n.name.clone()),
        reachable: node.map(|n| n.facts.is_ok()),
        upstream: walsender.map(|(name, _)| name.to_owned()),
        state,
        sync_state: row.and_then(|r| r.sync_state.clone()),
        sync_priority: row.and_then(|r| r.sync_priority),
        reply_age_ms: row.and_then(|r| r.reply_age_ms),
        client_addr: row.and_then(|r| r.client_addr.clone()),
        timeline: node
            .and_then(|n| n.identity.as_ref().ok())
            .map(|id| id.timeline)
            .or_else(|| receiver.and_then(|r| r.received_tli)),
        sent_lsn: row.and_then(|r| r.sent_lsn),
        write_lsn,
        flush_lsn,
        replay_lsn,
        write_lag_bytes,
        flush_lag_bytes,
        replay_lag_bytes,
        write_lag_ms: time_lag(write_lag_bytes, row.and_then(|r| r.write_lag_ms), false),
        flush_lag_ms: time_lag(flush_lag_bytes, row.and_then(|r| r.flush_lag_ms), false),
        replay_lag_ms: time_lag(
            replay_lag_bytes,
            row.and_then(|r| r.replay_lag_ms),
            replay_paused == Some(true),
        ),
        replay_paused,
        last_xact_replay_age_ms: facts.and_then(|f| f.last_xact_replay_age_ms),
        probe_ms: match node.and_then(|n| n.probe.as_ref()) {
            Some(ProbeOutcome::Arrived { ms }) => Some(*ms),
            _ => None,
        },
        probe_timed_out: matches!(
            node.and_then(|n| n.probe.as_ref()),
            Some(ProbeOutcome::TimedOut)
        ),
    }
}

/// The time lag of a stage: nothing pending means no lag, however old the walsender's last
/// sample is; a stage that cannot move (paused replay) has no meaningful measured value.
fn time_lag(pending_bytes: Option<u64>, measured_ms: Option<f64>, stuck: bool) -> Option<f64> {
    match pending_bytes {
        Some(0) => Some(0.0),
        Some(_) if stuck => None,
        _ => measured_ms,
    }
}

fn max_known(a: Option<Lsn>, b: Option<Lsn>) -> Option<Lsn> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The value seen most often; the first seen wins a tie.
fn most_common<T: PartialEq>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(seen, _)| *seen == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    // max_by_key keeps the last maximum, so walk the list backwards to keep the first.
    counts
        .into_iter()
        .rev()
        .max_by_key(|(_, n)| *n)
        .map(|(v, _)| v)
}

/// The standby with the most WAL: highest timeline first, then the furthest position it has
/// received or replayed (promotion replays everything received).
fn promotion_candidate<'a>(
    standbys: impl Iterator<Item = (&'a Observation, &'a NodeReport)>,
) -> Option<PromotionCandidate> {
    let mut ranked: Vec<(String, Option<TimelineId>, Option<Lsn>)> = standbys
        .map(|(o, r)| {
            let f = o.facts.as_ref().ok();
            let furthest = [
                f.and_then(|f| f.receive_lsn),
                f.and_then(|f| f.replay_lsn),
                r.lsn,
            ]
            .into_iter()
            .flatten()
            .max();
            (o.name.clone(), r.timeline, furthest)
        })
        .collect();
    // Stable sort: the first given wins a tie.
    ranked.sort_by_key(|r| std::cmp::Reverse((r.1, r.2)));
    let (name, timeline, lsn) = ranked.first()?.clone();
    let runner_up = ranked.get(1);
    Some(PromotionCandidate {
        node: name,
        timeline,
        lsn,
        ahead_bytes: runner_up
            .filter(|r| r.1 == timeline)
            .and_then(|r| Some(lsn?.saturating_sub(r.2?))),
        tied: runner_up.is_some_and(|r| r.1 == timeline && r.2 == lsn),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lag::sql::ReceiverRow;

    const SYSTEM: u64 = 7_300_000_000_000_000_001;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    fn identity(timeline: u32, at: &str) -> Result<Identity, String> {
        Ok(Identity {
            system_id: SystemId::new(SYSTEM),
            timeline: TimelineId::new(timeline),
            lsn: lsn(at),
            server_version: Some("15.18".into()),
        })
    }

    fn primary(flush: &str, senders: Vec<SenderRow>) -> Observation {
        Observation {
            name: "p:5432".into(),
            conninfo: "host=p port=5432 user=postgres sslmode=prefer".into(),
            identity: identity(1, flush),
            facts: Ok(NodeFacts {
                in_recovery: false,
                server_version: "15.18".into(),
                synchronous_commit: "on".into(),
                can_read_stats: true,
                flush_lsn: Some(lsn(flush)),
                senders,
                ..Default::default()
            }),
            probe: None,
        }
    }

    fn standby(name: &str, app: &str, receive: &str, replay: &str) -> Observation {
        Observation {
            name: name.into(),
            conninfo: format!("host={name} sslmode=prefer"),
            identity: identity(1, receive),
            facts: Ok(NodeFacts {
                in_recovery: true,
                server_version: "15.18".into(),
                synchronous_commit: "on".into(),
                can_read_stats: true,
                receive_lsn: Some(lsn(receive)),
                replay_lsn: Some(lsn(replay)),
                replay_paused: Some(false),
                // Hours since the last commit: an idle primary, not a lagging standby.
                last_xact_replay_age_ms: Some(7_200_000.0),
                receiver: Some(ReceiverRow {
                    status: Some("streaming".into()),
                    written_lsn: Some(lsn(receive)),
                    flushed_lsn: Some(lsn(receive)),
                    application_name: Some(app.into()),
                    sender_host: Some("p".into()),
                    sender_port: Some(5432),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            probe: None,
        }
    }

    fn sender(app: &str, at: &str, lag_ms: Option<f64>) -> SenderRow {
        SenderRow {
            application_name: Some(app.into()),
            client_addr: Some("127.0.0.1".into()),
            state: Some("streaming".into()),
            sent_lsn: Some(lsn(at)),
            write_lsn: Some(lsn(at)),
            flush_lsn: Some(lsn(at)),
            replay_lsn: Some(lsn(at)),
            write_lag_ms: lag_ms,
            flush_lag_ms: lag_ms,
            replay_lag_ms: lag_ms,
            sync_priority: Some(0),
            sync_state: Some("async".into()),
            reply_age_ms: Some(9000.0),
        }
    }

    fn round(observations: Vec<Observation>) -> Round {
        Round {
            observations,
            probe_error: None,
            round_ms: 12.5,
        }
    }

    fn unreachable(name: &str) -> Observation {
        Observation {
            name: name.into(),
            conninfo: format!("host={name} sslmode=prefer"),
            identity: Err("connection refused".into()),
            facts: Err("connection refused".into()),
            probe: None,
        }
    }

    #[test]
    fn an_idle_primary_shows_zero_time_lag_despite_stale_samples() {
        // The walsender still shows the last burst's 3.5 ms and the last commit is hours old,
        // but nothing is pending.
        let report = analyze(&round(vec![
            primary("0/3000060", vec![sender("a", "0/3000060", Some(3.5))]),
            standby("a:5433", "a", "0/3000060", "0/3000060"),
        ]));
        assert_eq!(report.primary.as_deref(), Some("p:5432"));
        assert_eq!(
            report.system_identifier.as_deref(),
            Some("7300000000000000001")
        );
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let [a] = report.standbys.as_slice() else {
            panic!("{:?}", report.standbys)
        };
        assert_eq!(a.node.as_deref(), Some("a:5433"));
        assert_eq!(a.upstream.as_deref(), Some("p:5432"));
        for stage in Stage::ALL {
            assert_eq!(a.lag_bytes(stage), Some(0));
            assert_eq!(a.lag_ms(stage), Some(0.0));
        }
        assert_eq!(report.verdict(&Thresholds::default()), Verdict::Healthy);
    }

    #[test]
    fn the_standbys_own_view_is_fresher_than_its_last_report() {
        // The primary last heard of 0/3000000 (up to 10 s ago); the standby has replayed it all.
        let report = analyze(&round(vec![
            primary("0/3000060", vec![sender("a", "0/3000000", Some(1.0))]),
            standby("a:5433", "a", "0/3000060", "0/3000060"),
        ]));
        let a = &report.standbys[0];
        assert_eq!(a.replay_lsn, Some(lsn("0/3000060")));
        assert_eq!(a.sent_lsn, Some(lsn("0/3000000")));
        assert_eq!(a.replay_lag_bytes, Some(0));
        assert_eq!(a.replay_lag_ms, Some(0.0));
    }

    #[test]
    fn paused_replay_lags_in_bytes_and_hides_its_frozen_interval() {
        let mut paused = standby("b:5434", "b", "0/4000000", "0/3000000");
        if let Ok(f) = &mut paused.facts {
            f.replay_paused = Some(true);
        }
        let mut row_b = sender("b", "0/4000000", Some(2.0));
        row_b.replay_lsn = Some(lsn("0/3000000"));
        let report = analyze(&round(vec![
            primary("0/4000000", vec![sender("a", "0/4000000", None), row_b]),
            standby("a:5433", "a", "0/4000000", "0/4000000"),
            paused,
        ]));
        let b = report.standbys.iter().find(|s| s.label() == "b").unwrap();
        assert_eq!(b.replay_lag_bytes, Some(0x100_0000));
        assert_eq!(b.flush_lag_bytes, Some(0));
        assert_eq!(b.replay_lag_ms, None);
        assert_eq!(b.flush_lag_ms, Some(0.0));
        assert_eq!(b.replay_paused, Some(true));
        let a = report.standbys.iter().find(|s| s.label() == "a").unwrap();
        assert_eq!(a.replay_lag_bytes, Some(0));

        let limits = Thresholds {
            max_lag_bytes: Some(1024 * 1024),
            max_lag_time: None,
        };
        assert_eq!(
            report.verdict(&limits),
            Verdict::OverThreshold(vec![Exceeded::Bytes {
                standby: "b".into(),
                stage: Stage::Replay,
                lag: 0x100_0000,
                limit: 1024 * 1024
            }])
        );
        assert_eq!(report.verdict(&limits).exit_code(), 1);
    }

    #[test]
    fn pending_wal_takes_the_measured_interval() {
        let mut row = sender("a", "0/3000000", Some(250.0));
        row.sent_lsn = Some(lsn("0/3100000"));
        let report = analyze(&round(vec![
            primary("0/3100000", vec![row]),
            standby("a:5433", "a", "0/3000000", "0/3000000"),
        ]));
        let a = &report.standbys[0];
        assert_eq!(a.replay_lag_bytes, Some(0x10_0000));
        assert_eq!(a.replay_lag_ms, Some(250.0));
        let limits = Thresholds {
            max_lag_bytes: None,
            max_lag_time: Some(Duration::from_millis(100)),
        };
        assert!(matches!(
            report.verdict(&limits).clone(),
            Verdict::OverThreshold(v) if matches!(v[0], Exceeded::Time { lag_ms, .. } if lag_ms == 250.0)
        ));
    }

    #[test]
    fn an_unreachable_standby_is_listed_and_breaks_the_check() {
        let report = analyze(&round(vec![
            primary("0/3000060", vec![sender("a", "0/3000060", None)]),
            standby("a:5433", "a", "0/3000060", "0/3000060"),
            unreachable("b:5434"),
        ]));
        let b = &report.nodes[2];
        assert!(!b.reachable);
        assert_eq!(b.role, Role::Unknown);
        assert_eq!(b.error.as_deref(), Some("connection refused"));
        let listed = report
            .standbys
            .iter()
            .find(|s| s.node.as_deref() == Some("b:5434"))
            .unwrap();
        assert_eq!(listed.reachable, Some(false));
        assert_eq!(report.problems.len(), 1);
        assert_eq!(report.problems[0].kind, ProblemKind::Unreachable);
        assert_eq!(
            report.problems[0].message,
            "`b:5434` is unreachable: connection refused"
        );
        assert_eq!(report.verdict(&Thresholds::default()).exit_code(), 2);
    }

    #[test]
    fn other_systems_and_old_timelines_are_flagged() {
        let mut stranger = standby("x:1", "x", "0/1000000", "0/1000000");
        if let Ok(id) = &mut stranger.identity {
            id.system_id = SystemId::new(42);
        }
        let mut behind = standby("b:5434", "b", "0/3000000", "0/3000000");
        if let Ok(id) = &mut behind.identity {
            id.timeline = TimelineId::new(1);
        }
        let mut p = primary("0/5000000", vec![sender("b", "0/3000000", None)]);
        if let Ok(id) = &mut p.identity {
            id.timeline = TimelineId::new(2);
        }
        let report = analyze(&round(vec![stranger, p, behind]));
        assert!(report.nodes[0].other_system);
        assert!(!report.nodes[2].other_system);
        assert!(report.nodes[2].older_timeline);
        let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [ProblemKind::OtherSystem, ProblemKind::OlderTimeline]
        );
        assert_eq!(
            report.problems[0].message,
            "`x:1` is not part of this cluster: system identifier 42 instead of 7300000000000000001"
        );
        // The stranger's walreceiver is not matched to this cluster's walsenders.
        assert!(report
            .standbys
            .iter()
            .all(|s| s.node.as_deref() != Some("x:1")));
    }

    #[test]
    fn without_a_primary_the_most_advanced_standby_is_the_candidate() {
        let report = analyze(&round(vec![
            unreachable("p:5432"),
            standby("a:5433", "a", "0/3000000", "0/2000000"),
            standby("b:5434", "b", "0/3500000", "0/3000000"),
            standby("c:5435", "c", "0/3500000", "0/3500000"),
        ]));
        assert_eq!(report.primary, None);
        let candidate = report.promotion_candidate.unwrap();
        assert_eq!(candidate.node, "b:5434");
        assert_eq!(candidate.lsn, Some(lsn("0/3500000")));
        assert!(candidate.tied);
        assert_eq!(candidate.ahead_bytes, Some(0));
        let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [ProblemKind::Unreachable, ProblemKind::NoPrimary]);
        // Without a primary nobody is expected to stream, and the lag has no reference.
        assert!(report.standbys.iter().all(|s| s.replay_lag_bytes.is_none()));
    }

    #[test]
    fn a_higher_timeline_beats_more_wal_for_promotion() {
        let mut newer = standby("a:5433", "a", "0/2000000", "0/2000000");
        if let Ok(id) = &mut newer.identity {
            id.timeline = TimelineId::new(3);
        }
        let report = analyze(&round(vec![
            standby("b:5434", "b", "0/9000000", "0/9000000"),
            newer,
        ]));
        let candidate = report.promotion_candidate.unwrap();
        assert_eq!(
            (
                candidate.node.as_str(),
                candidate.tied,
                candidate.ahead_bytes
            ),
            ("a:5433", false, None)
        );
    }

    #[test]
    fn two_primaries_are_a_problem_and_the_newest_is_the_reference() {
        let mut promoted = primary("0/5000000", vec![]);
        promoted.name = "b:5434".into();
        if let Ok(id) = &mut promoted.identity {
            id.timeline = TimelineId::new(2);
        }
        let report = analyze(&round(vec![primary("0/9000000", vec![]), promoted]));
        assert_eq!(report.primary.as_deref(), Some("b:5434"));
        assert_eq!(report.problems[0].kind, ProblemKind::MultiplePrimaries);
        assert_eq!(
            report.problems[0].message,
            "`p:5432`, `b:5434` are all primaries (not in recovery): a split brain, or nodes of \
             different clusters"
        );
    }

    #[test]
    fn duplicate_names_are_reported_not_guessed() {
        let report = analyze(&round(vec![
            primary(
                "0/3000000",
                vec![
                    sender("walreceiver", "0/3000000", None),
                    sender("walreceiver", "0/2000000", None),
                ],
            ),
            standby("a:5433", "walreceiver", "0/3000000", "0/3000000"),
            standby("b:5434", "walreceiver", "0/2000000", "0/2000000"),
        ]));
        let dup: Vec<&Problem> = report
            .problems
            .iter()
            .filter(|p| p.kind == ProblemKind::DuplicateApplicationName)
            .collect();
        assert_eq!(dup.len(), 1, "{:?}", report.problems);
        assert!(
            dup[0].message.contains("`a:5433`, `b:5434`"),
            "{}",
            dup[0].message
        );
        // Two unpaired walsender rows plus both standbys from their own view.
        assert_eq!(report.standbys.len(), 4);
        assert_eq!(report.standbys[3].replay_lag_bytes, Some(0x100_0000));
    }

    #[test]
    fn a_standby_without_a_walsender_is_not_streaming() {
        let mut lost = standby("a:5433", "a", "0/2000000", "0/2000000");
        if let Ok(f) = &mut lost.facts {
            f.receiver = None;
        }
        let report = analyze(&round(vec![primary("0/3000000", vec![]), lost]));
        assert_eq!(report.problems[0].kind, ProblemKind::NotStreaming);
        assert_eq!(
            report.problems[0].message,
            "standby `a:5433` is not streaming (walreceiver disconnected); check its \
             primary_conninfo and its log"
        );
        assert_eq!(report.standbys[0].replay_lag_bytes, Some(0x100_0000));
        assert_eq!(report.standbys[0].replay_lag_ms, None);
    }

    #[test]
    fn walsenders_without_a_given_node_still_count() {
        // Only the primary was given: the lag comes from its view alone.
        let mut row = sender("a", "0/2000000", Some(40.0));
        row.sent_lsn = Some(lsn("0/3000000"));
        let report = analyze(&round(vec![primary("0/3000000", vec![row])]));
        let [a] = report.standbys.as_slice() else {
            panic!()
        };
        assert_eq!((a.node.as_deref(), a.reachable), (None, None));
        assert_eq!(a.replay_lag_bytes, Some(0x100_0000));
        assert_eq!(a.replay_lag_ms, Some(40.0));
        assert!(report.problems.is_empty());
    }

    #[test]
    fn probes_count_against_the_time_limit() {
        let mut a = standby("a:5433", "a", "0/3000000", "0/3000000");
        a.probe = Some(ProbeOutcome::Arrived { ms: 80.0 });
        let mut b = standby("b:5434", "b", "0/3000000", "0/3000000");
        b.probe = Some(ProbeOutcome::TimedOut);
        let report = analyze(&round(vec![
            primary(
                "0/3000000",
                vec![
                    sender("a", "0/3000000", None),
                    sender("b", "0/3000000", None),
                ],
            ),
            a,
            b,
        ]));
        assert_eq!(report.standbys[0].probe_ms, Some(80.0));
        assert!(report.standbys[1].probe_timed_out);
        let limits = Thresholds {
            max_lag_bytes: None,
            max_lag_time: Some(Duration::from_millis(50)),
        };
        let Verdict::OverThreshold(over) = report.verdict(&limits) else {
            panic!()
        };
        assert_eq!(
            over,
            [
                Exceeded::Probe {
                    standby: "a".into(),
                    delay_ms: Some(80.0),
                    limit_ms: 50.0
                },
                Exceeded::Probe {
                    standby: "b".into(),
                    delay_ms: None,
                    limit_ms: 50.0
                },
            ]
        );
    }

    #[test]
    fn without_stats_privileges_the_numbers_cannot_be_trusted() {
        let mut p = primary(
            "0/3000000",
            // All a role without pg_read_all_stats sees of a walsender is its pid.
            vec![SenderRow::default()],
        );
        if let Ok(f) = &mut p.facts {
            f.can_read_stats = false;
        }
        let report = analyze(&round(vec![p]));
        assert_eq!(report.problems[0].kind, ProblemKind::NoStatsPrivilege);
        assert!(report.standbys.is_empty());
    }

    #[test]
    fn the_most_common_system_identifier_wins_the_first_tie() {
        assert_eq!(most_common([3, 1, 1, 3].into_iter()), Some(3));
        assert_eq!(most_common([3, 1, 1].into_iter()), Some(1));
        assert_eq!(most_common(std::iter::empty::<u64>()), None);
    }
}
