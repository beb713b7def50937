//! What a check of `up`, a role change or the drill saw instead of what it expected, one
//! variant per check, naming the nodes, positions and limits involved.

use std::time::Duration;

use crate::sync_policy::SyncPolicy;
use crate::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    #[error("row {id} of {table} is not on `{node}`, which replayed up to {replayed}")]
    RowMissing {
        table: String,
        id: i64,
        node: String,
        replayed: Lsn,
    },
    /// A standby asked to write; `error` is not the read-only refusal (25006).
    #[error("a write on `{node}` failed with something other than read-only (25006): {error}")]
    WriteFailed {
        node: String,
        error: tokio_postgres::Error,
    },
    #[error("`{node}` accepted a write: it is not a standby")]
    AcceptedWrite { node: String },
    #[error("`{node}` did not finish promotion within {} s", .within.as_secs())]
    PromotionUnfinished { node: String, within: Duration },
    /// Standbys that did not confirm the primary's WAL up to `since` (the LSN as the primary
    /// printed it).
    #[error(
        "{} did not stream from `{primary}` up to {since} within {} s: a standby past the fork of its timeline cannot follow it (`pgrepl rejoin {}` rewinds or re-clones it)",
        quoted(.nodes), .within.as_secs(), .nodes.first().map_or("", String::as_str)
    )]
    NotStreaming {
        nodes: Vec<String>,
        primary: String,
        since: String,
        within: Duration,
    },
    /// A failover's target did not receive the WAL a more advanced standby (`ahead`) holds.
    #[error("`{target}` could not catch up with `{ahead}` within {} s; promote `{ahead}` instead, or add --force to leave it behind", .within.as_secs())]
    NoCatchUp {
        target: String,
        ahead: String,
        within: Duration,
    },
    #[error("`{node}` did not shut down cleanly; start it again and retry")]
    UncleanShutdown { node: String },
    #[error("the commit blocked with only `{stopped}` stopped")]
    CommitBlocked { stopped: String },
    #[error("the commit did not block although {} are stopped", .stopped.join(" and "))]
    CommitNotBlocked { stopped: Vec<String> },
    #[error("the blocked commit was not released after the standbys came back")]
    CommitNotReleased,
    #[error("the sync policy names no synchronous standby")]
    NoSyncStandby,
    #[error("no standby is asynchronous or potential under this policy")]
    NoAsyncStandby,
    #[error("the first write on the new primary blocked")]
    FirstWriteBlocked,
    #[error("synchronous_standby_names is `{found}`, expected `{expected}`")]
    StandbyNames { found: String, expected: SyncPolicy },
}

/// `a`, `b`: each backquoted.
fn quoted(nodes: &[String]) -> String {
    let quoted: Vec<String> = nodes.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_that_does_not_follow_is_named_with_the_command_that_brings_it_back() {
        let e = CheckFailed::NotStreaming {
            nodes: vec!["pg_slave".into(), "pg_asyncslave".into()],
            primary: "pg_master".into(),
            since: "0/3000060".into(),
            within: Duration::from_secs(60),
        };
        assert_eq!(
            e.to_string(),
            "`pg_slave`, `pg_asyncslave` did not stream from `pg_master` up to 0/3000060 within 60 s: a standby past the fork of its timeline cannot follow it (`pgrepl rejoin pg_slave` rewinds or re-clones it)"
        );
    }
}
