//! The password file (`~/.pgpass`) lookup, as libpq's `passwordFromFile`: fields separated by
//! `:`, `*` matching anything, `\\` escaping, the first match winning, and files others can read
//! ignored. [`super::ConnectOptions::load_password_from_passfile`] decides which file and key.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{ConfigError, Password};

/// Look up `[host, port, database, user]` in a password file.
pub(super) fn password_from_file(
    path: &Path,
    wanted: [&str; 4],
) -> Result<Option<Password>, ConfigError> {
    let read_error = |source| ConfigError::Passfile {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file; ignoring it");
        return Ok(None);
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "password file has group or world access; ignoring it (permissions should be u=rw (0600) or less)"
        );
        return Ok(None);
    }
    let mut contents = Vec::new();
    (&file).read_to_end(&mut contents).map_err(read_error)?;
    for (index, line) in contents.split(|&b| b == b'\n').enumerate() {
        let line = trim_end_crlf(line);
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let Some(password) = wanted.iter().try_fold(line, |rest, want| {
            match_passfile_field(rest, want.as_bytes())
        }) else {
            continue;
        };
        let password = unescape_passfile_password(password);
        let password = String::from_utf8(password).map_err(|_| ConfigError::PassfileEncoding {
            path: path.to_owned(),
            line: index + 1,
        })?;
        // An empty password is a match that supplies nothing; libpq stops there too.
        return Ok(Some(Password(password)).filter(|p| !p.0.is_empty()));
    }
    Ok(None)
}

fn trim_end_crlf(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n'] = line {
        line = rest;
    }
    line
}

/// If the first `:`-terminated field of `line` matches `want`, the rest of the line after that
/// `:`. A field of exactly `*` matches anything; `\` makes the next byte literal.
fn match_passfile_field<'a>(line: &'a [u8], want: &[u8]) -> Option<&'a [u8]> {
    if let Some(rest) = line.strip_prefix(b"*:") {
        return Some(rest);
    }
    let mut want = want.iter();
    let mut i = 0;
    while i < line.len() {
        let escaped = line[i] == b'\\';
        if escaped {
            i += 1;
        }
        let byte = *line.get(i)?;
        if byte == b':' && !escaped {
            return want.next().is_none().then(|| &line[i + 1..]);
        }
        if want.next() != Some(&byte) {
            return None;
        }
        i += 1;
    }
    None
}

/// The password field ends at the first unescaped `:`; `\x` stands for `x`.
fn unescape_passfile_password(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b':' => break,
            b'\\' => out.push(bytes.next().unwrap_or(b'\\')),
            b => out.push(b),
        }
    }
    out
}
