//! A real etcd cluster for tests: three members on loopback with free ports, data in a temp
//! dir, each one killable, stoppable and restartable. Secured as the etcd `up` starts: TLS to
//! clients and peers with certificates of a CA of its own, auth on, and scope `pgrepl`'s users
//! (the agents get `--etcd-ca`, `--etcd-cert` and `--etcd-key`). Panics with the missing
//! capability when the machine has no etcd binary (CI installs Debian's etcd-server). And a
//! test's reads and writes of any etcd's keys, as a client that gives up after a second.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgrepl::ha::etcd_access::{self, EtcdAccess, User};
use pgrepl::ha::{ETCD_ELECTION_MS, ETCD_HEARTBEAT_MS};

use crate::support::{eventually, harness};

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// The etcd server binary, or the test fails saying what to install.
pub(crate) fn etcd_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("missing capability `etcd`: apt-get install etcd-server"))
}

impl EtcdCluster {
    /// Starts `size` members, waits until every one reports healthy and makes scope
    /// `pgrepl`'s users.
    pub fn start(size: usize) -> EtcdCluster {
        let binary = etcd_binary();
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("etcd{i}"),
                client_port: harness::pick_port(),
                peer_port: harness::pick_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=https://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let names: Vec<(String, Vec<String>)> = members
            .iter()
            .map(|m| (m.name.clone(), vec!["127.0.0.1".to_owned()]))
            .collect();
        let leaves = etcd_access::leaves(dir.path(), "pgrepl", &names);
        pgrepl::cluster::tls::ensure(dir.path(), &leaves, None, true, false)
            .expect("etcd's certificates");
        let mut cluster = EtcdCluster {
            dir,
            binary,
            members,
            initial_cluster,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(etcd_access::provision(&cluster.root(), "pgrepl"))
            .expect("etcd's users and roles");
        cluster
    }

    /// How the test reaches etcd: as its root user.
    pub fn root(&self) -> EtcdAccess {
        self.access(User::Root)
    }

    pub fn access(&self, user: User) -> EtcdAccess {
        EtcdAccess::own(self.dir.path(), self.urls(), true, user)
    }

    /// The arguments that give a pgrepl command the agents' user and etcd's URLs.
    pub fn agent_args(&self) -> Vec<String> {
        let access = self.access(User::Agent);
        let tls = access.tls.expect("TLS");
        let (cert, key) = tls.identity.expect("a client certificate");
        let path = |p: &Path| p.display().to_string();
        vec![
            "--etcd".into(),
            self.endpoints(),
            "--etcd-ca".into(),
            path(&tls.ca),
            "--etcd-cert".into(),
            path(&cert),
            "--etcd-key".into(),
            path(&key),
        ]
    }

    fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("https://127.0.0.1:{}", m.client_port))
            .collect()
    }

    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let client = format!("https://127.0.0.1:{}", member.client_port);
        let peer = format!("https://127.0.0.1:{}", member.peer_port);
        let tls = tls_args(&etcd_access::members_dir(self.dir.path()), &member.name);
        let child = Command::new(&self.binary)
            .args(["--name", &member.name, "--data-dir"])
            .arg(self.dir.path().join(&member.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "pgrepl-test",
            ])
            // The Raft timing `up` gives its own etcd and the notes recommend.
            .args(["--heartbeat-interval", &ETCD_HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ETCD_ELECTION_MS.to_string()])
            .args(&tls)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// `https://127.0.0.1:PORT,...` for every member.
    pub fn endpoints(&self) -> String {
        self.urls().join(",")
    }

    /// SIGKILL to one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again with its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// True once the member answers a linearizable read (it has a leader), as etcd's
    /// /health does.
    pub fn healthy(&self, i: usize) -> bool {
        let root = self.root();
        let member = root.at(vec![root.endpoints[i].clone()]);
        etcd_answers(&member)
    }

    fn wait_healthy(&self, i: usize) {
        eventually(
            &format!("etcd member {i} to be healthy"),
            Duration::from_secs(30),
        )
        .showing(|| self.log_tail(i))
        .until(|| self.healthy(i));
    }

    pub fn log_tail(&self, i: usize) -> String {
        let path = self
            .dir
            .path()
            .join(format!("{}.log", self.members[i].name));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A member's TLS arguments, as `up` gives its own: its certificate (`<certs>/<name>.crt`) for
/// clients and peers, and both required to present one of the CA in `<certs>/ca.crt`.
pub(crate) fn tls_args(certs: &Path, name: &str) -> Vec<String> {
    let file = |name: String| certs.join(name).display().to_string();
    let mut args = Vec::new();
    for prefix in ["--", "--peer-"] {
        args.extend([
            format!("{prefix}cert-file"),
            file(format!("{name}.crt")),
            format!("{prefix}key-file"),
            file(format!("{name}.key")),
            format!("{prefix}trusted-ca-file"),
            file("ca.crt".into()),
            format!("{prefix}client-cert-auth"),
        ]);
    }
    args
}

/// Whether the member `member` reaches is etcd's leader (false when it does not answer in 1 s).
pub(crate) fn is_leader(member: &EtcdAccess) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = member.options().expect("etcd's credentials");
    runtime
        .block_on(async {
            let limit = Duration::from_secs(1);
            let connect = etcd_client::Client::connect(&member.endpoints, Some(options));
            let mut client = tokio::time::timeout(limit, connect).await.ok()?.ok()?;
            let status = tokio::time::timeout(limit, client.status())
                .await
                .ok()?
                .ok()?;
            Some(status.leader() == status.header()?.member_id())
        })
        .unwrap_or(false)
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A key's value from the first of `etcd`'s endpoints that answers within 1 s.
pub(crate) fn etcd_get(etcd: &EtcdAccess, key: &str) -> Option<String> {
    with_etcd(etcd, |mut client| async move {
        let response = client.get(key, None).await.ok()?;
        Some(
            response
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        )
    })?
}

/// Whether one of `etcd`'s endpoints answers a linearizable read within 1 s.
pub(crate) fn etcd_answers(etcd: &EtcdAccess) -> bool {
    with_etcd(etcd, |mut client| async move {
        client.get("/pgrepl-probe", None).await.ok().map(drop)
    })
    .is_some()
}

/// Puts `value` under `key` through the first of `etcd`'s endpoints that answers; whether it
/// did.
pub(crate) fn etcd_put(etcd: &EtcdAccess, key: &str, value: &str) -> bool {
    with_etcd(etcd, |mut client| async move {
        client.put(key, value, None).await.ok().map(|_| ())
    })
    .is_some()
}

/// `request` against the first of `etcd`'s endpoints that connects and answers within 1 s
/// each.
fn with_etcd<T, F>(etcd: &EtcdAccess, request: impl Fn(etcd_client::Client) -> F) -> Option<T>
where
    F: std::future::Future<Output = Option<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = etcd.options().expect("etcd's credentials");
    etcd.endpoints.iter().find_map(|endpoint| {
        runtime.block_on(async {
            let connect = etcd_client::Client::connect([endpoint], Some(options.clone()));
            let client = tokio::time::timeout(Duration::from_secs(1), connect)
                .await
                .ok()?
                .ok()?;
            tokio::time::timeout(Duration::from_secs(1), request(client))
                .await
                .ok()?
        })
    })
}
