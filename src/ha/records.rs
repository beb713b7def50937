//! What the agents keep in etcd: the key layout under `/pgrepl/<cluster>/` and the JSON records
//! stored there. See proto-notes/08-ha.md for who writes what, and when.

use serde::{Deserialize, Serialize};

use crate::cluster::spec::ClusterSpec;
use crate::ids::TimelineId;
use crate::sync_policy::{SyncMethod, SyncPolicy};
use crate::Lsn;

/// The keys of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("/pgrepl/{cluster}/"),
        }
    }

    /// Everything of this cluster (what an agent watches).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The leader's name, held under the leader's lease: it vanishes when the lease expires.
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    pub fn members(&self) -> String {
        format!("{}members/", self.prefix)
    }

    /// One node's [`MemberRecord`], under that node's agent's lease.
    pub fn member(&self, node: &str) -> String {
        format!("{}members/{node}", self.prefix)
    }

    /// The [`SyncRecord`]: no lease, it must outlive every agent.
    pub fn sync(&self) -> String {
        format!("{}sync", self.prefix)
    }

    /// Which node initialises the cluster (a [`LeaderRecord`]; no lease): created once, by
    /// the first agent of the file's primary that finds no data, as Patroni's `initialize`.
    pub fn initialize(&self) -> String {
        format!("{}initialize", self.prefix)
    }

    /// The system identifier of the cluster these keys belong to (a plain number; no lease):
    /// written with the first leader key. An agent whose data has another never acts on them.
    pub fn system_id(&self) -> String {
        format!("{}system_id", self.prefix)
    }

    /// The [`crate::ha::Timing`] the first agent wrote; the others check theirs against it.
    pub fn config(&self) -> String {
        format!("{}config", self.prefix)
    }

    /// The cluster-wide settings (`pgrepl config set`): a [`crate::cluster::settings::Desired`],
    /// no lease.
    pub fn settings(&self) -> String {
        format!("{}settings", self.prefix)
    }

    /// Every [`Keys::applied`] key.
    pub fn applied_all(&self) -> String {
        format!("{}applied/", self.prefix)
    }

    /// What a node's agent last applied of the settings and its server runs with (an
    /// [`AppliedRecord`], under the agent's lease).
    pub fn applied(&self, node: &str) -> String {
        format!("{}{node}", self.applied_all())
    }

    /// A [`RestartRequest`] for one node's agent (`pgrepl restart` with agents), under the
    /// requester's lease.
    pub fn restart(&self, node: &str) -> String {
        format!("{}restart/{node}", self.prefix)
    }

    /// The [`PauseRecord`] while automatic actions are paused (`pgrepl pause`).
    pub fn pause(&self) -> String {
        format!("{}pause", self.prefix)
    }

    /// A [`RoleRequest`] of `pgrepl switchover`, under the requester's lease: it dies with it.
    pub fn switchover(&self) -> String {
        format!("{}switchover", self.prefix)
    }

    /// A [`RoleRequest`] of `pgrepl failover --to` while no leader holds the key.
    pub fn failover(&self) -> String {
        format!("{}failover", self.prefix)
    }

    /// One key per role change, named by when it happened.
    pub fn history(&self, unix_ms: u128, node: &str) -> String {
        format!("{}{unix_ms:015}-{node}", self.histories())
    }

    /// The prefix of every [`Keys::history`] key (in time order).
    pub fn histories(&self) -> String {
        format!("{}history/", self.prefix)
    }

    /// When a [`Keys::history`] key says its change happened.
    pub fn history_time(&self, key: &str) -> Option<u64> {
        let name = key.strip_prefix(&self.histories())?;
        name.split_once('-')?.0.parse().ok()
    }
}

