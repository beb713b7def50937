//! With `[ha]`, a node's container runs its agent instead of its server: `pgrepl agent`
//! (this very binary, bind-mounted read-only) supervises postgres inside the container as the
//! local runtime would on a machine of its own. So an agent shares its node's fate, network
//! and partitions, as Patroni does in a pod. The container's `/pgrepl` is the node's machine
//! directory on the host (`<state dir>/machines/<node>`), holding the agent's cluster file and
//! its state; `ha::machines` writes that file.
//!
//! docker-init runs as PID 1: it forwards `stop`'s SIGINT to the agent, which shuts a primary
//! down cleanly, and it reaps the server processes the agent's pg_ctl leaves behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bollard::models::{ContainerCreateBody, HostConfig};

use super::{published, write_private, DockerRuntime, SERVER_PORT, STOP_TIMEOUT};
use crate::cluster::spec::NodeSpec;
use crate::cluster::ClusterError;

/// Where a node's machine directory is mounted in its container.
pub const MACHINE_MOUNT: &str = "/pgrepl";
/// The agent's cluster file in the machine directory.
pub const MACHINE_FILE: &str = "cluster.toml";
/// The superuser's password in the machine directory, for the agent's initdb.
pub const MACHINE_PASSWORD_FILE: &str = "superuser.password";
/// Where the pgrepl binary is mounted.
const PGREPL_MOUNT: &str = "/usr/local/bin/pgrepl";
/// The agent's HTTP API in its container, on every address (Patroni's port): the proxy on the
/// network checks it there, and the host through the port `up` publishes.
pub const AGENT_API_PORT: u16 = 8008;

impl DockerRuntime {
    /// The node's machine directory on the host.
    pub fn machine_dir(&self, node: &NodeSpec) -> PathBuf {
        self.state_dir.join("machines").join(&node.name)
    }

    /// Writes the node's machine directory (0700): the agent's cluster file, which holds the
    /// replication password, the superuser's password and `files` (etcd's credentials), all
    /// 0600 and the postgres uid's.
    pub fn write_machine(
        &self,
        node: &NodeSpec,
        cluster_file: &str,
        files: &[(&str, String)],
    ) -> Result<(), ClusterError> {
        let dir = self.machine_dir(node);
        self.create_data_dir(&dir)?;
        let (uid, gid) = self.data_owner();
        let password = format!("{}\n", self.superuser_password.expose());
        let files = files.iter().map(|(name, text)| (*name, text.as_str()));
        for (name, text) in [
            (MACHINE_FILE, cluster_file),
            (MACHINE_PASSWORD_FILE, password.as_str()),
        ]
        .into_iter()
        .chain(files)
        {
            let path = dir.join(name);
            write_private(&path, text)?;
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|e| ClusterError::io(format!("chown `{}`", path.display()), e))?;
        }
        Ok(())
    }

    /// The container of a node run by its agent: `pgrepl agent` as the postgres uid, with the
    /// machine directory and the binary mounted, the server's port published as usual and the
    /// agent's API at `api` on the host.
    fn agent_container(
        &self,
        node: &NodeSpec,
        exe: &Path,
        bin_dir: &str,
        api: SocketAddr,
    ) -> ContainerCreateBody {
        let (uid, gid) = self.data_owner();
        let host_server = SocketAddr::from(([127, 0, 0, 1], node.port));
        let (exposed, bindings) = published(&[(SERVER_PORT, host_server), (AGENT_API_PORT, api)]);
        let api_in_container = format!("0.0.0.0:{AGENT_API_PORT}");
        let cmd = [
            "-v",
            "agent",
            "--node",
            &node.name,
            "--cluster",
            &format!("{MACHINE_MOUNT}/{MACHINE_FILE}"),
            "--pg-bin",
            bin_dir,
            "--api",
            &api_in_container,
        ];
        ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            hostname: Some(node.name.clone()),
            user: Some(format!("{uid}:{gid}")),
            entrypoint: Some(vec![PGREPL_MOUNT.into()]),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            exposed_ports: Some(exposed),
            labels: Some(self.labels()),
            stop_signal: Some("SIGINT".into()),
            stop_timeout: Some(STOP_TIMEOUT.as_secs() as i64),
            host_config: Some(HostConfig {
                init: Some(true),
                binds: Some(vec![
                    format!("{}:{MACHINE_MOUNT}", self.machine_dir(node).display()),
                    format!("{}:{PGREPL_MOUNT}:ro", exe.display()),
                ]),
                port_bindings: Some(bindings),
                network_mode: Some(self.settings.network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the node's agent container unless it exists, and starts it unless it runs;
    /// true when this call started it. It is not waited for: the agent builds its node (initdb,
    /// or a clone from the leader) once etcd has elected one.
    pub async fn ensure_agent(
        &self,
        node: &NodeSpec,
        exe: &Path,
        api: SocketAddr,
    ) -> Result<bool, ClusterError> {
        let bin_dir = self.image().await?.bin_dir.clone();
        let body = self.agent_container(node, exe, &bin_dir, api);
        self.ensure_started(&node.name, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::{DockerSettings, NodeRole};

    #[test]
    fn an_agent_container_runs_the_mounted_binary_under_init_with_its_machine_and_no_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = DockerRuntime::new(
            tmp.path().to_owned(),
            DockerSettings::default(),
            Some("img:1".into()),
        )
        .unwrap();
        let node = NodeSpec {
            name: "pg_slave".into(),
            role: NodeRole::Standby,
            host: None,
            port: 54321,
            api: None,
        };
        let body = runtime.agent_container(
            &node,
            Path::new("/opt/pgrepl"),
            "/usr/lib/postgresql/15/bin",
            "127.0.0.1:20008".parse().unwrap(),
        );
        assert_eq!(body.entrypoint, Some(vec![PGREPL_MOUNT.to_owned()]));
        let cmd = body.cmd.unwrap().join(" ");
        assert_eq!(
            cmd,
            "-v agent --node pg_slave --cluster /pgrepl/cluster.toml --pg-bin /usr/lib/postgresql/15/bin --api 0.0.0.0:8008"
        );
        assert_eq!(body.user.as_deref(), Some("999:999"));
        assert!(body.env.is_none(), "nothing in the environment");
        let host = body.host_config.unwrap();
        assert_eq!(host.init, Some(true));
        assert_eq!(
            host.binds.unwrap(),
            vec![
                format!("{}/machines/pg_slave:/pgrepl", tmp.path().display()),
                "/opt/pgrepl:/usr/local/bin/pgrepl:ro".to_owned(),
            ]
        );
        let binding = &host.port_bindings.as_ref().unwrap()["5432/tcp"]
            .clone()
            .unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("54321"));
        // The agent's API, for the host's `status` and proxy.
        let api = &host.port_bindings.as_ref().unwrap()["8008/tcp"]
            .clone()
            .unwrap()[0];
        assert_eq!(api.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(api.host_port.as_deref(), Some("20008"));
    }
}
