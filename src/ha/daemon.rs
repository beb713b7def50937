//! The processes `up` starts beside the servers (etcd members, agents) and `down` stops. Each
//! runs in its own session, so it outlives `up` and a Ctrl-C in `up`'s terminal does not reach
//! it; its pid file finds it again, and its command line proves a pid is still it before any
//! signal: a pid can be reused once the process is gone.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::HaError;
use crate::cluster::local::alive;

/// One detached process and its files.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// What it is, for messages (`etcd member etcd0`, `agent of pg_master`).
    pub what: String,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
    /// Arguments only this process has (its data directory, its node and state directory).
    pub marks: Vec<String>,
}

impl Daemon {
    /// Its pid while it runs.
    pub fn running(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (alive(pid) && self.is_mine(pid)).then_some(pid)
    }

    fn is_mine(&self, pid: i32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        self.marks
            .iter()
            .all(|mark| args.contains(&mark.as_bytes()))
    }

    /// Starts `program` detached, appending its output to the log, and records its pid.
    pub fn start(&self, program: &Path, args: &[OsString], cwd: &Path) -> Result<i32, HaError> {
        let io = |context: String| move |source| HaError::Io { context, source };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(io(format!("open `{}`", self.log_file.display())))?;
        let pid = spawn_detached(program, args, cwd, log).map_err(io(format!(
            "start {} (`{}`)",
            self.what,
            program.display()
        )))?;
        crate::fs::write_durably(&self.pid_file, pid.to_string().as_bytes(), 0o644)
            .map_err(io(format!("write `{}`", self.pid_file.display())))?;
        Ok(pid)
    }

    /// SIGTERM (and SIGCONT, for a stopped process), then up to `limit` for it to exit; SIGKILL
    /// after that. Returns once it is gone, or says it is not.
    pub async fn stop(&self, limit: Duration) -> Result<(), HaError> {
        let Some(pid) = self.running() else {
            let _ = std::fs::remove_file(&self.pid_file);
            return Ok(());
        };
        for signal in [libc::SIGTERM, libc::SIGCONT] {
            // SAFETY: kill(2) on a pid whose command line was just checked to be ours.
            unsafe { libc::kill(pid, signal) };
        }
        if !self.wait_gone(pid, limit).await {
            tracing::warn!(
                "{} (pid {pid}) ignored SIGTERM for {limit:?}: killing it",
                self.what
            );
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            if !self.wait_gone(pid, Duration::from_secs(5)).await {
                return Err(HaError::DidNotExit {
                    what: self.what.clone(),
                    pid,
                });
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
        Ok(())
    }

    async fn wait_gone(&self, pid: i32, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while alive(pid) && self.is_mine(pid) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

/// Runs `program` in a new session with its output in `log` and no password in its
/// environment; returns its pid without waiting for it.
#[allow(clippy::disallowed_methods)] // etcd and pgrepl's own agent: HA processes that outlive `up`
fn spawn_detached(
    program: &Path,
    args: &[OsString],
    cwd: &Path,
    log: std::fs::File,
) -> std::io::Result<i32> {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env_remove("PGPASSWORD");
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // Not waited for: it runs on after `up`, and init reaps it.
    Ok(child.id() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_daemon_is_found_by_its_marks_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon {
            what: "a sleep".into(),
            pid_file: dir.path().join("sleep.pid"),
            log_file: dir.path().join("sleep.log"),
            marks: vec!["1000".into()],
        };
        let pid = daemon
            .start(Path::new("/bin/sleep"), &["1000".into()], dir.path())
            .unwrap();
        assert_eq!(daemon.running(), Some(pid));
        // A pid file whose pid now belongs to another command line is not ours.
        let other = Daemon {
            marks: vec!["999".into()],
            ..daemon.clone()
        };
        assert_eq!(other.running(), None);
        daemon.stop(Duration::from_secs(5)).await.unwrap();
        assert_eq!(daemon.running(), None);
        assert!(!daemon.pid_file.exists());
    }
}
