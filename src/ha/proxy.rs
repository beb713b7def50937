//! `[proxy]`: HAProxy in front of the nodes, with `haproxy`'s configuration and a stats socket.
//! `up` starts it on the local runtime once the agents answer, `down` stops it first (the
//! applications' door closes before the servers go), and `status` asks the stats socket which
//! servers each port reaches now.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::daemon::Daemon;
use super::haproxy::{config, Backend, Listen};
use super::HaError;
use crate::cluster::runtime::Runtime;
use crate::cluster::spec::ProxySpec;
use crate::cluster::{Cluster, StepLog};

/// HAProxy binds its ports and loads its checks in well under a second.
const READY_WAIT: Duration = Duration::from_secs(10);
const STOP_WAIT: Duration = Duration::from_secs(10);

/// The proxy `up` found or started.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyUp {
    pub write: SocketAddr,
    pub read: SocketAddr,
    pub pid: i32,
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
            let api = apis.get(&node.name).copied().ok_or_else(|| {
                HaError::Config(format!(
                    "node `{}` has no agent API address: `pgrepl up` with [ha] picks one, or give the node `api = \"IP:PORT\"` in the cluster file",
                    node.name
                ))
            })?;
            let (host, port) = cluster.runtime.host_address(node);
            Ok(Backend {
                name: node.name.clone(),
                host,
                port,
                api,
            })
        })
        .collect()
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

fn daemon(state_dir: &Path) -> Daemon {
    Daemon {
        what: "HAProxy".into(),
        pid_file: dir(state_dir).join("haproxy.pid"),
        log_file: dir(state_dir).join("haproxy.log"),
        marks: vec![config_file(state_dir).display().to_string()],
    }
}

/// Starts HAProxy unless it runs already, and waits until both ports accept connections.
pub async fn ensure_running(
    cluster: &Cluster,
    spec: &ProxySpec,
    log: &dyn StepLog,
) -> Result<ProxyUp, HaError> {
    supported(cluster)?;
    let state_dir = cluster.state_dir();
    let (write, read) = (
        SocketAddr::new(spec.bind, spec.write_port),
        SocketAddr::new(spec.bind, spec.read_port),
    );
    let daemon = daemon(state_dir);
    let up = |pid| ProxyUp {
        write,
        read,
        pid,
        log: daemon.log_file.display().to_string(),
    };
    if let Some(pid) = daemon.running() {
        return Ok(up(pid));
    }
    let program = haproxy()?;
    let listen = Listen {
        bind: spec.bind.to_string(),
        write_port: spec.write_port,
        read_port: spec.read_port,
        stats_socket: Some(stats_socket(state_dir)),
    };
    let text = config(&listen, &backends(cluster)?);
    let file = config_file(state_dir);
    let io = |context: String| move |source| HaError::Io { context, source };
    std::fs::create_dir_all(dir(state_dir))
        .map_err(io(format!("create `{}`", dir(state_dir).display())))?;
    crate::fs::write_durably(&file, text.as_bytes(), 0o644)
        .map_err(io(format!("write `{}`", file.display())))?;
    log.step(&format!(
        "start HAProxy: writes {write}, reads {read} (config `{}`, log `{}`)",
        file.display(),
        daemon.log_file.display()
    ));
    let args = ["-db".into(), "-f".into(), file.clone().into_os_string()];
    let pid = daemon.start(&program, &args, state_dir)?;
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    loop {
        if daemon.running().is_none() {
            return Err(HaError::Process(format!(
                "HAProxy exited: {} (log `{}`)",
                last_line(&daemon.log_file),
                daemon.log_file.display()
            )));
        }
        let bound = async {
            tokio::net::TcpStream::connect(write).await.is_ok()
                && tokio::net::TcpStream::connect(read).await.is_ok()
        };
        if bound.await {
            return Ok(up(pid));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HaError::Process(format!(
                "HAProxy does not accept connections on {write} and {read} after {READY_WAIT:?}: see `{}`",
                daemon.log_file.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `up` runs HAProxy on the local runtime only, and needs it installed.
pub fn supported(cluster: &Cluster) -> Result<(), HaError> {
    if let Runtime::Docker(_) = &cluster.runtime {
        return Err(HaError::Config(
            "[proxy] starts HAProxy on the local runtime only: on docker, remove [proxy] and run HAProxy with `pgrepl haproxy-config`".into(),
        ));
    }
    haproxy().map(drop)
}

/// Stops the HAProxy `up` started here, if any.
pub async fn stop(state_dir: &Path) -> Result<(), HaError> {
    daemon(state_dir).stop(STOP_WAIT).await
}

/// Which servers each port reaches now, from the stats socket (`None`: no proxy runs here).
pub async fn routes(state_dir: &Path) -> Option<Result<Routes, HaError>> {
    daemon(state_dir).running()?;
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
        Ok(Err(source)) => Err(HaError::Io {
            context: format!("ask HAProxy at `{}`", socket.display()),
            source,
        }),
        Err(_) => Err(HaError::Process(format!(
            "HAProxy's stats socket `{}` did not answer within 1 s",
            socket.display()
        ))),
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
        .ok_or_else(|| {
            HaError::Config(
                "[proxy] needs HAProxy: install it (Debian: `apt-get install haproxy`), or remove [proxy]".into(),
            )
        })
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
