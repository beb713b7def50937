//! Whether a server still has the WAL from a position: START_REPLICATION there and see what
//! comes first. A walsender sends CopyBothResponse before it opens the first segment, so a
//! recycled segment shows as an ErrorResponse right after ("requested WAL segment … has
//! already been removed", SQLSTATE 58P01: `walsender.c`, `XLogRead`), and WAL that is there
//! as XLogData. The session is spent afterwards: the caller drops it.

use std::time::Duration;

use super::ReplicationError;
use crate::conn::{Connection, ConnectionError};
use crate::ids::TimelineId;
use crate::lsn::Lsn;
use crate::proto::backend::BackendMessage;
use crate::proto::command::ReplicationCommand;
use crate::proto::replication::WalSenderMessage;

/// The walsender's code for a segment it no longer has.
const UNDEFINED_FILE: &str = "58P01";

/// `false` when the server no longer has the WAL at `start` on `timeline`. A server that sends
/// neither WAL nor an error within `wait` (nothing written past `start` yet) has it.
pub async fn wal_available(
    conn: &mut Connection,
    start: Lsn,
    timeline: TimelineId,
    wait: Duration,
) -> Result<bool, ReplicationError> {
    let command = ReplicationCommand::StartPhysical {
        slot: None,
        start,
        timeline,
    };
    conn.send_query(&command.render())?;
    conn.flush().await?;
    let answer = async {
        loop {
            match conn.read_message().await? {
                BackendMessage::CopyBothResponse => {}
                BackendMessage::CopyData(payload) => {
                    if let WalSenderMessage::XLogData(_) = WalSenderMessage::parse(payload)? {
                        return Ok(true);
                    }
                }
                BackendMessage::ErrorResponse(e) if e.code == UNDEFINED_FILE => return Ok(false),
                BackendMessage::ErrorResponse(e) => return Err(ConnectionError::Server(e).into()),
                // A historic timeline that ends at `start`: what follows is on the next one.
                BackendMessage::RowDescription { .. } => return Ok(true),
                other => {
                    return Err(
                        ConnectionError::unexpected("START_REPLICATION's answer", &other).into(),
                    )
                }
            }
        }
    };
    match tokio::time::timeout(wait, answer).await {
        Ok(result) => result,
        Err(_) => Ok(true),
    }
}
