//! `pgrepl basebackup` against real servers: the stock tools accept what it writes, the targets
//! start as streaming standbys, and failures leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::backup::backup_into;
use crate::support::harness::{self, PgInstall, PgServer, ServerOptions};
use crate::support::{capability, eventually, pgrepl, pgrepl_output, stderr};

/// The stock pg_verifybackup of the same major accepts `dir`.
pub fn assert_verifybackup(install: &PgInstall, dir: &Path, extra: &[&str]) {
    let output = Command::new(install.bin("pg_verifybackup"))
        .args(extra)
        .arg(dir)
        .output()
        .expect("run pg_verifybackup");
    assert!(
        output.status.success(),
        "pg_verifybackup rejected {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn children(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
}

/// The whole promise on one server version: two targets in one pass, both verified by the stock
/// tool, one started as a standby that streams under its application_name and receives new rows,
/// with a pg_dump identical to the primary's.
fn full_cycle(install: &PgInstall) {
    let primary = PgServer::start(install, ServerOptions::default());
    primary.psql("create table t(id int primary key, payload text); insert into t select g, md5(g::text) from generate_series(1, 5000) g");
    let work = harness::postgres_owned_tempdir();
    let (a, b) = (work.path().join("standby_a"), work.path().join("standby_b"));
    backup_into(
        &primary,
        &[&a, &b],
        &[
            "-R",
            "--application-name",
            "standby_a",
            "--application-name",
            "standby_b",
        ],
    );
    for dir in [&a, &b] {
        assert_verifybackup(install, dir, &[]);
        assert!(dir.join("standby.signal").exists());
    }
    let auto_conf = std::fs::read_to_string(b.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto_conf.contains("application_name=standby_b"),
        "{auto_conf}"
    );

    let standby = PgServer::start_existing(install, a.clone());
    eventually("standby_a to stream", Duration::from_secs(30)).until(|| {
        primary.psql("select count(*) from pg_stat_replication where application_name = 'standby_a' and state = 'streaming'") == "1"
    });
    primary.psql("insert into t values (5001, 'after the backup')");
    eventually("the new row on the standby", Duration::from_secs(30))
        .until(|| standby.psql("select count(*) from t where id = 5001") == "1");
    let dump = |server: &PgServer| {
        let output = Command::new(install.bin("pg_dump"))
            .args(["-d", &server.superuser_conninfo(), "--no-sync"])
            .output()
            .expect("run pg_dump");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // pg_dump 15.14+ brackets its output with a random `\restrict` key.
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        dump(&primary) == dump(&standby),
        "pg_dump of primary and standby differ"
    );
}

#[test]
fn two_targets_verify_start_and_stream_on_the_default_version() {
    full_cycle(&PgInstall::default_install());
}

#[test]
fn every_installed_major_gives_a_working_standby() {
    let installs = PgInstall::all();
    let default_major = PgInstall::default_install().major;
    let others: Vec<&PgInstall> = installs
        .iter()
        .filter(|i| i.major != default_major)
        .collect();
    for major in [14, 16, 17, 18] {
        if !installs.iter().any(|i| i.major == major) {
            capability::skip(
                "every_installed_major_gives_a_working_standby",
                &format!("pg{major}"),
                &format!("run scripts/install-pg {major}"),
            );
        }
    }
    for install in others {
        eprintln!("PostgreSQL {}", install.major);
        full_cycle(install);
    }
}

#[test]
fn fetch_none_and_server_compression_produce_verifiable_backups() {
    let install = PgInstall::default_install();
    let primary = PgServer::start(
        &install,
        ServerOptions {
            extra_conf: vec!["wal_keep_size = '256MB'".into()],
            ..Default::default()
        },
    );
    let work = harness::postgres_owned_tempdir();
    for (name, extra) in [
        ("fetch", vec!["-X", "fetch"]),
        ("gzip", vec!["--compress", "server-gzip"]),
        ("lz4", vec!["--compress", "server-lz4"]),
        (
            "zstd",
            vec![
                "--compress",
                "server-zstd",
                "--manifest-checksums",
                "SHA256",
            ],
        ),
    ] {
        let dir = work.path().join(name);
        backup_into(&primary, &[&dir], &extra);
        assert_verifybackup(&install, &dir, &[]);
    }
    let dir = work.path().join("none");
    backup_into(&primary, &[&dir], &["-X", "none", "--no-manifest"]);
    assert!(!dir.join("backup_manifest").exists());
    assert!(dir.join("global/pg_control").exists());
}

#[test]
fn tablespaces_follow_their_mapping_in_every_target() {
    let install = PgInstall::default_install();
    let primary = PgServer::start(&install, ServerOptions::default());
    let spaces = harness::postgres_owned_tempdir();
    let location = spaces.path().join("ts_primary");
    std::fs::create_dir(&location).unwrap();
    harness::chown_to_postgres(&location);
    primary.psql(&format!(
        "create tablespace ts location '{}'",
        location.display()
    ));
    primary.psql("create table in_ts(x int) tablespace ts; insert into in_ts select generate_series(1, 1000)");
    let work = harness::postgres_owned_tempdir();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let (ma, mb) = (work.path().join("ts_a"), work.path().join("ts_b"));

    // Two targets but one mapping: refused before anything is written.
    let conninfo = primary.tcp_conninfo(harness::REP_SCRAM, None);
    let one_mapping = format!("{}={}", location.display(), ma.display());
    let refused = pgrepl_output(
        &[
            "basebackup",
            "-d",
            &conninfo,
            "-c",
            "fast",
            "-D",
            a.to_str().unwrap(),
            "-D",
            b.to_str().unwrap(),
            "-T",
            &one_mapping,
        ],
        Some(harness::REP_SCRAM_PASSWORD),
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("-T"), "{}", stderr(&refused));
    assert!(
        children(work.path()).is_empty(),
        "left behind: {:?}",
        children(work.path())
    );

    let second_mapping = format!("{}={}", location.display(), mb.display());
    backup_into(
        &primary,
        &[&a, &b],
        &["-T", &one_mapping, "-T", &second_mapping],
    );
    for (dir, mapped) in [(&a, &ma), (&b, &mb)] {
        let links = children(&dir.join("pg_tblspc"));
        assert_eq!(links.len(), 1);
        assert_eq!(&std::fs::read_link(&links[0]).unwrap(), mapped);
        assert!(children(mapped).iter().any(|p| p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("PG_")));
        assert_verifybackup(&install, dir, &[]);
    }
}

#[test]
fn a_non_empty_target_is_refused_and_left_untouched() {
    let install = PgInstall::default_install();
    let primary = PgServer::start(&install, ServerOptions::default());
    let work = harness::postgres_owned_tempdir();
    let busy = work.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.me"), "precious").unwrap();
    let conninfo = primary.tcp_conninfo(harness::REP_SCRAM, None);
    let output = pgrepl_output(
        &["basebackup", "-d", &conninfo, "-D", busy.to_str().unwrap()],
        Some(harness::REP_SCRAM_PASSWORD),
    );
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    assert_eq!(
        std::fs::read_to_string(busy.join("keep.me")).unwrap(),
        "precious"
    );
    assert_eq!(children(work.path()), vec![busy]);
}

#[test]
fn actionable_errors_for_hba_password_and_slot() {
    let install = PgInstall::default_install();
    // The harness allows every role; this line makes `nobody_here` meet pg_hba's refusal.
    let primary = PgServer::start(
        &install,
        ServerOptions {
            extra_hba: vec!["host replication nobody_here 127.0.0.1/32 reject".into()],
            ..Default::default()
        },
    );
    let work = harness::postgres_owned_tempdir();
    let target = work.path().join("t");
    let target = target.to_str().unwrap();

    // pg_hba.conf refuses the replication connection: the hint names the exact line to add.
    let no_line = primary.tcp_conninfo("nobody_here", None);
    let output = pgrepl_output(&["basebackup", "-d", &no_line, "-D", target], Some("x"));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("host replication nobody_here 127.0.0.1/32 scram-sha-256"),
        "{}",
        stderr(&output)
    );

    // A wrong password is named as such, and the password never appears in the output.
    let conninfo = primary.tcp_conninfo(harness::REP_SCRAM, None);
    let output = pgrepl_output(
        &["basebackup", "-d", &conninfo, "-D", target],
        Some("wrong-secret-xyz"),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("password authentication failed"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains("wrong-secret-xyz"));

    // A missing slot is reported before any data is copied.
    let output = pgrepl_output(
        &[
            "basebackup",
            "-d",
            &conninfo,
            "-D",
            target,
            "-S",
            "missing_slot",
        ],
        Some(harness::REP_SCRAM_PASSWORD),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("replication slot `missing_slot` does not exist"),
        "{}",
        stderr(&output)
    );
    assert!(children(work.path()).is_empty());

    // With -C the slot is created and named in primary_slot_name.
    backup_into(
        &primary,
        &[Path::new(target)],
        &["-S", "standby_slot", "-C", "-R"],
    );
    assert_eq!(
        primary.psql("select count(*) from pg_replication_slots where slot_name = 'standby_slot'"),
        "1"
    );
    let auto_conf =
        std::fs::read_to_string(Path::new(target).join("postgresql.auto.conf")).unwrap();
    assert!(
        auto_conf.contains("primary_slot_name = 'standby_slot'"),
        "{auto_conf}"
    );
}

#[test]
fn killing_the_server_mid_backup_leaves_no_target_behind() {
    let install = PgInstall::default_install();
    let mut primary = PgServer::start(&install, ServerOptions::default());
    // ~40 MB of table data, sent at 1 MB/s: the kill lands in the middle.
    primary.psql(
        "create table big as select g, repeat('x', 1000) as pad from generate_series(1, 40000) g",
    );
    let work = harness::postgres_owned_tempdir();
    let target = work.path().join("t");
    let conninfo = primary.tcp_conninfo(harness::REP_SCRAM, None);
    let child = pgrepl()
        .args([
            "basebackup",
            "-d",
            &conninfo,
            "-c",
            "fast",
            "-r",
            "1M",
            "-D",
            target.to_str().unwrap(),
        ])
        .env("PGPASSWORD", harness::REP_SCRAM_PASSWORD)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    primary.kill();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        children(work.path()).is_empty(),
        "left behind: {:?}",
        children(work.path())
    );
}
