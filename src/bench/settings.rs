//! The replication modes a bench run compares, and changing the primary's settings for each
//! with ALTER SYSTEM and a reload, then putting them back as they were.
//!
//! Putting back means undoing exactly what was done: a setting that came from
//! `postgresql.auto.conf` gets its old value again, any other is RESET there so that
//! `postgresql.conf` (or the default) rules again.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::BenchError;
use crate::conn::{sql, ConnectOptions};
use crate::sync_policy::{SyncMethod, SyncPolicy};

/// How long a reload may take to reach new sessions.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// The two settings every mode sets.
const SETTINGS: [&str; 2] = ["synchronous_standby_names", "synchronous_commit"];

/// A replication mode: what commits wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// No synchronous standby: commits wait for the local flush only.
    Async,
    /// `FIRST 1 (...)`, `synchronous_commit = remote_write`.
    RemoteWrite,
    /// `FIRST 1 (...)`, `synchronous_commit = on` (flush on the standby).
    On,
    /// `FIRST 1 (...)`, `synchronous_commit = remote_apply`.
    RemoteApply,
    /// `ANY 1 (...)`, `synchronous_commit = on`: whichever standby flushes first.
    Any1,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Async,
        Mode::RemoteWrite,
        Mode::On,
        Mode::RemoteApply,
        Mode::Any1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::RemoteWrite => "remote_write",
            Mode::On => "on",
            Mode::RemoteApply => "remote_apply",
            Mode::Any1 => "any1",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == text)
    }

    pub fn synchronous_commit(self) -> &'static str {
        match self {
            Mode::Async | Mode::On | Mode::Any1 => "on",
            Mode::RemoteWrite => "remote_write",
            Mode::RemoteApply => "remote_apply",
        }
    }

    /// The sync policy of this mode over `standbys` (application names).
    pub fn policy(self, standbys: &[String]) -> SyncPolicy {
        match self {
            Mode::Async => SyncPolicy::default(),
            Mode::Any1 => SyncPolicy::new(SyncMethod::Quorum, 1, standbys),
            Mode::RemoteWrite | Mode::On | Mode::RemoteApply => {
                SyncPolicy::new(SyncMethod::Priority, 1, standbys)
            }
        }
    }

    pub fn needs_standby(self) -> bool {
        self != Mode::Async
    }

    /// The values of [`SETTINGS`] for this mode.
    fn values(self, standbys: &[String]) -> [String; 2] {
        [
            self.policy(standbys).to_string(),
            self.synchronous_commit().to_owned(),
        ]
    }
}

impl serde::Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// A setting as it was before the run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Saved {
    name: &'static str,
    value: String,
    /// Set in `postgresql.auto.conf` (by an earlier ALTER SYSTEM).
    from_auto_conf: bool,
}

/// The primary's settings as found, and what this run changed.
pub struct Settings {
    primary: ConnectOptions,
    saved: Vec<Saved>,
    /// Names changed so far; only these are restored.
    changed: Vec<&'static str>,
}

