//! Applications follow the primary with clients no one here wrote (issue 20): stock psql and
//! stock pgbench write through the addresses `up` prints, the cluster's multi-host URI
//! (`target_session_attrs=read-write`) and `[proxy]`'s HAProxy, across a switchover, a frozen
//! agent and the loss of the primary's machine, on both runtimes.
//!
//! - psql: one insert every 50 ms, each in a psql of its own (the retry loop of a shell
//!   script: a failed one is simply followed by the next), recording the timeline of the WAL it
//!   was written to (`pg_walfile_name`), which a promotion raises.
//! - pgbench: 1 s runs, one after another (pgbench aborts a client whose connection dies and
//!   retries only serialization failures), each counting what it says it committed.
//!
//! Checked: no write started after an acknowledgement on a newer timeline is acknowledged on
//! an older one (once the new primary has taken a write, the stranded old one never
//! acknowledges again, through either address); every acknowledged psql insert and at least
//! every transaction pgbench counted is on the final primary.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::cluster::TestCluster;
use crate::support::ha::api::http;
use crate::support::ha::up::{
    agent_logs, docker_ha_cluster, ha_cluster, lose_machine, pids_in, status_json, up_ok,
    with_proxy,
};
use crate::support::{capability, docker, eventually, harness, stderr};

/// A psql or pgbench waiting on a stranded primary gives up after this: long enough that
/// none is cut off before the old primary's agent resumes and stops its server.
const CLIENT_LIMIT: Duration = Duration::from_secs(20);
const PAUSE: Duration = Duration::from_millis(50);
/// Each fault must give writes to a new primary within this, through both addresses.
const OUTAGE_LIMIT: Duration = Duration::from_secs(30);

/// One acknowledged psql insert.
#[derive(Debug, Clone)]
struct Ack {
    writer: &'static str,
    seq: u64,
    /// When its psql started, and when it printed the acknowledgement.
    started: Instant,
    acked: Instant,
    timeline: u32,
}

/// One pgbench run that ended by itself: what it said it committed.
#[derive(Debug, Clone)]
struct BenchRun {
    run: u64,
    processed: u64,
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    runs: Vec<BenchRun>,
    /// Runs cut off at [`CLIENT_LIMIT`] (nothing they counted is known).
    cut_off: u64,
}

