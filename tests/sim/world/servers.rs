//! The servers: start, stop, streaming, replay, promotion, sync replication.

use super::*;

/// The servers: start, stop, streaming, replay, promotion, sync replication.
impl World {
    pub(super) fn kill(&mut self, node: usize) {
        self.epoch += 1;
        if self.servers[node].run == (Run::Stopped { clean: false })
            || self.servers[node].run == (Run::Stopped { clean: true })
        {
            return;
        }
        if self.now < self.stuck[node] {
            // SIGKILL waits for the uninterruptible sleep to end, then ends the process.
            self.kill_pending[node] = true;
            return;
        }
        self.log(|| format!("n{}:   postgres killed", node + 1));
        self.runs[node] += 1;
        self.disconnect(node);
        self.drop_senders(node);
        let s = &mut self.servers[node];
        s.run = Run::Stopped { clean: false };
        s.hung = false;
        s.waiters.clear();
        s.replay_due = None;
    }

    /// Starts a stopped server; when it will be ready.
    pub(super) fn start(&mut self, node: usize) -> u64 {
        self.runs[node] += 1;
        let run = self.runs[node];
        let ready = self.now
            + if self.servers[node].standby_signal {
                self.rng.u64(150..700)
            } else {
                self.rng.u64(200..1_500)
            };
        self.servers[node].run = Run::Starting { ready_at: ready };
        self.at(ready, Ev::Ready { node, run });
        ready
    }

    pub(super) fn ready(&mut self, node: usize, run: u64) {
        self.epoch += 1;
        if self.runs[node] != run {
            return;
        }
        let s = &mut self.servers[node];
        s.run = Run::Running;
        s.shutdown_checkpoint = None;
        if s.standby_signal {
            // Hot standby: connections are accepted while local WAL is still replayed.
            s.received = None;
            self.schedule_replay(node);
        } else {
            s.replayed = s.flushed;
        }
        self.log(|| format!("n{}:   postgres ready", node + 1));
        self.try_connect(node);
        self.reconnect_downstreams(node);
    }

    pub(super) fn stop_fast_begin(&mut self, node: usize) {
        let s = &mut self.servers[node];
        // A fast shutdown ends every session: commits waiting for a standby are not
        // acknowledged.
        s.waiters.clear();
        if !s.standby_signal {
            s.flushed += 1;
            self.send_wal(node);
        }
    }

    pub(super) fn stop_fast_end(&mut self, node: usize) {
        self.epoch += 1;
        // The walsenders send everything, the shutdown checkpoint included, to the standbys
        // they reach before they exit.
        let upto = self.servers[node].flushed;
        for standby in self.standbys_of(node) {
            if self.reachable(Peer::Node(node), Peer::Node(standby))
                && self.servers[standby].running()
                && !self.servers[standby].hung
            {
                let s = &mut self.servers[standby];
                s.flushed = s.flushed.max(upto);
                s.received = Some(s.received.unwrap_or(0).max(upto));
                self.schedule_replay(standby);
            }
        }
        self.runs[node] += 1;
        self.disconnect(node);
        self.drop_senders(node);
        let s = &mut self.servers[node];
        s.run = Run::Stopped { clean: true };
        s.shutdown_checkpoint = (!s.standby_signal).then(|| s.flushed - 1);
        self.log(|| format!("n{}:   postgres stopped (fast)", node + 1));
    }

    pub(super) fn promote(&mut self, node: usize) {
        self.epoch += 1;
        self.disconnect(node);
        self.drop_senders(node);
        let s = &mut self.servers[node];
        s.replayed = s.flushed;
        s.replay_due = None;
        let tl = self.tls.fork(s.tl, s.flushed, s.placeholders);
        s.tl = tl;
        s.standby_signal = false;
        let number = self.tls.number(tl);
        self.log(|| format!("n{}:   promoted, timeline {number}", node + 1));
        self.reconnect_downstreams(node);
    }

    /// What the agent does before it starts a server: placeholders above its own timeline's
    /// history go.
    pub(super) fn drop_stale_placeholders(&mut self, node: usize) {
        let s = &mut self.servers[node];
        if s.placeholders > self.tls.number(s.tl) {
            s.placeholders = 0;
        }
    }

