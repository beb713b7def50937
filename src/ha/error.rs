//! What can go wrong in `ha`, one variant per failure, each saying what failed with the names,
//! ports, paths and durations involved, so that a caller (the CLI, a test, the agent's log)
//! matches on what happened rather than on message text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::requests::{FailoverRefused, SwitchoverRefused};
use crate::ids::TimelineId;

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    // Boxed: the client's error is large and every etcd call returns this type.
    #[error("etcd at {endpoints}: {}", describe(source))]
    Etcd {
        endpoints: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    #[error("etcd did not answer within {0:?}")]
    EtcdTimeout(Duration),
    #[error("malformed record at `{key}` in etcd: {source}")]
    Record {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Ctrl-C stopped `up` before it started everything.
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),

    // The cluster file, the agents' timing, and how etcd is reached.
    #[error("scope `{scope}`: give [ha] scope a name without `/`")]
    BadScope { scope: String },
    #[error("the lease TTL must be at least 2 s (etcd's minimum with its default election timeout), not {ttl_s} s")]
    TtlTooShort { ttl_s: u64 },
    #[error("a {ttl_s} s lease with a {fence_margin_ms} ms fencing margin leaves less than two {renew_ms} ms renewals: raise the TTL or renew more often")]
    NoRoomToRenew {
        ttl_s: u64,
        fence_margin_ms: u64,
        renew_ms: u64,
    },
    #[error("the cluster file has no [ha] section")]
    NoHaSection,
    #[error("[ha] needs a cluster file")]
    NoClusterFile,
    #[error("no etcd endpoint given")]
    NoEtcdEndpoint,
    #[error("etcd at {} speaks TLS: give the CA that signed its certificates ([ha] etcd_ca, or --etcd-ca)", .endpoints.join(","))]
    EtcdNeedsCa { endpoints: Vec<String> },
    #[error("etcd credentials are for TLS, but {} is http://: write the URLs as https://", .endpoints.join(","))]
    EtcdNotTls { endpoints: Vec<String> },
    /// The agent's first request to etcd failed.
    #[error("{etcd}: start etcd, or give its client URLs with --etcd")]
    EtcdDown { etcd: Box<HaError> },
    #[error("the HTTP API cannot listen on {addr} ({error}): give the node another `api` address")]
    ApiBind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("`{}` is damaged ({error}): delete it", .path.display())]
    DamagedFile {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("node `{node}` has no agent API address: `pgrepl up` with [ha] picks one, or give the node `api = \"IP:PORT\"` in the cluster file")]
    NoApiAddress { node: String },
    #[error(
        "[proxy] needs HAProxy: install it (Debian: `apt-get install haproxy`), or remove [proxy]"
    )]
    NoHaproxy,

    // What an agent finds on its node or in etcd while it acts.
    #[error("`{key}` vanished while read")]
    Vanished { key: String },
    #[error("sync record not written: this agent no longer holds the leader key")]
    SyncNotWritten,
    #[error("`{node}` does not answer SQL")]
    NoSql { node: String },
    #[error("pg_wal holds a history file of timeline {newer} since the probe: not promoting to {timeline}")]
    NewerHistory {
        newer: TimelineId,
        timeline: TimelineId,
    },

    // The processes `up` starts beside the servers (etcd members, agents, HAProxy) and `down`
    // stops.
    #[error("{what} (pid {pid}) did not exit: stop it, then run `pgrepl down` again")]
    DidNotExit { what: String, pid: i32 },
    #[error("port {port} of etcd member {member} is in use: stop what listens there, or `pgrepl down --purge` to start over on new ports")]
    EtcdPortInUse { port: u16, member: String },
    #[error("port {port} of etcd container `{container}` is in use: stop what listens there, or `pgrepl down --purge` to start over on new ports")]
    EtcdContainerPortInUse { port: u16, container: String },
    #[error("etcd's certificates: {0}")]
    EtcdCertificates(crate::cluster::tls::TlsError),
    #[error("fetching etcd stopped: {0}")]
    FetchStopped(tokio::task::JoinError),
    #[error("etcd did not answer within {after:?}: see {}", .logs.join(", "))]
    EtcdSilent { after: Duration, logs: Vec<String> },
    #[error("the agent of `{node}` exited: {last_words}")]
    AgentExited { node: String, last_words: String },
    #[error("no {awaited} after {after:?}: see the agents' logs ({})", .logs.join(", "))]
    NoLeaderYet {
        awaited: Awaited,
        after: Duration,
        logs: Vec<String>,
    },
    #[error("delete `{prefix}` in etcd: {error}; nothing else was deleted: run `pgrepl down --purge` again once etcd answers")]
    Forget { prefix: String, error: Box<HaError> },
    #[error("HAProxy exited: {last_words} (log: {log})")]
    ProxyExited { last_words: String, log: String },
    #[error(
        "HAProxy does not accept connections on {write} and {read} after {after:?}: see {log}"
    )]
    ProxyNotAccepting {
        write: SocketAddr,
        read: SocketAddr,
        after: Duration,
        log: String,
    },
    #[error("HAProxy's stats socket `{}` did not answer within 1 s", .socket.display())]
    StatsSilent { socket: PathBuf },

    // Who carries out a role change (`route`): refusals before anything changed.
    /// etcd does not answer, so nobody can tell whether agents run.
    #[error("{etcd}: pgrepl cannot tell whether agents run, and a manual role change beside them would fight them; start etcd, or remove the cluster's [ha] section (and --etcd) if no agent runs")]
    AgentsUnknown { etcd: Box<HaError> },
    #[error("--force and --rewind are for failovers without agents: the agents only promote a standby that holds every acknowledged commit")]
    ForceWithAgents,
    #[error("give --to NODE: the standby that becomes primary")]
    NoTarget,
    #[error("agents run for this cluster: the agent of `{node}` rejoins it by itself (`pgrepl status` shows it)")]
    AgentRejoins { node: String },
    /// A rebuild while agents act: the node's agent would start the server under the copy.
    #[error("agents run for this cluster: `pgrepl pause`, then `pgrepl {action} {node}`, then `pgrepl resume`")]
    AgentsNotPaused { action: &'static str, node: String },
    #[error("on docker the agents build their nodes: stop container `{node}`, delete `{}`, and `pgrepl up` starts it again and its agent clones it", .state.display())]
    AgentsBuildOnDocker { node: String, state: PathBuf },

    // Requests to the agents that they, or the checks before them, turned down.
    #[error(transparent)]
    Switchover(#[from] SwitchoverRefused),
    #[error(transparent)]
    Failover(#[from] FailoverRefused),
    #[error("`{from}` no longer leads, or another switchover was asked meanwhile: run it again")]
    SwitchoverRaced { from: String },
    /// The leader's agent marked the switchover request refused; `why` is what it wrote.
    #[error("the agent of `{from}` refused: {why}")]
    AgentRefused { from: String, why: String },
    #[error("the settings changed meanwhile (another `pgrepl config`): run it again")]
    SettingsRaced,
    #[error("a restart of `{node}` is already asked (another `pgrepl restart`): wait for it, or for its request to expire")]
    RestartPending { node: String },
    #[error("no standby streams to switch `{from}` over to: restart it with `pgrepl restart {from}` (writes pause meanwhile)")]
    NoSwitchoverTarget { from: String },

    // Requests the agents did not carry out in time, and what was seen last.
    #[error("no leader was elected within {} s: `pgrepl status` shows the agents' state", .within.as_secs())]
    NotElected { within: Duration },
    #[error("the agents elected `{leader}` before the request for `{to}` arrived")]
    ElectedOther { leader: String, to: String },
    #[error("`{to}` did not take over from `{from}` within {} s ({seen}): `pgrepl status` shows the agents' state", .within.as_secs())]
    NoTakeover {
        from: String,
        to: String,
        within: Duration,
        seen: Seen,
    },
    /// The node's agent tried and failed; `why` is what it wrote.
    #[error("restart of `{node}`: {why}")]
    RestartFailed { node: String, why: String },
    #[error("the agent of `{node}` did not restart it within {} s: `pgrepl status` shows whether its agent runs", .within.as_secs())]
    RestartNotDone { node: String, within: Duration },
    #[error("no node leads: nothing restarted")]
    NoLeader,
}

impl HaError {
    /// The connection failure underneath, if that is what went wrong (for hints).
    pub fn connection_error(&self) -> Option<&crate::conn::ConnectionError> {
        match self {
            HaError::Cluster(e) => e.connection_error(),
            _ => None,
        }
    }
}

/// What `up` still waits for before the agents' first election is complete.
#[derive(Debug)]
pub enum Awaited {
    Leader,
    /// The leader's sync record.
    SyncRecord {
        leader: String,
    },
    /// The member records of agents that published none yet.
    MemberRecords(Vec<String>),
    /// Nodes whose server does not run in its place yet (the leader a primary, the others
    /// streaming from it).
    RunningServers(Vec<String>),
    /// etcd's answer.
    Etcd(Box<HaError>),
}

impl std::fmt::Display for Awaited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Awaited::Leader => f.write_str("leader"),
            Awaited::SyncRecord { leader } => write!(f, "sync record from leader `{leader}`"),
            Awaited::MemberRecords(nodes) => write!(f, "member record from {}", nodes.join(", ")),
            Awaited::RunningServers(nodes) => {
                write!(f, "running server of {}", nodes.join(", "))
            }
            Awaited::Etcd(e) => write!(f, "answer from etcd ({e})"),
        }
    }
}

