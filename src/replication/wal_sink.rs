//! Where streamed WAL goes: segment files in one or more `pg_wal`-style directories.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::fs::sync_dir;
use crate::lsn::{history_file_name, wal_file_name, Lsn};

/// How segment files are named while they are being filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentNaming {
    /// As pg_basebackup seeds a standby: final names from the start (a standby's recovery never
    /// reads `.partial` files), full-size files, and `archive_status/<seg>.done` once complete.
    Standby,
    /// As pg_receivewal archives: `<seg>.partial` until complete, then renamed.
    Archive,
}

/// Writes WAL into segment files, the same bytes into every directory.
pub struct SegmentWriter {
    dirs: Vec<PathBuf>,
    segment_size: u64,
    naming: SegmentNaming,
    sync: bool,
    open: Option<OpenSegment>,
}

struct OpenSegment {
    timeline: u32,
    segment: u64,
    files: Vec<File>,
    /// End of what was written into this segment so far, as an offset.
    filled: u64,
}

impl SegmentWriter {
    /// `dirs` must exist; `archive_status/` is created in each for [`SegmentNaming::Standby`].
    pub fn new(
        dirs: Vec<PathBuf>,
        segment_size: u64,
        naming: SegmentNaming,
        sync: bool,
    ) -> io::Result<Self> {
        if naming == SegmentNaming::Standby {
            for dir in &dirs {
                fs::create_dir_all(dir.join("archive_status"))?;
            }
        }
        Ok(Self {
            dirs,
            segment_size,
            naming,
            sync,
            open: None,
        })
    }

    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Writes `data`, which starts at `start` on `timeline`, splitting it at segment boundaries.
    pub fn write(&mut self, timeline: u32, start: Lsn, mut data: &[u8]) -> io::Result<()> {
        let segment_size = self.segment_size;
        let mut position = start;
        while !data.is_empty() {
            let segment = position.segment_number(segment_size);
            let offset = position.segment_offset(segment_size);
            let open = match &mut self.open {
                Some(open) if open.timeline == timeline && open.segment == segment => open,
                _ => {
                    self.close_segment()?;
                    self.open_segment(timeline, segment)?
                }
            };
            let room = (segment_size - offset) as usize;
            let (chunk, rest) = data.split_at(room.min(data.len()));
            for file in &open.files {
                file.write_all_at(chunk, offset)?;
            }
            open.filled = open.filled.max(offset + chunk.len() as u64);
            data = rest;
            position = position.checked_add(chunk.len() as u64).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "WAL position overflows")
            })?;
            if open.filled == segment_size {
                self.close_segment()?;
            }
        }
        Ok(())
    }

    fn open_segment(&mut self, timeline: u32, segment: u64) -> io::Result<&mut OpenSegment> {
        let name = self.file_name(timeline, segment);
        let mut files = Vec::with_capacity(self.dirs.len());
        for dir in &self.dirs {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(dir.join(&name))?;
            // Full size from the start, as the server and pg_basebackup create segments.
            file.set_len(self.segment_size)?;
            files.push(file);
        }
        Ok(self.open.insert(OpenSegment {
            timeline,
            segment,
            files,
            filled: 0,
        }))
    }

    fn file_name(&self, timeline: u32, segment: u64) -> String {
        let name = wal_file_name(timeline, segment, self.segment_size);
        match self.naming {
            SegmentNaming::Standby => name,
            SegmentNaming::Archive => format!("{name}.partial"),
        }
    }

    /// Closes the open segment; a complete one is marked done (standby) or renamed (archive).
    fn close_segment(&mut self) -> io::Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        if self.sync {
            for file in &open.files {
                file.sync_data()?;
            }
        }
        if open.filled < self.segment_size {
            return Ok(());
        }
        let name = wal_file_name(open.timeline, open.segment, self.segment_size);
        for dir in &self.dirs {
            match self.naming {
                SegmentNaming::Standby => {
                    File::create(dir.join("archive_status").join(format!("{name}.done")))?;
                }
                SegmentNaming::Archive => {
                    fs::rename(dir.join(format!("{name}.partial")), dir.join(&name))?;
                }
            }
            if self.sync {
                sync_dir(dir)?;
            }
        }
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&mut self) -> io::Result<()> {
        if let (true, Some(open)) = (self.sync, &self.open) {
            for file in &open.files {
                file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Stores a timeline history file (and its `.done` marker for a standby).
    pub fn write_history(&mut self, timeline: u32, content: &[u8]) -> io::Result<()> {
        let name = history_file_name(timeline);
        for dir in &self.dirs {
            fs::write(dir.join(&name), content)?;
            if self.naming == SegmentNaming::Standby {
                File::create(dir.join("archive_status").join(format!("{name}.done")))?;
            }
            if self.sync {
                File::open(dir.join(&name))?.sync_all()?;
                sync_dir(dir)?;
            }
        }
        Ok(())
    }

    /// Flushes and closes the open segment, leaving it partial if it is not full.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.close_segment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1024 * 1024;

    #[test]
    fn standby_naming_writes_every_dir_and_marks_complete_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = ["a", "b"].iter().map(|d| tmp.path().join(d)).collect();
        for d in &dirs {
            fs::create_dir(d).unwrap();
        }
        let mut w = SegmentWriter::new(dirs.clone(), SEG, SegmentNaming::Standby, false).unwrap();
        // Starts mid-segment 1 and crosses into segment 2.
        let start = Lsn::new(SEG + SEG - 4);
        w.write(1, start, b"abcdefgh").unwrap();
        w.finish().unwrap();
        for d in &dirs {
            let first = fs::read(d.join("000000010000000000000001")).unwrap();
            assert_eq!(first.len() as u64, SEG);
            assert_eq!(&first[(SEG - 4) as usize..], b"abcd");
            let second = fs::read(d.join("000000010000000000000002")).unwrap();
            assert_eq!(second.len() as u64, SEG);
            assert_eq!(&second[..4], b"efgh");
            assert!(d
                .join("archive_status/000000010000000000000001.done")
                .exists());
            assert!(!d
                .join("archive_status/000000010000000000000002.done")
                .exists());
        }
    }

    #[test]
    fn archive_naming_renames_complete_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::new(
            vec![tmp.path().to_owned()],
            SEG,
            SegmentNaming::Archive,
            true,
        )
        .unwrap();
        w.write(2, Lsn::new(0), &vec![7u8; SEG as usize + 10])
            .unwrap();
        w.write_history(2, b"1\t0/1000000\tno recovery target specified\n")
            .unwrap();
        w.finish().unwrap();
        assert!(tmp.path().join("000000020000000000000000").exists());
        assert!(tmp.path().join("000000020000000000000001.partial").exists());
        assert!(tmp.path().join("00000002.history").exists());
    }
}
