//! `pgrepl config set` and `pgrepl restart` through the agents: the settings record written
//! compare-and-swap and every live agent's report waited for; a restart asked of one agent and
//! its answer waited for.

use std::time::{Duration, Instant};

use super::{lease_ttl, Control, POLL};
use crate::cluster::settings::Desired;
use crate::ha::records::{AppliedRecord, RestartRequest};
use crate::ha::HaError;

/// The agents' answer to new settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// The reports of the agents that applied it (with their errors, if any).
    pub reports: Vec<AppliedRecord>,
    /// Live agents that did not report it within the bound.
    pub pending: Vec<String>,
}

impl Control {
    /// The settings record and the revision it was read at.
    pub async fn settings(&self) -> Result<(Desired, i64), HaError> {
        self.store.settings().await
    }

    /// Every live agent's latest report.
    pub async fn applied(&self) -> Result<Vec<AppliedRecord>, HaError> {
        self.store.applied().await
    }

    /// Writes `next` if the record is still at `revision`, then waits up to `limit` until
    /// every live agent reports it.
    pub async fn set_settings(
        &self,
        next: &Desired,
        revision: i64,
        limit: Duration,
    ) -> Result<Applied, HaError> {
        if !self.store.put_settings(next, revision).await? {
            return Err(HaError::SettingsRaced);
        }
        self.wait_applied(next.serial, limit).await
    }

    /// Waits up to `limit` until every agent with a member record reports `serial`.
    pub async fn wait_applied(&self, serial: u64, limit: Duration) -> Result<Applied, HaError> {
        let deadline = Instant::now() + limit;
        loop {
            let live: Vec<String> = self
                .view()
                .await?
                .members
                .into_iter()
                .map(|m| m.node)
                .collect();
            let reports = self.store.applied().await?;
            let (done, pending): (Vec<String>, Vec<String>) = live.into_iter().partition(|node| {
                reports
                    .iter()
                    .any(|r| &r.node == node && r.serial >= serial)
            });
            if pending.is_empty() || Instant::now() >= deadline {
                let reports = reports
                    .into_iter()
                    .filter(|r| done.contains(&r.node))
                    .collect();
                return Ok(Applied { reports, pending });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks `node`'s agent to restart its server and waits up to `limit` for its answer.
    pub async fn restart(&self, node: &str, by: &str, limit: Duration) -> Result<(), HaError> {
        let request = RestartRequest {
            by: by.to_owned(),
            failed: None,
        };
        let Some(lease) = self
            .store
            .request_restart(node, &request, lease_ttl(limit))
            .await?
        else {
            return Err(HaError::RestartPending {
                node: node.to_owned(),
            });
        };
        let deadline = Instant::now() + limit;
        let outcome = loop {
            match self.store.restart_request(node).await? {
                None => break Ok(()),
                Some(RestartRequest {
                    failed: Some(why), ..
                }) => {
                    break Err(HaError::RestartFailed {
                        node: node.to_owned(),
                        why,
                    })
                }
                Some(_) if Instant::now() >= deadline => {
                    break Err(HaError::RestartNotDone {
                        node: node.to_owned(),
                        within: limit,
                    })
                }
                Some(_) => tokio::time::sleep(POLL).await,
            }
        };
        self.store.revoke(lease).await?;
        outcome
    }
}
