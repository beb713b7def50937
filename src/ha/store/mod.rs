//! etcd access for one agent: its lease, its member record, the one-request view of the
//! cluster, the create-if-absent leader transaction, and writes guarded by holding the key.
//!
//! Every request is bounded by the timing's request timeout, so a hung endpoint costs a
//! renewal, never the fencing deadline.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchOptions, WatchStream,
};
use serde::de::DeserializeOwned;

use super::etcd_access::EtcdAccess;
use super::model::{Leader, View};
use super::records::{
    Keys, LeaderRecord, LeaseId, MemberRecord, PauseRecord, RoleRequest, SyncRecord,
};
use super::{HaError, Timing};
use crate::cluster::history::RoleChange;
use crate::ids::SystemId;

mod day2;

pub use self::day2::Day2;

pub struct Store {
    /// One client per endpoint: a request goes to the one that last answered and moves on when
    /// it cannot reach it, so a dead member costs one failed attempt, not every other request.
    clients: Vec<Client>,
    current: AtomicUsize,
    keys: Keys,
    endpoints: String,
    timeout: Duration,
}

impl Store {
    /// The agent's store: every request bounded by the timing's request timeout.
    pub async fn connect(
        access: &EtcdAccess,
        cluster: &str,
        timing: &Timing,
    ) -> Result<Store, HaError> {
        Store::open(access, cluster, timing.request_timeout()).await
    }

