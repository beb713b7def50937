//! Waiting for what a test expects to happen, with a deadline, and saying what never came.
//!
//! ```ignore
//! eventually("the standby to stream", Duration::from_secs(30)).until(|| streams(&standby));
//! let leader = eventually("a new leader", Duration::from_secs(10))
//!     .since(killed)
//!     .every(Duration::from_millis(200))
//!     .showing(|| ha.logs())
//!     .until(|| ha.leader().filter(|l| l != "pg_master"));
//! ```

use std::fmt::Display;
use std::time::{Duration, Instant};

/// A wait for `what` of at most `limit`, checking every 100 ms.
pub fn eventually(what: &str, limit: Duration) -> Wait<'_> {
    Wait {
        what,
        limit,
        every: Duration::from_millis(100),
        since: None,
        show: None,
    }
}

/// A wait [`eventually`] starts; [`Wait::until`] runs it.
#[must_use = "a wait does nothing until `until` or `try_until` runs it"]
pub struct Wait<'a> {
    what: &'a str,
    limit: Duration,
    every: Duration,
    /// Where `limit` counts from; `None`: from when the wait starts.
    since: Option<Instant>,
    /// What a timeout's message shows besides (logs), made only then.
    show: Option<Box<dyn FnOnce() -> String + 'a>>,
}

impl<'a> Wait<'a> {
    /// Checks every `interval` instead of every 100 ms.
    pub fn every(mut self, interval: Duration) -> Wait<'a> {
        self.every = interval;
        self
    }

    /// Counts the limit from `start` (the fault, say), not from now.
    pub fn since(mut self, start: Instant) -> Wait<'a> {
        self.since = Some(start);
        self
    }

    /// Adds what `show` returns to the message of a timeout.
    pub fn showing(mut self, show: impl FnOnce() -> String + 'a) -> Wait<'a> {
        self.show = Some(Box::new(show));
        self
    }

    /// Runs `check` until it is done (`true`, `Some(value)`, `Ok(value)`) and returns the
    /// value; past the limit, fails the test with `what`, the last `Err` and what
    /// [`Wait::showing`] gives.
    #[track_caller]
    pub fn until<O: Outcome>(self, check: impl FnMut() -> O) -> O::Value {
        let (what, limit) = (self.what, self.limit);
        let show = self.show;
        let last = match poll(self.since, limit, self.every, check) {
            Ok(value) => return value,
            Err(last) => last,
        };
        let mut message = format!("timed out after {limit:?} waiting for {what}");
        if !last.is_empty() {
            message.push_str(&format!(": {last}"));
        }
        if let Some(show) = show {
            message.push_str(&format!("\n{}", show()));
        }
        panic!("{message}");
    }

    /// [`Wait::until`], `None` past the limit instead of failing: for a test that reports what
    /// happened before it fails, or that goes on without.
    pub fn try_until<O: Outcome>(self, check: impl FnMut() -> O) -> Option<O::Value> {
        poll(self.since, self.limit, self.every, check).ok()
    }
}

/// Checks until done or past the deadline; the last `Err`'s text when it passed.
fn poll<O: Outcome>(
    since: Option<Instant>,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> O,
) -> Result<O::Value, String> {
    let deadline = since.unwrap_or_else(Instant::now) + limit;
    loop {
        match check().done() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// What a check says: done, with a value, or not yet, with what it saw instead (for the message
/// of a timeout; empty when there is nothing to say).
pub trait Outcome {
    type Value;
    fn done(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn done(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|seen| seen.to_string())
    }
}

#[test]
fn eventually_returns_what_the_check_found_or_says_what_never_came() {
    let mut tries = 0;
    let found = eventually("the third try", Duration::from_secs(5))
        .every(Duration::from_millis(1))
        .until(|| {
            tries += 1;
            (tries == 3).then_some(tries)
        });
    assert_eq!(found, 3);
    assert_eq!(
        eventually("nothing", Duration::ZERO).try_until(|| false),
        None
    );
    let failed = std::panic::catch_unwind(|| {
        eventually("a miracle", Duration::from_millis(20))
            .every(Duration::from_millis(5))
            .showing(|| "the logs".into())
            .until(|| Err::<(), _>("still none"))
    });
    let message = failed.unwrap_err().downcast::<String>().unwrap();
    assert_eq!(
        *message,
        "timed out after 20ms waiting for a miracle: still none\nthe logs"
    );
}
