//! The writer side of extraction: one thread per root applies the parser's operations (create
//! directories, files and symlinks, append data, verify checksums), starting writeback of large
//! files as they are written.

use super::*;

/// One root's writer: applies the batches in order and stops at the first error.
pub(super) fn write_ops(
    root: &Path,
    index: usize,
    opts: &ExtractOptions,
    batches: Receiver<Arc<Vec<Op>>>,
) -> Result<(), UnpackError> {
    let mut open: Option<OpenFile> = None;
    for batch in batches {
        let mut ops = &batch[..];
        while let Some((op, rest)) = ops.split_first() {
            ops = rest;
            match op {
                Op::Directory { name, mode } => create_dir(root, name, *mode, opts)?,
                Op::Create { name, mode } => {
                    open = Some(OpenFile::create(root, name, *mode, opts)?)
                }
                Op::Write(first) => {
                    // This piece and the ones right after it, in one syscall.
                    let mut data = vec![IoSlice::new(first)];
                    while let Some((Op::Write(next), rest)) = ops.split_first() {
                        data.push(IoSlice::new(next));
                        ops = rest;
                    }
                    open.as_mut()
                        .expect("the parser sends Write only between Create and Close")
                        .write(&mut data)?
                }
                Op::Close => open
                    .take()
                    .expect("the parser sends Close only after Create")
                    .close()?,
                Op::Symlink { name, targets } => create_symlink(root, name, &targets[index], opts)?,
            }
        }
    }
    Ok(())
}

pub(super) fn create_dir(
    root: &Path,
    name: &[u8],
    mode: u32,
    opts: &ExtractOptions,
) -> Result<(), UnpackError> {
    let path = root.join(OsStr::from_bytes(name));
    match DirBuilder::new().mode(mode).create(&path) {
        Ok(()) => {
            if let Some((uid, gid)) = opts.owner {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                    .map_err(|e| io_error("chown", &path, e))?;
            }
            // Restore what the umask took; after chown, which may clear set-group-ID.
            if mode & 0o7077 != 0 {
                fs::set_permissions(&path, Permissions::from_mode(mode))
                    .map_err(|e| io_error("chmod", &path, e))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // `pg_wal/` and friends, made early by the WAL streamer: keep as they are.
            let meta = fs::symlink_metadata(&path).map_err(|e| io_error("stat", &path, e))?;
            if meta.is_dir() {
                Ok(())
            } else {
                Err(UnpackError::NotADirectory {
                    name: lossy(name),
                    path,
                })
            }
        }
        Err(e) => Err(io_error("create directory", &path, e)),
    }
}

pub(super) fn create_symlink(
    root: &Path,
    name: &[u8],
    target: &Path,
    opts: &ExtractOptions,
) -> Result<(), UnpackError> {
    let path = root.join(OsStr::from_bytes(name));
    std::os::unix::fs::symlink(target, &path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            UnpackError::Duplicate {
                name: lossy(name),
                path: path.clone(),
            }
        } else {
            io_error("create symlink", &path, source)
        }
    })?;
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(|e| io_error("chown", &path, e))?;
    }
    Ok(())
}

/// A file being written, and how far its data has got towards the disk.
///
/// With [`ExtractOptions::sync`], writeback of each `WRITEBACK_STEP` starts as soon as it is
/// written (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait), so the disk works
/// while the stream is still arriving and the final sync has little left to do. Data
/// `WRITEBACK_WINDOW` behind the write position is waited for and dropped from the page cache:
/// dirty memory stays bounded whatever the database size, the cache that other processes (the
/// primary, when on the same host) rely on is not pushed out by a copy nobody will read soon, and
/// the kernel can recycle the same few pages instead of finding fresh ones for every write, which
/// is the dominant cost of a write on a VM whose free memory is reported back to the host
/// (measured there: 770 MB cost 1.3–2 s of system time into fresh pages, 0.25 s recycled).
pub(super) struct OpenFile {
    file: File,
    path: PathBuf,
    sync: bool,
    /// Bytes written so far.
    written: u64,
    /// Writeback has been started for everything below this.
    queued: u64,
    /// Everything below this is on disk and out of the page cache.
    dropped: u64,
}

impl OpenFile {
    fn create(
        root: &Path,
        name: &[u8],
        mode: u32,
        opts: &ExtractOptions,
    ) -> Result<Self, UnpackError> {
        let path = root.join(OsStr::from_bytes(name));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    UnpackError::Duplicate {
                        name: lossy(name),
                        path: path.clone(),
                    }
                } else {
                    io_error("create", &path, source)
                }
            })?;
        if let Some((uid, gid)) = opts.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| io_error("chown", &path, e))?;
        }
        // The umask may have cleared group/other bits; owner bits are ours already.
        if mode & 0o077 != 0 {
            file.set_permissions(Permissions::from_mode(mode))
                .map_err(|e| io_error("chmod", &path, e))?;
        }
        Ok(Self {
            file,
            path,
            sync: opts.sync,
            written: 0,
            queued: 0,
            dropped: 0,
        })
    }

    fn write(&mut self, data: &mut [IoSlice<'_>]) -> Result<(), UnpackError> {
        let mut rest = data;
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => {
                    let source = io::Error::from(io::ErrorKind::WriteZero);
                    return Err(io_error("write", &self.path, source));
                }
                Ok(n) => {
                    self.written += n as u64;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("write", &self.path, e)),
            }
        }
        if !self.sync {
            return Ok(());
        }
        while self.written - self.queued >= WRITEBACK_STEP {
            self.sync_range(self.queued, WRITEBACK_STEP, libc::SYNC_FILE_RANGE_WRITE)?;
            self.queued += WRITEBACK_STEP;
        }
        while self.queued - self.dropped > WRITEBACK_WINDOW {
            let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            self.sync_range(self.dropped, WRITEBACK_STEP, wait)?;
            // Advice only: if the kernel keeps the pages, nothing is lost but memory.
            // SAFETY: plain syscall on a descriptor `self.file` keeps open.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    self.dropped as libc::off_t,
                    WRITEBACK_STEP as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
            self.dropped += WRITEBACK_STEP;
        }
        Ok(())
    }

    /// Starts writeback of whatever is not yet under way (for files of at least
    /// `WRITEBACK_MIN_FILE`); the last window stays cached, clean soon, for the kernel to reclaim
    /// when it likes.
    fn close(self) -> Result<(), UnpackError> {
        if self.sync && self.written >= WRITEBACK_MIN_FILE && self.written > self.queued {
            // A length of 0 means "to the end of the file".
            self.sync_range(self.queued, 0, libc::SYNC_FILE_RANGE_WRITE)?;
        }
        Ok(())
    }

    fn sync_range(&self, offset: u64, len: u64, flags: libc::c_uint) -> Result<(), UnpackError> {
        // SAFETY: plain syscall on a descriptor `self.file` keeps open.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                flags,
            )
        };
        if rc != 0 {
            return Err(io_error(
                "write back",
                &self.path,
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// The header checksum: all 512 bytes summed as unsigned, the checksum field counted as spaces.
pub(super) fn verify_checksum(
    header: &tar::Header,
    block: &[u8; BLOCK],
    raw_name: &[u8],
    offset: u64,
) -> Result<(), UnpackError> {
    let computed: u32 = block[..148]
        .iter()
        .chain(&block[156..])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    match header.cksum() {
        Ok(recorded) if recorded == computed => Ok(()),
        _ => Err(UnpackError::BadChecksum {
            name: lossy(raw_name),
            offset,
        }),
    }
}
