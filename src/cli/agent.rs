//! `pgrepl agent --node NAME`: the automatic-failover agent beside one node.

use std::process::ExitCode;

use clap::Args;
use tokio_util::sync::CancellationToken;

use pgrepl::cluster::Purpose;
use pgrepl::ha::agent::{Agent, AgentOptions};
use pgrepl::ha::etcd_access::Role;
use pgrepl::ha::Timing;

use super::cluster_args::{ClusterArgs, EtcdArgs};

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The node this agent manages (a name from the cluster file).
    #[arg(long = "node", value_name = "NAME")]
    pub node: String,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Leader lease time to live, whole seconds (`2s`, or a bare number): a dead primary is
    /// replaced about this long after its last renewal (default: `[ha] ttl`, or 2).
    #[arg(long = "ttl", value_name = "DURATION", value_parser = pgrepl::units::parse_whole_seconds)]
    pub ttl: Option<u64>,
    /// Where to serve the HTTP API, `IP:PORT` (default: the node's `api` in the cluster file,
    /// else the address `up` recorded; none: no API).
    #[arg(long = "api", value_name = "ADDR")]
    pub api: Option<std::net::SocketAddr>,
}

/// Runs until Ctrl-C or SIGTERM; decisions are logged at info level (`-v`).
pub async fn run(args: AgentArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    // Build: on a machine of its own, the agent finds no state yet and builds its node.
    let cluster = args.cluster.find(Purpose::Build)?;
    let scope = args.etcd.scope(&cluster)?;
    let etcd = args.etcd.access(&cluster, Role::Agent)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no etcd to use: give --etcd URL,... or an [ha] section in the cluster file"
        )
    })?;
    let ttl_s = args
        .ttl
        .or(cluster.spec.ha.as_ref().map(|ha| ha.ttl))
        .unwrap_or(Timing::default().ttl_s);
    let api = match args.api {
        Some(addr) => Some(addr),
        None => pgrepl::ha::api_addr::of(&cluster, cluster.node(&args.node)?)?,
    };
    let options = AgentOptions {
        api,
        node: args.node,
        cluster_name: scope,
        etcd,
        timing: Timing {
            ttl_s,
            start_timeout_s: cluster
                .spec
                .ha
                .as_ref()
                .map_or(Timing::default().start_timeout_s, |ha| {
                    ha.primary_start_timeout
                }),
            ..Timing::default()
        },
    };
    let agent = Agent::start(cluster, options).await?;
    agent.run(cancel).await?;
    Ok(ExitCode::SUCCESS)
}
