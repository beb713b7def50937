//! Nodes on several machines: three network namespaces, each a "machine" with its own address
//! on a bridge, its own etcd member, agent, postgres, state directory and copy of the cluster
//! file. Nothing is shared but the network (and the file system, which nothing uses across
//! machines: each state directory is apart). The agents build the cluster from nothing; then
//! the primary's machine is cut off from the other two while its clients still reach it, and
//! healed. A writer in the root namespace records every acknowledged commit over TCP.
//!
//! Secured as across real machines (issue 21): one cluster CA, copied into each machine's state
//! directory, where its agent makes its node's server certificate; replication over TLS with
//! `verify-full`; etcd over TLS with client certificates and auth, given to the agents in
//! `[ha] etcd_ca`, `etcd_cert` and `etcd_key`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgrepl::cluster::tls::ca_dir;
use pgrepl::ha::etcd_access::{self, EtcdAccess, User};

use crate::support::etcd::{etcd_binary, etcd_get, tls_args};
use crate::support::ha::{
    assert_nothing_lost, assert_one_writer_at_a_time, signal_server, spawn_agent, HaNodes, Targets,
    Writer, WRITTEN_IDS,
};
use crate::support::harness::{self, PgInstall};
use crate::support::sql_tls::Tls;
use crate::support::{capability, eventually, PGREPL};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const SCOPE: &str = "hosts";
/// Every node's server port: each machine has its own port space.
const PG_PORT: u16 = 5432;
const WRITER_PASSWORD: &str = "writer";

/// Three machines as network namespaces on a bridge; removed with everything running in them
/// on drop, also when the test fails.
struct Machines {
    /// Names of this run's namespaces, bridge and links (the test process's pid).
    tag: u32,
    /// `10.213.N`: machine `i` is `.i+1`, the test process (on the bridge) `.254`.
    subnet: String,
    dirs: Vec<tempfile::TempDir>,
    /// The cluster CA and etcd's certificates, which the test made.
    certs: tempfile::TempDir,
    etcd: Vec<Option<Child>>,
    agents: Vec<Option<Child>>,
    forward_rule: bool,
}

impl Machines {
    fn namespace(&self, i: usize) -> String {
        format!("pgr{}n{}", self.tag, i + 1)
    }

    fn bridge(&self) -> String {
        format!("pgrb{}", self.tag)
    }

