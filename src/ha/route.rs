//! Who carries out a role change: the cluster's agents when they run (a request through etcd,
//! `control`), else pgrepl on the servers itself (`Cluster`'s role changes, which only the
//! crate calls: this is how a caller reaches them). Deciding it here, once, is what keeps a
//! manual failover, rejoin or rebuild from running beside live agents, which would fight them.

use std::time::Duration;

use super::control::{Control, FailedOver, Switched};
use super::etcd_access::{EtcdAccess, Role};
use super::model::View;
use super::HaError;
use crate::cluster::plan::{FailoverOptions, RejoinOptions};
use crate::cluster::role::RoleChangeReport;
use crate::cluster::spec::RuntimeKind;
use crate::cluster::{Cluster, Rebuild, StepLog};

/// Where a cluster's agents keep their keys: how to reach etcd, and the scope under
/// `/pgrepl/`.
pub struct EtcdTarget {
    pub access: EtcdAccess,
    pub scope: String,
}

/// The agents of a cluster, found running: etcd holds their member records.
pub struct Agents {
    control: Control,
    view: View,
}

impl Agents {
    /// `pgrepl pause` is in force: no agent acts on its server.
    pub fn paused(&self) -> bool {
        self.view.pause.is_some()
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The node holding the leader key, if any.
    pub fn leader(&self) -> Option<&str> {
        self.view.leader.as_ref().map(|l| l.node.as_str())
    }
}

/// Who carries out a role change on a cluster.
pub enum Route {
    /// Agents run: a role change is a request to them, and some are theirs alone.
    Agents(Box<Agents>),
    /// The cluster has no etcd, or no agent runs: pgrepl changes the servers itself.
    Manual,
}

/// How a failover went, by the route it took.
#[derive(Debug)]
pub enum Failover {
    /// A dry run with agents: the node they would elect.
    Planned {
        to: String,
    },
    Agents(FailedOver),
    Manual(RoleChangeReport),
}

/// How a switchover went, by the route it took.
#[derive(Debug)]
pub enum Switchover {
    /// A dry run with agents: the leader and the standby the request would name.
    Planned {
        from: String,
        to: String,
    },
    Agents(Switched),
    Manual(RoleChangeReport),
}

impl Route {
    /// The route for `cluster`, its agents found in `etcd` (`None`: the etcd its `[ha]` names
    /// or `up` started, under its scope). An etcd that does not answer is an error: agents may
    /// run, and a manual role change beside them would fight them.
    pub async fn find(cluster: &Cluster, etcd: Option<EtcdTarget>) -> Result<Route, HaError> {
        let etcd = match etcd {
            Some(etcd) => etcd,
            None => match super::etcd_access(cluster, Role::Agent) {
                Some(access) => EtcdTarget {
                    access,
                    scope: super::scope(cluster)?,
                },
                None => return Ok(Route::Manual),
            },
        };
        let control = Control::connect(&etcd.access, &etcd.scope).await?;
        let view = control
            .view()
            .await
            .map_err(|e| HaError::AgentsUnknown { etcd: Box::new(e) })?;
        Ok(if view.members.is_empty() {
            Route::Manual
        } else {
            Route::Agents(Box::new(Agents { control, view }))
        })
    }

    /// The agents, when they run.
    pub fn agents(&self) -> Option<&Agents> {
        match self {
            Route::Agents(agents) => Some(agents),
            Route::Manual => None,
        }
    }

    /// With agents: refused under a live leader, and `force`/`rewind` always (the agents only
    /// promote a standby that holds every acknowledged commit); otherwise the election, with
    /// `to` honoured only when it is as safe, waited for up to `limit`. Without: pgrepl fences
    /// the primary and promotes a standby itself.
    pub async fn failover(
        &self,
        cluster: &Cluster,
        options: &FailoverOptions,
        limit: Duration,
        by: &str,
        log: &dyn StepLog,
    ) -> Result<Failover, HaError> {
        match self {
            Route::Agents(agents) => {
                if options.force || options.rewind {
                    return Err(HaError::ForceWithAgents);
                }
                let to = options.to.as_deref();
                if options.dry_run {
                    let to = super::requests::failover_target(&agents.view, to)?;
                    return Ok(Failover::Planned { to });
                }
                Ok(Failover::Agents(
                    agents.control.failover(to, by, limit).await?,
                ))
            }
            Route::Manual => {
                cluster.all_here("failover")?;
                Ok(Failover::Manual(cluster.failover(options, log).await?))
            }
        }
    }

    /// With agents: a request to the leader's agent to hand over to `to` (by default a standby
    /// the primary waits for now, the most advanced of them), waited for up to `limit`.
    /// Without: pgrepl stops the primary cleanly and promotes `to`, which must be given.
    pub async fn switchover(
        &self,
        cluster: &Cluster,
        to: Option<&str>,
        dry_run: bool,
        limit: Duration,
        by: &str,
        log: &dyn StepLog,
    ) -> Result<Switchover, HaError> {
        match self {
            Route::Agents(agents) => {
                if dry_run {
                    let (from, to) = super::requests::switchover_target(&agents.view, to)?;
                    return Ok(Switchover::Planned { from, to });
                }
                let done = agents
                    .control
                    .switchover(&agents.view, to, by, limit)
                    .await?;
                Ok(Switchover::Agents(done))
            }
            Route::Manual => {
                cluster.all_here("switchover")?;
                let to = to.ok_or(HaError::NoTarget)?;
                Ok(Switchover::Manual(
                    cluster.switchover(to, dry_run, log).await?,
                ))
            }
        }
    }

    /// Refused with agents: the node's own agent rejoins it.
    pub async fn rejoin(
        &self,
        cluster: &Cluster,
        node: &str,
        options: RejoinOptions,
        log: &dyn StepLog,
    ) -> Result<RoleChangeReport, HaError> {
        if let Route::Agents(_) = self {
            return Err(HaError::AgentRejoins {
                node: node.to_owned(),
            });
        }
        cluster.all_here("rejoin")?;
        let options = RejoinOptions {
            agents: false,
            ..options
        };
        Ok(cluster.rejoin(node, options, log).await?)
    }

    /// A standby rebuilt `how` (`force`: even though it streams). With agents only while
    /// they are paused, or the node's agent would start its server under the copy; and never
    /// on docker with `[ha]`, where each node's agent builds it.
    pub async fn rebuild(
        &self,
        cluster: &Cluster,
        node: &str,
        how: Rebuild,
        force: bool,
        dry_run: bool,
        log: &dyn StepLog,
    ) -> Result<RoleChangeReport, HaError> {
        let action = how.action();
        if self.agents().is_some_and(|agents| !agents.paused()) {
            return Err(HaError::AgentsNotPaused {
                action,
                node: node.to_owned(),
            });
        }
        if cluster.spec.ha.is_some() && cluster.spec.runtime == RuntimeKind::Docker {
            return Err(HaError::AgentsBuildOnDocker {
                node: node.to_owned(),
                state: cluster
                    .state_dir()
                    .join("machines")
                    .join(node)
                    .join("state"),
            });
        }
        cluster.all_here(action)?;
        Ok(cluster.rebuild(node, how, force, dry_run, log).await?)
    }
}
