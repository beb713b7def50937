//! What an agent's health endpoints answer: Patroni's REST contract (same paths, same 200/503
//! rules), so an HAProxy, pgbouncer or Kubernetes configuration written for Patroni works
//! unchanged. Pure: the agent gathers [`Facts`] at the moment of the request, this decides the
//! status code and the body.
//!
//! One difference, deliberate: Patroni answers 200 on `/primary` from the lock holder as long
//! as it holds the lock; here the holder must also have just reached its server as a running
//! primary (a fresh probe), so a primary that crashed a moment ago leaves the proxy at once.

use serde::Serialize;

use super::model::View;
use crate::ids::TimelineId;
use crate::sync_policy::SyncMethod;
use crate::Lsn;

/// What the agent knows at the instant of a request. Everything stale counts as unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The last probe, recent enough to trust, found the server running.
    pub running: bool,
    /// ...as a standby (meaningless when not running).
    pub in_recovery: bool,
    /// The leader key is held under this agent's lease, and the lease is alive by its own
    /// clock (before the fence deadline).
    pub leads: bool,
    /// The agents are paused (`pgrepl pause`).
    pub paused: bool,
    /// The last read of etcd succeeded, recently.
    pub dcs: bool,
    /// A leader key exists (someone leads).
    pub locked: bool,
    /// This node is a synchronous standby now ([`synchronous`]).
    pub sync: bool,
    /// The decision loop ran within its liveness threshold.
    pub loop_alive: bool,
    pub timeline: Option<TimelineId>,
    /// The furthest WAL the server holds (received on a standby, flushed on a primary).
    pub position: Option<Lsn>,
    /// The leader's published position, to measure `?lag=` against.
    pub leader_position: Option<Lsn>,
}

impl Facts {
    fn primary(&self) -> bool {
        self.running && !self.in_recovery
    }

    fn replica(&self) -> bool {
        self.running && self.in_recovery
    }

    /// Bytes behind the leader, when both positions are known.
    fn lag(&self) -> Option<u64> {
        Some(self.leader_position?.saturating_sub(self.position?))
    }
}

/// The standbys the leader's commits wait for now, as PostgreSQL picks them from the sync
/// record's names (`syncrep.c`): with `FIRST k` the first `k` in the list that stream from the
/// leader, with `ANY k` every one that streams (each may be among the `k` that answer). The
/// record's other names are potential standbys: `/async` answers for them, as Patroni's does.
pub fn synchronous(view: &View) -> Vec<&str> {
    let (Some(leader), Some(record)) = (&view.leader, &view.sync) else {
        return Vec::new();
    };
    let streams = |name: &str| {
        view.members.iter().any(|m| {
            m.node == name
                && m.server.running
                && m.server.in_recovery
                && m.server.follows.as_deref() == Some(leader.node.as_str())
        })
    };
    let streaming = record
        .policy
        .names
        .iter()
        .map(String::as_str)
        .filter(|name| *name != leader.node && streams(name));
    if record.policy.method == SyncMethod::Quorum {
        streaming.collect()
    } else {
        streaming.take(record.policy.num as usize).collect()
    }
}

/// A path, read as Patroni reads it (by the words it contains, `/` meaning `/primary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Primary,
    Leader,
    StandbyLeader,
    Replica,
    ReadOnly,
    Sync,
    Async,
    ReadOnlySync,
    Health,
    Liveness,
    Readiness,
    /// The node's status, always 200 (`/patroni`).
    Status,
    /// Any other path: 503, as Patroni answers.
    Other,
}

impl Endpoint {
    pub fn of(path: &str) -> Endpoint {
        let path = if path == "/" { "/primary" } else { path };
        match path {
            "/liveness" => return Endpoint::Liveness,
            "/readiness" => return Endpoint::Readiness,
            "/patroni" => return Endpoint::Status,
            "/sync" | "/synchronous" => return Endpoint::Sync,
            "/async" | "/asynchronous" => return Endpoint::Async,
            "/read-only-sync" | "/read-only-synchronous" => return Endpoint::ReadOnlySync,
            _ => {}
        }
        if path.contains("standby_leader") || path.contains("standby-leader") {
            Endpoint::StandbyLeader
        } else if path.contains("leader") {
            Endpoint::Leader
        } else if ["master", "primary", "read-write"]
            .iter()
            .any(|w| path.contains(w))
        {
            Endpoint::Primary
        } else if path.contains("replica") {
            Endpoint::Replica
        } else if path.contains("read-only") {
            Endpoint::ReadOnly
        } else if path.contains("health") {
            Endpoint::Health
        } else {
            Endpoint::Other
        }
    }
}

