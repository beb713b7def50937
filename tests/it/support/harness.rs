//! Integration-test harness: real PostgreSQL servers in temp dirs.
//!
//! Servers (and initdb/pg_ctl) run as OS user `postgres` when the tests run as root
//! (PostgreSQL refuses to run as root); otherwise as the current user. Binaries come
//! from Debian's PostgreSQL 15 (default) or from `<repo>/.pg/<major>/bin` as installed
//! by `scripts/install-pg`.
//!
//! Layout of a server started by [`PgServer::start`]: one temp dir holding `data/`
//! (the cluster), `sock/` (Unix socket) and `server.log` (kept outside the data dir
//! so that base backups don't copy it).
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Superuser (connects over the Unix socket with trust; over TCP with this password).
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "postgres-pw";
/// LOGIN REPLICATION, SCRAM verifier, hba `scram-sha-256`.
pub const REP_SCRAM: &str = "rep_scram";
pub const REP_SCRAM_PASSWORD: &str = "scram-pw";
/// LOGIN REPLICATION, md5 hash stored, hba `md5`.
pub const REP_MD5: &str = "rep_md5";
pub const REP_MD5_PASSWORD: &str = "md5-pw";
/// LOGIN REPLICATION, hba `password` (cleartext over the wire).
pub const REP_PLAIN: &str = "rep_plain";
pub const REP_PLAIN_PASSWORD: &str = "plain-pw";
/// LOGIN REPLICATION, hba `trust`, no password.
pub const REP_TRUST: &str = "rep_trust";
/// LOGIN without REPLICATION, SCRAM; hba lets it try replication (server then refuses).
pub const NOREP: &str = "norep";
pub const NOREP_PASSWORD: &str = "norep-pw";

/// Root of the pgrepl repository (where `.pg/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// installs

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgInstall {
    pub major: u32,
    pub bin_dir: PathBuf,
}

impl PgInstall {
    /// PG 15 from PGREPL_TEST_PG_BIN if set, else /usr/lib/postgresql/15/bin, else .pg/15/bin.
    pub fn default_install() -> PgInstall {
        static DEFAULT: OnceLock<PgInstall> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                let bin_dir = match std::env::var_os("PGREPL_TEST_PG_BIN") {
                    Some(dir) if !dir.is_empty() => PathBuf::from(dir),
                    _ => {
                        let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
                        if debian.join("postgres").exists() {
                            debian
                        } else {
                            repo_root().join(".pg/15/bin")
                        }
                    }
                };
                PgInstall::from_bin_dir(bin_dir).unwrap_or_else(|e| {
                    panic!("no default PostgreSQL install: {e} (install postgresql-15 or run scripts/install-pg 15, or set PGREPL_TEST_PG_BIN)")
                })
            })
            .clone()
    }

    /// Every installed major under <repo>/.pg/*/bin plus the default; sorted by major,
    /// one per major (the default install wins for its major).
    pub fn all() -> Vec<PgInstall> {
        let mut out = vec![PgInstall::default_install()];
        if let Ok(entries) = fs::read_dir(repo_root().join(".pg")) {
            let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
            dirs.sort();
            for dir in dirs {
                if !dir.join("postgres").exists() {
                    continue;
                }
                match PgInstall::from_bin_dir(dir.clone()) {
                    Ok(i) if !out.iter().any(|o| o.major == i.major) => out.push(i),
                    Ok(_) => {}
                    Err(e) => eprintln!("harness: ignoring {}: {e}", dir.display()),
                }
            }
        }
        out.sort_by_key(|i| i.major);
        out
    }

    /// Reads the major from `<bin_dir>/postgres --version`.
    pub fn from_bin_dir(bin_dir: PathBuf) -> Result<PgInstall, String> {
        let postgres = bin_dir.join("postgres");
        let out = Command::new(&postgres)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", postgres.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" / "postgres (PostgreSQL) 18beta1"
        let major = text
            .split_whitespace()
            .nth(2)
            .map(|v| {
                v.chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
            })
            .and_then(|d| d.parse::<u32>().ok())
            .ok_or_else(|| format!("{}: cannot parse version from {text:?}", postgres.display()))?;
        Ok(PgInstall { major, bin_dir })
    }

    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin_dir.join(tool)
    }
}

