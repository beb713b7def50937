//! The agents' HTTP API against its documented codes in every role (leader, sync and async
//! standby, a stopped server, a paused cluster, a frozen agent), and HAProxy in front of it:
//! Patroni's own example configuration taken verbatim (ports aside), and the one `pgrepl
//! haproxy-config` prints, routing stock `psql` to the primary across a node loss.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::ha::api::{http, psql_lands, PASSWORD};
use crate::support::ha::{HaCluster, HaNodes, Targets, Writer, TTL};
use crate::support::sql_tls::Tls;
use crate::support::{capability, eventually, harness};

fn code(ha: &HaCluster, i: usize, path: &str) -> Option<u16> {
    http(ha.apis[i], ha.api_ca().as_deref(), "GET", path).map(|(code, _)| code)
}

/// The paths a role is judged by, and the codes Patroni documents for each.
const PATHS: [&str; 9] = [
    "/primary",
    "/leader",
    "/replica",
    "/read-only",
    "/sync",
    "/async",
    "/health",
    "/liveness",
    "/readiness",
];

fn codes(ha: &HaCluster, i: usize) -> Vec<Option<u16>> {
    PATHS.iter().map(|p| code(ha, i, p)).collect()
}

fn expect(codes: [u16; 9]) -> Vec<Option<u16>> {
    codes.iter().map(|c| Some(*c)).collect()
}

/// Waits until node `i` answers `want` on every path (the API follows the agent's last
/// probe, so a change shows within a loop or two).
fn wait_codes(ha: &HaCluster, i: usize, what: &str, want: [u16; 9]) {
    let want = expect(want);
    let what = format!("{what} (`{}`)", ha.nodes[i]);
    eventually(&what, Duration::from_secs(15))
        .showing(|| ha.logs())
        .until(|| {
            let got = codes(ha, i);
            if got == want {
                Ok(())
            } else {
                Err(format!("{PATHS:?}\n got  {got:?}\n want {want:?}"))
            }
        });
}

//                       prim lead repl  ro  sync async hlth live  rdy
const LEADER: [u16; 9] = [200, 200, 503, 200, 503, 503, 200, 200, 200];
const SYNC: [u16; 9] = [503, 503, 200, 200, 200, 503, 200, 200, 200];
const ASYNC: [u16; 9] = [503, 503, 200, 200, 503, 200, 200, 200, 200];
const STOPPED: [u16; 9] = [503, 503, 503, 503, 503, 503, 503, 200, 503];

