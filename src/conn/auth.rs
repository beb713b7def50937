//! The authentication exchange: trust, cleartext, MD5 and SCRAM-SHA-256 (with channel binding
//! over TLS), using postgres-protocol's hashing and SCRAM state machine.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::frontend;

use super::config::ChannelBindingMode;
use super::{ConnectOptions, Connection, ConnectionError};
use crate::proto::backend::BackendMessage;

/// Runs the exchange until AuthenticationOk. `tls_end_point` is the server certificate hash when
/// the connection is encrypted (for SCRAM-SHA-256-PLUS).
pub(super) async fn authenticate(
    conn: &mut Connection,
    options: &ConnectOptions,
    tls_end_point: Option<&[u8]>,
) -> Result<(), ConnectionError> {
    let mut scram: Option<ScramSha256> = None;
    loop {
        match conn.read_message().await? {
            BackendMessage::AuthenticationOk => {
                if scram.is_none() && options.channel_binding == ChannelBindingMode::Require {
                    return Err(ConnectionError::Auth(
                        "channel_binding=require, but the server did not authenticate with SCRAM"
                            .into(),
                    ));
                }
                return Ok(());
            }
            BackendMessage::AuthenticationCleartextPassword => {
                let password = password(options)?;
                frontend::password_message(password.as_bytes(), conn.write_buf())
                    .map_err(|e| ConnectionError::Auth(e.to_string()))?;
            }
            BackendMessage::AuthenticationMd5Password { salt } => {
                let password = password(options)?;
                let hash = md5_hash(options.user.as_bytes(), password.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), conn.write_buf())
                    .map_err(|e| ConnectionError::Auth(e.to_string()))?;
            }
            BackendMessage::AuthenticationSasl { mechanisms } => {
                let password = password(options)?;
                let offers = |m: &str| mechanisms.iter().any(|offered| offered == m);
                let (mechanism, binding) = match (tls_end_point, options.channel_binding) {
                    (Some(hash), mode) if mode != ChannelBindingMode::Disable && offers(SCRAM_SHA_256_PLUS) => {
                        (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(hash.to_vec()))
                    }
                    (_, ChannelBindingMode::Require) => {
                        return Err(ConnectionError::Auth(
                            "channel_binding=require, but the connection is not encrypted or the server \
                             does not offer SCRAM-SHA-256-PLUS"
                                .into(),
                        ))
                    }
                    (Some(_), _) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                    (None, _) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                };
                if !offers(mechanism) {
                    return Err(ConnectionError::Auth(format!(
                        "server offers only SASL mechanisms {mechanisms:?}; pgrepl supports SCRAM-SHA-256"
                    )));
                }
                let state = ScramSha256::new(password.as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, state.message(), conn.write_buf())
                    .map_err(|e| ConnectionError::Auth(e.to_string()))?;
                scram = Some(state);
            }
            BackendMessage::AuthenticationSaslContinue(data) => {
                let state = scram.as_mut().ok_or_else(|| out_of_order("SASLContinue"))?;
                state
                    .update(&data)
                    .map_err(|e| ConnectionError::Auth(format!("SCRAM: {e}")))?;
                frontend::sasl_response(state.message(), conn.write_buf())
                    .map_err(|e| ConnectionError::Auth(e.to_string()))?;
            }
            BackendMessage::AuthenticationSaslFinal(data) => {
                let state = scram.as_mut().ok_or_else(|| out_of_order("SASLFinal"))?;
                // Proves the server knows the password too; refuse an impostor.
                state
                    .finish(&data)
                    .map_err(|e| ConnectionError::Auth(format!("SCRAM server signature: {e}")))?;
                continue;
            }
            BackendMessage::AuthenticationUnsupported(method) => {
                return Err(ConnectionError::Auth(format!(
                    "server requested {method} authentication, which pgrepl does not support; \
                     use scram-sha-256, md5, password or trust in pg_hba.conf"
                )))
            }
            BackendMessage::ErrorResponse(e) => return Err(ConnectionError::Server(e)),
            other => {
                return Err(ConnectionError::unexpected(
                    "an authentication request",
                    &other,
                ))
            }
        }
        conn.flush().await?;
    }
}

fn out_of_order(what: &str) -> ConnectionError {
    ConnectionError::Auth(format!(
        "server sent {what} before the SCRAM exchange began"
    ))
}

/// The password: given explicitly, else from the passfile, looked up only when the server asks.
fn password(options: &ConnectOptions) -> Result<String, ConnectionError> {
    if let Some(password) = &options.password {
        return Ok(password.expose().to_owned());
    }
    let mut with_passfile = options.clone();
    // Physical replication connections match the passfile's database field "replication".
    with_passfile
        .load_password_from_passfile("replication")
        .map_err(|e| ConnectionError::Auth(e.to_string()))?;
    with_passfile
        .password
        .map(|p| p.expose().to_owned())
        .ok_or_else(|| {
            ConnectionError::Auth(format!(
                "the server asks user `{}` for a password and none was given: set PGPASSWORD, add a line \
                 to ~/.pgpass (or PGPASSFILE), or put password= in the connection string",
                options.user
            ))
        })
}
