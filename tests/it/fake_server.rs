//! A scripted, hostile PostgreSQL server and what `pgrepl basebackup` makes of it.
//!
//! [`FakeServer`] listens on 127.0.0.1, answers the startup with a chosen authentication request,
//! answers IDENTIFY_SYSTEM and the two SHOWs a base backup asks, and answers BASE_BACKUP with
//! whatever bytes the test scripted, in the layout of PostgreSQL 14 (one CopyOut of raw tar per
//! tablespace, then one for the manifest) or 15+ (one CopyOut of `n`/`d`/`p`/`m` messages).
//! Every message and tar header is built here by hand, independently of `src/`, so that the
//! client is tested against the protocol as documented and not against itself.
//!
//! Each case runs the real binary and holds it to the same promise: exit code 2, one `pgrepl:`
//! line on stderr (and at most one `hint:`), the error says what went wrong, nothing is written
//! anywhere in the sandbox but the work directory, which is left empty (no partial target, no
//! staging directory), and the process's peak RSS stays small.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
        let listener = crate::harness::listener();
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgrepl"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PG") || key == "RUST_LOG" {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("PGPASSFILE", "/nonexistent");
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

/// Peak RSS no hostile case may exceed. pgrepl's own buffers (a 16 MiB frame at most, 64
/// chunks in flight, the writer queues) stay well under it.
const RSS_LIMIT_KIB: i64 = 96 * 1024;

// ---------------------------------------------------------------------------------------------
// The cases.

/// The server itself is faithful: a well-formed response in both layouts gives a complete,
/// verified target. (Without this, the failures below could be the fake server's fault.)
#[test]
fn fake_server_well_formed_backup_succeeds() {
    for style in Style::ALL {
        let files = datadir_files();
        let archive = match style {
            Style::Pg14 => datadir_tar().0,
            Style::Pg15 => datadir_tar().finish(),
        };
        let manifest = manifest(&files);
        let server = FakeServer::start(Script::new(
            style,
            backup_response(style, &archive, Some(&manifest)),
        ));
        let sandbox = Sandbox::new();
        let target = sandbox.target();
        let conninfo = server.conninfo();
        let run = run_pgrepl(
            &[
                "basebackup",
                "-d",
                &conninfo,
                "-D",
                target.to_str().unwrap(),
                "-X",
                "none",
                "--json",
            ],
            &[],
            Duration::from_secs(60),
        );
        assert_eq!(run.code, Some(0), "{style:?}: {}", run.stderr);
        assert!(
            run.stdout.contains("\"manifest_verified\": true"),
            "{}",
            run.stdout
        );
        for (name, data) in &files {
            assert_eq!(
                &fs::read(target.join(name)).unwrap(),
                data,
                "{style:?} {name}"
            );
        }
        assert_eq!(fs::read(target.join("backup_manifest")).unwrap(), manifest);
        let queries = server.queries.lock().unwrap().clone();
        assert!(
            queries.iter().any(|q| q.starts_with("BASE_BACKUP")),
            "{queries:?}"
        );
        eprintln!(
            "fake_server: {style:?} well-formed: peak RSS {} MiB",
            run.max_rss_kib / 1024
        );
        assert!(run.max_rss_kib < RSS_LIMIT_KIB);
    }
}

/// The archive for a hostile tar case: a normal start, the hostile part, the rest as usual.
fn hostile_archive(style: Style, hostile: Tar) -> Vec<u8> {
    let mut tar = Tar::default().file("PG_VERSION", b"15\n");
    tar.0.extend_from_slice(&hostile.0);
    let tar = tar.file("global/late", b"written after the hostile entry");
    match style {
        Style::Pg14 => tar.0,
        Style::Pg15 => tar.finish(),
    }
}

fn tar_case(case: &str, hostile: Tar, expect: &[&str]) {
    for style in Style::ALL {
        let archive = hostile_archive(style, hostile.clone());
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&datadir_files()))),
        );
        hostile_case(&format!("{case} ({style:?})"), script, expect);
    }
}

