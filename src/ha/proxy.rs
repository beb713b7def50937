//! `[proxy]`: HAProxy in front of the nodes, with `haproxy`'s configuration and a stats socket.
//! `up` starts it once the agents answer: a process on the local runtime, a container on the
//! cluster network on docker (`cluster::docker::proxy`), reaching the nodes and their agents
//! by name. `down` stops it first (the applications' door closes before the servers go), and
//! `status` asks the stats socket, `<state_dir>/proxy/haproxy.sock` on either runtime, which
//! servers each port reaches now.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::daemon::Daemon;
use super::haproxy::{config, Backend, Listen};
use super::HaError;
use crate::cluster::docker::{DockerRuntime, ProxyContainer, AGENT_API_PORT, PROXY_CONFIG_MOUNT};
use crate::cluster::runtime::Runtime;
use crate::cluster::spec::ProxySpec;
use crate::cluster::tls::ca_cert_path;
use crate::cluster::{Cluster, StepLog};

/// HAProxy binds its ports and loads its checks in well under a second.
const READY_WAIT: Duration = Duration::from_secs(10);
const STOP_WAIT: Duration = Duration::from_secs(10);
/// Docker's DNS server on a user network, which names every container on it.
const DOCKER_DNS: &str = "127.0.0.11:53";
/// The server's port in every node's container.
const CONTAINER_SERVER_PORT: u16 = 5432;

/// The proxy `up` found or started.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyUp {
    pub write: SocketAddr,
    pub read: SocketAddr,
    /// Its pid, or its container's main process's.
    pub pid: i32,
    /// Where its log is: a file, or the command that shows a container's.
    pub log: String,
}

/// Which servers each of the proxy's ports reaches now (its checks passing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Routes {
    pub write: Vec<String>,
    pub read: Vec<String>,
}

/// Every node as a proxy on this machine reaches it, with its agent's API.
pub fn backends(cluster: &Cluster) -> Result<Vec<Backend>, HaError> {
    let apis = super::api_addr::known(cluster)?;
    cluster
        .spec
        .nodes
        .iter()
        .map(|node| {
            let api = apis
                .get(&node.name)
                .copied()
                .ok_or_else(|| HaError::NoApiAddress {
                    node: node.name.clone(),
                })?;
            let (host, port) = cluster.runtime.host_address(node);
            Ok(Backend {
                name: node.name.clone(),
                host,
                port,
                api_host: api.ip().to_string(),
                api_port: api.port(),
            })
        })
        .collect()
}

/// Every node as a proxy on the cluster network reaches it: by container name.
fn network_backends(cluster: &Cluster) -> Vec<Backend> {
    let by_name = |node: &crate::cluster::spec::NodeSpec| Backend {
        name: node.name.clone(),
        host: node.name.clone(),
        port: CONTAINER_SERVER_PORT,
        api_host: node.name.clone(),
        api_port: AGENT_API_PORT,
    };
    cluster.spec.nodes.iter().map(by_name).collect()
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("proxy")
}

fn config_file(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("haproxy.cfg")
}

fn stats_socket(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("haproxy.sock")
}

/// Where HAProxy runs: a process `up` started here, or a container on the cluster network.
enum Instance<'a> {
    Process(Daemon),
    Container {
        docker: &'a DockerRuntime,
        name: String,
    },
}

impl<'a> Instance<'a> {
    fn of(cluster: &'a Cluster) -> Result<Self, HaError> {
        let state_dir = cluster.state_dir();
        Ok(match &cluster.runtime {
            Runtime::Local(_) => Instance::Process(Daemon {
                what: "HAProxy".into(),
                pid_file: dir(state_dir).join("haproxy.pid"),
                log_file: dir(state_dir).join("haproxy.log"),
                marks: vec![config_file(state_dir).display().to_string()],
            }),
            Runtime::Docker(docker) => Instance::Container {
                docker,
                name: format!("{}-haproxy", super::scope(cluster)?),
            },
        })
    }

    /// Its pid (a container's main process's; 0 when the engine does not say), when it runs.
    async fn running(&self) -> Option<i32> {
        match self {
            Instance::Process(daemon) => daemon.running(),
            Instance::Container { docker, name } => docker
                .container_runs(name)
                .await
                .then_some(docker.main_pid(name).await.unwrap_or(0)),
        }
    }

