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
//! Neighbours: `unpack` (tar to disk), `manifest`/`checksum` (verification), `target` (staging),
//! `standby_conf` (`-R`), `replication` (the WAL streamer), `conn` (sessions).

pub mod checksum;
pub mod manifest;
pub(crate) mod standby_conf;
mod target;
pub mod unpack;
pub mod written;

use std::collections::HashMap;
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
use self::target::Staging;
pub use self::target::SyncMethod;
use self::unpack::{ArchiveDestination, ChunkSource, ExtractOptions, ReadChunks, UnpackError};
use self::written::{ManifestSink, WrittenLog};
use crate::conn::{ConnectOptions, Connection, ConnectionError, ResultSet};
use crate::lsn::Lsn;
use crate::proto::backend::BackendMessage;
use crate::proto::base_backup::BackupStreamMessage;
use crate::proto::command::{
    BaseBackupCommand, ReplicationCommand, ServerCompression, BASE_BACKUP_NEW_SYNTAX_MAJOR,
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
    #[error("{0}")]
    Invalid(String),
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
            primary_passfile: None,
        }
    }
}

/// What a finished backup reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSummary {
    pub system_identifier: u64,
    pub server_major: u32,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub timeline: u32,
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
        system_id = system.system_id,
        timeline = system.timeline,
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
    };
    conn.send_query(&ReplicationCommand::BaseBackup(&command).render())?;
    conn.flush().await?;
    // Nothing arrives until the start checkpoint is done, which may take minutes (spread).
    let start = cancellable(cancel, read_result_set(&mut conn)).await?;
    let start_row = start.single_row("BASE_BACKUP start position")?;
    let start_lsn: Lsn = start.parse(start_row, "recptr")?;
    let start_timeline: u32 = start.parse(start_row, "tli")?;
    let tablespaces = parse_tablespaces(&read_result_set(&mut conn).await?)?;
    tracing::info!(%start_lsn, timeline = start_timeline, tablespaces = tablespaces.len() - 1, "backup started");
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
    let targets = options.targets.iter().map(|t| t.dir.clone()).collect();
    staging.commit(options.sync)?;
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

fn validate(options: &BaseBackupOptions) -> Result<(), BackupError> {
    if options.targets.is_empty() {
        return Err(BackupError::Invalid(
            "no target directory given; use -D DIR".into(),
        ));
    }
    if let Some(rate) = options.max_rate_kbps {
        if !(32..=1_048_576).contains(&rate) {
            return Err(BackupError::Invalid(format!(
                "transfer rate `{rate}` kB/s is out of range: give 32 to 1048576 kB/s (the server's limits), or omit -r"
            )));
        }
    }
    if let Some(slot) = &options.slot {
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(BackupError::Invalid(format!(
                "invalid replication slot name `{slot}`: use lower-case letters, digits and underscores, at most 63"
            )));
        }
    }
    if options.create_slot && options.slot.is_none() {
        return Err(BackupError::Invalid(
            "--create-slot needs a slot name: add -S NAME".into(),
        ));
    }
    Ok(())
}

/// `16MB`, `1GB`, `8192`... as the server prints sizes for SHOW.
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

#[derive(Debug, Clone)]
struct Tablespace {
    /// `None` for the main data directory (always the last row).
    oid: Option<u32>,
    location: Option<PathBuf>,
    size_kb: Option<u64>,
}

fn parse_tablespaces(set: &ResultSet) -> Result<Vec<Tablespace>, BackupError> {
    let mut list = Vec::new();
    for row in &set.rows {
        let oid = set.text(row, "spcoid")?.map(str::parse::<u32>).transpose();
        let oid = oid.map_err(|_| ProtocolError::malformed("tablespace list", "bad spcoid"))?;
        let size_kb = set.text(row, "size")?.and_then(|s| s.parse().ok());
        let location = set
            .text(row, "spclocation")?
            .filter(|l| !l.is_empty())
            .map(PathBuf::from);
        list.push(Tablespace {
            oid,
            location,
            size_kb,
        });
    }
    if list.last().is_none_or(|t| t.oid.is_some()) {
        return Err(ProtocolError::malformed(
            "tablespace list",
            "the data directory is not the last row",
        )
        .into());
    }
    Ok(list)
}

