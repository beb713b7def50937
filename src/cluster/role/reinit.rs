//! `reinit`: a standby rebuilt from scratch, its data replaced by a fresh base backup of the
//! primary (Patroni's `reinit`), for a standby whose data is damaged or that fell too far
//! behind. Refused for the primary, and for a standby that streams unless forced: it would
//! lose nothing, but it costs a full copy for nothing.

use super::super::plan::PlanError;
use super::super::{streaming_standbys, Cluster, ClusterError, StepLog};
use super::{RoleChangeReport, Steps};

impl Cluster {
    pub async fn reinit(
        &self,
        name: &str,
        force: bool,
        dry_run: bool,
        log: &dyn StepLog,
    ) -> Result<RoleChangeReport, ClusterError> {
        let spec = self.current_spec()?;
        let node = self.node(name)?;
        let primary = spec.primary();
        if node.name == primary.name {
            return Err(PlanError::ReinitPrimary(name.to_owned()).into());
        }
        let primary_sql = self.sql(primary).await?;
        let streams = streaming_standbys(&primary_sql)
            .await?
            .iter()
            .any(|(n, _)| n == name);
        if streams && !force {
            return Err(PlanError::ReinitStreaming(name.to_owned()).into());
        }
        let running = self.runtime.is_running(node).await;
        let mut plan = Vec::new();
        if running {
            plan.push(format!(
                "stop `{name}` (fast shutdown; killed if it will not)"
            ));
        }
        plan.push(format!(
            "replace its data with a base backup of `{}` (the old data is kept aside until the copy is complete)",
            primary.name
        ));
        plan.push(format!(
            "start it as a standby of `{}`; sync policy {}",
            primary.name,
            spec.synchronous_standby_names()
        ));
        let mut report = RoleChangeReport {
            action: "reinit",
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
        self.reclone(node, primary).await?;
        steps.done(format!("re-cloned `{name}` from `{}`", primary.name));
        self.runtime.start(node).await?;
        self.apply_sync_policy(&spec, &primary_sql, log).await?;
        self.wait_streaming(primary, &[node]).await?;
        steps.done(format!("`{name}` streams from `{}`", primary.name));
        steps.finish(&mut report);
        Ok(report)
    }
}
