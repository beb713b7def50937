//! The agent beside one node: the executor of `ha::core`. It probes the server, publishes the
//! member record, reads etcd, hands both to the core and carries out the effects the core
//! returns. Separate tasks renew the lease and fence the server when renewals stop, so a slow
//! effect (a promotion, a rejoin) never costs the lease, and a blocked loop never delays
//! fencing. Every decision is the core's; what is here is I/O.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::core::{Core, Effect, Step};
use super::etcd_access::EtcdAccess;
use super::model::{Action, Decision, Time, View};
use super::store::Store;
use super::{HaError, Timing};
use crate::cluster::spec::NodeSpec;
use crate::cluster::{Cluster, StepLog};

mod act;
mod api;
mod api_tls;
mod day2;
mod probe;
mod tasks;
mod timelines;

use self::api::Seen;

use self::tasks::{keep_alive, watch, watchdog};

/// application_name of the agent's SQL sessions.
const SESSION_NAME: &str = "pgrepl-agent";
/// How long one SQL round trip to a node may take before it counts as unreachable.
const SQL_TIMEOUT: Duration = Duration::from_secs(1);

/// `work` on this node's server within [`SQL_TIMEOUT`]: the loop that notices a hung server
/// must not wait on one (nor on a lock a query of `work` waits for). `what` names it in the
/// error.
async fn bounded<T, E: Into<HaError>>(
    what: &str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, HaError> {
    match tokio::time::timeout(SQL_TIMEOUT, work).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(crate::cluster::ClusterError::Timeout(SQL_TIMEOUT, what.to_owned()).into()),
    }
}

/// Where to find etcd and what to call the cluster there.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub node: String,
    /// The `<cluster>` in `/pgrepl/<cluster>/`.
    pub cluster_name: String,
    pub etcd: EtcdAccess,
    pub timing: Timing,
    /// Where to serve the HTTP API (`None`: no API).
    pub api: Option<std::net::SocketAddr>,
}

/// A place where a test makes the agent die on purpose (`PGREPL_FAULT`, read once at start;
/// nothing else reads it): the crash the simulator injects between any two effects, on a real
/// process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultPoint {
    /// Right after a promotion's sync record is written, before anything else of it.
    AfterSyncRecord,
}

impl FaultPoint {
    fn from_env() -> Option<FaultPoint> {
        match std::env::var("PGREPL_FAULT").ok()?.as_str() {
            "after_sync_record" => Some(FaultPoint::AfterSyncRecord),
            other => {
                tracing::warn!("PGREPL_FAULT=`{other}` names no fault point: ignored");
                None
            }
        }
    }
}

pub struct Agent {
    cluster: Cluster,
    node: NodeSpec,
    store: Store,
    core: Mutex<Core>,
    /// The origin of the core's clock.
    origin: Instant,
    fault: Option<FaultPoint>,
    /// The etcd client URLs (what `GET /cluster` says it read).
    endpoints: Vec<String>,
    /// What the loop last saw, for the API.
    seen: Mutex<Seen>,
    /// The API's socket, bound at start so a taken address fails the start.
    api: Mutex<Option<tokio::net::TcpListener>>,
    /// What it last did of the cluster-wide settings.
    day2: Mutex<day2::Day2State>,
}