/// Where each tablespace goes for each target.
#[derive(Debug, Default)]
struct TablespaceLayout {
    /// oid -> staging dir per target.
    staging: HashMap<u32, Vec<PathBuf>>,
    /// oid -> final dir per target (the `pg_tblspc/<oid>` link targets).
    links: HashMap<u32, Vec<PathBuf>>,
    /// server location -> oid, to route PG 15+ archives that name their location.
    by_location: HashMap<PathBuf, u32>,
}

fn plan_tablespaces(
    tablespaces: &[Tablespace],
    options: &BaseBackupOptions,
    staging: &mut Staging,
) -> Result<TablespaceLayout, BackupError> {
    let mut layout = TablespaceLayout::default();
    for ts in tablespaces {
        let (Some(oid), Some(location)) = (ts.oid, &ts.location) else {
            continue;
        };
        let mapped: Vec<&PathBuf> = options
            .tablespace_mappings
            .iter()
            .filter(|(old, _)| old == location)
            .map(|(_, new)| new)
            .collect();
        let finals: Vec<PathBuf> = match (mapped.len(), options.targets.len()) {
            (0, 1) => vec![location.clone()],
            (n, targets) if n == targets => mapped.into_iter().cloned().collect(),
            (n, targets) => {
                return Err(BackupError::Tablespace(format!(
                    "tablespace {oid} at `{}` needs {targets} mapping(s), one per target in -D order, got {n}: \
                     add -T {}=NEWDIR for each target",
                    location.display(),
                    location.display()
                )))
            }
        };
        let mut staged = Vec::new();
        for dir in &finals {
            if !dir.is_absolute() {
                return Err(BackupError::Tablespace(format!(
                    "tablespace mapping `{}` must be an absolute path",
                    dir.display()
                )));
            }
            staged.push(staging.add(dir).map_err(|e| {
                BackupError::Tablespace(format!(
                    "tablespace {oid} at `{}` cannot be written to `{}`: {e}; map it elsewhere with -T {}=NEWDIR",
                    location.display(),
                    dir.display(),
                    location.display()
                ))
            })?);
        }
        layout.staging.insert(oid, staged);
        layout.links.insert(oid, finals);
        layout.by_location.insert(location.clone(), oid);
    }
    Ok(layout)
}

/// Routes the archives of one backup to their extractor threads and collects the manifest.
struct ArchiveReceiver<'a> {
    data_dirs: &'a [PathBuf],
    layout: &'a TablespaceLayout,
    extract: Arc<ExtractOptions>,
    progress: Arc<dyn Progress>,
    /// Shared with one extractor at a time: archives arrive one after the other.
    written: Arc<Mutex<WrittenLog>>,
    manifest: Option<ManifestSink>,
    /// The archive being extracted.
    current: Option<OpenArchive>,
    cancel: &'a CancellationToken,
}

/// CopyData payloads are handed to the extractor thread in batches of about this size: one
/// thread wake-up per 32 KiB message cost more CPU than anything the extractor does with it.
const HANDOFF_BYTES: usize = 256 * 1024;

/// Batches in flight between the socket and the extractor: enough to keep both busy, small
/// enough that memory stays flat whatever the database size.
const CHANNEL_DEPTH: usize = 8;

