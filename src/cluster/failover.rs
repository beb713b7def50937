//! Role changes: failover (the primary is gone or must go), switchover (planned, lossless) and
//! rejoin (a former primary comes back as a standby).
//!
//! Every change is planned first from what the nodes report (`--dry-run` stops there), then
//! carried out step by step with timings. The primary is fenced before a standby is promoted, so
//! two primaries never take writes; the other standbys are re-pointed with ALTER SYSTEM and a
//! reload and follow the new timeline; the sync policy is applied with the names swapped.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::spec::{ClusterSpec, NodeSpec};
use super::topology::{ControlFile, Topology};
use super::{
    alter_system, node_err_sql, reload, streaming_standbys, wait_until, Cluster, ClusterError,
    StepLog,
};
use crate::backup::{self, BackupTarget, BaseBackupOptions};
use crate::conn::Connection;
use crate::lsn::Lsn;

/// How far a standby is, as it reports itself.
#[derive(Debug, Clone, Serialize)]
pub struct NodeProbe {
    pub name: String,
    pub reachable: bool,
    pub in_recovery: Option<bool>,
    /// The timeline a primary writes, or a standby receives (its last restartpoint's when no
    /// WAL receiver runs).
    pub timeline: Option<u32>,
    /// Received and flushed (standby) or flushed (primary).
    pub received_lsn: Option<Lsn>,
    pub replayed_lsn: Option<Lsn>,
}

impl NodeProbe {
    /// The furthest WAL position this node holds.
    fn position(&self) -> Option<Lsn> {
        self.received_lsn.max(self.replayed_lsn)
    }
}

/// What a role change did, for the table and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct RoleChangeReport {
    pub action: &'static str,
    pub old_primary: String,
    pub new_primary: String,
    /// What the nodes reported before anything changed: roles, timelines, positions and how
    /// far each standby is behind the most advanced, the old primary's slots.
    pub checks: Vec<String>,
    pub plan: Vec<String>,
    pub steps: Vec<TimedStep>,
    pub dry_run: bool,
    pub elapsed_ms: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimedStep {
    pub step: String,
    pub ms: u128,
}

#[derive(Debug, Clone)]
pub struct FailoverOptions {
    pub to: Option<String>,
    /// Promote the given target without letting it catch up with the standbys that hold more
    /// WAL (those are past the fork and are rejoined), whatever its lag.
    pub force: bool,
    /// Rejoin the standbys `force` leaves past the fork with pg_rewind where it can.
    pub rewind: bool,
    /// Bytes of WAL the target may have left to replay (against the newest any node reports)
    /// before it is refused without `force`: promotion waits for that replay.
    pub max_lag: u64,
    pub dry_run: bool,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            to: None,
            force: false,
            rewind: false,
            max_lag: DEFAULT_MAX_LAG,
            dry_run: false,
        }
    }
}

/// `failover --max-lag`'s default: replaying 64 MB takes about a second here.
pub const DEFAULT_MAX_LAG: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, Default)]
pub struct RejoinOptions {
    /// Try pg_rewind before a re-clone when the node's WAL runs past the fork.
    pub rewind: bool,
    pub dry_run: bool,
}

/// How a node became a standby of the current primary again.
enum Rejoined {
    /// Its WAL ended before the fork: it follows the new timeline as it is.
    Followed,
    /// pg_rewind took it back to the fork; what pg_rewind said about where.
    Rewound(String),
    /// A fresh base backup replaced its data.
    Recloned,
}

/// Records each step with how long it took, and echoes it to the step log.
struct Steps<'a> {
    log: &'a dyn StepLog,
    started: Instant,
    last: Instant,
    done: Vec<TimedStep>,
}

