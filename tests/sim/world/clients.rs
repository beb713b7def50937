//! The clients and their commits.

use super::*;

/// The clients: each commits one row at a time on a node that takes writes, as a libpq client
/// with several hosts would find it, and gives up after a second without an answer.
impl World {
    pub(super) fn client_tick(&mut self, client: usize) {
        if self.clients[client].inflight.is_some() {
            return;
        }
        let n = self.servers.len();
        let current = self.clients[client]
            .node
            .filter(|&i| self.servers[i].writable());
        let start = self.clients[client].start;
        let node = current.or_else(|| {
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| self.servers[i].writable())
        });
        let Some(node) = node else {
            self.clients[client].node = None;
            return self.after(100, Ev::ClientTick { client });
        };
        let s = &mut self.servers[node];
        s.flushed += 1;
        let commit = self.commits.len();
        self.commits.push(Commit {
            node,
            tl: s.tl,
            at: s.flushed,
            sent_at: self.now,
            acked_at: None,
        });
        let c = &mut self.clients[client];
        c.node = Some(node);
        c.inflight = Some(commit);
        // One timer per client: when it fires for an acknowledged commit, it is set again for
        // the one in flight then.
        if !self.clients[client].timer {
            self.clients[client].timer = true;
            self.after(CLIENT_TIMEOUT, Ev::ClientGiveUp { client, commit });
        }
        if self.servers[node].ssn.names.is_empty() {
            return self.acknowledge(commit);
        }
        let at = self.servers[node].flushed;
        self.servers[node].waiters.push(Waiter { at, commit });
        self.send_wal(node);
    }

    pub(super) fn acknowledge(&mut self, commit: usize) {
        let Some(client) = self.clients.iter().position(|c| c.inflight == Some(commit)) else {
            return; // the client gave up on it: not acknowledged to anyone
        };
        self.clients[client].inflight = None;
        self.commits[commit].acked_at = Some(self.now);
        self.check_acknowledged(commit);
        if let Some(&last) = self.acks.last() {
            let (at, node) = (
                self.commits[last].acked_at.unwrap_or(0),
                self.commits[last].node,
            );
            self.max_gap_ms = self.max_gap_ms.max(self.now - at);
            if node != self.commits[commit].node {
                let new = self.commits[commit].node;
                self.log(|| format!("clients: n{} acknowledges writes now", new + 1));
            }
        }
        self.acks.push(commit);
        if self.now >= self.heal_at && self.first_ack_after_heal.is_none() {
            self.first_ack_after_heal = Some(self.now);
        }
        let pause = self.rng.u64(80..200);
        self.after(pause, Ev::ClientTick { client });
    }
}