#[test]
fn tar_entries_with_dot_dot_are_refused() {
    tar_case(
        "`../` file",
        Tar::default().file("../../victim", b"overwritten"),
        &["escapes the target"],
    );
    tar_case(
        "`..` inside",
        Tar::default()
            .dir("base")
            .file("base/../../../escape", b"x"),
        &["escapes the target"],
    );
    tar_case(
        "`..` directory",
        Tar::default().dir("../../escape_dir"),
        &["escapes the target"],
    );
}

#[test]
fn tar_entries_with_absolute_paths_are_refused() {
    let sandbox_guess = std::env::temp_dir().join("pgrepl-absolute-escape");
    let name = sandbox_guess.to_str().unwrap().to_owned();
    tar_case(
        "absolute file",
        Tar::default().file(&name, b"x"),
        &["escapes the target"],
    );
    tar_case(
        "absolute ./ file",
        Tar::default().file(&format!("./{name}"), b"x"),
        &["escapes the target"],
    );
    assert!(
        !sandbox_guess.exists(),
        "{} was written",
        sandbox_guess.display()
    );
}

#[test]
fn tar_symlinks_and_hard_links_that_escape_are_refused() {
    // A symlink to the sandbox's victim, then a write through it.
    let via_symlink = |target: &str| {
        Tar::default()
            .entry("evil", b'2', b"", 0o777, target)
            .file("evil", b"overwritten")
    };
    tar_case(
        "symlink to a file outside",
        via_symlink("../../victim"),
        &["symlink"],
    );
    tar_case(
        "symlink to an absolute dir",
        Tar::default()
            .entry("evil", b'2', b"", 0o777, "/tmp")
            .file("evil/x", b"x"),
        &["symlink"],
    );
    // Even the one kind of link a base archive may hold must not be followed or point where
    // the archive says.
    tar_case(
        "pg_tblspc link without a tablespace",
        Tar::default()
            .dir("pg_tblspc")
            .entry("pg_tblspc/16385", b'2', b"", 0o777, "/tmp")
            .file("pg_tblspc/16385/x", b"x"),
        &["16385"],
    );
    tar_case(
        "hard link to a file outside",
        Tar::default()
            .entry("hard", b'1', b"", 0o600, "../../victim")
            .file("hard", b"overwritten"),
        &["unsupported type"],
    );
    tar_case(
        "hard link inside",
        Tar::default().entry("hard", b'1', b"", 0o600, "PG_VERSION"),
        &["unsupported type"],
    );
}

#[test]
fn tar_device_and_fifo_entries_are_refused() {
    tar_case(
        "character device",
        Tar::default().entry("dev_null", b'3', b"", 0o666, ""),
        &["unsupported type"],
    );
    tar_case(
        "block device",
        Tar::default().entry("sda", b'4', b"", 0o660, ""),
        &["unsupported type"],
    );
    tar_case(
        "fifo",
        Tar::default().entry("pipe", b'6', b"", 0o600, ""),
        &["unsupported type"],
    );
    tar_case(
        "contiguous file",
        Tar::default().entry("cont", b'7', b"x", 0o600, ""),
        &["unsupported type"],
    );
    tar_case(
        "pax header",
        Tar::default().entry(
            "PaxHeaders.0/victim",
            b'x',
            b"20 path=../victim\n",
            0o600,
            "",
        ),
        &["unsupported type"],
    );
    tar_case(
        "GNU long name",
        Tar::default().entry("@LongLink", b'L', b"../../victim\0", 0o600, ""),
        &["unsupported type"],
    );
}

