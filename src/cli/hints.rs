//! What to tell the user after an error: one "hint:" line for conditions we recognise, keyed by
//! SQLSTATE (messages are translated on non-English servers) or by the I/O error kind. One
//! exception reads the English text: a pg_hba rejection shares SQLSTATE 28000 with other login
//! refusals and only its message tells them apart, so a translated server gets no hint for it.

use std::io;

/// A hint for `error`, given the role pgrepl connected as.
pub fn hint_for(error: &anyhow::Error, user: &str) -> Option<String> {
    for cause in error.chain() {
        let connection_error = cause
            .downcast_ref::<pgrepl::conn::ConnectionError>()
            .or_else(|| {
                cause
                    .downcast_ref::<pgrepl::backup::BackupError>()
                    .and_then(|e| e.connection_error())
            })
            .or_else(|| {
                cause
                    .downcast_ref::<pgrepl::replication::receivewal::ReceiveError>()
                    .and_then(|e| e.connection_error())
            })
            .or_else(|| {
                cause
                    .downcast_ref::<pgrepl::cluster::ClusterError>()
                    .and_then(|e| e.connection_error())
            })
            .or_else(|| {
                // A role change reached through `ha::route` wraps the cluster's error.
                cause
                    .downcast_ref::<pgrepl::ha::HaError>()
                    .and_then(|e| e.connection_error())
            });
        if let Some(hint) = connection_error.and_then(|e| connection_hint(e, user)) {
            return Some(hint);
        }
        if let Some(e) = cause.downcast_ref::<io::Error>() {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                return Some(refused_hint());
            }
        }
    }
    None
}

fn refused_hint() -> String {
    "is the server running, and listening on that address (listen_addresses, port)?".into()
}

fn connection_hint(error: &pgrepl::conn::ConnectionError, user: &str) -> Option<String> {
    use pgrepl::conn::ConnectionError;
    if let ConnectionError::Io { source, .. } = error {
        return (source.kind() == io::ErrorKind::ConnectionRefused).then(refused_hint);
    }
    let server = error.server_error()?;
    Some(match server.code.as_str() {
        // No SQLSTATE of its own (see the header): the English text is the only way to know.
        "28000" if server.message.contains("replication") || server.message.contains("pg_hba") => {
            let client = quoted_after(&server.message, "host \"").unwrap_or_else(|| "<client address>".into());
            let cidr = if client.contains(':') { format!("{client}/128") } else { format!("{client}/32") };
            format!(
                "add this line to pg_hba.conf on the primary, then reload it (SELECT pg_reload_conf()):\n    \
                 host replication {user} {cidr} scram-sha-256"
            )
        }
        "28P01" => format!(
            "check the password of role `{user}`: PGPASSWORD, a line in ~/.pgpass (host:port:replication:{user}:password), \
             or password= in -d"
        ),
        "42501" => format!("give the role the REPLICATION attribute: ALTER ROLE {user} REPLICATION;"),
        "53300" => "all WAL senders are busy: raise max_wal_senders on the primary (a backup with -X stream \
                    uses two) and restart it, or wait for other backups to finish"
            .into(),
        "53400" => "all replication slots are in use: raise max_replication_slots on the primary and restart it".into(),
        "42704" => "create the slot with --create-slot (-C), or name an existing one with -S".into(),
        "42710" => "that slot already exists: drop -C to use it, or choose another name".into(),
        "55006" => "the slot is in use by another connection (a running standby?); use a different slot".into(),
        "58P01" => "the WAL the backup needs was already removed on the server: use -X stream, or a slot (-S/-C)".into(),
        "XX001" => "the server found damaged pages (checksum failures); the copy is complete but suspect".into(),
        _ => return None,
    })
}

/// The text between `prefix` and the next `"`, e.g. the client address in an hba error.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let end = message[start..].find('"')? + start;
    Some(message[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgrepl::conn::ConnectionError;
    use pgrepl::proto::server_error::ServerError;

    fn server(code: &str, message: &str) -> anyhow::Error {
        anyhow::Error::new(ConnectionError::Server(ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn hba_hint_names_the_exact_line() {
        let e = server(
            "28000",
            "no pg_hba.conf entry for replication connection from host \"10.0.0.7\", user \"rep\", no encryption",
        );
        let hint = hint_for(&e, "rep").unwrap();
        assert!(
            hint.ends_with("host replication rep 10.0.0.7/32 scram-sha-256"),
            "{hint}"
        );
    }

    #[test]
    fn known_states_have_hints_and_others_do_not() {
        assert!(hint_for(&server("53300", "too many"), "r")
            .unwrap()
            .contains("max_wal_senders"));
        assert!(hint_for(&server("42501", "denied"), "r")
            .unwrap()
            .contains("ALTER ROLE r REPLICATION"));
        assert!(hint_for(&server("22P02", "whatever"), "r").is_none());
    }

    /// A manual role change returns the cluster's error inside `HaError` (it goes through
    /// `ha::route`): the hint is the same.
    #[test]
    fn a_role_changes_connection_error_gets_its_hint() {
        let refused = ConnectionError::Io {
            context: "connect to `/tmp/.s.PGSQL.5432`".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let e = anyhow::Error::new(pgrepl::ha::HaError::Cluster(
            pgrepl::cluster::ClusterError::Node {
                node: "pg_slave".into(),
                source: Box::new(refused),
            },
        ));
        assert_eq!(hint_for(&e, "r"), Some(refused_hint()));
    }
}
