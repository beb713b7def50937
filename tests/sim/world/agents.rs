//! The agents' executor: what `pgrepl::ha::agent` does with I/O, done against the models: the
//! loop (probe, publish, read, decide, carry out), the lease lane (renewals, a new lease, a
//! fence) and the watchdog, each a sequence of requests whose answers come back as events.

use super::*;

/// The agents' executor: what `pgrepl::ha::agent` does with I/O, done against the models.
impl World {
    pub(super) fn agent_start(&mut self, node: usize) {
        let agent = &mut self.agents[node];
        agent.core = None;
        agent.phase = Phase::Idle;
        agent.lease_effects.clear();
        agent.grant_sent = self.now;
        // `Agent::start`: agree on the timing, take a lease.
        self.request(node, Lane::Lease, Req::Grant, 2);
    }

    pub(super) fn agent_started(&mut self, node: usize, lease: LeaseId, paused: bool) {
        let sent = Time::from_millis(self.agents[node].grant_sent);
        let core = Core::new(
            &self.names[node],
            self.spec.clone(),
            self.timing,
            (lease, sent),
            paused,
        );
        let deadline = core.fence_deadline().as_millis();
        let inc = self.agents[node].inc;
        self.agents[node].core = Some(core);
        self.agents[node].awake_at = self.now;
        self.log(|| format!("n{}: agent runs (lease {lease})", node + 1));
        self.after(0, Ev::Renew { node, inc });
        self.at(deadline, Ev::Watchdog { node, inc });
        self.schedule_tick(node, 0);
    }

    pub(super) fn core(&mut self, node: usize) -> &mut Core {
        self.agents[node].core.as_mut().expect("a running agent")
    }

    pub(super) fn schedule_tick(&mut self, node: usize, delay: u64) {
        let agent = &mut self.agents[node];
        agent.tick_seq += 1;
        agent.tick_at = self.now + delay;
        let (inc, seq) = (agent.inc, agent.tick_seq);
        self.after(delay, Ev::Tick { node, inc, seq });
    }

    /// The etcd watch: every agent whose loop is idle decides again soon.
    pub(super) fn wake_all(&mut self, except: Option<usize>) {
        for node in 0..self.agents.len() {
            let agent = &self.agents[node];
            if Some(node) == except
                || agent.core.is_none()
                || !matches!(agent.phase, Phase::Idle)
                || !self.reachable(Peer::Node(node), Peer::Etcd)
            {
                continue;
            }
            let due = agent.tick_at;
            let delay = self.net() + 1;
            // A round due about then anyway serves.
            if due > self.now + delay + 5 {
                self.schedule_tick(node, delay);
            }
        }
    }

    pub(super) fn loop_begin(&mut self, node: usize) {
        if !matches!(self.agents[node].phase, Phase::Idle) || self.agents[node].core.is_none() {
            return;
        }
        self.agents[node].phase = Phase::Probing;
        self.request(node, Lane::Loop, Req::Probe, 0);
    }

    /// Sends `req` from `node`'s agent on `lane`; `hops` extra round trips it takes.
    pub(super) fn request(&mut self, node: usize, lane: Lane, req: Req, hops: u64) {
        if let Req::Effect(effect, _) = &req {
            self.check_effect(node, lane, effect);
        }
        self.op_seq += 1;
        let op = self.op_seq;
        let agent = &mut self.agents[node];
        agent.lane_op[lane as usize] = op;
        let inc = agent.inc;
        // The agent reaches its own server on its own machine; etcd and other nodes over the
        // network.
        let local = match &req {
            Req::Probe => true,
            Req::Effect(effect, _) => is_local(effect),
            _ => false,
        };
        let mut delay = if local {
            self.rng.u64(1..3)
        } else {
            self.net()
        };
        // A read takes effect where it arrives and changes nothing: the way back is folded
        // into the way there, and its answer handled on arrival (one event, not two).
        if matches!(req, Req::Probe | Req::View(_)) {
            delay += if local {
                self.rng.u64(1..3)
            } else {
                self.net()
            };
        }
        for _ in 0..hops {
            delay += self.net() * 2;
        }
        self.after(
            delay,
            Ev::Arrive {
                node,
                inc,
                lane,
                op,
                req: Box::new(req),
                sent: self.now,
            },
        );
    }

