//! Reading what the user wrote into [`ConnParams`], with libpq's rules (`fe-connect.c`:
//! `conninfo_parse`, `conninfo_uri_parse_options`): `key=value` strings and `postgresql://`
//! URIs, and a URI's redacted form for error messages.

use super::{ConfigError, ConnParams, REDACTED, URI_PREFIXES};

/// libpq's `isspace` set (the C locale), which includes vertical tab unlike
/// `char::is_ascii_whitespace`.
pub(super) fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// `key = value key2='quoted \' value'`: whitespace may surround `=`, values may be
/// single-quoted, and a backslash escapes the next character both inside and outside quotes.
pub(super) fn parse_keyword_value(conninfo: &str) -> Result<ConnParams, ConfigError> {
    let mut params = ConnParams::default();
    let mut chars = conninfo.chars().peekable();
    // A stray word right after a password is most likely the rest of an unquoted password
    // containing a space, so errors must not echo it.
    let mut after_password = false;
    loop {
        while chars.next_if(|&c| is_c_space(c)).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| c != '=' && !is_c_space(c)) {
            key.push(c);
        }
        while chars.next_if(|&c| is_c_space(c)).is_some() {}
        let shown = |key: &str| {
            if after_password {
                REDACTED.to_owned()
            } else {
                key.to_owned()
            }
        };
        if chars.next() != Some('=') {
            return Err(ConfigError::InvalidConninfo(format!(
                "missing `=` after `{}`",
                shown(&key)
            )));
        }
        while chars.next_if(|&c| is_c_space(c)).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(ConfigError::InvalidConninfo(
                            "unterminated quoted string".to_owned(),
                        ))
                    }
                    Some('\'') => break,
                    // A backslash at the very end is dropped, then the quote is unterminated.
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| !is_c_space(c)) {
                // The escaped character may be a space; a trailing backslash is dropped.
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        params.set(&key, &value).map_err(|e| match e {
            ConfigError::UnknownOption(k) => ConfigError::UnknownOption(shown(&k)),
            other => other,
        })?;
        after_password = key == "password";
    }
}

/// `postgresql://[user[:password]@][host][:port][/dbname][?key=value&...]`, every part
/// percent-decoded. The host may be `[ipv6]` or a percent-encoded socket directory.
pub(super) fn parse_uri(uri: &str, rest: &str) -> Result<ConnParams, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidUri {
        uri: redact_uri(uri),
        reason,
    };
    let decode = |raw: &str, what: &str| percent_decode(raw, what).map_err(invalid);
    let mut params = ConnParams::default();

    // libpq looks for `@` before the first `/`; we also stop at `?` so that a query value
    // containing `@` is not mistaken for credentials.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let mut rest = rest;
    if let Some(at) = rest[..authority_end].find('@') {
        let userinfo = &rest[..at];
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            params.user = Some(decode(user, "user name")?);
        }
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            params.password = Some(decode(password, "password")?);
        }
        rest = &rest[at + 1..];
    }

    let netloc = rest;
    let (host, mut rest) = if let Some(bracketed) = rest.strip_prefix('[') {
        let close = bracketed
            .find(']')
            .ok_or_else(|| invalid("missing `]` after IPv6 host address".to_owned()))?;
        if close == 0 {
            return Err(invalid("empty IPv6 host address".to_owned()));
        }
        let after = &bracketed[close + 1..];
        if let Some(c) = after
            .chars()
            .next()
            .filter(|c| !matches!(c, ':' | '/' | '?' | ','))
        {
            return Err(invalid(format!(
                "unexpected character `{c}` after IPv6 host address"
            )));
        }
        (&bracketed[..close], after)
    } else {
        let end = rest.find([':', '/', '?', ',']).unwrap_or(rest.len());
        rest.split_at(end)
    };
    if let Some(port_and_more) = rest.strip_prefix(':') {
        let end = port_and_more
            .find(['/', '?', ','])
            .unwrap_or(port_and_more.len());
        let (port, after) = port_and_more.split_at(end);
        if !port.is_empty() {
            params.port = Some(decode(port, "port")?);
        }
        rest = after;
    }
    if rest.starts_with(',') {
        let list = &netloc[..netloc.find(['/', '?']).unwrap_or(netloc.len())];
        return Err(ConfigError::MultipleHosts(list.to_owned()));
    }
    if !host.is_empty() {
        params.host = Some(decode(host, "host")?);
    }
    if let Some(db_and_more) = rest.strip_prefix('/') {
        let end = db_and_more.find('?').unwrap_or(db_and_more.len());
        let (dbname, after) = db_and_more.split_at(end);
        // An empty dbname is left unset so that PGDATABASE still applies, as in libpq.
        if !dbname.is_empty() {
            params.dbname = Some(decode(dbname, "database name")?);
        }
        rest = after;
    }
    let mut query = rest.strip_prefix('?').unwrap_or(rest);
    while !query.is_empty() {
        let (pair, next) = query.split_once('&').unwrap_or((query, ""));
        query = next;
        let (raw_key, raw_value) = pair
            .split_once('=')
            .ok_or_else(|| invalid(format!("missing `=` in query parameter `{pair}`")))?;
        if raw_value.contains('=') {
            return Err(invalid(format!("extra `=` in query parameter `{raw_key}`")));
        }
        let key = decode(raw_key, "query parameter name")?;
        let value = decode(raw_value, &format!("value of query parameter `{key}`"))?;
        // JDBC spelling, accepted by libpq for compatibility.
        if key == "ssl" && value == "true" {
            params.sslmode = Some("require".to_owned());
        } else {
            params.set(&key, &value)?;
        }
    }
    Ok(params)
}

/// libpq's `conninfo_uri_decode`: `%XX` escapes, surrounding spaces trimmed, inner spaces and
/// `%00` rejected. `what` names the part in the error, which never quotes the value itself
/// because it may be a password.
fn percent_decode(raw: &str, what: &str) -> Result<String, String> {
    let trimmed = raw.trim_matches(' ');
    // A raw NUL would slip past `ConnParams::set`'s check: host, port, user, password and
    // dbname are stored directly. No C string (libpq, the server) can carry one.
    if trimmed.contains('\0') {
        return Err(format!("forbidden NUL byte in {what}"));
    }
    if trimmed.contains(' ') {
        return Err(format!(
            "unexpected space in {what}; use a percent-encoded space (%20)"
        ));
    }
    let bytes = trimmed.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("invalid percent-encoded token in {what}"))?;
        if hex == 0 {
            return Err(format!("forbidden %00 in {what}"));
        }
        out.push(hex);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| format!("{what} is not valid UTF-8 after percent-decoding"))
}

/// The URI with the `user:password@` password and any `password=` query value replaced by
/// `***`, for error messages.
fn redact_uri(uri: &str) -> String {
    let Some(prefix) = URI_PREFIXES.iter().find(|p| uri.starts_with(**p)) else {
        return uri.to_owned();
    };
    let rest = &uri[prefix.len()..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let mut out = String::from(*prefix);
    let mut tail = rest;
    if let Some(at) = rest[..authority_end].find('@') {
        match rest[..at].split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(REDACTED);
            }
            None => out.push_str(&rest[..at]),
        }
        out.push('@');
        tail = &rest[at + 1..];
    }
    let Some((before_query, query)) = tail.split_once('?') else {
        out.push_str(tail);
        return out;
    };
    out.push_str(before_query);
    out.push('?');
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if percent_decode(key, "").as_deref() == Ok("password") => {
                format!("{key}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    out.push_str(&pairs.join("&"));
    out
}
