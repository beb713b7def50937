//! Role changes as `pgrepl history` shows them: what each promotion records (the agents' in
//! etcd, the manual commands' in the state directory's topology file), and how it reads the
//! new primary's timeline and the point where it began.

use serde::{Deserialize, Serialize};

use super::topology::HistoryEntry;
use crate::ids::TimelineId;
use crate::lsn::Lsn;

/// Why the primary changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The leader was lost (its machine, its agent, or a server that could not start): a
    /// standby was elected.
    Failover,
    /// Planned: the old primary stopped cleanly and handed over.
    Switchover,
    /// `pgrepl failover`: an operator named the new primary.
    ManualFailover,
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChangeKind::Failover => "failover",
            ChangeKind::Switchover => "switchover",
            ChangeKind::ManualFailover => "manual failover",
        })
    }
}

/// One promotion. Records an older pgrepl wrote lack the fields with defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChange {
    /// When it was recorded (Unix ms); 0 when the record did not say.
    #[serde(default)]
    pub at_unix_ms: u64,
    #[serde(default = "unknown_kind")]
    pub kind: ChangeKind,
    pub from: Option<String>,
    pub to: String,
    /// The new primary's timeline.
    pub timeline: Option<TimelineId>,
    /// Where that timeline begins: the end of the old primary's WAL the new one kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    /// `agents`, or the command that made it.
    #[serde(default = "agents")]
    pub by: String,
    pub reason: String,
}

fn unknown_kind() -> ChangeKind {
    ChangeKind::Failover
}

fn agents() -> String {
    AGENTS.into()
}

/// [`RoleChange::by`] for the agents' promotions.
pub const AGENTS: &str = "agents";

impl RoleChange {
    /// One line: `2026-12-07 03:25:41 UTC  switchover  pg_master -> pg_slave  timeline 2 at 0/3070328  (agents: …)`.
    pub fn line(&self) -> String {
        let at = match self.at_unix_ms {
            0 => "(time unknown)".to_owned(),
            ms => utc(ms),
        };
        let timeline = match (self.timeline, self.lsn) {
            (Some(tl), Some(lsn)) => format!("timeline {tl} at {lsn}"),
            (Some(tl), None) => format!("timeline {tl}"),
            _ => "timeline ?".to_owned(),
        };
        format!(
            "{at}  {}  {} -> {}  {timeline}  ({}: {})",
            self.kind,
            self.from.as_deref().unwrap_or("?"),
            self.to,
            self.by,
            self.reason
        )
    }
}

/// What `pgrepl history` lists, oldest first: the agents' records (`None`: no etcd, or it did
/// not answer) and the role changes this state directory recorded that no agent made (with
/// agents, theirs are in etcd; without, the state directory's are all there is).
pub fn merged(agents: Option<&[RoleChange]>, local: &[HistoryEntry]) -> Vec<RoleChange> {
    let mine = local.iter().filter_map(|entry| match entry {
        HistoryEntry::Change(change) if agents.is_none() || change.by != AGENTS => Some(change),
        _ => None,
    });
    let mut all: Vec<RoleChange> = agents
        .unwrap_or_default()
        .iter()
        .chain(mine)
        .cloned()
        .collect();
    all.sort_by_key(|c| c.at_unix_ms);
    all
}

/// Now, in Unix milliseconds.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `YYYY-MM-DD HH:MM:SS UTC` (the civil calendar from days since 1970, Howard Hinnant's
/// algorithm: the one date computation pgrepl needs does not justify a date crate).
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The timeline a primary writes now and where it began, read from it just after its
/// promotion: the timeline from the name of its current WAL file, the start from the last line
/// of that timeline's history file (`parent<TAB>switchpoint<TAB>reason`). `None`s when the
/// server does not say (the promotion is recorded all the same).
pub async fn switch_point(client: &tokio_postgres::Client) -> (Option<TimelineId>, Option<Lsn>) {
    let Ok(row) = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
    else {
        return (None, None);
    };
    let file: String = row.get(0);
    let Some(timeline) = file
        .get(..8)
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .map(TimelineId::new)
    else {
        return (None, None);
    };
    let history = client
        .query_one(
            "SELECT pg_read_file('pg_wal/' || $1 || '.history')",
            &[&file[..8].to_owned()],
        )
        .await
        .ok()
        .map(|row| row.get::<_, String>(0));
    (Some(timeline), history.as_deref().and_then(last_switch))
}

/// The switch point of a history file's last entry.
fn last_switch(history: &str) -> Option<Lsn> {
    history
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(at: u64, by: &str, to: &str) -> RoleChange {
        RoleChange {
            at_unix_ms: at,
            kind: ChangeKind::Failover,
            from: None,
            to: to.into(),
            timeline: None,
            lsn: None,
            by: by.into(),
            reason: String::new(),
        }
    }

    #[test]
    fn the_agents_changes_come_from_etcd_the_commands_from_the_state_directory_in_time_order() {
        let local = [
            HistoryEntry::Change(change(10, AGENTS, "b")),
            HistoryEntry::Note("agent: `b` leads (etcd)".into()),
            HistoryEntry::Change(change(30, "pgrepl switchover", "c")),
        ];
        let etcd = [change(10, AGENTS, "b"), change(40, AGENTS, "a")];
        let to = |all: Vec<RoleChange>| all.into_iter().map(|c| c.to).collect::<Vec<_>>();
        assert_eq!(to(merged(Some(&etcd), &local)), ["b", "c", "a"]);
        // etcd silent: what this state directory saw.
        assert_eq!(to(merged(None, &local)), ["b", "c"]);
    }

    #[test]
    fn times_are_utc_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_609_925_679), "2026-12-07 02:18:45 UTC");
    }

    #[test]
    fn a_timeline_begins_where_the_last_history_line_says() {
        let history = "1\t0/3000000\tno recovery target specified\n\n# placeholder\n2\t0/5070328\tno recovery target specified\n";
        assert_eq!(last_switch(history), Some("0/5070328".parse().unwrap()));
        assert_eq!(last_switch("# only a placeholder\n"), None);
    }

    #[test]
    fn an_older_record_reads_with_defaults_and_a_change_renders_on_one_line() {
        let old: RoleChange =
            serde_json::from_str(r#"{"from":"a","to":"b","timeline":2,"reason":"won"}"#).unwrap();
        assert_eq!(old.kind, ChangeKind::Failover);
        assert_eq!(old.by, "agents");
        assert_eq!(old.at_unix_ms, 0);
        let change = RoleChange {
            at_unix_ms: 1_796_609_925_679,
            kind: ChangeKind::Switchover,
            from: Some("pg_master".into()),
            to: "pg_slave".into(),
            timeline: Some(TimelineId::new(2)),
            lsn: Some("0/3070328".parse().unwrap()),
            by: "pgrepl switchover".into(),
            reason: "asked".into(),
        };
        assert_eq!(
            change.line(),
            "2026-12-07 02:18:45 UTC  switchover  pg_master -> pg_slave  timeline 2 at 0/3070328  (pgrepl switchover: asked)"
        );
    }
}
