//! libpq-compatible connection settings.
//!
//! [`ConnParams`] holds what the user wrote: a `key=value` conninfo string or a
//! `postgresql://` URI, parsed with libpq's rules (`fe-connect.c`: `conninfo_parse`,
//! `conninfo_uri_parse_options`). [`ConnectOptions::resolve`] turns it into validated settings,
//! falling back to the `PG*` environment variables and then libpq's defaults, and
//! [`ConnectOptions::load_password_from_passfile`] reads `~/.pgpass` the way `passwordFromFile`
//! does.
//!
//! Going the other way, [`ConnectOptions::redacted`] renders a conninfo that is safe to log and
//! [`ConnectOptions::primary_conninfo`] the one a standby needs; [`conf_string_literal`] quotes
//! it for `postgresql.auto.conf` as pg_basebackup does.
//!
//! Not here: service files (`service=` is an error), multiple hosts (except in the URIs `uri`
//! writes for applications), `sslmode` enforcement (the
//! TLS layer does that) and the `replication` startup parameter, which the connection code sets
//! itself. The connection module consumes [`ConnectOptions`]; the cluster config renderer
//! consumes [`ConnectOptions::primary_conninfo`] and [`conf_string_literal`].
//!
//! Passwords never appear in `Debug` output or error messages.
//!
//! Files: `parse` reads conninfo strings and URIs, `passfile` looks a password up in a password
//! file, `uri` writes multi-host URIs; this file holds the types, precedence (`resolve`) and rendering.

mod modes;
mod parse;
mod passfile;
mod uri;

pub use self::modes::{ChannelBindingMode, SslMode};
pub use self::uri::multi_host_uri;

use self::parse::{is_c_space, parse_keyword_value, parse_uri};
use self::passfile::password_from_file;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The port libpq uses when none is given.
pub const DEFAULT_PORT: u16 = 5432;

/// Socket directories tried, in order, when no host is given. Debian-family packages put the
/// socket in the first, upstream builds in the second.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

const URI_PREFIXES: [&str; 2] = ["postgresql://", "postgres://"];

/// Shown instead of a password wherever one would otherwise be printed.
const REDACTED: &str = "***";

/// Errors from parsing and resolving connection settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A keyword libpq does not know, or that pgrepl does not accept.
    #[error("unknown connection option `{0}`")]
    UnknownOption(String),
    /// `service=` was given; pg_service.conf lookups are out of scope.
    #[error("service files are not supported")]
    ServiceUnsupported,
    /// A `key=value` conninfo string that libpq would also reject.
    #[error("invalid connection string: {0}")]
    InvalidConninfo(String),
    /// A `postgresql://` URI that libpq would also reject. `uri` has its password replaced.
    #[error("invalid connection URI `{uri}`: {reason}")]
    InvalidUri {
        /// The URI with any password replaced by `***`.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value contained a NUL byte, which no C string (libpq, the server) can carry.
    #[error("connection option `{0}` contains a NUL byte")]
    NulByte(String),
    /// A comma-separated host list; pgrepl connects to exactly one server.
    #[error("multiple hosts are not supported: `{0}`")]
    MultipleHosts(String),
    /// A port that is not an integer in 1..=65535.
    #[error("invalid port `{0}`")]
    InvalidPort(String),
    /// An `sslmode` libpq does not know.
    #[error(
        "invalid sslmode `{0}` (expected disable, allow, prefer, require, verify-ca or verify-full)"
    )]
    InvalidSslMode(String),
    /// A `channel_binding` libpq does not know.
    #[error("invalid channel_binding `{0}` (expected disable, prefer or require)")]
    InvalidChannelBinding(String),
    /// A `connect_timeout` that is not an integer number of seconds.
    #[error("invalid connect_timeout `{0}` (expected whole seconds)")]
    InvalidConnectTimeout(String),
    /// A `gssencmode` that would demand GSSAPI encryption, which pgrepl does not implement.
    #[error(
        "unsupported gssencmode `{0}` (pgrepl has no GSSAPI encryption; use disable or prefer)"
    )]
    UnsupportedGssEncMode(String),
    /// A keyword libpq honours and pgrepl would drop: refused rather than silently ignored.
    #[error("`{key}` is not supported: {why}")]
    NotHonoured {
        key: &'static str,
        why: &'static str,
    },
    /// No user was given and the effective uid has no passwd entry.
    #[error("could not determine the operating system user name; set `user` or PGUSER")]
    NoOsUser,
    /// The password file exists but could not be read.
    #[error("could not read password file `{path}`")]
    Passfile {
        /// The password file.
        path: PathBuf,
        /// Why reading it failed.
        #[source]
        source: io::Error,
    },
    /// The matching password file entry is not UTF-8, so it cannot be sent as a password.
    #[error("password in `{path}` line {line} is not valid UTF-8")]
    PassfileEncoding {
        /// The password file.
        path: PathBuf,
        /// 1-based line number of the matching entry.
        line: usize,
    },
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address (IPv6 without brackets).
    Tcp(String),
    /// A Unix socket *directory*, like libpq: the socket is `<dir>/.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(name) => f.write_str(name),
            Host::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// A password. Deliberately has no `Display`, and its `Debug` hides the value, so it cannot end