    fn address(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// The other machines' addresses, comma-separated (for iptables).
    fn others(&self, i: usize) -> String {
        (0..3)
            .filter(|&k| k != i)
            .map(|k| self.address(k))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn etcd_endpoints(&self) -> Vec<String> {
        (0..3)
            .map(|i| format!("https://{}:2379", self.address(i)))
            .collect()
    }

    fn etcd(&self, user: User) -> EtcdAccess {
        EtcdAccess::own(self.certs.path(), self.etcd_endpoints(), true, user)
    }

    fn forward_rule(&self) -> Vec<String> {
        let bridge = self.bridge();
        let bridge = bridge.as_str();
        ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
            .map(str::to_owned)
            .to_vec()
    }

    /// The bridge and three namespaces, each with a veth on the bridge.
    fn start() -> Machines {
        let tag = std::process::id();
        let mut machines = Machines {
            tag,
            subnet: format!("10.213.{}", 1 + tag % 250),
            dirs: Vec::new(),
            certs: tempfile::tempdir().unwrap(),
            etcd: vec![None, None, None],
            agents: vec![None, None, None],
            forward_rule: false,
        };
        let bridge = machines.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let gateway = format!("{}.254/24", machines.subnet);
        ip(&["addr", "add", &gateway, "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        // Bridged frames pass the root namespace's FORWARD chain (br_netfilter), whose policy
        // Docker sets to DROP.
        let mut insert = vec!["-I".to_owned()];
        insert.extend(machines.forward_rule());
        sh("iptables", &insert);
        machines.forward_rule = true;
        for i in 0..3 {
            let (ns, veth) = (machines.namespace(i), format!("pgr{tag}v{}", i + 1));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &veth, "master", &bridge, "up"]);
            let address = format!("{}/24", machines.address(i));
            ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            machines.dirs.push(harness::postgres_owned_tempdir());
        }
        machines
    }

    fn dir(&self, i: usize) -> PathBuf {
        self.dirs[i].path().to_owned()
    }

    /// A command run inside machine `i`.
    fn exec(&self, i: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec"])
            .arg(self.namespace(i))
            .arg(program);
        command
    }

    /// One etcd member per machine, on its address, with TLS and the cluster's users; waits
    /// until the cluster takes writes.
    fn start_etcd(&mut self) {
        let initial: Vec<String> = (0..3)
            .map(|i| format!("e{}=https://{}:2380", i + 1, self.address(i)))
            .collect();
        let members: Vec<(String, Vec<String>)> = (0..3)
            .map(|i| (format!("e{}", i + 1), vec![self.address(i)]))
            .collect();
        let leaves = etcd_access::leaves(self.certs.path(), SCOPE, &members);
        pgrepl::cluster::tls::ensure(self.certs.path(), &leaves, None, true, false).unwrap();
        let certs = etcd_access::members_dir(self.certs.path());
        for i in 0..3 {
            let (client, peer) = (
                format!("https://{}:2379", self.address(i)),
                format!("https://{}:2380", self.address(i)),
            );
            let tls = tls_args(&certs, &format!("e{}", i + 1));
            let log = std::fs::File::create(self.dir(i).join("etcd.log")).unwrap();
            let child = self
                .exec(i, &etcd_binary())
                .args(["--name", &format!("e{}", i + 1), "--data-dir"])
                .arg(self.dir(i).join("etcd"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "pgrepl-hosts"])
                .args(&tls)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd");
            self.etcd[i] = Some(child);
        }
        eventually("etcd to form a cluster", Duration::from_secs(30))
            .every(Duration::from_millis(200))
            .until(|| etcd_takes_writes(&self.etcd(User::Root)));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(etcd_access::provision(&self.etcd(User::Root), SCOPE))
            .unwrap();
    }

    /// Machine `i`'s copy of the cluster file and of the cluster CA, and its agent, which
    /// builds its node.
    fn start_agent(&mut self, i: usize) {
        let file = self.dir(i).join("pgrepl.toml");
        let ca = ca_dir(&self.dir(i).join(".pgrepl"));
        std::fs::create_dir_all(&ca).unwrap();
        for name in ["ca.crt", "ca.key"] {
            std::fs::copy(ca_dir(self.certs.path()).join(name), ca.join(name)).unwrap();
        }
        let text = cluster_file(&self.subnet, &self.etcd(User::Agent));
        std::fs::write(&file, text).unwrap();
        let pgrepl = self.exec(i, Path::new(PGREPL));
        let log = self.dir(i).join("agent.log");
        self.agents[i] = Some(spawn_agent(pgrepl, NODES[i], &file, &[], &log));
    }

    /// Drops every packet between machine `i` and the others (`-I`), or stops dropping
    /// (`-D`). The test process, on the bridge address, still reaches it.
    fn partition(&self, i: usize, flag: &str) {
        let others = self.others(i);
        for rule in [["INPUT", "-s"], ["OUTPUT", "-d"]] {
            let args = [flag, rule[0], rule[1], others.as_str(), "-j", "DROP"];
            let output = self
                .exec(i, std::path::Path::new("iptables"))
                .args(args)
                .output()
                .unwrap();
            assert!(output.status.success(), "iptables {args:?}: {output:?}");
        }
    }
}

impl HaNodes for Machines {
    fn name(&self, i: usize) -> &str {
        NODES[i]
    }

    /// psql as the superuser over machine `i`'s socket directory (a path, which network
    /// namespaces do not separate); `None` when the server does not answer.
    fn try_psql(&self, i: usize, sql: &str) -> Option<String> {
        let output = Command::new(PgInstall::default_install().bin("psql"))
            .arg("-h")
            .arg(self.dir(i).join(".pgrepl/run"))
            .args(["-p", &PG_PORT.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// As the reader the agents' etcd has for `status`.
    fn etcd_get(&self, key: &str) -> Option<String> {
        etcd_get(&self.etcd(User::Reader), &format!("/pgrepl/{SCOPE}/{key}"))
    }

    /// To machine `i`'s postmaster and its children.
    fn signal_postgres(&self, i: usize, signal: i32) {
        signal_server(
            &self.dir(i).join(format!(".pgrepl/{}/data", NODES[i])),
            signal,
        );
    }

    fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let log = std::fs::read_to_string(self.dir(i).join("agent.log"));
                format!("--- agent {}:\n{}", NODES[i], log.unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for child in self.agents.iter_mut().chain(self.etcd.iter_mut()).flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..self.dirs.len() {
            self.kill_postgres(i);
        }
        for i in 0..3 {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(i)])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("pgr{}v{}", self.tag, i + 1)])
                .output();
        }
        if self.forward_rule {
            let _ = Command::new("iptables")
                .arg("-D")
                .args(self.forward_rule())
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}

fn sh(program: &str, args: &[String]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn ip(args: &[&str]) -> Output {
    sh(
        "ip",
        &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    )
}

/// Root, iproute2 and iptables, and a kernel that lets us make a namespace; else a skip.
fn netns_capability(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        capability::skip(test, "netns", "network namespaces need root");
        return false;
    }
    let probe = format!("pgrprobe{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    let iptables = Command::new("iptables").args(["-S", "FORWARD"]).output();
    match (made, iptables) {
        (Ok(made), Ok(iptables)) if made.status.success() && iptables.status.success() => true,
        (made, iptables) => {
            capability::skip(
                test,
                "netns",
                &format!(
                    "`ip netns add` or `iptables` failed (apt-get install iproute2 iptables): {made:?} {iptables:?}"
                ),
            );
            false
        }
    }
}

/// True when a put through one of `etcd`'s endpoints commits (the cluster has a quorum).
fn etcd_takes_writes(etcd: &EtcdAccess) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = etcd.options().unwrap();
    etcd.endpoints.iter().any(|endpoint| {
        runtime.block_on(async {
            let work = async {
                let connect = etcd_client::Client::connect([endpoint], Some(options.clone()));
                let mut client = connect.await.ok()?;
                client.put("/pgrepl-test/health", "ok", None).await.ok()
            };
            matches!(
                tokio::time::timeout(Duration::from_secs(1), work).await,
                Ok(Some(_))
            )
        })
    })
}

/// The cluster file every machine gets a copy of: nodes on the machines' addresses, all on
/// port 5432, TLS on (the default), and the machines' etcd with the agents' credentials.
fn cluster_file(subnet: &str, etcd: &EtcdAccess) -> String {
    let nodes: String = NODES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let role = if i == 0 { "primary" } else { "standby" };
            format!(
                "[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nhost = \"{subnet}.{}\"\nport = {PG_PORT}\n\n",
                i + 1
            )
        })
        .collect();
    let tls = etcd.tls.as_ref().expect("etcd with TLS");
    let (cert, key) = tls.identity.as_ref().expect("a client certificate");
    let path = |p: &Path| p.display().to_string();
    let credentials = format!(
        "etcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
        path(&tls.ca),
        path(cert),
        path(key)
    );
    let urls: Vec<String> = etcd.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"runtime = "local"

[replication]
user = "replicator"
password = "pass"

[settings]
wal_level = "replica"
max_wal_senders = "4"
wal_log_hints = "on"
wal_keep_size = "256MB"

[sync]
method = "FIRST"
num_sync = 1
standbys = ["n2", "n3"]
synchronous_commit = "on"

[ha]
etcd = [{}]
scope = "{SCOPE}"
{credentials}
{nodes}"#,
        urls.join(", ")
    )
}