    pub(super) fn respond(
        &mut self,
        node: usize,
        inc: u32,
        lane: Lane,
        op: u64,
        reply: Reply,
        at: u64,
    ) {
        let agent = &self.agents[node];
        if at == self.now && agent.inc == inc && !agent.frozen {
            if agent.lane_op[lane as usize] == op {
                self.reply(node, lane, reply);
            }
            return;
        }
        self.at(
            at,
            Ev::Reply {
                node,
                inc,
                lane,
                op,
                reply: Box::new(reply),
            },
        );
    }

    pub(super) fn arrive(
        &mut self,
        node: usize,
        inc: u32,
        lane: Lane,
        op: u64,
        req: Req,
        sent: u64,
    ) {
        let timeout = sent + self.timing.request_timeout().as_millis() as u64;
        let etcd_ok = self.etcd.available(self.now) && self.reachable(Peer::Node(node), Peer::Etcd);
        let local = match &req {
            Req::Probe => true,
            Req::Effect(effect, _) => is_local(effect),
            _ => false,
        };
        let back = self.now
            + if local {
                self.rng.u64(1..3)
            } else {
                self.net()
            };
        // An etcd request answered after the agent's deadline is a timeout to it, whatever
        // etcd did with it.
        let answer = |w: &mut World, reply: Reply, failed: Reply| {
            if back <= timeout {
                w.respond(node, inc, lane, op, reply, back);
            } else {
                w.respond(node, inc, lane, op, failed, timeout);
            }
        };
        match req {
            Req::Probe => {
                let probed = self.probe(node);
                let at = match probed {
                    Probed::Silent { .. } => sent + SQL_TIMEOUT,
                    _ => self.now,
                };
                self.respond(node, inc, lane, op, Reply::Probed(probed), at);
            }
            Req::Publish(record, lease) => {
                if !etcd_ok {
                    return self.respond(node, inc, lane, op, Reply::Published(false), timeout);
                }
                let ok = self.etcd.publish(record, lease);
                if ok {
                    self.wake_all(Some(node));
                }
                answer(self, Reply::Published(ok), Reply::Published(false));
            }
            Req::View(lease) => {
                if !etcd_ok {
                    return self.respond(node, inc, lane, op, Reply::View(None, 0), timeout);
                }
                let view = self.etcd.shared_view(lease);
                let taken = self.now;
                if taken <= timeout {
                    self.respond(node, inc, lane, op, Reply::View(Some(view), taken), taken);
                } else {
                    self.respond(node, inc, lane, op, Reply::View(None, 0), timeout);
                }
            }
            Req::Renew(lease) => {
                if !etcd_ok {
                    return self.respond(
                        node,
                        inc,
                        lane,
                        op,
                        Reply::Renewal(Renewal::Failed),
                        timeout,
                    );
                }
                let outcome = match self.etcd.renew(self.now, lease) {
                    true => Renewal::Alive,
                    false => Renewal::Gone,
                };
                answer(
                    self,
                    Reply::Renewal(outcome),
                    Reply::Renewal(Renewal::Failed),
                );
            }
            Req::Grant => {
                if !etcd_ok {
                    return self.respond(node, inc, lane, op, Reply::Granted(None), timeout);
                }
                let ttl = self.timing.ttl().as_millis() as u64;
                let lease = self.etcd.grant(self.now, ttl);
                // `Agent::start` reads the pause key just before.
                let paused = self.etcd.pause.is_some();
                answer(
                    self,
                    Reply::Granted(Some((lease, paused))),
                    Reply::Granted(None),
                );
            }
            Req::Effect(effect, lease) => {
                let target = (node, inc, lane, op);
                self.effect(target, effect, lease, etcd_ok, timeout, back);
            }
        }
    }

