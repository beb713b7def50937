//! `resync`: a standby whose WAL the primary no longer has, rebuilt from the blocks that
//! changed since its last restartpoint rather than from everything (PostgreSQL 17+, with
//! `summarize_wal`): its own data directory is described as a prior backup, the primary sends
//! an incremental backup against it, and `backup::combine` applies it in place. Where that
//! does not apply, the reason is said and the node is re-cloned. Why it is correct:
//! `proto-notes/11-incremental-resync.md`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::plan::PrimaryIdentity;
use super::super::spec::NodeSpec;
use super::super::topology::ControlFile;
use super::super::{error_chain, Cluster, ClusterError};
use crate::backup::combine::{self, Combined};
use crate::backup::manifest::prior::{self, PriorFile};
use crate::backup::manifest::WalRange;
use crate::backup::{self, BackupTarget};
use crate::proto::command::INCREMENTAL_MAJOR;

/// How a standby was rebuilt.
pub(crate) enum Resynced {
    /// By an incremental backup combined in place; `bytes` received, and how long receiving
    /// and combining took.
    Incremental {
        combined: Combined,
        bytes: u64,
        received_in: Duration,
        combined_in: Duration,
    },
    /// By a re-clone, and why an incremental backup did not apply.
    Recloned(String),
}

impl std::fmt::Display for Resynced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resynced::Incremental {
                combined,
                bytes,
                received_in,
                combined_in,
            } => write!(
                f,
                "resynced by an incremental backup: {} MB received in {:.1} s, combined in {:.1} s: {} files patched, {} replaced, {} removed{}",
                bytes / 1_000_000,
                received_in.as_secs_f64(),
                combined_in.as_secs_f64(),
                combined.patched,
                combined.replaced,
                combined.removed,
                if combined.resumed { " (finishing a resync cut short)" } else { "" }
            ),
            Resynced::Recloned(why) => write!(f, "re-cloned with a base backup: {why}"),
        }
    }
}

/// Why an incremental backup cannot rebuild a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoIncremental {
    #[error("PostgreSQL {0} has no incremental backups (17 or later)")]
    Major(u32),
    #[error("the primary does not summarize its WAL (summarize_wal = off)")]
    NoSummaries,
    #[error("it has no data directory to start from")]
    NoData,
    #[error("it belongs to another cluster (system identifier {0})")]
    OtherSystem(crate::ids::SystemId),
    #[error("its last restartpoint is on timeline {node}, the primary's on {primary}: changes past a timeline switch are not in the primary's summaries")]
    OtherTimeline {
        node: crate::ids::TimelineId,
        primary: crate::ids::TimelineId,
    },
    #[error("it has tablespaces, which pgrepl's resync does not handle yet")]
    Tablespaces,
}

/// Whether an incremental backup can rebuild a node whose data holds `control`.
pub fn incremental_applies(
    major: u32,
    summarize_wal: bool,
    control: Option<&ControlFile>,
    primary: PrimaryIdentity,
    tablespaces: bool,
) -> Result<(), NoIncremental> {
    if major < INCREMENTAL_MAJOR {
        return Err(NoIncremental::Major(major));
    }
    if !summarize_wal {
        return Err(NoIncremental::NoSummaries);
    }
    let control = control.ok_or(NoIncremental::NoData)?;
    if control.system_identifier != primary.system_id {
        return Err(NoIncremental::OtherSystem(control.system_identifier));
    }
    // A node on an older timeline may have replayed WAL past the switch that the new timeline
    // lacks: no summary names the blocks it changed.
    if control.checkpoint_timeline != primary.timeline {
        return Err(NoIncremental::OtherTimeline {
            node: control.checkpoint_timeline,
            primary: primary.timeline,
        });
    }
    if tablespaces {
        return Err(NoIncremental::Tablespaces);
    }
    Ok(())
}

