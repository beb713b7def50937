//! `pgrepl bench`: arguments, the progress line, and the three renderings of a
//! [`BenchReport`]: a table, JSON, and an SVG plot. The measuring is `pgrepl::bench`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use plotters::prelude::*;
use tokio_util::sync::CancellationToken;

use super::lag::render::{Align, Table};
use super::lag::{cluster_nodes, conninfo_nodes};
use super::out::{self, outln};
use pgrepl::bench::sample::Snapshot;
use pgrepl::bench::{self, BenchOptions, BenchReport, Mode, ModeReport, Shape};
use pgrepl::units::{human_bytes, human_ms, lag_bytes, parse_duration};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ShapeArg {
    Insert,
    Update,
    #[value(name = "tpcb-like")]
    TpcbLike,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The primary and its standbys, in any order: conninfo strings or postgresql:// URIs of a
    /// superuser (the run changes settings with ALTER SYSTEM). SQL goes to dbname, default
    /// `postgres`, where the pgbench tables are created when absent.
    /// Without NODE, the cluster `pgrepl up` built here (or the one --cluster names), with the
    /// standbys its sync policy names.
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Take the nodes, and the standbys the sync policies name, from this cluster file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "nodes")]
    pub cluster: Option<PathBuf>,
    /// Client sessions running the load.
    #[arg(short = 'c', long, default_value = "8")]
    pub clients: usize,
    /// Load time per mode (10s, 1min; a bare number is seconds).
    #[arg(short = 'T', long, value_name = "DURATION", default_value = "10", value_parser = parse_duration)]
    pub duration: Duration,
    /// The transaction: one INSERT, one UPDATE, or pgbench's default script.
    #[arg(long, value_enum, default_value = "tpcb-like")]
    pub shape: ShapeArg,
    /// Bytes of payload per row for `--shape insert`.
    #[arg(long, value_name = "BYTES", default_value = "100")]
    pub payload: usize,
    /// Scale of the pgbench tables, when they have to be created (as pgbench -i -s).
    #[arg(short = 's', long, default_value = "1")]
    pub scale: u32,
    /// Modes to compare, comma-separated, run in the order given: async, remote_write, on,
    /// remote_apply, any1.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_mode,
          default_value = "async,remote_write,on,remote_apply,any1")]
    pub modes: Vec<Mode>,
    /// Print the report as JSON (one entry per mode in `modes`).
    #[arg(long)]
    pub json: bool,
    /// Draw TPS per mode and each standby's replay lag over time into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    Mode::parse(text.trim()).ok_or_else(|| {
        let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mode `{text}`: use {}", names.join(", "))
    })
}