    pub(super) fn rejoined(&mut self, node: usize, leader: usize, rewind: bool) {
        self.epoch += 1;
        let (ltl, lflushed) = (self.servers[leader].tl, self.servers[leader].flushed);
        let s = &mut self.servers[node];
        if rewind {
            // pg_rewind: the leader's history up to now, replayed from the fork.
            let fork = self.tls.end_of(ltl, s.tl).unwrap_or(0).min(s.flushed);
            s.tl = ltl;
            s.flushed = lflushed;
            s.replayed = fork;
        } else {
            s.tl = ltl;
        }
        s.standby_signal = true;
        s.conninfo = Some(leader);
        s.shutdown_checkpoint = None;
        // Its settings files are the leader's now: one that kept it from starting is gone.
        self.cannot_start[node] = 0;
        let how = if rewind { "rewound" } else { "follows" };
        self.log(|| format!("n{}:   rejoined n{} ({how})", node + 1, leader + 1));
        self.start(node);
    }

    /// primary_conninfo changed and reloaded: the walreceiver restarts.
    pub(super) fn point(&mut self, node: usize, to: Option<usize>) {
        self.disconnect(node);
        self.servers[node].conninfo = to;
        self.try_connect(node);
    }

    pub(super) fn set_standby_names(&mut self, node: usize, text: String) {
        self.epoch += 1;
        let config = parse_config(&text);
        let s = &mut self.servers[node];
        s.ssn_text = text;
        s.ssn = config;
        let slow = self.now < self.reload_delay.0;
        for i in 0..self.servers[node].senders.len() {
            let delay = if slow {
                self.rng.u64(0..=self.reload_delay.1)
            } else {
                self.rng.u64(0..3)
            };
            let standby = self.servers[node].senders[i].standby;
            self.servers[node].senders[i].reload_at = Some(self.now + delay);
            self.after(delay, Ev::Reload { node, standby });
        }
        if self.servers[node].ssn.names.is_empty() {
            self.release_all(node);
        }
    }

    pub(super) fn reload(&mut self, node: usize, standby: usize) {
        self.epoch += 1;
        let s = &mut self.servers[node];
        let Some(i) = s.senders.iter().position(|w| w.standby == standby) else {
            return;
        };
        if s.senders[i].reload_at.is_none_or(|at| at > self.now) {
            return;
        }
        let config = s.ssn.clone();
        let w = &mut s.senders[i];
        w.priority = priority(&config, &self.names[standby]);
        w.config = config;
        w.reload_at = None;
        for i in 0..self.servers[node].senders.len() {
            self.release(node, i);
        }
    }

    /// A standby's walreceiver tries its primary_conninfo.
    pub(super) fn try_connect(&mut self, node: usize) {
        let s = &self.servers[node];
        let Some(up) = s.conninfo else { return };
        if s.upstream.is_some() || !s.running() || s.hung || !s.standby_signal {
            return;
        }
        let u = &self.servers[up];
        if !u.running() || u.hung || !self.reachable(Peer::Node(node), Peer::Node(up)) {
            return;
        }
        // As PostgreSQL asks: the timeline by its number in the upstream's history, from the
        // standby's position.
        let number = self.tls.number(s.tl);
        let Some(theirs) = self.tls.by_number(u.tl, number) else {
            return;
        };
        if theirs != s.tl {
            self.violation = Some(format!(
                "{} streams from {}: the same timeline number {number} names two histories",
                self.names[node], self.names[up]
            ));
            return;
        }
        let end = self.tls.end_of(u.tl, s.tl).expect("on its history");
        if s.flushed > end || s.flushed > u.flushed {
            return; // past the fork, or ahead of the upstream: refused
        }
        let (flushed, standby_name) = (s.flushed, self.names[node].clone());
        let config = u.ssn.clone();
        let priority = priority(&config, &standby_name);
        let upstream_tl = u.tl;
        self.conns[node] += 1;
        self.epoch += 1;
        let s = &mut self.servers[node];
        s.upstream = Some(up);
        s.tl = upstream_tl;
        s.received = Some(s.received.unwrap_or(flushed).max(flushed));
        self.servers[up].senders.push(Walsender {
            standby: node,
            flush: flushed,
            config,
            priority,
            reload_at: None,
        });
        if self.servers[up].flushed > flushed {
            let upto = self.servers[up].flushed;
            self.ship(node, upto);
        }
    }

    pub(super) fn disconnect(&mut self, node: usize) {
        self.epoch += 1;
        if let Some(up) = self.servers[node].upstream.take() {
            self.conns[node] += 1;
            self.servers[up].senders.retain(|w| w.standby != node);
        }
    }

    /// Every walsender of `node` goes (it stopped, or promoted).
    pub(super) fn drop_senders(&mut self, node: usize) {
        for standby in self.standbys_of(node) {
            self.disconnect(standby);
        }
    }

    /// The standbys `node`'s walsenders serve.
    fn standbys_of(&self, node: usize) -> Vec<usize> {
        self.servers[node]
            .senders
            .iter()
            .map(|w| w.standby)
            .collect()
    }