#[test]
fn tar_size_larger_than_the_stream_is_refused() {
    for style in Style::ALL {
        // The header promises 1 MiB; the archive ends after 1000 bytes.
        let tar = Tar::default().file("PG_VERSION", b"15\n").lying_file(
            "base_big",
            1 << 20,
            &[1u8; 1000],
        );
        let mut archive = tar.0;
        archive.resize(archive.len().div_ceil(BLOCK) * BLOCK, 0);
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&datadir_files()))),
        );
        hostile_case(
            &format!("size beyond the stream ({style:?})"),
            script,
            &["base_big"],
        );
        // A size beyond any real file (above the 1 TiB cap), in base-256.
        let tar = Tar::default().lying_file("huge", 1 << 50, b"");
        let script = Script::new(style, backup_response(style, &tar.0, None));
        hostile_case(&format!("impossible size ({style:?})"), script, &["huge"]);
    }
}

#[test]
fn truncated_streams_are_refused() {
    let archive = datadir_tar().finish();
    for style in Style::ALL {
        let full = backup_response(style, &archive, Some(&manifest(&datadir_files())));
        let copy_start = backup_header().len();
        // Cut inside the archive data, inside a frame header, and just before the trailer.
        for (what, at) in [
            ("inside the archive", copy_start + archive.len() / 2),
            ("inside a frame header", copy_start + 2),
            (
                "before the end position",
                full.len() - backup_trailer().len(),
            ),
        ] {
            let mut script = Script::new(style, full[..at].to_vec());
            script.then = Then::Close;
            hostile_case(
                &format!("connection closed {what} ({style:?})"),
                script,
                &["closed the connection"],
            );
        }
        // The archive itself ends inside a header (and the server ends the copy normally).
        let cut = &archive[..BLOCK * 3 + 100];
        let script = Script::new(style, backup_response(style, cut, None));
        hostile_case(
            &format!("archive cut inside a header ({style:?})"),
            script,
            &["archive ends"],
        );
    }
}

#[test]
fn lying_message_lengths_are_refused() {
    for style in Style::ALL {
        // A frame length below the 4 bytes of the length itself.
        let mut response = backup_header();
        response.extend(copy_out_response());
        response.extend([b'd', 0, 0, 0, 2, 0xff, 0xff]);
        hostile_case(
            &format!("CopyData length 2 ({style:?})"),
            Script::new(style, response),
            &["length"],
        );

        // A DataRow whose column claims more bytes than the message holds.
        let mut response = result_set(
            &["recptr", "tli"],
            &[&[Some("0/2000028"), Some("1")]],
            "SELECT",
        );
        let mut row = vec![0, 2];
        row.extend_from_slice(&100u32.to_be_bytes());
        row.extend_from_slice(b"0/2000028");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        response.extend(row_description(&["spcoid", "spclocation", "size"]));
        response.extend(msg(b'D', &row));
        hostile_case(
            &format!("DataRow column length lies ({style:?})"),
            Script::new(style, response),
            &["DataRow"],
        );
    }
    // A 'n' message whose strings run past the payload.
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"nbase.tar"));
    hostile_case(
        "new-archive message without its NULs",
        Script::new(Style::Pg15, response),
        &["NUL"],
    );
    // A progress message shorter than its Int64.
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"nbase.tar\0\0"));
    response.extend(copy_data(b"p\0\0\0"));
    hostile_case(
        "short progress message",
        Script::new(Style::Pg15, response),
        &["progress"],
    );
}

