//! Decoding a checked manifest's JSON one `Files` entry at a time (serde visitors over a reader),
//! with PostgreSQL's checks of each field (`src/common/parse_manifest.c`).

use std::fmt;
use std::io::{BufReader, Read};

use serde::de::{self, DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::super::checksum::ChecksumAlgorithm;

use super::{
    invalid, DisplayPath, ManifestError, ManifestFile, ManifestHeader, WalRange, VERSION_KEY,
};
use crate::ids::{SystemId, TimelineId};

/// Decodes a manifest whose checksum [`ManifestDigest`] has verified (`checksum` is what it
/// returned), handing each `Files` entry to `on_file` as soon as it is decoded: memory does not
/// grow with the number of files. Returns the rest.
///
/// The parse is strict. It rejects unknown versions, unknown, repeated or missing keys, paths
/// that leave the data directory, checksums of the wrong length for their algorithm or with bad
/// hex, and LSNs that are not `X/X`. A path listed twice is not caught here (that would take
/// memory per file); [`verify_written`] reports the second listing as missing.
pub fn read(
    manifest: impl Read,
    checksum: &str,
    on_file: &mut dyn FnMut(ManifestFile) -> Result<(), ManifestError>,
) -> Result<ManifestHeader, ManifestError> {
    let mut stopped = None;
    let mut de =
        serde_json::Deserializer::from_reader(BufReader::with_capacity(64 << 10, manifest));
    let raw = de
        .deserialize_map(TopLevel {
            on_file,
            stopped: &mut stopped,
        })
        .and_then(|raw| de.end().map(|()| raw));
    let raw = match raw {
        Ok(raw) => raw,
        Err(_) if stopped.is_some() => return Err(stopped.expect("checked")),
        Err(e) if e.is_io() => return Err(ManifestError::Read(e.into())),
        Err(e) => return Err(invalid(e.to_string())),
    };
    if !raw.manifest_checksum.eq_ignore_ascii_case(checksum) {
        return Err(invalid(format!(
            "`Manifest-Checksum` `{}` differs from the last line's `{checksum}`",
            raw.manifest_checksum
        )));
    }
    match (raw.version, raw.system_identifier) {
        (1, Some(id)) => {
            return Err(invalid(format!(
                "manifest version 1 has a `System-Identifier` (`{id}`); only version 2 has one"
            )));
        }
        (2, None) => return Err(invalid("manifest version 2 has no `System-Identifier`")),
        _ => {}
    }
    if raw.wal_ranges.is_empty() {
        return Err(invalid("`WAL-Ranges` is empty"));
    }
    let wal_ranges = raw
        .wal_ranges
        .into_iter()
        .map(convert_wal_range)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ManifestHeader {
        version: raw.version,
        system_identifier: raw.system_identifier,
        files: raw.files,
        wal_ranges,
    })
}

/// The top-level keys, for serde's "expected one of" messages.
const TOP_LEVEL_KEYS: &[&str] = &[
    VERSION_KEY,
    "System-Identifier",
    "Files",
    "WAL-Ranges",
    "Manifest-Checksum",
];

/// The manifest object, decoded key by key so that `Files` can be handed on entry by entry.
struct TopLevel<'a> {
    on_file: &'a mut dyn FnMut(ManifestFile) -> Result<(), ManifestError>,
    /// The error that stopped `on_file` or a file's conversion: serde only carries strings, so
    /// the real error waits here.
    stopped: &'a mut Option<ManifestError>,
}

