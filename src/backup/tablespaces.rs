//! The server's tablespaces, as BASE_BACKUP lists them, and where each goes for each target:
//! its own location for a single target, else the `-T OLD=NEW` mappings, one per target in
//! `-D` order; every one staged beside its final place until the backup is complete.

use std::collections::HashMap;
use std::path::PathBuf;

use super::target::Staging;
use super::{BackupError, BaseBackupOptions};
use crate::conn::ResultSet;
use crate::proto::ProtocolError;

#[derive(Debug, Clone)]
pub(super) struct Tablespace {
    /// `None` for the main data directory (always the last row).
    pub(super) oid: Option<u32>,
    pub(super) location: Option<PathBuf>,
    pub(super) size_kb: Option<u64>,
}

pub(super) fn parse_tablespaces(set: &ResultSet) -> Result<Vec<Tablespace>, BackupError> {
    let mut list = Vec::new();
    for row in &set.rows {
        let oid = set.text(row, "spcoid")?.map(str::parse::<u32>).transpose();
        let oid = oid.map_err(|_| ProtocolError::malformed("tablespace list", "bad spcoid"))?;
        let size_kb = set.text(row, "size")?.and_then(|s| s.parse().ok());
        let location = set
            .text(row, "spclocation")?
            .filter(|l| !l.is_empty())
            .map(PathBuf::from);
        list.push(Tablespace {
            oid,
            location,
            size_kb,
        });
    }
    if list.last().is_none_or(|t| t.oid.is_some()) {
        return Err(ProtocolError::malformed(
            "tablespace list",
            "the data directory is not the last row",
        )
        .into());
    }
    Ok(list)
}

/// Where each tablespace goes for each target.
#[derive(Debug, Default)]
pub(super) struct TablespaceLayout {
    /// oid -> staging dir per target.
    pub(super) staging: HashMap<u32, Vec<PathBuf>>,
    /// oid -> final dir per target (the `pg_tblspc/<oid>` link targets).
    pub(super) links: HashMap<u32, Vec<PathBuf>>,
    /// server location -> oid, to route PG 15+ archives that name their location.
    pub(super) by_location: HashMap<PathBuf, u32>,
}

pub(super) fn plan_tablespaces(
    tablespaces: &[Tablespace],
    options: &BaseBackupOptions,
    staging: &mut Staging,
) -> Result<TablespaceLayout, BackupError> {
    let mut layout = TablespaceLayout::default();
    for ts in tablespaces {
        let (Some(oid), Some(location)) = (ts.oid, &ts.location) else {
            continue;
        };
        let mapped: Vec<&PathBuf> = options
            .tablespace_mappings
            .iter()
            .filter(|(old, _)| old == location)
            .map(|(_, new)| new)
            .collect();
        let finals: Vec<PathBuf> = match (mapped.len(), options.targets.len()) {
            (0, 1) => vec![location.clone()],
            (n, targets) if n == targets => mapped.into_iter().cloned().collect(),
            (n, targets) => {
                return Err(BackupError::Tablespace(format!(
                    "tablespace {oid} at `{}` needs {targets} mapping(s), one per target in -D order, got {n}: \
                     add -T {}=NEWDIR for each target",
                    location.display(),
                    location.display()
                )))
            }
        };
        let mut staged = Vec::new();
        for dir in &finals {
            if !dir.is_absolute() {
                return Err(BackupError::Tablespace(format!(
                    "tablespace mapping `{}` must be an absolute path",
                    dir.display()
                )));
            }
            staged.push(staging.add(dir).map_err(|e| {
                BackupError::Tablespace(format!(
                    "tablespace {oid} at `{}` cannot be written to `{}`: {e}; map it elsewhere with -T {}=NEWDIR",
                    location.display(),
                    dir.display(),
                    location.display()
                ))
            })?);
        }
        layout.staging.insert(oid, staged);
        layout.links.insert(oid, finals);
        layout.by_location.insert(location.clone(), oid);
    }
    Ok(layout)
}
