//! libpq's keyword settings with a fixed set of values (`sslmode`, `channel_binding`): each an
//! enum spelled as libpq spells it, parsed case-sensitively as libpq compares with `strcmp`.

use std::fmt;
use std::str::FromStr;

use super::ConfigError;

/// An enum whose variants are spelled by libpq's keywords: `as_str`, `Display` and `FromStr`
/// (an unknown spelling is `$error`).
macro_rules! libpq_keyword {
    ($(#[$doc:meta])* $name:ident, $error:ident, {
        $($(#[$vdoc:meta])* $variant:ident => $spelling:literal,)+
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The libpq spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $spelling,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ConfigError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($spelling => Ok($name::$variant),)+
                    _ => Err(ConfigError::$error(s.to_owned())),
                }
            }
        }
    };
}

libpq_keyword!(
    /// libpq's `sslmode`.
    SslMode, InvalidSslMode, {
        /// Never use TLS.
        Disable => "disable",
        /// Try plaintext first, then TLS.
        Allow => "allow",
        /// Try TLS first, then plaintext (libpq's default).
        Prefer => "prefer",
        /// TLS without certificate verification.
        Require => "require",
        /// TLS, and the server certificate must chain to `sslrootcert`.
        VerifyCa => "verify-ca",
        /// As `VerifyCa`, and the certificate must also name the host.
        VerifyFull => "verify-full",
    }
);

libpq_keyword!(
    /// libpq's `channel_binding` (SCRAM-SHA-256-PLUS over TLS).
    ChannelBindingMode, InvalidChannelBinding, {
        /// Never use channel binding.
        Disable => "disable",
        /// Use it when the server and TLS allow (libpq's default).
        Prefer => "prefer",
        /// Fail unless the server authenticates with channel binding.
        Require => "require",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_are_case_sensitive() {
        for mode in [
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(mode.to_string().parse::<SslMode>().unwrap(), mode);
        }
        for mode in [
            ChannelBindingMode::Disable,
            ChannelBindingMode::Prefer,
            ChannelBindingMode::Require,
        ] {
            assert_eq!(
                mode.to_string().parse::<ChannelBindingMode>().unwrap(),
                mode
            );
        }
        assert_eq!(SslMode::VerifyFull.to_string(), "verify-full");
        assert!(matches!(
            "Require".parse::<SslMode>(),
            Err(ConfigError::InvalidSslMode(s)) if s == "Require"
        ));
        assert!(matches!(
            "on".parse::<ChannelBindingMode>(),
            Err(ConfigError::InvalidChannelBinding(_))
        ));
    }
}
