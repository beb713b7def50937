//! The local runtime: each node is a postgres process from the machine's PostgreSQL, on its
//! host address (127.0.0.1 by default) and port, its data and log under the state directory. PostgreSQL refuses
//! to run as root, so when pgrepl runs as root the servers run as the OS user `postgres`.
//!
//! Processes are started with `pg_ctl start -w` so they outlive pgrepl, and stopped with
//! `pg_ctl stop`; the port and socket directory are given on the command line, so a standby
//! cloned from the primary never inherits the primary's port.
//!
//! Everything here blocks (child processes, waits on pids): `runtime` calls it off the async
//! workers.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::runtime_error::RuntimeError;
use super::server_log;
use super::server_version::{self, Binaries};
use super::spec::{LocalSettings, NodeSpec};
use super::ClusterError;
use crate::conn::{ConnectOptions, Host};

#[derive(Debug, Clone)]
pub struct LocalRuntime {
    pub bin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// uid/gid the servers run as (the `postgres` user when pgrepl is root).
    pub run_as: Option<(u32, u32)>,
    /// That user's home: libpq in a walreceiver or pg_rewind looks there for client
    /// certificates (`~/.postgresql/`), and root's is not readable to it.
    server_home: Option<PathBuf>,
    /// `[local]`, its password file made absolute.
    pub settings: LocalSettings,
}

impl LocalRuntime {
    /// Finds the binaries (`--pg-bin`, PATH, `pg_config --bindir`, the newest
    /// /usr/lib/postgresql/*/bin; with `fetch`, the cache when none of those is found or
    /// holds the major asked for) and the user to run them as.
    pub fn new(
        state_dir: PathBuf,
        pg_bin: Option<PathBuf>,
        settings: LocalSettings,
        fetch: Option<&PgFetch>,
    ) -> Result<LocalRuntime, ClusterError> {
        let (run_as, server_home) = if crate::os_user::is_root() {
            let (uid, gid, home) = postgres_user()?;
            (Some((uid, gid)), Some(home))
        } else {
            (None, None)
        };
        let bin_dir = match (pg_bin, fetch) {
            (Some(dir), _) if dir.join("postgres").is_file() && dir.join("initdb").is_file() => dir,
            (Some(dir), _) => return Err(RuntimeError::NotABinDir(dir).into()),
            (None, None) => find_bin_dir().ok_or(RuntimeError::NoBinaries)?,
            (None, Some(fetch)) => installed_or_fetched(fetch, run_as)?,
        };
        // PATH may hold links to a few of the binaries only (postgres, initdb, pg_ctl): the
        // installation's own directory has the rest too (pg_rewind).
        let bin_dir = std::fs::canonicalize(bin_dir.join("postgres"))
            .ok()
            .and_then(|real| real.parent().map(Path::to_path_buf))
            .filter(|real| real.join("initdb").is_file())
            .unwrap_or(bin_dir);
        Ok(LocalRuntime {
            bin_dir,
            state_dir,
            run_as,
            server_home,
            settings,
        })
    }

    pub fn data_dir(&self, node: &NodeSpec) -> PathBuf {
        self.state_dir.join(&node.name).join("data")
    }

    fn log_file(&self, node: &NodeSpec) -> PathBuf {
        self.state_dir.join(&node.name).join("postgres.log")
    }

