//! The agent's background tasks: the lease keep-alive, the watchdog that fences a primary whose
//! renewals stopped, and the etcd watch that wakes the loop. They run beside the loop so a slow
//! action (a promotion, a pg_rewind) never costs the lease and a blocked loop never delays
//! fencing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Agent, Lease};

/// How soon a failed renewal is tried again (a failure may be quick: every endpoint refusing).
const RETRY: Duration = Duration::from_millis(50);

/// Renews the lease every `renew` interval; when etcd says it is gone, fences a primary at once
/// and takes a new lease.
pub(super) async fn keep_alive(agent: Arc<Agent>, cancel: CancellationToken) {
    let timing = agent.timing;
    let mut failing = false;
    while !cancel.is_cancelled() {
        let (id, _) = agent.shared.lease();
        let sent = Instant::now();
        let mut lost = false;
        match agent.store.renew(id).await {
            Ok(true) => {
                let before = std::mem::replace(
                    &mut agent.shared.lease.lock().expect("lease lock").confirmed_at,
                    sent,
                );
                if std::mem::take(&mut failing) {
                    tracing::info!(
                        "lease renewed again, {} ms after the last confirmed renewal was sent",
                        sent.saturating_duration_since(before).as_millis()
                    );
                }
            }
            Ok(false) => {
                // Whatever the leader key said, it went with that lease.
                tracing::warn!(
                    "the lease expired (this agent was stopped or cut off for longer than its {} s TTL); taking a new one",
                    timing.ttl_s
                );
                lost = true;
                match agent.store.grant(timing.ttl()).await {
                    Ok(new) => {
                        *agent.shared.lease.lock().expect("lease lock") = Lease {
                            id: new,
                            confirmed_at: sent,
                        }
                    }
                    Err(e) => tracing::warn!("etcd: {e}"),
                }
            }
            Err(e) if !failing => {
                tracing::warn!("lease renewal: {e}");
                failing = true;
            }
            Err(_) => {}
        }
        if lost {
            fence(&agent, "its lease expired").await;
        }
        // After a failure, try again at once (the next endpoint, or etcd's new leader): every
        // renewal interval lost is one the fence deadline does not get back.
        let next = match failing {
            true => (sent + timing.renew()).min(Instant::now() + RETRY),
            false => sent + timing.renew(),
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// Fences a primary whose lease may expire before a renewal gets through: wakes at the fence
/// deadline (the last confirmed renewal's send time plus TTL less the margin) unless a renewal
/// moved it.
pub(super) async fn watchdog(agent: Arc<Agent>, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        let deadline = agent.shared.lease().1 + agent.timing.fence_after();
        if Instant::now() >= deadline {
            fence(&agent, "no lease renewal was confirmed in time").await;
        }
        let wake = deadline.max(Instant::now() + Duration::from_millis(20));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// Kills the server if the loop last saw it as a primary, unless the agents are paused: then
/// nobody elects, so no other primary can appear (proto-notes/08-ha.md, "Pause").
async fn fence(agent: &Agent, why: &str) {
    if agent.shared.paused.load(Ordering::SeqCst) {
        return;
    }
    if agent.shared.primary.swap(false, Ordering::SeqCst) {
        tracing::warn!(
            "{why}: fencing primary `{}` before its lease can expire elsewhere",
            agent.node.name
        );
        if let Err(e) = agent.cluster.runtime.kill(&agent.node).await {
            tracing::error!("fence `{}`: {e}", agent.node.name);
        }
    }
}

/// Wakes the loop on every change under the cluster's prefix (a leader key that expires, a
/// member that detaches), re-watching after errors.
pub(super) async fn watch(
    agent: Arc<Agent>,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let own = agent.store.keys().member(&agent.node.name);
    while !cancel.is_cancelled() {
        match agent.store.watch().await {
            Ok((_watcher, mut stream)) => loop {
                match stream.message().await {
                    Ok(Some(response)) if response.canceled() => break,
                    // Not for this agent's own record: publishing it would wake the loop again.
                    Ok(Some(response)) => {
                        if response
                            .events()
                            .iter()
                            .any(|e| e.kv().is_none_or(|kv| kv.key() != own.as_bytes()))
                        {
                            wake.notify_one();
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("etcd watch: {e}");
                        break;
                    }
                }
            },
            Err(e) => tracing::debug!("etcd watch: {e}"),
        }
        tokio::time::sleep(agent.timing.loop_interval()).await;
    }
}