    /// A store whose requests each take at most `timeout` (`status` and `up` read with it).
    pub async fn open(
        access: &EtcdAccess,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Store, HaError> {
        let endpoints = &access.endpoints;
        let joined = endpoints.join(",");
        let options = access
            .options()?
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_millis(500), timeout)
            .with_keep_alive_while_idle(true);
        let mut clients = Vec::new();
        for endpoint in endpoints {
            let client = bounded(
                Duration::from_secs(5),
                Client::connect([endpoint], Some(options.clone())),
            )
            .await?
            .map_err(|source| HaError::Etcd {
                endpoints: endpoint.clone(),
                source: Box::new(source),
            })?;
            clients.push(client);
        }
        if clients.is_empty() {
            return Err(HaError::NoEtcdEndpoint);
        }
        Ok(Store {
            clients,
            current: AtomicUsize::new(0),
            keys: Keys::new(cluster),
            endpoints: joined,
            timeout,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs one request within the timeout: on the endpoint that last answered, then on the
    /// next ones while an endpoint cannot be reached.
    async fn call<T, F, Fut>(&self, request: F) -> Result<T, HaError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let first = self.current.load(Ordering::Relaxed);
        let mut failure = None;
        for attempt in 0..self.clients.len() {
            let i = (first + attempt) % self.clients.len();
            match tokio::time::timeout_at(deadline, request(self.clients[i].clone())).await {
                Ok(Ok(value)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(e)) if unreachable_endpoint(&e) || auth_changed(&e) => failure = Some(e),
                // The client's own timeout: as below (a member that lost its leader holds a
                // request until it has one again, and a member cut off from the others never).
                Ok(Err(etcd_client::Error::GRpcStatus(status)))
                    if status.code() == tonic::Code::Cancelled =>
                {
                    self.current.store(i + 1, Ordering::Relaxed);
                    return Err(HaError::EtcdTimeout(self.timeout));
                }
                Ok(Err(e)) => {
                    return Err(HaError::Etcd {
                        endpoints: self.endpoints.clone(),
                        source: Box::new(e),
                    })
                }
                // A hung endpoint used the whole budget: the next request starts elsewhere.
                Err(_) => {
                    self.current.store(i + 1, Ordering::Relaxed);
                    return Err(HaError::EtcdTimeout(self.timeout));
                }
            }
        }
        Err(HaError::Etcd {
            endpoints: self.endpoints.clone(),
            source: Box::new(failure.expect("at least one endpoint was tried")),
        })
    }

    pub async fn grant(&self, ttl: Duration) -> Result<LeaseId, HaError> {
        let ttl = ttl.as_secs() as i64;
        let lease = self
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?;
        Ok(LeaseId(lease.id()))
    }

    /// One renewal: true when the lease lives on, false when etcd no longer has it.
    pub async fn renew(&self, lease: LeaseId) -> Result<bool, HaError> {
        let LeaseId(lease) = lease;
        // Opening the keep-alive stream sends the first renewal and waits for its answer, which
        // is all one renewal needs.
        let renewal = self
            .call(|mut c| async move { c.lease_keep_alive(lease).await })
            .await;
        match renewal {
            Ok(_) => Ok(true),
            Err(HaError::Etcd { source, .. }) if matches!(&*source, etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found")) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Revokes the lease: the leader key and member record it holds vanish at once.
    pub async fn revoke(&self, lease: LeaseId) -> Result<(), HaError> {
        let LeaseId(lease) = lease;
        self.call(|mut c| async move { c.lease_revoke(lease).await })
            .await
            .map(drop)
    }

    pub async fn publish(&self, record: &MemberRecord, lease: LeaseId) -> Result<(), HaError> {
        self.put_leased(self.keys.member(&record.node), record, lease)
            .await
    }

    /// Puts `record` at `key` under `lease`: it goes when the lease does.
    async fn put_leased(
        &self,
        key: String,
        record: &impl serde::Serialize,
        lease: LeaseId,
    ) -> Result<(), HaError> {
        let value = serde_json::to_string(record).expect("records serialise");
        let options = PutOptions::new().with_lease(lease.0);
        self.call(|mut c| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.put(key, value, Some(options)).await }
        })
        .await
        .map(drop)
    }

    /// Every key under `prefix`, in key order.
    async fn get_prefix(&self, prefix: &str) -> Result<Vec<etcd_client::KeyValue>, HaError> {
        let response = self
            .call(|mut c| {
                let prefix = prefix.to_owned();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(response.kvs().to_vec())
    }

    /// The key's value and the revision it was last written at.
    async fn get_one(&self, key: &str) -> Result<Option<etcd_client::KeyValue>, HaError> {
        let response = self
            .call(|mut c| {
                let key = key.to_owned();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(response.kvs().first().cloned())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, HaError> {
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// The leader key, every member record, the sync record and the requests, from one
    /// revision, as the holder of `lease` sees them (`Leader::mine`).
    pub async fn view(&self, lease: LeaseId) -> Result<View, HaError> {
        let mut view = self.snapshot().await?;
        if let Some(leader) = &mut view.leader {
            leader.mine = leader.lease == lease;
        }
        Ok(view)
    }

    /// Everything a reader of the cluster's state needs, from one revision (`Leader::mine`
    /// unset: a reader holds no lease).
    pub async fn snapshot(&self) -> Result<View, HaError> {
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.leader(), None),
            TxnOp::get(self.keys.members(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(self.keys.sync(), None),
            TxnOp::get(self.keys.pause(), None),
            TxnOp::get(self.keys.switchover(), None),
            TxnOp::get(self.keys.failover(), None),
            TxnOp::get(self.keys.system_id(), None),
        ]);
        let response = self.txn(txn).await?;
        let mut gets = response.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(get) => get,
            _ => unreachable!("the transaction only reads"),
        });
        let (leader, members, sync) = (gets.next(), gets.next(), gets.next());
        let kvs = |get: Option<etcd_client::GetResponse>| {
            get.map(|g| g.kvs().to_vec()).unwrap_or_default()
        };
        let (pause, switchover, failover, system_id) = (
            self.optional(&self.keys.pause(), kvs(gets.next()))?,
            self.optional(&self.keys.switchover(), kvs(gets.next()))?,
            self.optional(&self.keys.failover(), kvs(gets.next()))?,
            self.optional(&self.keys.system_id(), kvs(gets.next()))?,
        );
        let leader = match kvs(leader).first() {
            Some(kv) => {
                let record: LeaderRecord = decode(&self.keys.leader(), kv.value())?;
                Some(Leader {
                    node: record.node,
                    lease: LeaseId(kv.lease()),
                    mine: false,
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
            pause,
            switchover,
            failover,
            system_id,
        })
    }

    /// Whole seconds the lease has left (etcd truncates), `None` once it is gone.
    pub async fn time_left(&self, lease: LeaseId) -> Result<Option<i64>, HaError> {
        let LeaseId(lease) = lease;
        let response = self
            .call(|mut c| async move { c.lease_time_to_live(lease, None).await })
            .await?;
        // etcd answers -1 for a lease it no longer has.
        Ok((response.ttl() >= 0).then_some(response.ttl()))
    }

    fn optional<T: DeserializeOwned>(
        &self,
        key: &str,
        kvs: Vec<etcd_client::KeyValue>,
    ) -> Result<Option<T>, HaError> {
        kvs.first().map(|kv| decode(key, kv.value())).transpose()
    }

    /// Creates the leader key under `lease` if nobody holds it and the keys are those of the
    /// cluster `system_id` (writing it with the key when none is recorded); true when this
    /// agent now leads.
    pub async fn take_leadership(
        &self,
        node: &str,
        lease: LeaseId,
        system_id: SystemId,
    ) -> Result<bool, HaError> {
        let (key, id_key) = (self.keys.leader(), self.keys.system_id());
        let id = serde_json::to_string(&system_id).expect("records serialise");
        let put = TxnOp::put(
            key.clone(),
            self.leader_value(node),
            Some(PutOptions::new().with_lease(lease.0)),
        );
        let absent = |key: &str| Compare::create_revision(key, CompareOp::Equal, 0);
        let ours = Txn::new()
            .when([
                absent(&key),
                Compare::value(id_key.clone(), CompareOp::Equal, id.clone()),
            ])
            .and_then([put.clone()]);
        if self.txn(ours).await?.succeeded() {
            return Ok(true);
        }
        let first = Txn::new()
            .when([absent(&key), absent(&id_key)])
            .and_then([put, TxnOp::put(id_key, id, None)]);
        Ok(self.txn(first).await?.succeeded())
    }

    /// Moves the leader key that an earlier run of this agent holds under `from` to `lease`;
    /// true when it did.
    pub async fn reclaim(
        &self,
        node: &str,
        from: LeaseId,
        lease: LeaseId,
    ) -> Result<bool, HaError> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([
                Compare::lease(key.clone(), CompareOp::Equal, from.0),
                Compare::value(key.clone(), CompareOp::Equal, self.leader_value(node)),
            ])
            .and_then([TxnOp::put(
                key,
                self.leader_value(node),
                Some(PutOptions::new().with_lease(lease.0)),
            )]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Deletes the leader key if `lease` holds it.
    pub async fn release(&self, lease: LeaseId) -> Result<bool, HaError> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease.0)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Records the cluster's system identifier if none is, while `lease` holds the leader key.
    pub async fn record_system_id(
        &self,
        lease: LeaseId,
        system_id: SystemId,
    ) -> Result<bool, HaError> {
        let id_key = self.keys.system_id();
        let id = serde_json::to_string(&system_id).expect("records serialise");
        let txn = Txn::new()
            .when([
                Compare::lease(self.keys.leader(), CompareOp::Equal, lease.0),
                Compare::create_revision(id_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(id_key, id, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    fn leader_value(&self, node: &str) -> String {
        serde_json::to_string(&LeaderRecord { node: node.into() }).expect("records serialise")
    }

    /// Claims the cluster's initialisation for `node` unless a node claimed it already (one
    /// create-if-absent transaction, like the leader key); returns the node holding the claim.
    pub async fn claim_initialize(&self, node: &str) -> Result<String, HaError> {
        let key = self.keys.initialize();
        let value =
            serde_json::to_string(&LeaderRecord { node: node.into() }).expect("records serialise");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(node.to_owned());
        }
        match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) if !get.kvs().is_empty() => {
                let record: LeaderRecord = decode(&key, get.kvs()[0].value())?;
                Ok(record.node)
            }
            // Deleted in between: nobody holds it, and the next attempt creates it.
            _ => Err(HaError::Vanished { key }),
        }
    }

    /// Writes the sync record only while `lease` holds the leader key; false when it does not.
    pub async fn write_sync(&self, record: &SyncRecord, lease: LeaseId) -> Result<bool, HaError> {
        let value = serde_json::to_string(record).expect("records serialise");
        let txn = Txn::new()
            .when([Compare::lease(
                self.keys.leader(),
                CompareOp::Equal,
                lease.0,
            )])
            .and_then([TxnOp::put(self.keys.sync(), value, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    pub async fn record_history(&self, record: &RoleChange) -> Result<(), HaError> {
        let key = self.keys.history(u128::from(record.at_unix_ms), &record.to);
        let value = serde_json::to_string(record).expect("records serialise");
        self.call(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await
        .map(drop)
    }

    /// Every role change recorded, oldest first (a record without its time has its key's).
    pub async fn history(&self) -> Result<Vec<RoleChange>, HaError> {
        self.get_prefix(&self.keys.histories())
            .await?
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let mut change: RoleChange = decode(&key, kv.value())?;
                if change.at_unix_ms == 0 {
                    change.at_unix_ms = self.keys.history_time(&key).unwrap_or(0);
                }
                Ok(change)
            })
            .collect()
    }

    /// Deletes every key of the cluster (`down --purge` on an etcd `up` did not start).
    pub async fn forget(&self) -> Result<(), HaError> {
        let prefix = self.keys.prefix().to_owned();
        self.call(|mut c| {
            let prefix = prefix.clone();
            async move {
                c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                    .await
            }
        })
        .await
        .map(drop)
    }

    /// Writes `timing` as the cluster's if no agent did yet; returns the cluster's.
    pub async fn agree_timing(&self, timing: &Timing) -> Result<Timing, HaError> {
        self.put_if_absent(self.keys.config(), timing).await
    }

    /// Writes `record` at `key` unless a value is there (one transaction); returns the value in
    /// force.
    async fn put_if_absent<T>(&self, key: String, record: &T) -> Result<T, HaError>
    where
        T: serde::Serialize + DeserializeOwned + Clone,
    {
        let value = serde_json::to_string(record).expect("records serialise");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = self.txn(txn).await?;
        match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) if !response.succeeded() && !get.kvs().is_empty() => {
                decode(&key, get.kvs()[0].value())
            }
            _ => Ok(record.clone()),
        }
    }

    /// A stream of every change under the cluster's prefix (it wakes the loop); the watch lasts
    /// as long as the stream is kept. Returns once etcd has confirmed the watch's creation.
    pub async fn watch(&self) -> Result<WatchStream, HaError> {
        let prefix = self.keys.prefix().to_owned();
        self.call(|mut c| {
            let prefix = prefix.clone();
            async move {
                let mut stream = c
                    .watch(prefix, Some(WatchOptions::new().with_prefix()))
                    .await?;
                match stream.message().await? {
                    Some(created) if created.created() && !created.canceled() => Ok(stream),
                    Some(refused) => Err(etcd_client::Error::WatchError(format!(
                        "watch not created: {}",
                        refused.cancel_reason()
                    ))),
                    None => Err(etcd_client::Error::WatchError(
                        "the watch stream ended before the watch was created".into(),
                    )),
                }
            }
        })
        .await
    }
}

/// What `pgrepl pause`/`resume`/`switchover`/`failover` write; the agents only read these,
/// except the leader's agent, which marks a switchover it refuses and hands its key over.
impl Store {
    /// Writes the pause key unless it exists; returns the one in force.
    pub async fn pause(&self, record: &PauseRecord) -> Result<PauseRecord, HaError> {
        self.put_if_absent(self.keys.pause(), record).await
    }

    /// Deletes the pause key; the record that was there, if any.
    pub async fn resume(&self) -> Result<Option<PauseRecord>, HaError> {
        let key = self.keys.pause();
        let deleted = self
            .call(|mut c| {
                let key = key.clone();
                async move {
                    c.delete(key, Some(etcd_client::DeleteOptions::new().with_prev_key()))
                        .await
                }
            })
            .await?;
        self.optional(&key, deleted.prev_kvs().to_vec())
    }

    /// Writes a request at `key` under a new lease of `ttl` (so it dies by itself), only if
    /// none is there and the leader key still says `leader` (`None`: no leader key). Returns the
    /// lease, or `None` when the condition failed.
    pub async fn request(
        &self,
        key: &str,
        request: &RoleRequest,
        leader: Option<&str>,
        ttl: Duration,
    ) -> Result<Option<LeaseId>, HaError> {
        let leader_is = match leader {
            Some(node) => Compare::value(
                self.keys.leader(),
                CompareOp::Equal,
                serde_json::to_string(&LeaderRecord { node: node.into() })
                    .expect("records serialise"),
            ),
            None => Compare::create_revision(self.keys.leader(), CompareOp::Equal, 0),
        };
        self.put_if_absent_leased(key, request, vec![leader_is], ttl)
            .await
    }

    /// Puts `record` at `key` under a new lease of `ttl` only if the key is absent and `when`
    /// holds; the lease, or `None` (and no lease left behind) when not.
    async fn put_if_absent_leased(
        &self,
        key: &str,
        record: &impl serde::Serialize,
        mut when: Vec<Compare>,
        ttl: Duration,
    ) -> Result<Option<LeaseId>, HaError> {
        let lease = self.grant(ttl).await?;
        let value = serde_json::to_string(record).expect("records serialise");
        when.push(Compare::create_revision(key, CompareOp::Equal, 0));
        let txn = Txn::new().when(when).and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease.0)),
        )]);
        if self.txn(txn).await?.succeeded() {
            Ok(Some(lease))
        } else {
            self.revoke(lease).await?;
            Ok(None)
        }
    }

    /// Marks the switchover request refused, keeping its lease; nothing if it is gone.
    pub async fn refuse_switchover(&self, request: &RoleRequest) -> Result<(), HaError> {
        let key = self.keys.switchover();
        let value = serde_json::to_string(request).expect("records serialise");
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_ignore_lease()),
            )]);
        self.txn(txn).await.map(drop)
    }

    /// Puts the leader key, held under `lease`, under the lease of `to`'s member record: `to`
    /// then holds it as if elected, and loses it if its agent dies. False when this agent no
    /// longer leads or `to` has no live record.
    pub async fn hand_over(&self, lease: LeaseId, to: &str) -> Result<bool, HaError> {
        let member = self.keys.member(to);
        let get = self
            .call(|mut c| {
                let member = member.clone();
                async move { c.get(member, None).await }
            })
            .await?;
        let Some(theirs) = get.kvs().first().map(|kv| kv.lease()) else {
            return Ok(false);
        };
        let value =
            serde_json::to_string(&LeaderRecord { node: to.into() }).expect("records serialise");
        let txn = Txn::new()
            .when([
                Compare::lease(self.keys.leader(), CompareOp::Equal, lease.0),
                Compare::lease(member, CompareOp::Equal, theirs),
            ])
            .and_then([TxnOp::put(
                self.keys.leader(),
                value,
                Some(PutOptions::new().with_lease(theirs)),
            )]);
        Ok(self.txn(txn).await?.succeeded())
    }
}

/// The endpoint could not be reached (down, refusing, no leader to forward to): another may.
/// etcd refused to apply a request checked against users and roles that changed before it was
/// applied (`ErrAuthOldRevision`): nothing was done, and the same request is checked again by
/// the next member, as etcd's own client retries it.
fn auth_changed(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("revision of auth store is old"))
}

fn unreachable_endpoint(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
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
