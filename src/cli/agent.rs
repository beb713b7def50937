//! `pgrepl agent --node NAME`: the automatic-failover agent beside one node.

use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;

use pgrepl::cluster::Purpose;
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
    /// etcd client URLs, comma-separated (default: the cluster file's `[ha] etcd`, or the etcd
    /// `up` started).
    #[arg(
        long = "etcd",
        value_name = "URL,...",
        env = "PGREPL_ETCD",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// The cluster's name in etcd keys (`/pgrepl/<scope>/`; default: `[ha] scope`, or the
    /// cluster file's name without its extension).
    #[arg(long = "scope", value_name = "NAME")]
    pub scope: Option<String>,
    /// Leader lease time to live in seconds: a dead primary is replaced about this long after
    /// its last renewal (default: `[ha] ttl`, or 2).
    #[arg(long = "ttl", value_name = "SECONDS")]
    pub ttl: Option<u64>,
}

/// Runs until Ctrl-C or SIGTERM; decisions are logged at info level (`-v`).
pub async fn run(args: AgentArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    // Build: on a machine of its own, the agent finds no state yet and builds its node.
    let cluster = args.cluster.find(Purpose::Build)?;
    let scope = match args.scope {
        Some(scope) if scope.is_empty() || scope.contains('/') => {
            anyhow::bail!("--scope `{scope}`: give a name without `/`")
        }
        Some(scope) => scope,
        None => pgrepl::ha::scope(&cluster)?,
    };
    let endpoints = if args.etcd.is_empty() {
        pgrepl::ha::endpoints(&cluster).ok_or_else(|| {
            anyhow::anyhow!(
                "no etcd to use: give --etcd URL,... or an [ha] section in the cluster file"
            )
        })?
    } else {
        args.etcd
    };
    let ttl_s = args
        .ttl
        .or(cluster.spec.ha.as_ref().map(|ha| ha.ttl))
        .unwrap_or(Timing::default().ttl_s);
    let options = AgentOptions {
        node: args.node,
        cluster_name: scope,
        endpoints,
        timing: Timing {
            ttl_s,
            ..Timing::default()
        },
    };
    let agent = Agent::start(cluster, options).await?;
    agent.run(cancel).await?;
    Ok(ExitCode::SUCCESS)
}