/// up in a log line by accident; call [`Password::expose`] where it must be sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Password {
    fn from(s: String) -> Self {
        Password(s)
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Self {
        Password(s.to_owned())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Password({REDACTED})")
    }
}

/// Connection keywords exactly as given, before environment fallback and validation.
///
/// `Some("")` counts as set: as in libpq, an explicit empty value hides the environment
/// variable, and [`ConnectOptions::resolve`] then uses the built-in default.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// `host`: a name, an address, or a socket directory when it starts with `/`.
    pub host: Option<String>,
    /// `hostaddr`: used as the host when `host` is not set.
    pub hostaddr: Option<String>,
    /// `port`.
    pub port: Option<String>,
    /// `user`.
    pub user: Option<String>,
    /// `password`.
    pub password: Option<String>,
    /// `passfile`.
    pub passfile: Option<String>,
    /// `dbname`.
    pub dbname: Option<String>,
    /// `application_name`.
    pub application_name: Option<String>,
    /// `fallback_application_name`: used only when no `application_name` is found.
    pub fallback_application_name: Option<String>,
    /// `sslmode`.
    pub sslmode: Option<String>,
    /// `sslrootcert`.
    pub sslrootcert: Option<String>,
    /// `sslcert`.
    pub sslcert: Option<String>,
    /// `sslkey`.
    pub sslkey: Option<String>,
    /// `channel_binding`.
    pub channel_binding: Option<String>,
    /// `connect_timeout`, in seconds.
    pub connect_timeout: Option<String>,
    /// `options`: command-line options sent to the server.
    pub options: Option<String>,
    /// `target_session_attrs`.
    pub target_session_attrs: Option<String>,
    /// `keepalives`.
    pub keepalives: Option<String>,
    /// `keepalives_idle`.
    pub keepalives_idle: Option<String>,
    /// `keepalives_interval`.
    pub keepalives_interval: Option<String>,
    /// `keepalives_count`.
    pub keepalives_count: Option<String>,
    /// `gssencmode`: only `disable` and `prefer` are accepted.
    pub gssencmode: Option<String>,
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("passfile", &self.passfile)
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("fallback_application_name", &self.fallback_application_name)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("sslcert", &self.sslcert)
            .field("sslkey", &self.sslkey)
            .field("channel_binding", &self.channel_binding)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("keepalives", &self.keepalives)
            .field("keepalives_idle", &self.keepalives_idle)
            .field("keepalives_interval", &self.keepalives_interval)
            .field("keepalives_count", &self.keepalives_count)
            .field("gssencmode", &self.gssencmode)
            .finish()
    }
}

