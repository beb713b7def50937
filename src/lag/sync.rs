//! Synchronous replication in words: which standby is synchronous, which is potential, and
//! whether commits would block.
//!
//! The primary already decides `sync_state` per walsender; pgrepl only needs
//! `synchronous_standby_names` for what the server does not show: how many synchronous standbys
//! it wants, and which listed names have no walsender at all ([`SyncPolicy`] reads it).

use serde::Serialize;

use super::sql::{SenderRow, SyncWaiterRow};
use crate::sync_policy::{SyncMethod, SyncNamesError, SyncPolicy};

/// What a synchronous standby must have done before a commit returns, by `synchronous_commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitWait {
    /// `off` or `local`: commits never wait for standbys.
    None,
    /// `remote_write`.
    Write,
    /// `on`.
    Flush,
    /// `remote_apply`.
    Apply,
}

impl CommitWait {
    pub fn from_setting(synchronous_commit: &str) -> CommitWait {
        match synchronous_commit {
            "remote_write" => CommitWait::Write,
            "remote_apply" => CommitWait::Apply,
            "off" | "local" => CommitWait::None,
            // `on`, and its boolean spellings.
            _ => CommitWait::Flush,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            CommitWait::None => "",
            CommitWait::Write => "written",
            CommitWait::Flush => "flushed",
            CommitWait::Apply => "applied",
        }
    }
}

/// Synchronous replication as seen on the primary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncReport {
    pub synchronous_standby_names: String,
    pub synchronous_commit: String,
    /// `None` when synchronous replication is off or the setting could not be parsed;
    /// `priority` (`FIRST`) or `quorum` (`ANY`).
    #[serde(serialize_with = "method_mode")]
    pub method: Option<SyncMethod>,
    /// How many synchronous standbys a commit waits for.
    pub required: u32,
    pub commit_waits_for: CommitWait,
    /// application_names by `sync_state`.
    pub sync: Vec<String>,
    pub potential: Vec<String>,
    pub quorum: Vec<String>,
    /// Listed in `synchronous_standby_names` but with no walsender (`*` excluded).
    pub listed_not_connected: Vec<String>,
    /// True when a commit that waits for standbys cannot complete now.
    pub commits_block: bool,
    pub waiting_sessions: Vec<SyncWaiterRow>,
    /// The above, in sentences.
    pub explanation: Vec<String>,
}

