//! The `INCREMENTAL.<name>` files of an incremental base backup (PostgreSQL 17+), and how one
//! is applied to the relation file it patches, in place.
//!
//! Layout (`src/include/backup/basebackup_incremental.h`, `src/bin/pg_combinebackup/
//! reconstruct.c`), native byte order: u32 magic, u32 number of blocks `n`, u32
//! `truncation_block_length`, `n` ascending u32 block numbers (relative to the segment), then,
//! when `n > 0`, zeroes up to the next multiple of the block size, then the `n` blocks in the
//! same order. The file it stands for has `max(truncation_block_length, last block + 1)`
//! blocks: those listed come from this file, the others below `truncation_block_length` from
//! the prior backup, and any block neither holds is zero (pg_combinebackup's rule).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The first four bytes of an incremental file.
pub const MAGIC: u32 = 0xd3ae_1f0d;
/// What the server puts before the name of a relation file it sends incrementally.
pub const PREFIX: &str = "INCREMENTAL.";

#[derive(Debug, thiserror::Error)]
pub enum IncrementalError {
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("`{0}` is not an incremental file (wrong magic number)")]
    NotIncremental(String),
    #[error("`{path}` lists block {block} twice or out of order")]
    BadBlockList { path: String, block: u32 },
}

/// What an incremental file says before its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Ascending block numbers of the blocks it carries.
    pub blocks: Vec<u32>,
    pub truncation_block_length: u32,
}

