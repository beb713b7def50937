//! A cluster file (`pgrepl init`'s, on free ports) in a temp dir the servers can use, and the
//! pgrepl commands a test runs against it, each bounded in time. `down --purge` on drop, so a
//! failed test leaves no server behind.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::harness::{self, PgInstall};
use crate::support::{pgrepl, stderr};

/// A cluster file in its own postgres-owned temp dir, with free ports.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    /// Node `i`'s port, in the cluster file's order.
    pub ports: Vec<u16>,
}

impl TestCluster {
    pub fn new() -> TestCluster {
        let dir = harness::postgres_owned_tempdir();
        let file = dir.path().join("pgrepl.toml");
        let init = run(&["init", "--cluster", file.to_str().unwrap()]);
        assert!(init.status.success(), "{}", stderr(&init));
        let ports = vec![
            harness::pick_port(),
            harness::pick_port(),
            harness::pick_port(),
        ];
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: toml::Value = toml::from_str(&text).unwrap();
        let nodes = doc["nodes"].as_array().map(Vec::len);
        assert_eq!(nodes, Some(3), "the default cluster has three nodes");
        let text = [54320, 54321, 54322]
            .iter()
            .zip(&ports)
            .fold(text, |text, (default, port)| {
                text.replace(&format!("port = {default}"), &format!("port = {port}"))
            });
        std::fs::write(&file, text).unwrap();
        TestCluster { dir, file, ports }
    }

    /// Runs a pgrepl command against this cluster.
    pub fn pgrepl(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--cluster", self.file.to_str().unwrap()]);
        bounded(&all).unwrap_or_else(|printed| {
            panic!(
                "pgrepl {args:?} still ran after {COMMAND_LIMIT:?}; it had printed:\n{}{}{}",
                String::from_utf8_lossy(&printed.stdout),
                stderr(&printed),
                self.server_logs()
            )
        })
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let output = self.pgrepl(args);
        assert!(
            output.status.success(),
            "pgrepl {args:?} failed:\n{}{}{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(&output),
            self.server_logs()
        );
        output
    }

    /// The end of each local node's server log, for a failure's message: what a standby said
    /// when it would not stream is the cause a step's timeout does not show.
    pub fn server_logs(&self) -> String {
        ["pg_master", "pg_slave", "pg_asyncslave"]
            .iter()
            .filter_map(|node| {
                let log = self
                    .dir
                    .path()
                    .join(".pgrepl")
                    .join(node)
                    .join("postgres.log");
                let text = std::fs::read_to_string(&log).ok()?;
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                Some(format!(
                    "\n--- {node}: {} (last 30 lines) ---\n{tail}",
                    log.display()
                ))
            })
            .collect()
    }

    /// `pgrepl COMMAND --cluster FILE EXTRA...`, not started: for a test that gives it more
    /// settings or runs it unbounded.
    pub fn command(&self, command: &str, extra: &[&str]) -> Command {
        let mut pgrepl = pgrepl();
        pgrepl
            .args([command, "--cluster", self.file.to_str().unwrap()])
            .args(extra)
            .env_remove("PGPASSWORD");
        pgrepl
    }

    /// Where `up` keeps the servers' data, logs and sockets (the file's default `state_dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".pgrepl")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join(".pgrepl/run")
    }

    /// Stock psql against node `index` (0 = pg_master, 1 = pg_slave, 2 = pg_asyncslave).
    pub fn psql(&self, index: usize, sql: &str) -> String {
        self.psql_in(index, "postgres", sql)
    }

    /// [`TestCluster::psql`] in database `db`.
    pub fn psql_in(&self, index: usize, db: &str, sql: &str) -> String {
        let output = harness::output_within(
            Command::new(PgInstall::default_install().bin("psql")).args([
                "-h",
                self.socket_dir().to_str().unwrap(),
                "-p",
                &self.ports[index].to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-Atc",
                sql,
            ]),
            COMMAND_LIMIT,
        )
        .unwrap_or_else(|_| {
            panic!(
                "psql on node {index} still ran after {COMMAND_LIMIT:?}: {sql}{}",
                self.server_logs()
            )
        });
        assert!(output.status.success(), "psql: {}", stderr(&output));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// A second `up` (with `extra` arguments) on a healthy cluster changes nothing.
    pub fn assert_up_changes_nothing(&self, extra: &[&str]) {
        let args: Vec<&str> = std::iter::once("up").chain(extra.iter().copied()).collect();
        let again = self.ok(&args);
        for change in [
            "initialise",
            "base backup",
            "restart",
            "set ",
            "create role",
            "start `",
        ] {
            assert!(
                !stderr(&again).contains(change),
                "second up changed something ({change}):\n{}",
                stderr(&again)
            );
        }
    }

    pub fn sql_conninfo(&self, index: usize) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir().display(),
            self.ports[index]
        )
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.pgrepl(&["down", "--purge"]);
    }
}

/// How long a test lets one pgrepl command run. Every wait inside pgrepl has its own, shorter,
/// limit: past this one a command hangs, and the test says where instead of holding the suite.
const COMMAND_LIMIT: Duration = Duration::from_secs(300);

fn bounded(args: &[&str]) -> Result<Output, Output> {
    harness::output_within(pgrepl().args(args).env_remove("PGPASSWORD"), COMMAND_LIMIT)
}

fn run(args: &[&str]) -> Output {
    bounded(args).unwrap_or_else(|printed| {
        panic!(
            "pgrepl {args:?} still ran after {COMMAND_LIMIT:?}; it had printed:\n{}",
            stderr(&printed)
        )
    })
}