struct RawHeader {
    version: u32,
    system_identifier: Option<SystemId>,
    files: u64,
    wal_ranges: Vec<RawWalRange>,
    manifest_checksum: String,
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a backup manifest object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let (mut version, mut system_identifier, mut files) = (None, None, None);
        let (mut wal_ranges, mut manifest_checksum): (Option<Vec<RawWalRange>>, Option<String>) =
            (None, None);
        fn once<T, E: de::Error>(
            slot: &mut Option<T>,
            key: &'static str,
            value: T,
        ) -> Result<(), E> {
            match slot.replace(value) {
                Some(_) => Err(E::duplicate_field(key)),
                None => Ok(()),
            }
        }
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                VERSION_KEY => {
                    let value: serde_json::Value = map.next_value()?;
                    let v = supported_version(&value).map_err(|e| stop(self.stopped, e))?;
                    once::<_, A::Error>(&mut version, VERSION_KEY, v)?;
                }
                "System-Identifier" => {
                    // serde_json reads integers into u64 directly. A System-Identifier is above
                    // 2^53, so going through f64 would corrupt it.
                    once::<_, A::Error>(
                        &mut system_identifier,
                        "System-Identifier",
                        SystemId::new(map.next_value::<u64>()?),
                    )?;
                }
                "Files" => {
                    let n = map.next_value_seed(Files {
                        on_file: &mut *self.on_file,
                        stopped: &mut *self.stopped,
                    })?;
                    once::<_, A::Error>(&mut files, "Files", n)?;
                }
                "WAL-Ranges" => {
                    once::<_, A::Error>(&mut wal_ranges, "WAL-Ranges", map.next_value()?)?
                }
                "Manifest-Checksum" => once::<_, A::Error>(
                    &mut manifest_checksum,
                    "Manifest-Checksum",
                    map.next_value()?,
                )?,
                other => return Err(A::Error::unknown_field(other, TOP_LEVEL_KEYS)),
            }
        }
        Ok(RawHeader {
            version: version.ok_or_else(|| A::Error::missing_field(VERSION_KEY))?,
            system_identifier,
            files: files.ok_or_else(|| A::Error::missing_field("Files"))?,
            wal_ranges: wal_ranges.ok_or_else(|| A::Error::missing_field("WAL-Ranges"))?,
            manifest_checksum: manifest_checksum
                .ok_or_else(|| A::Error::missing_field("Manifest-Checksum"))?,
        })
    }
}

/// Parks `e` for [`read`] and stops the deserializer.
fn stop<E: de::Error>(stopped: &mut Option<ManifestError>, e: ManifestError) -> E {
    *stopped = Some(e);
    E::custom("stopped")
}

/// The `Files` array: each entry is converted and handed on, then dropped.
struct Files<'a> {
    on_file: &'a mut dyn FnMut(ManifestFile) -> Result<(), ManifestError>,
    stopped: &'a mut Option<ManifestError>,
}

impl<'de> DeserializeSeed<'de> for Files<'_> {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Files<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of files")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut index = 0;
        while let Some(raw) = seq.next_element::<RawFile>()? {
            let file = convert_file(index, raw).map_err(|e| stop(self.stopped, e))?;
            (self.on_file)(file).map_err(|e| stop(self.stopped, e))?;
            index += 1;
        }
        Ok(index as u64)
    }
}

