//! The Prometheus text exposition of a round: every figure of the `--json` report that is a
//! number or a state, named as Prometheus asks (units as suffixes, `_total` on counters, a state
//! as one 0/1 gauge per value so that a query still matches after the state changes).
//!
//! Pure: the collector renders once per round, and a scrape only copies the text.

use std::fmt::Write;

use super::super::report::{Report, Role, Stage, StandbyReport};

/// What the collector adds to a round: counters over its lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Rounds finished.
    pub rounds: u64,
    /// Rounds that listed a problem (what makes `pgrepl lag` exit 2).
    pub failed_rounds: u64,
    /// When the last round finished, seconds since the Unix epoch.
    pub last_round_unix: f64,
}

/// The states pgrepl reports for a standby: the walsender's, and `disconnected`. Each is always
/// exposed, as 0 when it is not the current one.
const STATES: [&str; 6] = [
    "startup",
    "catchup",
    "streaming",
    "backup",
    "stopping",
    "disconnected",
];
const SYNC_STATES: [&str; 4] = ["sync", "potential", "quorum", "async"];
const ROLES: [(Role, &str); 3] = [
    (Role::Primary, "primary"),
    (Role::Standby, "standby"),
    (Role::Unknown, "unknown"),
];

/// The round and, when a collector runs, its totals.
pub fn render(report: &Report, totals: Option<&Totals>) -> String {
    let mut m = Exposition::default();
    if let Some(t) = totals {
        m.counter(
            "pgrepl_rounds_total",
            "Rounds the collector finished.",
            vec![(vec![], t.rounds as f64)],
        );
        m.counter(
            "pgrepl_rounds_failed_total",
            "Rounds that found a problem: an unreachable node, no primary, a standby not streaming...",
            vec![(vec![], t.failed_rounds as f64)],
        );
        m.gauge(
            "pgrepl_last_round_timestamp_seconds",
            "When the last round finished, Unix time.",
            vec![(vec![], t.last_round_unix)],
        );
    }
    m.gauge(
        "pgrepl_round_duration_seconds",
        "Time the last round took (every node at once, each within the timeout).",
        vec![(vec![], report.round_ms / 1000.0)],
    );
    m.gauge(
        "pgrepl_problems",
        "Problems the last round found; see /status.json for what they are.",
        vec![(vec![], report.problems.len() as f64)],
    );
    node_families(&mut m, report);
    standby_families(&mut m, report);
    if let Some(sync) = &report.sync {
        m.gauge(
            "pgrepl_sync_required_standbys",
            "Standbys a commit waits for (synchronous_standby_names).",
            vec![(vec![], f64::from(sync.required))],
        );
        m.gauge(
            "pgrepl_sync_commits_blocked",
            "1 when commits that wait for standbys cannot complete.",
            vec![(vec![], flag(sync.commits_block))],
        );
        m.gauge(
            "pgrepl_sync_waiting_sessions",
            "Sessions waiting for synchronous replication.",
            vec![(vec![], sync.waiting_sessions.len() as f64)],
        );
    }
    m.out
}

fn node_families(m: &mut Exposition, report: &Report) {
    let per_node = |value: &dyn Fn(&super::super::NodeReport) -> Option<f64>| {
        report
            .nodes
            .iter()
            .filter_map(|n| Some((vec![("node", n.name.clone())], value(n)?)))
            .collect::<Vec<_>>()
    };
    m.gauge(
        "pgrepl_node_up",
        "1 when the node answered SQL.",
        per_node(&|n| Some(flag(n.reachable))),
    );
    let roles = report
        .nodes
        .iter()
        .flat_map(|n| {
            ROLES.iter().map(move |&(role, text)| {
                let labels = vec![("node", n.name.clone()), ("role", text.to_owned())];
                (labels, flag(n.role == role))
            })
        })
        .collect();
    m.gauge(
        "pgrepl_node_role",
        "1 for the node's role (unknown: it did not answer).",
        roles,
    );
    m.gauge(
        "pgrepl_node_timeline",
        "The node's timeline.",
        per_node(&|n| n.timeline.map(|t| f64::from(t.as_u32()))),
    );
    m.gauge(
        "pgrepl_node_wal_position_bytes",
        "The node's WAL position (IDENTIFY_SYSTEM) as a byte offset.",
        per_node(&|n| n.lsn.map(|l| l.as_u64() as f64)),
    );
}

