//! `pgrepl receivewal`: archive a server's WAL into a directory, as pg_receivewal does.
//!
//! The directory ends up holding what pg_receivewal would write there: complete segments under
//! their PostgreSQL names, the open one as `<segment>.partial`, and a history file for every
//! timeline after the first. Complete segments are byte-identical to pg_receivewal's, because
//! both are the server's bytes written from offset 0 of full-size files.
//!
//! Where to start follows pg_receivewal's `FindStreamingStart` ([`super::archive_dir`]): after
//! the highest complete segment, or at the start of the highest `.partial` (which is written
//! again from its beginning); in an empty directory at the slot's `restart_lsn`
//! (READ_REPLICATION_SLOT, PostgreSQL 15+) or else the server's current position, rounded down
//! to a segment start. The same happens each time the server comes back after going away.
//!
//! The flush position is reported only with a slot, and only after fsync (a new segment is
//! preallocated and synced with its directory when opened, see [`super::wal_sink`]): without a
//! slot it stays 0, so this client can never become a synchronous standby by accident (a `*` in
//! `synchronous_standby_names` matches it too).
//!
//! Not here: the streaming itself ([`super::stream_wal`]) and compression
//! ([`super::wal_compress`]).

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::archive_dir::{find_streaming_start, superseded_partials};
use super::wal_compress::WalCompression;
use super::wal_sink::{SegmentNaming, SegmentWriter};
use super::{stream_wal, ReplicationError, StreamEnd, StreamOptions};
use crate::conn::{ConnectOptions, Connection, ConnectionError};
use crate::ids::TimelineId;
use crate::lsn::{history_file_name, Lsn};

/// pg_receivewal's default `--status-interval`.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// The first major with READ_REPLICATION_SLOT.
const READ_SLOT_MAJOR: u32 = 15;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("`{0}` is not a directory; create it first")]
    NotADirectory(PathBuf),
    #[error("replication slot `{0}` does not exist; create it with --create-slot or name an existing one")]
    SlotMissing(String),
    #[error("the server is now system {now}, not {was} as before it went away; archive it into another directory")]
    SystemChanged { was: String, now: String },
    #[error("cancelled before streaming started; nothing was written")]
    Cancelled,
}

impl ReceiveError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// The server's or the connection's error, when that is what stopped the run.
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        match self {
            Self::Connection(e) | Self::Replication(ReplicationError::Connection(e)) => Some(e),
            _ => None,
        }
    }
}

/// What to receive and how.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The archive directory; it must exist.
    pub dir: PathBuf,
    pub slot: Option<String>,
    /// Create `slot` (permanent, WAL reserved) before streaming.
    pub create_slot: bool,
    /// Stop once WAL up to here has been received (pg_receivewal `-E`).
    pub end: Option<Lsn>,
    /// fsync segments, history files and the directory (off: pg_receivewal `--no-sync`).
    pub sync: bool,
    pub status_interval: Duration,
    /// Compress each segment once complete (pg_receivewal `--compress`).
    pub compression: Option<WalCompression>,
    /// Connect again when the server goes away (off: pg_receivewal `--no-loop`).
    pub reconnect: bool,
}

impl ReceiveOptions {
    pub fn new(dir: PathBuf) -> ReceiveOptions {
        ReceiveOptions {
            dir,
            slot: None,
            create_slot: false,
            end: None,
            sync: true,
            status_interval: DEFAULT_STATUS_INTERVAL,
            compression: None,
            reconnect: true,
        }
    }
}

/// Where streaming starts, and why there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartSource {
    /// After the highest complete segment in the directory.
    CompleteSegment,
    /// At the beginning of the highest `.partial` segment in the directory.
    PartialSegment,
    /// The slot's `restart_lsn`.
    Slot,
    /// The server's current WAL position.
    Server,
}

/// Why a run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoppedBy {
    /// WAL up to `-E` was received.
    EndPosition,
    /// Ctrl-C or SIGTERM.
    Cancelled,
    /// The server ended the stream (shutdown, or its walsender exited), with reconnection off.
    ServerShutdown,
}

