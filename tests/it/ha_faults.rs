//! Faults the agents' decisions must survive, reproduced with real processes: a primary whose
//! server can no longer start, a member on the old timeline past the fork that ranks first by
//! position, a new leader's agent dying between its sync record and its promotion, and a
//! primary that hangs while its agent waits on a lock in an idle round. Each test says what
//! it checks; what the agents do about it is `src/ha`'s.

use std::time::{Duration, Instant};

use pgrepl::ha::decide::HUNG_AFTER;

use crate::support::ha::scenarios::restarted_in_place;
use crate::support::ha::{
    assert_one_writer_at_a_time, docker_engine, HaCluster, HaNodes, Writer, TTL,
};
use crate::support::harness;

/// The agents' default primary start timeout (Timing::start_timeout).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What makes the primary's server refuse to start, and what PostgreSQL says about it.
const BAD_SETTING: &str = "shared_buffers = 'nonsense'\n";
const SERVER_SAYS: &str = "invalid value for parameter \"shared_buffers\"";
/// pg_ctl's own line, which says nothing.
const PG_CTL_SAYS: &str = "Examine the log output";

#[test]
fn ha_primary_that_cannot_start_is_replaced() {
    primary_that_cannot_start(HaCluster::up());
}

#[test]
fn ha_docker_primary_that_cannot_start_is_replaced() {
    let Some(_engine) = docker_engine("ha_docker_primary_that_cannot_start_is_replaced") else {
        return;
    };
    primary_that_cannot_start(HaCluster::up_docker());
}

/// The primary's server crashes and its data no longer starts (a setting it refuses): its
/// agent, alive and holding the lease, must give the lead up rather than restart in place for
/// ever, so a standby takes writes within the start timeout, nothing acknowledged is lost, and
/// the agent says PostgreSQL's reason, without repeating it on every tick.
fn primary_that_cannot_start(ha: HaCluster) {
    let writer = Writer::start(&ha);
    writer.wait_ack(&ha, Duration::from_secs(10), Instant::now(), |a| {
        a.node == 0
    });
    std::thread::sleep(Duration::from_secs(1));

    let auto_conf = ha.data_dir(0).join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto_conf).expect("the primary's postgresql.auto.conf");
    text.push_str(BAD_SETTING);
    std::fs::write(&auto_conf, text).unwrap();
    let logged_before = ha.agent_log(0).len();
    let killed = Instant::now();
    ha.kill_postgres(0);

    let limit = START_TIMEOUT + Duration::from_secs(3);
    let first = writer.first_ack(limit, killed, |a| a.node != 0);
    let window = first.map_or_else(|| killed.elapsed(), |a| a.at.duration_since(killed));
    let log = ha
        .agent_log(0)
        .get(logged_before..)
        .unwrap_or_default()
        .to_owned();
    let failures = log
        .lines()
        .filter(|l| l.contains(SERVER_SAYS) || l.contains(PG_CTL_SAYS))
        .count();
    eprintln!(
        "primary that cannot start: {}; the old primary's agent logged the failed start {failures} times in {:.1} s, quoting the server: {}, pg_ctl's line: {}",
        match first {
            Some(a) => format!(
                "first acknowledged write on `{}` {:.2} s after the kill",
                ha.nodes[a.node],
                window.as_secs_f64()
            ),
            None => format!("no acknowledged write on a standby within {limit:?}"),
        },
        window.as_secs_f64(),
        log.contains(SERVER_SAYS),
        log.contains(PG_CTL_SAYS),
    );
    let Some(first) = first else {
        panic!(
            "no acknowledged write on a standby within {limit:?} (start timeout {START_TIMEOUT:?} + 3 s); leader: {:?}\n{}",
            ha.leader(),
            ha.logs()
        );
    };
    let acks = writer.stop();
    ha.assert_nothing_lost(first.node, &acks);
    assert_one_writer_at_a_time(&acks, 0);
    assert!(
        log.contains(SERVER_SAYS),
        "the old primary's agent quotes PostgreSQL's reason ({SERVER_SAYS}):\n{log}"
    );
    assert!(
        !log.contains(PG_CTL_SAYS),
        "the old primary's agent says more than pg_ctl's `{PG_CTL_SAYS}`:\n{log}"
    );
    // At most once a second: a failure repeated every tick drowns everything else.
    let allowed = window.as_secs().max(1) as usize;
    assert!(
        failures <= allowed,
        "the failed start was logged {failures} times in {window:?} (at most {allowed}):\n{log}"
    );
}