    /// What the agent's probe of its own server reads.
    pub(super) fn probe(&self, node: usize) -> Probed {
        let s = &self.servers[node];
        let local = |running: bool| Local {
            server: ServerState {
                running,
                in_recovery: running && s.standby_signal,
                timeline: running.then(|| TimelineId::new(self.tls.number(s.tl))),
                position: running.then(|| Lsn::new(s.reported_position())),
                // No walreceiver, no primary_conninfo, and a position that cannot grow:
                // replay reached the end of the WAL the server holds.
                detached: !running
                    || (s.conninfo.is_none() && s.upstream.is_none() && s.replayed >= s.flushed),
                follows: s
                    .conninfo
                    .filter(|_| running)
                    .map(|n| self.names[n].clone()),
                unknown: false,
            },
            standby_signal: s.standby_signal,
            standby_names: if running {
                s.ssn_text.parse()
            } else {
                Ok(SyncPolicy::default())
            },
            caught_up: if running && !s.standby_signal {
                s.senders
                    .iter()
                    .filter(|w| w.flush >= s.flushed)
                    .map(|w| self.names[w.standby].clone())
                    .collect()
            } else {
                Vec::new()
            },
            shutdown_checkpoint: match s.run {
                Run::Stopped { clean: true } if !s.standby_signal => s.shutdown_checkpoint,
                _ => None,
            }
            .map(Lsn::new),
            system_id: Some(SystemId::new(s.system_id)),
            promoting: running
                && s.standby_signal
                && self.promotion_asked[node] == Some(self.runs[node]),
            history_top: Some(TimelineId::new(self.tls.number(s.tl).max(s.placeholders))),
            // The simulated primary keeps all its WAL.
            starved: false,
        };
        match s.run {
            Run::Stopped { .. } => Probed::Known(local(false)),
            Run::Starting { .. } if s.hung => Probed::Silent {
                standby_signal: s.standby_signal,
            },
            Run::Starting { .. } => Probed::Refused {
                standby_signal: s.standby_signal,
            },
            Run::Running if s.hung => Probed::Silent {
                standby_signal: s.standby_signal,
            },
            Run::Running => Probed::Known(local(true)),
        }
    }

    pub(super) fn reply(&mut self, node: usize, lane: Lane, reply: Reply) {
        match lane {
            Lane::Loop => self.loop_reply(node, reply),
            Lane::Lease => self.lease_reply(node, reply),
            Lane::Watchdog => {
                if let Reply::Done(ok) = reply {
                    let now = Time::from_millis(self.now);
                    self.core(node).done(now, &Effect::Kill, ok);
                }
            }
        }
    }

    pub(super) fn loop_reply(&mut self, node: usize, reply: Reply) {
        let phase = std::mem::replace(&mut self.agents[node].phase, Phase::Idle);
        match (phase, reply) {
            (Phase::Probing, Reply::Probed(probed)) => {
                let (record, lease) = {
                    let core = self.core(node);
                    (core.to_publish(&probed), core.lease())
                };
                match record {
                    Some(record) => {
                        self.agents[node].phase = Phase::Publishing(probed, record.clone(), lease);
                        self.request(node, Lane::Loop, Req::Publish(record, lease), 0);
                    }
                    None => {
                        self.agents[node].phase = Phase::Viewing(probed);
                        self.request(node, Lane::Loop, Req::View(lease), 0);
                    }
                }
            }
            (Phase::Publishing(probed, record, lease), Reply::Published(ok)) => {
                if ok {
                    self.core(node).published(record, lease);
                    self.agents[node].phase = Phase::Viewing(probed);
                    self.request(node, Lane::Loop, Req::View(lease), 0);
                } else {
                    // `read_view` failed: the core decides without a view.
                    self.core(node).publish_failed();
                    self.agents[node].decided_on = None;
                    self.decide(node, probed, None);
                }
            }
            (Phase::Viewing(probed), Reply::View(view, taken)) => {
                let taken = view.is_some().then_some(taken);
                let agent = &mut self.agents[node];
                agent.view_at = taken.or(agent.view_at);
                agent.decided_on = taken;
                self.decide(node, probed, view)
            }
            (Phase::Acting { step, next }, Reply::Done(ok)) => {
                let now = Time::from_millis(self.now);
                let effect = &step.effects[next];
                self.core(node).done(now, effect, ok);
                let promoting = matches!(step.decision.action, Action::Promote { .. });
                if ok && promoting && matches!(effect, Effect::WriteSync(_)) {
                    if let Some(down_ms) = self.agents[node].die_after_sync.take() {
                        self.log(|| format!("n{}: dies after the sync record", node + 1));
                        return self.agent_dies(node, self.now + down_ms);
                    }
                }
                if !ok {
                    let what = format!("{effect:?}");
                    self.log(|| format!("n{}:   {what} failed", node + 1));
                }
                if !ok && !effect.best_effort() {
                    let pause = self.timing.loop_ms;
                    return self.loop_end(node, &step, pause);
                }
                self.act(node, step, next + 1);
            }
            (phase, reply) => panic!("n{}: {reply:?} in {phase:?}", node + 1),
        }
    }

