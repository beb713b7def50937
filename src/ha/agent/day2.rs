//! What an agent does for the operator when its loop is idle: applies the cluster-wide
//! settings (`pgrepl config set`) to its server and reports them, and restarts its server when
//! `pgrepl restart` asks. Outside the core: neither changes who leads or what a standby
//! follows, and the core sees a restarted server on its next probe as a crash it recovered
//! from. The leader's lease is renewed by its own task meanwhile.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{bounded, Agent};
use crate::cluster::settings::{self, Desired, AT_LEAST_THE_PRIMARYS};
use crate::ha::model::Probed;
use crate::ha::records::AppliedRecord;
use crate::ha::store::Day2;
use crate::ha::HaError;

/// What this run of the agent last did of the settings.
#[derive(Debug, Default)]
pub(super) struct Day2State {
    /// The settings last written to the server (a standby's adjusted by `Desired::for_node`).
    written: Option<Desired>,
    /// The report last published.
    reported: Option<AppliedRecord>,
    /// Settings the server refused, and when: tried again only after [`RETRY_AFTER`].
    refused: Option<(Desired, Instant)>,
}

/// How long an agent waits before it tries again settings its server refused.
const RETRY_AFTER: Duration = Duration::from_secs(10);

impl Agent {
    /// One idle round: a restart asked of this node first, else the settings. `leader`: the
    /// node holding the leader key, whose report gives a standby its primary's values.
    pub(super) async fn day2(
        &self,
        client: &Client,
        probed: &Probed,
        leader: Option<&str>,
    ) -> Result<(), HaError> {
        let asked = self.store.day2(&self.node.name).await?;
        if asked.restart.as_ref().is_some_and(|r| r.failed.is_none()) {
            return self.restart_server().await;
        }
        // A round cut short is done again on the next (applying is idempotent).
        let round = self.settings_round(client, probed, leader, &asked);
        bounded("the settings round", round).await
    }

    /// Applies the settings when they changed, then publishes what the server runs.
    async fn settings_round(
        &self,
        client: &Client,
        probed: &Probed,
        leader: Option<&str>,
        asked: &Day2,
    ) -> Result<(), HaError> {
        let node = &self.node.name;
        let Some(local) = probed.local() else {
            return Ok(());
        };
        let mut report = self.state().reported.clone().unwrap_or(AppliedRecord {
            node: node.clone(),
            ..AppliedRecord::default()
        });
        if let Some(desired) = &asked.settings {
            let primary_runs = leader
                .filter(|leader| *leader != node.as_str())
                .and_then(|leader| asked.applied.iter().find(|r| r.node == leader))
                .map(|r| &r.running);
            // A standby that cannot tell what its primary runs with waits: lowering a setting
            // the primary still runs higher would keep it from starting again.
            let wait = local.server.in_recovery && primary_runs.is_none();
            let target = desired.for_node(if local.server.in_recovery {
                primary_runs
            } else {
                None
            });
            report.held = desired
                .settings
                .iter()
                .filter(|(name, value)| target.settings.get(*name) != Some(value))
                .map(|(name, _)| name.clone())
                .collect();
            let refused_lately = self
                .state()
                .refused
                .as_ref()
                .is_some_and(|(r, at)| *r == target && at.elapsed() < RETRY_AFTER);
            if !wait && !refused_lately && self.state().written.as_ref() != Some(&target) {
                match settings::apply(client, &self.node, &target).await {
                    Ok(()) => {
                        tracing::info!("settings {} applied", desired.serial);
                        report.error = None;
                        self.state().written = Some(target);
                    }
                    Err(e) => {
                        let why = crate::cluster::error_chain(&e);
                        tracing::warn!("settings {}: {why}", desired.serial);
                        report.error = Some(why);
                        self.state().refused = Some((target, Instant::now()));
                    }
                }
                report.serial = desired.serial;
            }
        }
        let running = settings::running(client, &self.node, &AT_LEAST_THE_PRIMARYS).await?;
        report.running = running.values;
        report.pending_restart = running.pending_restart;
        if self.state().reported.as_ref() != Some(&report) {
            let lease = self.core().lease();
            self.store.publish_applied(&report, lease).await?;
            self.state().reported = Some(report);
        }
        Ok(())
    }

    /// Stops the server (fast: a primary's standbys get every commit) and starts it again;
    /// the request is deleted when it runs again, else marked failed with why.
    async fn restart_server(&self) -> Result<(), HaError> {
        tracing::info!("restarting `{}`, as asked", self.node.name);
        let runtime = &self.cluster.runtime;
        let restarted = async {
            runtime.stop(&self.node, true).await?;
            runtime.start(&self.node).await
        };
        let failed = restarted
            .await
            .err()
            .map(|e| crate::cluster::error_chain(&e));
        if let Some(why) = &failed {
            tracing::warn!("restart: {why}");
        }
        self.store.restart_done(&self.node.name, failed).await
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Day2State> {
        self.day2.lock().expect("day2 lock")
    }
}
