//! `pgrepl pause` / `resume`, and `switchover` / `failover` / `rejoin` while agents run: real
//! etcd, real servers, a synchronous writer that records every acknowledged commit.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::support::ha::{assert_one_writer_at_a_time, HaCluster, HaNodes, Writer, NODES, TTL};
use crate::support::{pgrepl, stderr, stdout};

fn succeeded(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Exit code 2 with one line on stderr that says `why`.
fn refused(output: &Output, why: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{}{text}", stdout(output));
    assert_eq!(text.trim().lines().count(), 1, "{text}");
    assert!(text.contains(why), "{text}");
}

#[test]
fn ha_control_pause_stops_automatic_actions_and_resume_brings_them_back() {
    let ha = HaCluster::up();
    let writer = Writer::start(&ha);
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == 0
    });

    let paused = succeeded(ha.control(&["pause"]), "pause");
    assert!(
        paused.contains("paused: the agents take no automatic action"),
        "{paused}"
    );
    assert!(
        !paused.contains("not yet"),
        "every agent acknowledged: {paused}"
    );
    assert!(NODES.iter().all(|n| paused.contains(n)), "{paused}");
    assert!(ha.etcd_get("pause").is_some());
    let again = succeeded(ha.control(&["pause", "--json"]), "pause again");
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["command"], "pause", "{again}");
    assert_eq!(again["already"], true, "{again}");
    assert!(again["record"]["by"].is_string(), "{again}");
    assert_eq!(again["agreed"].as_array().map(Vec::len), Some(3), "{again}");
    // Paused, a standby can be rebuilt: no agent starts it under the copy.
    let rebuilt = succeeded(
        ha.control(&["reinit", "pg_asyncslave", "--force"]),
        "reinit while paused",
    );
    assert!(rebuilt.contains("streams from `pg_master`"), "{rebuilt}");

    ha.kill_postgres(0);
    // After the kill returns: finding the children runs pgrep, which under load took longer
    // than the 100 ms allowed below for a commit in flight (CI saw a commit sent and
    // acknowledged within 13 ms, more than 100 ms after the clock had started).
    let killed = Instant::now();
    std::thread::sleep(TTL * 2);
    assert!(
        ha.try_psql(0, "SELECT 1").is_none(),
        "a paused agent restarted its server\n{}",
        ha.logs()
    );
    assert_eq!(
        ha.leader().as_deref(),
        Some("pg_master"),
        "the leader keeps its key"
    );
    for i in 1..3 {
        assert_eq!(
            ha.try_psql(i, "SELECT pg_is_in_recovery()").as_deref(),
            Some("t"),
            "nothing was promoted\n{}",
            ha.logs()
        );
    }
    let late: Vec<_> = writer
        .acks()
        .into_iter()
        .filter(|a| a.at > killed + Duration::from_millis(100))
        .collect();
    assert!(
        late.is_empty(),
        "writes acknowledged while paused: {late:?}"
    );
    let log = ha.agent_log(0);
    assert!(
        log.contains("paused (otherwise RestartInPlace"),
        "the agent says what it would have done:\n{log}"
    );

    let resumed = Instant::now();
    let text = succeeded(ha.control(&["resume"]), "resume");
    assert!(text.contains("resumed (by "), "{text}");
    let first = writer.wait_ack(&ha, Duration::from_secs(30), resumed, |_| true);
    eprintln!(
        "resume: {:.2} s from `pgrepl resume` to the first acknowledged write on `{}`",
        first.at.duration_since(resumed).as_secs_f64(),
        NODES[first.node]
    );
    let later = first.at + Duration::from_millis(500);
    writer.wait_ack(&ha, Duration::from_secs(10), later, |a| {
        a.node == first.node
    });
    let acks = writer.stop();
    ha.assert_nothing_lost(first.node, &acks);
    let text = succeeded(ha.control(&["resume"]), "resume again");
    assert!(text.contains("not paused"), "{text}");
}