#[test]
fn gigantic_lengths_do_not_exhaust_memory() {
    for style in Style::ALL {
        // A CopyData that claims 2 GiB, followed by 64 MiB of data the client must not buffer.
        let mut response = backup_header();
        response.extend(copy_out_response());
        response.extend([b'd', 0x7f, 0xff, 0xff, 0xf0]);
        let mut script = Script::new(style, response);
        script.then_repeat = Some((vec![0x55; 1 << 20], 64));
        let run = hostile_case(&format!("2 GiB CopyData ({style:?})"), script, &["exceeds"]);
        assert!(
            run.max_rss_kib < RSS_LIMIT_KIB,
            "peak RSS {} KiB",
            run.max_rss_kib
        );

        // The same with a length that does fit the cap, and the stream ending before it.
        let mut response = backup_header();
        response.extend(copy_out_response());
        response.extend([b'd', 0x00, 0xff, 0xff, 0xf0]);
        response.extend(vec![0u8; 1 << 20]);
        let mut script = Script::new(style, response);
        script.then = Then::Close;
        let run = hostile_case(
            &format!("16 MiB CopyData cut short ({style:?})"),
            script,
            &["closed"],
        );
        assert!(
            run.max_rss_kib < RSS_LIMIT_KIB,
            "peak RSS {} KiB",
            run.max_rss_kib
        );

        // A tar header for a 2^39-byte file, then 256 MiB of its data: streamed to disk in
        // bounded pieces, then refused as truncated.
        let archive = Tar::default().lying_file("base_gigantic", 1 << 39, &[]).0;
        let mut response = backup_header();
        response.extend(copy_out_response());
        if style == Style::Pg15 {
            response.extend(copy_data(b"nbase.tar\0\0"));
            let mut payload = vec![b'd'];
            payload.extend_from_slice(&archive);
            response.extend(copy_data(&payload));
        } else {
            response.extend(copy_data(&archive));
        }
        let mut payload = if style == Style::Pg15 {
            vec![b'd']
        } else {
            Vec::new()
        };
        payload.extend(vec![0x42u8; 1 << 20]);
        let mut script = Script::new(style, response);
        script.then_repeat = Some((copy_data(&payload), 128));
        script.then = Then::Close;
        let run = hostile_case(
            &format!("2^39-byte tar entry ({style:?})"),
            script,
            &["closed"],
        );
        assert!(
            run.max_rss_kib < RSS_LIMIT_KIB,
            "peak RSS {} KiB",
            run.max_rss_kib
        );
    }
}

#[test]
fn manifest_checksum_mismatches_are_refused() {
    let files = datadir_files();
    for style in Style::ALL {
        let archive = match style {
            Style::Pg14 => datadir_tar().0,
            Style::Pg15 => datadir_tar().finish(),
        };
        // A file's CRC differs (the manifest's own checksum is right).
        let mut lying = files.clone();
        lying[3].1[100] ^= 1;
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&lying))),
        );
        hostile_case(
            &format!("file checksum mismatch ({style:?})"),
            script,
            &["base/1/1259", "checksum"],
        );
        // A size differs.
        let mut lying = files.clone();
        lying[1].1.push(b'\n');
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&lying))),
        );
        hostile_case(
            &format!("file size mismatch ({style:?})"),
            script,
            &["PG_VERSION"],
        );
        // A file the manifest lists was never sent.
        let mut lying = files.clone();
        lying.push(("base/1/2619", vec![0; 8192]));
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&lying))),
        );
        hostile_case(
            &format!("file missing from the archive ({style:?})"),
            script,
            &["base/1/2619"],
        );
        // The manifest's own checksum does not match its bytes.
        let mut corrupt = manifest(&files);
        let at = corrupt.windows(4).position(|w| w == b"1259").unwrap();
        corrupt[at] = b'9';
        let script = Script::new(style, backup_response(style, &archive, Some(&corrupt)));
        hostile_case(
            &format!("manifest checksum mismatch ({style:?})"),
            script,
            &["manifest checksum mismatch"],
        );
        // No manifest at all although one was asked for. (PG 14 style: the end position
        // arrives where the manifest's CopyOutResponse should.)
        let script = Script::new(style, backup_response(style, &archive, None));
        let expect = match style {
            Style::Pg14 => "expected CopyOutResponse",
            Style::Pg15 => "manifest",
        };
        hostile_case(&format!("manifest missing ({style:?})"), script, &[expect]);
    }
}

