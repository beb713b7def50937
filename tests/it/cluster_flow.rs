//! `pgrepl up`, `drill`, `failover`, `switchover`, `rejoin` and `down` on the local runtime,
//! checked by pgrepl and cross-checked with stock psql.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::cluster::TestCluster;
use crate::support::harness::{PgInstall, PgServer};
use crate::support::{capability, eventually, stderr, stdout};

#[test]
fn up_checks_drill_and_down_on_the_local_runtime() {
    let cluster = TestCluster::new();
    let started = Instant::now();
    let up = cluster.ok(&["up"]);
    eprintln!(
        "pgrepl up of an empty local cluster: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        stderr(&up).contains("check: row 1 written on `pg_master` is on every standby"),
        "{}",
        stderr(&up)
    );
    // Stock psql agrees with pgrepl about the sync states.
    assert_eq!(
        cluster.psql(
            0,
            "select application_name, sync_state from pg_stat_replication order by sync_state desc"
        ),
        "pg_slave|sync\npg_asyncslave|potential"
    );
    cluster.assert_up_changes_nothing(&[]);
    // Every conninfo in the summary works with stock psql.
    let json = cluster.ok(&["up", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    for node in summary["nodes"].as_array().unwrap() {
        let conninfo = node["conninfo"].as_str().unwrap();
        let output = Command::new(PgInstall::default_install().bin("psql"))
            .args([conninfo, "-Atc", "select 1"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "1",
            "{conninfo}: {}",
            stderr(&output)
        );
    }

    let drill = cluster.pgrepl(&["drill", "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(&stdout(&drill)).unwrap_or_else(|_| panic!("{}", stderr(&drill)));
    assert_eq!(drill.status.code(), Some(0), "{report:#}");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 7);
    assert!(steps.iter().all(|s| s["passed"] == true));
    // The drill leaves the cluster healthy: pg_slave is primary, the old primary streams.
    assert_eq!(cluster.psql(1, "select pg_is_in_recovery()"), "f");
    assert_eq!(
        cluster.psql(
            1,
            "select count(*) from pg_stat_replication where state = 'streaming'"
        ),
        "2"
    );
    assert_eq!(
        cluster.psql(1, "show synchronous_standby_names"),
        "FIRST 1 (pg_master, pg_asyncslave)"
    );

    cluster.ok(&["down", "--purge"]);
    assert!(!cluster.dir.path().join(".pgrepl").exists());
    for &port in &cluster.ports {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still in use after down"
        );
    }
}

/// The drill's "row on every standby" checks replay, not just the row: a standby that applies
/// WAL late (here by `recovery_min_apply_delay`, in CI by load) has not created the drill's
/// table yet when the primary's commit returns (`synchronous_commit = on` waits for the flush),
/// and a table left by an earlier drill must not answer for this one's.
#[test]
fn the_drill_waits_for_a_standby_that_applies_late() {
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    for standby in [1, 2] {
        cluster.psql(standby, "alter system set recovery_min_apply_delay = '2s'");
        cluster.psql(standby, "select pg_reload_conf()");
    }
    let drill = cluster.pgrepl(&["drill", "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(&stdout(&drill)).unwrap_or_else(|_| panic!("{}", stderr(&drill)));
    assert_eq!(drill.status.code(), Some(0), "{report:#}");
    assert!(
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["passed"] == true),
        "{report:#}"
    );
}

#[test]
fn switchover_is_lossless_and_needs_no_reclone() {
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    cluster.psql(
        0,
        "create table sw(id int); insert into sw select generate_series(1, 100)",
    );
    let dry = cluster.ok(&["switchover", "--to", "pg_asyncslave", "--dry-run"]);
    assert!(stdout(&dry).contains("dry run: nothing was changed"));
    assert_eq!(cluster.psql(0, "select pg_is_in_recovery()"), "f");

    let output = cluster.ok(&["switchover", "--to", "pg_asyncslave"]);
    assert!(
        stdout(&output).contains("restarted as a standby"),
        "{}",
        stdout(&output)
    );
    assert_eq!(cluster.psql(2, "select pg_is_in_recovery()"), "f");
    assert_eq!(cluster.psql(0, "select pg_is_in_recovery()"), "t");
    assert_eq!(cluster.psql(2, "select count(*) from sw"), "100");
    cluster.psql(2, "insert into sw values (101)");
    // The old primary follows without a re-clone: its data directory was never replaced.
    eventually("row 101 on the old primary", Duration::from_secs(30))
        .until(|| cluster.psql(0, "select count(*) from sw") == "101");
    assert_eq!(
        cluster.psql(
            2,
            "select count(*) from pg_stat_replication where state = 'streaming'"
        ),
        "2"
    );
}

/// `reinit` refuses the primary and a standby that streams (unless forced), and rebuilds a
/// standby whose data is damaged so that it streams again.
#[test]
fn reinit_rebuilds_a_damaged_standby_and_refuses_the_primary() {
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    cluster.psql(
        0,
        "create table ri(id int); insert into ri select generate_series(1, 50)",
    );
    let primary = cluster.pgrepl(&["reinit", "pg_master"]);
    assert!(!primary.status.success());
    assert!(
        stderr(&primary).contains("is the primary"),
        "{}",
        stderr(&primary)
    );
    let streaming = cluster.pgrepl(&["reinit", "pg_slave"]);
    assert!(!streaming.status.success());
    assert!(
        stderr(&streaming).contains("--force"),
        "{}",
        stderr(&streaming)
    );
    // Damaged: stopped and without pg_control, it cannot start.
    let stopped = cluster.ok(&["stop", "pg_asyncslave", "--json"]);
    let stopped: serde_json::Value = serde_json::from_slice(&stopped.stdout).unwrap();
    assert_eq!(stopped["command"], "stop", "{stopped}");
    assert_eq!(stopped["node"], "pg_asyncslave", "{stopped}");
    assert!(stopped["elapsed_ms"].is_u64(), "{stopped}");
    let data = cluster.dir.path().join(".pgrepl/pg_asyncslave/data");
    std::fs::remove_file(data.join("global/pg_control")).unwrap();
    assert!(!cluster.pgrepl(&["start", "pg_asyncslave"]).status.success());
    let output = cluster.ok(&["reinit", "pg_asyncslave"]);
    assert!(
        stdout(&output).contains("streams from `pg_master`"),
        "{}",
        stdout(&output)
    );
    cluster.psql(0, "insert into ri values (51)");
    eventually("row 51 on the rebuilt standby", Duration::from_secs(30))
        .until(|| cluster.psql(2, "select count(*) from ri") == "51");
    cluster.ok(&["status"]);
    assert!(
        !data.with_extension("before-rejoin").exists(),
        "the old data is gone"
    );
    // A streaming standby, forced.
    cluster.ok(&["reinit", "pg_slave", "--force"]);
    assert_eq!(cluster.psql(1, "select count(*) from ri"), "51");
}

#[test]
fn a_former_primary_is_never_started_as_a_second_primary() {
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    cluster.ok(&["failover", "--to", "pg_slave"]);
    // `up` refuses to start the fenced old primary and names the command that brings it back.
    let up = cluster.pgrepl(&["up"]);
    assert_eq!(up.status.code(), Some(2));
    assert!(
        stderr(&up).contains("pgrepl rejoin pg_master"),
        "{}",
        stderr(&up)
    );
    cluster.ok(&["rejoin", "pg_master"]);
    assert_eq!(cluster.psql(0, "select pg_is_in_recovery()"), "t");
    cluster.ok(&["up"]);
    // Both role changes, in order, with the timeline each began and where.
    cluster.ok(&["switchover", "--to", "pg_master"]);
    let json = cluster.ok(&["history", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let changes = history.as_array().unwrap();
    assert_eq!(changes.len(), 2, "{history:#}");
    for (change, (kind, from, to, timeline, by)) in changes.iter().zip([
        (
            "manual_failover",
            "pg_master",
            "pg_slave",
            2,
            "pgrepl failover",
        ),
        (
            "switchover",
            "pg_slave",
            "pg_master",
            3,
            "pgrepl switchover",
        ),
    ]) {
        assert_eq!(change["kind"], kind, "{history:#}");
        assert_eq!(change["from"], from, "{history:#}");
        assert_eq!(change["to"], to, "{history:#}");
        assert_eq!(change["timeline"], timeline, "{history:#}");
        assert_eq!(change["by"], by, "{history:#}");
        assert!(change["lsn"].is_string(), "{history:#}");
    }
    assert!(changes[0]["at_unix_ms"].as_u64() <= changes[1]["at_unix_ms"].as_u64());
    let text = stdout(&cluster.ok(&["history"]));
    assert!(
        text.contains("manual failover  pg_master -> pg_slave  timeline 2 at ")
            && text.contains("switchover  pg_slave -> pg_master  timeline 3 at "),
        "{text}"
    );
}

/// Split brain: the fenced old primary is started by hand after the failover and takes writes
/// the new primary never sees. `rejoin --rewind` takes it back to the fork with pg_rewind, in
/// place (no re-clone), and those writes are gone.
#[test]
fn rejoin_rewinds_a_former_primary_that_took_writes_after_the_failover() {
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    cluster.psql(
        0,
        "create table rw(id int, origin text); insert into rw select g, 'before' from generate_series(1, 1000) g",
    );
    cluster.ok(&["failover", "--to", "pg_slave"]);
    // pgrepl itself never starts the fenced primary.
    for command in ["start", "restart"] {
        let refused = cluster.pgrepl(&[command, "pg_master"]);
        assert_eq!(refused.status.code(), Some(2), "{command}");
        assert!(
            stderr(&refused).contains("bring it back with `pgrepl rejoin pg_master`"),
            "{}",
            stderr(&refused)
        );
    }
    let data = cluster.dir.path().join(".pgrepl/pg_master/data");
    // The killed postmaster's lock file is stale; its own sync names would block every commit.
    std::fs::remove_file(data.join("postmaster.pid")).unwrap();
    let mut rogue = PgServer::start_existing(&PgInstall::default_install(), data.clone());
    rogue.psql(
        "set synchronous_commit = local; insert into rw select g, 'split brain' from generate_series(1001, 1100) g",
    );
    rogue.stop();
    drop(rogue);
    cluster.psql(1, "insert into rw values (2000, 'after')");

    let dry = cluster.ok(&["rejoin", "pg_master", "--rewind", "--dry-run"]);
    assert!(
        stdout(&dry)
            .contains("its WAL runs past the fork (or it has none): rewind it with pg_rewind"),
        "{}",
        stdout(&dry)
    );
    assert!(stdout(&dry).contains("dry run: nothing was changed"));
    let inode = |path: &std::path::Path| {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    };
    let before = inode(&data);
    let rejoin = cluster.ok(&["rejoin", "pg_master", "--rewind"]);
    assert!(
        stdout(&rejoin).contains("rewound by pg_rewind (servers diverged at WAL location"),
        "{}",
        stdout(&rejoin)
    );
    assert_eq!(inode(&data), before, "the data directory was replaced");
    eventually("row 2000 on the rewound node", Duration::from_secs(30))
        .until(|| cluster.psql(0, "select count(*) from rw where id = 2000") == "1");
    assert_eq!(
        cluster.psql(
            0,
            "select origin, count(*) from rw group by origin order by origin"
        ),
        "after|1\nbefore|1000"
    );
    assert_eq!(cluster.psql(0, "select pg_is_in_recovery()"), "t");
    assert_eq!(
        cluster.psql(
            1,
            "select count(*) from pg_stat_replication where state = 'streaming'"
        ),
        "2"
    );
}

/// A cluster whose table `ff` holds rows 1..20 on pg_master and pg_asyncslave, and only 1..10
/// on pg_slave, which no longer receives: pg_asyncslave, the sync standby in its place, is
/// ahead of it by acknowledged commits.
fn async_standby_ahead() -> TestCluster {
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    cluster.psql(
        0,
        "create table ff(id int); insert into ff select generate_series(1, 10)",
    );
    put_async_standby_ahead(&cluster, 0, 1);
    cluster
}

/// `lagging` (a standby of `primary`) stops receiving, and `primary` commits rows 11..20, which
/// pg_asyncslave, the sync standby in its place, receives.
fn put_async_standby_ahead(cluster: &TestCluster, primary: usize, lagging: usize) {
    let names = ["pg_master", "pg_slave", "pg_asyncslave"];
    cluster.psql(lagging, "alter system set primary_conninfo = ''");
    cluster.psql(lagging, "select pg_reload_conf()");
    eventually(
        &format!("{} to stop streaming", names[lagging]),
        Duration::from_secs(30),
    )
    .until(|| {
        cluster.psql(
            primary,
            &format!(
                "select count(*) from pg_stat_replication where application_name = '{}'",
                names[lagging]
            ),
        ) == "0"
    });
    cluster.psql(primary, "insert into ff select generate_series(11, 20)");
    assert_eq!(cluster.psql(2, "select count(*) from ff"), "20");
}

/// After a failover, the most advanced standby (pg_asyncslave) follows the new timeline but
/// its last restartpoint is still on the old one. Once the next primary is fenced no receiver
/// runs on it, and the probe once read that restartpoint's timeline: the plan then thought it
/// on an older timeline, left it out of the catch-up, promoted a target without its WAL and
/// left it past the fork (seen in a stress run of the failover soak: "new timeline 3 forked
/// off current database system timeline 2 before current recovery point"). Its timeline is
/// its replay timeline, read with IDENTIFY_SYSTEM.
#[test]
fn a_second_failover_catches_up_from_a_standby_whose_restartpoint_is_on_the_old_timeline() {
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    cluster.psql(
        0,
        "create table ff(id int); insert into ff select generate_series(1, 10)",
    );
    cluster.ok(&["failover", "--to", "pg_slave"]);
    cluster.ok(&["rejoin", "pg_master"]);
    assert_eq!(
        cluster.psql(2, "select timeline_id from pg_control_checkpoint()"),
        "1",
        "pg_asyncslave made a restartpoint on the new timeline: the case is not set up"
    );
    put_async_standby_ahead(&cluster, 1, 0);
    let failover = cluster.ok(&["failover", "--to", "pg_master"]);
    assert!(
        stdout(&failover).contains("`pg_master` caught up with `pg_asyncslave`"),
        "{}",
        stdout(&failover)
    );
    assert_eq!(cluster.psql(0, "select count(*) from ff"), "20");
    cluster.psql(0, "insert into ff values (100)");
    eventually("row 100 on pg_asyncslave", Duration::from_secs(10))
        .until(|| cluster.psql(2, "select count(*) from ff") == "21");
}

/// A failover whose most advanced standby answers late (its postmaster stopped for 10 s, as a
/// swapping or overloaded machine holds a new session): the plan waits for its position
/// instead of leaving it out, the target catches up from it, and nothing it acknowledged is
/// lost. Leaving it out promoted pg_slave without rows 11..20 and left pg_asyncslave past the
/// fork, streaming the old timeline up to the fork over and over: a CI run then hung on the
/// new primary's first commit, which had no standby that could confirm it.
#[test]
fn a_failover_waits_for_a_running_standby_that_answers_late() {
    let cluster = async_standby_ahead();
    let pid_file = cluster
        .dir
        .path()
        .join(".pgrepl/pg_asyncslave/data/postmaster.pid");
    let postmaster: i32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: plain kill(2) on the test cluster's own postmaster.
    unsafe { libc::kill(postmaster, libc::SIGSTOP) };
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        // SAFETY: as above.
        unsafe { libc::kill(postmaster, libc::SIGCONT) };
    });
    let failover = cluster.pgrepl(&["failover", "--to", "pg_slave"]);
    resume.join().unwrap();
    assert!(
        failover.status.success(),
        "{}{}",
        stdout(&failover),
        stderr(&failover)
    );
    assert!(
        stdout(&failover).contains("`pg_slave` caught up with `pg_asyncslave`"),
        "{}",
        stdout(&failover)
    );
    assert_eq!(cluster.psql(1, "select count(*) from ff"), "20");
    // pg_asyncslave follows the new timeline and confirms commits: this returns.
    cluster.psql(1, "insert into ff values (100)");
    eventually("row 100 on pg_asyncslave", Duration::from_secs(10))
        .until(|| cluster.psql(2, "select count(*) from ff") == "21");
}

/// `failover --force` promotes a standby that lacks WAL another standby has: that WAL is lost
/// (the plan says so) and the standby holding it, past the fork, is rewound to follow.
#[test]
fn a_forced_failover_rejoins_the_standby_past_the_fork() {
    let cluster = async_standby_ahead();
    let dry = cluster.ok(&["failover", "--to", "pg_slave", "--dry-run"]);
    for expected in [
        "`pg_master` is a primary on timeline 1",
        "`pg_asyncslave` is a standby on timeline 1",
        "replication slots on `pg_master`: none",
        "from `pg_asyncslave` first",
    ] {
        assert!(
            stdout(&dry).contains(expected),
            "{expected}:\n{}",
            stdout(&dry)
        );
    }
    // pg_slave is behind pg_asyncslave by what it did not receive.
    let behind = stdout(&dry)
        .lines()
        .find(|l| l.contains("`pg_slave` is a standby"))
        .and_then(|l| l.split(", ").last()?.split(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{}", stdout(&dry)));
    assert!(behind > 0, "{}", stdout(&dry));
    // Over the lag limit the target is refused before the primary is touched.
    let refused = cluster.pgrepl(&["failover", "--to", "pg_slave", "--max-lag", "0"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("over the --max-lag limit of 0"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(cluster.psql(0, "select pg_is_in_recovery()"), "f");
    let forced = cluster.ok(&[
        "failover",
        "--to",
        "pg_slave",
        "--force",
        "--rewind",
        "--max-lag",
        "0",
    ]);
    assert!(
        stdout(&forced).contains("`pg_asyncslave` is")
            && stdout(&forced).contains("bytes ahead (--force): those bytes are lost"),
        "{}",
        stdout(&forced)
    );
    assert!(
        stdout(&forced).contains("`pg_asyncslave` rewound by pg_rewind"),
        "{}",
        stdout(&forced)
    );
    assert_eq!(cluster.psql(1, "select count(*) from ff"), "10");
    cluster.psql(1, "insert into ff values (100)");
    eventually("row 100 on pg_asyncslave", Duration::from_secs(30))
        .until(|| cluster.psql(2, "select count(*) from ff") == "11");
    assert_eq!(
        cluster.psql(2, "select max(id) from ff where id < 100"),
        "10"
    );
}

#[test]
fn bad_input_gets_one_line_and_starts_nothing() {
    let cluster = TestCluster::new();
    let _busy = std::net::TcpListener::bind(("127.0.0.1", cluster.ports[0])).unwrap();
    let output = cluster.pgrepl(&["up"]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "port {} for `pg_master` is in use",
            cluster.ports[0]
        )),
        "{err}"
    );
    assert!(!cluster
        .dir
        .path()
        .join(".pgrepl/pg_master/data/postmaster.pid")
        .exists());

    for (edit, expected) in [
        (
            (
                "runtime = \"local\"",
                "runtime = \"local\"\nflavour = \"mint\"",
            ),
            "unknown field `flavour`",
        ),
        (
            ("\"pg_slave\",", "\"pg_ghost\","),
            "`pg_ghost`, which is no standby",
        ),
    ] {
        let original = std::fs::read_to_string(&cluster.file).unwrap();
        std::fs::write(&cluster.file, original.replacen(edit.0, edit.1, 1)).unwrap();
        let output = cluster.pgrepl(&["up"]);
        assert_eq!(output.status.code(), Some(2));
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
        assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
        std::fs::write(&cluster.file, original).unwrap();
    }
}

/// Under a write load with synchronous_commit = on, where every acknowledged commit is recorded,
/// the primary is killed and the sync standby promoted: no acknowledged row may be missing.
/// `PGREPL_SOAK_ROUNDS` sets the rounds (CI: 3).
#[test]
fn zero_acknowledged_commits_lost_across_failovers() {
    let rounds: usize = std::env::var("PGREPL_SOAK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let cluster = TestCluster::new();
    cluster.ok(&["up"]);
    cluster.psql(0, "create table soak(id bigint primary key, round int)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut first_write_after_kill = Vec::new();
    // Node indexes: the sync standby becomes primary, the old primary rejoins.
    let (mut primary, mut sync) = (0usize, 1usize);
    for round in 0..rounds {
        let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (acked, stop, conninfo) =
                (acked.clone(), stop.clone(), cluster.sql_conninfo(primary));
            runtime.spawn(async move {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                let mut id = (round as i64) * 1_000_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    id += 1;
                    match client
                        .execute("insert into soak values ($1, $2)", &[&id, &(round as i32)])
                        .await
                    {
                        Ok(_) => acked.lock().unwrap().push(id),
                        Err(_) => return,
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(700));
        let killed = Instant::now();
        let names = ["pg_master", "pg_slave", "pg_asyncslave"];
        cluster.ok(&["failover", "--to", names[sync]]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Its server was killed: its last insert fails at once.
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), writer).await })
            .unwrap_or_else(|_| {
                panic!("round {round}: the writer on the fenced primary still waits")
            })
            .unwrap();
        // The first write the new primary accepts, measured from the kill. No statement
        // timeout: a cancelled wait for the sync standby would count as a commit.
        let new_primary = cluster.sql_conninfo(sync);
        let first_write = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), async {
                let (client, connection) =
                    tokio_postgres::connect(&new_primary, tokio_postgres::NoTls)
                        .await
                        .unwrap();
                tokio::spawn(connection);
                client
                    .execute(
                        "insert into soak values ($1, $2)",
                        &[&(-(round as i64) - 1), &(round as i32)],
                    )
                    .await
                    .unwrap();
            })
            .await
        });
        if first_write.is_err() {
            panic!(
                "round {round}: no commit on the new primary `{}` within 60 s; its standbys: {}{}",
                names[sync],
                cluster.psql(
                    sync,
                    "select string_agg(application_name || ' ' || state || ' ' || sync_state, ', ') from pg_stat_replication"
                ),
                cluster.server_logs()
            );
        }
        first_write_after_kill.push(killed.elapsed());
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: the writer got no commit acknowledged"
        );
        let present = cluster.psql(
            sync,
            &format!("select count(*) from soak where round = {round} and id > 0"),
        );
        let present: usize = present.parse().unwrap();
        let ids: Vec<String> = acked.iter().map(i64::to_string).collect();
        let missing = cluster.psql(
            sync,
            &format!("select count(*) from unnest(array[{}]::bigint[]) a(id) where not exists (select 1 from soak s where s.id = a.id)", ids.join(",")),
        );
        assert_eq!(
            missing, "0",
            "round {round}: {missing} acknowledged commits lost"
        );
        eprintln!(
            "round {round}: {} acknowledged, {present} on the new primary, 0 lost; first write {:.2} s after the kill",
            acked.len(),
            first_write_after_kill[round].as_secs_f64()
        );
        cluster.ok(&["rejoin", names[primary]]);
        std::mem::swap(&mut primary, &mut sync);
    }
    let worst = first_write_after_kill.iter().max().unwrap();
    eprintln!(
        "{rounds} rounds, 0 acknowledged commits lost; worst kill-to-first-write {:.2} s",
        worst.as_secs_f64()
    );
}

#[test]
fn up_works_with_other_majors_given_by_pg_bin() {
    let wanted = [14, 18];
    let installs: Vec<PgInstall> = PgInstall::all()
        .into_iter()
        .filter(|i| wanted.contains(&i.major))
        .collect();
    for major in wanted {
        if !installs.iter().any(|i| i.major == major) {
            capability::skip(
                "up_works_with_other_majors_given_by_pg_bin",
                &format!("pg{major}"),
                &format!("run scripts/install-pg {major}"),
            );
        }
    }
    for install in installs {
        let cluster = TestCluster::new();
        cluster.ok(&["up", "--pg-bin", install.bin_dir.to_str().unwrap()]);
        assert!(cluster
            .psql(0, "show server_version")
            .starts_with(&install.major.to_string()));
        assert_eq!(
            cluster.psql(0, "select application_name, sync_state from pg_stat_replication order by sync_state desc"),
            "pg_slave|sync\npg_asyncslave|potential",
            "PostgreSQL {}",
            install.major
        );
        cluster.ok(&[
            "down",
            "--purge",
            "--pg-bin",
            install.bin_dir.to_str().unwrap(),
        ]);
    }
}

/// A cluster file whose nodes run on several machines: the manual role changes and the drill,
/// which act on servers through this machine's runtime, refuse in one line and say what to run
/// instead; nothing is created.
#[test]
fn manual_role_changes_refuse_nodes_on_other_machines() {
    let cluster = TestCluster::new();
    let text = std::fs::read_to_string(&cluster.file).unwrap();
    // TEST-NET-1: never an address of this machine.
    let text = text.replacen(
        "name = \"pg_slave\"",
        "name = \"pg_slave\"\nhost = \"192.0.2.1\"",
        1,
    );
    std::fs::write(&cluster.file, text).unwrap();
    let state = cluster.dir.path().join(".pgrepl");
    std::fs::create_dir(&state).unwrap();
    for args in [
        &["failover"][..],
        &["switchover", "--to", "pg_slave"],
        &["rejoin", "pg_slave"],
        &["drill"],
    ] {
        let output = cluster.pgrepl(args);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{args:?}: {text}");
        assert!(
            text.contains("`pg_slave` runs on another machine (192.0.2.1)")
                && text.contains("pgrepl agent --node NAME"),
            "{args:?}: {text}"
        );
    }
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}
