//! `pgrepl drill`: the manual recipe's checks, automated. Each step reports PASS or FAIL with
//! what it saw and how long it took; the drill stops at the first failure (later steps build on
//! earlier ones) and otherwise leaves the cluster healthy — with the former sync standby as its
//! primary and the old primary rejoined as a standby.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use super::check_failed::CheckFailed;
use super::plan::FailoverOptions;
use super::spec::{ClusterSpec, NodeSpec};
use super::{
    expected_sync_states, node_err_sql, streaming_standbys, wait_until, Cluster, ClusterError,
    StepLog,
};
use crate::conn::Connection;
use crate::sync_policy::SyncPolicy;

#[derive(Debug, Clone, Serialize)]
pub struct DrillStep {
    pub step: usize,
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub ms: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub steps: Vec<DrillStep>,
    pub passed: bool,
    pub elapsed_ms: u128,
}

/// How long a commit must wait before we call it blocked on synchronous replication.
const BLOCK_DETECTION: Duration = Duration::from_secs(10);

impl Cluster {
    pub async fn drill(&self, log: &dyn StepLog) -> Result<DrillReport, ClusterError> {
        let started = Instant::now();
        let mut report = DrillReport {
            steps: Vec::new(),
            passed: true,
            elapsed_ms: 0,
        };
        let names = [
            "standbys stream with the intended sync states",
            "a row written on the primary is read on every standby",
            "a write on a standby is refused (SQLSTATE 25006)",
            "with the async standby stopped, the primary still commits",
            "with no standby left, a commit blocks; restarting them releases it",
            "failover to the sync standby: it takes writes with the names swapped",
            "the old primary rejoins as a standby and streams",
        ];
        for (index, name) in names.iter().enumerate() {
            let step_started = Instant::now();
            let outcome = match index {
                0 => self.drill_streaming().await,
                1 => self.drill_row_everywhere(1).await,
                2 => self.drill_standbys_read_only().await,
                3 => self.drill_async_stopped().await,
                4 => self.drill_all_stopped().await,
                5 => self.drill_failover(log).await,
                _ => self.drill_rejoin(log).await,
            };
            let (passed, detail) = match outcome {
                Ok(detail) => (true, detail),
                Err(e) => (false, super::error_chain(&e)),
            };
            log.step(&format!(
                "{} {}. {name}: {detail}",
                if passed { "PASS" } else { "FAIL" },
                index + 1
            ));
            report.steps.push(DrillStep {
                step: index + 1,
                name: (*name).to_owned(),
                passed,
                detail,
                ms: step_started.elapsed().as_millis(),
            });
            if !passed {
                report.passed = false;
                break;
            }
        }
        report.elapsed_ms = started.elapsed().as_millis();
        Ok(report)
    }

    async fn primary_sql(&self, spec: &ClusterSpec) -> Result<Client, ClusterError> {
        self.sql(spec.primary()).await
    }

    async fn drill_streaming(&self) -> Result<String, ClusterError> {
        let spec = self.current_spec()?;
        let client = self.primary_sql(&spec).await?;
        let expected = expected_sync_states(&spec);
        wait_until(
            Duration::from_secs(30),
            "the intended sync states",
            || async {
                let states = streaming_standbys(&client).await?;
                Ok(expected.iter().all(|e| states.contains(e)))
            },
        )
        .await?;
        Ok(describe(&expected))
    }

    /// Writes row `id` on the primary and waits for it on every running standby.
    async fn drill_row_everywhere(&self, id: i64) -> Result<String, ClusterError> {
        let spec = self.current_spec()?;
        let client = self.primary_sql(&spec).await?;
        // A fresh table per drill, so row numbers mean this run's steps.
        client
            .batch_execute("DROP TABLE IF EXISTS pgrepl_drill; CREATE TABLE pgrepl_drill(id bigint PRIMARY KEY)")
            .await
            .map_err(|e| node_err_sql(spec.primary(), e))?;
        client
            .execute("INSERT INTO pgrepl_drill VALUES ($1)", &[&id])
            .await
            .map_err(|e| node_err_sql(spec.primary(), e))?;
        self.row_on_standbys(&spec, id).await?;
        Ok(format!(
            "row {id} is on {}",
            spec.standbys()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ))
    }

    async fn row_on_standbys(&self, spec: &ClusterSpec, id: i64) -> Result<(), ClusterError> {
        let primary = self.primary_sql(spec).await?;
        let standbys: Vec<&NodeSpec> = spec.standbys().collect();
        self.row_replayed(&standbys, spec.primary(), &primary, "pgrepl_drill", id)
            .await
    }

    async fn drill_standbys_read_only(&self) -> Result<String, ClusterError> {
        let spec = self.current_spec()?;
        for standby in spec.standbys() {
            let client = self.sql(standby).await?;
            super::refuses_writes(&client, standby, "INSERT INTO pgrepl_drill VALUES (-1)").await?;
        }
        Ok("every standby answers: cannot execute INSERT in a read-only transaction".into())
    }