fn standby_families(m: &mut Exposition, report: &Report) {
    let labels = |s: &StandbyReport| {
        vec![
            ("standby", s.label().to_owned()),
            ("node", s.node.clone().unwrap_or_default()),
        ]
    };
    let per_standby = |value: &dyn Fn(&StandbyReport) -> Option<f64>| {
        report
            .standbys
            .iter()
            .filter_map(|s| Some((labels(s), value(s)?)))
            .collect::<Vec<_>>()
    };
    // One 0/1 sample per known value, and the current one when it is not known.
    let states =
        |key: &'static str, known: &[&str], current: &dyn Fn(&StandbyReport) -> Option<String>| {
            let mut samples = Vec::new();
            for s in &report.standbys {
                let now = current(s);
                let mut values: Vec<String> = known.iter().map(|v| (*v).to_owned()).collect();
                if let Some(extra) = now.as_ref().filter(|v| !values.contains(v)) {
                    values.push(extra.clone());
                }
                for value in values {
                    let mut l = labels(s);
                    l.push((key, value.clone()));
                    samples.push((l, flag(now.as_deref() == Some(value.as_str()))));
                }
            }
            samples
        };
    m.gauge(
        "pgrepl_standby_up",
        "1 when the standby's node answered SQL (only for standbys given as nodes).",
        per_standby(&|s| s.reachable.map(flag)),
    );
    m.gauge(
        "pgrepl_standby_state",
        "1 for the standby's state: the walsender's, else the walreceiver's, else disconnected.",
        states("state", &STATES, &|s| s.state.clone()),
    );
    m.gauge(
        "pgrepl_standby_sync_state",
        "1 for the standby's synchronous replication state on the primary.",
        states("sync_state", &SYNC_STATES, &|s| s.sync_state.clone()),
    );
    m.gauge(
        "pgrepl_standby_timeline",
        "The timeline the standby is on.",
        per_standby(&|s| s.timeline.map(|t| f64::from(t.as_u32()))),
    );
    let per_stage = |value: &dyn Fn(&StandbyReport, Stage) -> Option<f64>| {
        let mut samples = Vec::new();
        for s in &report.standbys {
            for stage in Stage::ALL {
                if let Some(v) = value(s, stage) {
                    let mut l = labels(s);
                    l.push(("stage", stage.as_str().to_owned()));
                    samples.push((l, v));
                }
            }
        }
        samples
    };
    m.gauge(
        "pgrepl_standby_lag_bytes",
        "WAL the standby has not written, flushed or replayed yet, per stage.",
        per_stage(&|s, stage| s.lag_bytes(stage).map(|b| b as f64)),
    );
    m.gauge(
        "pgrepl_standby_lag_seconds",
        "Time lag per stage; 0 when nothing is pending, absent while replay is paused.",
        per_stage(&|s, stage| s.lag_ms(stage).map(|ms| ms / 1000.0)),
    );
    m.gauge(
        "pgrepl_standby_replay_paused",
        "1 while replay is paused (pg_wal_replay_pause()).",
        per_standby(&|s| s.replay_paused.map(flag)),
    );
    m.gauge(
        "pgrepl_standby_reply_age_seconds",
        "Age of the standby's last reply to its walsender.",
        per_standby(&|s| s.reply_age_ms.map(|ms| ms / 1000.0)),
    );
    m.gauge(
        "pgrepl_standby_last_replay_age_seconds",
        "Age of the last replayed commit; it grows while the primary is idle.",
        per_standby(&|s| s.last_xact_replay_age_ms.map(|ms| ms / 1000.0)),
    );
    m.gauge(
        "pgrepl_standby_probe_seconds",
        "With --probe: heartbeat written on the primary to visible on the standby.",
        per_standby(&|s| s.probe_ms.map(|ms| ms / 1000.0)),
    );
}

