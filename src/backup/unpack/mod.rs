//! Untars one archive of a `BASE_BACKUP` stream into one or several standby directories in a
//! single pass.
//!
//! The server sends each archive as a ustar stream (reference §3.4–3.5): `base.tar` for the data
//! directory and one `<oid>.tar` per tablespace. [`extract_archive`] reads it once and writes every
//! regular file into all destination roots, computing the file's manifest checksum on the way, so
//! N standbys cost one transfer and one checksum pass.
//!
//! # Threads
//!
//! Writing is where the time goes: creating files and copying their data into the page cache
//! cost the kernel more than receiving, parsing and checksumming together, and every target adds
//! that much again. So the calling thread only parses: it checks each header, checksums file data
//! once, and hands cheap operations (create this file, write these `Bytes`, close it) to one
//! writer thread per root through small bounded queues. The data slices are the very buffers the
//! socket was read into, shared by every writer; N targets cost N kernel copies, made in
//! parallel, and no user-space copy at all. The queues are bounded, so a slow disk pushes back on
//! the parser and from there on the socket, and memory stays flat. A writer stops at its first
//! error and the extraction fails with that error.
//!
//! The `tar` crate only decodes the 512-byte headers here. Streaming, name checks and file creation
//! are ours: tar-rs' `Archive::unpack` writes one tree, and it skips hostile entries where we want
//! to fail. Neighbours: `super::checksum` (the digests), `super::written` (where each
//! [`WrittenFile`] is recorded for `super::manifest`), `super` (routes archives here and removes
//! the temporary roots on error).
//!
//! # Security
//!
//! The stream comes from a server that may be compromised or impersonated, so extraction is
//! strict. Every entry PostgreSQL would never send is an error, never a silent skip: a backup that
//! fails is better than a data directory that is quietly incomplete. Every check on names and
//! headers happens in the parser, before any writer hears of the entry.
//!
//! * Names are normalised only by stripping one leading `./` and one trailing `/`. Absolute names,
//!   `..`, `.` and empty components, and NUL bytes are rejected.
//! * Only regular files, directories and, in the base archive, `pg_tblspc/<oid>` symlinks are
//!   accepted. A link's target comes from [`ExtractOptions::tablespace_links`] (the `-T`
//!   mapping), never from the archive.
//! * Nothing is written through a symlink. Entries at or under a `pg_tblspc/<oid>` link created
//!   earlier are rejected; since names are canonical and the roots start empty, those links are the
//!   only symlinks a path can cross. Files are opened with `O_CREAT|O_EXCL|O_NOFOLLOW`, so an
//!   existing path (a duplicate entry, or a symlink in the last component) is an error. Only
//!   directories may already exist (`pg_wal/`, created early by the WAL streamer). Each root has
//!   one writer that applies the operations in stream order, so these checks see the same tree
//!   a sequential extraction would.
//! * Set-user-ID, set-group-ID and sticky bits are dropped from files; owner read/write is forced
//!   on files and owner rwx on directories so extraction can always continue.
//! * Header checksums must verify. Sizes above [`ExtractOptions::max_entry_size`], a stream that
//!   ends inside an entry, and non-zero bytes after the end-of-archive block are errors.
//!
//! On error the roots are left partly written; the caller removes them. Nothing here fsyncs: with
//! [`ExtractOptions::sync`] the writers only start writeback early (see `OpenFile`), and the
//! caller makes the targets durable at the end.
//!
//! Files: this one holds the stream parser and the hand-off to the writers; `writer` is the
//! per-root writer thread, `names` the member-name checks.

mod names;
mod writer;

use self::names::*;
use self::writer::*;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::checksum::{ChecksumAlgorithm, FileChecksum};
use super::written::{Record, WrittenFile};

/// The tar block size; headers are one block and file data is padded to a multiple of it.
const BLOCK: usize = 512;

