//! The etcd `up` starts when `[ha]` names none: three members on 127.0.0.1, enough to keep
//! quorum with one down, in `<state_dir>/etcd/` (`etcdN/` data, `etcdN.log`, `etcdN.pid`).
//! Their ports are picked once, among free ones below the kernel's ephemeral range, and kept in
//! `members.json`: etcd stores its peers' URLs in its data, so a member restarts on the same
//! ports. The client URLs go to [`super::local_etcd_endpoints_file`] for every later command.
//! A cluster with TLS gets an etcd with TLS, client certificates and auth (`etcd_access`);
//! an etcd made before that keeps speaking plain HTTP until `down --purge`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::daemon::Daemon;
use super::etcd_access::{self, EtcdAccess, User};
use super::{HaError, ETCD_ELECTION_MS, ETCD_HEARTBEAT_MS};
use crate::cluster::{ports, StepLog};
use crate::fetch::FetchPolicy;

const MEMBERS: usize = 3;
/// A fresh member waits for its peers and an election; a restarted one replays its log.
const HEALTHY_WAIT: Duration = Duration::from_secs(30);
const STOP_WAIT: Duration = Duration::from_secs(10);

/// One member's name and ports, as recorded. In a container, only the client port is used:
/// it is published on the host's loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Member {
    pub(super) name: String,
    pub(super) client_port: u16,
    peer_port: u16,
    /// TLS to clients and peers, client certificates required.
    #[serde(default)]
    pub(super) tls: bool,
}

/// Where a member listens and what it tells the others and its clients.
pub(super) struct MemberUrls {
    pub(super) listen_client: String,
    pub(super) advertise_client: String,
    pub(super) listen_peer: String,
    pub(super) advertise_peer: String,
}

impl Member {
    /// The member's client URL as the host reaches it.
    pub(super) fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }

    pub(super) fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

pub struct LocalEtcd {
    state_dir: PathBuf,
    dir: PathBuf,
}

impl LocalEtcd {
    pub fn new(state_dir: &Path) -> LocalEtcd {
        LocalEtcd {
            state_dir: state_dir.to_owned(),
            dir: state_dir.join("etcd"),
        }
    }

    /// `up` started an etcd here at some point.
    pub fn exists(&self) -> bool {
        self.members_file().exists()
    }

    fn members_file(&self) -> PathBuf {
        members_file(&self.dir)
    }

    fn data_dir(&self, member: &Member) -> PathBuf {
        self.dir.join(&member.name)
    }

    fn daemon(&self, member: &Member) -> Daemon {
        Daemon {
            what: format!("etcd member {}", member.name),
            pid_file: self.dir.join(format!("{}.pid", member.name)),
            log_file: self.dir.join(format!("{}.log", member.name)),
            marks: vec![self.data_dir(member).display().to_string()],
        }
    }

    /// Starts the members that do not run (all of them the first time, on new ports other than
    /// `avoid`, with TLS and auth when `tls`) and returns how the agents reach etcd once every
    /// member answers a linearizable read. Without an etcd on this machine, one is fetched
    /// as `fetch` allows.
    pub async fn ensure_running(
        &self,
        avoid: &[u16],
        scope: &str,
        tls: bool,
        log: &dyn StepLog,
        fetch: &FetchPolicy,
    ) -> Result<EtcdAccess, HaError> {
        let members = ensure_members(&self.state_dir, avoid, tls)?;
        // An etcd made before TLS keeps speaking plain HTTP.
        let tls = members.iter().all(|m| m.tls);
        let urls: Vec<String> = members.iter().map(Member::client_url).collect();
        let names = |_: &Member| vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let tls_files = secure(&self.state_dir, scope, &members, names, log)?;
        let binary = etcd_binary(fetch).await?;
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut started = Vec::new();
        for member in &members {
            let daemon = self.daemon(member);
            if daemon.running().is_some() {
                continue;
            }
            for port in [member.client_port, member.peer_port] {
                if !ports::is_free(port) {
                    return Err(HaError::EtcdPortInUse {
                        port,
                        member: member.name.clone(),
                    });
                }
            }
            log.step(&format!(
                "start {} (client {}, data in `{}`)",
                daemon.what,
                member.client_url(),
                self.data_dir(member).display()
            ));
            let (client, peer) = (member.client_url(), member.peer_url());
            let member_urls = MemberUrls {
                listen_client: client.clone(),
                advertise_client: client,
                listen_peer: peer.clone(),
                advertise_peer: peer,
            };
            let data = self.data_dir(member);
            let args = member_args(
                &member.name,
                &member_urls,
                data.as_os_str(),
                &initial_cluster,
                &format!("pgrepl-{scope}"),
                tls_files.as_deref(),
            );
            daemon.start(&binary, &args, &self.dir)?;
            started.push(member);
        }
        let root = EtcdAccess::own(&self.state_dir, urls.clone(), tls, User::Root);
        wait_answering(&root, |i| {
            format!("`{}`", self.daemon(&members[i]).log_file.display())
        })
        .await?;
        if !started.is_empty() {
            log.step(&format!("etcd answers at {}", urls.join(",")));
        }
        provisioned(&self.state_dir, &root, scope, log).await?;
        Ok(EtcdAccess::own(&self.state_dir, urls, tls, User::Agent))
    }

