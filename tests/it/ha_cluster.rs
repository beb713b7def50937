//! The HA test bench: a cluster built by `up`, a real 3-member etcd, an agent per node, and a
//! writer that records every acknowledged commit. Shared by the HA tests and the soak.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster_flow::TestCluster;
use crate::etcd::EtcdCluster;
use crate::ha_docker;
use crate::sql_tls::Tls;
use pgrepl::ha::etcd_access::{EtcdAccess, User};

/// The nodes of `pgrepl init`'s cluster file, the one most tests run.
pub(crate) const NODES: [&str; 3] = ["pg_master", "pg_slave", "pg_asyncslave"];
/// The agent's default lease TTL.
pub(crate) const TTL: Duration = Duration::from_secs(2);

/// How the test reaches the servers: the local runtime's socket directory, or the ports the
/// docker runtime's containers publish on 127.0.0.1, with the superuser's password.
#[derive(Debug, Clone)]
pub(crate) enum Reach {
    Socket(PathBuf),
    Tcp { password: String },
}

impl Reach {
    /// A session's settings for the node on `port`.
    fn config(&self, port: u16) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.port(port).user("postgres").dbname("postgres");
        match self {
            Reach::Socket(dir) => config.host_path(dir),
            Reach::Tcp { password } => config.host("127.0.0.1").password(password),
        };
        config
    }
}

/// The cluster's etcd: the test's own processes (local runtime), or the containers `up`
/// started (docker runtime, named `pgrepl-etcdN`).
pub(crate) enum Etcd {
    Processes(EtcdCluster),
    /// As etcd's root user (`up` made its certificate).
    Containers {
        root: EtcdAccess,
    },
}

impl Etcd {
    /// How the test reaches etcd: as its root user, whatever the agents may do.
    pub(crate) fn root(&self) -> EtcdAccess {
        match self {
            Etcd::Processes(etcd) => etcd.root(),
            Etcd::Containers { root } => root.clone(),
        }
    }

