//! The cluster file an agent in a node's container reads. Inside, each container is a machine
//! of its own running the local runtime, as with nodes on several hosts: every node is reached
//! by its container's name on the cluster network at the server's own port, servers listen on
//! every address (a container reconnected after a partition may get another one), pg_hba
//! admits the network, and etcd is reached by its containers' names.

use std::path::PathBuf;

use super::etcd_access::EtcdAccess;
use crate::cluster::docker::MACHINE_PASSWORD_FILE;
use crate::cluster::spec::{ClusterSpec, HaSpec, LocalSettings, ReplicationRole, RuntimeKind};

/// The server's port inside every container.
const SERVER_PORT: u16 = 5432;
/// The agent's state directory, beside its cluster file.
const STATE_DIR: &str = "state";

/// What the agents on the cluster network need to know.
#[derive(Debug, Clone)]
pub struct Network<'a> {
    /// The network's subnet (`address/prefix`).
    pub subnet: &'a str,
    /// etcd's client URLs on the network, with the host's credentials files.
    pub etcd: &'a EtcdAccess,
    pub scope: &'a str,
}

/// Where a machine keeps its copies of etcd's credentials, relative to its cluster file.
const ETCD_CA: &str = "etcd-ca.crt";
const ETCD_CERT: &str = "etcd-client.crt";
const ETCD_KEY: &str = "etcd-client.key";
const ETCD_PASSWORD: &str = "etcd.password";

/// The etcd credentials a machine needs: each host file and its name in the machine
/// directory, which the machine's cluster file names.
pub fn etcd_files(access: &EtcdAccess) -> Vec<(PathBuf, &'static str)> {
    let mut files = Vec::new();
    if let Some(tls) = &access.tls {
        files.push((tls.ca.clone(), ETCD_CA));
        if let Some((cert, key)) = &tls.identity {
            files.push((cert.clone(), ETCD_CERT));
            files.push((key.clone(), ETCD_KEY));
        }
    }
    if let Some((_, password)) = &access.user {
        files.push((password.clone(), ETCD_PASSWORD));
    }
    files
}

/// `spec` (the cluster file as written: its primary is the one that initialises) as the
/// agents in the containers see it. The replication password is inline: the file is 0600.
pub fn machine_spec(spec: &ClusterSpec, replication_password: &str, net: &Network) -> ClusterSpec {
    let mut machine = spec.clone();
    machine.runtime = RuntimeKind::Local;
    machine.state_dir = STATE_DIR.into();
    machine.replication = ReplicationRole {
        user: spec.replication.user.clone(),
        password: Some(replication_password.to_owned()),
        password_file: None,
    };
    for node in &mut machine.nodes {
        node.host = Some(node.name.clone());
        node.port = SERVER_PORT;
    }
    machine.local = LocalSettings {
        listen: Some("*".into()),
        clients: vec![net.subnet.to_owned()],
        superuser_password_file: Some(MACHINE_PASSWORD_FILE.into()),
    };
    // The proxy is the host's, in front of every machine.
    machine.proxy = None;
    // The CA and the user's own node certificates are put in each machine's state directory
    // by `up` (`Cluster::share_tls`): the host's paths mean nothing there.
    machine.tls = crate::cluster::spec::TlsSpec {
        mode: spec.tls.mode,
        ..Default::default()
    };
    let ha = spec.ha.clone().unwrap_or_default();
    let (tls, user) = (net.etcd.tls.as_ref(), net.etcd.user.as_ref());
    let identity = tls.and_then(|t| t.identity.as_ref());
    let copy = |name: &str| Some(PathBuf::from(name));
    machine.ha = Some(HaSpec {
        etcd: net.etcd.endpoints.clone(),
        scope: Some(net.scope.to_owned()),
        etcd_ca: tls.and_then(|_| copy(ETCD_CA)),
        etcd_cert: identity.and_then(|_| copy(ETCD_CERT)),
        etcd_key: identity.and_then(|_| copy(ETCD_KEY)),
        etcd_user: user.map(|(name, _)| name.clone()),
        etcd_password_file: user.and_then(|_| copy(ETCD_PASSWORD)),
        ..ha
    });
    machine
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::etcd_access::ClientTls;

    #[test]
    fn the_agents_file_is_local_by_container_name_with_the_network_and_etcd_by_name() {
        let mut spec = ClusterSpec {
            runtime: RuntimeKind::Docker,
            ha: Some(HaSpec {
                ttl: 3,
                ..HaSpec::default()
            }),
            ..ClusterSpec::default()
        };
        spec.replication.password = None;
        spec.replication.password_file = Some("secret".into());
        let etcd = EtcdAccess {
            endpoints: vec!["https://demo-etcd1:2379".to_owned()],
            tls: Some(ClientTls {
                ca: "/state/tls/ca.crt".into(),
                identity: Some(("/state/a.crt".into(), "/state/a.key".into())),
            }),
            user: None,
        };
        let net = Network {
            subnet: "172.20.0.0/16",
            etcd: &etcd,
            scope: "demo",
        };
        let machine = machine_spec(&spec, "s3cret", &net);
        machine.validate().unwrap();
        assert_eq!(machine.runtime, RuntimeKind::Local);
        assert_eq!(machine.replication.password.as_deref(), Some("s3cret"));
        assert_eq!(machine.replication.password_file, None);
        for node in &machine.nodes {
            assert_eq!((node.host(), node.port), (node.name.as_str(), 5432));
        }
        assert_eq!(machine.primary().name, "pg_master");
        assert_eq!(machine.local.listen.as_deref(), Some("*"));
        assert_eq!(machine.local.clients, vec!["172.20.0.0/16".to_owned()]);
        let ha = machine.ha.unwrap();
        assert_eq!(
            (&ha.etcd, ha.scope.as_deref(), ha.ttl),
            (&etcd.endpoints, Some("demo"), 3)
        );
        // etcd's credentials are copies in the machine directory, named relative to its file.
        assert_eq!(ha.etcd_ca, Some("etcd-ca.crt".into()));
        assert_eq!(ha.etcd_key, Some("etcd-client.key".into()));
        assert_eq!(etcd_files(&etcd).len(), 3);
        // The file round-trips: the agent reads what `up` writes.
        let text = machine_spec(&spec, "s3cret", &net).to_toml();
        assert_eq!(
            toml::from_str::<ClusterSpec>(&text).unwrap(),
            machine_spec(&spec, "s3cret", &net)
        );
    }
}
