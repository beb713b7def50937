//! The schedule's faults, started and ended.

use super::*;

impl World {
    pub(super) fn fault_start(&mut self, i: usize) {
        self.epoch += 1;
        let fault = self.schedule.faults[i].1.clone();
        self.log(|| format!("FAULT {fault}"));
        let end = self.now + fault.duration();
        match fault {
            Fault::AgentCrash { node, .. } => self.agent_dies(node, end),
            Fault::NodeLoss { node, .. } => {
                self.agent_dies(node, end);
                self.kill(node);
            }
            Fault::ServerCrash { node } => self.kill(node),
            Fault::AgentFreeze { node, .. } => {
                if self.agents[node].core.is_some() {
                    self.agents[node].frozen = true;
                    let inc = self.agents[node].inc;
                    self.at(end, Ev::Unfreeze { node, inc });
                }
            }
            Fault::ServerStuck { node, .. } => {
                if self.servers[node].run != (Run::Stopped { clean: false })
                    && self.servers[node].run != (Run::Stopped { clean: true })
                {
                    self.servers[node].hung = true;
                    self.hung_at[node] = self.now;
                    self.stuck[node] = end;
                    self.at(end, Ev::FaultEnd(i));
                }
            }
            Fault::ServerHang { node, .. } => {
                if self.servers[node].run != (Run::Stopped { clean: false })
                    && self.servers[node].run != (Run::Stopped { clean: true })
                {
                    self.servers[node].hung = true;
                    self.hung_at[node] = self.now;
                    self.at(end, Ev::FaultEnd(i));
                }
            }
            Fault::Partition { a, b, .. } => {
                self.cuts.push((a, b));
                if let (Peer::Node(x), Peer::Node(y)) = (a, b) {
                    for (s, u) in [(x, y), (y, x)] {
                        if self.servers[s].upstream == Some(u) {
                            self.disconnect(s);
                        }
                    }
                }
                self.at(end, Ev::FaultEnd(i));
            }
            Fault::EtcdLeaderChange { .. } | Fault::EtcdQuorumLoss { .. } => {
                self.etcd.down_until = self.etcd.down_until.max(end);
                self.at(end, Ev::FaultEnd(i));
            }
            Fault::SlowReplay {
                node,
                per_record_ms,
                ..
            } => self.slow_replay[node] = (end, per_record_ms),
            Fault::SlowFsync { node, fsync_ms, .. } => self.slow_fsync[node] = (end, fsync_ms),
            Fault::CannotStart { node, .. } => self.cannot_start[node] = end,
            Fault::Jitter { extra_ms, .. } => self.jitter = (end, extra_ms),
            Fault::SlowReload { delay_ms, .. } => self.reload_delay = (end, delay_ms),
            Fault::Pause { .. } => {
                self.etcd.set_pause(Some(PauseRecord {
                    by: "sim".into(),
                    at_unix_ms: self.now,
                }));
                self.pause_since = Some(self.now);
                self.wake_all(None);
                self.at(end, Ev::FaultEnd(i));
            }
            Fault::Switchover { to } => self.switchover(to),
            Fault::BulkWrite { size } => {
                if let Some(node) = (0..self.servers.len()).find(|&i| self.servers[i].writable()) {
                    self.servers[node].flushed += size;
                    self.send_wal(node);
                }
            }
            Fault::AgentDiesAfterSyncRecord { node, down_ms } => {
                self.agents[node].die_after_sync = Some(down_ms);
            }
            Fault::PolicyChange { policy } => {
                let names = self.spec.sync.policy.names.clone();
                self.spec.sync.policy = policy.over(&names);
                for node in 0..self.agents.len() {
                    self.after(300 * node as u64, Ev::Restart { node });
                }
            }
            // One other cluster at a time.
            Fault::ForeignCluster { .. } if self.foreign.is_some() => {}
            Fault::ForeignCluster { leader, .. } => {
                self.foreign = Some(i);
                let name = self.names[leader].clone();
                let others: Vec<String> =
                    self.names.iter().filter(|n| **n != name).cloned().collect();
                let lease = self.etcd.grant(self.now, 3_600_000);
                self.ours = self.etcd.sync.take();
                self.etcd.foreign(
                    name.clone(),
                    lease,
                    pgrepl::ha::records::SyncRecord::new(
                        &name,
                        SyncPolicy::new(SyncMethod::Priority, 1, others),
                    ),
                    self.servers[0].system_id + 1,
                );
                self.foreign_since = Some(self.now);
                self.wake_all(None);
                self.at(end, Ev::FaultEnd(i));
            }
        }
    }

