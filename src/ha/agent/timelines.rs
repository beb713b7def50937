//! Timeline numbers a promotion must skip. PostgreSQL numbers a promoted server's timeline one
//! past the newest of the history files in its pg_wal that run on from its own (xlogrecovery.c
//! `findNewestTimeLine`); a number another server took out of reach has no file here. Before a
//! promotion the agent writes a placeholder for each number below the one the core chose, so
//! that PostgreSQL takes that one. A placeholder holds only a comment: a standby that finds it
//! newest refuses it as a recovery target (its history does not name the standby's timeline),
//! and pg_rewind never reads it (only the two servers' own timelines' files). The agent removes
//! placeholders above every real history file before it starts a server: one left by a promotion
//! that never came would make the standby refuse to start.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::ids::TimelineId;

/// A placeholder's whole content: a comment line, which PostgreSQL's history parser skips
/// (timeline.c `readTimeLineHistory`).
const PLACEHOLDER: &str =
    "# pgrepl: this timeline number may name a history elsewhere; none of it is here\n";

/// One `XXXXXXXX.history` in pg_wal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryFile {
    pub timeline: TimelineId,
    pub placeholder: bool,
}

/// The history files in `pg_wal` (none when it does not exist: no data yet).
pub fn history_files(pg_wal: &Path) -> io::Result<Vec<HistoryFile>> {
    let entries = match fs::read_dir(pg_wal) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Some(timeline) = entry.file_name().to_str().and_then(history_timeline) else {
            continue;
        };
        let placeholder = fs::read_to_string(entry.path())? == PLACEHOLDER;
        files.push(HistoryFile {
            timeline,
            placeholder,
        });
    }
    files.sort_by_key(|f| f.timeline);
    Ok(files)
}

/// The newest timeline with a history file in `pg_wal`, from the names alone (the probe asks
/// this on every round).
pub fn newest(pg_wal: &Path) -> io::Result<Option<TimelineId>> {
    let entries = match fs::read_dir(pg_wal) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut newest = None;
    for entry in entries {
        newest = newest.max(entry?.file_name().to_str().and_then(history_timeline));
    }
    Ok(newest)
}

/// The timeline a history file's name gives (`0000000A.history` → 10).
fn history_timeline(name: &str) -> Option<TimelineId> {
    let hex = name.strip_suffix(".history")?;
    let valid = hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    valid
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
        .map(TimelineId::new)
}

/// The numbers below `target` with no history file, each of which needs a placeholder; from 2
/// (timeline 1 has no history file), so the files run on unbroken from any recovery target.
pub fn to_skip(files: &[HistoryFile], target: TimelineId) -> Vec<TimelineId> {
    (2..target.as_u32())
        .map(TimelineId::new)
        .filter(|t| !files.iter().any(|f| f.timeline == *t))
        .collect()
}

/// Placeholders above every real history file: left by a promotion that never came (or a
/// standby's fetch cut short), and a standby's recovery target if it started with them.
pub fn stale(files: &[HistoryFile]) -> Vec<TimelineId> {
    let real_top = files
        .iter()
        .filter(|f| !f.placeholder)
        .map(|f| f.timeline)
        .max();
    files
        .iter()
        .filter(|f| f.placeholder && Some(f.timeline) > real_top)
        .map(|f| f.timeline)
        .collect()
}

fn path(pg_wal: &Path, timeline: TimelineId) -> std::path::PathBuf {
    pg_wal.join(format!("{timeline:08X}.history"))
}

/// Writes the placeholder for `timeline` as the owner of pg_wal (the server's user must read
/// it), durably, and never over an existing file.
pub fn write_placeholder(pg_wal: &Path, timeline: TimelineId) -> io::Result<()> {
    let owner = fs::metadata(pg_wal)?;
    let target = path(pg_wal, timeline);
    let tmp = pg_wal.join(format!("{timeline:08X}.history.pgrepl"));
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            std::os::unix::fs::fchown(&file, Some(owner.uid()), Some(owner.gid()))?;
            file.write_all(PLACEHOLDER.as_bytes())?;
            file.sync_all()
        })
        // A hard link fails when the name exists: a real file is never replaced.
        .and_then(|()| fs::hard_link(&tmp, &target));
    let _ = fs::remove_file(&tmp);
    written?;
    crate::fs::sync_dir(pg_wal)
}

/// Removes the placeholder for `timeline`.
pub fn remove_placeholder(pg_wal: &Path, timeline: TimelineId) -> io::Result<()> {
    fs::remove_file(path(pg_wal, timeline))?;
    crate::fs::sync_dir(pg_wal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(timeline: u32, placeholder: bool) -> HistoryFile {
        HistoryFile {
            timeline: TimelineId::new(timeline),
            placeholder,
        }
    }

    fn numbers(list: Vec<TimelineId>) -> Vec<u32> {
        list.into_iter().map(TimelineId::as_u32).collect()
    }

    #[test]
    fn names_of_history_files() {
        assert_eq!(
            history_timeline("0000000A.history"),
            Some(TimelineId::new(10))
        );
        assert_eq!(history_timeline("00000001000000000000000A"), None);
        assert_eq!(history_timeline("0000000A.history.pgrepl"), None);
        assert_eq!(history_timeline("0000000G.history"), None);
    }

    #[test]
    fn a_promotion_to_four_on_timeline_one_fills_two_and_three() {
        assert_eq!(numbers(to_skip(&[], TimelineId::new(4))), [2, 3]);
        // A real file is never replaced, and the next number needs nothing.
        let files = [file(2, false)];
        assert_eq!(numbers(to_skip(&files, TimelineId::new(4))), [3]);
        assert!(to_skip(&files, TimelineId::new(3)).is_empty());
    }

    #[test]
    fn only_placeholders_above_every_real_file_are_stale() {
        let files = [file(2, true), file(3, false), file(4, true), file(5, true)];
        assert_eq!(numbers(stale(&files)), [4, 5]);
        assert_eq!(numbers(stale(&[file(2, true)])), [2]);
        assert!(stale(&[file(2, true), file(3, false)]).is_empty());
    }

    #[test]
    fn a_placeholder_is_written_once_and_read_back_as_one() {
        let dir = std::env::temp_dir().join(format!("pgrepl-tl-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("00000002.history"),
            "1\t0/3000000\tno recovery target specified\n",
        )
        .unwrap();
        write_placeholder(&dir, TimelineId::new(3)).unwrap();
        assert!(
            write_placeholder(&dir, TimelineId::new(2)).is_err(),
            "a real file stays"
        );
        assert_eq!(
            history_files(&dir).unwrap(),
            [file(2, false), file(3, true)]
        );
        remove_placeholder(&dir, TimelineId::new(3)).unwrap();
        assert_eq!(history_files(&dir).unwrap(), [file(2, false)]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
