//! Automatic, fenced failover: one agent per node (`pgrepl agent`), etcd (v3) as the only
//! consensus, as Patroni does it.
//!
//! - `records`: the key layout under `/pgrepl/<cluster>/` and the JSON records.
//! - `model`: what a decision reads (the probed server, etcd's view, time) and returns.
//! - `election`: who may take over without losing an acknowledged commit.
//! - `decide`: the pure decision (this node's server and the etcd view in, one action out).
//! - `requests`: the pure rules for what people ask (pause, switchover, failover `--to`).
//! - `core`: the agent as a state machine (timers, lease, fencing; observations and time in,
//!   effects out), the same code under the real agent and the simulator (tests/sim).
//! - `store`: etcd access (leases, the create-if-absent leader transaction, guarded writes).
//! - `agent`: the executor: probes, publishes, reads etcd and carries out the core's effects
//!   through the cluster runtime.
//! - `api_addr`: where each agent serves its HTTP API (`agent/api.rs`).
//! - `launch`: what `up` and `down` do with `[ha]` on the local runtime: the etcd of `local_etcd`
//!   and one agent process per node, both started and stopped as a `daemon`.
//! - `haproxy`: the HAProxy configuration `pgrepl haproxy-config` prints, pure.
//! - `health`: what the agent's health endpoints answer (Patroni's REST contract), pure.
//! - `status`: the leader, lease, agents and promotable set `pgrepl status` shows.
//! - `control`: `pgrepl pause`/`resume`/`switchover`/`failover` talking to the agents via etcd.
//! - `route`: who carries out a role change, the agents when they run or pgrepl on the servers,
//!   and what is refused beside live agents; `Cluster`'s role changes are reached through it.
//! - `bootstrap`: an agent whose node has no data builds it (initialise, or clone later).
//! - `error`: `HaError`, one variant per failure.
//!
//! The design and the zero-loss and fencing arguments: proto-notes/08-ha.md.

pub mod agent;
pub mod api_addr;
pub mod bootstrap;
pub mod control;
pub mod core;
mod daemon;
pub mod decide;
pub mod docker_etcd;
pub mod election;
mod error;
pub mod etcd_access;
pub mod haproxy;
pub mod health;
pub mod launch;
mod local_etcd;
pub mod machines;
pub mod model;
pub mod proxy;
pub mod records;
pub mod requests;
pub mod rolling;
pub mod route;
pub mod status;
pub mod store;

pub use self::error::{Awaited, HaError, Seen};
pub use self::local_etcd::LOCAL_ETCD_PORTS;

use crate::cluster::spec::{DEFAULT_START_TIMEOUT_S, DEFAULT_TTL_S};
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::etcd_access::{ClientTls, EtcdAccess, Role};
use crate::cluster::Cluster;

/// The cluster's name in etcd keys: `[ha] scope`, else the cluster file's name without its
/// extension, else `pgrepl` (the built-in defaults).
pub fn scope(cluster: &Cluster) -> Result<String, HaError> {
    let scope = match cluster.spec.ha.as_ref().and_then(|ha| ha.scope.clone()) {
        Some(scope) => scope,
        None => cluster
            .cluster_file()
            .and_then(Path::file_stem)
            .map_or_else(|| "pgrepl".into(), |s| s.to_string_lossy().into_owned()),
    };
    if scope.is_empty() || scope.contains('/') {
        return Err(HaError::BadScope { scope });
    }
    Ok(scope)
}

/// Where `up` writes the client URLs of the etcd it started itself (one per line).
pub fn local_etcd_endpoints_file(state_dir: &Path) -> PathBuf {
    state_dir.join("etcd").join("endpoints")
}

/// How to reach the cluster's etcd in `role`: `[ha] etcd` with `[ha]`'s credentials, else the
/// etcd `up` started in the state dir (over TLS, as the role's user, when its URLs are
/// `https://`); `None` when neither exists.
pub fn etcd_access(cluster: &Cluster, role: Role) -> Option<EtcdAccess> {
    let ha = cluster.spec.ha.as_ref()?;
    if !ha.etcd.is_empty() {
        return Some(EtcdAccess {
            endpoints: ha.etcd.clone(),
            tls: ha.etcd_ca.clone().map(|ca| ClientTls {
                ca,
                identity: ha.etcd_cert.clone().zip(ha.etcd_key.clone()),
            }),
            user: ha.etcd_user.clone().zip(ha.etcd_password_file.clone()),
        });
    }
    let text = std::fs::read_to_string(local_etcd_endpoints_file(cluster.state_dir())).ok()?;
    let urls: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let tls = urls.iter().all(|url| url.starts_with("https://"));
    (!urls.is_empty()).then(|| EtcdAccess::own(cluster.state_dir(), urls, tls, role.into()))
}

