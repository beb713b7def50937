//! libpq URIs naming several servers: what an application gives libpq to find the primary
//! (`target_session_attrs=read-write`) or a standby with no proxy in between. libpq tries the
//! hosts in order (or shuffled, `load_balance_hosts=random`) and keeps the first whose session
//! has the attributes asked for (`fe-connect.c`, `PQconnectPoll`, CONNECTION_CHECK_TARGET).

use super::{ChannelBindingMode, ConnectOptions, Host};

/// Everything but RFC 3986's unreserved characters is percent-encoded (a socket directory's
/// `/` included, as libpq expects in the host part).
fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn host_part(host: &Host) -> String {
    match host {
        Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
        Host::Tcp(name) => encode(name),
        Host::Unix(dir) => encode(&dir.to_string_lossy()),
    }
}

/// One URI for every server of `servers` (in order), with the first's user, database, password
/// file and TLS settings, then `params`. Never a password.
pub fn multi_host_uri(servers: &[ConnectOptions], params: &[(&str, &str)]) -> Option<String> {
    let first = servers.first()?;
    let hosts: Vec<String> = servers
        .iter()
        .map(|s| format!("{}:{}", host_part(&s.host), s.port))
        .collect();
    let mut query: Vec<(String, String)> = vec![("user".into(), first.user.clone())];
    if let Some(passfile) = &first.passfile {
        query.push(("passfile".into(), passfile.to_string_lossy().into_owned()));
    }
    query.push(("sslmode".into(), first.sslmode.as_str().into()));
    if let Some(root) = &first.sslrootcert {
        query.push(("sslrootcert".into(), root.to_string_lossy().into_owned()));
    }
    if first.channel_binding != ChannelBindingMode::Prefer {
        query.push((
            "channel_binding".into(),
            first.channel_binding.as_str().into(),
        ));
    }
    query.extend(params.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    let query: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    Some(format!(
        "postgresql://{}/{}?{}",
        hosts.join(","),
        encode(first.dbname.as_deref().unwrap_or("postgres")),
        query.join("&")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::config::ConnParams;

    fn server(conninfo: &str) -> ConnectOptions {
        let params = ConnParams::parse(conninfo).unwrap();
        ConnectOptions::resolve(params, &|_| None).unwrap()
    }

    #[test]
    fn names_every_host_in_order_with_the_first_ones_settings() {
        let servers = [
            server("host='/tmp/pg sock' port=54320 user=postgres dbname=postgres"),
            server("host='/tmp/pg sock' port=54321 user=postgres dbname=postgres"),
            server("host=::1 port=54322 user=postgres dbname=postgres"),
        ];
        let uri = multi_host_uri(&servers, &[("target_session_attrs", "read-write")]).unwrap();
        assert_eq!(
            uri,
            "postgresql://%2Ftmp%2Fpg%20sock:54320,%2Ftmp%2Fpg%20sock:54321,[::1]:54322/postgres\
             ?user=postgres&sslmode=prefer&target_session_attrs=read-write"
        );
        assert!(multi_host_uri(&[], &[]).is_none());
    }

    #[test]
    fn a_password_file_travels_and_a_password_never_does() {
        let with_password =
            server("host=127.0.0.1 port=5432 user=app password=s3cret passfile=/x/pass dbname=db");
        let uri = multi_host_uri(&[with_password], &[]).unwrap();
        assert!(!uri.contains("s3cret"), "{uri}");
        assert!(uri.contains("passfile=%2Fx%2Fpass"), "{uri}");
    }
}
