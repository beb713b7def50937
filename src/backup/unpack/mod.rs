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
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    // ---- fixtures -------------------------------------------------------------------------

    /// A ustar header as the server writes it, with the name and link written as raw bytes so
    /// hostile names get through (tar-rs' setters refuse `..`).
    fn header(name: &[u8], kind: u8, size: u64, mode: u32, link: &[u8]) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    #[derive(Default)]
    struct Tar(Vec<u8>);

    impl Tar {
        fn raw(mut self, h: &tar::Header, data: &[u8]) -> Self {
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
            self.0.resize(self.0.len() + pad, 0);
            self
        }
        fn dir(self, name: &str, mode: u32) -> Self {
            self.raw(
                &header(format!("{name}/").as_bytes(), b'5', 0, mode, b""),
                b"",
            )
        }
        fn file(self, name: &str, data: &[u8], mode: u32) -> Self {
            self.raw(
                &header(name.as_bytes(), b'0', data.len() as u64, mode, b""),
                data,
            )
        }
        fn link(self, name: &str, target: &str) -> Self {
            let h = header(
                format!("{name}/").as_bytes(),
                b'2',
                0,
                0o777,
                target.as_bytes(),
            );
            self.raw(&h, b"")
        }
        /// PG 15+ trailer: two zero blocks.
        fn end(mut self) -> Vec<u8> {
            self.0.resize(self.0.len() + 2 * BLOCK, 0);
            self.0
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Roughly what `base.tar` looks like (§3.4), without a trailer.
    fn base_archive() -> Tar {
        Tar::default()
            .file("backup_label", b"START WAL LOCATION: 0/2000028\n", 0o600)
            .dir("./base", 0o700)
            .dir("base/1", 0o700)
            .file("base/1/1259", &data(8192 * 3 + 100, 1), 0o600)
            .file("base/1/1259_fsm", &data(513, 2), 0o640)
            .file("base/1/PG_VERSION", b"16\n", 0o600)
            .file("base/1/empty", b"", 0o600)
            .dir("group_dir", 0o750)
            .dir("pg_wal", 0o700)
            .dir("./pg_wal/archive_status", 0o700)
            .dir("global", 0o700)
            .file("global/pg_control", &data(8192, 3), 0o600)
    }

    fn expected_files() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("backup_label", b"START WAL LOCATION: 0/2000028\n".to_vec()),
            ("base/1/1259", data(8192 * 3 + 100, 1)),
            ("base/1/1259_fsm", data(513, 2)),
            ("base/1/PG_VERSION", b"16\n".to_vec()),
            ("base/1/empty", vec![]),
            ("global/pg_control", data(8192, 3)),
        ]
    }

    /// A scratch area: `top/` holds the roots, so "nothing outside the roots" means `top/` holds
    /// nothing else.
    struct Scratch {
        dir: tempfile::TempDir,
        roots: Vec<PathBuf>,
    }

    fn scratch(n: usize) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let roots: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("t{i}"))).collect();
        for r in &roots {
            DirBuilder::new().mode(0o700).create(r).unwrap();
        }
        Scratch { dir, roots }
    }

    impl Scratch {
        fn dest(&self) -> ArchiveDestination {
            ArchiveDestination {
                roots: self.roots.clone(),
                manifest_prefix: String::new(),
            }
        }
        fn extract(&self, tar: &[u8]) -> Result<Vec<WrittenFile>, UnpackError> {
            extract_archive(
                ReadChunks::new(tar),
                &self.dest(),
                &ExtractOptions::default(),
                &mut |_| {},
            )
        }
        /// Only the roots (and whatever the test put there on purpose) exist beside them.
        fn assert_nothing_outside(&self, extra: &[&str]) {
            let mut names: Vec<String> = fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            let mut want: Vec<String> = (0..self.roots.len()).map(|i| format!("t{i}")).collect();
            want.extend(extra.iter().map(|s| s.to_string()));
            want.sort();
            assert_eq!(names, want);
        }
    }

    /// (relative path, kind, mode, content or link target), sorted.
    fn tree(root: &Path) -> Vec<(String, char, u32, Vec<u8>)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, char, u32, Vec<u8>)>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                let m = fs::symlink_metadata(&p).unwrap();
                let mode = m.mode() & 0o7777;
                if m.file_type().is_symlink() {
                    let t = fs::read_link(&p).unwrap();
                    out.push((rel, 'l', 0, t.as_os_str().as_bytes().to_vec()));
                } else if m.is_dir() {
                    out.push((rel, 'd', mode, vec![]));
                    walk(root, &p, out);
                } else {
                    out.push((rel, 'f', mode, fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = vec![];
        walk(root, root, &mut out);
        out.sort();
        out
    }

    fn summary(w: &[WrittenFile]) -> Vec<(String, u64, Option<String>)> {
        w.iter()
            .map(|f| (lossy(&f.path), f.size, f.checksum.clone()))
            .collect()
    }

    fn crc(bytes: &[u8]) -> Option<String> {
        let mut c = FileChecksum::new(ChecksumAlgorithm::Crc32c);
        c.update(bytes);
        c.finish()
    }

    /// Returns reads of 1..=7 bytes, cycling from where `step` starts.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.step += 1;
            let n = (self.step % 7 + 1).min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// The first read returns `split` bytes, later ones the rest.
    struct SplitAt<'a> {
        data: &'a [u8],
        split: usize,
    }

    impl Read for SplitAt<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = if self.split > 0 {
                self.split
            } else {
                self.data.len()
            }
            .min(buf.len())
            .min(self.data.len());
            self.split = self.split.saturating_sub(n);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    // ---- normal extraction -----------------------------------------------------------------

    #[test]
    fn extracts_into_one_root() {
        let s = scratch(1);
        let tar = base_archive().end();
        let mut progress = 0;
        let written = extract_archive(
            ReadChunks::new(&tar[..]),
            &s.dest(),
            &ExtractOptions::default(),
            &mut |n| progress += n,
        )
        .unwrap();

        let want: Vec<_> = expected_files()
            .into_iter()
            .map(|(p, d)| (p.to_string(), d.len() as u64, crc(&d)))
            .collect();
        assert_eq!(summary(&written), want);
        assert_eq!(progress, want.iter().map(|w| w.1).sum::<u64>());

        let root = &s.roots[0];
        for (p, d) in expected_files() {
            assert_eq!(fs::read(root.join(p)).unwrap(), d, "{p}");
        }
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("base/1/1259"), 0o600);
        assert_eq!(mode("base/1/1259_fsm"), 0o640);
        assert_eq!(mode("base"), 0o700);
        assert_eq!(mode("group_dir"), 0o750);
        assert!(root.join("pg_wal/archive_status").is_dir());
        assert_eq!(fs::metadata(root).unwrap().mode() & 0o7777, 0o700);
        s.assert_nothing_outside(&[]);
    }

    #[test]
    fn two_roots_get_identical_trees() {
        let s = scratch(2);
        let tar = base_archive().end();
        let written = s.extract(&tar).unwrap();
        assert_eq!(written.len(), expected_files().len());
        let a = tree(&s.roots[0]);
        assert_eq!(a, tree(&s.roots[1]));

        let one = scratch(1);
        one.extract(&tar).unwrap();
        assert_eq!(a, tree(&one.roots[0]));
        s.assert_nothing_outside(&[]);
    }

    #[test]
    fn large_files_are_written_back_on_the_way_and_come_out_whole() {
        // Past the writeback window, so data is waited for and dropped from the cache midway.
        let size = (WRITEBACK_WINDOW + 2 * WRITEBACK_STEP) as usize + 777;
        let content = data(size, 11);
        let s = scratch(2);
        let w = s
            .extract(&Tar::default().file("big", &content, 0o600).end())
            .unwrap();
        assert_eq!(
            summary(&w),
            [("big".to_string(), size as u64, crc(&content))]
        );
        for r in &s.roots {
            assert!(fs::read(r.join("big")).unwrap() == content);
        }
    }

    #[test]
    fn a_failing_writer_fails_the_extraction_with_its_own_error() {
        let s = scratch(2);
        fs::write(s.roots[1].join("b"), b"in the way").unwrap();
        let mut tar = Tar::default().file("a", b"1", 0o600).file("b", b"2", 0o600);
        // More entries than one hand-over batch, so the parser is still going when it fails.
        for i in 0..HANDOFF_OPS {
            tar = tar.file(&format!("c{i}"), b"3", 0o600);
        }
        let err = s.extract(&tar.end()).expect_err("extraction should fail");
        let in_the_way = s.roots[1].join("b");
        assert!(
            matches!(&err, UnpackError::Duplicate { path, .. } if *path == in_the_way),
            "{err}"
        );
        assert_eq!(fs::read(s.roots[0].join("a")).unwrap(), b"1");
    }

    #[test]
    fn sha256_checksums_are_recorded() {
        let s = scratch(1);
        let tar = Tar::default().file("abc", b"abc", 0o600).end();
        let opts = ExtractOptions {
            checksum: ChecksumAlgorithm::Sha256,
            ..ExtractOptions::default()
        };
        let w = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {}).unwrap();
        assert_eq!(
            w[0].checksum.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        let opts = ExtractOptions {
            checksum: ChecksumAlgorithm::None,
            ..ExtractOptions::default()
        };
        let s = scratch(1);
        let w = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {}).unwrap();
        assert_eq!(w[0].checksum, None);
    }

    #[test]
    fn tiny_reads_give_the_same_result() {
        let tar = base_archive().end();
        let reference = scratch(2);
        let want = summary(&reference.extract(&tar).unwrap());
        let want_tree = tree(&reference.roots[0]);
        for phase in 0..7 {
            let s = scratch(2);
            let reader = Dribble {
                data: &tar,
                step: phase,
            };
            let w = extract_archive(
                ReadChunks::new(reader),
                &s.dest(),
                &ExtractOptions::default(),
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(summary(&w), want, "phase {phase}");
            assert_eq!(tree(&s.roots[0]), want_tree);
            assert_eq!(tree(&s.roots[1]), want_tree);
        }
    }

    #[test]
    fn split_at_every_offset_gives_the_same_result() {
        let tar = Tar::default()
            .dir("d", 0o700)
            .file("d/a", &data(700, 4), 0o600)
            .file("d/b", b"xyz", 0o600)
            .end();
        let want = summary(&scratch(1).extract(&tar).unwrap());
        // One scratch directory for all runs: creating and removing thousands is slow on ext4.
        let top = tempfile::tempdir().unwrap();
        for split in 1..tar.len() {
            let root = top.path().join(split.to_string());
            fs::create_dir(&root).unwrap();
            let dest = ArchiveDestination {
                roots: vec![root.clone()],
                manifest_prefix: String::new(),
            };
            let reader = SplitAt { data: &tar, split };
            let w = extract_archive(
                ReadChunks::new(reader),
                &dest,
                &ExtractOptions::default(),
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(summary(&w), want, "split {split}");
            assert_eq!(fs::read(root.join("d/a")).unwrap(), data(700, 4));
        }
    }

    #[test]
    fn pg14_stream_without_trailer_is_accepted() {
        let s = scratch(1);
        let tar = base_archive().0;
        assert_eq!(s.extract(&tar).unwrap().len(), expected_files().len());
    }

    #[test]
    fn extra_zero_padding_after_the_trailer_is_accepted() {
        let s = scratch(1);
        let mut tar = base_archive().end();
        tar.resize(tar.len() + 10_000, 0);
        assert!(s.extract(&tar).is_ok());
    }

    #[test]
    fn trailing_garbage_after_the_zero_block_is_rejected() {
        let s = scratch(1);
        let mut tar = base_archive().end();
        let at = tar.len() as u64;
        tar.push(1);
        let err = s.extract(&tar).expect_err("extraction should fail");
        assert!(
            matches!(err, UnpackError::TrailingGarbage { offset } if offset == at),
            "{err}"
        );

        // A real entry after one zero block is garbage too: the archive ended.
        let s = scratch(1);
        let mut tar = Tar::default().file("a", b"1", 0o600).0;
        tar.resize(tar.len() + BLOCK, 0);
        let tar = Tar(tar).file("b", b"2", 0o600).end();
        assert!(matches!(
            s.extract(&tar),
            Err(UnpackError::TrailingGarbage { .. })
        ));
        assert!(!s.roots[0].join("b").exists());
    }

    #[test]
    fn pre_existing_pg_wal_is_tolerated() {
        let s = scratch(2);
        for r in &s.roots {
            fs::create_dir_all(r.join("pg_wal/archive_status")).unwrap();
            fs::write(r.join("pg_wal/000000010000000000000002.partial"), b"wal").unwrap();
        }
        s.extract(&base_archive().end()).unwrap();
        for r in &s.roots {
            assert!(r.join("pg_wal/000000010000000000000002.partial").is_file());
            assert!(r.join("global/pg_control").is_file());
        }
    }

    #[test]
    fn wal_files_in_the_archive_are_written() {
        let s = scratch(1);
        let tar = Tar::default()
            .dir("pg_wal", 0o700)
            .dir("./pg_wal/archive_status", 0o700)
            .file("pg_wal/000000010000000000000002", &data(4096, 9), 0o600)
            .file(
                "pg_wal/archive_status/000000010000000000000002.done",
                b"",
                0o600,
            )
            .end();
        let w = s.extract(&tar).unwrap();
        assert_eq!(
            lossy(&w[1].path),
            "pg_wal/archive_status/000000010000000000000002.done"
        );
    }

    #[test]
    fn duplicate_entries_are_rejected() {
        let s = scratch(2);
        let tar = Tar::default()
            .file("a", b"first", 0o600)
            .file("a", b"second", 0o600)
            .end();
        let err = s.extract(&tar).expect_err("extraction should fail");
        assert!(matches!(err, UnpackError::Duplicate { .. }), "{err}");
        assert!(
            err.to_string().starts_with("tar entry `a` is a duplicate"),
            "{err}"
        );
        assert_eq!(fs::read(s.roots[0].join("a")).unwrap(), b"first");

        let s = scratch(1);
        let tar = Tar::default().dir("d", 0o700).file("d", b"x", 0o600).end();
        assert!(matches!(
            s.extract(&tar),
            Err(UnpackError::Duplicate { .. })
        ));

        let s = scratch(1);
        let tar = Tar::default().file("f", b"x", 0o600).dir("f", 0o700).end();
        let err = s.extract(&tar).expect_err("extraction should fail");
        assert!(matches!(err, UnpackError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn a_pre_existing_symlink_is_never_followed() {
        let s = scratch(1);
        let outside = s.dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, s.roots[0].join("d")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), s.roots[0].join("f")).unwrap();
        let tar = Tar::default().dir("d", 0o700).end();
        assert!(matches!(
            s.extract(&tar),
            Err(UnpackError::NotADirectory { .. })
        ));
        let tar = Tar::default().file("f", b"x", 0o600).end();
        assert!(matches!(
            s.extract(&tar),
            Err(UnpackError::Duplicate { .. })
        ));
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    // ---- tablespaces ------------------------------------------------------------------------

    fn ts_options(s: &Scratch) -> ExtractOptions {
        let targets = (0..s.roots.len())
            .map(|i| s.dir.path().join(format!("ts{i}")))
            .collect();
        ExtractOptions {
            tablespace_links: HashMap::from([(16384, targets)]),
            ..ExtractOptions::default()
        }
    }

    #[test]
    fn tablespace_link_points_to_the_mapped_path() {
        let s = scratch(2);
        let opts = ts_options(&s);
        let tar = Tar::default()
            .dir("pg_tblspc", 0o700)
            .link("pg_tblspc/16384", "/srv/pg/ts1")
            .file("PG_VERSION", b"16\n", 0o600)
            .end();
        let w = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {}).unwrap();
        assert_eq!(summary(&w).len(), 1, "links are not recorded as files");
        for (i, r) in s.roots.iter().enumerate() {
            let target = fs::read_link(r.join("pg_tblspc/16384")).unwrap();
            assert_eq!(target, s.dir.path().join(format!("ts{i}")));
        }
    }

    #[test]
    fn entries_under_a_created_link_are_rejected() {
        for tail in [
            Tar::default().file("pg_tblspc/16384/evil", b"x", 0o600),
            Tar::default().dir("pg_tblspc/16384/PG_16_202307071", 0o700),
            Tar::default().dir("pg_tblspc/16384", 0o700),
        ] {
            let s = scratch(1);
            let opts = ts_options(&s);
            fs::create_dir(s.dir.path().join("ts0")).unwrap();
            let mut tar = Tar::default()
                .dir("pg_tblspc", 0o700)
                .link("pg_tblspc/16384", "/srv/pg/ts1")
                .0;
            tar.extend_from_slice(&tail.end());
            let err = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {})
                .expect_err("extraction should fail");
            assert!(matches!(err, UnpackError::UnderSymlink { .. }), "{err}");
            assert_eq!(fs::read_dir(s.dir.path().join("ts0")).unwrap().count(), 0);
        }
    }

    #[test]
    fn missing_tablespace_mapping_names_dash_t() {
        let s = scratch(1);
        let tar = Tar::default()
            .dir("pg_tblspc", 0o700)
            .link("pg_tblspc/99999", "/srv/pg/ts9")
            .end();
        let err = s.extract(&tar).expect_err("extraction should fail");
        assert_eq!(
            err.to_string(),
            "tablespace 99999 at `/srv/pg/ts9` has no mapping; give -T /srv/pg/ts9=NEWDIR"
        );
    }

    #[test]
    fn mapping_with_the_wrong_number_of_targets_is_an_error() {
        let s = scratch(2);
        let mut opts = ts_options(&s);
        opts.tablespace_links.get_mut(&16384).unwrap().pop();
        let tar = Tar::default()
            .dir("pg_tblspc", 0o700)
            .link("pg_tblspc/16384", "/srv/pg/ts1")
            .end();
        let err = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {})
            .expect_err("extraction should fail");
        assert!(matches!(
            err,
            UnpackError::MappingMismatch {
                got: 1,
                want: 2,
                ..
            }
        ));
    }

    #[test]
    fn tablespace_archive_paths_get_the_prefix_and_links_are_refused() {
        let s = scratch(2);
        let dest = ArchiveDestination {
            roots: s.roots.clone(),
            manifest_prefix: "pg_tblspc/16384/".into(),
        };
        let tar = Tar::default()
            .dir("PG_16_202307071", 0o700)
            .dir("PG_16_202307071/5", 0o700)
            .file("PG_16_202307071/5/16385", &data(9000, 5), 0o600)
            .end();
        let w = extract_archive(
            ReadChunks::new(&tar[..]),
            &dest,
            &ExtractOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(lossy(&w[0].path), "pg_tblspc/16384/PG_16_202307071/5/16385");
        assert_eq!(tree(&s.roots[0]), tree(&s.roots[1]));

        let s = scratch(1);
        let dest = ArchiveDestination {
            roots: s.roots.clone(),
            manifest_prefix: "pg_tblspc/16384/".into(),
        };
        let opts = ts_options(&s);
        let tar = Tar::default()
            .dir("pg_tblspc", 0o700)
            .link("pg_tblspc/16384", "/x")
            .end();
        let err = extract_archive(ReadChunks::new(&tar[..]), &dest, &opts, &mut |_| {})
            .expect_err("extraction should fail");
        assert!(
            matches!(err, UnpackError::UnexpectedSymlink { .. }),
            "{err}"
        );
    }

    // ---- hostile and broken streams ----------------------------------------------------------

    /// A valid prefix, then `hostile`; must fail without touching anything outside the roots.
    fn assert_hostile(hostile: Vec<u8>, check: impl Fn(&UnpackError) -> bool) -> UnpackError {
        let s = scratch(2);
        let mut tar = Tar::default()
            .dir("base", 0o700)
            .file("base/ok", b"ok", 0o600)
            .0;
        tar.extend_from_slice(&hostile);
        let err = s.extract(&tar).expect_err("extraction should fail");
        assert!(check(&err), "unexpected error: {err}");
        s.assert_nothing_outside(&[]);
        for r in &s.roots {
            let names: Vec<_> = tree(r).into_iter().map(|e| e.0).collect();
            assert_eq!(names, ["base", "base/ok"]);
        }
        err
    }

    fn entry(name: &[u8], kind: u8, link: &[u8]) -> Vec<u8> {
        Tar::default()
            .raw(&header(name, kind, 5, 0o600, link), b"evil!")
            .end()
    }

    #[test]
    fn dot_dot_is_rejected() {
        for name in [&b"../x"[..], b"base/../../x", b"./../x", b"base/.."] {
            let err = assert_hostile(entry(name, b'0', b""), |e| {
                matches!(e, UnpackError::Escapes { .. })
            });
            let shown = String::from_utf8_lossy(name);
            assert_eq!(
                err.to_string(),
                format!("tar entry `{shown}` escapes the target directory")
            );
        }
    }

    #[test]
    fn absolute_paths_are_rejected() {
        let s = scratch(1);
        let abs = s.dir.path().join("abs_evil");
        let err = assert_hostile(entry(abs.as_os_str().as_bytes(), b'0', b""), |e| {
            matches!(e, UnpackError::Escapes { .. })
        });
        assert!(err.to_string().contains("escapes the target directory"));
        assert!(!abs.exists());
        assert_hostile(entry(b".//x", b'0', b""), |e| {
            matches!(e, UnpackError::Escapes { .. })
        });
    }

    #[test]
    fn odd_names_are_rejected() {
        for name in [&b"./"[..], b"base/./x", b"base//x", b"a//", b"./."] {
            assert_hostile(entry(name, b'0', b""), |e| {
                matches!(e, UnpackError::InvalidName { .. })
            });
        }
    }

    #[test]
    fn unsupported_types_are_rejected() {
        for (kind, link) in [
            (b'1', &b"/etc/passwd"[..]), // hard link
            (b'3', b""),                 // character device
            (b'4', b""),                 // block device
            (b'6', b""),                 // fifo
            (b'7', b""),                 // contiguous file
            (b'L', b""),                 // GNU long name
            (b'K', b""),                 // GNU long link name
            (b'x', b""),                 // pax header
            (b'g', b""),                 // pax global header
            (b'S', b""),                 // GNU sparse
        ] {
            let err = assert_hostile(entry(b"base/evil", kind, link), |e| {
                matches!(e, UnpackError::UnsupportedType { .. })
            });
            assert_eq!(
                err.to_string(),
                format!(
                    "tar entry `base/evil` has unsupported type {}",
                    kind as char
                )
            );
        }
    }

    #[test]
    fn symlinks_outside_pg_tblspc_are_rejected() {
        for name in [
            &b"base/evil"[..],
            b"pg_tblspc/abc",
            b"pg_tblspc/1/2",
            b"pg_tblspc/",
        ] {
            let tar = Tar::default()
                .raw(&header(name, b'2', 0, 0o777, b"/etc"), b"")
                .end();
            assert_hostile(tar, |e| matches!(e, UnpackError::UnexpectedSymlink { .. }));
        }
    }

    #[test]
    fn bad_header_checksum_is_rejected() {
        let mut h = header(b"base/evil", b'0', 5, 0o600, b"");
        h.as_mut_bytes()[0] ^= 1;
        let tar = Tar::default().raw(&h, b"evil!").end();
        let err = assert_hostile(tar, |e| {
            matches!(e, UnpackError::BadChecksum { offset: 1536, .. })
        });
        assert!(err.to_string().contains("bad checksum"), "{err}");
    }

    #[test]
    fn huge_sizes_are_rejected() {
        // 2 TiB in GNU base-256, as the server would write it.
        let h = header(b"base/huge", b'0', 2 << 40, 0o600, b"");
        assert_eq!(h.as_old().size[0], 0x80);
        let err = assert_hostile(
            Tar::default().raw(&h, b"").end(),
            |e| matches!(e, UnpackError::ImpossibleSize { size, .. } if *size == 2 << 40),
        );
        assert_eq!(
            err.to_string(),
            format!("tar entry `base/huge` has impossible size {}", 2u64 << 40)
        );

        // Wider than 64 bits, and negative: tar-rs would read only the low 8 bytes.
        for field in [
            [0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5],
            [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 5],
        ] {
            let mut h = header(b"base/huge", b'0', 0, 0o600, b"");
            h.as_old_mut().size = field;
            h.set_cksum();
            assert_hostile(Tar::default().raw(&h, b"evil!").end(), |e| {
                matches!(e, UnpackError::Malformed { .. })
            });
        }
    }

    #[test]
    fn base_256_sizes_within_limits_are_accepted() {
        let s = scratch(1);
        let mut h = header(b"f", b'0', 0, 0o600, b"");
        h.as_old_mut().size = [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        h.set_cksum();
        let tar = Tar::default().raw(&h, b"hello").end();
        assert_eq!(s.extract(&tar).unwrap()[0].size, 5);
    }

    #[test]
    fn truncated_streams_are_rejected() {
        let full = Tar::default()
            .dir("base", 0o700)
            .file("base/f", &data(1000, 7), 0o600)
            .0;
        let s = scratch(1);
        let err = s
            .extract(&full[..BLOCK * 2 + 300])
            .expect_err("extraction should fail");
        assert_eq!(
            err.to_string(),
            "archive ends inside `base/f` (got 300 of 1000 bytes)"
        );

        let s = scratch(1);
        let err = s
            .extract(&full[..BLOCK * 2 + 1010])
            .expect_err("extraction should fail");
        assert!(matches!(err, UnpackError::TruncatedPadding { .. }), "{err}");

        let s = scratch(1);
        let err = s
            .extract(&full[..BLOCK + 100])
            .expect_err("extraction should fail");
        assert!(
            matches!(
                err,
                UnpackError::TruncatedHeader {
                    offset: 512,
                    got: 100
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn non_empty_directories_are_malformed() {
        let tar = Tar::default()
            .raw(&header(b"base/d/", b'5', 5, 0o700, b""), b"evil!")
            .end();
        assert_hostile(tar, |e| matches!(e, UnpackError::Malformed { .. }));
    }

    #[test]
    fn setuid_bits_are_dropped_and_owner_bits_forced() {
        let s = scratch(1);
        let tar = Tar::default()
            .file("suid", b"x", 0o4755)
            .file("ro", b"x", 0o400)
            .dir("rodir", 0o500)
            .file("rodir/f", b"x", 0o600)
            .end();
        s.extract(&tar).unwrap();
        let mode = |p: &str| fs::metadata(s.roots[0].join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(mode("ro"), 0o600);
        assert_eq!(mode("rodir"), 0o700);
    }

    #[test]
    fn owner_is_applied() {
        let s = scratch(1);
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let opts = ExtractOptions {
            owner: Some((uid, gid)),
            ..ts_options(&s)
        };
        let tar = Tar::default()
            .dir("pg_tblspc", 0o700)
            .link("pg_tblspc/16384", "/x")
            .file("f", b"x", 0o640)
            .end();
        extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {}).unwrap();
        let m = fs::metadata(s.roots[0].join("f")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (uid, gid, 0o640));
    }

    #[test]
    fn read_and_write_errors_name_their_place() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("connection reset"))
            }
        }
        let s = scratch(1);
        let err = extract_archive(
            ReadChunks::new(Failing),
            &s.dest(),
            &ExtractOptions::default(),
            &mut |_| {},
        )
        .expect_err("extraction should fail");
        // The message names the place; the cause follows in the source chain.
        let cause = |e: &UnpackError| std::error::Error::source(e).unwrap().to_string();
        assert_eq!(err.to_string(), "read the tar stream at offset 0");
        assert_eq!(cause(&err), "connection reset");

        // A missing parent directory: the server always sends it first, so this is an error.
        let s = scratch(1);
        let err = s
            .extract(&Tar::default().file("nodir/f", b"x", 0o600).end())
            .expect_err("extraction should fail");
        let path = s.roots[0].join("nodir/f");
        assert_eq!(err.to_string(), format!("create `{}`", path.display()));
        assert_eq!(cause(&err), "No such file or directory (os error 2)");
    }

    #[test]
    fn no_roots_is_an_error() {
        let dest = ArchiveDestination {
            roots: vec![],
            manifest_prefix: String::new(),
        };
        let err = extract_archive(
            ReadChunks::new(&[][..]),
            &dest,
            &ExtractOptions::default(),
            &mut |_| {},
        )
        .expect_err("extraction should fail");
        assert!(matches!(err, UnpackError::NoDestinations));
    }

    #[test]
    fn clean_name_table() {
        let ok = |raw: &str, want: &str| {
            assert_eq!(clean_name(raw.as_bytes()).unwrap(), want.as_bytes())
        };
        ok("./pg_wal/archive_status", "pg_wal/archive_status");
        ok("base/", "base");
        ok("a", "a");
        ok("..a/b..", "..a/b..");
        for bad in [
            "", "/", "./", "/a", "a/../b", "..", "./..", "a/./b", ".", "a//b", "a//", "a\0b",
        ] {
            assert!(clean_name(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
