//! What `up` and `down` do for `[ha]`.
//!
//! `up`: the etcd of `local_etcd` (local runtime) or `docker_etcd` (docker runtime) when
//! `[ha]` names none; then the agents: on the local runtime, once the servers are built, one
//! `pgrepl agent` process per node (`<state_dir>/agents/<node>.log`, pid file beside); on the
//! docker runtime, each node's container runs its agent, which builds its node
//! (`containers`). Then a wait until the agents have elected a leader. What already runs is
//! left alone, so `up` again starts only what is missing.
//!
//! `[proxy]`: HAProxy once the agents answer (`proxy`); `down` stops it before anything else.
//!
//! `down`: the agents first, the leader's last (each standby's agent leaves its server running;
//! the leader's stops its primary cleanly, then releases the lease, and nobody is left to elect
//! a successor), then the servers, then etcd; only then, with `--purge`, the files.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

mod containers;

use super::daemon::Daemon;
use super::docker_etcd::DockerEtcd;
use super::etcd_access::{EtcdAccess, Role};
use super::local_etcd::LocalEtcd;
use super::model::View;
use super::store::Store;
use super::{Awaited, HaError};
use crate::cluster::record::ClusterRecord;
use crate::cluster::runtime::Runtime;
use crate::cluster::spec::RuntimeKind;
use crate::cluster::{Cluster, StepLog};
use crate::fetch::FetchPolicy;

/// A first election needs the agents to start, probe their servers and take the key.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// A leader's agent shuts its primary down (a checkpoint) before it exits.
const AGENT_STOP_WAIT: Duration = Duration::from_secs(60);
/// Per etcd request while `up` and `down` read the leader.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// What `up` found or started for `[ha]`.
#[derive(Debug, Clone, Serialize)]
pub struct HaUp {
    pub etcd: Vec<String>,
    pub scope: String,
    pub leader: String,
    pub agents: Vec<AgentProcess>,
    /// The agents' API is HTTPS, with the cluster CA (the cluster has TLS).
    pub api_tls: bool,
    /// `[proxy]`'s HAProxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<super::proxy::ProxyUp>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentProcess {
    pub node: String,
    /// The agent's pid, or its container's main process's (0: unknown).
    pub pid: i32,
    /// Where its log is: a file, or the command that shows a container's.
    pub log: String,
    /// Where it serves its HTTP API (`None`: nowhere this machine reaches).
    pub api: Option<std::net::SocketAddr>,
}

/// The leader the agents have elected, when the cluster's etcd answers and holds one: the
/// agents then own the roles, so `up` must not rebuild nodes behind their backs (a former
/// primary's agent rejoins it), only start what is missing of etcd and the agents.
pub async fn leader_in_etcd(cluster: &Cluster) -> Option<String> {
    let access = super::etcd_access(cluster, Role::Reader)?;
    let scope = super::scope(cluster).ok()?;
    let store = Store::open(&access, &scope, READ_TIMEOUT).await.ok()?;
    store.snapshot().await.ok()?.leader.map(|l| l.node)
}