impl Settings {
    /// Records the current values; needs a superuser (ALTER SYSTEM, `pg_settings.sourcefile`).
    pub async fn save(admin: &Client, primary: &ConnectOptions) -> Result<Settings, BenchError> {
        let mut saved = Vec::with_capacity(SETTINGS.len());
        for name in SETTINGS {
            let row = admin
                .query_one(
                    "SELECT setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(BenchError::sql(format!("read `{name}`")))?;
            let sourcefile: String = row.get(1);
            saved.push(Saved {
                name,
                value: row.get(0),
                from_auto_conf: sourcefile.ends_with("postgresql.auto.conf"),
            });
        }
        Ok(Settings {
            primary: primary.clone(),
            saved,
            changed: Vec::new(),
        })
    }

    /// Sets the primary up for `mode` and waits until new sessions see it. Returns a line per
    /// setting that changed, for the user.
    pub async fn apply(
        &mut self,
        admin: &Client,
        mode: Mode,
        standbys: &[String],
    ) -> Result<Vec<String>, BenchError> {
        let wanted = mode.values(standbys);
        let current = read_settings(admin).await?;
        let mut said = Vec::new();
        for ((name, want), now) in SETTINGS.into_iter().zip(&wanted).zip(&current) {
            if same(name, now, want) {
                continue;
            }
            alter_system(admin, name, Some(want)).await?;
            if !self.changed.contains(&name) {
                self.changed.push(name);
            }
            said.push(format!("{name}: '{now}' -> '{want}'"));
        }
        if !said.is_empty() {
            reload_and_wait(admin, &self.primary, &wanted).await?;
        }
        Ok(said)
    }

    /// Undoes every change; a line per setting put back.
    pub async fn restore(&mut self, admin: &Client) -> Result<Vec<String>, BenchError> {
        if self.changed.is_empty() {
            return Ok(Vec::new());
        }
        let mut said = Vec::new();
        for saved in self.saved.iter().filter(|s| self.changed.contains(&s.name)) {
            if saved.from_auto_conf {
                alter_system(admin, saved.name, Some(&saved.value)).await?;
            } else {
                alter_system(admin, saved.name, None).await?;
            }
            said.push(format!("{}: back to '{}'", saved.name, saved.value));
        }
        let before: Vec<String> = self.saved.iter().map(|s| s.value.clone()).collect();
        reload_and_wait(admin, &self.primary, &before).await?;
        self.changed.clear();
        Ok(said)
    }
}

async fn read_settings(client: &Client) -> Result<Vec<String>, BenchError> {
    let row = client
        .query_one(
            "SELECT current_setting('synchronous_standby_names'), current_setting('synchronous_commit')",
            &[],
        )
        .await
        .map_err(BenchError::sql("read the replication settings"))?;
    Ok(vec![row.get(0), row.get(1)])
}

/// `now` is `want` for setting `name`: synchronous_standby_names compare as policies (`a, b` is
/// `FIRST 1 (a, b)`), anything else (or names pgrepl cannot parse) as text.
fn same(name: &str, now: &str, want: &str) -> bool {
    if name == "synchronous_standby_names" {
        if let (Ok(now), Ok(want)) = (now.parse::<SyncPolicy>(), want.parse::<SyncPolicy>()) {
            return now == want;
        }
    }
    now == want
}

/// ALTER SYSTEM SET (or RESET with `None`). It cannot take parameters, so the value is quoted
/// here as a string literal.
async fn alter_system(admin: &Client, name: &str, value: Option<&str>) -> Result<(), BenchError> {
    let statement = match value {
        Some(value) => format!("ALTER SYSTEM SET {name} = '{}'", value.replace('\'', "''")),
        None => format!("ALTER SYSTEM RESET {name}"),
    };
    admin
        .batch_execute(&statement)
        .await
        .map_err(BenchError::sql(format!("change `{name}` (`{statement}`)")))
}

/// Reloads and waits until a new session sees `wanted`: the postmaster reads the files
/// asynchronously, and the load sessions are opened right after.
async fn reload_and_wait(
    admin: &Client,
    primary: &ConnectOptions,
    wanted: &[String],
) -> Result<(), BenchError> {
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(BenchError::sql("reload the configuration"))?;
    let started = Instant::now();
    loop {
        let probe = sql::connect(primary, super::load::LOAD_APPLICATION_NAME)
            .await
            .map_err(|e| BenchError::Sql {
                context: "check the reloaded settings".into(),
                source: e,
            })?;
        let seen = read_settings(&probe).await?;
        if SETTINGS
            .into_iter()
            .zip(seen.iter().zip(wanted))
            .all(|(name, (now, want))| same(name, now, want))
        {
            return Ok(());
        }
        if started.elapsed() > RELOAD_WAIT {
            return Err(BenchError::Invalid(format!(
                "after ALTER SYSTEM and a reload the primary still has {} = '{}' and {} = '{}' \
                 (wanted '{}' and '{}'): is one of them set on its command line, or for the role?",
                SETTINGS[0], seen[0], SETTINGS[1], seen[1], wanted[0], wanted[1]
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_set_the_recipes_policies() {
        let standbys = vec!["pg_slave".to_owned(), "pg_asyncslave".to_owned()];
        assert_eq!(Mode::Async.policy(&standbys).to_string(), "");
        assert_eq!(
            Mode::RemoteApply.policy(&standbys).to_string(),
            "FIRST 1 (pg_slave, pg_asyncslave)"
        );
        assert_eq!(Mode::RemoteApply.synchronous_commit(), "remote_apply");
        assert_eq!(
            Mode::Any1.policy(&standbys).to_string(),
            "ANY 1 (pg_slave, pg_asyncslave)"
        );
        assert!(same(
            "synchronous_standby_names",
            "pg_slave, pg_asyncslave",
            "FIRST 1 (pg_slave, pg_asyncslave)"
        ));
        assert!(!same(
            "synchronous_standby_names",
            "ANY 1 (pg_slave)",
            "FIRST 1 (pg_slave)"
        ));
        for mode in Mode::ALL {
            assert_eq!(Mode::parse(mode.name()), Some(mode));
        }
        assert_eq!(Mode::parse("sync"), None);
    }
}
