//! `-X stream`: a second connection streams WAL from the backup's start position into every
//! target's `pg_wal` until the archive side knows the end position.

use super::*;

use crate::ids::{SystemId, TimelineId};

/// The `-X stream` side: its own connection and task, stopped at the backup's end position.
pub(super) struct WalStreamer {
    stop: watch::Sender<Option<Lsn>>,
    /// Cancelled when the task fails, so the archive side can stop at once.
    pub(super) failed: CancellationToken,
    task: JoinHandle<Result<(), BackupError>>,
}

impl WalStreamer {
    pub(super) fn start(
        connect: &ConnectOptions,
        options: &BaseBackupOptions,
        system_id: SystemId,
        wal_dirs: Vec<PathBuf>,
        segment_size: u64,
        start: Lsn,
        timeline: TimelineId,
    ) -> WalStreamer {
        let (stop, stop_rx) = watch::channel(None);
        let failed = CancellationToken::new();
        let connect = connect.clone();
        let slot = options.slot.clone();
        let failed_guard = failed.clone();
        let task = tokio::spawn(async move {
            let result = stream_into(
                connect,
                slot,
                system_id,
                wal_dirs,
                segment_size,
                start,
                timeline,
                stop_rx,
            )
            .await;
            if result.is_err() {
                failed_guard.cancel();
            }
            result
        });
        WalStreamer { stop, failed, task }
    }

    /// Tells the streamer where the backup ended and waits until it has written that far.
    pub(super) async fn finish(self, end: Lsn) -> Result<(), BackupError> {
        let _ = self.stop.send(Some(end));
        self.task
            .await
            .map_err(|e| BackupError::io("stream WAL", io::Error::other(e)))?
    }

    /// When the archive side failed, the streamer's own error is often the real cause.
    pub(super) async fn failure_or(self, archive_error: BackupError) -> BackupError {
        if self.failed.is_cancelled() {
            if let Ok(Err(e)) = self.task.await {
                return e;
            }
        } else {
            // Wait until the aborted task is gone: it writes into the staging directories.
            self.task.abort();
            let _ = self.task.await;
        }
        archive_error
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_into(
    connect: ConnectOptions,
    slot: Option<String>,
    system_id: SystemId,
    wal_dirs: Vec<PathBuf>,
    segment_size: u64,
    start: Lsn,
    timeline: TimelineId,
    stop: watch::Receiver<Option<Lsn>>,
) -> Result<(), BackupError> {
    let mut conn = Connection::connect(&connect).await?;
    let system = conn.identify_system().await?;
    if system.system_id != system_id {
        return Err(BackupError::WalSystemMismatch {
            expected: system_id,
            got: system.system_id,
        });
    }
    let slot = match slot {
        Some(slot) => slot,
        None => {
            // Holds the WAL from the backup's start until we have streamed it; gone with the session.
            let name = format!("pgrepl_{}_{}", std::process::id(), rand_suffix());
            conn.create_physical_slot(&name, true).await?;
            name
        }
    };
    // No fsync per segment: the whole target is synced once before it is moved into place.
    let mut writer = SegmentWriter::new(wal_dirs, segment_size, SegmentNaming::Standby, false)
        .map_err(|e| BackupError::io("prepare pg_wal", e))?;
    let options = StreamOptions {
        slot: Some(slot),
        start,
        timeline,
        status_interval: Duration::from_secs(10),
        report_flush: false,
    };
    let never = CancellationToken::new();
    let end = replication::stream_wal(&mut conn, &options, &mut writer, stop, &never).await?;
    writer
        .finish()
        .map_err(|e| BackupError::io("finish WAL segment", e))?;
    tracing::info!(?end, "WAL streaming finished");
    conn.close().await;
    Ok(())
}

/// A few random hex digits so concurrent runs in one process get distinct slot names.
pub(super) fn rand_suffix() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("{:08x}", RandomState::new().hash_one(Instant::now()) as u32)
}
