//! Ordinary SQL sessions through tokio-postgres, configured from the same [`ConnectOptions`] as
//! replication sessions (so `-d`, PG* variables and the passfile behave the same way).

use tokio_postgres::config::{ChannelBinding, SslMode as PgSslMode};
use tokio_postgres::{Client, NoTls};

use super::config::{ChannelBindingMode, Host, SslMode};
use super::{ConnectOptions, ConnectionError};

/// The database when the options name none.
pub const DEFAULT_DATABASE: &str = "postgres";

/// Opens a SQL session and drives it on a background task.
pub async fn connect(
    options: &ConnectOptions,
    application_name: &str,
) -> Result<Client, ConnectionError> {
    let config = config(options, application_name)?;
    let client = match super::tls::sql_connector(options).await? {
        Some(tls) => drive(config.connect(tls).await),
        None => drive(config.connect(NoTls).await),
    };
    client.map_err(ConnectionError::Sql)
}

/// Runs the session's connection on a background task and hands back its client.
fn drive<S, T>(
    connected: Result<(Client, tokio_postgres::Connection<S, T>), tokio_postgres::Error>,
) -> Result<Client, tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = connected?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("SQL session ended: {e}");
        }
    });
    Ok(client)
}

/// tokio-postgres settings equal to `options`. Its sslmode knows no verify-ca or verify-full:
/// they are `require` to it, and the certificate checks are the connector's.
fn config(
    options: &ConnectOptions,
    application_name: &str,
) -> Result<tokio_postgres::Config, ConnectionError> {
    let mut config = tokio_postgres::Config::new();
    match &options.host {
        Host::Tcp(host) => config.host(host),
        Host::Unix(dir) => config.host_path(dir),
    };
    let dbname = options.dbname.as_deref().unwrap_or(DEFAULT_DATABASE);
    config
        .port(options.port)
        .user(&options.user)
        .dbname(dbname)
        .application_name(application_name);
    config.ssl_mode(match options.sslmode {
        // `allow` tries plaintext first, and a server that takes it never asks for more.
        SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    config.channel_binding(match options.channel_binding {
        ChannelBindingMode::Disable => ChannelBinding::Disable,
        ChannelBindingMode::Prefer => ChannelBinding::Prefer,
        ChannelBindingMode::Require => ChannelBinding::Require,
    });
    if let Some(timeout) = options.connect_timeout {
        config.connect_timeout(timeout);
    }
    // tokio-postgres does not read ~/.pgpass; do it here as libpq would.
    let mut with_password = options.clone();
    with_password
        .load_password_from_passfile(dbname)
        .map_err(|e| ConnectionError::Auth(e.to_string()))?;
    if let Some(password) = &with_password.password {
        config.password(password.expose());
    }
    Ok(config)
}
