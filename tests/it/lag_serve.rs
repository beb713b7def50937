//! `pgrepl lag --serve` on a real primary with two standbys: `/metrics` checked by the real
//! `promtool` and following a paused replay, the page rendered by real headless chromium, no
//! password in any response, and scrapes that do not wait for a node that hangs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::harness::{self, PgInstall, PgServer, ServerOptions};
use crate::support::standbys::{silent_node, Cluster};
use crate::support::{capability, eventually, pgrepl};

/// The tool's path, or a visible skip naming the package to install (a failure where
/// PGREPL_REQUIRE names the tool, as CI does).
fn require_tool(name: &str) -> Option<PathBuf> {
    let package = if name == "promtool" {
        "prometheus"
    } else {
        name
    };
    capability::tool("lag_serve", name, &format!("apt-get install {package}"))
}

/// A running `pgrepl lag --serve`, interrupted (SIGINT) and awaited on drop.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(nodes: &[String], extra: &[&str]) -> Served {
        let mut child = pgrepl()
            .arg("lag")
            .args(nodes)
            // With a space, as people type it (`--serve=ADDR` works too).
            .arg("--serve")
            .arg(format!("127.0.0.1:{}", harness::pick_port()))
            .args(extra)
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run pgrepl");
        let mut first = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in `{first}`"))
            .to_owned();
        Served { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Status and body of `GET path`.
    fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
        (status.expect("a status code"), body.to_owned())
    }

    /// `/metrics` once the first round has finished.
    fn metrics(&self) -> String {
        eventually("a round", Duration::from_secs(30)).until(|| {
            let (status, body) = self.get("/metrics");
            if status == 200 {
                Ok(body)
            } else {
                Err(body)
            }
        })
    }

    /// Scrapes until `check` returns a value.
    fn metrics_until<T>(&self, what: &str, check: impl Fn(&str) -> Option<T>) -> T {
        eventually(what, Duration::from_secs(30))
            .every(Duration::from_millis(200))
            .until(|| {
                let text = self.metrics();
                check(&text).ok_or_else(|| format!("last scrape:\n{text}"))
            })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: signals our own child, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        if !std::thread::panicking() {
            assert!(status.success(), "pgrepl lag --serve ended with {status}");
        }
    }
}