#[test]
fn base_backup_results_of_the_wrong_shape_are_refused() {
    let tail = |style: Style| {
        backup_copy(
            style,
            &datadir_tar().finish(),
            Some(&manifest(&datadir_files())),
            8192,
        )
    };
    for style in Style::ALL {
        let start = result_set(
            &["recptr", "tli"],
            &[&[Some("0/2000028"), Some("1")]],
            "SELECT",
        );
        let base_row: &[Option<&str>] = &[None, None, None];
        let spaces = |rows: &[&[Option<&str>]]| {
            result_set(&["spcoid", "spclocation", "size"], rows, "SELECT")
        };
        let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
            (
                "no tablespace rows",
                [start.clone(), spaces(&[]), tail(style)].concat(),
                &["tablespace list"],
            ),
            (
                "data directory not last",
                [
                    start.clone(),
                    spaces(&[base_row, &[Some("16385"), Some("/srv/ts"), None]]),
                    tail(style),
                ]
                .concat(),
                &["tablespace list"],
            ),
            (
                "tablespace columns missing",
                [
                    start.clone(),
                    result_set(&["spcoid"], &[&[None]], "SELECT"),
                    tail(style),
                ]
                .concat(),
                &["no column `size`"],
            ),
            (
                "start position without tli",
                [
                    result_set(&["recptr"], &[&[Some("0/2000028")]], "SELECT"),
                    spaces(&[base_row]),
                    tail(style),
                ]
                .concat(),
                &["tli"],
            ),
            (
                "start position with two rows",
                [
                    result_set(
                        &["recptr", "tli"],
                        &[
                            &[Some("0/2000028"), Some("1")],
                            &[Some("0/3000028"), Some("1")],
                        ],
                        "SELECT",
                    ),
                    spaces(&[base_row]),
                    tail(style),
                ]
                .concat(),
                &["2 rows"],
            ),
            (
                "start position not an LSN",
                [
                    result_set(
                        &["recptr", "tli"],
                        &[&[Some("nowhere"), Some("1")]],
                        "SELECT",
                    ),
                    spaces(&[base_row]),
                    tail(style),
                ]
                .concat(),
                &["nowhere"],
            ),
            (
                "start position NULL",
                [
                    result_set(&["recptr", "tli"], &[&[None, Some("1")]], "SELECT"),
                    spaces(&[base_row]),
                    tail(style),
                ]
                .concat(),
                &["NULL"],
            ),
            (
                "no result sets, straight to the copy",
                tail(style),
                &["CopyOutResponse"],
            ),
            (
                "end position missing",
                [
                    backup_header(),
                    tail(style),
                    command_complete("BASE_BACKUP"),
                    ready_for_query(),
                ]
                .concat(),
                &["end position"],
            ),
            (
                "an ordinary query's rows instead of the copy",
                [
                    backup_header(),
                    result_set(&["x"], &[&[Some("1")]], "SELECT"),
                ]
                .concat(),
                &["CopyOutResponse"],
            ),
            (
                "server error during the copy",
                [
                    backup_header(),
                    copy_out_response(),
                    error_response("ERROR", "XX000", "could not read file \"base/1/1259\""),
                    ready_for_query(),
                ]
                .concat(),
                &["could not read file"],
            ),
        ];
        for (what, response, expect) in cases {
            hostile_case(
                &format!("{what} ({style:?})"),
                Script::new(style, response),
                expect,
            );
        }
    }
    // PG 15 only: an archive for a tablespace that was never listed, and an unsafe archive name.
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"n16385.tar\0/srv/ts\0"));
    hostile_case(
        "archive for an unlisted tablespace",
        Script::new(Style::Pg15, response),
        &["/srv/ts"],
    );
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"n../base.tar\0\0"));
    hostile_case(
        "archive name with a slash",
        Script::new(Style::Pg15, response),
        &["unsafe archive name"],
    );
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"nbase.zip\0\0"));
    hostile_case(
        "archive of an unknown kind",
        Script::new(Style::Pg15, response),
        &["base.zip"],
    );
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"dPG_VERSION"));
    hostile_case(
        "data before any archive",
        Script::new(Style::Pg15, response),
        &["before the first archive"],
    );
}

