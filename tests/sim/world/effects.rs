//! The core's effects, carried out against the etcd and server models.

use super::*;

/// The effects, against the server and etcd models.
impl World {
    pub(super) fn effect(
        &mut self,
        target: (usize, u32, Lane, u64),
        effect: Effect,
        lease: LeaseId,
        etcd_ok: bool,
        timeout: u64,
        back: u64,
    ) {
        let (node, inc, lane, op) = target;
        let done =
            |w: &mut World, ok: bool, at: u64| w.respond(node, inc, lane, op, Reply::Done(ok), at);
        // etcd writes: applied when etcd serves them, answered unless too late.
        let etcd = |w: &mut World, ok: bool| {
            if back <= timeout {
                done(w, ok, back)
            } else {
                done(w, false, timeout)
            }
        };
        match effect {
            Effect::TakeLeadership { .. }
            | Effect::Reclaim { .. }
            | Effect::Release
            | Effect::RecordSystemId(_)
            | Effect::WriteSync(_)
            | Effect::HandOver { .. }
            | Effect::RefuseSwitchover(_)
            | Effect::RecordPromotion { .. }
            | Effect::Grant
            | Effect::Publish { .. }
                if !etcd_ok =>
            {
                done(self, false, timeout)
            }
            Effect::TakeLeadership { system_id } => {
                let name = self.names[node].clone();
                if self.etcd.take_leadership(&name, lease, system_id.as_u64()) {
                    self.log(|| format!("n{}:   holds the leader key", node + 1));
                    self.wake_all(Some(node));
                }
                etcd(self, true);
            }
            Effect::Reclaim { from } => {
                let name = self.names[node].clone();
                if self.etcd.reclaim(&name, from, lease) {
                    self.log(|| format!("n{}:   took over its earlier run's key", node + 1));
                    self.wake_all(Some(node));
                }
                etcd(self, true);
            }
            Effect::Release => {
                if self.etcd.release(lease) {
                    self.log(|| format!("n{}:   released the leader key", node + 1));
                    self.wake_all(Some(node));
                }
                etcd(self, true);
            }
            Effect::RecordSystemId(system_id) => {
                self.etcd.record_system_id(lease, system_id.as_u64());
                etcd(self, true);
            }
            Effect::WriteSync(record) => {
                let ok = self.etcd.write_sync(record, lease);
                if ok {
                    self.wake_all(Some(node));
                }
                etcd(self, ok);
            }
            Effect::HandOver { to } => {
                if self.etcd.hand_over(lease, &to) {
                    self.log(|| format!("n{}:   handed the key to {to}", node + 1));
                    self.wake_all(Some(node));
                }
                etcd(self, true);
            }
            Effect::RefuseSwitchover(request) => {
                self.etcd.refuse_switchover(request);
                etcd(self, true);
            }
            Effect::RecordPromotion { .. } | Effect::Grant => etcd(self, true),
            Effect::Publish { record, lease } => {
                let ok = self.etcd.publish(record, lease);
                if ok {
                    self.wake_all(Some(node));
                }
                etcd(self, ok);
            }
            Effect::Kill => {
                self.kill(node);
                done(self, true, back);
            }
            Effect::Start => {
                let s = &self.servers[node];
                if s.run != (Run::Stopped { clean: true })
                    && s.run != (Run::Stopped { clean: false })
                {
                    return done(self, true, back);
                }
                if self.now < self.cannot_start[node] {
                    self.log(|| format!("n{}:   postgres: FATAL, it does not start", node + 1));
                    return done(self, false, back + 200);
                }
                self.drop_stale_placeholders(node);
                let ready = self.start(node);
                done(self, true, ready + 1);
            }
            Effect::PointAt { leader } => {
                if !self.servers[node].running() || self.servers[node].hung {
                    return done(self, false, back);
                }
                let to = leader.map(|l| self.index(&l));
                self.point(node, to);
                done(self, true, back);
            }
            Effect::Repoint { node: other } => {
                let other = self.index(&other);
                let s = &self.servers[other];
                if !s.running() || s.hung || !self.reachable(Peer::Node(node), Peer::Node(other)) {
                    return done(self, false, self.now + SQL_TIMEOUT);
                }
                self.point(other, Some(node));
                done(self, true, back);
            }
            Effect::SetStandbyNames(policy) => {
                if !self.servers[node].running() || self.servers[node].hung {
                    return done(self, false, back);
                }
                // ALTER SYSTEM writes the text; the server parses it as it reloads.
                self.set_standby_names(node, policy.to_string());
                done(self, true, back);
            }
            Effect::Promote { timeline } => {
                let s = &self.servers[node];
                if !s.running() || s.hung || !s.standby_signal {
                    return done(self, false, back);
                }
                // The placeholders below `timeline`; refused when a history file reaches it.
                let top = self.tls.number(s.tl).max(s.placeholders);
                if top >= timeline.as_u32() {
                    return done(self, false, back);
                }
                let s = &mut self.servers[node];
                s.placeholders = s.placeholders.max(timeline.as_u32() - 1);
                let replay = self.replay_left(node);
                self.log(|| format!("n{}:   promoting after {replay} ms of replay", node + 1));
                self.promotion_asked[node] = Some(self.runs[node]);
                let at = self.now + replay + self.rng.u64(80..250);
                let run = self.runs[node];
                self.at(
                    at,
                    Ev::Finish {
                        node,
                        run,
                        work: Work::Promote,
                        agent: target,
                    },
                );
            }
            Effect::Rejoin { leader } => {
                self.drop_stale_placeholders(node);
                let leader = self.index(&leader);
                let l = &self.servers[leader];
                if !l.writable() || !self.reachable(Peer::Node(node), Peer::Node(leader)) {
                    return done(self, false, self.now + SQL_TIMEOUT);
                }
                self.kill(node);
                let s = &self.servers[node];
                let clean = s.run == (Run::Stopped { clean: true });
                let follows = clean
                    && self
                        .tls
                        .end_of(self.servers[leader].tl, s.tl)
                        .is_some_and(|end| s.flushed <= end);
                let took = if follows {
                    self.rng.u64(300..900)
                } else {
                    self.rng.u64(1_000..4_000)
                };
                let run = self.runs[node];
                self.after(
                    took,
                    Ev::Finish {
                        node,
                        run,
                        work: Work::Rejoin {
                            leader,
                            rewind: !follows,
                        },
                        agent: target,
                    },
                );
            }
            Effect::StopFast => {
                if !self.servers[node].running() {
                    return done(self, true, back);
                }
                self.stop_fast_begin(node);
                let run = self.runs[node];
                let took = self.rng.u64(50..300);
                self.after(
                    took,
                    Ev::Finish {
                        node,
                        run,
                        work: Work::StopFast,
                        agent: target,
                    },
                );
            }
        }
    }

    pub(super) fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).expect("a node")
    }

    pub(super) fn finish(
        &mut self,
        node: usize,
        run: u64,
        work: Work,
        agent: (usize, u32, Lane, u64),
    ) {
        let (a, inc, lane, op) = agent;
        if self.runs[node] != run {
            return self.respond(a, inc, lane, op, Reply::Done(false), self.now);
        }
        match work {
            Work::Promote => {
                let ok = self.servers[node].running() && !self.servers[node].hung;
                if ok {
                    self.promote(node);
                }
                self.respond(a, inc, lane, op, Reply::Done(ok), self.now + 1);
            }
            Work::Rejoin { leader, rewind } => {
                let ok = self.servers[leader].writable()
                    && self.reachable(Peer::Node(node), Peer::Node(leader));
                if ok {
                    self.rejoined(node, leader, rewind);
                }
                self.respond(a, inc, lane, op, Reply::Done(ok), self.now + 1);
            }
            Work::StopFast => {
                self.stop_fast_end(node);
                self.respond(a, inc, lane, op, Reply::Done(true), self.now + 1);
            }
        }
    }
}
