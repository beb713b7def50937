//! `pgrepl config set` and the rolling `pgrepl restart --pending` (issue 22), on real servers:
//! bad values refused with the cluster untouched; a raised `max_connections` restarted standbys
//! first and the primary by a switchover; a lowered one restarted on the primary first; with
//! agents, under the 50 ms writer, nothing lost and the longest write gap stated.

use std::time::{Duration, Instant};

use crate::support::cluster::TestCluster;
use crate::support::ha::{docker_engine, Ack, HaCluster, HaNodes, Writer, NODES};
use crate::support::harness::output_within;
use crate::support::{pgrepl, stderr};

/// What the command printed on stdout, as JSON.
fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(output)
        )
    })
}

/// What a rolling restart does when it raises a setting, from the cluster `up` built.
const RAISED: [&str; 3] = [
    "standby pg_slave",
    "standby pg_asyncslave",
    "switchover pg_master",
];

/// The `step` (and `node`) of each step a `restart --json` reports.
fn steps(result: &serde_json::Value) -> Vec<String> {
    result["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            let who = s["node"].as_str().or(s["from"].as_str()).unwrap_or("?");
            format!("{} {who}", s["step"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn config_set_is_checked_first_and_restart_pending_rolls_it_out() {
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    let all = |sql: &str| -> Vec<String> { (0..3).map(|i| cluster.psql(i, sql)).collect() };
    let untouched = all("SELECT current_setting('max_connections') || count(*) FROM pg_settings WHERE pending_restart");

    for (bad, named) in [
        ("shared_buffers=nonsense", "`shared_buffers` = `nonsense`"),
        ("shared_bufers=1GB", "`shared_bufers`"),
        (
            "max_connections=0",
            "`max_connections` = `0` is out of range",
        ),
        ("port=5000", "`port` is pgrepl's to set"),
    ] {
        // A good setting beside the bad one: nothing at all may change.
        let out = cluster.pgrepl(&["config", "set", "work_mem=8MB", bad, "--yes"]);
        let text = stderr(&out);
        assert!(!out.status.success(), "{bad} was taken");
        assert!(
            text.contains(named) && text.contains("nothing was changed"),
            "{bad}: {text}"
        );
        assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    }
    assert_eq!(all("SELECT current_setting('work_mem')"), ["4MB"; 3]);
    assert_eq!(all("SELECT current_setting('max_connections') || count(*) FROM pg_settings WHERE pending_restart"), untouched);
    assert!(!cluster.dir.path().join(".pgrepl/settings.json").exists());

    // Raised: applied everywhere at once, pending a restart.
    let set = json(&cluster.ok(&[
        "config",
        "set",
        "max_connections=150",
        "work_mem=8MB",
        "--yes",
        "--json",
    ]));
    assert_eq!(set["serial"], 1);
    for node in set["nodes"].as_array().unwrap() {
        assert_eq!(node["applied"], true, "{set}");
        assert_eq!(
            node["pending_restart"],
            serde_json::json!(["max_connections"]),
            "{set}"
        );
    }
    assert_eq!(
        all("SELECT current_setting('work_mem')"),
        ["8MB"; 3],
        "a reload setting takes at once"
    );
    let status = json(&cluster.ok(&["status", "--json"]));
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(
            node["pending_restart"],
            serde_json::json!(["max_connections"]),
            "{status}"
        );
    }
    let started = |i| {
        cluster
            .psql(i, "SELECT extract(epoch FROM pg_postmaster_start_time())")
            .parse::<f64>()
            .unwrap()
    };
    let rolled = json(&cluster.ok(&["restart", "--pending", "--json"]));
    assert_eq!(steps(&rolled), RAISED, "{rolled}");
    assert_eq!(rolled["pending_after"], serde_json::json!([]), "{rolled}");
    assert_eq!(all("SELECT current_setting('max_connections')"), ["150"; 3]);
    // The old primary restarted last, as a standby of the sync standby that was restarted first.
    assert!(started(0) > started(2) && started(2) > started(1));
    assert_eq!(cluster.psql(1, "SELECT pg_is_in_recovery()"), "f");

    // Lowered: the primary first, in place; the standbys held at its value until then.
    let lowered = json(&cluster.ok(&["config", "set", "max_connections=120", "--yes", "--json"]));
    let held: Vec<&serde_json::Value> = lowered["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["held"] == serde_json::json!(["max_connections"]))
        .collect();
    assert_eq!(
        held.len(),
        2,
        "both standbys hold the primary's value: {lowered}"
    );
    let plan = String::from_utf8_lossy(&cluster.ok(&["restart", "--pending", "--dry-run"]).stdout)
        .into_owned();
    assert!(
        plan.starts_with("1. restart primary `pg_slave` in place"),
        "{plan}"
    );
    let rolled = json(&cluster.ok(&["restart", "--pending", "--json"]));
    assert_eq!(
        steps(&rolled),
        [
            "primary_in_place pg_slave",
            "standby pg_master",
            "standby pg_asyncslave"
        ],
        "{rolled}"
    );
    assert_eq!(all("SELECT current_setting('max_connections')"), ["120"; 3]);
    let again = String::from_utf8_lossy(&cluster.ok(&["restart", "--pending"]).stdout).into_owned();
    assert!(again.contains("no node waits for a restart"), "{again}");

    // `config edit`: $EDITOR changes one line, then drops it (back to the server's default).
    for (editor, work_mem) in [
        (r#"sed -i 's/^work_mem = .*/work_mem = "16MB"/'"#, "16MB"),
        ("sed -i '/^work_mem/d'", "4MB"),
    ] {
        let out = output_within(
            pgrepl()
                .args([
                    "config",
                    "edit",
                    "--yes",
                    "--cluster",
                    cluster.file.to_str().unwrap(),
                ])
                .env("EDITOR", editor),
            Duration::from_secs(60),
        )
        .expect("config edit returns");
        assert!(out.status.success(), "{editor}: {}", stderr(&out));
        assert_eq!(
            all("SELECT current_setting('work_mem')"),
            [work_mem; 3],
            "{editor}"
        );
    }
    let shown = json(&cluster.ok(&["config", "show", "--json"]));
    assert_eq!(
        shown["settings"],
        serde_json::json!({"max_connections": "120"}),
        "{shown}"
    );

    // Ctrl-C during the first step: that step finishes, the rest wait for the next run.
    cluster.ok(&["config", "set", "max_connections=130", "--yes"]);
    let stopped = interrupted_after_first_step(&cluster);
    assert_eq!(stopped.status.code(), Some(130), "{}", stderr(&stopped));
    let said = stderr(&stopped);
    assert!(
        said.contains("stopped between steps")
            && said.contains("not done: ")
            && said.contains("switch over"),
        "{said}"
    );
    cluster.ok(&["restart", "--pending"]);
    assert_eq!(all("SELECT current_setting('max_connections')"), ["130"; 3]);
    cluster.ok(&["down", "--purge"]);
}

/// `restart --pending` sent SIGINT (as Ctrl-C does) once it has begun its first step.
fn interrupted_after_first_step(cluster: &TestCluster) -> std::process::Output {
    use std::io::{BufRead, Read};
    let mut child = pgrepl()
        .args([
            "restart",
            "--pending",
            "--cluster",
            cluster.file.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pgrepl");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("step 1/") {
        assert!(
            lines.read_line(&mut said).unwrap() > 0,
            "ended before a step: {said}"
        );
    }
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    lines.read_to_string(&mut said).unwrap();
    let mut output = child.wait_with_output().expect("pgrepl ends");
    output.stderr = said.into_bytes();
    output
}

/// Acks after `from`, and the longest time between two of them (or from `from` to the first).
fn longest_gap(acks: &[Ack], from: Instant) -> Duration {
    acks.iter()
        .filter(|a| a.at > from)
        .scan(from, |last, a| Some(a.at - std::mem::replace(last, a.at)))
        .max()
        .unwrap_or(Duration::MAX)
}

#[test]
fn ha_config_set_rolls_out_through_the_agents_under_the_writer() {
    rolls_out_under_the_writer(HaCluster::up());
}

/// The same on the docker runtime: each agent restarts the server in its own container.
#[test]
fn ha_docker_config_set_rolls_out_through_the_agents_under_the_writer() {
    let test = "ha_docker_config_set_rolls_out_through_the_agents_under_the_writer";
    let Some(_engine) = docker_engine(test) else {
        return;
    };
    rolls_out_under_the_writer(HaCluster::up_docker());
}

fn rolls_out_under_the_writer(ha: HaCluster) {
    let writer = Writer::start(&ha);
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == 0
    });
    let all = |sql: &str| -> Vec<Option<String>> { (0..3).map(|i| ha.try_psql(i, sql)).collect() };
    let started = |i| {
        ha.try_psql(i, "SELECT extract(epoch FROM pg_postmaster_start_time())")
            .and_then(|t| t.parse::<f64>().ok())
            .expect("a start time")
    };

    let refused = ha.control(&["config", "set", "shared_buffers=nonsense", "--yes"]);
    assert!(!refused.status.success());
    assert!(
        ha.etcd_get("settings").is_none(),
        "a refused change wrote nothing"
    );

    let set = json(&ha.control(&["config", "set", "max_connections=150", "--yes", "--json"]));
    assert_eq!(
        set["nodes"].as_array().map(Vec::len),
        Some(3),
        "every agent reported: {set}"
    );
    assert!(ha.etcd_get("settings").is_some());
    let from = Instant::now();
    let out = ha.control(&["restart", "--pending", "--json"]);
    assert!(out.status.success(), "{}{}", stderr(&out), ha.logs());
    let rolled = json(&out);
    assert_eq!(steps(&rolled), RAISED, "{rolled}");
    assert_eq!(
        all("SELECT current_setting('max_connections')"),
        vec![Some("150".to_owned()); 3]
    );
    assert!(
        started(0) > started(1) && started(0) > started(2),
        "the primary restarted last"
    );
    let leader = ha.leader().expect("a leader");
    let primary = NODES.iter().position(|n| *n == leader).unwrap();
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == primary
    });
    let raised_gap = longest_gap(&writer.acks(), from);

    // Lowered: the leader restarts in place first, then each standby takes the lower value.
    ha.control_ok(&["config", "set", "max_connections=120", "--yes"]);
    let from = Instant::now();
    let out = ha.control(&["restart", "--pending", "--json"]);
    assert!(out.status.success(), "{}{}", stderr(&out), ha.logs());
    let rolled = json(&out);
    assert_eq!(
        steps(&rolled)[0],
        format!("primary_in_place {leader}"),
        "{rolled}"
    );
    assert_eq!(steps(&rolled).len(), 3, "{rolled}");
    assert_eq!(
        all("SELECT current_setting('max_connections')"),
        vec![Some("120".to_owned()); 3]
    );
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == primary
    });
    let acks = writer.stop();
    let lowered_gap = longest_gap(&acks, from);
    eprintln!(
        "rolling restart under the writer: longest write gap {:.2} s raising (the switchover), {:.2} s lowering (the primary's restart); {} acks",
        raised_gap.as_secs_f64(),
        lowered_gap.as_secs_f64(),
        acks.len()
    );
    ha.assert_nothing_lost(primary, &acks);
    assert!(
        raised_gap < Duration::from_secs(5),
        "raising: writes stopped {raised_gap:?}"
    );
    assert!(
        lowered_gap < Duration::from_secs(5),
        "lowering: writes stopped {lowered_gap:?}"
    );
}
