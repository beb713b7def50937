//! The `backup_manifest` that BASE_BACKUP sends last, and the check of a finished backup against it.
//!
//! [`ManifestDigest`] checks the SHA-256 `Manifest-Checksum` over the raw bytes as they arrive
//! (the manifest itself goes to disk, never into memory); [`read`] then decodes the JSON from
//! disk one `Files` entry at a time, and [`verify_written`] merges those entries with what pgrepl
//! recorded while writing each file (size and checksum, computed on the fly with
//! `super::checksum::FileChecksum`, kept on disk by `super::written`). Verification needs no
//! second read of the data, and memory stays flat however many files a cluster has. The manifest
//! is never re-serialised, because its whitespace is part of the checksummed content.
//!
//! This module does not read files from disk. It also does not check that the WAL ranges can be
//! replayed; `pg_verifybackup` does that by running `pg_waldump`. The file layout follows
//! `src/backend/backup/backup_manifest.c`, and the checks follow `src/common/parse_manifest.c`
//! and `src/bin/pg_verifybackup/pg_verifybackup.c` in PostgreSQL.

mod decode;
pub mod prior;
mod verify;

use std::fmt::{self, Write as _};
use std::io;

use sha2::{Digest, Sha256};

use super::checksum::ChecksumAlgorithm;

use crate::ids::{SystemId, TimelineId};

pub use self::decode::read;
pub use self::verify::verify_written;

/// The key every manifest opens with. The server always writes it first, so pgrepl can tell a
/// manifest from some other file before it parses anything.
const VERSION_KEY: &str = "PostgreSQL-Backup-Manifest-Version";

/// How many problems [`ManifestError::FilesDoNotMatch`] spells out before it says "and N more".
const MAX_LISTED_PROBLEMS: usize = 5;

/// Paths that `pg_verifybackup` ignores by default, together with everything under them.
///
/// The server never lists WAL segments. `pg_basebackup -R` edits `postgresql.auto.conf` and
/// creates `standby.signal`, and `backup_manifest` cannot list itself. Like `pg_verifybackup`,
/// pgrepl skips these paths on both sides of the comparison. So `pg_wal/*.history` and
/// `pg_wal/archive_status/*.done`, which the server does list, are not required either.
const IGNORED_PATHS: [&[u8]; 5] = [
    b"backup_manifest",
    b"pg_wal",
    b"postgresql.auto.conf",
    b"recovery.signal",
    b"standby.signal",
];

/// One `Files` entry of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the data directory, as raw bytes. It comes from `Path`, or from the hex
    /// in `Encoded-Path` when the name is not valid UTF-8.
    pub path: Vec<u8>,
    /// Bytes in the file as sent.
    pub size: u64,
    /// `Checksum-Algorithm`, or [`ChecksumAlgorithm::None`] when the entry has none.
    pub checksum_algorithm: ChecksumAlgorithm,
    /// Lower-case hex digest, present exactly when the algorithm is not `None`.
    pub checksum: Option<String>,
    /// `Last-Modified` exactly as written (`YYYY-MM-DD HH:MM:SS GMT`). PostgreSQL's own parser
    /// ignores this field, so pgrepl keeps the text as it is.
    pub last_modified: String,
}

/// One `WAL-Ranges` entry. The LSNs are kept as text here; they have been checked to be `X/X`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRange {
    /// Timeline of this range.
    pub timeline: TimelineId,
    /// First LSN needed on this timeline.
    pub start_lsn: String,
    /// LSN at which this timeline's part of the range ends.
    pub end_lsn: String,
}

/// Errors from parsing a manifest or checking a backup against it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The SHA-256 over the manifest body does not match its `Manifest-Checksum`.
    #[error(
        "backup manifest checksum mismatch: computed `{computed}`, manifest says `{expected}`"
    )]
    ChecksumMismatch {
        /// What pgrepl computed.
        computed: String,
        /// What the manifest's last line says.
        expected: String,
    },
    /// The manifest is malformed or has values PostgreSQL would never write.
    #[error("invalid backup manifest: {0}")]
    Invalid(String),
    /// The written files differ from the manifest. The first problems are kept (the message
    /// lists only the first few), all are counted.
    #[error("{}", summarize_problems(problems, *total))]
    FilesDoNotMatch {
        problems: Vec<FileProblem>,
        total: usize,
    },
    /// The manifest could not be read back from disk.
    #[error("read the backup manifest back: {0}")]
    Read(#[source] io::Error),
    /// The record of written files could not be read back from disk.
    #[error("read back the record of written files: {0}")]
    ReadBack(#[source] io::Error),
}

/// One file that does not match the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProblem {
    /// Manifest-relative path.
    pub path: Vec<u8>,
    /// What is wrong with it.
    pub kind: ProblemKind,
}

