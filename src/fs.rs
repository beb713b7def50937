//! Durability helpers shared by everything that writes files: WAL segments
//! (`replication::wal_sink`), base-backup targets (`backup::target`) and the cluster's state
//! files (`cluster::record`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Makes the entries of `dir` (creations, renames) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes everything written to the filesystem holding `file` with one `syncfs(2)`.
pub fn sync_filesystem(file: &File) -> io::Result<()> {
    // SAFETY: syncfs only reads the descriptor, which `file` keeps open for the call.
    let rc = unsafe { libc::syncfs(file.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces `path` with `contents` so that a crash leaves the old file or the new one, never
/// half of either: a temporary sibling is written and synced, renamed over `path`, and the
/// directory synced. The file has `mode` from its creation on (0600 for a secret).
pub fn write_durably(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let _ = std::fs::remove_file(tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        });
    if let Err(e) = written.and_then(|()| std::fs::rename(tmp, path)) {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_a_directory_and_its_filesystem_and_reports_a_missing_one() {
        let tmp = tempfile::tempdir().unwrap();
        sync_dir(tmp.path()).unwrap();
        sync_filesystem(&File::open(tmp.path()).unwrap()).unwrap();
        let missing = tmp.path().join("missing");
        assert_eq!(
            sync_dir(&missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_durable_write_replaces_the_file_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.json");
        write_durably(&path, b"one", 0o644).unwrap();
        write_durably(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        let missing_dir = tmp.path().join("missing/state.json");
        assert!(write_durably(&missing_dir, b"x", 0o644).is_err());
    }
}
