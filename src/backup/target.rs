//! Target directories: checked, built in a temporary sibling, moved into place only when
//! complete, and removed on any failure.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::BackupError;

/// A directory being built next to its final place.
#[derive(Debug)]
pub struct StagedDir {
    pub final_path: PathBuf,
    pub staging: PathBuf,
}

/// Every staged directory of one backup; removes them all on drop unless committed.
#[derive(Debug, Default)]
pub struct Staging {
    dirs: Vec<StagedDir>,
    committed: bool,
}

impl Staging {
    /// Checks `final_path` (absent, or an empty directory) and creates its staging sibling with
    /// mode 0700. Returns the staging path.
    pub fn add(&mut self, final_path: &Path) -> Result<PathBuf, BackupError> {
        let final_path = absolute(final_path)?;
        check_target(&final_path)?;
        let parent = final_path
            .parent()
            .ok_or_else(|| BackupError::target(&final_path, "has no parent directory"))?;
        fs::create_dir_all(parent)
            .map_err(|e| BackupError::io(format!("create `{}`", parent.display()), e))?;
        let name = final_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("target");
        let staging = parent.join(format!(".{name}.pgrepl-{}.tmp", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .map_err(|e| BackupError::io(format!("remove stale `{}`", staging.display()), e))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(|e| BackupError::io(format!("create `{}`", staging.display()), e))?;
        self.dirs.push(StagedDir {
            final_path,
            staging: staging.clone(),
        });
        Ok(staging)
    }

    pub fn dirs(&self) -> &[StagedDir] {
        &self.dirs
    }

    /// Moves every staged directory into place (an existing empty target is replaced), then syncs
    /// the parents so the renames are durable.
    pub fn commit(mut self, sync: bool) -> Result<(), BackupError> {
        for dir in &self.dirs {
            if dir.final_path.is_dir() {
                fs::remove_dir(&dir.final_path).map_err(|e| {
                    BackupError::io(format!("replace empty `{}`", dir.final_path.display()), e)
                })?;
            }
            fs::rename(&dir.staging, &dir.final_path).map_err(|e| {
                BackupError::io(
                    format!(
                        "move `{}` to `{}`",
                        dir.staging.display(),
                        dir.final_path.display()
                    ),
                    e,
                )
            })?;
            if sync {
                if let Some(parent) = dir.final_path.parent() {
                    crate::fs::sync_dir(parent)
                        .map_err(|e| BackupError::io(format!("sync `{}`", parent.display()), e))?;
                }
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for dir in &self.dirs {
            if let Err(e) = fs::remove_dir_all(&dir.staging) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("could not remove `{}`: {e}", dir.staging.display());
                }
            }
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, BackupError> {
    std::path::absolute(path)
        .map_err(|e| BackupError::io(format!("resolve `{}`", path.display()), e))
}

/// A target must be absent or an empty directory: a backup never mixes with existing files.
fn check_target(path: &Path) -> Result<(), BackupError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackupError::io(format!("inspect `{}`", path.display()), e)),
        Ok(meta) if !meta.is_dir() => {
            Err(BackupError::target(path, "exists and is not a directory"))
        }
        Ok(_) => {
            let mut entries = fs::read_dir(path)
                .map_err(|e| BackupError::io(format!("read `{}`", path.display()), e))?;
            if entries.next().is_some() {
                Err(BackupError::target(
                    path,
                    "exists and is not empty; give an empty or new directory",
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Sets the data directory's permissions as the server wants them (0700, or 0750 with group
/// access) — a standby refuses to start otherwise.
pub fn set_data_dir_mode(dir: &Path, mode: u32) -> Result<(), BackupError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| BackupError::io(format!("chmod `{}`", dir.display()), e))
}

/// Hands a whole tree to `uid:gid` (container volumes must belong to the image's postgres user).
pub fn chown_tree(root: &Path, owner: (u32, u32)) -> Result<(), BackupError> {
    let chown = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1))
            .map_err(|e| BackupError::io(format!("chown `{}`", path.display()), e))
    };
    chown(root)?;
    let entries =
        fs::read_dir(root).map_err(|e| BackupError::io(format!("read `{}`", root.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BackupError::io(format!("read `{}`", root.display()), e))?;
        let file_type = entry
            .file_type()
            .map_err(|e| BackupError::io("stat entry", e))?;
        if file_type.is_dir() {
            chown_tree(&entry.path(), owner)?;
        } else {
            chown(&entry.path())?;
        }
    }
    Ok(())
}

/// How a finished backup is made durable before it is moved into place (pg_basebackup 17+
/// `--sync-method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMethod {
    /// fsync every file and directory.
    Fsync,
    /// One syncfs of the filesystem holding each target.
    Syncfs,
}

impl SyncMethod {
    /// syncfs where it reports writeback errors — Linux 5.8 on, where it returns the
    /// filesystem's errors recorded since it was opened; before, it returned 0 whatever failed —
    /// and fsync of each file elsewhere.
    pub fn default_for_this_kernel() -> SyncMethod {
        // SAFETY: uname only writes into the zeroed struct it is given.
        let release = unsafe {
            let mut name: libc::utsname = std::mem::zeroed();
            if libc::uname(&mut name) != 0 {
                return SyncMethod::Fsync;
            }
            std::ffi::CStr::from_ptr(name.release.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        Self::default_for_release(&release)
    }

    /// For a kernel release such as `6.1.0-18-amd64`.
    fn default_for_release(release: &str) -> SyncMethod {
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().ok());
        match (numbers.next().flatten(), numbers.next().flatten()) {
            (Some(major), Some(minor)) if (major, minor) >= (5, 8) => SyncMethod::Syncfs,
            _ => SyncMethod::Fsync,
        }
    }
}

/// Makes everything under `root` durable the way `method` says.
pub fn sync_tree(root: &Path, method: SyncMethod) -> Result<(), BackupError> {
    match method {
        SyncMethod::Syncfs => sync_filesystem(root),
        SyncMethod::Fsync => fsync_tree(root),
    }
}

/// fsync of every regular file and directory under `dir`, then of `dir`: what pg_basebackup's
/// `--sync-method=fsync` does. Symbolic links are not followed: a tablespace is a target of its
/// own and synced as such.
fn fsync_tree(dir: &Path) -> Result<(), BackupError> {
    let entries =
        fs::read_dir(dir).map_err(|e| BackupError::io(format!("read `{}`", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BackupError::io(format!("read `{}`", dir.display()), e))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|e| BackupError::io(format!("inspect `{}`", path.display()), e))?;
        if file_type.is_dir() {
            fsync_tree(&path)?;
        } else if file_type.is_file() {
            fsync_path(&path)?;
        }
    }
    fsync_path(dir)
}

fn fsync_path(path: &Path) -> Result<(), BackupError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| BackupError::io(format!("sync `{}`", path.display()), e))
}

/// Flushes everything written to the filesystem holding `dir`: one syncfs instead of an fsync per
/// file, which is what makes writing thousands of relation files fast. The extractor has already
/// started writeback of every large file as it was written, so by now little is left to write.
///
/// Measured on a pgbench scale-50 backup (about 1,000 files, most of a few kB): an fsync of each
/// file took 0.2–0.6 s, a disk round trip per file, syncfs 0.01–0.1 s. The price
/// is that syncfs also flushes unrelated dirty data on the same filesystem (a primary on the same
/// disk): writeback the kernel would do anyway, brought forward.
fn sync_filesystem(dir: &Path) -> Result<(), BackupError> {
    let file =
        fs::File::open(dir).map_err(|e| BackupError::io(format!("open `{}`", dir.display()), e))?;
    crate::fs::sync_filesystem(&file)
        .map_err(|e| BackupError::io(format!("sync `{}`", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_empty_targets_and_cleans_up_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let busy = tmp.path().join("busy");
        fs::create_dir(&busy).unwrap();
        fs::write(busy.join("PG_VERSION"), "15").unwrap();
        let mut staging = Staging::default();
        let err = staging.add(&busy).unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");

        let fresh = tmp.path().join("fresh");
        let staged = staging.add(&fresh).unwrap();
        assert!(staged.is_dir());
        drop(staging);
        assert!(!staged.exists());
        assert!(!fresh.exists());
    }

    #[test]
    fn syncfs_is_the_default_from_linux_5_8() {
        for (release, method) in [
            ("6.18.44-fc-v1252", SyncMethod::Syncfs),
            ("5.8.0", SyncMethod::Syncfs),
            ("5.10.0-28-amd64", SyncMethod::Syncfs),
            ("5.7.19", SyncMethod::Fsync),
            ("4.19.0-26-amd64", SyncMethod::Fsync),
            ("3.10.0-1160.el7.x86_64", SyncMethod::Fsync),
            ("garbage", SyncMethod::Fsync),
        ] {
            assert_eq!(
                SyncMethod::default_for_release(release),
                method,
                "{release}"
            );
        }
    }

    #[test]
    fn fsync_tree_syncs_nested_files_and_skips_links() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("base/1")).unwrap();
        fs::write(tmp.path().join("base/1/1259"), b"x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", tmp.path().join("link")).unwrap();
        sync_tree(tmp.path(), SyncMethod::Fsync).unwrap();
        sync_tree(tmp.path(), SyncMethod::Syncfs).unwrap();
        let err = sync_tree(&tmp.path().join("gone"), SyncMethod::Fsync).unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn commit_replaces_an_empty_target() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("empty");
        fs::create_dir(&target).unwrap();
        let mut staging = Staging::default();
        let staged = staging.add(&target).unwrap();
        fs::write(staged.join("PG_VERSION"), "15").unwrap();
        staging.commit(true).unwrap();
        assert_eq!(fs::read_to_string(target.join("PG_VERSION")).unwrap(), "15");
        assert!(!staged.exists());
    }
}
