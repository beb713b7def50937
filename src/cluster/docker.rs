//! The docker runtime: each node is a container named after it, on a user network (`pg_net`)
//! where standbys reach the primary by name, publishing 5432 on 127.0.0.1:<node port> for pgrepl
//! and psql on the host. Everything goes through the engine API (bollard): no CLI child process,
//! and nothing runs inside a container but its own server, initdb or pg_rewind.
//!
//! Data directories are host bind mounts (`<state dir>/volumes/<node>`), so pgrepl reads and
//! writes them directly: the primary's pg_hba.conf, and the standbys' base backups, which are
//! handed to the image's postgres uid:gid. They are mounted at `/var/lib/postgresql/data` with
//! PGDATA pointing there, which suits the official images (whatever their own default) and the
//! bare ones `compose/build-image` makes.
//!
//! Two kinds of image, told apart by inspecting the image:
//! - the official `postgres` images, whose `docker-entrypoint.sh` runs initdb on the first start
//!   (superuser password from POSTGRES_PASSWORD_FILE) and then drops to the postgres user;
//! - bare images holding only the binaries: pgrepl runs initdb itself in a one-shot container
//!   as the postgres uid, then the server with `postgres -D`.
//!
//! The superuser password is generated once and kept 0600 in the state directory, with a
//! passfile beside it so stock psql can use the conninfo `status` prints. Containers read it
//! from a read-only bind-mounted file, never from an environment variable: the engine API
//! carries env vars in clear, and bollard logs request bodies at debug level.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding};
use bollard::query_parameters::{
    ContainerArchiveInfoOptions, CreateContainerOptions, KillContainerOptions, LogsOptions,
    RemoveContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::spec::{DockerSettings, NodeRole, NodeSpec};
use super::ClusterError;
use crate::conn::{sql, ConnParams, ConnectOptions, Password};

/// Where every container sees its data directory (and what PGDATA says).
const DATA_MOUNT: &str = "/var/lib/postgresql/data";
/// The server's socket directory inside the container; both image kinds have it writable.
const SOCKET_DIR: &str = "/var/run/postgresql";
/// Where a container reads the superuser password.
const SECRET_MOUNT: &str = "/run/secrets/pgrepl-superuser-password";
const SERVER_PORT: u16 = 5432;
/// The engine socket when DOCKER_HOST names none.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Marks the containers and the network this cluster made, with its state directory as value,
/// so `down` never removes what belongs to someone else.
const OWNER_LABEL: &str = "org.pgrepl.state-dir";
/// A first start of the official image runs initdb and a temporary server before the real one.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// In the state directory: the image `up --image` was given.
const IMAGE_FILE: &str = "image";
/// The tools pgrepl runs in one-shot containers named `<node>-<tool>`.
const ONE_SHOT_TOOLS: [&str; 2] = ["initdb", "pg_rewind"];
/// Log lines quoted when a container fails.
const LOG_TAIL: usize = 20;

/// What the image offers for running a node.
#[derive(Debug)]
enum ImageKind {
    /// The official images: `docker-entrypoint.sh` initialises an empty PGDATA itself.
    Entrypoint,
    /// Binaries only: `postgres` and `initdb` in `bin_dir`.
    Bare { bin_dir: String },
}

#[derive(Debug)]
pub struct DockerRuntime {
    state_dir: PathBuf,
    settings: DockerSettings,
    /// The image came from the command line: `prepare` records it.
    record_image: bool,
    superuser_password: Password,
    /// Connected and version-negotiated on first use, so commands that never touch the engine
    /// do not need one.
    engine: OnceCell<Docker>,
    image: OnceCell<ImageKind>,
}

impl DockerRuntime {
    /// Reads the superuser password kept in the state directory, or makes a new one (written by
    /// `prepare`, so opening a cluster never writes anything).
    /// `image` (given on the command line) overrides the cluster file's; an override `up` was
    /// given is kept in the state directory, so later commands (rejoin's one-shot containers,
    /// a start after `down`) use the image the cluster was built with.
    pub fn new(
        state_dir: PathBuf,
        mut settings: DockerSettings,
        image: Option<String>,
    ) -> Result<DockerRuntime, ClusterError> {
        let recorded = state_dir.join(IMAGE_FILE);
        let record_image = image.is_some();
        match image {
            Some(image) => settings.image = image,
            None => match std::fs::read_to_string(&recorded) {
                Ok(text) => settings.image = text.trim().to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ClusterError::io(
                        format!("read `{}`", recorded.display()),
                        e,
                    ))
                }
            },
        }
        let file = password_file(&state_dir);
        let password = match std::fs::read_to_string(&file) {
            Ok(text) => text.trim_end().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_password()?,
            Err(e) => return Err(ClusterError::io(format!("read `{}`", file.display()), e)),
        };
        Ok(DockerRuntime {
            state_dir,
            settings,
            record_image,
            superuser_password: Password::from(password),
            engine: OnceCell::new(),
            image: OnceCell::new(),
        })
    }

    /// The image the nodes run.
    pub fn image_name(&self) -> &str {
        &self.settings.image
    }

    pub fn data_dir(&self, node: &NodeSpec) -> PathBuf {
        self.state_dir.join("volumes").join(&node.name)
    }

    /// uid:gid of the image's postgres user, who must own every data directory.
    pub fn data_owner(&self) -> (u32, u32) {
        (self.settings.postgres_uid, self.settings.postgres_gid)
    }

    fn passfile(&self) -> PathBuf {
        self.state_dir.join("pgpass")
    }

    /// Checks everything that could refuse before creating anything (engine, image, ports),
    /// then writes the secrets, the primary's empty volume and the network.
    pub async fn prepare(&self, nodes: &[NodeSpec]) -> Result<(), ClusterError> {
        self.image().await?;
        for node in nodes {
            if !self.is_running(node).await {
                super::runtime::ensure_port_free(node)?;
            }
        }
        self.write_secrets(nodes)?;
        if self.record_image {
            let recorded = self.state_dir.join(IMAGE_FILE);
            std::fs::write(&recorded, format!("{}\n", self.settings.image))
                .map_err(|e| ClusterError::io(format!("write `{}`", recorded.display()), e))?;
        }
        let volumes = self.state_dir.join("volumes");
        create_dir(&volumes)?;
        // Standby volumes are left to the base backup, which wants an absent or empty target.
        for node in nodes.iter().filter(|n| n.role == NodeRole::Primary) {
            let dir = self.data_dir(node);
            if !dir.exists() {
                self.create_data_dir(&dir)?;
            }
        }
        self.network().await?;
        Ok(())
    }

    /// The superuser password (0600, kept across runs) and a passfile for psql.
    fn write_secrets(&self, nodes: &[NodeSpec]) -> Result<(), ClusterError> {
        create_dir(&self.state_dir)?;
        let password = self.superuser_password.expose();
        let file = password_file(&self.state_dir);
        if !file.exists() {
            write_private(&file, &format!("{password}\n"))?;
        }
        // The password is hex, so it needs none of the passfile's `:` or `\` escaping.
        let lines: String = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}:*:postgres:{password}\n", n.port))
            .collect();
        write_private(&self.passfile(), &lines)
    }

    /// An empty data directory as the server wants it: the postgres uid's, mode 0700.
    fn create_data_dir(&self, dir: &Path) -> Result<(), ClusterError> {
        create_dir(dir)?;
        let (uid, gid) = self.data_owner();
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| ClusterError::io(format!("chown `{}`", dir.display()), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ClusterError::io(format!("chmod `{}`", dir.display()), e))
    }

    /// The engine, connected on first use.
    async fn engine(&self) -> Result<&Docker, ClusterError> {
        self.engine
            .get_or_try_init(|| async {
                // Only local sockets: bollard is built without TCP/TLS transports.
                let address = std::env::var("DOCKER_HOST")
                    .ok()
                    .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
                    .unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
                let no_engine = |e: EngineError| {
                    ClusterError::io(
                        format!("no Docker engine answers at `{address}`: start it, or use --runtime local"),
                        std::io::Error::other(e),
                    )
                };
                let docker = Docker::connect_with_unix(&address, 120, API_DEFAULT_VERSION).map_err(no_engine)?;
                // A dead socket file can leave a request hanging; the version call is the ping.
                match tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version()).await {
                    Ok(result) => result.map_err(no_engine),
                    Err(_) => Err(no_engine(EngineError::RequestTimeoutError)),
                }
            })
            .await
    }

    /// Inspects the image once: is it an official image with its entrypoint, or bare binaries,
    /// and does it have `postgres` and `initdb` at all.
    async fn image(&self) -> Result<&ImageKind, ClusterError> {
        self.image
            .get_or_try_init(|| async {
                let docker = self.engine().await?;
                let image = &self.settings.image;
                let inspect = docker.inspect_image(image).await.map_err(|e| {
                    if is_not_found(&e) {
                        ClusterError::Setup(format!(
                            "image `{image}` is not on this Docker engine: `docker pull {image}`, or build one without a \
                             registry with compose/build-image and give --image pgrepl-local/postgres:15"
                        ))
                    } else {
                        engine_err(format!("inspect image `{image}`"))(e)
                    }
                })?;
                let config = inspect.config.unwrap_or_default();
                let has_entrypoint_script = config
                    .entrypoint
                    .iter()
                    .chain(config.cmd.iter())
                    .flatten()
                    .any(|a| a.ends_with("docker-entrypoint.sh"));
                // The engine's own PATH when the image sets none.
                let path = config
                    .env
                    .iter()
                    .flatten()
                    .find_map(|v| v.strip_prefix("PATH="))
                    .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                    .to_owned();
                let Some(bin_dir) = self.find_server_binaries(&path).await? else {
                    return Err(ClusterError::Setup(format!(
                        "image `{image}` has no PostgreSQL server: no directory on its PATH (`{path}`) holds `postgres` \
                         and `initdb`; give a PostgreSQL image (--image postgres:17, or one built by compose/build-image)"
                    )));
                };
                let kind = if has_entrypoint_script { ImageKind::Entrypoint } else { ImageKind::Bare { bin_dir } };
                tracing::info!(image, ?kind, "inspected the image");
                Ok(kind)
            })
            .await
    }

    /// The first PATH directory of the image holding both `postgres` and `initdb`. Files are
    /// looked up through the archive API on a created (never started) container.
    async fn find_server_binaries(&self, path: &str) -> Result<Option<String>, ClusterError> {
        let docker = self.engine().await?;
        let image = &self.settings.image;
        let probe = docker
            .create_container(
                None::<CreateContainerOptions>,
                ContainerCreateBody {
                    image: Some(image.clone()),
                    // An image without CMD cannot even be created; this one is never started.
                    entrypoint: Some(vec!["postgres".into()]),
                    labels: Some(self.labels()),
                    host_config: Some(HostConfig {
                        network_mode: Some("none".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .map_err(engine_err(format!(
                "create a container from `{image}` to look for postgres"
            )))?;
        let found = self.search_path(docker, &probe.id, path).await;
        let removed = docker
            .remove_container(
                &probe.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(engine_err("remove the image probe container"));
        let found = found?;
        removed?;
        Ok(found)
    }

    async fn search_path(
        &self,
        docker: &Docker,
        container: &str,
        path: &str,
    ) -> Result<Option<String>, ClusterError> {
        'dirs: for dir in path
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| d.trim_end_matches('/'))
        {
            for tool in ["postgres", "initdb"] {
                let options = ContainerArchiveInfoOptions {
                    path: format!("{dir}/{tool}"),
                };
                match docker
                    .get_container_archive_info(container, Some(options))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => continue 'dirs,
                    Err(e) => {
                        return Err(engine_err(format!(
                            "look for `{dir}/{tool}` in `{}`",
                            self.settings.image
                        ))(e))
                    }
                }
            }
            return Ok(Some(dir.to_owned()));
        }
        Ok(None)
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([(OWNER_LABEL.to_owned(), self.state_dir.display().to_string())])
    }

    fn is_ours(&self, labels: Option<&HashMap<String, String>>) -> bool {
        labels.and_then(|l| l.get(OWNER_LABEL)) == Some(&self.state_dir.display().to_string())
    }

    /// The cluster network, created when absent; returns its first IPv4 subnet.
    async fn network(&self) -> Result<String, ClusterError> {
        let docker = self.engine().await?;
        let name = &self.settings.network;
        let network = match docker.inspect_network(name, None).await {
            Ok(network) => network,
            Err(e) if is_not_found(&e) => {
                tracing::info!(network = %name, "create network");
                let request = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(self.labels()),
                    ..Default::default()
                };
                docker
                    .create_network(request)
                    .await
                    .map_err(engine_err(format!("create network `{name}`")))?;
                docker
                    .inspect_network(name, None)
                    .await
                    .map_err(engine_err(format!("inspect network `{name}`")))?
            }
            Err(e) => return Err(engine_err(format!("inspect network `{name}`"))(e)),
        };
        network
            .ipam
            .and_then(|ipam| ipam.config)
            .into_iter()
            .flatten()
            .filter_map(|c| c.subnet)
            .find(|s| s.contains('.'))
            .ok_or_else(|| {
                ClusterError::Setup(format!(
                    "network `{name}` has no IPv4 subnet: remove it and run `pgrepl up` again"
                ))
            })
    }

    /// Standbys and pgrepl itself (through the published port, seen as the network's gateway)
    /// connect from the network's subnet.
    pub async fn replication_clients_cidr(&self) -> Result<String, ClusterError> {
        self.network().await
    }

    /// A new primary: initdb in a one-shot container (bare images), or the first start of the
    /// server container (official images). On failure nothing is left: no container, and an
    /// empty volume again.
    pub async fn init_primary(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let result = match self.image().await? {
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
    async fn run_initdb(&self, node: &NodeSpec) -> Result<(), ClusterError> {
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
            return Err(ClusterError::Setup(format!(
                "`{}` is running: stop it before pg_rewind",
                node.name
            )));
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
    async fn run_tool(
        &self,
        node: &NodeSpec,
        tool: &str,
        args: &[&str],
        secret: &str,
        network: &str,
    ) -> Result<String, ClusterError> {
        let program = match self.image().await? {
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
        let body = ContainerCreateBody {
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
        };
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

    /// Starts a one-shot container and waits for it to exit successfully; returns its output.
    async fn run_to_completion(&self, name: &str) -> Result<String, ClusterError> {
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
                    code => Err(ClusterError::Setup(format!(
                        "container `{name}` failed (exit code {}); its last log lines:\n{}",
                        code.map_or("unknown".into(), |c| c.to_string()),
                        indent(&output)
                    ))),
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

    /// `<host volume>:<data mount>`.
    fn bind(&self, node: &NodeSpec) -> String {
        format!("{}:{DATA_MOUNT}", self.data_dir(node).display())
    }

    /// The server container's definition.
    fn server_container(&self, node: &NodeSpec, kind: &ImageKind) -> ContainerCreateBody {
        let settings = [
            "-c".to_owned(),
            "listen_addresses=*".to_owned(),
            "-c".to_owned(),
            format!("unix_socket_directories={SOCKET_DIR}"),
        ];
        let mut env = vec![format!("PGDATA={DATA_MOUNT}")];
        let mut binds = vec![self.bind(node)];
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
        let port = format!("{SERVER_PORT}/tcp");
        let binding = PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(node.port.to_string()),
        };
        ContainerCreateBody {
            image: Some(self.settings.image.clone()),
            hostname: Some(node.name.clone()),
            user,
            entrypoint,
            cmd: Some(cmd),
            env: Some(env),
            exposed_ports: Some(vec![port.clone()]),
            labels: Some(self.labels()),
            // `docker stop` by hand then does a fast shutdown too (SIGTERM would wait for every
            // session, the standbys' walreceivers included).
            stop_signal: Some("SIGINT".into()),
            stop_timeout: Some(STOP_TIMEOUT.as_secs() as i64),
            host_config: Some(HostConfig {
                binds: Some(binds),
                port_bindings: Some(HashMap::from([(port, Some(vec![binding]))])),
                network_mode: Some(self.settings.network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the node's container unless it exists; true when this call created it. A
    /// container of that name that this cluster did not make is an error, never reused.
    async fn ensure_container(&self, node: &NodeSpec) -> Result<bool, ClusterError> {
        let docker = self.engine().await?;
        match docker.inspect_container(&node.name, None).await {
            Ok(found) if self.is_ours(found.config.as_ref().and_then(|c| c.labels.as_ref())) => return Ok(false),
            Ok(_) => {
                return Err(ClusterError::Setup(format!(
                    "a container named `{0}` exists and is not this cluster's: remove it (docker rm -f {0}) or rename \
                     the node in the cluster file",
                    node.name
                )))
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(engine_err(format!("inspect container `{}`", node.name))(e)),
        }
        let body = self.server_container(node, self.image().await?);
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

    /// Starts the node's container (creating it if needed) and waits until the server accepts
    /// connections. On failure the container is stopped, and removed if this call created it.
    pub async fn start(&self, node: &NodeSpec) -> Result<(), ClusterError> {
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

    async fn start_and_wait(&self, node: &NodeSpec) -> Result<(), ClusterError> {
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
    async fn wait_ready(&self, node: &NodeSpec) -> Result<(), ClusterError> {
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
                return Err(ClusterError::Setup(format!(
                    "container `{}` exited before accepting connections; its last log lines:\n{}",
                    node.name,
                    self.log_tail(&node.name).await
                )));
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
    async fn logs(&self, name: &str, tail: usize) -> String {
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
    async fn log_tail(&self, name: &str) -> String {
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
    async fn signal(&self, name: &str, signal: &str) -> Result<(), ClusterError> {
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
        let Ok(docker) = self.engine().await else {
            return false;
        };
        match docker.inspect_container(&node.name, None).await {
            Ok(found) => found.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Stops the server cleanly and removes this cluster's container named `name`, if any.
    async fn remove_container(&self, name: &str) -> Result<(), ClusterError> {
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

    /// Stops and removes the containers (data stays in the volumes); with `purge` also the
    /// network this cluster made and the whole state directory.
    pub async fn remove(&self, nodes: &[NodeSpec], purge: bool) -> Result<(), ClusterError> {
        for node in nodes {
            self.stop(node, true).await?;
            self.remove_container(&node.name).await?;
            for tool in ONE_SHOT_TOOLS {
                self.remove_container(&format!("{}-{tool}", node.name))
                    .await?;
            }
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

    /// The superuser through the published port, with the generated password (and the passfile
    /// holding it, for the conninfo psql is given).
    pub fn superuser(&self, node: &NodeSpec) -> ConnectOptions {
        let mut options = superuser_at("127.0.0.1", node.port);
        options.password = Some(self.superuser_password.clone());
        options.passfile = Some(self.passfile());
        options
    }

    /// Standbys reach the primary by container name on the network, at the server's own port.
    pub fn primary_address_for_standbys(&self, primary: &NodeSpec) -> (String, u16) {
        (primary.name.clone(), SERVER_PORT)
    }
}

/// Log lines quoted in an error: indented, blank ones dropped.
fn indent(text: &str) -> String {
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("  | {l}"))
        .collect();
    if lines.is_empty() {
        return "  (no log output)".into();
    }
    lines.join("\n")
}

/// The superuser `postgres` on database `postgres` at `host`:`port`, without a password.
fn superuser_at(host: &str, port: u16) -> ConnectOptions {
    let params = ConnParams {
        host: Some(host.into()),
        port: Some(port.to_string()),
        user: Some("postgres".into()),
        dbname: Some("postgres".into()),
        ..Default::default()
    };
    ConnectOptions::resolve(params, &|_| None).expect("fixed, valid parameters always resolve")
}

fn password_file(state_dir: &Path) -> PathBuf {
    state_dir.join("superuser.password")
}

/// 24 random bytes, hex: no character needs quoting anywhere it goes.
fn new_password() -> Result<String, ClusterError> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ClusterError::io("read `/dev/urandom` for the superuser password", e))?;
    Ok(hex::encode(bytes))
}

/// Writes a file only its owner can read, whatever the umask.
fn write_private(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    let context = || format!("write `{}`", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ClusterError::io(context(), e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| ClusterError::io(context(), e))
}

fn create_dir(dir: &Path) -> Result<(), ClusterError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ClusterError::io(format!("create `{}`", dir.display()), e))
}

fn status_code(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(e: &EngineError) -> bool {
    status_code(e) == Some(404)
}

/// An engine call that failed, with what pgrepl was doing.
fn engine_err(context: impl Into<String>) -> impl FnOnce(EngineError) -> ClusterError {
    let context = context.into();
    move |e| ClusterError::io(context, std::io::Error::other(e))
}