#[test]
fn ha_hosts_build_themselves_and_a_partitioned_primary_is_replaced_then_rejoins() {
    let test = "ha_hosts_build_themselves_and_a_partitioned_primary_is_replaced_then_rejoins";
    if !netns_capability(test) {
        return;
    }
    let mut machines = Machines::start();
    machines.start_etcd();

    // (a) From nothing: one agent per machine, each with its own file and state directory.
    let started = Instant::now();
    for i in 0..3 {
        machines.start_agent(i);
    }
    machines.wait_for(
        "n1 to lead with both standbys streaming",
        Duration::from_secs(120),
        // By name: while a standby is cloned, its base backup's WAL stream is a walsender in state
        // `streaming` too, so a bare count of 2 can pass before the second standby streams.
        |m| m.leader().as_deref() == Some("n1") && m.streams_from(1, 0) && m.streams_from(2, 0),
    );
    eprintln!(
        "bootstrap: {:.1} s from starting three agents on empty machines to n1 leading with n2 and n3 streaming",
        started.elapsed().as_secs_f64()
    );
    // Both standbys stream over TLS (verify-full against the CA each machine was given).
    assert_eq!(
        machines
            .try_psql(
                0,
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_replication r \
                 JOIN pg_stat_ssl s USING (pid) WHERE r.state = 'streaming' \
                 AND r.application_name IN ('n2', 'n3')"
            )
            .as_deref(),
        Some("2|2"),
        "{}",
        machines.logs()
    );
    // The writer's role, and pg_hba lines for it (on every node: each has its own file).
    let setup = format!(
        "CREATE ROLE writer LOGIN SUPERUSER PASSWORD '{WRITER_PASSWORD}'; CREATE TABLE ha_writes(id bigint PRIMARY KEY)"
    );
    assert!(
        machines.try_psql(0, &setup).is_some(),
        "{}",
        machines.logs()
    );
    for (i, node) in NODES.iter().enumerate() {
        let hba = machines
            .dir(i)
            .join(format!(".pgrepl/{node}/data/pg_hba.conf"));
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text.push_str(&format!(
            "host all writer {}.0/24 scram-sha-256\n",
            machines.subnet
        ));
        std::fs::write(&hba, text).unwrap();
        // A node just built may still be restarting under its agent: give it a moment.
        eventually(&format!("`{node}` to answer"), Duration::from_secs(15))
            .every(Duration::from_millis(200))
            .showing(|| machines.logs())
            .until(|| machines.try_psql(i, "SELECT pg_reload_conf()").is_some());
    }
    let nodes = (0..3)
        .map(|i| {
            let mut config = tokio_postgres::Config::new();
            config
                .host(machines.address(i))
                .port(PG_PORT)
                .user("writer")
                .password(WRITER_PASSWORD)
                .dbname("postgres")
                .connect_timeout(Duration::from_millis(500));
            config
        })
        .collect();
    let ca = ca_dir(machines.certs.path()).join("ca.crt");
    let writer = Writer::over(Targets {
        configs: nodes,
        tls: Some(Tls::trusting(&ca)),
    });
    let logs = || machines.logs();
    writer.wait_ack_or_show(
        Duration::from_secs(10),
        Instant::now(),
        |a| a.node == 0,
        logs,
    );
    std::thread::sleep(Duration::from_secs(1));

    // (b) n1's machine loses the other two (etcd peers and standbys); the writer still
    // reaches it.
    let cut = Instant::now();
    machines.partition(0, "-I");
    let first = writer.wait_ack_or_show(Duration::from_secs(30), cut, |a| a.node != 0, logs);
    let new = first.node;
    eprintln!(
        "partition: {:.2} s from the cut to the first acknowledged write on `{}`",
        first.at.duration_since(cut).as_secs_f64(),
        NODES[new]
    );
    assert_eq!(machines.leader().as_deref(), Some(NODES[new]));
    assert_ne!(
        machines
            .try_psql(0, "SELECT pg_is_in_recovery()")
            .as_deref(),
        Some("f"),
        "the cut-off primary still runs as a primary\n{}",
        machines.logs()
    );

    // (c) Healed: n1 rejoins as a standby of the new primary (a re-clone: no superuser session
    // to another machine for pg_rewind).
    let healed = Instant::now();
    machines.partition(0, "-D");
    machines.wait_for(
        "n1 to rejoin as a standby of the new primary",
        Duration::from_secs(90),
        |m| m.streams_from(0, new),
    );
    eprintln!(
        "heal: n1 streams from `{}` {:.1} s after the partition healed",
        NODES[new],
        healed.elapsed().as_secs_f64()
    );
    assert_eq!(
        machines
            .try_psql(0, "SELECT pg_is_in_recovery()")
            .as_deref(),
        Some("t")
    );
    let later = Instant::now();
    writer.wait_ack_or_show(Duration::from_secs(10), later, |a| a.node == new, logs);
    let acks = writer.stop();
    assert_nothing_lost(
        &acks,
        || machines.try_psql(new, WRITTEN_IDS).unwrap_or_default(),
        logs,
    );
    assert_one_writer_at_a_time(&acks, 0);
}
