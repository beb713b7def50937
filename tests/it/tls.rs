//! TLS against a real server with a certificate chain this test makes with the openssl CLI:
//! `verify-full` succeeds with the right CA and host name and fails clearly with a wrong host or
//! CA, `verify-ca` ignores the name, `require` refuses a server without TLS, and SCRAM channel
//! binding (SCRAM-SHA-256-PLUS) is what authenticates over TLS (`channel_binding=require`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::harness::{self, PgInstall, PgServer, ServerOptions};
use crate::support::{pgrepl, stderr};

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a server certificate for `localhost` and 127.0.0.1 signed by it; plus a second,
/// unrelated CA. Returns (CA, other CA).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf) {
    let ca = |name: &str, cn: &str| {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "3650",
                "-subj",
                &format!("/CN={cn}"),
            ],
        )
    };
    ca("ca", "pgrepl test CA");
    ca("other-ca", "pgrepl unrelated CA");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3650",
            "-extfile",
            "server.ext",
        ],
    );
    fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
    harness::chown_to_postgres(dir);
    (dir.join("ca.crt"), dir.join("other-ca.crt"))
}

/// A server with `ssl = on` listening on 127.0.0.1 and 127.0.0.2 (the second is not in the
/// certificate), replication over TLS only.
fn tls_server(certs: &Path) -> PgServer {
    tls_server_with_hba(
        certs,
        vec![
            format!(
                "hostssl replication {} 127.0.0.0/8 scram-sha-256",
                harness::REP_SCRAM
            ),
            format!(
                "hostnossl replication {} 127.0.0.0/8 reject",
                harness::REP_SCRAM
            ),
        ],
    )
}

/// A server with `ssl = on` on 127.0.0.1 and 127.0.0.2, the certificate from `certs`, and
/// these pg_hba.conf lines.
fn tls_server_with_hba(certs: &Path, hba: Vec<String>) -> PgServer {
    PgServer::start(
        &PgInstall::default_install(),
        ServerOptions {
            extra_conf: vec![
                "listen_addresses = '127.0.0.1,127.0.0.2'".into(),
                "ssl = on".into(),
                format!("ssl_cert_file = '{}'", certs.join("server.crt").display()),
                format!("ssl_key_file = '{}'", certs.join("server.key").display()),
                "log_connections = on".into(),
            ],
            extra_hba: hba,
            ..Default::default()
        },
    )
}

/// `pgrepl basebackup -X none` into `<work>/<name>` with `conninfo`.
fn backup(work: &Path, name: &str, conninfo: &str) -> Output {
    let target = work.join(name);
    let mut cmd = pgrepl();
    cmd.args([
        "basebackup",
        "-d",
        conninfo,
        "-X",
        "none",
        "-c",
        "fast",
        "--no-sync",
        "-D",
    ])
    .arg(&target)
    .env_remove("PGSSLMODE")
    .env_remove("PGSSLROOTCERT")
    .env_remove("RUST_LOG")
    .env("PGPASSWORD", harness::REP_SCRAM_PASSWORD)
    .env("PGPASSFILE", "/nonexistent")
    // No ~/.postgresql/root.crt of the machine's may change what `require` checks.
    .env("HOME", work);
    cmd.output().expect("run pgrepl")
}

fn assert_refused(what: &str, output: &Output, work: &Path, name: &str, expect: &[&str]) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{what}: {err}");
    let errors = err.lines().filter(|l| l.starts_with("pgrepl:")).count();
    assert_eq!(errors, 1, "{what}: one error line expected: {err}");
    for needle in expect {
        assert!(
            err.contains(needle),
            "{what}: the error should mention `{needle}`: {err}"
        );
    }
    assert!(!err.contains(harness::REP_SCRAM_PASSWORD), "{what}: {err}");
    assert!(!work.join(name).exists(), "{what}: a target was left");
    eprintln!("tls: {what}: {}", err.lines().next().unwrap_or(""));
}

