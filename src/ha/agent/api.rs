//! The agent's HTTP API (Patroni's REST contract, read-only): health endpoints answering 200 or
//! 503 from what this agent saw a moment ago (`ha::health`), `GET /cluster` (what `status
//! --json` shows of the HA state, from this agent's last read of etcd) and `GET /history` (the
//! promotions). `OPTIONS` and `HEAD` answer like `GET`, without a body: HAProxy's
//! `option httpchk` sends `OPTIONS /`. Nothing here changes anything. With the cluster's TLS
//! the API is HTTPS only (`api_tls`), with the node's certificate.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter};
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::api_tls::TlsListener;
use super::Agent;
use crate::ha::core::Effect;
use crate::ha::health::{self, Endpoint, Facts};
use crate::ha::model::{Probed, Time, View};
use crate::ha::records::LeaseId;

/// What the decision loop last saw, for the API to answer from.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// The last probe, and when it was taken; `None` once an effect may have changed the server.
    pub probe: Option<(Time, Probed)>,
    /// The last read of etcd that succeeded, and when.
    pub view: Option<(Time, View)>,
    /// When the loop last started a round or finished an effect.
    pub loop_at: Time,
    /// The loop is building the node or carrying out effects, which take as long as they take
    /// (a clone, a rewind) and are bounded by their own timeouts: it is not stuck.
    pub busy: bool,
}

impl Seen {
    /// The facts at `now`: what is older than `fresh` is unknown. `lease`: this agent's lease
    /// now; `leads_until`: when it may lapse (the fence deadline).
    pub fn facts(
        &self,
        me: &str,
        now: Time,
        fresh: Duration,
        (lease, leads_until): (LeaseId, Time),
    ) -> Facts {
        let recent = |at: Time| now.since(at) <= fresh;
        let server = match &self.probe {
            Some((at, Probed::Known(local))) if recent(*at) => Some(&local.server),
            _ => None,
        };
        let view = self
            .view
            .as_ref()
            .filter(|(at, _)| recent(*at))
            .map(|(_, v)| v);
        let leader = view.and_then(|v| v.leader.as_ref());
        // The key under the lease this agent holds now (not one it has since lost).
        let leads = leader.is_some_and(|l| l.lease == lease) && now < leads_until;
        let leader_position = leader.and_then(|l| {
            let record = view?.members.iter().find(|m| m.node == l.node)?;
            record.server.position
        });
        // A replica's loop may wait longer: only a primary's stall costs writes.
        let alive_for = if server.is_some_and(|s| !s.in_recovery) {
            fresh
        } else {
            fresh * 2
        };
        Facts {
            running: server.is_some_and(|s| s.running),
            in_recovery: server.is_some_and(|s| s.in_recovery),
            leads,
            paused: view.is_some_and(|v| v.pause.is_some()),
            dcs: view.is_some(),
            locked: leader.is_some(),
            sync: view.is_some_and(|v| health::synchronous(v).contains(&me)),
            loop_alive: self.busy || now.since(self.loop_at) <= alive_for,
            timeline: server.and_then(|s| s.timeline),
            position: server.and_then(|s| s.position),
            leader_position,
        }
    }
}

/// Whether `effect` may change what the API answers from (the server's role or state, who
/// holds the key): until the next probe and read, that is unknown.
pub(super) fn unsettles(effect: &Effect) -> bool {
    !matches!(
        effect,
        Effect::PointAt { .. }
            | Effect::RecordSystemId(_)
            | Effect::WriteSync(_)
            | Effect::Repoint { .. }
            | Effect::SetStandbyNames(_)
            | Effect::RecordPromotion { .. }
            | Effect::RefuseSwitchover(_)
            | Effect::Publish { .. }
    )
}

/// Serves until `cancel`.
pub(super) async fn serve(
    agent: Arc<Agent>,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/cluster", get(cluster))
        .route("/history", get(history))
        .fallback(on(
            MethodFilter::GET
                .or(MethodFilter::HEAD)
                .or(MethodFilter::OPTIONS),
            health_check,
        ))
        .with_state(agent.clone());
    let served = if agent.cluster.spec.tls_on() {
        let dir = agent.cluster.runtime.tls_dir(&agent.node);
        match TlsListener::new(listener, dir.join("server.crt"), dir.join("server.key")) {
            Ok(tls) => {
                axum::serve(tls, app)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await
            }
            Err(e) => Err(e),
        }
    } else {
        axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    };
    if let Err(e) = served {
        tracing::warn!("the HTTP API stopped: {e}");
    }
}

/// Patroni's `?lag=`: how far a replica may be behind, in bytes or with a size unit (`16MB`).
fn max_lag(uri: &Uri) -> Option<u64> {
    let query = uri.query()?;
    let value = query.split('&').find_map(|kv| kv.strip_prefix("lag="))?;
    crate::units::parse_size(value).ok()
}

async fn health_check(State(agent): State<Arc<Agent>>, method: Method, uri: Uri) -> Response {
    let facts = agent.facts();
    let endpoint = Endpoint::of(uri.path());
    let code = health::status(endpoint, &facts, max_lag(&uri));
    let code = StatusCode::from_u16(code).expect("200 or 503");
    let headless = matches!(endpoint, Endpoint::Liveness | Endpoint::Readiness);
    if method != Method::GET || headless {
        return code.into_response();
    }
    json(code, &health::body(&facts))
}

async fn cluster(State(agent): State<Arc<Agent>>) -> Response {
    let view = agent.seen().view.clone().map(|(_, v)| v);
    match view {
        Some(view) => {
            let left = crate::ha::status::lease_left(&agent.store, &view).await;
            let status = crate::ha::status::of_view(
                &agent.cluster,
                agent.endpoints.clone(),
                &view,
                left.ok().flatten(),
            );
            json(StatusCode::OK, &status)
        }
        None => unavailable("this agent has not read etcd yet"),
    }
}

async fn history(State(agent): State<Arc<Agent>>) -> Response {
    match agent.store.history().await {
        Ok(lines) => json(StatusCode::OK, &lines),
        Err(e) => unavailable(&format!("etcd: {e}")),
    }
}

fn json(code: StatusCode, body: &impl serde::Serialize) -> Response {
    let text = serde_json::to_string(body).expect("serializes");
    (code, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
}