/// The fourth node: a third standby of `FIRST 2`.
const STANDBY3: &str = "pg_standby3";

/// Four nodes, `FIRST 2 (pg_slave, pg_asyncslave, pg_standby3)`. pg_standby3's agent is down
/// during a failover and its server holds old-timeline WAL past the fork (16 MB and more: two
/// WAL switches the others never received). Its agent comes back and, before it rewinds it
/// (10 s of being stuck), the new primary dies after acknowledging commits on the new
/// timeline. pg_standby3 ranks first by position but lacks every one of them: the next
/// primary must hold them all, so it must not be pg_standby3 while that is on the old
/// timeline.
#[test]
fn ha_four_nodes_first_two_never_elect_a_stale_member() {
    let port = harness::pick_port();
    let mut ha = HaCluster::up_with(|text| {
        let edited = text
            .replacen(
                "num_sync = 1\nstandbys = [\n    \"pg_slave\",\n    \"pg_asyncslave\",\n]",
                &format!(
                    "num_sync = 2\nstandbys = [\n    \"pg_slave\",\n    \"pg_asyncslave\",\n    \"{STANDBY3}\",\n]"
                ),
                1,
            )
            // Three standbys, plus a rewind's or a clone's sessions.
            .replacen("max_wal_senders = \"4\"", "max_wal_senders = \"10\"", 1);
        assert_ne!(edited, text, "init's sync policy changed:\n{text}");
        format!("{edited}\n[[nodes]]\nname = \"{STANDBY3}\"\nrole = \"standby\"\nport = {port}\n")
    });
    assert_eq!(ha.nodes.len(), 4);
    let s3 = 3;
    let psql = |ha: &HaCluster, i: usize, sql: &str| {
        ha.try_psql(i, sql)
            .unwrap_or_else(|| panic!("`{sql}` on `{}`\n{}", ha.nodes[i], ha.logs()))
    };
    ha.wait_for("every standby to stream", Duration::from_secs(30), |ha| {
        (1..4).all(|i| ha.streams_from(i, 0))
    });

    // (1) pg_standby3 gets WAL the other two never will. Paused, no agent re-points a standby,
    // so pg_slave and pg_asyncslave stay detached; pg_standby3's agent is down.
    ha.control_ok(&["pause"]);
    ha.kill_agent(s3);
    for i in [1, 2] {
        psql(&ha, i, "ALTER SYSTEM SET primary_conninfo = ''");
        psql(&ha, i, "SELECT pg_reload_conf()");
    }
    ha.wait_for(
        "pg_slave and pg_asyncslave to stop receiving",
        Duration::from_secs(10),
        |ha| {
            [1, 2].iter().all(|&i| {
                ha.try_psql(i, "SELECT count(*) FROM pg_stat_wal_receiver")
                    .as_deref()
                    == Some("0")
            })
        },
    );
    // Commits that wait for no standby, each followed by a WAL switch: the position jumps to
    // the next segment, so the lead is at least one whole segment.
    for id in [-1, -2] {
        psql(
            &ha,
            0,
            &format!("SET synchronous_commit = local; INSERT INTO ha_writes VALUES ({id})"),
        );
        psql(&ha, 0, "SELECT pg_switch_wal()");
    }
    let end = psql(&ha, 0, "SELECT pg_current_wal_flush_lsn()");
    ha.wait_for(
        "pg_standby3 to receive and replay it all",
        Duration::from_secs(10),
        |ha| {
            ha.try_psql(s3, &format!("SELECT pg_last_wal_replay_lsn() >= '{end}'"))
                .as_deref()
                == Some("t")
        },
    );
    let positions = (1..4)
        .map(|i| {
            let at = psql(
                &ha,
                i,
                "SELECT pg_last_wal_receive_lsn() || ' received, ' || pg_last_wal_replay_lsn() || ' replayed'",
            );
            format!("{}: {at}", ha.nodes[i])
        })
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!("stale member: primary at {end}; {positions}");
    for i in [1, 2] {
        let behind = psql(
            &ha,
            i,
            &format!(
                "SELECT pg_wal_lsn_diff('{end}', pg_last_wal_replay_lsn()) >= 16 * 1024 * 1024"
            ),
        );
        assert_eq!(behind, "t", "a segment behind pg_standby3: {positions}");
    }

    // (2) The primary's node dies; with pg_standby3's agent down, pg_slave or pg_asyncslave
    // is elected onto timeline 2. pg_standby3 stays on timeline 1, past the fork.
    ha.kill_agent(0);
    ha.kill_postgres(0);
    ha.control_ok(&["resume"]);
    ha.wait_for(
        "pg_slave or pg_asyncslave to lead",
        Duration::from_secs(20),
        |ha| matches!(ha.leader().as_deref(), Some("pg_slave" | "pg_asyncslave")),
    );
    let new = ha
        .nodes
        .iter()
        .position(|n| Some(n.as_str()) == ha.leader().as_deref())
        .unwrap();
    ha.wait_for(
        "the new primary to be promoted",
        Duration::from_secs(20),
        |ha| ha.try_psql(new, "SELECT pg_is_in_recovery()").as_deref() == Some("f"),
    );
    let has_stale_rows = |ha: &HaCluster, i: usize| {
        ha.try_psql(i, "SELECT count(*) FROM ha_writes WHERE id < 0")
            .as_deref()
            == Some("2")
    };
    assert!(
        !has_stale_rows(&ha, new),
        "the new primary never received them"
    );
    assert!(has_stale_rows(&ha, s3), "pg_standby3 holds them");

    // (3) The old primary's agent comes back and rejoins: with it, FIRST 2 can acknowledge.
    ha.start_agent(0);
    ha.wait_for(
        "pg_master to rejoin the new primary",
        Duration::from_secs(60),
        |ha| ha.streams_from(0, new),
    );
    // Its agent's rejoin ends after the server streams: wait for the record it then publishes,
    // so every member the next election counts speaks for its server as it is. Today the
    // rejoin waits for every standby of the policy to reach its sync state, which pg_standby3
    // (past the fork) never does: it ends at its 30 s timeout.
    let follows_new = |ha: &HaCluster| {
        let record = ha.etcd_get("members/pg_master").unwrap_or_default();
        let record: serde_json::Value = serde_json::from_str(&record).unwrap_or_default();
        record["running"] == true && record["follows"] == ha.nodes[new].as_str()
    };
    ha.wait_for(
        "pg_master's agent to publish that it follows the new primary",
        Duration::from_secs(45),
        follows_new,
    );
    let writer = Writer::start(&ha);
    let started = Instant::now();
    writer.wait_ack(&ha, Duration::from_secs(20), started, |a| a.node == new);
    std::thread::sleep(Duration::from_secs(2));
    let on_new = writer.acks().iter().filter(|a| a.node == new).count();
    assert!(
        on_new >= 10,
        "the new primary acknowledged {on_new} commits\n{}",
        ha.logs()
    );

    // (4) pg_standby3's agent comes back; before it rewinds its node (after 10 s of being
    // stuck), the new primary's node dies.
    let restarted = Instant::now();
    ha.start_agent(s3);
    ha.wait_for(
        "pg_standby3's member record",
        Duration::from_secs(10),
        |ha| ha.etcd_get(&format!("members/{STANDBY3}")).is_some(),
    );
    let records = |ha: &HaCluster| -> String {
        ha.nodes
            .iter()
            .map(|n| {
                format!(
                    "  {n}: {}",
                    ha.etcd_get(&format!("members/{n}")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = records(&ha);
    let sync = ha.etcd_get("sync").unwrap_or_default();
    let killed = Instant::now();
    ha.kill_agent(new);
    ha.kill_postgres(new);
    eprintln!(
        "stale member: `{}` killed {:.1} s after pg_standby3's agent started; sync record {sync}; member records before:\n{before}",
        ha.nodes[new],
        killed.duration_since(restarted).as_secs_f64()
    );

    // (5) The next primary holds every acknowledged commit, and is not the stale member.
    let winner = writer.wait_ack(&ha, Duration::from_secs(30), killed, |a| a.node != new);
    let took = winner.at.duration_since(killed);
    let acks = writer.stop();
    let s3_log = ha.agent_log(s3);
    let rewound = s3_log.contains("rewound by pg_rewind");
    eprintln!(
        "stale member: `{}` took writes {:.2} s after the kill (leader record {:?}); pg_standby3 rewound first: {rewound}; member records after:\n{}",
        ha.nodes[winner.node],
        took.as_secs_f64(),
        ha.leader(),
        records(&ha)
    );
    ha.assert_nothing_lost(winner.node, &acks);
    assert!(
        winner.node != s3 || rewound,
        "pg_standby3 was elected from the old timeline\n{}",
        ha.logs()
    );
}

/// The value of `PGREPL_FAULT` that makes an agent exit right after writing a promotion's sync
/// record, before pg_promote.
const FAULT_AFTER_SYNC_RECORD: (&str, &str) = ("PGREPL_FAULT", "after_sync_record");

/// The standby elected after a node loss dies (its agent exits at the fault point) between
/// writing the new sync record and promoting. Started again without the fault, as systemd
/// would, the cluster still elects a leader, writes resume, nothing acknowledged is lost.
#[test]
fn ha_agent_dying_between_sync_record_and_promotion_still_elects() {
    let mut ha = HaCluster::up();
    for i in [1, 2] {
        ha.kill_agent(i);
        ha.start_agent_with(i, &[FAULT_AFTER_SYNC_RECORD]);
    }
    let writer = Writer::start(&ha);
    // The restarted standbys' agents have published again and the primary acknowledges.
    let armed = Instant::now() + TTL;
    writer.wait_ack(&ha, Duration::from_secs(20), armed, |a| a.node == 0);

    let killed = Instant::now();
    ha.kill_agent(0);
    ha.kill_postgres(0);
    // Any agent that exits at the fault point is started again without it, once.
    let mut died = Vec::new();
    let deadline = killed + Duration::from_secs(45);
    let first = loop {
        for i in [1, 2] {
            if !died.contains(&i) && ha.agent_exited(i) {
                let sync = ha.etcd_get("sync").unwrap_or_default();
                eprintln!(
                    "fault point: `{}`'s agent exited {:.2} s after the kill; sync record {sync}",
                    ha.nodes[i],
                    killed.elapsed().as_secs_f64()
                );
                died.push(i);
                ha.start_agent(i);
            }
        }
        if let Some(ack) = writer.first_ack(Duration::ZERO, killed, |a| a.node != 0) {
            break ack;
        }
        assert!(
            Instant::now() < deadline,
            "no acknowledged write on a standby within 45 s; agents that exited at the fault point: {:?}; leader {:?}\n{}",
            died.iter().map(|&i| &ha.nodes[i]).collect::<Vec<_>>(),
            ha.leader(),
            ha.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "fault point: `{}` took writes {:.2} s after the kill",
        ha.nodes[first.node],
        first.at.duration_since(killed).as_secs_f64()
    );
    let acks = writer.stop();
    assert!(
        !died.is_empty(),
        "no agent exited at the fault point: the elected standby's agent was started with PGREPL_FAULT=after_sync_record\n{}",
        ha.logs()
    );
    assert!(ha.leader().is_some(), "{}", ha.logs());
    ha.assert_nothing_lost(first.node, &acks);
    assert_one_writer_at_a_time(&acks, 0);
}

/// A session holds `pg_settings` locked (a DBA's long transaction), so the query the primary's
/// agent runs in its idle round (what the server runs, for `config show`) waits; then the
/// server hangs. The probe, which reads no catalog view, goes on answering until the hang; the
/// agent must go on probing through it and kill and restart the hung server as it would
/// without the lock. CI once saw the same without any lock: a server stopped between the
/// probe's answer and the idle round's query left the agent waiting on it for ever.
#[test]
fn ha_primary_hung_while_its_agent_waits_on_a_lock_is_still_restarted_in_place() {
    let ha = HaCluster::up();
    let mut holder = None;
    let fault = |ha: &HaCluster| {
        let lock = "BEGIN; LOCK TABLE pg_catalog.pg_settings IN ACCESS EXCLUSIVE MODE; \
                    SELECT pg_sleep(600)";
        let mut psql = ha.psql(0, lock);
        psql.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        holder = Some(psql.spawn().expect("psql"));
        // Several idle rounds reach the lock.
        std::thread::sleep(Duration::from_secs(2));
        ha.signal_postgres(0, libc::SIGSTOP);
    };
    let says = ["KillHung", "RestartInPlace"];
    restarted_in_place(&ha, "hung behind a lock", fault, HUNG_AFTER, &says);
    let mut holder = holder.expect("the lock's session");
    let _ = holder.kill();
    let _ = holder.wait();
}