/// A program run with a deadline: its stdout, or `None` when it had to be killed.
fn run_within(mut command: Command, limit: Duration) -> Option<(bool, String)> {
    command
        .env("PGCONNECT_TIMEOUT", "2")
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE");
    let output = harness::output_within(&mut command, limit).ok()?;
    Some((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

struct Clients {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    /// psql and pgbench through each of `paths` (a name, a conninfo).
    fn start(bin: &std::path::Path, paths: &[(&'static str, String)]) -> Self {
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let script = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            script.path(),
            "INSERT INTO stock_bench(run) VALUES (:run);\n",
        )
        .unwrap();
        let script = Arc::new(script);
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut threads = Vec::new();
        for (name, conninfo) in paths {
            let (name, conninfo) = (*name, conninfo.clone());
            let (log2, stop2, psql) = (log.clone(), stop.clone(), bin.join("psql"));
            let conninfo2 = conninfo.clone();
            threads.push(std::thread::spawn(move || {
                let mut seq = 0;
                while !stop2.load(Ordering::Relaxed) {
                    seq += 1;
                    let mut command = Command::new(&psql);
                    command.args(["-X", "-A", "-t", "-q", "-c"]).arg(format!(
                        "INSERT INTO stock(writer, seq) VALUES ('{name}', {seq}) \
                         RETURNING pg_walfile_name(pg_current_wal_lsn())"
                    ));
                    command.arg(&conninfo2);
                    let started = Instant::now();
                    if let Some((true, out)) = run_within(command, CLIENT_LIMIT) {
                        let timeline = u32::from_str_radix(out.trim().get(..8).unwrap_or(""), 16)
                            .unwrap_or_else(|e| panic!("{name}: `{out}`: {e}"));
                        log2.lock().unwrap().acks.push(Ack {
                            writer: name,
                            seq,
                            started,
                            acked: Instant::now(),
                            timeline,
                        });
                    }
                    std::thread::sleep(PAUSE);
                }
            }));
            let (log2, stop2, pgbench) = (log.clone(), stop.clone(), bin.join("pgbench"));
            let (script, runs) = (script.clone(), runs.clone());
            threads.push(std::thread::spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    let run = runs.fetch_add(1, Ordering::Relaxed) + 1;
                    let mut command = Command::new(&pgbench);
                    command
                        .args([
                            "-n", "-T", "1", "-c", "2", "-j", "1", "-M", "prepared", "-D",
                        ])
                        .arg(format!("run={run}"))
                        .arg("-f")
                        .arg(script.path())
                        .arg(&conninfo);
                    match run_within(command, CLIENT_LIMIT) {
                        Some((_, out)) => {
                            // A run that could not connect prints no summary: it counted nothing.
                            let processed = out
                                .lines()
                                .find_map(|l| {
                                    l.strip_prefix("number of transactions actually processed: ")
                                })
                                .map_or(0, |n| {
                                    n.split('/').next().unwrap().trim().parse().unwrap()
                                });
                            log2.lock().unwrap().runs.push(BenchRun { run, processed });
                        }
                        None => log2.lock().unwrap().cut_off += 1,
                    }
                    std::thread::sleep(PAUSE);
                }
            }));
        }
        Clients { log, stop, threads }
    }

    /// Waits until `writer` has an acknowledgement on a timeline above `above`, and returns it.
    fn wait_timeline(&self, writer: &str, above: u32, since: Instant, what: &str) -> Ack {
        let wanted = format!("{what}: a write through `{writer}` on a timeline above {above}");
        eventually(&wanted, OUTAGE_LIMIT)
            .since(since)
            .every(Duration::from_millis(20))
            .until(|| {
                self.log
                    .lock()
                    .unwrap()
                    .acks
                    .iter()
                    .find(|a| a.writer == writer && a.timeline > above)
                    .cloned()
            })
    }

    fn stop(self) -> Log {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a client thread");
        }
        Arc::try_unwrap(self.log)
            .ok()
            .expect("no client left")
            .into_inner()
            .unwrap()
    }
}

/// What the test does to the machines of one runtime.
trait Machines {
    fn lose(&self, node: &str);
    /// SIGSTOP or SIGCONT to `node`'s agent only.
    fn signal_agent(&self, node: &str, signal: i32);
    fn logs(&self) -> String;
}

struct LocalMachines<'a>(&'a TestCluster);

impl Machines for LocalMachines<'_> {
    fn lose(&self, node: &str) {
        lose_machine(self.0, node);
    }
    fn signal_agent(&self, node: &str, signal: i32) {
        let pid = pids_in(&self.0.state_dir().join("agents"))
            .into_iter()
            .find(|(n, _)| n == node)
            .expect("the agent's pid file")
            .1;
        // SAFETY: kill(2) on this test cluster's agent.
        unsafe { libc::kill(pid, signal) };
    }
    fn logs(&self) -> String {
        agent_logs(self.0)
    }
}

struct DockerMachines;

impl Machines for DockerMachines {
    fn lose(&self, node: &str) {
        docker::kill(node);
    }
    fn signal_agent(&self, node: &str, signal: i32) {
        let pid = docker::agent_pid(node).expect("the agent's host pid");
        // SAFETY: kill(2) on this test cluster's agent.
        unsafe { libc::kill(pid, signal) };
    }
    fn logs(&self) -> String {
        ["pg_master", "pg_slave", "pg_asyncslave"]
            .map(|node| format!("--- {node}:\n{}", docker::logs(node)))
            .join("\n")
    }
}