    /// SIGKILL to member `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        match self {
            Etcd::Processes(etcd) => etcd.kill(i),
            Etcd::Containers { .. } => ha_docker::kill(&etcd_container(i)),
        }
    }

    /// Starts a killed member again with its data, and waits until it answers.
    pub(crate) fn restart(&mut self, i: usize) {
        match self {
            Etcd::Processes(etcd) => etcd.restart(i),
            Etcd::Containers { root } => {
                ha_docker::start(&etcd_container(i));
                let member = root.at(vec![root.endpoints[i].clone()]);
                let deadline = Instant::now() + Duration::from_secs(30);
                // A key the agents wrote once, with no lease: a read of it needs quorum.
                while etcd_get(&member, "/pgrepl/pgrepl/config").is_none() {
                    assert!(
                        Instant::now() < deadline,
                        "{} did not answer",
                        etcd_container(i)
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Etcd {
    /// Whether member `i` is etcd's leader (false when it does not answer).
    pub(crate) fn is_leader(&self, i: usize) -> bool {
        let root = self.root();
        crate::etcd::is_leader(&root.at(vec![root.endpoints[i].clone()]))
    }

    /// The member that is etcd's leader, waiting up to `limit` for one.
    pub(crate) fn wait_leader(&self, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = (0..3).find(|&i| self.is_leader(i)) {
                return Some(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn etcd_container(i: usize) -> String {
    format!("pgrepl-etcd{i}")
}

/// A cluster built by `up`, a 3-member etcd, and an agent per node.
pub(crate) struct HaCluster {
    /// The cluster file's nodes in its order: node `i` is `nodes[i]` on `cluster.ports[i]`.
    pub(crate) nodes: Vec<String>,
    /// The local runtime's agents, this test's children.
    pub(crate) agents: Vec<Option<Child>>,
    pub(crate) etcd: Etcd,
    pub(crate) cluster: TestCluster,
    pub(crate) reach: Reach,
    /// On the docker runtime: each node's container runs its agent.
    pub(crate) docker: bool,
    /// Where each local agent serves its HTTP API (`--api`), in [`HaCluster::nodes`] order.
    pub(crate) apis: Vec<std::net::SocketAddr>,
}

impl HaCluster {
    /// On the local runtime, with the test's etcd and agents.
    pub(crate) fn up() -> HaCluster {
        HaCluster::up_with(str::to_owned)
    }

    /// [`HaCluster::up`] from the cluster file `edit` makes of `pgrepl init`'s (which may add
    /// nodes: the bench takes them from the file).
    pub(crate) fn up_with(edit: impl FnOnce(&str) -> String) -> HaCluster {
        HaCluster::up_with_args(edit, &[])
    }

    /// [`HaCluster::up_with`], giving `up` the arguments `extra` (`--pg-bin DIR`).
    pub(crate) fn up_with_args(edit: impl FnOnce(&str) -> String, extra: &[&str]) -> HaCluster {
        let mut cluster = TestCluster::new();
        let text = std::fs::read_to_string(&cluster.file).unwrap();
        std::fs::write(&cluster.file, edit(&text)).unwrap();
        let spec = pgrepl::cluster::spec::ClusterSpec::load(&cluster.file).expect("a valid file");
        let nodes: Vec<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
        cluster.ports = spec.nodes.iter().map(|n| n.port).collect();
        let up: Vec<&str> = std::iter::once("up").chain(extra.iter().copied()).collect();
        cluster.ok(&up);
        let reach = Reach::Socket(cluster.socket_dir());
        let apis = nodes
            .iter()
            .map(|_| std::net::SocketAddr::from(([127, 0, 0, 1], crate::harness::pick_port())))
            .collect();
        let mut ha = HaCluster {
            agents: nodes.iter().map(|_| None).collect(),
            apis,
            nodes,
            etcd: Etcd::Processes(EtcdCluster::start(3)),
            cluster,
            reach,
            docker: false,
        };
        ha.create_table();
        for i in 0..ha.nodes.len() {
            ha.start_agent(i);
        }
        ha.wait_for(
            "pg_master to lead with a sync record",
            Duration::from_secs(20),
            |ha| ha.leader().as_deref() == Some("pg_master") && ha.etcd_get("sync").is_some(),
        );
        ha
    }

    /// On the docker runtime as `up` builds it with `[ha]`: etcd containers, and each node's
    /// container running its agent.
    pub(crate) fn up_docker() -> HaCluster {
        let cluster = TestCluster::new();
        let text = std::fs::read_to_string(&cluster.file).unwrap();
        let docker = text.replacen("runtime = \"local\"", "runtime = \"docker\"", 1);
        std::fs::write(&cluster.file, format!("{docker}\n[ha]\n")).unwrap();
        cluster.ok(&["up", "--image", crate::cluster_docker::IMAGE]);
        let state = cluster.dir.path().join(".pgrepl");
        let read = |name: &str| std::fs::read_to_string(state.join(name)).unwrap();
        let endpoints = read("etcd/endpoints")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let root = EtcdAccess::own(&state, endpoints, true, User::Root);
        let ha = HaCluster {
            nodes: NODES.map(str::to_owned).to_vec(),
            agents: Vec::new(),
            etcd: Etcd::Containers { root },
            reach: Reach::Tcp {
                password: read("superuser.password").trim().to_owned(),
            },
            cluster,
            docker: true,
            apis: Vec::new(),
        };
        assert_eq!(ha.leader().as_deref(), Some("pg_master"));
        ha.create_table();
        ha
    }

    fn create_table(&self) {
        self.try_psql(0, "CREATE TABLE ha_writes(id bigint PRIMARY KEY)")
            .expect("create the writer's table");
    }

    /// The docker network the containers are on.
    pub(crate) fn network(&self) -> String {
        "pg_net".into()
    }

    fn log(&self, i: usize) -> PathBuf {
        self.cluster
            .dir
            .path()
            .join(format!("agent-{}.log", self.nodes[i]))
    }

    /// What node `i`'s agent logged so far.
    pub(crate) fn agent_log(&self, i: usize) -> String {
        if self.docker {
            return ha_docker::logs(&self.nodes[i]);
        }
        std::fs::read_to_string(self.log(i)).unwrap_or_default()
    }

    /// Starts node `i`'s agent again (docker: its container).
    pub(crate) fn start_agent(&mut self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// [`HaCluster::start_agent`] with `env` added to the agent's environment (local runtime:
    /// a container's is fixed when `up` creates it).
    pub(crate) fn start_agent_with(&mut self, i: usize, env: &[(&str, &str)]) {
        if self.docker {
            assert!(env.is_empty(), "an agent container's environment is `up`'s");
            ha_docker::start(&self.nodes[i]);
            return;
        }
        let mut pgrepl = Command::new(env!("CARGO_BIN_EXE_pgrepl"));
        pgrepl.envs(env.iter().copied());
        let mut etcd = self.etcd_args();
        etcd.extend(["--api".to_owned(), self.apis[i].to_string()]);
        let (file, log) = (&self.cluster.file, self.log(i));
        self.agents[i] = Some(spawn_agent(pgrepl, &self.nodes[i], file, &etcd, &log));
    }

    pub(crate) fn signal_agent(&self, i: usize, signal: i32) {
        let pid = if self.docker {
            ha_docker::agent_pid(&self.nodes[i]).expect("the agent runs in its container")
        } else {
            self.agents[i].as_ref().expect("agent running").id() as i32
        };
        // SAFETY: kill(2) on an agent of this test's cluster.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        if signal == libc::SIGSTOP {
            // kill(2) returns before every thread has stopped: until then the agent may still
            // answer (seen under load: a "frozen" agent's API answered 200).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !all_threads_stopped(pid) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "agent {pid} not stopped 5 s after SIGSTOP"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// SIGKILL to node `i`'s agent (docker: its container, the server with it).
    pub(crate) fn kill_agent(&mut self, i: usize) {
        if self.docker {
            ha_docker::kill(&self.nodes[i]);
            return;
        }
        if let Some(mut child) = self.agents[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether node `i`'s agent (local runtime) exited by itself.
    pub(crate) fn agent_exited(&mut self, i: usize) -> bool {
        let agent = self.agents[i].as_mut().map(Child::try_wait);
        matches!(agent, Some(Ok(Some(_))))
    }

    /// Node `i`'s data directory on this machine (docker: in its machine directory, which the
    /// container mounts).
    pub(crate) fn data_dir(&self, i: usize) -> PathBuf {
        let state = self.cluster.dir.path().join(".pgrepl");
        let node = &self.nodes[i];
        if self.docker {
            return state.join(format!("machines/{node}/state/{node}/data"));
        }
        state.join(format!("{node}/data"))
    }

    /// SIGKILL to the node's postmaster and its children; its agent lives.
    pub(crate) fn kill_postgres(&self, i: usize) {
        self.signal_postgres(i, libc::SIGKILL);
    }

    /// `signal` to every process of node `i`'s server; its agent is left alone.
    pub(crate) fn signal_postgres(&self, i: usize, signal: i32) {
        if self.docker {
            ha_docker::signal_postgres(&self.nodes[i], signal);
            return;
        }
        signal_server(&self.data_dir(i), signal);
    }

    /// The cluster CA the agents' HTTPS API is verified with (`None` without TLS).
    pub(crate) fn api_ca(&self) -> Option<PathBuf> {
        let ca = self.cluster.dir.path().join(".pgrepl/tls/ca.crt");
        ca.exists().then_some(ca)
    }

    /// A key's value, asking each etcd member in turn (some may be down).
    pub(crate) fn etcd_get(&self, key: &str) -> Option<String> {
        etcd_get(&self.etcd.root(), &format!("/pgrepl/pgrepl/{key}"))
    }

    /// Puts a key's value, through any etcd member that answers.
    pub(crate) fn etcd_put(&self, key: &str, value: &str) {
        let key = format!("/pgrepl/pgrepl/{key}");
        assert!(
            etcd_put(&self.etcd.root(), &key, value),
            "no etcd member took {key}"
        );
    }

    /// A pgrepl command against this cluster and its etcd (`--etcd`: the cluster file has no
    /// `[ha]`, so `up` starts no agents of its own).
    pub(crate) fn control(&self, args: &[&str]) -> std::process::Output {
        let etcd = self.etcd_args();
        let mut all = args.to_vec();
        all.extend(etcd.iter().map(String::as_str));
        self.cluster.pgrepl(&all)
    }

    /// `--etcd` and the agents' credentials (docker: the cluster's own, `up`'s).
    pub(crate) fn etcd_args(&self) -> Vec<String> {
        match &self.etcd {
            Etcd::Processes(etcd) => etcd.agent_args(),
            Etcd::Containers { root } => vec!["--etcd".into(), root.endpoints.join(",")],
        }
    }

    /// [`Self::control`] that must succeed.
    pub(crate) fn control_ok(&self, args: &[&str]) {
        let out = self.control(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            crate::basebackup::stderr(&out)
        );
    }

    pub(crate) fn leader(&self) -> Option<String> {
        node_of(&self.etcd_get("leader")?)
    }

    /// Session settings for each node, in [`NODES`] order, as the test reaches them, with TLS
    /// trusting the cluster CA where the nodes offer it.
    pub(crate) fn targets(&self) -> Targets {
        let ports = self.cluster.ports.iter();
        Targets {
            configs: ports.map(|port| self.reach.config(*port)).collect(),
            tls: self.api_ca().map(|ca| Tls::trusting(&ca)),
        }
    }

    /// psql running `sql` on node `i` as the superuser, not started yet.
    pub(crate) fn psql(&self, i: usize, sql: &str) -> Command {
        let mut psql = Command::new(crate::harness::PgInstall::default_install().bin("psql"));
        match &self.reach {
            Reach::Socket(dir) => psql.arg("-h").arg(dir),
            Reach::Tcp { password } => psql.args(["-h", "127.0.0.1"]).env("PGPASSWORD", password),
        };
        psql.arg("-p")
            .arg(self.cluster.ports[i].to_string())
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql]);
        psql
    }

    /// psql against node `i`, `None` when it does not answer.
    pub(crate) fn try_psql(&self, i: usize, sql: &str) -> Option<String> {
        let output = self.psql(i, sql).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// True when node `i` streams from node `primary`.
    pub(crate) fn streams_from(&self, i: usize, primary: usize) -> bool {
        self.try_psql(
            primary,
            &format!(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{}' AND state = 'streaming'",
                self.nodes[i]
            ),
        )
        .as_deref()
            == Some("1")
    }

    pub(crate) fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&HaCluster) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                format!(
                    "--- agent {}:\n{}{}",
                    self.nodes[i],
                    self.agent_log(i),
                    self.server_log_tail(i)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The end of node `i`'s server log on the local runtime: it goes with the test's
    /// directory once the failure is shown, and says what a slow promotion or restart waited on.
    fn server_log_tail(&self, i: usize) -> String {
        const LINES: usize = 40;
        if self.docker {
            return String::new();
        }
        let path = self
            .cluster
            .dir
            .path()
            .join(format!(".pgrepl/{}/postgres.log", self.nodes[i]));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LINES)..].join("\n");
        format!(
            "--- postgres {}, last {LINES} lines:\n{tail}\n",
            self.nodes[i]
        )
    }

    /// Every acknowledged id is on node `i` (a standby gets a few seconds to replay them).
    pub(crate) fn assert_nothing_lost(&self, i: usize, acks: &[Ack]) {
        assert_nothing_lost(
            acks,
            || self.try_psql(i, WRITTEN_IDS).unwrap_or_default(),
            || self.logs(),
        );
    }
}

/// `signal` to the postmaster of the data directory `data` and its children; nothing when it
/// has no postmaster.pid.
pub(crate) fn signal_server(data: &Path, signal: i32) {
    let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
    else {
        return;
    };
    let children = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for victim in children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .chain([pid])
    {
        // SAFETY: kill(2) on a test cluster's server processes.
        unsafe { libc::kill(victim, signal) };
    }
}

/// The ids in `ha_writes`, comma-separated.
pub(crate) const WRITTEN_IDS: &str = "SELECT string_agg(id::text, ',') FROM ha_writes";

/// Every acknowledged id is among those `ids` returns ([`WRITTEN_IDS`] on the node that should
/// hold them; a standby gets a few seconds to replay them).
pub(crate) fn assert_nothing_lost(
    acks: &[Ack],
    ids: impl Fn() -> String,
    logs: impl Fn() -> String,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ids = ids();
        let present: std::collections::HashSet<i64> =
            ids.split(',').filter_map(|t| t.parse().ok()).collect();
        let lost: Vec<i64> = acks
            .iter()
            .map(|a| a.id)
            .filter(|id| !present.contains(id))
            .collect();
        if lost.is_empty() {
            eprintln!("{} acknowledged commits, 0 lost", acks.len());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged commits lost: {lost:?}\n{}",
            lost.len(),
            acks.len(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
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

/// The `node` of a leader record.
pub(crate) fn node_of(record: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(record).ok()?;
    value["node"].as_str().map(str::to_owned)
}

/// Starts `pgrepl -v agent --node NODE --cluster FILE EXTRA...` through `pgrepl` (the binary,
/// or its run in a network namespace), stderr appended to `log`.
pub(crate) fn spawn_agent(
    mut pgrepl: Command,
    node: &str,
    file: &Path,
    extra: &[String],
    log: &Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    pgrepl
        .args(["-v", "agent", "--node", node, "--cluster"])
        .arg(file)
        .args(extra)
        .env_remove("PGPASSWORD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pgrepl agent")
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        if self.docker {
            // A stopped agent would hold `down` (in TestCluster's drop) for its whole timeout.
            for node in &self.nodes {
                if let Some(pid) = ha_docker::agent_pid(node) {
                    // SAFETY: kill(2) on an agent of this test's cluster.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }
            }
            return;
        }
        for i in 0..self.agents.len() {
            if let Some(child) = &self.agents[i] {
                // A stopped agent cannot die of SIGKILL until it runs again.
                // SAFETY: kill(2) on a child this test spawned.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            }
            self.kill_agent(i);
            // A server a failed test left stopped would ignore `down` and outlive the test,
            // holding its port and any lock file the test's runner passed down.
            self.signal_postgres(i, libc::SIGCONT);
        }
    }
}

/// One commit the server acknowledged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    pub(crate) id: i64,
    pub(crate) node: usize,
    /// When the transaction was sent (a commit in flight at a fault may be acknowledged after
    /// it).
    pub(crate) sent: Instant,
    pub(crate) at: Instant,
    /// Which of the writer's sessions (counted from 1) it came through.
    pub(crate) session: u32,
}

/// An acknowledgement slower than this counts as none: the client looks for the primary again
/// (a stranded old primary never answers).
pub(crate) const COMMIT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a writer's clients share: the acknowledgements, the id and session counters, the stop
/// flag.
#[derive(Clone, Default)]
pub(crate) struct AckLog {
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    ids: Arc<AtomicI64>,
    sessions: Arc<AtomicU32>,
}

impl AckLog {
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// An id no other transaction of this writer gets.
    pub(crate) fn next_id(&self) -> i64 {
        self.ids.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records an acknowledged commit. `at` is read under the lock, so the log is in `at` order
    /// however many clients record into it.
    pub(crate) fn record(&self, id: i64, session: &Session, sent: Instant) {
        let mut acks = self.acks.lock().unwrap();
        acks.push(Ack {
            id,
            node: session.node,
            sent,
            at: Instant::now(),
            session: session.number,
        });
    }
}

/// A writer's session on the node that took writes when it connected.
pub(crate) struct Session {
    pub(crate) node: usize,
    pub(crate) client: tokio_postgres::Client,
    /// Counted from 1 over all the writer's clients.
    pub(crate) number: u32,
}

/// A session on the first of `nodes` that takes writes, searching from `start` round to it
/// again; `None` when none does. A client starts after the node that last failed it, as a
/// client with several hosts does, since a stranded old primary still says it takes writes.
pub(crate) async fn open_session(targets: &Targets, start: usize, log: &AckLog) -> Option<Session> {
    let nodes = &targets.configs;
    for node in (0..nodes.len()).map(|k| (start + k) % nodes.len()) {
        let Some(client) = targets.connect(node).await else {
            continue;
        };
        let writable = client
            .query_one("SELECT NOT pg_is_in_recovery()", &[])
            .await;
        if writable.is_ok_and(|row| row.get::<_, bool>(0)) {
            let number = log.sessions.fetch_add(1, Ordering::SeqCst) + 1;
            return Some(Session {
                node,
                client,
                number,
            });
        }
    }
    None
}

/// Where the tests' writers connect: each node's settings (node `i` of an [`Ack`] is
/// `configs[i]`), and TLS when the servers offer it (over TCP; a socket has none).
#[derive(Clone)]
pub(crate) struct Targets {
    pub(crate) configs: Vec<tokio_postgres::Config>,
    pub(crate) tls: Option<Tls>,
}

impl Targets {
    /// A session on node `i` within 500 ms, driven on a task of its own.
    pub(crate) async fn connect(&self, i: usize) -> Option<tokio_postgres::Client> {
        let limit = Duration::from_millis(500);
        let config = &self.configs[i];
        match &self.tls {
            Some(tls) => {
                let connect = config.connect(tls.clone());
                let (client, connection) = tokio::time::timeout(limit, connect).await.ok()?.ok()?;
                tokio::spawn(connection);
                Some(client)
            }
            None => {
                let connect = config.connect(tokio_postgres::NoTls);
                let (client, connection) = tokio::time::timeout(limit, connect).await.ok()?.ok()?;
                tokio::spawn(connection);
                Some(client)
            }
        }
    }
}

/// Writes into whichever node takes writes and records each acknowledgement: a row every 50 ms
/// ([`Writer::start`]), or the load a caller gives ([`Writer::spawn`]).
/// No statement_timeout: a cancelled wait for the sync standby would report the commit as done.
pub(crate) struct Writer {
    log: AckLog,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Writes as the superuser to the cluster's nodes, as the test reaches them.
    pub(crate) fn start(ha: &HaCluster) -> Writer {
        Writer::over(ha.targets())
    }

    /// Writes through `targets`, e.g. over TCP.
    pub(crate) fn over(targets: Targets) -> Writer {
        Writer::spawn(move |log| write_loop(targets, log))
    }

    /// Runs the load `run` makes, on a thread of its own, until [`Writer::stop`].
    pub(crate) fn spawn<F>(run: impl FnOnce(AckLog) -> F + Send + 'static) -> Writer
    where
        F: std::future::Future<Output = ()>,
    {
        let log = AckLog::default();
        let thread = {
            let log = log.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run(log));
            })
        };
        Writer {
            log,
            thread: Some(thread),
        }
    }

    pub(crate) fn acks(&self) -> Vec<Ack> {
        self.log.acks.lock().unwrap().clone()
    }

    /// How many sessions the writer opened so far: an [`Ack`] with a higher `session` came
    /// through one opened later.
    pub(crate) fn sessions(&self) -> u32 {
        self.log.sessions.load(Ordering::SeqCst)
    }

    /// The first acknowledgement after `since` that satisfies `pred`.
    pub(crate) fn wait_ack(
        &self,
        ha: &HaCluster,
        limit: Duration,
        since: Instant,
        pred: impl Fn(&Ack) -> bool,
    ) -> Ack {
        self.wait_ack_or_show(limit, since, pred, || ha.logs())
    }

    /// [`Writer::wait_ack`], showing `logs` when none comes.
    pub(crate) fn wait_ack_or_show(
        &self,
        limit: Duration,
        since: Instant,
        pred: impl Fn(&Ack) -> bool,
        logs: impl Fn() -> String,
    ) -> Ack {
        self.first_ack(limit, since, pred)
            .unwrap_or_else(|| panic!("no acknowledged write within {limit:?}\n{}", logs()))
    }

    /// The first acknowledgement after `since` that satisfies `pred`, waiting up to `limit`;
    /// `None` when none came, for a test that reports what happened before it fails.
    pub(crate) fn first_ack(
        &self,
        limit: Duration,
        since: Instant,
        pred: impl Fn(&Ack) -> bool,
    ) -> Option<Ack> {
        let deadline = Instant::now() + limit;
        loop {
            let found = {
                let acks = self.log.acks.lock().unwrap();
                // The log is in `at` order: a loaded writer's is too long to scan or copy
                // every 20 ms.
                let from = acks.partition_point(|a| a.at <= since);
                acks[from..].iter().find(|a| pred(a)).copied()
            };
            if found.is_some() {
                return found;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn stop(mut self) -> Vec<Ack> {
        self.log.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.acks()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.log.stop.store(true, Ordering::SeqCst);
    }
}

async fn write_loop(nodes: Targets, log: AckLog) {
    let mut session: Option<Session> = None;
    let mut start = 0;
    while !log.stopped() {
        if session.is_none() {
            session = open_session(&nodes, start, &log).await;
        }
        if let Some(open) = &session {
            let id = log.next_id();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let sent = Instant::now();
            let insert = open
                .client
                .execute("INSERT INTO ha_writes(id) VALUES ($1)", &params);
            match tokio::time::timeout(COMMIT_TIMEOUT, insert).await {
                Ok(Ok(_)) => log.record(id, open, sent),
                // Not acknowledged (an error, or no answer in time): look for the primary again.
                _ => {
                    start = open.node + 1;
                    session = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After the first acknowledgement on another node, `old` never acknowledged again.
pub(crate) fn assert_one_writer_at_a_time(acks: &[Ack], old: usize) {
    let Some(first_new) = acks.iter().find(|a| a.node != old) else {
        return;
    };
    let late: Vec<&Ack> = acks
        .iter()
        .filter(|a| a.node == old && a.at > first_new.at)
        .collect();
    assert!(
        late.is_empty(),
        "the old primary acknowledged after the new one took writes: {late:?}"
    );
}

/// Every thread of `pid` is stopped (state `T` in /proc/PID/task/TID/stat).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
        })
    })
}