#[test]
fn ha_api_answers_patronis_codes_in_every_role() {
    let ha = HaCluster::up();
    wait_codes(&ha, 0, "the leader", LEADER);
    // The cluster has TLS: the API is HTTPS only, with a certificate of the cluster CA.
    let ca = ha.api_ca().expect("the cluster CA");
    assert_eq!(
        http(ha.apis[0], None, "GET", "/primary"),
        None,
        "plain HTTP answered"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let leaf = pgrepl::cluster::tls::Leaf::server("other", elsewhere.path().join("n"), vec![]);
    pgrepl::cluster::tls::ensure(elsewhere.path(), &[leaf], None, true, false).unwrap();
    let other_ca = pgrepl::cluster::tls::ca_cert_path(elsewhere.path());
    assert_eq!(
        http(ha.apis[0], Some(&other_ca), "GET", "/primary"),
        None,
        "a client trusting another CA accepted the agent's certificate"
    );
    assert_eq!(
        http(ha.apis[0], Some(&ca), "GET", "/primary").map(|(code, _)| code),
        Some(200)
    );
    wait_codes(&ha, 1, "the sync standby", SYNC);
    wait_codes(&ha, 2, "the async standby", ASYNC);
    // HAProxy's `option httpchk` sends `OPTIONS /`: `/` is `/primary`, and no body.
    for (i, want) in [(0, 200), (1, 503), (2, 503)] {
        let (got, body) =
            http(ha.apis[i], ha.api_ca().as_deref(), "OPTIONS", "/").expect("an answer");
        assert_eq!(
            (got, body.as_str()),
            (want, ""),
            "OPTIONS / on {}",
            ha.nodes[i]
        );
    }
    // GET bodies in Patroni's words; /cluster and /history from etcd.
    let (_, body) = http(ha.apis[1], ha.api_ca().as_deref(), "GET", "/replica").unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["role"], "replica", "{status}");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["sync_standby"], true, "{status}");
    let (got, body) = http(ha.apis[2], ha.api_ca().as_deref(), "GET", "/cluster").unwrap();
    let cluster: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (got, &cluster["leader"]),
        (200, &serde_json::json!("pg_master"))
    );
    assert_eq!(
        cluster["agents"].as_array().map(Vec::len),
        Some(3),
        "{cluster}"
    );
    let (got, body) = http(ha.apis[0], ha.api_ca().as_deref(), "GET", "/history").unwrap();
    assert_eq!(got, 200);
    assert!(
        serde_json::from_str::<Vec<serde_json::Value>>(&body).is_ok(),
        "{body}"
    );

    // Paused: the leader keeps its key and its role; a standby whose server stops is left
    // stopped, and says so.
    ha.control_ok(&["pause"]);
    ha.kill_postgres(2);
    wait_codes(&ha, 2, "a stopped server while paused", STOPPED);
    wait_codes(&ha, 0, "the leader while paused", LEADER);
    ha.control_ok(&["resume"]);
    wait_codes(&ha, 2, "the async standby restarted", ASYNC);

    // A frozen agent answers nothing; once its lease lapsed a standby leads, and the old
    // agent, thawed, never claims the primary again.
    ha.signal_agent(0, libc::SIGSTOP);
    let frozen = Instant::now();
    assert_eq!(code(&ha, 0, "/primary"), None, "a frozen agent answers");
    let new = eventually(
        "a standby's /primary to answer 200",
        Duration::from_secs(15),
    )
    .since(frozen)
    .every(Duration::from_millis(50))
    .showing(|| ha.logs())
    .until(|| {
        [1, 2]
            .into_iter()
            .find(|&i| code(&ha, i, "/primary") == Some(200))
    });
    eprintln!(
        "/primary answers 200 on `{}` {:.2} s after the leader's agent froze (TTL {} s)",
        ha.nodes[new],
        frozen.elapsed().as_secs_f64(),
        TTL.as_secs()
    );
    ha.signal_agent(0, libc::SIGCONT);
    let thawed = Instant::now();
    while thawed.elapsed() < Duration::from_secs(3) {
        let got = code(&ha, 0, "/primary");
        assert_ne!(
            got,
            Some(200),
            "the thawed agent claims the primary\n{}",
            ha.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_codes(&ha, new, "the new leader", LEADER);
}

/// Patroni's example configuration (Debian's patroni package,
/// `/usr/share/doc/patroni/examples/haproxy.cfg`), ports aside: `option httpchk` with no
/// path, `inter 3s fall 3 rise 2`; with `ca`, the checks over TLS as for Patroni's REST API
/// with a certificate (`check-ssl verify required ca-file`).
fn patroni_example(
    write_port: u16,
    stats_port: u16,
    backends: &[(String, u16, u16)],
    ca: Option<&Path>,
) -> String {
    let mut text = format!(
        "global\n    maxconn 100\n\ndefaults\n    log global\n    mode tcp\n    retries 2\n    \
         timeout client 30m\n    timeout connect 4s\n    timeout server 30m\n    timeout check 5s\n\n\
         listen stats\n    mode http\n    bind 127.0.0.1:{stats_port}\n    stats enable\n    stats uri /\n\n\
         listen batman\n    bind 127.0.0.1:{write_port}\n    option httpchk\n    http-check expect status 200\n    \
         default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions\n"
    );
    let tls = ca.map_or(String::new(), |ca| {
        format!(" check-ssl verify required ca-file {}", ca.display())
    });
    for (name, port, api) in backends {
        text.push_str(&format!(
            "    server {name} 127.0.0.1:{port} maxconn 100 check port {api}{tls}\n"
        ));
    }
    text
}

struct Haproxy(Child);

impl Haproxy {
    fn start(config: &Path) -> Haproxy {
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        Haproxy(child)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stock psql through the proxy's `port`.
fn through(port: u16) -> Option<(String, String)> {
    psql_lands(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres"
    ))
}

fn wait_through(port: u16, what: &str, check: impl Fn(&(String, String)) -> bool) {
    eventually(what, Duration::from_secs(30)).until(|| through(port).as_ref().is_some_and(&check));
}

#[test]
fn ha_haproxy_with_patronis_configuration_or_pgrepls_routes_psql_to_the_primary() {
    if capability::tool(
        "ha_haproxy_with_patronis_configuration_or_pgrepls_routes_psql_to_the_primary",
        "haproxy",
        "apt-get install haproxy",
    )
    .is_none()
    {
        return;
    }
    let mut ha = HaCluster::up();
    wait_codes(&ha, 0, "the leader", LEADER);
    ha.try_psql(0, &format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"))
        .expect("a password for TCP sessions");
    let pick = harness::pick_port;
    let backends: Vec<(String, u16, u16)> = (0..3)
        .map(|i| (ha.nodes[i].clone(), ha.cluster.ports[i], ha.apis[i].port()))
        .collect();
    let dir = ha.cluster.dir.path().to_owned();
    // Patroni's, verbatim but for the ports.
    let patroni_port = pick();
    let patroni_cfg = dir.join("patroni-haproxy.cfg");
    std::fs::write(
        &patroni_cfg,
        patroni_example(patroni_port, pick(), &backends, ha.api_ca().as_deref()),
    )
    .unwrap();
    // pgrepl's: the agents' addresses are the test's own (`--api`), so they go in the file.
    let mut file = std::fs::read_to_string(&ha.cluster.file).unwrap();
    for (name, _, api) in &backends {
        let line = format!("name = \"{name}\"");
        assert!(file.contains(&line), "{file}");
        file = file.replacen(&line, &format!("{line}\napi = \"127.0.0.1:{api}\""), 1);
    }
    std::fs::write(&ha.cluster.file, file).unwrap();
    let (write_port, read_port) = (pick(), pick());
    let printed = ha.cluster.ok(&[
        "haproxy-config",
        "--write-port",
        &write_port.to_string(),
        "--read-port",
        &read_port.to_string(),
    ]);
    let pgrepl_cfg = dir.join("pgrepl-haproxy.cfg");
    std::fs::write(&pgrepl_cfg, &printed.stdout).unwrap();
    let _patroni = Haproxy::start(&patroni_cfg);
    let _pgrepl = Haproxy::start(&pgrepl_cfg);
    let master_port = ha.cluster.ports[0].to_string();
    for port in [patroni_port, write_port] {
        wait_through(port, "the write port reaches pg_master", |(r, p)| {
            r == "f" && *p == master_port
        });
    }
    wait_through(read_port, "the read port reaches a standby", |(r, _)| {
        r == "t"
    });

    // An application through pgrepl's proxy: a row every 50 ms, reconnecting on error.
    let mut proxy = tokio_postgres::Config::new();
    proxy
        .host("127.0.0.1")
        .port(write_port)
        .user("postgres")
        .password(PASSWORD)
        .dbname("postgres");
    let writer = Writer::over(Targets {
        configs: vec![proxy],
        tls: ha.api_ca().map(|ca| Tls::trusting(&ca)),
    });
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |_| true);

    // Node loss: both proxies move to the new primary.
    let killed = Instant::now();
    ha.kill_agent(0);
    ha.kill_postgres(0);
    // Both polled in turn, each time taken from the kill.
    let (mut ours, mut theirs) = (None, None);
    let (ours, theirs) = eventually(
        "both proxies to reach the new primary",
        Duration::from_secs(40),
    )
    .since(killed)
    .every(Duration::from_millis(50))
    .showing(|| ha.logs())
    .until(|| {
        for (port, reached) in [(write_port, &mut ours), (patroni_port, &mut theirs)] {
            let new_primary = |(r, p): &(String, String)| r == "f" && *p != master_port;
            if reached.is_none() && through(port).as_ref().is_some_and(new_primary) {
                *reached = Some(killed.elapsed());
            }
        }
        match (ours, theirs) {
            (Some(ours), Some(theirs)) => Ok((ours, theirs)),
            _ => Err(format!(
                "through pgrepl's checks {ours:?}, Patroni's {theirs:?}"
            )),
        }
    });
    // The old primary died with the kill: every acknowledgement after it is the new one's.
    let first = writer.wait_ack(&ha, Duration::from_secs(30), killed, |_| true);
    std::thread::sleep(Duration::from_millis(500));
    let acks = writer.stop();
    let new = (1..3)
        .find(|&i| ha.try_psql(i, "SELECT NOT pg_is_in_recovery()").as_deref() == Some("t"))
        .expect("a new primary");
    ha.assert_nothing_lost(new, &acks);
    eprintln!(
        "node loss → the writer through pgrepl's proxy: first acknowledged write {:.2} s after \
         the kill; {} acknowledged in all, 0 lost",
        first.at.duration_since(killed).as_secs_f64(),
        acks.len()
    );
    eprintln!(
        "node loss → psql through HAProxy reaches the new primary: {:.2} s with pgrepl's check \
         timing, {:.2} s with Patroni's example's (inter 3s fall 3 rise 2)",
        ours.as_secs_f64(),
        theirs.as_secs_f64()
    );
    assert!(ours < Duration::from_secs(10), "{}", ha.logs());
}
