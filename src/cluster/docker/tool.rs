//! One-shot tool containers: initdb for a new primary of a bare image, pg_rewind for a rejoin,
//! each in a container of its own named `<node>-<tool>`, removed when it is done.

use std::path::Path;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::CreateContainerOptions;

use super::image::ImageKind;
use super::{
    create_dir, engine_err, indent, superuser_at, write_private, DockerRuntime, DATA_MOUNT,
    LOG_TAIL, READY_TIMEOUT, SECRET_MOUNT, SERVER_PORT,
};
use crate::cluster::runtime_error::RuntimeError;
use crate::cluster::spec::NodeSpec;
use crate::cluster::ClusterError;

impl DockerRuntime {
    /// A new primary: initdb in a one-shot container (bare images), or the first start of the
    /// server container (official images). On failure nothing is left: no container, and an
    /// empty volume again.
    pub async fn init_primary(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let result = match &self.image().await?.kind {
            ImageKind::Bare { .. } => self.run_initdb(node).await,
            ImageKind::Entrypoint => self.start(node).await,
        };
        if result.is_err() {
            // A half-initialised PGDATA would pass for a primary on the next `up`.
            let dir = self.data_dir(node);
            let emptied = std::fs::remove_dir_all(&dir)
                .map_err(|e| ClusterError::io(format!("empty `{}`", dir.display()), e))
                .and_then(|()| self.create_data_dir(&dir));
            if let Err(e) = emptied {
                tracing::warn!(node = %node.name, "could not empty the volume after a failed initdb: {e:#}");
            }
        }
        result
    }