    /// Stops every member that runs and confirms it exited.
    pub async fn stop(&self) -> Result<(), HaError> {
        let Some(members) = load_members(&self.dir)? else {
            return Ok(());
        };
        let stops = members.iter().map(|m| async move {
            let daemon = self.daemon(m);
            daemon.stop(STOP_WAIT).await
        });
        for result in futures_util::future::join_all(stops).await {
            result?;
        }
        Ok(())
    }
}

/// Where `up` picks the ports of its etcd and of the agents' APIs: below the ephemeral range
/// (where client sockets take theirs). Tests pick their servers' ports elsewhere, so the two
/// never race for one.
pub const LOCAL_ETCD_PORTS: std::ops::Range<u16> = 20000..ports::EPHEMERAL.0;

/// Names and ports for a new etcd: free ports in [`LOCAL_ETCD_PORTS`].
fn new_members(avoid: &[u16], tls: bool) -> Vec<Member> {
    let mut pick = ports::picker(LOCAL_ETCD_PORTS, avoid);
    (0..MEMBERS)
        .map(|i| Member {
            name: format!("etcd{i}"),
            client_port: pick(),
            peer_port: pick(),
            tls,
        })
        .collect()
}

/// With TLS, the members' and users' certificates (made when missing; `names(member)`: the
/// addresses clients and peers reach it by), and the directory etcd finds its own in.
pub(super) fn secure(
    state_dir: &Path,
    scope: &str,
    members: &[Member],
    names: impl Fn(&Member) -> Vec<String>,
    log: &dyn StepLog,
) -> Result<Option<PathBuf>, HaError> {
    if !members.iter().all(|m| m.tls) {
        return Ok(None);
    }
    let members: Vec<(String, Vec<String>)> =
        members.iter().map(|m| (m.name.clone(), names(m))).collect();
    let leaves = etcd_access::leaves(state_dir, scope, &members);
    let made = crate::cluster::tls::ensure(state_dir, &leaves, None, true, false)
        .map_err(HaError::EtcdCertificates)?;
    for line in made {
        log.step(&format!("etcd: {line}"));
    }
    Ok(Some(etcd_access::members_dir(state_dir)))
}

/// With TLS, the users and roles (`etcd_access::provision`), once: `<state_dir>/etcd/auth`
/// says they are made (a run interrupted before it makes them again).
pub(super) async fn provisioned(
    state_dir: &Path,
    root: &EtcdAccess,
    scope: &str,
    log: &dyn StepLog,
) -> Result<(), HaError> {
    let done = state_dir.join("etcd").join("auth");
    if root.tls.is_none() || done.exists() {
        return Ok(());
    }
    etcd_access::provision(root, scope).await?;
    crate::fs::write_durably(&done, scope.as_bytes(), 0o644).map_err(|source| HaError::Io {
        context: format!("write `{}`", done.display()),
        source,
    })?;
    log.step(&format!(
        "etcd: auth on; users {} (read-write) and {} (read-only) on `/pgrepl/{scope}/`",
        User::Agent.name(scope),
        User::Reader.name(scope)
    ));
    Ok(())
}

fn members_file(dir: &Path) -> PathBuf {
    dir.join("members.json")
}

pub(super) fn load_members(dir: &Path) -> Result<Option<Vec<Member>>, HaError> {
    let file = members_file(dir);
    match std::fs::read_to_string(&file) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| HaError::Record {
                key: file.display().to_string(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HaError::Io {
            context: format!("read `{}`", file.display()),
            source,
        }),
    }
}