    /// Another hang or stuck fault of `node` than fault `i` still lasts: the end of `i` does
    /// not wake the server (a hang that ends inside a stuck I/O left it running, past its
    /// fence).
    fn hung_by_another(&self, i: usize, node: usize) -> bool {
        self.schedule.faults.iter().enumerate().any(|(j, (at, f))| {
            let same = matches!(f, Fault::ServerHang { node: m, .. } | Fault::ServerStuck { node: m, .. } if *m == node);
            j != i && same && *at <= self.now && at + f.duration() > self.now
        })
    }

    pub(super) fn fault_end(&mut self, i: usize) {
        self.epoch += 1;
        let fault = self.schedule.faults[i].1.clone();
        self.log(|| format!("END {fault}"));
        match fault {
            // The pending kill lands when the last fault holding the server ends.
            Fault::ServerStuck { node, .. }
                if !self.hung_by_another(i, node)
                    && std::mem::take(&mut self.kill_pending[node]) =>
            {
                self.servers[node].hung = false;
                self.kill(node);
            }
            Fault::ServerHang { node, .. } | Fault::ServerStuck { node, .. }
                if self.servers[node].hung && !self.hung_by_another(i, node) =>
            {
                self.servers[node].hung = false;
                // Its walsenders and walreceiver pick up where they stopped.
                self.send_wal(node);
                for j in 0..self.servers[node].senders.len() {
                    let w = &self.servers[node].senders[j];
                    let (standby, flush) = (w.standby, self.servers[w.standby].flushed);
                    let gen = self.conns[standby];
                    let feedback = Ev::Feedback {
                        primary: node,
                        standby,
                        flush,
                        gen,
                    };
                    self.after(1, feedback);
                }
                self.try_connect(node);
                self.schedule_replay(node);
            }
            Fault::Partition { a, b, .. } => {
                if let Some(k) = self.cuts.iter().position(|&c| c == (a, b)) {
                    self.cuts.remove(k);
                }
                for node in 0..self.servers.len() {
                    self.try_connect(node);
                }
                self.wake_all(None);
            }
            Fault::EtcdLeaderChange { .. } | Fault::EtcdQuorumLoss { .. }
                if self.etcd.available(self.now) =>
            {
                self.etcd.promote_leader(self.now);
                self.wake_all(None);
            }
            Fault::Pause { .. } => {
                self.etcd.set_pause(None);
                self.pause_since = None;
                self.wake_all(None);
            }
            Fault::ForeignCluster { .. } if self.foreign == Some(i) => {
                self.foreign = None;
                let ours = self.ours.take();
                self.etcd.unforeign(ours);
                self.foreign_since = None;
                self.wake_all(None);
            }
            _ => {}
        }
    }

    /// The agent process dies (its lease lives on until it expires); its service manager
    /// starts it again at `back_at`.
    pub(super) fn agent_dies(&mut self, node: usize, back_at: u64) {
        let agent = &mut self.agents[node];
        agent.inc += 1;
        agent.frozen = false;
        agent.parked.clear();
        agent.core = None;
        agent.phase = Phase::Idle;
        agent.lease_effects.clear();
        let inc = agent.inc;
        self.log(|| format!("n{}: agent killed", node + 1));
        self.at(back_at, Ev::AgentStart { node, inc });
    }

    /// `pgrepl switchover [--to]`: the command's checks, then the request under its lease.
    pub(super) fn switchover(&mut self, to: Option<usize>) {
        let view = self.etcd.view(LeaseId(0));
        let to = to.map(|t| self.names[t].clone());
        let Ok((from, to)) = pgrepl::ha::requests::switchover_target(&view, to.as_deref()) else {
            return self.log(|| "switchover refused by the command's checks".into());
        };
        let request = RoleRequest {
            from,
            to,
            by: "sim".into(),
            at_unix_ms: self.now,
            refused: None,
        };
        if self.etcd.available(self.now) && self.etcd.request_switchover(self.now, request, 10_000)
        {
            self.wake_all(None);
        }
    }
}