    async fn drill_async_stopped(&self) -> Result<String, ClusterError> {
        let spec = self.current_spec()?;
        let async_standby = last_standby(&spec)?;
        self.runtime
            .stop(
                spec.node(&async_standby).expect("a standby of the spec"),
                true,
            )
            .await?;
        let client = self.primary_sql(&spec).await?;
        let committed = tokio::time::timeout(
            BLOCK_DETECTION,
            client.execute("INSERT INTO pgrepl_drill VALUES (2)", &[]),
        )
        .await;
        let result = match committed {
            Ok(Ok(_)) => {
                let states = streaming_standbys(&client).await?;
                Ok(format!(
                    "committed with `{async_standby}` stopped; now {}",
                    describe(&states)
                ))
            }
            Ok(Err(e)) => Err(node_err_sql(spec.primary(), e)),
            Err(_) => Err(CheckFailed::CommitBlocked {
                stopped: async_standby.clone(),
            }
            .into()),
        };
        self.start_node(&async_standby).await?;
        result
    }

    async fn drill_all_stopped(&self) -> Result<String, ClusterError> {
        let spec = self.current_spec()?;
        let standbys: Vec<_> = spec.standbys().cloned().collect();
        for standby in &standbys {
            self.runtime.stop(standby, true).await?;
        }
        let primary = spec.primary();
        let writer = self.primary_sql(&spec).await?;
        let commit = tokio::spawn(async move {
            writer
                .execute("INSERT INTO pgrepl_drill VALUES (3)", &[])
                .await
        });
        let watcher = self.primary_sql(&spec).await?;
        let blocked = wait_until(BLOCK_DETECTION, "a commit waiting on SyncRep", || async {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                    &[],
                )
                .await
                .map_err(|e| node_err_sql(primary, e))?
                .get(0);
            Ok(waiting > 0)
        })
        .await;
        let stopped: Vec<String> = standbys.iter().map(|s| s.name.clone()).collect();
        let missing = stopped.join(" and ");
        futures_util::future::try_join_all(standbys.iter().map(|s| self.start_node(&s.name)))
            .await?;
        blocked.map_err(|_| CheckFailed::CommitNotBlocked { stopped })?;
        let released = tokio::time::timeout(Duration::from_secs(60), commit).await;
        match released {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => return Err(node_err_sql(primary, e)),
            _ => return Err(CheckFailed::CommitNotReleased.into()),
        }
        self.row_on_standbys(&spec, 3).await?;
        Ok(format!("a commit waited on SyncRep while {missing} were stopped; released when they came back, row 3 is everywhere"))
    }

    async fn drill_failover(&self, log: &dyn StepLog) -> Result<String, ClusterError> {
        let spec = self.current_spec()?;
        let sync_standby = expected_sync_states(&spec)
            .into_iter()
            .find(|(_, state)| state == "sync" || state == "quorum")
            .map(|(name, _)| name)
            .ok_or(CheckFailed::NoSyncStandby)?;
        let before = spec.clone();
        let killed_at = Instant::now();
        self.failover(
            &FailoverOptions {
                to: Some(sync_standby.clone()),
                ..FailoverOptions::default()
            },
            log,
        )
        .await?;
        let spec = self.current_spec()?;
        let client = self.primary_sql(&spec).await?;
        tokio::time::timeout(
            Duration::from_secs(30),
            client.execute("INSERT INTO pgrepl_drill VALUES (4)", &[]),
        )
        .await
        .map_err(|_| CheckFailed::FirstWriteBlocked)?
        .map_err(|e| node_err_sql(spec.primary(), e))?;
        let first_write = killed_at.elapsed();
        let names: String = client
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .map_err(|e| node_err_sql(spec.primary(), e))?
            .get(0);
        if names.parse::<SyncPolicy>().as_ref() != Ok(&spec.sync.policy) {
            return Err(CheckFailed::StandbyNames {
                found: names,
                expected: spec.sync.policy.clone(),
            }
            .into());
        }
        let mut replication = Connection::connect(&self.replication_connect(spec.primary()))
            .await
            .map_err(ClusterError::node(spec.primary()))?;
        let timeline = replication
            .identify_system()
            .await
            .map_err(ClusterError::node(spec.primary()))?
            .timeline;
        replication.close().await;
        let old = &before.primary().name;
        for standby in spec.standbys().filter(|s| &s.name != old) {
            let standby_sql = self.sql(standby).await?;
            wait_until(Duration::from_secs(30), &format!("`{}` on timeline {timeline}", standby.name), || async {
                let tli: Option<i32> = standby_sql
                    .query_opt("SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'", &[])
                    .await
                    .map_err(|e| node_err_sql(standby, e))?
                    .map(|r| r.get(0));
                Ok(tli == Some(timeline.as_u32() as i32))
            })
            .await?;
        }
        Ok(format!(
            "`{sync_standby}` took row 4 {:.1} s after the old primary was killed; names {names}; standbys on timeline {timeline}",
            first_write.as_secs_f64()
        ))
    }

    async fn drill_rejoin(&self, log: &dyn StepLog) -> Result<String, ClusterError> {
        let spec = self.current_spec()?;
        let old = self.spec.primary().name.clone();
        self.rejoin(&old, super::plan::RejoinOptions::default(), log)
            .await?;
        Ok(format!(
            "`{old}` streams from `{}`; {}",
            spec.primary().name,
            describe(&expected_sync_states(&spec))
        ))
    }
}

/// The standby ranked last by the sync policy: the recipe's "async" one.
fn last_standby(spec: &ClusterSpec) -> Result<String, ClusterError> {
    expected_sync_states(spec)
        .into_iter()
        .rev()
        .find(|(_, state)| state == "potential" || state == "async")
        .map(|(name, _)| name)
        .ok_or_else(|| CheckFailed::NoAsyncStandby.into())
}

fn describe(states: &[(String, String)]) -> String {
    states
        .iter()
        .map(|(n, s)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}