impl Cluster {
    /// True when `node` (stopped, or running without streaming) is on `primary`'s timeline
    /// and `primary` no longer has the WAL from its last restartpoint: it cannot catch up by
    /// streaming, and only a rebuild brings it back. A node that streams gets its WAL, and on
    /// another timeline (a former primary) this says nothing: pg_rewind reads the node's own
    /// WAL.
    pub(crate) async fn wal_gone(
        &self,
        node: &NodeSpec,
        primary: &NodeSpec,
    ) -> Result<bool, ClusterError> {
        let Ok(control) = ControlFile::read(&self.runtime.data_dir(node)) else {
            return Ok(false);
        };
        if self.runtime.is_running(node).await {
            let streams = async {
                let rows = self
                    .sql(node)
                    .await
                    .ok()?
                    .query(
                        "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                        &[],
                    )
                    .await
                    .ok()?;
                Some(!rows.is_empty())
            };
            if streams.await == Some(true) {
                return Ok(false);
            }
        }
        let (mut conn, system) = self.identified(primary).await?;
        if system.timeline != control.checkpoint_timeline
            || system.system_id != control.system_identifier
        {
            return Ok(false);
        }
        let available = crate::replication::available::wal_available(
            &mut conn,
            control.redo,
            control.checkpoint_timeline,
            std::time::Duration::from_secs(2),
        )
        .await
        .map_err(|e| ClusterError::WalQuery {
            node: primary.name.clone(),
            source: Box::new(e),
        })?;
        Ok(!available)
    }

    /// Rebuilds the stopped standby `node` from `primary`: incrementally where that applies,
    /// else by a re-clone. A combine cut short by a crash is finished first.
    pub(crate) async fn resync_node(
        &self,
        node: &NodeSpec,
        primary: &NodeSpec,
    ) -> Result<Resynced, ClusterError> {
        let data = self.runtime.data_dir(node);
        let staged = data.with_extension("resync");
        let why = match self.incremental(node, primary, &data, &staged).await {
            Ok(resynced) => return Ok(resynced),
            Err(why) => why,
        };
        if staged.exists() {
            std::fs::remove_dir_all(&staged)
                .map_err(|e| ClusterError::io(format!("remove `{}`", staged.display()), e))?;
        }
        self.reclone(node, primary).await?;
        Ok(Resynced::Recloned(why))
    }