/// Operations are handed to the writers in batches carrying about this much file data, and a
/// writer writes each run of data in a batch with one `writev(2)`. Handing over each of the
/// server's 32 KiB chunks, or each operation of a small file, cost a thread wake-up apiece: up to
/// 180,000 context switches for a 770 MB backup, more CPU than copying the data.
const HANDOFF_BYTES: usize = 512 * 1024;

/// ... or this many operations, whichever comes first (also keeps each `writev(2)` far below
/// `IOV_MAX`).
const HANDOFF_OPS: usize = 128;

/// Batches queued per writer: at most ~2 MiB of data per root waits here, enough to ride out a
/// slow `write(2)`, small enough to keep memory flat.
const WRITER_QUEUE: usize = 4;

/// Writeback is started for every `WRITEBACK_STEP` bytes of a file as soon as they are written,
/// and for the rest when the file is complete...
const WRITEBACK_STEP: u64 = 8 << 20;

/// ...and data further than this behind the write position is waited for and dropped from the
/// page cache (see `OpenFile`).
const WRITEBACK_WINDOW: u64 = 32 << 20;

/// Files smaller than this are left to the caller's final sync. Most files of a data directory
/// are a few kB: starting writeback of each one alone costs a syscall and a tiny I/O request
/// (with a VM exit, on a virtual disk) on the writer's critical path, about 0.1 ms a file, while
/// the final sync writes them all as one sorted batch.
const WRITEBACK_MIN_FILE: u64 = 1 << 20;

/// How much [`ReadChunks`] reads at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Default for [`ExtractOptions::max_entry_size`]: 1 TiB. PostgreSQL relation segments are at most
/// 1 GiB by default (`--with-segsize` allows more), so anything larger is a corrupt or hostile
/// header.
pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 1 << 40;

/// Where one archive goes.
#[derive(Clone, Debug)]
pub struct ArchiveDestination {
    /// `roots[i]` is the i-th target's directory for this archive: for the base archive the
    /// target's temporary data directory, for a tablespace archive the i-th target's (temporary)
    /// tablespace directory. All exist and are empty, except that the base roots may already hold
    /// `pg_wal/` and `pg_wal/archive_status/`.
    pub roots: Vec<PathBuf>,
    /// Prepended to the recorded paths: `""` for the base archive, `"pg_tblspc/<oid>/"` for a
    /// tablespace archive. An empty prefix is also what marks the base archive, the only one in
    /// which `pg_tblspc/<oid>` symlinks are allowed.
    pub manifest_prefix: String,
}

/// How to extract.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// The manifest checksum to compute for each file while it is written.
    pub checksum: ChecksumAlgorithm,
    /// Base archive only: the symlink target for `pg_tblspc/<oid>` per target, already mapped by
    /// `-T`: `tablespace_links[&oid][i]` is where the i-th target's link points. A
    /// `pg_tblspc/<oid>` symlink entry whose oid is missing here is an error.
    pub tablespace_links: HashMap<u32, Vec<PathBuf>>,
    /// `lchown` every created file, directory and link to `uid:gid` (for container volumes).
    pub owner: Option<(u32, u32)>,
    /// Entries whose size field is larger are rejected as impossible.
    pub max_entry_size: u64,
    /// Start writeback while the stream is still arriving, and drop written data from the page
    /// cache (see `OpenFile`), so that the caller's final sync finds little left to do. Off for
    /// `--no-sync`, which promises no disk work at all.
    pub sync: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            checksum: ChecksumAlgorithm::default(),
            tablespace_links: HashMap::new(),
            owner: None,
            max_entry_size: DEFAULT_MAX_ENTRY_SIZE,
            sync: true,
        }
    }
}

