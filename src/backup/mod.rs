//! Base backups over the replication protocol, written into one or more standby data
//! directories in a single pass over the stream.
//!
//! The flow mirrors `pg_basebackup -Fp`: IDENTIFY_SYSTEM and settings, optional slot checks,
//! BASE_BACKUP, the start position and tablespace list, then the archives. Each archive is
//! untarred on a blocking thread fed through a bounded channel, so the disk pushes back on the
//! socket while receiving and writing overlap. With `-X stream` a second connection streams WAL
//! from the start position into every target's `pg_wal` until the end position is known and
//! reached. Files are checksummed as they are written and compared with the server's manifest.
//! Targets are built in temporary siblings and moved into place only when complete and synced.
//!
//! Files: this one holds the options and the flow (`run`); `archive` the archive receiver and
//! decompression, `wal_stream` the `-X stream` side, `tablespaces` the `-T` mapping,
//! `incremental` one `INCREMENTAL.<name>` file and `combine` an incremental backup applied in
//! place (`pgrepl resync`).
//!
//! Neighbours: `unpack` (tar to disk), `manifest`/`checksum` (verification), `written` (the
//! record of written files and the manifest, kept on disk until the check), `target` (staging),
//! `standby_conf` (`-R`), `replication` (the WAL streamer), `conn` (sessions).

mod archive;
pub mod checksum;
pub mod combine;
pub mod incremental;
pub mod manifest;
pub(crate) mod standby_conf;
mod tablespaces;
mod target;
pub mod unpack;
mod wal_stream;
pub mod written;

use self::archive::*;
use self::wal_stream::*;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::checksum::ChecksumAlgorithm;
use self::manifest::ManifestError;
use self::tablespaces::{parse_tablespaces, plan_tablespaces, Tablespace, TablespaceLayout};
use self::target::Staging;
pub use self::target::SyncMethod;
use self::unpack::{ArchiveDestination, ChunkSource, ExtractOptions, ReadChunks, UnpackError};
use self::written::{ManifestSink, WrittenLog};
use crate::conn::{ConnectOptions, Connection, ConnectionError, IdentifySystem, ResultSet};
use crate::ids::{SystemId, TimelineId};
use crate::lsn::Lsn;
use crate::proto::backend::BackendMessage;
use crate::proto::base_backup::BackupStreamMessage;
use crate::proto::command::{
    BaseBackupCommand, ReplicationCommand, ServerCompression, BASE_BACKUP_NEW_SYNTAX_MAJOR,
    INCREMENTAL_MAJOR,
};
use crate::proto::ProtocolError;
use crate::replication::wal_sink::{SegmentNaming, SegmentWriter};
use crate::replication::{self, ReplicationError, StreamOptions};

/// Oldest and newest server majors pgrepl is tested against.
pub const SUPPORTED_MAJORS: std::ops::RangeInclusive<u32> = 14..=18;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("stream WAL")]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("target `{path}` {reason}")]
    Target { path: PathBuf, reason: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("server version {0} is not supported: pgrepl supports PostgreSQL {min} to {max}", min = SUPPORTED_MAJORS.start(), max = SUPPORTED_MAJORS.end())]
    UnsupportedServer(String),
    #[error("replication slot `{0}` does not exist; create it with --create-slot (-C) or name an existing one")]
    SlotMissing(String),
    #[error("{0}")]
    Tablespace(String),
    #[error("PostgreSQL {0} has no incremental backups: they need 17 or later")]
    IncrementalUnsupported(u32),
    #[error("no target directory given; use -D DIR")]
    NoTargets,
    #[error("transfer rate `{0}` kB/s is out of range: give 32 to 1048576 kB/s (the server's limits), or omit -r")]
    RateOutOfRange(u32),
    #[error("invalid replication slot name `{0}`: use lower-case letters, digits and underscores, at most 63")]
    InvalidSlotName(String),
    #[error("--create-slot needs a slot name: add -S NAME")]
    CreateSlotWithoutName,
    /// The WAL streamer's connection failed while the base backup was still arriving.
    #[error("the WAL streamer stopped")]
    StreamerStopped,
    #[error("the WAL connection reached a different cluster (system identifier {got} instead of {expected})")]
    WalSystemMismatch { expected: SystemId, got: SystemId },
    #[error("cancelled; nothing was left behind")]
    Cancelled,
    /// The extractor thread stopped; its own error is reported instead where it can be had.
    #[error("extraction stopped")]
    ExtractionStopped,
}