/// Until every node is back in its place (the frozen agent's rejoined, the switched-over
/// primary streams from the new one) and a standby is promotable: the next fault then has a
/// successor. `status` exits 0 only then.
fn settle(cluster: &TestCluster, machines: &dyn Machines, after: &str) {
    eventually(
        &format!("the cluster to settle after the {after}"),
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(200))
    .showing(|| machines.logs())
    .until(|| {
        let out = cluster.pgrepl(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let promotable = status["ha"]["promotable"]
            .as_array()
            .is_some_and(|p| !p.is_empty());
        if out.status.success() && promotable {
            Ok(())
        } else {
            Err(format!("{status:#}"))
        }
    });
}

fn leader(cluster: &TestCluster) -> String {
    status_json(cluster)["ha"]["leader"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// psql as printed, as a superuser script would run it; panics on failure.
fn psql(bin: &std::path::Path, conninfo: &str, sql: &str) -> String {
    let mut command = Command::new(bin.join("psql"));
    command
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(conninfo);
    match run_within(command, CLIENT_LIMIT) {
        Some((true, out)) => out.trim().to_owned(),
        other => panic!("psql `{sql}` through {conninfo}: {other:?}"),
    }
}

/// The faults, the clients through both addresses, and the checks; `up` has run with
/// `[proxy]`.
fn clients_follow_the_primary(cluster: &TestCluster, machines: &dyn Machines) {
    let bin = harness::PgInstall::default_install().bin_dir;
    let status = status_json(cluster);
    let uri = status["uris"]["write"]
        .as_str()
        .expect("a write URI")
        .to_owned();
    let proxy = status["uris"]["proxy"]["write"]
        .as_str()
        .expect("the proxy's write URI")
        .to_owned();
    psql(
        &bin,
        &uri,
        "CREATE TABLE stock(writer text, seq int, PRIMARY KEY (writer, seq)); \
         CREATE TABLE stock_bench(run int)",
    );
    let clients = Clients::start(&bin, &[("proxy", proxy.clone()), ("uri", uri.clone())]);
    let timeline = |clients: &Clients, since| {
        let proxy = clients.wait_timeline("proxy", 0, since, "start");
        clients.wait_timeline("uri", 0, since, "start");
        proxy.timeline
    };
    let mut tl = timeline(&clients, Instant::now());
    let mut outages = Vec::new();
    let mut fault = |what: &str, tl: &mut u32, act: &dyn Fn() -> Instant| {
        let from = leader(cluster);
        let at = act();
        for path in ["proxy", "uri"] {
            let ack = clients.wait_timeline(path, *tl, at, what);
            outages.push(format!(
                "{what} of `{from}`: {:.2} s to the first write through the {path}",
                ack.acked.duration_since(at).as_secs_f64()
            ));
        }
        *tl = clients.wait_timeline("proxy", *tl, at, what).timeline;
    };

    fault("switchover", &mut tl, &|| {
        let at = Instant::now();
        let out = cluster.pgrepl(&["switchover"]);
        assert!(out.status.success(), "switchover: {}", stderr(&out));
        at
    });
    settle(cluster, machines, "switchover");
    fault("frozen agent", &mut tl, &|| {
        let frozen = leader(cluster);
        let at = Instant::now();
        machines.signal_agent(&frozen, libc::SIGSTOP);
        // The proxy leaves the frozen primary as soon as its checks go unanswered; the URI
        // finds it read-write until its agent resumes and stops it (twice the 2 s lease).
        std::thread::sleep(Duration::from_secs(4));
        machines.signal_agent(&frozen, libc::SIGCONT);
        at
    });
    settle(cluster, machines, "frozen agent");
    fault("machine loss", &mut tl, &|| {
        let lost = leader(cluster);
        let at = Instant::now();
        machines.lose(&lost);
        at
    });
    let log = clients.stop();
    for line in &outages {
        eprintln!("{line}");
    }
    // `history` lists the three role changes, each on the timeline the clients saw.
    let json = cluster.pgrepl(&["history", "--json"]);
    let history: serde_json::Value =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&json)));
    let kinds: Vec<(&str, u64)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["timeline"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("switchover", 2), ("failover", 3), ("failover", 4)],
        "{history:#}"
    );
    assert_eq!(u64::from(tl), 4);

    // Time never runs backwards for a client: nothing issued after an acknowledgement on a
    // newer timeline is acknowledged on an older one.
    for a in &log.acks {
        let stale: Vec<&Ack> = log
            .acks
            .iter()
            .filter(|b| b.started > a.acked && b.timeline < a.timeline)
            .collect();
        assert!(
            stale.is_empty(),
            "acknowledged on an older timeline after {a:?}: {stale:?}\n{}",
            machines.logs()
        );
    }
    // Every acknowledged insert is on the final primary, every counted transaction too.
    let final_uri = status_json(cluster)["uris"]["write"]
        .as_str()
        .unwrap()
        .to_owned();
    let rows: BTreeSet<(String, u64)> = psql(&bin, &final_uri, "SELECT writer, seq FROM stock")
        .lines()
        .map(|l| {
            let (w, s) = l.split_once('|').unwrap();
            (w.to_owned(), s.parse().unwrap())
        })
        .collect();
    let lost: Vec<&Ack> = log
        .acks
        .iter()
        .filter(|a| !rows.contains(&(a.writer.to_owned(), a.seq)))
        .collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    let counts: std::collections::BTreeMap<u64, u64> = psql(
        &bin,
        &final_uri,
        "SELECT run, count(*) FROM stock_bench GROUP BY run",
    )
    .lines()
    .map(|l| {
        let (r, n) = l.split_once('|').unwrap();
        (r.parse().unwrap(), n.parse().unwrap())
    })
    .collect();
    let short: Vec<(u64, u64, u64)> = log
        .runs
        .iter()
        .map(|r| (r.run, r.processed, counts.get(&r.run).copied().unwrap_or(0)))
        .filter(|(_, processed, found)| found < processed)
        .collect();
    assert!(
        short.is_empty(),
        "pgbench runs (run, counted, found) with committed transactions lost: {short:?}"
    );
    let counted: u64 = log.runs.iter().map(|r| r.processed).sum();
    eprintln!(
        "{} psql inserts and {counted} pgbench transactions ({} runs, {} cut off) acknowledged, none lost",
        log.acks.len(),
        log.runs.len(),
        log.cut_off
    );
    assert!(log.acks.len() > 40 && counted > 100, "the clients wrote");
}

