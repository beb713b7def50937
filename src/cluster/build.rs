//! `pgrepl up`: the manual recipe done natively and idempotently. Each step looks at what
//! exists first: start the primary, configure it (settings, the replication role, pg_hba),
//! clone the standbys in one pass, set the sync policy, then check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::check_failed::CheckFailed;
use super::spec::{ClusterSpec, NodeSpec};
use super::*;
use crate::sync_policy::{SyncMethod, SyncPolicy};

impl Cluster {
    /// Builds (or completes) the cluster and checks it.
    pub async fn up(
        &self,
        options: &UpOptions,
        log: &dyn StepLog,
    ) -> Result<UpSummary, ClusterError> {
        let started = Instant::now();
        // Opened first, so a missing or non-SQL dump stops `up` before anything is created.
        let dump = options
            .dump
            .as_deref()
            .map(crate::dump::DumpFile::open)
            .transpose()?;
        if let Some((a, b)) = self.spec.shared_port() {
            return Err(ClusterError::SharedPort(
                a.name.clone(),
                b.name.clone(),
                a.port,
            ));
        }
        let primary = self.spec.primary();
        self.runtime.prepare(&self.spec.nodes).await?;
        self.ensure_tls(&self.spec.nodes, true, log)?;
        if !self.spec.tls_on() {
            log.step(
                "TLS is off ([tls] mode = \"off\", or ssl = \"off\" in [settings]): replication and passwords cross the network in clear text, and standbys do not check which server they follow",
            );
        }
        // Before anything is created, so an interrupted `up` is found again by every command.
        self.save_record()?;

        let fresh = !self.runtime.data_dir(primary).join("PG_VERSION").exists();
        if fresh {
            log.step(&format!("initialise primary `{}`", primary.name));
            self.runtime
                .init_primary(primary, self.spec.tls_on())
                .await?;
            self.tls_settings_into(primary)?;
            self.save_record()?;
        }
        self.ensure_running(primary, log).await?;
        // Before replication exists, so the standbys' base backup carries the data.
        if let Some(dump) = dump {
            let path = dump.path().display().to_string();
            if fresh {
                log.step(&format!("restore `{path}` into `{}`", primary.name));
                let (superuser, step) = (self.runtime.superuser(primary), |s: &str| log.step(s));
                // An UpOptions::default() names no database: the default one.
                let database = Some(options.dump_database.as_str()).filter(|d| !d.is_empty());
                let database = database.unwrap_or(sql::DEFAULT_DATABASE);
                let summary = crate::dump::restore(&superuser, dump, database, &step).await?;
                log.step(&format!("restored `{path}`: {summary}"));
            } else {
                log.step(&format!(
                    "dump `{path}` not applied: primary `{}` existed before this run and may hold data already \
                     (`pgrepl down --purge`, then `up --dump` again, restores into a new cluster)",
                    primary.name
                ));
            }
        }
        self.configure_primary(primary, log).await?;

        let missing: Vec<&NodeSpec> = self
            .spec
            .standbys()
            .filter(|s| !self.runtime.data_dir(s).join("PG_VERSION").exists())
            .collect();
        if !missing.is_empty() {
            self.clone_standbys(primary, &missing, &options.cancel, log)
                .await?;
        }
        for standby in self.spec.standbys() {
            self.refuse_a_second_primary(&self.spec, standby)?;
        }
        // Standbys start in parallel: each waits for its own recovery to reach consistency.
        futures_util::future::try_join_all(
            self.spec.standbys().map(|s| self.ensure_running(s, log)),
        )
        .await?;
        let primary_sql = self.sql(primary).await?;
        let names: Vec<&str> = self.spec.standbys().map(|s| s.name.as_str()).collect();
        log.step(&format!("wait until {} stream", names.join(" and ")));
        wait_until(
            Duration::from_secs(60),
            "every standby to stream",
            || async {
                let streaming = streaming_standbys(&primary_sql).await?;
                Ok(names
                    .iter()
                    .all(|n| streaming.iter().any(|(name, _)| name == n)))
            },
        )
        .await?;

        self.apply_sync_policy(&self.spec, &primary_sql, log)
            .await?;
        self.check(primary, &primary_sql, log).await?;

        let states = streaming_standbys(&primary_sql).await?;
        let nodes = self
            .spec
            .nodes
            .iter()
            .map(|n| NodeStatus {
                name: n.name.clone(),
                role: format!("{:?}", n.role).to_lowercase(),
                port: n.port,
                conninfo: self.runtime.psql_conninfo(n),
                sync_state: states
                    .iter()
                    .find(|(name, _)| name == &n.name)
                    .map(|(_, s)| s.clone()),
            })
            .collect();
        Ok(UpSummary {
            nodes,
            synchronous_standby_names: self.spec.sync.policy.to_string(),
            elapsed_ms: started.elapsed().as_millis(),
        })
    }