/// A run that ended without an error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReceiveSummary {
    pub system_identifier: String,
    pub start_lsn: Lsn,
    pub start_timeline: TimelineId,
    pub start_source: StartSource,
    /// Everything before this was received and written (as of the last session that ended
    /// without an error).
    pub end_lsn: Lsn,
    pub stopped_by: StoppedBy,
    /// Bytes streamed, over every session (a resumed partial segment counts again).
    pub bytes: u64,
    /// How many times the server was connected to again after it went away.
    pub reconnects: u32,
    pub elapsed_ms: u128,
}

/// What happened on the way, for the caller to tell the user.
#[derive(Debug, Clone)]
pub enum ReceiveEvent {
    /// The server went away or could not be reached; another attempt follows after `retry_in`.
    Disconnected { reason: String, retry_in: Duration },
    /// Connected again, resuming at `start` (found in the directory, or the slot's position).
    Resumed {
        start: Lsn,
        timeline: TimelineId,
        source: StartSource,
    },
}

/// Streams WAL from the server into `options.dir` until `-E` or cancellation; when the server
/// goes away, connects again (with `options.reconnect`) after a growing pause and resumes from
/// the directory, as pg_receivewal does. The first connection's failures and those that retrying
/// cannot cure (authentication, a missing slot, local I/O) end the run.
pub async fn receive_wal(
    connect: &ConnectOptions,
    options: &ReceiveOptions,
    cancel: &CancellationToken,
    events: &(dyn Fn(&ReceiveEvent) + Send + Sync),
) -> Result<ReceiveSummary, ReceiveError> {
    if !options.dir.is_dir() {
        return Err(ReceiveError::NotADirectory(options.dir.clone()));
    }
    let started = Instant::now();
    // What the run did so far: set by the first session that connects, extended by each later.
    let mut total: Option<ReceiveSummary> = None;
    let mut delay = Duration::ZERO;
    loop {
        let attempt = Instant::now();
        let session = receive_session(connect, options, cancel, &mut total, events).await;
        let reason = match session {
            Ok(true) => {
                let summary = total.take().expect("a session that streamed records it");
                if summary.stopped_by != StoppedBy::ServerShutdown || !options.reconnect {
                    return Ok(summary.finished(started));
                }
                total = Some(summary);
                "the server ended the stream".to_owned()
            }
            // Cancelled before streaming started.
            Ok(false) => {
                return match total {
                    Some(summary) => Ok(summary.cancelled().finished(started)),
                    None => Err(ReceiveError::Cancelled),
                }
            }
            // Once connected, a lost server is waited for; the first connection must succeed.
            Err(e) if options.reconnect && total.is_some() && e.is_transient() => error_chain(&e),
            Err(e) => return Err(e),
        };
        delay = next_delay(delay, attempt.elapsed());
        events(&ReceiveEvent::Disconnected {
            reason,
            retry_in: delay,
        });
        tokio::select! {
            _ = cancel.cancelled() => {
                let summary = total.take().expect("only a run that connected retries");
                return Ok(summary.cancelled().finished(started));
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The first pause after losing the server, and the longest.
const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// The pause before the next attempt: doubled after a quick failure, back to the minimum after a
/// session that lasted (the server was there a while, so this is a new outage).
fn next_delay(previous: Duration, session_lasted: Duration) -> Duration {
    if session_lasted >= RECONNECT_MAX {
        RECONNECT_MIN
    } else {
        (previous * 2).clamp(RECONNECT_MIN, RECONNECT_MAX)
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One connection's worth of streaming, recorded into `total`; `false` when cancelled before
/// streaming started. A later session must find the same server as the first.
async fn receive_session(
    connect: &ConnectOptions,
    options: &ReceiveOptions,
    cancel: &CancellationToken,
    total: &mut Option<ReceiveSummary>,
    events: &(dyn Fn(&ReceiveEvent) + Send + Sync),
) -> Result<bool, ReceiveError> {
    let setup = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(false),
        setup = set_up_session(connect, options, total.is_none()) => setup?,
    };
    let SessionSetup {
        mut conn,
        system,
        segment_size,
        timeline,
        start,
        start_source,
    } = setup;
    let system_identifier = system.system_id.to_string();
    match total {
        Some(earlier) => {
            if system_identifier != earlier.system_identifier {
                return Err(ReceiveError::SystemChanged {
                    was: earlier.system_identifier.clone(),
                    now: system_identifier,
                });
            }
            earlier.reconnects += 1;
            events(&ReceiveEvent::Resumed {
                start,
                timeline,
                source: start_source,
            });
        }
        None => {
            *total = Some(ReceiveSummary {
                system_identifier,
                start_lsn: start,
                start_timeline: timeline,
                start_source,
                end_lsn: start,
                stopped_by: StoppedBy::ServerShutdown,
                bytes: 0,
                reconnects: 0,
                elapsed_ms: 0,
            })
        }
    }
    tracing::info!(%start, %timeline, source = ?start_source, "starting WAL streaming");

    let mut writer = SegmentWriter::new(
        vec![options.dir.clone()],
        segment_size,
        SegmentNaming::Archive,
        options.sync,
    )
    .map_err(ReceiveError::io("prepare the archive directory"))?
    .with_compression(options.compression);
    // A run that starts on a later timeline writes that timeline's history first, as
    // pg_receivewal does: restoring from the archive needs it.
    if timeline > TimelineId::new(1) && !options.dir.join(history_file_name(timeline)).exists() {
        let (_, history) = conn.timeline_history(timeline).await?;
        writer
            .write_history(timeline, &history)
            .map_err(ReceiveError::io("write the timeline history file"))?;
    }

    let stream_options = StreamOptions {
        slot: options.slot.clone(),
        start,
        timeline,
        status_interval: options.status_interval,
        report_flush: options.slot.is_some(),
    };
    // Kept alive for the whole stream: a dropped sender would read as "no stop position".
    let (_stop_sender, stop_at) = watch::channel(options.end);
    let end = stream_wal(&mut conn, &stream_options, &mut writer, stop_at, cancel).await?;
    writer
        .finish()
        .map_err(ReceiveError::io("flush the last segment"))?;
    if !matches!(end, StreamEnd::ServerShutdown { .. }) {
        conn.close().await;
    }
    let (end_lsn, stopped_by) = match end {
        StreamEnd::ReachedStop { position } => (position, StoppedBy::EndPosition),
        StreamEnd::Cancelled { position } => (position, StoppedBy::Cancelled),
        StreamEnd::ServerShutdown { position } => (position, StoppedBy::ServerShutdown),
    };
    let summary = total.as_mut().expect("recorded above");
    summary.end_lsn = end_lsn;
    summary.stopped_by = stopped_by;
    summary.bytes += end_lsn.saturating_sub(start);
    Ok(true)
}

/// A connected session and where it will start streaming.
struct SessionSetup {
    conn: Connection,
    system: crate::conn::IdentifySystem,
    segment_size: u64,
    timeline: TimelineId,
    start: Lsn,
    start_source: StartSource,
}

/// Connects, creates the slot on the first session if asked, and finds where to start: from the
/// directory, else the slot's `restart_lsn`, else the server's position.
async fn set_up_session(
    connect: &ConnectOptions,
    options: &ReceiveOptions,
    first: bool,
) -> Result<SessionSetup, ReceiveError> {
    let mut conn = Connection::connect(connect).await?;
    let system = conn.identify_system().await?;
    let segment_size = conn.wal_segment_size().await?;
    let major = conn.server_major().unwrap_or(0);
    if let (Some(slot), true, true) = (&options.slot, options.create_slot, first) {
        conn.create_physical_slot(slot, false).await?;
        tracing::info!(slot, "created replication slot");
    }

    let read_dir = || ReceiveError::io(format!("read `{}`", options.dir.display()));
    for stale in superseded_partials(&options.dir, segment_size).map_err(read_dir())? {
        tracing::info!(file = %stale.display(), "removing a partial segment that is also complete");
        std::fs::remove_file(&stale)
            .map_err(ReceiveError::io(format!("remove `{}`", stale.display())))?;
    }
    let found = find_streaming_start(&options.dir, segment_size).map_err(read_dir())?;
    let (timeline, start, start_source) = match found {
        Some(found) if found.partial => (found.timeline, found.start, StartSource::PartialSegment),
        Some(found) => (found.timeline, found.start, StartSource::CompleteSegment),
        None => {
            let restart = match &options.slot {
                Some(slot) if major >= READ_SLOT_MAJOR => {
                    let info = conn
                        .read_slot(slot)
                        .await?
                        .ok_or_else(|| ReceiveError::SlotMissing(slot.clone()))?;
                    info.restart_lsn.zip(info.restart_timeline)
                }
                _ => None,
            };
            match restart {
                Some((lsn, timeline)) => (timeline, lsn, StartSource::Slot),
                None => (system.timeline, system.xlogpos, StartSource::Server),
            }
        }
    };
    Ok(SessionSetup {
        conn,
        system,
        segment_size,
        timeline,
        start: start.segment_start(segment_size),
        start_source,
    })
}

impl ReceiveSummary {
    fn cancelled(self) -> ReceiveSummary {
        ReceiveSummary {
            stopped_by: StoppedBy::Cancelled,
            ..self
        }
    }

    fn finished(self, started: Instant) -> ReceiveSummary {
        ReceiveSummary {
            elapsed_ms: started.elapsed().as_millis(),
            ..self
        }
    }
}

impl ReceiveError {
    /// Whether connecting again may cure it: the server or the network went away, or the server
    /// is starting, stopping or full. Not: credentials, a missing slot, WAL the server no longer
    /// has, anything the stream itself got wrong, or a local write failure.
    fn is_transient(&self) -> bool {
        let Some(error) = self.connection_error() else {
            return false;
        };
        match error {
            ConnectionError::Io { .. } | ConnectionError::Closed | ConnectionError::Timeout(..) => {
                true
            }
            ConnectionError::Server(_) | ConnectionError::Sql(_) => {
                error.sqlstate().is_some_and(transient_sqlstate)
            }
            ConnectionError::Protocol(_)
            | ConnectionError::Auth(_)
            | ConnectionError::Tls(_)
            | ConnectionError::Unexpected { .. } => false,
        }
    }
}

/// Class 08 (connection exception), 57P01-57P03 (shutdown, crash, cannot connect now), 53300
/// (too many connections) and 55006 (the slot is still held by the walsender of a connection
/// that has just died, until the server notices).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "55006")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_up_to_the_cap_and_resets_after_a_long_session() {
        let quick = Duration::from_millis(50);
        let mut delay = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..6 {
            delay = next_delay(delay, quick);
            seen.push(delay.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 10, 10]);
        assert_eq!(next_delay(delay, Duration::from_secs(60)), RECONNECT_MIN);
    }

    #[test]
    fn only_a_lost_or_busy_server_is_worth_another_attempt() {
        for code in ["08006", "57P01", "57P03", "53300", "55006"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        // Bad password, no such slot, WAL already removed, insufficient privilege.
        for code in ["28P01", "42704", "58P01", "42501"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        let closed =
            ReceiveError::Replication(ReplicationError::Connection(ConnectionError::Closed));
        assert!(closed.is_transient());
        let auth = ReceiveError::Connection(ConnectionError::Auth("password".into()));
        assert!(!auth.is_transient());
        assert!(!ReceiveError::SlotMissing("s".into()).is_transient());
        let disk = ReceiveError::Replication(ReplicationError::Io(io::Error::other("EIO")));
        assert!(!disk.is_transient());
    }
}
