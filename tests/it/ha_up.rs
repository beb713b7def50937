//! `pgrepl up` with `[ha]` on the local runtime: it starts a 3-member etcd in the state dir and
//! an agent per node, `status` shows what the agents keep in etcd, a lost primary is replaced,
//! and `down` leaves no process of the cluster behind.

use std::time::{Duration, Instant};

use crate::support::cluster::TestCluster;
use crate::support::ha::api::{http, psql_lands, psql_lands_with};
use crate::support::ha::up::{
    agent_logs, alive, docker_ha_cluster, ha_cluster, lose_machine, pids_in, postmaster_pid,
    sigkill, status_json, up_ok, with_proxy,
};
use crate::support::{capability, docker, eventually, stderr};

/// The port of `node` in the cluster file, as `current_setting('port')` shows it.
fn postmaster_port(cluster: &TestCluster, node: &str) -> String {
    let spec = pgrepl::cluster::spec::ClusterSpec::load(&cluster.file).unwrap();
    spec.nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap()
        .port
        .to_string()
}

/// Stock psql with the URI as printed, and no password from the environment.
fn psql_as_printed(uri: &str) -> Option<(String, String)> {
    psql_lands_with(uri, None)
}

/// Until `status` shows the proxy's write port reaching `node` (its checks run every 250 ms).
fn wait_proxy_routes(cluster: &TestCluster, node: &str) -> String {
    let what = format!("the proxy's write port to reach `{node}`");
    eventually(&what, Duration::from_secs(15))
        .every(Duration::from_millis(200))
        .until(|| {
            // Not `ok`: status exits non-zero while a node is down.
            let out = cluster.pgrepl(&["status"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = text
                .lines()
                .find(|l| l.contains("proxy: writes"))
                .unwrap_or("");
            if line.contains(&format!("-> {node};")) {
                Ok(line.to_owned())
            } else {
                Err(text)
            }
        })
}

#[test]
fn ha_up_starts_etcd_and_agents_status_shows_them_a_lost_primary_is_replaced_and_down_stops_all() {
    let test = "ha_up_starts_etcd_and_agents";
    let Some(cluster) = ha_cluster(test) else {
        return;
    };
    // HAProxy is a part of the cluster when the machine has it (CI requires it).
    let proxy =
        capability::tool(test, "haproxy", "apt-get install haproxy").map(|_| with_proxy(&cluster));
    let started = Instant::now();
    let up = up_ok(&cluster);
    eprintln!(
        "pgrepl up with [ha] (3 nodes, 3 etcd members, 3 agents): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(stderr(&up).contains("`pg_master` leads"), "{}", stderr(&up));
    let etcd_pids = pids_in(&cluster.state_dir().join("etcd"));
    let agent_pids = pids_in(&cluster.state_dir().join("agents"));
    assert_eq!(etcd_pids.len(), 3, "{etcd_pids:?}");
    assert_eq!(agent_pids.len(), 3, "{agent_pids:?}");
    assert!(etcd_pids
        .iter()
        .chain(&agent_pids)
        .all(|(_, pid)| alive(*pid)));
    let endpoints = std::fs::read_to_string(cluster.state_dir().join("etcd/endpoints")).unwrap();
    assert_eq!(endpoints.lines().count(), 3, "{endpoints}");

    let status = status_json(&cluster);
    let ha = &status["ha"];
    assert_eq!(ha["error"], serde_json::Value::Null, "{ha:#}");
    assert_eq!(ha["leader"], "pg_master", "{ha:#}");
    let left = ha["lease_left_s"].as_i64().unwrap_or(-1);
    assert!(left > 0 && left <= 2, "lease time left {left}: {ha:#}");
    let agents = ha["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3);
    assert!(agents.iter().all(|a| a["alive"] == true), "{ha:#}");
    // The promotable set is the sync standbys that stream, as the primary sees them.
    let mut promotable: Vec<String> = ha["promotable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    promotable.sort();
    let streaming = cluster.psql(
        0,
        "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication \
         WHERE state = 'streaming' AND sync_state IN ('sync', 'potential', 'quorum')",
    );
    assert_eq!(promotable.join(","), streaming, "{ha:#}");
    assert_eq!(ha["paused"], false);
    // The text rendering says the same.
    let text = cluster.ok(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("leader `pg_master`, lease "), "{text}");
    // Each agent serves its API where `up` recorded it, and says it.
    let api = agents[0]["api"].as_str().expect("the leader's API address");
    let printed = String::from_utf8_lossy(&up.stdout);
    assert!(printed.contains(&format!("https://{api}")), "{printed}");
    let ca = cluster.state_dir().join("tls/ca.crt");
    let (code, _) = http(api.parse().unwrap(), Some(&ca), "GET", "/primary").unwrap();
    assert_eq!(code, 200, "GET /primary on the leader's agent");
    // The application's URIs, as printed, with stock psql: the primary, then a standby.
    let write = status["uris"]["write"]
        .as_str()
        .expect("a write URI")
        .to_owned();
    let read = status["uris"]["read"]
        .as_str()
        .expect("a read URI")
        .to_owned();
    assert!(text.contains(&write), "{text}");
    let master_port = postmaster_port(&cluster, "pg_master");
    assert_eq!(psql_lands(&write), Some(("f".into(), master_port.clone())));
    assert_eq!(psql_lands(&read).map(|l| l.0).as_deref(), Some("t"));
    // The proxy's URIs, as printed (the password through the passfile they name).
    let proxy_uris = proxy.map(|(write_port, read_port)| {
        let uris = &status["uris"]["proxy"];
        let (write, read) = (
            uris["write"]
                .as_str()
                .expect("a proxy write URI")
                .to_owned(),
            uris["read"].as_str().expect("a proxy read URI").to_owned(),
        );
        assert!(write.contains(&format!(":{write_port}/")), "{write}");
        assert!(read.contains(&format!(":{read_port}/")), "{read}");
        assert!(printed.contains(&write), "{printed}");
        let line = wait_proxy_routes(&cluster, "pg_master");
        eprintln!("status: {}", line.trim());
        assert_eq!(
            psql_as_printed(&write),
            Some(("f".into(), master_port.clone())),
            "{write}"
        );
        eventually(
            &format!("{read} to reach a standby"),
            Duration::from_secs(10),
        )
        .until(|| psql_as_printed(&read).map(|l| l.0).as_deref() == Some("t"));
        write
    });

    // The primary's machine dies: its agent and its server at once.
    let killed = Instant::now();
    lose_machine(&cluster, "pg_master");
    let new_leader = eventually("a new leader", Duration::from_secs(10))
        .since(killed)
        .showing(|| agent_logs(&cluster))
        .until(|| {
            let status = status_json(&cluster);
            let leader = status["ha"]["leader"].as_str().map(str::to_owned);
            leader
                .filter(|l| l != "pg_master")
                .ok_or_else(|| format!("{:#}", status["ha"]))
        });
    eprintln!(
        "`{new_leader}` leads {:.2} s after the primary's agent and server were killed (status shows it)",
        killed.elapsed().as_secs_f64()
    );
    let status = status_json(&cluster);
    let master = &status["ha"]["agents"][0];
    assert_eq!(master["node"], "pg_master");
    assert_eq!(master["alive"], false, "{:#}", status["ha"]);
    // The same write URI now lands on the new primary, once it promoted (the key moves
    // first).
    let new_primary = Some(("f".into(), postmaster_port(&cluster, &new_leader)));
    eventually(
        &format!("{write} to reach `{new_leader}`"),
        Duration::from_secs(15),
    )
    .since(killed)
    .showing(|| agent_logs(&cluster))
    .until(|| psql_lands(&write) == new_primary);
    // So does the proxy's, once its checks saw the new leader's agent answer 200.
    let proxy_pid = proxy_uris.map(|write| {
        wait_proxy_routes(&cluster, &new_leader);
        assert_eq!(
            psql_as_printed(&write),
            Some(("f".into(), postmaster_port(&cluster, &new_leader))),
            "{write}"
        );
        pids_in(&cluster.state_dir().join("proxy"))[0].1
    });

    // `down` stops the agents, the servers and etcd: none of the cluster's processes remain.
    let mut pids: Vec<i32> = etcd_pids
        .iter()
        .chain(&agent_pids)
        .map(|(_, p)| *p)
        .chain(proxy_pid)
        .collect();
    pids.extend(
        ["pg_slave", "pg_asyncslave"]
            .iter()
            .filter_map(|node| postmaster_pid(&cluster, node)),
    );
    cluster.ok(&["down"]);
    let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
    assert!(
        cluster.state_dir().join("etcd/etcd0").is_dir(),
        "down keeps the etcd data"
    );
    cluster.ok(&["down", "--purge"]);
    assert!(!cluster.state_dir().join("etcd").exists());
}

#[test]
fn ha_up_again_starts_only_what_is_missing_and_status_without_etcd_says_so() {
    let Some(cluster) = ha_cluster("ha_up_again_starts_only_what_is_missing") else {
        return;
    };
    up_ok(&cluster);
    let etcd_pids = pids_in(&cluster.state_dir().join("etcd"));
    let agent_pids = pids_in(&cluster.state_dir().join("agents"));
    let again = up_ok(&cluster);
    assert!(
        !stderr(&again).contains("start "),
        "the second up started something:\n{}",
        stderr(&again)
    );
    assert_eq!(pids_in(&cluster.state_dir().join("etcd")), etcd_pids);
    assert_eq!(pids_in(&cluster.state_dir().join("agents")), agent_pids);

    // A dead standby agent and a dead etcd member: `up` starts those two, nothing else.
    sigkill(agent_pids[0].1);
    sigkill(etcd_pids[2].1);
    let again = up_ok(&cluster);
    let text = stderr(&again);
    let starts: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("] start ").map(|(_, what)| what))
        .collect();
    assert_eq!(starts.len(), 2, "{text}");
    assert!(starts[0].starts_with("etcd member etcd2"), "{starts:?}");
    assert!(
        starts[1].starts_with("the agent of `pg_asyncslave`"),
        "{starts:?}"
    );
    let (etcd_now, agents_now) = (
        pids_in(&cluster.state_dir().join("etcd")),
        pids_in(&cluster.state_dir().join("agents")),
    );
    assert_eq!(etcd_now[..2], etcd_pids[..2]);
    assert_eq!(agents_now[1..], agent_pids[1..]);
    assert!(alive(etcd_now[2].1) && alive(agents_now[0].1));
    let (etcd_pids, agent_pids) = (etcd_now, agents_now);

    // With etcd gone, status says so in one line and still shows the servers.
    for (_, pid) in &etcd_pids {
        sigkill(*pid);
    }
    let output = cluster.pgrepl(&["status"]);
    let text = String::from_utf8_lossy(&output.stdout);
    let unknown: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("leader, lease and agents unknown"))
        .collect();
    assert_eq!(unknown.len(), 1, "{text}\n{}", stderr(&output));
    assert!(text.contains("pg_slave"), "{text}");
    let json = status_json(&cluster);
    assert!(json["ha"]["error"].is_string(), "{json:#}");
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(3));

    // `down` still stops the agents (which cannot release their leases) and the servers.
    cluster.ok(&["down"]);
    let left: Vec<i32> = agent_pids
        .iter()
        .map(|(_, p)| *p)
        .filter(|&p| alive(p))
        .collect();
    assert!(left.is_empty(), "agents still running after down: {left:?}");
}

/// The docker runtime with `[ha]`: `up` starts three etcd containers and one container per node
/// running its agent, which builds and runs the server. After a node loss (its container
/// killed) another node leads; `up` again only starts the missing container, whose agent
/// rejoins the node as a standby of the new leader; `down --purge` leaves no container of the
/// cluster and no file behind.
#[test]
fn ha_up_on_docker_fails_over_and_up_again_rejoins_the_lost_node() {
    let test = "ha_up_on_docker_fails_over_and_up_again_rejoins_the_lost_node";
    let Some((_engine, cluster)) = docker_ha_cluster(test) else {
        return;
    };
    let docker_logs = || {
        ["pg_master", "pg_slave", "pg_asyncslave"]
            .map(|node| format!("--- {node}:\n{}", docker::logs(node)))
            .join("\n")
    };
    let up = cluster.pgrepl(&["up", "--image", docker::IMAGE]);
    assert!(up.status.success(), "{}\n{}", stderr(&up), docker_logs());
    assert_eq!(status_json(&cluster)["ha"]["leader"], "pg_master");
    // The password file reached the agents, never their command line or environment.
    let inspect = docker::docker(&["inspect", "pg_master"]);
    let password = std::fs::read_to_string(cluster.state_dir().join("superuser.password")).unwrap();
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains(password.trim()));
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains("pass\""));
    // Each container is a machine of its own: a password login from the network (the host's,
    // through the published port) gets in over TLS only.
    let port = cluster.ports[0];
    let login = |sslmode: &str| {
        psql_lands_with(
            &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode={sslmode}"),
            Some(password.trim()),
        )
    };
    assert_eq!(login("disable"), None, "a login without TLS got in");
    assert_eq!(
        login("prefer").map(|(recovery, _)| recovery),
        Some("f".into())
    );

    docker::kill("pg_master");
    let leader = eventually("a new leader", Duration::from_secs(30))
        .every(Duration::from_millis(200))
        .showing(docker_logs)
        .until(|| {
            let leader = status_json(&cluster)["ha"]["leader"].clone();
            (leader.is_string() && leader != "pg_master").then_some(leader)
        });

    let again = cluster.pgrepl(&["up"]);
    assert!(
        again.status.success(),
        "{}\n{}",
        stderr(&again),
        docker_logs()
    );
    assert!(
        stderr(&again).contains("starting only what is missing"),
        "{}",
        stderr(&again)
    );
    eventually("pg_master to rejoin", Duration::from_secs(60))
        .every(Duration::from_millis(300))
        .showing(docker_logs)
        .until(|| {
            let status = status_json(&cluster);
            let master = status["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["name"] == "pg_master"))
                .cloned()
                .unwrap_or_default();
            if master["role"] == "standby" && status["ha"]["leader"] == leader {
                Ok(())
            } else {
                Err(format!("{status:#}"))
            }
        });

    let down = cluster.pgrepl(&["down", "--purge"]);
    assert!(down.status.success(), "{}", stderr(&down));
    let left = docker::docker(&["ps", "-a", "--format", "{{.Names}}"]);
    let names = String::from_utf8_lossy(&left.stdout);
    assert!(
        !names
            .lines()
            .any(|n| n.starts_with("pg_") || n.starts_with("pgrepl-etcd")),
        "containers left: {names}"
    );
    assert!(!cluster.state_dir().exists());
}

/// An etcd image the engine lacks (and no registry answers for) fails in one line that names
/// the script that builds it, and leaves no container behind.
#[test]
fn ha_up_on_docker_names_the_build_script_for_a_missing_etcd_image() {
    let test = "ha_up_on_docker_names_the_build_script_for_a_missing_etcd_image";
    let Some((_engine, cluster)) = docker_ha_cluster(test) else {
        return;
    };
    let text = std::fs::read_to_string(&cluster.file).unwrap();
    std::fs::write(
        &cluster.file,
        text.replacen(
            "[ha]\n",
            "[ha]\netcd_image = \"pgrepl-local/etcd:absent\"\n",
            1,
        ),
    )
    .unwrap();
    let up = cluster.pgrepl(&["up", "--image", docker::IMAGE]);
    assert!(!up.status.success());
    let said = stderr(&up);
    assert!(
        said.contains("image `pgrepl-local/etcd:absent` is not on this Docker engine")
            && said.contains("compose/build-image etcd"),
        "{said}"
    );
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    let down = cluster.pgrepl(&["down", "--purge"]);
    assert!(down.status.success(), "{}", stderr(&down));
}
