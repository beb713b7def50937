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
//!
//! Files: this one holds the runtime's state, the secrets, the engine connection and the
//! network; `image` inspects (and pulls) the image; `container` defines and runs the server
//! containers; `tool` runs initdb and pg_rewind in one-shot containers.

mod agent;
mod container;
mod etcd;
mod image;
mod proxy;
mod tool;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::models::NetworkCreateRequest;
use bollard::{Docker, API_DEFAULT_VERSION};
use tokio::sync::OnceCell;

pub use self::agent::{AGENT_API_PORT, MACHINE_FILE, MACHINE_MOUNT, MACHINE_PASSWORD_FILE};
pub use self::etcd::{
    EtcdContainer, ETCD_CLIENT_PORT, ETCD_DATA_MOUNT, ETCD_PEER_PORT, ETCD_TLS_MOUNT,
};
use self::image::Image;
pub use self::proxy::{ProxyContainer, PROXY_CONFIG_MOUNT};
use super::ports;
use super::runtime_error::RuntimeError;
use super::spec::{DockerSettings, NodeRole, NodeSpec};
use super::ClusterError;
use crate::conn::{ConnParams, ConnectOptions, Password};

/// Where every container sees its data directory (and what PGDATA says).
const DATA_MOUNT: &str = "/var/lib/postgresql/data";
/// Beside the data directory: the servers' settings name `../tls/server.crt`.
const TLS_MOUNT: &str = "/var/lib/postgresql/tls";
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
    image: OnceCell<Image>,
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

    /// The node's certificate, key and CA on the host, mounted at [`TLS_MOUNT`].
    pub fn tls_dir(&self, node: &NodeSpec) -> PathBuf {
        self.state_dir.join("tls").join(&node.name)
    }

    /// uid:gid of the image's postgres user, who must own every data directory.
    pub fn data_owner(&self) -> (u32, u32) {
        (self.settings.postgres_uid, self.settings.postgres_gid)
    }

    pub(super) fn passfile(&self) -> PathBuf {
        self.state_dir.join("pgpass")
    }

    /// Checks everything that could refuse before creating anything (engine, image, ports),
    /// then writes the secrets, the primary's empty volume and the network.
    pub async fn prepare(&self, nodes: &[NodeSpec]) -> Result<(), ClusterError> {
        self.image().await?;
        for node in nodes {
            if !self.is_running(node).await {
                ports::ensure_free(node).await?;
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
    pub(super) fn write_secrets(&self, nodes: &[NodeSpec]) -> Result<(), ClusterError> {
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

    /// Adds `addrs` (the proxy's ports on the host) to the passfile the printed URIs name,
    /// unless it has them: a connection through them ends at a node, which asks for the
    /// password.
    pub fn add_to_passfile(&self, addrs: &[std::net::SocketAddr]) -> Result<(), ClusterError> {
        let path = self.passfile();
        let mut text = std::fs::read_to_string(&path)
            .map_err(|e| ClusterError::io(format!("read `{}`", path.display()), e))?;
        let password = self.superuser_password.expose();
        let before = text.len();
        for addr in addrs {
            let line = format!("{}:{}:*:postgres:{password}\n", addr.ip(), addr.port());
            if !text.lines().any(|l| format!("{l}\n") == line) {
                text.push_str(&line);
            }
        }
        if text.len() == before {
            return Ok(());
        }
        write_private(&path, &text)
    }

    /// An empty data directory as the server wants it: the postgres uid's, mode 0700.
    pub(super) fn create_data_dir(&self, dir: &Path) -> Result<(), ClusterError> {
        create_dir(dir)?;
        let (uid, gid) = self.data_owner();
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| ClusterError::io(format!("chown `{}`", dir.display()), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ClusterError::io(format!("chmod `{}`", dir.display()), e))
    }

    /// The engine, connected on first use.
    pub(super) async fn engine(&self) -> Result<&Docker, ClusterError> {
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

    pub(super) fn labels(&self) -> HashMap<String, String> {
        HashMap::from([(OWNER_LABEL.to_owned(), self.state_dir.display().to_string())])
    }

    pub(super) fn is_ours(&self, labels: Option<&HashMap<String, String>>) -> bool {
        labels.and_then(|l| l.get(OWNER_LABEL)) == Some(&self.state_dir.display().to_string())
    }

    /// The cluster network, created when absent; returns its first IPv4 subnet.
    pub(super) async fn network(&self) -> Result<String, ClusterError> {
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
            .ok_or_else(|| RuntimeError::NoSubnet(name.clone()).into())
    }

    /// Standbys and pgrepl itself (through the published port, seen as the network's gateway)
    /// connect from the network's subnet.
    pub async fn replication_clients_cidr(&self) -> Result<String, ClusterError> {
        self.network().await
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

/// `port/tcp` of a container published on the host's 127.0.0.1:`host_port`: what the
/// definition exposes, and its port bindings.
fn on_loopback(
    port: u16,
    host_port: u16,
) -> (
    Vec<String>,
    HashMap<String, Option<Vec<bollard::models::PortBinding>>>,
) {
    let host = std::net::SocketAddr::from(([127, 0, 0, 1], host_port));
    published(&[(port, host)])
}

/// Each container port (TCP) published at its host address.
fn published(
    ports: &[(u16, std::net::SocketAddr)],
) -> (
    Vec<String>,
    HashMap<String, Option<Vec<bollard::models::PortBinding>>>,
) {
    let mut exposed = Vec::new();
    let mut bindings = HashMap::new();
    for (port, host) in ports {
        let port = format!("{port}/tcp");
        let binding = bollard::models::PortBinding {
            host_ip: Some(host.ip().to_string()),
            host_port: Some(host.port().to_string()),
        };
        exposed.push(port.clone());
        bindings.insert(port, Some(vec![binding]));
    }
    (exposed, bindings)
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
