//! A scripted, hostile PostgreSQL server and what `pgrepl basebackup` makes of it.
//!
//! [`FakeServer`] listens on 127.0.0.1, answers the startup with a chosen authentication request,
//! answers IDENTIFY_SYSTEM and the two SHOWs a base backup asks, and answers BASE_BACKUP with
//! whatever bytes the test scripted, in the layout of PostgreSQL 14 (one CopyOut of raw tar per
//! tablespace, then one for the manifest) or 15+ (one CopyOut of `n`/`d`/`p`/`m` messages).
//! Every message and tar header is built here by hand, independently of `src/`, so that the
//! client is tested against the protocol as documented and not against itself.
//!
//! [`hostile_case`] runs the real binary against one and checks the promise every failing case
//! holds to (see `fake_server.rs`, the cases).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{pgrepl, without_pg_env};

// ---------------------------------------------------------------------------------------------
// Backend messages (protocol-message-formats.html), built by hand.

/// A backend message: tag, Int32 length counting itself, body.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// `AuthenticationXxx` with request code `code` and its extra bytes.
pub fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    msg(b'R', &body)
}

pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, value);
    msg(b'S', &body)
}

pub fn backend_key_data() -> Vec<u8> {
    let mut body = 4242u32.to_be_bytes().to_vec();
    body.extend_from_slice(&0x5eed_u32.to_be_bytes());
    msg(b'K', &body)
}

pub fn ready_for_query() -> Vec<u8> {
    msg(b'Z', b"I")
}

/// RowDescription with text columns of type `text` (25).
pub fn row_description(columns: &[&str]) -> Vec<u8> {
    let mut body = (columns.len() as u16).to_be_bytes().to_vec();
    for name in columns {
        cstr(&mut body, name);
        body.extend_from_slice(&0u32.to_be_bytes()); // table oid
        body.extend_from_slice(&0u16.to_be_bytes()); // attribute number
        body.extend_from_slice(&25u32.to_be_bytes()); // type oid
        body.extend_from_slice(&(-1i16).to_be_bytes()); // type length
        body.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
        body.extend_from_slice(&0u16.to_be_bytes()); // text format
    }
    msg(b'T', &body)
}

pub fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let mut body = (values.len() as u16).to_be_bytes().to_vec();
    for value in values {
        match value {
            Some(v) => {
                body.extend_from_slice(&(v.len() as u32).to_be_bytes());
                body.extend_from_slice(v.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    msg(b'D', &body)
}

pub fn command_complete(tag: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, tag);
    msg(b'C', &body)
}

/// A whole result set: description, rows, completion.
pub fn result_set(columns: &[&str], rows: &[&[Option<&str>]], tag: &str) -> Vec<u8> {
    let mut out = row_description(columns);
    for row in rows {
        out.extend(data_row(row));
    }
    out.extend(command_complete(tag));
    out
}

pub fn copy_out_response() -> Vec<u8> {
    msg(b'H', &[0, 0, 0])
}

pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    msg(b'd', payload)
}

pub fn copy_done() -> Vec<u8> {
    msg(b'c', b"")
}

pub fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        cstr(&mut body, value);
    }
    body.push(0);
    msg(b'E', &body)
}

// ---------------------------------------------------------------------------------------------
// ustar archives, built by hand so that hostile headers can be written as they are.

pub const BLOCK: usize = 512;

/// One ustar header block. `size` is written as 11 octal digits, or as GNU base-256 when it
/// does not fit, exactly as given (it may lie about the data that follows).
pub fn tar_header(name: &[u8], kind: u8, size: u64, mode: u32, link: &[u8]) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let put = |h: &mut [u8; BLOCK], at: usize, bytes: &[u8]| {
        h[at..at + bytes.len()].copy_from_slice(bytes)
    };
    assert!(
        name.len() <= 100 && link.len() <= 100,
        "test names fit the ustar fields"
    );
    put(&mut h, 0, name);
    put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, b"0000026\0");
    put(&mut h, 116, b"0000026\0");
    if size < 0o77777777777 {
        put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    } else {
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[4..].copy_from_slice(&size.to_be_bytes());
        put(&mut h, 124, &field);
    }
    put(
        &mut h,
        136,
        format!("{:011o}\0", 1_700_000_000u64).as_bytes(),
    );
    h[156] = kind;
    put(&mut h, 157, link);
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    put(&mut h, 265, b"postgres");
    put(&mut h, 297, b"postgres");
    // Checksum: every byte summed with the checksum field counted as eight spaces.
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar stream under construction.
#[derive(Default, Clone)]
pub struct Tar(pub Vec<u8>);

