//! Replication command text, built in one place.
//!
//! Keywords are upper-case because the walsender's scanner matches them literally; slot names are
//! double-quoted identifiers and labels single-quoted literals with `''` escapes (backslashes are
//! literal in the replication grammar).

use std::fmt::Write as _;

use crate::ids::TimelineId;
use crate::lsn::Lsn;

/// First server major with the parenthesised BASE_BACKUP syntax and typed CopyData stream.
pub const BASE_BACKUP_NEW_SYNTAX_MAJOR: u32 = 15;
/// First server major with UPLOAD_MANIFEST and `BASE_BACKUP (INCREMENTAL)`.
pub const INCREMENTAL_MAJOR: u32 = 17;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationCommand<'a> {
    IdentifySystem,
    Show(&'a str),
    TimelineHistory(TimelineId),
    /// The legacy physical form, valid on every supported server.
    CreatePhysicalSlot {
        name: &'a str,
        temporary: bool,
        reserve_wal: bool,
    },
    DropSlot {
        name: &'a str,
        wait: bool,
    },
    /// PostgreSQL 15+.
    ReadSlot(&'a str),
    BaseBackup(&'a BaseBackupCommand),
    /// PostgreSQL 17+: the prior backup's manifest follows as COPY data; an INCREMENTAL
    /// BASE_BACKUP on the same session is relative to it.
    UploadManifest,
    StartPhysical {
        slot: Option<&'a str>,
        start: Lsn,
        timeline: TimelineId,
    },
}

/// Server-side compression of the backup archives (15+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCompression {
    Gzip,
    Lz4,
    Zstd,
}

impl ServerCompression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupCommand {
    /// Server major version: selects the keyword (≤14) or parenthesised (15+) syntax.
    pub server_major: u32,
    pub label: String,
    /// Ask the server to size the tablespaces first (for a progress bar).
    pub progress: bool,
    pub fast_checkpoint: bool,
    /// Append the needed WAL to the base archive (`-X fetch`).
    pub include_wal: bool,
    /// Wait for WAL archiving at the end; pointless when pgrepl gets the WAL itself.
    pub wait_for_archive: bool,
    /// kB/s, 32..=1048576; `None` is unlimited (the server rejects 0).
    pub max_rate_kbps: Option<u32>,
    /// `Some(algorithm name)` asks for a manifest with that checksum algorithm.
    pub manifest_checksums: Option<&'static str>,
    pub compression: Option<ServerCompression>,
    /// 17+: only the blocks changed since the manifest uploaded before (UPLOAD_MANIFEST).
    pub incremental: bool,
}

impl ReplicationCommand<'_> {
    pub fn render(&self) -> String {
        match self {
            Self::IdentifySystem => "IDENTIFY_SYSTEM".to_owned(),
            Self::Show(name) => format!("SHOW {}", quote_ident(name)),
            Self::TimelineHistory(tli) => format!("TIMELINE_HISTORY {tli}"),
            Self::CreatePhysicalSlot {
                name,
                temporary,
                reserve_wal,
            } => format!(
                "CREATE_REPLICATION_SLOT {}{} PHYSICAL{}",
                quote_ident(name),
                if *temporary { " TEMPORARY" } else { "" },
                if *reserve_wal { " RESERVE_WAL" } else { "" },
            ),
            Self::DropSlot { name, wait } => format!(
                "DROP_REPLICATION_SLOT {}{}",
                quote_ident(name),
                if *wait { " WAIT" } else { "" }
            ),
            Self::ReadSlot(name) => format!("READ_REPLICATION_SLOT {}", quote_ident(name)),
            Self::BaseBackup(cmd) => cmd.render(),
            Self::UploadManifest => "UPLOAD_MANIFEST".to_owned(),
            Self::StartPhysical {
                slot,
                start,
                timeline,
            } => {
                let mut text = String::from("START_REPLICATION ");
                if let Some(slot) = slot {
                    let _ = write!(text, "SLOT {} ", quote_ident(slot));
                }
                let _ = write!(text, "PHYSICAL {start} TIMELINE {timeline}");
                text
            }
        }
    }
}

impl BaseBackupCommand {
    fn render(&self) -> String {
        if self.server_major >= BASE_BACKUP_NEW_SYNTAX_MAJOR {
            self.render_options()
        } else {
            self.render_keywords()
        }
    }

    fn render_options(&self) -> String {
        let mut options = vec![format!("LABEL {}", quote_literal(&self.label))];
        if self.progress {
            options.push("PROGRESS".into());
        }
        options.push(format!(
            "CHECKPOINT '{}'",
            if self.fast_checkpoint {
                "fast"
            } else {
                "spread"
            }
        ));
        if self.include_wal {
            options.push("WAL".into());
        }
        options.push(format!("WAIT {}", self.wait_for_archive));
        if let Some(rate) = self.max_rate_kbps {
            options.push(format!("MAX_RATE {rate}"));
        }
        match self.manifest_checksums {
            Some(algorithm) => {
                options.push("MANIFEST 'yes'".into());
                options.push(format!("MANIFEST_CHECKSUMS {}", quote_literal(algorithm)));
            }
            None => options.push("MANIFEST 'no'".into()),
        }
        if let Some(compression) = self.compression {
            options.push("TARGET 'client'".into());
            options.push(format!("COMPRESSION '{}'", compression.as_str()));
        }
        if self.incremental {
            options.push("INCREMENTAL".into());
        }
        format!("BASE_BACKUP ({})", options.join(", "))
    }