    pub(super) async fn ensure_running(
        &self,
        node: &NodeSpec,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        if !self.runtime.is_running(node).await {
            log.step(&format!("start `{}`", node.name));
            self.runtime.start(node).await?;
        }
        Ok(())
    }

    /// GUCs via ALTER SYSTEM, the replication role, the pg_hba line; restarts only when a
    /// changed setting needs it.
    pub(super) async fn configure_primary(
        &self,
        primary: &NodeSpec,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        let client = self.sql(primary).await?;
        let mut changed = false;
        let mut settings = self.spec.server_settings();
        let version: String = client
            .query_one("SELECT current_setting('server_version_num')", &[])
            .await
            .map_err(|e| node_err_sql(primary, e))?
            .get(0);
        // 17+: WAL summaries let a standby whose WAL is gone resync from the blocks that
        // changed instead of a re-clone (`resync`). A cluster file's own value wins.
        if version.parse::<u32>().is_ok_and(|v| v >= 170000) {
            settings
                .entry("summarize_wal".to_owned())
                .or_insert_with(|| "on".to_owned());
        }
        for (name, value) in &settings {
            let current: String = client
                .query_one("SELECT current_setting($1)", &[name])
                .await
                .map_err(|e| match e.code().map(|c| c.code()) {
                    // undefined_object: the server has no such parameter.
                    Some("42704") => ClusterError::UnknownSetting {
                        name: name.clone(),
                        detail: e.to_string(),
                    },
                    _ => node_err_sql(primary, e),
                })?
                .get(0);
            if !same_setting(&current, value) {
                log.step(&format!("set {name} = '{value}' on `{}`", primary.name));
                alter_system(&client, primary, name, value).await?;
                changed = true;
            }
        }
        let user = &self.spec.replication.user;
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[user])
            .await
            .map_err(|e| node_err_sql(primary, e))?
            .is_some();
        if !exists {
            log.step(&format!("create role `{user}` (LOGIN REPLICATION)"));
            client
                // A SCRAM verifier, not the password: statement text can end up in the server log
                // (log_statement) and in client logs.
                .batch_execute(&format!(
                    "CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}",
                    quote_ident(user),
                    quote_literal(&postgres_protocol::password::scram_sha_256(
                        self.replication_password.as_bytes()
                    ))
                ))
                .await
                .map_err(|e| node_err_sql(primary, e))?;
        }
        // The superuser too: `status` and `lag` read each node over a replication session as
        // the superuser, which from the host reaches a container over TCP (locally, the socket).
        let hba_lines: Vec<String> = self
            .runtime
            .replication_clients(&self.spec.nodes)
            .await?
            .iter()
            .map(|client| {
                // Docker's network is this machine's bridge: its clients stay `host` (left for
                // a later change: the host's own sessions arrive there from the gateway).
                let tls = self.spec.tls_on() && matches!(self.runtime, Runtime::Local(_));
                format!(
                    "{} replication {user},postgres {client} scram-sha-256",
                    runtime::hba_connection_type(tls, client)
                )
            })
            .collect();
        let hba_path = self.runtime.data_dir(primary).join("pg_hba.conf");
        let hba = std::fs::read_to_string(&hba_path)
            .map_err(|e| ClusterError::io(format!("read `{}`", hba_path.display()), e))?;
        let missing: Vec<&String> = hba_lines
            .iter()
            .filter(|line| {
                !hba.lines()
                    .any(|l| l.split_whitespace().eq(line.split_whitespace()))
            })
            .collect();
        if !missing.is_empty() {
            let mut text = hba.clone();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            for line in missing {
                log.step(&format!("add `{line}` to pg_hba.conf"));
                text.push_str(&format!("# added by pgrepl up\n{line}\n"));
            }
            std::fs::write(&hba_path, text)
                .map_err(|e| ClusterError::io(format!("write `{}`", hba_path.display()), e))?;
            changed = true;
        }
        if changed {
            let before = conf_load_time(&client, primary).await?;
            reload(&client, primary).await?;
            // Reload is asynchronous: pending_restart is known once this session has re-read
            // the files, which shows as pg_conf_load_time() moving past its old value.
            wait_until(
                Duration::from_secs(10),
                "the primary to reload its settings",
                || async { Ok(conf_load_time(&client, primary).await? != before) },
            )
            .await?;
            let pending: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_settings WHERE pending_restart",
                    &[],
                )
                .await
                .map_err(|e| node_err_sql(primary, e))?
                .get(0);
            if pending > 0 {
                drop(client);
                log.step(&format!(
                    "restart `{}` for settings that need it",
                    primary.name
                ));
                self.runtime.stop(primary, true).await?;
                self.runtime.start(primary).await?;
            }
        }
        Ok(())
    }

    /// One native base backup pass into every standby that has no data yet.
    async fn clone_standbys(
        &self,
        primary: &NodeSpec,
        standbys: &[&NodeSpec],
        cancel: &tokio_util::sync::CancellationToken,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        let names: Vec<&str> = standbys.iter().map(|s| s.name.as_str()).collect();
        log.step(&format!(
            "base backup of `{}` into {} (one pass)",
            primary.name,
            names.join(" and ")
        ));
        let connect = self.replication_connect(primary);
        let targets = standbys
            .iter()
            .map(|s| BackupTarget {
                dir: self.runtime.data_dir(s),
                application_name: Some(s.name.clone()),
            })
            .collect();
        let options = self.standby_backup_options(primary, targets, "pgrepl up".into());
        let summary = backup::base_backup(
            &connect,
            &options,
            Arc::new(backup::NoProgress),
            cancel.clone(),
        )
        .await?;
        log.step(&format!(
            "copied {} files ({} MiB) into each standby, manifest verified",
            summary.files,
            summary.bytes / (1 << 20)
        ));
        Ok(())
    }

    /// `synchronous_commit` and `synchronous_standby_names`, then waits until
    /// pg_stat_replication shows the intended sync states.
    pub(super) async fn apply_sync_policy(
        &self,
        spec: &ClusterSpec,
        primary_sql: &Client,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        let primary = spec.primary();
        let policy = &spec.sync.policy;
        let names = policy.to_string();
        let wanted = [
            ("synchronous_commit", spec.sync.synchronous_commit.clone()),
            ("synchronous_standby_names", names.clone()),
        ];
        let mut changed = false;
        for (setting, value) in &wanted {
            let current: String = primary_sql
                .query_one("SELECT current_setting($1)", &[setting])
                .await
                .map_err(|e| node_err_sql(primary, e))?
                .get(0);
            // The names compare as policies: `a, b` is `FIRST 1 (a, b)`.
            let in_force = match *setting {
                "synchronous_standby_names" => current.parse::<SyncPolicy>().as_ref() == Ok(policy),
                _ => &current == value,
            };
            if !in_force {
                log.step(&format!("set {setting} = '{value}'"));
                alter_system(primary_sql, primary, setting, value).await?;
                changed = true;
            }
        }
        if changed {
            reload(primary_sql, primary).await?;
        }
        let expected = expected_sync_states(spec);
        wait_until(
            Duration::from_secs(30),
            "the sync states of the policy",
            || async {
                let states = streaming_standbys(primary_sql).await?;
                Ok(expected
                    .iter()
                    .all(|(name, state)| states.iter().any(|(n, s)| n == name && s == state)))
            },
        )
        .await?;
        let described: Vec<String> = expected.iter().map(|(n, s)| format!("{n} {s}")).collect();
        log.step(&format!("sync policy {names}: {}", described.join(", ")));
        Ok(())
    }

    /// Waits until every standby replayed what `primary` wrote so far, then checks that each
    /// holds row `id` of `table`. Replay is what is waited for, not the row: a standby that
    /// applies late (`synchronous_commit = on` waits for a flush only) may not have the table
    /// yet, and an older table of that name (an earlier drill's) must not answer for this one.
    pub(super) async fn row_replayed(
        &self,
        standbys: &[&NodeSpec],
        primary: &NodeSpec,
        primary_sql: &Client,
        table: &str,
        id: i64,
    ) -> Result<(), ClusterError> {
        let text: String = primary_sql
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| node_err_sql(primary, e))?
            .get(0);
        let written: crate::lsn::Lsn = text.parse().map_err(|_| ClusterError::NotAnLsn {
            node: primary.name.clone(),
            text,
        })?;
        for standby in standbys {
            let client = self.sql(standby).await?;
            wait_until(
                Duration::from_secs(30),
                &format!("`{}` to replay up to {written}", standby.name),
                || async {
                    let replayed = replay_lsn(&client, standby).await?;
                    Ok(replayed.is_some_and(|l| l >= written))
                },
            )
            .await?;
            let found = client
                .query_opt(&format!("SELECT 1 FROM {table} WHERE id = $1"), &[&id])
                .await
                .map_err(|e| node_err_sql(standby, e))?;
            if found.is_none() {
                return Err(CheckFailed::RowMissing {
                    table: table.to_owned(),
                    id,
                    node: standby.name.clone(),
                    replayed: written,
                }
                .into());
            }
        }
        Ok(())
    }

    /// The recipe's checks: a row written on the primary is read on every standby, and a write
    /// on a standby is refused as read-only.
    async fn check(
        &self,
        primary: &NodeSpec,
        primary_sql: &Client,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        primary_sql
            .batch_execute("CREATE TABLE IF NOT EXISTS pgrepl_check(id bigint PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now())")
            .await
            .map_err(|e| node_err_sql(primary, e))?;
        let id: i64 = primary_sql
            .query_one("INSERT INTO pgrepl_check(id) SELECT coalesce(max(id), 0) + 1 FROM pgrepl_check RETURNING id", &[])
            .await
            .map_err(|e| node_err_sql(primary, e))?
            .get(0);
        let standbys: Vec<&NodeSpec> = self.spec.standbys().collect();
        self.row_replayed(&standbys, primary, primary_sql, "pgrepl_check", id)
            .await?;
        for standby in standbys {
            let client = self.sql(standby).await?;
            refuses_writes(&client, standby, "INSERT INTO pgrepl_check(id) VALUES (-1)").await?;
        }
        log.step(&format!(
            "check: row {id} written on `{}` is on every standby; standbys refuse writes",
            primary.name
        ));
        Ok(())
    }
}

