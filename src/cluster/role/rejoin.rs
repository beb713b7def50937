//! `rejoin`: a node that is no longer primary comes back as a standby of the current primary,
//! by the cheapest safe way the plan allows: follow, pg_rewind, or a re-clone.

use super::super::plan::{self, PlanError, PrimaryIdentity, RejoinMethod, RejoinOptions};
use super::super::spec::NodeSpec;
use super::super::topology::ControlFile;
use super::super::{error_chain, node_err_sql, Cluster, ClusterError, StepLog};
use super::{RoleChangeReport, Steps};
use crate::backup::{self, BackupTarget};

/// How a node became a standby of the current primary again.
pub(super) enum Rejoined {
    /// Its WAL ended before the fork: it follows the new timeline as it is.
    Followed,
    /// pg_rewind took it back to the fork; what pg_rewind said about where.
    Rewound(String),
    /// A fresh base backup replaced its data.
    Recloned,
    /// The primary no longer had its WAL: rebuilt by `resync`.
    Resynced(super::resync::Resynced),
}

impl Cluster {
    /// Brings a node that is no longer primary back as a standby of the current primary: it
    /// follows the new timeline when its WAL ends before the fork; otherwise, with `rewind`,
    /// pg_rewind takes it back to the fork (it needs `wal_log_hints` or data checksums, and
    /// copies only what changed), and failing that it is re-cloned with pgrepl's own base
    /// backup, which needs neither.
    pub(crate) async fn rejoin(
        &self,
        name: &str,
        options: RejoinOptions,
        log: &dyn StepLog,
    ) -> Result<RoleChangeReport, ClusterError> {
        let spec = self.current_spec()?;
        let node = self.node(name)?;
        let primary = spec.primary();
        if node.name == primary.name {
            return Err(PlanError::RejoinPrimary(name.to_owned()).into());
        }
        let mut plan = Vec::new();
        let running = self.runtime.is_running(node).await;
        if running {
            plan.push(format!("stop `{name}` (fast shutdown)"));
        }
        let data = self.runtime.data_dir(node);
        let has_data = data.join("PG_VERSION").exists();
        // Whether it can follow is only known from a stopped node's pg_control.
        let follows = match (running, has_data) {
            (false, true) => Some(self.can_follow(node, primary).await?),
            (false, false) => Some(false),
            (true, _) => None,
        };
        let otherwise = match (options.rewind, has_data) {
            (true, true) => format!(
                "rewind it with pg_rewind from `{}` (re-clone if that fails)",
                primary.name
            ),
            _ => format!("re-clone it from `{}` with a base backup", primary.name),
        };
        plan.push(match follows {
            Some(true) => format!(
                "its WAL ends before the fork: it follows `{}` as it is",
                primary.name
            ),
            Some(false) => format!("its WAL runs past the fork (or it has none): {otherwise}"),
            None => format!(
                "follow `{}` if its WAL ends before the fork, otherwise {otherwise}",
                primary.name
            ),
        });
        plan.push(format!(
            "start it as a standby of `{}`; sync policy {}",
            primary.name, spec.sync.policy
        ));
        let mut checks = self.preflight(&spec, &self.probe_all().await)?;
        if !running && has_data {
            let control = ControlFile::read(&data)?;
            checks.push(format!(
                "`{name}` is stopped ({}), last checkpoint {} on timeline {}",
                if control.shut_down_cleanly() {
                    "cleanly"
                } else {
                    "not cleanly: it crashed or was killed"
                },
                control.checkpoint,
                control.checkpoint_timeline
            ));
        }
        let mut report = RoleChangeReport {
            action: "rejoin",
            old_primary: name.to_owned(),
            new_primary: primary.name.clone(),
            checks,
            plan,
            steps: Vec::new(),
            dry_run: options.dry_run,
            elapsed_ms: 0,
        };
        if options.dry_run {
            return Ok(report);
        }
        let mut steps = Steps::new(log);
        let how = self
            .rejoin_node(node, primary, options.rewind, &mut steps)
            .await?;
        steps.done(format!("`{name}` {how}"));
        self.runtime.start(node).await?;
        if options.agents {
            steps.done(format!(
                "`{name}` started as a standby of `{}`; its agent sets the sync policy",
                primary.name
            ));
        } else if self.is_here(primary) {
            let primary_sql = self.sql(primary).await?;
            self.apply_sync_policy(&spec, &primary_sql, log).await?;
            steps.done(format!("`{name}` streams from `{}`", primary.name));
        } else {
            // The leader's own agent sets its sync policy.
            steps.done(format!(
                "`{name}` started as a standby of `{}` on another machine",
                primary.name
            ));
        }
        steps.finish(&mut report);
        Ok(report)
    }

