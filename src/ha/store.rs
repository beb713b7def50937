//! etcd access for one agent: its lease, its member record, the one-request view of the
//! cluster, the create-if-absent leader transaction, and writes guarded by holding the key.
//!
//! Every request is bounded by the timing's request timeout, so a hung endpoint costs a
//! renewal, never the fencing deadline.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream, Watcher,
};
use serde::de::DeserializeOwned;

use super::decide::{Leader, View};
use super::records::{HistoryRecord, Keys, LeaderRecord, MemberRecord, SyncRecord};
use super::{HaError, Timing};

pub struct Store {
    client: Client,
    keys: Keys,
    endpoints: String,
    timeout: Duration,
}

impl Store {
    pub async fn connect(
        endpoints: &[String],
        cluster: &str,
        timing: &Timing,
    ) -> Result<Store, HaError> {
        let timeout = timing.request_timeout();
        let joined = endpoints.join(",");
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            // Notice a dead endpoint's connection quickly, so requests move to the others.
            .with_keep_alive(Duration::from_millis(500), timeout)
            .with_keep_alive_while_idle(true);
        let client = bounded(
            Duration::from_secs(5),
            Client::connect(endpoints, Some(options)),
        )
        .await?
        .map_err(|source| HaError::Etcd {
            endpoints: joined.clone(),
            source: Box::new(source),
        })?;
        Ok(Store {
            client,
            keys: Keys::new(cluster),
            endpoints: joined,
            timeout,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs one request within the timeout, naming the endpoints in its error.
    async fn call<T, F>(&self, request: F) -> Result<T, HaError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        bounded(self.timeout, request)
            .await?
            .map_err(|source| HaError::Etcd {
                endpoints: self.endpoints.clone(),
                source: Box::new(source),
            })
    }

    pub async fn grant(&self, ttl: Duration) -> Result<i64, HaError> {
        let mut client = self.client.clone();
        let lease = self
            .call(client.lease_grant(ttl.as_secs() as i64, None))
            .await?;
        Ok(lease.id())
    }

    /// One renewal: true when the lease lives on, false when etcd no longer has it.
    pub async fn renew(&self, lease: i64) -> Result<bool, HaError> {
        let mut client = self.client.clone();
        // Opening the keep-alive stream sends the first renewal and waits for its answer, which
        // is all one renewal needs.
        match self.call(client.lease_keep_alive(lease)).await {
            Ok(_) => Ok(true),
            Err(HaError::Etcd { source, .. }) if matches!(&*source, etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found")) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Revokes the lease: the leader key and member record it holds vanish at once.
    pub async fn revoke(&self, lease: i64) -> Result<(), HaError> {
        let mut client = self.client.clone();
        self.call(client.lease_revoke(lease)).await.map(drop)
    }

    pub async fn publish(&self, record: &MemberRecord, lease: i64) -> Result<(), HaError> {
        let mut client = self.client.clone();
        let key = self.keys.member(&record.node);
        let value = serde_json::to_string(record).expect("records serialise");
        self.call(client.put(key, value, Some(PutOptions::new().with_lease(lease))))
            .await
            .map(drop)
    }

    /// The leader key, every member record and the sync record, from one revision.
    pub async fn view(&self, lease: i64) -> Result<View, HaError> {
        let mut client = self.client.clone();
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.leader(), None),
            TxnOp::get(self.keys.members(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(self.keys.sync(), None),
        ]);
        let response = self.call(client.txn(txn)).await?;
        let mut gets = response.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(get) => get,
            _ => unreachable!("the transaction only reads"),
        });
        let (leader, members, sync) = (gets.next(), gets.next(), gets.next());
        let kvs = |get: Option<etcd_client::GetResponse>| {
            get.map(|g| g.kvs().to_vec()).unwrap_or_default()
        };
        let leader = match kvs(leader).first() {
            Some(kv) => {
                let record: LeaderRecord = decode(&self.keys.leader(), kv.value())?;
                Some(Leader {
                    node: record.node,
                    mine: kv.lease() == lease,
                })
            }
            None => None,
        };
        let members = kvs(members)
            .iter()
            .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect::<Result<Vec<MemberRecord>, _>>()?;
        let sync = match kvs(sync).first() {
            Some(kv) => Some(decode(&self.keys.sync(), kv.value())?),
            None => None,
        };
        Ok(View {
            leader,
            members,
            sync,
        })
    }

    /// Creates the leader key under `lease` if nobody holds it; true when this agent now leads.
    pub async fn take_leadership(&self, node: &str, lease: i64) -> Result<bool, HaError> {
        let mut client = self.client.clone();
        let key = self.keys.leader();
        let value =
            serde_json::to_string(&LeaderRecord { node: node.into() }).expect("records serialise");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(self.call(client.txn(txn)).await?.succeeded())
    }

    /// Writes the sync record only while `lease` holds the leader key; false when it does not.
    pub async fn write_sync(&self, record: &SyncRecord, lease: i64) -> Result<bool, HaError> {
        let mut client = self.client.clone();
        let value = serde_json::to_string(record).expect("records serialise");
        let txn = Txn::new()
            .when([Compare::lease(self.keys.leader(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(self.keys.sync(), value, None)]);
        Ok(self.call(client.txn(txn)).await?.succeeded())
    }

    pub async fn record_history(&self, record: &HistoryRecord) -> Result<(), HaError> {
        let mut client = self.client.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let value = serde_json::to_string(record).expect("records serialise");
        self.call(client.put(self.keys.history(now, &record.to), value, None))
            .await
            .map(drop)
    }

    /// Writes `timing` as the cluster's if no agent did yet; returns the cluster's.
    pub async fn agree_timing(&self, timing: &Timing) -> Result<Timing, HaError> {
        let mut client = self.client.clone();
        let key = self.keys.config();
        let value = serde_json::to_string(timing).expect("timings serialise");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = self.call(client.txn(txn)).await?;
        if response.succeeded() {
            return Ok(*timing);
        }
        match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) if !get.kvs().is_empty() => {
                decode(&key, get.kvs()[0].value())
            }
            _ => Ok(*timing),
        }
    }

    /// A stream of every change under the cluster's prefix (it wakes the loop); the watch lasts
    /// as long as its watcher is kept.
    pub async fn watch(&self) -> Result<(Watcher, WatchStream), HaError> {
        let mut client = self.client.clone();
        self.call(client.watch(self.keys.prefix(), Some(WatchOptions::new().with_prefix())))
            .await
    }
}

async fn bounded<T>(limit: Duration, work: impl Future<Output = T>) -> Result<T, HaError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| HaError::EtcdTimeout(limit))
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, HaError> {
    serde_json::from_slice(value).map_err(|source| HaError::Record {
        key: key.to_owned(),
        source,
    })
}