/// The ways a written file can differ from the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The manifest lists the file but it was never written.
    Missing,
    /// The file was written but the manifest does not list it.
    NotInManifest,
    /// The same path was written more than once.
    WrittenTwice,
    /// The sizes differ. The checksum is then not compared.
    SizeMismatch {
        /// Bytes written.
        written: u64,
        /// Bytes according to the manifest.
        manifest: u64,
    },
    /// Same size, different digest. `written` is `None` if no checksum was computed.
    ChecksumMismatch {
        /// Digest computed while writing.
        written: Option<String>,
        /// Digest according to the manifest.
        manifest: String,
    },
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", DisplayPath(&self.path), self.kind)
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::NotInManifest => f.write_str("not in the manifest"),
            Self::WrittenTwice => f.write_str("written more than once"),
            Self::SizeMismatch { written, manifest } => {
                write!(f, "size {written}, manifest says {manifest}")
            }
            Self::ChecksumMismatch {
                written: Some(written),
                manifest,
            } => write!(f, "checksum `{written}`, manifest says `{manifest}`"),
            Self::ChecksumMismatch {
                written: None,
                manifest,
            } => write!(f, "no checksum computed, manifest says `{manifest}`"),
        }
    }
}

fn summarize_problems(problems: &[FileProblem], n: usize) -> String {
    let mut out = if n == 1 {
        "1 file does not match the backup manifest: ".to_owned()
    } else {
        format!("{n} files do not match the backup manifest: ")
    };
    for (i, p) in problems.iter().take(MAX_LISTED_PROBLEMS).enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&p.to_string());
    }
    if n > MAX_LISTED_PROBLEMS {
        // Writing to a String cannot fail.
        let _ = write!(out, "; and {} more", n - MAX_LISTED_PROBLEMS);
    }
    out
}

/// Shows a raw path in an error message. Valid UTF-8 is printed as is, except that control
/// characters are escaped; any other byte is shown as `\xNN`.
struct DisplayPath<'a>(&'a [u8]);

impl fmt::Display for DisplayPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Whether `path` is one of the paths `pg_verifybackup` ignores by default, or lies under one.
///
/// As in `pg_verifybackup`, `pg_wal` matches `pg_wal/x` but does not match `pg_walx`.
pub fn is_ignored_path(path: &[u8]) -> bool {
    IGNORED_PATHS.iter().any(|ignored| {
        path.strip_prefix(*ignored)
            .is_some_and(|rest| matches!(rest.first(), None | Some(b'/')))
    })
}

fn invalid(why: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(why.into())
}

/// Checks the `Manifest-Checksum` of a manifest as its bytes arrive, holding only the last line.
///
/// The checksum is SHA-256 over every byte up to and including the newline before the
/// `"Manifest-Checksum"` line; the last line carries it. Which newline is the last but one is
/// only known at the end, so the digest state is kept as it was at each of the last two newlines
/// (a copy of some 100 bytes per line) and the bytes since the earlier one, which are short in
/// anything the server writes (one file entry per line).
pub struct ManifestDigest {
    running: Sha256,
    /// The digest as it was at the last newline, and at the one before.
    at_last: Sha256,
    at_previous: Sha256,
    /// The last complete line (without its newline), and the bytes after it, each kept up to
    /// [`MAX_LINE`] bytes; the flags say a line was longer.
    last_line: Vec<u8>,
    last_overflow: bool,
    partial: Vec<u8>,
    partial_overflow: bool,
    /// The first bytes, for the check that this is a manifest at all.
    head: Vec<u8>,
    newlines: u64,
}

/// Longest last line kept for the final check: the server writes one file per line, at most a
/// 2048-hex-digit `Encoded-Path` and a SHA512 digest; the last line is the checksum alone.
const MAX_LINE: usize = 16 << 10;

/// Enough of the start to see `{ "PostgreSQL-Backup-Manifest-Version"`.
const HEAD_BYTES: usize = 256;

impl Default for ManifestDigest {
    fn default() -> Self {
        Self {
            running: Sha256::new(),
            at_last: Sha256::new(),
            at_previous: Sha256::new(),
            last_line: Vec::new(),
            last_overflow: false,
            partial: Vec::new(),
            partial_overflow: false,
            head: Vec::new(),
            newlines: 0,
        }
    }
}