// ---------------------------------------------------------------------------
// running as postgres

/// uid/gid of OS user postgres (None if not root → current user).
pub fn postgres_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new("postgres").unwrap();
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            panic!("running as root but there is no OS user `postgres` (useradd --system --create-home postgres)");
        }
        Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
    })
}

/// A temp dir owned by postgres when root (mode 0700), for targets that servers will run on.
pub fn postgres_owned_tempdir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgrepl-test-")
        .tempdir()
        .expect("create temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    if let Some((uid, gid)) = postgres_ids() {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    }
    dir
}

/// chown -R to postgres (no-op when not root).
pub fn chown_to_postgres(path: &Path) {
    let Some((uid, gid)) = postgres_ids() else {
        return;
    };
    fn walk(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        let meta = fs::symlink_metadata(p).unwrap();
        if meta.is_dir() {
            for entry in fs::read_dir(p).unwrap() {
                walk(&entry.unwrap().path(), uid, gid);
            }
        }
    }
    walk(path, uid, gid);
}

/// A command for a PostgreSQL tool, run as postgres when root, with a clean PG* environment.
fn pg_command(program: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("LC_ALL", "C").current_dir(cwd).stdin(Stdio::null());
    if let Some((uid, gid)) = postgres_ids() {
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", "/tmp")
            .env("USER", "postgres")
            .env("LOGNAME", "postgres");
    }
    cmd
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs `cmd` to the end, or kills it after `limit`: `Err` then holds what it printed until
/// then. A test's command that hangs fails with its last words instead of holding the suite
/// until CI's own timeout, which says nothing about where.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Read as it comes, so a killed command's words are there even while a grandchild it
    // left behind keeps the pipe open.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let bytes = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = bytes.clone();
        let reader = std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (bytes, reader)
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let (status, finished) = loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            break (status, true);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().expect("reap a killed child"), false);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let take = |(bytes, reader): (std::sync::Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>)| {
        if finished {
            reader.join().unwrap();
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
        std::mem::take(&mut *bytes.lock().unwrap())
    };
    let output = Output {
        status,
        stdout: take(stdout),
        stderr: take(stderr),
    };
    if finished {
        Ok(output)
    } else {
        Err(output)
    }
}

/// A free TCP port on 127.0.0.1, never handed out twice by this process. It is taken outside
/// the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, read, not assumed), where
/// client sockets get theirs; the tests' own listeners take theirs here too ([`listener`]), so
/// a port picked here cannot be taken by one of them before the server it is meant for binds it.
pub fn pick_port() -> u16 {
    static NEXT: Mutex<Option<(Vec<u16>, usize)>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let (candidates, at) = next.get_or_insert_with(|| {
        let candidates = ports_outside(ephemeral_range());
        // Each test process starts elsewhere in the list, so two runs at once rarely meet.
        let start = std::process::id() as usize * 97 % candidates.len();
        (candidates, start)
    });
    loop {
        let port = candidates[*at % candidates.len()];
        *at += 1;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A listener on a port from [`pick_port`], for the tests' fake servers and proxies.
pub fn listener() -> TcpListener {
    loop {
        // A port free a moment ago can be taken by another process in between: pick again.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", pick_port())) {
            return listener;
        }
    }
}

fn ephemeral_range() -> (u16, u16) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut fields = text.split_whitespace().map(|f| f.parse::<u16>().ok());
            Some((fields.next()??, fields.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The ports from 10000 up outside `ephemeral` and outside those `up` picks for its etcd; when
/// fewer than 1000 remain, 10000-19999 with a warning.
fn ports_outside(ephemeral: (u16, u16)) -> Vec<u16> {
    // Nor where `pgrepl up` picks the ports of the etcd it starts, which a test's server would
    // otherwise race for.
    let outside: Vec<u16> = (10_000..=65_000)
        .filter(|p| *p < ephemeral.0 || *p > ephemeral.1)
        .filter(|p| !pgrepl::ha::LOCAL_ETCD_PORTS.contains(p))
        .collect();
    if outside.len() >= 1000 {
        return outside;
    }
    eprintln!(
        "WARNING: the ephemeral port range {}-{} leaves no room for test servers; \
         a client socket may take a test server's port",
        ephemeral.0, ephemeral.1
    );
    (10_000..20_000).collect()
}

fn process_alive(pid: i32) -> bool {
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            !matches!(stat.rsplit(')').next().map(str::trim_start), Some(s) if s.starts_with('Z') || s.starts_with('X'))
        }
        Err(_) => false,
    }
}

/// Pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "<pid> (<comm>) <state> <ppid> ..."
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The test process adopts orphaned descendants (the postmaster, once pg_ctl exits), so that
/// a killed postmaster can be reaped at once: otherwise it stays a zombie until PID 1 gets to
/// it (about a second here), and PostgreSQL's lock-file check takes a zombie for a live
/// postmaster ("lock file postmaster.pid already exists").
fn become_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| unsafe {
        libc::prctl(
            libc::PR_SET_CHILD_SUBREAPER,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    });
}

