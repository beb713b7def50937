//! The runtimes a cluster's nodes can live in, behind one interface: the orchestration in
//! `cluster` never knows whether a node is a local process or a container.

use std::path::PathBuf;

use super::docker::DockerRuntime;
use super::local::LocalRuntime;
use super::spec::NodeSpec;
use super::ClusterError;
use crate::conn::ConnectOptions;

#[derive(Debug)]
pub enum Runtime {
    Local(LocalRuntime),
    /// Boxed: it holds the engine client, several times the local runtime's size.
    Docker(Box<DockerRuntime>),
}

impl Runtime {
    /// Creates what the nodes need before any of them exists (directories, a network).
    pub async fn prepare(&self, nodes: &[NodeSpec]) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => local.prepare(nodes),
            Runtime::Docker(docker) => docker.prepare(nodes).await,
        }
    }

    /// Where pgrepl (on the host) reads and writes the node's data directory.
    pub fn data_dir(&self, node: &NodeSpec) -> PathBuf {
        match self {
            Runtime::Local(local) => local.data_dir(node),
            Runtime::Docker(docker) => docker.data_dir(node),
        }
    }

    /// Creates a new, empty primary (initdb, or a container's first start).
    pub async fn init_primary(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => local.init_primary(node),
            Runtime::Docker(docker) => docker.init_primary(node).await,
        }
    }

    /// Starts an existing node and returns once it accepts connections.
    pub async fn start(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => {
                blocking(local, node, move |local, node| local.start(&node)).await
            }
            Runtime::Docker(docker) => docker.start(node).await,
        }
    }

    /// Stops the node: `fast` shuts down cleanly, otherwise immediately (crash-like).
    pub async fn stop(&self, node: &NodeSpec, fast: bool) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => {
                blocking(local, node, move |local, node| local.stop(&node, fast)).await
            }
            Runtime::Docker(docker) => docker.stop(node, fast).await,
        }
    }

    /// Kills the node's server without any shutdown: a crash.
    pub async fn kill(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => local.kill(node),
            Runtime::Docker(docker) => docker.kill(node).await,
        }
    }

    /// Rewinds the stopped `node`'s data directory to where its history forked from the running
    /// `source` with the stock pg_rewind, run as the server user; returns what it printed.
    pub async fn rewind(&self, node: &NodeSpec, source: &NodeSpec) -> Result<String, ClusterError> {
        match self {
            Runtime::Local(local) => {
                let source = source.clone();
                blocking(local, node, move |local, node| local.rewind(&node, &source)).await
            }
            Runtime::Docker(docker) => docker.rewind(node, source).await,
        }
    }

    pub async fn is_running(&self, node: &NodeSpec) -> bool {
        match self {
            Runtime::Local(local) => local.is_running(node),
            Runtime::Docker(docker) => docker.is_running(node).await,
        }
    }

    /// Removes what `prepare` and the nodes created; data too when `purge`.
    pub async fn remove(&self, nodes: &[NodeSpec], purge: bool) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => {
                for node in nodes {
                    local.stop(node, true)?;
                }
                if purge && local.state_dir.exists() {
                    std::fs::remove_dir_all(&local.state_dir).map_err(|e| {
                        ClusterError::io(format!("remove `{}`", local.state_dir.display()), e)
                    })?;
                }
                Ok(())
            }
            Runtime::Docker(docker) => docker.remove(nodes, purge).await,
        }
    }

    /// A superuser session to the node from the host, for pgrepl's own SQL.
    pub fn superuser(&self, node: &NodeSpec) -> ConnectOptions {
        match self {
            Runtime::Local(local) => local.superuser(node),
            Runtime::Docker(docker) => docker.superuser(node),
        }
    }

    /// How standbys reach `primary` (host and port in their primary_conninfo).
    pub fn primary_address_for_standbys(&self, primary: &NodeSpec) -> (String, u16) {
        match self {
            Runtime::Local(_) => ("127.0.0.1".into(), primary.port),
            Runtime::Docker(docker) => docker.primary_address_for_standbys(primary),
        }
    }

    /// How pgrepl on the host reaches `node` over TCP (for replication sessions).
    pub fn host_address(&self, node: &NodeSpec) -> (String, u16) {
        // Containers publish their port on the host's loopback, like local servers listen.
        ("127.0.0.1".into(), node.port)
    }

    /// The client addresses the primary's pg_hba line must admit for replication: the
    /// standbys' and pgrepl's own.
    pub async fn replication_clients_cidr(&self) -> Result<String, ClusterError> {
        match self {
            Runtime::Local(_) => Ok("127.0.0.1/32".into()),
            Runtime::Docker(docker) => docker.replication_clients_cidr().await,
        }
    }

    /// Who must own data written for the nodes (a container's postgres uid:gid).
    pub fn data_owner(&self) -> Option<(u32, u32)> {
        match self {
            Runtime::Local(local) => local.run_as,
            Runtime::Docker(docker) => Some(docker.data_owner()),
        }
    }

    /// A libpq conninfo stock `psql` on this host can use to reach the node.
    pub fn psql_conninfo(&self, node: &NodeSpec) -> String {
        self.superuser(node).redacted()
    }
}

/// Runs a local-runtime operation (which waits on `pg_ctl`) off the async workers, so several
/// nodes can start at once.
async fn blocking<T, F>(local: &LocalRuntime, node: &NodeSpec, work: F) -> Result<T, ClusterError>
where
    T: Send + 'static,
    F: FnOnce(LocalRuntime, NodeSpec) -> Result<T, ClusterError> + Send + 'static,
{
    let (local, node) = (local.clone(), node.clone());
    tokio::task::spawn_blocking(move || work(local, node))
        .await
        .map_err(|e| ClusterError::io("run a node operation", std::io::Error::other(e)))?
}

/// Refuses a node whose host port something else already listens on, before anything is created.
pub(super) fn ensure_port_free(node: &NodeSpec) -> Result<(), ClusterError> {
    std::net::TcpListener::bind(("127.0.0.1", node.port)).map(drop).map_err(|_| {
        ClusterError::Setup(format!(
            "port {} for `{}` is in use: stop what listens there, or change the node's port in the cluster file",
            node.port, node.name
        ))
    })
}
