//! The renderings of a lag [`Report`] for people: the `lag` and `status` tables (also the
//! table type `bench` prints with) and their footers. Prometheus text comes from
//! `pgrepl::lag::serve::metrics`, shared with `lag --serve`.

use pgrepl::lag::{Exceeded, Report, Role, Stage, StandbyReport, Verdict};
use pgrepl::units::{human_bytes, human_ms, lag_bytes};

/// The width every human rendering fits in.
const WIDTH: usize = 100;

pub(super) fn lag_table(report: &Report, verdict: &Verdict) -> String {
    let mut table = Table::new(&[
        ("STANDBY", 20, Align::Left),
        ("STATE", 11, Align::Left),
        ("SYNC", 9, Align::Left),
        ("WRITE LAG", 18, Align::Right),
        ("FLUSH LAG", 18, Align::Right),
        ("REPLAY LAG", 18, Align::Right),
    ]);
    for s in &report.standbys {
        let stage = |stage: Stage| lag_cell(s, stage);
        table.row(vec![
            s.label().to_owned(),
            match s.reachable {
                Some(false) => "UNREACHABLE".to_owned(),
                _ => s.state.clone().unwrap_or_else(|| "-".into()),
            },
            s.sync_state.clone().unwrap_or_else(|| "-".into()),
            stage(Stage::Write),
            stage(Stage::Flush),
            stage(Stage::Replay),
        ]);
    }
    let mut out = if report.standbys.is_empty() {
        "no standbys\n".to_owned()
    } else {
        table.render()
    };
    let mut notes = Vec::new();
    for s in &report.standbys {
        if s.replay_paused == Some(true) {
            notes.push(format!(
                "`{}`: replay is paused (pg_wal_replay_resume() continues it); its time lag \
                 grows for as long as the pause lasts",
                s.label()
            ));
        }
    }
    let probes: Vec<String> = report
        .standbys
        .iter()
        .filter(|s| s.probe_ms.is_some() || s.probe_timed_out)
        .map(|s| match s.probe_ms {
            Some(ms) => format!("`{}` {}", s.label(), human_ms(ms)),
            None => format!("`{}` did not arrive", s.label()),
        })
        .collect();
    if !probes.is_empty() {
        notes.push(format!("heartbeat visible after: {}", probes.join(", ")));
    }
    // The full story is `pgrepl status`; here only when commits are held up.
    if let Some(sync) = report
        .sync
        .as_ref()
        .filter(|s| s.commits_block || !s.waiting_sessions.is_empty())
    {
        notes.extend(sync.explanation.iter().cloned());
    }
    out.push_str(&footer(report, verdict, notes));
    out
}

/// `16.0 MiB  1.50 s`: bytes, then time; `?` where the time is unknown.
fn lag_cell(s: &StandbyReport, stage: Stage) -> String {
    match (s.lag_bytes(stage), s.lag_ms(stage)) {
        (None, None) => "-".into(),
        (bytes, ms) => format!(
            "{:>10} {:>7}",
            bytes.map_or_else(|| "?".into(), lag_bytes),
            ms.map_or_else(|| "?".into(), human_ms)
        ),
    }
}

