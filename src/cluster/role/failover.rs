//! `failover`: the primary is gone or must go. It is fenced, then the plan's target catches up
//! if it must, is promoted, and the other standbys are re-pointed (or rejoined with `--force`).

use std::time::Duration;

use super::super::check_failed::CheckFailed;
use super::super::history::ChangeKind;
use super::super::plan::{self, FailoverOptions, FailoverPlan};
use super::super::spec::NodeSpec;
use super::super::{
    alter_system, node_err_sql, reload, wait_until, Cluster, ClusterError, StepLog,
};
use super::{names, RoleChangeReport, Steps};
use crate::lsn::Lsn;

/// How long a failover's target gets to receive the WAL a more advanced standby holds.
const CATCH_UP: Duration = Duration::from_secs(30);

/// How long the standbys' walreceivers get to notice the fenced primary and flush what they
/// received: a killed local primary's sockets close at once, so this is milliseconds there.
const RECEIVERS_STOP: Duration = Duration::from_secs(3);

/// How long a standby whose server runs gets to answer the probe after the fence: its position
/// may be the most advanced, and the plan must know it.
const SILENT_STANDBYS: Duration = Duration::from_secs(15);

impl Cluster {
    /// Fences the primary, then promotes the most advanced (or the given) standby, re-points the
    /// others and swaps the sync policy's names. A given target that is behind another standby
    /// first catches up from it (cascading replication), so no standby is left past the fork.
    pub(crate) async fn failover(
        &self,
        options: &FailoverOptions,
        log: &dyn StepLog,
    ) -> Result<RoleChangeReport, ClusterError> {
        let spec = self.current_spec()?;
        let old = spec.primary();
        let mut report = RoleChangeReport {
            action: "failover",
            old_primary: old.name.clone(),
            new_primary: String::new(),
            checks: Vec::new(),
            plan: Vec::new(),
            steps: Vec::new(),
            dry_run: options.dry_run,
            elapsed_ms: 0,
        };
        let mut steps = Steps::new(log);
        // A target that cannot be promoted is refused while the primary still runs, if it does.
        let before = self.probe_all().await;
        plan::plan_failover(&old.name, &before, options)?.check_lag(options)?;
        let probes = if options.dry_run {
            before
        } else {
            // Fence before deciding: positions only stop moving once the primary is gone.
            self.runtime.kill(old).await?;
            steps.done(format!("fenced `{}`", old.name));
            self.wait_receivers_stopped(RECEIVERS_STOP).await;
            self.probe_running(SILENT_STANDBYS).await
        };
        report.checks = self.preflight(&spec, &probes)?;
        let plan = plan::plan_failover(&old.name, &probes, options)?;
        report.checks.push(format!(
            "`{}` has {} bytes left to replay (--max-lag {})",
            plan.target, plan.replay_lag, options.max_lag
        ));
        let new_spec = self.file_spec.with_primary(&plan.target)?;
        let new_primary = new_spec.primary();
        let nodes = |names: &[String]| -> Result<Vec<&NodeSpec>, ClusterError> {
            names.iter().map(|n| self.node(n)).collect()
        };
        let others = nodes(&plan.repoint)?;
        let left_behind = nodes(&plan.rejoin)?;
        report.new_primary = plan.target.clone();
        if options.dry_run {
            report.plan.push(format!(
                "fence `{}`: stop it hard so it cannot take writes",
                old.name
            ));
        }
        report
            .plan
            .extend(describe(&plan, options, &others, &new_spec));
        if options.dry_run {
            return Ok(report);
        }
        if let Some(ahead) = &plan.catch_up_from {
            self.catch_up(new_primary, self.node(&ahead.name)?, ahead.position)
                .await?;
            steps.done(format!(
                "`{}` caught up with `{}` at {}",
                plan.target, ahead.name, ahead.position
            ));
        }
        self.promote(new_primary).await?;
        self.record_change(
            ChangeKind::ManualFailover,
            &old.name,
            new_primary,
            "pgrepl failover",
        )
        .await?;
        steps.done(format!("promoted `{}`", new_primary.name));
        self.repoint(new_primary, &others).await?;
        steps.done(format!("re-pointed {}", names(&others)));
        for standby in &left_behind {
            let how = self
                .rejoin_node(standby, new_primary, options.rewind, &mut steps)
                .await?;
            self.runtime.start(standby).await?;
            steps.done(format!("`{}` {how} and started", standby.name));
        }
        self.set_sync_names(&new_spec).await?;
        let streaming: Vec<&NodeSpec> = others.iter().chain(&left_behind).copied().collect();
        self.wait_streaming(new_primary, &streaming).await?;
        steps.done(format!(
            "{} streams from `{}`; sync policy {}",
            names(&streaming),
            new_primary.name,
            new_spec.sync.policy
        ));
        steps.finish(&mut report);
        Ok(report)
    }

    /// Streams the WAL `target` lacks from `source`, a standby that has it, until `target` has
    /// received up to `goal`.
    async fn catch_up(
        &self,
        target: &NodeSpec,
        source: &NodeSpec,
        goal: Lsn,
    ) -> Result<(), ClusterError> {
        let client = self.sql(target).await?;
        alter_system(
            &client,
            target,
            "primary_conninfo",
            &self.primary_conninfo(source, target),
        )
        .await?;
        reload(&client, target).await?;
        wait_until(
            CATCH_UP,
            &format!("`{}` to receive {goal} from `{}`", target.name, source.name),
            || async {
                let received: Option<String> = client
                    .query_one("SELECT pg_last_wal_receive_lsn()::text", &[])
                    .await
                    .map_err(|e| node_err_sql(target, e))?
                    .get(0);
                Ok(received
                    .and_then(|t| t.parse::<Lsn>().ok())
                    .is_some_and(|l| l >= goal))
            },
        )
        .await
        .map_err(|_| {
            ClusterError::from(CheckFailed::NoCatchUp {
                target: target.name.clone(),
                ahead: source.name.clone(),
                within: CATCH_UP,
            })
        })
    }
}

/// The plan's lines after the fence: catching up (or what `--force` leaves behind), the
/// promotion, the re-pointing and the sync policy.
fn describe(
    plan: &FailoverPlan,
    options: &FailoverOptions,
    others: &[&NodeSpec],
    new_spec: &super::super::spec::ClusterSpec,
) -> Vec<String> {
    let target = &plan.target;
    let mut lines = Vec::new();
    for ahead in &plan.ahead {
        lines.push(if options.force {
            format!(
                "promote `{target}` although `{}` is {} bytes ahead (--force): those bytes are lost, and `{}` is rejoined ({})",
                ahead.name,
                ahead.bytes,
                ahead.name,
                rejoin_method(options.rewind)
            )
        } else {
            format!("let `{target}` catch up {} bytes from `{}` first", ahead.bytes, ahead.name)
        });
        if !options.force {
            // Catching up from the most advanced covers the others.
            break;
        }
    }
    lines.extend([
        format!(
            "promote `{target}` (at {})",
            plan.target_position.map_or("?".into(), |l| l.to_string())
        ),
        format!("re-point {} to `{target}`", names(others)),
        format!("sync policy on `{target}`: {}", new_spec.sync.policy),
        format!(
            "later: `pgrepl rejoin {}` brings the old primary back as a standby",
            plan.old_primary
        ),
    ]);
    lines
}

fn rejoin_method(rewind: bool) -> &'static str {
    if rewind {
        "pg_rewind, or a re-clone if that fails"
    } else {
        "re-cloned"
    }
}
