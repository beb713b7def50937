//! `pgrepl resync` (issue 23) on PostgreSQL 17 and 18: a standby stopped while the primary
//! changes heavily and recycles the WAL it would need, then rebuilt from the changed blocks;
//! afterwards it streams, pg_amcheck finds nothing, and every table hashes as on the primary.
//! The same after a crash half-way through the combine, then `resync` again. Where it does
//! not apply (15), it says why and re-clones. With agents, a standby whose node was down
//! while its WAL was recycled is resynced by its own agent.

use std::process::{Command, Output};

use crate::support::cluster::TestCluster;
use crate::support::ha::{HaCluster, HaNodes};
use crate::support::harness::PgInstall;
use crate::support::{capability, eventually, pgrepl, stderr};

const ASYNC: usize = 2;

/// The cluster's heavy day while the async standby is away: updates, deletes, inserts, a
/// dropped and a created table, a truncated one, an index rebuilt, a new database.
const CHANGES: &str = "\
    UPDATE keep SET v = 'changed' WHERE id % 20 = 0; \
    DELETE FROM keep WHERE id % 50 = 1; \
    INSERT INTO keep SELECT g, md5(g::text) FROM generate_series(200001, 230000) g; \
    DROP TABLE gone; \
    DROP TABLE IF EXISTS fresh; \
    CREATE TABLE fresh AS SELECT g AS id FROM generate_series(1, 5000) g; \
    TRUNCATE shrunk; \
    INSERT INTO shrunk SELECT generate_series(1, 10); \
    REINDEX TABLE keep";

fn pgrepl_with(cluster: &TestCluster, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = pgrepl();
    command
        .args(args)
        .args(["--cluster", cluster.file.to_str().unwrap()])
        .env_remove("PGPASSWORD");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("pgrepl runs")
}

