//! A writer that records every commit the cluster acknowledged, and the checks on that record:
//! nothing acknowledged lost, one node taking writes at a time.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::eventually;
use crate::support::ha::{HaCluster, HaNodes};
use crate::support::sql_tls::Tls;

/// The ids in `ha_writes`, comma-separated.
pub(crate) const WRITTEN_IDS: &str = "SELECT string_agg(id::text, ',') FROM ha_writes";

/// Every acknowledged id is among those `ids` returns ([`WRITTEN_IDS`] on the node that should
/// hold them; a standby gets a few seconds to replay them).
pub(crate) fn assert_nothing_lost(
    acks: &[Ack],
    ids: impl Fn() -> String,
    logs: impl Fn() -> String,
) {
    eventually("every acknowledged commit", Duration::from_secs(5))
        .every(Duration::from_millis(200))
        .showing(logs)
        .until(|| {
            let ids = ids();
            let present: std::collections::HashSet<i64> =
                ids.split(',').filter_map(|t| t.parse().ok()).collect();
            let lost: Vec<i64> = acks
                .iter()
                .map(|a| a.id)
                .filter(|id| !present.contains(id))
                .collect();
            match lost.len() {
                0 => Ok(()),
                n => Err(format!(
                    "{n} of {} acknowledged commits lost: {lost:?}",
                    acks.len()
                )),
            }
        });
    eprintln!("{} acknowledged commits, 0 lost", acks.len());
}

/// One commit the server acknowledged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    pub(crate) id: i64,
    pub(crate) node: usize,
    /// When the transaction was sent (a commit in flight at a fault may be acknowledged after
    /// it).
    pub(crate) sent: Instant,
    pub(crate) at: Instant,
    /// Which of the writer's sessions (counted from 1) it came through.
    pub(crate) session: u32,
}

/// An acknowledgement slower than this counts as none: the client looks for the primary again
/// (a stranded old primary never answers).
pub(crate) const COMMIT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a writer's clients share: the acknowledgements, the id and session counters, the stop
/// flag.
#[derive(Clone, Default)]
pub(crate) struct AckLog {
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    ids: Arc<AtomicI64>,
    sessions: Arc<AtomicU32>,
}

impl AckLog {
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// An id no other transaction of this writer gets.
    pub(crate) fn next_id(&self) -> i64 {
        self.ids.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records an acknowledged commit. `at` is read under the lock, so the log is in `at` order
    /// however many clients record into it.
    pub(crate) fn record(&self, id: i64, session: &Session, sent: Instant) {
        let mut acks = self.acks.lock().unwrap();
        acks.push(Ack {
            id,
            node: session.node,
            sent,
            at: Instant::now(),
            session: session.number,
        });
    }
}

/// A writer's session on the node that took writes when it connected.
pub(crate) struct Session {
    pub(crate) node: usize,
    pub(crate) client: tokio_postgres::Client,
    /// Counted from 1 over all the writer's clients.
    pub(crate) number: u32,
}

/// A session on the first of `nodes` that takes writes, searching from `start` round to it
/// again; `None` when none does. A client starts after the node that last failed it, as a
/// client with several hosts does, since a stranded old primary still says it takes writes.
pub(crate) async fn open_session(targets: &Targets, start: usize, log: &AckLog) -> Option<Session> {
    let nodes = &targets.configs;
    for node in (0..nodes.len()).map(|k| (start + k) % nodes.len()) {
        let Some(client) = targets.connect(node).await else {
            continue;
        };
        let writable = client
            .query_one("SELECT NOT pg_is_in_recovery()", &[])
            .await;
        if writable.is_ok_and(|row| row.get::<_, bool>(0)) {
            let number = log.sessions.fetch_add(1, Ordering::SeqCst) + 1;
            return Some(Session {
                node,
                client,
                number,
            });
        }
    }
    None
}

/// Where the tests' writers connect: each node's settings (node `i` of an [`Ack`] is
/// `configs[i]`), and TLS when the servers offer it (over TCP; a socket has none).
#[derive(Clone)]
pub(crate) struct Targets {
    pub(crate) configs: Vec<tokio_postgres::Config>,
    pub(crate) tls: Option<Tls>,
}

impl Targets {
    /// A session on node `i` within 500 ms, driven on a task of its own.
    pub(crate) async fn connect(&self, i: usize) -> Option<tokio_postgres::Client> {
        let limit = Duration::from_millis(500);
        let config = &self.configs[i];
        match &self.tls {
            Some(tls) => {
                let connect = config.connect(tls.clone());
                let (client, connection) = tokio::time::timeout(limit, connect).await.ok()?.ok()?;
                tokio::spawn(connection);
                Some(client)
            }
            None => {
                let connect = config.connect(tokio_postgres::NoTls);
                let (client, connection) = tokio::time::timeout(limit, connect).await.ok()?.ok()?;
                tokio::spawn(connection);
                Some(client)
            }
        }
    }
}

/// Writes into whichever node takes writes and records each acknowledgement: a row every 50 ms
/// ([`Writer::start`]), or the load a caller gives ([`Writer::spawn`]).
/// No statement_timeout: a cancelled wait for the sync standby would report the commit as done.
pub(crate) struct Writer {
    log: AckLog,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Writes as the superuser to the cluster's nodes, as the test reaches them.
    pub(crate) fn start(ha: &HaCluster) -> Writer {
        Writer::over(ha.targets())
    }

