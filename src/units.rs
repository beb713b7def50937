//! Sizes, rates and durations: parsed from what users and servers write, printed for people.
//! Pure, no I/O. Sizes are 1024-based throughout, as PostgreSQL's `kB`/`MB` are.

use std::time::Duration;

/// A value that does not read as the unit it should be; the message says what would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid duration `{0}`: use e.g. 500ms, 10s, 2min or 1h")]
    Duration(String),
    #[error("invalid duration `{0}`: give whole seconds, e.g. 2s, 5 or 1min")]
    WholeSeconds(String),
    #[error("invalid size `{0}`: use e.g. 1048576, 512kB, 16MB or 1GB")]
    Size(String),
    #[error("invalid transfer rate `{0}`: give kB/s, e.g. 500k or 100M")]
    Rate(String),
}

/// `500ms`, `10s`, `2min`, `1h`, or a bare number of seconds (fractions allowed); never zero.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let invalid = || UnitError::Duration(text.to_owned());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "min" | "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(invalid()),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(invalid)
}

/// A duration in whole seconds (etcd's lease unit): `2s`, `2`, `1min`.
pub fn parse_whole_seconds(text: &str) -> Result<u64, UnitError> {
    let duration = parse_duration(text)?;
    if duration.subsec_nanos() != 0 {
        return Err(UnitError::WholeSeconds(text.to_owned()));
    }
    Ok(duration.as_secs())
}

/// Bytes, with PostgreSQL's 1024-based suffixes (`kB`, `MB`, `GB`, `TB`, as `SHOW` prints them)
/// or `KiB`... `TiB`, `k`... `T`.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let invalid = || UnitError::Size(text.to_owned());
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "kB" | "KB" | "KiB" | "k" => 10,
        "MB" | "MiB" | "M" => 20,
        "GB" | "GiB" | "G" => 30,
        "TB" | "TiB" | "T" => 40,
        _ => return Err(invalid()),
    };
    number.checked_mul(1 << shift).ok_or_else(invalid)
}

/// A transfer rate in kB/s, with pg_basebackup's optional `k` / `M` suffix.
pub fn parse_rate_kbps(text: &str) -> Result<u32, UnitError> {
    let (number, factor) = match text.strip_suffix(['M', 'm']) {
        Some(n) => (n, 1024),
        None => (text.strip_suffix(['k', 'K']).unwrap_or(text), 1),
    };
    number
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| UnitError::Rate(text.to_owned()))
}

/// `1.5 KiB`, `16.0 MiB`: one decimal, 1024-based.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `0 B`, `512 B`, `1.5 KiB`: whole bytes below a KiB, where `0.0 B` would look approximate
/// (a lag of zero must read as exactly zero).
pub fn lag_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else {
        human_bytes(bytes)
    }
}

/// `0 ms`, `12 ms`, `1.50 s`, `59.9 s`, `12 min`, `3.2 h`: at most 7 characters.
pub fn human_ms(ms: f64) -> String {
    let s = ms / 1000.0;
    if ms < 0.5 {
        "0 ms".into()
    } else if ms < 999.5 {
        format!("{ms:.0} ms")
    } else if s < 9.995 {
        format!("{s:.2} s")
    } else if s < 99.95 {
        format!("{s:.1} s")
    } else if s < 5999.5 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds() {
        assert_eq!(parse_whole_seconds("2s"), Ok(2));
        assert_eq!(parse_whole_seconds("3"), Ok(3));
        assert_eq!(parse_whole_seconds("1min"), Ok(60));
        assert_eq!(
            parse_whole_seconds("2500ms").unwrap_err().to_string(),
            "invalid duration `2500ms`: give whole seconds, e.g. 2s, 5 or 1min"
        );
        assert!(parse_whole_seconds("0").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2min").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "0", "-1s", "1d", "s", "1.2.3s"] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(err, UnitError::Duration(bad.into()));
            assert!(err.to_string().contains(&format!("`{bad}`")));
        }
    }

    #[test]
    fn sizes_as_users_and_show_write_them() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size("8192").unwrap(), 8192);
        assert_eq!(parse_size("512kB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        for bad in ["", "1.5MB", "-1", "1PB", "99999999999999TB", "16 parsecs"] {
            assert_eq!(parse_size(bad), Err(UnitError::Size(bad.into())), "{bad}");
        }
    }

    #[test]
    fn rates_take_pg_basebackup_suffixes() {
        assert_eq!(parse_rate_kbps("500").unwrap(), 500);
        assert_eq!(parse_rate_kbps("500k").unwrap(), 500);
        assert_eq!(parse_rate_kbps("2M").unwrap(), 2048);
        assert_eq!(parse_rate_kbps("fast"), Err(UnitError::Rate("fast".into())));
        assert!(parse_rate_kbps("4194304M").is_err(), "overflow");
    }

    #[test]
    fn bytes_print_whole_below_a_kib_for_lag() {
        assert_eq!(human_bytes(0), "0.0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
        assert_eq!(lag_bytes(0), "0 B");
        assert_eq!(lag_bytes(512), "512 B");
        assert_eq!(lag_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn times_fit_seven_columns() {
        for (ms, want) in [
            (0.2, "0 ms"),
            (12.4, "12 ms"),
            (999.4, "999 ms"),
            (1500.0, "1.50 s"),
            (59_940.0, "59.9 s"),
            (720_000.0, "12 min"),
            (11_520_000.0, "3.2 h"),
        ] {
            assert_eq!(human_ms(ms), want);
            assert!(want.len() <= 7);
        }
    }
}
