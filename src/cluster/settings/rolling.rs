//! The order of a rolling restart (`pgrepl restart --pending|--all`), pure, and the two
//! questions its executor asks the primary: what time is it, and does a standby stream again
//! since then.
//!
//! Standbys go one at a time, each streaming again before the next; the primary last, by a
//! switchover to a standby already restarted, so writes pause only for the switchover and
//! the old primary restarts as a standby. One exception: lowering a setting a standby needs at
//! least the primary's (`AT_LEAST_THE_PRIMARYS`) must reach the primary first, and a switchover
//! cannot carry it (the promoted standby still runs the higher value, and the old primary could
//! not follow it with a lower one). So the primary restarts in place first, a pause of writes
//! as long as its restart, and then every standby, which takes the lower value only then.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::catalog::AT_LEAST_THE_PRIMARYS;
use super::desired::Desired;
use crate::cluster::spec::NodeSpec;
use crate::cluster::sql_steps as sql;
use crate::cluster::{Cluster, ClusterError};

/// One step of a rolling restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Restart a standby; done once it streams again.
    Standby { node: String },
    /// Restart the primary where it runs (writes pause meanwhile); done once every standby
    /// streams again.
    PrimaryInPlace { node: String },
    /// Switch over from the primary; `to`: a standby restarted before it (`None`: the agents'
    /// choice, or nobody is fit).
    Switchover { from: String, to: Option<String> },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Standby { node } => write!(f, "restart standby `{node}`, wait until it streams"),
            Step::PrimaryInPlace { node } => write!(
                f,
                "restart primary `{node}` in place (writes pause while it restarts), wait until every standby streams"
            ),
            Step::Switchover { from, to } => match to {
                Some(to) => write!(f, "switch over `{from}` -> `{to}`: `{from}` restarts as a standby"),
                None => write!(f, "switch over from `{from}`: it restarts as a standby"),
            },
        }
    }
}

/// A node as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub pending: BTreeSet<String>,
}

/// The settings `desired` lowers below what `primary_runs` (standbys follow the primary only
/// while they run at least its values).
pub fn lowered(desired: &Desired, primary_runs: &BTreeMap<String, String>) -> Vec<String> {
    AT_LEAST_THE_PRIMARYS
        .iter()
        .filter(|name| {
            let wanted = desired
                .settings
                .get(**name)
                .and_then(|v| v.trim().parse::<i64>().ok());
            let running = primary_runs.get(**name).and_then(|v| v.parse::<i64>().ok());
            matches!((wanted, running), (Some(w), Some(r)) if w < r)
        })
        .map(|name| name.to_string())
        .collect()
}

/// The steps for `primary` and `standbys` (in the cluster file's order): every node with a
/// setting pending (`all`: every node). `lowered`: see [`lowered`]. `preferred`: standbys the
/// primary should hand over to, best first (its synchronous ones).
pub fn plan(
    primary: &NodeState,
    standbys: &[NodeState],
    all: bool,
    lowered: &[String],
    preferred: &[String],
) -> Vec<Step> {
    let due = |n: &NodeState| all || !n.pending.is_empty();
    let mut steps = Vec::new();
    if !lowered.is_empty() && due(primary) {
        steps.push(Step::PrimaryInPlace {
            node: primary.name.clone(),
        });
        // Each standby takes the lower value only once the primary runs it.
        steps.extend(standbys.iter().map(|s| Step::Standby {
            node: s.name.clone(),
        }));
        return steps;
    }
    let restarted: Vec<&NodeState> = standbys.iter().filter(|s| due(s)).collect();
    steps.extend(restarted.iter().map(|s| Step::Standby {
        node: s.name.clone(),
    }));
    if due(primary) {
        if standbys.is_empty() {
            steps.push(Step::PrimaryInPlace {
                node: primary.name.clone(),
            });
        } else {
            let fit = |name: &String| restarted.iter().any(|s| &s.name == name);
            let to = preferred
                .iter()
                .find(|name| fit(name))
                .or_else(|| restarted.first().map(|s| &s.name))
                .cloned();
            steps.push(Step::Switchover {
                from: primary.name.clone(),
                to,
            });
        }
    }
    steps
}