impl Tar {
    pub fn entry(mut self, name: &str, kind: u8, data: &[u8], mode: u32, link: &str) -> Self {
        self.0.extend_from_slice(&tar_header(
            name.as_bytes(),
            kind,
            data.len() as u64,
            mode,
            link.as_bytes(),
        ));
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(BLOCK) * BLOCK, 0);
        self
    }
    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, b'0', data, 0o600, "")
    }
    pub fn dir(self, name: &str) -> Self {
        self.entry(&format!("{name}/"), b'5', b"", 0o700, "")
    }
    /// A header whose size field says `claimed`, followed by only `data`.
    pub fn lying_file(mut self, name: &str, claimed: u64, data: &[u8]) -> Self {
        self.0
            .extend_from_slice(&tar_header(name.as_bytes(), b'0', claimed, 0o600, b""));
        self.0.extend_from_slice(data);
        self
    }
    /// The two zero blocks PostgreSQL 15+ ends an archive with.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 2 * BLOCK]);
        self.0
    }
}

/// The files of a small, plausible data directory, as (name, contents).
pub fn datadir_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "backup_label",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".to_vec(),
        ),
        ("PG_VERSION", b"15\n".to_vec()),
        (
            "global/pg_control",
            (0..=255u8).cycle().take(8192).collect(),
        ),
        ("base/1/1259", vec![7u8; 3 * 8192 + 100]),
    ]
}

/// `datadir_files` as a base archive, directories first as the server sends them.
pub fn datadir_tar() -> Tar {
    let mut tar = Tar::default()
        .dir("global")
        .dir("base")
        .dir("base/1")
        .dir("pg_wal");
    for (name, data) in datadir_files() {
        tar = tar.file(name, &data);
    }
    tar
}

/// A version-1 backup manifest for `files`, with CRC32C checksums and a valid
/// `Manifest-Checksum`, laid out as `backup_manifest.c` writes it.
pub fn manifest(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut body = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
    for (i, (name, data)) in files.iter().enumerate() {
        body.push_str(if i == 0 { "\n" } else { ",\n" });
        let crc = hex::encode(crc32c::crc32c(data).to_le_bytes());
        body.push_str(&format!(
            "{{ \"Path\": \"{name}\", \"Size\": {}, \"Last-Modified\": \"2024-05-02 10:11:12 GMT\", \
             \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{crc}\" }}",
            data.len()
        ));
    }
    body.push_str("\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n");
    sign_manifest(body.into_bytes())
}

/// Appends the `Manifest-Checksum` line: SHA-256 of everything before it.
pub fn sign_manifest(mut body: Vec<u8>) -> Vec<u8> {
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(&body));
    body.extend_from_slice(format!("\"Manifest-Checksum\": \"{sum}\"}}\n").as_bytes());
    body
}

// ---------------------------------------------------------------------------------------------
// BASE_BACKUP responses.

/// Which server generation to imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// One CopyOut of raw tar per tablespace, then one for the manifest.
    Pg14,
    /// One CopyOut with typed `n`/`d`/`p`/`m` messages.
    Pg15,
}

impl Style {
    pub const ALL: [Style; 2] = [Style::Pg14, Style::Pg15];

    pub fn server_version(self) -> &'static str {
        match self {
            Style::Pg14 => "14.9",
            Style::Pg15 => "15.4",
        }
    }
}

/// The start position and tablespace list (the main directory only) every response opens with.
pub fn backup_header() -> Vec<u8> {
    let mut out = result_set(
        &["recptr", "tli"],
        &[&[Some("0/2000028"), Some("1")]],
        "SELECT",
    );
    out.extend(result_set(
        &["spcoid", "spclocation", "size"],
        &[&[None, None, None]],
        "SELECT",
    ));
    out
}

/// The end position, the command's completion and ReadyForQuery.
pub fn backup_trailer() -> Vec<u8> {
    let mut out = result_set(
        &["recptr", "tli"],
        &[&[Some("0/2000100"), Some("1")]],
        "SELECT",
    );
    out.extend(command_complete("BASE_BACKUP"));
    out.extend(ready_for_query());
    out
}

