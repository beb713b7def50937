//! The collector: one round every interval, each published whole for the HTTP handlers, which
//! only read what the last round left. A scrape therefore never waits on a server, however
//! slow a node is; a slow node delays the next round instead, by at most the timeout.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::metrics::{self, Totals};
use super::ServeOptions;
use crate::lag::{self, Node, Report};

/// How far back the page's charts reach.
pub(super) const HISTORY: Duration = Duration::from_secs(10 * 60);

/// A round, rendered once for every reader.
pub(super) struct Published {
    pub metrics: String,
    pub status: String,
}

/// One standby's replay lag after a round, for the page's charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Point {
    pub standby: String,
    pub bytes: Option<u64>,
    pub ms: Option<f64>,
}

/// Every standby's replay lag at the end of one round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    pub lag: Vec<Point>,
}

/// What the collector writes and the handlers read. The lock is held only to swap or copy, never
/// across a wait.
#[derive(Default)]
pub(super) struct Shared {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    latest: Option<Arc<Published>>,
    history: VecDeque<Sample>,
    totals: Totals,
}

impl Shared {
    /// The last round, or `None` before the first one has finished.
    pub(super) fn latest(&self) -> Option<Arc<Published>> {
        self.lock().latest.clone()
    }

    /// The samples after `since` (milliseconds since the epoch), oldest first.
    pub(super) fn history_since(&self, since: u64) -> Vec<Sample> {
        let inner = self.lock();
        let newer = inner.history.partition_point(|s| s.t <= since);
        inner.history.range(newer..).cloned().collect()
    }

    /// Publishes a finished round and forgets samples older than [`HISTORY`].
    pub(super) fn record(&self, report: &Report, finished: SystemTime) {
        let t = finished
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let sample = Sample {
            t,
            lag: report
                .standbys
                .iter()
                .map(|s| Point {
                    standby: s.label().to_owned(),
                    bytes: s.replay_lag_bytes,
                    ms: s.replay_lag_ms,
                })
                .collect(),
        };
        let mut inner = self.lock();
        let totals = Totals {
            rounds: inner.totals.rounds + 1,
            failed_rounds: inner.totals.failed_rounds + u64::from(!report.problems.is_empty()),
            last_round_unix: t as f64 / 1000.0,
        };
        // Serializing a report of plain fields cannot fail; an empty object would only mean a
        // bug here, not a reason to stop serving.
        let status = serde_json::to_string_pretty(report).unwrap_or_else(|_| "{}".into());
        inner.latest = Some(Arc::new(Published {
            metrics: metrics::render(report, Some(&totals)),
            status,
        }));
        inner.totals = totals;
        let cutoff = t.saturating_sub(HISTORY.as_millis() as u64);
        while inner.history.front().is_some_and(|s| s.t < cutoff) {
            inner.history.pop_front();
        }
        inner.history.push_back(sample);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if it did, the data is still whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs rounds until `cancel`: the first at once, then one every interval. A round that takes
/// longer than the interval (a node hanging up to the timeout) pushes the next one back.
pub(super) async fn run(
    nodes: Vec<Node>,
    options: ServeOptions,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(options.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let report = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            report = lag::gather(&nodes, &options.gather) => report,
        };
        shared.record(&report, SystemTime::now());
    }
}