    /// The Unix socket directory every node listens in (owner-only).
    pub fn socket_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }

    /// Creates the state directories, owned by the server user.
    pub fn prepare(&self, nodes: &[NodeSpec]) -> Result<(), ClusterError> {
        for dir in std::iter::once(self.socket_dir())
            .chain(nodes.iter().map(|n| self.state_dir.join(&n.name)))
        {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ClusterError::io(format!("create `{}`", dir.display()), e))?;
            self.give_to_server_user(&dir)?;
        }
        self.give_to_server_user(&self.state_dir)?;
        Ok(())
    }

    fn give_to_server_user(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| ClusterError::io(format!("chown `{}`", path.display()), e))?;
        }
        Ok(())
    }

    /// initdb for a new primary: local superuser by socket (trust, the socket directory is
    /// owner-only), password authentication over TCP, with the password of
    /// `[local] superuser_password_file` when given and a line for each of `[local] clients`
    /// (`hostssl` with `tls`, but for this machine's loopback).
    pub fn init_primary(&self, node: &NodeSpec, tls: bool) -> Result<(), ClusterError> {
        let data = self.data_dir(node);
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-U"),
            OsStr::new("postgres"),
            OsStr::new("--auth-local=trust"),
            OsStr::new("--auth-host=scram-sha-256"),
            OsStr::new("-E"),
            OsStr::new("UTF8"),
            OsStr::new("--locale=C"),
        ];
        // The file's path, never the password, is on initdb's command line.
        let pwfile = self
            .settings
            .superuser_password_file
            .as_ref()
            .map(|file| format!("--pwfile={}", file.display()));
        if let Some(pwfile) = &pwfile {
            args.push(OsStr::new(pwfile));
        }
        self.run("initdb", args)?;
        if self.settings.clients.is_empty() {
            return Ok(());
        }
        let hba = data.join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba)
            .map_err(|e| ClusterError::io(format!("read `{}`", hba.display()), e))?;
        for client in &self.settings.clients {
            // A password crosses the network only inside TLS (libpq's default `prefer` uses it).
            let kind = super::runtime::hba_connection_type(tls, client);
            text.push_str(&format!(
                "# added by pgrepl: [local] clients\n{kind} all all {client} scram-sha-256\n"
            ));
        }
        std::fs::write(&hba, text)
            .map_err(|e| ClusterError::io(format!("write `{}`", hba.display()), e))
    }

    /// The major of the binaries, from `postgres --version`.
    pub fn server_major(&self) -> Result<u32, RuntimeError> {
        bin_major(&self.bin_dir)
    }

    /// Refuses to start a node whose data another major wrote.
    fn check_version(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let pg_version = self.data_dir(node).join("PG_VERSION");
        let text = match std::fs::read_to_string(&pg_version) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ClusterError::io(
                    format!("read `{}`", pg_version.display()),
                    e,
                ))
            }
        };
        let binaries = Binaries::Dir(&self.bin_dir);
        server_version::check(&node.name, text.as_deref(), binaries, self.server_major()?)?;
        Ok(())
    }

    /// Starts the node unless its own postmaster already runs (an interrupted `up` left it);
    /// the caller has checked that no one else listens on its port.
    pub fn start(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        if self.is_running(node) {
            return Ok(());
        }
        self.check_version(node)?;
        self.clear_stale_locks(node)?;
        // The host is an IP address or a DNS name, `listen` that or `*` (validated): safe in
        // pg_ctl's shell line, `*` quoted.
        let listen = self.settings.listen.as_deref().unwrap_or(node.host());
        let options = format!(
            "-p {} -k {} -c listen_addresses='{listen}'",
            node.port,
            self.socket_dir().display(),
        );
        let (data, log) = (self.data_dir(node), self.log_file(node));
        let mark = server_log::mark(&log);
        self.run(
            "pg_ctl",
            [
                OsStr::new("start"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("120"),
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-l"),
                log.as_os_str(),
                OsStr::new("-o"),
                OsStr::new(&options),
            ],
        )
        .map_err(|e| {
            // pg_ctl's own line is "Examine the log output": the server's says why.
            let error = match server_log::start_failure(&log, mark) {
                Some(reason) => format!("the server's log says: {reason}"),
                None => e.to_string(),
            };
            RuntimeError::StartFailed {
                node: node.name.clone(),
                error,
                log,
            }
            .into()
        })
    }

    /// Stops the node (`fast`: roll back sessions, checkpoint, exit; else `immediate`).
    pub fn stop(&self, node: &NodeSpec, fast: bool) -> Result<(), ClusterError> {
        if !self.is_running(node) {
            return Ok(());
        }
        let data = self.data_dir(node);
        let mode = if fast { "fast" } else { "immediate" };
        self.run(
            "pg_ctl",
            [
                OsStr::new("stop"),
                OsStr::new("-w"),
                OsStr::new("-m"),
                OsStr::new(mode),
                OsStr::new("-D"),
                data.as_os_str(),
            ],
        )
    }

    /// SIGKILL to the postmaster and its children at once: a crash, as when a machine dies, so
    /// not even a backend lingers to finish a commit.
    pub fn kill(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let Some(pid) = self.postmaster_pid(node) else {
            return Ok(());
        };
        for victim in std::iter::once(pid).chain(children_of(pid)) {
            // SAFETY: plain kill(2) on pids of this node's server processes.
            unsafe { libc::kill(victim, libc::SIGKILL) };
        }
        wait_gone(pid, KILL_WAIT);
        Ok(())
    }

    /// Stops every node and confirms its postmaster exited; with `purge` then deletes the
    /// state directory. A node that cannot be stopped (fast, then immediate) keeps everything:
    /// deleting the data under a live server would crash it.
    pub fn remove(&self, nodes: &[NodeSpec], purge: bool) -> Result<(), ClusterError> {
        let mut not_stopped = Vec::new();
        for node in nodes {
            if let Err(e) = self.stop_confirmed(node) {
                tracing::warn!(node = %node.name, "could not stop: {e:#}");
                not_stopped.push(node.name.clone());
            }
        }
        if !not_stopped.is_empty() {
            return Err(RuntimeError::NotStopped(not_stopped).into());
        }
        if purge && self.state_dir.exists() {
            std::fs::remove_dir_all(&self.state_dir).map_err(|e| {
                ClusterError::io(format!("remove `{}`", self.state_dir.display()), e)
            })?;
        }
        Ok(())
    }

    /// A fast stop, an immediate one if that fails, then proof: the postmaster's pid is gone.
    fn stop_confirmed(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let Some(pid) = self.postmaster_pid(node).filter(|&pid| alive(pid)) else {
            return Ok(());
        };
        match self.stop(node, true).or_else(|_| self.stop(node, false)) {
            Ok(()) if wait_gone(pid, KILL_WAIT) => Ok(()),
            Ok(()) => Err(RuntimeError::NotStopped(vec![node.name.clone()]).into()),
            Err(_) if !alive(pid) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn is_running(&self, node: &NodeSpec) -> bool {
        self.postmaster_pid(node).is_some_and(alive)
    }

    /// A killed postmaster stays a zombie until init reaps it, and PostgreSQL counts a zombie's
    /// pid as alive, so it would refuse to start over the dead server's lock files. A lock whose
    /// pid is gone or a zombie is stale: remove it (its children were killed with it).
    fn clear_stale_locks(&self, node: &NodeSpec) -> Result<(), ClusterError> {
        let socket_lock = self
            .socket_dir()
            .join(format!(".s.PGSQL.{}.lock", node.port));
        for lock in [self.data_dir(node).join("postmaster.pid"), socket_lock] {
            let pid = std::fs::read_to_string(&lock)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
            if pid.is_some_and(|pid| !alive(pid)) {
                tracing::info!("removing stale lock `{}`", lock.display());
                std::fs::remove_file(&lock)
                    .map_err(|e| ClusterError::io(format!("remove `{}`", lock.display()), e))?;
            }
        }
        Ok(())
    }

    fn postmaster_pid(&self, node: &NodeSpec) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir(node).join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The superuser over the socket directory.
    pub fn superuser(&self, node: &NodeSpec) -> ConnectOptions {
        let mut options = ConnectOptions::resolve(Default::default(), &|_| None)
            .expect("defaults always resolve");
        options.host = Host::Unix(self.socket_dir());
        options.port = node.port;
        options.user = "postgres".into();
        options.dbname = Some("postgres".into());
        options
    }

    /// The superuser of a node on another machine: over TCP with the password of
    /// `[local] superuser_password_file`, which a passfile beside the state also holds for the
    /// server's tools (pg_rewind), so it is on no command line. `None` without that file.
    pub fn remote_superuser(
        &self,
        node: &NodeSpec,
    ) -> Result<Option<ConnectOptions>, ClusterError> {
        let Some(file) = &self.settings.superuser_password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| ClusterError::io(format!("read `{}`", file.display()), e))?;
        let password = text.trim_end_matches(['\n', '\r']).to_owned();
        let passfile = self.state_dir.join("remote.pgpass");
        let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
        let line = format!("*:*:*:postgres:{escaped}\n");
        // Asked on every `status --watch` refresh: written only when it changes.
        if std::fs::read_to_string(&passfile).ok().as_deref() != Some(line.as_str()) {
            crate::fs::write_durably(&passfile, line.as_bytes(), 0o600)
                .map_err(|e| ClusterError::io(format!("write `{}`", passfile.display()), e))?;
            self.give_to_server_user(&passfile)?;
        }
        let mut options = self.superuser(node);
        options.host = Host::Tcp(node.host().to_owned());
        options.password = Some(password.into());
        options.passfile = Some(passfile);
        Ok(Some(options))
    }

    /// Rewinds the stopped node's data directory to where it forked from the server `source`
    /// reaches, with the stock pg_rewind; returns what it printed.
    pub fn rewind(&self, node: &NodeSpec, source: &ConnectOptions) -> Result<String, ClusterError> {
        if !self.bin_dir.join("pg_rewind").is_file() {
            return Err(RuntimeError::NoRewind(self.bin_dir.clone()).into());
        }
        // pg_rewind finishes a crashed node's recovery in single-user mode, which a stale
        // postmaster.pid would stop.
        self.clear_stale_locks(node)?;
        let data = self.data_dir(node);
        let conninfo = source.redacted();
        self.output(
            "pg_rewind",
            [
                OsStr::new("--target-pgdata"),
                data.as_os_str(),
                OsStr::new("--source-server"),
                OsStr::new(&conninfo),
                // For its "need to copy N MB" line.
                OsStr::new("--progress"),
            ],
        )
    }

    fn run<I, S>(&self, tool: &str, args: I) -> Result<(), ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.output(tool, args).map(drop)
    }

    /// Runs a PostgreSQL binary as the server user and returns what it printed on stderr
    /// (where these tools report); on failure its error line becomes the error.
    #[allow(clippy::disallowed_methods)] // initdb, pg_ctl, postgres, pg_rewind: the server's tools
    fn output<I, S>(&self, tool: &str, args: I) -> Result<String, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(self.bin_dir.join(tool));
        command
            .args(args)
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env_remove("PGPASSWORD");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid).current_dir(&self.state_dir);
        }
        if let Some(home) = &self.server_home {
            command.env("HOME", home);
        }
        let output = command
            .output()
            .map_err(|e| ClusterError::io(format!("run `{tool}`"), e))?;
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            return Ok(text);
        }
        // The error line, not a hint or detail printed after it.
        let lines = || text.lines().rev().map(str::trim).filter(|l| !l.is_empty());
        let error = lines()
            .find(|l| l.contains("error:") || l.contains("FATAL:"))
            .or_else(|| lines().next())
            .unwrap_or("no output");
        Err(RuntimeError::ToolFailed {
            tool: tool.to_owned(),
            error: error.to_owned(),
        }
        .into())
    }
}