impl<'a> Steps<'a> {
    fn new(log: &'a dyn StepLog) -> Self {
        let now = Instant::now();
        Steps {
            log,
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn done(&mut self, step: String) {
        let now = Instant::now();
        self.log.step(&step);
        self.done.push(TimedStep {
            step,
            ms: now.duration_since(self.last).as_millis(),
        });
        self.last = now;
    }
}

impl Cluster {
    /// Asks every node where it stands, in parallel, each bounded by a short timeout.
    pub async fn probe_all(&self) -> Vec<NodeProbe> {
        futures_util::future::join_all(self.spec.nodes.iter().map(|node| async move {
            let probe = tokio::time::timeout(Duration::from_secs(3), self.probe(node)).await;
            probe.ok().and_then(Result::ok).unwrap_or(NodeProbe {
                name: node.name.clone(),
                reachable: false,
                in_recovery: None,
                timeline: None,
                received_lsn: None,
                replayed_lsn: None,
            })
        }))
        .await
    }

    async fn probe(&self, node: &NodeSpec) -> Result<NodeProbe, ClusterError> {
        let client = self.sql(node).await?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), \
                        CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_flush_lsn() END::text, \
                        CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END::text, \
                        CASE WHEN pg_is_in_recovery() \
                             THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                                           (SELECT timeline_id FROM pg_control_checkpoint())) \
                             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
                &[],
            )
            .await
            .map_err(|e| node_err_sql(node, e))?;
        let lsn = |i: usize| row.get::<_, Option<String>>(i).and_then(|t| t.parse().ok());
        Ok(NodeProbe {
            name: node.name.clone(),
            reachable: true,
            in_recovery: Some(row.get(0)),
            timeline: row.get::<_, Option<i32>>(3).map(|t| t as u32),
            received_lsn: lsn(1),
            replayed_lsn: lsn(2),
        })
    }

    /// Fences the primary, then promotes the most advanced (or the given) standby, re-points the
    /// others and swaps the sync policy's names. A given target that is behind another standby
    /// first catches up from it (cascading replication), so no standby is left past the fork.
    pub async fn failover(
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
        let candidate = choose_target(&spec, &before, options)?.target;
        let lag = replay_lag(&before, candidate);
        if lag > options.max_lag && !options.force {
            return Err(ClusterError::Setup(format!(
                "`{}` has {lag} bytes of WAL left to replay, over the --max-lag limit of {}: promoting it would wait \
                 for that replay; let it catch up and retry, choose another standby with --to, raise --max-lag, or add --force",
                candidate.name, options.max_lag
            )));
        }
        let probes = if options.dry_run {
            before
        } else {
            // Fence before deciding: positions only stop moving once the primary is gone.
            self.runtime.kill(old).await?;
            steps.done(format!("fenced `{}`", old.name));
            self.probe_all().await
        };
        report.checks = self.preflight(&spec, &probes)?;
        let choice = choose_target(&spec, &probes, options)?;
        report.checks.push(format!(
            "`{}` has {} bytes left to replay (--max-lag {})",
            choice.target.name,
            replay_lag(&probes, choice.target),
            options.max_lag
        ));
        let target = choice.target;
        let new_spec = self.file_spec.with_primary(&target.name)?;
        let new_primary = new_spec.primary();
        let others: Vec<&NodeSpec> = new_spec.standbys().filter(|s| s.name != old.name).collect();
        report.new_primary = target.name.clone();
        if options.dry_run {
            report.plan.push(format!(
                "fence `{}`: stop it hard so it cannot take writes",
                old.name
            ));
        }
        // Standbys past the target cannot follow it: without --force the target first catches
        // up from the most advanced one; with it they are rejoined.
        let left_behind: Vec<&NodeSpec> = if options.force {
            choice
                .ahead
                .iter()
                .map(|(probe, _)| self.node(&probe.name))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let others: Vec<&NodeSpec> = others
            .into_iter()
            .filter(|s| !left_behind.iter().any(|l| l.name == s.name))
            .collect();
        for (ahead, bytes) in &choice.ahead {
            report.plan.push(if options.force {
                format!(
                    "promote `{}` although `{}` is {bytes} bytes ahead (--force): those bytes are lost, and `{}` is rejoined ({})",
                    target.name,
                    ahead.name,
                    ahead.name,
                    rejoin_method(options.rewind)
                )
            } else {
                format!("let `{}` catch up {bytes} bytes from `{}` first", target.name, ahead.name)
            });
            if !options.force {
                // Catching up from the most advanced covers the others.
                break;
            }
        }
        report.plan.extend([
            format!(
                "promote `{}` (at {})",
                target.name,
                target.position().map_or("?".into(), |l| l.to_string())
            ),
            format!("re-point {} to `{}`", names(&others), target.name),
            format!(
                "sync policy on `{}`: {}",
                target.name,
                new_spec.synchronous_standby_names()
            ),
            format!(
                "later: `pgrepl rejoin {}` brings the old primary back as a standby",
                old.name
            ),
        ]);
        if options.dry_run {
            return Ok(report);
        }
        if let (Some((ahead, _)), false) = (choice.ahead.first(), options.force) {
            let goal = ahead.position().unwrap_or_default();
            self.catch_up(new_primary, self.node(&ahead.name)?, goal)
                .await?;
            steps.done(format!(
                "`{}` caught up with `{}` at {goal}",
                target.name, ahead.name
            ));
        }
        self.promote(new_primary).await?;
        self.record_primary(
            &new_primary.name,
            format!("failover {} -> {}", old.name, new_primary.name),
        )?;
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
            new_spec.synchronous_standby_names()
        ));
        report.elapsed_ms = steps.started.elapsed().as_millis();
        report.steps = steps.done;
        Ok(report)
    }

    /// The pre-flight checks a role change prints: each node's role, timeline and position, how
    /// far each standby is behind the most advanced one, the sync names in force, and the old
    /// primary's replication slots (read from its data directory, so also when it is down),
    /// which are not on any standby.
    fn preflight(
        &self,
        spec: &ClusterSpec,
        probes: &[NodeProbe],
    ) -> Result<Vec<String>, ClusterError> {
        let furthest = probes
            .iter()
            .filter(|p| p.in_recovery == Some(true))
            .filter_map(NodeProbe::position)
            .max();
        let mut checks: Vec<String> = probes
            .iter()
            .map(|p| {
                let timeline = p.timeline.map_or("?".into(), |t| t.to_string());
                let at = |l: Option<Lsn>| l.map_or("?".into(), |l| l.to_string());
                match p.in_recovery {
                    None => format!("`{}` does not answer", p.name),
                    Some(false) => format!(
                        "`{}` is a primary on timeline {timeline}, flushed to {}",
                        p.name,
                        at(p.received_lsn)
                    ),
                    Some(true) => format!(
                        "`{}` is a standby on timeline {timeline}, received {}, replayed {}, {} bytes behind the most advanced standby",
                        p.name,
                        at(p.received_lsn),
                        at(p.replayed_lsn),
                        furthest
                            .zip(p.position())
                            .map_or(0, |(f, at)| f.saturating_sub(at))
                    ),
                }
            })
            .collect();
        checks.push(format!(
            "sync names for `{}`: {}",
            spec.primary().name,
            spec.synchronous_standby_names()
        ));
        let old = spec.primary();
        let slot_dir = self.runtime.data_dir(old).join("pg_replslot");
        let mut slots: Vec<String> = match std::fs::read_dir(&slot_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(ClusterError::io(
                    format!("read `{}`", slot_dir.display()),
                    e,
                ))
            }
        };
        slots.sort();
        checks.push(if slots.is_empty() {
            format!("replication slots on `{}`: none", old.name)
        } else {
            format!(
                "replication slots on `{}`: {} (slots stay behind on the old primary: create them again on the new one)",
                old.name,
                slots.join(", ")
            )
        });
        Ok(checks)
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
        wait_until(Duration::from_secs(30), &format!("`{}` to receive {goal} from `{}`", target.name, source.name), || async {
            let received: Option<String> = client
                .query_one("SELECT pg_last_wal_receive_lsn()::text", &[])
                .await
                .map_err(|e| node_err_sql(target, e))?
                .get(0);
            Ok(received.and_then(|t| t.parse::<Lsn>().ok()).is_some_and(|l| l >= goal))
        })
        .await
        .map_err(|_| {
            ClusterError::Check(format!(
                "`{}` could not catch up with `{}` within 30 s; promote `{}` instead, or add --force to leave it behind",
                target.name, source.name, source.name
            ))
        })
    }

    /// Planned and lossless: the primary stops cleanly, the target replays its shutdown
    /// checkpoint, is promoted, and the old primary restarts as its standby with no re-clone.
    pub async fn switchover(
        &self,
        to: &str,
        dry_run: bool,
        log: &dyn StepLog,
    ) -> Result<RoleChangeReport, ClusterError> {
        let spec = self.current_spec()?;
        let old = spec.primary();
        let target = self.node(to)?;
        if target.name == old.name {
            return Err(ClusterError::Setup(format!(
                "`{to}` is already the primary"
            )));
        }
        let probes = self.probe_all().await;
        for probe in &probes {
            if probe.name == old.name && !probe.reachable {
                return Err(ClusterError::Setup(format!(
                    "the primary `{}` does not answer: a switchover needs it; use `pgrepl failover --to {to}`",
                    old.name
                )));
            }
        }
        let primary_sql = self.sql(old).await?;
        let streaming = streaming_standbys(&primary_sql).await?;
        if !streaming.iter().any(|(name, _)| name == to) {
            return Err(ClusterError::Setup(format!(
                "`{to}` is not streaming from `{}`; a switchover would lose its WAL",
                old.name
            )));
        }
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
            format!(
                "sync policy on `{to}`: {}",
                new_spec.synchronous_standby_names()
            ),
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
            return Err(ClusterError::Check(format!(
                "`{}` did not shut down cleanly; start it again and retry",
                old.name
            )));
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
                let replayed: Option<String> = target_sql
                    .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
                    .await
                    .map_err(|e| node_err_sql(target, e))?
                    .get(0);
                Ok(replayed
                    .and_then(|t| t.parse::<Lsn>().ok())
                    .is_some_and(|l| l > control.checkpoint))
            },
        )
        .await?;
        steps.done(format!("`{to}` replayed the shutdown checkpoint"));
        let new_primary = new_spec.primary();
        self.promote(new_primary).await?;
        self.record_primary(to, format!("switchover {} -> {to}", old.name))?;
        steps.done(format!("promoted `{to}`"));
        self.follow(old, new_primary)?;
        self.runtime.start(old).await?;
        steps.done(format!("`{}` restarted as a standby of `{to}`", old.name));
        self.repoint(new_primary, &others).await?;
        let new_primary_sql = self.sql(new_primary).await?;
        self.apply_sync_policy(&new_spec, &new_primary_sql, log)
            .await?;
        steps.done(format!("every standby streams from `{to}`"));
        report.elapsed_ms = steps.started.elapsed().as_millis();
        report.steps = steps.done;
        Ok(report)
    }

    /// Brings a node that is no longer primary back as a standby of the current primary: it
    /// follows the new timeline when its WAL ends before the fork; otherwise, with `rewind`,
    /// pg_rewind takes it back to the fork (it needs `wal_log_hints` or data checksums, and
    /// copies only what changed), and failing that it is re-cloned with pgrepl's own base
    /// backup, which needs neither.
    pub async fn rejoin(
        &self,
        name: &str,
        options: RejoinOptions,
        log: &dyn StepLog,
    ) -> Result<RoleChangeReport, ClusterError> {
        let spec = self.current_spec()?;
        let node = self.node(name)?;
        let primary = spec.primary();
        if node.name == primary.name {
            return Err(ClusterError::Setup(format!(
                "`{name}` is the primary; rejoin brings back a former primary"
            )));
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
            primary.name,
            spec.synchronous_standby_names()
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
        let primary_sql = self.sql(primary).await?;
        self.apply_sync_policy(&spec, &primary_sql, log).await?;
        steps.done(format!("`{name}` streams from `{}`", primary.name));
        report.elapsed_ms = steps.started.elapsed().as_millis();
        report.steps = steps.done;
        Ok(report)
    }

    /// Stops `node` and makes its data a standby of `primary` by the cheapest way that is safe;
    /// returns which (the caller starts it).
    async fn rejoin_node(
        &self,
        node: &NodeSpec,
        primary: &NodeSpec,
        rewind: bool,
        steps: &mut Steps<'_>,
    ) -> Result<Rejoined, ClusterError> {
        if self.runtime.is_running(node).await {
            self.runtime.stop(node, true).await?;
            steps.done(format!("stopped `{}`", node.name));
        }
        let has_data = self.runtime.data_dir(node).join("PG_VERSION").exists();
        if has_data && self.can_follow(node, primary).await? {
            self.follow(node, primary)?;
            return Ok(Rejoined::Followed);
        }
        if rewind && has_data {
            // pg_rewind reads the primary's timeline from its pg_control, which still names the
            // old one until the checkpoint a promotion only requests has been made.
            self.sql(primary)
                .await?
                .batch_execute("CHECKPOINT")
                .await
                .map_err(|e| node_err_sql(primary, e))?;
            match self.runtime.rewind(node, primary).await {
                Ok(output) => {
                    self.follow(node, primary)?;
                    return Ok(Rejoined::Rewound(rewind_summary(&output)));
                }
                // Before its point of no return pg_rewind changes nothing, after it the data
                // is unusable: a re-clone is right either way.
                Err(e) => {
                    let error = super::error_chain(&e);
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
        self.reclone(node, primary).await?;
        Ok(Rejoined::Recloned)
    }

    /// True when `node` stopped cleanly and all its WAL lies before the point where the
    /// primary's timeline forked from the node's.
    async fn can_follow(&self, node: &NodeSpec, primary: &NodeSpec) -> Result<bool, ClusterError> {
        let control = ControlFile::read(&self.runtime.data_dir(node))?;
        if !control.shut_down_cleanly() {
            return Ok(false);
        }
        let mut conn = Connection::connect(&self.replication_connect(primary))
            .await
            .map_err(ClusterError::node(primary))?;
        let system = conn
            .identify_system()
            .await
            .map_err(ClusterError::node(primary))?;
        if system.system_id != control.system_identifier {
            return Ok(false);
        }
        if system.timeline == control.checkpoint_timeline {
            return Ok(true);
        }
        // A standby's checkpoint is its last restartpoint, and the WAL it received may run on
        // past it and past the fork; only a primary's shutdown checkpoint ends its WAL.
        if control.state != ControlFile::SHUT_DOWN {
            return Ok(false);
        }
        let (_, history) = conn
            .timeline_history(system.timeline)
            .await
            .map_err(ClusterError::node(primary))?;
        conn.close().await;
        Ok(fork_point(
            &String::from_utf8_lossy(&history),
            control.checkpoint_timeline,
        )
        .is_some_and(|fork| control.checkpoint < fork))
    }

    /// Makes a stopped node a standby of `primary`: standby.signal and primary_conninfo.
    fn follow(&self, node: &NodeSpec, primary: &NodeSpec) -> Result<(), ClusterError> {
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
    async fn reclone(&self, node: &NodeSpec, primary: &NodeSpec) -> Result<(), ClusterError> {
        let data = self.runtime.data_dir(node);
        let aside = data.with_extension("before-rejoin");
        if data.exists() {
            std::fs::rename(&data, &aside)
                .map_err(|e| ClusterError::io(format!("move `{}` aside", data.display()), e))?;
        }
        let mut options = BaseBackupOptions::new(vec![BackupTarget {
            dir: data.clone(),
            application_name: Some(node.name.clone()),
        }]);
        options.write_recovery_conf = true;
        options.fast_checkpoint = true;
        options.owner = self.runtime.data_owner();
        options.primary_host_override = Some(self.runtime.primary_address_for_standbys(primary));
        options.label = format!("pgrepl rejoin {}", node.name);
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

    async fn promote(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let client = self.sql(node).await?;
        let promoted: bool = client
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .map_err(|e| node_err_sql(node, e))?
            .get(0);
        if !promoted {
            return Err(ClusterError::Check(format!(
                "`{}` did not finish promotion within 60 s",
                node.name
            )));
        }
        Ok(())
    }

    fn record_primary(&self, primary: &str, event: String) -> Result<(), ClusterError> {
        let mut topology = Topology::load(&self.state_dir)?.unwrap_or(Topology {
            primary: primary.to_owned(),
            history: Vec::new(),
        });
        topology.primary = primary.to_owned();
        topology.history.push(event);
        topology.save(&self.state_dir)
    }

    /// Points running standbys at `primary`; they follow its new timeline by themselves
    /// (`recovery_target_timeline = 'latest'`).
    async fn repoint(
        &self,
        primary: &NodeSpec,
        standbys: &[&NodeSpec],
    ) -> Result<(), ClusterError> {
        for standby in standbys {
            if !self.runtime.is_running(standby).await {
                continue;
            }
            let client = self.sql(standby).await?;
            let conninfo = self.primary_conninfo(primary, standby);
            alter_system(&client, standby, "primary_conninfo", &conninfo).await?;
            reload(&client, standby).await?;
        }
        Ok(())
    }

    async fn set_sync_names(&self, spec: &ClusterSpec) -> Result<(), ClusterError> {
        let primary = spec.primary();
        let client = self.sql(primary).await?;
        alter_system(
            &client,
            primary,
            "synchronous_standby_names",
            &spec.synchronous_standby_names(),
        )
        .await?;
        reload(&client, primary).await
    }

    async fn wait_streaming(
        &self,
        primary: &NodeSpec,
        standbys: &[&NodeSpec],
    ) -> Result<(), ClusterError> {
        let client = self.sql(primary).await?;
        let mut running = Vec::new();
        for standby in standbys {
            if self.runtime.is_running(standby).await {
                running.push(standby.name.as_str());
            }
        }
        wait_until(
            Duration::from_secs(60),
            &format!("{} to stream from `{}`", running.join(", "), primary.name),
            || async {
                let streaming = streaming_standbys(&client).await?;
                Ok(running
                    .iter()
                    .all(|n| streaming.iter().any(|(name, _)| name == n)))
            },
        )
        .await
    }
}

/// The failover target and the standbys holding more WAL than it, with how far each is ahead,
/// most advanced first.
struct Choice<'p> {
    target: &'p NodeProbe,
    ahead: Vec<(&'p NodeProbe, u64)>,
}

/// The one asked for, or the most advanced reachable standby.
fn choose_target<'p>(
    spec: &ClusterSpec,
    probes: &'p [NodeProbe],
    options: &FailoverOptions,
) -> Result<Choice<'p>, ClusterError> {
    let primary = &spec.primary().name;
    let candidates: Vec<&NodeProbe> = probes
        .iter()
        .filter(|p| &p.name != primary && p.reachable && p.in_recovery == Some(true))
        .collect();
    let best = candidates
        .iter()
        .copied()
        .max_by_key(|p| p.position())
        .ok_or_else(|| {
            ClusterError::Setup("no standby answers: there is nothing to promote".into())
        })?;
    let target = match &options.to {
        Some(name) => {
            if spec.node(name).is_none() || name == primary {
                return Err(ClusterError::Setup(format!(
                    "`{name}` is not a standby of this cluster"
                )));
            }
            candidates
                .iter()
                .copied()
                .find(|p| &p.name == name)
                .ok_or_else(|| {
                    ClusterError::Setup(format!(
                        "`{name}` does not answer as a standby; it cannot be promoted"
                    ))
                })?
        }
        None => best,
    };
    let at = target.position().unwrap_or_default();
    let mut ahead: Vec<(&NodeProbe, u64)> = candidates
        .iter()
        .map(|p| (*p, p.position().unwrap_or_default().saturating_sub(at)))
        .filter(|(_, bytes)| *bytes > 0)
        .collect();
    ahead.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    Ok(Choice { target, ahead })
}

/// How much WAL `target` has yet to replay against the newest position any node reports.
fn replay_lag(probes: &[NodeProbe], target: &NodeProbe) -> u64 {
    let newest = probes
        .iter()
        .filter_map(NodeProbe::position)
        .max()
        .unwrap_or_default();
    newest.saturating_sub(target.replayed_lsn.unwrap_or_default())
}

/// Where timeline `timeline` ended, from a history file's `parent<TAB>switchpoint<TAB>reason`
/// lines.
fn fork_point(history: &str, timeline: u32) -> Option<Lsn> {
    history.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let parent: u32 = fields.next()?.parse().ok()?;
        let switchpoint: Lsn = fields.next()?.parse().ok()?;
        (parent == timeline).then_some(switchpoint)
    })
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

fn rejoin_method(rewind: bool) -> &'static str {
    if rewind {
        "pg_rewind, or a re-clone if that fails"
    } else {
        "re-cloned"
    }
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
        }
    }
}

