//! `pgrepl receivewal`: archive a server's WAL into a directory, as pg_receivewal does.
//!
//! The directory ends up holding what pg_receivewal would write there: complete segments under
//! their PostgreSQL names, the open one as `<segment>.partial`, and a history file for every
//! timeline after the first. Complete segments are byte-identical to pg_receivewal's, because
//! both are the server's bytes written from offset 0 of full-size files.
//!
//! Where to start follows pg_receivewal's `FindStreamingStart`: after the highest complete
//! segment, or at the start of the highest `.partial` (which is written again from its
//! beginning); in an empty directory at the slot's `restart_lsn` (READ_REPLICATION_SLOT,
//! PostgreSQL 15+) or else the server's current position, rounded down to a segment start.
//!
//! The flush position is reported only with a slot, and only after fsync: without a slot it
//! stays 0, so this client can never become a synchronous standby by accident (a `*` in
//! `synchronous_standby_names` matches it too). Unlike pg_receivewal, it does not reconnect
//! when the server goes away: it stops, and a new run resumes from the directory.
//!
//! Not here: compression of the archived segments (pg_receivewal `--compress`), and the
//! streaming itself, which is [`super::stream_wal`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::wal_sink::{SegmentNaming, SegmentWriter};
use super::{stream_wal, ReplicationError, StreamEnd, StreamOptions};
use crate::conn::{ConnectOptions, Connection, ConnectionError};
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
    /// The server ended the stream (shutdown, or its walsender exited).
    ServerShutdown,
}

/// A run that ended without an error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReceiveSummary {
    pub system_identifier: String,
    pub start_lsn: Lsn,
    pub start_timeline: u32,
    pub start_source: StartSource,
    /// Everything before this was received and written.
    pub end_lsn: Lsn,
    pub stopped_by: StoppedBy,
    pub bytes: u64,
    pub elapsed_ms: u128,
}