pub(super) fn status_table(report: &Report, verdict: &Verdict) -> String {
    let mut table = Table::new(&[
        ("NODE", 24, Align::Left),
        ("ROLE", 7, Align::Left),
        ("PG", 7, Align::Left),
        ("SYSTEM IDENTIFIER", 19, Align::Left),
        ("TL", 3, Align::Right),
        ("LSN", 17, Align::Left),
        ("NOTE", 0, Align::Left),
    ]);
    for n in &report.nodes {
        let mut note = Vec::new();
        if !n.reachable {
            note.push("UNREACHABLE".to_owned());
        }
        if n.other_system {
            note.push("OTHER SYSTEM".to_owned());
        }
        if n.older_timeline {
            note.push("OLD TIMELINE".to_owned());
        }
        if n.replay_paused == Some(true) {
            note.push("replay paused".to_owned());
        }
        if !n.pending_restart.is_empty() {
            note.push(format!("pending restart: {}", n.pending_restart.join(", ")));
        }
        if n.role == Role::Standby {
            note.push(match (&n.receiver_status, &n.upstream) {
                (Some(status), Some(upstream)) => format!("{status} from {upstream}"),
                (Some(status), None) => status.clone(),
                (None, _) => "no walreceiver".to_owned(),
            });
        }
        if n.role == Role::Primary {
            let streaming = report
                .standbys
                .iter()
                .filter(|s| {
                    s.upstream.as_deref() == Some(&n.name)
                        && s.state.as_deref() == Some("streaming")
                })
                .count();
            note.push(format!("{streaming} streaming"));
        }
        let dash = || "-".to_owned();
        table.row(vec![
            n.name.clone(),
            match n.role {
                Role::Primary => "primary",
                Role::Standby => "standby",
                Role::Unknown => "?",
            }
            .to_owned(),
            n.server_version
                .as_deref()
                .and_then(|v| v.split_whitespace().next())
                .map_or_else(dash, str::to_owned),
            n.system_identifier.clone().unwrap_or_else(dash),
            n.timeline.map_or_else(dash, |t| t.to_string()),
            n.lsn.map_or_else(dash, |l| l.to_string()),
            note.join(", "),
        ]);
    }
    let mut out = table.render();
    let mut notes = Vec::new();
    if let Some(sync) = &report.sync {
        notes.extend(sync.explanation.iter().cloned());
    }
    if let Some(c) = &report.promotion_candidate {
        let position = match (c.timeline, c.lsn) {
            (Some(tl), Some(lsn)) => format!(" (timeline {tl}, WAL up to {lsn})"),
            _ => String::new(),
        };
        let margin = match (c.tied, c.ahead_bytes) {
            (true, _) => "; another standby has exactly as much WAL".to_owned(),
            (false, Some(bytes)) => format!("; {} ahead of the next standby", human_bytes(bytes)),
            (false, None) => String::new(),
        };
        notes.push(format!(
            "no primary is reachable: the most advanced standby is `{}`{position}{margin}",
            c.node
        ));
    }
    out.push_str(&footer(report, verdict, notes));
    out
}

/// Notes, problems and thresholds under a table, wrapped to the width.
fn footer(report: &Report, verdict: &Verdict, notes: Vec<String>) -> String {
    let mut out = String::new();
    let mut block = |lines: Vec<String>, bullet: &str| {
        if lines.is_empty() {
            return;
        }
        out.push('\n');
        for line in lines {
            out.push_str(&wrap(&line, bullet));
        }
    };
    block(notes, "  ");
    block(
        report.problems.iter().map(|p| p.message.clone()).collect(),
        "! ",
    );
    if let Verdict::OverThreshold(over) = verdict {
        block(over.iter().map(exceeded).collect(), "> ");
    }
    out
}

fn exceeded(e: &Exceeded) -> String {
    match e {
        Exceeded::Bytes {
            standby,
            stage,
            lag,
            limit,
        } => format!(
            "`{standby}` {} lag {} is over --max-lag-bytes {}",
            stage.as_str(),
            human_bytes(*lag),
            human_bytes(*limit)
        ),
        Exceeded::Time {
            standby,
            stage,
            lag_ms,
            limit_ms,
        } => format!(
            "`{standby}` {} lag {} is over --max-lag-time {}",
            stage.as_str(),
            human_ms(*lag_ms),
            human_ms(*limit_ms)
        ),
        Exceeded::Probe {
            standby,
            delay_ms: Some(ms),
            limit_ms,
        } => format!(
            "`{standby}` showed the heartbeat after {}, over --max-lag-time {}",
            human_ms(*ms),
            human_ms(*limit_ms)
        ),
        Exceeded::Probe {
            standby,
            delay_ms: None,
            limit_ms,
        } => format!(
            "`{standby}` did not show the heartbeat within --max-lag-time {}",
            human_ms(*limit_ms)
        ),
    }
}

/// `line` wrapped to [`WIDTH`], the first line after `bullet`, the rest indented to match.
fn wrap(line: &str, bullet: &str) -> String {
    let indent = " ".repeat(bullet.chars().count());
    let mut out = String::new();
    let mut current = bullet.to_owned();
    let mut empty = true;
    for word in line.split(' ') {
        if !empty && current.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(current.trim_end());
            out.push('\n');
            current = indent.clone();
            empty = true;
        }
        if !empty {
            current.push(' ');
        }
        current.push_str(word);
        empty = false;
    }
    out.push_str(current.trim_end());
    out.push('\n');
    out
}