/// How long a stopped or killed postmaster may take to exit.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (blocking) up to `timeout` for `pid` to exit; true when it did.
fn wait_gone(pid: i32, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while alive(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// A process that exists and is not a zombie (a killed postmaster stays a zombie until its
/// parent, often init, reaps it).
pub(crate) fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Pids whose parent is `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .map(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned))
                })
                .flatten()
                .and_then(|ppid| ppid.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

/// What `up` may fetch (`--pg-version`, `--offline`).
#[derive(Debug, Clone, Default)]
pub struct PgFetch {
    /// `--pg-version`: the major wanted, else whatever is installed, else the newest.
    pub major: Option<u32>,
    pub policy: crate::fetch::FetchPolicy,
}

/// The installed binaries when they suit `fetch.major`, else the cached (fetched) ones.
fn installed_or_fetched(
    fetch: &PgFetch,
    run_as: Option<(u32, u32)>,
) -> Result<PathBuf, RuntimeError> {
    if let Some(dir) = find_bin_dir() {
        match fetch.major {
            None => return Ok(dir),
            Some(major) if bin_major(&dir).ok() == Some(major) => return Ok(dir),
            Some(_) => {}
        }
    }
    let major = fetch.major.unwrap_or(crate::fetch::DEFAULT_PG_MAJOR);
    Ok(crate::fetch::postgres(major, &fetch.policy, run_as)?)
}

/// The major of the binaries in `bin_dir`, from `postgres --version`.
#[allow(clippy::disallowed_methods)] // PostgreSQL's own server binary
fn bin_major(bin_dir: &Path) -> Result<u32, RuntimeError> {
    let postgres = bin_dir.join("postgres");
    let unknown = |reason: String| RuntimeError::UnknownMajor {
        binaries: format!("`{}`", bin_dir.display()),
        reason,
    };
    let output = Command::new(&postgres)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| unknown(format!("`{} --version`: {e}", postgres.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    server_version::major_of_version_output(&text)
        .ok_or_else(|| unknown(format!("`postgres --version` printed `{}`", text.trim())))
}

#[allow(clippy::disallowed_methods)] // pg_config, PostgreSQL's own locator
fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| {
        dir.join("postgres").is_file()
            && dir.join("initdb").is_file()
            && dir.join("pg_ctl").is_file()
    };
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_tools(d)) {
            return Some(dir);
        }
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_tools(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn postgres_user() -> Result<(u32, u32, PathBuf), ClusterError> {
    let user = crate::os_user::named("postgres").ok_or(RuntimeError::NoServerUser)?;
    Ok((user.uid, user.gid, user.home))
}