impl BackupError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    fn target(path: &Path, reason: &str) -> Self {
        Self::Target {
            path: path.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// The connection failure underneath, if that is what went wrong. (`transparent` variants
    /// hide it from `source()` chains, so callers ask here.)
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        match self {
            Self::Connection(e) | Self::Replication(ReplicationError::Connection(e)) => Some(e),
            _ => None,
        }
    }
}

/// How the target gets the WAL it needs to become consistent (`-X`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalMethod {
    /// A second connection streams WAL while the backup runs.
    Stream,
    /// The server appends the WAL to the base archive at the end (needs it still on the server).
    Fetch,
    /// No WAL: the standby must get it from the primary or an archive.
    None,
}

/// One data directory to fill.
#[derive(Debug, Clone)]
pub struct BackupTarget {
    pub dir: PathBuf,
    /// `application_name` in this target's `primary_conninfo` (with `-R`).
    pub application_name: Option<String>,
}

/// Reports progress; the CLI draws a bar, the library stays UI-free.
pub trait Progress: Send + Sync {
    /// `total` is the server's estimate in bytes, when `--progress` asked for one.
    fn start(&self, total: Option<u64>);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    pub targets: Vec<BackupTarget>,
    pub wal_method: WalMethod,
    /// `-R`: standby.signal and primary_conninfo.
    pub write_recovery_conf: bool,
    pub fast_checkpoint: bool,
    /// Ask the server for a size estimate (slower start, a bar with a total).
    pub estimate_size: bool,
    pub label: String,
    pub max_rate_kbps: Option<u32>,
    pub slot: Option<String>,
    pub create_slot: bool,
    /// `-T OLDDIR=NEWDIR`, in order; with several targets, give one per target for each OLDDIR.
    pub tablespace_mappings: Vec<(PathBuf, PathBuf)>,
    pub sync: bool,
    /// How `sync` is done.
    pub sync_method: SyncMethod,
    /// `None`: no manifest (`--no-manifest`).
    pub manifest_checksums: Option<ChecksumAlgorithm>,
    pub compression: Option<ServerCompression>,
    pub owner: Option<(u32, u32)>,
    /// The host standbys should use to reach the primary in `primary_conninfo`, when it differs
    /// from the one pgrepl connected to (a container name, say).
    pub primary_host_override: Option<(String, u16)>,
    /// `--passfile`: `primary_conninfo` names this password file instead of holding the password.
    pub primary_passfile: Option<PathBuf>,
    /// The CA file `primary_conninfo` names (`sslrootcert`), when the standby's server finds
    /// it elsewhere than pgrepl did.
    pub primary_sslrootcert: Option<PathBuf>,
    /// 17+: the manifest of a prior backup (`manifest::prior`), uploaded first; the backup
    /// then carries only the blocks changed since its start (`INCREMENTAL.<name>` files).
    pub incremental_from: Option<Vec<u8>>,
}

impl BaseBackupOptions {
    pub fn new(targets: Vec<BackupTarget>) -> Self {
        Self {
            targets,
            wal_method: WalMethod::Stream,
            write_recovery_conf: false,
            fast_checkpoint: false,
            estimate_size: false,
            label: "pgrepl base backup".into(),
            max_rate_kbps: None,
            slot: None,
            create_slot: false,
            tablespace_mappings: Vec::new(),
            sync: true,
            sync_method: SyncMethod::default_for_this_kernel(),
            manifest_checksums: Some(ChecksumAlgorithm::Crc32c),
            compression: None,
            owner: None,
            primary_host_override: None,
            primary_sslrootcert: None,
            primary_passfile: None,
            incremental_from: None,
        }
    }
}

/// What a finished backup reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSummary {
    pub system_identifier: SystemId,
    pub server_major: u32,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub timeline: TimelineId,
    /// Bytes of files written per target.
    pub bytes: u64,
    pub files: usize,
    pub targets: Vec<PathBuf>,
    pub manifest_verified: bool,
    pub elapsed_ms: u128,
}

/// Takes a base backup into every target. On error or cancellation nothing is left behind.
pub async fn base_backup(
    connect: &ConnectOptions,
    options: &BaseBackupOptions,
    progress: Arc<dyn Progress>,
    cancel: CancellationToken,
) -> Result<BackupSummary, BackupError> {
    run(connect, options, progress, &cancel).await
}

/// Runs `work` unless `cancel` fires first. Only for steps during which nothing writes into the
/// targets: dropping them midway leaves nothing to wait for.
async fn cancellable<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = Result<T, BackupError>>,
) -> Result<T, BackupError> {
    tokio::select! {
        result = work => result,
        _ = cancel.cancelled() => Err(BackupError::Cancelled),
    }
}