/// The members recorded in `<state_dir>/etcd/`, or new ones (ports other than `avoid`, TLS
/// when `tls`) now recorded there; their client URLs are written for every later command.
pub(super) fn ensure_members(
    state_dir: &Path,
    avoid: &[u16],
    tls: bool,
) -> Result<Vec<Member>, HaError> {
    let dir = state_dir.join("etcd");
    let io = |what: &str, path: &Path| {
        let context = format!("{what} `{}`", path.display());
        move |source| HaError::Io { context, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let members = match load_members(&dir)? {
        Some(members) => members,
        None => {
            let members = new_members(avoid, tls);
            let text = serde_json::to_string_pretty(&members).expect("members serialise");
            let file = members_file(&dir);
            crate::fs::write_durably(&file, text.as_bytes(), 0o644).map_err(io("write", &file))?;
            members
        }
    };
    let urls: Vec<String> = members.iter().map(Member::client_url).collect();
    let endpoints = super::local_etcd_endpoints_file(state_dir);
    crate::fs::write_durably(&endpoints, (urls.join("\n") + "\n").as_bytes(), 0o644)
        .map_err(io("write", &endpoints))?;
    Ok(members)
}

/// Waits until every one of `access`'s endpoints answers a linearizable read; else names the
/// logs (`log_of(i)`) of those that did not.
pub(super) async fn wait_answering(
    access: &EtcdAccess,
    log_of: impl Fn(usize) -> String,
) -> Result<(), HaError> {
    let urls = &access.endpoints;
    let options = access.options()?;
    let deadline = tokio::time::Instant::now() + HEALTHY_WAIT;
    loop {
        let answers = futures_util::future::join_all(
            urls.iter().map(|url| answers(url.clone(), options.clone())),
        )
        .await;
        if answers.iter().all(|&ok| ok) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let silent: Vec<String> = (0..urls.len())
                .filter(|&i| !answers[i])
                .map(&log_of)
                .collect();
            return Err(HaError::EtcdSilent {
                after: HEALTHY_WAIT,
                logs: silent,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The command line of one member, the same for a process and a container; `tls`: the
/// directory of its certificate (`<name>.crt`) and the CA's.
pub(super) fn member_args(
    name: &str,
    urls: &MemberUrls,
    data: &std::ffi::OsStr,
    initial_cluster: &str,
    token: &str,
    tls: Option<&Path>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--name",
        name,
        "--listen-client-urls",
        &urls.listen_client,
        "--advertise-client-urls",
        &urls.advertise_client,
        "--listen-peer-urls",
        &urls.listen_peer,
        "--initial-advertise-peer-urls",
        &urls.advertise_peer,
        "--initial-cluster",
        initial_cluster,
        // Ignored once the data directory exists.
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        token,
        // Member records change with every role change: keep an hour of history.
        "--auto-compaction-retention",
        "1",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push("--data-dir".into());
    args.push(data.into());
    // A dead etcd leader is replaced within about half a second, before any lease renewal's
    // fence deadline (proto-notes/08-ha.md, "etcd's leader lost").
    args.extend([
        "--heartbeat-interval".into(),
        ETCD_HEARTBEAT_MS.to_string().into(),
    ]);
    args.extend([
        "--election-timeout".into(),
        ETCD_ELECTION_MS.to_string().into(),
    ]);
    if let Some(dir) = tls {
        let (cert, key, ca) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
            dir.join("ca.crt"),
        );
        // The same certificate serves clients and authenticates to peers; both sides require
        // one the cluster CA signed.
        for prefix in ["--", "--peer-"] {
            args.extend([
                format!("{prefix}cert-file").into(),
                cert.clone().into(),
                format!("{prefix}key-file").into(),
                key.clone().into(),
                format!("{prefix}trusted-ca-file").into(),
                ca.clone().into(),
                format!("{prefix}client-cert-auth").into(),
            ]);
        }
    }
    args
}

/// The etcd server binary: on PATH, else Debian's, else the cache's (fetched when missing).
/// etcd runs as the user pgrepl runs as, so the cache need not be open to user postgres.
async fn etcd_binary(fetch: &FetchPolicy) -> Result<PathBuf, HaError> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let installed = on_path
        .into_iter()
        .map(|dir| dir.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file());
    if let Some(binary) = installed {
        return Ok(binary);
    }
    let fetch = fetch.clone();
    tokio::task::spawn_blocking(move || crate::fetch::etcd(&fetch, None))
        .await
        .map_err(HaError::FetchStopped)?
        .map_err(HaError::from)
}

/// The member answers a linearizable read, which needs an elected leader with quorum.
async fn answers(url: String, options: etcd_client::ConnectOptions) -> bool {
    let limit = Duration::from_secs(1);
    let options = options.with_connect_timeout(limit).with_timeout(limit);
    let read = async {
        let mut client = etcd_client::Client::connect([url], Some(options))
            .await
            .ok()?;
        client.get("/pgrepl", None).await.ok()
    };
    matches!(tokio::time::timeout(limit * 2, read).await, Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_members_get_distinct_free_ports_below_the_ephemeral_range() {
        let avoid = [20001, 20002];
        let members = new_members(&avoid, false);
        let mut ports: Vec<u16> = members
            .iter()
            .flat_map(|m| [m.client_port, m.peer_port])
            .collect();
        assert!(ports
            .iter()
            .all(|p| LOCAL_ETCD_PORTS.contains(p) && !avoid.contains(p)));
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 2 * MEMBERS);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["etcd0", "etcd1", "etcd2"]);
    }
}
