//! `pgrepl lag` and `pgrepl status` on a real primary with two standbys made by
//! `pgrepl basebackup`: lag that covers the WAL a paused standby has not replayed, zero lag on an
//! idle primary, unreachable nodes, synchronous replication in words, the probe, and the time a
//! round takes.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::harness::{PgInstall, PgServer, ServerOptions};
use crate::support::standbys::{silent_node, Cluster};
use crate::support::{eventually, pgrepl_output, stderr};

fn standby<'r>(report: &'r Value, application_name: &str) -> &'r Value {
    report["standbys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["application_name"] == application_name)
        .unwrap_or_else(|| panic!("no standby `{application_name}` in {report:#}"))
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Polls the report until `check` holds, returning the report that satisfied it.
fn report_until(cluster: &Cluster, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(what, Duration::from_secs(30))
        .every(Duration::from_millis(200))
        .until(|| {
            let (_, report) = cluster.report(&[]);
            if check(&report) {
                Ok(report)
            } else {
                Err(format!("last report:\n{report:#}"))
            }
        })
}

fn all_stages_zero(s: &Value) -> bool {
    ["write", "flush", "replay"]
        .iter()
        .all(|stage| s[format!("{stage}_lag_bytes")] == 0 && s[format!("{stage}_lag_ms")] == 0.0)
}

#[test]
fn paused_replay_shows_the_pending_wal_and_returns_to_zero_on_resume() {
    let cluster = Cluster::start();
    cluster.b.psql("select pg_wal_replay_pause()");
    eventually("replay to pause", Duration::from_secs(30))
        .until(|| cluster.b.psql("select pg_is_wal_replay_paused()") == "t");
    let before = cluster.primary.psql("select pg_current_wal_lsn()");
    cluster.primary.psql(
        "create table filler as select g, repeat('x', 200) as pad from generate_series(1, 20000) g",
    );
    let after = cluster.primary.psql("select pg_current_wal_flush_lsn()");
    let generated = lsn(&after) - lsn(&before);
    assert!(generated > 4 << 20, "only {generated} bytes of WAL");

    // Both standbys receive everything; only b's replay stays behind.
    let report = report_until(
        &cluster,
        "standby_b to receive and standby_a to replay",
        |r| {
            standby(r, "standby_b")["flush_lag_bytes"] == 0
                && all_stages_zero(standby(r, "standby_a"))
        },
    );
    let b = standby(&report, "standby_b");
    let replay_lag = b["replay_lag_bytes"].as_u64().unwrap();
    assert!(
        replay_lag >= generated,
        "replay lag {replay_lag} < {generated} generated\n{report:#}"
    );
    assert_eq!(b["replay_paused"], true);
    assert_eq!(
        b["replay_lag_ms"],
        Value::Null,
        "a paused replay has no honest time lag"
    );
    assert_eq!(b["node"], Cluster::node_name(&cluster.b));
    assert_eq!(b["reachable"], true);

    // Over a byte limit: exit 1, and the human table says why.
    let limit = (generated / 2).to_string();
    let output = cluster.run("lag", &["--max-lag-bytes", &limit]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{table}{}", stderr(&output));
    assert!(table.contains("`standby_b` replay lag"), "{table}");
    assert!(table.contains("replay is paused"), "{table}");
    assert!(table.lines().all(|l| l.chars().count() <= 100), "{table}");
    let (code, _) = cluster.report(&["--max-lag-bytes", &(replay_lag + (1 << 20)).to_string()]);
    assert_eq!(code, 0);

    cluster.b.psql("select pg_wal_replay_resume()");
    let report = report_until(&cluster, "standby_b to catch up", |r| {
        all_stages_zero(standby(r, "standby_b"))
    });
    assert_eq!(standby(&report, "standby_b")["replay_paused"], false);
}

#[test]
fn an_idle_primary_shows_zero_time_lag() {
    let cluster = Cluster::start();
    cluster
        .primary
        .psql("create table t as select generate_series(1, 1000) g");
    // Long enough that "now - last replayed commit" is seconds, which is what a naive time lag
    // would show on an idle primary.
    std::thread::sleep(Duration::from_secs(3));
    let report = report_until(&cluster, "both standbys to be caught up", |r| {
        all_stages_zero(standby(r, "standby_a")) && all_stages_zero(standby(r, "standby_b"))
    });
    for name in ["standby_a", "standby_b"] {
        let s = standby(&report, name);
        assert!(
            s["last_xact_replay_age_ms"].as_f64().unwrap() > 2000.0,
            "{s:#}"
        );
        assert_eq!(s["state"], "streaming");
        assert_eq!(s["sync_state"], "async");
        assert_eq!(s["upstream"], Cluster::node_name(&cluster.primary));
    }
    assert_eq!(report["primary"], Cluster::node_name(&cluster.primary));
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let system = report["system_identifier"].as_str().unwrap();
    for (node, role) in nodes.iter().zip(["primary", "standby", "standby"]) {
        assert_eq!(node["role"], role, "{node:#}");
        assert_eq!(node["reachable"], true);
        assert_eq!(node["system_identifier"], system);
        assert_eq!(node["timeline"], 1);
        assert!(lsn(node["lsn"].as_str().unwrap()) > 0);
        assert!(
            !node["conninfo"].as_str().unwrap().contains("password"),
            "{node:#}"
        );
    }
    assert_eq!(report["problems"], Value::Array(vec![]));
}

#[test]
fn a_stopped_standby_is_unreachable_and_the_rest_still_show() {
    let mut cluster = Cluster::start();
    cluster.b.stop();
    let started = Instant::now();
    let (code, report) = cluster.report(&["--timeout", "2s"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 2, "{report:#}");
    let b_name = Cluster::node_name(&cluster.b);
    let b = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == b_name.as_str())
        .unwrap();
    assert_eq!(b["reachable"], false);
    assert_eq!(b["role"], "unknown");
    assert!(b["error"].as_str().unwrap().contains("refused"), "{b:#}");
    let listed = report["standbys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] == b_name.as_str())
        .unwrap();
    assert_eq!(listed["reachable"], false);
    let a = standby(&report, "standby_a");
    assert_eq!(a["reachable"], true);
    assert!(a["replay_lag_bytes"].is_u64());
    assert_eq!(report["problems"][0]["kind"], "unreachable");

    let output = cluster.run("status", &[]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text.contains("UNREACHABLE") && text.contains(&format!("`{b_name}` is unreachable")),
        "{text}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");
}

#[test]
fn status_explains_sync_replication_and_the_probe_times_the_heartbeat() {
    let cluster = Cluster::start();
    cluster
        .primary
        .psql("alter system set synchronous_standby_names = 'FIRST 1 (standby_a, standby_b)'");
    cluster.primary.psql("select pg_reload_conf()");
    let report = report_until(&cluster, "standby_a to become synchronous", |r| {
        standby(r, "standby_a")["sync_state"] == "sync"
            && standby(r, "standby_b")["sync_state"] == "potential"
    });
    assert_eq!(report["sync"]["sync"], serde_json::json!(["standby_a"]));
    assert_eq!(report["sync"]["commits_block"], false);

    let output = cluster.run("status", &[]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(
        text.contains("`standby_a` is synchronous (priority 1)"),
        "{text}"
    );
    assert!(
        text.contains("`standby_b` is a potential synchronous standby (priority 2)"),
        "{text}"
    );

    let (code, report) = cluster.report(&["--probe"]);
    assert_eq!(code, 0, "{report:#}");
    for name in ["standby_a", "standby_b"] {
        let ms = standby(&report, name)["probe_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("{report:#}"));
        assert!(ms > 0.0 && ms < 5000.0, "{ms}");
    }
    assert_eq!(cluster.a.psql("select count(*) from pgrepl_heartbeat"), "1");

    // With no sync candidate connected, commits would block, and a waiting commit is listed.
    cluster
        .primary
        .psql("alter system set synchronous_standby_names = 'nobody'");
    cluster.primary.psql("select pg_reload_conf()");
    let psql = std::process::Command::new(cluster.primary.install.bin("psql"))
        .args([
            "-X",
            "-q",
            "-d",
            &cluster.primary.superuser_conninfo(),
            "-c",
            "create table blocked(x int)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut waiting = psql;
    let report = report_until(&cluster, "a session waiting on SyncRep", |r| {
        r["sync"]["waiting_sessions"]
            .as_array()
            .is_some_and(|w| w.len() == 1)
    });
    assert_eq!(report["sync"]["commits_block"], true);
    let output = cluster.run("status", &[]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("commits block"), "{text}");
    assert!(
        text.contains("1 session is waiting for synchronous replication"),
        "{text}"
    );
    cluster
        .primary
        .psql("alter system reset synchronous_standby_names");
    cluster.primary.psql("select pg_reload_conf()");
    assert!(waiting.wait().unwrap().success());

    let output = cluster.run("lag", &["--prometheus"]);
    let metrics = String::from_utf8_lossy(&output.stdout);
    assert!(
        metrics.contains("# TYPE pgrepl_standby_lag_bytes gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgrepl_standby_lag_bytes{standby=\"standby_a\""),
        "{metrics}"
    );
}

/// The benchmark the issue asks for: `round_ms` is measured inside pgrepl (connect, both
/// sessions, all queries, on every node at once). Over the Unix sockets with trust auth, because
/// a debug build spends ~80 ms per session in unoptimized SCRAM (PBKDF2); the release binary
/// takes about 30 ms per round over TCP with SCRAM as well.
#[test]
fn one_round_over_three_nodes_takes_under_100_ms() {
    let cluster = Cluster::start();
    let nodes: Vec<String> = [&cluster.primary, &cluster.a, &cluster.b]
        .iter()
        .map(|s| s.superuser_conninfo())
        .collect();
    let mut rounds: Vec<f64> = (0..15)
        .map(|_| {
            let mut args = vec!["lag", "--json"];
            args.extend(nodes.iter().map(String::as_str));
            let output = pgrepl_output(&args, None);
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
            let report: Value = serde_json::from_slice(&output.stdout).unwrap();
            report["round_ms"].as_f64().unwrap()
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    let median = rounds[rounds.len() / 2];
    eprintln!(
        "one round over 3 nodes: median {median:.1} ms, fastest {:.1} ms, slowest {:.1} ms",
        rounds[0],
        rounds[rounds.len() - 1]
    );
    assert!(median < 100.0, "median round {median:.1} ms: {rounds:?}");
}

/// A node that accepts TCP connections and never answers costs one timeout; the others are
/// still shown, and the exit code says a node is unreachable.
#[test]
fn a_hanging_node_is_bounded_by_the_timeout() {
    let server = PgServer::start(&PgInstall::default_install(), ServerOptions::default());
    let (silent_port, held) = silent_node();
    let hanging = format!("host=127.0.0.1 port={silent_port} user=postgres sslmode=disable");
    let started = Instant::now();
    let output = pgrepl_output(
        &[
            "lag",
            "--json",
            "--timeout",
            "2s",
            &server.superuser_conninfo(),
            &hanging,
        ],
        None,
    );
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.iter().filter(|n| n["reachable"] == true).count(),
        1,
        "{report:#}"
    );
    assert_eq!(
        nodes.iter().filter(|n| n["reachable"] == false).count(),
        1,
        "{report:#}"
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the silent node was never contacted"
    );
}
