//! The commands people run against the agents: `pause`, `resume`, and `switchover` /
//! `failover` when agents run. They write a key under `/pgrepl/<cluster>/` and wait for the
//! agents to act on it; the checks are `requests`' pure ones, so the command refuses what the
//! agents would. Requests live under a lease of the command's own, so one whose command died
//! expires with it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::etcd_access::EtcdAccess;
use super::model::View;
use super::records::{LeaseId, PauseRecord, RoleRequest};
use super::requests;
use super::store::Store;
use super::{HaError, Seen};

mod day2;

pub use self::day2::Applied;

/// One etcd request of a command someone waits on (the agents' own limit is much shorter).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a waiting command looks again.
const POLL: Duration = Duration::from_millis(100);
/// How long `failover` gives an election under way (standbys detaching) to settle before it
/// reports why nobody can be elected.
const SETTLE: Duration = Duration::from_secs(5);

pub struct Control {
    store: Store,
}

/// How a switchover went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Switched {
    pub from: String,
    pub to: String,
    /// From the request to the new leader running as a primary.
    pub took_ms: u128,
    /// From the request to the old primary streaming from the new one; `None` if it did not
    /// within the bound (its agent goes on trying).
    pub rejoined_ms: Option<u128>,
}

/// How a failover through the agents went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedOver {
    pub from: String,
    pub to: String,
    pub took_ms: u128,
}

/// The agents' answer to `pause` or `resume`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Acknowledged {
    /// The pause record in force before (resume) or now (pause).
    pub record: Option<PauseRecord>,
    /// It was already so: nothing was written.
    pub already: bool,
    /// Agents that show the new state, and those that did not within the bound.
    pub agreed: Vec<String>,
    pub pending: Vec<String>,
    /// The cluster's nodes with no live agent (none runs, or its record lapsed with its lease):
    /// not waited for; an agent reads the pause key when it starts.
    pub absent: Vec<String>,
}

impl Control {
    pub async fn connect(access: &EtcdAccess, cluster: &str) -> Result<Control, HaError> {
        let store = Store::open(access, cluster, REQUEST_TIMEOUT).await?;
        Ok(Control { store })
    }

    /// What etcd holds now.
    pub async fn view(&self) -> Result<View, HaError> {
        // Lease 0: no leader key is ever "mine" for a command.
        self.store.view(LeaseId(0)).await
    }

    /// Writes the pause key (unless there is one) and waits until every live agent shows it;
    /// which of `nodes` have none is said too.
    pub async fn pause(
        &self,
        by: &str,
        nodes: &[String],
        limit: Duration,
    ) -> Result<Acknowledged, HaError> {
        let record = PauseRecord {
            by: by.to_owned(),
            at_unix_ms: unix_ms(),
        };
        let in_force = self.store.pause(&record).await?;
        let already = in_force != record;
        let mut ack = self.wait_agents(true, nodes, limit).await?;
        ack.record = Some(in_force);
        ack.already = already;
        Ok(ack)
    }

    /// Deletes the pause key and waits until every live agent shows it gone.
    pub async fn resume(&self, nodes: &[String], limit: Duration) -> Result<Acknowledged, HaError> {
        let record = self.store.resume().await?;
        let mut ack = self.wait_agents(false, nodes, limit).await?;
        ack.already = record.is_none();
        ack.record = record;
        Ok(ack)
    }

