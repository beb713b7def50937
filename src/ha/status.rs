//! What `pgrepl status` shows of the HA agents: the leader and its lease's time left, each
//! node's agent (its member record, present while its lease lives), whether automatic actions
//! are paused, and which standbys could be promoted now. The reading is one etcd snapshot plus
//! one lease lookup; the summary of it is pure.

use std::time::Duration;

use serde::Serialize;

use super::etcd_access::Role;
use super::model::View;
use super::records::{ServerState, SyncRecord};
use super::store::Store;
use crate::cluster::Cluster;

/// How long `status` waits for etcd per request.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaStatus {
    /// The `<scope>` of `/pgrepl/<scope>/`.
    pub scope: String,
    /// The etcd client URLs read.
    pub etcd: Vec<String>,
    /// Why the rest is unknown (etcd did not answer, or there is no etcd to ask).
    pub error: Option<String>,
    pub leader: Option<String>,
    /// The lease TTL the cluster file asks for, seconds.
    pub lease_ttl_s: u64,
    /// Whole seconds the leader's lease has left (etcd truncates: 1 means 1–2 s).
    pub lease_left_s: Option<i64>,
    pub paused: bool,
    pub agents: Vec<AgentHealth>,
    /// The standbys that may have acknowledged commits of the leader.
    pub sync: Option<SyncRecord>,
    /// Members of the sync record whose agent is alive and whose server is a running standby:
    /// the nodes an election may pick from now.
    pub promotable: Vec<String>,
    /// `[proxy]`'s HAProxy, as its stats socket answers (`status` on the machine that runs it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyStatus {
    pub write: std::net::SocketAddr,
    pub read: std::net::SocketAddr,
    /// The servers each port reaches now; `None` with `error` saying why unknown.
    pub routes: Option<super::proxy::Routes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One node's agent, as etcd shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentHealth {
    pub node: String,
    /// Its member record exists, so its lease is being renewed.
    pub alive: bool,
    /// What it last published about its server.
    pub server: Option<ServerState>,
    /// Where it serves its HTTP API, when this machine knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<std::net::SocketAddr>,
}

/// The summary of one snapshot for the cluster's `nodes` (in the file's order).
pub fn summarize(nodes: &[String], snapshot: &View) -> (Vec<AgentHealth>, Vec<String>) {
    let record = |node: &str| snapshot.members.iter().find(|m| m.node == node);
    let agents = nodes
        .iter()
        .map(|node| AgentHealth {
            node: node.clone(),
            alive: record(node.as_str()).is_some(),
            server: record(node.as_str()).map(|m| m.server.clone()),
            api: None,
        })
        .collect();
    let leader = snapshot.leader.as_ref().map(|l| l.node.as_str());
    let promotable = snapshot
        .sync
        .iter()
        .flat_map(|sync| &sync.policy.names)
        .filter(|node| Some(node.as_str()) != leader)
        .filter(|node| {
            record(node.as_str())
                .is_some_and(|m| m.server.running && m.server.in_recovery && !m.server.unknown)
        })
        .cloned()
        .collect();
    (agents, promotable)
}

/// Reads the HA state of `cluster`; an etcd that does not answer is reported in `error`.
pub async fn read(cluster: &Cluster) -> HaStatus {
    let Some(access) = super::etcd_access(cluster, Role::Reader) else {
        let why = "no etcd: [ha] names none and `pgrepl up` started none";
        return base(cluster, Vec::new(), Some(why.into()));
    };
    let endpoints = access.endpoints.clone();
    let read = async {
        let store = Store::open(&access, &super::scope(cluster)?, READ_TIMEOUT).await?;
        let snapshot = store.snapshot().await?;
        let left = lease_left(&store, &snapshot).await?;
        Ok::<_, super::HaError>((snapshot, left))
    };
    let status = match read.await {
        Ok((snapshot, left)) => of_view(cluster, endpoints, &snapshot, left),
        Err(e) => base(cluster, endpoints, Some(e.to_string())),
    };
    HaStatus {
        proxy: proxy(cluster).await,
        ..status
    }
}