/// The status code of `endpoint`; `max_lag`: the `?lag=` bytes a replica may be behind.
pub fn status(endpoint: Endpoint, facts: &Facts, max_lag: Option<u64>) -> u16 {
    let code = |ok: bool| if ok { 200 } else { 503 };
    let primary = facts.leads && facts.primary();
    let lagging = matches!((max_lag, facts.lag()), (Some(max), Some(lag)) if lag > max);
    let replica = facts.replica() && !lagging;
    match endpoint {
        Endpoint::Primary => code(primary),
        Endpoint::Leader => code(facts.leads),
        // No standby clusters here.
        Endpoint::StandbyLeader | Endpoint::Other => 503,
        Endpoint::Replica => code(replica),
        Endpoint::ReadOnly => code(primary || replica),
        // Patroni answers the sync ones only with the DCS at hand: the record says who is sync.
        Endpoint::Sync => code(facts.dcs && facts.sync && replica),
        Endpoint::Async => code(facts.dcs && !facts.sync && replica),
        Endpoint::ReadOnlySync => code(facts.dcs && (primary || (facts.sync && replica))),
        Endpoint::Health => code(facts.running),
        // A paused agent decides nothing, so a loop that stalls then harms nothing.
        Endpoint::Liveness => code(facts.paused || facts.loop_alive),
        Endpoint::Readiness => code(facts.leads || (facts.running && facts.dcs)),
        Endpoint::Status => 200,
    }
}

/// The JSON body of a GET, with Patroni's names where the meaning is the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Body {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Bytes, as Patroni writes LSNs here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xlog: Option<Xlog>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sync_standby: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cluster_unlocked: bool,
    /// Not Patroni's: this agent holds the leader key.
    pub leader: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Xlog {
    Primary { location: u64 },
    Replica { received_location: u64 },
}

