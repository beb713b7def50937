//! A model of etcd as the agents use it: one linearizable store with a revision, leases that
//! expire `ttl` after the last renewal that reached the leader (checked every 500 ms, as etcd's
//! lessor does), and the agents' transactions with the same compares as `ha::store` sends.
//! Unavailability (no quorum, a leader election) fails every request; a new leader extends
//! every lease to a full TTL (`lessor.Promote`).

use std::collections::BTreeMap;
use std::rc::Rc;

use pgrepl::ha::model::{Leader, View};
use pgrepl::ha::records::{LeaseId, MemberRecord, PauseRecord, RoleRequest, SyncRecord};
use pgrepl::ids::SystemId;

/// etcd's lessor looks for expired leases this often.
pub const EXPIRY_CHECK_MS: u64 = 500;

#[derive(Debug, Clone)]
pub struct Lease {
    pub ttl_ms: u64,
    pub expires_at: u64,
}

#[derive(Debug, Default)]
pub struct Etcd {
    pub revision: u64,
    pub leases: BTreeMap<i64, Lease>,
    next_lease: i64,
    /// The leader key: node and lease.
    pub leader: Option<(String, LeaseId)>,
    pub members: BTreeMap<String, (MemberRecord, LeaseId)>,
    pub sync: Option<SyncRecord>,
    pub pause: Option<PauseRecord>,
    pub switchover: Option<(RoleRequest, LeaseId)>,
    /// No request is served until then (no quorum, or electing a leader).
    pub down_until: u64,
    /// The system identifier the cluster's keys belong to.
    pub system_id: Option<u64>,
    /// Another cluster's: its lease and the system identifier ours had.
    foreign: Option<(LeaseId, Option<u64>)>,
    /// The view of one revision, for every reader of it.
    cache: Option<(u64, Rc<View>)>,
}

impl Etcd {
    pub fn available(&self, now: u64) -> bool {
        now >= self.down_until
    }

    fn bump(&mut self) {
        self.revision += 1;
    }

    pub fn grant(&mut self, now: u64, ttl_ms: u64) -> LeaseId {
        self.next_lease += 1;
        self.leases.insert(
            self.next_lease,
            Lease {
                ttl_ms,
                expires_at: now + ttl_ms,
            },
        );
        LeaseId(self.next_lease)
    }

    /// A keep-alive reaching the leader: false when the lease is gone (expired counts as gone,
    /// as etcd's `Renew` answers for a lease past its time).
    pub fn renew(&mut self, now: u64, lease: LeaseId) -> bool {
        match self.leases.get_mut(&lease.0) {
            Some(l) if l.expires_at > now => {
                l.expires_at = now + l.ttl_ms;
                true
            }
            _ => false,
        }
    }

    fn alive(&self, lease: LeaseId) -> bool {
        self.leases.contains_key(&lease.0)
    }

    /// The lessor's check: revokes expired leases and deletes their keys. True when something
    /// changed (the watchers wake).
    pub fn expire(&mut self, now: u64) -> bool {
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut changed = false;
        for id in expired {
            changed |= self.revoke(LeaseId(id));
        }
        changed
    }

    pub fn revoke(&mut self, lease: LeaseId) -> bool {
        if self.leases.remove(&lease.0).is_none() {
            return false;
        }
        let before = (
            self.leader.clone(),
            self.members.len(),
            self.switchover.is_some(),
        );
        if self.held_by(lease) {
            self.leader = None;
        }
        self.members.retain(|_, (_, l)| *l != lease);
        if self.switchover.as_ref().is_some_and(|(_, l)| *l == lease) {
            self.switchover = None;
        }
        let changed = before
            != (
                self.leader.clone(),
                self.members.len(),
                self.switchover.is_some(),
            );
        if changed {
            self.bump();
        }
        changed
    }

    /// A new etcd leader: every lease restarts at its full TTL.
    pub fn promote_leader(&mut self, now: u64) {
        for lease in self.leases.values_mut() {
            lease.expires_at = lease.expires_at.max(now + lease.ttl_ms);
        }
    }

    /// The leader key is held under `lease`.
    fn held_by(&self, lease: LeaseId) -> bool {
        self.leader.as_ref().is_some_and(|(_, l)| *l == lease)
    }

    pub fn publish(&mut self, record: MemberRecord, lease: LeaseId) -> bool {
        if !self.alive(lease) {
            return false;
        }
        self.members.insert(record.node.clone(), (record, lease));
        self.bump();
        true
    }

