//! Member-name checks: what a tar entry may be called, where it lands (tablespaces), and how a
//! name or entry type is shown in errors.

use super::*;

/// Strips one leading `./` and one trailing `/`, then requires a relative name made only of
/// normal components. Returns a sub-slice of `raw`.
pub(super) fn clean_name(raw: &[u8]) -> Result<&[u8], UnpackError> {
    let invalid = |reason| UnpackError::InvalidName {
        name: lossy(raw),
        reason,
    };
    let escapes = || UnpackError::Escapes { name: lossy(raw) };
    if raw.contains(&0) {
        return Err(invalid("contains NUL"));
    }
    let name = raw.strip_prefix(b"./").unwrap_or(raw);
    let name = name.strip_suffix(b"/").unwrap_or(name);
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if raw.starts_with(b"/") || name.starts_with(b"/") {
        return Err(escapes());
    }
    if name.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(escapes());
    }
    for component in name.split(|&b| b == b'/') {
        match component {
            b"." => return Err(invalid("`.` component")),
            b"" => return Err(invalid("empty component")),
            _ => {}
        }
    }
    Ok(name)
}

/// The size field, accepting octal and GNU base-256. tar-rs decodes only the low 8 bytes of a
/// base-256 field, so a negative value or one wider than 64 bits is caught here first.
pub(super) fn entry_size(header: &tar::Header, name: &[u8], max: u64) -> Result<u64, UnpackError> {
    let field = &header.as_old().size;
    if field[0] & 0x80 != 0 && (field[0] != 0x80 || field[1..4].iter().any(|&b| b != 0)) {
        return Err(UnpackError::Malformed {
            name: lossy(name),
            reason: "size field is negative or wider than 64 bits".into(),
        });
    }
    let size = header.entry_size().map_err(|_| UnpackError::Malformed {
        name: lossy(name),
        reason: "unreadable size field".into(),
    })?;
    if size > max {
        return Err(UnpackError::ImpossibleSize {
            name: lossy(name),
            size,
        });
    }
    Ok(size)
}

/// `pg_tblspc/<oid>` → oid.
pub(super) fn tablespace_oid(name: &[u8]) -> Option<u32> {
    let digits = name.strip_prefix(b"pg_tblspc/")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether `name` is `dir` or lies under it (both canonical).
pub(super) fn is_within(name: &[u8], dir: &[u8]) -> bool {
    name.starts_with(dir) && (name.len() == dir.len() || name[dir.len()] == b'/')
}

pub(super) fn show_type(kind: u8) -> String {
    if kind.is_ascii_graphic() {
        char::from(kind).to_string()
    } else {
        format!("\\x{kind:02x}")
    }
}

pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
