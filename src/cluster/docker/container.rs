//! The server containers: their definition (pure, unit-tested), and their lifecycle: create,
//! start and wait until ready, signal, stop, remove, and `down`'s removal of them all.

use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, LogsOptions, RemoveContainerOptions,
};
use futures_util::StreamExt;

use super::image::ImageKind;
use super::{
    engine_err, indent, is_not_found, on_loopback, password_file, status_code, DockerRuntime,
    DATA_MOUNT, LOG_TAIL, ONE_SHOT_TOOLS, READY_TIMEOUT, SECRET_MOUNT, SERVER_PORT, SOCKET_DIR,
    STOP_TIMEOUT, TLS_MOUNT,
};
use crate::cluster::runtime_error::RuntimeError;
use crate::cluster::server_version::{self, Binaries};
use crate::cluster::spec::{NodeRole, NodeSpec};
use crate::cluster::ClusterError;
use crate::conn::sql;

impl DockerRuntime {
    /// `<host volume>:<data mount>`.
    pub(super) fn bind(&self, node: &NodeSpec) -> String {
        format!("{}:{DATA_MOUNT}", self.data_dir(node).display())
    }

    /// The server container's definition.
    pub(super) fn server_container(
        &self,
        node: &NodeSpec,
        kind: &ImageKind,
    ) -> ContainerCreateBody {
        let settings = [
            "-c".to_owned(),
            "listen_addresses=*".to_owned(),
            "-c".to_owned(),
            format!("unix_socket_directories={SOCKET_DIR}"),
        ];
        let mut env = vec![format!("PGDATA={DATA_MOUNT}")];
        let mut binds = vec![self.bind(node)];
        // Made before the container when the cluster has TLS (`cluster/tls.rs`).
        let tls = self.tls_dir(node);
        if tls.is_dir() {
            binds.push(format!("{}:{TLS_MOUNT}:ro", tls.display()));
        }
        let (user, entrypoint, cmd) = match kind {
            ImageKind::Entrypoint => {
                // Read (as root) by the entrypoint only while PGDATA is empty: the primary's
                // first start.
                if node.role == NodeRole::Primary {
                    env.push(format!("POSTGRES_PASSWORD_FILE={SECRET_MOUNT}"));
                    binds.push(format!(
                        "{}:{SECRET_MOUNT}:ro",
                        password_file(&self.state_dir).display()
                    ));
                }
                (
                    None,
                    None,
                    std::iter::once("postgres".to_owned())
                        .chain(settings)
                        .collect(),
                )
            }
            ImageKind::Bare { bin_dir } => {
                let (uid, gid) = self.data_owner();
                let args = ["-D".to_owned(), DATA_MOUNT.to_owned()]
                    .into_iter()
                    .chain(settings)
                    .collect();
                (
                    Some(format!("{uid}:{gid}")),
                    Some(vec![format!("{bin_dir}/postgres")]),
                    args,
                )
            }
        };
        let (exposed, bindings) = on_loopback(SERVER_PORT, node.port);
        ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            hostname: Some(node.name.clone()),
            user,
            entrypoint,
            cmd: Some(cmd),
            env: Some(env),
            exposed_ports: Some(exposed),
            labels: Some(self.labels()),
            // `docker stop` by hand then does a fast shutdown too (SIGTERM would wait for every
            // session, the standbys' walreceivers included).
            stop_signal: Some("SIGINT".into()),
            stop_timeout: Some(STOP_TIMEOUT.as_secs() as i64),
            host_config: Some(HostConfig {
                binds: Some(binds),
                port_bindings: Some(bindings),
                network_mode: Some(self.settings.network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the node's container unless it exists; true when this call created it. A
    /// container of that name that this cluster did not make is an error, never reused.
    pub(super) async fn ensure_container(&self, node: &NodeSpec) -> Result<bool, ClusterError> {
        let docker = self.engine().await?;
        match docker.inspect_container(&node.name, None).await {
            Ok(found) if self.is_ours(found.config.as_ref().and_then(|c| c.labels.as_ref())) => {
                return Ok(false)
            }
            Ok(_) => return Err(RuntimeError::ForeignContainer(node.name.clone()).into()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(engine_err(format!("inspect container `{}`", node.name))(e)),
        }
        let body = self.server_container(node, &self.image().await?.kind);
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(node.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(engine_err(format!("create container `{}`", node.name)))?;
        Ok(true)
    }

    /// Creates `name` from `body` unless this cluster's container of that name exists (someone
    /// else's is refused), then starts it unless it runs; true when this call started it.
    pub(super) async fn ensure_started(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<bool, ClusterError> {
        let docker = self.engine().await?;
        match docker.inspect_container(name, None).await {
            Ok(found) if self.is_ours(found.config.as_ref().and_then(|c| c.labels.as_ref())) => {
                if found.state.and_then(|s| s.running).unwrap_or(false) {
                    return Ok(false);
                }
            }
            Ok(_) => return Err(RuntimeError::ForeignContainer(name.to_owned()).into()),
            Err(e) if is_not_found(&e) => {
                let options = CreateContainerOptions {
                    name: Some(name.to_owned()),
                    ..Default::default()
                };
                docker
                    .create_container(Some(options), body)
                    .await
                    .map_err(engine_err(format!("create container `{name}`")))?;
            }
            Err(e) => return Err(engine_err(format!("inspect container `{name}`"))(e)),
        }
        docker
            .start_container(name, None)
            .await
            .map_err(engine_err(format!("start container `{name}`")))?;
        Ok(true)
    }

    /// Removes this cluster's container `name` and confirms it is gone.
    pub async fn remove_and_confirm(&self, name: &str) -> Result<(), ClusterError> {
        self.remove_container(name).await?;
        self.confirm_gone(name).await
    }

    /// Starts the node's container (creating it if needed) and waits until the server accepts
    /// connections. On failure the container is stopped, and removed if this call created it.
    pub async fn start(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        if !self.is_running(node).await {
            self.check_version(node).await?;
        }
        let created = self.ensure_container(node).await?;
        let result = self.start_and_wait(node).await;
        if result.is_err() {
            let cleanup = if created {
                self.remove_container(&node.name).await
            } else {
                self.kill(node).await
            };
            if let Err(e) = cleanup {
                tracing::warn!(node = %node.name, "could not clean up after a failed start: {e:#}");
            }
        }
        result
    }

    pub(super) async fn start_and_wait(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        if !self.is_running(node).await {
            self.engine()
                .await?
                .start_container(&node.name, None)
                .await
                .map_err(engine_err(format!("start container `{}`", node.name)))?;
        }
        self.wait_ready(node).await
    }

    /// Polls a superuser connection until the server answers. A container that exits stops the
    /// wait at once; either failure quotes the container's last log lines.
    pub(super) async fn wait_ready(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let mut options = self.superuser(node);
        options.connect_timeout = Some(Duration::from_secs(2));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // Through the published port the engine accepts TCP before the server listens, so
            // only a real session proves readiness.
            let last_error = match sql::connect(&options, "pgrepl").await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if !self.is_running(node).await {
                return Err(RuntimeError::ExitedBeforeReady {
                    name: node.name.clone(),
                    logs: self.log_tail(&node.name).await,
                }
                .into());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(
                    READY_TIMEOUT,
                    format!(
                        "`{}` to accept connections (last error: {last_error}); its last log lines:\n{}",
                        node.name,
                        self.log_tail(&node.name).await
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The container's last `tail` log lines; a note instead when they cannot be read.
    pub(super) async fn logs(&self, name: &str, tail: usize) -> String {
        let Ok(docker) = self.engine().await else {
            return "(the engine did not answer)".into();
        };
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = docker.logs(name, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(output) => text.push_str(&output.to_string()),
                Err(e) => return format!("(could not read the logs: {e})"),
            }
        }
        text
    }

    /// The container's last log lines, indented for an error message.
    pub async fn log_tail(&self, name: &str) -> String {
        indent(&self.logs(name, LOG_TAIL).await)
    }

    /// Shuts the server down: SIGINT (fast) or SIGQUIT (immediate) to the postmaster, then waits
    /// for the container to exit, killing it after STOP_TIMEOUT. `docker stop` is not used: its
    /// signal is the container's, and a fast shutdown must not depend on that.
    pub async fn stop(&self, node: &NodeSpec, fast: bool) -> Result<(), ClusterError> {
        if !self.is_running(node).await {
            return Ok(());
        }
        self.signal(&node.name, if fast { "SIGINT" } else { "SIGQUIT" })
            .await?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.is_running(node).await {
            if Instant::now() >= deadline {
                tracing::warn!(node = %node.name, "no shutdown after {STOP_TIMEOUT:?}: killing the server");
                return self.kill(node).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// SIGKILL to the server: a crash, for failover drills.
    pub async fn kill(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        self.signal(&node.name, "SIGKILL").await
    }

    /// Sends `signal` to the container's main process; a container that is absent or not
    /// running has nothing to signal.
    pub(super) async fn signal(&self, name: &str, signal: &str) -> Result<(), ClusterError> {
        let options = KillContainerOptions {
            signal: signal.into(),
        };
        match self
            .engine()
            .await?
            .kill_container(name, Some(options))
            .await
        {
            Err(e) if !is_not_found(&e) && status_code(&e) != Some(409) => Err(engine_err(
                format!("send {signal} to container `{name}`"),
            )(e)),
            _ => Ok(()),
        }
    }

    pub async fn is_running(&self, node: &NodeSpec) -> bool {
        self.container_runs(&node.name).await
    }

    /// The host pid of container `name`'s main process (under docker-init, its child).
    pub async fn main_pid(&self, name: &str) -> Option<i32> {
        let found = self
            .engine()
            .await
            .ok()?
            .inspect_container(name, None)
            .await
            .ok()?;
        found
            .state
            .and_then(|s| s.pid)
            .and_then(|pid| i32::try_from(pid).ok())
            .filter(|pid| *pid > 0)
    }

    /// The container `name` exists and runs.
    pub async fn container_runs(&self, name: &str) -> bool {
        let Ok(docker) = self.engine().await else {
            return false;
        };
        match docker.inspect_container(name, None).await {
            Ok(found) => found.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Stops the node's server cleanly, removes its container and its one-shot ones, and
    /// confirms that none of them is left.
    async fn remove_node(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        self.stop(node, true).await?;
        let names = std::iter::once(node.name.clone()).chain(
            ONE_SHOT_TOOLS
                .iter()
                .map(|tool| format!("{}-{tool}", node.name)),
        );
        for name in names {
            self.remove_container(&name).await?;
            self.confirm_gone(&name).await?;
        }
        Ok(())
    }

    /// The engine says 404 for `name`, or the container there is someone else's and mounts
    /// nothing of this cluster's.
    async fn confirm_gone(&self, name: &str) -> Result<(), ClusterError> {
        let found = match self.engine().await?.inspect_container(name, None).await {
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(engine_err(format!("inspect container `{name}`"))(e)),
            Ok(found) => found,
        };
        let state_dir = self.state_dir.display().to_string();
        let mounts_ours = found
            .mounts
            .iter()
            .flatten()
            .filter_map(|m| m.source.as_deref())
            .any(|source| source.starts_with(&state_dir));
        if mounts_ours || self.is_ours(found.config.as_ref().and_then(|c| c.labels.as_ref())) {
            return Err(RuntimeError::NotStopped(vec![name.to_owned()]).into());
        }
        Ok(())
    }

    /// Stops the server cleanly and removes this cluster's container named `name`, if any.
    pub(super) async fn remove_container(&self, name: &str) -> Result<(), ClusterError> {
        let docker = self.engine().await?;
        let found = match docker.inspect_container(name, None).await {
            Ok(found) => found,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(engine_err(format!("inspect container `{name}`"))(e)),
        };
        if !self.is_ours(found.config.as_ref().and_then(|c| c.labels.as_ref())) {
            tracing::warn!(container = name, "not this cluster's container: left alone");
            return Ok(());
        }
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match docker.remove_container(name, Some(options)).await {
            Err(e) if !is_not_found(&e) => Err(engine_err(format!("remove container `{name}`"))(e)),
            _ => Ok(()),
        }
    }

    /// Refuses to start a node whose data another major wrote than the image's.
    async fn check_version(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let pg_version = self.data_dir(node).join("PG_VERSION");
        let text = match std::fs::read_to_string(&pg_version) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(ClusterError::io(
                    format!("read `{}`", pg_version.display()),
                    e,
                ))
            }
        };
        let binaries = Binaries::Image(&self.settings.image);
        server_version::check(
            &node.name,
            Some(&text),
            binaries,
            self.server_major().await?,
        )?;
        Ok(())
    }

    /// Stops and removes the containers (data stays in the volumes), confirming each is gone;
    /// with `purge` then also the network this cluster made and the whole state directory.
    /// When a node's container cannot be removed, nothing is deleted and the error names it.
    pub async fn remove(&self, nodes: &[NodeSpec], purge: bool) -> Result<(), ClusterError> {
        let mut not_stopped = Vec::new();
        for node in nodes {
            if let Err(e) = self.remove_node(node).await {
                tracing::warn!(node = %node.name, "could not remove the container: {e:#}");
                not_stopped.push(node.name.clone());
            }
        }
        if !not_stopped.is_empty() {
            return Err(RuntimeError::NotStopped(not_stopped).into());
        }
        if !purge {
            return Ok(());
        }
        let docker = self.engine().await?;
        let name = &self.settings.network;
        match docker.inspect_network(name, None).await {
            Ok(network) if self.is_ours(network.labels.as_ref()) => docker
                .remove_network(name)
                .await
                .map_err(engine_err(format!("remove network `{name}`")))?,
            Ok(_) => tracing::warn!(network = %name, "not this cluster's network: left alone"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(engine_err(format!("inspect network `{name}`"))(e)),
        }
        if self.state_dir.exists() {
            std::fs::remove_dir_all(&self.state_dir).map_err(|e| {
                ClusterError::io(format!("remove `{}`", self.state_dir.display()), e)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::DockerSettings;

    fn runtime(dir: &std::path::Path) -> DockerRuntime {
        DockerRuntime::new(
            dir.to_owned(),
            DockerSettings::default(),
            Some("img:1".into()),
        )
        .unwrap()
    }

    fn node(name: &str, role: NodeRole, port: u16) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            role,
            host: None,
            port,
            api: None,
        }
    }

    /// Every string the engine receives in clear: env, entrypoint, cmd, labels.
    fn clear_text(body: &ContainerCreateBody) -> Vec<String> {
        let lists = [&body.env, &body.entrypoint, &body.cmd];
        let labels = body
            .labels
            .iter()
            .flat_map(|l| l.iter().map(|(k, v)| format!("{k}={v}")));
        lists
            .into_iter()
            .flatten()
            .flatten()
            .cloned()
            .chain(labels)
            .collect()
    }

    #[test]
    fn an_official_primary_gets_its_volume_a_loopback_port_and_the_secret_as_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let docker = runtime(tmp.path());
        let body = docker.server_container(
            &node("pg_master", NodeRole::Primary, 54320),
            &ImageKind::Entrypoint,
        );
        assert_eq!(body.image.as_deref(), Some("img:1"));
        let env = body.env.clone().unwrap();
        assert!(env.contains(&format!("PGDATA={DATA_MOUNT}")));
        assert!(env.contains(&format!("POSTGRES_PASSWORD_FILE={SECRET_MOUNT}")));
        let host = body.host_config.clone().unwrap();
        let binds = host.binds.unwrap();
        let volume = tmp.path().join("volumes/pg_master");
        assert!(binds.contains(&format!("{}:{DATA_MOUNT}", volume.display())));
        let secret = format!("{}:{SECRET_MOUNT}:ro", password_file(tmp.path()).display());
        assert!(binds.contains(&secret), "{binds:?}");
        let ports = host.port_bindings.unwrap();
        let binding = &ports["5432/tcp"].as_ref().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("54320"));
        assert_eq!(host.network_mode.as_deref(), Some("pg_net"));
        assert_eq!(body.cmd.clone().unwrap()[0], "postgres");
        let password = docker.superuser_password.expose().to_owned();
        assert!(clear_text(&body).iter().all(|s| !s.contains(&password)));
    }

    #[test]
    fn a_bare_standby_runs_postgres_as_the_data_owner_without_the_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let docker = runtime(tmp.path());
        let kind = ImageKind::Bare {
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
        };
        let body = docker.server_container(&node("pg_slave", NodeRole::Standby, 54321), &kind);
        assert_eq!(body.user.as_deref(), Some("999:999"));
        assert_eq!(
            body.entrypoint.clone().unwrap(),
            ["/usr/lib/postgresql/15/bin/postgres"]
        );
        assert_eq!(body.cmd.clone().unwrap()[..2], ["-D", DATA_MOUNT]);
        let binds = body.host_config.clone().unwrap().binds.unwrap();
        assert_eq!(
            binds.len(),
            1,
            "a standby needs no password file: {binds:?}"
        );
        assert!(!body
            .env
            .clone()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("POSTGRES_PASSWORD")));
        assert_eq!(body.stop_signal.as_deref(), Some("SIGINT"));
    }

    #[test]
    fn a_tool_container_gets_the_secret_as_a_mounted_file_only() {
        let tmp = tempfile::tempdir().unwrap();
        let docker = runtime(tmp.path());
        let secret = tmp.path().join("pg_rewind-secret/secret");
        let body = docker.tool_container(
            &node("pg_slave", NodeRole::Standby, 54321),
            "pg_rewind".into(),
            &["--target-pgdata", DATA_MOUNT],
            &secret,
            "pg_net",
        );
        let binds = body.host_config.clone().unwrap().binds.unwrap();
        assert!(binds.contains(&format!("{}:{SECRET_MOUNT}:ro", secret.display())));
        assert_eq!(body.user.as_deref(), Some("999:999"));
        let password = docker.superuser_password.expose().to_owned();
        assert!(clear_text(&body).iter().all(|s| !s.contains(&password)));
        assert_eq!(body.env.clone().unwrap(), ["LC_ALL=C"]);
    }
}
