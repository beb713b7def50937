//! The agent beside one node: probe the server, publish the member record, read etcd, decide,
//! act. Separate tasks renew the lease and fence the server when renewals stop, so a slow
//! action (a promotion, a rejoin) never costs the lease, and a blocked loop never delays fencing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::decide::{behind_leader, decide, decide_silent, Action, Decision, Situation, View};
use super::records::{HistoryRecord, MemberRecord, RoleRequest, SyncRecord};
use super::store::Store;
use super::{HaError, Timing};
use crate::cluster::plan::RejoinOptions;
use crate::cluster::spec::NodeSpec;
use crate::cluster::topology::Topology;
use crate::cluster::{alter_system, reload, Cluster, ClusterError, StepLog};
use crate::conn::sql;
use crate::ids::TimelineId;
use crate::Lsn;

mod probe;
mod tasks;

use self::probe::Probe;
use self::tasks::{keep_alive, watch, watchdog};

/// application_name of the agent's SQL sessions.
const SESSION_NAME: &str = "pgrepl-agent";
/// How long one SQL round trip to a node may take before it counts as unreachable.
const SQL_TIMEOUT: Duration = Duration::from_secs(1);

/// Where to find etcd and what to call the cluster there.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub node: String,
    /// The `<cluster>` in `/pgrepl/<cluster>/`.
    pub cluster_name: String,
    pub endpoints: Vec<String>,
    pub timing: Timing,
}

/// The lease the keepalive task renews, shared with the loop.
struct Lease {
    id: i64,
    /// When the last renewal etcd confirmed was sent: the lease cannot expire before this plus
    /// the TTL, whatever etcd's clock says.
    confirmed_at: Instant,
}

struct Shared {
    lease: Mutex<Lease>,
    /// The loop last saw its server as a running primary: what the keepalive task fences.
    primary: AtomicBool,
    /// The agents are paused (as etcd last said): nobody elects, so nothing is fenced.
    paused: AtomicBool,
}

impl Shared {
    fn lease(&self) -> (i64, Instant) {
        let lease = self.lease.lock().expect("lease lock");
        (lease.id, lease.confirmed_at)
    }
}

pub struct Agent {
    cluster: Cluster,
    node: NodeSpec,
    store: Store,
    timing: Timing,
    shared: Arc<Shared>,
}

impl Agent {
    /// Connects to etcd, agrees on the timing and takes a lease.
    pub async fn start(cluster: Cluster, options: AgentOptions) -> Result<Agent, HaError> {
        options.timing.validate()?;
        let mut cluster = cluster;
        let node = cluster.node(&options.node)?.clone();
        // Nodes with another host run on other machines, each with its own agent.
        cluster.on_machine_of(&node);
        let store =
            Store::connect(&options.endpoints, &options.cluster_name, &options.timing).await?;
        // The first request: the client connects lazily, so this is where a wrong URL shows.
        let timing = store.agree_timing(&options.timing).await.map_err(|e| {
            HaError::Config(format!(
                "{e}: start etcd, or give its client URLs with --etcd"
            ))
        })?;
        if timing != options.timing {
            tracing::warn!("the cluster's timing in etcd differs from this agent's; using the cluster's: {timing:?}");
            timing.validate()?;
        }
        let sent = Instant::now();
        let id = store.grant(timing.ttl()).await?;
        Ok(Agent {
            cluster,
            node,
            store,
            timing,
            shared: Arc::new(Shared {
                lease: Mutex::new(Lease {
                    id,
                    confirmed_at: sent,
                }),
                primary: AtomicBool::new(false),
                paused: AtomicBool::new(false),
            }),
        })
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
        agent.bootstrap(&cancel).await;
        prepare_server(&agent).await;
        let mut last = Last::default();
        while !cancel.is_cancelled() {
            let decision = agent.tick(&mut last).await;
            if decision.action != Action::Wait {
                // Decide again soon: the next step usually follows from this one.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(agent.timing.loop_interval()) => {}
                _ = wake.notified() => {}
            }
        }
        keepalive.abort();
        watchdog.abort();
        watcher.abort();
        if agent.shared.primary.load(Ordering::SeqCst) {
            tracing::info!(
                "stopping: fast shutdown of primary `{}` before releasing the lease",
                agent.node.name
            );
            if let Err(e) = agent.cluster.runtime.stop(&agent.node, true).await {
                tracing::warn!("stop `{}`: {e}; killing it", agent.node.name);
                agent.cluster.runtime.kill(&agent.node).await?;
            }
        }
        let (lease, _) = agent.shared.lease();
        agent.store.revoke(lease).await?;
        tracing::info!("stopped; lease released");
        Ok(())
    }