    /// initdb as the postgres uid, then a pg_hba line for clients that come through the network
    /// (the host's published port arrives from the gateway).
    pub(super) async fn run_initdb(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let args = [
            "-D",
            DATA_MOUNT,
            "-U",
            "postgres",
            &format!("--pwfile={SECRET_MOUNT}"),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ];
        // initdb runs as the postgres uid, which cannot read root's password file: it gets a
        // copy of its own for the run.
        let secret = format!("{}\n", self.superuser_password.expose());
        self.run_tool(node, "initdb", &args, &secret, "none")
            .await?;
        let subnet = self.network().await?;
        let hba = self.data_dir(node).join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba)
            .map_err(|e| ClusterError::io(format!("read `{}`", hba.display()), e))?;
        text.push_str(&format!(
            "# added by pgrepl: clients through network `{}`\nhost all all {subnet} scram-sha-256\n",
            self.settings.network
        ));
        std::fs::write(&hba, text)
            .map_err(|e| ClusterError::io(format!("write `{}`", hba.display()), e))
    }

    /// pg_rewind on the stopped node's volume, from a one-shot container on the network that
    /// reaches `source` by name as the superuser (password from a passfile mounted for the run,
    /// so it is in no argument or environment variable). Returns what pg_rewind printed.
    pub async fn rewind(&self, node: &NodeSpec, source: &NodeSpec) -> Result<String, ClusterError> {
        if self.is_running(node).await {
            return Err(RuntimeError::RunningDuringRewind {
                node: node.name.clone(),
            }
            .into());
        }
        // The node's container is stopped, so its lock file is stale; and it names pid 1, which
        // in the one-shot container is pg_rewind itself, so the single-user server pg_rewind
        // starts to finish a crashed node's recovery would take it for a live postmaster.
        let lock = self.data_dir(node).join("postmaster.pid");
        match std::fs::remove_file(&lock) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ClusterError::io(format!("remove `{}`", lock.display()), e))
            }
            _ => {}
        }
        let mut source_options = superuser_at(&source.name, SERVER_PORT);
        source_options.passfile = Some(SECRET_MOUNT.into());
        let conninfo = source_options.redacted();
        // The password is hex: nothing in it needs the passfile's escaping.
        let passfile = format!(
            "{}:{SERVER_PORT}:*:postgres:{}\n",
            source.name,
            self.superuser_password.expose()
        );
        // --progress for its "need to copy N MB" line.
        let args = [
            "--target-pgdata",
            DATA_MOUNT,
            "--source-server",
            &conninfo,
            "--progress",
        ];
        let network = self.settings.network.clone();
        self.run_tool(node, "pg_rewind", &args, &passfile, &network)
            .await
    }

    /// Runs one of the image's PostgreSQL tools once, in a container of its own named
    /// `<node>-<tool>`, as the postgres uid with the node's volume mounted and `secret`
    /// readable (by that uid only) at SECRET_MOUNT for the run. Returns the tool's output; the
    /// container and the secret's copy are removed either way.
    pub(super) async fn run_tool(
        &self,
        node: &NodeSpec,
        tool: &str,
        args: &[&str],
        secret: &str,
        network: &str,
    ) -> Result<String, ClusterError> {
        let program = match &self.image().await?.kind {
            ImageKind::Bare { bin_dir } => format!("{bin_dir}/{tool}"),
            // The official images have their bin directory on PATH.
            ImageKind::Entrypoint => tool.to_owned(),
        };
        let docker = self.engine().await?;
        let name = format!("{}-{tool}", node.name);
        self.remove_container(&name).await?;
        let (uid, gid) = self.data_owner();
        let secret_dir = self.state_dir.join(format!("{tool}-secret"));
        create_dir(&secret_dir)?;
        let secret_file = secret_dir.join("secret");
        write_private(&secret_file, secret)?;
        std::os::unix::fs::chown(&secret_file, Some(uid), Some(gid))
            .map_err(|e| ClusterError::io(format!("chown `{}`", secret_file.display()), e))?;
        let body = self.tool_container(node, program, args, &secret_file, network);
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(engine_err(format!("create container `{name}`")));
        let outcome = match created {
            Ok(_) => self.run_to_completion(&name).await,
            Err(e) => Err(e),
        };
        let removed = self.remove_container(&name).await;
        let secret_removed = std::fs::remove_dir_all(&secret_dir)
            .map_err(|e| ClusterError::io(format!("remove `{}`", secret_dir.display()), e));
        let output = outcome?;
        removed.and(secret_removed)?;
        Ok(output)
    }

    /// A one-shot container's definition: the tool as the postgres uid, the node's volume and
    /// the secret's file (never its text) mounted.
    pub(super) fn tool_container(
        &self,
        node: &NodeSpec,
        program: String,
        args: &[&str],
        secret_file: &Path,
        network: &str,
    ) -> ContainerCreateBody {
        let (uid, gid) = self.data_owner();
        ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            user: Some(format!("{uid}:{gid}")),
            entrypoint: Some(vec![program]),
            cmd: Some(args.iter().map(|a| a.to_string()).collect()),
            env: Some(vec!["LC_ALL=C".into()]),
            labels: Some(self.labels()),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    self.bind(node),
                    format!("{}:{SECRET_MOUNT}:ro", secret_file.display()),
                ]),
                network_mode: Some(network.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Starts a one-shot container and waits for it to exit successfully; returns its output.
    pub(super) async fn run_to_completion(&self, name: &str) -> Result<String, ClusterError> {
        let docker = self.engine().await?;
        docker
            .start_container(name, None)
            .await
            .map_err(engine_err(format!("start container `{name}`")))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let state = docker
                .inspect_container(name, None)
                .await
                .map_err(engine_err(format!("inspect container `{name}`")))?
                .state
                .unwrap_or_default();
            if state.running != Some(true) {
                let output = self.logs(name, LOG_TAIL).await;
                return match state.exit_code {
                    Some(0) => Ok(output),
                    code => Err(RuntimeError::OneShotFailed {
                        name: name.to_owned(),
                        code: code.map_or("unknown".into(), |c| c.to_string()),
                        logs: indent(&output),
                    }
                    .into()),
                };
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(
                    READY_TIMEOUT,
                    format!("container `{name}` to finish"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
