//! A replication connection: socket, buffers, startup and authentication, simple queries.
//!
//! tokio-postgres cannot open these (no CopyBoth, no `replication` startup parameter), so pgrepl
//! keeps its own small connection type. It only speaks the simple query protocol, which is all a
//! walsender accepts. Ordinary SQL (lag views, `pg_promote`) goes through tokio-postgres instead.
//!
//! Reading is cancellation safe: [`Connection::read_message`] only consumes a message once it is
//! complete in the buffer, so it can sit in a `select!` beside a timer.
//!
//! Neighbours: `proto` decodes what is read here; `replication` and `backup` drive the commands.

mod auth;
pub mod config;
mod query;
mod socket;
pub mod sql;
mod tls;

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

pub use self::config::{ConnParams, ConnectOptions, Host, Password, SslMode};
pub use self::query::{IdentifySystem, ResultSet, SlotInfo};
use self::socket::Socket;
pub(crate) use self::tls::system_ca_file;
use crate::proto::backend::{self, BackendMessage};
use crate::proto::server_error::ServerError;
use crate::proto::ProtocolError;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("server said {0}")]
    Server(ServerError),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("server closed the connection unexpectedly")]
    Closed,
    #[error("expected {expected}, server sent {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("timed out after {0:?} connecting to `{1}`")]
    Timeout(Duration, String),
    #[error("{}", sql_error_text(.0))]
    Sql(tokio_postgres::Error),
}

/// tokio-postgres shows "db error" for server errors; show the server's words instead.
fn sql_error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "server said {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => error.to_string(),
    }
}

