//! Compressed archive segments (`pgrepl receivewal --compress`): writing one from a complete
//! segment, and reading back how many bytes one holds when resuming.
//!
//! Names are pg_receivewal's: `<segment>.gz` (gzip, its default level) and `<segment>.lz4` (an
//! LZ4 frame), so either tool can resume the other's directory and `gunzip` / `lz4 -d` restore a
//! segment. Unlike pg_receivewal, the open segment is not compressed while it fills: it is the
//! ordinary preallocated `.partial`, whose every flushed position is durable where it is; only a
//! complete segment is compressed, into `<segment>.gz.partial`, then renamed.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::path::Path;

/// How completed segments are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalCompression {
    Gzip,
    Lz4,
}

impl WalCompression {
    /// The suffix after the segment name.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Gzip => ".gz",
            Self::Lz4 => ".lz4",
        }
    }

    /// Splits a known compression suffix off `name`.
    pub fn strip_suffix(name: &str) -> (&str, Option<Self>) {
        for method in [Self::Gzip, Self::Lz4] {
            if let Some(stem) = name.strip_suffix(method.suffix()) {
                return (stem, Some(method));
            }
        }
        (name, None)
    }

    /// Writes `source` compressed into `dest` (created or truncated); fsynced when `sync`.
    pub fn compress_file(self, source: &Path, dest: &Path, sync: bool) -> io::Result<()> {
        let mut input = File::open(source)?;
        let output = BufWriter::with_capacity(1 << 16, File::create(dest)?);
        let output = match self {
            Self::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(output, flate2::Compression::default());
                io::copy(&mut input, &mut encoder)?;
                encoder.finish()?
            }
            Self::Lz4 => {
                let mut encoder = lz4_flex::frame::FrameEncoder::new(output);
                io::copy(&mut input, &mut encoder)?;
                encoder.finish().map_err(io::Error::other)?
            }
        };
        let file = output.into_inner().map_err(|e| e.into_error())?;
        if sync {
            file.sync_all()?;
        }
        Ok(())
    }

    /// How many bytes the compressed file at `path` decompresses to. For gzip that is the
    /// trailer's ISIZE, the size modulo 2^32 (segments are at most 1 GB), as pg_receivewal reads
    /// it; an LZ4 frame need not record its size, so it is decompressed and counted.
    pub fn uncompressed_size(self, path: &Path) -> io::Result<u64> {
        let mut file = File::open(path)?;
        match self {
            Self::Gzip => {
                let mut trailer = [0u8; 4];
                file.seek(SeekFrom::End(-4))?;
                file.read_exact(&mut trailer)?;
                Ok(u64::from(u32::from_le_bytes(trailer)))
            }
            Self::Lz4 => {
                let mut decoder = lz4_flex::frame::FrameDecoder::new(io::BufReader::new(file));
                io::copy(&mut decoder, &mut io::sink())
            }
        }
    }
}

/// What `gunzip` / `lz4 -d` would restore from `path`.
#[cfg(test)]
fn decompress(method: WalCompression, path: &Path) -> Vec<u8> {
    let file = File::open(path).unwrap();
    let mut out = Vec::new();
    match method {
        WalCompression::Gzip => flate2::read::GzDecoder::new(file)
            .read_to_end(&mut out)
            .unwrap(),
        WalCompression::Lz4 => lz4_flex::frame::FrameDecoder::new(file)
            .read_to_end(&mut out)
            .unwrap(),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_files_decompress_to_the_segment_and_report_its_size() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("000000010000000000000001");
        let segment: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&source, &segment).unwrap();
        for method in [WalCompression::Gzip, WalCompression::Lz4] {
            let dest = tmp.path().join(format!("seg{}", method.suffix()));
            method.compress_file(&source, &dest, true).unwrap();
            assert!(std::fs::metadata(&dest).unwrap().len() < segment.len() as u64 / 4);
            assert_eq!(decompress(method, &dest), segment);
            assert_eq!(
                method.uncompressed_size(&dest).unwrap(),
                segment.len() as u64
            );
        }
    }

    #[test]
    fn suffixes_are_pg_receivewals() {
        assert_eq!(
            WalCompression::strip_suffix("000000010000000000000001.gz"),
            ("000000010000000000000001", Some(WalCompression::Gzip))
        );
        assert_eq!(
            WalCompression::strip_suffix("000000010000000000000001.lz4"),
            ("000000010000000000000001", Some(WalCompression::Lz4))
        );
        assert_eq!(
            WalCompression::strip_suffix("000000010000000000000001"),
            ("000000010000000000000001", None)
        );
    }
}
