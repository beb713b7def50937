//! What a WAL archive directory holds, and where streaming into it resumes: pg_receivewal's
//! `FindStreamingStart`, compressed names included, so either tool resumes the other's directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::wal_compress::WalCompression;
use crate::ids::TimelineId;
use crate::lsn::Lsn;

/// Where to resume streaming, found in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    pub timeline: TimelineId,
    /// A segment start: after the highest complete segment, or the start of the highest partial.
    pub start: Lsn,
    /// The highest segment is partial and is written again from its beginning.
    pub partial: bool,
}

/// One WAL segment file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FoundSegment {
    timeline: TimelineId,
    segment: u64,
    partial: bool,
    compression: Option<WalCompression>,
}

/// The resume point from the highest usable segment in `dir`; `None` when it holds none. A
/// complete segment that does not hold exactly `segment_size` bytes (for a compressed one, once
/// decompressed) is skipped with a warning, as pg_receivewal does. Only the candidates from the
/// top down are checked until one passes, so a large archive is not decompressed at every start.
pub fn find_streaming_start(dir: &Path, segment_size: u64) -> io::Result<Option<ResumePoint>> {
    let mut found: Vec<(FoundSegment, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(segment) = name
            .to_str()
            .and_then(|n| parse_segment_name(n, segment_size))
        {
            found.push((segment, entry.path()));
        }
    }
    // pg_receivewal's order: higher segment, then higher timeline, then a complete file over a
    // partial one of the same segment.
    found.sort_by_key(|(f, _)| std::cmp::Reverse((f.segment, f.timeline, !f.partial)));
    for (best, path) in found {
        if !best.partial && !holds_a_segment(&best, &path, segment_size)? {
            tracing::warn!(
                file = %path.display(),
                "segment file has the wrong size, skipping it"
            );
            continue;
        }
        let next = if best.partial {
            best.segment
        } else {
            best.segment + 1
        };
        return Ok(Some(ResumePoint {
            timeline: best.timeline,
            start: Lsn::new(next * segment_size),
            partial: best.partial,
        }));
    }
    Ok(None)
}

/// Partial files of a segment that is also complete in `dir` (the right size, compressed or not):
/// left by a stop between giving the complete segment its name and removing its `.partial`.
/// Nothing reads them again; the caller removes them.
pub fn superseded_partials(dir: &Path, segment_size: u64) -> io::Result<Vec<PathBuf>> {
    let mut partials = Vec::new();
    let mut complete = std::collections::HashSet::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(found) = entry
            .file_name()
            .to_str()
            .and_then(|n| parse_segment_name(n, segment_size))
        else {
            continue;
        };
        if found.partial {
            partials.push((found, entry.path()));
        } else if holds_a_segment(&found, &entry.path(), segment_size)? {
            complete.insert((found.timeline, found.segment));
        }
    }
    Ok(partials
        .into_iter()
        .filter(|(f, _)| complete.contains(&(f.timeline, f.segment)))
        .map(|(_, path)| path)
        .collect())
}

/// Whether a complete segment file holds exactly one segment (once decompressed).
fn holds_a_segment(found: &FoundSegment, path: &Path, segment_size: u64) -> io::Result<bool> {
    let size = match found.compression {
        None => fs::metadata(path)?.len(),
        Some(method) => method.uncompressed_size(path).unwrap_or(0),
    };
    Ok(size == segment_size)
}

