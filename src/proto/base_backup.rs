//! The typed CopyData payloads of BASE_BACKUP on PostgreSQL 15+.
//!
//! Before 15 the CopyData of each per-tablespace CopyOut is raw tar with no type byte; that
//! layout needs no decoding and is handled by `backup`.

use bytes::Bytes;

use super::{ProtocolError, Reader};

pub const NEW_ARCHIVE_TAG: u8 = b'n';
pub const ARCHIVE_OR_MANIFEST_DATA_TAG: u8 = b'd';
pub const PROGRESS_TAG: u8 = b'p';
pub const MANIFEST_TAG: u8 = b'm';

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupStreamMessage {
    /// Starts an archive (and ends the previous one). `tablespace_path` is empty for the main
    /// data directory.
    NewArchive {
        name: String,
        tablespace_path: String,
    },
    /// Bytes of the current archive, or of the manifest once [`Self::ManifestStart`] was seen.
    Data(Bytes),
    /// Uncompressed bytes processed so far for the whole backup.
    Progress(u64),
    ManifestStart,
}

impl BackupStreamMessage {
    pub fn parse(payload: Bytes) -> Result<Self, ProtocolError> {
        match payload.first() {
            Some(&NEW_ARCHIVE_TAG) => {
                let mut r = Reader::new("BASE_BACKUP new archive", &payload[1..]);
                let name = r.cstr()?;
                let tablespace_path = r.cstr()?;
                r.finish()?;
                // A hostile server must not name an archive outside the target (pg_basebackup
                // applies the same rule).
                if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
                    return Err(ProtocolError::malformed(
                        "BASE_BACKUP new archive",
                        format!("unsafe archive name `{name}`"),
                    ));
                }
                Ok(Self::NewArchive {
                    name,
                    tablespace_path,
                })
            }
            Some(&ARCHIVE_OR_MANIFEST_DATA_TAG) => Ok(Self::Data(payload.slice(1..))),
            Some(&PROGRESS_TAG) => {
                let mut r = Reader::new("BASE_BACKUP progress", &payload[1..]);
                let done = r.i64()?;
                r.finish()?;
                let done = u64::try_from(done).map_err(|_| {
                    ProtocolError::malformed(
                        "BASE_BACKUP progress",
                        format!("negative count {done}"),
                    )
                })?;
                Ok(Self::Progress(done))
            }
            Some(&MANIFEST_TAG) => {
                Reader::new("BASE_BACKUP manifest start", &payload[1..]).finish()?;
                Ok(Self::ManifestStart)
            }
            Some(&other) => Err(ProtocolError::malformed(
                "BASE_BACKUP CopyData",
                format!("unknown message type `{}`", char::from(other)),
            )),
            None => Err(ProtocolError::malformed(
                "BASE_BACKUP CopyData",
                "empty payload",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::backend::tests::hex_bytes;

    fn parse(hex: &str) -> Result<BackupStreamMessage, ProtocolError> {
        BackupStreamMessage::parse(Bytes::from(hex_bytes(hex)))
    }

    #[test]
    fn new_archive_names_base_and_tablespaces() {
        // 'n' "base.tar\0" "\0"
        assert_eq!(
            parse("6e 626173652e74617200 00").unwrap(),
            BackupStreamMessage::NewArchive {
                name: "base.tar".into(),
                tablespace_path: String::new()
            }
        );
        // 'n' "16385.tar\0" "/ts\0"
        assert_eq!(
            parse("6e 31363338352e74617200 2f747300").unwrap(),
            BackupStreamMessage::NewArchive {
                name: "16385.tar".into(),
                tablespace_path: "/ts".into()
            }
        );
    }

    #[test]
    fn unsafe_archive_names_are_refused() {
        for name in ["", ".hidden", "a/b", "..\\x"] {
            let mut hex = String::from("6e ");
            hex.push_str(&hex::encode(name));
            hex.push_str(" 00 00");
            assert!(parse(&hex).is_err(), "{name:?}");
        }
    }

    #[test]
    fn progress_manifest_and_data() {
        assert_eq!(
            parse("70 0000000000100000").unwrap(),
            BackupStreamMessage::Progress(0x100000)
        );
        assert!(parse("70 ffffffffffffffff").is_err());
        assert!(parse("70 00").is_err());
        assert_eq!(parse("6d").unwrap(), BackupStreamMessage::ManifestStart);
        assert_eq!(
            parse("64 0102").unwrap(),
            BackupStreamMessage::Data(Bytes::from_static(&[1, 2]))
        );
        assert!(parse("7a").is_err());
    }
}