impl Cluster {
    /// The steps of a rolling restart: `primary` (default: the recorded one) last, every node
    /// with a setting pending (`all`: every node), `desired` telling what is lowered.
    pub async fn rolling_plan(
        &self,
        primary: Option<&str>,
        desired: &Desired,
        all: bool,
    ) -> Result<Vec<Step>, ClusterError> {
        let primary = match primary {
            Some(name) => name.to_owned(),
            None => self.current_spec()?.primary().name.clone(),
        };
        self.node(&primary)?;
        let mut standbys = Vec::new();
        let mut primary_state = None;
        for (name, running) in self.running_settings(&AT_LEAST_THE_PRIMARYS).await {
            let running = running?;
            let state = NodeState {
                name: name.clone(),
                pending: running.pending_restart,
            };
            if name == primary {
                primary_state = Some((state, running.values));
            } else {
                standbys.push(state);
            }
        }
        let (primary_state, primary_runs) =
            primary_state.expect("running_settings answers for every node, the primary's too");
        let preferred = self.file_spec.sync_with_primary(&primary).names;
        Ok(plan(
            &primary_state,
            &standbys,
            all,
            &lowered(desired, &primary_runs),
            &preferred,
        ))
    }

    /// The primary's clock, as text it can compare again (`now()` of a session there).
    pub async fn server_now(&self, primary: &NodeSpec) -> Result<String, ClusterError> {
        sql::now(&self.sql(primary).await?, primary).await
    }

    /// True once `standby` streams from `primary` over a connection made after `since` (a
    /// [`Cluster::server_now`]): a restarted standby, not its walsender from before.
    pub async fn streams_since(
        &self,
        primary: &NodeSpec,
        standby: &str,
        since: &str,
    ) -> Result<bool, ClusterError> {
        sql::streams_since(&self.sql(primary).await?, primary, standby, since).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, pending: &[&str]) -> NodeState {
        NodeState {
            name: name.into(),
            pending: pending.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(steps: &[Step]) -> Vec<String> {
        steps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn standbys_first_then_a_switchover_to_a_restarted_sync_standby() {
        let p = node("pg_master", &["max_connections"]);
        let standbys = [
            node("pg_slave", &["max_connections"]),
            node("pg_asyncslave", &["max_connections"]),
        ];
        let steps = plan(&p, &standbys, false, &[], &["pg_slave".into()]);
        assert_eq!(
            steps,
            [
                Step::Standby {
                    node: "pg_slave".into()
                },
                Step::Standby {
                    node: "pg_asyncslave".into()
                },
                Step::Switchover {
                    from: "pg_master".into(),
                    to: Some("pg_slave".into())
                },
            ]
        );
    }

    #[test]
    fn only_what_is_pending_unless_all() {
        let p = node("a", &[]);
        let standbys = [node("b", &["shared_buffers"]), node("c", &[])];
        assert_eq!(
            plan(&p, &standbys, false, &[], &[]),
            [Step::Standby { node: "b".into() }]
        );
        assert_eq!(
            names(&plan(&p, &standbys, true, &[], &["c".into()])).len(),
            3
        );
        assert_eq!(
            plan(&p, &standbys, true, &[], &["c".into()]).last(),
            Some(&Step::Switchover {
                from: "a".into(),
                to: Some("c".into())
            })
        );
        assert!(plan(&node("a", &[]), &[node("b", &[])], false, &[], &[]).is_empty());
    }

    #[test]
    fn lowering_restarts_the_primary_in_place_first_then_every_standby() {
        let desired = Desired::default()
            .with(&[("max_connections".into(), Some("50".into()))])
            .unwrap();
        let runs = BTreeMap::from([("max_connections".to_string(), "100".to_string())]);
        let lowered = lowered(&desired, &runs);
        assert_eq!(lowered, ["max_connections"]);
        let p = node("a", &["max_connections"]);
        let steps = plan(&p, &[node("b", &[]), node("c", &[])], false, &lowered, &[]);
        assert_eq!(
            steps,
            [
                Step::PrimaryInPlace { node: "a".into() },
                Step::Standby { node: "b".into() },
                Step::Standby { node: "c".into() },
            ]
        );
        let raised = BTreeMap::from([("max_connections".to_string(), "20".to_string())]);
        assert!(super::lowered(&desired, &raised).is_empty());
    }

    #[test]
    fn a_lone_primary_restarts_in_place() {
        assert_eq!(
            plan(&node("a", &["x"]), &[], false, &[], &[]),
            [Step::PrimaryInPlace { node: "a".into() }]
        );
    }
}
