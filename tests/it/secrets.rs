//! Passwords stay secret: never in pgrepl's output at any log level (RUST_LOG=trace, -vv), in
//! `--json`, in error messages, or on the command line of a process pgrepl starts; `-R` can name
//! a password file instead of writing the password (`--passfile`); and the files pgrepl writes
//! that hold a password are mode 0600, also when it appends to one that came from the server.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::backup::owner_arg;
use crate::support::harness::{self, PgInstall, PgServer, ServerOptions};
use crate::support::{capability, eventually, without_pg_env};

/// Runs pgrepl with `envs` on top of a clean PG* environment.
fn pgrepl(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = crate::support::pgrepl();
    cmd.args(args).stdin(Stdio::null());
    without_pg_env(&mut cmd);
    for (key, value) in envs {
        cmd.env(key, value);
    }
    cmd.output().expect("run pgrepl")
}

fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn owner_args() -> Vec<String> {
    owner_arg()
        .map(|owner| vec!["--owner".to_string(), owner])
        .unwrap_or_default()
}

/// A full `basebackup -R -X stream` at trace level, with the password given each way pgrepl
/// takes one on its command line or environment: nothing it prints contains the password.
#[test]
fn the_password_never_appears_in_output_at_any_level() {
    let primary = PgServer::start(&PgInstall::default_install(), ServerOptions::default());
    let work = harness::postgres_owned_tempdir();
    let secret = harness::REP_SCRAM_PASSWORD;
    let plain = primary.tcp_conninfo(harness::REP_SCRAM, None);
    let inline = primary.tcp_conninfo(harness::REP_SCRAM, Some(secret));
    let uri = format!(
        "postgresql://{}:{secret}@127.0.0.1:{}/postgres",
        harness::REP_SCRAM,
        primary.port
    );
    let owner = owner_args();
    let trace = [("RUST_LOG", "trace")];
    // (what, -d, environment, extra arguments)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let runs: Vec<Case> = vec![
        (
            "PGPASSWORD, -vv",
            &plain,
            vec![("PGPASSWORD", secret)],
            &["-vv"],
        ),
        (
            "PGPASSWORD, RUST_LOG=trace",
            &plain,
            vec![("PGPASSWORD", secret), trace[0]],
            &["-vv"],
        ),
        (
            "PGPASSWORD, --json",
            &plain,
            vec![("PGPASSWORD", secret), trace[0]],
            &["--json"],
        ),
        ("password= in -d", &inline, vec![trace[0]], &["-vv"]),
        (
            "password in a URI, --json",
            &uri,
            vec![trace[0]],
            &["--json", "-P"],
        ),
    ];
    for (i, (what, conninfo, envs, extra)) in runs.into_iter().enumerate() {
        let target = work.path().join(format!("t{i}"));
        let mut args = vec!["basebackup", "-d", conninfo, "-c", "fast", "-R", "-D"];
        args.push(target.to_str().unwrap());
        args.extend(owner.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let output = pgrepl(&args, &envs);
        let text = all_output(&output);
        assert!(output.status.success(), "{what}: {text}");
        assert!(
            !text.contains(secret),
            "{what}: the password is in the output:\n{text}"
        );
        if envs.contains(&trace[0]) {
            assert!(
                text.contains("TRACE") || text.contains("DEBUG"),
                "{what}: no trace output:\n{text}"
            );
        }
        if extra.contains(&"--json") {
            let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|e| panic!("{what}: --json output: {e}\n{text}"));
            assert!(summary["end_lsn"].is_string(), "{what}: {summary}");
        }
        // -R writes the password for the standby: that file, and only it, holds it, 0600.
        let auto_conf = target.join("postgresql.auto.conf");
        assert!(
            fs::read_to_string(&auto_conf).unwrap().contains(secret),
            "{what}"
        );
        assert_eq!(mode(&auto_conf), 0o600, "{what}: postgresql.auto.conf mode");
        eprintln!(
            "secrets: {what}: {} bytes of output, no password",
            text.len()
        );
        fs::remove_dir_all(&target).unwrap();
    }

    // Error paths: a wrong password, and a connection string pgrepl cannot parse.
    let output = pgrepl(
        &[
            "basebackup",
            "-d",
            &plain,
            "-D",
            work.path().join("x").to_str().unwrap(),
            "-vv",
        ],
        &[("PGPASSWORD", "wrong-secret-42"), trace[0]],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        !all_output(&output).contains("wrong-secret-42"),
        "{}",
        all_output(&output)
    );
    for bad in [
        format!("{inline} bogus_option=1"),
        format!("host=h password=two words{secret}"),
        format!("postgresql://u:{secret}@h:notaport/"),
        format!("postgresql://u:{secret}@h/?password={secret}&bogus"),
    ] {
        let output = pgrepl(&["basebackup", "-d", &bad, "-D", "/nonexistent/t"], &trace);
        assert_eq!(output.status.code(), Some(2), "{bad}");
        assert!(
            !all_output(&output).contains(secret),
            "`{bad}`: {}",
            all_output(&output)
        );
    }
}