/// The replication session before BASE_BACKUP, and what it found out about the server.
struct Session {
    conn: Connection,
    major: u32,
    system: IdentifySystem,
    segment_size: u64,
    data_dir_mode: u32,
}

/// Connects, refuses servers pgrepl cannot back up, and checks (or creates) the slot before
/// anything is copied.
async fn open_session(
    connect: &ConnectOptions,
    options: &BaseBackupOptions,
    cancel: &CancellationToken,
) -> Result<Session, BackupError> {
    let mut conn = cancellable(cancel, async { Ok(Connection::connect(connect).await?) }).await?;
    let major = conn
        .server_major()
        .ok_or_else(|| BackupError::UnsupportedServer("unknown".into()))?;
    if major < *SUPPORTED_MAJORS.start() {
        return Err(BackupError::UnsupportedServer(
            conn.parameter("server_version").unwrap_or("?").to_owned(),
        ));
    }
    if major > *SUPPORTED_MAJORS.end() {
        tracing::warn!(
            major,
            "server is newer than pgrepl was tested with; using the PostgreSQL 15+ protocol"
        );
    }
    let system = conn.identify_system().await?;
    let segment_size = conn.wal_segment_size().await?;
    let data_dir_mode = match conn.show("data_directory_mode").await?.as_str() {
        "0750" => 0o750,
        _ => 0o700,
    };
    tracing::info!(
        system_id = %system.system_id,
        timeline = %system.timeline,
        major,
        "connected to `{}`",
        conn.peer()
    );

    if let Some(slot) = &options.slot {
        if options.create_slot {
            conn.create_physical_slot(slot, false).await?;
            tracing::info!(slot, "created replication slot");
        } else if major >= BASE_BACKUP_NEW_SYNTAX_MAJOR && conn.read_slot(slot).await?.is_none() {
            // Checked before copying anything; on 14 READ_REPLICATION_SLOT does not exist and
            // the streamer reports a missing slot as soon as it starts.
            return Err(BackupError::SlotMissing(slot.clone()));
        }
    }
    Ok(Session {
        conn,
        major,
        system,
        segment_size,
        data_dir_mode,
    })
}