/// Why an archive could not be extracted. Entry names are shown lossily as UTF-8.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// `ArchiveDestination::roots` is empty.
    #[error("no destination directories to extract into")]
    NoDestinations,
    /// The reader failed (for example, the connection dropped).
    #[error("read the tar stream at offset {offset}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The stream ended partway through a 512-byte header.
    #[error("archive ends inside a tar header at offset {offset} (got {got} of 512 bytes)")]
    TruncatedHeader { offset: u64, got: usize },
    /// The header checksum does not match the header bytes.
    #[error("tar header for `{name}` at offset {offset} has a bad checksum")]
    BadChecksum { name: String, offset: u64 },
    /// An absolute name or one with a `..` component.
    #[error("tar entry `{name}` escapes the target directory")]
    Escapes { name: String },
    /// An empty name, or one with a `.` or empty component or a NUL byte.
    #[error("tar entry `{name}` has an invalid name ({reason})")]
    InvalidName { name: String, reason: &'static str },
    /// A hard link, device, fifo, GNU or pax extension header: PostgreSQL never sends them.
    #[error("tar entry `{name}` has unsupported type {kind}")]
    UnsupportedType { name: String, kind: String },
    /// A symlink other than `pg_tblspc/<oid>` in the base archive.
    #[error(
        "tar entry `{name}` is a symlink to `{target}`; only pg_tblspc/<oid> links in the base \
         archive are allowed"
    )]
    UnexpectedSymlink { name: String, target: String },
    /// An entry at or below a `pg_tblspc/<oid>` link created earlier in the archive.
    #[error("tar entry `{name}` lies under the symlink `{link}`")]
    UnderSymlink { name: String, link: String },
    /// A `pg_tblspc/<oid>` link whose oid is not in `ExtractOptions::tablespace_links`.
    #[error("tablespace {oid} at `{server_path}` has no mapping; give -T {server_path}=NEWDIR")]
    UnmappedTablespace { oid: u32, server_path: String },
    /// `tablespace_links[&oid]` does not have one target per root (a caller bug).
    #[error("tablespace {oid} has {got} link targets for {want} destinations")]
    MappingMismatch { oid: u32, got: usize, want: usize },
    /// A size field above `ExtractOptions::max_entry_size`.
    #[error("tar entry `{name}` has impossible size {size}")]
    ImpossibleSize { name: String, size: u64 },
    /// An unreadable numeric field, or a directory or symlink that claims data.
    #[error("tar entry `{name}` is malformed: {reason}")]
    Malformed { name: String, reason: String },
    /// The stream ended inside an entry's data.
    #[error("archive ends inside `{name}` (got {got} of {expected} bytes)")]
    Truncated {
        name: String,
        got: u64,
        expected: u64,
    },
    /// The stream ended inside the zero padding that follows an entry's data.
    #[error("archive ends inside the padding after `{name}`")]
    TruncatedPadding { name: String },
    /// Bytes other than zeros after the end-of-archive block.
    #[error("non-zero data at offset {offset}, after the end-of-archive block")]
    TrailingGarbage { offset: u64 },
    /// A file or symlink whose path already exists.
    #[error("tar entry `{name}` is a duplicate: `{}` already exists", .path.display())]
    Duplicate { name: String, path: PathBuf },
    /// A directory entry whose path exists as something other than a directory.
    #[error(
        "tar entry `{name}` is a directory, but `{}` already exists and is not one",
        .path.display()
    )]
    NotADirectory { name: String, path: PathBuf },
    /// A filesystem operation failed; `op` is a verb such as `create` or `write`.
    #[error("{op} `{}`", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the extractor gets the archive: pieces of the stream at arbitrary boundaries.
pub trait ChunkSource {
    /// The next piece, or `None` at the end of the stream.
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>>;
}

impl<S: ChunkSource + ?Sized> ChunkSource for Box<S> {
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        (**self).next_chunk()
    }
}

/// A [`ChunkSource`] over a byte stream: decompressors, and archives already in memory.
pub struct ReadChunks<R> {
    reader: R,
    /// Read into, then split off and frozen, so each chunk is handed on without a copy.
    buf: BytesMut,
}

impl<R: Read> ReadChunks<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: BytesMut::new(),
        }
    }
}