/// `-R --passfile FILE` names the file in primary_conninfo instead of writing the password,
/// and a standby started on that target authenticates with it.
#[test]
fn passfile_goes_into_primary_conninfo_instead_of_the_password() {
    let install = PgInstall::default_install();
    let primary = PgServer::start(&install, ServerOptions::default());
    let work = harness::postgres_owned_tempdir();
    let passfile = work.path().join("standby.pgpass");
    fs::write(
        &passfile,
        format!(
            "*:*:*:{}:{}\n",
            harness::REP_SCRAM,
            harness::REP_SCRAM_PASSWORD
        ),
    )
    .unwrap();
    fs::set_permissions(&passfile, fs::Permissions::from_mode(0o600)).unwrap();
    harness::chown_to_postgres(&passfile);

    let target = work.path().join("standby");
    let conninfo = primary.tcp_conninfo(harness::REP_SCRAM, None);
    let mut args = vec!["basebackup", "-d", &conninfo, "-c", "fast", "-R", "-D"];
    args.push(target.to_str().unwrap());
    args.extend(["--passfile", passfile.to_str().unwrap()]);
    args.extend(["--application-name", "via_passfile"]);
    let owner = owner_args();
    args.extend(owner.iter().map(String::as_str));
    let output = pgrepl(&args, &[("PGPASSWORD", harness::REP_SCRAM_PASSWORD)]);
    assert!(output.status.success(), "{}", all_output(&output));
    let auto_conf = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    let line = auto_conf
        .lines()
        .rfind(|l| l.starts_with("primary_conninfo"))
        .expect("primary_conninfo written");
    assert!(
        line.contains(&format!("passfile=''{}''", passfile.display())),
        "{line}"
    );
    assert!(!line.contains("password="), "{line}");
    assert!(
        !auto_conf.contains(harness::REP_SCRAM_PASSWORD),
        "{auto_conf}"
    );

    let _standby = PgServer::start_existing(&install, target);
    eventually("the standby to stream with the passfile", Duration::from_secs(30)).until(|| {
            primary.psql(
            "select count(*) from pg_stat_replication where application_name = 'via_passfile' and state = 'streaming'",
        ) == "1"
        });

    // Only with -R, and only an absolute path (the standby resolves it from its own directory).
    let bad = pgrepl(
        &[
            "basebackup",
            "-d",
            &conninfo,
            "-D",
            "/nonexistent/t",
            "--passfile",
            "/x",
        ],
        &[],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", all_output(&bad));
    let bad = pgrepl(
        &[
            "basebackup",
            "-d",
            &conninfo,
            "-D",
            "/nonexistent/t",
            "-R",
            "--passfile",
            "rel.pgpass",
        ],
        &[],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        all_output(&bad).contains("absolute"),
        "{}",
        all_output(&bad)
    );
}

/// A cluster with group access (initdb -g) sends postgresql.auto.conf as 0640; `-R` appends the
/// password to it, so it must become 0600 first.
#[test]
fn an_appended_auto_conf_with_a_password_is_owner_only() {
    let primary = PgServer::start(
        &PgInstall::default_install(),
        ServerOptions {
            initdb_args: vec!["--allow-group-access".into()],
            ..Default::default()
        },
    );
    assert_eq!(mode(&primary.data_dir.join("postgresql.auto.conf")), 0o640);
    let work = harness::postgres_owned_tempdir();
    let target = work.path().join("t");
    let conninfo = primary.tcp_conninfo(harness::REP_SCRAM, Some(harness::REP_SCRAM_PASSWORD));
    let mut args = vec!["basebackup", "-d", &conninfo, "-c", "fast", "-R", "-D"];
    args.push(target.to_str().unwrap());
    let output = pgrepl(&args, &[]);
    assert!(output.status.success(), "{}", all_output(&output));
    assert_eq!(
        mode(&target),
        0o750,
        "the data directory keeps group access"
    );
    let auto_conf = target.join("postgresql.auto.conf");
    assert!(fs::read_to_string(&auto_conf)
        .unwrap()
        .contains(harness::REP_SCRAM_PASSWORD));
    assert_eq!(mode(&auto_conf), 0o600);
}

/// Command lines of every process, as `ps` shows them.
fn all_cmdlines() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) {
            let text = String::from_utf8_lossy(&raw).replace('\0', " ");
            out.push((pid, text));
        }
    }
    out
}

/// Every private key under `dir` (`*.key`, PEM): its base64 lines.
fn private_key_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "key") {
                let text = fs::read_to_string(&path).unwrap();
                lines.extend(
                    text.lines()
                        .filter(|l| !l.starts_with("-----") && l.len() > 16)
                        .map(str::to_owned),
                );
            }
        }
    }
    lines
}