/// An etcd lease: an agent's (its member record and, while it leads, the leader key live under
/// it) or a command's (its request dies with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A node's agent's report on the cluster-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    pub node: String,
    /// The serial of the last settings record applied (0: none yet).
    pub serial: u64,
    /// Why the last one could not be applied.
    pub error: Option<String>,
    /// What the server runs with, of the settings a standby needs at least as high: standbys
    /// read their primary's.
    pub running: std::collections::BTreeMap<String, String>,
    /// Settings waiting for a restart.
    pub pending_restart: std::collections::BTreeSet<String>,
    /// Settings this standby keeps at its primary's higher value until the primary runs the
    /// lower one (`Desired::for_node`).
    #[serde(default)]
    pub held: std::collections::BTreeSet<String>,
}

/// `pgrepl restart` asking a node's agent to restart its server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRequest {
    pub by: String,
    /// Set by the agent when the restart failed; the request stays until its lease ends.
    #[serde(default)]
    pub failed: Option<String>,
}

/// The value of the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub node: String,
}

/// What a node's agent last saw of its server, published whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub node: String,
    /// The agent saw the pause key: it takes no automatic action on its server.
    #[serde(default)]
    pub paused: bool,
    #[serde(flatten)]
    pub server: ServerState,
}

/// A server as its agent probes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerState {
    pub running: bool,
    /// Still replaying WAL (a standby); meaningless when not running.
    pub in_recovery: bool,
    pub timeline: Option<TimelineId>,
    /// The furthest WAL it holds: received (standby) or flushed (primary).
    pub position: Option<Lsn>,
    /// A standby with no WAL receiver and an empty primary_conninfo: its position no longer moves.
    pub detached: bool,
    /// The node its primary_conninfo points at.
    pub follows: Option<String>,
    /// The agent vouches for nothing in this record: its server stopped answering (it may be
    /// receiving WAL whatever `detached` said), or a promotion asked of it may complete at any
    /// moment. An election does not count it (`election::live`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
}

/// The standbys that may have acknowledged a commit of `leader`, and how many of them each
/// commit waited for. A superset of the names in the leader's synchronous_standby_names: written
/// before a name enters it, shrunk only after a name left it and the rest caught up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SyncRecordJson", into = "SyncRecordJson")]
pub struct SyncRecord {
    pub leader: String,
    /// The standbys (its names, etcd's `members`) and how many of them each commit waited for;
    /// `FIRST` and `ANY` are both treated as "any `num` of them" for promotion.
    pub policy: SyncPolicy,
    /// The records of earlier leaders still in force: a new leader writes its record before it
    /// promotes, so until its standbys hold everything its predecessors acknowledged, an
    /// election must satisfy theirs too; and if it never promoted (it still answers as a
    /// standby), theirs alone. Each carries no `prior` of its own.
    pub prior: Vec<SyncRecord>,
    /// The newest timeline number a leader of this cluster may have promoted to (`None`: not
    /// recorded yet). A promotion takes a greater one: PostgreSQL numbers a new timeline after
    /// the history files in its own pg_wal, and a leader that promoted and then went silent left
    /// its history file nowhere else (proto-notes/08-ha.md, rule 9).
    pub timeline: Option<TimelineId>,
}

/// A [`SyncRecord`] as etcd holds it (proto-notes/08-ha.md): the policy's fields beside the
/// leader's, as agents have always written them.
#[derive(Serialize, Deserialize)]
struct SyncRecordJson {
    leader: String,
    method: SyncMethod,
    num: u32,
    members: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    prior: Vec<SyncRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeline: Option<TimelineId>,
}

impl From<SyncRecordJson> for SyncRecord {
    fn from(json: SyncRecordJson) -> SyncRecord {
        SyncRecord {
            leader: json.leader,
            policy: SyncPolicy::new(json.method, json.num, json.members),
            prior: json.prior,
            timeline: json.timeline,
        }
    }
}

impl From<SyncRecord> for SyncRecordJson {
    fn from(record: SyncRecord) -> SyncRecordJson {
        SyncRecordJson {
            leader: record.leader,
            method: record.policy.method,
            num: record.policy.num,
            members: record.policy.names,
            prior: record.prior,
            timeline: record.timeline,
        }
    }
}

