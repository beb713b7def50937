//! `pgrepl receivewal` against real servers: the same segments as pg_receivewal, byte for byte;
//! a run stopped by SIGTERM resumes where it left off; a promotion is followed onto the new
//! timeline; a server restart is survived (or ends the run with `--no-loop`); compressed
//! segments restore the server's bytes and resume.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::backup::backup_into;
use crate::support::harness::{self, PgInstall, PgServer, ServerOptions};
use crate::support::{eventually, pgrepl, pgrepl_output, stderr};

/// 1 MB segments: many complete segments from little WAL.
fn server() -> PgServer {
    PgServer::start(
        &PgInstall::default_install(),
        ServerOptions {
            initdb_args: vec!["--wal-segsize=1".into()],
            extra_conf: vec!["wal_keep_size = '256MB'".into()],
            ..Default::default()
        },
    )
}

fn conninfo(server: &PgServer) -> String {
    server.tcp_conninfo(harness::REP_SCRAM, None)
}

/// About `mb` MB of WAL, then a segment switch so that all of it is in complete segments.
fn generate_wal(server: &PgServer, mb: u32) -> String {
    server.psql(&format!(
        "create table if not exists filler(x int, pad text);
         insert into filler select g, repeat('x', 200) from generate_series(1, {}) g",
        mb * 5000
    ));
    server.psql("select pg_switch_wal()");
    server.psql("select pg_current_wal_lsn()")
}

