//! A synchronous replication policy: which standbys a commit waits for, and how many of them.
//!
//! One type for what the cluster file asks (`[sync]`), what the agents record in etcd (the sync
//! record) and what a primary runs (`synchronous_standby_names`). [`FromStr`] reads the server's
//! grammar (`syncrep_gram.y`, `syncrep_scanner.l`), [`Display`](fmt::Display) writes text the
//! server reads back as the same policy, and policies are compared as values, never as text:
//! `a, b` and `FIRST 1 (a, b)` are one policy. Pure: no I/O, and nothing else of pgrepl's.
//!
//! Each container keeps its own field names (`num_sync`/`standbys` in the cluster file,
//! `num`/`members` in etcd); the method is the same string in both, `FIRST` or `ANY`.

use std::fmt;
use std::str::FromStr;

/// How the listed standbys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SyncMethod {
    /// `FIRST n (...)`, `n (...)` or a plain list: the `n` connected standbys listed first.
    #[default]
    Priority,
    /// `ANY n (...)`: any `n` of the listed standbys (quorum commit).
    Quorum,
}

impl SyncMethod {
    /// The keyword that writes it: `FIRST` or `ANY`.
    pub fn keyword(self) -> &'static str {
        match self {
            SyncMethod::Priority => "FIRST",
            SyncMethod::Quorum => "ANY",
        }
    }
}

impl fmt::Display for SyncMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// A method other than `FIRST` or `ANY`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sync.method `{0}` must be FIRST or ANY")]
pub struct SyncMethodError(pub String);

impl FromStr for SyncMethod {
    type Err = SyncMethodError;

    /// `FIRST` or `ANY`, in any case (as the server reads them).
    fn from_str(text: &str) -> Result<SyncMethod, SyncMethodError> {
        [SyncMethod::Priority, SyncMethod::Quorum]
            .into_iter()
            .find(|m| m.keyword().eq_ignore_ascii_case(text))
            .ok_or_else(|| SyncMethodError(text.to_owned()))
    }
}

/// Written as its keyword; read in any case, as cluster files and records always were.
impl serde::Serialize for SyncMethod {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.keyword())
    }
}

impl<'de> serde::Deserialize<'de> for SyncMethod {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Which standbys a commit waits for. No names: asynchronous replication (rendered as the
/// empty setting); every such policy is equal to every other, whatever its method and number.
#[derive(Debug, Clone, Default, Eq)]
pub struct SyncPolicy {
    pub method: SyncMethod,
    /// How many of `names` a commit waits for.
    pub num: u32,
    /// application_names in priority order, as written; `*` matches every standby.
    pub names: Vec<String>,
}

impl SyncPolicy {
    pub fn new<N: Into<String>>(
        method: SyncMethod,
        num: u32,
        names: impl IntoIterator<Item = N>,
    ) -> SyncPolicy {
        SyncPolicy {
            method,
            num,
            names: names.into_iter().map(Into::into).collect(),
        }
    }

    /// Some standby is waited for (a policy with names).
    pub fn is_synchronous(&self) -> bool {
        !self.names.is_empty()
    }
}

impl PartialEq for SyncPolicy {
    fn eq(&self, other: &SyncPolicy) -> bool {
        match (self.is_synchronous(), other.is_synchronous()) {
            (false, false) => true,
            (true, true) => {
                self.method == other.method && self.num == other.num && self.names == other.names
            }
            _ => false,
        }
    }
}

/// `FIRST n (a, b)` or `ANY n (a, b)`; empty when no name is listed. A name is double-quoted
/// unless the server's scanner reads it bare as that same name: a lower-case identifier that is
/// no keyword (application_name matches case-insensitively either way).
impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_synchronous() {
            return Ok(());
        }
        write!(f, "{} {} (", self.method, self.num)?;
        for (i, name) in self.names.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if bare(name) {
                f.write_str(name)?;
            } else {
                write!(f, "\"{}\"", name.replace('"', "\"\""))?;
            }
        }
        f.write_str(")")
    }
}

fn bare(name: &str) -> bool {
    let mut bytes = name.bytes();
    name == "*"
        || (bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !is_keyword(name))
}

