//! Cluster-wide PostgreSQL settings (`pgrepl config`): checked against the server's own
//! `pg_settings` before anything changes, written with `ALTER SYSTEM` and a reload on every
//! node, and what each node runs with and still waits for a restart to take.
//!
//! Without agents the command applies them here ([`Cluster::apply_settings`]); with agents each
//! agent applies the record in etcd to its own server (`ha::agent::settings`), by the same
//! [`apply`].

pub mod catalog;
pub mod desired;
pub mod rolling;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio_postgres::Client;

pub use self::catalog::{Catalog, Definition, SettingError, AT_LEAST_THE_PRIMARYS};
pub use self::desired::{Change, Desired};
use super::spec::NodeSpec;
use super::sql_steps::{alter_system, conf_load_time, node_err_sql, reload};
use super::{wait_until, Cluster, ClusterError};
use crate::proto::command::quote_ident;

/// How long a reload may take to reach the session that asked for it.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What one server runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Running {
    /// `current_setting` of the names asked for, as the server shows them (`128MB`).
    pub values: BTreeMap<String, String>,
    /// Settings changed in the files that take effect only at the next restart.
    pub pending_restart: BTreeSet<String>,
}

/// Every setting the server knows, with its type, unit, range and context.
pub async fn catalog(client: &Client, node: &NodeSpec) -> Result<Catalog, ClusterError> {
    let rows = client
        .query(
            "SELECT name, vartype, unit, min_val, max_val, enumvals, context FROM pg_settings",
            &[],
        )
        .await
        .map_err(|e| node_err_sql(node, e))?;
    Ok(Catalog::new(rows.iter().map(|r| {
        Definition::from_row(
            r.get(0),
            r.get(1),
            r.get(2),
            (r.get(3), r.get(4)),
            r.get(5),
            r.get(6),
        )
    })))
}

/// The running value of each of `names` and every setting pending a restart.
pub async fn running(
    client: &Client,
    node: &NodeSpec,
    names: &[&str],
) -> Result<Running, ClusterError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let rows = client
        .query(
            "SELECT name, current_setting(name), pending_restart FROM pg_settings \
             WHERE name = ANY($1) OR pending_restart",
            &[&names],
        )
        .await
        .map_err(|e| node_err_sql(node, e))?;
    let mut running = Running::default();
    for row in rows {
        let name: String = row.get(0);
        if row.get::<_, bool>(2) {
            running.pending_restart.insert(name.clone());
        }
        if names.contains(&name) {
            running.values.insert(name, row.get(1));
        }
    }
    Ok(running)
}

/// Writes `desired` into the node's `postgresql.auto.conf` and reloads, returning once this
/// session has re-read the files (so `running` then shows what is pending a restart). A value
/// the server refuses stops here: `ALTER SYSTEM` checks each before it writes anything.
pub async fn apply(
    client: &Client,
    node: &NodeSpec,
    desired: &Desired,
) -> Result<(), ClusterError> {
    let before = conf_load_time(client, node).await?;
    for (name, value) in &desired.settings {
        alter_system(client, node, name, value).await?;
    }
    for name in &desired.reset {
        client
            .batch_execute(&format!("ALTER SYSTEM RESET {}", quote_ident(name)))
            .await
            .map_err(|e| node_err_sql(node, e))?;
    }
    reload(client, node).await?;
    wait_until(RELOAD_WAIT, "the server to reload its settings", || async {
        Ok(conf_load_time(client, node).await? != before)
    })
    .await
}

/// Each change checked against `catalog`, names as the server spells them.
pub fn check(catalog: &Catalog, changes: &[Change]) -> Result<Vec<Change>, SettingError> {
    changes
        .iter()
        .map(|(name, value)| {
            let definition = match value {
                Some(value) => catalog.check(name, value)?,
                None => catalog.changeable(name)?,
            };
            Ok((
                definition.name.clone(),
                value.as_ref().map(|v| v.trim().to_owned()),
            ))
        })
        .collect()
}

impl Cluster {
    /// The catalog of `primary` (default: the recorded one).
    pub async fn settings_catalog(&self, primary: Option<&str>) -> Result<Catalog, ClusterError> {
        let spec = self.current_spec()?;
        let primary = match primary {
            Some(name) => self.node(name)?,
            None => spec.primary(),
        };
        catalog(&self.sql(primary).await?, primary).await
    }

    /// What each node runs with: `names`' values and what is pending a restart.
    pub async fn running_settings(
        &self,
        names: &[&str],
    ) -> Vec<(String, Result<Running, ClusterError>)> {
        let mut all = Vec::new();
        for node in &self.spec.nodes {
            let result = async { running(&self.sql(node).await?, node, names).await };
            all.push((node.name.clone(), result.await));
        }
        all
    }

    /// Applies `desired` to every node without agents, the primary first so that the standbys
    /// can be given `Desired::for_node` of what it runs; then records it in the state
    /// directory. A node that fails stops it: run it again (applying is idempotent).
    pub async fn apply_settings(&self, desired: &Desired) -> Result<(), ClusterError> {
        desired.save(&self.state_dir)?;
        let spec = self.current_spec()?;
        let primary = spec.primary();
        let client = self.sql(primary).await?;
        apply(&client, primary, desired).await?;
        let primary_runs = running(&client, primary, &AT_LEAST_THE_PRIMARYS)
            .await?
            .values;
        for node in spec.nodes.iter().filter(|n| n.name != primary.name) {
            let client = self.sql(node).await?;
            apply(&client, node, &desired.for_node(Some(&primary_runs))).await?;
        }
        Ok(())
    }
}
