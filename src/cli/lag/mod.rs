//! `pgrepl lag` and `pgrepl status`: arguments, the watch loop and exit codes. The renderings of
//! a [`Report`] (tables, Prometheus; JSON is serde's) live in `render`; the figures come from
//! `pgrepl::lag`.

mod ha;
pub(super) mod render;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio_util::sync::CancellationToken;

use self::render::{lag_table, status_table};
use super::out::WithHa;
use pgrepl::conn::{ConnParams, ConnectOptions};
use pgrepl::lag::{self, serve, GatherOptions, Node, Thresholds};
use pgrepl::units::{human_ms, parse_duration, parse_size};

#[derive(Debug, Args)]
pub struct LagArgs {
    /// Nodes to check, in any order: conninfo strings (`host=db1 port=5432 user=postgres`) or
    /// postgresql:// URIs; PG* variables and ~/.pgpass apply as in libpq. The role needs
    /// REPLICATION and pg_read_all_stats (or superuser); SQL goes to dbname, default `postgres`.
    /// Without NODE, the cluster `pgrepl up` built here (or the one --cluster names).
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Take the nodes from this cluster file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "nodes")]
    pub cluster: Option<PathBuf>,
    /// Print the report as JSON (one object per round; one line each with --watch).
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Print the figures in Prometheus text exposition format.
    #[arg(long)]
    pub prometheus: bool,
    /// Repeat every DURATION (2s, 500ms; a bare number is seconds) until interrupted, redrawing
    /// in place on a terminal.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub watch: Option<Duration>,
    /// Write a heartbeat row on the primary (creating table pgrepl_heartbeat if it is absent)
    /// and time how long each standby takes to show it.
    #[arg(long)]
    pub probe: bool,
    /// Exit 1 when a standby lags more than N bytes at any stage (suffixes kB, MB, GB, TB).
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub max_lag_bytes: Option<u64>,
    /// Exit 1 when a standby lags more than DURATION at any stage, or its heartbeat takes longer
    /// (500ms, 10s, 2min, 1h; a bare number is seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_lag_time: Option<Duration>,
    /// Give up on a node after DURATION; a shorter connect_timeout in its conninfo wins.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Keep collecting and serve /metrics (Prometheus), /status.json and a live page on ADDR
    /// (default 127.0.0.1:9187; any other interface must be named, e.g. --serve 0.0.0.0:9187).
    #[arg(long, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = serve::DEFAULT_ADDR,
          conflicts_with_all = ["json", "prometheus", "watch", "max_lag_bytes", "max_lag_time"])]
    pub serve: Option<std::net::SocketAddr>,
    /// With --serve: one round every DURATION.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration,
          requires = "serve")]
    pub interval: Duration,
}

/// Which command's human rendering to print; both print the same JSON and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Per standby: lag in bytes and time at each stage.
    Lag,
    /// The cluster: nodes, synchronous replication, promotion candidate.
    Status,
}