impl<R: Read> ChunkSource for ReadChunks<R> {
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        // Zeroed once per buffer, not per read: splitting off a chunk leaves the rest initialised.
        if self.buf.len() < READ_CHUNK / 4 {
            self.buf = BytesMut::zeroed(READ_CHUNK);
        }
        loop {
            match self.reader.read(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(self.buf.split_to(n).freeze())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads a tar stream from `source` (server chunks, arbitrary boundaries) and writes it into every
/// root of `dest`; see the module's `# Security` section for what is refused.
///
/// The archive ends at the first all-zero 512-byte block (PG 15+ sends two), after which the rest
/// of the stream must be zeros, or at a clean EOF exactly at a header boundary (PG 14 and older
/// send no trailer). Each regular file is written to all roots with its checksum computed once,
/// and handed to `record` with its manifest-relative path, in stream order. `on_bytes(n)` is
/// called as each slice of file data is handed to the writers. Returns once every writer has
/// finished.
///
/// When a writer fails, its error is returned: it concerns an entry the parser had already
/// passed, so it is also the first failure in stream order.
pub fn extract_archive_into(
    source: impl ChunkSource,
    dest: &ArchiveDestination,
    opts: &ExtractOptions,
    on_bytes: &mut dyn FnMut(u64),
    record: &mut dyn Record,
) -> Result<(), UnpackError> {
    if dest.roots.is_empty() {
        return Err(UnpackError::NoDestinations);
    }
    std::thread::scope(|scope| {
        let mut queues = Vec::with_capacity(dest.roots.len());
        let mut writers = Vec::with_capacity(dest.roots.len());
        for (index, root) in dest.roots.iter().enumerate() {
            let (tx, rx) = sync_channel(WRITER_QUEUE);
            queues.push(tx);
            writers.push(scope.spawn(move || write_ops(root, index, opts, rx)));
        }
        let parser = Parser {
            dest,
            opts,
            is_base: dest.manifest_prefix.is_empty(),
            links: Vec::new(),
            record,
            files: 0,
            writers: queues,
            batch: Vec::with_capacity(HANDOFF_OPS),
            batch_bytes: 0,
        };
        // Consumes the parser, so the queues close and the writers finish what they were given.
        let parsed = parser.run(Input::new(source), on_bytes);
        for writer in writers {
            writer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        }
        parsed.map_err(|e| e.expect("the parser only stops silently when a writer failed"))
    })
}

/// [`extract_archive_into`], returning the records in memory: for archives of a few files
/// (tests, fuzzing, benchmarks). A backup records to disk (`super::written::WrittenLog`).
pub fn extract_archive(
    source: impl ChunkSource,
    dest: &ArchiveDestination,
    opts: &ExtractOptions,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Vec<WrittenFile>, UnpackError> {
    let mut written = Vec::new();
    extract_archive_into(source, dest, opts, on_bytes, &mut written)?;
    Ok(written)
}

/// The parser's view of the stream: the unread rest of the current chunk.
struct Input<S> {
    source: S,
    chunk: Bytes,
    /// Stream offset of `chunk[0]`.
    offset: u64,
}

impl<S: ChunkSource> Input<S> {
    fn new(source: S) -> Self {
        Self {
            source,
            chunk: Bytes::new(),
            offset: 0,
        }
    }

    /// Up to `max` bytes, sharing the chunk's buffer; empty only at the end of the stream.
    fn take(&mut self, max: usize) -> Result<Bytes, UnpackError> {
        while self.chunk.is_empty() {
            match self.source.next_chunk() {
                Ok(Some(chunk)) => self.chunk = chunk,
                Ok(None) => return Ok(Bytes::new()),
                Err(source) => {
                    return Err(UnpackError::Read {
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
        let n = max.min(self.chunk.len());
        self.offset += n as u64;
        Ok(self.chunk.split_to(n))
    }

    /// Copies up to `out.len()` bytes into `out` (a header may span chunks); fewer only at the end
    /// of the stream. Returns how many were copied.
    fn read_into(&mut self, out: &mut [u8]) -> Result<usize, UnpackError> {
        let mut got = 0;
        while got < out.len() {
            let piece = self.take(out.len() - got)?;
            if piece.is_empty() {
                break;
            }
            out[got..got + piece.len()].copy_from_slice(&piece);
            got += piece.len();
        }
        Ok(got)
    }

    /// Skips up to `n` bytes; fewer only at the end of the stream. Returns how many were skipped.
    fn skip(&mut self, n: usize) -> Result<usize, UnpackError> {
        let mut skipped = 0;
        while skipped < n {
            let piece = self.take(n - skipped)?;
            if piece.is_empty() {
                break;
            }
            skipped += piece.len();
        }
        Ok(skipped)
    }
}

/// After the first zero block: everything up to EOF must be zero too.
fn drain_trailer(input: &mut Input<impl ChunkSource>) -> Result<(), UnpackError> {
    loop {
        let piece = input.take(usize::MAX)?;
        if piece.is_empty() {
            return Ok(());
        }
        if let Some(pos) = piece.iter().position(|&b| b != 0) {
            return Err(UnpackError::TrailingGarbage {
                offset: input.offset - (piece.len() - pos) as u64,
            });
        }
    }
}

/// What the parser asks every writer to do, in stream order. Names are canonical tar names,
/// already checked; each writer joins them to its own root.
enum Op {
    Directory {
        name: Box<[u8]>,
        mode: u32,
    },
    /// Creates a file; `Write`s and a `Close` follow.
    Create {
        name: Box<[u8]>,
        mode: u32,
    },
    /// The next piece of the open file: a slice of a buffer the socket was read into.
    Write(Bytes),
    Close,
    /// `pg_tblspc/<oid>`: writer `i` links it to `targets[i]`.
    Symlink {
        name: Box<[u8]>,
        targets: Vec<PathBuf>,
    },
}

/// Why the parser stopped: its own error, or `None` when a writer hung up, in which case the
/// writer's error is the one to report.
type ParseError = Option<UnpackError>;

struct Parser<'a> {
    dest: &'a ArchiveDestination,
    opts: &'a ExtractOptions,
    is_base: bool,
    /// Names of the `pg_tblspc/<oid>` links created so far; nothing may be written under them.
    links: Vec<Vec<u8>>,
    record: &'a mut dyn Record,
    /// Regular files recorded so far.
    files: u64,
    /// One queue per root, in root order.
    writers: Vec<SyncSender<Arc<Vec<Op>>>>,
    /// Operations not yet handed over, and the file data they carry.
    batch: Vec<Op>,
    batch_bytes: usize,
}

impl Parser<'_> {
    fn run(
        mut self,
        mut input: Input<impl ChunkSource>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<(), ParseError> {
        let parsed = self.parse(&mut input, on_bytes);
        // The entries before a bad one are written, as a sequential extraction would have.
        let handed = self.hand_over();
        parsed.and(handed)?;
        tracing::debug!(
            prefix = %self.dest.manifest_prefix,
            targets = self.dest.roots.len(),
            files = self.files,
            bytes = input.offset,
            "extracted archive"
        );
        Ok(())
    }

    fn parse(
        &mut self,
        input: &mut Input<impl ChunkSource>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<(), ParseError> {
        let mut block = [0u8; BLOCK];
        loop {
            let offset = input.offset;
            let got = input.read_into(&mut block)?;
            if got == 0 {
                // Servers up to 14 end the archive without a trailer.
                break;
            }
            if got < BLOCK {
                return Err(UnpackError::TruncatedHeader { offset, got }.into());
            }
            if block.iter().all(|&b| b == 0) {
                return Ok(drain_trailer(input)?);
            }
            self.entry(&block, offset, input, on_bytes)?;
        }
        Ok(())
    }

    /// Queues `op` for every writer.
    fn push(&mut self, op: Op) -> Result<(), ParseError> {
        if let Op::Write(data) = &op {
            self.batch_bytes += data.len();
        }
        self.batch.push(op);
        if self.batch_bytes >= HANDOFF_BYTES || self.batch.len() >= HANDOFF_OPS {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Hands the queued operations to every writer, one batch shared by all; fails only when a
    /// writer has stopped.
    fn hand_over(&mut self) -> Result<(), ParseError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(HANDOFF_OPS));
        let batch = Arc::new(batch);
        self.batch_bytes = 0;
        for writer in &self.writers {
            writer.send(batch.clone()).map_err(|_| None)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        block: &[u8; BLOCK],
        offset: u64,
        input: &mut Input<impl ChunkSource>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<(), ParseError> {
        let header = tar::Header::from_byte_slice(block);
        let raw = header.path_bytes();
        verify_checksum(header, block, &raw, offset)?;
        let name = clean_name(&raw)?;
        let kind = header.entry_type().as_byte();
        if !matches!(kind, b'0' | b'\0' | b'5' | b'2') {
            return Err(UnpackError::UnsupportedType {
                name: lossy(name),
                kind: show_type(kind),
            }
            .into());
        }
        let size = entry_size(header, name, self.opts.max_entry_size)?;
        let mode = header.mode().map_err(|_| UnpackError::Malformed {
            name: lossy(name),
            reason: "unreadable mode field".into(),
        })? & 0o7777;
        if let Some(link) = self.links.iter().find(|link| is_within(name, link)) {
            return Err(UnpackError::UnderSymlink {
                name: lossy(name),
                link: lossy(link),
            }
            .into());
        }
        if kind != b'0' && kind != b'\0' && size != 0 {
            return Err(UnpackError::Malformed {
                name: lossy(name),
                reason: format!("a directory or symlink with size {size}"),
            }
            .into());
        }
        match kind {
            b'5' => self.push(Op::Directory {
                name: name.into(),
                mode: mode | 0o700,
            }),
            b'2' => self.symlink(name, header.link_name_bytes()),
            _ => self.file(name, size, mode, input, on_bytes),
        }
    }

    fn file(
        &mut self,
        name: &[u8],
        size: u64,
        mode: u32,
        input: &mut Input<impl ChunkSource>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<(), ParseError> {
        self.push(Op::Create {
            name: name.into(),
            mode: (mode & 0o777) | 0o600,
        })?;
        let mut checksum = FileChecksum::new(self.opts.checksum);
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(HANDOFF_BYTES as u64) as usize;
            let data = input.take(want)?;
            if data.is_empty() {
                return Err(UnpackError::Truncated {
                    name: lossy(name),
                    got: done,
                    expected: size,
                }
                .into());
            }
            checksum.update(&data);
            done += data.len() as u64;
            on_bytes(data.len() as u64);
            self.push(Op::Write(data))?;
        }
        self.push(Op::Close)?;

        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        if input.skip(pad)? < pad {
            return Err(UnpackError::TruncatedPadding { name: lossy(name) }.into());
        }

        let mut path = Vec::with_capacity(self.dest.manifest_prefix.len() + name.len());
        path.extend_from_slice(self.dest.manifest_prefix.as_bytes());
        path.extend_from_slice(name);
        let file = WrittenFile {
            path,
            size,
            checksum: checksum.finish(),
        };
        self.record
            .record(file)
            .map_err(|source| io_error("record", Path::new(OsStr::from_bytes(name)), source))?;
        self.files += 1;
        Ok(())
    }

    fn symlink(&mut self, name: &[u8], target: Option<Cow<'_, [u8]>>) -> Result<(), ParseError> {
        let server_path = lossy(target.as_deref().unwrap_or_default());
        let oid = match tablespace_oid(name) {
            Some(oid) if self.is_base => oid,
            _ => {
                return Err(UnpackError::UnexpectedSymlink {
                    name: lossy(name),
                    target: server_path,
                }
                .into())
            }
        };
        let targets = self
            .opts
            .tablespace_links
            .get(&oid)
            .ok_or(UnpackError::UnmappedTablespace { oid, server_path })?;
        if targets.len() != self.dest.roots.len() {
            return Err(UnpackError::MappingMismatch {
                oid,
                got: targets.len(),
                want: self.dest.roots.len(),
            }
            .into());
        }
        self.push(Op::Symlink {
            name: name.into(),
            targets: targets.clone(),
        })?;
        self.links.push(name.to_vec());
        Ok(())
    }
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> UnpackError {
    UnpackError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
