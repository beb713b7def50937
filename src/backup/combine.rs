//! An incremental backup combined, in place, into the data directory it was taken against:
//! what `pg_combinebackup` does into a new directory, done without a second copy of the data.
//!
//! The staged backup (complete and checked against its manifest, but not synced: see below) is
//! drained into the target in an order that keeps the target from ever starting half-combined:
//! 1. the list of every path the result holds is written into the staged backup (the plan),
//!    durably, with the machine's boot id;
//! 2. the target's `global/pg_control` is removed: from here on the server refuses to start
//!    it, and a re-clone may overwrite it;
//! 3. whatever the result does not hold is removed from the target (dropped relations and
//!    databases, old WAL, `postmaster.pid`);
//! 4. each `INCREMENTAL.<name>` patches `<name>` in place (`super::incremental`), but a
//!    visibility map's, which removes it; every other file is renamed over the target's (which
//!    takes it out of the staged backup);
//! 5. the patches are removed, then everything is synced at once (`syncfs`), then `pg_control`
//!    goes in last, then the staged backup is removed.
//!
//! Every step may be done again: run after a crash anywhere, [`combine`] reads the plan and
//! finishes (a patch applied twice changes nothing; a file already moved is no longer staged).
//! That holds while the kernel's page cache holds what the dead process wrote, that is within
//! one boot of the machine: nothing of the staged backup is synced (a patch removed before the
//! `syncfs` never reaches the disk, which spares writing the changed blocks twice), so after a
//! restart the combine refuses to finish ([`CombineError::MachineRestarted`]) and the caller
//! re-clones over a directory that cannot start.
//! The correctness argument is in `proto-notes/11-incremental-resync.md`.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::incremental::{self, IncrementalError, PREFIX};

/// The plan's file, inside the staged backup.
const PLAN: &str = "pgrepl_combine_plan";
const CONTROL: &str = "global/pg_control";
const MANIFEST: &str = "backup_manifest";
/// The kernel's id of this boot: the same while the page cache survives.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, thiserror::Error)]
pub enum CombineError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Incremental(#[from] IncrementalError),
    #[error("`{0}` is not in the data directory, which the incremental backup says it patches")]
    NothingToPatch(String),
    #[error("the machine restarted since this combine began, and its staged backup was never synced: it cannot be finished")]
    MachineRestarted,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> CombineError {
    let context = context.into();
    move |source| CombineError::Io { context, source }
}

/// What combining did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Combined {
    /// Relation files patched block by block.
    pub patched: usize,
    /// Files replaced whole (new relations, every non-relation file, WAL).
    pub replaced: usize,
    /// Files and directories removed from the target.
    pub removed: usize,
    /// Whether this run finished an earlier one that stopped half-way.
    pub resumed: bool,
}

/// True when `staged` holds a combine that started and did not finish.
pub fn started(staged: &Path) -> bool {
    staged.join(PLAN).exists()
}

/// Combines the incremental backup in `staged` into `target` in place, then removes `staged`.
/// `block_size`: the server's.
pub fn combine(staged: &Path, target: &Path, block_size: u64) -> Result<Combined, CombineError> {
    let mut done = Combined {
        resumed: started(staged),
        ..Combined::default()
    };
    let keep = if done.resumed {
        read_plan(staged)?
    } else {
        write_plan(staged)?
    };
    let control = target.join(CONTROL);
    match fs::remove_file(&control) {
        Ok(()) => crate::fs::sync_dir(&target.join("global"))
            .map_err(io_err(format!("sync `{}`", target.display())))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove `{}`", control.display()))(e)),
    }
    remove_others(target, target, &keep, &mut done)?;
    drain(staged, staged, target, block_size, &mut done)?;
    discard_patches(staged)?;
    // Renames and patches durable before the file that lets the server start.
    let root = fs::File::open(target).map_err(io_err(format!("open `{}`", target.display())))?;
    crate::fs::sync_filesystem(&root).map_err(io_err(format!("sync `{}`", target.display())))?;
    fs::rename(staged.join(CONTROL), &control).map_err(io_err(format!(
        "move pg_control into `{}`",
        target.display()
    )))?;
    crate::fs::sync_dir(&target.join("global"))
        .map_err(io_err(format!("sync `{}`", target.display())))?;
    fs::remove_dir_all(staged).map_err(io_err(format!("remove `{}`", staged.display())))?;
    Ok(done)
}

