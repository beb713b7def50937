//! With `[ha]` and no etcd URLs, `up` runs the cluster's etcd as three containers on the
//! cluster network (`ha::docker_etcd` picks their names, ports and arguments): the agents in
//! the node containers reach them by name, pgrepl on the host through each one's client port
//! published on 127.0.0.1. Their data is a bind mount in the state directory, so `down --purge`
//! deletes it with the rest.

use std::path::PathBuf;

use bollard::models::{ContainerCreateBody, HostConfig};

use super::{on_loopback, DockerRuntime};
use crate::cluster::ClusterError;

/// etcd's client port inside its container.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port inside its container.
pub const ETCD_PEER_PORT: u16 = 2380;
/// Where a member's data directory is mounted.
pub const ETCD_DATA_MOUNT: &str = "/var/lib/etcd";
/// Where the members' certificates and the CA's are mounted, read-only, with TLS.
pub const ETCD_TLS_MOUNT: &str = "/etc/etcd-tls";

/// One etcd member's container.
#[derive(Debug, Clone)]
pub struct EtcdContainer {
    pub name: String,
    pub image: String,
    /// etcd's arguments (its data directory is [`ETCD_DATA_MOUNT`]).
    pub args: Vec<String>,
    /// The member's data directory on the host.
    pub data: PathBuf,
    /// Where the client port is published on 127.0.0.1.
    pub host_port: u16,
    /// With TLS: the members' certificates on the host, mounted at [`ETCD_TLS_MOUNT`].
    pub tls: Option<PathBuf>,
}

impl DockerRuntime {
    fn etcd_container(&self, member: &EtcdContainer) -> ContainerCreateBody {
        let (exposed, bindings) = on_loopback(ETCD_CLIENT_PORT, member.host_port);
        ContainerCreateBody {
            image: Some(member.image.clone()),
            hostname: Some(member.name.clone()),
            cmd: Some(
                std::iter::once("etcd".to_owned())
                    .chain(member.args.iter().cloned())
                    .collect(),
            ),
            exposed_ports: Some(exposed),
            labels: Some(self.labels()),
            host_config: Some(HostConfig {
                binds: Some(
                    std::iter::once(format!("{}:{ETCD_DATA_MOUNT}", member.data.display()))
                        .chain(
                            (member.tls.iter())
                                .map(|dir| format!("{}:{ETCD_TLS_MOUNT}:ro", dir.display())),
                        )
                        .collect(),
                ),
                port_bindings: Some(bindings),
                network_mode: Some(self.settings.network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates and starts the member's container unless it runs; true when this call started
    /// it. The cluster network is created first when absent, the image pulled when missing.
    pub async fn ensure_etcd(&self, member: &EtcdContainer) -> Result<bool, ClusterError> {
        self.network().await?;
        self.ensure_part_image(&member.image, "etcd").await?;
        std::fs::create_dir_all(&member.data)
            .map_err(|e| ClusterError::io(format!("create `{}`", member.data.display()), e))?;
        self.ensure_started(&member.name, self.etcd_container(member))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::DockerSettings;

    #[test]
    fn an_etcd_container_is_on_the_network_with_its_client_port_on_loopback_and_its_data_mounted() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime =
            DockerRuntime::new(tmp.path().to_owned(), DockerSettings::default(), None).unwrap();
        let member = EtcdContainer {
            name: "demo-etcd0".into(),
            image: "pgrepl-local/etcd:3.4".into(),
            args: vec!["--name".into(), "etcd0".into()],
            data: tmp.path().join("etcd/etcd0"),
            host_port: 20123,
            tls: None,
        };
        let body = runtime.etcd_container(&member);
        assert_eq!(body.image.as_deref(), Some("pgrepl-local/etcd:3.4"));
        assert_eq!(body.cmd.unwrap(), ["etcd", "--name", "etcd0"]);
        assert!(body.labels.unwrap().contains_key("org.pgrepl.state-dir"));
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("pg_net"));
        assert_eq!(
            host.binds.unwrap(),
            [format!("{}/etcd/etcd0:/var/lib/etcd", tmp.path().display())]
        );
        let binding = &host.port_bindings.unwrap()["2379/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("20123"));
    }
}
