//! The Docker engine the docker runtime's tests use: the images `compose/build-image` makes,
//! the lock on the engine's global names, and the docker CLI for what a test does to a
//! container from outside (pgrepl itself speaks the engine API).

use std::process::{Command, Output};

use bollard::Docker;

use crate::support::harness;
use crate::support::stderr;

/// The PostgreSQL 15 image the docker runtime's tests run (`compose/build-image 15`).
pub const IMAGE: &str = "pgrepl-local/postgres:15";

/// The engine's container and network names are global: one test at a time uses them.
pub static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The etcd image `up` runs with `[ha]` on the docker runtime.
pub const ETCD_IMAGE: &str = "pgrepl-local/etcd:3.4";
/// The HAProxy image `up` runs with `[proxy]` on the docker runtime.
pub const HAPROXY_IMAGE: &str = "pgrepl-local/haproxy:2.6";

/// An engine with the test images (built when missing), or why there is none.
pub fn engine_with_image() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let docker = rt.block_on(engine())?;
    rt.block_on(ensure_image(&docker, IMAGE, "15"));
    rt.block_on(ensure_image(&docker, ETCD_IMAGE, "etcd"));
    rt.block_on(ensure_image(&docker, HAPROXY_IMAGE, "haproxy"));
    Ok(())
}

/// The engine, or why there is none.
pub async fn engine() -> Result<Docker, String> {
    let docker = Docker::connect_with_unix_defaults().map_err(|e| e.to_string())?;
    docker.negotiate_version().await.map_err(|e| e.to_string())
}

/// Builds `image` with `compose/build-image WHAT` unless the engine already has it (the tests
/// run as root in CI).
pub async fn ensure_image(docker: &Docker, image: &str, what: &str) {
    if docker.inspect_image(image).await.is_ok() {
        return;
    }
    let script = harness::repo_root().join("compose/build-image");
    let output = Command::new(&script)
        .arg(what)
        .output()
        .expect("run compose/build-image");
    assert!(
        output.status.success(),
        "compose/build-image {what} failed:\n{}",
        stderr(&output)
    );
}

/// The docker CLI (tests only; pgrepl itself speaks the engine API).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The host pid of the agent in `container`: the child of its docker-init.
pub fn agent_pid(container: &str) -> Option<i32> {
    let inspect = docker(&["inspect", "-f", "{{.State.Pid}}", container]);
    let init = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// `signal` to every server process in `container` (host pids from the engine), none to its
/// agent. Nothing when the container does not run.
pub fn signal_postgres(container: &str, signal: i32) {
    let top = docker(&["top", container, "-eo", "pid,comm"]);
    for line in String::from_utf8_lossy(&top.stdout).lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(pid), Some(comm)) = (fields.next(), fields.next()) else {
            continue;
        };
        if comm == "postgres" {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) on this test cluster's server processes.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }
}

/// What the container printed (its agent's log), across its restarts.
pub fn logs(container: &str) -> String {
    let output = docker(&["logs", container]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn kill(container: &str) {
    let output = docker(&["kill", container]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() || stderr.contains("is not running"),
        "docker kill {container}: {stderr}"
    );
}

pub fn start(container: &str) {
    docker_ok(&["start", container]);
}

/// Cuts `container` from `network` (`false`), or joins it again (`true`).
pub fn connect(network: &str, container: &str, connected: bool) {
    let verb = if connected { "connect" } else { "disconnect" };
    docker_ok(&["network", verb, network, container]);
}
