//! The SQL each cluster step sends through pgrepl's own session: settings (ALTER SYSTEM, reload,
//! when the config was re-read), the streaming standbys, the read-only check, and the error
//! that names the node.

use tokio_postgres::Client;

use super::check_failed::CheckFailed;
use super::spec::NodeSpec;
use super::ClusterError;
use crate::conn::ConnectionError;
use crate::proto::command::{quote_ident, quote_literal};

/// Checks that `standby` refuses the write `insert` as a read-only transaction (SQLSTATE 25006).
pub(crate) async fn refuses_writes(
    client: &Client,
    standby: &NodeSpec,
    insert: &str,
) -> Result<(), ClusterError> {
    match client.batch_execute(insert).await {
        Err(e) if e.code().map(|c| c.code()) == Some("25006") => Ok(()),
        Err(error) => Err(CheckFailed::WriteFailed {
            node: standby.name.clone(),
            error,
        }
        .into()),
        Ok(()) => Err(CheckFailed::AcceptedWrite {
            node: standby.name.clone(),
        }
        .into()),
    }
}

/// One ALTER SYSTEM; a reload (or restart) makes it count. Sent alone because ALTER SYSTEM
/// cannot run inside the implicit transaction of a multi-statement query.
pub(crate) async fn alter_system(
    client: &Client,
    node: &NodeSpec,
    setting: &str,
    value: &str,
) -> Result<(), ClusterError> {
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET {} = {}",
            quote_ident(setting),
            quote_literal(value)
        ))
        .await
        .map_err(|e| node_err_sql(node, e))
}

/// When this session last read the configuration files, as text (compared, never parsed).
pub(crate) async fn conf_load_time(
    client: &Client,
    node: &NodeSpec,
) -> Result<String, ClusterError> {
    Ok(client
        .query_one("SELECT pg_conf_load_time()::text", &[])
        .await
        .map_err(|e| node_err_sql(node, e))?
        .get(0))
}

/// Where the standby `node` has replayed WAL to (`None`: not in recovery).
pub(crate) async fn replay_lsn(
    client: &Client,
    node: &NodeSpec,
) -> Result<Option<crate::lsn::Lsn>, ClusterError> {
    let replayed: Option<String> = client
        .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
        .await
        .map_err(|e| node_err_sql(node, e))?
        .get(0);
    Ok(replayed.and_then(|text| text.parse().ok()))
}

pub(crate) async fn reload(client: &Client, node: &NodeSpec) -> Result<(), ClusterError> {
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(|e| node_err_sql(node, e))
}

pub(crate) fn node_err_sql(node: &NodeSpec, error: tokio_postgres::Error) -> ClusterError {
    ClusterError::Node {
        node: node.name.clone(),
        source: Box::new(ConnectionError::Sql(error)),
    }
}

/// The server's clock as text, for [`streams_since`].
pub(crate) async fn now(client: &Client, node: &NodeSpec) -> Result<String, ClusterError> {
    Ok(client
        .query_one("SELECT now()::text", &[])
        .await
        .map_err(|e| node_err_sql(node, e))?
        .get(0))
}

/// `standby` streams over a connection made after `since` (a [`now`] of the same server).
pub(crate) async fn streams_since(
    client: &Client,
    node: &NodeSpec,
    standby: &str,
    since: &str,
) -> Result<bool, ClusterError> {
    Ok(client
        .query_one(
            "SELECT count(*) > 0 FROM pg_stat_replication WHERE application_name = $1 \
             AND state = 'streaming' AND backend_start > $2::text::timestamptz",
            &[&standby, &since],
        )
        .await
        .map_err(|e| node_err_sql(node, e))?
        .get(0))
}

/// `(application_name, sync_state)` of every streaming walsender.
pub(crate) async fn streaming_standbys(
    client: &Client,
) -> Result<Vec<(String, String)>, ClusterError> {
    let rows = client
        .query("SELECT application_name, sync_state FROM pg_stat_replication WHERE state = 'streaming'", &[])
        .await
        .map_err(|e| ClusterError::Node { node: "primary".into(), source: Box::new(ConnectionError::Sql(e)) })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