pub fn body(facts: &Facts) -> Body {
    let role = facts.running.then_some(if facts.in_recovery {
        "replica"
    } else {
        "primary"
    });
    let xlog = facts.position.filter(|_| facts.running).map(|lsn| {
        if facts.in_recovery {
            Xlog::Replica {
                received_location: lsn.as_u64(),
            }
        } else {
            Xlog::Primary {
                location: lsn.as_u64(),
            }
        }
    });
    Body {
        state: if facts.running { "running" } else { "stopped" },
        role,
        timeline: facts
            .timeline
            .filter(|_| facts.running)
            .map(TimelineId::as_u32),
        xlog,
        sync_standby: facts.sync && facts.replica(),
        pause: facts.paused,
        cluster_unlocked: facts.dcs && !facts.locked,
        leader: facts.leads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader() -> Facts {
        Facts {
            running: true,
            leads: true,
            dcs: true,
            locked: true,
            loop_alive: true,
            position: Some(Lsn::new(1000)),
            ..Facts::default()
        }
    }

    fn standby(sync: bool) -> Facts {
        Facts {
            running: true,
            in_recovery: true,
            dcs: true,
            locked: true,
            sync,
            loop_alive: true,
            position: Some(Lsn::new(900)),
            leader_position: Some(Lsn::new(1000)),
            ..Facts::default()
        }
    }

    const PATHS: [&str; 12] = [
        "/",
        "/primary",
        "/leader",
        "/replica",
        "/read-only",
        "/sync",
        "/async",
        "/health",
        "/liveness",
        "/readiness",
        "/read-only-sync",
        "/nonsense",
    ];

    fn codes(facts: &Facts) -> Vec<u16> {
        PATHS
            .iter()
            .map(|p| status(Endpoint::of(p), facts, None))
            .collect()
    }

    #[test]
    fn each_role_answers_as_patroni_documents() {
        //                         /    prim lead repl ro   sync asyn hlth live rdy  ros  other
        assert_eq!(
            codes(&leader()),
            [200, 200, 200, 503, 200, 503, 503, 200, 200, 200, 200, 503]
        );
        assert_eq!(
            codes(&standby(true)),
            [503, 503, 503, 200, 200, 200, 503, 200, 200, 200, 200, 503]
        );
        assert_eq!(
            codes(&standby(false)),
            [503, 503, 503, 200, 200, 503, 200, 200, 200, 200, 503, 503]
        );
        let stopped = Facts {
            running: false,
            ..standby(true)
        };
        assert_eq!(
            codes(&stopped),
            [503, 503, 503, 503, 503, 503, 503, 503, 200, 503, 503, 503]
        );
    }

    #[test]
    fn a_primary_without_the_lease_or_the_lease_without_a_primary_is_not_primary() {
        // Fenced, lease lost, paused but not leading: the server may still run.
        let lost = Facts {
            leads: false,
            ..leader()
        };
        assert_eq!(status(Endpoint::Primary, &lost, None), 503);
        assert_eq!(status(Endpoint::ReadOnly, &lost, None), 503);
        assert_eq!(status(Endpoint::Health, &lost, None), 200);
        // The key holder whose server is down (or whose probe is stale) leads but is no primary.
        let down = Facts {
            running: false,
            ..leader()
        };
        assert_eq!(status(Endpoint::Primary, &down, None), 503);
        assert_eq!(status(Endpoint::Leader, &down, None), 200);
    }

    #[test]
    fn paths_are_read_by_their_words_as_patroni_reads_them() {
        assert_eq!(Endpoint::of("/master"), Endpoint::Primary);
        assert_eq!(Endpoint::of("/read-write"), Endpoint::Primary);
        assert_eq!(Endpoint::of("/standby-leader"), Endpoint::StandbyLeader);
        assert_eq!(Endpoint::of("/synchronous"), Endpoint::Sync);
        assert_eq!(Endpoint::of("/asynchronous"), Endpoint::Async);
        assert_eq!(Endpoint::of("/patroni"), Endpoint::Status);
    }

    #[test]
    fn a_replica_past_the_lag_asked_for_is_unavailable() {
        let s = standby(false);
        assert_eq!(status(Endpoint::Replica, &s, Some(100)), 200);
        assert_eq!(status(Endpoint::Replica, &s, Some(99)), 503);
        assert_eq!(status(Endpoint::ReadOnly, &s, Some(99)), 503);
    }

    #[test]
    fn the_sync_endpoints_need_etcd_and_a_paused_loop_is_alive() {
        let cut_off = Facts {
            dcs: false,
            ..standby(true)
        };
        assert_eq!(status(Endpoint::Sync, &cut_off, None), 503);
        assert_eq!(status(Endpoint::Readiness, &cut_off, None), 503);
        assert_eq!(status(Endpoint::Replica, &cut_off, None), 200);
        let stalled = Facts {
            loop_alive: false,
            ..standby(true)
        };
        assert_eq!(status(Endpoint::Liveness, &stalled, None), 503);
        let paused = Facts {
            paused: true,
            ..stalled
        };
        assert_eq!(status(Endpoint::Liveness, &paused, None), 200);
    }

    #[test]
    fn the_synchronous_standbys_are_the_first_that_stream_or_every_one_for_any() {
        use crate::ha::model::Leader;
        use crate::ha::records::{LeaseId, MemberRecord, ServerState, SyncRecord};
        let member = |node: &str, follows: Option<&str>| MemberRecord {
            node: node.into(),
            paused: false,
            server: ServerState {
                running: true,
                in_recovery: follows.is_some(),
                timeline: None,
                position: None,
                detached: false,
                follows: follows.map(Into::into),
                unknown: false,
            },
        };
        let mut view = View {
            leader: Some(Leader {
                node: "p".into(),
                lease: LeaseId(1),
                mine: false,
            }),
            members: vec![
                member("p", None),
                member("a", Some("p")),
                member("b", Some("p")),
            ],
            sync: Some(SyncRecord::of("p", "FIRST", 1, &["a", "b"])),
            ..View::default()
        };
        assert_eq!(synchronous(&view), ["a"]);
        // `a` stops streaming: `b` takes over, as PostgreSQL's potential standby does.
        view.members[1] = member("a", None);
        assert_eq!(synchronous(&view), ["b"]);
        view.members[1] = member("a", Some("p"));
        view.sync = Some(SyncRecord::of("p", "ANY", 1, &["a", "b"]));
        assert_eq!(synchronous(&view), ["a", "b"]);
        view.leader = None;
        assert!(synchronous(&view).is_empty());
    }

    #[test]
    fn the_body_names_role_state_and_positions_as_patroni_does() {
        let json = serde_json::to_value(body(&standby(true))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "state": "running", "role": "replica",
                "xlog": {"received_location": 900},
                "sync_standby": true, "leader": false
            })
        );
        let json = serde_json::to_value(body(&Facts::default())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "stopped", "leader": false})
        );
    }
}