    fn render_keywords(&self) -> String {
        let mut text = format!("BASE_BACKUP LABEL {}", quote_literal(&self.label));
        if self.progress {
            text.push_str(" PROGRESS");
        }
        if self.fast_checkpoint {
            text.push_str(" FAST");
        }
        if self.include_wal {
            text.push_str(" WAL");
        }
        if !self.wait_for_archive {
            text.push_str(" NOWAIT");
        }
        if let Some(rate) = self.max_rate_kbps {
            let _ = write!(text, " MAX_RATE {rate}");
        }
        if let Some(algorithm) = self.manifest_checksums {
            let _ = write!(
                text,
                " MANIFEST 'yes' MANIFEST_CHECKSUMS {}",
                quote_literal(algorithm)
            );
        }
        text
    }
}

/// A replication-grammar string literal: single quotes, `'` doubled, backslash literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A double-quoted identifier, `"` doubled.
pub fn quote_ident(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(major: u32) -> BaseBackupCommand {
        BaseBackupCommand {
            server_major: major,
            label: "pgrepl's backup".into(),
            progress: true,
            fast_checkpoint: true,
            include_wal: false,
            wait_for_archive: false,
            max_rate_kbps: Some(1024),
            manifest_checksums: Some("CRC32C"),
            compression: None,
            incremental: false,
        }
    }

    #[test]
    fn base_backup_uses_the_syntax_of_the_server() {
        assert_eq!(
            ReplicationCommand::BaseBackup(&backup(15)).render(),
            "BASE_BACKUP (LABEL 'pgrepl''s backup', PROGRESS, CHECKPOINT 'fast', WAIT false, \
             MAX_RATE 1024, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C')"
        );
        assert_eq!(
            ReplicationCommand::BaseBackup(&backup(14)).render(),
            "BASE_BACKUP LABEL 'pgrepl''s backup' PROGRESS FAST NOWAIT MAX_RATE 1024 \
             MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"
        );
    }

    #[test]
    fn fetch_and_compression_options() {
        let cmd = BaseBackupCommand {
            include_wal: true,
            max_rate_kbps: None,
            manifest_checksums: None,
            progress: false,
            compression: Some(ServerCompression::Zstd),
            ..backup(16)
        };
        assert_eq!(
            ReplicationCommand::BaseBackup(&cmd).render(),
            "BASE_BACKUP (LABEL 'pgrepl''s backup', CHECKPOINT 'fast', WAL, WAIT false, \
             MANIFEST 'no', TARGET 'client', COMPRESSION 'zstd')"
        );
    }

    #[test]
    fn an_incremental_backup_follows_an_uploaded_manifest() {
        let cmd = BaseBackupCommand {
            incremental: true,
            progress: false,
            max_rate_kbps: None,
            ..backup(17)
        };
        assert_eq!(
            ReplicationCommand::UploadManifest.render(),
            "UPLOAD_MANIFEST"
        );
        assert_eq!(
            ReplicationCommand::BaseBackup(&cmd).render(),
            "BASE_BACKUP (LABEL 'pgrepl''s backup', CHECKPOINT 'fast', WAIT false, \
             MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', INCREMENTAL)"
        );
    }

    #[test]
    fn slot_and_streaming_commands() {
        let start: Lsn = "0/3000000".parse().unwrap();
        assert_eq!(
            ReplicationCommand::CreatePhysicalSlot {
                name: "s1",
                temporary: true,
                reserve_wal: true
            }
            .render(),
            "CREATE_REPLICATION_SLOT \"s1\" TEMPORARY PHYSICAL RESERVE_WAL"
        );
        assert_eq!(
            ReplicationCommand::DropSlot {
                name: "s1",
                wait: true
            }
            .render(),
            "DROP_REPLICATION_SLOT \"s1\" WAIT"
        );
        assert_eq!(
            ReplicationCommand::ReadSlot("s1").render(),
            "READ_REPLICATION_SLOT \"s1\""
        );
        assert_eq!(
            ReplicationCommand::StartPhysical {
                slot: Some("s1"),
                start,
                timeline: TimelineId::new(2)
            }
            .render(),
            "START_REPLICATION SLOT \"s1\" PHYSICAL 0/3000000 TIMELINE 2"
        );
        assert_eq!(
            ReplicationCommand::StartPhysical {
                slot: None,
                start,
                timeline: TimelineId::new(1)
            }
            .render(),
            "START_REPLICATION PHYSICAL 0/3000000 TIMELINE 1"
        );
        assert_eq!(
            ReplicationCommand::Show("wal_segment_size").render(),
            "SHOW \"wal_segment_size\""
        );
        assert_eq!(
            ReplicationCommand::TimelineHistory(TimelineId::new(3)).render(),
            "TIMELINE_HISTORY 3"
        );
    }
}
