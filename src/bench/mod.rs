//! `pgrepl bench`: what synchronous replication costs, and how far behind the standbys fall.
//!
//! For each mode ([`Mode`]: async, remote_write, on, remote_apply, any1) the run sets the
//! primary's `synchronous_standby_names` and `synchronous_commit` (ALTER SYSTEM and a reload),
//! lets the standbys catch up, then runs a write load of its own ([`load`], shaped by [`shape`])
//! for a fixed time while [`sample`] reads every standby's lag about five times a second. After
//! the load it times how long each standby takes to replay everything. Whatever happens, error
//! or cancellation included, the settings are put back as they were ([`settings`]).
//!
//! Measured per mode: TPS, commit latency percentiles, WAL bytes per second (the primary's
//! `pg_current_wal_lsn()` before and after), each standby's lag over time, its catch-up time.
//!
//! Not here: choosing the nodes (the command line or a cluster file) and rendering (table, JSON,
//! plot), which are the CLI's. Neighbours: [`crate::lag`] for `pg_stat_replication`,
//! [`crate::conn::sql`] for the sessions.

pub mod load;
pub mod sample;
pub mod settings;
pub mod shape;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use self::load::Clients;
use self::sample::{LagPoint, Sampler, Snapshot};
pub use self::settings::Mode;
use self::settings::Settings;
pub use self::shape::Shape;
use crate::conn::{sql, ConnectionError};
use crate::lag::Node;
use crate::lsn::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}")]
    Sql {
        context: String,
        #[source]
        source: ConnectionError,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("no primary among the nodes (every reachable one is in recovery)")]
    NoPrimary,
    #[error("mode `{0}` needs a streaming standby, and the primary has none")]
    NoStandby(&'static str),
    #[error("cancelled")]
    Cancelled,
}

impl BenchError {
    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |e| Self::Sql {
            context,
            source: ConnectionError::Sql(e),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub clients: usize,
    pub duration: Duration,
    pub shape: Shape,
    /// Scale of the pgbench tables when they have to be created.
    pub scale: u32,
    pub modes: Vec<Mode>,
    /// The standbys named in the sync policies, in priority order; `None`: every standby that
    /// streams from the primary, by name.
    pub sync_standbys: Option<Vec<String>>,
    pub sample_every: Duration,
    /// How long the standbys get to catch up, before and after each mode's load.
    pub catch_up_limit: Duration,
}

impl BenchOptions {
    pub fn new(shape: Shape) -> BenchOptions {
        BenchOptions {
            clients: 8,
            duration: Duration::from_secs(10),
            shape,
            scale: 1,
            modes: Mode::ALL.to_vec(),
            sync_standbys: None,
            sample_every: Duration::from_millis(200),
            catch_up_limit: Duration::from_secs(60),
        }
    }
}

/// Where the run reports as it goes.
pub trait Progress: Send + Sync {
    /// Something the user should know: a setting changed or restored, a node left out.
    fn note(&self, text: &str);
    /// The load of `mode` is running; called after every lag sample.
    fn running(
        &self,
        mode: Mode,
        elapsed: Duration,
        total: Duration,
        transactions: u64,
        snapshot: &Snapshot,
    );
    /// The load of `mode` ended.
    fn finished(&self, report: &ModeReport);
}

/// Commit latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// One standby during one mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StandbyReport {
    /// Its `application_name` on the primary.
    pub name: String,
    pub max_write_lag_bytes: u64,
    pub max_flush_lag_bytes: u64,
    pub max_replay_lag_bytes: u64,
    pub max_replay_lag_ms: Option<f64>,
    /// From the end of the load until it had replayed everything; `null` if it did not within
    /// the limit.
    pub catch_up_ms: Option<f64>,
    pub samples: Vec<LagPoint>,
}

/// One mode's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    pub synchronous_standby_names: String,
    pub synchronous_commit: &'static str,
    pub transactions: u64,
    pub elapsed_s: f64,
    pub tps: f64,
    pub latency_ms: Latency,
    pub wal_bytes: u64,
    pub wal_bytes_per_sec: f64,
    pub standbys: Vec<StandbyReport>,
}

/// The whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub primary: String,
    pub shape: &'static str,
    pub clients: usize,
    pub duration_s: f64,
    pub scale: u32,
    /// The policies' standby names, in priority order.
    pub sync_standbys: Vec<String>,
    /// Every setting change and restore, as told to the user.
    pub settings_log: Vec<String>,
    pub modes: Vec<ModeReport>,
}