impl ConnectionError {
    /// The SQLSTATE when the server reported the failure.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Server(e) => Some(&e.code),
            Self::Sql(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Self::Server(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn unexpected(expected: &'static str, got: &BackendMessage) -> Self {
        let got = format!("{got:?}");
        let got = got.chars().take(120).collect();
        Self::Unexpected { expected, got }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// An open session on a PostgreSQL server.
pub struct Connection {
    socket: Socket,
    read_buf: BytesMut,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    /// Where we connected, without secrets, for messages.
    peer: String,
}

/// Read buffer growth step: large enough that BASE_BACKUP chunks arrive in few syscalls. More
/// does not help: the server sends 32 KiB at a time and the client mostly keeps up, so a read
/// rarely finds more waiting (1 MiB measured no faster, and its buffers, which the backup's
/// queues keep alive until written, raised peak memory by a third).
const READ_CHUNK: usize = 256 * 1024;

impl Connection {
    /// Opens a physical replication session (`replication=true`: IDENTIFY_SYSTEM, BASE_BACKUP,
    /// START_REPLICATION) and authenticates. The whole exchange is bounded by `connect_timeout`.
    pub async fn connect(options: &ConnectOptions) -> Result<Connection, ConnectionError> {
        let peer = describe_host(options);
        let work = Self::connect_inner(options, peer.clone());
        match options.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .map_err(|_| ConnectionError::Timeout(limit, peer))?,
            None => work.await,
        }
    }

    async fn connect_inner(
        options: &ConnectOptions,
        peer: String,
    ) -> Result<Connection, ConnectionError> {
        let (socket, channel_binding) = match &options.host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", options.port));
                let stream = UnixStream::connect(&path)
                    .await
                    .map_err(ConnectionError::io(format!(
                        "connect to `{}`",
                        path.display()
                    )))?;
                (Socket::Unix(stream), None)
            }
            Host::Tcp(host) => {
                let stream = TcpStream::connect((host.as_str(), options.port))
                    .await
                    .map_err(ConnectionError::io(format!("connect to `{peer}`")))?;
                // Small status updates must not wait behind Nagle's algorithm.
                stream
                    .set_nodelay(true)
                    .map_err(ConnectionError::io("set TCP_NODELAY"))?;
                tls::negotiate(stream, options, host).await?
            }
        };
        let mut conn = Connection {
            socket,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(8 * 1024),
            parameters: HashMap::new(),
            peer,
        };
        conn.startup(options)?;
        conn.flush().await?;
        auth::authenticate(&mut conn, options, channel_binding.as_deref()).await?;
        conn.wait_until_ready().await?;
        Ok(conn)
    }

    fn startup(&mut self, options: &ConnectOptions) -> Result<(), ConnectionError> {
        // Ordinary SQL sessions go through tokio-postgres (`sql`); this type only replicates.
        let mut params: Vec<(&str, &str)> = vec![("user", &options.user), ("replication", "true")];
        if let Some(name) = &options.application_name {
            params.push(("application_name", name));
        }
        params.push(("client_encoding", "UTF8"));
        frontend::startup_message(params, &mut self.write_buf)
            .map_err(ConnectionError::io("encode startup message"))
    }

    /// After authentication: parameter statuses and BackendKeyData until ReadyForQuery.
    async fn wait_until_ready(&mut self) -> Result<(), ConnectionError> {
        loop {
            match self.read_message().await? {
                BackendMessage::ReadyForQuery => return Ok(()),
                BackendMessage::BackendKeyData => {}
                BackendMessage::ErrorResponse(e) => return Err(ConnectionError::Server(e)),
                other => return Err(ConnectionError::unexpected("ReadyForQuery", &other)),
            }
        }
    }

    /// A server parameter reported at startup (`server_version`, `in_hot_standby`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's major version, from the `server_version` parameter ("16.4 (Debian ...)",
    /// "18beta1", "19devel" all start with the major).
    pub fn server_major(&self) -> Option<u32> {
        let version = self.parameter("server_version")?;
        let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// The host and port this connection reached, without credentials.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The next message, with ParameterStatus recorded and notices logged on the way.
    ///
    /// Cancellation safe: a message is consumed from the buffer only once it is complete.
    pub async fn read_message(&mut self) -> Result<BackendMessage, ConnectionError> {
        loop {
            match self.next_buffered()? {
                Some(BackendMessage::ParameterStatus { name, value }) => {
                    self.parameters.insert(name, value);
                }
                Some(BackendMessage::NoticeResponse(notice)) => log_notice(&notice),
                Some(message) => return Ok(message),
                None => self.fill().await?,
            }
        }
    }

    fn next_buffered(&mut self) -> Result<Option<BackendMessage>, ConnectionError> {
        Ok(backend::parse(&mut self.read_buf)?)
    }

    async fn fill(&mut self) -> Result<(), ConnectionError> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let n = self
            .socket
            .read_buf(&mut self.read_buf)
            .await
            .map_err(ConnectionError::io(format!("read from `{}`", self.peer)))?;
        if n == 0 {
            return Err(ConnectionError::Closed);
        }
        Ok(())
    }

    /// Buffers a simple Query message.
    pub fn send_query(&mut self, text: &str) -> Result<(), ConnectionError> {
        tracing::debug!(command = text, "send");
        frontend::query(text, &mut self.write_buf).map_err(ConnectionError::io("encode query"))
    }

    /// Buffers a CopyData message around `payload`.
    pub fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), ConnectionError> {
        frontend::CopyData::new(payload)
            .map_err(ConnectionError::io("encode CopyData"))?
            .write(&mut self.write_buf);
        Ok(())
    }

    pub fn send_copy_done(&mut self) {
        frontend::copy_done(&mut self.write_buf);
    }

    pub(crate) fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Writes everything buffered to the socket.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let context = format!("write to `{}`", self.peer);
        self.socket
            .write_all(&self.write_buf)
            .await
            .map_err(ConnectionError::io(context.clone()))?;
        self.write_buf.clear();
        self.socket
            .flush()
            .await
            .map_err(ConnectionError::io(context))
    }

    /// Sends Terminate and closes the socket; errors are irrelevant at this point.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let _ = self.socket.shutdown().await;
    }
}

fn describe_host(options: &ConnectOptions) -> String {
    match &options.host {
        Host::Tcp(host) if host.contains(':') => format!("[{host}]:{}", options.port),
        Host::Tcp(host) => format!("{host}:{}", options.port),
        Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), options.port),
    }
}

fn log_notice(notice: &ServerError) {
    match notice.severity.as_str() {
        "WARNING" => tracing::warn!(code = %notice.code, "server: {}", notice.message),
        _ => tracing::info!(code = %notice.code, "server: {}", notice.message),
    }
}