impl SyncReport {
    /// Builds the report from the primary's settings, its walsenders and `SyncRep` waiters.
    pub fn build(
        synchronous_standby_names: &str,
        synchronous_commit: &str,
        senders: &[SenderRow],
        waiters: &[SyncWaiterRow],
    ) -> SyncReport {
        let parsed = synchronous_standby_names.parse::<SyncPolicy>();
        let commit_wait = CommitWait::from_setting(synchronous_commit);
        let named = |state: &str| -> Vec<String> {
            senders
                .iter()
                .filter(|s| s.sync_state.as_deref() == Some(state))
                .map(|s| s.application_name.clone().unwrap_or_default())
                .collect()
        };
        let (sync, potential, quorum) = (named("sync"), named("potential"), named("quorum"));
        let spec = parsed.as_ref().ok().filter(|p| p.is_synchronous());
        let listed_not_connected: Vec<String> = spec
            .map(|s| {
                s.names
                    .iter()
                    .filter(|n| *n != "*")
                    .filter(|n| {
                        !senders.iter().any(|r| {
                            r.application_name
                                .as_deref()
                                .is_some_and(|a| a.eq_ignore_ascii_case(n))
                        })
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let required = spec.map_or(0, |s| s.num);
        let chosen = sync.len() + quorum.len();
        let commits_block =
            spec.is_some() && commit_wait != CommitWait::None && chosen < required as usize;

        let mut report = SyncReport {
            synchronous_standby_names: synchronous_standby_names.to_owned(),
            synchronous_commit: synchronous_commit.to_owned(),
            method: spec.map(|s| s.method),
            required,
            commit_waits_for: if spec.is_some() {
                commit_wait
            } else {
                CommitWait::None
            },
            sync,
            potential,
            quorum,
            listed_not_connected,
            commits_block,
            waiting_sessions: waiters.to_vec(),
            explanation: Vec::new(),
        };
        report.explanation = report.explain(parsed.err(), senders);
        report
    }

    fn explain(&self, parse_error: Option<SyncNamesError>, senders: &[SenderRow]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = parse_error {
            out.push(format!(
                "{e}: the sync states below are the server's, but pgrepl cannot tell how many \
                 synchronous standbys it wants"
            ));
        }
        let Some(method) = self.method else {
            if self.synchronous_standby_names.trim().is_empty() {
                out.push(
                    "synchronous replication is off (synchronous_standby_names is empty): \
                     commits return after the local flush"
                        .into(),
                );
            }
            return out;
        };
        let verb = CommitWait::Flush.verb();
        let verb = match self.commit_waits_for {
            CommitWait::None => {
                out.push(format!(
                    "synchronous_commit is `{}`: commits do not wait for standbys unless a \
                     session sets it higher",
                    self.synchronous_commit
                ));
                verb
            }
            wait => wait.verb(),
        };
        let priority = |name: &str| {
            senders
                .iter()
                .find(|s| s.application_name.as_deref() == Some(name))
                .and_then(|s| s.sync_priority)
                .unwrap_or(0)
        };
        match method {
            SyncMethod::Priority => {
                for name in &self.sync {
                    out.push(format!(
                        "`{name}` is synchronous (priority {}): commits wait until it has {verb} \
                         their WAL",
                        priority(name)
                    ));
                }
                for name in &self.potential {
                    out.push(format!(
                        "`{name}` is a potential synchronous standby (priority {}): it takes over \
                         when a synchronous one disconnects",
                        priority(name)
                    ));
                }
            }
            SyncMethod::Quorum if !self.quorum.is_empty() => out.push(format!(
                "quorum commit: commits wait until any {} of {} have {verb} their WAL",
                self.required,
                backticked(&self.quorum)
            )),
            SyncMethod::Quorum => {}
        }
        if !self.listed_not_connected.is_empty() {
            out.push(format!(
                "listed in synchronous_standby_names but not connected: {}",
                backticked(&self.listed_not_connected)
            ));
        }
        if self.commits_block {
            let connected = self.sync.len() + self.quorum.len();
            out.push(format!(
                "commits block: synchronous_standby_names asks for {} synchronous standby{} and \
                 {} connected; a commit waits until enough listed standbys stream",
                self.required,
                if self.required == 1 { "" } else { "s" },
                match connected {
                    0 => "none is".to_owned(),
                    1 => "only 1 is".to_owned(),
                    n => format!("only {n} are"),
                }
            ));
        }
        if !self.waiting_sessions.is_empty() {
            let longest = self
                .waiting_sessions
                .iter()
                .filter_map(|w| w.waiting_ms)
                .fold(0.0_f64, f64::max);
            out.push(format!(
                "{} session{} waiting for synchronous replication (longest for {:.1} s)",
                self.waiting_sessions.len(),
                if self.waiting_sessions.len() == 1 {
                    " is"
                } else {
                    "s are"
                },
                longest / 1000.0
            ));
        }
        out
    }
}

/// The method in the words `pg_stat_replication` uses for its standbys.
fn method_mode<S: serde::Serializer>(
    method: &Option<SyncMethod>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mode = method.map(|m| match m {
        SyncMethod::Priority => "priority",
        SyncMethod::Quorum => "quorum",
    });
    serde::Serialize::serialize(&mode, serializer)
}

fn backticked(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(name: &str, sync_state: &str, priority: i32) -> SenderRow {
        SenderRow {
            application_name: Some(name.into()),
            state: Some("streaming".into()),
            sync_state: Some(sync_state.into()),
            sync_priority: Some(priority),
            ..Default::default()
        }
    }

    #[test]
    fn off_when_nothing_is_listed() {
        let r = SyncReport::build("", "on", &[sender("a", "async", 0)], &[]);
        assert_eq!(r.method, None);
        assert_eq!(r.commit_waits_for, CommitWait::None);
        assert!(!r.commits_block);
        assert_eq!(
            r.explanation,
            [
                "synchronous replication is off (synchronous_standby_names is empty): commits \
              return after the local flush"
            ]
        );
    }

    #[test]
    fn names_the_sync_and_the_potential_standby() {
        let senders = [
            sender("a", "sync", 1),
            sender("b", "potential", 2),
            sender("c", "async", 0),
        ];
        let r = SyncReport::build("FIRST 1 (a, b, d)", "remote_apply", &senders, &[]);
        assert_eq!(r.method, Some(SyncMethod::Priority));
        // `--json` names methods as pg_stat_replication names its standbys.
        assert_eq!(serde_json::to_value(&r).unwrap()["method"], "priority");
        assert_eq!(r.sync, ["a"]);
        assert_eq!(r.potential, ["b"]);
        assert_eq!(r.listed_not_connected, ["d"]);
        assert!(!r.commits_block);
        assert_eq!(
            r.explanation,
            [
                "`a` is synchronous (priority 1): commits wait until it has applied their WAL",
                "`b` is a potential synchronous standby (priority 2): it takes over when a \
                 synchronous one disconnects",
                "listed in synchronous_standby_names but not connected: `d`",
            ]
        );
    }

    #[test]
    fn commits_block_without_enough_sync_standbys() {
        let waiter = SyncWaiterRow {
            pid: 42,
            waiting_ms: Some(1500.0),
            ..Default::default()
        };
        let r = SyncReport::build("ANY 2 (a, b)", "on", &[sender("a", "quorum", 1)], &[waiter]);
        assert!(r.commits_block);
        assert_eq!(serde_json::to_value(&r).unwrap()["method"], "quorum");
        assert_eq!(r.quorum, ["a"]);
        assert_eq!(
            r.explanation,
            [
                "quorum commit: commits wait until any 2 of `a` have flushed their WAL",
                "listed in synchronous_standby_names but not connected: `b`",
                "commits block: synchronous_standby_names asks for 2 synchronous standbys and \
                 only 1 is connected; a commit waits until enough listed standbys stream",
                "1 session is waiting for synchronous replication (longest for 1.5 s)",
            ]
        );
        let none = SyncReport::build("standby_x", "on", &[], &[]);
        assert!(none.commits_block);
        assert!(none
            .explanation
            .last()
            .unwrap()
            .contains("1 synchronous standby and none is"));
        // `local` commits never wait, so nothing blocks.
        let local = SyncReport::build("standby_x", "local", &[], &[]);
        assert!(!local.commits_block);
        assert!(local.explanation[0].starts_with("synchronous_commit is `local`"));
    }
}
