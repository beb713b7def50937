//! The addresses an application uses instead of one node's: libpq URIs naming every node, so
//! that libpq itself finds the primary after a failover (`target_session_attrs=read-write`)
//! or a standby for reads, with no proxy.

use serde::Serialize;

use super::record::ClusterRecord;
use super::Cluster;
use crate::conn::config::multi_host_uri;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientUris {
    /// Reaches the primary, wherever it is.
    pub write: String,
    /// Reaches a standby when one answers, else the primary.
    pub read: String,
}

impl Cluster {
    /// The cluster's URIs, with the settings of the per-node conninfos `up` prints (the same
    /// user, socket or address, password file). `load_balance_hosts` only for PostgreSQL 16+,
    /// whose libpq is the first to know it.
    pub fn client_uris(&self) -> Option<ClientUris> {
        let servers: Vec<_> = self
            .spec
            .nodes
            .iter()
            .map(|n| self.runtime.superuser(n))
            .collect();
        let major = ClusterRecord::load(self.state_dir())
            .ok()
            .flatten()
            .and_then(|r| r.pg_major);
        let mut read = vec![("target_session_attrs", "prefer-standby")];
        if major.is_some_and(|m| m >= 16) {
            read.push(("load_balance_hosts", "random"));
        }
        Some(ClientUris {
            write: multi_host_uri(&servers, &[("target_session_attrs", "read-write")])?,
            read: multi_host_uri(&servers, &read)?,
        })
    }
}
