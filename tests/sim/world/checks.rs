//! The invariants, after every event.

use super::*;

impl World {
    /// A paused agent touches no server; no agent acts on another cluster's keys.
    pub(super) fn check_effect(&mut self, node: usize, lane: Lane, effect: &Effect) {
        let touches = matches!(
            effect,
            Effect::Kill
                | Effect::Start
                | Effect::Rejoin { .. }
                | Effect::PointAt { .. }
                | Effect::Repoint { .. }
                | Effect::SetStandbyNames(_)
                | Effect::Promote { .. }
                | Effect::StopFast
        );
        if !touches {
            return;
        }
        let (seen, decided_on) = (self.agents[node].view_at, self.agents[node].decided_on);
        if self
            .pause_since
            .is_some_and(|since| seen.is_some_and(|at| since <= at))
        {
            self.violation = Some(format!(
                "n{}'s agent read the pause key, yet carries out {effect:?}",
                node + 1
            ));
        }
        // Its own lease's fence is its own business, and so is a server that hangs; the rest
        // of the loop acts on what etcd says.
        let foreign = self
            .foreign_since
            .is_some_and(|since| decided_on.is_some_and(|at| since <= at));
        let own_health = matches!(
            &self.agents[node].phase,
            Phase::Acting { step, .. } if step.decision.action == Action::KillHung
        );
        if lane == Lane::Loop && foreign && !own_health {
            self.violation = Some(format!(
                "n{}'s agent carries out {effect:?} on another cluster's keys",
                node + 1
            ));
        }
    }

    /// No acknowledged commit is missing from the history of the server that acknowledges the
    /// next one.
    pub(super) fn check_acknowledged(&mut self, commit: usize) {
        let c = &self.commits[commit];
        let s = &self.servers[c.node];
        // On one timeline, a later position holds the earlier ones: only the newest
        // acknowledged commit of each timeline needs checking.
        for &(tl, earlier) in &self.frontier {
            let e = &self.commits[earlier];
            if tl == c.tl && e.at <= c.at {
                continue;
            }
            if !self.tls.contains(s.tl, s.flushed, e.tl, e.at) {
                self.violation = Some(format!(
                    "lost: commit {earlier} (acknowledged by {} at timeline {}, {}) is not in the history of {}, which acknowledged commit {commit} (timeline {}, {})",
                    self.names[e.node],
                    self.tls.number(e.tl),
                    e.at,
                    self.names[c.node],
                    self.tls.number(c.tl),
                    c.at
                ));
                return;
            }
        }
        let tl = c.tl;
        match self.frontier.iter_mut().find(|(t, _)| *t == tl) {
            Some(entry) if self.commits[entry.1].at < self.commits[commit].at => entry.1 = commit,
            Some(_) => {}
            None => self.frontier.push((tl, commit)),
        }
    }

    pub(super) fn check(&mut self) {
        // A primary whose agent runs, unpaused, is fenced at its deadline.
        for node in 0..self.agents.len() {
            // A hung server takes no write, and one stuck in I/O survives its fence.
            if !self.servers[node].writable() {
                continue;
            }
            let agent = &self.agents[node];
            let Some(core) = agent.core.as_ref().filter(|_| !agent.frozen) else {
                continue;
            };
            // A watchdog that just ran again gets a moment to fire.
            let due = core.fence_deadline().as_millis().max(agent.awake_at);
            let late = self.now > due + 200;
            if late && !core.paused() {
                self.violation = Some(format!(
                    "n{}'s server runs as a primary {} ms past its agent's fence deadline",
                    node + 1,
                    self.now - core.fence_deadline().as_millis()
                ));
                return;
            }
        }
        // The rest reads only etcd and the servers' roles and walsenders: when neither changed,
        // it holds as it did.
        let state = (self.etcd.revision, self.epoch);
        if self.checked == state {
            return;
        }
        self.checked = state;
        let holder = self.etcd.leader.as_ref().map_or("-", |(n, _)| n.as_str());
        if self.leaders.last().map(String::as_str) != Some(holder) {
            self.leaders.push(holder.to_owned());
        }
        if self.servers.iter().filter(|s| s.can_acknowledge()).count() > 1 {
            let names: Vec<&str> = (0..self.servers.len())
                .filter(|&i| self.servers[i].can_acknowledge())
                .map(|i| self.name(i))
                .collect();
            self.violation = Some(format!(
                "two writers: {} could each acknowledge a commit",
                names.join(" and ")
            ));
            return;
        }
        // The sync record covers every configuration its leader's walsenders may apply.
        let Some(record) = &self.etcd.sync else {
            return;
        };
        let Some(leader) = self.names.iter().position(|n| *n == record.leader) else {
            return;
        };
        let s = &self.servers[leader];
        if !s.primary() {
            return;
        }
        let configs = std::iter::once(&s.ssn).chain(s.senders.iter().map(|w| &w.config));
        for config in configs {
            let covered = !config.names.is_empty()
                && config.num >= record.policy.num
                && config.names.iter().all(|n| record.policy.names.contains(n));
            if !covered {
                self.violation = Some(format!(
                    "the sync record ({} {} of {:?}) does not cover {}'s synchronous_standby_names ({} of {:?})",
                    record.policy.method, record.policy.num, record.policy.names, record.leader, config.num, config.names
                ));
                return;
            }
        }
    }
}