/// `pgrepl up` (local runtime, with `[ha]`) starts initdb, pg_ctl, postgres, etcd and agent
/// processes: none of them gets the replication password or a private key on its command line
/// or in its environment (sampled every few ms while `up` runs), and neither pgrepl's own trace
/// output nor the agents' and etcd's logs contain them.
#[test]
fn processes_started_by_up_carry_no_password_in_argv() {
    let dir = harness::postgres_owned_tempdir();
    let file = dir.path().join("pgrepl.toml");
    let output = pgrepl(&["init", "--cluster", file.to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", all_output(&output));
    let secret = format!("Up-Secret-{}", std::process::id());
    let mut doc: toml::Value = toml::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    doc["replication"]["password"] = toml::Value::String(secret.clone());
    for node in doc["nodes"].as_array_mut().unwrap() {
        let port = harness::pick_port();
        node["port"] = toml::Value::Integer(port.into());
    }
    let test = "processes_started_by_up_carry_no_password_in_argv";
    let ha = capability::tool(test, "etcd", "apt-get install etcd-server").is_some();
    if ha {
        doc.as_table_mut()
            .unwrap()
            .insert("ha".into(), toml::Value::Table(Default::default()));
    }
    fs::write(&file, toml::to_string(&doc).unwrap()).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    // What every process showed, checked for keys once `up` made them.
    let mut shown = std::collections::BTreeSet::new();

    let mut child = crate::support::pgrepl()
        .args(["up", "--cluster", file.to_str().unwrap(), "-vv"])
        .env("RUST_LOG", "trace")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = [
        std::thread::spawn(move || std::io::read_to_string(&mut out).unwrap_or_default()),
        std::thread::spawn(move || std::io::read_to_string(&mut err).unwrap_or_default()),
    ];
    let started = Instant::now();
    let (mut samples, mut seen) = (0, std::collections::BTreeSet::new());
    let mut leaks = Vec::new();
    while child.try_wait().unwrap().is_none() {
        for (pid, cmdline) in all_cmdlines() {
            if cmdline.contains(&secret) {
                leaks.push(format!("{pid}: {cmdline}"));
            }
            if ["initdb", "pg_ctl", "postgres", "etcd", "agent"]
                .iter()
                .any(|t| cmdline.contains(t))
            {
                seen.insert(cmdline.split_whitespace().next().unwrap_or("").to_string());
                // Nor in the environment pgrepl gives them (PGPASSWORD, say).
                let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let environ = String::from_utf8_lossy(&environ).into_owned();
                if environ.contains(&secret) {
                    leaks.push(format!("{pid} environment: {cmdline}"));
                }
                shown.insert(format!("{pid} command line: {cmdline}"));
                shown.insert(format!("{pid} environment: {environ}"));
            }
        }
        samples += 1;
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "pgrepl up did not finish"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child.wait().unwrap();
    let text: String = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let state = dir.path().join(".pgrepl");
    let keys = private_key_lines(&state);
    let mut logs = String::new();
    for sub in ["agents", "etcd"] {
        for entry in fs::read_dir(state.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().extension().is_some_and(|e| e == "log") {
                logs.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    let down = pgrepl(
        &["down", "--purge", "--cluster", file.to_str().unwrap()],
        &[],
    );
    assert!(status.success(), "pgrepl up failed:\n{text}");
    assert!(down.status.success(), "{}", all_output(&down));
    eprintln!(
        "secrets: pgrepl up: {samples} /proc samples over {:?}, programs seen: {seen:?}, {} command lines with the password",
        started.elapsed(),
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "the password is on a command line: {leaks:?}"
    );
    // `pgrepl up -vv` must not print the password (the role is created from a SCRAM verifier
    // and tokio-postgres' statement logging is off).
    let leaked: Vec<&str> = text.lines().filter(|l| l.contains(&secret)).collect();
    assert!(
        leaked.is_empty(),
        "the password is in pgrepl up's output: {leaked:#?}"
    );
    assert!(
        seen.iter().any(|p| p.ends_with("postgres")),
        "the sampling saw no server: {seen:?}"
    );
    // Keys: the CA's, each node's, and with [ha] etcd's members' and users'.
    let expected_keys = if ha { 1 + 3 + 3 + 3 } else { 1 + 3 };
    assert!(
        keys.len() >= expected_keys,
        "{} key lines under {}: fewer keys than up makes",
        keys.len(),
        state.display()
    );
    for line in &keys {
        let places = [
            ("pgrepl up's output", &text),
            ("the agents' and etcd's logs", &logs),
        ];
        for (place, haystack) in places {
            assert!(
                !haystack.contains(line.as_str()),
                "a private key is in {place}"
            );
        }
        let leak = shown.iter().find(|s| s.contains(line.as_str()));
        assert!(leak.is_none(), "a private key is on a process: {leak:?}");
    }
    eprintln!(
        "secrets: {} key lines absent from output, logs and {} process samples",
        keys.len(),
        shown.len()
    );
    if ha {
        assert!(
            seen.iter().any(|p| p.ends_with("etcd")),
            "the sampling saw no etcd: {seen:?}"
        );
    }
}