/// What a command waiting for a new leader saw last.
#[derive(Debug)]
pub enum Seen {
    /// The new leader holds the key, and its server is not a primary yet.
    NotPrimaryYet {
        node: String,
    },
    StillLeads {
        node: String,
    },
    NoLeader,
    Unreadable(Box<HaError>),
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::NotPrimaryYet { node } => {
                write!(f, "`{node}` holds the key but is not a primary yet")
            }
            Seen::StillLeads { node } => write!(f, "`{node}` still leads"),
            Seen::NoLeader => f.write_str("no node holds the key"),
            Seen::Unreadable(e) => write!(f, "{e}"),
        }
    }
}

/// gRPC failures by their message and code, without the transport's metadata dump.
fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{} ({:?})", status.message(), status.code())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed_on_one_line() {
        let e = HaError::NoTakeover {
            from: "pg_master".into(),
            to: "pg_slave".into(),
            within: Duration::from_secs(30),
            seen: Seen::StillLeads {
                node: "pg_master".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "`pg_slave` did not take over from `pg_master` within 30 s (`pg_master` still leads): `pgrepl status` shows the agents' state"
        );
        let e = HaError::NoLeaderYet {
            awaited: Awaited::MemberRecords(vec!["a".into(), "b".into()]),
            after: Duration::from_secs(30),
            logs: vec!["a.log".into(), "b.log".into()],
        };
        assert_eq!(
            e.to_string(),
            "no member record from a, b after 30s: see the agents' logs (a.log, b.log)"
        );
        let e = HaError::EtcdNeedsCa {
            endpoints: vec!["https://a:2379".into(), "https://b:2379".into()],
        };
        assert!(e
            .to_string()
            .starts_with("etcd at https://a:2379,https://b:2379 speaks TLS"));
        for e in [
            HaError::AgentsUnknown {
                etcd: Box::new(HaError::EtcdTimeout(Duration::from_secs(2))),
            },
            HaError::AgentsNotPaused {
                action: "reinit",
                node: "pg_slave".into(),
            },
        ] {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
