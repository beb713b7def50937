//! Carrying out one effect of the core against the node's server (through the cluster runtime
//! and SQL) and etcd.

use std::time::Instant;

use tokio_postgres::Client;

use super::{bounded, timelines, Agent, TracingLog, SESSION_NAME, SQL_TIMEOUT};
use crate::cluster::history::{now_unix_ms, switch_point, ChangeKind, RoleChange, AGENTS};
use crate::cluster::plan::RejoinOptions;
use crate::cluster::spec::NodeSpec;
use crate::cluster::topology::HistoryEntry;
use crate::cluster::topology::Topology;
use crate::cluster::{alter_system, reload, ClusterError};
use crate::conn::sql;
use crate::ha::core::Effect;
use crate::ha::HaError;
use crate::ids::TimelineId;

impl Agent {
    /// Carries out `effect`; `client` is the session the probe opened to this node's server.
    pub(super) async fn act(
        &self,
        effect: &Effect,
        client: Option<&Client>,
    ) -> Result<(), HaError> {
        let me = &self.node;
        let runtime = &self.cluster.runtime;
        let sql = || client.ok_or_else(|| not_answering(me));
        match effect {
            Effect::Kill => runtime.kill(me).await?,
            Effect::Start => {
                self.drop_stale_placeholders()?;
                runtime.start(me).await?
            }
            Effect::Rejoin { leader } => {
                self.drop_stale_placeholders()?;
                self.rejoin(leader).await?
            }
            Effect::PointAt { leader } => {
                let conninfo = match leader {
                    Some(leader) => self
                        .cluster
                        .primary_conninfo(self.cluster.node(leader)?, me),
                    None => String::new(),
                };
                let client = sql()?;
                let change = async {
                    alter_system(client, me, "primary_conninfo", &conninfo).await?;
                    reload(client, me).await
                };
                bounded("pointing the standby at its leader", change).await?;
            }
            Effect::TakeLeadership { system_id } => {
                if self
                    .store
                    .take_leadership(&me.name, self.lease(), *system_id)
                    .await?
                {
                    tracing::info!("`{}` holds the leader key", me.name);
                }
            }
            Effect::Reclaim { from } => {
                if self.store.reclaim(&me.name, *from, self.lease()).await? {
                    tracing::info!("the leader key of an earlier run ({from}) is this run's now");
                }
            }
            Effect::Release => {
                if self.store.release(self.lease()).await? {
                    tracing::warn!("released the leader key: a standby takes over");
                }
            }
            Effect::RecordSystemId(system_id) => {
                self.store
                    .record_system_id(self.lease(), *system_id)
                    .await?;
            }
            Effect::WriteSync(record) => {
                if !self.store.write_sync(record, self.lease()).await? {
                    return Err(HaError::SyncNotWritten);
                }
            }
            Effect::Repoint { node } => {
                let standby = self.cluster.node(node)?;
                // One on another machine: its own agent detached it before the election
                // (proto-notes/08-ha.md).
                if self.cluster.is_here(standby) {
                    self.repoint(standby).await?;
                }
            }
            Effect::SetStandbyNames(names) => {
                let client = sql()?;
                let change = async {
                    let names = names.to_string();
                    alter_system(client, me, "synchronous_standby_names", &names).await?;
                    reload(client, me).await
                };
                bounded("setting synchronous_standby_names", change).await?;
            }
            Effect::Promote { timeline } => {
                self.skip_timelines(*timeline)?;
                bounded("noting the promotion", self.note_promotion(sql()?)).await?;
                let started = Instant::now();
                self.cluster.promote(me).await?;
                tracing::info!(
                    "promoted `{}` in {} ms",
                    me.name,
                    started.elapsed().as_millis()
                );
            }
            Effect::RecordPromotion { from, kind, reason } => {
                self.record_promotion(sql()?, from.clone(), *kind, reason)
                    .await?
            }
            Effect::StopFast => {
                tracing::info!("switchover: fast shutdown of `{}`", me.name);
                runtime.stop(me, true).await?;
            }
            Effect::HandOver { to } => {
                if self.store.hand_over(self.lease(), to).await? {
                    tracing::info!("switchover: `{to}` holds the leader key");
                } else {
                    tracing::warn!("switchover: the key was not handed to `{to}` (this agent no longer leads, or `{to}`'s agent is gone)");
                }
            }
            Effect::RefuseSwitchover(request) => self.store.refuse_switchover(request).await?,
            Effect::Publish { record, lease } => self.store.publish(record, *lease).await?,
            Effect::Grant => {
                let sent = self.now();
                let lease = self.store.grant(self.timing().ttl()).await?;
                self.core().granted(sent, lease);
            }
        }
        Ok(())
    }

    fn lease(&self) -> crate::ha::records::LeaseId {
        self.core().lease()
    }