#[test]
fn unknown_copy_data_message_types_are_refused() {
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"nbase.tar\0\0"));
    let mut data = vec![b'd'];
    data.extend_from_slice(&Tar::default().file("PG_VERSION", b"15\n").0);
    response.extend(copy_data(&data));
    response.extend(copy_data(b"zzzz"));
    hostile_case(
        "unknown sub-message `z`",
        Script::new(Style::Pg15, response),
        &["unknown message type `z`"],
    );
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b""));
    hostile_case(
        "empty CopyData payload",
        Script::new(Style::Pg15, response),
        &["empty"],
    );
    // An unknown backend message in the middle of the copy, in both layouts.
    for style in Style::ALL {
        let mut response = backup_header();
        response.extend(copy_out_response());
        response.extend(msg(b'y', b"what"));
        hostile_case(
            &format!("unknown message tag ({style:?})"),
            Script::new(style, response),
            &["unknown message tag `y`"],
        );
    }
}

#[test]
fn unsupported_authentication_methods_are_refused() {
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("GSSAPI", auth(7, b""), &["GSSAPI"]),
        ("SSPI", auth(9, b""), &["SSPI"]),
        ("Kerberos V5", auth(2, b""), &["Kerberos"]),
        (
            "SASL without SCRAM",
            auth(10, b"SCRAM-SHA-512\0\0"),
            &["SCRAM-SHA-512"],
        ),
        ("unknown request", auth(99, b""), &[]),
        (
            "SASLContinue before SASL",
            auth(11, b"r=abc,s=c2FsdA==,i=4096"),
            &["SCRAM"],
        ),
    ];
    for (what, request, expect) in cases {
        let mut script = Script::new(Style::Pg15, Vec::new());
        script.auth = Auth::Request(request);
        let run = hostile_case_with(what, script, &[("PGPASSWORD", "hunter2-secret")], expect);
        assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    }
}

/// A server may send CopyData frames as large as the 16 MiB frame cap. What is in flight is
/// bounded in frames (the socket buffer, the extractor channel, the writer queues' slices each
/// pin a frame), so memory scales with the frame size: about 17 frames, ~272 MiB at 16 MiB, far
/// above the few MiB a real server's 32 KiB chunks cost. Bounded, but counting bytes instead
/// would keep it flat.
#[test]
fn big_copy_data_frames_keep_memory_bounded() {
    for style in Style::ALL {
        let archive = Tar::default().lying_file("base_gigantic", 1 << 39, &[]).0;
        let mut response = backup_header();
        response.extend(copy_out_response());
        let prefix: &[u8] = if style == Style::Pg15 { b"d" } else { b"" };
        if style == Style::Pg15 {
            response.extend(copy_data(b"nbase.tar\0\0"));
        }
        response.extend(copy_data(&[prefix, &archive[..]].concat()));
        let frame = copy_data(&[prefix, &vec![0x42u8; (16 << 20) - 64][..]].concat());
        let mut script = Script::new(style, response);
        script.then_repeat = Some((frame, 64));
        script.then = Then::Close;
        let run = hostile_case(
            &format!("1 GiB in 16 MiB frames ({style:?})"),
            script,
            &["closed"],
        );
        assert!(
            run.max_rss_kib < 320 * 1024,
            "peak RSS {} MiB",
            run.max_rss_kib / 1024
        );
    }
}