/// Every user table of node `i`'s database `db` with an ordered hash of its rows.
fn hashes(cluster: &TestCluster, i: usize, db: &str) -> String {
    let tables = cluster.psql_in(i, db, "SELECT string_agg(relname, ' ' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace");
    tables
        .split_whitespace()
        .map(|t| {
            let sum = cluster.psql_in(
                i,
                db,
                &format!("SELECT md5(coalesce(string_agg(r::text, ',' ORDER BY r::text), '')) FROM {t} r"),
            );
            format!("{t}={sum}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The standby's WAL segment at its last restartpoint (pg_controldata), and whether the
/// primary still has it.
fn needed_segment_gone(cluster: &TestCluster, install: &PgInstall) -> (String, bool) {
    let data = cluster.dir.path().join(".pgrepl/pg_asyncslave/data");
    let out = Command::new(install.bin("pg_controldata"))
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let segment = text
        .lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint's REDO WAL file:"))
        .expect("pg_controldata names the REDO WAL file")
        .trim()
        .to_owned();
    let present = cluster.psql(
        0,
        &format!("SELECT count(*) FROM pg_ls_waldir() WHERE name = '{segment}'"),
    );
    (segment, present == "0")
}

fn amcheck(cluster: &TestCluster, install: &PgInstall, i: usize) {
    let out = Command::new(install.bin("pg_amcheck"))
        .args(["-h", cluster.socket_dir().to_str().unwrap()])
        .args(["-p", &cluster.ports[i].to_string()])
        .args(["-U", "postgres", "--all", "--heapallindexed"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "pg_amcheck on node {i}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// Stops the async standby, changes the primary heavily, recycles the WAL, and checks that
/// the standby could not come back by streaming.
/// `db`: the database created meanwhile.
fn away_while_everything_changes(cluster: &TestCluster, install: &PgInstall, db: &str) {
    cluster.psql(
        0,
        "CREATE TABLE IF NOT EXISTS gone AS SELECT g FROM generate_series(1, 10000) g",
    );
    cluster.ok(&["stop", "pg_asyncslave"]);
    cluster.psql(0, CHANGES);
    cluster.psql(0, &format!("CREATE DATABASE {db}"));
    cluster.psql_in(
        0,
        db,
        "CREATE EXTENSION amcheck; CREATE TABLE o AS SELECT g FROM generate_series(1, 1000) g",
    );
    cluster.psql(0, "ALTER SYSTEM SET wal_keep_size = 0");
    cluster.psql(0, "SELECT pg_reload_conf()");
    for _ in 0..4 {
        cluster.psql(0, "SELECT pg_switch_wal()");
        cluster.psql(0, "CHECKPOINT");
    }
    let (segment, gone) = needed_segment_gone(cluster, install);
    assert!(
        gone,
        "the primary still has {segment}: the standby could stream"
    );
}

/// The standby streams again and holds what the primary holds at the same LSN, in `dbs`.
fn same_database(cluster: &TestCluster, install: &PgInstall, dbs: &[&str]) {
    let lsn = cluster.psql(0, "SELECT pg_current_wal_lsn()");
    let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'");
    eventually(
        &format!("replay past {lsn}"),
        std::time::Duration::from_secs(30),
    )
    .until(|| cluster.psql(ASYNC, &caught_up) == "t");
    assert_eq!(
        cluster.psql(0, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pg_asyncslave' AND state = 'streaming'"),
        "1"
    );
    for db in dbs {
        let primary = hashes(cluster, 0, db);
        assert!(!primary.is_empty(), "{db} has tables");
        assert_eq!(hashes(cluster, ASYNC, db), primary, "{db}");
    }
    amcheck(cluster, install, ASYNC);
}

fn seed(cluster: &TestCluster) {
    cluster.psql(
        0,
        "CREATE EXTENSION amcheck; \
        CREATE TABLE keep AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g; \
        CREATE INDEX keep_id ON keep (id); \
        CREATE TABLE shrunk AS SELECT g FROM generate_series(1, 100000) g; \
        CHECKPOINT",
    );
}

#[test]
fn resync_rebuilds_a_standby_whose_wal_is_gone_from_the_changed_blocks() {
    let test = "resync_rebuilds_a_standby_whose_wal_is_gone_from_the_changed_blocks";
    for major in [17, 18] {
        let Some(install) = PgInstall::all().into_iter().find(|i| i.major == major) else {
            capability::skip(
                test,
                &format!("pg{major}"),
                &format!("run scripts/install-pg {major}"),
            );
            continue;
        };
        let bin = install.bin_dir.to_str().unwrap().to_owned();
        let cluster = TestCluster::new();
        cluster.ok(&["up", "--pg-bin", &bin]);
        assert_eq!(
            cluster.psql(0, "SHOW summarize_wal"),
            "on",
            "up sets it on 17+"
        );
        seed(&cluster);

        // Once straight through.
        away_while_everything_changes(&cluster, &install, "other1");
        let out = cluster.ok(&["resync", "pg_asyncslave", "--force", "--pg-bin", &bin]);
        let said = stderr(&out);
        assert!(
            said.contains("resynced by an incremental backup"),
            "{major}: {said}"
        );
        eprintln!(
            "PostgreSQL {major}: {}",
            said.lines().find(|l| l.contains("resynced")).unwrap()
        );
        same_database(&cluster, &install, &["postgres", "other1"]);

        // Again, crashing half-way through the combine: the node does not start so, and
        // `resync` run again finishes what was staged.
        away_while_everything_changes(&cluster, &install, "other2");
        let crashed = pgrepl_with(
            &cluster,
            &["resync", "pg_asyncslave", "--force", "--pg-bin", &bin],
            &[("PGREPL_FAULT", "mid_combine")],
        );
        assert!(!crashed.status.success(), "{}", stderr(&crashed));
        assert!(
            stderr(&crashed).contains("dying half-way"),
            "{}",
            stderr(&crashed)
        );
        let data = cluster.dir.path().join(".pgrepl/pg_asyncslave/data");
        assert!(
            !data.join("global/pg_control").exists(),
            "a half-combined directory must not start"
        );
        let start = cluster.pgrepl(&["start", "pg_asyncslave", "--pg-bin", &bin]);
        assert!(!start.status.success(), "a half-combined node started");
        let out = cluster.ok(&["resync", "pg_asyncslave", "--force", "--pg-bin", &bin]);
        assert!(
            stderr(&out).contains("finishing a resync cut short"),
            "{}",
            stderr(&out)
        );
        same_database(&cluster, &install, &["postgres", "other1", "other2"]);
        cluster.ok(&["down", "--purge", "--pg-bin", &bin]);
    }
}

#[test]
fn resync_says_why_it_re_clones_where_it_does_not_apply() {
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    cluster.ok(&["stop", "pg_asyncslave"]);
    let out = cluster.ok(&["resync", "pg_asyncslave"]);
    let said = stderr(&out);
    assert!(
        said.contains(
            "re-cloned with a base backup: PostgreSQL 15 has no incremental backups (17 or later)"
        ),
        "{said}"
    );
    assert_eq!(
        cluster.psql(
            0,
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pg_asyncslave'"
        ),
        "1"
    );
    // The primary is refused, in one line.
    let out = cluster.pgrepl(&["resync", "pg_master"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`pg_master` is the primary; resync rebuilds a standby"),
        "{}",
        stderr(&out)
    );
}

/// The async standby's node goes down (agent and server); meanwhile the primary recycles the
/// WAL it would need. Started again, it cannot stream; its agent sees it starved while the
/// leader is ahead, asks the leader for the WAL, finds it gone, and resyncs it.
#[test]
fn ha_an_agent_resyncs_its_standby_whose_wal_was_recycled_while_it_was_down() {
    let test = "ha_an_agent_resyncs_its_standby_whose_wal_was_recycled_while_it_was_down";
    let Some(install) = PgInstall::all().into_iter().find(|i| i.major == 17) else {
        capability::skip(test, "pg17", "run scripts/install-pg 17");
        return;
    };
    let bin = install.bin_dir.to_str().unwrap().to_owned();
    let mut ha = HaCluster::up_with_args(str::to_owned, &["--pg-bin", &bin]);
    let sql = |ha: &HaCluster, i: usize, q: &str| {
        ha.try_psql(i, q)
            .unwrap_or_else(|| panic!("psql on {i}: {q}\n{}", ha.logs()))
    };
    sql(
        &ha,
        0,
        "CREATE TABLE moved AS SELECT g AS id FROM generate_series(1, 100000) g",
    );
    ha.wait_for(
        "the async standby to stream",
        std::time::Duration::from_secs(20),
        |ha| ha.streams_from(ASYNC, 0),
    );
    ha.kill_agent(ASYNC);
    ha.signal_postgres(ASYNC, libc::SIGINT);
    ha.wait_for(
        "the async standby to stop",
        std::time::Duration::from_secs(20),
        |ha| ha.try_psql(ASYNC, "SELECT 1").is_none(),
    );
    sql(&ha, 0, "UPDATE moved SET id = -id WHERE id % 10 = 0");
    sql(&ha, 0, "ALTER SYSTEM SET wal_keep_size = 0");
    sql(&ha, 0, "SELECT pg_reload_conf()");
    for _ in 0..4 {
        sql(&ha, 0, "SELECT pg_switch_wal()");
        sql(&ha, 0, "CHECKPOINT");
    }
    let started = std::time::Instant::now();
    ha.start_agent(ASYNC);
    ha.wait_for(
        "the agent to resync its standby",
        std::time::Duration::from_secs(90),
        |ha| {
            ha.agent_log(ASYNC)
                .contains("resynced by an incremental backup")
                && ha.streams_from(ASYNC, 0)
        },
    );
    eprintln!(
        "agent resync: streaming again {:.1} s after its agent started",
        started.elapsed().as_secs_f64()
    );
    let log = ha.agent_log(ASYNC);
    assert!(log.contains("the WAL it needs may be gone"), "{log}");
    assert!(log.contains("cannot catch up by streaming"), "{log}");
    let count = "SELECT count(*) FILTER (WHERE id < 0) FROM moved";
    let want = sql(&ha, 0, count);
    ha.wait_for(
        "the standby to replay the update",
        std::time::Duration::from_secs(20),
        |ha| ha.try_psql(ASYNC, count).as_deref() == Some(want.as_str()),
    );
    assert_eq!(want, "10000");
}
