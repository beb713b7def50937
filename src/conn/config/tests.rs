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
    assert_eq!(defaults.user, crate::os_user::effective().unwrap().name);
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