async fn run(
    connect: &ConnectOptions,
    options: &BaseBackupOptions,
    progress: Arc<dyn Progress>,
    cancel: &CancellationToken,
) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    validate(options)?;
    let mut staging = Staging::default();
    let mut data_dirs = Vec::new();
    for target in &options.targets {
        data_dirs.push(staging.add(&target.dir)?);
    }
    let Session {
        mut conn,
        major,
        system,
        segment_size,
        data_dir_mode,
    } = open_session(connect, options, cancel).await?;
    if options.wal_method == WalMethod::Stream {
        for dir in &data_dirs {
            let pg_wal = dir.join("pg_wal");
            std::fs::create_dir_all(pg_wal.join("archive_status"))
                .map_err(|e| BackupError::io(format!("create `{}`", pg_wal.display()), e))?;
        }
    }

    let command = BaseBackupCommand {
        server_major: major,
        label: options.label.clone(),
        progress: options.estimate_size,
        fast_checkpoint: options.fast_checkpoint,
        include_wal: options.wal_method == WalMethod::Fetch,
        wait_for_archive: false,
        max_rate_kbps: options.max_rate_kbps,
        manifest_checksums: options.manifest_checksums.map(ChecksumAlgorithm::as_str),
        compression: options.compression,
        incremental: options.incremental_from.is_some(),
    };
    if let Some(manifest) = &options.incremental_from {
        if major < INCREMENTAL_MAJOR {
            return Err(BackupError::IncrementalUnsupported(major));
        }
        cancellable(cancel, async { Ok(conn.upload_manifest(manifest).await?) }).await?;
    }
    conn.send_query(&ReplicationCommand::BaseBackup(&command).render())?;
    conn.flush().await?;
    // Nothing arrives until the start checkpoint is done, which may take minutes (spread).
    let start = cancellable(cancel, read_result_set(&mut conn)).await?;
    let start_row = start.single_row("BASE_BACKUP start position")?;
    let start_lsn: Lsn = start.parse(start_row, "recptr")?;
    let start_timeline: TimelineId = start.parse(start_row, "tli")?;
    let tablespaces = parse_tablespaces(&read_result_set(&mut conn).await?)?;
    tracing::info!(%start_lsn, timeline = %start_timeline, tablespaces = tablespaces.len() - 1, "backup started");
    progress.start(options.estimate_size.then(|| {
        tablespaces
            .iter()
            .map(|t| t.size_kb.unwrap_or(0) * 1024)
            .sum()
    }));

    let layout = plan_tablespaces(&tablespaces, options, &mut staging)?;

    let streamer = match options.wal_method {
        WalMethod::Stream => Some(WalStreamer::start(
            connect,
            options,
            system.system_id,
            data_dirs.iter().map(|d| d.join("pg_wal")).collect(),
            segment_size,
            start_lsn,
            start_timeline,
        )),
        _ => None,
    };

    let extract = ExtractOptions {
        checksum: options
            .manifest_checksums
            .unwrap_or(ChecksumAlgorithm::None),
        tablespace_links: layout.links.clone(),
        owner: options.owner,
        max_entry_size: 1 << 40,
        sync: options.sync,
    };
    let mut receiver = ArchiveReceiver {
        data_dirs: &data_dirs,
        layout: &layout,
        extract: Arc::new(extract),
        progress: progress.clone(),
        written: Arc::new(Mutex::new(WrittenLog::new_in(&data_dirs[0]).map_err(
            |e| {
                BackupError::io(
                    format!("create a temporary file in `{}`", data_dirs[0].display()),
                    e,
                )
            },
        )?)),
        manifest: None,
        current: None,
        cancel,
    };
    let received = async {
        if major >= BASE_BACKUP_NEW_SYNTAX_MAJOR {
            receiver
                .receive_typed_stream(&mut conn, streamer.as_ref())
                .await?;
        } else {
            let with_manifest = options.manifest_checksums.is_some();
            receiver
                .receive_per_tablespace(&mut conn, &tablespaces, with_manifest, streamer.as_ref())
                .await?;
        }
        let end = read_result_set(&mut conn).await?;
        let end_row = end.single_row("BASE_BACKUP end position")?;
        let end_lsn: Lsn = end.parse(end_row, "recptr")?;
        // CommandComplete and ReadyForQuery — or the checksum-failure error that replaces them.
        read_until_ready(&mut conn).await?;
        Ok(end_lsn)
    }
    .await;
    let end_lsn = match received {
        Ok(end_lsn) => end_lsn,
        Err(e) => {
            // Nothing may still write into the staging directories when they are removed, and
            // the extractor's or the streamer's own error is often the real cause.
            let e = match receiver.abandon().await {
                Some(extract_error) if matches!(e, BackupError::ExtractionStopped) => extract_error,
                _ => e,
            };
            return Err(match streamer {
                Some(s) => s.failure_or(e).await,
                None => e,
            });
        }
    };
    conn.close().await;
    tracing::info!(%end_lsn, "backup archives received");

    if let Some(streamer) = streamer {
        streamer.finish(end_lsn).await?;
    }
    progress.finish();

    let ArchiveReceiver {
        written, manifest, ..
    } = receiver;
    let written = Arc::into_inner(written)
        .expect("every extractor has finished")
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let (files, bytes) = (written.files(), written.bytes());
    let manifest_verified = match manifest {
        Some(sink) => {
            let listed = written::check_against_manifest(sink, written, &data_dirs[1..])?;
            tracing::info!(files = listed, "every file matches the backup manifest");
            true
        }
        None if options.manifest_checksums.is_some() => {
            return Err(ManifestError::Invalid("the server sent no backup manifest".into()).into())
        }
        None => false,
    };

    finish_targets(connect, options, &data_dirs, data_dir_mode)?;
    commit_targets(options, staging)?;
    let targets = options.targets.iter().map(|t| t.dir.clone()).collect();
    Ok(BackupSummary {
        system_identifier: system.system_id,
        server_major: major,
        start_lsn,
        end_lsn,
        timeline: start_timeline,
        bytes,
        files,
        targets,
        manifest_verified,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// Gives the staged targets their owner, syncs them, and renames them into place: the last step,
/// so an error before it leaves no target behind.
fn commit_targets(options: &BaseBackupOptions, staging: Staging) -> Result<(), BackupError> {
    let staged_roots: Vec<PathBuf> = staging.dirs().iter().map(|d| d.staging.clone()).collect();
    if let Some(owner) = options.owner {
        for root in &staged_roots {
            target::chown_tree(root, owner)?;
        }
    }
    if options.sync {
        for root in &staged_roots {
            target::sync_tree(root, options.sync_method)?;
        }
    }
    staging.commit(options.sync)
}

fn validate(options: &BaseBackupOptions) -> Result<(), BackupError> {
    if options.targets.is_empty() {
        return Err(BackupError::NoTargets);
    }
    if let Some(rate) = options.max_rate_kbps {
        if !(32..=1_048_576).contains(&rate) {
            return Err(BackupError::RateOutOfRange(rate));
        }
    }
    if let Some(slot) = &options.slot {
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(BackupError::InvalidSlotName(slot.clone()));
        }
    }
    if options.create_slot && options.slot.is_none() {
        return Err(BackupError::CreateSlotWithoutName);
    }
    Ok(())
}

/// BASE_BACKUP's result sets hold one row, or one short row per tablespace: more than this is
/// a server trying to fill our memory.
const MAX_RESULT_BYTES: usize = 8 << 20;

async fn read_result_set(conn: &mut Connection) -> Result<ResultSet, BackupError> {
    let mut set = ResultSet::default();
    let mut bytes = 0;
    loop {
        match conn.read_message().await? {
            BackendMessage::RowDescription { columns } => set.columns = columns,
            BackendMessage::DataRow { values } => {
                bytes += values.iter().flatten().map(|v| v.len()).sum::<usize>();
                if bytes > MAX_RESULT_BYTES {
                    let limit = MAX_RESULT_BYTES >> 20;
                    let reason = format!("result set exceeds {limit} MiB");
                    return Err(ProtocolError::malformed("BASE_BACKUP", reason).into());
                }
                set.rows.push(values);
            }
            BackendMessage::CommandComplete { .. } => return Ok(set),
            BackendMessage::ErrorResponse(e) => return Err(drain_error(conn, e).await),
            other => return Err(ConnectionError::unexpected("a result set", &other).into()),
        }
    }
}

async fn read_until_ready(conn: &mut Connection) -> Result<(), BackupError> {
    loop {
        match conn.read_message().await? {
            BackendMessage::ReadyForQuery => return Ok(()),
            BackendMessage::CommandComplete { .. } => {}
            BackendMessage::ErrorResponse(e) => return Err(drain_error(conn, e).await),
            other => return Err(ConnectionError::unexpected("ReadyForQuery", &other).into()),
        }
    }
}

async fn drain_error(
    conn: &mut Connection,
    error: crate::proto::server_error::ServerError,
) -> BackupError {
    if !error.is_fatal() {
        while let Ok(message) = conn.read_message().await {
            if matches!(message, BackendMessage::ReadyForQuery) {
                break;
            }
        }
    }
    BackupError::Connection(ConnectionError::Server(error))
}

/// `-R` and permissions, applied to every staged data directory.
fn finish_targets(
    connect: &ConnectOptions,
    options: &BaseBackupOptions,
    data_dirs: &[PathBuf],
    mode: u32,
) -> Result<(), BackupError> {
    for (target, dir) in options.targets.iter().zip(data_dirs) {
        if options.write_recovery_conf {
            let mut primary = connect.clone();
            if let Some((host, port)) = &options.primary_host_override {
                primary.host = crate::conn::Host::Tcp(host.clone());
                primary.port = *port;
            }
            if let Some(passfile) = &options.primary_passfile {
                primary.passfile = Some(passfile.clone());
            }
            if let Some(root) = &options.primary_sslrootcert {
                primary.sslrootcert = Some(root.clone());
            }
            let conninfo = primary.primary_conninfo(
                target.application_name.as_deref(),
                options.primary_passfile.is_none(),
            );
            standby_conf::write_standby_config(dir, &conninfo, options.slot.as_deref()).map_err(
                |e| {
                    BackupError::io(
                        format!("write standby settings into `{}`", dir.display()),
                        e,
                    )
                },
            )?;
        }
        target::set_data_dir_mode(dir, mode)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_before_connecting() {
        let mut options = BaseBackupOptions::new(vec![]);
        let err = validate(&options).unwrap_err();
        assert!(matches!(err, BackupError::NoTargets));
        assert!(err.to_string().contains("-D"));
        options.targets.push(BackupTarget {
            dir: "/tmp/x".into(),
            application_name: None,
        });
        options.max_rate_kbps = Some(0);
        let err = validate(&options).unwrap_err();
        assert!(matches!(err, BackupError::RateOutOfRange(0)));
        assert!(err.to_string().contains("32 to 1048576"));
        options.max_rate_kbps = None;
        options.slot = Some("Bad-Name".into());
        let err = validate(&options).unwrap_err();
        assert!(matches!(&err, BackupError::InvalidSlotName(name) if name == "Bad-Name"));
        assert!(err.to_string().contains("invalid replication slot name"));
        options.slot = None;
        options.create_slot = true;
        let err = validate(&options).unwrap_err();
        assert!(matches!(err, BackupError::CreateSlotWithoutName));
        assert!(err.to_string().contains("-S NAME"));
    }
}