impl ArchiveReceiver<'_> {
    /// Starts an extractor for the archive at `location` (`None`: the data directory).
    fn open_archive(
        &self,
        name: &str,
        location: Option<&Path>,
    ) -> Result<OpenArchive, BackupError> {
        let destination = match location {
            None => ArchiveDestination {
                roots: self.data_dirs.to_vec(),
                manifest_prefix: String::new(),
            },
            Some(location) => {
                let oid = *self.layout.by_location.get(location).ok_or_else(|| {
                    ProtocolError::malformed(
                        "BASE_BACKUP",
                        format!("archive for unknown tablespace `{}`", location.display()),
                    )
                })?;
                ArchiveDestination {
                    roots: self.layout.staging[&oid].clone(),
                    manifest_prefix: format!("pg_tblspc/{oid}/"),
                }
            }
        };
        let compression = Compression::from_archive_name(name)?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let extract = self.extract.clone();
        let progress = self.progress.clone();
        let written = self.written.clone();
        let task = tokio::task::spawn_blocking(move || {
            let source = compression.source(rx)?;
            let mut on_bytes = |n: u64| progress.advance(n);
            let mut written = written.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(unpack::extract_archive_into(
                source,
                &destination,
                &extract,
                &mut on_bytes,
                &mut *written,
            )?)
        });
        Ok(OpenArchive {
            tx,
            batch: Vec::new(),
            batch_bytes: 0,
            task,
        })
    }

    async fn close_archive(&mut self) -> Result<(), BackupError> {
        if let Some(archive) = self.current.take() {
            archive.finish().await?;
        }
        Ok(())
    }

    /// After a failure: waits until the open extractor has stopped and returns its error.
    async fn abandon(&mut self) -> Option<BackupError> {
        self.current.take()?.finish().await.err()
    }

    async fn send(&mut self, data: Bytes) -> Result<(), BackupError> {
        match self.current.as_mut() {
            Some(archive) => archive.send(data).await,
            None => {
                Err(ProtocolError::malformed("BASE_BACKUP", "data before the first archive").into())
            }
        }
    }

    /// The manifest goes straight to disk, whatever its size (some 150 bytes per file).
    fn add_to_manifest(&mut self, data: &[u8]) -> Result<(), BackupError> {
        let sink = match &mut self.manifest {
            Some(sink) => sink,
            None => self
                .manifest
                .insert(ManifestSink::create(&self.data_dirs[0])?),
        };
        sink.write(data)
    }

    /// PostgreSQL 15+: one CopyOut carrying typed messages for every archive and the manifest.
    async fn receive_typed_stream(
        &mut self,
        conn: &mut Connection,
        streamer: Option<&WalStreamer>,
    ) -> Result<(), BackupError> {
        expect_copy_out(conn).await?;
        let mut in_manifest = false;
        loop {
            let message = next_backup_message(conn, streamer, self.cancel).await?;
            match message {
                BackendMessage::CopyData(payload) => match BackupStreamMessage::parse(payload)? {
                    BackupStreamMessage::NewArchive {
                        name,
                        tablespace_path,
                    } => {
                        self.close_archive().await?;
                        let location =
                            (!tablespace_path.is_empty()).then(|| PathBuf::from(&tablespace_path));
                        self.current = Some(self.open_archive(&name, location.as_deref())?);
                    }
                    BackupStreamMessage::Data(data) if in_manifest => {
                        self.add_to_manifest(&data)?
                    }
                    BackupStreamMessage::Data(data) => self.send(data).await?,
                    BackupStreamMessage::Progress(_) => {}
                    BackupStreamMessage::ManifestStart => {
                        self.close_archive().await?;
                        in_manifest = true;
                    }
                },
                BackendMessage::CopyDone => return self.close_archive().await,
                BackendMessage::ErrorResponse(e) => return Err(drain_error(conn, e).await),
                other => return Err(ConnectionError::unexpected("backup data", &other).into()),
            }
        }
    }

    /// PostgreSQL 14: one CopyOut of raw tar per tablespace (data directory last), then one for
    /// the manifest.
    async fn receive_per_tablespace(
        &mut self,
        conn: &mut Connection,
        tablespaces: &[Tablespace],
        with_manifest: bool,
        streamer: Option<&WalStreamer>,
    ) -> Result<(), BackupError> {
        for ts in tablespaces {
            expect_copy_out(conn).await?;
            self.current = Some(self.open_archive("base.tar", ts.location.as_deref())?);
            loop {
                match next_backup_message(conn, streamer, self.cancel).await? {
                    BackendMessage::CopyData(data) => self.send(data).await?,
                    BackendMessage::CopyDone => break,
                    BackendMessage::ErrorResponse(e) => return Err(drain_error(conn, e).await),
                    other => return Err(ConnectionError::unexpected("backup data", &other).into()),
                }
            }
            self.close_archive().await?;
        }
        if with_manifest {
            expect_copy_out(conn).await?;
            loop {
                match next_backup_message(conn, streamer, self.cancel).await? {
                    BackendMessage::CopyData(data) => self.add_to_manifest(&data)?,
                    BackendMessage::CopyDone => break,
                    BackendMessage::ErrorResponse(e) => return Err(drain_error(conn, e).await),
                    other => {
                        return Err(
                            ConnectionError::unexpected("the backup manifest", &other).into()
                        )
                    }
                }
            }
        }
        Ok(())
    }
}