impl ConnParams {
    /// Parse a conninfo string (`host=db port=5432 password='a b'`) or a `postgresql://` /
    /// `postgres://` URI. A later keyword overrides an earlier one, as in libpq.
    pub fn parse(conninfo: &str) -> Result<ConnParams, ConfigError> {
        match URI_PREFIXES.iter().find_map(|p| conninfo.strip_prefix(p)) {
            Some(rest) => parse_uri(conninfo, rest),
            None => parse_keyword_value(conninfo),
        }
    }

    /// Set one keyword. `replication` is accepted and dropped because the connection code
    /// decides the replication mode itself.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "service" => return Err(ConfigError::ServiceUnsupported),
            "replication" => return Ok(()),
            _ => {}
        }
        let slot = self
            .slot_mut(key)
            .ok_or_else(|| ConfigError::UnknownOption(key.to_owned()))?;
        if value.contains('\0') {
            return Err(ConfigError::NulByte(key.to_owned()));
        }
        *slot = Some(value.to_owned());
        Ok(())
    }

    /// Layer `self` over `lower`: every keyword set in `self` wins.
    pub fn merge_over(self, lower: ConnParams) -> ConnParams {
        ConnParams {
            host: self.host.or(lower.host),
            hostaddr: self.hostaddr.or(lower.hostaddr),
            port: self.port.or(lower.port),
            user: self.user.or(lower.user),
            password: self.password.or(lower.password),
            passfile: self.passfile.or(lower.passfile),
            dbname: self.dbname.or(lower.dbname),
            application_name: self.application_name.or(lower.application_name),
            fallback_application_name: self
                .fallback_application_name
                .or(lower.fallback_application_name),
            sslmode: self.sslmode.or(lower.sslmode),
            sslrootcert: self.sslrootcert.or(lower.sslrootcert),
            sslcert: self.sslcert.or(lower.sslcert),
            sslkey: self.sslkey.or(lower.sslkey),
            channel_binding: self.channel_binding.or(lower.channel_binding),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            options: self.options.or(lower.options),
            target_session_attrs: self.target_session_attrs.or(lower.target_session_attrs),
            keepalives: self.keepalives.or(lower.keepalives),
            keepalives_idle: self.keepalives_idle.or(lower.keepalives_idle),
            keepalives_interval: self.keepalives_interval.or(lower.keepalives_interval),
            keepalives_count: self.keepalives_count.or(lower.keepalives_count),
            gssencmode: self.gssencmode.or(lower.gssencmode),
        }
    }

    fn slot_mut(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "host" => &mut self.host,
            "hostaddr" => &mut self.hostaddr,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "passfile" => &mut self.passfile,
            "dbname" => &mut self.dbname,
            "application_name" => &mut self.application_name,
            "fallback_application_name" => &mut self.fallback_application_name,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "channel_binding" => &mut self.channel_binding,
            "connect_timeout" => &mut self.connect_timeout,
            "options" => &mut self.options,
            "target_session_attrs" => &mut self.target_session_attrs,
            "keepalives" => &mut self.keepalives,
            "keepalives_idle" => &mut self.keepalives_idle,
            "keepalives_interval" => &mut self.keepalives_interval,
            "keepalives_count" => &mut self.keepalives_count,
            "gssencmode" => &mut self.gssencmode,
            _ => return None,
        })
    }
}

