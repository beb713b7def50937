//! The check of a finished backup against its manifest: the manifest's entries merged with the
//! record of what was written, in stream order, with flat memory.

use std::collections::HashMap;
use std::io::{self, Read};

use super::super::written::WrittenFile;
use super::{
    is_ignored_path, read, FileProblem, ManifestError, ManifestFile, ManifestHeader, ProblemKind,
};

/// How many problems [`ManifestError::FilesDoNotMatch`] keeps in full; the rest are counted.
pub(super) const MAX_KEPT_PROBLEMS: usize = 100;

/// Checks that every manifest file was written with the same size and checksum, and that no file
/// was written that the manifest does not list. `written` is the record of what was written, in
/// stream order; `manifest` and `checksum` as for [`read`].
///
/// The server lists files in the order it sends them, so the two lists are merged side by side
/// and memory stays flat whatever the number of files. Whatever comes out of order (a file
/// missing on one side, or a server that orders differently) is looked up among the written
/// records read ahead, which are held until matched: correct in any order, with memory only for
/// the disorder.
///
/// Paths that `pg_verifybackup` ignores by default ([`is_ignored_path`]) are skipped on both
/// sides. That covers all of `pg_wal/`, and the top-level `backup_manifest`,
/// `postgresql.auto.conf`, `standby.signal` and `recovery.signal`. A checksum is compared only
/// when the manifest has one and the sizes agree. A path the manifest lists twice is reported
/// missing the second time; one written twice, "written more than once" while its first record
/// is unmatched, else "not in the manifest".
pub fn verify_written(
    manifest: impl Read,
    checksum: &str,
    written: impl Iterator<Item = io::Result<WrittenFile>>,
) -> Result<ManifestHeader, ManifestError> {
    let mut merge = Merge {
        written: written.filter(|w| !w.as_ref().is_ok_and(|w| is_ignored_path(&w.path))),
        ahead: HashMap::new(),
        read: 0,
        problems: Vec::new(),
        total: 0,
    };
    let header = read(manifest, checksum, &mut |m| merge.check(m))?;
    merge.finish()?;
    Ok(header)
}

struct Merge<I> {
    written: I,
    /// Written records read past while looking for a manifest entry: (stream index, size, digest).
    ahead: HashMap<Vec<u8>, (u64, u64, Option<String>)>,
    read: u64,
    problems: Vec<FileProblem>,
    total: usize,
}

impl<I: Iterator<Item = io::Result<WrittenFile>>> Merge<I> {
    fn check(&mut self, m: ManifestFile) -> Result<(), ManifestError> {
        if is_ignored_path(&m.path) {
            return Ok(());
        }
        let found = match self.ahead.remove(&m.path) {
            Some((_, size, checksum)) => Some((size, checksum)),
            None => self.find(&m.path)?,
        };
        let Some((size, written)) = found else {
            self.problem(m.path, ProblemKind::Missing);
            return Ok(());
        };
        if size != m.size {
            let kind = ProblemKind::SizeMismatch {
                written: size,
                manifest: m.size,
            };
            self.problem(m.path, kind);
        } else if let Some(expected) = m.checksum {
            if !written
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(&expected))
            {
                let kind = ProblemKind::ChecksumMismatch {
                    written,
                    manifest: expected,
                };
                self.problem(m.path, kind);
            }
        }
        Ok(())
    }

    /// Reads written records up to the one for `path`, keeping the others for later.
    fn find(&mut self, path: &[u8]) -> Result<Option<(u64, Option<String>)>, ManifestError> {
        while let Some(w) = self.written.next() {
            let w = w.map_err(ManifestError::ReadBack)?;
            self.read += 1;
            if w.path == path {
                return Ok(Some((w.size, w.checksum)));
            }
            if self.ahead.contains_key(&w.path) {
                self.problem(w.path, ProblemKind::WrittenTwice);
            } else {
                self.ahead.insert(w.path, (self.read, w.size, w.checksum));
            }
        }
        Ok(None)
    }

    fn problem(&mut self, path: Vec<u8>, kind: ProblemKind) {
        self.total += 1;
        if self.problems.len() < MAX_KEPT_PROBLEMS {
            self.problems.push(FileProblem { path, kind });
        }
    }

    /// Whatever was written and never matched is not in the manifest, in stream order.
    fn finish(mut self) -> Result<(), ManifestError> {
        self.find(&[])?;
        let mut extra: Vec<_> = self
            .ahead
            .drain()
            .map(|(path, (at, ..))| (at, path))
            .collect();
        extra.sort_unstable();
        for (_, path) in extra {
            self.problem(path, ProblemKind::NotInManifest);
        }
        if self.total == 0 {
            Ok(())
        } else {
            Err(ManifestError::FilesDoNotMatch {
                problems: self.problems,
                total: self.total,
            })
        }
    }
}