async fn proxy(cluster: &Cluster) -> Option<ProxyStatus> {
    let spec = cluster.spec.proxy.as_ref()?;
    let (routes, error) = match super::proxy::routes(cluster.state_dir()).await {
        Some(Ok(routes)) => (Some(routes), None),
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (
            None,
            Some("HAProxy does not run: `pgrepl up` starts it".to_owned()),
        ),
    };
    Some(ProxyStatus {
        write: std::net::SocketAddr::new(spec.bind, spec.write_port),
        read: std::net::SocketAddr::new(spec.bind, spec.read_port),
        routes,
        error,
    })
}

/// Whole seconds the leader's lease has left, when someone leads.
pub async fn lease_left(store: &Store, view: &View) -> Result<Option<i64>, super::HaError> {
    match &view.leader {
        Some(leader) => store.time_left(leader.lease).await,
        None => Ok(None),
    }
}

/// The status that one read of etcd (`view`, at `etcd`) shows.
pub fn of_view(cluster: &Cluster, etcd: Vec<String>, view: &View, left: Option<i64>) -> HaStatus {
    let nodes: Vec<String> = cluster.spec.nodes.iter().map(|n| n.name.clone()).collect();
    let (mut agents, promotable) = summarize(&nodes, view);
    let apis = super::api_addr::known(cluster).unwrap_or_default();
    for agent in &mut agents {
        agent.api = apis.get(&agent.node).copied();
    }
    HaStatus {
        leader: view.leader.as_ref().map(|l| l.node.clone()),
        lease_left_s: left,
        paused: view.pause.is_some(),
        agents,
        sync: view.sync.clone(),
        promotable,
        ..base(cluster, etcd, None)
    }
}

/// The status before etcd answered; `error`: why nothing more is known.
fn base(cluster: &Cluster, etcd: Vec<String>, error: Option<String>) -> HaStatus {
    HaStatus {
        scope: super::scope(cluster).unwrap_or_default(),
        etcd,
        error,
        leader: None,
        lease_ttl_s: cluster.spec.ha.as_ref().map_or(0, |ha| ha.ttl),
        lease_left_s: None,
        paused: false,
        agents: Vec::new(),
        sync: None,
        promotable: Vec::new(),
        proxy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::model::Leader;
    use crate::ha::records::{LeaseId, MemberRecord};
    use crate::ids::TimelineId;

    fn member(node: &str, running: bool, in_recovery: bool) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            server: ServerState {
                running,
                in_recovery,
                timeline: Some(TimelineId::new(1)),
                position: Some("0/3000148".parse().unwrap()),
                detached: false,
                follows: in_recovery.then(|| "a".into()),
                unknown: false,
            },
            paused: false,
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn promotable_are_live_running_standbys_of_the_sync_record() {
        let snapshot = View {
            leader: Some(Leader {
                node: "a".into(),
                lease: LeaseId(7),
                mine: false,
            }),
            // `c`'s agent is alive but its server is down; `d` has no agent; `e` is outside
            // the record.
            members: vec![
                member("a", true, false),
                member("b", true, true),
                member("c", false, false),
                member("e", true, true),
            ],
            sync: Some(SyncRecord::of("a", "FIRST", 1, &["b", "c", "d"])),
            ..View::default()
        };
        let (agents, promotable) = summarize(&names(&["a", "b", "c", "d", "e"]), &snapshot);
        assert_eq!(promotable, names(&["b"]));
        let alive: Vec<bool> = agents.iter().map(|a| a.alive).collect();
        assert_eq!(alive, [true, true, true, false, true]);
        assert_eq!(agents[3].server, None);
        assert!(agents[0].server.as_ref().is_some_and(|s| !s.in_recovery));
    }

    #[test]
    fn nothing_is_promotable_without_a_sync_record() {
        let snapshot = View {
            members: vec![member("b", true, true)],
            ..View::default()
        };
        let (agents, promotable) = summarize(&names(&["a", "b"]), &snapshot);
        assert!(promotable.is_empty());
        assert!(!agents[0].alive && agents[1].alive);
    }

    #[test]
    fn the_leader_is_never_its_own_candidate() {
        // Right after a promotion the old record may still name the new leader.
        let snapshot = View {
            leader: Some(Leader {
                node: "b".into(),
                lease: LeaseId(1),
                mine: false,
            }),
            members: vec![member("b", true, true)],
            sync: Some(SyncRecord::of("a", "ANY", 1, &["b"])),
            ..View::default()
        };
        assert!(summarize(&names(&["b"]), &snapshot).1.is_empty());
    }
}
