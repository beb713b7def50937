//! Talking to the nodes: per node, a replication session for `IDENTIFY_SYSTEM` and an SQL
//! session for the lag views, both at once and each bounded by the node's time limit; then,
//! with `--probe`, the heartbeat.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::analysis::{Identity, Observation, ProbeOutcome};
use super::sql::{self, NodeFacts};
use super::{LagError, Node};
use crate::conn::{sql as sessions, ConnectOptions, Connection, ConnectionError};

/// How often a standby is asked whether the heartbeat has arrived: the probe's resolution.
const PROBE_POLL: Duration = Duration::from_millis(1);

/// One node's answers, and its SQL session for the probe.
pub(super) struct Visit {
    pub observation: Observation,
    pub client: Option<Client>,
}

/// Reads everything about `node`, taking at most `limit` for each of the two sessions.
pub(super) async fn visit(node: &Node, limit: Duration) -> Visit {
    let mut session = node.connect.clone();
    session.application_name = Some(sql::SESSION_APPLICATION_NAME.to_owned());
    let (identity, sql) = tokio::join!(
        bounded(limit, identify(&session)),
        bounded(limit, query(&session)),
    );
    let (facts, client) = match sql {
        Ok((facts, client)) => (Ok(facts), Some(client)),
        Err(e) => (Err(describe(&e)), None),
    };
    if let Err(e) = &facts {
        tracing::info!(node = %node.name, "node did not answer: {e}");
    }
    Visit {
        observation: Observation {
            name: node.name.clone(),
            conninfo: node.connect.redacted(),
            identity: identity.map_err(|e| describe(&e)),
            facts,
            probe: None,
        },
        client,
    }
}

/// The error with its causes, for the report. A cause is added only when the text does not say
/// it yet, since most errors here already include theirs. tokio-postgres's own text for a failure
/// that is not the server's ("error connecting to server") needs its cause, which
/// `ConnectionError::Sql` does not expose as a source.
pub(super) fn describe(error: &LagError) -> String {
    match error {
        LagError::Connection(ConnectionError::Sql(e)) if e.as_db_error().is_none() => {
            with_causes(e)
        }
        other => with_causes(other),
    }
}

fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = e.source();
    }
    text
}

async fn bounded<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, LagError>>,
) -> Result<T, LagError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(LagError::Timeout(limit)))
}

async fn identify(options: &ConnectOptions) -> Result<Identity, LagError> {
    let mut conn = Connection::connect(options).await?;
    let system = conn.identify_system().await?;
    let server_version = conn.parameter("server_version").map(str::to_owned);
    conn.close().await;
    Ok(Identity {
        system_id: system.system_id,
        timeline: system.timeline,
        lsn: system.xlogpos,
        server_version,
    })
}

async fn query(options: &ConnectOptions) -> Result<(NodeFacts, Client), LagError> {
    let client = sessions::connect(options, sql::SESSION_APPLICATION_NAME).await?;
    let answer = client
        .simple_query(&sql::round_batch())
        .await
        .map_err(ConnectionError::Sql)?;
    Ok((NodeFacts::parse(&answer)?, client))
}

/// Writes a heartbeat on the primary and waits up to `wait` for each standby to see it. The
/// delay runs from sending the write to the first standby query that returns it, both on
/// pgrepl's clock, so the servers' clocks do not matter; it includes the primary's commit
/// (and so any synchronous replication wait).
pub(super) async fn probe(
    primary: &Client,
    standbys: &[(usize, &Client)],
    wait: Duration,
) -> Result<Vec<(usize, ProbeOutcome)>, LagError> {
    primary
        .batch_execute(sql::CREATE_HEARTBEAT)
        .await
        .map_err(ConnectionError::Sql)?;
    let write = primary
        .prepare(sql::WRITE_HEARTBEAT)
        .await
        .map_err(ConnectionError::Sql)?;
    let token = heartbeat_token();
    let sent = Instant::now();
    primary
        .execute(&write, &[&token])
        .await
        .map_err(ConnectionError::Sql)?;
    let token = token.as_str();
    let outcomes = join_all(standbys.iter().map(|&(i, client)| async move {
        (i, wait_for_heartbeat(client, token, sent, wait).await)
    }))
    .await;
    Ok(outcomes)
}

async fn wait_for_heartbeat(
    client: &Client,
    token: &str,
    sent: Instant,
    wait: Duration,
) -> ProbeOutcome {
    loop {
        match client.simple_query(sql::READ_HEARTBEAT).await {
            Ok(messages) => {
                let seen = messages.iter().any(
                    |m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some(token)),
                );
                if seen {
                    return ProbeOutcome::Arrived {
                        ms: sent.elapsed().as_secs_f64() * 1000.0,
                    };
                }
            }
            // The table itself may still be on its way to a standby that never saw a probe.
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {}
            Err(e) => return ProbeOutcome::Failed(describe(&ConnectionError::Sql(e).into())),
        }
        if sent.elapsed() >= wait {
            return ProbeOutcome::TimedOut;
        }
        tokio::time::sleep(PROBE_POLL).await;
    }
}

/// Unique per probe, so that a heartbeat from an earlier or concurrent run is never mistaken for
/// this one.
fn heartbeat_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}
