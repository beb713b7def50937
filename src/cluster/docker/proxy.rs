//! With `[proxy]` on the docker runtime, HAProxy runs as a container on the cluster network
//! (`ha::proxy` writes its configuration): it reaches each node's server and agent by
//! container name, as Patroni's HAProxy does in a pod network, and publishes its two ports on
//! the host. Its configuration directory is a bind mount of `<state dir>/proxy`, so its stats
//! socket is there for `status` on the host.

use std::net::SocketAddr;
use std::path::PathBuf;

use bollard::models::{ContainerCreateBody, HostConfig};

use super::{published, DockerRuntime};
use crate::cluster::ClusterError;

/// Where the image reads `haproxy.cfg` (the official image's directory).
pub const PROXY_CONFIG_MOUNT: &str = "/usr/local/etc/haproxy";

/// The proxy's container.
#[derive(Debug, Clone)]
pub struct ProxyContainer {
    pub name: String,
    pub image: String,
    /// The host directory mounted at [`PROXY_CONFIG_MOUNT`].
    pub config_dir: PathBuf,
    /// Each port HAProxy listens on in the container, and where the host publishes it.
    pub ports: Vec<(u16, SocketAddr)>,
    /// `uid:gid` HAProxy runs as: its stats socket in the mounted directory is theirs.
    pub user: String,
}

impl DockerRuntime {
    fn proxy_container(&self, proxy: &ProxyContainer) -> ContainerCreateBody {
        let (exposed, bindings) = published(&proxy.ports);
        ContainerCreateBody {
            image: Some(proxy.image.clone()),
            hostname: Some(proxy.name.clone()),
            user: Some(proxy.user.clone()),
            exposed_ports: Some(exposed),
            labels: Some(self.labels()),
            host_config: Some(HostConfig {
                binds: Some(vec![format!(
                    "{}:{PROXY_CONFIG_MOUNT}",
                    proxy.config_dir.display()
                )]),
                port_bindings: Some(bindings),
                network_mode: Some(self.settings.network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates and starts the proxy's container unless it runs; true when this call started it.
    pub async fn ensure_proxy(&self, proxy: &ProxyContainer) -> Result<bool, ClusterError> {
        self.network().await?;
        self.ensure_part_image(&proxy.image, "haproxy").await?;
        self.ensure_started(&proxy.name, self.proxy_container(proxy))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::DockerSettings;

    #[test]
    fn the_proxy_is_on_the_network_with_its_ports_published_and_its_directory_mounted() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime =
            DockerRuntime::new(tmp.path().to_owned(), DockerSettings::default(), None).unwrap();
        let proxy = ProxyContainer {
            name: "demo-haproxy".into(),
            image: "pgrepl-local/haproxy:2.6".into(),
            config_dir: tmp.path().join("proxy"),
            ports: vec![
                (5000, "127.0.0.1:25000".parse().unwrap()),
                (5001, "127.0.0.1:25001".parse().unwrap()),
            ],
            user: "1000:1000".into(),
        };
        let body = runtime.proxy_container(&proxy);
        assert_eq!(body.image.as_deref(), Some("pgrepl-local/haproxy:2.6"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("pg_net"));
        assert_eq!(
            host.binds.unwrap(),
            vec![format!(
                "{}:/usr/local/etc/haproxy",
                tmp.path().join("proxy").display()
            )]
        );
        let bindings = host.port_bindings.unwrap();
        let read = &bindings["5001/tcp"].clone().unwrap()[0];
        assert_eq!(read.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(read.host_port.as_deref(), Some("25001"));
        assert!(body.labels.unwrap().contains_key("org.pgrepl.state-dir"));
    }
}
