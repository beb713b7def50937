//! What a backup keeps on disk until the end, so that memory stays flat however many files a
//! cluster has: the record of every file written (path, size, checksum) in an unnamed temporary
//! file, and the manifest as it arrives, in the first target's `backup_manifest`. Both are read
//! once, in stream order, when the manifest is complete ([`check_against_manifest`]).
//!
//! A record is `u16` path length, the path, `u64` size, a `u8` digest length (`u8::MAX`: no
//! checksum) and the digest's hex, all little-endian; some 40 bytes for a relation file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::manifest::{self, ManifestDigest, ManifestError};
use super::BackupError;

/// What pgrepl recorded while writing one regular file of the backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenFile {
    /// Manifest-relative path, e.g. `base/1/1259` or
    /// `pg_tblspc/16385/PG_15_202209061/5/16386`.
    pub path: Vec<u8>,
    /// Bytes written.
    pub size: u64,
    /// Digest computed while writing, with the manifest's algorithm (`None` for `NONE`).
    pub checksum: Option<String>,
}

const NO_CHECKSUM: u8 = u8::MAX;

/// Where the extractor records each file it wrote.
pub trait Record {
    fn record(&mut self, file: WrittenFile) -> io::Result<()>;
}

impl Record for Vec<WrittenFile> {
    fn record(&mut self, file: WrittenFile) -> io::Result<()> {
        self.push(file);
        Ok(())
    }
}

impl Record for WrittenLog {
    fn record(&mut self, file: WrittenFile) -> io::Result<()> {
        self.push(&file)
    }
}

/// Appends [`WrittenFile`] records to a temporary file and counts them.
pub struct WrittenLog {
    file: BufWriter<File>,
    files: usize,
    bytes: u64,
}

impl WrittenLog {
    /// A log in an unnamed file in `dir` (`O_TMPFILE` where the file system has it): it never
    /// shows in the directory and is gone when closed, also after a crash.
    pub fn new_in(dir: &Path) -> io::Result<Self> {
        Ok(Self {
            file: BufWriter::with_capacity(64 << 10, tempfile::tempfile_in(dir)?),
            files: 0,
            bytes: 0,
        })
    }

    pub fn push(&mut self, written: &WrittenFile) -> io::Result<()> {
        let len = u16::try_from(written.path.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path longer than 64 KiB"))?;
        self.file.write_all(&len.to_le_bytes())?;
        self.file.write_all(&written.path)?;
        self.file.write_all(&written.size.to_le_bytes())?;
        match &written.checksum {
            None => self.file.write_all(&[NO_CHECKSUM])?,
            Some(hex) => {
                // Digests are at most 128 hex digits (SHA512).
                self.file.write_all(&[hex.len() as u8])?;
                self.file.write_all(hex.as_bytes())?;
            }
        }
        self.files += 1;
        self.bytes += written.size;
        Ok(())
    }

    /// Regular files recorded so far.
    pub fn files(&self) -> usize {
        self.files
    }

    /// Their bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The records from the first, in the order they were pushed.
    pub fn into_records(self) -> io::Result<Records> {
        let mut file = self
            .file
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.rewind()?;
        Ok(Records {
            file: BufReader::with_capacity(64 << 10, file),
        })
    }
}

/// Reads a [`WrittenLog`] back.
pub struct Records {
    file: BufReader<File>,
}

impl Records {
    fn next_record(&mut self) -> io::Result<Option<WrittenFile>> {
        let mut len = [0u8; 2];
        match self.file.read_exact(&mut len) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other?,
        }
        let mut path = vec![0u8; usize::from(u16::from_le_bytes(len))];
        self.file.read_exact(&mut path)?;
        let mut size = [0u8; 8];
        self.file.read_exact(&mut size)?;
        let mut digest_len = [0u8];
        self.file.read_exact(&mut digest_len)?;
        let checksum = match digest_len[0] {
            NO_CHECKSUM => None,
            n => {
                let mut hex = vec![0u8; usize::from(n)];
                self.file.read_exact(&mut hex)?;
                Some(
                    String::from_utf8(hex)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
                )
            }
        };
        Ok(Some(WrittenFile {
            path,
            size: u64::from_le_bytes(size),
            checksum,
        }))
    }
}

impl Iterator for Records {
    type Item = io::Result<WrittenFile>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// The manifest as it arrives: written to `backup_manifest` in the first target, its checksum
/// computed on the way.
pub struct ManifestSink {
    path: PathBuf,
    file: BufWriter<File>,
    digest: ManifestDigest,
}

impl ManifestSink {
    pub fn create(dir: &Path) -> Result<Self, BackupError> {
        let path = dir.join("backup_manifest");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| BackupError::io(format!("create `{}`", path.display()), e))?;
        Ok(Self {
            file: BufWriter::with_capacity(64 << 10, file),
            path,
            digest: ManifestDigest::default(),
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), BackupError> {
        self.digest.update(data);
        self.file
            .write_all(data)
            .map_err(|e| BackupError::io(format!("write `{}`", self.path.display()), e))
    }
}

/// Checks every recorded file against the complete manifest (its checksum first), then copies
/// the manifest into the other targets. Returns how many files the manifest lists.
pub fn check_against_manifest(
    sink: ManifestSink,
    written: WrittenLog,
    other_targets: &[PathBuf],
) -> Result<u64, BackupError> {
    let ManifestSink { path, file, digest } = sink;
    let io = |what: &str, e| BackupError::io(format!("{what} `{}`", path.display()), e);
    file.into_inner()
        .map_err(io::IntoInnerError::into_error)
        .map_err(|e| io("write", e))?;
    let checksum = digest.finish()?;
    let records = written
        .into_records()
        .map_err(|e| BackupError::from(ManifestError::ReadBack(e)))?;
    let manifest = File::open(&path).map_err(|e| io("open", e))?;
    let header = manifest::verify_written(manifest, &checksum, records)?;
    for dir in other_targets {
        let copy = dir.join("backup_manifest");
        std::fs::copy(&path, &copy).map_err(|e| {
            BackupError::io(format!("copy the manifest to `{}`", copy.display()), e)
        })?;
    }
    Ok(header.files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_leave_nothing_in_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let files = [
            WrittenFile {
                path: b"base/1/1259".to_vec(),
                size: 16384,
                checksum: Some("8a744722".into()),
            },
            WrittenFile {
                path: b"odd\xff\x00name".to_vec(),
                size: 0,
                checksum: None,
            },
            WrittenFile {
                path: vec![b'x'; 4000],
                size: 1 << 40,
                checksum: Some("f".repeat(128)),
            },
        ];
        let mut log = WrittenLog::new_in(tmp.path()).unwrap();
        for f in &files {
            log.push(f).unwrap();
        }
        assert_eq!((log.files(), log.bytes()), (3, (1 << 40) + 16384));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        let back: Vec<_> = log.into_records().unwrap().map(Result::unwrap).collect();
        assert_eq!(back, files);

        let mut log = WrittenLog::new_in(tmp.path()).unwrap();
        let too_long = WrittenFile {
            path: vec![b'x'; 70_000],
            size: 1,
            checksum: None,
        };
        assert_eq!(
            log.push(&too_long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(log.into_records().unwrap().count(), 0);
    }
}