impl SyncRecord {
    /// `policy`, as `leader`'s record.
    pub fn new(leader: &str, policy: SyncPolicy) -> SyncRecord {
        SyncRecord {
            leader: leader.to_owned(),
            policy,
            prior: Vec::new(),
            timeline: None,
        }
    }

    /// The policy of the cluster file with `leader` as primary (its name swapped out of the list,
    /// as `failover` does).
    pub fn desired(file_spec: &ClusterSpec, leader: &str) -> SyncRecord {
        let policy = match file_spec.node(leader) {
            Some(_) => file_spec.sync_with_primary(leader),
            None => file_spec.sync.policy.clone(),
        };
        SyncRecord::new(leader, policy)
    }

    /// A record from its parts, for tests that spell one out.
    #[cfg(test)]
    pub fn of(leader: &str, method: &str, num: u32, members: &[&str]) -> SyncRecord {
        let method = method.parse().expect("FIRST or ANY");
        SyncRecord::new(
            leader,
            SyncPolicy::new(method, num, members.iter().copied()),
        )
    }

    /// This record with `rules` as its prior ones (flattened: a prior record has none).
    pub fn after(self, rules: &[&SyncRecord]) -> SyncRecord {
        let prior = rules
            .iter()
            .map(|r| SyncRecord {
                prior: Vec::new(),
                ..(*r).clone()
            })
            .collect();
        SyncRecord { prior, ..self }
    }

    /// The record the synchronous_standby_names `running` on `leader` amount to (`None`:
    /// asynchronous, no synchronous standby).
    pub fn running(leader: &str, running: &SyncPolicy) -> Option<SyncRecord> {
        running
            .is_synchronous()
            .then(|| SyncRecord::new(leader, running.clone()))
    }

    /// Every name of `other` is here, and each commit waited for no more standbys than here.
    pub fn covers(&self, other: &SyncRecord) -> bool {
        self.leader == other.leader
            && self.policy.num <= other.policy.num
            && other
                .policy
                .names
                .iter()
                .all(|m| self.policy.names.contains(m))
    }

    /// Both records' names, waiting for the fewer standbys of the two: safe while either policy
    /// may be in force.
    pub fn union(&self, other: &SyncRecord) -> SyncRecord {
        let mut names = self.policy.names.clone();
        names.extend(
            other
                .policy
                .names
                .iter()
                .filter(|m| !self.policy.names.contains(m))
                .cloned(),
        );
        SyncRecord {
            leader: other.leader.clone(),
            policy: SyncPolicy {
                method: other.policy.method,
                num: self.policy.num.min(other.policy.num),
                names,
            },
            prior: self.prior.clone(),
            timeline: self.timeline.max(other.timeline),
        }
    }

    /// This record, saying no timeline newer than `timeline` (or its own) was promoted to.
    pub fn on_timeline(self, timeline: Option<TimelineId>) -> SyncRecord {
        SyncRecord {
            timeline: self.timeline.max(timeline),
            ..self
        }
    }

    /// The newest timeline this record or one of its prior ones says a leader may be on.
    pub fn newest_timeline(&self) -> Option<TimelineId> {
        self.prior
            .iter()
            .map(|r| r.timeline)
            .fold(self.timeline, Option::max)
    }
}

/// Who paused the agents, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    /// `user@host` of the `pgrepl pause` that wrote it.
    pub by: String,
    pub at_unix_ms: u64,
}

