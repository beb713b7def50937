//! Which node is the primary now. The cluster file describes the topology `up` builds; after a
//! failover or switchover the roles differ, and this small state file (in the state directory)
//! records the current primary so every later command sees the cluster as it is.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::history::RoleChange;
use super::runtime_error::RuntimeError;
use super::ClusterError;
use crate::ids::{SystemId, TimelineId};

const FILE_NAME: &str = "topology.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The node that is primary now.
    pub primary: String,
    /// Role changes so far, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// A role change, or a line an older pgrepl or an agent wrote ("agent: `pg_slave` leads").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HistoryEntry {
    Change(RoleChange),
    Note(String),
}

impl Topology {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// `None` when no role change ever happened.
    pub fn load(state_dir: &Path) -> Result<Option<Topology>, ClusterError> {
        let path = Self::path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                RuntimeError::DamagedStateFile {
                    path: path.clone(),
                    reason: e.to_string(),
                }
                .into()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClusterError::io(format!("read `{}`", path.display()), e)),
        }
    }

    /// Written to a temporary file and renamed, so a crash never leaves half a file.
    pub fn save(&self, state_dir: &Path) -> Result<(), ClusterError> {
        let path = Self::path(state_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("topology serializes");
        std::fs::write(&tmp, text)
            .map_err(|e| ClusterError::io(format!("write `{}`", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| ClusterError::io(format!("write `{}`", path.display()), e))
    }

    /// Forgets role changes (`down --purge`).
    pub fn remove(state_dir: &Path) -> Result<(), ClusterError> {
        match std::fs::remove_file(Self::path(state_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ClusterError::io("remove the topology file", e))
            }
            _ => Ok(()),
        }
    }
}

/// What `pg_control` says about a stopped node: how it was shut down and where its last
/// checkpoint is. The fields read here sit at the same offsets in every supported version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFile {
    pub system_identifier: SystemId,
    /// `DBState`: 1 = shut down, 2 = shut down in recovery, other values = not cleanly stopped.
    pub state: u32,
    pub checkpoint: crate::Lsn,
    /// The last checkpoint's (or restartpoint's) redo: every change before it is on disk.
    pub redo: crate::Lsn,
    pub checkpoint_timeline: TimelineId,
}

impl ControlFile {
    pub const SHUT_DOWN: u32 = 1;
    pub const SHUT_DOWN_IN_RECOVERY: u32 = 2;

    pub fn read(data_dir: &Path) -> Result<ControlFile, ClusterError> {
        let path = data_dir.join("global/pg_control");
        let bytes = std::fs::read(&path)
            .map_err(|e| ClusterError::io(format!("read `{}`", path.display()), e))?;
        Self::parse(&bytes).ok_or_else(|| RuntimeError::ShortControlFile(path).into())
    }

    /// ControlFileData starts: u64 system_identifier, u32 version, u32 catalog version,
    /// i32 state, (pad) i64 time, u64 checkPoint, then CheckPoint { u64 redo, u32 ThisTimeLineID .. }.
    /// Native byte order: the file is read on the machine that wrote it.
    fn parse(bytes: &[u8]) -> Option<ControlFile> {
        let u64_at = |at: usize| Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        Some(ControlFile {
            system_identifier: SystemId::new(u64_at(0)?),
            state: u32_at(16)?,
            checkpoint: crate::Lsn::new(u64_at(32)?),
            redo: crate::Lsn::new(u64_at(40)?),
            checkpoint_timeline: TimelineId::new(u32_at(48)?),
        })
    }

    pub fn shut_down_cleanly(&self) -> bool {
        matches!(self.state, Self::SHUT_DOWN | Self::SHUT_DOWN_IN_RECOVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_round_trips_through_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(Topology::load(tmp.path()).unwrap(), None);
        let topology = Topology {
            primary: "pg_slave".into(),
            history: vec![HistoryEntry::Note("failover".into())],
        };
        topology.save(tmp.path()).unwrap();
        assert_eq!(Topology::load(tmp.path()).unwrap(), Some(topology));
        Topology::remove(tmp.path()).unwrap();
        assert_eq!(Topology::load(tmp.path()).unwrap(), None);
    }

    #[test]
    fn control_file_fields_at_fixed_offsets() {
        let mut bytes = vec![0u8; 64];
        bytes[0..8].copy_from_slice(&7u64.to_ne_bytes());
        bytes[16..20].copy_from_slice(&1u32.to_ne_bytes());
        bytes[32..40].copy_from_slice(&0x0300_0028u64.to_ne_bytes());
        bytes[40..48].copy_from_slice(&0x0300_0010u64.to_ne_bytes());
        bytes[48..52].copy_from_slice(&2u32.to_ne_bytes());
        let control = ControlFile::parse(&bytes).unwrap();
        assert_eq!(control.system_identifier, SystemId::new(7));
        assert!(control.shut_down_cleanly());
        assert_eq!(control.checkpoint.to_string(), "0/3000028");
        assert_eq!(control.redo.to_string(), "0/3000010");
        assert_eq!(control.checkpoint_timeline, TimelineId::new(2));
        assert!(ControlFile::parse(&bytes[..40]).is_none());
    }
}
