//! An agent whose node has no data builds it, as Patroni does, so a cluster on several machines
//! is built by starting one agent per machine, each with its own copy of the cluster file and
//! its own state directory:
//!
//! - the file's primary claims the cluster's initialisation in etcd (`initialize`, created if
//!   absent, like the leader key) and, when the claim is its own and nobody ever led, runs
//!   `up`'s steps for itself alone; the loop then takes the leader key as for any fresh cluster;
//! - every other node (and a primary whose claim was lost, or whose cluster already led) only
//!   gets its directories: once a leader runs, the loop's `Rejoin` clones it from the leader
//!   with pgrepl's own base backup, configures it as the leader's standby and starts it.

use crate::cluster::spec::NodeSpec;
use crate::cluster::{Cluster, StepLog};

use super::model::View;
use super::records::LeaseId;
use super::store::Store;
use super::HaError;

/// Builds what this node can build alone; does nothing when its data exists.
pub async fn bootstrap(
    cluster: &Cluster,
    node: &NodeSpec,
    store: &Store,
    lease: LeaseId,
    log: &dyn StepLog,
) -> Result<(), HaError> {
    if cluster.runtime.data_dir(node).join("PG_VERSION").exists() {
        // A server with TLS does not start without its certificate.
        cluster.ensure_tls(std::slice::from_ref(node), false, log)?;
        return Ok(());
    }
    cluster.prepare_node(node, log).await?;
    if cluster.file_spec.primary().name != node.name {
        tracing::info!(
            "`{}` has no data: it is cloned from the leader once one runs",
            node.name
        );
        return Ok(());
    }
    let owner = store.claim_initialize(&node.name).await?;
    if !initialises(&node.name, &owner, &store.view(lease).await?) {
        tracing::info!(
            "`{owner}` initialised the cluster: `{}` is cloned from the leader once one runs",
            node.name
        );
        return Ok(());
    }
    tracing::info!(
        "no cluster yet: initialising `{}` as its primary",
        node.name
    );
    cluster.init_primary_alone(node, log).await?;
    Ok(())
}

/// Whether the file's primary `me` initialises the cluster: it holds the claim and the cluster
/// never had a leader. A claim of its own with no leader and no sync record is an earlier run
/// of this agent that stopped while initialising, and finishing that is safe.
fn initialises(me: &str, owner: &str, view: &View) -> bool {
    owner == me && view.leader.is_none() && view.sync.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::ClusterSpec;
    use crate::ha::model::Leader;
    use crate::ha::records::SyncRecord;

    #[test]
    fn only_the_claim_holder_of_a_cluster_that_never_led_initialises() {
        let fresh = View::default();
        assert!(initialises("n1", "n1", &fresh));
        assert!(!initialises("n1", "n2", &fresh));
        let led = View {
            leader: Some(Leader {
                node: "n2".into(),
                lease: LeaseId(7),
                mine: false,
            }),
            ..View::default()
        };
        assert!(!initialises("n1", "n1", &led));
        // Nobody leads now, but someone did: its data holds the cluster's commits.
        let spec = ClusterSpec::default();
        let once_led = View {
            sync: Some(SyncRecord::desired(&spec, "pg_master")),
            ..View::default()
        };
        assert!(!initialises("n1", "n1", &once_led));
    }
}
