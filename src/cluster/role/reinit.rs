//! `reinit` and `resync`: a standby rebuilt, refused for the primary, and for a standby that
//! streams unless forced (it would lose nothing, but it costs a copy for nothing). `reinit`
//! replaces its data with a fresh base backup of the primary (Patroni's `reinit`), for data
//! that is damaged; `resync` sends only the blocks changed since its last restartpoint where
//! PostgreSQL 17+ allows (`super::resync`), for a standby whose WAL the primary no longer has.

use super::super::plan::PlanError;
use super::super::{streaming_standbys, Cluster, ClusterError, StepLog};
use super::{RoleChangeReport, Steps};

/// How a standby is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// A full base backup (`reinit`).
    Reclone,
    /// An incremental backup combined in place where it applies, else a re-clone (`resync`).
    Resync,
}

impl Rebuild {
    /// The command that rebuilds this way.
    pub fn action(self) -> &'static str {
        match self {
            Rebuild::Reclone => "reinit",
            Rebuild::Resync => "resync",
        }
    }
}

impl Cluster {
    pub(crate) async fn rebuild(
        &self,
        name: &str,
        how: Rebuild,
        force: bool,
        dry_run: bool,
        log: &dyn StepLog,
    ) -> Result<RoleChangeReport, ClusterError> {
        let action = how.action();
        let spec = self.current_spec()?;
        let node = self.node(name)?;
        let primary = spec.primary();
        if node.name == primary.name {
            return Err(PlanError::RebuildPrimary(name.to_owned(), action).into());
        }
        let primary_sql = self.sql(primary).await?;
        let streams = streaming_standbys(&primary_sql)
            .await?
            .iter()
            .any(|(n, _)| n == name);
        if streams && !force {
            return Err(PlanError::RebuildStreaming(name.to_owned(), action).into());
        }
        let running = self.runtime.is_running(node).await;
        let mut plan = Vec::new();
        if running {
            plan.push(format!(
                "stop `{name}` (fast shutdown; killed if it will not)"
            ));
        }
        plan.push(match how {
            Rebuild::Reclone => format!(
                "replace its data with a base backup of `{}` (the old data is kept aside until the copy is complete)",
                primary.name
            ),
            Rebuild::Resync => format!(
                "patch its data with the blocks changed on `{}` since its last restartpoint (an incremental backup, 17+), or re-clone it where that does not apply",
                primary.name
            ),
        });
        plan.push(format!(
            "start it as a standby of `{}`; sync policy {}",
            primary.name, spec.sync.policy
        ));
        let mut report = RoleChangeReport {
            action,
            old_primary: primary.name.clone(),
            new_primary: primary.name.clone(),
            checks: vec![format!(
                "`{name}` {} from `{}`",
                if streams {
                    "streams"
                } else {
                    "does not stream"
                },
                primary.name
            )],
            plan,
            steps: Vec::new(),
            dry_run,
            elapsed_ms: 0,
        };
        if dry_run {
            return Ok(report);
        }
        let mut steps = Steps::new(log);
        if running {
            // A damaged server may not shut down: it is rebuilt anyway.
            if self.runtime.stop(node, true).await.is_err() {
                self.runtime.kill(node).await?;
            }
            steps.done(format!("stopped `{name}`"));
        }
        match how {
            Rebuild::Reclone => {
                self.reclone(node, primary).await?;
                steps.done(format!("re-cloned `{name}` from `{}`", primary.name));
            }
            Rebuild::Resync => {
                let how = self.resync_node(node, primary).await?;
                steps.done(format!("`{name}` {how}"));
            }
        }
        self.runtime.start(node).await?;
        steps.done(format!("started `{name}`"));
        self.apply_sync_policy(&spec, &primary_sql, log).await?;
        self.wait_streaming(primary, &[node]).await?;
        steps.done(format!("`{name}` streams from `{}`", primary.name));
        steps.finish(&mut report);
        Ok(report)
    }
}