/// The manifest is collected in memory, up to a cap; a server that never ends it is refused.
#[test]
fn an_endless_manifest_does_not_exhaust_memory() {
    for style in Style::ALL {
        let archive = match style {
            Style::Pg14 => datadir_tar().0,
            Style::Pg15 => datadir_tar().finish(),
        };
        let mut response = backup_header();
        let copy = backup_copy(
            style,
            &archive,
            Some(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n"),
            8192,
        );
        // Everything but the final CopyDone: the manifest stays open.
        response.extend_from_slice(&copy[..copy.len() - copy_done().len()]);
        let prefix: &[u8] = if style == Style::Pg15 { b"d" } else { b"" };
        let frame = copy_data(&[prefix, &vec![b' '; 1 << 20][..]].concat());
        let mut script = Script::new(style, response);
        script.then_repeat = Some((frame, 512));
        script.then = Then::Close;
        let run = hostile_case(
            &format!("512 MiB manifest ({style:?})"),
            script,
            // No cap any more: the manifest goes to disk as it arrives, memory stays flat, and
            // the stream's end is the error.
            &["server closed the connection"],
        );
        assert!(
            run.max_rss_kib < 2 * RSS_LIMIT_KIB,
            "peak RSS {} MiB",
            run.max_rss_kib / 1024
        );
    }
}

/// Answers to replication commands are capped: endless rows where IDENTIFY_SYSTEM's one row
/// should be.
#[test]
fn endless_identify_system_rows_are_refused() {
    let mut script = Script::new(Style::Pg15, Vec::new());
    let row = data_row(&[
        Some("7362182938384710211"),
        Some("1"),
        Some(&"0".repeat(1 << 20)),
        None,
    ]);
    script.identify_system = Some((
        row_description(&["systemid", "timeline", "xlogpos", "dbname"]),
        row,
        512,
    ));
    let run = hostile_case(
        "512 MiB of IDENTIFY_SYSTEM rows",
        script,
        &["at most 32 MiB", "IDENTIFY_SYSTEM"],
    );
    assert!(
        run.max_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} MiB",
        run.max_rss_kib / 1024
    );
}

/// A segment size PostgreSQL cannot have would break the WAL arithmetic (0 divides by zero).
#[test]
fn impossible_wal_segment_sizes_are_refused() {
    for size in [
        "0",
        "3MB",
        "2GB",
        "512kB",
        "99999999999999999999GB",
        "sixteen",
    ] {
        for method in ["none", "stream"] {
            let mut script = Script::new(Style::Pg15, Vec::new());
            script.wal_segment_size = size.into();
            let server = FakeServer::start(script);
            let sandbox = Sandbox::new();
            let before = snapshot(sandbox.root());
            let (conninfo, target) = (server.conninfo(), sandbox.target());
            let args = [
                "basebackup",
                "-d",
                &conninfo,
                "-D",
                target.to_str().unwrap(),
                "-X",
                method,
            ];
            let run = run_pgrepl(&args, &[], Duration::from_secs(60));
            let case = format!("wal_segment_size `{size}` with -X {method}");
            assert_clean_failure(&case, &run, &sandbox, &before, &["wal_segment_size", size]);
        }
    }
}

/// Result sets are collected in memory too: endless rows where the tablespace list should be.
#[test]
fn endless_result_rows_do_not_exhaust_memory() {
    let row = data_row(&[None, None, Some(&"x".repeat(1 << 20))]);
    for style in Style::ALL {
        let mut response = result_set(
            &["recptr", "tli"],
            &[&[Some("0/2000028"), Some("1")]],
            "SELECT",
        );
        response.extend(row_description(&["spcoid", "spclocation", "size"]));
        let mut script = Script::new(style, response);
        script.then_repeat = Some((row.clone(), 512));
        script.then = Then::Close;
        let run = hostile_case(
            &format!("512 MiB of tablespace rows ({style:?})"),
            script,
            &["result set exceeds"],
        );
        assert!(
            run.max_rss_kib < 2 * RSS_LIMIT_KIB,
            "peak RSS {} MiB",
            run.max_rss_kib / 1024
        );
    }
}