#[test]
fn ha_control_switchover_under_load_moves_the_leader_and_loses_nothing() {
    let ha = HaCluster::up();
    ha.wait_for("both standbys to stream", Duration::from_secs(20), |ha| {
        ha.streams_from(1, 0) && ha.streams_from(2, 0)
    });
    let writer = Writer::start(&ha);
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == 0
    });
    std::thread::sleep(Duration::from_secs(1));

    let asked = Instant::now();
    let said = succeeded(
        ha.control(&["switchover", "--to", "pg_slave"]),
        "switchover",
    );
    let returned = asked.elapsed();
    assert!(
        said.contains("switchover `pg_master` -> `pg_slave` through the agents"),
        "{said}"
    );
    assert_eq!(ha.leader().as_deref(), Some("pg_slave"), "{}", ha.logs());
    let first = writer.wait_ack(&ha, Duration::from_secs(10), asked, |a| a.node == 1);
    eprintln!(
        "switchover: {:.2} s from the command to the first acknowledged write on `pg_slave`; the command returned after {:.2} s:\n{said}",
        first.at.duration_since(asked).as_secs_f64(),
        returned.as_secs_f64()
    );
    ha.wait_for(
        "the old primary to stream from the new one",
        Duration::from_secs(60),
        |ha| ha.streams_from(0, 1),
    );
    assert_eq!(
        ha.try_psql(0, "SELECT pg_is_in_recovery()").as_deref(),
        Some("t")
    );
    let later = first.at + Duration::from_millis(500);
    writer.wait_ack(&ha, Duration::from_secs(10), later, |a| a.node == 1);
    let acks = writer.stop();
    assert_one_writer_at_a_time(&acks, 0);
    ha.assert_nothing_lost(1, &acks);
    assert!(
        ha.etcd_get("switchover").is_none(),
        "the request is gone once done"
    );

    // Without --to: the most advanced standby of the new sync record.
    ha.wait_for("both standbys to stream", Duration::from_secs(20), |ha| {
        ha.streams_from(0, 1) && ha.streams_from(2, 1)
    });
    let said = succeeded(ha.control(&["switchover"]), "switchover back");
    let leader = ha.leader().unwrap();
    assert_ne!(leader, "pg_slave", "{said}");
    assert!(said.contains(&format!("-> `{leader}`")), "{said}");
}

#[test]
fn ha_control_failover_rejoin_and_bad_switchovers_beside_live_agents_are_refused() {
    let ha = HaCluster::up();
    let why = "`pg_master` leads: the agents fail over by themselves; use switchover to move a healthy primary";
    refused(&ha.control(&["failover"]), why);
    refused(&ha.control(&["failover", "--to", "pg_slave"]), why);
    refused(
        &ha.control(&["rejoin", "pg_slave"]),
        "the agent of `pg_slave` rejoins it by itself",
    );
    refused(
        &ha.control(&["reinit", "pg_slave", "--force"]),
        "`pgrepl pause`, then `pgrepl reinit pg_slave`, then `pgrepl resume`",
    );
    refused(
        &ha.control(&["switchover", "--to", "pg_master"]),
        "`pg_master` is already the primary",
    );
    refused(
        &ha.control(&["failover", "--force"]),
        "--force and --rewind are for failovers without agents",
    );
    // Nothing changed.
    assert_eq!(ha.leader().as_deref(), Some("pg_master"));
    assert_eq!(
        ha.try_psql(0, "SELECT pg_is_in_recovery()").as_deref(),
        Some("f")
    );
    // A dry run says what would happen and changes nothing either.
    let plan = succeeded(
        ha.control(&["switchover", "--dry-run"]),
        "switchover --dry-run",
    );
    assert!(plan.contains("`pg_master` -> `pg_slave`"), "{plan}");
    assert!(ha.etcd_get("switchover").is_none());
}

#[test]
fn ha_control_failover_without_a_leader_says_why_nobody_can_be_elected_then_waits_for_the_election()
{
    let mut ha = HaCluster::up();
    // FIRST 1 (pg_slave, pg_asyncslave): without pg_asyncslave's agent, pg_slave alone may lack
    // commits pg_asyncslave acknowledged.
    ha.kill_agent(2);
    ha.wait_for("pg_asyncslave's member record to expire", TTL * 5, |ha| {
        ha.etcd_get("members/pg_asyncslave").is_none()
    });
    ha.kill_agent(0);
    ha.kill_postgres(0);
    ha.wait_for("the leader key to expire", TTL * 5, |ha| {
        ha.leader().is_none()
    });
    refused(
        &ha.control(&["failover", "--to", "pg_slave"]),
        "no standby can be elected without risking acknowledged commits: 1 of the sync record's 2 members answer and 2 are needed",
    );
    assert!(ha.leader().is_none());

    // The command waits while pg_asyncslave's agent comes back and the agents elect.
    let waiting = pgrepl()
        .args(["failover", "--cluster"])
        .arg(&ha.cluster.file)
        .args(ha.etcd_args())
        .env_remove("PGPASSWORD")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ha.start_agent(2);
    let said = succeeded(waiting.wait_with_output().unwrap(), "failover");
    let leader = ha.leader().expect("a leader was elected");
    assert!(
        said.contains(&format!(
            "failover `pg_master` -> `{leader}` through the agents"
        )),
        "{said}"
    );
    eprintln!("{said}");
}