impl Header {
    /// Reads the header from `input`, leaving it at the first block. `block_size`: the
    /// server's `block_size`.
    pub fn read(
        input: &mut impl Read,
        block_size: u64,
        path: &str,
    ) -> Result<Header, IncrementalError> {
        let io = |source| IncrementalError::Io {
            path: path.to_owned(),
            source,
        };
        let next = |input: &mut dyn Read| -> Result<u32, IncrementalError> {
            let mut word = [0u8; 4];
            input.read_exact(&mut word).map_err(io)?;
            Ok(u32::from_ne_bytes(word))
        };
        if next(input)? != MAGIC {
            return Err(IncrementalError::NotIncremental(path.to_owned()));
        }
        let n = next(input)?;
        let truncation_block_length = next(input)?;
        let mut blocks: Vec<u32> = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let block = next(input)?;
            if blocks.last().is_some_and(|&last| last >= block) {
                return Err(IncrementalError::BadBlockList {
                    path: path.to_owned(),
                    block,
                });
            }
            blocks.push(block);
        }
        let header = Header {
            blocks,
            truncation_block_length,
        };
        let padding = header.size(block_size) - (12 + 4 * u64::from(n));
        io::copy(&mut input.take(padding), &mut io::sink()).map_err(|source| {
            IncrementalError::Io {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(header)
    }

    /// Bytes before the first block.
    pub fn size(&self, block_size: u64) -> u64 {
        let size = 12 + 4 * self.blocks.len() as u64;
        if self.blocks.is_empty() {
            size
        } else {
            size.div_ceil(block_size) * block_size
        }
    }

    /// Blocks in the file it stands for.
    pub fn blocks_after(&self) -> u64 {
        let last = self.blocks.last().map_or(0, |&b| u64::from(b) + 1);
        last.max(u64::from(self.truncation_block_length))
    }
}

/// Patches `target` (the prior relation file) with the incremental file at `incremental`, as
/// pg_combinebackup rebuilds it. Idempotent: applied twice, the second changes nothing. Not
/// synced: the caller makes a whole directory of patches durable at once.
pub fn apply(incremental: &Path, target: &Path, block_size: u64) -> Result<(), IncrementalError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| IncrementalError::Io { path, source }
    };
    let mut input =
        io::BufReader::with_capacity(1 << 20, File::open(incremental).map_err(io(incremental))?);
    let header = Header::read(&mut input, block_size, &incremental.display().to_string())?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .map_err(io(target))?;
    let prior = file.metadata().map_err(io(target))?.len();
    let kept = u64::from(header.truncation_block_length) * block_size;
    // Nothing of the prior file at or past the truncation length survives: cut it there
    // first, so that the blocks the patch does not carry read as zeroes.
    if prior > kept {
        file.set_len(kept).map_err(io(target))?;
    }
    file.set_len(header.blocks_after() * block_size)
        .map_err(io(target))?;
    let mut page = vec![0u8; block_size as usize];
    for &block in &header.blocks {
        input.read_exact(&mut page).map_err(io(incremental))?;
        file.write_all_at(&page, u64::from(block) * block_size)
            .map_err(io(target))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = 8192;

    /// An incremental file laid out as PostgreSQL 17 and 18 write it.
    fn incremental(blocks: &[u32], truncation: u32, fill: impl Fn(u32) -> u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [MAGIC, blocks.len() as u32, truncation]
            .into_iter()
            .chain(blocks.iter().copied())
        {
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        if !blocks.is_empty() {
            bytes.resize(bytes.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        }
        for &b in blocks {
            bytes.extend(std::iter::repeat_n(fill(b), BLOCK as usize));
        }
        bytes
    }

    fn firsts(path: &Path) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        bytes.chunks(BLOCK as usize).map(|c| c[0]).collect()
    }

    #[test]
    fn the_header_of_a_live_backup_reads_as_the_server_wrote_it() {
        // The first 32 bytes of `INCREMENTAL.16384` from a 17.11 backup (the same on 18.6).
        let live: [u8; 32] = [
            0x0d, 0x1f, 0xae, 0xd3, 0x04, 0, 0, 0, 0x4d, 0x02, 0, 0, 0, 0, 0, 0, 0x93, 0, 0, 0,
            0xb9, 0x01, 0, 0, 0x4c, 0x02, 0, 0, 0, 0, 0, 0,
        ];
        let mut bytes = live.to_vec();
        bytes.resize(BLOCK as usize + 1, 7);
        let mut input = &bytes[..];
        let header = Header::read(&mut input, BLOCK, "INCREMENTAL.16384").unwrap();
        assert_eq!(header.blocks, vec![0, 147, 441, 588]);
        assert_eq!(header.truncation_block_length, 589);
        assert_eq!(header.blocks_after(), 589);
        assert_eq!(input, &[7], "left at the first block");

        let empty = incremental(&[], 3, |_| 0);
        assert_eq!(empty.len(), 12, "no padding without blocks");
        let header = Header::read(&mut &empty[..], BLOCK, "x").unwrap();
        assert_eq!(header.blocks_after(), 3);
        assert!(matches!(
            Header::read(&mut &[0u8; 12][..], BLOCK, "x"),
            Err(IncrementalError::NotIncremental(_))
        ));
    }

    #[test]
    fn applying_patches_blocks_sets_the_length_and_twice_is_once() {
        let dir = tempfile::tempdir().unwrap();
        let (target, patch) = (
            dir.path().join("16384"),
            dir.path().join("INCREMENTAL.16384"),
        );
        // Prior: blocks 0..6 filled with their number.
        let prior: Vec<u8> = (0..6u8)
            .flat_map(|b| std::iter::repeat_n(b, BLOCK as usize))
            .collect();
        std::fs::write(&target, &prior).unwrap();
        // Truncated to 3 blocks since, then block 1 changed and blocks 3, 4 added.
        std::fs::write(&patch, incremental(&[1, 3, 4], 3, |b| 100 + b as u8)).unwrap();
        for _ in 0..2 {
            apply(&patch, &target, BLOCK).unwrap();
            assert_eq!(firsts(&target), vec![0, 101, 2, 103, 104]);
        }
        // Shrunk only: no blocks, a shorter length.
        std::fs::write(&patch, incremental(&[], 2, |_| 0)).unwrap();
        apply(&patch, &target, BLOCK).unwrap();
        assert_eq!(firsts(&target), vec![0, 101]);
        // Truncated to 1 block, then block 3 written: blocks 1 and 2 are zeroes, as
        // pg_combinebackup writes them.
        std::fs::write(&patch, incremental(&[3], 1, |_| 9)).unwrap();
        apply(&patch, &target, BLOCK).unwrap();
        assert_eq!(firsts(&target), vec![0, 0, 0, 9]);
    }
}
