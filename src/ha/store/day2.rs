//! What `pgrepl config` and `pgrepl restart` exchange with the agents through etcd: the
//! settings record (written compare-and-swap, so two operators never lose each other's change),
//! each agent's report of it, and restart requests.

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::{decode, Store};
use crate::cluster::settings::Desired;
use crate::ha::records::{AppliedRecord, LeaseId, RestartRequest};
use crate::ha::HaError;

/// What an agent reads in an idle round, from one revision.
#[derive(Debug, Clone, Default)]
pub struct Day2 {
    pub settings: Option<Desired>,
    pub applied: Vec<AppliedRecord>,
    /// A restart asked of this agent's node.
    pub restart: Option<RestartRequest>,
}

impl Store {
    /// The settings record and the revision it was written at (0: none yet).
    pub async fn settings(&self) -> Result<(Desired, i64), HaError> {
        let key = self.keys.settings();
        match self.get_one(&key).await? {
            Some(kv) => Ok((decode(&key, kv.value())?, kv.mod_revision())),
            None => Ok((Desired::default(), 0)),
        }
    }

    /// Writes `next` only if the record is still the one read at `revision`; false when
    /// someone changed it meanwhile.
    pub async fn put_settings(&self, next: &Desired, revision: i64) -> Result<bool, HaError> {
        let key = self.keys.settings();
        let value = serde_json::to_string(next).expect("records serialise");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Every agent's report on the settings.
    pub async fn applied(&self) -> Result<Vec<AppliedRecord>, HaError> {
        self.get_prefix(&self.keys.applied_all())
            .await?
            .iter()
            .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect()
    }

    /// This agent's report, under its lease: it goes when the agent does.
    pub async fn publish_applied(
        &self,
        record: &AppliedRecord,
        lease: LeaseId,
    ) -> Result<(), HaError> {
        self.put_leased(self.keys.applied(&record.node), record, lease)
            .await
    }

    /// The settings, every report and a restart asked of `node`, in one request.
    pub async fn day2(&self, node: &str) -> Result<Day2, HaError> {
        let (settings, applied, restart) = (
            self.keys.settings(),
            self.keys.applied_all(),
            self.keys.restart(node),
        );
        let txn = Txn::new().and_then([
            TxnOp::get(settings.clone(), None),
            TxnOp::get(applied, Some(GetOptions::new().with_prefix())),
            TxnOp::get(restart.clone(), None),
        ]);
        let response = self.txn(txn).await?;
        let mut kvs = response.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().to_vec(),
            _ => unreachable!("the transaction only reads"),
        });
        let (settings_kvs, applied_kvs, restart_kvs) = (
            kvs.next().unwrap_or_default(),
            kvs.next().unwrap_or_default(),
            kvs.next().unwrap_or_default(),
        );
        Ok(Day2 {
            settings: self.optional(&settings, settings_kvs)?,
            applied: applied_kvs
                .iter()
                .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
                .collect::<Result<_, _>>()?,
            restart: self.optional(&restart, restart_kvs)?,
        })
    }

    /// Asks `node`'s agent to restart its server, under a new lease of `ttl` so the request
    /// dies by itself; `None` when a restart is already asked of it.
    pub async fn request_restart(
        &self,
        node: &str,
        request: &RestartRequest,
        ttl: std::time::Duration,
    ) -> Result<Option<LeaseId>, HaError> {
        self.put_if_absent_leased(&self.keys.restart(node), request, Vec::new(), ttl)
            .await
    }

    /// The restart asked of `node`, if any is still there.
    pub async fn restart_request(&self, node: &str) -> Result<Option<RestartRequest>, HaError> {
        let key = self.keys.restart(node);
        let kv = self.get_one(&key).await?;
        kv.map(|kv| decode(&key, kv.value())).transpose()
    }

    /// The agent's answer: the request deleted once its server restarted, or marked failed
    /// (keeping the requester's lease).
    pub async fn restart_done(&self, node: &str, failed: Option<String>) -> Result<(), HaError> {
        let key = self.keys.restart(node);
        let Some(mut request) = self.restart_request(node).await? else {
            return Ok(());
        };
        let op = match failed {
            None => TxnOp::delete(key.clone(), None),
            Some(why) => {
                request.failed = Some(why);
                let value = serde_json::to_string(&request).expect("records serialise");
                TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_ignore_lease()),
                )
            }
        };
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Greater, 0)])
            .and_then([op]);
        self.txn(txn).await.map(drop)
    }
}