/// Runs every mode against the one primary among `nodes`; the other nodes are its standbys.
pub async fn run(
    nodes: &[Node],
    options: &BenchOptions,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<BenchReport, BenchError> {
    if options.clients == 0 {
        return Err(BenchError::Invalid("--clients must be at least 1".into()));
    }
    if options.scale == 0 || options.scale > shape::MAX_SCALE {
        return Err(BenchError::Invalid(format!(
            "scale `{}` is out of range: 1 to {}",
            options.scale,
            shape::MAX_SCALE
        )));
    }
    let (primary, standby_nodes) = find_primary(nodes, progress).await?;
    let admin = connect(&primary).await?;
    let scale = shape::prepare_tables(&admin, options.shape, options.scale).await?;
    let mut settings = Settings::save(&admin, &primary.connect).await?;
    let sampler = Sampler::new(connect(&primary).await?, standby_nodes).await?;
    let sync_standbys = match &options.sync_standbys {
        Some(names) => names.clone(),
        None => {
            let mut names = sampler.sample(Instant::now()).await?.streaming;
            names.sort();
            names.dedup();
            names
        }
    };
    let mut report = BenchReport {
        primary: primary.name.clone(),
        shape: options.shape.name(),
        clients: options.clients,
        duration_s: options.duration.as_secs_f64(),
        scale,
        sync_standbys,
        settings_log: Vec::new(),
        modes: Vec::new(),
    };
    let run = Run {
        primary: &primary,
        admin: &admin,
        sampler: &sampler,
        options,
        scale,
        progress,
        cancel,
    };
    let outcome = run.modes(&mut settings, &mut report).await;
    // Always, also after an error or Ctrl-C: the primary must not keep a policy it did not have.
    let restored = settings.restore(&admin).await;
    match &restored {
        Ok(lines) => {
            for line in lines {
                progress.note(&format!("restored {line}"));
            }
        }
        Err(e) => progress.note(&format!(
            "could not restore the settings: {e}; check synchronous_standby_names and synchronous_commit on the primary"
        )),
    }
    outcome?;
    restored?;
    Ok(report)
}

/// Connects to every node and tells the primary from the standbys.
async fn find_primary(
    nodes: &[Node],
    progress: &dyn Progress,
) -> Result<(Node, Vec<(Node, Client)>), BenchError> {
    let mut primary = None;
    let mut standbys = Vec::new();
    for node in nodes {
        let client = match connect(node).await {
            Ok(client) => client,
            Err(e) if nodes.len() > 1 => {
                progress.note(&format!("left out `{}`: {e}", node.name));
                continue;
            }
            Err(e) => return Err(e),
        };
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(BenchError::sql(format!("ask `{}` for its role", node.name)))?
            .get(0);
        if in_recovery {
            standbys.push((node.clone(), client));
        } else if let Some(first) = &primary {
            let first: &Node = first;
            return Err(BenchError::Invalid(format!(
                "two primaries: `{}` and `{}`; give one cluster's nodes",
                first.name, node.name
            )));
        } else {
            primary = Some(node.clone());
        }
    }
    Ok((primary.ok_or(BenchError::NoPrimary)?, standbys))
}

async fn connect(node: &Node) -> Result<Client, BenchError> {
    sql::connect(&node.connect, load::LOAD_APPLICATION_NAME)
        .await
        .map_err(|e| BenchError::Sql {
            context: format!("connect to `{}`", node.name),
            source: e,
        })
}

/// What every mode of one run shares.
struct Run<'a> {
    primary: &'a Node,
    admin: &'a Client,
    sampler: &'a Sampler,
    options: &'a BenchOptions,
    scale: u32,
    progress: &'a dyn Progress,
    cancel: &'a CancellationToken,
}