fn names(nodes: &[&NodeSpec]) -> String {
    let names: Vec<String> = nodes.iter().map(|n| format!("`{}`", n.name)).collect();
    if names.is_empty() {
        "no other standby".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &str, lsn: u64) -> NodeProbe {
        NodeProbe {
            name: name.into(),
            reachable: true,
            in_recovery: Some(true),
            timeline: Some(1),
            received_lsn: Some(Lsn::new(lsn)),
            replayed_lsn: Some(Lsn::new(lsn)),
        }
    }

    #[test]
    fn the_most_advanced_standby_is_chosen_and_a_lagging_one_catches_up() {
        let spec = ClusterSpec::default();
        let mut primary = probe("pg_master", 0);
        primary.reachable = false;
        let probes = vec![
            primary,
            probe("pg_slave", 100),
            probe("pg_asyncslave", 5000),
        ];
        let best = choose_target(&spec, &probes, &FailoverOptions::default()).unwrap();
        assert_eq!(best.target.name, "pg_asyncslave");
        assert!(best.ahead.is_empty());
        let to_slave = FailoverOptions {
            to: Some("pg_slave".into()),
            ..FailoverOptions::default()
        };
        let lagging = choose_target(&spec, &probes, &to_slave).unwrap();
        assert_eq!(lagging.target.name, "pg_slave");
        let ahead: Vec<(&str, u64)> = lagging
            .ahead
            .iter()
            .map(|(p, bytes)| (p.name.as_str(), *bytes))
            .collect();
        assert_eq!(ahead, [("pg_asyncslave", 4900)]);
        let to_primary = FailoverOptions {
            to: Some("pg_master".into()),
            ..FailoverOptions::default()
        };
        assert!(choose_target(&spec, &probes, &to_primary).is_err());
        let nobody: Vec<NodeProbe> = Vec::new();
        assert!(choose_target(&spec, &nobody, &FailoverOptions::default()).is_err());
    }

    #[test]
    fn replay_lag_counts_from_the_newest_position_any_node_reports() {
        let mut primary = probe("pg_master", 9000);
        primary.in_recovery = Some(false);
        let mut lagging = probe("pg_slave", 8000);
        lagging.replayed_lsn = Some(Lsn::new(1000));
        let probes = vec![primary, lagging, probe("pg_asyncslave", 5000)];
        assert_eq!(replay_lag(&probes, &probes[1]), 8000);
        assert_eq!(replay_lag(&probes, &probes[2]), 4000);
        assert_eq!(replay_lag(&probes[1..2], &probes[1]), 7000);
    }

    #[test]
    fn fork_points_come_from_the_history_file() {
        let history =
            "1\t0/3000150\tno recovery target specified\n\n2\t0/5000000\tat restore point\n";
        assert_eq!(fork_point(history, 1), Some("0/3000150".parse().unwrap()));
        assert_eq!(fork_point(history, 2), Some("0/5000000".parse().unwrap()));
        assert_eq!(fork_point(history, 3), None);
    }
}
