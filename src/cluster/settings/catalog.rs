//! What PostgreSQL accepts for each setting, as the server's `pg_settings` describes it, and the
//! check of a `NAME=VALUE` against it before any node changes. Pure: the rows are read by
//! `settings::catalog_of`, the check is tested on fixtures.
//!
//! The check follows the server's own parser (guc.c's `parse_bool`, `parse_int`, `parse_real`
//! and `convert_to_base_unit`): a value `config set` accepts is one `ALTER SYSTEM` accepts.

use std::collections::BTreeMap;
use std::fmt;

/// Settings a standby must run with at least the primary's value (PostgreSQL refuses to replay
/// otherwise: `CheckRequiredParameterValues`): raised on the standbys first, lowered on the
/// primary first.
pub const AT_LEAST_THE_PRIMARYS: [&str; 5] = [
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

/// Settings pgrepl writes itself: a cluster-wide value would break replication or fight it.
const MANAGED: [(&str, &str); 12] = [
    (
        "primary_conninfo",
        "each standby's points at its own primary",
    ),
    ("primary_slot_name", "each standby's names its own slot"),
    (
        "synchronous_standby_names",
        "it follows the sync policy: set [sync] in the cluster file",
    ),
    ("port", "each node's is in the cluster file"),
    (
        "listen_addresses",
        "each node's follows its host in the cluster file",
    ),
    ("data_directory", "each node has its own"),
    ("config_file", "each node has its own"),
    ("hba_file", "each node has its own"),
    ("ident_file", "each node has its own"),
    (
        "ssl_cert_file",
        "each node has its own certificate: see `pgrepl tls`",
    ),
    (
        "ssl_key_file",
        "each node has its own key: see `pgrepl tls`",
    ),
    ("ssl_ca_file", "the cluster CA is set by [tls]"),
];

/// One row of `pg_settings`.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub name: String,
    pub kind: Kind,
    /// The base unit of an integer or real setting (`kB`, `8kB`, `ms`, `s`, `min`...).
    pub unit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `pg_settings.context`: `postmaster` needs a restart, `internal` never changes.
    pub context: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Bool,
    Integer,
    Real,
    Enum(Vec<String>),
    String,
}

impl Definition {
    /// Built from `pg_settings`' text columns.
    pub fn from_row(
        name: &str,
        vartype: &str,
        unit: Option<&str>,
        (min, max): (Option<&str>, Option<&str>),
        enumvals: Option<Vec<String>>,
        context: &str,
    ) -> Definition {
        let kind = match vartype {
            "bool" => Kind::Bool,
            "integer" => Kind::Integer,
            "real" => Kind::Real,
            "enum" => Kind::Enum(enumvals.unwrap_or_default()),
            _ => Kind::String,
        };
        Definition {
            name: name.to_owned(),
            kind,
            unit: unit.filter(|u| !u.is_empty()).map(str::to_owned),
            min: min.and_then(|m| m.parse().ok()),
            max: max.and_then(|m| m.parse().ok()),
            context: context.to_owned(),
        }
    }

    /// A change takes effect only when the server restarts.
    pub fn needs_restart(&self) -> bool {
        self.context == "postmaster"
    }
}

/// Why a `NAME=VALUE` is refused, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingError {
    Unknown {
        name: String,
    },
    Managed {
        name: String,
        why: &'static str,
    },
    Fixed {
        name: String,
    },
    Invalid {
        name: String,
        value: String,
        expected: String,
    },
    OutOfRange {
        name: String,
        value: String,
        range: String,
    },
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingError::Unknown { name } => write!(
                f,
                "`{name}`: the server knows no such setting (see `SELECT name FROM pg_settings`)"
            ),
            SettingError::Managed { name, why } => {
                write!(f, "`{name}` is pgrepl's to set: {why}")
            }
            SettingError::Fixed { name } => write!(
                f,
                "`{name}` cannot be changed: it is fixed when PostgreSQL is built or initialised"
            ),
            SettingError::Invalid {
                name,
                value,
                expected,
            } => write!(f, "`{name}` = `{value}`: expected {expected}"),
            SettingError::OutOfRange { name, value, range } => {
                write!(f, "`{name}` = `{value}` is out of range: {range}")
            }
        }
    }
}

impl std::error::Error for SettingError {}

/// Every setting of one server.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    definitions: BTreeMap<String, Definition>,
}

impl Catalog {
    pub fn new(definitions: impl IntoIterator<Item = Definition>) -> Catalog {
        Catalog {
            definitions: definitions
                .into_iter()
                .map(|d| (d.name.clone(), d))
                .collect(),
        }
    }

