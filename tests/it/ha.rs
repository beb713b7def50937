//! `pgrepl agent`: automatic, fenced failover with a real 3-member etcd and real servers on the
//! local runtime, under a synchronous write load that records every acknowledged commit.

use std::time::{Duration, Instant};

use crate::support::ha::scenarios::{
    etcd_leader_loss, frozen_agent, hung_primary, node_loss, postgres_crash, stalls_and_etcd_quorum,
};
use crate::support::ha::{HaCluster, HaNodes, NODES};
use crate::support::pgrepl;

#[test]
fn ha_node_loss_promotes_a_sync_standby_without_losing_a_commit() {
    node_loss(HaCluster::up());
}

/// A leader that promoted and then went silent left its timeline's history file nowhere, so
/// the sync record names the newest timeline a promotion took and the next promotion goes past
/// it. Here the record says 4, as after two such leaders: the elected standby promotes to 5
/// over placeholders for 2 to 4, the other standby (on 1) fetches them and follows, and the old
/// primary rejoins across them by pg_rewind.
#[test]
fn ha_a_promotion_goes_past_the_timeline_the_sync_record_names() {
    let mut ha = HaCluster::up();
    let record = |ha: &HaCluster| -> serde_json::Value {
        let text = ha.etcd_get("sync").expect("a sync record");
        serde_json::from_str(&text).expect("a JSON sync record")
    };
    let mut claimed = record(&ha);
    claimed["timeline"] = 4.into();
    ha.etcd_put("sync", &claimed.to_string());
    // The leader carries the number in any record it writes after it sees it.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(record(&ha)["timeline"], 4, "{}", record(&ha));

    ha.kill_agent(0);
    ha.kill_postgres(0);
    ha.wait_for("a new leader", Duration::from_secs(20), |ha| {
        ha.leader().is_some_and(|l| l != NODES[0])
    });
    let new = NODES
        .iter()
        .position(|n| Some(*n) == ha.leader().as_deref())
        .unwrap();
    let timeline = "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)";
    ha.wait_for("the promotion", Duration::from_secs(20), |ha| {
        ha.try_psql(new, "SELECT pg_is_in_recovery()").as_deref() == Some("f")
    });
    assert_eq!(ha.try_psql(new, timeline).as_deref(), Some("00000005"));
    assert_eq!(record(&ha)["timeline"], 5, "{}", record(&ha));
    ha.try_psql(new, "INSERT INTO ha_writes VALUES (-5)")
        .expect("a commit on the new primary");
    let other = 3 - new;
    let replayed = |ha: &HaCluster, i| {
        ha.try_psql(i, "SELECT count(*) FROM ha_writes WHERE id = -5")
            .as_deref()
            == Some("1")
    };
    ha.wait_for(
        "the standby on timeline 1 to follow onto timeline 5",
        Duration::from_secs(20),
        |ha| ha.streams_from(other, new) && replayed(ha, other),
    );
    ha.start_agent(0);
    ha.wait_for("the old primary to rejoin", Duration::from_secs(60), |ha| {
        ha.streams_from(0, new) && replayed(ha, 0)
    });
}

#[test]
fn ha_frozen_primary_agent_is_replaced_and_fenced_with_one_writer_at_a_time() {
    frozen_agent(&HaCluster::up());
}

#[test]
fn ha_short_stalls_and_one_etcd_member_change_nothing_and_lost_quorum_demotes_the_primary() {
    stalls_and_etcd_quorum(HaCluster::up());
}

/// etcd's leader member dies (SIGKILL, as in a rolling restart): until the other two elect a
/// new leader no lease can be renewed. The primary keeps its role and its server (no fence, no
/// failover) and writes go on.
#[test]
fn ha_etcd_leader_loss_fences_nothing() {
    etcd_leader_loss(HaCluster::up());
}

#[test]
fn ha_postgres_crash_only_is_restarted_in_place() {
    postgres_crash(&HaCluster::up());
}

#[test]
fn ha_hung_primary_is_killed_and_restarted_in_place() {
    hung_primary(&HaCluster::up());
}