/// `TTTTTTTTXXXXXXXXYYYYYYYY`, then optionally `.gz` or `.lz4`, then optionally `.partial`;
/// anything else is not ours.
fn parse_segment_name(name: &str, segment_size: u64) -> Option<FoundSegment> {
    let (name, partial) = match name.strip_suffix(".partial") {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    let (stem, compression) = WalCompression::strip_suffix(name);
    if stem.len() != 24 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| u32::from_str_radix(&stem[range], 16).ok();
    let (timeline, log, seg) = (field(0..8)?, field(8..16)?, field(16..24)?);
    let per_log = 0x1_0000_0000 / segment_size;
    if u64::from(seg) >= per_log {
        return None;
    }
    Some(FoundSegment {
        timeline: TimelineId::new(timeline),
        segment: u64::from(log) * per_log + u64::from(seg),
        partial,
        compression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    fn resume(timeline: u32, start: u64, partial: bool) -> Option<ResumePoint> {
        Some(ResumePoint {
            timeline: TimelineId::new(timeline),
            start: Lsn::new(start),
            partial,
        })
    }

    #[test]
    fn segment_names_parse_like_the_server_and_pg_receivewal_write_them() {
        let found = parse_segment_name("000000020000000100000003.partial", MB16).unwrap();
        assert_eq!(
            found,
            FoundSegment {
                timeline: TimelineId::new(2),
                segment: 256 + 3,
                partial: true,
                compression: None,
            }
        );
        let found = parse_segment_name("000000020000000100000003.lz4.partial", MB16).unwrap();
        assert!(found.partial);
        assert_eq!(found.compression, Some(WalCompression::Lz4));
        let found = parse_segment_name("000000020000000100000003.gz", MB16).unwrap();
        assert!(!found.partial);
        assert_eq!(found.compression, Some(WalCompression::Gzip));
        assert!(parse_segment_name("00000002.history", MB16).is_none());
        assert!(parse_segment_name("000000020000000100000003.zst", MB16).is_none());
        assert!(parse_segment_name("000000020000000100000003.partial.gz", MB16).is_none());
        // Segment 0x100 does not exist with 16 MB segments (256 per log id).
        assert!(parse_segment_name("000000010000000000000100", MB16).is_none());
        assert!(parse_segment_name("00000001000000000000000G", MB16).is_none());
    }

    #[test]
    fn resumes_after_the_highest_complete_segment_or_at_the_partial() {
        let seg = 1 << 20;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(find_streaming_start(dir, seg).unwrap(), None);
        let full = vec![0u8; seg as usize];
        fs::write(dir.join("000000010000000000000003"), &full).unwrap();
        fs::write(dir.join("000000010000000000000001"), &full).unwrap();
        fs::write(dir.join("00000001.history"), b"").unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            resume(1, 4 * seg, false)
        );
        fs::write(dir.join("000000010000000000000004.partial"), &full).unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            resume(1, 4 * seg, true)
        );
        // After a switch the same segment number exists on the new timeline: it wins.
        fs::write(dir.join("000000020000000000000004.partial"), &full).unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            resume(2, 4 * seg, true)
        );
        // A truncated complete segment is not trusted.
        fs::write(dir.join("000000020000000000000005"), b"short").unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            resume(2, 4 * seg, true)
        );
    }

    #[test]
    fn compressed_segments_count_by_their_decompressed_size() {
        let seg = 1 << 20;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let source = dir.join("source");
        fs::write(&source, vec![1u8; seg as usize]).unwrap();
        for (name, method) in [
            ("000000010000000000000005.gz", WalCompression::Gzip),
            ("000000010000000000000006.lz4", WalCompression::Lz4),
        ] {
            method
                .compress_file(&source, &dir.join(name), false)
                .unwrap();
        }
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            resume(1, 7 * seg, false)
        );
        // A compressed segment that holds less than a segment (a torn copy) is skipped.
        fs::write(&source, vec![1u8; 1000]).unwrap();
        WalCompression::Lz4
            .compress_file(&source, &dir.join("000000010000000000000007.lz4"), false)
            .unwrap();
        fs::write(dir.join("000000010000000000000008.gz"), b"garbage").unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            resume(1, 7 * seg, false)
        );
        assert!(superseded_partials(dir, seg).unwrap().is_empty());
        // A stop after `...6.lz4` got its name, before its `.partial` was removed: superseded.
        // The torn `...7.lz4` supersedes nothing.
        fs::write(dir.join("000000010000000000000006.partial"), b"").unwrap();
        fs::write(dir.join("000000010000000000000007.partial"), b"").unwrap();
        assert_eq!(
            superseded_partials(dir, seg).unwrap(),
            vec![dir.join("000000010000000000000006.partial")]
        );
        fs::remove_file(dir.join("000000010000000000000006.partial")).unwrap();
        fs::remove_file(dir.join("000000010000000000000007.partial")).unwrap();
        // pg_receivewal's compressed partial: resumed at its start.
        fs::write(dir.join("000000010000000000000009.gz.partial"), b"").unwrap();
        assert_eq!(
            find_streaming_start(dir, seg).unwrap(),
            resume(1, 9 * seg, true)
        );
    }
}