/// Starts what is missing of etcd and the agents, and waits for a leader. After `fetch`'s
/// cancel (Ctrl-C) nothing more is started; an etcd missing from this machine is fetched as
/// `fetch` allows.
pub async fn up(
    cluster: &Cluster,
    log: &dyn StepLog,
    fetch: &FetchPolicy,
) -> Result<HaUp, HaError> {
    let cancel = &fetch.cancel;
    let go_on = || {
        if cancel.is_cancelled() {
            Err(HaError::Interrupted)
        } else {
            Ok(())
        }
    };
    go_on()?;
    let ha = cluster.spec.ha.as_ref().ok_or(HaError::NoHaSection)?;
    let scope = super::scope(cluster)?;
    let avoid: Vec<u16> = cluster.spec.nodes.iter().map(|n| n.port).collect();
    let tls = cluster.spec.tls_on();
    if let Runtime::Docker(_) = &cluster.runtime {
        // The image, the secrets, free ports and the network, before any container.
        cluster.runtime.prepare(&cluster.spec.nodes).await?;
    }
    // What the host reaches etcd at, and what the agents do (in containers: by name).
    let (etcd, agents_etcd) = match (&cluster.runtime, ha.etcd.is_empty()) {
        (_, false) => {
            let access = super::etcd_access(cluster, Role::Agent).expect("[ha] names etcd");
            (access.clone(), access)
        }
        (Runtime::Local(_), true) => {
            let access = LocalEtcd::new(cluster.state_dir())
                .ensure_running(&avoid, &scope, tls, log, fetch)
                .await?;
            (access.clone(), access)
        }
        (Runtime::Docker(docker), true) => {
            let urls = DockerEtcd::new(docker, cluster.state_dir(), &scope, &ha.etcd_image)
                .ensure_running(&avoid, tls, log)
                .await?;
            let network = urls.host.at(urls.network);
            (urls.host, network)
        }
    };
    go_on()?;
    // The CA before any agent: each makes its node's certificate from it, and agents started
    // together must not each make a CA of their own.
    let agents = match &cluster.runtime {
        Runtime::Local(_) => {
            cluster.ensure_tls(&cluster.spec.nodes, true, log)?;
            start_agents(cluster, &avoid, log)?
        }
        Runtime::Docker(docker) => {
            let agents =
                containers::start(cluster, docker, &agents_etcd, &scope, &avoid, log).await?;
            record_docker_cluster(cluster, docker.image_name())?;
            agents
        }
    };
    let leader = tokio::select! {
        leader = wait_for_leader(cluster, &agents, &etcd, &scope) => leader?,
        () = cancel.cancelled() => return Err(HaError::Interrupted),
    };
    log.step(&format!(
        "`{leader}` leads (etcd scope `{scope}`, lease {} s)",
        ha.ttl
    ));
    go_on()?;
    let proxy = match &cluster.spec.proxy {
        Some(spec) => Some(super::proxy::ensure_running(cluster, spec, log).await?),
        None => None,
    };
    Ok(HaUp {
        etcd: etcd.endpoints,
        scope,
        leader,
        agents,
        api_tls: tls,
        proxy,
    })
}

fn agents_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("agents")
}

fn agent(state_dir: &Path, node: &str) -> Daemon {
    let dir = agents_dir(state_dir);
    Daemon {
        what: format!("the agent of `{node}`"),
        pid_file: dir.join(format!("{node}.pid")),
        log_file: dir.join(format!("{node}.log")),
        marks: vec!["agent".into(), node.into(), state_dir.display().to_string()],
    }
}

/// One agent process per node; `avoid`: ports the API must not take.
fn start_agents(
    cluster: &Cluster,
    avoid: &[u16],
    log: &dyn StepLog,
) -> Result<Vec<AgentProcess>, HaError> {
    let file = cluster.cluster_file().ok_or(HaError::NoClusterFile)?;
    let state_dir = cluster.state_dir();
    let exe = std::env::current_exe().map_err(|source| HaError::Io {
        context: "find the pgrepl binary to run the agents".into(),
        source,
    })?;
    let dir = agents_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|source| HaError::Io {
        context: format!("create `{}`", dir.display()),
        source,
    })?;
    let apis = super::api_addr::ensure(cluster, avoid)?;
    let mut agents = Vec::new();
    for node in &cluster.spec.nodes {
        let daemon = agent(state_dir, &node.name);
        let pid = match daemon.running() {
            Some(pid) => pid,
            None => {
                log.step(&format!(
                    "start the agent of `{}` (log `{}`)",
                    node.name,
                    daemon.log_file.display()
                ));
                // Everything else, the password included, the agent reads from the cluster file.
                let args: Vec<OsString> = vec![
                    "-v".into(),
                    "agent".into(),
                    "--node".into(),
                    node.name.clone().into(),
                    "--cluster".into(),
                    file.into(),
                    "--state-dir".into(),
                    state_dir.into(),
                    "--api".into(),
                    apis[&node.name].to_string().into(),
                ];
                daemon.start(&exe, &args, state_dir)?
            }
        };
        agents.push(AgentProcess {
            node: node.name.clone(),
            pid,
            log: daemon.log_file.display().to_string(),
            api: Some(apis[&node.name]),
        });
    }
    Ok(agents)
}

