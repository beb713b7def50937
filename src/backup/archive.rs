//! The archive side of a backup: BASE_BACKUP's CopyOut data routed to one extractor thread per
//! archive (through a bounded channel, decompressed when the server compressed), and the
//! manifest written to disk as it arrives (`super::written`).

use super::*;

/// Routes the archives of one backup to their extractor threads and the manifest to disk.
pub(super) struct ArchiveReceiver<'a> {
    pub(super) data_dirs: &'a [PathBuf],
    pub(super) layout: &'a TablespaceLayout,
    pub(super) extract: Arc<ExtractOptions>,
    pub(super) progress: Arc<dyn Progress>,
    /// Shared with one extractor at a time: archives arrive one after the other.
    pub(super) written: Arc<Mutex<WrittenLog>>,
    pub(super) manifest: Option<ManifestSink>,
    /// The archive being extracted.
    pub(super) current: Option<OpenArchive>,
    pub(super) cancel: &'a CancellationToken,
}

/// CopyData payloads are handed to the extractor thread in batches of about this size: one
/// thread wake-up per 32 KiB message cost more CPU than anything the extractor does with it.
pub(super) const HANDOFF_BYTES: usize = 256 * 1024;

/// Batches in flight between the socket and the extractor: enough to keep both busy, small
/// enough that memory stays flat whatever the database size.
pub(super) const CHANNEL_DEPTH: usize = 8;

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
    pub(super) async fn abandon(&mut self) -> Option<BackupError> {
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
    pub(super) async fn receive_typed_stream(
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
    pub(super) async fn receive_per_tablespace(
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
pub(super) async fn next_backup_message(
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
        _ = streamer_failed => Err(BackupError::StreamerStopped),
        _ = cancel.cancelled() => Err(BackupError::Cancelled),
    }
}

pub(super) async fn expect_copy_out(conn: &mut Connection) -> Result<(), BackupError> {
    match conn.read_message().await? {
        BackendMessage::CopyOutResponse => Ok(()),
        BackendMessage::ErrorResponse(e) => Err(drain_error(conn, e).await),
        other => Err(ConnectionError::unexpected("CopyOutResponse", &other).into()),
    }
}

pub(super) struct OpenArchive {
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

    pub(super) async fn finish(mut self) -> Result<(), BackupError> {
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
pub(super) struct ChannelChunks {
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
pub(super) struct ChannelReader {
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
pub(super) enum Compression {
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
