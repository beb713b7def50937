//! The HA test bench: a cluster built by `up`, a real 3-member etcd and an agent per node, on
//! the local runtime (the test's own etcd and agents) or the docker runtime (`up`'s). Shared by
//! the HA tests and the soak.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgrepl::ha::etcd_access::{EtcdAccess, User};

use crate::support::cluster::TestCluster;
use crate::support::etcd::{self, etcd_get, etcd_put, EtcdCluster};
use crate::support::ha::{assert_nothing_lost, signal_server, Ack, HaNodes, Targets, WRITTEN_IDS};
use crate::support::harness::{self, PgInstall};
use crate::support::sql_tls::Tls;
use crate::support::{docker, eventually, pgrepl, stderr};

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
            Etcd::Containers { .. } => docker::kill(&etcd_container(i)),
        }
    }

    /// Starts a killed member again with its data, and waits until it answers.
    pub(crate) fn restart(&mut self, i: usize) {
        match self {
            Etcd::Processes(etcd) => etcd.restart(i),
            Etcd::Containers { root } => {
                docker::start(&etcd_container(i));
                let member = root.at(vec![root.endpoints[i].clone()]);
                // A key the agents wrote once, with no lease: a read of it needs quorum.
                let what = format!("{} to answer", etcd_container(i));
                eventually(&what, Duration::from_secs(30))
                    .until(|| etcd_get(&member, "/pgrepl/pgrepl/config").is_some());
            }
        }
    }
}

impl Etcd {
    /// Whether member `i` is etcd's leader (false when it does not answer).
    pub(crate) fn is_leader(&self, i: usize) -> bool {
        let root = self.root();
        etcd::is_leader(&root.at(vec![root.endpoints[i].clone()]))
    }

    /// The member that is etcd's leader, waiting up to `limit` for one.
    pub(crate) fn wait_leader(&self, limit: Duration) -> Option<usize> {
        eventually("etcd's leader", limit)
            .every(Duration::from_millis(20))
            .try_until(|| (0..3).find(|&i| self.is_leader(i)))
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
            .map(|_| std::net::SocketAddr::from(([127, 0, 0, 1], harness::pick_port())))
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
        cluster.ok(&["up", "--image", docker::IMAGE]);
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
            return docker::logs(&self.nodes[i]);
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
            docker::start(&self.nodes[i]);
            return;
        }
        let mut pgrepl = pgrepl();
        pgrepl.envs(env.iter().copied());
        let mut etcd = self.etcd_args();
        etcd.extend(["--api".to_owned(), self.apis[i].to_string()]);
        let (file, log) = (&self.cluster.file, self.log(i));
        self.agents[i] = Some(spawn_agent(pgrepl, &self.nodes[i], file, &etcd, &log));
    }

    pub(crate) fn signal_agent(&self, i: usize, signal: i32) {
        let pid = if self.docker {
            docker::agent_pid(&self.nodes[i]).expect("the agent runs in its container")
        } else {
            self.agents[i].as_ref().expect("agent running").id() as i32
        };
        // SAFETY: kill(2) on an agent of this test's cluster.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        if signal == libc::SIGSTOP {
            // kill(2) returns before every thread has stopped: until then the agent may still
            // answer (seen under load: a "frozen" agent's API answered 200).
            eventually(
                &format!("agent {pid} to stop after SIGSTOP"),
                Duration::from_secs(5),
            )
            .every(Duration::from_millis(1))
            .until(|| all_threads_stopped(pid));
        }
    }

    /// SIGKILL to node `i`'s agent (docker: its container, the server with it).
    pub(crate) fn kill_agent(&mut self, i: usize) {
        if self.docker {
            docker::kill(&self.nodes[i]);
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

    /// The cluster CA the agents' HTTPS API is verified with (`None` without TLS).
    pub(crate) fn api_ca(&self) -> Option<PathBuf> {
        let ca = self.cluster.dir.path().join(".pgrepl/tls/ca.crt");
        ca.exists().then_some(ca)
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
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
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
        let mut psql = Command::new(PgInstall::default_install().bin("psql"));
        match &self.reach {
            Reach::Socket(dir) => psql.arg("-h").arg(dir),
            Reach::Tcp { password } => psql.args(["-h", "127.0.0.1"]).env("PGPASSWORD", password),
        };
        psql.arg("-p")
            .arg(self.cluster.ports[i].to_string())
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql]);
        psql
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

impl HaNodes for HaCluster {
    fn name(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    fn try_psql(&self, i: usize, sql: &str) -> Option<String> {
        let output = self.psql(i, sql).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn etcd_get(&self, key: &str) -> Option<String> {
        etcd_get(&self.etcd.root(), &format!("/pgrepl/pgrepl/{key}"))
    }

    fn signal_postgres(&self, i: usize, signal: i32) {
        if self.docker {
            docker::signal_postgres(&self.nodes[i], signal);
            return;
        }
        signal_server(&self.data_dir(i), signal);
    }

    fn logs(&self) -> String {
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
                if let Some(pid) = docker::agent_pid(node) {
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
