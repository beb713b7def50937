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

/// Flushes everything written to the filesystem holding `dir`: one syncfs instead of an fsync per
/// file, which is what makes writing thousands of relation files fast. The extractor has already
/// started writeback of every large file as it was written, so by now little is left to write.
///
/// Measured on a pgbench scale-50 backup (about 1,000 files, most of a few kB): an fsync of each
/// file took 0.2–0.6 s, a disk round trip per file, syncfs 0.01–0.1 s. The price
/// is that syncfs also flushes unrelated dirty data on the same filesystem (a primary on the same
/// disk): writeback the kernel would do anyway, brought forward.
pub fn sync_filesystem(dir: &Path) -> Result<(), BackupError> {
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
