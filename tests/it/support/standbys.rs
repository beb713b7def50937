//! A primary streaming to two standbys that `pgrepl basebackup` made, and how `pgrepl lag` and
//! `status` see them: what the lag, bench and metrics specs run against.

use std::net::TcpStream;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::backup::backup_into;
use crate::support::harness::{self, PgInstall, PgServer, ServerOptions};
use crate::support::{eventually, pgrepl_output, stderr};

/// A primary streaming to `standby_a` and `standby_b`.
pub struct Cluster {
    pub primary: PgServer,
    pub a: PgServer,
    pub b: PgServer,
    // Holds the standbys' data directories; dropped after the servers (field order).
    _work: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        let install = PgInstall::default_install();
        let primary = PgServer::start(&install, ServerOptions::default());
        let work = harness::postgres_owned_tempdir();
        let (dir_a, dir_b) = (work.path().join("standby_a"), work.path().join("standby_b"));
        backup_into(
            &primary,
            &[&dir_a, &dir_b],
            &[
                "-R",
                "--application-name",
                "standby_a",
                "--application-name",
                "standby_b",
            ],
        );
        let a = PgServer::start_existing(&install, dir_a);
        let b = PgServer::start_existing(&install, dir_b);
        eventually("both standbys to stream", Duration::from_secs(30)).until(|| {
            primary.psql("select count(*) from pg_stat_replication where state = 'streaming'")
                == "2"
        });
        Cluster {
            primary,
            a,
            b,
            _work: work,
        }
    }

    /// Conninfo strings for every node, with the superuser's password in them (which must never
    /// come back out).
    pub fn nodes(&self) -> Vec<String> {
        [&self.primary, &self.a, &self.b]
            .iter()
            .map(|s| s.tcp_conninfo(harness::SUPERUSER, Some(harness::SUPERUSER_PASSWORD)))
            .collect()
    }

    pub fn node_name(server: &PgServer) -> String {
        format!("127.0.0.1:{}", server.port)
    }

    pub fn run(&self, command: &str, extra: &[&str]) -> Output {
        let nodes = self.nodes();
        let mut args: Vec<&str> = vec![command];
        args.extend(nodes.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let output = pgrepl_output(&args, None);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(&output)
        );
        assert!(
            !all.contains(harness::SUPERUSER_PASSWORD),
            "password printed:\n{all}"
        );
        output
    }

    /// `pgrepl lag --json`: the exit code and the report.
    pub fn report(&self, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let output = self.run("lag", &args);
        let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                stderr(&output)
            )
        });
        (output.status.code().expect("exit code"), report)
    }
}

/// A port that accepts and holds every connection without a byte in reply, and the connections
/// it holds.
pub fn silent_node() -> (u16, Arc<Mutex<Vec<TcpStream>>>) {
    let silent = harness::listener();
    let port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for stream in silent.incoming().flatten() {
            holder.lock().unwrap().push(stream);
        }
    });
    (port, held)
}
