//! One node built by itself, for clusters whose nodes run on several machines: each machine's
//! agent builds only its own node, with its own copy of the cluster file and its own state
//! directory. The primary is `up`'s steps for it alone; a standby is a re-clone from whoever
//! leads (`rejoin` of a node without data), so nothing here needs another machine's files.

use super::spec::NodeSpec;
use super::{Cluster, ClusterError, StepLog};

impl Cluster {
    /// Creates what the node needs on this machine (its directories) and the record that lets
    /// later commands find the cluster here.
    /// Its certificate too, from the cluster CA that `up` made or the operator copied here.
    pub async fn prepare_node(
        &self,
        node: &NodeSpec,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        self.runtime.prepare(std::slice::from_ref(node)).await?;
        self.ensure_tls(std::slice::from_ref(node), false, log)?;
        self.save_record()
    }

    /// `up`'s steps for the primary alone: initdb (unless its data exists), start, the file's
    /// settings, the replication role and the pg_hba lines for every node's host. Its standbys
    /// clone themselves; the sync policy is the leading agent's to set.
    pub async fn init_primary_alone(
        &self,
        node: &NodeSpec,
        log: &dyn StepLog,
    ) -> Result<(), ClusterError> {
        self.prepare_node(node, log).await?;
        if !self.runtime.data_dir(node).join("PG_VERSION").exists() {
            log.step(&format!("initialise primary `{}`", node.name));
            self.runtime.init_primary(node, self.spec.tls_on()).await?;
            self.tls_settings_into(node)?;
            self.save_record()?;
        }
        self.ensure_running(node, log).await?;
        self.configure_primary(node, log).await
    }
}