/// A role change asked of the agents (`pgrepl switchover`, `pgrepl failover --to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRequest {
    /// The leader when it was asked (switchover), or the last one (failover): a request whose
    /// `from` no longer matches is void.
    pub from: String,
    pub to: String,
    pub by: String,
    pub at_unix_ms: u64,
    /// Set by the leader's agent when it will not carry it out, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_cluster_prefix() {
        let keys = Keys::new("prod");
        assert_eq!(keys.leader(), "/pgrepl/prod/leader");
        assert_eq!(keys.member("pg_slave"), "/pgrepl/prod/members/pg_slave");
        assert!(keys.member("a").starts_with(&keys.members()));
        assert_eq!(keys.sync(), "/pgrepl/prod/sync");
        assert_eq!(keys.pause(), "/pgrepl/prod/pause");
        assert_eq!(keys.switchover(), "/pgrepl/prod/switchover");
        assert_eq!(
            keys.history(1_700_000_000_000, "pg_slave"),
            "/pgrepl/prod/history/001700000000000-pg_slave"
        );
        assert_eq!(
            keys.history_time(&keys.history(1_700_000_000_000, "pg_slave")),
            Some(1_700_000_000_000)
        );
    }

    #[test]
    fn the_desired_record_swaps_the_new_leader_out_of_the_policy() {
        let spec = ClusterSpec::default();
        let record = SyncRecord::desired(&spec, "pg_slave");
        assert_eq!(record.policy.names, vec!["pg_master", "pg_asyncslave"]);
        assert_eq!(
            record.policy.to_string(),
            "FIRST 1 (pg_master, pg_asyncslave)"
        );
        let at_start = SyncRecord::desired(&spec, "pg_master");
        assert_eq!(at_start.policy.names, vec!["pg_slave", "pg_asyncslave"]);
    }

    #[test]
    fn a_union_covers_both_policies() {
        let spec = ClusterSpec::default();
        let mut narrow = SyncRecord::desired(&spec, "pg_master");
        narrow.policy.names = vec!["pg_slave".into()];
        narrow.policy.num = 1;
        let mut wide = SyncRecord::desired(&spec, "pg_master");
        wide.policy.num = 2;
        let union = narrow.union(&wide);
        assert!(union.covers(&narrow) && union.covers(&wide));
        assert!(!narrow.covers(&wide));
        assert_eq!(union.policy.num, 1);
    }

    /// A sync record as agents wrote it before the policy had a type of its own.
    const SYNC_RECORD: &str = r#"{"leader":"pg_slave","method":"FIRST","num":1,"members":["pg_master","pg_asyncslave"],"prior":[{"leader":"pg_master","method":"ANY","num":1,"members":["pg_slave","pg_asyncslave"]}],"timeline":2}"#;

    #[test]
    fn sync_records_read_and_write_as_agents_always_did() {
        let record: SyncRecord = serde_json::from_str(SYNC_RECORD).unwrap();
        let old = SyncRecord::of("pg_master", "ANY", 1, &["pg_slave", "pg_asyncslave"]);
        let want = SyncRecord::desired(&ClusterSpec::default(), "pg_slave")
            .after(&[&old])
            .on_timeline(Some(TimelineId::new(2)));
        assert_eq!(record, want);
        assert_eq!(serde_json::to_string(&record).unwrap(), SYNC_RECORD);
        // Without prior records or a timeline; and the method as a cluster file spelled it
        // (agents copied it from there), written back as its keyword.
        let short = r#"{"leader":"pg_master","method":"any","num":1,"members":["pg_slave"]}"#;
        let record: SyncRecord = serde_json::from_str(short).unwrap();
        assert_eq!(record, SyncRecord::of("pg_master", "ANY", 1, &["pg_slave"]));
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            short.replace("\"any\"", "\"ANY\"")
        );
        let bad = short.replace("\"any\"", "\"most\"");
        let err = serde_json::from_str::<SyncRecord>(&bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("sync.method `most` must be FIRST or ANY"),
            "{err}"
        );
    }

    #[test]
    fn member_records_round_trip_as_json() {
        let record = MemberRecord {
            node: "pg_slave".into(),
            paused: false,
            server: ServerState {
                running: true,
                in_recovery: true,
                timeline: Some(TimelineId::new(2)),
                position: Some("0/3000148".parse().unwrap()),
                detached: false,
                follows: Some("pg_master".into()),
                unknown: false,
            },
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains("\"0/3000148\""), "{text}");
        assert_eq!(serde_json::from_str::<MemberRecord>(&text).unwrap(), record);
        // Records of agents from before the pause flag still read.
        let old = text.replace("\"paused\":false,", "");
        assert_ne!(old, text);
        assert_eq!(serde_json::from_str::<MemberRecord>(&old).unwrap(), record);
    }
}