/// Waits until a leader holds the key and wrote its sync record and every agent published
/// its member record, so a `status` right after `up` shows them all; an agent that exits
/// meanwhile ends the wait with the last line of its log.
async fn wait_for_leader(
    cluster: &Cluster,
    agents: &[AgentProcess],
    etcd: &EtcdAccess,
    scope: &str,
) -> Result<String, HaError> {
    let store = Store::open(etcd, scope, READ_TIMEOUT).await?;
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        if let Some((node, last_words)) = exited(cluster, agents).await {
            return Err(HaError::AgentExited { node, last_words });
        }
        let awaited = match store.snapshot().await {
            Ok(snapshot) => match elected(&snapshot, agents) {
                Ok(leader) => return Ok(leader),
                Err(awaited) => awaited,
            },
            Err(e) => Awaited::Etcd(Box::new(e)),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(HaError::NoLeaderYet {
                awaited,
                after: LEADER_WAIT,
                logs: agents.iter().map(|a| a.log.clone()).collect(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first agent that exited, with the last of its log.
async fn exited(cluster: &Cluster, agents: &[AgentProcess]) -> Option<(String, String)> {
    if let Runtime::Docker(docker) = &cluster.runtime {
        return containers::exited(docker, cluster).await;
    }
    let gone = agents
        .iter()
        .find(|a| agent(cluster.state_dir(), &a.node).running().is_none())?;
    let text = std::fs::read_to_string(&gone.log).unwrap_or_default();
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    Some((
        gone.node.clone(),
        format!("{} (log `{}`)", last.unwrap_or("").trim(), gone.log),
    ))
}

/// What later commands find the cluster by: `up` on the docker runtime with `[ha]` builds no
/// node itself, so nothing else records it.
fn record_docker_cluster(cluster: &Cluster, image: &str) -> Result<(), HaError> {
    let record = ClusterRecord {
        runtime: RuntimeKind::Docker,
        cluster_file: cluster.cluster_file().map(Path::to_path_buf),
        image: Some(image.to_owned()),
        pg_bin: None,
        pg_major: None,
    };
    record
        .save(cluster.state_dir())
        .map_err(|source| HaError::Io {
            context: format!(
                "write `{}`",
                ClusterRecord::path(cluster.state_dir()).display()
            ),
            source,
        })
}

/// The leader once the election is complete, else what is still missing.
fn elected(snapshot: &View, agents: &[AgentProcess]) -> Result<String, Awaited> {
    let Some(leader) = snapshot.leader.as_ref().map(|l| &l.node) else {
        return Err(Awaited::Leader);
    };
    if snapshot.sync.as_ref().is_none_or(|s| &s.leader != leader) {
        return Err(Awaited::SyncRecord {
            leader: leader.clone(),
        });
    }
    let silent: Vec<String> = agents
        .iter()
        .filter(|a| !snapshot.members.iter().any(|m| m.node == a.node))
        .map(|a| a.node.clone())
        .collect();
    if !silent.is_empty() {
        return Err(Awaited::MemberRecords(silent));
    }
    // Agents that build their node (docker) publish before their standby runs: `up` is done
    // when every server runs in its place, as `status` will show it.
    let building: Vec<String> = snapshot
        .members
        .iter()
        .filter(|m| {
            let server = &m.server;
            let in_place = if &m.node == leader {
                !server.in_recovery
            } else {
                server.in_recovery && server.follows.as_ref() == Some(leader)
            };
            !(server.running && in_place)
        })
        .map(|m| m.node.clone())
        .collect();
    if !building.is_empty() {
        return Err(Awaited::RunningServers(building));
    }
    Ok(leader.clone())
}

/// The current leader, if etcd answers.
async fn read_leader(cluster: &Cluster) -> Option<String> {
    let access = super::etcd_access(cluster, Role::Reader)?;
    let store = Store::open(&access, &super::scope(cluster).ok()?, READ_TIMEOUT)
        .await
        .ok()?;
    store.snapshot().await.ok()?.leader.map(|l| l.node)
}

/// Stops every agent `up` started here, the leader's last.
async fn stop_agents(cluster: &Cluster) -> Result<(), HaError> {
    if let Runtime::Docker(docker) = &cluster.runtime {
        let leader = read_leader(cluster).await;
        return containers::stop(cluster, docker, leader.as_deref()).await;
    }
    let state_dir = cluster.state_dir();
    let Ok(entries) = std::fs::read_dir(agents_dir(state_dir)) else {
        return Ok(());
    };
    // From the pid files, not the cluster file: a node removed from it may still have one.
    let running: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".pid").map(str::to_owned)
        })
        .filter(|node| agent(state_dir, node).running().is_some())
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    let leader = read_leader(cluster).await;
    let (last, first): (Vec<&String>, Vec<&String>) = running
        .iter()
        .partition(|node| Some(node.as_str()) == leader.as_deref());
    for group in [first, last] {
        let stops = group
            .iter()
            .map(|node| async move { agent(state_dir, node).stop(AGENT_STOP_WAIT).await });
        for result in futures_util::future::join_all(stops).await {
            result?;
        }
    }
    Ok(())
}

/// Stops the proxy, the agents, the servers and our etcd, in that order, confirming each is gone; then,
/// with `purge`, deletes everything, the etcd data included (on an etcd of `[ha] etcd`, the
/// cluster's keys).
pub async fn down(cluster: &Cluster, purge: bool) -> Result<(), HaError> {
    super::proxy::stop(cluster).await?;
    stop_agents(cluster).await?;
    let external = cluster.spec.ha.as_ref().filter(|ha| !ha.etcd.is_empty());
    if let (true, Some(_)) = (purge, external) {
        // The next cluster of this scope must not inherit this one's sync record.
        let access = super::etcd_access(cluster, Role::Agent).expect("[ha] names etcd");
        let store = Store::open(&access, &super::scope(cluster)?, READ_TIMEOUT).await?;
        store.forget().await.map_err(|e| HaError::Forget {
            prefix: store.keys().prefix().to_owned(),
            error: Box::new(e),
        })?;
    }
    if let (Runtime::Docker(docker), Some(ha)) = (&cluster.runtime, &cluster.spec.ha) {
        let scope = super::scope(cluster)?;
        let etcd = DockerEtcd::new(docker, cluster.state_dir(), &scope, &ha.etcd_image);
        cluster.down(false).await?;
        etcd.remove().await?;
        if purge {
            cluster.down(true).await?;
        }
        return Ok(());
    }
    let etcd = LocalEtcd::new(cluster.state_dir());
    if !etcd.exists() {
        cluster.down(purge).await?;
        return Ok(());
    }
    cluster.down(false).await?;
    etcd.stop().await?;
    if purge {
        cluster.down(true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::model::Leader;
    use crate::ha::records::{LeaseId, MemberRecord, ServerState, SyncRecord};
    use crate::ids::TimelineId;

    fn agents(nodes: &[&str]) -> Vec<AgentProcess> {
        nodes
            .iter()
            .map(|n| AgentProcess {
                node: n.to_string(),
                pid: 1,
                log: String::new(),
                api: None,
            })
            .collect()
    }

    fn member(node: &str) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            server: ServerState {
                running: true,
                in_recovery: node != "a",
                timeline: Some(TimelineId::new(1)),
                position: None,
                detached: false,
                follows: (node != "a").then(|| "a".into()),
                unknown: false,
            },
            paused: false,
        }
    }

    #[test]
    fn an_election_is_complete_with_leader_its_sync_record_and_every_server_in_place() {
        let agents = agents(&["a", "b"]);
        let mut snapshot = View::default();
        assert!(matches!(elected(&snapshot, &agents), Err(Awaited::Leader)));
        snapshot.leader = Some(Leader {
            node: "a".into(),
            lease: LeaseId(1),
            mine: false,
        });
        snapshot.sync = Some(SyncRecord::of("b", "FIRST", 1, &["a"]));
        // A record an earlier leader left does not count.
        assert!(matches!(
            elected(&snapshot, &agents),
            Err(Awaited::SyncRecord { leader }) if leader == "a"
        ));
        snapshot.sync = Some(SyncRecord::of("a", "FIRST", 1, &["b"]));
        snapshot.members = vec![member("a")];
        assert_eq!(
            elected(&snapshot, &agents).unwrap_err().to_string(),
            "member record from b"
        );
        let mut building = member("b");
        building.server.running = false;
        snapshot.members.push(building);
        assert_eq!(
            elected(&snapshot, &agents).unwrap_err().to_string(),
            "running server of b"
        );
        snapshot.members[1] = member("b");
        assert_eq!(elected(&snapshot, &agents).ok().as_deref(), Some("a"));
    }
}
