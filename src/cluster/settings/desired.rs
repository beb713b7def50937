//! The cluster-wide settings pgrepl holds: in etcd (`/pgrepl/<scope>/settings`) when agents
//! run, each agent applying them to its server; else in the state directory, applied by the
//! command itself. The same record either way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::catalog::AT_LEAST_THE_PRIMARYS;
use crate::cluster::runtime_error::RuntimeError;
use crate::cluster::ClusterError;

const FILE_NAME: &str = "settings.json";

/// What every node should run with, beyond what pgrepl sets itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// One more with every change: an agent has applied a record once it reports this number.
    pub serial: u64,
    pub settings: BTreeMap<String, String>,
    /// Names once set and since reset: every node takes them back to its own default.
    #[serde(default)]
    pub reset: BTreeSet<String>,
}

/// One `NAME=VALUE` of `config set` (`None`: reset to the server's default).
pub type Change = (String, Option<String>);

impl Desired {
    /// The record after `changes`, with the next serial; `None` when nothing would change.
    pub fn with(&self, changes: &[Change]) -> Option<Desired> {
        let mut next = self.clone();
        for (name, value) in changes {
            match value {
                Some(value) => {
                    next.settings.insert(name.clone(), value.clone());
                    next.reset.remove(name);
                }
                None => {
                    if next.settings.remove(name).is_some() {
                        next.reset.insert(name.clone());
                    }
                }
            }
        }
        (next != *self).then(|| Desired {
            serial: self.serial + 1,
            ..next
        })
    }

    /// What a node applies: the record, except that a standby keeps a setting PostgreSQL wants
    /// at least the primary's (`primary_runs`: the primary's running values) at the primary's
    /// value until the primary runs with the lower one: a standby restarted before would not
    /// start ("insufficient parameter settings").
    pub fn for_node(&self, primary_runs: Option<&BTreeMap<String, String>>) -> Desired {
        let mut applied = self.clone();
        let Some(primary) = primary_runs else {
            return applied;
        };
        for name in AT_LEAST_THE_PRIMARYS {
            let (Some(wanted), Some(running)) = (self.settings.get(name), primary.get(name)) else {
                continue;
            };
            if let (Ok(w), Ok(r)) = (wanted.trim().parse::<i64>(), running.parse::<i64>()) {
                if w < r {
                    applied.settings.insert(name.to_owned(), running.clone());
                }
            }
        }
        applied
    }

    /// Lines `- name = old` / `+ name = new` from `self` to `next`.
    pub fn diff(&self, next: &Desired) -> Vec<String> {
        let mut lines = Vec::new();
        let names: BTreeSet<&String> = self.settings.keys().chain(next.settings.keys()).collect();
        for name in names {
            match (self.settings.get(name), next.settings.get(name)) {
                (Some(a), Some(b)) if a == b => {}
                (old, new) => {
                    if let Some(old) = old {
                        lines.push(format!("- {name} = {old}"));
                    }
                    match new {
                        Some(new) => lines.push(format!("+ {name} = {new}")),
                        None => lines.push(format!("+ {name}: the server's default")),
                    }
                }
            }
        }
        lines
    }

    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// The record of a cluster without agents (empty when none was ever set).
    pub fn load(state_dir: &Path) -> Result<Desired, ClusterError> {
        let path = Self::path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                RuntimeError::DamagedStateFile {
                    path: path.clone(),
                    reason: e.to_string(),
                }
                .into()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Desired::default()),
            Err(e) => Err(ClusterError::io(format!("read `{}`", path.display()), e)),
        }
    }

    /// Written durably (a temporary file renamed), so a crash leaves the old record or the new.
    pub fn save(&self, state_dir: &Path) -> Result<(), ClusterError> {
        let path = Self::path(state_dir);
        let text = serde_json::to_string_pretty(self).expect("settings serialise");
        crate::fs::write_durably(&path, text.as_bytes(), 0o600)
            .map_err(|e| ClusterError::io(format!("write `{}`", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> Change {
        (name.into(), Some(value.into()))
    }

    #[test]
    fn changes_count_and_resets_are_remembered() {
        let first = Desired::default()
            .with(&[set("work_mem", "8MB"), set("max_connections", "200")])
            .unwrap();
        assert_eq!(first.serial, 1);
        assert_eq!(
            first.with(&[set("work_mem", "8MB")]),
            None,
            "no change, no serial"
        );
        let second = first.with(&[("work_mem".into(), None)]).unwrap();
        assert_eq!(second.serial, 2);
        assert!(second.reset.contains("work_mem"));
        assert_eq!(
            first.diff(&second),
            ["- work_mem = 8MB", "+ work_mem: the server's default"]
        );
        let third = second.with(&[set("work_mem", "4MB")]).unwrap();
        assert!(third.reset.is_empty(), "set again: no longer reset");
        assert_eq!(first.diff(&third), ["- work_mem = 8MB", "+ work_mem = 4MB"]);
    }

    #[test]
    fn a_standby_keeps_the_primarys_higher_value_until_the_primary_lowers_it() {
        let wanted = Desired::default()
            .with(&[set("max_connections", "50"), set("work_mem", "1MB")])
            .unwrap();
        let primary = BTreeMap::from([("max_connections".to_string(), "100".to_string())]);
        let standby = wanted.for_node(Some(&primary));
        assert_eq!(standby.settings["max_connections"], "100");
        assert_eq!(standby.settings["work_mem"], "1MB");
        let lowered = BTreeMap::from([("max_connections".to_string(), "50".to_string())]);
        assert_eq!(wanted.for_node(Some(&lowered)), wanted);
        let raised = wanted.with(&[set("max_connections", "300")]).unwrap();
        assert_eq!(raised.for_node(Some(&primary)), raised, "raising: at once");
        assert_eq!(wanted.for_node(None), wanted, "the primary: as wanted");
    }
}
