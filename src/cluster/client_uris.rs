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
    /// `[proxy]`'s two ports, as URIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyUris>,
}

/// HAProxy's ports: over TCP, so with the superuser's password file when the cluster has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyUris {
    pub write: String,
    pub read: String,
    /// The superuser has no password to give over TCP.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_password: bool,
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
            proxy: self.proxy_uris(),
        })
    }

    fn proxy_uris(&self) -> Option<ProxyUris> {
        let proxy = self.spec.proxy.as_ref()?;
        let first = self.spec.nodes.first()?;
        // The docker runtime's passfile holds the proxy's ports too (`ha::proxy`).
        let (remote, no_password) = match &self.runtime {
            super::runtime::Runtime::Local(local) => {
                let remote = local.remote_superuser(first).ok().flatten();
                let none = remote.is_none();
                (remote, none)
            }
            super::runtime::Runtime::Docker(_) => (None, false),
        };
        let mut options = remote.unwrap_or_else(|| self.runtime.superuser(first));
        options.host = crate::conn::config::Host::Tcp(proxy.bind.to_string());
        let mut uri = |port| {
            options.port = port;
            multi_host_uri(std::slice::from_ref(&options), &[])
        };
        Some(ProxyUris {
            write: uri(proxy.write_port)?,
            read: uri(proxy.read_port)?,
            no_password,
        })
    }
}