/// What pg_stat_replication.sync_state should say for each standby under `spec`'s policy when
/// all of them stream.
pub fn expected_sync_states(spec: &ClusterSpec) -> Vec<(String, String)> {
    let policy = &spec.sync.policy;
    let quorum = policy.method == SyncMethod::Quorum;
    spec.standbys()
        .map(|s| {
            let state = match policy.names.iter().position(|n| n == &s.name) {
                None => "async",
                Some(_) if quorum => "quorum",
                Some(rank) if rank < policy.num as usize => "sync",
                Some(_) => "potential",
            };
            (s.name.clone(), state.to_owned())
        })
        .collect()
}

/// Settings compare loosely: `on`/`true`, and units the server normalises.
fn same_setting(current: &str, wanted: &str) -> bool {
    let norm = |s: &str| match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => "on".to_owned(),
        "false" | "no" | "0" => "off".to_owned(),
        other => other.to_owned(),
    };
    norm(current) == norm(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_states_follow_the_policy() {
        let mut spec = ClusterSpec::default();
        let states = expected_sync_states(&spec);
        assert_eq!(
            states,
            vec![
                ("pg_slave".into(), "sync".into()),
                ("pg_asyncslave".into(), "potential".into())
            ]
        );
        spec.sync.policy.method = SyncMethod::Quorum;
        assert!(expected_sync_states(&spec)
            .iter()
            .all(|(_, s)| s == "quorum"));
        spec.sync.policy.names = vec!["pg_asyncslave".into()];
        assert_eq!(
            expected_sync_states(&spec)[0],
            ("pg_slave".into(), "async".into())
        );
    }

    #[test]
    fn settings_compare_like_the_server_prints_them() {
        assert!(same_setting("on", "true"));
        assert!(same_setting("replica", "replica"));
        assert!(!same_setting("10", "4"));
    }
}
