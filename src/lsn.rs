//! `Lsn`: a position in the write-ahead log, and the WAL segment arithmetic built on it.

use std::fmt;
use std::str::FromStr;

use crate::ids::TimelineId;

/// A WAL position: an unsigned byte offset into the log, written `X/X` (upper and lower 32 bits in
/// hex) as PostgreSQL prints it. `0/0` is the invalid position.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

impl Lsn {
    /// `0/0`, which the server uses for "no position" (e.g. an unreported flush).
    pub const INVALID: Lsn = Lsn(0);

    pub const fn new(value: u64) -> Lsn {
        Lsn(value)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub const fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// Bytes from `older` to `self`, or `None` when `older` is ahead.
    pub fn checked_sub(self, older: Lsn) -> Option<u64> {
        self.0.checked_sub(older.0)
    }

    /// Bytes from `older` to `self`, clamped at zero: the lag of a position that may have raced
    /// ahead of the one it is compared with.
    pub fn saturating_sub(self, older: Lsn) -> u64 {
        self.0.saturating_sub(older.0)
    }

    /// Signed distance `self - other`, without overflow for any pair.
    pub fn widening_sub(self, other: Lsn) -> i128 {
        i128::from(self.0) - i128::from(other.0)
    }

    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// The number of the segment holding this position.
    pub fn segment_number(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }

    pub fn segment_offset(self, segment_size: u64) -> u64 {
        self.0 % segment_size
    }

    /// The first position of this position's segment.
    pub fn segment_start(self, segment_size: u64) -> Lsn {
        Lsn(self.0 - self.segment_offset(segment_size))
    }
}

/// The file name of WAL segment `segment` on `timeline`, as PostgreSQL names it in `pg_wal`:
/// timeline, then the segment number split at 2^32 bytes of WAL ("log id" and "segment").
pub fn wal_file_name(timeline: TimelineId, segment: u64, segment_size: u64) -> String {
    let per_log_id = 0x1_0000_0000 / segment_size;
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segment / per_log_id,
        segment % per_log_id
    )
}

/// The name of a timeline history file, e.g. `00000002.history`.
pub fn history_file_name(timeline: TimelineId) -> String {
    format!("{timeline:08X}.history")
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An LSN text that is not `X/X` with 1 to 8 hex digits on each side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN `{0}` (expected the form 16/B374D848)")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(invalid)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            u32::from_str_radix(h, 16).map_err(|_| invalid())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The server's text form, as `Serialize` writes it (the HA agent reads positions back).
impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_server_forms() {
        for (text, value) in [
            ("0/0", 0u64),
            ("0/16B3748", 0x16B3748),
            ("1A/0", 0x1A_0000_0000),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.as_u64(), value);
            assert_eq!(lsn.to_string(), text);
        }
    }

    #[test]
    fn accepts_lower_case_padding_and_whitespace() {
        assert_eq!(" 0/016b3748\n".parse::<Lsn>().unwrap(), Lsn::new(0x16B3748));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "g/0",
            "123456789/0",
            "0/-1",
            "+1/0",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn arithmetic_never_overflows() {
        let a = Lsn::new(10);
        let b = Lsn::new(u64::MAX);
        assert_eq!(a.checked_sub(b), None);
        assert_eq!(a.saturating_sub(b), 0);
        assert_eq!(a.widening_sub(b), 10 - i128::from(u64::MAX));
        assert_eq!(b.checked_add(1), None);
    }

    #[test]
    fn segment_names_follow_the_segment_size() {
        let mb16 = 16 * 1024 * 1024;
        let lsn: Lsn = "1/2000028".parse().unwrap();
        assert_eq!(lsn.segment_start(mb16), "1/2000000".parse().unwrap());
        let seg = lsn.segment_number(mb16);
        assert_eq!(
            wal_file_name(TimelineId::new(1), seg, mb16),
            "000000010000000100000002"
        );
        // With 1 GiB segments there are only 4 segments per log id.
        let gb = 1024 * 1024 * 1024;
        let seg = lsn.segment_number(gb);
        assert_eq!(
            wal_file_name(TimelineId::new(3), seg, gb),
            "000000030000000100000000"
        );
        assert_eq!(history_file_name(TimelineId::new(2)), "00000002.history");
    }
}
