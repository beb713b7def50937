//! A new user's path (issue 11): `pgrepl up` in an empty directory, then every other command
//! with no argument at all, on both runtimes; a later command that contradicts what `up` built
//! is refused; output into a closed pipe ends quietly. The nodes use the built-in defaults,
//! ports 54320-54322, so the two runtimes take turns.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Mutex;

use crate::support::{capability, docker, harness, stderr};

/// The default ports are one set for the whole machine.
static DEFAULT_PORTS: Mutex<()> = Mutex::new(());

fn pgrepl(dir: &Path, args: &[&str]) -> Output {
    crate::support::pgrepl()
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> Output {
    let output = pgrepl(dir, args);
    assert!(
        output.status.success(),
        "pgrepl {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    output
}

/// One error line and exit 2.
fn refused(dir: &Path, args: &[&str], says: &str) {
    let output = pgrepl(dir, args);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "pgrepl {args:?}: {text}");
    assert_eq!(text.trim().lines().count(), 1, "pgrepl {args:?}: {text}");
    assert!(text.contains(says), "pgrepl {args:?}: {text}");
}

/// `pgrepl drill | head -1`: the reader goes away after one line; pgrepl must not panic.
fn drill_into_a_closed_pipe(dir: &Path) {
    let mut child = crate::support::pgrepl()
        .arg("drill")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert!(first.contains("check"), "{first}");
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(output.status.code(), Some(0), "{text}");
}

/// Everything after `up` with no argument; `other` is the runtime the cluster is not on.
fn every_command_finds_the_cluster(dir: &Path, other: &str) {
    ok(dir, &["status"]);
    ok(dir, &["lag"]);
    let bench = ok(dir, &["bench", "-T", "2", "--modes", "on"]);
    assert!(String::from_utf8_lossy(&bench.stdout).contains("on "));
    ok(dir, &["stop", "pg_asyncslave"]);
    let started = ok(dir, &["start", "pg_asyncslave"]);
    assert_eq!(
        String::from_utf8_lossy(&started.stdout).trim(),
        "pg_asyncslave: started"
    );
    drill_into_a_closed_pipe(dir);
    refused(
        dir,
        &["down", "--runtime", other],
        &format!("not {other}; drop --runtime"),
    );
    ok(dir, &["down", "--purge"]);
    assert!(
        !dir.join(".pgrepl").join("cluster.json").exists(),
        "the record outlived the cluster"
    );
}

#[test]
fn a_new_user_needs_no_arguments_on_either_runtime() {
    let _ports = DEFAULT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let local = harness::postgres_owned_tempdir();
    refused(local.path(), &["status"], "no cluster here");
    refused(local.path(), &["down"], "run `pgrepl up` first");
    ok(local.path(), &["up"]);
    every_command_finds_the_cluster(local.path(), "docker");

    let docker = harness::postgres_owned_tempdir();
    if let Err(why) = docker::engine_with_image() {
        capability::skip(
            "a_new_user_needs_no_arguments_on_either_runtime",
            "docker",
            &why,
        );
        return;
    }
    let _engine = docker::ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    ok(
        docker.path(),
        &["up", "--runtime", "docker", "--image", docker::IMAGE],
    );
    every_command_finds_the_cluster(docker.path(), "local");
}
