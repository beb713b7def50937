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
use std::ffi::CStr;
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
            None => os_user().ok_or(ConfigError::NoOsUser)?.name,
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
            None => match home_dir() {
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

struct OsUser {
    name: String,
    home: PathBuf,
}

/// The passwd entry of the effective uid, which is what libpq's `pg_fe_getauthname` uses.
fn os_user() -> Option<OsUser> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: passwd is plain old data that getpwuid_r fills in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call and `buf.len()` is the
        // true size of `buf`; the strings in `pwd` point into `buf`, which outlives their use.
        let rc = unsafe {
            libc::getpwuid_r(
                libc::geteuid(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        // SAFETY: on success both fields are NUL-terminated strings inside `buf`.
        let (name, dir) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
        return Some(OsUser {
            name: name.to_str().ok()?.to_owned(),
            home: PathBuf::from(dir.to_str().ok()?),
        });
    }
}

fn home_dir() -> Option<PathBuf> {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
        _ => os_user().map(|u| u.home),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn parse_ok(s: &str) -> ConnParams {
        match ConnParams::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("parse `{s}` failed: {e}"),
        }
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn env_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(params: ConnParams, env: &[(&str, &str)]) -> Result<ConnectOptions, ConfigError> {
        ConnectOptions::resolve(params, &env_from(env))
    }

    /// Test-only reimplementation of the GUC file lexer's STRING token and `GUC_scanstr`:
    /// `None` when `lit` is not one single-quoted string token.
    fn guc_scanstr(lit: &str) -> Option<String> {
        let inner = lit.strip_prefix('\'')?.strip_suffix('\'')?;
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\n' => return None,
                '\'' => {
                    chars.next_if_eq(&'\'')?;
                    out.push('\'');
                }
                '\\' => match chars.next()? {
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    d @ '0'..='7' => {
                        let mut v = d.to_digit(8)?;
                        for _ in 0..2 {
                            match chars.next_if(|c| ('0'..='7').contains(c)) {
                                Some(d) => v = v * 8 + d.to_digit(8)?,
                                None => break,
                            }
                        }
                        out.push(char::from_u32(v)?);
                    }
                    '\n' => return None,
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        Some(out)
    }

    fn sample_options() -> ConnectOptions {
        ConnectOptions {
            host: Host::Tcp("127.0.0.1".to_owned()),
            port: 5432,
            user: "replicator".to_owned(),
            password: Some(Password::from("a'b\\c")),
            passfile: None,
            dbname: None,
            application_name: Some("x".to_owned()),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            channel_binding: ChannelBindingMode::Prefer,
            connect_timeout: None,
        }
    }

    #[test]
    fn conninfo_strings() {
        let cases: &[(&str, ConnParams)] = &[
            ("", ConnParams::default()),
            (
                "host=localhost port=5433 user=rep dbname=db",
                ConnParams {
                    host: s("localhost"),
                    port: s("5433"),
                    user: s("rep"),
                    dbname: s("db"),
                    ..Default::default()
                },
            ),
            (
                "  host = db1\tport=\n5432 ",
                ConnParams {
                    host: s("db1"),
                    port: s("5432"),
                    ..Default::default()
                },
            ),
            (
                r"password='a\'b c\\d' user=x",
                ConnParams {
                    password: s(r"a'b c\d"),
                    user: s("x"),
                    ..Default::default()
                },
            ),
            (
                r"password=a\ b\'c",
                ConnParams {
                    password: s("a b'c"),
                    ..Default::default()
                },
            ),
            (
                "application_name='' dbname='x'user=y",
                ConnParams {
                    application_name: s(""),
                    dbname: s("x"),
                    user: s("y"),
                    ..Default::default()
                },
            ),
            (
                "host=/var/run/postgresql replication=database host=/tmp",
                ConnParams {
                    host: s("/tmp"),
                    ..Default::default()
                },
            ),
            (
                "hostaddr=10.0.0.1 sslcert=c.pem sslkey=k.pem keepalives_idle=30 gssencmode=disable",
                ConnParams {
                    hostaddr: s("10.0.0.1"),
                    sslcert: s("c.pem"),
                    sslkey: s("k.pem"),
                    keepalives_idle: s("30"),
                    gssencmode: s("disable"),
                    ..Default::default()
                },
            ),
            (
                "application_name='héllo wörld'",
                ConnParams {
                    application_name: s("héllo wörld"),
                    ..Default::default()
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_ok(input), want, "input: {input}");
        }
    }

    #[test]
    fn uris() {
        let cases: &[(&str, ConnParams)] = &[
            ("postgresql://", ConnParams::default()),
            (
                "postgresql://rep:s%40cr%3At@db.example.com:5433/postgres?sslmode=require&application_name=my%20app",
                ConnParams {
                    user: s("rep"),
                    password: s("s@cr:t"),
                    host: s("db.example.com"),
                    port: s("5433"),
                    dbname: s("postgres"),
                    sslmode: s("require"),
                    application_name: s("my app"),
                    ..Default::default()
                },
            ),
            (
                "postgres://[::1]:5432/db",
                ConnParams {
                    host: s("::1"),
                    port: s("5432"),
                    dbname: s("db"),
                    ..Default::default()
                },
            ),
            (
                "postgresql://[fe80::1%25eth0]",
                ConnParams {
                    host: s("fe80::1%eth0"),
                    ..Default::default()
                },
            ),
            (
                "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
                ConnParams {
                    host: s("/var/run/postgresql"),
                    dbname: s("db"),
                    ..Default::default()
                },
            ),
            (
                "postgresql:///db?host=/tmp&port=5433",
                ConnParams {
                    host: s("/tmp"),
                    port: s("5433"),
                    dbname: s("db"),
                    ..Default::default()
                },
            ),
            (
                "postgresql://user@host/?ssl=true&",
                ConnParams {
                    user: s("user"),
                    host: s("host"),
                    sslmode: s("require"),
                    ..Default::default()
                },
            ),
            (
                "postgresql://:secret@/?application_name=a@b",
                ConnParams {
                    password: s("secret"),
                    application_name: s("a@b"),
                    ..Default::default()
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_ok(input), want, "input: {input}");
        }
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str)] = &[
            ("foo=bar", "unknown connection option `foo`"),
            ("service=mydb", "service files are not supported"),
            ("host", "invalid connection string: missing `=` after `host`"),
            ("host=a =b", "unknown connection option ``"),
            ("password='abc", "invalid connection string: unterminated quoted string"),
            // The word after a password is probably the rest of it.
            ("password=hunter 2=x", "unknown connection option `***`"),
            ("password=hunter two", "invalid connection string: missing `=` after `***`"),
            ("user='a\0b'", "connection option `user` contains a NUL byte"),
            (
                "postgresql://u:hunter2@[::1",
                "invalid connection URI `postgresql://u:***@[::1`: missing `]` after IPv6 host address",
            ),
            (
                "postgresql://[]/db",
                "invalid connection URI `postgresql://[]/db`: empty IPv6 host address",
            ),
            (
                "postgresql://[::1]x",
                "invalid connection URI `postgresql://[::1]x`: unexpected character `x` after IPv6 host address",
            ),
            ("postgresql://h/?password=hunter2&bogus=1", "unknown connection option `bogus`"),
            (
                "postgresql://h/?password=hunter2&a",
                "invalid connection URI `postgresql://h/?password=***&a`: missing `=` in query parameter `a`",
            ),
            (
                "postgresql://h/db?sslmode=require=x",
                "invalid connection URI `postgresql://h/db?sslmode=require=x`: extra `=` in query parameter `sslmode`",
            ),
            (
                "postgresql://u:hunt%zz@h",
                "invalid connection URI `postgresql://u:***@h`: invalid percent-encoded token in password",
            ),
            (
                "postgresql://h/db%00",
                "invalid connection URI `postgresql://h/db%00`: forbidden %00 in database name",
            ),
            (
                "postgresql://h/db\0x",
                "invalid connection URI `postgresql://h/db\0x`: forbidden NUL byte in database name",
            ),
            (
                "postgresql://u:pw\0@h",
                "invalid connection URI `postgresql://u:***@h`: forbidden NUL byte in password",
            ),
            (
                "postgresql://h/my db",
                "invalid connection URI `postgresql://h/my db`: unexpected space in database name; use a percent-encoded space (%20)",
            ),
            (
                "postgresql://h/%ff",
                "invalid connection URI `postgresql://h/%ff`: database name is not valid UTF-8 after percent-decoding",
            ),
            ("postgresql://u:pw@a:1,b:2/db", "multiple hosts are not supported: `a:1,b:2`"),
            ("postgresql://h/?service=x", "service files are not supported"),
        ];
        for (input, want) in cases {
            match ConnParams::parse(input) {
                Ok(p) => panic!("`{input}` parsed as {p:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert_eq!(msg, *want, "input: {input}");
                    assert!(!format!("{e:?}").contains("hunter"), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn set_and_merge() {
        let mut p = ConnParams::default();
        p.set("host", "a").unwrap();
        p.set("replication", "true").unwrap();
        assert!(matches!(p.set("nope", "1"), Err(ConfigError::UnknownOption(k)) if k == "nope"));
        assert!(matches!(
            p.set("service", "x"),
            Err(ConfigError::ServiceUnsupported)
        ));

        let upper = ConnParams {
            host: s("up"),
            password: s(""),
            ..Default::default()
        };
        let lower = ConnParams {
            host: s("low"),
            port: s("6543"),
            password: s("pw"),
            ..Default::default()
        };
        let merged = upper.merge_over(lower);
        assert_eq!(merged.host, s("up"));
        assert_eq!(merged.port, s("6543"));
        // An explicit empty value is still "set".
        assert_eq!(merged.password, s(""));
    }

    #[test]
    fn debug_hides_passwords() {
        let p = parse_ok("password=hunter2 user=u");
        let dbg = format!("{p:?}");
        assert!(dbg.contains("\"***\"") && !dbg.contains("hunter2"), "{dbg}");
        assert_eq!(format!("{:?}", Password::from("hunter2")), "Password(***)");
        let opts = sample_options();
        assert!(!format!("{opts:?}").contains("a'b"));
    }

    #[test]
    fn precedence_params_env_defaults() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGPASSFILE", "/env/pgpass"),
            ("PGDATABASE", "envdb"),
            ("PGAPPNAME", "envapp"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "/env/root.crt"),
            ("PGCHANNELBINDING", "require"),
            ("PGCONNECT_TIMEOUT", "7"),
        ];

        let from_env = resolve(ConnParams::default(), &env).unwrap();
        assert_eq!(
            from_env,
            ConnectOptions {
                host: Host::Tcp("envhost".to_owned()),
                port: 6000,
                user: "envuser".to_owned(),
                password: Some(Password::from("envpw")),
                passfile: Some(PathBuf::from("/env/pgpass")),
                dbname: s("envdb"),
                application_name: s("envapp"),
                sslmode: SslMode::Require,
                sslrootcert: Some(PathBuf::from("/env/root.crt")),
                channel_binding: ChannelBindingMode::Require,
                connect_timeout: Some(Duration::from_secs(7)),
            }
        );

        let params = parse_ok(
            "host=/run/pg port=7000 user=u password=p passfile=/p dbname=d application_name=a \
             sslmode=verify-ca sslrootcert=/r channel_binding=disable connect_timeout=0",
        );
        let from_params = resolve(params, &env).unwrap();
        assert_eq!(
            from_params,
            ConnectOptions {
                host: Host::Unix(PathBuf::from("/run/pg")),
                port: 7000,
                user: "u".to_owned(),
                password: Some(Password::from("p")),
                passfile: Some(PathBuf::from("/p")),
                dbname: s("d"),
                application_name: s("a"),
                sslmode: SslMode::VerifyCa,
                sslrootcert: Some(PathBuf::from("/r")),
                channel_binding: ChannelBindingMode::Disable,
                connect_timeout: None,
            }
        );

        let defaults = resolve(ConnParams::default(), &[]).unwrap();
        match &defaults.host {
            Host::Unix(dir) => assert!(
                DEFAULT_SOCKET_DIRS.iter().any(|d| dir == Path::new(d)),
                "{dir:?}"
            ),
            other => panic!("default host {other:?}"),
        }
        assert_eq!(defaults.port, 5432);
        assert_eq!(defaults.user, os_user().unwrap().name);
        assert!(!defaults.user.is_empty());
        assert_eq!(defaults.password, None);
        assert_eq!(defaults.passfile, None);
        assert_eq!(defaults.dbname, None);
        assert_eq!(defaults.application_name, None);
        assert_eq!(defaults.sslmode, SslMode::Prefer);
        assert_eq!(defaults.channel_binding, ChannelBindingMode::Prefer);
        assert_eq!(defaults.connect_timeout, None);
    }

    #[test]
    fn resolve_details() {
        // An explicit empty host hides PGHOST and means the default socket directory.
        let o = resolve(parse_ok("host=''"), &[("PGHOST", "envhost")]).unwrap();
        assert!(matches!(o.host, Host::Unix(_)), "{:?}", o.host);
        // host beats hostaddr; hostaddr beats PGHOST.
        let o = resolve(parse_ok("hostaddr=10.0.0.1 host=db"), &[]).unwrap();
        assert_eq!(o.host, Host::Tcp("db".to_owned()));
        let o = resolve(parse_ok("hostaddr=10.0.0.1"), &[("PGHOST", "envhost")]).unwrap();
        assert_eq!(o.host, Host::Tcp("10.0.0.1".to_owned()));
        let o = resolve(parse_ok("postgresql://[::1]:5433"), &[]).unwrap();
        assert_eq!((o.host, o.port), (Host::Tcp("::1".to_owned()), 5433));
        // fallback_application_name only fills a gap.
        let o = resolve(parse_ok("fallback_application_name=fb"), &[]).unwrap();
        assert_eq!(o.application_name, s("fb"));
        let o = resolve(
            parse_ok("fallback_application_name=fb"),
            &[("PGAPPNAME", "env")],
        )
        .unwrap();
        assert_eq!(o.application_name, s("env"));
        // Timeouts: negative means none, whitespace allowed.
        let o = resolve(parse_ok("connect_timeout=-3"), &[]).unwrap();
        assert_eq!(o.connect_timeout, None);
        let o = resolve(parse_ok("connect_timeout=' 10 '"), &[]).unwrap();
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(10)));
        // sslrootcert=system strengthens the default sslmode, but not an explicit one.
        let o = resolve(parse_ok("sslrootcert=system"), &[]).unwrap();
        assert_eq!(o.sslmode, SslMode::VerifyFull);
        let o = resolve(parse_ok("sslrootcert=system sslmode=require"), &[]).unwrap();
        assert_eq!(o.sslmode, SslMode::Require);
        // An empty password is no password, so the password file is consulted.
        let o = resolve(parse_ok("password=''"), &[("PGPASSWORD", "x")]).unwrap();
        assert_eq!(o.password, None);
    }

    #[test]
    fn resolve_errors() {
        // What pgrepl does anyway is accepted.
        resolve(
            parse_ok("keepalives=0 sslcert='' options='' host=h user=u"),
            &[],
        )
        .unwrap();
        // (conninfo, environment, expected message)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("port=abc", &[], "invalid port `abc`"),
            ("port=0", &[], "invalid port `0`"),
            ("port=70000", &[], "invalid port `70000`"),
            ("", &[("PGPORT", "5432,5433")], "invalid port `5432,5433`"),
            ("host=a,b", &[], "multiple hosts are not supported: `a,b`"),
            ("", &[("PGHOST", "a,b")], "multiple hosts are not supported: `a,b`"),
            (
                "sslmode=x",
                &[],
                "invalid sslmode `x` (expected disable, allow, prefer, require, verify-ca or verify-full)",
            ),
            (
                "",
                &[("PGSSLMODE", "Require")],
                "invalid sslmode `Require` (expected disable, allow, prefer, require, verify-ca or verify-full)",
            ),
            (
                "channel_binding=maybe",
                &[],
                "invalid channel_binding `maybe` (expected disable, prefer or require)",
            ),
            ("connect_timeout=soon", &[], "invalid connect_timeout `soon` (expected whole seconds)"),
            (
                "gssencmode=require",
                &[],
                "unsupported gssencmode `require` (pgrepl has no GSSAPI encryption; use disable or prefer)",
            ),
            (
                "sslcert=c.pem",
                &[],
                "`sslcert` is not supported: pgrepl sends no client certificate (its TLS checks the server only): remove it and log in with a password",
            ),
            (
                "options='-c work_mem=1GB'",
                &[],
                "`options` is not supported: pgrepl passes no server options when it connects: remove it, or set them with ALTER ROLE ... SET",
            ),
            (
                "keepalives=1",
                &[],
                "`keepalives` is not supported: pgrepl sets no TCP keepalives (its own timeouts find a dead server): remove it",
            ),
            (
                "keepalives_idle=30",
                &[],
                "`keepalives_idle` is not supported: pgrepl sets no TCP keepalives (its own timeouts find a dead server): remove it",
            ),
        ];
        for (conninfo, env, want) in cases {
            match resolve(parse_ok(conninfo), env) {
                Ok(o) => panic!("`{conninfo}` resolved to {o:?}"),
                Err(e) => assert_eq!(e.to_string(), *want, "input: {conninfo}"),
            }
        }
    }

    fn write_passfile(dir: &tempfile::TempDir, mode: u32, body: &str) -> PathBuf {
        let path = dir.path().join("pgpass");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(body.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn passfile_lookup(path: &Path, host: Host, port: u16, user: &str, db: &str) -> Option<String> {
        let mut o = sample_options();
        o.password = None;
        o.passfile = Some(path.to_owned());
        o.host = host;
        o.port = port;
        o.user = user.to_owned();
        o.load_password_from_passfile(db).unwrap();
        o.password.map(|p| p.expose().to_owned())
    }

    const PASSFILE: &str = "\
#h:1:y:x:nope
db1:5432:replication:rep:first
db1:5432:replication:rep:second
db1:*:*:rep:anyport
weird\\:host:5432:*:us\\\\er:p\\:w\\\\d:trailing
localhost:5432:replication:rep:local
*:*:*:*:fallback\r
";

    #[test]
    fn passfile_matching() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_passfile(&dir, 0o600, PASSFILE);
        let tcp = |h: &str| Host::Tcp(h.to_owned());
        let cases: &[(Host, u16, &str, &str, Option<&str>)] = &[
            // First match wins.
            (tcp("db1"), 5432, "rep", "replication", Some("first")),
            (tcp("db1"), 6000, "rep", "postgres", Some("anyport")),
            // `\:` and `\\` in fields and in the password, which ends at an unescaped `:`.
            (tcp("weird:host"), 5432, "us\\er", "x", Some("p:w\\d")),
            // A default socket directory counts as localhost, another directory does not.
            (
                Host::Unix("/tmp".into()),
                5432,
                "rep",
                "replication",
                Some("local"),
            ),
            (
                Host::Unix("/var/run/postgresql/".into()),
                5432,
                "rep",
                "replication",
                Some("local"),
            ),
            (tcp("localhost"), 5432, "rep", "replication", Some("local")),
            (
                Host::Unix("/srv/sock".into()),
                5432,
                "rep",
                "replication",
                Some("fallback"),
            ),
            // The comment line is not an entry, and the CR is stripped.
            (tcp("#h"), 1, "x", "y", Some("fallback")),
        ];
        for (host, port, user, db, want) in cases {
            let got = passfile_lookup(&path, host.clone(), *port, user, db);
            assert_eq!(got.as_deref(), *want, "{host:?} {port} {user} {db}");
        }

        let path = write_passfile(&dir, 0o600, "db1:5432:replication:rep:only\n");
        assert_eq!(
            passfile_lookup(&path, tcp("db1"), 5432, "rep", "postgres"),
            None
        );
        assert_eq!(
            passfile_lookup(&path, tcp("db1"), 5432, "other", "replication"),
            None
        );
    }

    #[test]
    fn passfile_permissions_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        let tcp = Host::Tcp("db1".to_owned());
        let path = write_passfile(&dir, 0o644, "*:*:*:*:secret\n");
        assert_eq!(
            passfile_lookup(&path, tcp.clone(), 5432, "rep", "replication"),
            None
        );
        let path = write_passfile(&dir, 0o400, "*:*:*:*:secret\n");
        assert_eq!(
            passfile_lookup(&path, tcp.clone(), 5432, "rep", "replication").as_deref(),
            Some("secret")
        );
        let missing = dir.path().join("missing");
        assert_eq!(
            passfile_lookup(&missing, tcp.clone(), 5432, "rep", "replication"),
            None
        );
        // A directory is not a plain file: ignored, not an error.
        assert_eq!(
            passfile_lookup(dir.path(), tcp, 5432, "rep", "replication"),
            None
        );

        // A password that was given is kept.
        let mut o = sample_options();
        o.passfile = Some(path);
        o.load_password_from_passfile("replication").unwrap();
        assert_eq!(o.password.as_ref().map(Password::expose), Some("a'b\\c"));
    }

    #[test]
    fn passfile_non_utf8_password_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, b"# c\n*:*:*:*:\xff\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut o = sample_options();
        o.password = None;
        o.passfile = Some(path.clone());
        let err = o.load_password_from_passfile("replication").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("password in `{}` line 2 is not valid UTF-8", path.display())
        );
    }

    #[test]
    fn redacted_never_shows_the_password() {
        let o = sample_options();
        assert_eq!(
            o.redacted(),
            "host=127.0.0.1 port=5432 user=replicator sslmode=prefer application_name=x"
        );
        let mut o = sample_options();
        o.password = Some(Password::from("hunter2"));
        o.host = Host::Unix("/var/run/postgresql".into());
        o.dbname = s("my db");
        o.channel_binding = ChannelBindingMode::Require;
        o.connect_timeout = Some(Duration::from_secs(5));
        let r = o.redacted();
        assert_eq!(
            r,
            "host='/var/run/postgresql' port=5432 user=replicator dbname='my db' sslmode=prefer \
             channel_binding=require connect_timeout=5 application_name=x"
        );
        assert!(!r.contains("hunter2"));
    }

    #[test]
    fn primary_conninfo_escaping() {
        let o = sample_options();
        let conninfo = o.primary_conninfo(Some("standby1"), true);
        assert_eq!(
            conninfo,
            r"host=127.0.0.1 port=5432 user=replicator password='a\'b\\c' sslmode=prefer application_name=standby1"
        );
        assert_eq!(
            o.primary_conninfo(None, false),
            "host=127.0.0.1 port=5432 user=replicator sslmode=prefer"
        );

        let mut o = sample_options();
        o.passfile = Some("/etc/pg pass".into());
        o.sslmode = SslMode::VerifyFull;
        o.sslrootcert = Some("/etc/ca.crt".into());
        o.channel_binding = ChannelBindingMode::Disable;
        assert_eq!(
            o.primary_conninfo(Some("s 2"), false),
            "host=127.0.0.1 port=5432 user=replicator passfile='/etc/pg pass' sslmode='verify-full' \
             sslrootcert='/etc/ca.crt' channel_binding=disable application_name='s 2'"
        );

        // What libpq reads back is what we started from.
        let back = resolve(parse_ok(&conninfo), &[]).unwrap();
        assert_eq!(back.password.as_ref().map(Password::expose), Some("a'b\\c"));
        assert_eq!(back.application_name, s("standby1"));
        assert_eq!(back.host, o.host);
    }

    #[test]
    fn conf_literal_of_primary_conninfo() {
        let conninfo = sample_options().primary_conninfo(Some("standby1"), true);
        let lit = conf_string_literal(&conninfo);
        assert_eq!(
            lit,
            r"'host=127.0.0.1 port=5432 user=replicator password=''a\\''b\\\\c'' sslmode=prefer application_name=standby1'"
        );
        assert_eq!(guc_scanstr(&lit).as_deref(), Some(conninfo.as_str()));
    }

    #[test]
    fn conf_literal_round_trips() {
        let cases: &[(&str, &str)] = &[
            ("", "''"),
            ("plain", "'plain'"),
            ("it's", "'it''s'"),
            ("C:\\dir", "'C:\\\\dir'"),
            ("line1\nline2\r", "'line1\\nline2\\r'"),
            ("tab\there ü", "'tab\there ü'"),
            ("\\'", "'\\\\'''"),
        ];
        for (value, want) in cases {
            let lit = conf_string_literal(value);
            assert_eq!(&lit, want);
            assert_eq!(guc_scanstr(&lit).as_deref(), Some(*value), "{lit}");
        }
    }

    #[test]
    fn conninfo_value_quoting() {
        let cases: &[(&str, &str)] = &[
            ("abc_1.2", "abc_1.2"),
            ("", "''"),
            ("a b", "'a b'"),
            ("a-b", "'a-b'"),
            ("/tmp", "'/tmp'"),
            ("a'b\\c", r"'a\'b\\c'"),
            ("é", "'é'"),
        ];
        for (value, want) in cases {
            let quoted = conninfo_value(value);
            assert_eq!(&quoted, want);
            // libpq parses it back to the same value.
            let back = parse_ok(&format!("application_name={quoted}"));
            assert_eq!(back.application_name.as_deref(), Some(*value));
        }
    }
}
