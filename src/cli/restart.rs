//! `pgrepl restart NODE`, and the rolling restart `pgrepl restart --pending|--all`: standbys
//! one at a time, each streaming again before the next, then the primary by a switchover
//! (`cluster::settings::rolling` orders it, `ha::rolling` carries it out). With agents each
//! restart is asked of the node's own agent, so nothing races it. Ctrl-C stops between steps.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::anyhow;
use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::cluster::PrintSteps;
use super::cluster_args::{AgentsArgs, ClusterArgs};
use super::config::{node_results, print_nodes, Holder};
use super::ha::who;
use super::out::{outln, Done};
use super::Interrupted;
use pgrepl::cluster::settings::rolling::Step;
use pgrepl::cluster::StepLog;
use pgrepl::ha::rolling::Rolling;

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The node, as named in the cluster file (or --pending / --all).
    #[arg(required_unless_present_any = ["pending", "all"], conflicts_with_all = ["pending", "all"])]
    pub node: Option<String>,
    /// A rolling restart of every node with a setting waiting for one: standbys one at a time,
    /// then the primary by a switchover (in place when a setting standbys need at least as
    /// high is lowered: it must reach the primary first).
    #[arg(long, conflicts_with = "all")]
    pub pending: bool,
    /// A rolling restart of every node, in the same order.
    #[arg(long)]
    pub all: bool,
    /// Print the order and change nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// The result as JSON: command, node or steps (each with elapsed_ms), elapsed_ms.
    #[arg(long)]
    pub json: bool,
    /// How long each step may take (`--wait`), and the etcd of the agents.
    #[command(flatten)]
    pub agents: AgentsArgs,
}

#[derive(Debug, Serialize)]
struct StepDone {
    #[serde(flatten)]
    step: Step,
    elapsed_ms: u128,
}

#[derive(Debug, Serialize)]
struct Rolled {
    steps: Vec<StepDone>,
    /// Nodes with settings still waiting for a restart afterwards.
    pending_after: Vec<String>,
}

pub async fn run(args: RestartArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let cluster = args.cluster.open()?;
    let holder = Holder::find(&cluster, &args.agents.etcd).await?;
    let control = match &holder {
        Holder::Agents(agents) => Some(agents.control()),
        Holder::Here => None,
    };
    let rolling = Rolling {
        cluster: &cluster,
        agents: control,
        limit: args.agents.wait,
        by: who(),
    };
    let log = PrintSteps(started);
    if let Some(node) = &args.node {
        cluster.node(node)?;
        if args.dry_run {
            outln!(
                "restart `{node}`{}",
                if control.is_some() {
                    " (by its agent)"
                } else {
                    ""
                }
            );
            return Ok(ExitCode::SUCCESS);
        }
        match control {
            Some(control) => control.restart(node, &who(), args.agents.wait).await?,
            None => cluster.restart_node(node).await?,
        }
        if args.json {
            let done = Done {
                command: "restart",
                node: Some(node),
                elapsed_ms: started.elapsed().as_millis(),
                detail: (),
            };
            done.print()?;
        } else {
            outln!("{node}: restarted");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (desired, _) = holder.desired(&cluster).await?;
    let steps = cluster
        .rolling_plan(holder.primary(), &desired, args.all)
        .await?;
    if args.dry_run || steps.is_empty() {
        if steps.is_empty() {
            outln!("no node waits for a restart");
        }
        for (i, step) in steps.iter().enumerate() {
            outln!("{}. {step}", i + 1);
        }
        if args.dry_run {
            outln!("dry run: nothing was restarted");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut done: Vec<StepDone> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let where_ = || {
            let left: Vec<String> = steps[i..].iter().map(|s| s.to_string()).collect();
            format!(
                "done: {} of {} steps; not done: {}",
                i,
                steps.len(),
                left.join("; ")
            )
        };
        if cancel.is_cancelled() {
            return Err(Interrupted(format!(
                "stopped between steps ({}): `pgrepl restart --pending` continues",
                where_()
            ))
            .into());
        }
        log.step(&format!("step {}/{}: {step}", i + 1, steps.len()));
        let at = Instant::now();
        rolling.step(step, &log).await.map_err(|e| {
            anyhow!("{step}: {e} ({}); `pgrepl status` shows the cluster, `pgrepl restart --pending` continues", where_())
        })?;
        done.push(StepDone {
            step: step.clone(),
            elapsed_ms: at.elapsed().as_millis(),
        });
    }
    let names: Vec<&str> = desired.settings.keys().map(String::as_str).collect();
    let nodes = node_results(&cluster, &names, &desired).await;
    let pending_after: Vec<String> = nodes
        .iter()
        .filter(|n| !n.pending_restart.is_empty())
        .map(|n| n.node.clone())
        .collect();
    if args.json {
        let detail = Rolled {
            steps: done,
            pending_after,
        };
        Done {
            command: "restart",
            node: None,
            elapsed_ms: started.elapsed().as_millis(),
            detail,
        }
        .print()?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "rolling restart done in {:.1} s:",
        started.elapsed().as_secs_f64()
    );
    print_nodes(&nodes)?;
    Ok(ExitCode::SUCCESS)
}