#[test]
fn ha_clients_stock_psql_and_pgbench_follow_the_primary_through_the_uri_and_haproxy_on_local() {
    let test = "ha_clients_stock_psql_and_pgbench_follow_the_primary_on_local";
    if capability::tool(test, "haproxy", "apt-get install haproxy").is_none() {
        return;
    }
    let Some(cluster) = ha_cluster(test) else {
        return;
    };
    with_proxy(&cluster);
    up_ok(&cluster);
    clients_follow_the_primary(&cluster, &LocalMachines(&cluster));
    cluster.ok(&["down", "--purge"]);
}

#[test]
fn ha_clients_stock_psql_and_pgbench_follow_the_primary_through_the_uri_and_haproxy_on_docker() {
    let test = "ha_clients_stock_psql_and_pgbench_follow_the_primary_on_docker";
    let Some((_engine, cluster)) = docker_ha_cluster(test) else {
        return;
    };
    let (write_port, _) = with_proxy(&cluster);
    let up = cluster.pgrepl(&["up", "--image", docker::IMAGE]);
    assert!(
        up.status.success(),
        "{}\n{}",
        stderr(&up),
        DockerMachines.logs()
    );
    // HAProxy runs as a container on the cluster network; the agents' APIs are published.
    let said = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(said.contains(&format!(":{write_port}/")), "{said}");
    let status = status_json(&cluster);
    let api = status["ha"]["agents"][0]["api"]
        .as_str()
        .expect("the agent's published API");
    let ca = cluster.state_dir().join("tls/ca.crt");
    let (code, _) = http(api.parse().unwrap(), Some(&ca), "GET", "/primary").unwrap();
    assert_eq!(
        code, 200,
        "GET /primary on the leader's agent through {api}"
    );
    clients_follow_the_primary(&cluster, &DockerMachines);
    // `status` asks the container's stats socket which node each port reaches (not `ok`:
    // the lost node is still down).
    let leader = leader(&cluster);
    let text = String::from_utf8_lossy(&cluster.pgrepl(&["status"]).stdout).into_owned();
    assert!(text.contains(&format!("-> {leader};")), "{text}");
    let down = cluster.pgrepl(&["down", "--purge"]);
    assert!(down.status.success(), "{}", stderr(&down));
    let left = docker::docker(&["ps", "-a", "--format", "{{.Names}}"]);
    let names = String::from_utf8_lossy(&left.stdout);
    assert!(!names.contains("haproxy"), "containers left: {names}");
}