    /// The definition of a setting that may be changed cluster-wide (names are
    /// case-insensitive, as the server's).
    pub fn changeable(&self, name: &str) -> Result<&Definition, SettingError> {
        let lower = name.to_ascii_lowercase();
        if let Some((_, why)) = MANAGED.iter().find(|(m, _)| *m == lower) {
            return Err(SettingError::Managed { name: lower, why });
        }
        let definition = self.definitions.get(&lower).ok_or(SettingError::Unknown {
            name: lower.clone(),
        })?;
        if definition.context == "internal" {
            return Err(SettingError::Fixed { name: lower });
        }
        Ok(definition)
    }

    /// Checks `value` for `name` as the server would parse it; the setting's definition when
    /// it would be accepted.
    pub fn check(&self, name: &str, value: &str) -> Result<&Definition, SettingError> {
        let definition = self.changeable(name)?;
        check_value(definition, value.trim())?;
        Ok(definition)
    }
}

fn check_value(d: &Definition, value: &str) -> Result<(), SettingError> {
    let invalid = |expected: String| SettingError::Invalid {
        name: d.name.clone(),
        value: value.to_owned(),
        expected,
    };
    match &d.kind {
        Kind::Bool => parse_bool(value)
            .map(drop)
            .ok_or_else(|| invalid("on or off (true/false, yes/no, 1/0)".into())),
        Kind::Enum(values) => {
            if values.iter().any(|v| v.eq_ignore_ascii_case(value)) {
                Ok(())
            } else {
                Err(invalid(format!("one of {}", values.join(", "))))
            }
        }
        Kind::String => Ok(()),
        Kind::Integer | Kind::Real => {
            let expected = match (&d.kind, &d.unit) {
                (Kind::Integer, None) => "an integer".to_owned(),
                (_, None) => "a number".to_owned(),
                (_, Some(unit)) => {
                    format!("a number with a unit ({}), or in {unit}", units_of(unit))
                }
            };
            let number = in_base_unit(value, d.unit.as_deref()).ok_or_else(|| invalid(expected))?;
            // The server rounds an integer setting given in another unit to its own.
            let number = if d.kind == Kind::Integer {
                number.round()
            } else {
                number
            };
            let below = d.min.is_some_and(|min| number < min);
            let above = d.max.is_some_and(|max| number > max);
            if below || above {
                let unit = d.unit.as_deref().map_or(String::new(), |u| format!(" {u}"));
                let range = format!(
                    "{} .. {}{unit}",
                    d.min.map_or("-".into(), |m| m.to_string()),
                    d.max.map_or("-".into(), |m| m.to_string())
                );
                return Err(SettingError::OutOfRange {
                    name: d.name.clone(),
                    value: value.to_owned(),
                    range,
                });
            }
            Ok(())
        }
    }
}

/// The server's booleans: on/off, true/false, yes/no, 1/0, and unique prefixes of the words.
pub fn parse_bool(value: &str) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &str| !v.is_empty() && word.starts_with(&v);
    match v.as_str() {
        "on" | "1" => Some(true),
        "off" | "of" | "0" => Some(false),
        _ if prefix_of("true") || prefix_of("yes") => Some(true),
        _ if prefix_of("false") || prefix_of("no") => Some(false),
        _ => None,
    }
}

const MEMORY_UNITS: [(&str, f64); 5] = [
    ("B", 1.0),
    ("kB", 1024.0),
    ("MB", 1024.0 * 1024.0),
    ("GB", 1024.0 * 1024.0 * 1024.0),
    ("TB", 1024.0 * 1024.0 * 1024.0 * 1024.0),
];
const TIME_UNITS: [(&str, f64); 6] = [
    ("us", 0.001),
    ("ms", 1.0),
    ("s", 1000.0),
    ("min", 60_000.0),
    ("h", 3_600_000.0),
    ("d", 86_400_000.0),
];

/// The units a value of a setting in `base` may be written in.
fn units_of(base: &str) -> &'static str {
    if base_in(base, &TIME_UNITS).is_some() {
        "us, ms, s, min, h, d"
    } else {
        "B, kB, MB, GB, TB"
    }
}

/// How many bytes or milliseconds one `base` is (`8kB`: 8192 bytes), in the table it belongs to.
fn base_in(base: &str, table: &[(&str, f64)]) -> Option<f64> {
    let digits = base.chars().take_while(char::is_ascii_digit).count();
    let (count, unit) = base.split_at(digits);
    let count: f64 = if count.is_empty() {
        1.0
    } else {
        count.parse().ok()?
    };
    let (_, size) = table.iter().find(|(name, _)| *name == unit)?;
    Some(count * size)
}

/// A number, optionally with a unit (units need a setting that has one), in the setting's base
/// unit. Case matters for units, as in the server.
fn in_base_unit(value: &str, base: Option<&str>) -> Option<f64> {
    let end = value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E' | 'x')))
        .map_or(value.len(), |(i, _)| i);
    let (number, unit) = value.split_at(end);
    let number = parse_number(number)?;
    let unit = unit.trim();
    if unit.is_empty() {
        return Some(number);
    }
    let base = base?;
    for table in [&MEMORY_UNITS[..], &TIME_UNITS[..]] {
        if let (Some(size), Some(base_size)) = (base_in(unit, table), base_in(base, table)) {
            if unit.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                return None;
            }
            return Some(number * size / base_size);
        }
    }
    None
}

