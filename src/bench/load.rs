//! The write load: N client sessions on the primary, each running its shape's transaction back
//! to back for a fixed time, each timing every commit into its own histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::try_join_all;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::shape::{Prepared, Random, Shape};
use super::BenchError;
use crate::conn::{sql, ConnectOptions, ConnectionError};

/// `application_name` of the load sessions.
pub const LOAD_APPLICATION_NAME: &str = "pgrepl bench";

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, to 3 significant digits.
const HISTOGRAM_MAX_US: u64 = 600_000_000;

/// N connected clients with their statements prepared, ready to start at once.
pub struct Clients {
    clients: Vec<(tokio_postgres::Client, Prepared)>,
}

/// What the clients did.
pub struct LoadResult {
    pub transactions: u64,
    pub elapsed: Duration,
    /// Commit latency in microseconds.
    pub latency_us: Histogram<u64>,
}

impl Clients {
    /// Opens `count` sessions to `primary`; new sessions see the server's current settings.
    pub async fn connect(
        primary: &ConnectOptions,
        count: usize,
        shape: Shape,
        scale: u32,
    ) -> Result<Clients, BenchError> {
        let clients = try_join_all((0..count).map(|_| async move {
            let client = sql::connect(primary, LOAD_APPLICATION_NAME)
                .await
                .map_err(|e| BenchError::Sql {
                    context: "connect a load client".into(),
                    source: e,
                })?;
            let prepared = Prepared::new(&client, shape, scale).await?;
            Ok::<_, BenchError>((client, prepared))
        }))
        .await?;
        Ok(Clients { clients })
    }

    /// Runs every client for `duration`, each on its own task; `done` counts finished
    /// transactions as they happen, for the progress line. The first failing client ends the
    /// run with its error, as a client abort ends a pgbench run; dropping the run (or
    /// `cancel`) stops every client.
    pub async fn run(
        self,
        duration: Duration,
        done: Arc<AtomicU64>,
        cancel: CancellationToken,
    ) -> Result<LoadResult, BenchError> {
        let started = Instant::now();
        let deadline = started + duration;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut tasks = JoinSet::new();
        for (i, (client, prepared)) in self.clients.into_iter().enumerate() {
            let done = Arc::clone(&done);
            let mut random = Random::new(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            tasks.spawn(async move {
                let mut latency = new_histogram();
                let mut transactions = 0u64;
                while Instant::now() < deadline {
                    let started = prepared.run_one(&client, &mut random).await.map_err(|e| {
                        BenchError::Sql {
                            context: format!("run a `{}` transaction", prepared.shape().name()),
                            source: ConnectionError::Sql(e),
                        }
                    })?;
                    latency.saturating_record(started.elapsed().as_micros() as u64);
                    transactions += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, BenchError>((transactions, latency))
            });
        }
        let mut latency_us = new_histogram();
        let mut transactions = 0;
        loop {
            let joined = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(BenchError::Cancelled),
                joined = tasks.join_next() => joined,
            };
            let Some(joined) = joined else { break };
            let (count, histogram) =
                joined.map_err(|e| BenchError::Invalid(format!("a load client failed: {e}")))??;
            transactions += count;
            // Same bounds on both sides: adding cannot fail.
            latency_us
                .add(&histogram)
                .expect("histograms share their bounds");
        }
        Ok(LoadResult {
            transactions,
            elapsed: started.elapsed(),
            latency_us,
        })
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("constant bounds are valid")
}