    /// The standbys naming `node` try again (it started, or promoted).
    pub(super) fn reconnect_downstreams(&mut self, node: usize) {
        for other in 0..self.servers.len() {
            if self.servers[other].conninfo == Some(node) {
                self.try_connect(other);
            }
        }
    }

    /// `node`'s walsenders send what it flushed. One event per standby: the WAL arrives, is
    /// flushed (fsync), and the reply reaches the walsender, all at once after the sum of the
    /// three (the standby's flushed position shows a network hop late).
    pub(super) fn send_wal(&mut self, node: usize) {
        if self.servers[node].hung {
            return;
        }
        let upto = self.servers[node].flushed;
        for i in 0..self.servers[node].senders.len() {
            let to = self.servers[node].senders[i].standby;
            if self.reachable(Peer::Node(node), Peer::Node(to)) {
                self.ship(to, upto);
            }
        }
    }

    pub(super) fn ship(&mut self, to: usize, upto: Pos) {
        let gen = self.conns[to];
        let fsync = if self.now < self.slow_fsync[to].0 {
            self.slow_fsync[to].1
        } else {
            self.rng.u64(0..3)
        };
        let delay = self.net() + fsync + self.net();
        self.after(
            delay,
            Ev::Flush {
                node: to,
                upto,
                gen,
            },
        );
    }

    pub(super) fn flush(&mut self, node: usize, upto: Pos, gen: u64) {
        let s = &mut self.servers[node];
        if self.conns[node] != gen || s.hung || s.upstream.is_none() || upto <= s.flushed {
            return;
        }
        s.flushed = upto;
        s.received = Some(s.received.unwrap_or(0).max(upto));
        let up = s.upstream.expect("connected");
        self.schedule_replay(node);
        self.feedback(up, node, upto, gen);
        self.send_wal(node);
    }

    pub(super) fn feedback(&mut self, primary: usize, standby: usize, flush: Pos, gen: u64) {
        if self.conns[standby] != gen || self.servers[primary].hung {
            return;
        }
        let Some(i) = self.servers[primary]
            .senders
            .iter()
            .position(|w| w.standby == standby)
        else {
            return;
        };
        let w = &mut self.servers[primary].senders[i];
        w.flush = w.flush.max(flush);
        self.release(primary, i);
    }

    /// Walsender `i` of `node` releases the commits its configuration allows.
    pub(super) fn release(&mut self, node: usize, i: usize) {
        if self.servers[node].waiters.is_empty() {
            return;
        }
        let Some(point) = self.servers[node].release_point(i) else {
            return;
        };
        // Waiters are in WAL order: release the front.
        while self.servers[node]
            .waiters
            .first()
            .is_some_and(|w| w.at <= point)
        {
            let w = self.servers[node].waiters.remove(0);
            self.acknowledge(w.commit);
        }
    }

    pub(super) fn release_all(&mut self, node: usize) {
        for w in std::mem::take(&mut self.servers[node].waiters) {
            self.acknowledge(w.commit);
        }
    }

    /// How long until the server has replayed all it holds: slow while the fault lasts.
    pub(super) fn replay_left(&self, node: usize) -> u64 {
        let s = &self.servers[node];
        let per = self.replay_rate(node);
        let slow_for = self.slow_replay[node].0.saturating_sub(self.now);
        ((s.flushed - s.replayed.min(s.flushed)) * per).min(slow_for)
    }

    pub(super) fn replay_rate(&self, node: usize) -> u64 {
        if self.now < self.slow_replay[node].0 {
            self.slow_replay[node].1
        } else {
            0
        }
    }

    pub(super) fn schedule_replay(&mut self, node: usize) {
        let per = self.replay_rate(node);
        let s = &mut self.servers[node];
        if per == 0 {
            s.replayed = s.replayed.max(s.flushed);
            return;
        }
        if s.replay_due.is_none() && s.replayed < s.flushed && s.running() {
            s.replay_due = Some(self.now + per);
            let run = self.runs[node];
            self.after(per, Ev::Replay { node, run });
        }
    }

    pub(super) fn replay(&mut self, node: usize, run: u64) {
        if self.runs[node] != run || self.servers[node].hung {
            self.servers[node].replay_due = None;
            return;
        }
        let per = self.replay_rate(node);
        let s = &mut self.servers[node];
        s.replay_due = None;
        if per == 0 {
            s.replayed = s.flushed;
            return;
        }
        s.replayed = (s.replayed + 1).min(s.flushed);
        self.schedule_replay(node);
    }
}