/// Every relative path the combined directory holds: the staged backup's, each
/// `INCREMENTAL.<name>` as `<name>`, after a first line `boot <id>`. Written durably before
/// anything in the target changes.
fn write_plan(staged: &Path) -> Result<BTreeSet<String>, CombineError> {
    let mut keep = BTreeSet::new();
    walk(staged, staged, &mut |relative, _| {
        if relative != PLAN && relative != MANIFEST {
            keep.insert(result_path(relative));
        }
        Ok(())
    })?;
    let mut text = format!("boot {}\n", boot_id()?);
    text.extend(keep.iter().map(|p| format!("{p}\n")));
    crate::fs::write_durably(&staged.join(PLAN), text.as_bytes(), 0o600).map_err(io_err(
        format!("write the combine plan into `{}`", staged.display()),
    ))?;
    Ok(keep)
}

/// The plan, if it was written in this boot: else what the staged backup held may never have
/// reached the disk.
fn read_plan(staged: &Path) -> Result<BTreeSet<String>, CombineError> {
    let text = fs::read_to_string(staged.join(PLAN)).map_err(io_err(format!(
        "read the combine plan in `{}`",
        staged.display()
    )))?;
    let mut lines = text.lines();
    if lines.next().and_then(|l| l.strip_prefix("boot ")) != Some(boot_id()?.as_str()) {
        return Err(CombineError::MachineRestarted);
    }
    Ok(lines.map(str::to_owned).collect())
}

fn boot_id() -> Result<String, CombineError> {
    fs::read_to_string(BOOT_ID)
        .map(|id| id.trim().to_owned())
        .map_err(io_err(format!("read `{BOOT_ID}`")))
}

/// Removes what is left staged after the drain but the plan and `pg_control`: the patches,
/// applied, and the manifest. Before the `syncfs`, so that the kernel drops their pages
/// unwritten.
fn discard_patches(staged: &Path) -> Result<(), CombineError> {
    walk(staged, staged, &mut |relative, entry| {
        if relative == PLAN || relative == CONTROL || !entry.file_type().is_ok_and(|t| t.is_file())
        {
            return Ok(());
        }
        fs::remove_file(entry.path())
            .map_err(io_err(format!("remove `{}`", entry.path().display())))
    })
}

/// `base/5/INCREMENTAL.16384` → `base/5/16384`.
fn result_path(relative: &str) -> String {
    match relative.rsplit_once('/') {
        Some((dir, name)) => match name.strip_prefix(PREFIX) {
            Some(name) => format!("{dir}/{name}"),
            None => relative.to_owned(),
        },
        None => relative.strip_prefix(PREFIX).unwrap_or(relative).to_owned(),
    }
}

/// Calls `visit` with each file's and directory's path relative to `root` (directories
/// after their contents).
fn walk(
    root: &Path,
    dir: &Path,
    visit: &mut dyn FnMut(&str, &fs::DirEntry) -> Result<(), CombineError>,
) -> Result<(), CombineError> {
    let entries = fs::read_dir(dir).map_err(io_err(format!("read `{}`", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("read `{}`", dir.display())))?;
        let path = entry.path();
        if entry
            .file_type()
            .map_err(io_err(format!("inspect `{}`", path.display())))?
            .is_dir()
        {
            walk(root, &path, visit)?;
        }
        let relative = path
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        visit(&relative, &entry)?;
    }
    Ok(())
}

fn remove_others(
    root: &Path,
    dir: &Path,
    keep: &BTreeSet<String>,
    done: &mut Combined,
) -> Result<(), CombineError> {
    walk(root, dir, &mut |relative, entry| {
        if keep.contains(relative) {
            return Ok(());
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_err(format!("remove `{}`", path.display())))?;
        done.removed += 1;
        Ok(())
    })
}