    /// Builds the node when it has no data (`super::bootstrap`), retrying until it could.
    async fn bootstrap(&self, cancel: &CancellationToken) {
        while !cancel.is_cancelled() {
            let (lease, _) = self.shared.lease();
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
                _ = tokio::time::sleep(self.timing.loop_interval() * 4) => {}
            }
        }
    }

    /// One round: probe, publish, read, decide, act.
    async fn tick(&self, last: &mut Last) -> Decision {
        let probed = Instant::now();
        let (local, client) = match self.probe().await {
            Probe::Known(local, client) => {
                last.silent_since = None;
                (local, client)
            }
            Probe::Refused => {
                last.silent_since = None;
                return decision_to_wait(last, "the server runs but refuses the probe");
            }
            Probe::Silent => {
                let since = *last.silent_since.get_or_insert(probed);
                let decision = decide_silent(since.elapsed(), last.paused);
                last.log(&decision);
                if decision.action == Action::KillHung {
                    let (lease, _) = self.shared.lease();
                    if let Err(e) = self.act(&decision, None, None, lease).await {
                        tracing::warn!("KillHung failed: {}", crate::cluster::error_chain(&e));
                    }
                    last.silent_since = None;
                }
                return decision;
            }
        };
        self.shared.primary.store(
            local.server.running && !local.server.in_recovery,
            Ordering::SeqCst,
        );
        let (lease, confirmed_at) = self.shared.lease();
        let record = MemberRecord {
            node: self.node.name.clone(),
            paused: last.paused,
            server: local.server.clone(),
        };
        let view = match self.read_view(&record, lease, last).await {
            Ok(view) => {
                last.etcd_error = None;
                Some(view)
            }
            Err(e) => {
                let text = e.to_string();
                if last.etcd_error.as_ref() != Some(&text) {
                    tracing::warn!("etcd: {text}");
                    last.etcd_error = Some(text);
                }
                None
            }
        };
        // When etcd is silent, the last word it said holds.
        if let Some(view) = &view {
            last.paused = view.pause.is_some();
        }
        self.shared.paused.store(last.paused, Ordering::SeqCst);
        let behind = view.as_ref().is_some_and(|v| behind_leader(&local, v));
        let stuck_for = last.stuck_for(behind, local.server.position);
        let decision = decide(&Situation {
            me: &self.node.name,
            local,
            view: view.clone(),
            fence_due: confirmed_at.elapsed() >= self.timing.fence_after(),
            spec: &self.cluster.file_spec,
            paused: last.paused,
            stuck_for,
        });
        last.log(&decision);
        if let Err(e) = self
            .act(&decision, client.as_ref(), view.as_ref(), lease)
            .await
        {
            tracing::warn!(
                "{:?} failed: {}",
                decision.action,
                crate::cluster::error_chain(&e)
            );
            // Decide again from what is true now, after a pause.
            tokio::time::sleep(self.timing.loop_interval()).await;
        }
        decision
    }

    /// Publishes the member record when it changed (the lease keeps it otherwise), then reads.
    async fn read_view(
        &self,
        record: &MemberRecord,
        lease: i64,
        last: &mut Last,
    ) -> Result<View, HaError> {
        let published = (record.clone(), lease);
        if last.published.as_ref() != Some(&published) {
            self.store.publish(record, lease).await?;
            last.published = Some(published);
        }
        self.store.view(lease).await
    }

    async fn session(&self, node: &NodeSpec) -> Result<Client, ClusterError> {
        let options = self.cluster.superuser(node)?;
        let connect = sql::connect(&options, SESSION_NAME);
        match tokio::time::timeout(SQL_TIMEOUT, connect).await {
            Ok(result) => result.map_err(|source| ClusterError::Node {
                node: node.name.clone(),
                source: Box::new(source),
            }),
            Err(_) => Err(ClusterError::Timeout(
                SQL_TIMEOUT,
                format!("a session to `{}`", node.name),
            )),
        }
    }

    /// Carries out one decision.
    async fn act(
        &self,
        decision: &Decision,
        client: Option<&Client>,
        view: Option<&View>,
        lease: i64,
    ) -> Result<(), HaError> {
        let me = &self.node;
        let runtime = &self.cluster.runtime;
        match &decision.action {
            Action::Wait => {}
            Action::Fence | Action::KillHung => {
                runtime.kill(me).await?;
                self.shared.primary.store(false, Ordering::SeqCst);
            }
            Action::RestartInPlace | Action::Start => runtime.start(me).await?,
            Action::Rejoin { leader } => self.rejoin(leader, view).await?,
            Action::Follow { leader } => {
                let leader = self.cluster.node(leader)?;
                let client = client.ok_or_else(|| not_answering(me))?;
                let conninfo = self.cluster.primary_conninfo(leader, me);
                alter_system(client, me, "primary_conninfo", &conninfo).await?;
                reload(client, me).await?;
            }
            Action::Detach => {
                let client = client.ok_or_else(|| not_answering(me))?;
                alter_system(client, me, "primary_conninfo", "").await?;
                reload(client, me).await?;
            }
            Action::TakeLeadership => {
                if self.store.take_leadership(&me.name, lease).await? {
                    tracing::info!("`{}` holds the leader key", me.name);
                }
            }
            Action::Promote {
                sync,
                standby_names,
                repoint,
            } => {
                let client = client.ok_or_else(|| not_answering(me))?;
                let old = view.and_then(|v| v.sync.as_ref()).map(|r| r.leader.clone());
                let change = Change {
                    old,
                    reason: &decision.reason,
                };
                self.promote(client, sync, standby_names, repoint, lease, change)
                    .await?;
            }
            Action::WriteSync(record) => {
                if !self.store.write_sync(record, lease).await? {
                    tracing::warn!(
                        "sync record not written: this agent no longer holds the leader key"
                    );
                }
            }
            Action::SetStandbyNames(names) => {
                let client = client.ok_or_else(|| not_answering(me))?;
                alter_system(client, me, "synchronous_standby_names", names).await?;
                reload(client, me).await?;
            }
            Action::StopForSwitchover { to } => {
                tracing::info!("switchover to `{to}`: fast shutdown of `{}`", me.name);
                runtime.stop(me, true).await?;
                self.shared.primary.store(false, Ordering::SeqCst);
            }
            Action::HandOver { to } => {
                if self.store.hand_over(lease, to).await? {
                    tracing::info!("switchover: `{to}` holds the leader key");
                } else {
                    tracing::warn!("switchover: the key was not handed to `{to}` (this agent no longer leads, or `{to}`'s agent is gone)");
                }
            }
            Action::RefuseSwitchover(why) => {
                if let Some(request) = view.and_then(|v| v.switchover.clone()) {
                    let refused = RoleRequest {
                        refused: Some(why.clone()),
                        ..request
                    };
                    self.store.refuse_switchover(&refused).await?;
                }
            }
        }
        Ok(())
    }

    /// Makes this node a standby of `leader`: follow, pg_rewind or re-clone (a node without
    /// data is cloned). etcd says who leads, once the leader's record shows it promoted; this
    /// state directory learns it here, since the leader's agent may run on another machine.
    async fn rejoin(&self, leader: &str, view: Option<&View>) -> Result<(), HaError> {
        let promoted = view
            .and_then(|v| v.members.iter().find(|m| m.node == leader))
            .is_some_and(|m| m.server.running && !m.server.in_recovery);
        if !promoted {
            return Err(HaError::Config(format!(
                "`{leader}` leads but its server is no primary yet"
            )));
        }
        let state_dir = self.cluster.state_dir();
        if Topology::load(state_dir)?.is_none_or(|t| t.primary != leader) {
            self.cluster
                .record_primary(leader, format!("agent: `{leader}` leads (etcd)"))?;
        }
        let options = RejoinOptions {
            rewind: true,
            dry_run: false,
        };
        self.cluster
            .rejoin(&self.node.name, options, &TracingLog)
            .await?;
        Ok(())
    }

    /// The takeover, in the order the zero-loss argument needs: the sync record first (guarded
    /// by the key), every other standby off the old primary, the standby names, then promotion.
    async fn promote(
        &self,
        client: &Client,
        sync: &SyncRecord,
        standby_names: &str,
        repoint: &[String],
        lease: i64,
        change: Change<'_>,
    ) -> Result<(), HaError> {
        let me = &self.node;
        let started = Instant::now();
        if !self.store.write_sync(sync, lease).await? {
            return Err(HaError::Config(
                "lost the leader key before promoting".into(),
            ));
        }
        for name in repoint {
            let standby = self.cluster.node(name)?;
            if !self.cluster.is_here(standby) {
                // Its own agent detached it before the election (proto-notes/08-ha.md).
                continue;
            }
            if let Err(e) = self.repoint(standby).await {
                // A standby this agent cannot reach cannot acknowledge for the old primary either.
                tracing::warn!("re-point `{name}`: {}", crate::cluster::error_chain(&e));
            }
        }
        alter_system(client, me, "synchronous_standby_names", standby_names).await?;
        reload(client, me).await?;
        self.cluster.promote(me).await?;
        tracing::info!(
            "promoted `{}` in {} ms; sync policy {standby_names}",
            me.name,
            started.elapsed().as_millis()
        );
        let Change { old, reason } = change;
        self.cluster.record_primary(
            &me.name,
            format!(
                "agent: {} -> {} ({reason})",
                old.as_deref().unwrap_or("?"),
                me.name
            ),
        )?;
        let timeline = client
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
            .await
            .ok()
            .map(|r| TimelineId::new(r.get::<_, i32>(0) as u32));
        self.store
            .record_history(&HistoryRecord {
                from: old,
                to: me.name.clone(),
                timeline,
                reason: reason.to_owned(),
            })
            .await
    }

    /// Points another node's standby at this node (which detaches it from the old primary).
    async fn repoint(&self, standby: &NodeSpec) -> Result<(), ClusterError> {
        let client = self.session(standby).await?;
        let conninfo = self.cluster.primary_conninfo(&self.node, standby);
        let change = async {
            alter_system(&client, standby, "primary_conninfo", &conninfo).await?;
            reload(&client, standby).await
        };
        tokio::time::timeout(SQL_TIMEOUT, change)
            .await
            .map_err(|_| {
                ClusterError::Timeout(SQL_TIMEOUT, format!("re-pointing `{}`", standby.name))
            })?
    }
}