#[test]
fn verify_full_checks_the_chain_and_the_host_name() {
    let work = harness::postgres_owned_tempdir();
    let certs = work.path().join("certs");
    fs::create_dir(&certs).unwrap();
    let (ca, other_ca) = make_certificates(&certs);
    let server = tls_server(&certs);
    let port = server.port;
    let user = harness::REP_SCRAM;
    let conninfo = |host: &str, mode: &str, root: &Path, extra: &str| {
        format!(
            "host={host} port={port} user={user} sslmode={mode} sslrootcert={} {extra}",
            root.display()
        )
    };

    // The right CA and a name in the certificate: success, with SCRAM-SHA-256-PLUS (required).
    for (name, host) in [("by_name", "localhost"), ("by_ip", "127.0.0.1")] {
        let output = backup(
            work.path(),
            name,
            &conninfo(host, "verify-full", &ca, "channel_binding=require"),
        );
        assert!(
            output.status.success(),
            "verify-full to {host}: {}\n{}",
            stderr(&output),
            server.log_tail()
        );
        assert!(work.path().join(name).join("PG_VERSION").exists());
        eprintln!("tls: verify-full to {host} with channel_binding=require: ok");
    }
    // log_connections: the replication sessions were TLS, and hba line 2 (the hostssl one).
    let log = fs::read_to_string(&server.log_file).unwrap();
    assert!(
        log.contains(&format!(
            "replication connection authorized: user={user} application_name=pgrepl SSL enabled"
        )),
        "the server log shows no TLS replication connection:\n{}",
        server.log_tail()
    );

    // A host name the certificate does not have (the same server, reached as 127.0.0.2).
    let output = backup(
        work.path(),
        "wrong_host",
        &conninfo("127.0.0.2", "verify-full", &ca, ""),
    );
    assert_refused(
        "verify-full, wrong host",
        &output,
        work.path(),
        "wrong_host",
        &["127.0.0.2"],
    );
    // ...which verify-ca does not check.
    let output = backup(
        work.path(),
        "verify_ca",
        &conninfo("127.0.0.2", "verify-ca", &ca, ""),
    );
    assert!(output.status.success(), "verify-ca: {}", stderr(&output));

    // A CA that did not sign the server's certificate.
    let output = backup(
        work.path(),
        "wrong_ca",
        &conninfo("localhost", "verify-full", &other_ca, ""),
    );
    assert_refused(
        "verify-full, wrong CA",
        &output,
        work.path(),
        "wrong_ca",
        &["certificate"],
    );
    let output = backup(
        work.path(),
        "wrong_ca2",
        &conninfo("localhost", "verify-ca", &other_ca, ""),
    );
    assert_refused(
        "verify-ca, wrong CA",
        &output,
        work.path(),
        "wrong_ca2",
        &["certificate"],
    );

    // A root file that is not there.
    let missing = work.path().join("missing.crt");
    let output = backup(
        work.path(),
        "no_root",
        &conninfo("localhost", "verify-full", &missing, ""),
    );
    assert_refused(
        "verify-full, no root file",
        &output,
        work.path(),
        "no_root",
        &["missing.crt"],
    );

    // `require` encrypts without checking the chain; the hba above refuses plaintext.
    let output = backup(
        work.path(),
        "require",
        &format!("host=localhost port={port} user={user} sslmode=require channel_binding=require"),
    );
    assert!(output.status.success(), "require: {}", stderr(&output));
    let output = backup(
        work.path(),
        "plain",
        &format!("host=localhost port={port} user={user} sslmode=disable"),
    );
    assert_refused(
        "sslmode=disable on a hostssl-only server",
        &output,
        work.path(),
        "plain",
        &["no encryption"],
    );
    let output = backup(
        work.path(),
        "binding_without_tls",
        &format!("host=localhost port={port} user={user} sslmode=disable channel_binding=require"),
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

#[test]
fn require_refuses_a_server_without_tls() {
    let work = harness::postgres_owned_tempdir();
    let server = PgServer::start(&PgInstall::default_install(), ServerOptions::default());
    let ca = work.path().join("unused-ca.crt");
    for mode in ["require", "verify-ca", "verify-full"] {
        let mut conninfo = format!(
            "host=127.0.0.1 port={} user={} sslmode={mode}",
            server.port,
            harness::REP_SCRAM
        );
        if mode != "require" {
            // The root file is read before the server is asked; make one that parses.
            let dir = work.path().join("certs");
            if !dir.exists() {
                fs::create_dir(&dir).unwrap();
                let (real, _) = make_certificates(&dir);
                fs::copy(real, &ca).unwrap();
            }
            conninfo.push_str(&format!(" sslrootcert={}", ca.display()));
        }
        let name = format!("t_{mode}");
        let output = backup(work.path(), &name, &conninfo);
        assert_refused(
            &format!("sslmode={mode} to a server without TLS"),
            &output,
            work.path(),
            &name,
            &[&format!("sslmode={mode}"), "does not support SSL"],
        );
    }
    // `prefer` falls back to plaintext, and SCRAM without channel binding.
    let output = backup(
        work.path(),
        "prefer",
        &format!(
            "host=127.0.0.1 port={} user={} sslmode=prefer",
            server.port,
            harness::REP_SCRAM
        ),
    );
    assert!(output.status.success(), "prefer: {}", stderr(&output));
}

/// SQL sessions (tokio-postgres, used by `lag`, `status`, `bench` and the cluster commands) take
/// the same sslmode rules and certificate checks as replication sessions.
#[test]
fn sql_sessions_verify_the_certificate_too() {
    let work = harness::postgres_owned_tempdir();
    let certs = work.path().join("certs");
    fs::create_dir(&certs).unwrap();
    let (ca, other_ca) = make_certificates(&certs);
    let server = tls_server_with_hba(
        &certs,
        vec![
            format!(
                "hostssl all {} 127.0.0.0/8 scram-sha-256",
                harness::REP_SCRAM
            ),
            "hostnossl all all 127.0.0.0/8 reject".into(),
        ],
    );
    let status = |mode: &str, root: &Path| {
        let conninfo = format!(
            "host=localhost port={} user={} sslmode={mode} sslrootcert={} channel_binding=require",
            server.port,
            harness::REP_SCRAM,
            root.display()
        );
        pgrepl()
            .args(["status", "--json", &conninfo])
            .env_remove("PGSSLMODE")
            .env_remove("RUST_LOG")
            .env("PGPASSWORD", harness::REP_SCRAM_PASSWORD)
            .env("PGPASSFILE", "/nonexistent")
            .env("HOME", work.path())
            .output()
            .expect("run pgrepl")
    };

    let output = status("verify-full", &ca);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("{}\n{}", stderr(&output), server.log_tail()));
    assert!(
        report["problems"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["kind"] != "unreachable")),
        "{report:#}\n{}",
        server.log_tail()
    );
    let log = fs::read_to_string(&server.log_file).unwrap();
    assert!(
        log.lines().any(|l| l.contains(&format!(
            "connection authorized: user={} database=postgres",
            harness::REP_SCRAM
        )) && l.contains("SSL enabled")
            && !l.contains("replication connection")),
        "no SQL session over TLS in the server log:\n{}",
        server.log_tail()
    );

    let output = status("verify-full", &other_ca);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
    assert!(text.contains("certificate"), "{text}");
}