#[derive(Clone, Copy)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Columns two spaces apart, each as wide as its widest cell up to its maximum; a maximum of 0
/// marks the column that takes what is left of [`WIDTH`]. Cells that do not fit end in `…`.
pub(crate) struct Table {
    columns: Vec<(&'static str, usize, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(columns: &[(&'static str, usize, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let header: Vec<String> = self.columns.iter().map(|c| c.0.to_owned()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let natural = |i: usize| {
            lines
                .iter()
                .filter_map(|cells| cells.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        };
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| natural(i).min(c.1))
            .collect();
        let used = widths.iter().sum::<usize>() + 2 * self.columns.len().saturating_sub(1);
        for (width, column) in widths.iter_mut().zip(&self.columns) {
            if column.1 == 0 {
                *width = WIDTH.saturating_sub(used).max(4);
            }
        }
        let mut out = String::new();
        for cells in lines {
            let line: Vec<String> = self
                .columns
                .iter()
                .zip(&widths)
                .zip(cells)
                .map(|((&(_, _, align), &width), cell)| {
                    let cell = fit(cell, width);
                    match align {
                        Align::Left => format!("{cell:<width$}"),
                        Align::Right => format!("{cell:>width$}"),
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

fn fit(cell: &str, width: usize) -> String {
    if cell.chars().count() <= width {
        return cell.to_owned();
    }
    let mut cut: String = cell.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use pgrepl::lag::{self, analyze, Observation, Round, Thresholds};

    #[test]
    fn long_lines_wrap_under_a_bullet() {
        let text = "word ".repeat(30);
        let wrapped = wrap(text.trim(), "! ");
        let lines: Vec<&str> = wrapped.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH));
        assert!(lines[0].starts_with("! word") && lines[1].starts_with("  word"));
    }

    fn sample_report() -> Report {
        let long = "a-standby-with-a-very-long-application-name";
        let primary = Observation {
            name: "127.0.0.1:40001".into(),
            conninfo: "host=127.0.0.1 port=40001 user=postgres sslmode=prefer".into(),
            identity: Ok(lag::analysis::Identity {
                system_id: pgrepl::ids::SystemId::new(7_300_000_000_000_000_001),
                timeline: pgrepl::ids::TimelineId::new(1),
                lsn: "100/0".parse().unwrap(),
                server_version: None,
            }),
            facts: Ok(lag::sql::NodeFacts {
                server_version: "15.18 (Debian 15.18-0+deb12u1)".into(),
                synchronous_standby_names: "FIRST 2 (a, b)".into(),
                synchronous_commit: "on".into(),
                can_read_stats: true,
                flush_lsn: Some("100/0".parse().unwrap()),
                senders: vec![lag::sql::SenderRow {
                    application_name: Some(long.into()),
                    state: Some("streaming".into()),
                    sync_state: Some("potential".into()),
                    replay_lsn: Some("0/0".parse().unwrap()),
                    replay_lag_ms: Some(11_520_000.0),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            probe: None,
        };
        let gone = Observation {
            name: "[2001:db8::1234:5678:9abc]:40002".into(),
            conninfo: "host=2001:db8::1234:5678:9abc port=40002".into(),
            identity: Err("timed out".into()),
            facts: Err("no answer within 5s".into()),
            probe: None,
        };
        analyze(&Round {
            observations: vec![primary, gone],
            probe_error: None,
            round_ms: 3.0,
        })
    }

    #[test]
    fn every_rendering_fits_a_hundred_columns() {
        let report = sample_report();
        let verdict = report.verdict(&Thresholds {
            max_lag_bytes: Some(1),
            max_lag_time: Some(Duration::from_secs(1)),
        });
        for text in [
            lag_table(&report, &verdict),
            status_table(&report, &verdict),
        ] {
            for line in text.lines() {
                assert!(
                    line.chars().count() <= WIDTH,
                    "{} columns: {line}",
                    line.chars().count()
                );
            }
            assert!(
                text.contains("unreachable") || text.contains("UNREACHABLE"),
                "{text}"
            );
        }
        let lag = lag_table(&report, &verdict);
        assert!(lag.contains("   1.0 TiB   3.2 h"), "{lag}");
        assert!(lag.contains("UNREACHABLE"), "{lag}");
        let status = status_table(&report, &verdict);
        assert!(status.contains("commits block"), "{status}");
    }

    #[test]
    fn prometheus_output_uses_the_served_renderer_and_leaves_unknowns_out() {
        let text = pgrepl::lag::serve::metrics::render(&sample_report(), None);
        assert!(
            text.contains("pgrepl_node_up{node=\"127.0.0.1:40001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pgrepl_node_up{node=\"[2001:db8::1234:5678:9abc]:40002\"} 0\n"));
        assert!(!text.contains("pgrepl_node_timeline{node=\"[2001"));
        assert!(text.contains("stage=\"replay\"} 11520\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