/// Moves or applies every staged file into the target, but `pg_control`.
fn drain(
    root: &Path,
    dir: &Path,
    target: &Path,
    block_size: u64,
    done: &mut Combined,
) -> Result<(), CombineError> {
    let entries = fs::read_dir(dir).map_err(io_err(format!("read `{}`", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("read `{}`", dir.display())))?;
        let path = entry.path();
        let relative = path.strip_prefix(root).expect("under the root");
        let relative_text = relative.to_string_lossy();
        if relative_text == PLAN || relative_text == MANIFEST || relative_text == CONTROL {
            continue;
        }
        let metadata = entry
            .metadata()
            .map_err(io_err(format!("inspect `{}`", path.display())))?;
        let into = target.join(result_path(&relative_text));
        if metadata.is_dir() {
            make_dir_like(&into, &metadata)?;
            drain(root, &path, target, block_size, done)?;
            continue;
        }
        if relative_text == "backup_label" {
            write_label(&path, &into)?;
            done.replaced += 1;
        } else if into.as_path() != target.join(relative).as_path() && is_visibility_map(&into) {
            // The WAL summaries miss the bits heap changes clear in the visibility map (the
            // map's page is not registered in their records: an upstream bug), so a patched
            // map could keep a stale all-visible bit. Without the file every page reads as
            // not all-visible, which is always safe; replay and VACUUM set the bits again.
            match fs::remove_file(&into) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err(format!("remove `{}`", into.display()))(e))
                }
                _ => done.removed += 1,
            }
            continue;
        } else if into.as_path() != target.join(relative).as_path() {
            if !into.exists() {
                return Err(CombineError::NothingToPatch(
                    into.strip_prefix(target)
                        .unwrap_or(&into)
                        .display()
                        .to_string(),
                ));
            }
            // Not synced one by one: the patch stays staged until the drain is over, and a
            // combine cut short before then applies it again.
            incremental::apply(&path, &into, block_size)?;
            done.patched += 1;
            if std::env::var_os("PGREPL_FAULT").is_some_and(|f| f == "mid_combine") {
                // A test's crash with one file patched and the rest not (tests/it/resync.rs).
                eprintln!("PGREPL_FAULT=mid_combine: dying half-way through the combine");
                std::process::abort();
            }
            continue;
        } else {
            fs::rename(&path, &into).map_err(io_err(format!(
                "move `{}` to `{}`",
                path.display(),
                into.display()
            )))?;
            done.replaced += 1;
            continue;
        }
        fs::remove_file(&path).map_err(io_err(format!("remove `{}`", path.display())))?;
    }
    Ok(())
}

/// `16384_vm`, `16384_vm.1`: a relation's visibility map fork.
fn is_visibility_map(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .is_some_and(|n| n.ends_with("_vm"))
}

/// A directory in the target with the staged one's mode and owner.
fn make_dir_like(dir: &Path, like: &fs::Metadata) -> Result<(), CombineError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir(dir).map_err(io_err(format!("create `{}`", dir.display())))?;
    std::os::unix::fs::chown(dir, Some(like.uid()), Some(like.gid()))
        .map_err(io_err(format!("chown `{}`", dir.display())))?;
    fs::set_permissions(dir, like.permissions())
        .map_err(io_err(format!("set the mode of `{}`", dir.display())))
}

