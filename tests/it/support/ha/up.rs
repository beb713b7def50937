//! Clusters whose `up` starts etcd and an agent per node (`[ha]`), and what a test does to their
//! processes and asks of their `status`.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::cluster::TestCluster;
use crate::support::{capability, docker, eventually, harness, stderr};

/// A cluster file with an `[ha]` section and no etcd URLs: `up` starts its own etcd.
pub(crate) fn ha_cluster(test: &str) -> Option<TestCluster> {
    capability::tool(test, "etcd", "apt-get install etcd-server")?;
    let cluster = TestCluster::new();
    let mut text = std::fs::read_to_string(&cluster.file).unwrap();
    text.push_str("\n[ha]\n");
    std::fs::write(&cluster.file, text).unwrap();
    Some(cluster)
}

/// [`ha_cluster`] on the docker runtime, with the engine's lock (its names are global). Bind
/// it as `(_engine, cluster)`: the cluster, declared last, drops first, so its `down --purge`
/// runs under the lock. `None` (said) without an engine.
pub(crate) fn docker_ha_cluster(
    test: &str,
) -> Option<(std::sync::MutexGuard<'static, ()>, TestCluster)> {
    if let Err(why) = docker::engine_with_image() {
        capability::skip(test, "docker", &format!("no Docker engine answers: {why}"));
        return None;
    }
    let engine = docker::ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = ha_cluster(test)?;
    let text = std::fs::read_to_string(&cluster.file).unwrap();
    std::fs::write(
        &cluster.file,
        text.replacen("runtime = \"local\"", "runtime = \"docker\"", 1),
    )
    .unwrap();
    Some((engine, cluster))
}

/// `pid` of every pid file in `dir` (etcd members or agents), by file name.
pub(crate) fn pids_in(dir: &Path) -> Vec<(String, i32)> {
    let mut pids: Vec<(String, i32)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let stem = name.strip_suffix(".pid")?.to_owned();
                    let pid = std::fs::read_to_string(e.path())
                        .ok()?
                        .trim()
                        .parse()
                        .ok()?;
                    Some((stem, pid))
                })
                .collect()
        })
        .unwrap_or_default();
    pids.sort();
    pids
}

pub(crate) fn postmaster_pid(cluster: &TestCluster, node: &str) -> Option<i32> {
    let text =
        std::fs::read_to_string(cluster.state_dir().join(node).join("data/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The process exists and is not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            == Some(false)
    })
}

pub(crate) fn status_json(cluster: &TestCluster) -> serde_json::Value {
    let output = cluster.pgrepl(&["status", "--json"]);
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}\n{}", stderr(&output)))
}

pub(crate) fn agent_logs(cluster: &TestCluster) -> String {
    ["pg_master", "pg_slave", "pg_asyncslave"]
        .iter()
        .map(|node| {
            let log = cluster.state_dir().join(format!("agents/{node}.log"));
            format!(
                "--- agent {node}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// SIGKILL, then wait until the process is gone: a killed process can take a while to exit (a
/// pending fsync holds it), and until then `up` rightly counts it as running.
pub(crate) fn sigkill(pid: i32) {
    // SAFETY: kill(2) on a process of this test's cluster.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eventually(
        &format!("pid {pid} to be gone after SIGKILL"),
        Duration::from_secs(10),
    )
    .every(Duration::from_millis(10))
    .until(|| !alive(pid));
}

/// `node`'s machine dies: its agent, its postmaster and the postmaster's children, SIGKILLed.
pub(crate) fn lose_machine(cluster: &TestCluster, node: &str) {
    let agent = pids_in(&cluster.state_dir().join("agents"))
        .into_iter()
        .find(|(n, _)| n == node)
        .expect("the agent's pid file")
        .1;
    sigkill(agent);
    let postmaster = postmaster_pid(cluster, node).expect("the postmaster's pid");
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster.to_string()])
        .output()
        .unwrap();
    sigkill(postmaster);
    for child in String::from_utf8_lossy(&children.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
    {
        sigkill(child);
    }
}

pub(crate) fn up_ok(cluster: &TestCluster) -> Output {
    let up = cluster.pgrepl(&["up"]);
    assert!(
        up.status.success(),
        "up failed:\n{}\n{}",
        stderr(&up),
        agent_logs(cluster)
    );
    up
}

/// `[proxy]` on its own two ports, and a superuser password for TCP (the proxy's sessions).
pub(crate) fn with_proxy(cluster: &TestCluster) -> (u16, u16) {
    let ports = (harness::pick_port(), harness::pick_port());
    std::fs::write(cluster.dir.path().join("superuser.password"), "pr0xy-pw\n").unwrap();
    let mut text = std::fs::read_to_string(&cluster.file).unwrap();
    text.push_str(&format!(
        "\n[proxy]\nwrite_port = {}\nread_port = {}\n\n[local]\nsuperuser_password_file = \"superuser.password\"\n",
        ports.0, ports.1
    ));
    std::fs::write(&cluster.file, text).unwrap();
    ports
}