fn supported_version(value: &serde_json::Value) -> Result<u32, ManifestError> {
    match value.as_u64() {
        Some(1) => Ok(1),
        Some(2) => Ok(2),
        _ => Err(invalid(format!(
            "unsupported manifest version `{value}`; pgrepl understands versions 1 and 2"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Last-Modified")]
    last_modified: String,
    #[serde(rename = "Checksum-Algorithm")]
    checksum_algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWalRange {
    #[serde(rename = "Timeline")]
    timeline: TimelineId,
    #[serde(rename = "Start-LSN")]
    start_lsn: String,
    #[serde(rename = "End-LSN")]
    end_lsn: String,
}

fn convert_file(index: usize, raw: RawFile) -> Result<ManifestFile, ManifestError> {
    let entry = || format!("entry {} of `Files`", index + 1);
    let path = match (raw.path, raw.encoded_path) {
        (Some(p), None) => p.into_bytes(),
        (None, Some(h)) => hex::decode(&h).map_err(|_| {
            invalid(format!(
                "{}: `Encoded-Path` `{h}` is not valid hex",
                entry()
            ))
        })?,
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "{}: has both `Path` and `Encoded-Path`",
                entry()
            )));
        }
        (None, None) => {
            return Err(invalid(format!(
                "{}: has neither `Path` nor `Encoded-Path`",
                entry()
            )));
        }
    };
    check_relative_path(&path)
        .map_err(|why| invalid(format!("{}: path `{}` {why}", entry(), DisplayPath(&path))))?;
    let in_file = |why: String| invalid(format!("file `{}`: {why}", DisplayPath(&path)));

    let checksum_algorithm = match &raw.checksum_algorithm {
        None => ChecksumAlgorithm::None,
        Some(name) => name.parse().map_err(in_file)?,
    };
    let checksum = match (checksum_algorithm, raw.checksum) {
        (ChecksumAlgorithm::None, None) => None,
        (ChecksumAlgorithm::None, Some(c)) => {
            return Err(in_file(format!(
                "has `Checksum` `{c}` but no `Checksum-Algorithm`"
            )));
        }
        (alg, None) => {
            return Err(in_file(format!(
                "has `Checksum-Algorithm` `{alg}` but no `Checksum`"
            )));
        }
        (alg, Some(c)) => {
            if !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(in_file(format!("checksum `{c}` is not hex")));
            }
            let want = hex_digest_len(alg);
            if c.len() != want {
                return Err(in_file(format!(
                    "checksum `{c}` has {} hex digits, but `{alg}` needs {want}",
                    c.len()
                )));
            }
            // The server writes lower case, and so does FileChecksum. Normalising here lets a
            // hand-edited upper-case manifest still compare equal.
            Some(c.to_ascii_lowercase())
        }
    };

    Ok(ManifestFile {
        path,
        size: raw.size,
        checksum_algorithm,
        checksum,
        last_modified: raw.last_modified,
    })
}

/// Hex digits in a digest of `alg`; `alg` is never `None` here.
fn hex_digest_len(alg: ChecksumAlgorithm) -> usize {
    match alg {
        ChecksumAlgorithm::None => 0,
        ChecksumAlgorithm::Crc32c => 8,
        ChecksumAlgorithm::Sha224 => 56,
        ChecksumAlgorithm::Sha256 => 64,
        ChecksumAlgorithm::Sha384 => 96,
        ChecksumAlgorithm::Sha512 => 128,
    }
}

/// The server only lists paths inside the data directory, and callers may join these paths onto
/// a directory. So reject anything absolute, empty or with `.`/`..` components, and NUL, which a
/// C consumer would silently truncate at.
fn check_relative_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.contains(&0) {
        return Err("contains a NUL byte");
    }
    if path
        .split(|&b| b == b'/')
        .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err("is not a plain relative path");
    }
    Ok(())
}

fn convert_wal_range(raw: RawWalRange) -> Result<WalRange, ManifestError> {
    if raw.timeline == TimelineId::new(0) {
        return Err(invalid("WAL range with timeline 0"));
    }
    for (what, lsn) in [("Start-LSN", &raw.start_lsn), ("End-LSN", &raw.end_lsn)] {
        if !is_lsn_text(lsn) {
            return Err(invalid(format!(
                "WAL range for timeline {}: `{what}` `{lsn}` is not an LSN of the form `X/X`",
                raw.timeline
            )));
        }
    }
    Ok(WalRange {
        timeline: raw.timeline,
        start_lsn: raw.start_lsn,
        end_lsn: raw.end_lsn,
    })
}

/// `X/X`, each half 1 to 8 hex digits (a u32), as the server prints with `%X/%X`.
fn is_lsn_text(s: &str) -> bool {
    let half = |h: &str| (1..=8).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit());
    s.split_once('/')
        .is_some_and(|(hi, lo)| half(hi) && half(lo))
}