/// The incremental backup's `backup_label` without its `INCREMENTAL FROM` lines: the server
/// refuses to start from a label that has them (an incremental backup is not a data directory
/// until combined: `xlogrecovery.c`), as pg_combinebackup writes it.
fn write_label(staged: &Path, into: &PathBuf) -> Result<(), CombineError> {
    let text =
        fs::read_to_string(staged).map_err(io_err(format!("read `{}`", staged.display())))?;
    let label: String = text
        .lines()
        .filter(|line| !line.starts_with("INCREMENTAL FROM "))
        .map(|line| format!("{line}\n"))
        .collect();
    crate::fs::write_durably(into, label.as_bytes(), 0o600)
        .map_err(io_err(format!("write `{}`", into.display())))?;
    let owner = fs::metadata(staged).map_err(io_err(format!("inspect `{}`", staged.display())))?;
    std::os::unix::fs::chown(into, Some(owner.uid()), Some(owner.gid()))
        .map_err(io_err(format!("chown `{}`", into.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_names_map_to_the_files_they_patch() {
        assert_eq!(result_path("base/5/INCREMENTAL.16384"), "base/5/16384");
        assert_eq!(result_path("base/5/INCREMENTAL.16384.1"), "base/5/16384.1");
        assert_eq!(result_path("global/pg_control"), "global/pg_control");
        assert_eq!(result_path("INCREMENTAL.x"), "x");
    }

    fn write(root: &Path, relative: &str, bytes: &[u8]) {
        let path = root.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        walk(root, root, &mut |relative, entry| {
            if entry.file_type().unwrap().is_file() {
                files.push((relative.to_owned(), fs::read(entry.path()).unwrap()));
            }
            Ok(())
        })
        .unwrap();
        files.sort();
        files
    }

    /// A staged backup and the directory it is against, tiny blocks of 4 bytes.
    fn scenario() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (staged, target) = (dir.path().join("staged"), dir.path().join("data"));
        write(&target, "global/pg_control", b"old control");
        write(&target, "base/5/100", b"aaaabbbbcccc");
        write(&target, "base/5/200", b"dropped");
        write(&target, "base/9/1", b"a dropped database");
        write(&target, "pg_wal/000000010000000000000001", b"old wal");
        write(&target, "postmaster.pid", b"1");
        write(&target, "PG_VERSION", b"17");
        write(&target, "base/5/100_vm", b"stale bits");

        let mut patch = Vec::new();
        for word in [incremental::MAGIC, 1, 3, 1] {
            patch.extend_from_slice(&u32::to_ne_bytes(word));
        }
        patch.extend_from_slice(b"BBBB");
        write(&staged, "base/5/INCREMENTAL.100", &patch);
        write(&staged, "base/5/300", b"a new relation");
        let mut no_blocks = Vec::new();
        for word in [incremental::MAGIC, 0, 1] {
            no_blocks.extend_from_slice(&u32::to_ne_bytes(word));
        }
        write(&staged, "base/5/INCREMENTAL.100_vm", &no_blocks);
        write(&staged, "global/pg_control", b"new control");
        write(&staged, "backup_label", b"START WAL LOCATION: 0/5000028\nINCREMENTAL FROM LSN: 0/2000028\nINCREMENTAL FROM TLI: 1\n");
        write(&staged, "backup_manifest", b"{}");
        write(&staged, "pg_wal/000000010000000000000005", b"new wal");
        write(&staged, "PG_VERSION", b"17");
        (dir, staged, target)
    }

    fn expected() -> Vec<(String, Vec<u8>)> {
        vec![
            ("PG_VERSION".into(), b"17".to_vec()),
            (
                "backup_label".into(),
                b"START WAL LOCATION: 0/5000028\n".to_vec(),
            ),
            ("base/5/100".into(), b"aaaaBBBBcccc".to_vec()),
            ("base/5/300".into(), b"a new relation".to_vec()),
            ("global/pg_control".into(), b"new control".to_vec()),
            (
                "pg_wal/000000010000000000000005".into(),
                b"new wal".to_vec(),
            ),
        ]
    }

    #[test]
    fn the_target_ends_as_the_backup_says_and_the_staged_copy_is_gone() {
        let (_dir, staged, target) = scenario();
        let done = combine(&staged, &target, 4).unwrap();
        assert_eq!(tree(&target), expected());
        assert!(!target.join("base/9").exists());
        assert!(!staged.exists());
        assert_eq!((done.patched, done.resumed), (1, false));
    }

    #[test]
    fn a_combine_stopped_half_way_never_starts_and_finishes_when_run_again() {
        let (_dir, staged, target) = scenario();
        // Stopped after the plan, the point of no return and part of the draining: the new
        // relation moved, the patch applied but still staged.
        let keep = write_plan(&staged).unwrap();
        fs::remove_file(target.join(CONTROL)).unwrap();
        fs::rename(staged.join("base/5/300"), target.join("base/5/300")).unwrap();
        incremental::apply(
            &staged.join("base/5/INCREMENTAL.100"),
            &target.join("base/5/100"),
            4,
        )
        .unwrap();
        assert!(keep.contains("base/5/300"));
        assert!(
            !target.join(CONTROL).exists(),
            "no pg_control: it cannot start"
        );
        assert!(started(&staged));

        let done = combine(&staged, &target, 4).unwrap();
        assert!(done.resumed);
        assert_eq!(tree(&target), expected());
    }

    #[test]
    fn a_combine_begun_before_the_machine_restarted_is_refused() {
        let (_dir, staged, target) = scenario();
        write_plan(&staged).unwrap();
        let plan = fs::read_to_string(staged.join(PLAN)).unwrap();
        let (_, paths) = plan.split_once('\n').unwrap();
        fs::write(staged.join(PLAN), format!("boot another-boot\n{paths}")).unwrap();
        assert!(matches!(
            combine(&staged, &target, 4),
            Err(CombineError::MachineRestarted)
        ));
        assert!(
            target.join(CONTROL).exists(),
            "nothing in the target changed"
        );
    }
}
