//! What an HA test asks of nodes run by agents, wherever they run: on this machine
//! ([`HaCluster`](crate::support::ha::HaCluster)), in containers, or on machines of their own
//! (`ha_hosts.rs`'s network namespaces). Each kind says how to reach a node and its etcd; the
//! checks the specs share are said once, here.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::eventually;

pub(crate) trait HaNodes {
    /// Node `i`'s name.
    fn name(&self, i: usize) -> &str;

    /// psql as the superuser on node `i`; `None` when it does not answer.
    fn try_psql(&self, i: usize, sql: &str) -> Option<String>;

    /// The value of `key` under the cluster's prefix in etcd (`/pgrepl/SCOPE/KEY`), asking each
    /// member in turn (some may be down).
    fn etcd_get(&self, key: &str) -> Option<String>;

    /// `signal` to every process of node `i`'s server; its agent is left alone.
    fn signal_postgres(&self, i: usize, signal: i32);

    /// What the agents (and the servers) said, for a failure's message.
    fn logs(&self) -> String;

    /// The node the leader key names.
    fn leader(&self) -> Option<String> {
        node_of(&self.etcd_get("leader")?)
    }

    /// True when node `i` streams from node `primary`.
    fn streams_from(&self, i: usize, primary: usize) -> bool {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{}' AND state = 'streaming'",
            self.name(i)
        );
        self.try_psql(primary, &sql).as_deref() == Some("1")
    }

    /// SIGKILL to node `i`'s postmaster and its children; its agent lives.
    fn kill_postgres(&self, i: usize) {
        self.signal_postgres(i, libc::SIGKILL);
    }

    /// Polls `check` every 100 ms until it holds; past `limit`, fails with [`HaNodes::logs`].
    #[track_caller]
    fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&Self) -> bool)
    where
        Self: Sized,
    {
        eventually(what, limit)
            .showing(|| self.logs())
            .until(|| check(self));
    }
}

/// `signal` to the postmaster of the data directory `data` and its children; nothing when it
/// has no postmaster.pid.
pub(crate) fn signal_server(data: &Path, signal: i32) {
    let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
    else {
        return;
    };
    let children = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for victim in children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .chain([pid])
    {
        // SAFETY: kill(2) on a test cluster's server processes.
        unsafe { libc::kill(victim, signal) };
    }
}

/// The `node` of a leader record.
fn node_of(record: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(record).ok()?;
    value["node"].as_str().map(str::to_owned)
}
