//! Tar extraction: `backup::unpack::extract_archive` of fuzz bytes into a fresh temporary
//! directory, as the base archive (where `pg_tblspc/<oid>` links are allowed) with two roots.
//!
//! Checked beyond "no panic": nothing appears outside the roots (the sandbox directory holds only
//! them afterwards), nothing inside is a symlink except `pg_tblspc/<oid>` links pointing at the
//! mapped location, and no special files are created.
#![no_main]

use std::collections::HashMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use pgrepl::backup::checksum::ChecksumAlgorithm;
use pgrepl::backup::unpack::{self, ArchiveDestination, ExtractOptions, ReadChunks};

/// Reads in pieces of at most `max` bytes, so headers and data straddle chunk boundaries.
struct Pieces {
    inner: Cursor<Vec<u8>>,
    max: usize,
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.max);
        self.inner.read(&mut buf[..n])
    }
}

fn check_tree(dir: &Path, root: &Path, link_target: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            let rel = path.strip_prefix(root).unwrap();
            assert!(
                rel.starts_with("pg_tblspc") && rel.components().count() == 2,
                "unexpected symlink {}",
                path.display()
            );
            assert_eq!(fs::read_link(&path).unwrap(), link_target);
        } else if kind.is_dir() {
            check_tree(&path, root, link_target);
        } else {
            assert!(kind.is_file(), "special file {}", path.display());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, archive)) = data.split_first() else {
        return;
    };
    // Memory-backed when possible: thousands of tiny trees a minute.
    let shm = Path::new("/dev/shm");
    let sandbox = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let roots: Vec<PathBuf> = ["a", "b"].iter().map(|r| sandbox.path().join(r)).collect();
    for root in &roots {
        fs::create_dir(root).unwrap();
    }
    // Where `pg_tblspc/16385` may point; never created, so nothing can be written through it.
    let outside = sandbox.path().join("tablespace");
    let options = ExtractOptions {
        checksum: ChecksumAlgorithm::Crc32c,
        tablespace_links: HashMap::from([(16385, vec![outside.clone(), outside.clone()])]),
        owner: None,
        max_entry_size: 1 << 20,
        sync: false,
    };
    let source = ReadChunks::new(Pieces {
        inner: Cursor::new(archive.to_vec()),
        max: usize::from(piece).max(1) * 8,
    });
    let dest = ArchiveDestination {
        roots: roots.clone(),
        manifest_prefix: String::new(),
    };
    let _ = unpack::extract_archive(source, &dest, &options, &mut |_| {});
    let mut names: Vec<_> = fs::read_dir(sandbox.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"], "something was written outside the roots");
    for root in &roots {
        check_tree(root, root, &outside);
    }
});
