//! `up` and `down` for `[ha]` on the docker runtime: each node's container runs its agent,
//! which builds and runs its server (`cluster::docker::agent`), so `up` builds no node itself:
//! it writes each container's cluster file and starts the containers. Each agent's API is
//! published on the host where `api_addr` records it, for `status` and a proxy on the host.

use super::AgentProcess;
use crate::cluster::docker::DockerRuntime;
use crate::cluster::{Cluster, StepLog};
use crate::ha::etcd_access::EtcdAccess;
use crate::ha::machines::{etcd_files, machine_spec, Network};
use crate::ha::HaError;

/// Writes every node's machine directory and starts the containers that do not run; `avoid`:
/// ports the agents' APIs must not take on the host.
pub(super) async fn start(
    cluster: &Cluster,
    docker: &DockerRuntime,
    etcd: &EtcdAccess,
    scope: &str,
    avoid: &[u16],
    log: &dyn StepLog,
) -> Result<Vec<AgentProcess>, HaError> {
    let exe = std::env::current_exe().map_err(|source| HaError::Io {
        context: "find the pgrepl binary the containers run".into(),
        source,
    })?;
    let subnet = docker.replication_clients_cidr().await?;
    let net = Network {
        subnet: &subnet,
        etcd,
        scope,
    };
    let spec = machine_spec(&cluster.file_spec, cluster.replication_password(), &net);
    let text = spec.to_toml();
    let mut files = Vec::new();
    for (host, name) in etcd_files(etcd) {
        let text = std::fs::read_to_string(&host).map_err(|source| HaError::Io {
            context: format!("read `{}` (etcd credentials)", host.display()),
            source,
        })?;
        files.push((name, text));
    }
    let apis = crate::ha::api_addr::ensure(cluster, avoid)?;
    // The CA only: each agent makes its node's certificate, with the names it is reached by
    // from inside the network.
    cluster.ensure_tls(&[], true, log)?;
    let mut agents = Vec::new();
    for node in &cluster.spec.nodes {
        docker.write_machine(node, &text, &files)?;
        cluster.share_tls(
            &docker.machine_dir(node).join(&spec.state_dir),
            Some(docker.data_owner()),
            node,
        )?;
        let api = apis[&node.name];
        if docker.ensure_agent(node, &exe, api).await? {
            log.step(&format!(
                "start container `{}`: its agent builds and runs the server (log: docker logs {})",
                node.name, node.name
            ));
        }
        agents.push(AgentProcess {
            node: node.name.clone(),
            pid: docker.main_pid(&node.name).await.unwrap_or(0),
            log: format!("docker logs {}", node.name),
            api: Some(api),
        });
    }
    Ok(agents)
}

/// The first agent whose container stopped, with its last log lines.
pub(super) async fn exited(docker: &DockerRuntime, cluster: &Cluster) -> Option<(String, String)> {
    for node in &cluster.spec.nodes {
        if !docker.is_running(node).await {
            return Some((node.name.clone(), docker.log_tail(&node.name).await));
        }
    }
    None
}

/// Stops the containers, the leader's last: each agent shuts its server down as the local
/// runtime's do when they get SIGINT.
pub(super) async fn stop(
    cluster: &Cluster,
    docker: &DockerRuntime,
    leader: Option<&str>,
) -> Result<(), HaError> {
    let (last, first): (Vec<_>, Vec<_>) = cluster
        .spec
        .nodes
        .iter()
        .partition(|node| Some(node.name.as_str()) == leader);
    for group in [first, last] {
        let stops = group.iter().map(|node| docker.stop(node, true));
        for result in futures_util::future::join_all(stops).await {
            result?;
        }
    }
    Ok(())
}