    fn log(&self) -> String {
        match self {
            Instance::Process(daemon) => daemon.log_file.display().to_string(),
            Instance::Container { name, .. } => format!("docker logs {name}"),
        }
    }

    /// Why it exited, from the end of its log.
    async fn last_words(&self) -> String {
        match self {
            Instance::Process(daemon) => last_line(&daemon.log_file),
            Instance::Container { docker, name } => docker.log_tail(name).await,
        }
    }
}

/// Starts HAProxy unless it runs already, and waits until both ports accept connections.
pub async fn ensure_running(
    cluster: &Cluster,
    spec: &ProxySpec,
    log: &dyn StepLog,
) -> Result<ProxyUp, HaError> {
    let state_dir = cluster.state_dir();
    let (write, read) = (
        SocketAddr::new(spec.bind, spec.write_port),
        SocketAddr::new(spec.bind, spec.read_port),
    );
    let instance = Instance::of(cluster)?;
    let up = |pid| ProxyUp {
        write,
        read,
        pid,
        log: instance.log(),
    };
    if let Instance::Container { docker, .. } = &instance {
        docker.add_to_passfile(&[write, read])?;
    }
    if let Some(pid) = instance.running().await {
        return Ok(up(pid));
    }
    let file = config_file(state_dir);
    let io = |context: String| move |source| HaError::Io { context, source };
    std::fs::create_dir_all(dir(state_dir))
        .map_err(io(format!("create `{}`", dir(state_dir).display())))?;
    log.step(&format!(
        "start HAProxy: writes {write}, reads {read} (config `{}`, log `{}`)",
        file.display(),
        instance.log()
    ));
    match &instance {
        Instance::Process(daemon) => {
            let program = haproxy()?;
            let listen = Listen {
                bind: spec.bind.to_string(),
                write_port: spec.write_port,
                read_port: spec.read_port,
                stats_socket: Some(stats_socket(state_dir)),
                resolver: None,
                api_ca: cluster.spec.tls_on().then(|| ca_cert_path(state_dir)),
            };
            let text = config(&listen, &backends(cluster)?);
            crate::fs::write_durably(&file, text.as_bytes(), 0o644)
                .map_err(io(format!("write `{}`", file.display())))?;
            let args = ["-db".into(), "-f".into(), file.clone().into_os_string()];
            daemon.start(&program, &args, state_dir)?;
        }
        Instance::Container { docker, name } => {
            // In the container: every address, the stats socket in the mounted directory.
            let listen = Listen {
                bind: "0.0.0.0".into(),
                write_port: spec.write_port,
                read_port: spec.read_port,
                stats_socket: Some(Path::new(PROXY_CONFIG_MOUNT).join("haproxy.sock")),
                resolver: Some(DOCKER_DNS.parse().expect("an address")),
                api_ca: cluster
                    .spec
                    .tls_on()
                    .then(|| Path::new(PROXY_CONFIG_MOUNT).join("ca.crt")),
            };
            if cluster.spec.tls_on() {
                // The container sees only its directory: the CA goes there.
                let (from, to) = (ca_cert_path(state_dir), dir(state_dir).join("ca.crt"));
                std::fs::copy(&from, &to).map_err(io(format!(
                    "copy `{}` to `{}`",
                    from.display(),
                    to.display()
                )))?;
            }
            let text = config(&listen, &network_backends(cluster));
            crate::fs::write_durably(&file, text.as_bytes(), 0o644)
                .map_err(io(format!("write `{}`", file.display())))?;
            let owner = std::fs::metadata(dir(state_dir))
                .map_err(io(format!("read `{}`", dir(state_dir).display())))?;
            let container = ProxyContainer {
                name: name.clone(),
                image: spec.image.clone(),
                config_dir: dir(state_dir),
                ports: vec![(spec.write_port, write), (spec.read_port, read)],
                user: format!("{}:{}", owner.uid(), owner.gid()),
            };
            docker.ensure_proxy(&container).await?;
        }
    }
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    loop {
        let Some(pid) = instance.running().await else {
            return Err(HaError::ProxyExited {
                last_words: instance.last_words().await,
                log: instance.log(),
            });
        };
        let bound = async {
            tokio::net::TcpStream::connect(write).await.is_ok()
                && tokio::net::TcpStream::connect(read).await.is_ok()
        };
        if bound.await {
            return Ok(up(pid));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HaError::ProxyNotAccepting {
                write,
                read,
                after: READY_WAIT,
                log: instance.log(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On the local runtime, `up` needs HAProxy installed (on docker, its image).
pub fn supported(cluster: &Cluster) -> Result<(), HaError> {
    match &cluster.runtime {
        Runtime::Local(_) => haproxy().map(drop),
        Runtime::Docker(_) => Ok(()),
    }
}

/// Stops the HAProxy `up` started for this cluster, if any.
pub async fn stop(cluster: &Cluster) -> Result<(), HaError> {
    match Instance::of(cluster)? {
        Instance::Process(daemon) => daemon.stop(STOP_WAIT).await,
        Instance::Container { docker, name } => Ok(docker.remove_and_confirm(&name).await?),
    }
}

/// Which servers each port reaches now, from the stats socket (`None`: no proxy answers there).
pub async fn routes(state_dir: &Path) -> Option<Result<Routes, HaError>> {
    let socket = stats_socket(state_dir);
    let ask = async {
        let mut stream = tokio::net::UnixStream::connect(&socket).await?;
        stream.write_all(b"show stat\n").await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    let answer = tokio::time::timeout(Duration::from_secs(1), ask).await;
    Some(match answer {
        Ok(Ok(text)) => Ok(parse_stat(&text)),
        // No socket, or one a stopped HAProxy left behind.
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return None
        }
        Ok(Err(source)) => Err(HaError::Io {
            context: format!("ask HAProxy at `{}`", socket.display()),
            source,
        }),
        Err(_) => Err(HaError::StatsSilent { socket }),
    })
}

/// The servers `show stat` (CSV, a `# pxname,svname,…,status,…` header) reports up.
fn parse_stat(text: &str) -> Routes {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let column = |name| header.iter().position(|h| *h == name);
    let (Some(proxy), Some(server), Some(status)) =
        (column("pxname"), column("svname"), column("status"))
    else {
        return Routes::default();
    };
    let mut routes = Routes::default();
    for fields in lines.map(|l| l.split(',').collect::<Vec<_>>()) {
        let (Some(p), Some(s), Some(st)) =
            (fields.get(proxy), fields.get(server), fields.get(status))
        else {
            continue;
        };
        if matches!(*s, "FRONTEND" | "BACKEND") || !st.starts_with("UP") {
            continue;
        }
        match *p {
            "primary" => routes.write.push((*s).to_owned()),
            "replicas" => routes.read.push((*s).to_owned()),
            _ => {}
        }
    }
    routes
}

/// HAProxy from PATH, or where Debian puts it (outside a user's PATH).
fn haproxy() -> Result<PathBuf, HaError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .ok_or(HaError::NoHaproxy)
}

fn last_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    last.unwrap_or("no output").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `show stat` as HAProxy 2.6 answers it (columns cut after `status`), one primary up,
    /// one standby down.
    #[test]
    fn the_stats_name_the_servers_whose_checks_pass() {
        let text = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
primary,FRONTEND,,,0,1,100,1,0,0,0,0,0,,,,,OPEN,\n\
primary,pg_master,0,0,0,1,100,1,0,0,,0,,0,0,0,0,UP,1\n\
primary,pg_slave,0,0,0,0,100,0,0,0,,0,,0,0,0,0,DOWN,1\n\
primary,BACKEND,0,0,0,1,10,1,0,0,0,0,,0,0,0,0,UP,1\n\
replicas,FRONTEND,,,0,0,100,0,0,0,0,0,0,,,,,OPEN,\n\
replicas,pg_master,0,0,0,0,100,0,0,0,,0,,0,0,0,0,DOWN,1\n\
replicas,pg_slave,0,0,0,0,100,0,0,0,,0,,0,0,0,0,UP 1/2,1\n\
replicas,pg_asyncslave,0,0,0,0,100,0,0,0,,0,,0,0,0,0,MAINT,1\n\
replicas,BACKEND,0,0,0,0,10,0,0,0,0,0,,0,0,0,0,UP,1\n\n";
        assert_eq!(
            parse_stat(text),
            Routes {
                write: vec!["pg_master".into()],
                read: vec!["pg_slave".into()],
            }
        );
        assert_eq!(parse_stat(""), Routes::default());
    }
}