    pub(super) fn decide(&mut self, node: usize, probed: Probed, view: Option<Rc<View>>) {
        let now = Time::from_millis(self.now);
        let was_paused = self.core(node).paused();
        let step = self.core(node).decide(now, &probed, view.as_deref());
        if was_paused && !self.core(node).paused() {
            self.agents[node].awake_at = self.now;
        }
        if step.changed {
            let (action, reason) = (&step.decision.action, &step.decision.reason);
            let line = format!("n{}: {action:?}: {reason}", node + 1);
            self.log(|| line);
        }
        self.act(node, step, 0);
    }

    /// Carries out effect `next` of `step`, or ends the round.
    pub(super) fn act(&mut self, node: usize, step: Step, next: usize) {
        let Some(effect) = step.effects.get(next).cloned() else {
            return self.loop_end(node, &step, 0);
        };
        let lease = self.core(node).lease();
        self.agents[node].phase = Phase::Acting { step, next };
        self.request(node, Lane::Loop, Req::Effect(effect, lease), 0);
    }

    pub(super) fn loop_end(&mut self, node: usize, step: &Step, pause: u64) {
        self.agents[node].phase = Phase::Idle;
        let delay = if step.decision.action == Action::Wait {
            self.timing.loop_ms
        } else {
            20
        };
        self.schedule_tick(node, delay + pause);
    }

    pub(super) fn renew(&mut self, node: usize) {
        if !self.agents[node].lease_effects.is_empty() || self.agents[node].core.is_none() {
            return;
        }
        self.agents[node].renew_sent = self.now;
        let lease = self.core(node).lease();
        self.request(node, Lane::Lease, Req::Renew(lease), 0);
    }

    pub(super) fn lease_reply(&mut self, node: usize, reply: Reply) {
        let now = Time::from_millis(self.now);
        match reply {
            Reply::Granted(lease) if self.agents[node].core.is_none() => match lease {
                Some((lease, paused)) => self.agent_started(node, lease, paused),
                // The agent fails to start; its service manager starts it again.
                None => {
                    let inc = self.agents[node].inc;
                    self.after(1_000, Ev::AgentStart { node, inc });
                }
            },
            Reply::Renewal(outcome) => {
                let sent = Time::from_millis(self.agents[node].renew_sent);
                let lease = self.core(node).lease();
                let step = self.core(node).renewed(sent, lease, outcome);
                if let Some(note) = step.note {
                    self.log(|| format!("n{}: {note}", node + 1));
                }
                self.agents[node].lease_effects = step.effects;
                self.lease_next(node);
            }
            Reply::Granted(lease) => {
                if let Some((lease, _)) = lease {
                    let sent = Time::from_millis(self.agents[node].grant_sent);
                    self.core(node).granted(sent, lease);
                }
                self.core(node).done(now, &Effect::Grant, lease.is_some());
                self.lease_next(node);
            }
            Reply::Done(ok) => {
                self.core(node).done(now, &Effect::Kill, ok);
                self.lease_next(node);
            }
            other => panic!("lease lane: {other:?}"),
        }
    }

    /// The lease lane's next effect, or the next renewal.
    pub(super) fn lease_next(&mut self, node: usize) {
        if self.agents[node].lease_effects.is_empty() {
            let sent = Time::from_millis(self.agents[node].renew_sent);
            let now = Time::from_millis(self.now);
            let next = self.core(node).next_renewal(sent, now);
            let inc = self.agents[node].inc;
            return self.at(next.as_millis(), Ev::Renew { node, inc });
        }
        let effect = self.agents[node].lease_effects.remove(0);
        if effect == Effect::Kill {
            self.log(|| format!("n{}: fencing: lease expired", node + 1));
        }
        if effect == Effect::Grant {
            self.agents[node].grant_sent = self.now;
            return self.request(node, Lane::Lease, Req::Grant, 0);
        }
        let lease = self.core(node).lease();
        self.request(node, Lane::Lease, Req::Effect(effect, lease), 0);
    }

    pub(super) fn watchdog(&mut self, node: usize) {
        let now = Time::from_millis(self.now);
        let (fence, wake) = self.core(node).watch(now);
        if let Some(effect) = fence {
            self.log(|| {
                format!(
                    "n{}: watchdog fences: no renewal confirmed in time",
                    node + 1
                )
            });
            let lease = self.core(node).lease();
            self.request(node, Lane::Watchdog, Req::Effect(effect, lease), 0);
        }
        let inc = self.agents[node].inc;
        self.at(wake.as_millis(), Ev::Watchdog { node, inc });
    }
}