impl Run<'_> {
    async fn modes(
        &self,
        settings: &mut Settings,
        report: &mut BenchReport,
    ) -> Result<(), BenchError> {
        if let Some(mode) = self.options.modes.iter().find(|m| m.needs_standby()) {
            if report.sync_standbys.is_empty() {
                return Err(BenchError::NoStandby(mode.name()));
            }
        }
        for &mode in &self.options.modes {
            // Every mode starts from caught-up standbys, so none inherits the last one's backlog.
            let origin = Instant::now();
            let target = self.sampler.sample(origin).await?.primary_lsn;
            cancellable(
                self.cancel,
                catch_up(
                    self.sampler,
                    target,
                    origin,
                    self.options,
                    &mut BTreeMap::new(),
                ),
            )
            .await??;
            for line in settings
                .apply(self.admin, mode, &report.sync_standbys)
                .await?
            {
                let line = format!("mode {}: set {line}", mode.name());
                self.progress.note(&line);
                report.settings_log.push(line);
            }
            let mode_report =
                cancellable(self.cancel, self.mode(mode, &report.sync_standbys)).await??;
            self.progress.finished(&mode_report);
            report.modes.push(mode_report);
        }
        Ok(())
    }

    async fn mode(&self, mode: Mode, sync_standbys: &[String]) -> Result<ModeReport, BenchError> {
        let (sampler, options, progress) = (self.sampler, self.options, self.progress);
        let clients = Clients::connect(
            &self.primary.connect,
            options.clients,
            options.shape,
            self.scale,
        )
        .await?;
        let done = Arc::new(AtomicU64::new(0));
        let origin = Instant::now();
        let start_lsn = sampler.sample(origin).await?.primary_lsn;
        let mut series: BTreeMap<String, Vec<LagPoint>> = BTreeMap::new();
        // Its own task, so that sampling never holds up the clients; in a JoinSet, so that an
        // error here stops it too.
        let mut load = JoinSet::new();
        load.spawn(clients.run(options.duration, Arc::clone(&done), self.cancel.clone()));
        let mut ticker = tokio::time::interval(options.sample_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                Some(result) = load.join_next() => break result,
                _ = ticker.tick() => {
                    let snapshot = sampler.sample(origin).await?;
                    record(&mut series, &snapshot);
                    progress.running(mode, origin.elapsed(), options.duration, done.load(Ordering::Relaxed), &snapshot);
                }
            }
        };
        let result =
            result.map_err(|e| BenchError::Invalid(format!("the load task failed: {e}")))??;
        let load_end = Instant::now();
        let end_lsn = sampler.sample(origin).await?.primary_lsn;
        let caught_up = catch_up(sampler, end_lsn, origin, options, &mut series).await?;

        let elapsed_s = result.elapsed.as_secs_f64();
        let wal_bytes = end_lsn.saturating_sub(start_lsn);
        let h = &result.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let standbys = series
            .into_iter()
            .map(|(name, samples)| {
                let max = |f: fn(&LagPoint) -> Option<u64>| {
                    samples.iter().filter_map(f).max().unwrap_or(0)
                };
                StandbyReport {
                    max_write_lag_bytes: max(|p| p.write_lag_bytes),
                    max_flush_lag_bytes: max(|p| p.flush_lag_bytes),
                    max_replay_lag_bytes: max(|p| p.replay_lag_bytes),
                    max_replay_lag_ms: samples
                        .iter()
                        .filter_map(|p| p.replay_lag_ms)
                        .reduce(f64::max),
                    catch_up_ms: caught_up
                        .get(&name)
                        .map(|at| at.saturating_duration_since(load_end).as_secs_f64() * 1000.0),
                    name,
                    samples,
                }
            })
            .collect();
        Ok(ModeReport {
            mode,
            synchronous_standby_names: mode.policy(sync_standbys).to_string(),
            synchronous_commit: mode.synchronous_commit(),
            transactions: result.transactions,
            elapsed_s,
            tps: result.transactions as f64 / elapsed_s.max(f64::EPSILON),
            latency_ms: Latency {
                p50: ms(h.value_at_quantile(0.50)),
                p95: ms(h.value_at_quantile(0.95)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
                mean: h.mean() / 1000.0,
            },
            wal_bytes,
            wal_bytes_per_sec: wal_bytes as f64 / elapsed_s.max(f64::EPSILON),
            standbys,
        })
    }
}

/// `work`, unless `cancel` fires first.
async fn cancellable<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Result<T, BenchError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(BenchError::Cancelled),
        value = work => Ok(value),
    }
}

fn record(series: &mut BTreeMap<String, Vec<LagPoint>>, snapshot: &Snapshot) {
    for (name, (point, _)) in &snapshot.standbys {
        series.entry(name.clone()).or_default().push(*point);
    }
}

/// How often positions are read while the standbys catch up: the catch-up time's resolution.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

/// Samples until every standby has replayed up to `target` or the limit passes; returns when
/// each one got there.
async fn catch_up(
    sampler: &Sampler,
    target: Lsn,
    origin: Instant,
    options: &BenchOptions,
    series: &mut BTreeMap<String, Vec<LagPoint>>,
) -> Result<BTreeMap<String, Instant>, BenchError> {
    let started = Instant::now();
    let mut arrived = BTreeMap::new();
    loop {
        let snapshot = sampler.sample(origin).await?;
        let now = Instant::now();
        record(series, &snapshot);
        for (name, (_, replay)) in &snapshot.standbys {
            if replay.is_some_and(|r| r >= target) {
                arrived.entry(name.clone()).or_insert(now);
            }
        }
        if snapshot
            .standbys
            .keys()
            .all(|name| arrived.contains_key(name))
        {
            return Ok(arrived);
        }
        if started.elapsed() > options.catch_up_limit {
            tracing::warn!(%target, "standbys did not catch up within {:?}", options.catch_up_limit);
            return Ok(arrived);
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
}