pub async fn run(args: BenchArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    if let Some(plot) = &args.plot {
        check_plot_path(plot)?;
    }
    let shape = match args.shape {
        ShapeArg::Insert => Shape::Insert {
            payload: args.payload,
        },
        ShapeArg::Update => Shape::Update,
        ShapeArg::TpcbLike => Shape::TpcbLike,
    };
    let mut options = BenchOptions::new(shape);
    options.clients = args.clients;
    options.duration = args.duration;
    options.scale = args.scale;
    options.modes = args.modes.clone();
    let nodes = match args.nodes.is_empty() {
        true => {
            let cluster = super::cluster::find(args.cluster.clone())?;
            let named = &cluster.spec.sync.policy.names;
            options.sync_standbys = Some(if named.is_empty() {
                cluster.spec.standbys().map(|n| n.name.clone()).collect()
            } else {
                named.clone()
            });
            cluster_nodes(&cluster)
        }
        false => conninfo_nodes(&args.nodes)?,
    };
    let progress = Line {
        terminal: std::io::stderr().is_terminal(),
    };
    let report = bench::run(&nodes, &options, &progress, &cancel)
        .await
        .context("benchmark replication")?;
    if let Some(plot) = &args.plot {
        draw(&report, plot).with_context(|| format!("draw `{}`", plot.display()))?;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out::print(&table(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The progress line on stderr: redrawn in place on a terminal, one line per mode otherwise.
struct Line {
    terminal: bool,
}

impl Line {
    fn clear(&self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }
}

impl bench::Progress for Line {
    fn note(&self, text: &str) {
        self.clear();
        eprintln!("pgrepl: {text}");
    }

    fn running(
        &self,
        mode: Mode,
        elapsed: Duration,
        total: Duration,
        transactions: u64,
        snapshot: &Snapshot,
    ) {
        if !self.terminal {
            return;
        }
        let lags: Vec<String> = snapshot
            .standbys
            .iter()
            .map(|(name, (point, _))| {
                let bytes = point.replay_lag_bytes.map_or_else(|| "?".into(), lag_bytes);
                format!("{name} {bytes}")
            })
            .collect();
        let tps = transactions as f64 / elapsed.as_secs_f64().max(0.001);
        eprint!(
            "\r\x1b[K{:<12} {:>5.1}/{:.0} s  {:>9.0} tps  replay lag: {}",
            mode.name(),
            elapsed.as_secs_f64().min(total.as_secs_f64()),
            total.as_secs_f64(),
            tps,
            if lags.is_empty() {
                "-".into()
            } else {
                lags.join(", ")
            }
        );
    }

    fn finished(&self, report: &ModeReport) {
        self.clear();
        eprintln!(
            "pgrepl: mode {}: {:.0} tps, p99 {:.2} ms",
            report.mode.name(),
            report.tps,
            report.latency_ms.p99
        );
    }
}

fn table(report: &BenchReport) -> String {
    let mut out = format!(
        "{} on {}: {} clients, {} per mode, scale {}, sync standbys: {}\n\n",
        report.shape,
        report.primary,
        report.clients,
        human_ms(report.duration_s * 1000.0),
        report.scale,
        if report.sync_standbys.is_empty() {
            "none".into()
        } else {
            report.sync_standbys.join(", ")
        }
    );
    let mut modes = Table::new(&[
        ("MODE", 12, Align::Left),
        ("TPS", 10, Align::Right),
        ("P50 ms", 8, Align::Right),
        ("P95 ms", 8, Align::Right),
        ("P99 ms", 8, Align::Right),
        ("MAX ms", 8, Align::Right),
        ("WAL/s", 12, Align::Right),
    ]);
    for m in &report.modes {
        modes.row(vec![
            m.mode.name().into(),
            format!("{:.1}", m.tps),
            format!("{:.2}", m.latency_ms.p50),
            format!("{:.2}", m.latency_ms.p95),
            format!("{:.2}", m.latency_ms.p99),
            format!("{:.2}", m.latency_ms.max),
            human_bytes(m.wal_bytes_per_sec as u64),
        ]);
    }
    out.push_str(&modes.render());
    let mut standbys = Table::new(&[
        ("MODE", 12, Align::Left),
        ("STANDBY", 20, Align::Left),
        ("MAX WRITE", 10, Align::Right),
        ("MAX FLUSH", 10, Align::Right),
        ("MAX REPLAY", 10, Align::Right),
        ("REPLAY TIME", 11, Align::Right),
        ("CATCH-UP", 9, Align::Right),
    ]);
    let mut any = false;
    for m in &report.modes {
        for s in &m.standbys {
            any = true;
            standbys.row(vec![
                m.mode.name().into(),
                s.name.clone(),
                lag_bytes(s.max_write_lag_bytes),
                lag_bytes(s.max_flush_lag_bytes),
                lag_bytes(s.max_replay_lag_bytes),
                s.max_replay_lag_ms.map_or_else(|| "-".into(), human_ms),
                s.catch_up_ms.map_or_else(|| "not yet".into(), human_ms),
            ]);
        }
    }
    if any {
        out.push_str("\nlag during the load (largest sample) and catch-up after it:\n");
        out.push_str(&standbys.render());
    }
    out
}

/// PNG would need fonts pgrepl does not bundle; SVG text is drawn by the viewer.
fn check_plot_path(path: &Path) -> anyhow::Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("svg") => Ok(()),
        _ => bail!(
            "--plot `{}`: only SVG is supported; name the file *.svg",
            path.display()
        ),
    }
}

/// TPS per mode on top, then one panel per mode with each standby's replay lag over time.
fn draw(report: &BenchReport, path: &Path) -> anyhow::Result<()> {
    let failed = |e: &dyn std::fmt::Display| anyhow!("{e}");
    let panels = 1 + report.modes.len();
    let root = SVGBackend::new(path, (1000, 320 * panels as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let areas = root.split_evenly((panels, 1));

    let names: Vec<&str> = report.modes.iter().map(|m| m.mode.name()).collect();
    let max_tps = report.modes.iter().map(|m| m.tps).fold(1.0, f64::max) * 1.15;
    let mut tps = ChartBuilder::on(&areas[0])
        .caption(
            format!(
                "{}: TPS per mode ({} clients)",
                report.shape, report.clients
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d((0..names.len()).into_segmented(), 0.0..max_tps)
        .map_err(|e| failed(&e))?;
    tps.configure_mesh()
        .disable_x_mesh()
        .y_desc("transactions/s")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).map_or_else(String::new, |n| n.to_string()),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| failed(&e))?;
    tps.draw_series(report.modes.iter().enumerate().map(|(i, m)| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), m.tps),
            ],
            BLUE.mix(0.6).filled(),
        );
        bar.set_margin(0, 0, 20, 20);
        bar
    }))
    .map_err(|e| failed(&e))?;

    for (mode, area) in report.modes.iter().zip(&areas[1..]) {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let points = mode.standbys.iter().flat_map(|s| &s.samples);
        let max_t = points.clone().map(|p| p.t_ms / 1000.0).fold(1.0, f64::max);
        let max_lag = points
            .filter_map(|p| p.replay_lag_bytes)
            .map(mib)
            .fold(0.01, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{}: replay lag per standby ({:.0} tps)",
                    mode.mode.name(),
                    mode.tps
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..max_t, 0.0..max_lag)
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds since the load started")
            .y_desc("MiB behind")
            .draw()
            .map_err(|e| failed(&e))?;
        for (i, standby) in mode.standbys.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    standby
                        .samples
                        .iter()
                        .filter_map(|p| Some((p.t_ms / 1000.0, mib(p.replay_lag_bytes?)))),
                    color.stroke_width(2),
                ))
                .map_err(|e| failed(&e))?
                .label(standby.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        if !mode.standbys.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| failed(&e))?;
        }
    }
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_name_and_unknown_ones_are_named() {
        assert_eq!(parse_mode("remote_apply"), Ok(Mode::RemoteApply));
        assert!(parse_mode("sync").unwrap_err().contains("`sync`"));
        assert!(check_plot_path(Path::new("out.svg")).is_ok());
        assert!(check_plot_path(Path::new("out.png")).is_err());
    }
}
