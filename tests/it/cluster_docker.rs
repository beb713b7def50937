//! `pgrepl up` on the docker runtime with the image `compose/build-image` makes (no registry is
//! needed), checked with stock psql through the published ports; and a guard that the source
//! never drives the docker CLI.
//!
//! Container and network names are the cluster's (`pg_master`, …, `pg_net`), global to the
//! engine, so everything that touches them runs in one test, in order.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use bollard::Docker;

use crate::support::cluster::TestCluster;
use crate::support::docker::{engine, ensure_image, ENGINE, IMAGE};
use crate::support::harness::{self, PgInstall};
use crate::support::{capability, eventually, stderr};

const NODES: [&str; 3] = ["pg_master", "pg_slave", "pg_asyncslave"];

/// The cluster's containers (the initdb one-shots too) and network that still exist.
async fn leftovers(docker: &Docker) -> Vec<String> {
    let mut found = Vec::new();
    for node in NODES {
        for name in [
            node.to_owned(),
            format!("{node}-initdb"),
            format!("{node}-pg_rewind"),
        ] {
            if docker.inspect_container(&name, None).await.is_ok() {
                found.push(format!("container {name}"));
            }
        }
    }
    if docker.inspect_network("pg_net", None).await.is_ok() {
        found.push("network pg_net".into());
    }
    found
}

fn psql(conninfo: &str, sql: &str) -> String {
    let output = Command::new(PgInstall::default_install().bin("psql"))
        .args([conninfo, "-Atc", sql])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql `{conninfo}`: {}",
        stderr(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn up_checks_and_down_on_the_docker_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let docker = match rt.block_on(engine()) {
        Ok(docker) => docker,
        Err(why) => {
            capability::skip(
                "up_checks_and_down_on_the_docker_runtime",
                "docker",
                &format!("no Docker engine answers: {why}"),
            );
            return;
        }
    };
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    rt.block_on(ensure_image(&docker, IMAGE, "15"));
    let existing = rt.block_on(leftovers(&docker));
    assert!(
        existing.is_empty(),
        "the engine already has {existing:?}: remove them (pgrepl down --purge) first"
    );

    let cluster = TestCluster::new();
    let text = std::fs::read_to_string(&cluster.file).unwrap();
    std::fs::write(
        &cluster.file,
        text.replacen("runtime = \"local\"", "runtime = \"docker\"", 1),
    )
    .unwrap();

    // Bad input: one line, and nothing created. An image the engine lacks is pulled through
    // the engine; no registry answers here, so the pull fails quickly with the way out.
    let started = Instant::now();
    let output = cluster.pgrepl(&["up", "--image", "pgrepl-test/no-such-image:1"]);
    let log = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{log}");
    assert!(
        log.contains("image `pgrepl-test/no-such-image:1` is not on this Docker engine and pulling it failed"),
        "{log}"
    );
    assert!(log.contains("compose/build-image"), "{log}");
    assert_eq!(
        log.lines().filter(|l| l.starts_with("pgrepl: ")).count(),
        1,
        "{log}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "the failed pull took {:?}",
        started.elapsed()
    );
    assert_eq!(rt.block_on(leftovers(&docker)), Vec::<String>::new());
    let busy = std::net::TcpListener::bind(("127.0.0.1", cluster.ports[2])).unwrap();
    let output = cluster.pgrepl(&["up", "--image", IMAGE]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains(&format!(
            "port {} for `pg_asyncslave` is in use",
            cluster.ports[2]
        )),
        "{}",
        stderr(&output)
    );
    drop(busy);
    assert_eq!(rt.block_on(leftovers(&docker)), Vec::<String>::new());

    let started = Instant::now();
    let up = cluster.ok(&["up", "--image", IMAGE, "--json"]);
    eprintln!(
        "pgrepl up of an empty docker cluster: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let summary: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let conninfo: Vec<String> = summary["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["conninfo"].as_str().unwrap().to_owned())
        .collect();
    // Stock psql, through the published port with the passfile the conninfo names, agrees.
    assert!(conninfo[0].contains("host=127.0.0.1"), "{}", conninfo[0]);
    assert_eq!(
        psql(
            &conninfo[0],
            "select application_name, sync_state from pg_stat_replication order by sync_state desc"
        ),
        "pg_slave|sync\npg_asyncslave|potential"
    );
    assert_eq!(psql(&conninfo[1], "select pg_is_in_recovery()"), "t");
    let password = cluster.dir.path().join(".pgrepl/superuser.password");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&password).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // A second `up` on a healthy cluster changes nothing; a restarted standby streams again.
    cluster.assert_up_changes_nothing(&["--image", IMAGE]);
    cluster.ok(&["restart", "pg_slave"]);
    eventually(
        "pg_slave to stream again",
        std::time::Duration::from_secs(30),
    )
    .until(|| {
        psql(
            &conninfo[0],
            "select sync_state from pg_stat_replication where application_name = 'pg_slave'",
        ) == "sync"
    });

    // The recipe's checks, failover and rejoin included, on containers.
    let drill = cluster.pgrepl(&["drill", "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&drill.stdout).unwrap_or_else(|_| panic!("{}", stderr(&drill)));
    assert_eq!(drill.status.code(), Some(0), "{report:#}");
    assert_eq!(report["steps"].as_array().map(Vec::len), Some(7));
    assert_eq!(psql(&conninfo[1], "select pg_is_in_recovery()"), "f");
    assert_eq!(
        psql(&conninfo[1], "show synchronous_standby_names"),
        "FIRST 1 (pg_master, pg_asyncslave)"
    );
    // A killed primary rewound by pg_rewind in a one-shot container on the network.
    cluster.ok(&["failover", "--to", "pg_asyncslave"]);
    let rejoin = cluster.ok(&["rejoin", "pg_slave", "--rewind"]);
    assert!(
        String::from_utf8_lossy(&rejoin.stdout).contains("rewound by pg_rewind"),
        "{}",
        String::from_utf8_lossy(&rejoin.stdout)
    );
    assert_eq!(
        psql(
            &conninfo[2],
            "select count(*) from pg_stat_replication where state = 'streaming'"
        ),
        "2"
    );

    cluster.ok(&["down", "--purge"]);
    assert_eq!(rt.block_on(leftovers(&docker)), Vec::<String>::new());
    assert!(!cluster.dir.path().join(".pgrepl").exists());
}

/// Lifecycle goes through the engine API only: no `docker exec`, no docker CLI child process.
#[test]
fn the_source_never_shells_out_to_docker() {
    fn walk(dir: &Path, hits: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, hits);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                // Comments may state the rule itself; code may not break it.
                for (n, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim_start().starts_with("//"))
                {
                    let compact: String = line.split_whitespace().collect();
                    if line.contains("docker exec") || compact.contains("Command::new(\"docker") {
                        hits.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    let mut hits = Vec::new();
    walk(&harness::repo_root().join("src"), &mut hits);
    assert!(
        hits.is_empty(),
        "docker CLI use in src/:\n{}",
        hits.join("\n")
    );
}