/// The next message of the backup stream, unless the streamer fails or the user cancels first.
async fn next_backup_message(
    conn: &mut Connection,
    streamer: Option<&WalStreamer>,
    cancel: &CancellationToken,
) -> Result<BackendMessage, BackupError> {
    let streamer_failed = async {
        match streamer {
            Some(streamer) => streamer.failed.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        message = conn.read_message() => Ok(message?),
        _ = streamer_failed => Err(BackupError::Invalid("the WAL streamer stopped".into())),
        _ = cancel.cancelled() => Err(BackupError::Cancelled),
    }
}

async fn expect_copy_out(conn: &mut Connection) -> Result<(), BackupError> {
    match conn.read_message().await? {
        BackendMessage::CopyOutResponse => Ok(()),
        BackendMessage::ErrorResponse(e) => Err(drain_error(conn, e).await),
        other => Err(ConnectionError::unexpected("CopyOutResponse", &other).into()),
    }
}

struct OpenArchive {
    tx: mpsc::Sender<Vec<Bytes>>,
    /// Payloads not yet handed over (see `HANDOFF_BYTES`).
    batch: Vec<Bytes>,
    batch_bytes: usize,
    task: JoinHandle<Result<(), BackupError>>,
}

impl OpenArchive {
    async fn send(&mut self, data: Bytes) -> Result<(), BackupError> {
        self.batch_bytes += data.len();
        self.batch.push(data);
        if self.batch_bytes >= HANDOFF_BYTES {
            self.hand_over().await?;
        }
        Ok(())
    }

    async fn hand_over(&mut self) -> Result<(), BackupError> {
        self.batch_bytes = 0;
        if self.tx.send(std::mem::take(&mut self.batch)).await.is_err() {
            // The extractor stopped early: its error explains why. `abandon` reports it.
            return Err(BackupError::ExtractionStopped);
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), BackupError> {
        if !self.batch.is_empty() {
            // If this fails, the extractor has stopped and its own error is the one to report.
            let _ = self.hand_over().await;
        }
        drop(self.tx);
        self.task
            .await
            .map_err(|e| BackupError::io("extract archive", io::Error::other(e)))?
    }
}

/// The payloads the network side sends, handed to the extractor as they are: an uncompressed
/// archive reaches the disk without a single user-space copy. Ends when the sender is dropped.
struct ChannelChunks {
    rx: mpsc::Receiver<Vec<Bytes>>,
    batch: std::vec::IntoIter<Bytes>,
}

impl ChannelChunks {
    fn new(rx: mpsc::Receiver<Vec<Bytes>>) -> Self {
        Self {
            rx,
            batch: Vec::new().into_iter(),
        }
    }
}

impl ChunkSource for ChannelChunks {
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(chunk) = self.batch.next() {
                return Ok(Some(chunk));
            }
            match self.rx.blocking_recv() {
                Some(batch) => self.batch = batch.into_iter(),
                None => return Ok(None),
            }
        }
    }
}