/// The Raft timing of the etcd `up` starts (and the one to give an etcd of your own): while
/// etcd has no leader no lease is renewed, and a dead leader is only noticed after one to two
/// election timeouts. etcd's defaults (100 ms, 1000 ms) take 1–2.5 s, longer than a primary
/// waits before it fences itself (1.5 s after its last confirmed renewal); these take
/// 0.25–0.8 s. etcd wants the election timeout at least 5 heartbeats and ~10 round trips.
pub const ETCD_HEARTBEAT_MS: u64 = 25;
pub const ETCD_ELECTION_MS: u64 = 250;
// etcd refuses an election timeout shorter than five heartbeats.
const _: () = assert!(ETCD_ELECTION_MS >= 5 * ETCD_HEARTBEAT_MS);

/// The agent's clock. The defaults meet: a node loss is seen within `ttl` (+0.5 s, etcd's
/// expiry check), a stall shorter than `stall_tolerance()` never costs the lease, and a primary
/// that cannot renew is fenced `fence_margin` before its lease can expire anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timing {
    /// Lease time to live, whole seconds (etcd's unit); 2 s is etcd's minimum with its default
    /// election timeout.
    pub ttl_s: u64,
    /// How often the lease is renewed.
    pub renew_ms: u64,
    /// How often the agent probes its server and decides when nothing else wakes it.
    pub loop_ms: u64,
    /// How long before the lease can expire a primary that could not renew stops itself.
    pub fence_margin_ms: u64,
    /// How long a leader's server may fail to run as a primary (it does not start, or stays in
    /// crash recovery) before the leader lets a standby take over, when one can without loss
    /// (Patroni's `primary_start_timeout`, 300 s there).
    #[serde(default = "default_start_timeout_s")]
    pub start_timeout_s: u64,
}

fn default_start_timeout_s() -> u64 {
    DEFAULT_START_TIMEOUT_S
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ttl_s: DEFAULT_TTL_S,
            renew_ms: 400,
            loop_ms: 250,
            fence_margin_ms: 500,
            start_timeout_s: DEFAULT_START_TIMEOUT_S,
        }
    }
}

impl Timing {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s)
    }

    pub fn renew(&self) -> Duration {
        Duration::from_millis(self.renew_ms)
    }

    pub fn loop_interval(&self) -> Duration {
        Duration::from_millis(self.loop_ms)
    }

    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout_s)
    }

    /// How long after the last confirmed renewal was sent a primary fences itself.
    pub fn fence_after(&self) -> Duration {
        self.ttl()
            .saturating_sub(Duration::from_millis(self.fence_margin_ms))
    }

    /// The longest stall of an agent (or of etcd) that never costs a healthy primary its role:
    /// the lease outlives it, and the renewal after it comes before the fence deadline.
    pub fn stall_tolerance(&self) -> Duration {
        self.fence_after().saturating_sub(self.renew())
    }

    /// One etcd request's limit: a renewal that hangs must not eat the fencing margin.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.renew_ms.min(self.fence_margin_ms) * 3 / 4)
    }

    /// Refuses timings that cannot meet: a lease shorter than two renewals, or a margin that
    /// leaves no time to renew.
    pub fn validate(&self) -> Result<(), HaError> {
        if self.ttl_s < 2 {
            return Err(HaError::TtlTooShort { ttl_s: self.ttl_s });
        }
        if self.fence_after() < self.renew() * 2 {
            return Err(HaError::NoRoomToRenew {
                ttl_s: self.ttl_s,
                fence_margin_ms: self.fence_margin_ms,
                renew_ms: self.renew_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_timings_meet_the_goals() {
        let t = Timing::default();
        t.validate().unwrap();
        // A 1 s stall is tolerated, with room to spare.
        assert!(t.stall_tolerance() >= Duration::from_secs(1));
        // A dead primary's lease expires within 2 s of its last renewal.
        assert_eq!(t.ttl(), Duration::from_secs(2));
        assert!(t.request_timeout() < Duration::from_millis(t.fence_margin_ms));
    }

    #[test]
    fn etcd_replaces_a_dead_leader_before_the_primary_fences() {
        // A dead leader is noticed within two election timeouts, and a split vote costs two
        // more; the primary fences no sooner than fence_after less one renewal after the kill.
        let t = Timing::default();
        let election = Duration::from_millis(4 * ETCD_ELECTION_MS);
        assert!(election < t.fence_after() - t.renew());
    }

    #[test]
    fn timings_that_cannot_meet_are_refused() {
        let short = Timing {
            ttl_s: 1,
            ..Timing::default()
        };
        assert!(short.validate().is_err());
        let slow = Timing {
            renew_ms: 1000,
            ..Timing::default()
        };
        assert!(slow.validate().is_err());
    }
}
