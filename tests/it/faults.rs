//! Faults during `pgrepl basebackup` and `pgrepl receivewal` against real servers: the
//! connection dropped (a TCP proxy in the test that cuts after N bytes from the server), the
//! server killed (the proxy holds the stream at N bytes while the test SIGKILLs the server), and
//! the disk filling up (a small tmpfs; skipped with a reason where mounting is not allowed).
//!
//! After every injected fault: exit code 2, one `pgrepl:` error line that says what happened,
//! and no target left that could pass for a complete one (for basebackup: nothing at all left in
//! the target's parent; for receivewal: every byte the server counts as acknowledged, i.e. up to
//! the slot's `restart_lsn`, is on disk and identical to the server's WAL). A fault point beyond
//! the end of the stream is not a fault: that run must succeed, and is counted apart.

use std::cell::{Cell, RefCell};
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::harness::{self, PgInstall, PgServer, ServerOptions};
use crate::support::{capability, eventually, pgrepl, stderr};

// ---------------------------------------------------------------------------------------------
// The proxy.

/// What the proxy does when the server has sent `after` bytes on connection number `conn`
/// (0 = the first one pgrepl opens).
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Close both sides at once.
    Cut { conn: usize, after: u64 },
    /// Stop forwarding, tell the test (which kills the server), forward whatever else comes.
    Hold { conn: usize, after: u64 },
    /// Forward everything.
    None,
}

struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Set when the fault point was reached.
    fired: Arc<AtomicBool>,
    /// Receives one message when a `Hold` fault is reached; the proxy goes on when the test
    /// sends on `resume`.
    held: mpsc::Receiver<()>,
    resume: mpsc::Sender<()>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: u16, fault: Fault) -> Proxy {
        let listener = harness::listener();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let (held_tx, held) = mpsc::channel();
        let (resume, resume_rx) = mpsc::channel::<()>();
        let resume_rx = Arc::new(Mutex::new(resume_rx));
        let (stop2, fired2) = (stop.clone(), fired.clone());
        let accept = std::thread::spawn(move || {
            let count = AtomicUsize::new(0);
            let mut pipes = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                };
                client.set_nonblocking(false).unwrap();
                let index = count.fetch_add(1, Ordering::Relaxed);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue; // the server is down: the client sees the close
                };
                let fault = match fault {
                    Fault::Cut { conn, after } if conn == index => Some((true, after)),
                    Fault::Hold { conn, after } if conn == index => Some((false, after)),
                    _ => None,
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                pipes.push(std::thread::spawn(move || copy(c2, s2)));
                let (fired, held_tx, resume_rx) =
                    (fired2.clone(), held_tx.clone(), resume_rx.clone());
                pipes.push(std::thread::spawn(move || {
                    downstream(server, client, fault, &fired, &held_tx, &resume_rx)
                }));
            }
            for pipe in pipes {
                let _ = pipe.join();
            }
        });
        Proxy {
            port,
            stop,
            fired,
            held,
            resume,
            accept: Some(accept),
        }
    }

    fn conninfo(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} sslmode=disable",
            self.port
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.resume.send(());
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Client to server, untouched.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Server to client, with the fault: `(cut, after)`.
fn downstream(
    mut server: TcpStream,
    mut client: TcpStream,
    fault: Option<(bool, u64)>,
    fired: &AtomicBool,
    held_tx: &mpsc::Sender<()>,
    resume_rx: &Mutex<mpsc::Receiver<()>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let mut fault = fault;
    loop {
        if let Some((cut, after)) = fault {
            if sent >= after {
                fired.store(true, Ordering::SeqCst);
                if cut {
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                let _ = held_tx.send(());
                let _ = resume_rx.lock().unwrap().recv();
                fault = None;
            }
        }
        let want = match fault {
            Some((_, after)) => buf.len().min((after - sent) as usize),
            None => buf.len(),
        };
        match server.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// Running pgrepl.

fn spawn_pgrepl(args: &[&str], password: &str) -> Child {
    let mut cmd = pgrepl();
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("PGPASSWORD", password)
        .env("PGPASSFILE", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("spawn pgrepl")
}

/// One `pgrepl:` line (and at most one `hint:`), containing one of `any_of`.
fn assert_one_clear_error(what: &str, output: &Output, any_of: &[&str]) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{what}: exit code; stderr:\n{err}"
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.is_empty())
        .collect();
    assert!(
        lines.len() <= 2
            && lines.iter().filter(|l| l.starts_with("pgrepl:")).count() == 1
            && lines
                .iter()
                .all(|l| l.starts_with("pgrepl:") || l.starts_with("hint:")),
        "{what}: one error line expected:\n{err}"
    );
    assert!(
        any_of.iter().any(|n| err.contains(n)),
        "{what}: the error should say one of {any_of:?}:\n{err}"
    );
}

fn children(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[derive(Default, Debug)]
struct Counts {
    injected: usize,
    beyond_the_end: usize,
    skipped: usize,
}

impl Counts {
    fn report(&self, what: &str) {
        eprintln!(
            "faults: {what}: {} runs with the fault injected, {} with the fault point beyond the end (succeeded), {} skipped",
            self.injected, self.beyond_the_end, self.skipped
        );
    }
}

// ---------------------------------------------------------------------------------------------
// basebackup

/// A primary with about 25 MB of table data, so that a backup streams ~50 MB.
fn loaded_primary() -> PgServer {
    let primary = PgServer::start(&PgInstall::default_install(), ServerOptions::default());
    primary.psql(
        "create table big as select g, repeat('x', 1000) as pad from generate_series(1, 20000) g",
    );
    primary
}

/// One basebackup through `proxy` into `<work>/t`. Returns whether the fault fired.
fn backup_through(proxy: &Proxy, work: &Path, on_hold: impl FnOnce()) -> (Output, bool) {
    let conninfo = proxy.conninfo(harness::REP_SCRAM);
    let target = work.join("t");
    let child = spawn_pgrepl(
        &[
            "basebackup",
            "-d",
            &conninfo,
            "-c",
            "fast",
            "-D",
            target.to_str().unwrap(),
        ],
        harness::REP_SCRAM_PASSWORD,
    );
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    // A Hold fault: wait for it (or for the run to end without reaching it).
    let mut on_hold = Some(on_hold);
    while !waiter.is_finished() {
        if proxy.held.recv_timeout(Duration::from_millis(20)).is_ok() {
            (on_hold.take().unwrap())();
            proxy.resume.send(()).unwrap();
        }
    }
    (waiter.join().unwrap(), proxy.fired.load(Ordering::SeqCst))
}

/// What every failed backup must leave: nothing in the target's parent.
fn assert_failed_backup(what: &str, output: &Output, work: &Path, any_of: &[&str]) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{what}: exit code; stderr:\n{err}"
    );
    assert!(
        !work.join("t").exists(),
        "{what}: a target was left at {}",
        work.join("t").display()
    );
    // A failure must stop the extractor and the WAL streamer before the staging directory is
    // removed; otherwise `remove_dir_all` meets new files: a WARN line, and the directory stays.
    // A disk that failed its writeback may also fail reading a directory back (EIO, or EBADMSG
    // for an ext4 block whose checksum no longer matches): that is the disk, said in a warning.
    let (warnings, lines): (Vec<&str>, Vec<&str>) = err
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.is_empty())
        .partition(|l| l.contains("WARN could not remove"));
    let raced: Vec<&&str> = warnings
        .iter()
        .filter(|w| {
            !["(os error 5)", "(os error 74)"]
                .iter()
                .any(|e| w.contains(e))
        })
        .collect();
    assert!(
        raced.is_empty(),
        "{what}: staging not removed: {}",
        warnings.join(" | ")
    );
    assert!(
        lines.len() <= 2
            && lines.iter().filter(|l| l.starts_with("pgrepl:")).count() == 1
            && lines
                .iter()
                .all(|l| l.starts_with("pgrepl:") || l.starts_with("hint:")),
        "{what}: one error line expected:\n{err}"
    );
    // When the extractor fails (a full disk), its own error is reported, not the network
    // side's "extraction stopped".
    assert!(
        any_of.iter().any(|n| err.contains(n)),
        "{what}: the error should say one of {any_of:?}:\n{err}"
    );
    let left = children(work);
    assert!(
        left.is_empty(),
        "{what}: left behind in {}: {left:?}",
        work.display()
    );
}