    /// The incremental path; `Err` says why it did not apply or failed (the caller re-clones).
    async fn incremental(
        &self,
        node: &NodeSpec,
        primary: &NodeSpec,
        data: &Path,
        staged: &Path,
    ) -> Result<Resynced, String> {
        let (mut conn, system) = self
            .identified(primary)
            .await
            .map_err(|e| error_chain(&e))?;
        let asked = async {
            let summarize = conn.show("summarize_wal").await.unwrap_or_default();
            let block_size: u64 = conn.show("block_size").await?.parse().unwrap_or(8192);
            Ok::<_, crate::conn::ConnectionError>((summarize == "on", block_size))
        };
        let (summarize_wal, block_size) = asked
            .await
            .map_err(|e| format!("`{}`: {e}", primary.name))?;
        let major = conn.server_major().unwrap_or(0);
        conn.close().await;

        if combine::started(staged) {
            let started = Instant::now();
            return combine::combine(staged, data, block_size)
                .map(|combined| Resynced::Incremental {
                    combined,
                    bytes: 0,
                    received_in: Duration::ZERO,
                    combined_in: started.elapsed(),
                })
                .map_err(|e| {
                    format!("finishing the resync cut short failed: {}", error_chain(&e))
                });
        }
        if staged.exists() {
            // A backup that was complete but never combined: the data may have moved since.
            std::fs::remove_dir_all(staged).map_err(|e| e.to_string())?;
        }
        let control = ControlFile::read(data).ok();
        let tablespaces = std::fs::read_dir(data.join("pg_tblspc"))
            .is_ok_and(|mut entries| entries.next().is_some());
        let identity = PrimaryIdentity {
            system_id: system.system_id,
            timeline: system.timeline,
        };
        incremental_applies(
            major,
            summarize_wal,
            control.as_ref(),
            identity,
            tablespaces,
        )
        .map_err(|e| e.to_string())?;
        let control = control.expect("checked above");
        let files =
            relation_files(data).map_err(|e| format!("reading `{}`: {e}", data.display()))?;
        let redo = control.redo.to_string();
        let manifest = prior::encode(
            control.system_identifier,
            &files,
            &WalRange {
                timeline: control.checkpoint_timeline,
                start_lsn: redo.clone(),
                end_lsn: redo,
            },
        );
        let mut options = self.standby_backup_options(
            primary,
            vec![BackupTarget {
                dir: staged.to_owned(),
                application_name: Some(node.name.clone()),
            }],
            format!("pgrepl resync {}", node.name),
        );
        options.incremental_from = Some(manifest);
        // Not synced: the combine removes the patches before its one syncfs and relies on the
        // page cache within one boot (`backup::combine`).
        options.sync = false;
        let started = Instant::now();
        let summary = backup::base_backup(
            &self.replication_connect(primary),
            &options,
            Arc::new(backup::NoProgress),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .map_err(|e| error_chain(&e))?;
        let received_in = started.elapsed();
        let started = Instant::now();
        let combined = combine::combine(staged, data, block_size)
            .map_err(|e| format!("combining failed: {}", error_chain(&e)))?;
        Ok(Resynced::Incremental {
            combined,
            bytes: summary.bytes,
            received_in,
            combined_in: started.elapsed(),
        })
    }
}

/// The relation files of `data` (`global/`, `base/<db>/`), which is all the server reads of a
/// prior manifest: one it lists may be sent as changed blocks, any other is sent whole.
fn relation_files(data: &Path) -> std::io::Result<Vec<PriorFile>> {
    let mut dirs = vec!["global".to_owned()];
    for entry in std::fs::read_dir(data.join("base"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            dirs.push(format!("base/{name}"));
        }
    }
    let mut files = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(data.join(&dir))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let metadata = entry.metadata()?;
            if metadata.is_file() && is_relation_file(&name) {
                use std::os::unix::fs::MetadataExt;
                files.push(PriorFile {
                    path: format!("{dir}/{name}"),
                    size: metadata.len(),
                    modified: metadata.mtime(),
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// `<relfilenumber>[_fsm|_vm|_init][.<segment>]`.
fn is_relation_file(name: &str) -> bool {
    let (stem, segment) = name.split_once('.').unwrap_or((name, "0"));
    let number = ["_fsm", "_vm", "_init"]
        .iter()
        .find_map(|fork| stem.strip_suffix(fork))
        .unwrap_or(stem);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(number) && digits(segment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SystemId, TimelineId};

    #[test]
    fn relation_files_by_name() {
        for yes in ["16384", "16384.2", "16384_vm", "16384_fsm.1", "1259_init"] {
            assert!(is_relation_file(yes), "{yes}");
        }
        for no in [
            "pg_filenode.map",
            "PG_VERSION",
            "t3_16384",
            "16384_x",
            "16384.",
            "pg_internal.init",
        ] {
            assert!(!is_relation_file(no), "{no}");
        }
    }

    #[test]
    fn an_incremental_rebuild_needs_17_summaries_and_the_same_timeline() {
        let control = ControlFile {
            system_identifier: SystemId::new(7),
            state: ControlFile::SHUT_DOWN_IN_RECOVERY,
            checkpoint: "0/3000028".parse().unwrap(),
            redo: "0/3000028".parse().unwrap(),
            checkpoint_timeline: TimelineId::new(2),
        };
        let primary = PrimaryIdentity {
            system_id: SystemId::new(7),
            timeline: TimelineId::new(2),
        };
        assert_eq!(
            incremental_applies(17, true, Some(&control), primary, false),
            Ok(())
        );
        assert_eq!(
            incremental_applies(16, true, Some(&control), primary, false),
            Err(NoIncremental::Major(16))
        );
        assert_eq!(
            incremental_applies(18, false, Some(&control), primary, false),
            Err(NoIncremental::NoSummaries)
        );
        assert_eq!(
            incremental_applies(18, true, None, primary, false),
            Err(NoIncremental::NoData)
        );
        let promoted = PrimaryIdentity {
            timeline: TimelineId::new(3),
            ..primary
        };
        assert!(matches!(
            incremental_applies(18, true, Some(&control), promoted, false),
            Err(NoIncremental::OtherTimeline { .. })
        ));
        let other = PrimaryIdentity {
            system_id: SystemId::new(8),
            ..primary
        };
        assert!(matches!(
            incremental_applies(18, true, Some(&control), other, false),
            Err(NoIncremental::OtherSystem(_))
        ));
        assert_eq!(
            incremental_applies(18, true, Some(&control), primary, true),
            Err(NoIncremental::Tablespaces)
        );
    }
}