/// Wait until `pid` is gone: reaped by us if it is our child, else no longer alive and,
/// as far as we can wait for it, no longer a zombie either.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return true;
        }
        if r == -1 && unsafe { libc::kill(pid, 0) } != 0 {
            return true; // not our child and gone entirely
        }
        if Instant::now() >= deadline {
            return !process_alive(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// servers

#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Appended to postgresql.conf (later settings win), e.g. "wal_keep_size = '64MB'".
    pub extra_conf: Vec<String>,
    /// Put at the top of pg_hba.conf (first match wins).
    pub extra_hba: Vec<String>,
    /// Appended to initdb's arguments, e.g. "--data-checksums", "--wal-segsize=1".
    pub initdb_args: Vec<String>,
}

pub struct PgServer {
    pub install: PgInstall,
    pub port: u16,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    running: bool,
    /// `-o` options for pg_ctl (start_existing only: port/socket are not in its config).
    ctl_opts: Option<String>,
    tempdir: TempDir,
}

impl PgServer {
    /// initdb + roles + pg_hba.conf, started and accepting connections. See the consts above.
    pub fn start(install: &PgInstall, opts: ServerOptions) -> PgServer {
        let tempdir = postgres_owned_tempdir();
        let data_dir = tempdir.path().join("data");
        let socket_dir = tempdir.path().join("sock");
        let log_file = tempdir.path().join("server.log");
        make_socket_dir(&socket_dir);

        let mut initdb = pg_command(&install.bin("initdb"), tempdir.path());
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(&opts.initdb_args);
        run(&mut initdb).unwrap_or_else(|e| panic!("initdb: {e}"));

        let mut conf = format!(
            "\n# --- pgrepl test harness ---\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             fsync = off\n\
             shared_buffers = 32MB\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             log_replication_commands = on\n",
            socket_dir.display()
        );
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data_dir.join("postgresql.conf"), &conf);

        let mut hba = String::from("# pgrepl test harness\n");
        for line in &opts.extra_hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("local all postgres trust\nlocal replication postgres trust\n");
        for (role, method) in [
            (REP_SCRAM, "scram-sha-256"),
            (REP_MD5, "md5"),
            (REP_PLAIN, "password"),
            (REP_TRUST, "trust"),
            (NOREP, "scram-sha-256"),
        ] {
            hba.push_str(&format!("host replication {role} 127.0.0.1/32 {method}\n"));
            hba.push_str(&format!("host all {role} 127.0.0.1/32 {method}\n"));
        }
        hba.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        hba.push_str("host replication all 127.0.0.1/32 scram-sha-256\n");
        fs::write(data_dir.join("pg_hba.conf"), hba).unwrap();

        let mut server = PgServer {
            install: install.clone(),
            port: 0,
            data_dir,
            socket_dir,
            log_file,
            running: false,
            ctl_opts: None,
            tempdir,
        };
        server.start_with_free_port(|s, port| {
            append(
                &s.data_dir.join("postgresql.conf"),
                &format!("port = {port}\n"),
            );
        });

        server.psql(&format!(
            "SET password_encryption = 'scram-sha-256';\n\
             ALTER ROLE postgres PASSWORD '{SUPERUSER_PASSWORD}';\n\
             CREATE ROLE {REP_SCRAM} LOGIN REPLICATION PASSWORD '{REP_SCRAM_PASSWORD}';\n\
             CREATE ROLE {REP_PLAIN} LOGIN REPLICATION PASSWORD '{REP_PLAIN_PASSWORD}';\n\
             CREATE ROLE {REP_TRUST} LOGIN REPLICATION;\n\
             CREATE ROLE {NOREP} LOGIN PASSWORD '{NOREP_PASSWORD}';\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {REP_MD5} LOGIN REPLICATION PASSWORD '{REP_MD5_PASSWORD}';"
        ));
        server
    }

    /// Start an existing data directory (e.g. a standby made by pgrepl basebackup) without
    /// rewriting its config: port/socket/listen address go on the pg_ctl command line.
    /// The directory is chowned to postgres (when root) and set to mode 0700.
    pub fn start_existing(install: &PgInstall, data_dir: PathBuf) -> PgServer {
        PgServer::try_start_existing(install, data_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`start_existing`](Self::start_existing) but returns the failure (pg_ctl output
    /// and log tail) instead of panicking, for tests that expect a server not to start.
    pub fn try_start_existing(install: &PgInstall, data_dir: PathBuf) -> Result<PgServer, String> {
        let tempdir = postgres_owned_tempdir();
        let socket_dir = tempdir.path().join("sock");
        let log_file = tempdir.path().join("server.log");
        if !data_dir.join("PG_VERSION").exists() {
            return Err(format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION)",
                data_dir.display()
            ));
        }
        make_socket_dir(&socket_dir);
        chown_to_postgres(&data_dir);
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {}: {e}", data_dir.display()))?;
        let mut server = PgServer {
            install: install.clone(),
            port: 0,
            data_dir,
            socket_dir,
            log_file,
            running: false,
            ctl_opts: None,
            tempdir,
        };
        server.try_start_with_free_port(|s, port| {
            s.ctl_opts = Some(format!(
                "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
                s.socket_dir.display()
            ));
        })?;
        Ok(server)
    }

    /// Start again (same port, data dir and options) after stop() or kill().
    pub fn start_again(&mut self) {
        self.try_start_again().unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn try_start_again(&mut self) -> Result<(), String> {
        assert!(!self.running, "server is already running");
        self.pg_ctl_start().map_err(|(e, _)| e)
    }

    /// Fast shutdown (waits for it).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let pid = self.postmaster_pid();
        let mut cmd = pg_command(&self.install.bin("pg_ctl"), self.tempdir.path());
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "120", "stop"]);
        run(&mut cmd).unwrap_or_else(|e| panic!("pg_ctl stop: {e}\n{}", self.log_tail()));
        if let Some(pid) = pid {
            wait_gone(pid, Duration::from_secs(30));
        }
        self.running = false;
    }

    /// SIGKILL the postmaster and all its children (backends, walsenders...) at once, like
    /// a machine dying; waits until they are gone. postmaster.pid is left behind.
    pub fn kill(&mut self) {
        if !self.running {
            return;
        }
        if let Some(pid) = self.postmaster_pid() {
            // Freeze the postmaster so it forks nothing new, kill its children (each is its
            // own process-group leader: kill the groups, e.g. archive_command shells), then it.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            let children = children_of(pid);
            for &c in &children {
                unsafe {
                    libc::kill(-c, libc::SIGKILL);
                    libc::kill(c, libc::SIGKILL);
                }
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
            for p in std::iter::once(pid).chain(children) {
                wait_gone(p, Duration::from_secs(30));
            }
        }
        self.running = false;
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The postmaster's pid from postmaster.pid, if the file exists.
    pub fn postmaster_pid(&self) -> Option<i32> {
        fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// "host=127.0.0.1 port=N user=U [password=P] dbname=postgres"
    pub fn tcp_conninfo(&self, user: &str, password: Option<&str>) -> String {
        match password {
            Some(p) => format!(
                "host=127.0.0.1 port={} user={user} password={p} dbname=postgres",
                self.port
            ),
            None => format!(
                "host=127.0.0.1 port={} user={user} dbname=postgres",
                self.port
            ),
        }
    }

    /// Superuser over the Unix socket (trust).
    pub fn superuser_conninfo(&self) -> String {
        format!(
            "host={} port={} user={SUPERUSER} dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Superuser client; the connection task is spawned on the current tokio runtime.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.superuser_conninfo(), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "connect {}: {e}\n{}",
                        self.superuser_conninfo(),
                        self.log_tail()
                    )
                });
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("harness: connection error: {e}");
            }
        });
        client
    }

    /// Runs the stock psql (as a cross-check tool) as superuser over the socket; returns
    /// trimmed stdout (unaligned, tuples only, `|`-separated); panics with stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.install.bin("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.superuser_conninfo(),
            ])
            .args(["-c", sql])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        if !out.status.success() {
            panic!(
                "psql failed on port {}: {sql}\n{}\n{}",
                self.port,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Last 50 lines of the server log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(50);
        format!(
            "--- server log {} (last 50 lines) ---\n{}",
            self.log_file.display(),
            lines[start..].join("\n")
        )
    }

    /// The temp dir this server owns (socket dir and log live there; for `start`, the data dir too).
    pub fn temp_path(&self) -> &Path {
        self.tempdir.path()
    }

    fn start_with_free_port(&mut self, set_port: impl Fn(&mut PgServer, u16)) {
        self.try_start_with_free_port(set_port)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Picks a port and starts; retries with another port when it was taken meanwhile.
    fn try_start_with_free_port(
        &mut self,
        set_port: impl Fn(&mut PgServer, u16),
    ) -> Result<(), String> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = pick_port();
            self.port = port;
            set_port(self, port);
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err((e, new_log)) if attempts < 5 && new_log.contains("already in use") => {
                    eprintln!("harness: port {port} was taken, retrying: {e}");
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// pg_ctl start -w; on failure returns (message, log written by this attempt).
    fn pg_ctl_start(&mut self) -> Result<(), (String, String)> {
        become_subreaper();
        let log_len = fs::metadata(&self.log_file)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let mut cmd = pg_command(&self.install.bin("pg_ctl"), self.tempdir.path());
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file);
        cmd.args(["-w", "-t", "120"]);
        if let Some(o) = &self.ctl_opts {
            cmd.arg("-o").arg(o);
        }
        cmd.arg("start");
        // pg_ctl -l redirects the postmaster's stdio to the log file, so it holds no pipe of ours.
        match run(&mut cmd) {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => {
                let log = fs::read(&self.log_file).unwrap_or_default();
                let new_log =
                    String::from_utf8_lossy(log.get(log_len..).unwrap_or(&[])).to_string();
                // pg_ctl may have timed out with the postmaster still up: don't leak it.
                if let Some(pid) = self.postmaster_pid() {
                    if process_alive(pid) {
                        unsafe { libc::kill(pid, libc::SIGQUIT) };
                        wait_gone(pid, Duration::from_secs(10));
                    }
                }
                Err((
                    format!(
                        "pg_ctl start ({}): {e}\n{new_log}",
                        self.install.bin_dir.display()
                    ),
                    new_log,
                ))
            }
        }
    }
}

impl Drop for PgServer {
    /// Immediate shutdown, then the temp dir is removed (a data dir given to
    /// start_existing belongs to the caller and is left alone).
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if !self.running {
            return;
        }
        let pid = self.postmaster_pid();
        let mut cmd = pg_command(&self.install.bin("pg_ctl"), self.tempdir.path());
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        match (run(&mut cmd), pid) {
            (Ok(_), Some(pid)) => {
                wait_gone(pid, Duration::from_secs(10));
            }
            (Ok(_), None) => {}
            (Err(_), _) => self.kill(),
        }
        self.running = false;
    }
}

fn make_socket_dir(dir: &Path) {
    fs::create_dir(dir).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    chown_to_postgres(dir);
}

fn append(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}