/// An async standby outside the sync record received WAL the sync standby never got, then the
/// primary died: the sync standby is promoted, and the async one, past the fork, could never
/// follow it as it is (PostgreSQL refuses the new timeline on every try). Its agent sees it
/// stuck behind the leader's timeline and rejoins it by pg_rewind.
#[test]
fn ha_a_standby_past_the_fork_is_rewound_and_follows_the_new_primary() {
    let mut ha = HaCluster::up_with(|text| {
        let policy = text.replacen(
            "standbys = [\n    \"pg_slave\",\n    \"pg_asyncslave\",\n]",
            "standbys = [\"pg_slave\"]",
            1,
        );
        assert_ne!(policy, text, "init's sync policy changed:\n{text}");
        policy
    });
    ha.control_ok(&["pause"]);
    // Paused, nobody re-points pg_slave: it stops receiving.
    for sql in [
        "ALTER SYSTEM SET primary_conninfo = ''",
        "SELECT pg_reload_conf()",
    ] {
        ha.try_psql(1, sql).expect("detach pg_slave");
    }
    ha.wait_for(
        "pg_slave to stop receiving",
        Duration::from_secs(10),
        |ha| {
            ha.try_psql(1, "SELECT count(*) FROM pg_stat_wal_receiver")
                .as_deref()
                == Some("0")
        },
    );
    // A commit that waits for no standby reaches pg_asyncslave only.
    ha.try_psql(
        0,
        "SET synchronous_commit = local; INSERT INTO ha_writes VALUES (-1)",
    )
    .expect("a local commit");
    let has_it = |ha: &HaCluster, i| ha.try_psql(i, "SELECT count(*) FROM ha_writes WHERE id = -1");
    ha.wait_for(
        "pg_asyncslave to replay it",
        Duration::from_secs(10),
        |ha| has_it(ha, 2).as_deref() == Some("1"),
    );
    assert_eq!(has_it(&ha, 1).as_deref(), Some("0"));

    ha.kill_agent(0);
    ha.kill_postgres(0);
    ha.control_ok(&["resume"]);
    let started = Instant::now();
    ha.wait_for("pg_slave to lead", Duration::from_secs(20), |ha| {
        ha.leader().as_deref() == Some("pg_slave")
    });
    // A standby past the fork may stream the old timeline's WAL up to the fork for a moment
    // on every try: what proves it follows is a new commit replayed.
    ha.wait_for(
        "the new primary to take a commit",
        Duration::from_secs(20),
        |ha| {
            ha.try_psql(
                1,
                "SET synchronous_commit = local; INSERT INTO ha_writes VALUES (-2)",
            )
            .is_some()
        },
    );
    let replayed = |ha: &HaCluster| {
        ha.try_psql(2, "SELECT count(*) FROM ha_writes WHERE id = -2")
            .as_deref()
            == Some("1")
    };
    ha.wait_for(
        "pg_asyncslave to replay the new primary's commit",
        Duration::from_secs(60),
        replayed,
    );
    eprintln!(
        "standby past the fork: follows the new primary {:.1} s after the resume",
        started.elapsed().as_secs_f64()
    );
    let log = ha.agent_log(2);
    assert!(
        log.contains("past `pg_slave`'s fork") && log.contains("rewound by pg_rewind"),
        "the agent says why it rejoined:\n{log}"
    );
    // Rewound to the fork: the commit only it had is gone, as on the new primary.
    assert_eq!(has_it(&ha, 2).as_deref(), Some("0"));
}

#[test]
fn ha_agent_refuses_an_unreachable_etcd_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgrepl.toml");
    let init = pgrepl()
        .args(["init", "--cluster"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(init.status.success());
    std::fs::create_dir(dir.path().join(".pgrepl")).unwrap();
    let output = pgrepl()
        .args(["agent", "--node", "pg_master", "--cluster"])
        .arg(&file)
        .args(["--etcd", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("give its client URLs with --etcd"),
        "{stderr}"
    );
}
