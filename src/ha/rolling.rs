//! Carries out a rolling restart (`cluster::settings::rolling` orders it): through the agents
//! when they run (a restart request to a node's agent, a switchover through the leader's),
//! else on the servers directly. Each step ends only once the cluster streams again, checked
//! on the primary: a standby's walsender must be newer than the restart.

use std::time::{Duration, Instant};

use super::control::Control;
use super::HaError;
use crate::cluster::settings::rolling::Step;
use crate::cluster::settings::Desired;
use crate::cluster::spec::NodeSpec;
use crate::cluster::{Cluster, ClusterError, StepLog};

/// How often a step looks again whether the cluster streams.
const POLL: Duration = Duration::from_millis(200);

pub struct Rolling<'a> {
    pub cluster: &'a Cluster,
    /// The agents' control when agents run.
    pub agents: Option<&'a Control>,
    /// How long one step may take.
    pub limit: Duration,
    /// `user@host`, for the agents' records.
    pub by: String,
}

impl Rolling<'_> {
    /// Runs one step and returns once the cluster streams again.
    pub async fn step(&self, step: &Step, log: &dyn StepLog) -> Result<(), HaError> {
        match step {
            Step::Standby { node } => {
                let primary = self.primary().await?;
                self.wait_held(node).await?;
                let since = self.cluster.server_now(&primary).await?;
                self.restart(node, log).await?;
                self.wait_streaming(&primary, std::slice::from_ref(node), &since)
                    .await
            }
            Step::PrimaryInPlace { node } => {
                let primary = self.cluster.node(node)?.clone();
                let since = self.cluster.server_now(&primary).await?;
                self.restart(node, log).await?;
                let standbys: Vec<String> = self
                    .cluster
                    .spec
                    .nodes
                    .iter()
                    .filter(|n| n.name != *node)
                    .map(|n| n.name.clone())
                    .collect();
                self.wait_streaming(&primary, &standbys, &since).await?;
                if self.agents.is_none() {
                    // The standbys' share of a lowered setting, now that the primary runs it.
                    let desired = Desired::load(self.cluster.state_dir())?;
                    self.cluster.apply_settings(&desired).await?;
                }
                Ok(())
            }
            Step::Switchover { from, to } => {
                match self.agents {
                    Some(control) => {
                        let view = control.view().await?;
                        control
                            .switchover(&view, to.as_deref(), &self.by, self.limit)
                            .await?;
                    }
                    None => {
                        let to = to
                            .as_deref()
                            .ok_or_else(|| HaError::NoSwitchoverTarget { from: from.clone() })?;
                        self.cluster.switchover(to, false, log).await?;
                    }
                }
                let primary = self.primary().await?;
                let since = String::from("-infinity");
                self.wait_streaming(&primary, std::slice::from_ref(from), &since)
                    .await
            }
        }
    }

    /// The primary now: the leader with agents, else the recorded one.
    async fn primary(&self) -> Result<NodeSpec, HaError> {
        let name = match self.agents {
            Some(control) => control
                .view()
                .await?
                .leader
                .map(|l| l.node)
                .ok_or(HaError::NoLeader)?,
            None => self.cluster.current_spec()?.primary().name.clone(),
        };
        Ok(self.cluster.node(&name)?.clone())
    }

    async fn restart(&self, node: &str, log: &dyn StepLog) -> Result<(), HaError> {
        log.step(&format!("restart `{node}`"));
        match self.agents {
            Some(control) => control.restart(node, &self.by, self.limit).await,
            None => Ok(self.cluster.restart_node(node).await?),
        }
    }

    /// With agents, a standby holding a setting at its primary's higher value gets the lower
    /// one from its agent only after the primary runs it: restarting it before would be in vain.
    async fn wait_held(&self, node: &str) -> Result<(), HaError> {
        let Some(control) = self.agents else {
            return Ok(());
        };
        let deadline = Instant::now() + self.limit;
        loop {
            let applied = control.applied().await?;
            let held = applied
                .iter()
                .find(|r| r.node == node)
                .map(|r| r.held.clone());
            match held {
                Some(held) if !held.is_empty() && Instant::now() < deadline => {}
                _ => return Ok(()),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Until every one of `standbys` streams from `primary` over a connection newer than `since`.
    async fn wait_streaming(
        &self,
        primary: &NodeSpec,
        standbys: &[String],
        since: &str,
    ) -> Result<(), HaError> {
        let deadline = Instant::now() + self.limit;
        let mut waiting: Vec<&String> = standbys.iter().collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for standby in waiting {
                // The primary itself may be restarting: a failed session is one more poll.
                let streams = self.cluster.streams_since(primary, standby, since).await;
                if !matches!(streams, Ok(true)) {
                    still.push(standby);
                }
            }
            waiting = still;
            if !waiting.is_empty() && Instant::now() >= deadline {
                let names: Vec<&str> = waiting.iter().map(|s| s.as_str()).collect();
                return Err(ClusterError::Timeout(
                    self.limit,
                    format!(
                        "`{}` to stream from `{}` again",
                        names.join("`, `"),
                        primary.name
                    ),
                )
                .into());
            }
            if !waiting.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }
}
