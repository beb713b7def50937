//! `[tls]`: TLS on or off, and the user's own CA and node certificates.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::NodeSpec;

/// `[tls]`: with `mode = "on"` (the default) `up` makes a cluster CA and a certificate per node
/// (`cluster/tls.rs`), the servers run with `ssl = on`, standbys and pgrepl verify the server
/// (`sslmode=verify-full`), and other machines get in over TLS only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default)]
    pub mode: TlsMode,
    /// Your own CA instead of the one `up` makes: its certificate, which standbys and pgrepl
    /// verify the servers against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// Its key: `up` then signs the certificates of the nodes `nodes` does not list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<PathBuf>,
    /// Your own certificate and key for a node (`[tls.nodes.pg_master]`), signed by `ca_cert`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeTlsFiles>,
}

/// A node's certificate and key, as the user made them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsSpec {
    /// Every file the section names, for paths relative to the cluster file.
    pub fn files_mut(&mut self) -> Vec<&mut PathBuf> {
        let mut files: Vec<&mut PathBuf> = self
            .ca_cert
            .iter_mut()
            .chain(self.ca_key.iter_mut())
            .collect();
        for node in self.nodes.values_mut() {
            files.push(&mut node.cert);
            files.push(&mut node.key);
        }
        files
    }

    pub(super) fn validate(&self, nodes: &[NodeSpec]) -> Result<(), String> {
        let own = self.ca_cert.is_some() || self.ca_key.is_some() || !self.nodes.is_empty();
        if own && self.mode == TlsMode::Off {
            return Err(
                "[tls] names certificates but mode = \"off\": remove them, or turn TLS on".into(),
            );
        }
        if let Some(name) = self
            .nodes
            .keys()
            .find(|n| !nodes.iter().any(|node| &node.name == *n))
        {
            return Err(format!(
                "[tls.nodes.{name}] names no node of the cluster file"
            ));
        }
        if self.ca_cert.is_none() && own {
            return Err("[tls] ca_key and [tls.nodes] need ca_cert: the CA the servers' certificates are checked against".into());
        }
        if self.ca_cert.is_some() && self.ca_key.is_none() {
            if let Some(node) = nodes.iter().find(|n| !self.nodes.contains_key(&n.name)) {
                return Err(format!(
                    "[tls] has no ca_key to sign a certificate for `{}`: give ca_key, or [tls.nodes.{}] cert and key",
                    node.name, node.name
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    On,
    Off,
}