fn is_keyword(word: &str) -> bool {
    ["any", "first"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(word))
}

/// A `synchronous_standby_names` this parser does not understand (the server accepted it, so
/// this is a gap in pgrepl, reported rather than guessed around).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse synchronous_standby_names `{0}`")]
pub struct SyncNamesError(pub String);

/// The setting's grammar: an empty (or blank) setting is the asynchronous policy.
impl FromStr for SyncPolicy {
    type Err = SyncNamesError;

    fn from_str(setting: &str) -> Result<SyncPolicy, SyncNamesError> {
        let error = || SyncNamesError(setting.to_owned());
        let tokens = tokenize(setting).ok_or_else(error)?;
        if tokens.is_empty() {
            return Ok(SyncPolicy::default());
        }
        let (method, num, rest) = match tokens.as_slice() {
            [Token::First, Token::Num(n), Token::Open, rest @ ..] => {
                (SyncMethod::Priority, n.as_str(), rest)
            }
            [Token::Any, Token::Num(n), Token::Open, rest @ ..] => {
                (SyncMethod::Quorum, n.as_str(), rest)
            }
            [Token::Num(n), Token::Open, rest @ ..] => (SyncMethod::Priority, n.as_str(), rest),
            list => (SyncMethod::Priority, "1", list),
        };
        let num: u32 = num.parse().map_err(|_| error())?;
        let list = match rest.split_last() {
            Some((Token::Close, list)) if rest.len() != tokens.len() => list,
            _ if rest.len() == tokens.len() => rest,
            _ => return Err(error()),
        };
        let mut names = Vec::new();
        for (i, token) in list.iter().enumerate() {
            match (i % 2, token) {
                // A number is a name too, as written (`007` stays `007`).
                (0, Token::Name(name) | Token::Num(name)) => names.push(name.clone()),
                (1, Token::Comma) => {}
                _ => return Err(error()),
            }
        }
        if names.is_empty() || list.len() % 2 == 0 || num == 0 {
            return Err(error());
        }
        Ok(SyncPolicy { method, num, names })
    }
}

/// The scanner's tokens (`syncrep_scanner.l`): `FIRST` and `ANY` are keywords only unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    First,
    Any,
    Name(String),
    Num(String),
    Comma,
    Open,
    Close,
}