/// A run whose fault point lay beyond the end: it succeeded and its target is complete.
fn assert_complete_backup(what: &str, output: &Output, work: &Path) {
    assert!(
        output.status.success(),
        "{what}: no fault, yet it failed:\n{}",
        stderr(output)
    );
    assert!(work.join("t/PG_VERSION").exists() && work.join("t/backup_manifest").exists());
    fs::remove_dir_all(work.join("t")).unwrap();
}

#[test]
fn basebackup_survives_dropped_connections_and_killed_servers() {
    let mut primary = loaded_primary();
    let work = harness::postgres_owned_tempdir();
    // A killed server's backends sometimes get to say why before they die, or the kernel resets
    // the connection.
    let closed = [
        "server closed the connection unexpectedly",
        "terminating connection due to unexpected postmaster exit",
        "Connection reset by peer",
    ];

    // Dropped connections: the backup connection (0) and the WAL streamer's (1).
    let mut cuts = Counts::default();
    let points: &[(usize, u64)] = &[
        (0, 0),
        (0, 150),
        (0, 4_000),
        (0, 200_000),
        (0, 3_000_000),
        (0, 12_000_000),
        (0, 30_000_000),
        (1, 0),
        (1, 400),
        (1, 3_000),
    ];
    for &(conn, after) in points {
        let what = format!("connection {conn} cut after {after} bytes");
        let proxy = Proxy::start(primary.port, Fault::Cut { conn, after });
        let started = Instant::now();
        let (output, fired) = backup_through(&proxy, work.path(), || {});
        if fired {
            assert_failed_backup(&what, &output, work.path(), &closed);
            cuts.injected += 1;
        } else {
            assert_complete_backup(&what, &output, work.path());
            cuts.beyond_the_end += 1;
        }
        eprintln!(
            "faults: {what}: {:?}, {}",
            started.elapsed(),
            stderr(&output).lines().next().unwrap_or("succeeded")
        );
    }
    cuts.report("basebackup, connection dropped");

    // The server killed (SIGKILL, every process) with the backup at N bytes.
    let mut kills = Counts::default();
    for after in [0u64, 20_000, 2_000_000, 10_000_000, 25_000_000] {
        let what = format!("server killed after {after} bytes");
        let proxy = Proxy::start(primary.port, Fault::Hold { conn: 0, after });
        let killed = Arc::new(AtomicBool::new(false));
        let (output, fired) = {
            let killed = killed.clone();
            let primary = &mut primary;
            backup_through(&proxy, work.path(), move || {
                primary.kill();
                killed.store(true, Ordering::SeqCst);
            })
        };
        drop(proxy);
        if fired {
            assert_failed_backup(&what, &output, work.path(), &closed);
            kills.injected += 1;
        } else {
            assert_complete_backup(&what, &output, work.path());
            kills.beyond_the_end += 1;
        }
        eprintln!(
            "faults: {what}: {}",
            stderr(&output).lines().next().unwrap_or("succeeded")
        );
        if killed.load(Ordering::SeqCst) {
            primary.start_again();
        }
    }
    kills.report("basebackup, server killed");
    assert!(
        cuts.injected + kills.injected >= 12,
        "too few faults landed: {cuts:?} {kills:?}"
    );
}