fn flag(value: bool) -> f64 {
    f64::from(u8::from(value))
}

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn gauge(&mut self, name: &str, help: &str, samples: Vec<(Labels, f64)>) {
        self.family(name, "gauge", help, samples);
    }

    fn counter(&mut self, name: &str, help: &str, samples: Vec<(Labels, f64)>) {
        self.family(name, "counter", help, samples);
    }

    /// A family with no sample (no standby yet, every node down) is left out entirely.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: Vec<(Labels, f64)>) {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(self.out, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(self.out, " {value}");
        }
    }
}

/// Backslash, double quote and newline are the three characters a label value escapes.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SystemId, TimelineId};
    use crate::lag::analysis::{analyze, Identity, Observation, Round};
    use crate::lag::sql::{NodeFacts, SenderRow};

    fn report() -> Report {
        let primary = Observation {
            name: "db\"1".into(),
            conninfo: "host=db1 port=5432 user=postgres".into(),
            identity: Ok(Identity {
                system_id: SystemId::new(7_300_000_000_000_000_001),
                timeline: TimelineId::new(2),
                lsn: "1/0".parse().unwrap(),
                server_version: None,
            }),
            facts: Ok(NodeFacts {
                server_version: "15.18".into(),
                synchronous_standby_names: "FIRST 1 (a)".into(),
                synchronous_commit: "on".into(),
                can_read_stats: true,
                flush_lsn: Some("1/0".parse().unwrap()),
                senders: vec![SenderRow {
                    application_name: Some("a".into()),
                    state: Some("weird".into()),
                    sync_state: Some("sync".into()),
                    replay_lsn: Some("0/FF000000".parse().unwrap()),
                    replay_lag_ms: Some(1500.0),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            probe: None,
        };
        let gone = Observation {
            name: "db2".into(),
            conninfo: "host=db2".into(),
            identity: Err("refused".into()),
            facts: Err("refused".into()),
            probe: None,
        };
        analyze(&Round {
            observations: vec![primary, gone],
            probe_error: None,
            round_ms: 12.0,
        })
    }

    #[test]
    fn every_family_has_help_and_type_and_states_are_one_hot() {
        let totals = Totals {
            rounds: 3,
            failed_rounds: 1,
            last_round_unix: 1.5,
        };
        let text = render(&report(), Some(&totals));
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    lines[i + 1].starts_with(&format!("# TYPE {name} ")),
                    "{line}"
                );
            } else if !line.starts_with('#') {
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(text.contains("# TYPE pgrepl_rounds_failed_total counter\n"));
        assert!(text.contains("pgrepl_rounds_failed_total 1\n"));
        assert!(text.contains("pgrepl_round_duration_seconds 0.012\n"));
        assert!(
            text.contains("pgrepl_node_up{node=\"db\\\"1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pgrepl_node_up{node=\"db2\"} 0\n"));
        assert!(text.contains("pgrepl_node_role{node=\"db2\",role=\"unknown\"} 1\n"));
        assert!(text.contains("pgrepl_node_role{node=\"db2\",role=\"primary\"} 0\n"));
        assert!(text.contains("pgrepl_node_timeline{node=\"db\\\"1\"} 2\n"));
        assert!(!text.contains("pgrepl_node_timeline{node=\"db2\"}"));
        assert!(text.contains("pgrepl_node_wal_position_bytes{node=\"db\\\"1\"} 4294967296\n"));
        let a = "standby=\"a\",node=\"\"";
        assert!(text.contains(&format!(
            "pgrepl_standby_sync_state{{{a},sync_state=\"sync\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "pgrepl_standby_sync_state{{{a},sync_state=\"async\"}} 0\n"
        )));
        // A state outside the known list is still exposed, as the current one.
        assert!(text.contains(&format!("pgrepl_standby_state{{{a},state=\"weird\"}} 1\n")));
        assert!(text.contains(&format!(
            "pgrepl_standby_state{{{a},state=\"streaming\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "pgrepl_standby_lag_bytes{{{a},stage=\"replay\"}} 16777216\n"
        )));
        assert!(text.contains(&format!(
            "pgrepl_standby_lag_seconds{{{a},stage=\"replay\"}} 1.5\n"
        )));
        assert!(text.contains("pgrepl_sync_required_standbys 1\n"));
    }

    #[test]
    fn without_a_collector_there_are_no_counters() {
        let text = render(&report(), None);
        assert!(!text.contains("_total"));
        assert!(text.contains("pgrepl_round_duration_seconds"));
    }
}
