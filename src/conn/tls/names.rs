//! verify-full's host name check, as libpq matches names: subjectAltName DNS and IP entries,
//! else the Common Name; `*.` covers exactly one label; an embedded NUL refuses the certificate.

use std::net::IpAddr;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A name from a certificate's subjectAltName extension.
#[derive(Debug, Clone, Copy)]
pub(super) enum AltName<'a> {
    Dns(&'a str),
    /// Network byte order, 4 or 16 bytes when well formed.
    Ip(&'a [u8]),
}

/// verify-full's host name check on a DER certificate.
pub(super) fn check_host_name(der: &[u8], host: &str) -> Result<(), String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("could not parse the server certificate: {e}"))?;
    let alt_names: Vec<AltName<'_>> = match cert.subject_alternative_name() {
        Ok(Some(extension)) => extension
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(AltName::Dns(dns)),
                GeneralName::IPAddress(ip) => Some(AltName::Ip(ip)),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(format!(
                "could not read the server certificate's subjectAltName: {e}"
            ))
        }
    };
    // libpq looks at the first Common Name only.
    let common_name =
        match cert.subject().iter_common_name().next() {
            Some(cn) => Some(cn.as_str().map_err(|_| {
                "the server certificate's Common Name is not a text string".to_owned()
            })?),
            None => None,
        };
    host_matches(host, &alt_names, common_name)
}

/// libpq's `pgtls_verify_peer_name_matches_certificate_guts`, on names already taken out of the
/// certificate. subjectAltName entries of the host's kind (DNS name or IP address) rule out the
/// Common Name; DNS entries are compared as text even to an IP address host, as libpq does.
pub(super) fn host_matches(
    host: &str,
    alt_names: &[AltName<'_>],
    common_name: Option<&str>,
) -> Result<(), String> {
    let host_ip: Option<IpAddr> = host.parse().ok();
    let mut check_common_name = true;
    let mut first_name: Option<String> = None;
    let mut examined = 0usize;
    let mut note = |name: String| {
        examined += 1;
        first_name.get_or_insert(name);
    };
    for alt_name in alt_names {
        match *alt_name {
            AltName::Dns(name) => {
                if host_ip.is_none() {
                    check_common_name = false;
                }
                reject_embedded_nul(name)?;
                note(name.to_owned());
                if dns_name_matches(name, host) {
                    return Ok(());
                }
            }
            AltName::Ip(bytes) => {
                if host_ip.is_some() {
                    check_common_name = false;
                }
                let address = match *bytes {
                    [a, b, c, d] => IpAddr::from([a, b, c, d]),
                    _ => match <[u8; 16]>::try_from(bytes) {
                        Ok(v6) => IpAddr::from(v6),
                        Err(_) => {
                            return Err(format!(
                                "the server certificate holds an IP address of invalid length {}",
                                bytes.len()
                            ))
                        }
                    },
                };
                note(address.to_string());
                if host_ip == Some(address) {
                    return Ok(());
                }
            }
        }
    }
    if check_common_name {
        if let Some(name) = common_name {
            reject_embedded_nul(name)?;
            note(name.to_owned());
            if dns_name_matches(name, host) {
                return Ok(());
            }
        }
    }
    Err(match (first_name, examined) {
        (Some(first), 1) => {
            format!("server certificate for `{first}` does not match host `{host}`")
        }
        (Some(first), n) => format!(
            "server certificate for `{first}` (and {} other name{}) does not match host `{host}`",
            n - 1,
            if n == 2 { "" } else { "s" }
        ),
        (None, _) => {
            format!("the server certificate names no host (checking against host `{host}`)")
        }
    })
}

/// A NUL inside a certificate name is an attack on C string handling (CVE-2009-4034).
pub(super) fn reject_embedded_nul(name: &str) -> Result<(), String> {
    if name.contains('\0') {
        return Err("the server certificate holds a name with an embedded null".into());
    }
    Ok(())
}

/// Exact match ignoring ASCII case, or libpq's wildcard: a leading `*.` stands for exactly one
/// non-empty label.
pub(super) fn dns_name_matches(pattern: &str, host: &str) -> bool {
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let (pattern, host) = (pattern.as_bytes(), host.as_bytes());
    let Some(suffix) = pattern.strip_prefix(b"*") else {
        return false;
    };
    if pattern.len() < 3 || !suffix.starts_with(b".") || host.len() <= suffix.len() {
        return false;
    }
    let (label, host_suffix) = host.split_at(host.len() - suffix.len());
    host_suffix.eq_ignore_ascii_case(suffix) && !label.contains(&b'.')
}