    /// A superuser session to `node`, within the SQL time limit.
    pub(super) async fn session(&self, node: &NodeSpec) -> Result<Client, ClusterError> {
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

    /// Makes this node a standby of `leader`: follow, pg_rewind or re-clone (a node without
    /// data is cloned). etcd says who leads; this state directory learns it here, since the
    /// leader's agent may run on another machine.
    async fn rejoin(&self, leader: &str) -> Result<(), HaError> {
        let state_dir = self.cluster.state_dir();
        if Topology::load(state_dir)?.is_none_or(|t| t.primary != leader) {
            self.cluster.record_primary(
                leader,
                HistoryEntry::Note(format!("agent: `{leader}` leads (etcd)")),
            )?;
        }
        let options = RejoinOptions {
            rewind: true,
            dry_run: false,
            agents: true,
        };
        self.cluster
            .rejoin(&self.node.name, options, &TracingLog)
            .await?;
        Ok(())
    }

    /// After a promotion: this state directory's topology, and the history key.
    async fn record_promotion(
        &self,
        client: &Client,
        from: Option<String>,
        kind: ChangeKind,
        reason: &str,
    ) -> Result<(), HaError> {
        // pg_control's checkpoint timeline lags a fast promotion: the WAL file name does not.
        let (timeline, lsn) = tokio::time::timeout(SQL_TIMEOUT, switch_point(client))
            .await
            .unwrap_or_default();
        let change = RoleChange {
            at_unix_ms: now_unix_ms(),
            kind,
            from,
            to: self.node.name.clone(),
            timeline,
            lsn,
            by: AGENTS.into(),
            reason: reason.to_owned(),
        };
        self.cluster
            .record_primary(&self.node.name, HistoryEntry::Change(change.clone()))?;
        self.store.record_history(&change).await
    }

    /// Points another node's standby at this node (which detaches it from the old primary).
    async fn repoint(&self, standby: &NodeSpec) -> Result<(), HaError> {
        let client = self.session(standby).await?;
        let conninfo = self.cluster.primary_conninfo(&self.node, standby);
        let change = async {
            alter_system(&client, standby, "primary_conninfo", &conninfo).await?;
            reload(&client, standby).await
        };
        bounded(&format!("re-pointing `{}`", standby.name), change).await
    }
}

fn not_answering(node: &NodeSpec) -> HaError {
    HaError::NoSql {
        node: node.name.clone(),
    }
}

impl Agent {
    fn pg_wal(&self) -> std::path::PathBuf {
        self.cluster.runtime.data_dir(&self.node).join("pg_wal")
    }

    /// The history files in this node's pg_wal.
    pub(super) fn history_files(&self) -> Result<Vec<timelines::HistoryFile>, HaError> {
        let pg_wal = self.pg_wal();
        timelines::history_files(&pg_wal).map_err(|source| HaError::Io {
            context: format!("reading the history files in {}", pg_wal.display()),
            source,
        })
    }

    /// Placeholders for the numbers below `timeline` that this server has no history file of,
    /// so that its promotion takes `timeline` (see `timelines`).
    fn skip_timelines(&self, timeline: TimelineId) -> Result<(), HaError> {
        let pg_wal = self.pg_wal();
        let files = self.history_files()?;
        if let Some(newer) = files.iter().find(|f| f.timeline >= timeline) {
            return Err(HaError::NewerHistory {
                newer: newer.timeline,
                timeline,
            });
        }
        for skip in timelines::to_skip(&files, timeline) {
            timelines::write_placeholder(&pg_wal, skip).map_err(|source| HaError::Io {
                context: format!(
                    "writing a placeholder for timeline {skip} in {}",
                    pg_wal.display()
                ),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes placeholders no promotion used before the server starts (see `timelines`).
    fn drop_stale_placeholders(&self) -> Result<(), HaError> {
        let pg_wal = self.pg_wal();
        for stale in timelines::stale(&self.history_files()?) {
            tracing::info!("removing the placeholder of timeline {stale}: no promotion used it");
            timelines::remove_placeholder(&pg_wal, stale).map_err(|source| HaError::Io {
                context: format!(
                    "removing the placeholder of timeline {stale} in {}",
                    pg_wal.display()
                ),
                source,
            })?;
        }
        Ok(())
    }

    /// Where the agent notes which run of its server it asked to promote: pg_promote returns
    /// before the promotion ends, the promotion outlives the agent, and a later run of the agent
    /// must know the standby it finds may be a primary any moment (`Local::promoting`).
    fn promotion_file(&self) -> std::path::PathBuf {
        let name = format!("{}.promoting", self.node.name);
        self.cluster.state_dir().join("agents").join(name)
    }

    /// The postmaster start time of the server a promotion was asked of (a restart drops a
    /// pending promotion: postmaster.c, `RemovePromoteSignalFiles`).
    pub(super) fn promotion_asked(&self) -> Option<String> {
        std::fs::read_to_string(self.promotion_file()).ok()
    }

    async fn note_promotion(&self, client: &Client) -> Result<(), HaError> {
        let started: String = client
            .query_one("SELECT pg_postmaster_start_time()::text", &[])
            .await
            .map_err(|e| crate::cluster::node_err_sql(&self.node, e))?
            .get(0);
        let path = self.promotion_file();
        let io = |source| HaError::Io {
            context: format!("noting the promotion in {}", path.display()),
            source,
        };
        std::fs::create_dir_all(path.parent().expect("a file in a directory")).map_err(io)?;
        std::fs::write(&path, started).map_err(io)
    }
}
