//! The routes: each handler copies what the collector published and returns; none reaches a
//! node. The page's files are compiled in.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::collector::{Sample, Shared, HISTORY};

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// The page may load only what pgrepl serves, and nothing may frame it.
const PAGE_POLICY: &str = "default-src 'self'; frame-ancestors 'none'";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    interval: Duration,
}

pub(super) fn router(shared: Arc<Shared>, interval: Duration) -> Router {
    Router::new()
        .route("/", get(page))
        .route(
            "/app.js",
            get(|| file("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route("/style.css", get(|| file("text/css; charset=utf-8", STYLE)))
        .route("/metrics", get(metrics))
        .route("/status.json", get(status))
        .route("/history.json", get(history))
        .with_state(App { shared, interval })
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
        ],
        PAGE,
    )
        .into_response()
}

async fn file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    match app.shared.latest() {
        Some(round) => fresh(PROMETHEUS_TEXT, round.metrics.clone()),
        None => not_yet(),
    }
}

async fn status(State(app): State<App>) -> Response {
    match app.shared.latest() {
        Some(round) => fresh("application/json", round.status.clone()),
        None => not_yet(),
    }
}

#[derive(Serialize)]
struct History {
    interval_ms: u64,
    window_ms: u64,
    samples: Vec<Sample>,
}

async fn history(State(app): State<App>, uri: Uri) -> Response {
    let history = History {
        interval_ms: app.interval.as_millis() as u64,
        window_ms: HISTORY.as_millis() as u64,
        samples: app.shared.history_since(since(&uri)),
    };
    match serde_json::to_string(&history) {
        Ok(body) => fresh("application/json", body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `?since=MS`; anything else means from the start.
fn since(uri: &Uri) -> u64 {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("since=")?.parse().ok())
        .unwrap_or(0)
}

fn fresh(content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn not_yet() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        "the first round has not finished yet\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_its_parameter_and_ignores_the_rest() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(since(&uri("/history.json")), 0);
        assert_eq!(since(&uri("/history.json?since=1700")), 1700);
        assert_eq!(since(&uri("/history.json?x=1&since=42")), 42);
        assert_eq!(since(&uri("/history.json?since=-1")), 0);
    }
}