fn receivewal(server: &PgServer, dir: &Path, extra: &[&str]) -> Output {
    let conninfo = conninfo(server);
    let mut args = vec!["receivewal", "-d", &conninfo, "-D", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = pgrepl_output(&args, Some(harness::REP_SCRAM_PASSWORD));
    assert!(
        output.status.success(),
        "pgrepl receivewal failed: {}\n{}",
        stderr(&output),
        server.log_tail()
    );
    output
}

/// `pgrepl receivewal` in the background, to be stopped with a signal.
fn spawn_receivewal(server: &PgServer, dir: &Path) -> Child {
    spawn_receivewal_with(server, dir, &[])
}

fn spawn_receivewal_with(server: &PgServer, dir: &Path, extra: &[&str]) -> Child {
    pgrepl()
        .args(["receivewal", "-d", &conninfo(server), "-D"])
        .arg(dir)
        .args(["-s", "1"])
        .args(extra)
        .env("PGPASSWORD", harness::REP_SCRAM_PASSWORD)
        .env("PGPASSFILE", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgrepl receivewal")
}

/// SIGTERM, and the exit status and stderr of a clean stop.
fn terminate(child: Child) -> Output {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child
        .wait_with_output()
        .expect("wait for pgrepl receivewal");
    assert!(
        output.status.success(),
        "receivewal did not stop cleanly on SIGTERM: {}",
        stderr(&output)
    );
    output
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn complete_segments(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// Every complete segment in `dir` is identical to the file of that name in `other`.
fn assert_same_segments(dir: &Path, other: &Path, what: &str) -> usize {
    let segments = complete_segments(dir);
    for name in &segments {
        let output = Command::new("cmp")
            .arg(dir.join(name))
            .arg(other.join(name))
            .output()
            .expect("run cmp");
        assert!(
            output.status.success(),
            "{name} differs from {what}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    segments.len()
}

fn pg_wal(server: &PgServer) -> PathBuf {
    server.data_dir.join("pg_wal")
}

#[test]
fn segments_are_byte_identical_to_pg_receivewals() {
    let install = PgInstall::default_install();
    let server = server();
    // Two slots reserved at the same moment: both tools start at the same segment.
    server.psql(
        "select pg_create_physical_replication_slot('stock', true);
         select pg_create_physical_replication_slot('ours', true)",
    );
    generate_wal(&server, 6);
    // An end inside WAL that exists, so neither tool waits for more.
    server.psql("insert into filler values (0, 'end')");
    let end = server.psql("select pg_current_wal_lsn()");
    let work = tempfile::tempdir().unwrap();
    let (stock, ours) = (work.path().join("stock"), work.path().join("ours"));
    for dir in [&stock, &ours] {
        std::fs::create_dir(dir).unwrap();
    }
    let output = Command::new(install.bin("pg_receivewal"))
        .args([
            "-d",
            &conninfo(&server),
            "-S",
            "stock",
            "-E",
            &end,
            "--no-loop",
            "-D",
        ])
        .arg(&stock)
        .env("PGPASSWORD", harness::REP_SCRAM_PASSWORD)
        .output()
        .expect("run pg_receivewal");
    assert!(
        output.status.success(),
        "pg_receivewal: {}",
        stderr(&output)
    );
    receivewal(&server, &ours, &["-S", "ours", "-E", &end]);

    assert_eq!(complete_segments(&ours), complete_segments(&stock));
    let compared = assert_same_segments(&ours, &stock, "pg_receivewal's");
    assert!(compared >= 6, "only {compared} complete segments");
    // The last status update reported everything as flushed, so the slot keeps nothing older.
    let advanced = server.psql(&format!(
        "select restart_lsn >= '{end}' from pg_replication_slots where slot_name = 'ours'"
    ));
    assert_eq!(advanced, "t");
}

#[test]
fn a_run_stopped_by_sigterm_resumes_from_the_partial_segment() {
    let server = server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let child = spawn_receivewal(&server, dir);
    eventually("streaming to start", Duration::from_secs(30))
        .until(|| names(dir).iter().any(|n| n.ends_with(".partial")));
    generate_wal(&server, 3);
    // Some WAL into the open segment, then stop in the middle of it.
    server.psql("insert into filler select g, 'tail' from generate_series(1, 100) g");
    let tail = server.psql("select pg_current_wal_lsn()");
    eventually("the tail to arrive", Duration::from_secs(30)).until(|| {
        let status = server.psql(&format!(
            "select count(*) from pg_stat_replication where application_name = 'pgrepl receivewal' and write_lsn >= '{tail}'"
        ));
        status == "1"
    });
    let first = terminate(child);
    assert!(stderr(&first).contains("interrupted"), "{}", stderr(&first));
    let partial: Vec<String> = names(dir)
        .into_iter()
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert_eq!(partial.len(), 1, "{:?}", names(dir));
    let before = complete_segments(dir).len();

    let end = generate_wal(&server, 2);
    let second = receivewal(&server, dir, &["-E", &end]);
    assert!(
        stderr(&second).contains("started at the partial segment"),
        "{}",
        stderr(&second)
    );
    // The partial was completed under its final name, and the rest followed.
    let completed = partial[0].trim_end_matches(".partial");
    assert!(complete_segments(dir).contains(&completed.to_owned()));
    assert!(complete_segments(dir).len() >= before + 3);
    assert_same_segments(dir, &pg_wal(&server), "the server's pg_wal");
}

#[test]
fn a_promotion_is_followed_onto_the_new_timeline() {
    let install = PgInstall::default_install();
    let primary = server();
    let work = harness::postgres_owned_tempdir();
    let standby_dir = work.path().join("standby");
    backup_into(&primary, &[&standby_dir], &["-R"]);
    let standby = PgServer::start_existing(&install, standby_dir);
    generate_wal(&primary, 1);
    let archive = tempfile::tempdir().unwrap();
    let dir = archive.path();
    let child = spawn_receivewal(&standby, dir);
    eventually("streaming from the standby", Duration::from_secs(30))
        .until(|| names(dir).iter().any(|n| n.ends_with(".partial")));
    generate_wal(&primary, 2);
    // A switch point in the middle of a segment: it stays partial on timeline 1.
    primary.psql("insert into filler select g, 'before promotion' from generate_series(1, 100) g");
    let replayed = primary.psql("select pg_current_wal_lsn()");
    eventually("the standby to replay", Duration::from_secs(30))
        .until(|| standby.psql(&format!("select pg_last_wal_replay_lsn() >= '{replayed}'")) == "t");
    assert_eq!(standby.psql("select pg_promote()"), "t");
    generate_wal(&standby, 2);
    eventually("segments of timeline 2", Duration::from_secs(30)).until(|| {
        complete_segments(dir)
            .iter()
            .any(|n| n.starts_with("00000002"))
    });
    terminate(child);

    let names = names(dir);
    assert!(names.contains(&"00000002.history".to_owned()), "{names:?}");
    // The segment holding the switch point stays partial on timeline 1.
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("00000001") && n.ends_with(".partial")),
        "{names:?}"
    );
    assert!(
        complete_segments(dir)
            .iter()
            .any(|n| n.starts_with("00000001")),
        "{names:?}"
    );
    let history = std::fs::read_to_string(dir.join("00000002.history")).unwrap();
    let served = std::fs::read_to_string(pg_wal(&standby).join("00000002.history")).unwrap();
    assert_eq!(history, served);
    assert_same_segments(dir, &pg_wal(&standby), "the promoted standby's pg_wal");
}

/// Segment numbers of the complete segments in `dir` (of any compression) form one run with no
/// hole, and it reaches at least `last`.
fn assert_no_segment_missing(dir: &Path, last: &str) {
    let mut numbers: Vec<u64> = names(dir)
        .iter()
        .filter(|n| !n.ends_with(".partial") && !n.ends_with(".history"))
        .map(|n| u64::from_str_radix(&n[8..24], 16).unwrap())
        .collect();
    numbers.sort();
    assert!(!numbers.is_empty(), "no complete segment: {:?}", names(dir));
    for pair in numbers.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "a segment is missing: {:?}",
            names(dir)
        );
    }
    let last = u64::from_str_radix(&last[8..24], 16).unwrap();
    assert!(
        *numbers.last().unwrap() >= last,
        "segments up to {last:X} expected: {:?}",
        names(dir)
    );
}

/// The segment holding `lsn` (`X/Y`), with 1 MB segments on timeline 1.
fn segment_of(lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let segment = lsn >> 20;
    format!("00000001{:08X}{:08X}", segment >> 12, segment & 0xFFF)
}

#[test]
fn a_server_restart_mid_stream_is_survived_with_nothing_missing() {
    let mut server = server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let child = spawn_receivewal(&server, dir);
    eventually("streaming to start", Duration::from_secs(30))
        .until(|| names(dir).iter().any(|n| n.ends_with(".partial")));
    generate_wal(&server, 2);
    // Some WAL into the open segment: the restart cuts the stream in the middle of it.
    server.psql("insert into filler select g, 'before restart' from generate_series(1, 100) g");
    server.stop();
    // Long enough for at least one failed attempt while the server is down.
    std::thread::sleep(Duration::from_secs(2));
    server.start_again();
    let end = generate_wal(&server, 3);
    let last_complete = server.psql(&format!("select pg_walfile_name('{end}'::pg_lsn - 1)"));
    eventually("the WAL after the restart", Duration::from_secs(60))
        .until(|| complete_segments(dir).contains(&last_complete));
    let output = terminate(child);
    let err = stderr(&output);
    assert!(err.contains("disconnected ("), "{err}");
    assert!(err.contains("; reconnecting in 1 s"), "{err}");
    assert!(err.contains("reconnected; resuming at"), "{err}");
    assert!(err.contains("reconnected 1 time(s)"), "{err}");
    assert_no_segment_missing(dir, &last_complete);
    let compared = assert_same_segments(dir, &pg_wal(&server), "the server's pg_wal");
    assert!(compared >= 5, "only {compared} complete segments");
}

#[test]
fn no_loop_stops_when_the_server_goes_away() {
    let mut server = server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut child = spawn_receivewal_with(&server, dir, &["--no-loop"]);
    eventually("streaming to start", Duration::from_secs(30))
        .until(|| names(dir).iter().any(|n| n.ends_with(".partial")));
    server.stop();
    eventually("receivewal to exit", Duration::from_secs(30))
        .until(|| child.try_wait().unwrap().is_some());
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("the server ended the stream"), "{err}");
    assert!(!err.contains("reconnecting"), "{err}");
}

/// What `gzip -dc` / `lz4 -dc` restore from `path`.
fn decompress(path: &Path) -> Vec<u8> {
    let tool = if path.extension().unwrap() == "gz" {
        "gzip"
    } else {
        "lz4"
    };
    let output = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} -dc {}: {}",
        path.display(),
        stderr(&output)
    );
    output.stdout
}

