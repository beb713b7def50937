//! `pgrepl lag --serve`: one collector running a round every interval, and an HTTP server
//! (axum) that serves what the last round found:
//! - `GET /metrics`: the Prometheus text exposition ([`metrics`]).
//! - `GET /status.json`: the `--json` report of the last round (schema in [`crate::lag`]).
//! - `GET /history.json?since=MS`: every standby's replay lag per round over the last ten
//!   minutes, for the page's charts (`t` in milliseconds since the Unix epoch).
//! - `GET /`: a live page of the topology and the replay lag, with its script and style served
//!   from here too (no other origin is allowed by its content security policy).
//!
//! Before the first round has finished, `/metrics` and `/status.json` answer 503. Reports
//! carry conninfos without their password, so nothing served holds a secret.

mod collector;
mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{GatherOptions, Node};

/// Where `--serve` listens unless told otherwise: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9187";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Time from the start of one round to the start of the next.
    pub interval: Duration,
    pub gather: GatherOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// A bound listening socket, so the caller can say where it is before serving.
pub struct Server {
    listener: TcpListener,
}

impl Server {
    pub async fn bind(addr: SocketAddr) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Server { listener })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        self.listener.local_addr().map_err(ServeError::Http)
    }

    /// Collects and serves until `cancel`; then stops taking connections, lets requests in
    /// flight finish, and returns.
    pub async fn run(
        self,
        nodes: Vec<Node>,
        options: ServeOptions,
        cancel: CancellationToken,
    ) -> Result<(), ServeError> {
        let shared = Arc::new(collector::Shared::default());
        let collecting = tokio::spawn(collector::run(
            nodes,
            options,
            shared.clone(),
            cancel.clone(),
        ));
        let served = axum::serve(self.listener, http::router(shared, options.interval))
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .await;
        // The server also ends on its own error: the collector must not outlive it.
        cancel.cancel();
        let _ = collecting.await;
        served.map_err(ServeError::Http)
    }
}
