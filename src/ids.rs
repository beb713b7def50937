//! Newtypes for the identifiers PostgreSQL hands out: a timeline and a cluster's system
//! identifier. Plain integers would let a timeline be passed where a port or a count is meant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A WAL timeline: 1 for a new cluster, one more at each promotion. Printed in decimal, and in
/// hex (`{:08X}`) inside WAL and history file names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TimelineId(u32);

impl TimelineId {
    pub const fn new(value: u32) -> TimelineId {
        TimelineId(value)
    }

    pub const fn as_u32(self) -> u32 {
        self.0
    }

    /// The timeline a promotion of a server on this one starts.
    pub const fn next(self) -> TimelineId {
        TimelineId(self.0 + 1)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::UpperHex for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::UpperHex::fmt(&self.0, f)
    }
}

impl FromStr for TimelineId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(TimelineId)
    }
}

/// A cluster's `system_identifier` (pg_control, IDENTIFY_SYSTEM): a standby and its primary
/// share it; a base backup of another cluster has another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SystemId(u64);

impl SystemId {
    pub const fn new(value: u64) -> SystemId {
        SystemId(value)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for SystemId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(SystemId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_print_in_decimal_and_in_file_names_in_hex() {
        let tli: TimelineId = "26".parse().unwrap();
        assert_eq!(tli.to_string(), "26");
        assert_eq!(format!("{tli:08X}"), "0000001A");
        assert_eq!(tli.next(), TimelineId::new(27));
        assert!(TimelineId::new(2) > TimelineId::new(1));
        assert_eq!(serde_json::to_string(&tli).unwrap(), "26");
        assert!("-1".parse::<TimelineId>().is_err());
    }

    #[test]
    fn system_ids_round_trip_as_plain_numbers() {
        let id: SystemId = "7715373979193290766".parse().unwrap();
        assert_eq!(id.as_u64(), 7715373979193290766);
        assert_eq!(id.to_string(), "7715373979193290766");
        assert_eq!(
            serde_json::from_str::<SystemId>("42").unwrap(),
            SystemId::new(42)
        );
    }
}
