//! `pgrepl history`: every role change, oldest first, from the agents' records in etcd and the
//! manual commands' in the state directory.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use pgrepl::cluster::history::merged;
use pgrepl::cluster::topology::Topology;
use pgrepl::ha::etcd_access::Role;
use pgrepl::ha::store::Store;

use super::cluster_args::{ClusterArgs, EtcdArgs};
use super::out::outln;

/// Per etcd request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// One JSON array: each change's time (Unix ms), kind, from, to, timeline, lsn, by, reason.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let local = Topology::load(cluster.state_dir())?
        .map(|t| t.history)
        .unwrap_or_default();
    let agents = match args.etcd.access(&cluster, Role::Reader)? {
        None => None,
        Some(access) => {
            let read = async {
                let store = Store::open(&access, &args.etcd.scope(&cluster)?, READ_TIMEOUT).await?;
                Ok::<_, anyhow::Error>(store.history().await?)
            };
            match read.await {
                Ok(changes) => Some(changes),
                Err(e) => {
                    eprintln!(
                        "etcd does not answer ({e}): only the role changes this state directory recorded"
                    );
                    None
                }
            }
        }
    };
    let changes = merged(agents.as_deref(), &local);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&changes)?);
    } else if changes.is_empty() {
        outln!("no role change recorded: the primary is the one `up` built");
    } else {
        for change in &changes {
            outln!("{}", change.line());
        }
    }
    Ok(ExitCode::SUCCESS)
}
