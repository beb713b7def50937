//! `pgrepl init`, `up`, `down`, `start`, `stop`, `restart`: the cluster commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};

use pgrepl::cluster::spec::{ClusterSpec, RuntimeKind};
use pgrepl::cluster::{Cluster, RuntimeChoice, StepLog};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RuntimeArg {
    Local,
    Docker,
}

/// Which cluster, and where its nodes live.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The cluster file (`pgrepl init` writes one; the recipe's defaults when it is absent).
    #[arg(long = "cluster", short = 'f', default_value = "pgrepl.toml", value_name = "FILE")]
    pub file: PathBuf,
    /// Override the file's runtime: local processes or docker containers.
    #[arg(long = "runtime", value_enum)]
    pub runtime: Option<RuntimeArg>,
    /// Directory of the PostgreSQL binaries for the local runtime (default: PATH, pg_config,
    /// /usr/lib/postgresql/*/bin).
    #[arg(long = "pg-bin", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Where data, logs and sockets live (default: the file's state_dir, `.pgrepl`).
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl ClusterArgs {
    fn open(&self) -> anyhow::Result<Cluster> {
        let choice = RuntimeChoice {
            runtime: self.runtime.map(|r| match r {
                RuntimeArg::Local => RuntimeKind::Local,
                RuntimeArg::Docker => RuntimeKind::Docker,
            }),
            pg_bin: self.pg_bin.clone(),
            state_dir: self.state_dir.clone(),
        };
        Ok(Cluster::open(&self.file, &choice)?)
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the cluster file.
    #[arg(long = "cluster", short = 'f', default_value = "pgrepl.toml", value_name = "FILE")]
    pub file: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Also delete every node's data.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The node, as named in the cluster file.
    pub node: String,
}

/// Steps print to stderr as they happen; results go to stdout.
struct PrintSteps(Instant);

impl StepLog for PrintSteps {
    fn step(&self, text: &str) {
        eprintln!("[{:>5.1}s] {text}", self.0.elapsed().as_secs_f64());
    }
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    if args.file.exists() && !args.force {
        anyhow::bail!("`{}` already exists: edit it, or give --force to overwrite it", args.file.display());
    }
    std::fs::write(&args.file, ClusterSpec::default().to_toml())?;
    // It holds the replication password.
    std::fs::set_permissions(&args.file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    println!("wrote {}", args.file.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let summary = cluster.up(&PrintSteps(Instant::now())).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<16} {:<8} {:<10} conninfo (for psql)", "node", "role", "sync");
    for node in &summary.nodes {
        println!("{:<16} {:<8} {:<10} {}", node.name, node.role, node.sync_state.as_deref().unwrap_or("-"), node.conninfo);
    }
    println!(
        "cluster is up: synchronous_standby_names = '{}'; {:.1} s",
        summary.synchronous_standby_names,
        summary.elapsed_ms as f64 / 1000.0
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    cluster.down(args.purge).await?;
    println!("cluster is down{}", if args.purge { "; its data is deleted" } else { "" });
    Ok(ExitCode::SUCCESS)
}

/// What a node command does.
#[derive(Debug, Clone, Copy)]
pub enum NodeAction {
    Start,
    Stop,
    Restart,
}

pub async fn node(args: NodeArgs, action: NodeAction) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    match action {
        NodeAction::Start => cluster.start_node(&args.node).await?,
        NodeAction::Stop => cluster.stop_node(&args.node).await?,
        NodeAction::Restart => cluster.restart_node(&args.node).await?,
    }
    println!("{}: {:?} done", args.node, action);
    Ok(ExitCode::SUCCESS)
}
