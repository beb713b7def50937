//! `switchover`: planned and lossless. The primary stops cleanly, the target replays its
//! shutdown checkpoint and is promoted, and the old primary restarts as its standby.

use std::time::Duration;

use super::super::check_failed::CheckFailed;
use super::super::history::ChangeKind;
use super::super::plan;
use super::super::spec::NodeSpec;
use super::super::topology::ControlFile;
use super::super::{replay_lsn, streaming_standbys, wait_until, Cluster, ClusterError, StepLog};
use super::{names, RoleChangeReport, Steps};

impl Cluster {
    /// Planned and lossless: the primary stops cleanly, the target replays its shutdown
    /// checkpoint, is promoted, and the old primary restarts as its standby with no re-clone.
    pub(crate) async fn switchover(
        &self,
        to: &str,
        dry_run: bool,
        log: &dyn StepLog,
    ) -> Result<RoleChangeReport, ClusterError> {
        let spec = self.current_spec()?;
        let old = spec.primary();
        let target = self.node(to)?;
        // Asked again with the probes: the plain refusal comes before waiting on any node.
        plan::check_switchover(&old.name, &target.name, &[])?;
        let probes = self.probe_all().await;
        plan::check_switchover(&old.name, to, &probes)?;
        let primary_sql = self.sql(old).await?;
        let streaming = streaming_standbys(&primary_sql).await?;
        plan::check_streams(&old.name, to, &streaming)?;
        drop(primary_sql);
        let new_spec = self.file_spec.with_primary(to)?;
        let others: Vec<&NodeSpec> = new_spec.standbys().filter(|s| s.name != old.name).collect();
        let plan = vec![
            format!(
                "stop `{}` cleanly (its shutdown checkpoint goes to the standbys)",
                old.name
            ),
            format!("wait until `{to}` has replayed that checkpoint"),
            format!("promote `{to}`"),
            format!(
                "restart `{}` as a standby of `{to}` (no re-clone)",
                old.name
            ),
            format!("re-point {} to `{to}`", names(&others)),
            format!("sync policy on `{to}`: {}", new_spec.sync.policy),
        ];
        let mut report = RoleChangeReport {
            action: "switchover",
            old_primary: old.name.clone(),
            new_primary: to.to_owned(),
            checks: self.preflight(&spec, &probes)?,
            plan,
            steps: Vec::new(),
            dry_run,
            elapsed_ms: 0,
        };
        if dry_run {
            return Ok(report);
        }
        let mut steps = Steps::new(log);
        self.runtime.stop(old, true).await?;
        let control = ControlFile::read(&self.runtime.data_dir(old))?;
        if !control.shut_down_cleanly() {
            return Err(CheckFailed::UncleanShutdown {
                node: old.name.clone(),
            }
            .into());
        }
        steps.done(format!(
            "stopped `{}` cleanly; its shutdown checkpoint is at {}",
            old.name, control.checkpoint
        ));
        let target_sql = self.sql(target).await?;
        wait_until(
            Duration::from_secs(60),
            &format!("`{to}` to replay {}", control.checkpoint),
            || async {
                let replayed = replay_lsn(&target_sql, target).await?;
                Ok(replayed.is_some_and(|l| l > control.checkpoint))
            },
        )
        .await?;
        steps.done(format!("`{to}` replayed the shutdown checkpoint"));
        let new_primary = new_spec.primary();
        self.promote(new_primary).await?;
        self.record_change(
            ChangeKind::Switchover,
            &old.name,
            new_primary,
            "pgrepl switchover",
        )
        .await?;
        steps.done(format!("promoted `{to}`"));
        self.follow(old, new_primary)?;
        self.runtime.start(old).await?;
        steps.done(format!("`{}` restarted as a standby of `{to}`", old.name));
        self.repoint(new_primary, &others).await?;
        let new_primary_sql = self.sql(new_primary).await?;
        self.apply_sync_policy(&new_spec, &new_primary_sql, log)
            .await?;
        steps.done(format!("every standby streams from `{to}`"));
        steps.finish(&mut report);
        Ok(report)
    }
}