    /// Writes through `targets`, e.g. over TCP.
    pub(crate) fn over(targets: Targets) -> Writer {
        Writer::spawn(move |log| write_loop(targets, log))
    }

    /// Runs the load `run` makes, on a thread of its own, until [`Writer::stop`].
    pub(crate) fn spawn<F>(run: impl FnOnce(AckLog) -> F + Send + 'static) -> Writer
    where
        F: std::future::Future<Output = ()>,
    {
        let log = AckLog::default();
        let thread = {
            let log = log.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run(log));
            })
        };
        Writer {
            log,
            thread: Some(thread),
        }
    }

    pub(crate) fn acks(&self) -> Vec<Ack> {
        self.log.acks.lock().unwrap().clone()
    }

    /// How many sessions the writer opened so far: an [`Ack`] with a higher `session` came
    /// through one opened later.
    pub(crate) fn sessions(&self) -> u32 {
        self.log.sessions.load(Ordering::SeqCst)
    }

    /// The first acknowledgement after `since` that satisfies `pred`.
    pub(crate) fn wait_ack(
        &self,
        ha: &HaCluster,
        limit: Duration,
        since: Instant,
        pred: impl Fn(&Ack) -> bool,
    ) -> Ack {
        self.wait_ack_or_show(limit, since, pred, || ha.logs())
    }

    /// [`Writer::wait_ack`], showing `logs` when none comes.
    pub(crate) fn wait_ack_or_show(
        &self,
        limit: Duration,
        since: Instant,
        pred: impl Fn(&Ack) -> bool,
        logs: impl Fn() -> String,
    ) -> Ack {
        self.first_ack(limit, since, pred)
            .unwrap_or_else(|| panic!("no acknowledged write within {limit:?}\n{}", logs()))
    }

    /// The first acknowledgement after `since` that satisfies `pred`, waiting up to `limit`;
    /// `None` when none came, for a test that reports what happened before it fails.
    pub(crate) fn first_ack(
        &self,
        limit: Duration,
        since: Instant,
        pred: impl Fn(&Ack) -> bool,
    ) -> Option<Ack> {
        eventually("an acknowledged write", limit)
            .every(Duration::from_millis(20))
            .try_until(|| {
                let acks = self.log.acks.lock().unwrap();
                // The log is in `at` order: a loaded writer's is too long to scan or copy
                // every 20 ms.
                let from = acks.partition_point(|a| a.at <= since);
                acks[from..].iter().find(|a| pred(a)).copied()
            })
    }

    pub(crate) fn stop(mut self) -> Vec<Ack> {
        self.log.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.acks()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.log.stop.store(true, Ordering::SeqCst);
    }
}

async fn write_loop(nodes: Targets, log: AckLog) {
    let mut session: Option<Session> = None;
    let mut start = 0;
    while !log.stopped() {
        if session.is_none() {
            session = open_session(&nodes, start, &log).await;
        }
        if let Some(open) = &session {
            let id = log.next_id();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let sent = Instant::now();
            let insert = open
                .client
                .execute("INSERT INTO ha_writes(id) VALUES ($1)", &params);
            match tokio::time::timeout(COMMIT_TIMEOUT, insert).await {
                Ok(Ok(_)) => log.record(id, open, sent),
                // Not acknowledged (an error, or no answer in time): look for the primary again.
                _ => {
                    start = open.node + 1;
                    session = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After the first acknowledgement on another node, `old` never acknowledged again.
pub(crate) fn assert_one_writer_at_a_time(acks: &[Ack], old: usize) {
    let Some(first_new) = acks.iter().find(|a| a.node != old) else {
        return;
    };
    let late: Vec<&Ack> = acks
        .iter()
        .filter(|a| a.node == old && a.at > first_new.at)
        .collect();
    assert!(
        late.is_empty(),
        "the old primary acknowledged after the new one took writes: {late:?}"
    );
}
