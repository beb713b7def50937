//! A real etcd cluster for tests: three members on loopback with free ports, data in a temp
//! dir, each one killable, stoppable and restartable. Panics with the missing capability when
//! the machine has no etcd binary (CI installs Debian's etcd-server).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgrepl::ha::{ETCD_ELECTION_MS, ETCD_HEARTBEAT_MS};

use crate::harness;

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
    /// Starts `size` members and waits until every one reports healthy.
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
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            dir: tempfile::tempdir().expect("temp dir for etcd"),
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
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// `http://127.0.0.1:PORT,...` for every member.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
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

    /// True once the member answers /health with `"health":"true"` (it has a leader).
    pub fn healthy(&self, i: usize) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.members[i].client_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text.contains("\"health\":\"true\"")
    }

    fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.healthy(i) {
            assert!(
                Instant::now() < deadline,
                "etcd member {i} not healthy after 30 s:\n{}",
                self.log_tail(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// Whether the member at `endpoint` is etcd's leader (false when it does not answer in 1 s).
pub(crate) fn is_leader(endpoint: &str) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(async {
            let limit = Duration::from_secs(1);
            let connect = etcd_client::Client::connect([endpoint], None);
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

#[test]
fn a_three_member_etcd_keeps_quorum_with_one_member_down() {
    let mut etcd = EtcdCluster::start(3);
    assert!(etcd.endpoints().split(',').count() == 3);
    etcd.kill(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(etcd.healthy(0) && etcd.healthy(1)) {
        assert!(Instant::now() < deadline, "two members lost their leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd.kill(1);
    // Without quorum /health turns false within an election timeout or so.
    let deadline = Instant::now() + Duration::from_secs(15);
    while etcd.healthy(0) {
        assert!(
            Instant::now() < deadline,
            "a lone member still reports health"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    etcd.restart(1);
    assert!(etcd.healthy(0) && etcd.healthy(1));
}