/// Streams WAL from the server into `options.dir` until `-E`, cancellation or the server's end.
pub async fn receive_wal(
    connect: &ConnectOptions,
    options: &ReceiveOptions,
    cancel: &CancellationToken,
) -> Result<ReceiveSummary, ReceiveError> {
    if !options.dir.is_dir() {
        return Err(ReceiveError::NotADirectory(options.dir.clone()));
    }
    let started = Instant::now();
    let mut conn = Connection::connect(connect).await?;
    let system = conn.identify_system().await?;
    let segment_size = conn.wal_segment_size().await?;
    let major = conn.server_major().unwrap_or(0);
    if let Some(slot) = &options.slot {
        if options.create_slot {
            conn.create_physical_slot(slot, false).await?;
            tracing::info!(slot, "created replication slot");
        }
    }

    let found = find_streaming_start(&options.dir, segment_size).map_err(ReceiveError::io(
        format!("read `{}`", options.dir.display()),
    ))?;
    let (timeline, start, start_source) = match found {
        Some(found) => found,
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
    let start = start.segment_start(segment_size);
    tracing::info!(%start, timeline, source = ?start_source, "starting WAL streaming");

    let mut writer = SegmentWriter::new(
        vec![options.dir.clone()],
        segment_size,
        SegmentNaming::Archive,
        options.sync,
    )
    .map_err(ReceiveError::io("prepare the archive directory"))?;
    // A run that starts on a later timeline writes that timeline's history first, as
    // pg_receivewal does: restoring from the archive needs it.
    if timeline > 1 && !options.dir.join(history_file_name(timeline)).exists() {
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
    Ok(ReceiveSummary {
        system_identifier: system.system_id.to_string(),
        start_lsn: start,
        start_timeline: timeline,
        start_source,
        end_lsn,
        stopped_by,
        bytes: end_lsn.saturating_sub(start),
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// One WAL segment file found in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FoundSegment {
    timeline: u32,
    segment: u64,
    partial: bool,
}

/// pg_receivewal's `FindStreamingStart`: the timeline and position to resume at, from the
/// highest segment in `dir`; `None` when it holds none. A complete segment of the wrong size is
/// skipped with a warning, as pg_receivewal does.
pub fn find_streaming_start(
    dir: &Path,
    segment_size: u64,
) -> io::Result<Option<(u32, Lsn, StartSource)>> {
    let mut best: Option<FoundSegment> = None;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(found) = name
            .to_str()
            .and_then(|n| parse_segment_name(n, segment_size))
        else {
            continue;
        };
        if !found.partial {
            let size = entry.metadata()?.len();
            if size != segment_size {
                tracing::warn!(
                    file = %entry.path().display(),
                    size,
                    "segment file has the wrong size, skipping it"
                );
                continue;
            }
        }
        // Same order as pg_receivewal: higher segment, then higher timeline, then a complete
        // file over a partial one of the same segment.
        let better = best.is_none_or(|b| {
            (found.segment, found.timeline, !found.partial) > (b.segment, b.timeline, !b.partial)
        });
        if better {
            best = Some(found);
        }
    }
    Ok(best.map(|b| {
        if b.partial {
            let start = Lsn::new(b.segment * segment_size);
            (b.timeline, start, StartSource::PartialSegment)
        } else {
            let start = Lsn::new((b.segment + 1) * segment_size);
            (b.timeline, start, StartSource::CompleteSegment)
        }
    }))
}

/// `TTTTTTTTXXXXXXXXYYYYYYYY` or the same with `.partial`; anything else is not ours.
fn parse_segment_name(name: &str, segment_size: u64) -> Option<FoundSegment> {
    let (stem, partial) = match name.strip_suffix(".partial") {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    if stem.len() != 24 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| u32::from_str_radix(&stem[range], 16).ok();
    let (timeline, log, seg) = (field(0..8)?, field(8..16)?, field(16..24)?);
    let per_log = 0x1_0000_0000 / segment_size;
    if u64::from(seg) >= per_log {
        return None;
    }
    Some(FoundSegment {
        timeline,
        segment: u64::from(log) * per_log + u64::from(seg),
        partial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    #[test]
    fn segment_names_parse_like_the_server_writes_them() {
        let found = parse_segment_name("000000020000000100000003.partial", MB16).unwrap();
        assert_eq!(
            found,
            FoundSegment {
                timeline: 2,
                segment: 256 + 3,
                partial: true
            }
        );
        assert!(parse_segment_name("00000002.history", MB16).is_none());
        assert!(parse_segment_name("000000020000000100000003.gz", MB16).is_none());
        // Segment 0x100 does not exist with 16 MB segments (256 per log id).
        assert!(parse_segment_name("000000010000000000000100", MB16).is_none());
        assert!(parse_segment_name("00000001000000000000000G", MB16).is_none());
    }

    #[test]
    fn resumes_after_the_highest_complete_segment_or_at_the_partial() {
        let seg = 1 << 20;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(find_streaming_start(dir, seg).unwrap(), None);
        let full = vec![0u8; seg as usize];
        fs::write(dir.join("000000010000000000000003"), &full).unwrap();
        fs::write(dir.join("000000010000000000000001"), &full).unwrap();
        fs::write(dir.join("00000001.history"), b"").unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            Some((1, Lsn::new(4 * seg), StartSource::CompleteSegment))
        );
        fs::write(dir.join("000000010000000000000004.partial"), &full).unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            Some((1, Lsn::new(4 * seg), StartSource::PartialSegment))
        );
        // After a switch the same segment number exists on the new timeline: it wins.
        fs::write(dir.join("000000020000000000000004.partial"), &full).unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            Some((2, Lsn::new(4 * seg), StartSource::PartialSegment))
        );
        // A truncated complete segment is not trusted.
        fs::write(dir.join("000000020000000000000005"), b"short").unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            Some((2, Lsn::new(4 * seg), StartSource::PartialSegment))
        );
    }
}