    /// Live agents whose member record shows `paused`, those that do not yet, and which of
    /// `nodes` have no live agent.
    async fn wait_agents(
        &self,
        paused: bool,
        nodes: &[String],
        limit: Duration,
    ) -> Result<Acknowledged, HaError> {
        let deadline = Instant::now() + limit;
        loop {
            let view = self.view().await?;
            let (agreed, pending): (Vec<_>, Vec<_>) =
                view.members.iter().partition(|m| m.paused == paused);
            let names = |v: Vec<&super::records::MemberRecord>| {
                v.into_iter().map(|m| m.node.clone()).collect::<Vec<_>>()
            };
            if pending.is_empty() || Instant::now() >= deadline {
                let absent = nodes
                    .iter()
                    .filter(|n| !view.members.iter().any(|m| &m.node == *n))
                    .cloned()
                    .collect();
                return Ok(Acknowledged {
                    record: None,
                    already: false,
                    agreed: names(agreed),
                    pending: names(pending),
                    absent,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks the leader's agent to hand over to `to` (default: the most advanced fit standby),
    /// and waits up to `limit` for the new leader to run as a primary, then (within another
    /// `limit`) for the old one to stream from it.
    pub async fn switchover(
        &self,
        view: &View,
        to: Option<&str>,
        by: &str,
        limit: Duration,
    ) -> Result<Switched, HaError> {
        let (from, to) = requests::switchover_target(view, to)?;
        let request = RoleRequest {
            from: from.clone(),
            to: to.clone(),
            by: by.to_owned(),
            at_unix_ms: unix_ms(),
            refused: None,
        };
        let started = Instant::now();
        let key = self.store.keys().switchover();
        let Some(lease) = self
            .store
            .request(&key, &request, Some(from.as_str()), lease_ttl(limit))
            .await?
        else {
            return Err(HaError::SwitchoverRaced { from });
        };
        let outcome = self.wait_leader(&from, &to, started + limit, limit).await;
        // The request goes whatever happened: a stale one must not act later.
        let revoked = self.store.revoke(lease).await;
        outcome?;
        revoked?;
        let took_ms = started.elapsed().as_millis();
        let rejoined = self
            .wait_until(Instant::now() + limit, |view| {
                view.members.iter().any(|m| {
                    m.node == from
                        && m.server.running
                        && m.server.in_recovery
                        && m.server.follows.as_deref() == Some(to.as_str())
                })
            })
            .await;
        Ok(Switched {
            from,
            to,
            took_ms,
            rejoined_ms: rejoined.then(|| started.elapsed().as_millis()),
        })
    }

    /// With no leader: waits for the election, asking it to prefer `to` when that is as safe as
    /// its own choice; refuses at once while a leader lives or the agents are paused.
    pub async fn failover(
        &self,
        to: Option<&str>,
        by: &str,
        limit: Duration,
    ) -> Result<FailedOver, HaError> {
        let started = Instant::now();
        let settle = started + SETTLE.min(limit);
        let mut from = String::new();
        let mut first = true;
        let target = loop {
            let view = self.view().await?;
            if view.leader.is_none() {
                from = view
                    .sync
                    .as_ref()
                    .map(|r| r.leader.clone())
                    .unwrap_or_default();
            }
            match requests::failover_target(&view, to) {
                Ok(target) => break Some(target),
                // A leader that appears after the first look is the election waited for.
                Err(_) if view.leader.is_some() && !first => break None,
                // Neither changes by waiting a few seconds.
                Err(why) if view.leader.is_some() || view.pause.is_some() => return Err(why.into()),
                Err(why) if Instant::now() >= settle => return Err(why.into()),
                Err(_) => tokio::time::sleep(POLL).await,
            }
            first = false;
        };
        let lease = match (to, target) {
            (Some(_), Some(target)) => {
                let request = RoleRequest {
                    from: from.clone(),
                    to: target,
                    by: by.to_owned(),
                    at_unix_ms: unix_ms(),
                    refused: None,
                };
                let key = self.store.keys().failover();
                self.store
                    .request(&key, &request, None, lease_ttl(limit))
                    .await?
            }
            _ => None,
        };
        let elected = self
            .wait_until(started + limit, |view| view.leader.is_some())
            .await;
        if let Some(lease) = lease {
            self.store.revoke(lease).await?;
        }
        if !elected {
            return Err(HaError::NotElected { within: limit });
        }
        let leader = self
            .view()
            .await?
            .leader
            .map(|l| l.node)
            .unwrap_or_default();
        if let Some(to) = to.filter(|to| *to != leader) {
            return Err(HaError::ElectedOther {
                leader,
                to: to.to_owned(),
            });
        }
        self.wait_leader(&from, &leader, started + limit, limit)
            .await?;
        Ok(FailedOver {
            from,
            to: leader,
            took_ms: started.elapsed().as_millis(),
        })
    }

    /// Waits until `to` holds the key and runs as a primary; a refusal by the leader's agent or
    /// the deadline end it with what was seen last.
    async fn wait_leader(
        &self,
        from: &str,
        to: &str,
        deadline: Instant,
        limit: Duration,
    ) -> Result<(), HaError> {
        let mut seen;
        loop {
            match self.view().await {
                Ok(view) => {
                    if let Some(why) = view.switchover.as_ref().and_then(|r| r.refused.clone()) {
                        return Err(HaError::AgentRefused {
                            from: from.to_owned(),
                            why,
                        });
                    }
                    let primary = view
                        .members
                        .iter()
                        .any(|m| m.node == to && m.server.running && !m.server.in_recovery);
                    let leader = view.leader.as_ref().map(|l| l.node.as_str());
                    if leader == Some(to) && primary {
                        return Ok(());
                    }
                    seen = match leader {
                        Some(l) if l == to => Seen::NotPrimaryYet {
                            node: to.to_owned(),
                        },
                        Some(l) => Seen::StillLeads { node: l.to_owned() },
                        None => Seen::NoLeader,
                    };
                }
                Err(e) => seen = Seen::Unreadable(Box::new(e)),
            }
            if Instant::now() >= deadline {
                return Err(HaError::NoTakeover {
                    from: from.to_owned(),
                    to: to.to_owned(),
                    within: limit,
                    seen,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until `done` holds (true) or the deadline passes (false).
    async fn wait_until(&self, deadline: Instant, done: impl Fn(&View) -> bool) -> bool {
        loop {
            if self.view().await.is_ok_and(|view| done(&view)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A request outlives its command's wait by a little, never by much: etcd counts whole seconds.
fn lease_ttl(limit: Duration) -> Duration {
    Duration::from_secs(limit.as_secs().max(1) + 2)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