/// Keywords pgrepl parses (a libpq conninfo may carry them) but does not act on: a non-empty
/// value is refused in one line, since dropping it would connect otherwise than asked.
fn refuse_dropped(params: &ConnParams) -> Result<(), ConfigError> {
    const CERT: &str = "pgrepl sends no client certificate (its TLS checks the server only): remove it and log in with a password";
    const KEEPALIVE: &str =
        "pgrepl sets no TCP keepalives (its own timeouts find a dead server): remove it";
    let dropped = [
        ("sslcert", &params.sslcert, CERT),
        ("sslkey", &params.sslkey, CERT),
        (
            "options",
            &params.options,
            "pgrepl passes no server options when it connects: remove it, or set them with ALTER ROLE ... SET",
        ),
        ("keepalives_idle", &params.keepalives_idle, KEEPALIVE),
        ("keepalives_interval", &params.keepalives_interval, KEEPALIVE),
        ("keepalives_count", &params.keepalives_count, KEEPALIVE),
    ];
    for (key, value, why) in dropped {
        if value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(ConfigError::NotHonoured { key, why });
        }
    }
    // `keepalives=0` asks for what pgrepl does anyway.
    if params
        .keepalives
        .as_deref()
        .is_some_and(|v| !v.is_empty() && v != "0")
    {
        return Err(ConfigError::NotHonoured {
            key: "keepalives",
            why: KEEPALIVE,
        });
    }
    Ok(())
}

/// Validated connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Server address or socket directory.
    pub host: Host,
    /// TCP port, also the suffix of the Unix socket name.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if one was given or found in the password file.
    pub password: Option<Password>,
    /// Explicit password file (`passfile` or PGPASSFILE); `None` means `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// Database; physical replication connections do not use one.
    pub dbname: Option<String>,
    /// Sent as `application_name`; a standby's name in `synchronous_standby_names`.
    pub application_name: Option<String>,
    /// TLS policy.
    pub sslmode: SslMode,
    /// CA bundle for `verify-ca`/`verify-full`; libpq's special value `system` means the
    /// system trust store.
    pub sslrootcert: Option<PathBuf>,
    /// SCRAM channel binding policy.
    pub channel_binding: ChannelBindingMode,
    /// Give up connecting after this long; `None` waits indefinitely.
    pub connect_timeout: Option<Duration>,
}