/// The value of the sample whose name and labels start `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// standby_b's replay lag in bytes.
fn replay_lag_bytes(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.starts_with("pgrepl_standby_lag_bytes{standby=\"standby_b\"")
                && l.contains("stage=\"replay\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn write_burst(cluster: &Cluster, rows: u32) {
    cluster.primary.psql(&format!(
        "create table if not exists burst(g int, pad text); \
         insert into burst select g, repeat('x', 200) from generate_series(1, {rows}) g"
    ));
}

fn assert_no_secret(served: &Served) {
    for path in ["/", "/app.js", "/metrics", "/status.json", "/history.json"] {
        let (_, body) = served.get(path);
        assert!(
            !body.contains(harness::SUPERUSER_PASSWORD) && !body.contains("password"),
            "{path} shows a password:\n{body}"
        );
    }
}

#[test]
fn metrics_pass_promtool_and_follow_a_paused_replay() {
    let promtool = require_tool("promtool");
    let cluster = Cluster::start();
    let served = Served::start(&cluster.nodes(), &["--interval", "500ms"]);
    let primary = format!("127.0.0.1:{}", cluster.primary.port);
    let text = served.metrics_until("three nodes up", |t| {
        let up = t
            .lines()
            .filter(|l| l.starts_with("pgrepl_node_up{") && l.ends_with(" 1"))
            .count();
        (up == 3).then(|| t.to_owned())
    });
    assert_eq!(
        sample(
            &text,
            &format!("pgrepl_node_role{{node=\"{primary}\",role=\"primary\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE pgrepl_rounds_failed_total counter"),
        "{text}"
    );
    if let Some(promtool) = promtool {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics:\n{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_no_secret(&served);

    // Paused replay: the gauge grows between two scrapes, and falls back to 0 on resume.
    cluster.b.psql("select pg_wal_replay_pause()");
    write_burst(&cluster, 20_000);
    let first = served.metrics_until("replay lag on standby_b", |t| {
        replay_lag_bytes(t).filter(|&v| v > 0.0)
    });
    write_burst(&cluster, 20_000);
    let second = served.metrics_until("more replay lag on standby_b", |t| {
        replay_lag_bytes(t).filter(|&v| v > first)
    });
    assert!(second > first);
    assert!(
        sample(
            &served.metrics(),
            "pgrepl_standby_replay_paused{standby=\"standby_b\""
        ) == Some(1.0)
    );
    cluster.b.psql("select pg_wal_replay_resume()");
    served.metrics_until("standby_b to catch up", |t| {
        replay_lag_bytes(t).filter(|&v| v == 0.0)
    });
}

/// Runs headless chromium on `url`: the DOM after the page's scripts ran, and with `screenshot`,
/// a PNG of it.
fn chromium(browser: &PathBuf, url: &str, screenshot: Option<&PathBuf>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.arg("120").arg(browser).args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1000",
        "--virtual-time-budget=4000",
    ]);
    match screenshot {
        Some(png) => cmd.arg(format!("--screenshot={}", png.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the page's replay-bytes cell for `standby`.
fn figure(dom: &str, standby: &str) -> String {
    let row = dom
        .split(&format!("data-standby=\"{standby}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no row for {standby}:\n{dom}"));
    let cell = row.split("data-figure=\"replay-bytes\">").nth(1).unwrap();
    cell.split('<').next().unwrap().to_owned()
}

#[test]
fn the_page_shows_roles_lag_and_a_stopped_standby_in_chromium() {
    let Some(browser) = require_tool("chromium") else {
        return;
    };
    let mut cluster = Cluster::start();
    let interval = Duration::from_millis(500);
    let served = Served::start(&cluster.nodes(), &["--interval", "500ms"]);
    served.metrics();
    let name = |s: &PgServer| format!("127.0.0.1:{}", s.port);
    let dom = chromium(&browser, &served.url("/"), None);
    for (server, role) in [
        (&cluster.primary, "primary"),
        (&cluster.a, "async"),
        (&cluster.b, "async"),
    ] {
        let card = format!("data-node=\"{}\" data-role=\"{role}\"", name(server));
        assert!(dom.contains(&card), "no `{card}` in:\n{dom}");
    }
    let before = figure(&dom, "standby_b");

    cluster.b.psql("select pg_wal_replay_pause()");
    write_burst(&cluster, 20_000);
    std::thread::sleep(3 * interval);
    let dom = chromium(&browser, &served.url("/"), None);
    let after = figure(&dom, "standby_b");
    assert_ne!(before, after, "the replay lag figure did not change");
    assert!(after.ends_with("MiB") || after.ends_with("KiB"), "{after}");

    cluster.b.stop();
    std::thread::sleep(2 * interval);
    let dom = chromium(&browser, &served.url("/"), None);
    let card = format!(
        "data-node=\"{}\" data-role=\"unreachable\"",
        name(&cluster.b)
    );
    assert!(dom.contains(&card), "no `{card}` in:\n{dom}");

    let artifacts = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| harness::repo_root().join("target"), PathBuf::from)
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = artifacts.join("lag-page.png");
    chromium(&browser, &served.url("/"), Some(&png));
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        png.display()
    );
    eprintln!("screenshot: {}", png.display());
}

/// A node that accepts TCP and never answers holds up rounds by the timeout, never a scrape.
#[test]
fn a_hanging_node_does_not_delay_scrapes() {
    let server = PgServer::start(&PgInstall::default_install(), ServerOptions::default());
    let (silent_port, held) = silent_node();
    let nodes = [
        server.superuser_conninfo(),
        format!("host=127.0.0.1 port={silent_port} user=postgres sslmode=disable"),
    ];
    let served = Served::start(&nodes, &["--interval", "500ms", "--timeout", "2s"]);
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let started = Instant::now();
        let (status, _) = served.get("/metrics");
        latencies.push(started.elapsed());
        assert!(status == 200 || status == 503, "{status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    latencies.sort();
    let worst = latencies[latencies.len() - 1];
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "scrape latency with one node hung (2 s timeout): median {median:?}, worst {worst:?} over {} scrapes",
        latencies.len()
    );
    assert!(worst < Duration::from_millis(500), "worst scrape {worst:?}");
    let text = served.metrics();
    assert_eq!(
        sample(
            &text,
            &format!("pgrepl_node_up{{node=\"127.0.0.1:{silent_port}\"}}")
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "pgrepl_rounds_total").unwrap() >= 2.0,
        "{text}"
    );
    assert!(!held.lock().unwrap().is_empty());
}
