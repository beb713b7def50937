//! The agent's background tasks: the lease keep-alive, the watchdog that fences a primary whose
//! renewals stopped, and the etcd watch that wakes the loop. They run beside the loop so a slow
//! action (a promotion, a pg_rewind) never costs the lease and a blocked loop never delays
//! fencing.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Agent;
use crate::ha::core::{Effect, LeaseStep, Renewal};

/// Renews the lease every `renew` interval, sooner after a failure; what the core makes of each
/// answer (a fence and a new lease when etcd says it is gone) is carried out at once.
pub(super) async fn keep_alive(agent: Arc<Agent>, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        let lease = agent.core().lease();
        let sent = agent.now();
        let outcome = match agent.store.renew(lease).await {
            Ok(true) => Renewal::Alive,
            Ok(false) => Renewal::Gone,
            Err(e) => {
                tracing::debug!("lease renewal: {e}");
                Renewal::Failed
            }
        };
        let step = agent.core().renewed(sent, lease, outcome);
        lease_step(&agent, step).await;
        let next = agent.core().next_renewal(sent, agent.now());
        let wait = next.since(agent.now());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Fences a primary whose lease may expire before a renewal gets through: wakes at the fence
/// deadline (which every confirmed renewal moves) and asks the core.
pub(super) async fn watchdog(agent: Arc<Agent>, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        let (fence, wake) = agent.core().watch(agent.now());
        if let Some(effect) = fence {
            lease_step(
                &agent,
                LeaseStep {
                    effects: vec![effect],
                    note: Some("no lease renewal was confirmed in time".into()),
                },
            )
            .await;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wake.since(agent.now())) => {}
        }
    }
}

/// Logs the note and carries out the effects (a fence, a new lease).
async fn lease_step(agent: &Agent, step: LeaseStep) {
    if let Some(note) = &step.note {
        tracing::warn!("{note}");
    }
    for effect in &step.effects {
        if *effect == Effect::Kill {
            tracing::warn!(
                "fencing primary `{}` before its lease can expire elsewhere",
                agent.node.name
            );
        }
        let result = agent.act(effect, None).await;
        agent.core().done(agent.now(), effect, result.is_ok());
        if let Err(e) = result {
            tracing::error!("{effect:?}: {e}");
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
            Ok(mut stream) => loop {
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
        tokio::time::sleep(agent.timing().loop_interval()).await;
    }
}