impl ManifestDigest {
    pub fn update(&mut self, mut data: &[u8]) {
        let room = HEAD_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..room.min(data.len())]);
        while !data.is_empty() {
            let (piece, rest) = match data.iter().position(|&b| b == b'\n') {
                Some(nl) => data.split_at(nl + 1),
                None => (data, &[][..]),
            };
            self.running.update(piece);
            let line = piece.strip_suffix(b"\n");
            let text = line.unwrap_or(piece);
            if self.partial.len() + text.len() > MAX_LINE {
                self.partial_overflow = true;
            } else {
                self.partial.extend_from_slice(text);
            }
            if line.is_some() {
                self.at_previous = std::mem::replace(&mut self.at_last, self.running.clone());
                self.last_line = std::mem::take(&mut self.partial);
                self.last_overflow = std::mem::take(&mut self.partial_overflow);
                self.newlines += 1;
            }
            data = rest;
        }
    }

    /// Checks the framing and the checksum; returns the checksum the last line gives. This
    /// mirrors `verify_manifest_checksum` in `parse_manifest.c`.
    pub fn finish(self) -> Result<String, ManifestError> {
        check_opening(&self.head)?;
        if self.newlines == 0 || !self.partial.is_empty() || self.partial_overflow {
            return Err(invalid("last line is not terminated by a newline"));
        }
        if self.newlines < 2 {
            return Err(invalid("expected at least 2 lines"));
        }
        if self.last_overflow {
            return Err(invalid(format!(
                "the last line is longer than {MAX_LINE} bytes"
            )));
        }
        let expected = checksum_in_last_line(&self.last_line)?;
        let computed = hex::encode(self.at_previous.finalize());
        if !computed.eq_ignore_ascii_case(expected) {
            return Err(ManifestError::ChecksumMismatch {
                computed,
                expected: expected.to_owned(),
            });
        }
        Ok(expected.to_owned())
    }
}

/// Checks that the input opens with `{ "PostgreSQL-Backup-Manifest-Version"`. PostgreSQL's parser
/// also requires the version to be the first key, so an unsupported version is reported before
/// anything a later version may have added.
fn check_opening(bytes: &[u8]) -> Result<(), ManifestError> {
    let rest = bytes.trim_ascii_start();
    let opens = rest
        .strip_prefix(b"{")
        .map(|r| r.trim_ascii_start())
        .and_then(|r| r.strip_prefix(b"\""))
        .is_some_and(|r| {
            r.starts_with(VERSION_KEY.as_bytes()) && r.get(VERSION_KEY.len()) == Some(&b'"')
        });
    if opens {
        Ok(())
    } else {
        Err(invalid(format!(
            "does not start with `{{ \"{VERSION_KEY}\"`; is this a backup manifest?"
        )))
    }
}

/// Extracts the hex from a last line of the form `"Manifest-Checksum": "<64 hex>"}`.
fn checksum_in_last_line(line: &[u8]) -> Result<&str, ManifestError> {
    let malformed = || {
        invalid(format!(
            "last line `{}` is not `\"Manifest-Checksum\": \"<64 hex digits>\"}}`",
            DisplayPath(line)
        ))
    };
    let rest = line
        .trim_ascii()
        .strip_prefix(b"\"Manifest-Checksum\"")
        .ok_or_else(malformed)?
        .trim_ascii_start()
        .strip_prefix(b":")
        .ok_or_else(malformed)?
        .trim_ascii_start()
        .strip_prefix(b"\"")
        .ok_or_else(malformed)?;
    let end = rest.iter().position(|&b| b == b'"').ok_or_else(malformed)?;
    let (hex_part, tail) = rest.split_at(end);
    if tail.strip_prefix(b"\"").map(<[u8]>::trim_ascii) != Some(&b"}"[..]) {
        return Err(malformed());
    }
    if hex_part.len() != 64 || !hex_part.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid(format!(
            "`Manifest-Checksum` `{}` is not 64 hex digits",
            DisplayPath(hex_part)
        )));
    }
    // The bytes are all ASCII hex digits at this point, so this conversion cannot fail.
    std::str::from_utf8(hex_part).map_err(|_| malformed())
}

/// What [`read`] returns once the files have gone by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHeader {
    /// `PostgreSQL-Backup-Manifest-Version`: 1 (servers 13–16) or 2 (17+).
    pub version: u32,
    /// `System-Identifier`, present exactly when `version` is 2.
    pub system_identifier: Option<SystemId>,
    /// How many `Files` entries there were.
    pub files: u64,
    /// WAL needed to make the backup consistent, newest timeline first.
    pub wal_ranges: Vec<WalRange>,
}

#[cfg(test)]
mod tests;