    /// Stops `node` and makes its data a standby of `primary` by the cheapest way that is safe;
    /// returns which (the caller starts it).
    pub(super) async fn rejoin_node(
        &self,
        node: &NodeSpec,
        primary: &NodeSpec,
        rewind: bool,
        steps: &mut Steps<'_>,
    ) -> Result<Rejoined, ClusterError> {
        // Asked before the node stops: a primary it cannot reach leaves it as it is.
        let wal_gone = self.wal_gone(node, primary).await?;
        if self.runtime.is_running(node).await {
            self.runtime.stop(node, true).await?;
            steps.done(format!("stopped `{}`", node.name));
        }
        if wal_gone {
            steps.done(format!(
                "`{}` no longer has the WAL from `{}`'s last restartpoint: it cannot catch up by streaming",
                primary.name, node.name
            ));
            return Ok(Rejoined::Resynced(self.resync_node(node, primary).await?));
        }
        let has_data = self.runtime.data_dir(node).join("PG_VERSION").exists();
        let follows = has_data && self.can_follow(node, primary).await?;
        match plan::rejoin_method(has_data, follows, rewind) {
            RejoinMethod::Follow => {
                self.follow(node, primary)?;
                return Ok(Rejoined::Followed);
            }
            RejoinMethod::Rewind => {
                match self.rewind(node, primary).await {
                    Ok(output) => {
                        self.follow(node, primary)?;
                        return Ok(Rejoined::Rewound(rewind_summary(&output)));
                    }
                    // Before its point of no return pg_rewind changes nothing, after it the
                    // data is unusable: a re-clone is right either way.
                    Err(e) => {
                        let error = error_chain(&e);
                        let hint = if error.contains("could not find previous WAL record") {
                            "; its WAL no longer reaches back to the last common checkpoint, which a larger wal_keep_size keeps"
                        } else {
                            ""
                        };
                        steps.done(format!(
                            "pg_rewind could not rewind `{}` ({error}{hint}): re-cloning instead",
                            node.name
                        ))
                    }
                }
            }
            RejoinMethod::Reclone => {}
        }
        self.reclone(node, primary).await?;
        Ok(Rejoined::Recloned)
    }