    /// `Store::view` as `lease`'s holder sees it, shared between the readers of one revision
    /// (the one holding the leader key gets its own copy, with `mine` set).
    pub fn shared_view(&mut self, lease: LeaseId) -> Rc<View> {
        let current = match &self.cache {
            Some((revision, view)) if *revision == self.revision => view.clone(),
            _ => {
                let view = Rc::new(self.view(LeaseId(0)));
                self.cache = Some((self.revision, view.clone()));
                view
            }
        };
        match current.leader.as_ref() {
            Some(leader) if leader.lease == lease => {
                let mut own = (*current).clone();
                own.leader.as_mut().expect("a leader").mine = true;
                Rc::new(own)
            }
            _ => current,
        }
    }

    /// `Store::view`: one revision's leader, members, sync record and requests.
    pub fn view(&self, lease: LeaseId) -> View {
        View {
            leader: self.leader.as_ref().map(|(node, holder)| Leader {
                node: node.clone(),
                lease: *holder,
                mine: *holder == lease,
            }),
            members: self.members.values().map(|(r, _)| r.clone()).collect(),
            sync: self.sync.clone(),
            pause: self.pause.clone(),
            switchover: self.switchover.as_ref().map(|(r, _)| r.clone()),
            failover: None,
            system_id: self.system_id.map(SystemId::new),
        }
    }

    /// `Store::take_leadership`: create the key under `lease` if its create revision is 0 and
    /// the system identifier is ours, or absent (then written with it).
    pub fn take_leadership(&mut self, node: &str, lease: LeaseId, system_id: u64) -> bool {
        if self.leader.is_some()
            || !self.alive(lease)
            || self.system_id.is_some_and(|id| id != system_id)
        {
            return false;
        }
        self.leader = Some((node.to_owned(), lease));
        self.system_id = Some(system_id);
        self.bump();
        true
    }

    /// `Store::reclaim`: the key moves from `from` to `lease` if `from` holds it for `node`.
    pub fn reclaim(&mut self, node: &str, from: LeaseId, lease: LeaseId) -> bool {
        if self.leader != Some((node.to_owned(), from)) || !self.alive(lease) {
            return false;
        }
        self.leader = Some((node.to_owned(), lease));
        self.bump();
        true
    }

    /// `Store::release`: the key goes if `lease` holds it.
    pub fn release(&mut self, lease: LeaseId) -> bool {
        if !self.held_by(lease) {
            return false;
        }
        self.leader = None;
        self.bump();
        true
    }

    /// `Store::record_system_id`: if none is, while `lease` holds the key.
    pub fn record_system_id(&mut self, lease: LeaseId, system_id: u64) -> bool {
        if self.system_id.is_some() || !self.held_by(lease) {
            return false;
        }
        self.system_id = Some(system_id);
        self.bump();
        true
    }

    /// `Store::write_sync`: put the record if the leader key's lease is `lease`.
    pub fn write_sync(&mut self, record: SyncRecord, lease: LeaseId) -> bool {
        if !self.held_by(lease) {
            return false;
        }
        self.sync = Some(record);
        self.bump();
        true
    }

    /// `Store::hand_over`: the leader key moves from `lease` to the lease of `to`'s record.
    pub fn hand_over(&mut self, lease: LeaseId, to: &str) -> bool {
        let Some((_, theirs)) = self.members.get(to) else {
            return false;
        };
        let theirs = *theirs;
        if !self.held_by(lease) {
            return false;
        }
        self.leader = Some((to.to_owned(), theirs));
        self.bump();
        true
    }

    /// `Store::refuse_switchover`: rewrite the request if it exists, keeping its lease.
    pub fn refuse_switchover(&mut self, request: RoleRequest) {
        if let Some((held, _)) = &mut self.switchover {
            *held = request;
            self.bump();
        }
    }

    /// `Store::request` for a switchover: under a new lease, if none is under way and the
    /// leader key names `from`.
    pub fn request_switchover(&mut self, now: u64, request: RoleRequest, ttl_ms: u64) -> bool {
        let leads = self
            .leader
            .as_ref()
            .is_some_and(|(n, _)| *n == request.from);
        if self.switchover.is_some() || !leads {
            return false;
        }
        let lease = self.grant(now, ttl_ms);
        self.switchover = Some((request, lease));
        self.bump();
        true
    }

    /// Another cluster's keys replace ours (a shared scope, or a restored snapshot).
    pub fn foreign(&mut self, leader: String, lease: LeaseId, sync: SyncRecord, system_id: u64) {
        self.foreign = Some((lease, self.system_id));
        self.leader = Some((leader, lease));
        self.sync = Some(sync);
        self.system_id = Some(system_id);
        self.bump();
    }

    /// The other cluster's keys go; ours come back.
    pub fn unforeign(&mut self, ours: Option<SyncRecord>) {
        if let Some((lease, system_id)) = self.foreign.take() {
            self.revoke(lease);
            self.sync = ours;
            self.system_id = system_id;
            self.bump();
        }
    }

    pub fn set_pause(&mut self, pause: Option<PauseRecord>) {
        self.pause = pause;
        self.bump();
    }
}