/// The archive part of a response: `archive` (base.tar) cut into CopyData chunks of `chunk`
/// bytes, then the manifest if any, in `style`'s layout. Ends with the last CopyDone.
pub fn backup_copy(style: Style, archive: &[u8], manifest: Option<&[u8]>, chunk: usize) -> Vec<u8> {
    let mut out = copy_out_response();
    match style {
        Style::Pg14 => {
            for piece in archive.chunks(chunk) {
                out.extend(copy_data(piece));
            }
            out.extend(copy_done());
            if let Some(manifest) = manifest {
                out.extend(copy_out_response());
                for piece in manifest.chunks(chunk) {
                    out.extend(copy_data(piece));
                }
                out.extend(copy_done());
            }
        }
        Style::Pg15 => {
            out.extend(copy_data(b"nbase.tar\0\0"));
            for piece in archive.chunks(chunk) {
                let mut payload = vec![b'd'];
                payload.extend_from_slice(piece);
                out.extend(copy_data(&payload));
            }
            let mut progress = vec![b'p'];
            progress.extend_from_slice(&(archive.len() as u64).to_be_bytes());
            out.extend(copy_data(&progress));
            if let Some(manifest) = manifest {
                out.extend(copy_data(b"m"));
                for piece in manifest.chunks(chunk) {
                    let mut payload = vec![b'd'];
                    payload.extend_from_slice(piece);
                    out.extend(copy_data(&payload));
                }
            }
            out.extend(copy_done());
        }
    }
    out
}

/// A complete, well-formed response for a base archive `archive` (PG 14 archives have no
/// trailer, as the server sent them up to 14).
pub fn backup_response(style: Style, archive: &[u8], manifest: Option<&[u8]>) -> Vec<u8> {
    let mut out = backup_header();
    out.extend(backup_copy(style, archive, manifest, 8 * 1024));
    out.extend(backup_trailer());
    out
}

// ---------------------------------------------------------------------------------------------
// The server.

/// How the server answers the startup packet.
#[derive(Clone, Debug)]
pub enum Auth {
    /// AuthenticationOk at once (trust).
    Trust,
    /// This authentication request, then wait for the client to give up.
    Request(Vec<u8>),
}

/// What the server does after writing the scripted BASE_BACKUP bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Keep the connection open until the client closes it.
    Wait,
    /// Close the connection at once (a crashed server).
    Close,
}

/// One scripted session.
#[derive(Clone)]
pub struct Script {
    pub server_version: String,
    pub auth: Auth,
    /// Written in answer to BASE_BACKUP.
    pub base_backup: Vec<u8>,
    /// Written after `base_backup`, `repeat` times (to stream far more than memory should hold).
    pub then_repeat: Option<(Vec<u8>, usize)>,
    pub then: Then,
    /// Replaces the IDENTIFY_SYSTEM answer: these bytes, then the piece `times` times, then the
    /// connection is closed.
    pub identify_system: Option<(Vec<u8>, Vec<u8>, usize)>,
    /// The answer to `SHOW wal_segment_size`.
    pub wal_segment_size: String,
}

impl Script {
    pub fn new(style: Style, base_backup: Vec<u8>) -> Script {
        Script {
            server_version: style.server_version().into(),
            auth: Auth::Trust,
            base_backup,
            then_repeat: None,
            then: Then::Wait,
            identify_system: None,
            wal_segment_size: "16MB".into(),
        }
    }
}

pub struct FakeServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Every query received, in order.
    pub queries: Arc<Mutex<Vec<String>>>,
}

impl FakeServer {
    pub fn start(script: Script) -> FakeServer {
        let listener = crate::support::harness::listener();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (stop2, queries2) = (stop.clone(), queries.clone());
        let accept = std::thread::spawn(move || {
            let mut sessions = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let (script, queries) = (script.clone(), queries2.clone());
                        sessions.push(std::thread::spawn(move || {
                            // The client hanging up early is what most cases expect.
                            let _ = serve(stream, &script, &queries);
                        }));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            for session in sessions {
                let _ = session.join();
            }
        });
        FakeServer {
            port,
            stop,
            accept: Some(accept),
            queries,
        }
    }

    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=x sslmode=disable", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn read_exact_or_eof(stream: &mut TcpStream, n: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match stream.read(&mut buf[got..])? {
            0 => return Ok(None),
            k => got += k,
        }
    }
    Ok(Some(buf))
}