/// A `Read` over the payloads, for the decompressors.
struct ChannelReader {
    chunks: ChannelChunks,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Vec<Bytes>>) -> Self {
        Self {
            chunks: ChannelChunks::new(rx),
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.next_chunk()? {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Server-side compression, recognised from the archive name.
#[derive(Debug, Clone, Copy)]
enum Compression {
    None,
    Gzip,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_archive_name(name: &str) -> Result<Self, BackupError> {
        Ok(if name.ends_with(".tar") {
            Self::None
        } else if name.ends_with(".tar.gz") {
            Self::Gzip
        } else if name.ends_with(".tar.lz4") {
            Self::Lz4
        } else if name.ends_with(".tar.zst") {
            Self::Zstd
        } else {
            return Err(ProtocolError::malformed(
                "BASE_BACKUP",
                format!("unexpected archive name `{name}`"),
            )
            .into());
        })
    }

    /// The archive's tar stream. Decompressed data comes out of a `Read`, chunked again by
    /// `ReadChunks`; uncompressed data goes through untouched.
    fn source(self, rx: mpsc::Receiver<Vec<Bytes>>) -> Result<Box<dyn ChunkSource>, BackupError> {
        Ok(match self {
            Self::None => Box::new(ChannelChunks::new(rx)),
            Self::Gzip => Box::new(ReadChunks::new(flate2::read::GzDecoder::new(
                ChannelReader::new(rx),
            ))),
            Self::Lz4 => Box::new(ReadChunks::new(lz4_flex::frame::FrameDecoder::new(
                ChannelReader::new(rx),
            ))),
            Self::Zstd => Box::new(ReadChunks::new(
                zstd::stream::read::Decoder::new(ChannelReader::new(rx))
                    .map_err(|e| BackupError::io("start zstd", e))?,
            )),
        })
    }
}

/// The `-X stream` side: its own connection and task, stopped at the backup's end position.
struct WalStreamer {
    stop: watch::Sender<Option<Lsn>>,
    /// Cancelled when the task fails, so the archive side can stop at once.
    failed: CancellationToken,
    task: JoinHandle<Result<(), BackupError>>,
}

impl WalStreamer {
    fn start(
        connect: &ConnectOptions,
        options: &BaseBackupOptions,
        system_id: u64,
        wal_dirs: Vec<PathBuf>,
        segment_size: u64,
        start: Lsn,
        timeline: u32,
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
    async fn finish(self, end: Lsn) -> Result<(), BackupError> {
        let _ = self.stop.send(Some(end));
        self.task
            .await
            .map_err(|e| BackupError::io("stream WAL", io::Error::other(e)))?
    }

    /// When the archive side failed, the streamer's own error is often the real cause.
    async fn failure_or(self, archive_error: BackupError) -> BackupError {
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
async fn stream_into(
    connect: ConnectOptions,
    slot: Option<String>,
    system_id: u64,
    wal_dirs: Vec<PathBuf>,
    segment_size: u64,
    start: Lsn,
    timeline: u32,
    stop: watch::Receiver<Option<Lsn>>,
) -> Result<(), BackupError> {
    let mut conn = Connection::connect(&connect).await?;
    let system = conn.identify_system().await?;
    if system.system_id != system_id {
        return Err(BackupError::Invalid(format!(
            "the WAL connection reached a different cluster (system identifier {} instead of {system_id})",
            system.system_id
        )));
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
fn rand_suffix() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("{:08x}", RandomState::new().hash_one(Instant::now()) as u32)
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
        assert!(validate(&options).unwrap_err().to_string().contains("-D"));
        options.targets.push(BackupTarget {
            dir: "/tmp/x".into(),
            application_name: None,
        });
        options.max_rate_kbps = Some(0);
        assert!(validate(&options)
            .unwrap_err()
            .to_string()
            .contains("32 to 1048576"));
        options.max_rate_kbps = None;
        options.slot = Some("Bad-Name".into());
        assert!(validate(&options)
            .unwrap_err()
            .to_string()
            .contains("invalid replication slot name"));
        options.slot = None;
        options.create_slot = true;
        assert!(validate(&options)
            .unwrap_err()
            .to_string()
            .contains("-S NAME"));
    }
}