fn parse_number(text: &str) -> Option<f64> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok().map(|n| n as f64);
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as PostgreSQL 15's pg_settings has them.
    fn catalog() -> Catalog {
        let row = |name, vartype, unit, min, max, enums: Option<&[&str]>, context| {
            Definition::from_row(
                name,
                vartype,
                unit,
                (min, max),
                enums.map(|e| e.iter().map(|s| s.to_string()).collect()),
                context,
            )
        };
        Catalog::new([
            row(
                "max_connections",
                "integer",
                None,
                Some("1"),
                Some("262143"),
                None,
                "postmaster",
            ),
            row(
                "shared_buffers",
                "integer",
                Some("8kB"),
                Some("16"),
                Some("1073741823"),
                None,
                "postmaster",
            ),
            row(
                "work_mem",
                "integer",
                Some("kB"),
                Some("64"),
                Some("2147483647"),
                None,
                "user",
            ),
            row(
                "statement_timeout",
                "integer",
                Some("ms"),
                Some("0"),
                Some("2147483647"),
                None,
                "user",
            ),
            row(
                "checkpoint_timeout",
                "integer",
                Some("s"),
                Some("30"),
                Some("86400"),
                None,
                "sighup",
            ),
            row(
                "random_page_cost",
                "real",
                None,
                Some("0"),
                Some("1.79769e+308"),
                None,
                "user",
            ),
            row(
                "log_min_messages",
                "enum",
                None,
                None,
                None,
                Some(&["debug1", "info", "warning", "error"]),
                "superuser",
            ),
            row("fsync", "bool", None, None, None, None, "sighup"),
            row(
                "block_size",
                "integer",
                None,
                Some("8192"),
                Some("8192"),
                None,
                "internal",
            ),
            row("application_name", "string", None, None, None, None, "user"),
            row(
                "port",
                "integer",
                None,
                Some("1"),
                Some("65535"),
                None,
                "postmaster",
            ),
        ])
    }

    #[test]
    fn values_the_server_takes_pass() {
        let c = catalog();
        for (name, value) in [
            ("max_connections", "200"),
            ("MAX_CONNECTIONS", " 200 "),
            ("shared_buffers", "128MB"),
            ("shared_buffers", "16384"),
            ("shared_buffers", "1.5GB"),
            ("work_mem", "4MB"),
            ("statement_timeout", "30s"),
            ("statement_timeout", "1min"),
            ("checkpoint_timeout", "15min"),
            ("random_page_cost", "1.1"),
            ("log_min_messages", "WARNING"),
            ("fsync", "off"),
            ("fsync", "yes"),
            ("fsync", "t"),
            ("application_name", "anything at all"),
        ] {
            assert!(c.check(name, value).is_ok(), "{name} = {value}");
        }
        assert!(c.check("shared_buffers", "1GB").unwrap().needs_restart());
        assert!(!c.check("work_mem", "1GB").unwrap().needs_restart());
    }

    #[test]
    fn bad_values_are_refused_naming_the_setting() {
        let c = catalog();
        let refused = |name: &str, value: &str| c.check(name, value).unwrap_err().to_string();
        assert_eq!(
            refused("shared_buffers", "nonsense"),
            "`shared_buffers` = `nonsense`: expected a number with a unit (B, kB, MB, GB, TB), or in 8kB"
        );
        assert!(refused("shared_buffers", "10").contains("out of range: 16 .. 1073741823 8kB"));
        assert!(refused("shared_buffers", "128ms").contains("expected a number with a unit"));
        assert!(refused("max_connections", "0").contains("out of range"));
        assert!(refused("max_connections", "10MB").contains("expected an integer"));
        assert!(refused("checkpoint_timeout", "10s").contains("out of range"));
        assert!(refused("log_min_messages", "loud").contains("one of debug1, info, warning, error"));
        assert!(refused("fsync", "maybe").contains("on or off"));
        assert!(refused("shared_bufers", "1GB").contains("no such setting"));
        assert!(refused("block_size", "4096").contains("cannot be changed"));
        assert!(refused("port", "5433").contains("pgrepl's to set"));
        assert!(refused("synchronous_standby_names", "*").contains("[sync]"));
    }

    #[test]
    fn booleans_are_the_servers() {
        for (text, value) in [
            ("on", true),
            ("OFF", false),
            ("tr", true),
            ("n", false),
            ("1", true),
        ] {
            assert_eq!(parse_bool(text), Some(value), "{text}");
        }
        for text in ["o", "", "2", "yess"] {
            assert_eq!(parse_bool(text), None, "{text}");
        }
    }
}
