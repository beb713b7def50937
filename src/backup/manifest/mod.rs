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
mod tests {
    use super::super::checksum::FileChecksum;
    use super::super::written::WrittenFile;
    use super::verify::MAX_KEPT_PROBLEMS;
    use super::*;

    /// A manifest decoded whole, for the tests to look at.
    #[derive(Debug)]
    struct Manifest {
        version: u32,
        system_identifier: Option<SystemId>,
        files: Vec<ManifestFile>,
        wal_ranges: Vec<WalRange>,
        bytes: Vec<u8>,
        checksum: String,
    }

    impl Manifest {
        fn checksum_algorithm(&self) -> Option<ChecksumAlgorithm> {
            let first = self.files.first()?.checksum_algorithm;
            self.files
                .iter()
                .all(|f| f.checksum_algorithm == first)
                .then_some(first)
        }
    }

    /// Checks the digest as the bytes arrive in 7-byte pieces (lines span pieces), then reads.
    fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let mut digest = ManifestDigest::default();
        for piece in bytes.chunks(7) {
            digest.update(piece);
        }
        let checksum = digest.finish()?;
        let mut files = Vec::new();
        let header = read(bytes, &checksum, &mut |f| {
            files.push(f);
            Ok(())
        })?;
        assert_eq!(header.files, files.len() as u64);
        Ok(Manifest {
            version: header.version,
            system_identifier: header.system_identifier,
            files,
            wal_ranges: header.wal_ranges,
            bytes: bytes.to_vec(),
            checksum,
        })
    }

    fn verify_written(m: &Manifest, written: &[WrittenFile]) -> Result<(), ManifestError> {
        super::verify_written(
            m.bytes.as_slice(),
            &m.checksum,
            written.iter().cloned().map(Ok),
        )
        .map(|header| assert_eq!(header.files, m.files.len() as u64))
    }

    const MTIME: &str = "2024-05-02 10:11:12 GMT";
    const SYSID: u64 = 7_362_182_938_384_710_211;

    /// A file for the test manifests: its path and contents. The size and checksum are derived.
    struct TestFile {
        path: Vec<u8>,
        data: Vec<u8>,
        encode: bool,
    }

    fn file(path: &str, data: &[u8]) -> TestFile {
        TestFile {
            path: path.as_bytes().to_vec(),
            data: data.to_vec(),
            encode: false,
        }
    }

    fn digest(alg: ChecksumAlgorithm, data: &[u8]) -> Option<String> {
        let mut c = FileChecksum::new(alg);
        c.update(data);
        c.finish()
    }

    /// Appends the `Manifest-Checksum` line the way `SendBackupManifest` does.
    fn sign(mut body: Vec<u8>) -> Vec<u8> {
        let sum = hex::encode(Sha256::digest(&body));
        body.extend_from_slice(format!("\"Manifest-Checksum\": \"{sum}\"}}\n").as_bytes());
        body
    }

    /// Everything before the `Manifest-Checksum` line, laid out byte for byte as the server
    /// writes it (see `backup_manifest.c`).
    fn body(
        version: u32,
        sysid: Option<u64>,
        alg: ChecksumAlgorithm,
        files: &[TestFile],
        ranges: &[(u32, &str, &str)],
    ) -> Vec<u8> {
        let mut s = format!("{{ \"{VERSION_KEY}\": {version},\n").into_bytes();
        if let Some(id) = sysid {
            s.extend_from_slice(format!("\"System-Identifier\": {id},\n").as_bytes());
        }
        s.extend_from_slice(b"\"Files\": [");
        for (i, f) in files.iter().enumerate() {
            s.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            match std::str::from_utf8(&f.path) {
                Ok(p) if !f.encode => {
                    let escaped = serde_json::to_string(p).unwrap();
                    s.extend_from_slice(format!("{{ \"Path\": {escaped}, ").as_bytes());
                }
                _ => s.extend_from_slice(
                    format!("{{ \"Encoded-Path\": \"{}\", ", hex::encode(&f.path)).as_bytes(),
                ),
            }
            s.extend_from_slice(
                format!("\"Size\": {}, \"Last-Modified\": \"{MTIME}\"", f.data.len()).as_bytes(),
            );
            if let Some(sum) = digest(alg, &f.data) {
                s.extend_from_slice(
                    format!(", \"Checksum-Algorithm\": \"{alg}\", \"Checksum\": \"{sum}\"")
                        .as_bytes(),
                );
            }
            s.extend_from_slice(b" }");
        }
        s.extend_from_slice(b"\n],\n\"WAL-Ranges\": [\n");
        for (i, (tli, start, end)) in ranges.iter().enumerate() {
            if i > 0 {
                s.extend_from_slice(b",\n");
            }
            s.extend_from_slice(
                format!(
                    "{{ \"Timeline\": {tli}, \"Start-LSN\": \"{start}\", \"End-LSN\": \"{end}\" }}"
                )
                .as_bytes(),
            );
        }
        s.extend_from_slice(b"\n],\n");
        s
    }

    fn sample_files() -> Vec<TestFile> {
        vec![
            file("pg_tblspc/16385/PG_15_202209061/5/16386", &[7u8; 8192]),
            file(
                "backup_label",
                b"START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\n",
            ),
            file("PG_VERSION", b"15\n"),
            file("base/1/1259", &[1u8; 16384]),
            file("global/pg_control", &[2u8; 8192]),
            file(
                "pg_wal/00000002.history",
                b"1\t0/5000000\tno recovery target specified\n",
            ),
            file(
                "postgresql.auto.conf",
                b"# Do not edit this file manually!\n",
            ),
            TestFile {
                path: b"bad\\\xffname".to_vec(),
                data: Vec::new(),
                encode: false,
            },
        ]
    }

    const RANGES: [(u32, &str, &str); 2] =
        [(2, "0/5000000", "0/5000138"), (1, "0/4000028", "0/5000000")];

    fn sample_manifest(alg: ChecksumAlgorithm) -> Vec<u8> {
        sign(body(2, Some(SYSID), alg, &sample_files(), &RANGES))
    }

    /// What pgrepl would record after writing every sample file faithfully.
    fn written_all(alg: ChecksumAlgorithm) -> Vec<WrittenFile> {
        sample_files()
            .into_iter()
            .map(|f| WrittenFile {
                size: f.data.len() as u64,
                checksum: digest(alg, &f.data),
                path: f.path,
            })
            .collect()
    }

    fn written(path: &str, data: &[u8]) -> WrittenFile {
        WrittenFile {
            path: path.as_bytes().to_vec(),
            size: data.len() as u64,
            checksum: digest(ChecksumAlgorithm::Crc32c, data),
        }
    }

    fn problems(err: ManifestError) -> Vec<FileProblem> {
        match err {
            ManifestError::FilesDoNotMatch { problems, total } => {
                assert_eq!(problems.len(), total);
                problems
            }
            other => panic!("expected FilesDoNotMatch, got {other:?}"),
        }
    }

    fn invalid_message(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(ManifestError::Invalid(why)) => why,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_version_2_with_system_identifier() {
        let m = parse(&sample_manifest(ChecksumAlgorithm::Crc32c)).unwrap();
        assert_eq!(m.version, 2);
        // Above 2^53: a round trip through f64 would have changed it.
        assert_eq!(m.system_identifier, Some(SystemId::new(SYSID)));
        assert_eq!(m.files.len(), 8);
        assert_eq!(m.checksum_algorithm(), Some(ChecksumAlgorithm::Crc32c));
        let f = &m.files[2];
        assert_eq!(f.path, b"PG_VERSION");
        assert_eq!(f.size, 3);
        assert_eq!(f.last_modified, MTIME);
        assert_eq!(f.checksum.as_deref(), Some("8a744722"));
        assert_eq!(m.files[7].path, b"bad\\\xffname");
        assert_eq!(
            m.wal_ranges,
            vec![
                WalRange {
                    timeline: TimelineId::new(2),
                    start_lsn: "0/5000000".into(),
                    end_lsn: "0/5000138".into()
                },
                WalRange {
                    timeline: TimelineId::new(1),
                    start_lsn: "0/4000028".into(),
                    end_lsn: "0/5000000".into()
                },
            ]
        );
    }

    #[test]
    fn parses_version_1_without_checksums() {
        let bytes = sign(body(
            1,
            None,
            ChecksumAlgorithm::None,
            &sample_files(),
            &RANGES[1..],
        ));
        let m = parse(&bytes).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.system_identifier, None);
        assert!(m.files.iter().all(|f| f.checksum.is_none()));
        assert_eq!(m.checksum_algorithm(), Some(ChecksumAlgorithm::None));
        assert_eq!(m.wal_ranges.len(), 1);
    }

    #[test]
    fn parses_every_algorithm() {
        for alg in [
            ChecksumAlgorithm::Sha224,
            ChecksumAlgorithm::Sha256,
            ChecksumAlgorithm::Sha384,
            ChecksumAlgorithm::Sha512,
        ] {
            let m = parse(&sample_manifest(alg)).unwrap();
            assert_eq!(m.checksum_algorithm(), Some(alg));
            verify_written(&m, &written_all(alg)).unwrap();
        }
    }

    #[test]
    fn flipped_byte_is_a_checksum_mismatch() {
        let good = sample_manifest(ChecksumAlgorithm::Crc32c);
        let mut bad = good.clone();
        // Turn `"Size": 3,` (PG_VERSION) into `"Size": 4,`: still valid JSON, but not what was signed.
        let at = good.windows(10).position(|w| w == b"\"Size\": 3,").unwrap() + 8;
        bad[at] = b'4';
        match parse(&bad) {
            Err(e @ ManifestError::ChecksumMismatch { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("backup manifest checksum mismatch: computed `"),
                    "{msg}"
                );
            }
            other => panic!("expected ChecksumMismatch, got {other:?}"),
        }
        // No single-bit change anywhere may be accepted.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 1;
            assert!(parse(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn rejects_broken_framing() {
        let good = sample_manifest(ChecksumAlgorithm::Crc32c);
        let msg = invalid_message(&good[..good.len() - 1]);
        assert!(msg.contains("newline"), "{msg}");
        assert!(invalid_message(b"").contains("is this a backup manifest"));
        assert!(invalid_message(b"{\"Files\": []}\n").contains("is this a backup manifest"));
        let msg = invalid_message(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1}\n");
        assert!(msg.contains("at least 2 lines"), "{msg}");
        let mut no_sum = body(1, None, ChecksumAlgorithm::None, &sample_files(), &RANGES);
        no_sum.extend_from_slice(b"\"Manifest-Checksum\": \"abc\"}\n");
        assert!(invalid_message(&no_sum).contains("is not 64 hex digits"));
    }

    /// Signs a mangled copy of the v2 sample, so that the checksum passes and the content check
    /// is what fails.
    fn mangled(from: &str, to: &str) -> Vec<u8> {
        let b = String::from_utf8_lossy(&body(
            2,
            Some(SYSID),
            ChecksumAlgorithm::Crc32c,
            &sample_files()[..5],
            &RANGES,
        ))
        .into_owned();
        assert!(b.contains(from), "{from} not in sample");
        sign(b.replacen(from, to, 1).into_bytes())
    }

    #[test]
    fn rejects_nonsense_with_clear_messages() {
        let cases = [
            (
                (
                    "\"PostgreSQL-Backup-Manifest-Version\": 2",
                    "\"PostgreSQL-Backup-Manifest-Version\": 3",
                ),
                "unsupported manifest version `3`",
            ),
            (
                (
                    "\"PostgreSQL-Backup-Manifest-Version\": 2",
                    "\"PostgreSQL-Backup-Manifest-Version\": \"2\"",
                ),
                "unsupported manifest version `\"2\"`",
            ),
            (
                ("\"System-Identifier\": 7362182938384710211,\n", ""),
                "version 2 has no `System-Identifier`",
            ),
            (("\"Size\": 3, ", ""), "missing field `Size`"),
            (("\"Size\": 3, ", "\"Size\": -3, "), "invalid value"),
            (("\"Size\": 3, ", "\"Size\": 3.0, "), "invalid type"),
            (
                ("\"Checksum\": \"8a744722\"", "\"Checksum\": \"8a74472\""),
                "has 7 hex digits, but `CRC32C` needs 8",
            ),
            (
                ("\"Checksum\": \"8a744722\"", "\"Checksum\": \"8a74472z\""),
                "checksum `8a74472z` is not hex",
            ),
            (
                (
                    "\"Checksum-Algorithm\": \"CRC32C\"",
                    "\"Checksum-Algorithm\": \"MD5\"",
                ),
                "unknown checksum algorithm `MD5`",
            ),
            (
                ("\"Checksum-Algorithm\": \"CRC32C\", ", ""),
                "has `Checksum` `",
            ),
            (
                (
                    "\"Path\": \"PG_VERSION\"",
                    "\"Path\": \"PG_VERSION\", \"Encoded-Path\": \"00\"",
                ),
                "both `Path` and `Encoded-Path`",
            ),
            (
                ("\"Path\": \"PG_VERSION\"", "\"Encoded-Path\": \"5047z\""),
                "`Encoded-Path` `5047z` is not valid hex",
            ),
            (
                ("\"Path\": \"PG_VERSION\"", "\"Path\": \"../PG_VERSION\""),
                "is not a plain relative path",
            ),
            (
                ("\"Path\": \"PG_VERSION\"", "\"Path\": \"/etc/passwd\""),
                "is not a plain relative path",
            ),
            (
                ("\"Path\": \"PG_VERSION\"", "\"Encoded-Path\": \"\""),
                "is empty",
            ),
            (
                ("\"Path\": \"PG_VERSION\", ", ""),
                "neither `Path` nor `Encoded-Path`",
            ),
            (
                ("\"Size\": 3, ", "\"Size\": 3, \"Mode\": 384, "),
                "unknown field `Mode`",
            ),
            (
                (
                    "\"Start-LSN\": \"0/4000028\"",
                    "\"Start-LSN\": \"0/14000028A\"",
                ),
                "`Start-LSN` `0/14000028A` is not an LSN",
            ),
            (("\"Timeline\": 1", "\"Timeline\": 0"), "timeline 0"),
            (
                ("\"WAL-Ranges\"", "\"WAL-Range\""),
                "unknown field `WAL-Range`",
            ),
        ];
        for ((from, to), want) in cases {
            let msg = invalid_message(&mangled(from, to));
            assert!(
                msg.contains(want),
                "replacing {from:?} with {to:?}: {msg:?} lacks {want:?}"
            );
        }
        let v1_with_id = sign(body(
            1,
            Some(SYSID),
            ChecksumAlgorithm::None,
            &sample_files(),
            &RANGES,
        ));
        assert!(invalid_message(&v1_with_id).contains("version 1 has a `System-Identifier`"));
        let no_ranges = sign(body(1, None, ChecksumAlgorithm::None, &sample_files(), &[]));
        assert!(invalid_message(&no_ranges).contains("`WAL-Ranges` is empty"));
        let err = parse(&mangled("\"Size\": 3, ", ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid backup manifest: missing field `Size`"),
            "{err}"
        );
    }

    #[test]
    fn encoded_path_round_trips() {
        // Not UTF-8, so the server would use Encoded-Path; also force-encode a UTF-8 name, as
        // `MANIFEST 'force-encode'` does.
        let raw = b"base/1/\xff\xfe\x01odd".to_vec();
        let files = vec![
            TestFile {
                path: raw.clone(),
                data: b"x".to_vec(),
                encode: false,
            },
            TestFile {
                path: "base/1/café".as_bytes().to_vec(),
                data: b"y".to_vec(),
                encode: true,
            },
        ];
        let bytes = sign(body(
            1,
            None,
            ChecksumAlgorithm::Crc32c,
            &files,
            &RANGES[1..],
        ));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(&format!("\"Encoded-Path\": \"{}\"", hex::encode(&raw))));
        let m = parse(&bytes).unwrap();
        assert_eq!(m.files[0].path, raw);
        assert_eq!(m.files[1].path, "base/1/café".as_bytes());

        let mut w = vec![WrittenFile {
            path: raw.clone(),
            size: 1,
            checksum: digest(ChecksumAlgorithm::Crc32c, b"x"),
        }];
        assert!(verify_written(&m, &w).is_err());
        w.push(written("base/1/café", b"y"));
        verify_written(&m, &w).unwrap();
        w[0].size = 2;
        let msg = verify_written(&m, &w).unwrap_err().to_string();
        assert_eq!(
            msg,
            "1 file does not match the backup manifest: `base/1/\\xff\\xfe\\u{1}odd`: size 2, manifest says 1"
        );
    }

    #[test]
    fn verify_written_accepts_a_faithful_backup() {
        let m = parse(&sample_manifest(ChecksumAlgorithm::Crc32c)).unwrap();
        let mut w = written_all(ChecksumAlgorithm::Crc32c);
        verify_written(&m, &w).unwrap();
        // Order does not matter.
        w.reverse();
        verify_written(&m, &w).unwrap();
    }

    #[test]
    fn verify_written_reports_every_kind_of_problem() {
        let m = parse(&sample_manifest(ChecksumAlgorithm::Crc32c)).unwrap();
        let mut w = written_all(ChecksumAlgorithm::Crc32c);
        w[3].size = 8192; // base/1/1259 is 16384 in the manifest
        w[2].checksum = digest(ChecksumAlgorithm::Crc32c, b"16\n"); // PG_VERSION
        w[1].checksum = None; // backup_label
        let global = w.remove(4); // global/pg_control never written
        w.push(written("base/1/9999", b"extra"));
        w.push(written("base/1/9999", b"extra")); // twice, before anything matched it
        let p = problems(verify_written(&m, &w).unwrap_err());
        let kinds: Vec<_> = p
            .iter()
            .map(|p| {
                (
                    String::from_utf8_lossy(&p.path).into_owned(),
                    p.kind.clone(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    "backup_label".into(),
                    ProblemKind::ChecksumMismatch {
                        written: None,
                        manifest: m.files[1].checksum.clone().unwrap()
                    }
                ),
                (
                    "PG_VERSION".into(),
                    ProblemKind::ChecksumMismatch {
                        written: digest(ChecksumAlgorithm::Crc32c, b"16\n"),
                        manifest: "8a744722".into()
                    }
                ),
                (
                    "base/1/1259".into(),
                    ProblemKind::SizeMismatch {
                        written: 8192,
                        manifest: 16384
                    }
                ),
                // Found while looking ahead for global/pg_control, in manifest order.
                ("base/1/9999".into(), ProblemKind::WrittenTwice),
                (
                    String::from_utf8_lossy(&global.path).into_owned(),
                    ProblemKind::Missing
                ),
                ("base/1/9999".into(), ProblemKind::NotInManifest),
            ]
        );
    }

    #[test]
    fn verify_written_message_lists_the_first_few() {
        let m = parse(&sample_manifest(ChecksumAlgorithm::Crc32c)).unwrap();
        let mut w = written_all(ChecksumAlgorithm::Crc32c);
        w[3].size = 8192;
        w.retain(|f| f.path != b"global/pg_control");
        let msg = verify_written(&m, &w).unwrap_err().to_string();
        assert_eq!(
            msg,
            "2 files do not match the backup manifest: `base/1/1259`: size 8192, manifest says 16384; \
             `global/pg_control`: missing"
        );

        let extras: Vec<_> = (0..8)
            .map(|i| written(&format!("base/1/x{i}"), b""))
            .collect();
        let msg = verify_written(
            &m,
            &[written_all(ChecksumAlgorithm::Crc32c), extras].concat(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.starts_with(
                "8 files do not match the backup manifest: `base/1/x0`: not in the manifest; "
            ),
            "{msg}"
        );
        assert!(
            msg.ends_with("`base/1/x4`: not in the manifest; and 3 more"),
            "{msg}"
        );
    }

    #[test]
    fn a_path_listed_twice_is_missing_the_second_time_and_problems_are_capped() {
        let m = parse(&mangled(
            "\"Path\": \"PG_VERSION\"",
            "\"Path\": \"base/1/1259\"",
        ))
        .unwrap();
        let mut w = written_all(ChecksumAlgorithm::Crc32c);
        w.truncate(5);
        w.remove(2); // PG_VERSION, no longer listed
                     // The first listing (with PG_VERSION's size) takes the file, the second finds none.
        let kinds: Vec<_> = problems(verify_written(&m, &w).unwrap_err())
            .into_iter()
            .map(|p| (p.path, p.kind))
            .collect();
        let size = ProblemKind::SizeMismatch {
            written: 16384,
            manifest: 3,
        };
        assert_eq!(
            kinds,
            [
                (b"base/1/1259".to_vec(), size),
                (b"base/1/1259".to_vec(), ProblemKind::Missing)
            ]
        );

        let m = parse(&sample_manifest(ChecksumAlgorithm::Crc32c)).unwrap();
        let extras = (0..150).map(|i| written(&format!("base/1/x{i}"), b""));
        let w: Vec<_> = written_all(ChecksumAlgorithm::Crc32c)
            .into_iter()
            .chain(extras)
            .collect();
        match verify_written(&m, &w).unwrap_err() {
            e @ ManifestError::FilesDoNotMatch { .. } => {
                assert!(e.to_string().ends_with("; and 145 more"), "{e}");
                let ManifestError::FilesDoNotMatch { problems, total } = e else {
                    unreachable!()
                };
                assert_eq!((problems.len(), total), (MAX_KEPT_PROBLEMS, 150));
            }
            other => panic!("expected FilesDoNotMatch, got {other:?}"),
        }
    }

    #[test]
    fn long_lines_pass_except_as_the_last() {
        let long = "x".repeat(MAX_LINE + 10);
        let files = [
            file(&format!("base/1/{long}"), b"1"),
            file("PG_VERSION", b"15\n"),
        ];
        let bytes = sign(body(
            1,
            None,
            ChecksumAlgorithm::Crc32c,
            &files,
            &RANGES[1..],
        ));
        assert_eq!(parse(&bytes).unwrap().files.len(), 2);
        let mut padded = bytes.clone();
        padded.truncate(padded.len() - 2);
        padded.extend_from_slice(long.as_bytes());
        padded.extend_from_slice(b"}\n");
        assert!(invalid_message(&padded).contains("last line is longer"));
    }

    #[test]
    fn pg_wal_is_exempt_both_ways() {
        let m = parse(&sample_manifest(ChecksumAlgorithm::Crc32c)).unwrap();
        // The manifest lists pg_wal/00000002.history; not writing it is fine, and so is writing
        // segments and archive_status markers that the manifest never lists.
        let mut w = written_all(ChecksumAlgorithm::Crc32c);
        w.retain(|f| !f.path.starts_with(b"pg_wal/"));
        w.push(written("pg_wal/000000010000000000000004", &[0u8; 64]));
        w.push(written(
            "pg_wal/archive_status/000000010000000000000004.done",
            b"",
        ));
        w.push(written("pg_wal/00000002.history", b"something else"));
        verify_written(&m, &w).unwrap();
        // A name that merely starts with "pg_wal" is not exempt.
        w.push(written("pg_walx/1", b""));
        let p = problems(verify_written(&m, &w).unwrap_err());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, b"pg_walx/1");
    }

    #[test]
    fn ignored_top_level_files_are_exempt() {
        let m = parse(&sample_manifest(ChecksumAlgorithm::Crc32c)).unwrap();
        let mut w = written_all(ChecksumAlgorithm::Crc32c);
        // -R rewrites postgresql.auto.conf and adds standby.signal.
        let auto = w
            .iter_mut()
            .find(|f| f.path == b"postgresql.auto.conf")
            .unwrap();
        auto.size += 100;
        auto.checksum = None;
        for name in ["standby.signal", "recovery.signal", "backup_manifest"] {
            w.push(written(name, b"anything"));
        }
        verify_written(&m, &w).unwrap();
        w.retain(|f| f.path != b"postgresql.auto.conf");
        verify_written(&m, &w).unwrap();
        // Only at the top level.
        w.push(written("base/standby.signal", b""));
        let p = problems(verify_written(&m, &w).unwrap_err());
        assert_eq!(
            p,
            vec![FileProblem {
                path: b"base/standby.signal".to_vec(),
                kind: ProblemKind::NotInManifest
            }]
        );
    }

    #[test]
    fn ignored_path_matches_whole_components() {
        for p in [
            "pg_wal",
            "pg_wal/x",
            "backup_manifest",
            "standby.signal",
            "recovery.signal",
            "postgresql.auto.conf",
        ] {
            assert!(is_ignored_path(p.as_bytes()), "{p}");
        }
        for p in [
            "pg_walx",
            "base/pg_wal/x",
            "backup_manifest.tmp",
            "postgresql.conf",
            "",
        ] {
            assert!(!is_ignored_path(p.as_bytes()), "{p}");
        }
    }

    /// A real manifest from `pg_basebackup -X none` against PostgreSQL 15.x (default CRC32C). The
    /// cluster had a tablespace (OID 16384), a file with a non-UTF-8 name (hence one
    /// `Encoded-Path`), and a file whose name needs JSON escapes (`café "q" \ tab<TAB>x`).
    #[test]
    fn parses_real_pg15_manifest() {
        let bytes = include_bytes!("../../../tests/fixtures/backup_manifest_pg15");
        let m = parse(bytes).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.system_identifier, None);
        assert_eq!(m.files.len(), 969);
        assert_eq!(m.checksum_algorithm(), Some(ChecksumAlgorithm::Crc32c));
        assert_eq!(m.wal_ranges.len(), 1);
        assert_eq!(m.wal_ranges[0].timeline, TimelineId::new(1));

        let find = |p: &[u8]| m.files.iter().find(|f| f.path == p);
        // The server's CRC32C over "15\n", cross-checked against FileChecksum.
        let pg_version = find(b"PG_VERSION").unwrap();
        assert_eq!(
            pg_version.checksum,
            digest(ChecksumAlgorithm::Crc32c, b"15\n")
        );
        assert!(find(b"odd_\xff\xfename").is_some());
        assert!(find("café \"q\" \\ tab\tx".as_bytes()).is_some());
        assert!(find(b"pg_tblspc/16384/PG_15_202209061/5/16385").is_some());
        assert!(m.files.iter().all(|f| !f.path.starts_with(b"pg_wal/0")));

        let mut bad = bytes.to_vec();
        bad[100] ^= 0x20;
        assert!(matches!(
            parse(&bad),
            Err(ManifestError::ChecksumMismatch { .. })
        ));
    }
}