/// Who led before a promotion, and why it happens (the decision's reason), for the history.
struct Change<'a> {
    old: Option<String>,
    reason: &'a str,
}

/// A wait, logged when it is new.
fn decision_to_wait(last: &mut Last, reason: &str) -> Decision {
    let decision = Decision {
        action: Action::Wait,
        reason: reason.to_owned(),
    };
    last.log(&decision);
    decision
}

/// What the loop did last, so it logs and publishes changes only.
#[derive(Default)]
struct Last {
    decision: Option<Decision>,
    published: Option<(MemberRecord, i64)>,
    etcd_error: Option<String>,
    /// Since when the running server has not answered the probe.
    silent_since: Option<Instant>,
    /// Since when this standby has been behind the leader's timeline, and at which position.
    stuck: Option<(Instant, Option<Lsn>)>,
    /// The pause key, as etcd last said.
    paused: bool,
}

impl Last {
    /// How long the standby has been behind the leader's timeline at `position`; moving
    /// restarts the clock.
    fn stuck_for(&mut self, behind: bool, position: Option<Lsn>) -> Duration {
        if !behind {
            self.stuck = None;
            return Duration::ZERO;
        }
        match self.stuck {
            Some((since, at)) if at == position => since.elapsed(),
            _ => {
                self.stuck = Some((Instant::now(), position));
                Duration::ZERO
            }
        }
    }

    /// Logs a decision that differs from the last one.
    fn log(&mut self, decision: &Decision) {
        if self.decision.as_ref() != Some(decision) {
            tracing::info!("{:?}: {}", decision.action, decision.reason);
            self.decision = Some(decision.clone());
        }
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
            alter_system(&client, node, setting, value).await?;
        }
        reload(&client, node).await
    };
    if let Err(e) = result.await {
        tracing::warn!("settings for fast recovery on `{}`: {e}", node.name);
    }
}

fn not_answering(node: &NodeSpec) -> HaError {
    HaError::Config(format!("`{}` does not answer SQL", node.name))
}

/// Rejoin's steps go to the log.
struct TracingLog;

impl StepLog for TracingLog {
    fn step(&self, text: &str) {
        tracing::info!("{text}");
    }
}
