//! The runtimes a cluster's nodes can live in, behind one interface: the orchestration in
//! `cluster` never knows whether a node is a local process or a container. The local runtime's
//! work blocks (child processes, pid waits), so it runs here on tokio's blocking pool.
//!
//! Arrows point down: this file dispatches to `local` and `docker`, which share `ports`,
//! `server_version` and `runtime_error` and import nothing from here.

use std::path::PathBuf;

use super::docker::DockerRuntime;
use super::local::LocalRuntime;
use super::ports;
use super::spec::{NodeSpec, LOOPBACK};
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
            Runtime::Local(local) => {
                let nodes = nodes.to_vec();
                blocking(local, move |local| local.prepare(&nodes)).await
            }
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

    /// Where the node's server finds its certificate, key and the cluster CA: a directory
    /// named `tls` beside its data directory as the server sees it (`cluster/tls.rs`).
    pub fn tls_dir(&self, node: &NodeSpec) -> PathBuf {
        match self {
            Runtime::Local(local) => local.data_dir(node).with_file_name("tls"),
            Runtime::Docker(docker) => docker.tls_dir(node),
        }
    }

    /// Every name and address the node is reached by, which its certificate must carry.
    pub fn tls_names(&self, node: &NodeSpec) -> Vec<String> {
        let mut names = Vec::new();
        for name in [
            node.name.clone(),
            node.host().to_owned(),
            self.host_address(node).0,
            self.primary_address_for_standbys(node).0,
            "localhost".to_owned(),
            LOOPBACK.to_owned(),
            "::1".to_owned(),
        ] {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// The PostgreSQL major of the server binaries the nodes run (the local bin directory's,
    /// or the image's).
    pub async fn server_major(&self) -> Result<u32, ClusterError> {
        match self {
            Runtime::Local(local) => blocking(local, |local| Ok(local.server_major()?)).await,
            Runtime::Docker(docker) => docker.server_major().await,
        }
    }

    /// Creates a new, empty primary (initdb, or a container's first start); `tls`: the cluster
    /// has TLS, so other machines' password logins come over TLS only.
    pub async fn init_primary(&self, node: &NodeSpec, tls: bool) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => {
                let node = node.clone();
                blocking(local, move |local| local.init_primary(&node, tls)).await
            }
            Runtime::Docker(docker) => docker.init_primary(node).await,
        }
    }

    /// Starts an existing node and returns once it accepts connections. A node whose data
    /// another PostgreSQL major wrote is refused before anything starts.
    pub async fn start(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => {
                if !local.is_running(node) {
                    ports::ensure_free(node).await?;
                }
                let node = node.clone();
                blocking(local, move |local| local.start(&node)).await
            }
            Runtime::Docker(docker) => docker.start(node).await,
        }
    }

    /// Stops the node: `fast` shuts down cleanly, otherwise immediately (crash-like).
    pub async fn stop(&self, node: &NodeSpec, fast: bool) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => {
                let node = node.clone();
                blocking(local, move |local| local.stop(&node, fast)).await
            }
            Runtime::Docker(docker) => docker.stop(node, fast).await,
        }
    }

    /// Kills the node's server without any shutdown: a crash.
    pub async fn kill(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => {
                let node = node.clone();
                blocking(local, move |local| local.kill(&node)).await
            }
            Runtime::Docker(docker) => docker.kill(node).await,
        }
    }

    /// Rewinds the stopped `node`'s data directory to where its history forked from the running
    /// `source` with the stock pg_rewind, run as the server user; returns what it printed. The
    /// local runtime reaches `source` with `superuser` (its socket, or TCP to another machine);
    /// a container reaches it by name on the network.
    pub async fn rewind(
        &self,
        node: &NodeSpec,
        source: &NodeSpec,
        superuser: ConnectOptions,
    ) -> Result<String, ClusterError> {
        match self {
            Runtime::Local(local) => {
                let node = node.clone();
                blocking(local, move |local| local.rewind(&node, &superuser)).await
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

    /// Stops the nodes and confirms each is gone (process exited, container removed), then
    /// removes what `prepare` created; data too when `purge`. When a node cannot be stopped,
    /// nothing is deleted and the error names it.
    pub async fn remove(&self, nodes: &[NodeSpec], purge: bool) -> Result<(), ClusterError> {
        match self {
            Runtime::Local(local) => {
                let nodes = nodes.to_vec();
                blocking(local, move |local| local.remove(&nodes, purge)).await
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
            Runtime::Local(_) => (primary.host().to_owned(), primary.port),
            Runtime::Docker(docker) => docker.primary_address_for_standbys(primary),
        }
    }

    /// How pgrepl on the host reaches `node` over TCP (for replication sessions).
    pub fn host_address(&self, node: &NodeSpec) -> (String, u16) {
        match self {
            Runtime::Local(_) => (node.host().to_owned(), node.port),
            // Containers publish their port on the host's loopback.
            Runtime::Docker(_) => (LOOPBACK.to_owned(), node.port),
        }
    }

    /// The client addresses the primary's pg_hba lines must admit for replication: the
    /// standbys' and pgrepl's own (loopback, each node's host for nodes on other machines, and
    /// `[local] clients`).
    pub async fn replication_clients(
        &self,
        nodes: &[NodeSpec],
    ) -> Result<Vec<String>, ClusterError> {
        match self {
            Runtime::Local(local) => {
                let mut clients = vec![format!("{LOOPBACK}/32")];
                // Networks before names: a name line costs a reverse lookup per connection.
                let hosts = nodes.iter().map(|node| host_cidr(node.host()));
                for client in local.settings.clients.iter().cloned().chain(hosts) {
                    if !clients.contains(&client) {
                        clients.push(client);
                    }
                }
                Ok(clients)
            }
            Runtime::Docker(docker) => Ok(vec![docker.replication_clients_cidr().await?]),
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

/// The pg_hba connection type for clients at `address`: with TLS, `hostssl` for every address
/// but this machine's loopback, whose traffic crosses no network.
pub fn hba_connection_type(tls: bool, address: &str) -> &'static str {
    if tls && address != format!("{LOOPBACK}/32") {
        "hostssl"
    } else {
        "host"
    }
}

/// A pg_hba address for one host: an IP address as a single-address CIDR, a name as it is.
fn host_cidr(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => format!("{ip}/32"),
        Ok(std::net::IpAddr::V6(ip)) => format!("{ip}/128"),
        Err(_) => host.to_owned(),
    }
}

/// Runs a local-runtime operation (which waits on child processes and pids) off the async
/// workers, so several nodes can start at once and the workers stay free.
async fn blocking<T, F>(local: &LocalRuntime, work: F) -> Result<T, ClusterError>
where
    T: Send + 'static,
    F: FnOnce(LocalRuntime) -> Result<T, ClusterError> + Send + 'static,
{
    let local = local.clone();
    tokio::task::spawn_blocking(move || work(local))
        .await
        .map_err(|e| ClusterError::io("run a node operation", std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_become_single_address_hba_entries() {
        assert_eq!(host_cidr("10.213.0.1"), "10.213.0.1/32");
        assert_eq!(host_cidr("::1"), "::1/128");
        assert_eq!(host_cidr("db-1.example"), "db-1.example");
    }
}