    /// pg_rewind from `primary`, which needs a superuser session to it: a primary on another
    /// machine has one only with `[local] superuser_password_file`; without, the caller
    /// re-clones instead.
    async fn rewind(&self, node: &NodeSpec, primary: &NodeSpec) -> Result<String, ClusterError> {
        // pg_rewind reads the primary's timeline from its pg_control, which still names the old
        // one until the checkpoint a promotion only requests has been made.
        self.sql(primary)
            .await?
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|e| node_err_sql(primary, e))?;
        self.runtime
            .rewind(node, primary, self.superuser(primary)?)
            .await
    }

    /// True when `node` stopped cleanly and all its WAL lies before the point where the
    /// primary's timeline forked from the node's.
    async fn can_follow(&self, node: &NodeSpec, primary: &NodeSpec) -> Result<bool, ClusterError> {
        let control = ControlFile::read(&self.runtime.data_dir(node))?;
        if !control.shut_down_cleanly() {
            // Known without asking the primary.
            return Ok(false);
        }
        let (mut conn, system) = self.identified(primary).await?;
        let identity = PrimaryIdentity {
            system_id: system.system_id,
            timeline: system.timeline,
        };
        if let Some(answer) = plan::follows(&control, identity, None) {
            return Ok(answer);
        }
        let (_, history) = conn
            .timeline_history(system.timeline)
            .await
            .map_err(ClusterError::node(primary))?;
        conn.close().await;
        Ok(
            plan::follows(&control, identity, Some(&String::from_utf8_lossy(&history)))
                == Some(true),
        )
    }

    /// Makes a stopped node a standby of `primary`: standby.signal and primary_conninfo.
    pub(super) fn follow(&self, node: &NodeSpec, primary: &NodeSpec) -> Result<(), ClusterError> {
        let data = self.runtime.data_dir(node);
        let conninfo = self.primary_conninfo(primary, node);
        backup::standby_conf::write_standby_config(&data, &conninfo, None).map_err(|e| {
            ClusterError::io(
                format!("write standby settings into `{}`", data.display()),
                e,
            )
        })?;
        if let Some((uid, gid)) = self.runtime.data_owner() {
            for file in ["postgresql.auto.conf", "standby.signal"] {
                std::os::unix::fs::chown(data.join(file), Some(uid), Some(gid))
                    .map_err(|e| ClusterError::io(format!("chown `{file}`"), e))?;
            }
        }
        Ok(())
    }

    /// Replaces the node's data with a fresh base backup of `primary`; the old data is kept
    /// aside until the copy is complete, and put back if it fails.
    pub(super) async fn reclone(
        &self,
        node: &NodeSpec,
        primary: &NodeSpec,
    ) -> Result<(), ClusterError> {
        let data = self.runtime.data_dir(node);
        let aside = data.with_extension("before-rejoin");
        if data.exists() {
            std::fs::rename(&data, &aside)
                .map_err(|e| ClusterError::io(format!("move `{}` aside", data.display()), e))?;
        }
        let options = self.standby_backup_options(
            primary,
            vec![BackupTarget {
                dir: data.clone(),
                application_name: Some(node.name.clone()),
            }],
            format!("pgrepl rejoin {}", node.name),
        );
        let result = backup::base_backup(
            &self.replication_connect(primary),
            &options,
            std::sync::Arc::new(backup::NoProgress),
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
        match result {
            Ok(_) => {
                if aside.exists() {
                    std::fs::remove_dir_all(&aside).map_err(|e| {
                        ClusterError::io(format!("remove `{}`", aside.display()), e)
                    })?;
                }
                Ok(())
            }
            Err(e) => {
                if aside.exists() {
                    let _ = std::fs::rename(&aside, &data);
                }
                Err(e.into())
            }
        }
    }
}

/// What pg_rewind said about where the node forked and how much it copied ("servers diverged
/// at WAL location ...", "need to copy N MB (total source directory size is M MB)"), or "no
/// rewind required".
fn rewind_summary(output: &str) -> String {
    output
        .lines()
        .map(|l| l.trim().trim_start_matches("pg_rewind: "))
        .filter(|l| {
            ["servers diverged", "need to copy", "no rewind required"]
                .iter()
                .any(|start| l.starts_with(start))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl std::fmt::Display for Rejoined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejoined::Followed => {
                f.write_str("ends before the fork: it follows without a re-clone")
            }
            Rejoined::Rewound(summary) if summary.is_empty() => f.write_str("rewound by pg_rewind"),
            Rejoined::Rewound(summary) => write!(f, "rewound by pg_rewind ({summary})"),
            Rejoined::Recloned => f.write_str("re-cloned with a base backup"),
            Rejoined::Resynced(how) => how.fmt(f),
        }
    }
}