#[test]
fn compressed_segments_restore_the_servers_bytes_and_resume() {
    let server = server();
    for (method, suffix) in [("gzip", ".gz"), ("lz4", ".lz4")] {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        let child = spawn_receivewal_with(&server, dir, &["--compress", method]);
        eventually("streaming to start", Duration::from_secs(30))
            .until(|| names(dir).iter().any(|n| n.ends_with(".partial")));
        generate_wal(&server, 2);
        server.psql("insert into filler select g, 'tail' from generate_series(1, 100) g");
        let tail = server.psql("select pg_current_wal_lsn()");
        eventually("the tail to arrive", Duration::from_secs(30)).until(|| {
            names(dir).contains(&format!("{}.partial", segment_of(&tail)))
                && complete_segments(dir).is_empty()
                && names(dir).iter().filter(|n| n.ends_with(suffix)).count() >= 2
        });
        terminate(child);
        let before = names(dir).iter().filter(|n| n.ends_with(suffix)).count();

        let end = generate_wal(&server, 2);
        let second = receivewal(&server, dir, &["--compress", method, "-E", &end]);
        assert!(
            stderr(&second).contains("started at the partial segment"),
            "{method}: {}",
            stderr(&second)
        );
        let compressed: Vec<String> = names(dir)
            .into_iter()
            .filter(|n| n.ends_with(suffix))
            .collect();
        assert!(compressed.len() >= before + 2, "{method}: {compressed:?}");
        // Nothing left uncompressed but the open segment, and no leftover partial copies.
        assert!(
            complete_segments(dir).is_empty(),
            "{method}: {:?}",
            names(dir)
        );
        // No compressed copy left half-made; at most the open segment is partial.
        let partials: Vec<String> = names(dir)
            .into_iter()
            .filter(|n| n.ends_with(".partial"))
            .collect();
        assert!(
            partials.len() <= 1 && !partials.iter().any(|n| n.contains(suffix)),
            "{method}: {:?}",
            names(dir)
        );
        let last = compressed
            .last()
            .unwrap()
            .trim_end_matches(suffix)
            .to_owned();
        assert_no_segment_missing(dir, &last);
        for name in &compressed {
            let segment = name.trim_end_matches(suffix);
            let served = std::fs::read(pg_wal(&server).join(segment)).unwrap();
            assert!(
                decompress(&dir.join(name)) == served,
                "{method}: {name} does not restore {segment}"
            );
        }
    }
}