fn tokenize(s: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            ',' => tokens.push(Token::Comma),
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '*' => tokens.push(Token::Name("*".into())),
            '"' => {
                // `""` inside a quoted name is one quote.
                let mut name = String::new();
                loop {
                    match chars.next()? {
                        '"' if chars.next_if_eq(&'"').is_some() => name.push('"'),
                        '"' => break,
                        c => name.push(c),
                    }
                }
                tokens.push(Token::Name(name));
            }
            c if c.is_ascii_digit() => {
                let mut digits = String::from(c);
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    digits.push(d);
                }
                tokens.push(Token::Num(digits));
            }
            c if c.is_alphabetic() || c == '_' || !c.is_ascii() => {
                let mut word = String::from(c);
                while let Some(d) =
                    chars.next_if(|&d| d.is_alphanumeric() || d == '_' || d == '$' || !d.is_ascii())
                {
                    word.push(d);
                }
                tokens.push(match word.to_ascii_lowercase().as_str() {
                    "first" => Token::First,
                    "any" => Token::Any,
                    _ => Token::Name(word),
                });
            }
            _ => return None,
        }
    }
    Some(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use SyncMethod::*;

    fn policy(method: SyncMethod, num: u32, names: &[&str]) -> SyncPolicy {
        SyncPolicy::new(method, num, names.iter().copied())
    }

    #[test]
    fn parses_the_server_grammar() {
        let cases: &[(&str, SyncPolicy)] = &[
            ("", SyncPolicy::default()),
            ("   ", SyncPolicy::default()),
            ("a", policy(Priority, 1, &["a"])),
            ("a, b ,c", policy(Priority, 1, &["a", "b", "c"])),
            ("2 (a, b)", policy(Priority, 2, &["a", "b"])),
            ("FIRST 2 (a, b, c)", policy(Priority, 2, &["a", "b", "c"])),
            ("first 1(s1)", policy(Priority, 1, &["s1"])),
            (
                "ANY 2 (a, \"B c\", *)",
                policy(Quorum, 2, &["a", "B c", "*"]),
            ),
            ("*", policy(Priority, 1, &["*"])),
            ("\"say \"\"hi\"\"\"", policy(Priority, 1, &["say \"hi\""])),
            ("ANY 1 (007, \"any\")", policy(Quorum, 1, &["007", "any"])),
        ];
        for (text, want) in cases {
            let got: SyncPolicy = text.parse().unwrap();
            assert_eq!(&got, want, "{text}");
            assert_eq!(got.names, want.names, "{text}");
        }
        for bad in [
            "a,",
            "FIRST 0 (a)",
            "ANY 1 (a",
            "(a)",
            "a b",
            "\"open",
            "a;b",
            "any, b",
            "FIRST 99999999999 (a)",
        ] {
            let err = bad.parse::<SyncPolicy>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("cannot parse synchronous_standby_names `{bad}`")
            );
        }
    }

    #[test]
    fn renders_what_the_server_reads_back_as_the_same_policy() {
        let cases = [
            (
                policy(Priority, 1, &["pg_slave", "pg_asyncslave"]),
                "FIRST 1 (pg_slave, pg_asyncslave)",
            ),
            (
                policy(Quorum, 1, &["Pg-Slave", "b"]),
                "ANY 1 (\"Pg-Slave\", b)",
            ),
            (policy(Quorum, 2, &["a", "*"]), "ANY 2 (a, *)"),
            // A leading digit or a keyword would not scan as this one name.
            (
                policy(Priority, 1, &["1abc", "42", "any", "First"]),
                "FIRST 1 (\"1abc\", \"42\", \"any\", \"First\")",
            ),
            (
                policy(Priority, 1, &["say \"hi\""]),
                "FIRST 1 (\"say \"\"hi\"\"\")",
            ),
            (policy(Quorum, 0, &[]), ""),
        ];
        for (policy, text) in cases {
            assert_eq!(policy.to_string(), text);
            let back: SyncPolicy = text.parse().unwrap();
            assert_eq!(back, policy, "{text}");
            assert_eq!(back.names, policy.names, "{text}");
        }
    }

    #[test]
    fn policies_compare_by_meaning_not_by_text() {
        let parsed = |t: &str| t.parse::<SyncPolicy>().unwrap();
        assert_eq!(parsed("a, b"), parsed("FIRST 1 (a, b)"));
        assert_eq!(parsed("2 (a, b)"), parsed("first 2 (\"a\", b)"));
        assert_ne!(parsed("FIRST 1 (a, b)"), parsed("ANY 1 (a, b)"));
        assert_ne!(parsed("FIRST 1 (a, b)"), parsed("FIRST 2 (a, b)"));
        assert_ne!(parsed("FIRST 1 (a, b)"), parsed("FIRST 1 (b, a)"));
        // No names: asynchronous, whatever the method and number say.
        assert_eq!(parsed(""), policy(Quorum, 0, &[]));
        assert_ne!(parsed(""), parsed("a"));
        assert!(!parsed(" ").is_synchronous() && parsed("a").is_synchronous());
    }

    #[test]
    fn methods_read_in_any_case_and_write_their_keyword() {
        for (text, method) in [
            ("FIRST", Priority),
            ("first", Priority),
            ("Any", Quorum),
            ("ANY", Quorum),
        ] {
            assert_eq!(text.parse::<SyncMethod>(), Ok(method));
            let json = format!("\"{text}\"");
            assert_eq!(serde_json::from_str::<SyncMethod>(&json).unwrap(), method);
        }
        assert_eq!(serde_json::to_string(&Quorum).unwrap(), "\"ANY\"");
        assert_eq!(Priority.to_string(), "FIRST");
        let err = "most".parse::<SyncMethod>().unwrap_err();
        assert_eq!(err.to_string(), "sync.method `most` must be FIRST or ANY");
        let err = serde_json::from_str::<SyncMethod>("\"most\"").unwrap_err();
        assert!(err
            .to_string()
            .contains("sync.method `most` must be FIRST or ANY"));
    }
}