pub async fn run(args: LagArgs, view: View, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let (nodes, cluster) = nodes(&args)?;
    // `status` of a cluster with [ha] also shows what the agents keep in etcd.
    let uris = cluster
        .as_ref()
        .filter(|_| view == View::Status)
        .and_then(|c| c.client_uris());
    // `status` says when the first of the cluster's certificates expires.
    let tls = cluster
        .as_ref()
        .filter(|_| view == View::Status)
        .and_then(|c| c.tls_expiries().ok())
        .and_then(|expiries| expiries.into_iter().next())
        .map(|soonest| {
            format!(
                "TLS: certificates valid until {} (the soonest: {}); `pgrepl tls` lists them, `pgrepl tls rotate` renews the nodes'\n",
                soonest.not_after, soonest.of
            )
        });
    let ha_cluster = cluster.filter(|c| view == View::Status && c.spec.ha.is_some());
    let limits = Thresholds {
        max_lag_bytes: args.max_lag_bytes,
        max_lag_time: args.max_lag_time,
    };
    let options = GatherOptions {
        timeout: args.timeout,
        // Waiting at least as long as the limit lets a missing heartbeat count as over it.
        probe_wait: args
            .probe
            .then(|| args.timeout.max(args.max_lag_time.unwrap_or_default())),
    };
    if let Some(addr) = args.serve {
        return serve_until_cancelled(nodes, addr, args.interval, options, cancel).await;
    }
    let redraw = args.watch.is_some() && !args.json && std::io::stdout().is_terminal();
    let mut code = 0;
    loop {
        let read_ha = async {
            match &ha_cluster {
                Some(cluster) => Some(pgrepl::ha::status::read(cluster).await),
                None => None,
            }
        };
        let (report, ha_status) = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            both = async { tokio::join!(lag::gather(&nodes, &options), read_ha) } => both,
        };
        let verdict = report.verdict(&limits);
        code = verdict.exit_code();
        let mut out = String::new();
        if redraw {
            // Home and clear: the next round replaces this one instead of scrolling.
            out.push_str("\x1b[H\x1b[2J");
        }
        if args.json {
            let json = WithHa {
                result: &report,
                uris: uris.as_ref(),
                ha: ha_status.as_ref(),
            };
            out.push_str(&if args.watch.is_some() {
                serde_json::to_string(&json)?
            } else {
                serde_json::to_string_pretty(&json)?
            });
            out.push('\n');
        } else if args.prometheus {
            out.push_str(&serve::metrics::render(&report, None));
        } else {
            if let Some(every) = args.watch {
                out.push_str(&format!(
                    "every {} (ctrl-c to stop), round took {}\n\n",
                    human_ms(every.as_secs_f64() * 1000.0),
                    human_ms(report.round_ms)
                ));
            }
            out.push_str(&match view {
                View::Lag => lag_table(&report, &verdict),
                View::Status => status_table(&report, &verdict),
            });
            if let Some(uris) = &uris {
                out.push('\n');
                out.push_str(&super::out::uris_text(uris));
            }
            if let Some(tls) = &tls {
                out.push('\n');
                out.push_str(tls);
            }
            if let Some(status) = &ha_status {
                out.push_str(&ha::section(status));
            }
        }
        if !super::out::print(&out)? {
            // Whoever read our output has gone (`| head`): that is not a failure.
            return Ok(ExitCode::SUCCESS);
        }
        let Some(every) = args.watch else { break };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    Ok(ExitCode::from(code))
}

async fn serve_until_cancelled(
    nodes: Vec<Node>,
    addr: std::net::SocketAddr,
    interval: Duration,
    gather: GatherOptions,
    cancel: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let server = serve::Server::bind(addr).await?;
    eprintln!(
        "serving http://{}/ (/metrics, /status.json); ctrl-c to stop",
        server.local_addr()?
    );
    let options = serve::ServeOptions { interval, gather };
    server.run(nodes, options, cancel).await?;
    Ok(ExitCode::SUCCESS)
}

/// The role to name in hints: the first node's user.
pub fn user_hint(args: &LagArgs) -> Option<String> {
    let first = args.nodes.first()?;
    let params = ConnParams::parse(first).ok()?;
    ConnectOptions::from_process_env(params)
        .ok()
        .map(|o| o.user)
}

/// The nodes to read, and the cluster file's cluster when they come from one.
fn nodes(args: &LagArgs) -> anyhow::Result<(Vec<Node>, Option<pgrepl::cluster::Cluster>)> {
    if args.nodes.is_empty() {
        let cluster = super::cluster::find(args.cluster.clone())?;
        return Ok((cluster_nodes(&cluster), Some(cluster)));
    }
    Ok((conninfo_nodes(&args.nodes)?, None))
}

/// Every node of a cluster file, as its superuser.
pub(super) fn cluster_nodes(cluster: &pgrepl::cluster::Cluster) -> Vec<Node> {
    cluster
        .node_connections()
        .into_iter()
        .map(|(name, connect)| Node { name, connect })
        .collect()
}

/// Nodes given as conninfo strings or URIs, each named `host:port`.
pub(super) fn conninfo_nodes(conninfos: &[String]) -> anyhow::Result<Vec<Node>> {
    let mut nodes: Vec<Node> = Vec::with_capacity(conninfos.len());
    for (i, conninfo) in conninfos.iter().enumerate() {
        let params = ConnParams::parse(conninfo).with_context(|| format!("node {}", i + 1))?;
        let options =
            ConnectOptions::from_process_env(params).with_context(|| format!("node {}", i + 1))?;
        let node = Node::at(options);
        if nodes.iter().any(|n| n.name == node.name) {
            bail!("node `{}` is given twice", node.name);
        }
        nodes.push(node);
    }
    Ok(nodes)
}