impl Agent {
    /// Connects to etcd, agrees on the timing and takes a lease.
    pub async fn start(cluster: Cluster, options: AgentOptions) -> Result<Agent, HaError> {
        options.timing.validate()?;
        let mut cluster = cluster;
        let node = cluster.node(&options.node)?.clone();
        // Nodes with another host run on other machines, each with its own agent.
        cluster.on_machine_of(&node);
        let store = Store::connect(&options.etcd, &options.cluster_name, &options.timing).await?;
        // The first request: the client connects lazily, so this is where a wrong URL shows.
        let timing = store
            .agree_timing(&options.timing)
            .await
            .map_err(|e| HaError::EtcdDown { etcd: Box::new(e) })?;
        if timing != options.timing {
            tracing::warn!("the cluster's timing in etcd differs from this agent's; using the cluster's: {timing:?}");
            timing.validate()?;
        }
        let api = match options.api {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|error| HaError::ApiBind { addr, error })?,
            ),
            None => None,
        };
        // Whether the agents are paused, before anything can act: a run that starts while they
        // are, then loses etcd before its first read, must not fence (an earlier run that read
        // the key would not have).
        let paused = store.snapshot().await?.pause.is_some();
        let origin = Instant::now();
        let lease = store.grant(timing.ttl()).await?;
        let core = Core::new(
            &node.name,
            cluster.file_spec.clone(),
            timing,
            (lease, Time::ZERO),
            paused,
        );
        Ok(Agent {
            cluster,
            node,
            store,
            core: Mutex::new(core),
            origin,
            fault: FaultPoint::from_env(),
            endpoints: options.etcd.endpoints,
            seen: Mutex::new(Seen::default()),
            api: Mutex::new(api),
            day2: Mutex::default(),
        })
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().expect("core lock")
    }

    /// Now, on the core's clock.
    fn now(&self) -> Time {
        Time::since_origin(self.origin.elapsed())
    }

    fn timing(&self) -> Timing {
        *self.core().timing()
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().expect("seen lock")
    }

    /// What the health endpoints answer from, now.
    fn facts(&self) -> crate::ha::health::Facts {
        let (fresh, lease) = {
            let core = self.core();
            (core.timing().ttl(), (core.lease(), core.fence_deadline()))
        };
        self.seen().facts(&self.node.name, self.now(), fresh, lease)
    }

    /// Runs until `cancel`. On the way out a primary's server is stopped (fast, so its standbys
    /// get every commit) before the lease is revoked, so a standby takes over at once and never
    /// beside a running primary; a standby's server is left running.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), HaError> {
        let agent = Arc::new(self);
        // Renewing from the start: building the node takes longer than the lease lives.
        let keepalive = tokio::spawn(keep_alive(agent.clone(), cancel.clone()));
        let watchdog = tokio::spawn(watchdog(agent.clone(), cancel.clone()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let watcher = tokio::spawn(watch(agent.clone(), wake.clone(), cancel.clone()));
        let listener = agent.api.lock().expect("api lock").take();
        let api = listener.map(|l| tokio::spawn(api::serve(agent.clone(), l, cancel.clone())));
        agent.seen().busy = true;
        agent.bootstrap(&cancel).await;
        agent.seen().busy = false;
        prepare_server(&agent).await;
        let mut etcd_error = None;
        while !cancel.is_cancelled() {
            let decision = agent.tick(&mut etcd_error).await;
            if decision.action != Action::Wait {
                // Decide again soon: the next step usually follows from this one.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(agent.timing().loop_interval()) => {}
                _ = wake.notified() => {}
            }
        }
        keepalive.abort();
        watchdog.abort();
        watcher.abort();
        if let Some(api) = api {
            api.abort();
        }
        // A standby's data says so even before the first probe (the fence is armed until one).
        let standby = agent
            .cluster
            .runtime
            .data_dir(&agent.node)
            .join("standby.signal")
            .exists();
        if agent.core().may_write() && !standby {
            tracing::info!(
                "stopping: fast shutdown of primary `{}` before releasing the lease",
                agent.node.name
            );
            if let Err(e) = agent.cluster.runtime.stop(&agent.node, true).await {
                tracing::warn!("stop `{}`: {e}; killing it", agent.node.name);
                agent.cluster.runtime.kill(&agent.node).await?;
            }
        }
        let lease = agent.core().lease();
        agent.store.revoke(lease).await?;
        tracing::info!("stopped; lease released");
        Ok(())
    }

    /// Builds the node when it has no data (`super::bootstrap`), retrying until it could.
    async fn bootstrap(&self, cancel: &CancellationToken) {
        while !cancel.is_cancelled() {
            let lease = self.core().lease();
            let built = super::bootstrap::bootstrap(
                &self.cluster,
                &self.node,
                &self.store,
                lease,
                &TracingLog,
            );
            match built.await {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    "building `{}`: {}",
                    self.node.name,
                    crate::cluster::error_chain(&e)
                ),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.timing().loop_interval() * 4) => {}
            }
        }
    }

    /// One round: probe, publish, read, decide, carry out.
    async fn tick(&self, etcd_error: &mut Option<String>) -> Decision {
        let (probed, client) = self.probe().await;
        let probed_at = self.now();
        {
            let mut seen = self.seen();
            seen.loop_at = probed_at;
            seen.probe = Some((probed_at, probed.clone()));
        }
        let view = match self.read_view(&probed).await {
            Ok(view) => {
                *etcd_error = None;
                self.seen().view = Some((self.now(), view.clone()));
                Some(view)
            }
            Err(e) => {
                let text = e.to_string();
                if etcd_error.as_ref() != Some(&text) {
                    tracing::warn!("etcd: {text}");
                    *etcd_error = Some(text);
                }
                None
            }
        };
        let step = self.core().decide(self.now(), &probed, view.as_ref());
        if step.changed {
            tracing::info!("{:?}: {}", step.decision.action, step.decision.reason);
        }
        if let Err(e) = self.carry_out(&step, client.as_ref()).await {
            tracing::warn!(
                "{:?} failed: {}",
                step.decision.action,
                crate::cluster::error_chain(&e)
            );
            // Decide again from what is true now, after a pause.
            tokio::time::sleep(self.timing().loop_interval()).await;
        } else if let (Action::Wait, Some(client), Some(view)) =
            (&step.decision.action, client.as_ref(), view.as_ref())
        {
            let leader = view.leader.as_ref().map(|l| l.node.as_str());
            if let Err(e) = self.day2(client, &probed, leader).await {
                tracing::warn!("settings and restarts: {}", crate::cluster::error_chain(&e));
            }
        }
        step.decision
    }

    /// Publishes the member record when the core says etcd lacks it, then reads.
    async fn read_view(&self, probed: &super::model::Probed) -> Result<View, HaError> {
        let (record, lease) = {
            let core = self.core();
            (core.to_publish(probed), core.lease())
        };
        if let Some(record) = record {
            if let Err(e) = self.store.publish(&record, lease).await {
                self.core().publish_failed();
                return Err(e);
            }
            self.core().published(record, lease);
        }
        self.store.view(lease).await
    }

    /// Runs a step's effects in order, telling the core how each went; stops at the first
    /// failure that matters.
    async fn carry_out(
        &self,
        step: &Step,
        client: Option<&tokio_postgres::Client>,
    ) -> Result<(), HaError> {
        let promoting = matches!(step.decision.action, Action::Promote { .. });
        if step.effects.iter().any(api::unsettles) {
            // The server or the key may change: unknown until the next probe and read.
            let mut seen = self.seen();
            seen.probe = None;
            seen.view = None;
        }
        self.seen().busy = true;
        let result = self.carry_out_effects(step, client, promoting).await;
        let mut seen = self.seen();
        seen.busy = false;
        seen.loop_at = self.now();
        result
    }

    async fn carry_out_effects(
        &self,
        step: &Step,
        client: Option<&tokio_postgres::Client>,
        promoting: bool,
    ) -> Result<(), HaError> {
        for effect in &step.effects {
            let result = self.act(effect, client).await;
            self.core().done(self.now(), effect, result.is_ok());
            match result {
                Err(e) if effect.best_effort() => {
                    tracing::warn!("{effect:?}: {}", crate::cluster::error_chain(&e))
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            if promoting
                && matches!(effect, Effect::WriteSync(_))
                && self.fault == Some(FaultPoint::AfterSyncRecord)
            {
                tracing::error!("PGREPL_FAULT=after_sync_record: dying before the promotion");
                std::process::abort();
            }
        }
        Ok(())
    }
}

/// Settings that make restarts and reconnections fast: a standby that lost its primary retries
/// every wal_retrieve_retry_interval (5 s by default), and crash recovery first fsyncs every
/// file of the data directory one by one unless it may sync the file system at once (syncfs).
const FAST_RECOVERY: [(&str, &str); 2] = [
    ("wal_retrieve_retry_interval", "200ms"),
    ("recovery_init_sync_method", "syncfs"),
];

async fn prepare_server(agent: &Agent) {
    let node = &agent.node;
    let Ok(client) = agent.session(node).await else {
        return;
    };
    let result = async {
        for (setting, value) in FAST_RECOVERY {
            crate::cluster::alter_system(&client, node, setting, value).await?;
        }
        crate::cluster::reload(&client, node).await
    };
    if let Err(e) = result.await {
        tracing::warn!("settings for fast recovery on `{}`: {e}", node.name);
    }
}

/// Rejoin's steps go to the log.
struct TracingLog;

impl StepLog for TracingLog {
    fn step(&self, text: &str) {
        tracing::info!("{text}");
    }
}
