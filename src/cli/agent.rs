//! `pgrepl agent --node NAME`: the automatic-failover agent beside one node.

use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;

use pgrepl::ha::agent::{Agent, AgentOptions};
use pgrepl::ha::Timing;

use super::cluster::ClusterArgs;

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The node this agent manages (a name from the cluster file).
    #[arg(long = "node", value_name = "NAME")]
    pub node: String,
    /// etcd client URLs, comma-separated.
    #[arg(
        long = "etcd",
        value_name = "URL,...",
        env = "PGREPL_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// The cluster's name in etcd keys (`/pgrepl/<scope>/`; default: the cluster file's name
    /// without its extension).
    #[arg(long = "scope", value_name = "NAME")]
    pub scope: Option<String>,
    /// Leader lease time to live in seconds: a dead primary is replaced about this long after
    /// its last renewal.
    #[arg(long = "ttl", value_name = "SECONDS", default_value_t = Timing::default().ttl_s)]
    pub ttl: u64,
}

/// Runs until Ctrl-C or SIGTERM; decisions are logged at info level (`-v`).
pub async fn run(args: AgentArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let scope = match args.scope {
        Some(scope) => scope,
        None => args
            .cluster
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pgrepl".into()),
    };
    if scope.is_empty() || scope.contains('/') {
        anyhow::bail!("--scope `{scope}`: give a name without `/`");
    }
    let options = AgentOptions {
        node: args.node,
        cluster_name: scope,
        endpoints: args.etcd,
        timing: Timing {
            ttl_s: args.ttl,
            ..Timing::default()
        },
    };
    let agent = Agent::start(cluster, options).await?;
    agent.run(cancel).await?;
    Ok(ExitCode::SUCCESS)
}