/// A tmpfs of `size` mounted at `dir` for as long as it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(dir).unwrap();
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if output.status.success() {
            Ok(Tmpfs(dir.to_owned()))
        } else {
            Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn basebackup_into_a_full_disk_leaves_nothing_behind() {
    let primary = loaded_primary();
    let work = harness::postgres_owned_tempdir();
    let mut counts = Counts::default();
    // From "full before the first file" to "full while streaming WAL or writing the manifest".
    for size in ["64k", "2m", "10m", "24m", "40m"] {
        let mnt = work.path().join(format!("disk-{size}"));
        let disk = match Tmpfs::mount(&mnt, size) {
            Ok(disk) => disk,
            Err(reason) => {
                capability::skip(
                    "basebackup_into_a_full_disk_leaves_nothing_behind",
                    "tmpfs",
                    &reason,
                );
                counts.skipped += 1;
                continue;
            }
        };
        let proxy = Proxy::start(primary.port, Fault::None);
        let (output, _) = backup_through(&proxy, &mnt, || {});
        let what = format!("basebackup into a {size} tmpfs");
        if output.status.success() {
            assert_complete_backup(&what, &output, &mnt);
            counts.beyond_the_end += 1;
        } else {
            assert_failed_backup(&what, &output, &mnt, &["No space left on device"]);
            counts.injected += 1;
        }
        eprintln!(
            "faults: {what}: {}",
            stderr(&output).lines().next().unwrap_or("succeeded")
        );
        drop(disk);
    }
    counts.report("basebackup, disk full");
    assert!(counts.skipped > 0 || counts.injected >= 4, "{counts:?}");
}

/// An ext4 filesystem on a loop device whose backing file lives in a tmpfs much smaller than the
/// filesystem: writes land in the page cache and succeed, and fail only when written back — a
/// real device failing under the final sync (device-mapper's `error`/`flakey` targets would do
/// the same, but need a kernel driver that containers often lack).
struct FailingDisk {
    mnt: PathBuf,
    device: String,
    _backing: Tmpfs,
}

impl FailingDisk {
    fn create(dir: &Path, backing_size: &str) -> Result<FailingDisk, String> {
        let backing = Tmpfs::mount(&dir.join("backing"), backing_size)?;
        let image = backing.0.join("disk.img");
        let run = |program: &str, args: &[&str]| -> Result<String, String> {
            let output = Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "{program} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        let image_arg = image.to_str().unwrap();
        run("truncate", &["-s", "512M", image_arg])?;
        // No journal: a failed journal write would turn the filesystem read-only at once; data
        // writeback errors are what this disk is for.
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-E",
                "nodiscard",
                image_arg,
            ],
        )?;
        let device = run("losetup", &["-f", "--show", image_arg])?;
        let mnt = dir.join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        if let Err(e) = run("mount", &[&device, mnt.to_str().unwrap()]) {
            let _ = run("losetup", &["-d", &device]);
            return Err(e);
        }
        Ok(FailingDisk {
            mnt,
            device,
            _backing: backing,
        })
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn basebackup_fails_on_a_write_error_at_the_final_sync_and_leaves_nothing() {
    let primary = PgServer::start(&PgInstall::default_install(), ServerOptions::default());
    let conninfo = primary.tcp_conninfo(harness::REP_SCRAM, None);
    let work = harness::postgres_owned_tempdir();
    for method in ["fsync", "syncfs"] {
        // A fresh cluster is ~40 MB of files under 1 MB, which the extractor leaves to the
        // final sync; 4 MB of backing store is too little for them.
        let disk = match FailingDisk::create(&work.path().join(method), "4m") {
            Ok(disk) => disk,
            Err(reason) => {
                capability::skip("basebackup sync failure (failing disk)", "loopdev", &reason);
                return;
            }
        };
        let area = disk.mnt.join("area");
        fs::create_dir(&area).unwrap();
        let target = area.join("t");
        let child = spawn_pgrepl(
            &[
                "basebackup",
                "-d",
                &conninfo,
                "-c",
                "fast",
                "--sync-method",
                method,
                "-D",
                target.to_str().unwrap(),
            ],
            harness::REP_SCRAM_PASSWORD,
        );
        let output = child.wait_with_output().unwrap();
        let what = format!("basebackup --sync-method {method} onto a failing disk");
        assert_failed_backup(&what, &output, &area, &["sync `"]);
        eprintln!("faults: {what}: {}", stderr(&output).trim());
        drop(disk);
    }
}

// ---------------------------------------------------------------------------------------------
// receivewal

/// 1 MB segments and WAL kept, so the server still has every byte to compare with.
fn wal_server() -> PgServer {
    PgServer::start(
        &PgInstall::default_install(),
        ServerOptions {
            initdb_args: vec!["--wal-segsize=1".into()],
            extra_conf: vec!["wal_keep_size = '512MB'".into()],
            ..Default::default()
        },
    )
}

/// About `mb` MB of WAL.
fn generate_wal(server: &PgServer, mb: u32) {
    server.psql(&format!(
        "create table if not exists filler(x int, pad text);
         insert into filler select g, repeat('x', 200) from generate_series(1, {}) g",
        mb * 5000
    ));
}

fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("LSN `{text}`"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Every byte below `acknowledged` that belongs to a segment in `dir` (complete or `.partial`)
/// is there and equals the server's; the segments from the first one in `dir` up to the one
/// holding `acknowledged` are all present. Returns the bytes checked.
fn assert_acknowledged_wal_kept(
    what: &str,
    dir: &Path,
    server: &PgServer,
    acknowledged: u64,
) -> u64 {
    const SEG: u64 = 1 << 20;
    let mut names: Vec<String> = children(dir)
        .into_iter()
        .filter(|n| n.len() >= 24 && !n.ends_with(".history"))
        .collect();
    names.sort();
    let Some(first) = names.first() else {
        assert_eq!(
            acknowledged, 0,
            "{what}: nothing on disk, yet the server counts {acknowledged:X} as flushed"
        );
        return 0;
    };
    let segno = |name: &str| {
        u64::from_str_radix(&name[8..16], 16).unwrap() * 0x1_0000_0000 / SEG
            + u64::from_str_radix(&name[16..24], 16).unwrap()
    };
    let timeline = &first[..8];
    let mut checked = 0;
    for seg in segno(first).. {
        let start = seg * SEG;
        if start >= acknowledged {
            break;
        }
        let name = format!(
            "{timeline}{:08X}{:08X}",
            seg / (0x1_0000_0000 / SEG),
            seg % (0x1_0000_0000 / SEG)
        );
        let ours =
            fs::read(dir.join(&name)).or_else(|_| fs::read(dir.join(format!("{name}.partial"))));
        let ours = ours.unwrap_or_else(|_| panic!("{what}: segment {name} (below the acknowledged {acknowledged:X}) is missing: {names:?}"));
        let theirs = fs::read(server.data_dir.join("pg_wal").join(&name)).unwrap();
        let upto = (acknowledged - start).min(SEG) as usize;
        assert!(
            ours.len() >= upto,
            "{what}: {name} holds {} bytes, {upto} acknowledged",
            ours.len()
        );
        assert!(
            ours[..upto] == theirs[..upto],
            "{what}: {name} differs from the server's in its first {upto} bytes"
        );
        checked += upto as u64;
    }
    checked
}

/// The slot's `restart_lsn`: what the server counts as flushed by the client (0 when the slot
/// was never created, or has no position yet).
fn slot_restart_lsn(server: &PgServer, slot: &str) -> u64 {
    let lsn = server.psql(&format!(
        "select coalesce(max(restart_lsn), '0/0') from pg_replication_slots where slot_name = '{slot}'"
    ));
    parse_lsn(&lsn)
}

fn drop_slot(server: &PgServer, slot: &str) {
    server.psql(&format!(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '{slot}'"
    ));
}

/// receivewal through `proxy` into `dir` with slot `slot` (created), while WAL is generated;
/// `on_hold` runs at a Hold fault. Returns the output and whether the fault fired.
fn receivewal_through(
    proxy: &Proxy,
    server: &RefCell<PgServer>,
    dir: &Path,
    slot: &str,
    on_hold: impl FnOnce(),
) -> (Output, bool) {
    let conninfo = proxy.conninfo(harness::REP_SCRAM);
    let child = spawn_pgrepl(
        &[
            "receivewal",
            "-d",
            &conninfo,
            "-D",
            dir.to_str().unwrap(),
            "-S",
            slot,
            "--create-slot",
            "-s",
            "1",
            // Each fault must end the run, to look at what it left.
            "--no-loop",
        ],
        harness::REP_SCRAM_PASSWORD,
    );
    let pid = child.id() as i32;
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    eventually("the slot to be active", Duration::from_secs(30)).until(|| {
        waiter.is_finished()
            || server.borrow().psql(&format!(
                "select count(*) from pg_replication_slots where slot_name = '{slot}' and active"
            )) == "1"
    });
    let mut on_hold = Some(on_hold);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while !waiter.is_finished() {
        if let Ok(()) = proxy.held.recv_timeout(Duration::from_millis(20)) {
            (on_hold.take().unwrap())();
            proxy.resume.send(()).unwrap();
            continue;
        }
        if on_hold.is_some() && !proxy.fired.load(Ordering::SeqCst) && rounds < 12 {
            generate_wal(&server.borrow(), 1);
            rounds += 1;
        } else if rounds >= 12 && !proxy.fired.load(Ordering::SeqCst) {
            // The fault point lies beyond all the WAL made: stop the run as a user would.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        assert!(Instant::now() < deadline, "receivewal did not stop");
    }
    (waiter.join().unwrap(), proxy.fired.load(Ordering::SeqCst))
}

#[test]
fn receivewal_keeps_acknowledged_wal_through_faults() {
    let server = RefCell::new(wal_server());
    let work = harness::postgres_owned_tempdir();
    // A killed server's backends sometimes get to say why before they die, or the kernel resets
    // the connection.
    let closed = [
        "server closed the connection unexpectedly",
        "terminating connection due to unexpected postmaster exit",
        "Connection reset by peer",
    ];
    let mut counts = Counts::default();
    let mut checked_bytes = 0;
    let cases: Vec<Fault> = vec![
        Fault::Cut {
            conn: 0,
            after: 300,
        },
        Fault::Cut {
            conn: 0,
            after: 600_000,
        },
        Fault::Cut {
            conn: 0,
            after: 2_500_000,
        },
        Fault::Cut {
            conn: 0,
            after: 6_000_000,
        },
        Fault::Hold {
            conn: 0,
            after: 1_500_000,
        },
        Fault::Hold {
            conn: 0,
            after: 4_000_000,
        },
    ];
    for (i, fault) in cases.into_iter().enumerate() {
        let what = format!("receivewal, {fault:?}");
        let dir = work.path().join(format!("wal{i}"));
        fs::create_dir(&dir).unwrap();
        let slot = format!("faults_{i}");
        let port = server.borrow().port;
        let proxy = Proxy::start(port, fault);
        let killed = Cell::new(false);
        let (output, fired) = receivewal_through(&proxy, &server, &dir, &slot, || {
            server.borrow_mut().kill();
            killed.set(true);
        });
        drop(proxy);
        let mut server = server.borrow_mut();
        if killed.get() {
            server.start_again();
        }
        if fired {
            assert_one_clear_error(&what, &output, &closed);
            counts.injected += 1;
        } else {
            assert!(output.status.success(), "{what}: {}", stderr(&output));
            counts.beyond_the_end += 1;
        }
        let acknowledged = slot_restart_lsn(&server, &slot);
        checked_bytes += assert_acknowledged_wal_kept(&what, &dir, &server, acknowledged);
        eprintln!(
            "faults: {what}: acknowledged {:X}/{:X}; {}",
            acknowledged >> 32,
            acknowledged as u32,
            stderr(&output).lines().next().unwrap_or("stopped")
        );
        drop_slot(&server, &slot);
    }
    counts.report("receivewal, connection dropped or server killed");
    eprintln!(
        "faults: receivewal: {checked_bytes} acknowledged bytes compared with the server's WAL"
    );
    assert!(counts.injected >= 4, "{counts:?}");

    // A full disk: room for about two 1 MB segments.
    let mnt = work.path().join("disk");
    match Tmpfs::mount(&mnt, "2500k") {
        Err(reason) => capability::skip("receivewal faults (full disk)", "tmpfs", &reason),
        Ok(disk) => {
            let port = server.borrow().port;
            let proxy = Proxy::start(port, Fault::None);
            let (output, _) = receivewal_through(&proxy, &server, &mnt, "faults_disk", || {});
            let server = server.borrow();
            assert_one_clear_error(
                "receivewal, disk full",
                &output,
                &["No space left on device"],
            );
            let acknowledged = slot_restart_lsn(&server, "faults_disk");
            assert_acknowledged_wal_kept("receivewal, disk full", &mnt, &server, acknowledged);
            eprintln!(
                "faults: receivewal, disk full: acknowledged {:X}/{:X}; {}",
                acknowledged >> 32,
                acknowledged as u32,
                stderr(&output).lines().next().unwrap_or("")
            );
            drop_slot(&server, "faults_disk");
            drop(disk);
        }
    }
}