/// A streamer whose stop sender is gone keeps reading WAL and still stops when cancelled (it used
/// to wait forever once the sender was dropped). Calls the library: the binary always holds the
/// sender.
#[test]
fn streaming_outlives_its_stop_sender() {
    use pgrepl::conn::{ConnParams, ConnectOptions, Connection};
    use pgrepl::replication::wal_sink::{SegmentNaming, SegmentWriter};
    use pgrepl::replication::{stream_wal, StreamEnd, StreamOptions};
    use tokio_util::sync::CancellationToken;

    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let conninfo = server.tcp_conninfo(harness::REP_SCRAM, Some(harness::REP_SCRAM_PASSWORD));
    let cancel = CancellationToken::new();
    let (streaming, started) = std::sync::mpsc::channel::<()>();
    let (server_ref, canceller) = (&server, cancel.clone());
    let (start, end) = std::thread::scope(|scope| {
        // WAL written once streaming has started, then a cancel: the only ways out.
        scope.spawn(move || {
            if started.recv().is_ok() {
                generate_wal(server_ref, 2);
                std::thread::sleep(Duration::from_secs(1));
            }
            canceller.cancel();
        });
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let params = ConnParams::parse(&conninfo).unwrap();
            let options = ConnectOptions::from_process_env(params).unwrap();
            let mut conn = Connection::connect(&options).await.unwrap();
            let system = conn.identify_system().await.unwrap();
            let segment_size = conn.wal_segment_size().await.unwrap();
            let mut writer = SegmentWriter::new(
                vec![dir.path().to_owned()],
                segment_size,
                SegmentNaming::Archive,
                false,
            )
            .unwrap();
            let (sender, stop_at) = tokio::sync::watch::channel(None);
            drop(sender);
            let stream_options = StreamOptions {
                slot: None,
                start: system.xlogpos,
                timeline: system.timeline,
                status_interval: Duration::from_secs(1),
                report_flush: false,
            };
            streaming.send(()).unwrap();
            let stream = stream_wal(&mut conn, &stream_options, &mut writer, stop_at, &cancel);
            let end = tokio::time::timeout(Duration::from_secs(60), stream)
                .await
                .expect("streaming stopped reading once its stop sender was gone");
            (system.xlogpos, end.unwrap())
        })
    });
    let StreamEnd::Cancelled { position } = end else {
        panic!("expected a cancelled stream, got {end:?}");
    };
    assert!(
        position.as_u64() >= start.as_u64() + (1 << 20),
        "streamed only {start}..{position}"
    );
}

#[test]
fn a_missing_slot_ends_the_run_instead_of_retrying() {
    let server = server();
    let work = tempfile::tempdir().unwrap();
    let conninfo = conninfo(&server);
    let dir = work.path().to_str().unwrap();
    let output = pgrepl_output(
        &[
            "receivewal",
            "-d",
            &conninfo,
            "-D",
            dir,
            "-S",
            "no_such_slot",
        ],
        Some(harness::REP_SCRAM_PASSWORD),
    );
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("`no_such_slot` does not exist"), "{err}");
    assert!(!err.contains("reconnecting"), "{err}");
}
