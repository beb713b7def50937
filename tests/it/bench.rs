//! `pgrepl bench` on a real primary with two standbys: every mode runs and commits, the JSON has
//! one entry per mode, the plot is drawn, and the primary's settings are back as they were
//! afterwards, also when the run is interrupted.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::harness::PgServer;
use crate::support::standbys::Cluster;
use crate::support::{eventually, pgrepl, pgrepl_output, stderr};

/// What the run must leave as it found: both settings and postgresql.auto.conf.
fn settings(primary: &PgServer) -> (String, String) {
    let shown = primary.psql(
        "select current_setting('synchronous_standby_names') || '|' || current_setting('synchronous_commit')",
    );
    let auto_conf = std::fs::read_to_string(primary.data_dir.join("postgresql.auto.conf")).unwrap();
    (shown, auto_conf)
}

#[test]
fn every_mode_commits_and_the_settings_are_restored() {
    let cluster = Cluster::start();
    // A value of its own in postgresql.auto.conf, which must come back exactly.
    cluster
        .primary
        .psql("alter system set synchronous_commit = 'local'");
    cluster.primary.psql("select pg_reload_conf()");
    eventually("the reload", Duration::from_secs(10))
        .until(|| cluster.primary.psql("show synchronous_commit") == "local");
    let before = settings(&cluster.primary);
    let work = tempfile::tempdir().unwrap();
    let plot = work.path().join("bench.svg");
    let nodes = cluster.nodes();
    let mut args: Vec<&str> = vec!["bench"];
    args.extend(nodes.iter().map(String::as_str));
    args.extend([
        "--clients",
        "2",
        "--duration",
        "2",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let output = pgrepl_output(&args, None);
    assert!(
        output.status.success(),
        "pgrepl bench failed: {}",
        stderr(&output)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let modes: Vec<&str> = report["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mode"].as_str().unwrap())
        .collect();
    assert_eq!(
        modes,
        ["async", "remote_write", "on", "remote_apply", "any1"]
    );
    for mode in report["modes"].as_array().unwrap() {
        assert!(mode["tps"].as_f64().unwrap() > 0.0, "{mode}");
        assert!(mode["wal_bytes"].as_u64().unwrap() > 0, "{mode}");
        let standbys: Vec<&str> = mode["standbys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(standbys, ["standby_a", "standby_b"], "{mode}");
        for standby in mode["standbys"].as_array().unwrap() {
            assert!(!standby["samples"].as_array().unwrap().is_empty());
            assert!(standby["catch_up_ms"].is_number(), "{standby}");
        }
    }
    assert_eq!(
        report["modes"][3]["synchronous_standby_names"],
        "FIRST 1 (standby_a, standby_b)"
    );
    assert_eq!(report["modes"][3]["synchronous_commit"], "remote_apply");
    assert_eq!(
        report["modes"][4]["synchronous_standby_names"],
        "ANY 1 (standby_a, standby_b)"
    );
    // It said what it changed and restored.
    let said = stderr(&output);
    assert!(
        said.contains("synchronous_commit: 'local' -> 'on'"),
        "{said}"
    );
    assert!(said.contains("restored"), "{said}");
    assert_eq!(settings(&cluster.primary), before);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("standby_a"),
        "{svg:.300}"
    );
    // pgbench's tables were created at scale 1.
    assert_eq!(
        cluster
            .primary
            .psql("select count(*) from pgbench_branches"),
        "1"
    );
}

#[test]
fn an_interrupted_run_restores_the_settings() {
    let cluster = Cluster::start();
    let before = settings(&cluster.primary);
    let nodes = cluster.nodes();
    let mut child = pgrepl()
        .arg("bench")
        .args(&nodes)
        .args(["--modes", "on", "--duration", "60", "--shape", "insert"])
        .env("PGPASSFILE", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgrepl bench");
    eventually("the sync policy to be set", Duration::from_secs(30)).until(|| {
        !cluster
            .primary
            .psql("show synchronous_standby_names")
            .is_empty()
    });
    eventually("the load to commit", Duration::from_secs(30)).until(|| {
        cluster
            .primary
            .psql("select count(*) > 0 from pgrepl_bench")
            == "t"
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("wait for pgrepl bench");
    let mut said = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains("cancelled") && said.contains("restored"),
        "{said}"
    );
    assert_eq!(settings(&cluster.primary), before);
}
