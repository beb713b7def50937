//! A data directory described as a prior backup, for UPLOAD_MANIFEST before an incremental
//! BASE_BACKUP (PostgreSQL 17+).
//!
//! The server reads from it only the system identifier, the WAL range (its start is the LSN
//! from which the WAL summaries must say which blocks changed) and which files exist with
//! their sizes (a relation file the prior backup lacks is sent whole). Checksums are optional
//! in the format and left out: computing them would mean reading every file. The layout is the
//! one `src/backend/backup/backup_manifest.c` writes, since `Manifest-Checksum` covers every
//! byte before its own line.

use sha2::{Digest, Sha256};

use super::WalRange;
use crate::ids::SystemId;

/// One file of the prior backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorFile {
    /// Relative to the data directory, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub modified: i64,
}

/// The manifest text, version 2 (17+ requires the system identifier). `range`: the WAL the
/// prior backup needed, whose start is what the incremental backup is relative to.
pub fn encode(system_id: SystemId, files: &[PriorFile], range: &WalRange) -> Vec<u8> {
    let mut text = format!(
        "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {system_id},\n\"Files\": ["
    );
    for (i, file) in files.iter().enumerate() {
        text.push_str(if i == 0 { "\n" } else { ",\n" });
        text.push_str(&format!(
            "{{ \"Path\": {}, \"Size\": {}, \"Last-Modified\": \"{}\" }}",
            serde_json::to_string(&file.path).expect("a string serialises"),
            file.size,
            gmt(file.modified)
        ));
    }
    text.push_str(&format!(
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}\n],\n",
        range.timeline, range.start_lsn, range.end_lsn
    ));
    let sum = hex::encode(Sha256::digest(text.as_bytes()));
    text.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
    text.into_bytes()
}

/// `2026-12-07 18:42:52 GMT`, as the server writes `Last-Modified`.
fn gmt(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} GMT",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{read, ManifestDigest};
    use crate::ids::TimelineId;

    #[test]
    fn a_prior_manifest_passes_pgrepls_own_checks_and_lists_every_file() {
        let files = vec![
            PriorFile {
                path: "PG_VERSION".into(),
                size: 3,
                modified: 1_796_581_372,
            },
            PriorFile {
                path: "base/5/16384".into(),
                size: 8192 * 589,
                modified: 0,
            },
        ];
        let range = WalRange {
            timeline: TimelineId::new(1),
            start_lsn: "0/2000028".into(),
            end_lsn: "0/2000080".into(),
        };
        let bytes = encode(SystemId::new(7716634477742210199), &files, &range);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(
            "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7716634477742210199,\n\"Files\": [\n{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-12-06 18:22:52 GMT\" },\n"
        ), "{text}");
        assert!(text.contains(
            "\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000080\" }\n],\n\"Manifest-Checksum\": \""
        ), "{text}");

        let mut digest = ManifestDigest::default();
        digest.update(&bytes);
        let checksum = digest.finish().expect("the checksum matches");
        let mut seen = Vec::new();
        let header = read(&bytes[..], &checksum, &mut |file| {
            seen.push((String::from_utf8(file.path).unwrap(), file.size));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            header.system_identifier,
            Some(SystemId::new(7716634477742210199))
        );
        assert_eq!(header.wal_ranges, vec![range]);
        assert_eq!(
            seen,
            vec![
                ("PG_VERSION".into(), 3),
                ("base/5/16384".into(), 8192 * 589)
            ]
        );
    }
}