impl ConnectOptions {
    /// Resolve like libpq: explicit params win, then environment (PGHOST, PGPORT, PGUSER,
    /// PGPASSWORD, PGPASSFILE, PGDATABASE, PGAPPNAME, PGSSLMODE, PGSSLROOTCERT,
    /// PGCHANNELBINDING, PGCONNECT_TIMEOUT), then defaults: the first existing of
    /// `/var/run/postgresql` and `/tmp` as socket directory, port 5432, the OS user name,
    /// `sslmode=prefer` (`verify-full` when `sslrootcert=system`, as libpq does) and
    /// `channel_binding=prefer`. An empty value means the default.
    ///
    /// `env` is injected so tests do not touch the process environment.
    pub fn resolve(
        params: ConnParams,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnectOptions, ConfigError> {
        refuse_dropped(&params)?;
        let pick = |given: Option<String>, var: &str| given.or_else(|| env(var));
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());

        // With both set, libpq connects to hostaddr but verifies TLS and matches the password
        // file against host. pgrepl keeps a single address, and the name is what verify-full
        // needs, so host wins.
        let host = parse_host(nonempty(pick(params.host.or(params.hostaddr), "PGHOST")))?;
        let port = match nonempty(pick(params.port, "PGPORT")) {
            Some(p) => parse_port(&p)?,
            None => DEFAULT_PORT,
        };
        let user = match nonempty(pick(params.user, "PGUSER")) {
            Some(user) => user,
            None => {
                crate::os_user::effective()
                    .ok_or(ConfigError::NoOsUser)?
                    .name
            }
        };
        let sslrootcert = nonempty(pick(params.sslrootcert, "PGSSLROOTCERT"));
        let sslmode = match nonempty(pick(params.sslmode, "PGSSLMODE")) {
            Some(mode) => mode.parse()?,
            None if sslrootcert.as_deref() == Some("system") => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        let channel_binding = match nonempty(pick(params.channel_binding, "PGCHANNELBINDING")) {
            Some(mode) => mode.parse()?,
            None => ChannelBindingMode::Prefer,
        };
        let connect_timeout = match nonempty(pick(params.connect_timeout, "PGCONNECT_TIMEOUT")) {
            Some(t) => parse_connect_timeout(&t)?,
            None => None,
        };
        if let Some(mode) = params.gssencmode {
            if !matches!(mode.as_str(), "" | "disable" | "prefer") {
                return Err(ConfigError::UnsupportedGssEncMode(mode));
            }
        }
        Ok(ConnectOptions {
            host,
            port,
            user,
            password: nonempty(pick(params.password, "PGPASSWORD")).map(Password),
            passfile: nonempty(pick(params.passfile, "PGPASSFILE")).map(PathBuf::from),
            dbname: nonempty(pick(params.dbname, "PGDATABASE")),
            application_name: nonempty(pick(params.application_name, "PGAPPNAME"))
                .or(nonempty(params.fallback_application_name)),
            sslmode,
            sslrootcert: sslrootcert.map(PathBuf::from),
            channel_binding,
            connect_timeout,
        })
    }

    /// [`ConnectOptions::resolve`] against the process environment.
    pub fn from_process_env(params: ConnParams) -> Result<ConnectOptions, ConfigError> {
        Self::resolve(params, &|var| std::env::var(var).ok())
    }

    /// Fill `password` from the password file when none was given: `passfile` if set, else
    /// `$HOME/.pgpass` (the passwd entry's home when HOME is unset).
    ///
    /// Matching follows libpq's `passwordFromFile`: lines are
    /// `host:port:database:username:password`, `*` alone matches anything, `\:` and `\\` escape,
    /// lines starting with `#` are comments, and the first match wins. `localhost` matches a
    /// Unix socket connection to a default socket directory. `database_for_match` is
    /// `replication` for physical replication connections. A missing file means no password; a
    /// file with group or world permissions is ignored with a warning, as libpq does.
    pub fn load_password_from_passfile(
        &mut self,
        database_for_match: &str,
    ) -> Result<(), ConfigError> {
        if self.password.is_some() || database_for_match.is_empty() || self.user.is_empty() {
            return Ok(());
        }
        let path = match &self.passfile {
            Some(path) => path.clone(),
            None => match crate::os_user::home_dir() {
                Some(home) => home.join(".pgpass"),
                None => return Ok(()),
            },
        };
        let host = match &self.host {
            Host::Unix(dir) if is_default_socket_dir(dir) => "localhost".to_owned(),
            other => other.to_string(),
        };
        let wanted = [
            host.as_str(),
            &self.port.to_string(),
            database_for_match,
            self.user.as_str(),
        ];
        self.password = password_from_file(&path, wanted)?;
        Ok(())
    }

    /// A conninfo string without the password, safe to log or print.
    pub fn redacted(&self) -> String {
        let mut out = String::new();
        push_pair(&mut out, "host", &self.host.to_string());
        push_pair(&mut out, "port", &self.port.to_string());
        push_pair(&mut out, "user", &self.user);
        if let Some(dbname) = &self.dbname {
            push_pair(&mut out, "dbname", dbname);
        }
        if let Some(passfile) = &self.passfile {
            push_pair(&mut out, "passfile", &passfile.to_string_lossy());
        }
        push_pair(&mut out, "sslmode", self.sslmode.as_str());
        if let Some(root) = &self.sslrootcert {
            push_pair(&mut out, "sslrootcert", &root.to_string_lossy());
        }
        if self.channel_binding != ChannelBindingMode::Prefer {
            push_pair(&mut out, "channel_binding", self.channel_binding.as_str());
        }
        if let Some(timeout) = self.connect_timeout {
            push_pair(&mut out, "connect_timeout", &timeout.as_secs().to_string());
        }
        if let Some(name) = &self.application_name {
            push_pair(&mut out, "application_name", name);
        }
        out
    }

    /// The conninfo for a standby's `primary_conninfo`: host, port, user, the password only
    /// when `include_password` (otherwise the standby reads its own password file), passfile,
    /// sslmode, sslrootcert, channel_binding when not `prefer`, and `application_name`. Like
    /// pg_basebackup it leaves out dbname, which the walreceiver ignores.
    ///
    /// Quote the result with [`conf_string_literal`] before writing it to a config file.
    pub fn primary_conninfo(
        &self,
        application_name: Option<&str>,
        include_password: bool,
    ) -> String {
        let mut out = String::new();
        push_pair(&mut out, "host", &self.host.to_string());
        push_pair(&mut out, "port", &self.port.to_string());
        push_pair(&mut out, "user", &self.user);
        if let Some(password) = self.password.as_ref().filter(|_| include_password) {
            push_pair(&mut out, "password", password.expose());
        }
        if let Some(passfile) = &self.passfile {
            push_pair(&mut out, "passfile", &passfile.to_string_lossy());
        }
        push_pair(&mut out, "sslmode", self.sslmode.as_str());
        if let Some(root) = &self.sslrootcert {
            push_pair(&mut out, "sslrootcert", &root.to_string_lossy());
        }
        if self.channel_binding != ChannelBindingMode::Prefer {
            push_pair(&mut out, "channel_binding", self.channel_binding.as_str());
        }
        if let Some(name) = application_name {
            push_pair(&mut out, "application_name", name);
        }
        out
    }
}

fn push_pair(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(key);
    out.push('=');
    out.push_str(&conninfo_value(value));
}

/// Quote a value for a libpq conninfo string the way pg_dump's `appendConnStrVal` does: bare
/// when non-empty and only `[A-Za-z0-9_.]`, otherwise single-quoted with `\` before `'` and `\`.
pub fn conninfo_value(v: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.';
    if !v.is_empty() && v.bytes().all(plain) {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Quote a value as a postgresql.conf string literal that the server's GUC lexer reads back as
/// `v`. Like pg_basebackup (`escape_single_quotes_ascii`), every `'` and `\` is doubled.
/// Newline and carriage return are written as `\n` and `\r`: the lexer rejects a raw newline
/// inside a literal, where pg_basebackup would write a file the server cannot load.
///
/// A NUL cannot be represented (the server reads C strings); [`ConnParams::set`] rejects it.
pub fn conf_string_literal(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn parse_host(value: Option<String>) -> Result<Host, ConfigError> {
    let Some(value) = value else {
        return Ok(Host::Unix(default_socket_dir()));
    };
    if value.contains(',') {
        return Err(ConfigError::MultipleHosts(value));
    }
    if value.starts_with('/') {
        Ok(Host::Unix(PathBuf::from(value)))
    } else {
        Ok(Host::Tcp(value))
    }
}

/// Surrounding whitespace is allowed, as libpq's `pqParseIntParam` allows it.
fn parse_port(value: &str) -> Result<u16, ConfigError> {
    match value.trim_matches(is_c_space).parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ConfigError::InvalidPort(value.to_owned())),
    }
}

/// Whole seconds; zero or negative means no timeout, as in libpq.
fn parse_connect_timeout(value: &str) -> Result<Option<Duration>, ConfigError> {
    let secs: i64 = value
        .trim_matches(is_c_space)
        .parse()
        .map_err(|_| ConfigError::InvalidConnectTimeout(value.to_owned()))?;
    Ok(u64::try_from(secs)
        .ok()
        .filter(|&s| s > 0)
        .map(Duration::from_secs))
}

fn default_socket_dir() -> PathBuf {
    let first_existing = DEFAULT_SOCKET_DIRS.iter().find(|d| Path::new(d).is_dir());
    PathBuf::from(first_existing.unwrap_or(&DEFAULT_SOCKET_DIRS[1]))
}

/// libpq maps its one compiled-in socket directory to `localhost` for password file
/// matching. pgrepl may default to either candidate, so both count.
fn is_default_socket_dir(dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    DEFAULT_SOCKET_DIRS.contains(&dir)
}

#[cfg(test)]
mod tests;