/// One client message: (tag, body); `None` at EOF.
fn read_message(stream: &mut TcpStream) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let Some(head) = read_exact_or_eof(stream, 5)? else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    assert!(
        (4..1 << 20).contains(&len),
        "client sent a frame of length {len}"
    );
    Ok(read_exact_or_eof(stream, len - 4)?.map(|body| (head[0], body)))
}

fn serve(
    mut stream: TcpStream,
    script: &Script,
    queries: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    // Startup packet (or SSLRequest first, which we refuse).
    loop {
        let Some(len) = read_exact_or_eof(&mut stream, 4)? else {
            return Ok(());
        };
        let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        let Some(body) = read_exact_or_eof(&mut stream, len - 4)? else {
            return Ok(());
        };
        if body[..4] == 80877103u32.to_be_bytes() {
            stream.write_all(b"N")?;
            continue;
        }
        assert_eq!(body[..4], 196608u32.to_be_bytes(), "protocol 3.0 startup");
        break;
    }
    match &script.auth {
        Auth::Trust => {
            let mut out = auth(0, b"");
            out.extend(parameter_status("server_version", &script.server_version));
            out.extend(parameter_status("integer_datetimes", "on"));
            out.extend(backend_key_data());
            out.extend(ready_for_query());
            stream.write_all(&out)?;
        }
        Auth::Request(request) => {
            stream.write_all(request)?;
            drain(&mut stream);
            return Ok(());
        }
    }
    while let Some((tag, body)) = read_message(&mut stream)? {
        match tag {
            b'Q' => {
                let text = String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .to_string();
                queries.lock().unwrap().push(text.clone());
                if let (true, Some((head, piece, times))) =
                    (text.starts_with("IDENTIFY_SYSTEM"), &script.identify_system)
                {
                    stream.write_all(head)?;
                    for _ in 0..*times {
                        stream.write_all(piece)?;
                    }
                    stream.shutdown(Shutdown::Both)?;
                    return Ok(());
                } else if text.starts_with("IDENTIFY_SYSTEM") {
                    let mut out = result_set(
                        &["systemid", "timeline", "xlogpos", "dbname"],
                        &[&[
                            Some("7362182938384710211"),
                            Some("1"),
                            Some("0/2000060"),
                            None,
                        ]],
                        "IDENTIFY_SYSTEM",
                    );
                    out.extend(ready_for_query());
                    stream.write_all(&out)?;
                } else if let Some(name) = text.strip_prefix("SHOW ") {
                    let name = name.trim().trim_matches('"');
                    let value = match name {
                        "wal_segment_size" => script.wal_segment_size.as_str(),
                        "data_directory_mode" => "0700",
                        other => panic!("unexpected SHOW {other}"),
                    };
                    let mut out = result_set(&[name], &[&[Some(value)]], "SHOW");
                    out.extend(ready_for_query());
                    stream.write_all(&out)?;
                } else if text.starts_with("BASE_BACKUP") {
                    stream.write_all(&script.base_backup)?;
                    if let Some((piece, times)) = &script.then_repeat {
                        for _ in 0..*times {
                            stream.write_all(piece)?;
                        }
                    }
                    if script.then == Then::Close {
                        stream.shutdown(Shutdown::Both)?;
                        return Ok(());
                    }
                } else {
                    let mut out = error_response(
                        "ERROR",
                        "42601",
                        &format!("fake server: unexpected `{text}`"),
                    );
                    out.extend(ready_for_query());
                    stream.write_all(&out)?;
                }
            }
            b'X' => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

/// Reads until the client closes (or the read times out).
fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

// ---------------------------------------------------------------------------------------------
// Running pgrepl and checking the promise.

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set size (`VmHWM`) as last seen while it ran.
    pub max_rss_kib: i64,
    pub elapsed: Duration,
}

/// Runs the pgrepl binary with a clean PG* environment, polling its peak RSS.
///
/// The peak is `VmHWM` from `/proc/<pid>/status`, read every 2 ms until the process exits
/// (it is monotonic, so only growth in the last 2 ms can be missed). wait4's `ru_maxrss` would
/// be wrong here: the kernel folds the hiwater mark of the mm replaced at exec into it, and with
/// posix_spawn that is this test process's own, large, address space.
/// Killed (and the test failed) after `limit`.
// The child is reaped with waitpid below (polling its RSS meanwhile), not with `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn run_pgrepl(args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Run {
    let mut cmd = pgrepl();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_pg_env(&mut cmd);
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn pgrepl");
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut status = 0;
    let mut max_rss_kib = 0;
    loop {
        max_rss_kib = max_rss_kib.max(vm_hwm_kib(pid).unwrap_or(0));
        // SAFETY: `pid` is our child, not yet reaped (std's Child is never waited on here).
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(r == 0, "waitpid: {}", std::io::Error::last_os_error());
        if started.elapsed() > limit {
            // SAFETY: signalling and reaping our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::waitpid(pid, &mut status, 0) };
            let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
            panic!("pgrepl {args:?} still running after {limit:?}; stderr so far:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Run {
        code,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned(),
        max_rss_kib,
        elapsed: started.elapsed(),
    }
}

/// `VmHWM` of a running process, in KiB.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<i64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Every path under `dir` (relative), with its kind, size and content hash for files: enough to
/// see anything created, changed or removed.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let what = if meta.file_type().is_symlink() {
                format!("symlink -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &path, out);
                "dir".to_string()
            } else if meta.is_file() {
                let data = fs::read(&path).unwrap();
                format!(
                    "file {} bytes crc {:08x}",
                    data.len(),
                    crc32c::crc32c(&data)
                )
            } else {
                format!("special mode {:o}", meta.mode())
            };
            out.insert(rel, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A sandbox for one run: `root/` holds `work/` (the target's parent, `work/t` the target) and
/// a `victim` file that hostile archives aim at.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("pgrepl-hostile-")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join("work")).unwrap();
        fs::write(dir.path().join("victim"), "must not change\n").unwrap();
        Sandbox { dir }
    }
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn target(&self) -> PathBuf {
        self.root().join("work").join("t")
    }
}

/// What every failing case must show.
pub fn assert_clean_failure(
    case: &str,
    run: &Run,
    sandbox: &Sandbox,
    before: &BTreeMap<PathBuf, String>,
    expect: &[&str],
) {
    let context = format!(
        "case `{case}`:\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.code, Some(2), "exit code; {context}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    let errors = lines.iter().filter(|l| l.starts_with("pgrepl:")).count();
    let hints = lines.iter().filter(|l| l.starts_with("hint:")).count();
    assert_eq!(errors, 1, "one `pgrepl:` line; {context}");
    assert!(hints <= 1, "at most one hint; {context}");
    // Anything else would be a log line: the error must be said once.
    for line in &lines {
        assert!(
            line.starts_with("pgrepl:")
                || line.starts_with("hint:")
                || line.starts_with(' ')
                || line.is_empty(),
            "unexpected stderr line `{line}`; {context}"
        );
    }
    let error_line = lines.iter().find(|l| l.starts_with("pgrepl:")).unwrap();
    for needle in expect {
        assert!(
            error_line.contains(needle),
            "error should mention `{needle}`; {context}"
        );
    }
    assert!(run.stdout.is_empty(), "nothing on stdout; {context}");
    let after = snapshot(sandbox.root());
    assert_eq!(
        &after, before,
        "the sandbox changed (target or staging left behind, or a write outside it); {context}"
    );
}

/// Runs `pgrepl basebackup -X none` against `script`, checks the promise and returns the run.
pub fn hostile_case(case: &str, script: Script, expect: &[&str]) -> Run {
    hostile_case_with(case, script, &[], expect)
}

pub fn hostile_case_with(
    case: &str,
    script: Script,
    envs: &[(&str, &str)],
    expect: &[&str],
) -> Run {
    let server = FakeServer::start(script);
    let sandbox = Sandbox::new();
    let before = snapshot(sandbox.root());
    let conninfo = server.conninfo();
    let target = sandbox.target();
    let args = [
        "basebackup",
        "-d",
        &conninfo,
        "-D",
        target.to_str().unwrap(),
        "-X",
        "none",
    ];
    let run = run_pgrepl(&args, envs, Duration::from_secs(60));
    assert_clean_failure(case, &run, &sandbox, &before, expect);
    eprintln!(
        "fake_server: {case}: exit {:?} in {:?}, peak RSS {} MiB: {}",
        run.code,
        run.elapsed,
        run.max_rss_kib / 1024,
        run.stderr.lines().next().unwrap_or("")
    );
    run
}
