//! TLS by default (`cluster/tls.rs`): `up` makes the cluster CA and the node certificates, the
//! replication stream is encrypted, and a standby checks whom it follows. The bytes between a
//! standby and its primary are recorded by a proxy: with TLS they hold none of a marker the
//! primary wrote, with `[tls] mode = "off"` they do (so the check can fail).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::cluster::TestCluster;
use crate::support::{eventually, harness, stderr};

const MARKER: &str = "pgrepl-tls-marker-5f1c";

/// Forwards every connection to 127.0.0.1:`upstream` and keeps what the server sent.
struct RecordingProxy {
    port: u16,
    from_server: Arc<Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    fn start(upstream: u16) -> RecordingProxy {
        let listener = harness::listener();
        let port = listener.local_addr().unwrap().port();
        let from_server = Arc::new(Mutex::new(Vec::new()));
        let record = from_server.clone();
        // Detached: each pipe ends when the cluster goes down and its sockets close.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (client2, server2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(client2, server2, None));
                let record = record.clone();
                std::thread::spawn(move || pipe(server, client, Some(record)));
            }
        });
        RecordingProxy { port, from_server }
    }

    fn saw(&self, text: &str) -> bool {
        let bytes = self.from_server.lock().unwrap();
        bytes
            .windows(text.len())
            .any(|window| window == text.as_bytes())
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, record: Option<Arc<Mutex<Vec<u8>>>>) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if let Some(record) = &record {
            record.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// pg_asyncslave follows the primary through `proxy` (its primary_conninfo otherwise as `up`
/// wrote it, with `rewrite` applied); true once it streams that way.
fn follow_through(
    cluster: &TestCluster,
    proxy: &RecordingProxy,
    rewrite: &dyn Fn(String) -> String,
) {
    let conninfo = cluster.psql(2, "show primary_conninfo");
    let through = rewrite(conninfo.replace(
        &format!("port={}", cluster.ports[0]),
        &format!("port={}", proxy.port),
    ));
    cluster.psql(
        2,
        &format!(
            "alter system set primary_conninfo = '{}'",
            through.replace('\'', "''")
        ),
    );
    cluster.psql(2, "select pg_reload_conf()");
}

fn streams_through(cluster: &TestCluster, proxy: &RecordingProxy) -> bool {
    cluster.psql(
        2,
        &format!(
            "select count(*) from pg_stat_wal_receiver where status = 'streaming' and sender_port = {}",
            proxy.port
        ),
    ) == "1"
}

/// pg_asyncslave follows the primary through a recording proxy, and the primary writes the
/// marker, which the standby then holds.
fn marker_through_a_proxy(cluster: &TestCluster) -> RecordingProxy {
    let proxy = RecordingProxy::start(cluster.ports[0]);
    follow_through(cluster, &proxy, &|c| c);
    eventually(
        "pg_asyncslave to stream through the proxy",
        Duration::from_secs(30),
    )
    .until(|| streams_through(cluster, &proxy));
    cluster.psql(
        0,
        &format!("create table marked as select '{MARKER}'::text as m"),
    );
    eventually("the marker on pg_asyncslave", Duration::from_secs(30))
        .until(|| cluster.psql(2, "select count(*) from pg_class where relname = 'marked'") == "1");
    proxy
}

/// With TLS (the default): the walsenders' sessions are encrypted, standbys verify the primary
/// (`verify-full` against the cluster CA), the keys are the server user's alone, and a marker
/// row crosses the wire only as ciphertext.
#[test]
fn replication_is_encrypted_and_standbys_verify_the_primary() {
    let cluster = TestCluster::new();
    let up = cluster.ok(&["up"]);
    let said = stderr(&up);
    assert!(said.contains("create the cluster CA"), "{said}");
    assert_eq!(
        cluster.psql(
            0,
            "select count(*) from pg_stat_replication r join pg_stat_ssl s using (pid) where s.ssl"
        ),
        "2",
        "both standbys stream over TLS"
    );
    let conninfo = cluster.psql(1, "show primary_conninfo");
    assert!(
        conninfo.contains("sslmode='verify-full'")
            && conninfo.contains("sslrootcert='../tls/ca.crt'"),
        "{conninfo}"
    );
    let state = cluster.dir.path().join(".pgrepl");
    // Run as root, the servers are the postgres user's.
    let server_uid = harness::postgres_ids().map(|(uid, _)| uid);
    for (key, owner) in [
        (state.join("tls/ca.key"), None),
        (state.join("pg_master/tls/server.key"), server_uid),
        (state.join("pg_slave/tls/server.key"), server_uid),
    ] {
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            key.display()
        );
        if let Some(owner) = owner {
            assert_eq!(meta.uid(), owner, "{}", key.display());
        }
    }

    let proxy = marker_through_a_proxy(&cluster);
    assert_eq!(cluster.psql(2, "select m from marked"), MARKER);
    assert!(
        !proxy.saw(MARKER),
        "the marker crossed the wire in clear text"
    );

    // A name the primary's certificate does not carry is refused, though the address is right.
    follow_through(&cluster, &proxy, &|c| {
        c.replace("host=127.0.0.1", "host=not-the-primary hostaddr=127.0.0.1")
    });
    let log = cluster
        .dir
        .path()
        .join(".pgrepl/pg_asyncslave/postgres.log");
    eventually(
        "the walreceiver to refuse the name",
        Duration::from_secs(30),
    )
    .until(|| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("does not match host name \"not-the-primary\"")
    });
    assert!(!streams_through(&cluster, &proxy));

    // `status` says when the certificates expire; `tls rotate` renews them with a reload: the
    // server presents the new one to new sessions, and nothing restarts.
    // (It exits non-zero: pg_asyncslave, pointed at a wrong name, does not stream.)
    let status = cluster.pgrepl(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("TLS: certificates valid until"), "{status}");
    let started = cluster.psql(0, "select pg_postmaster_start_time()");
    let before = served_certificate(cluster.ports[0]);
    let rotated = cluster.ok(&["tls", "rotate"]);
    let said = stderr(&rotated);
    assert!(
        said.contains("`pg_master` reloaded its certificate"),
        "{said}"
    );
    let after = served_certificate(cluster.ports[0]);
    assert_ne!(
        before, after,
        "the server still presents the old certificate"
    );
    let on_disk = std::fs::read_to_string(state.join("pg_master/tls/server.crt")).unwrap();
    assert_eq!(after.trim(), on_disk.trim());
    assert_eq!(
        cluster.psql(0, "select pg_postmaster_start_time()"),
        started
    );
    assert_eq!(
        cluster.psql(
            0,
            "select count(*) from pg_stat_replication where application_name = 'pg_slave' and state = 'streaming'"
        ),
        "1"
    );
}

/// The certificate the server at 127.0.0.1:`port` presents, as stock openssl sees it.
fn served_certificate(port: u16) -> String {
    let output = harness::output_within(
        std::process::Command::new("openssl").args([
            "s_client",
            "-starttls",
            "postgres",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ]),
        Duration::from_secs(30),
    )
    .expect("openssl s_client hung");
    let text = String::from_utf8_lossy(&output.stdout);
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from openssl s_client:\n{text}"));
    let end = text[begin..].find("-----END CERTIFICATE-----").unwrap() + begin;
    text[begin..end + "-----END CERTIFICATE-----".len()].to_owned()
}

/// `[tls] mode = "off"`: `up` says what that leaves open, and the same marker is readable on
/// the wire: what the test above checks is there to find.
#[test]
fn without_tls_the_marker_is_on_the_wire_and_up_says_so() {
    let cluster = TestCluster::new();
    let text = std::fs::read_to_string(&cluster.file).unwrap();
    std::fs::write(&cluster.file, format!("{text}\n[tls]\nmode = \"off\"\n")).unwrap();
    let up = cluster.ok(&["up"]);
    let said = stderr(&up);
    assert!(said.contains("TLS is off"), "{said}");
    assert!(!cluster.dir.path().join(".pgrepl/tls").exists());
    let proxy = marker_through_a_proxy(&cluster);
    assert!(proxy.saw(MARKER), "the proxy recorded nothing readable");
}

/// A CA and server certificates made elsewhere (here by the same code `up` uses, in a directory
/// of "the user's"): their files, the CA's with its key, under `dir`.
fn users_certificates(dir: &std::path::Path, nodes: &[&str]) -> Vec<pgrepl::cluster::tls::Leaf> {
    let leaves: Vec<_> = nodes
        .iter()
        .map(|n| {
            pgrepl::cluster::tls::Leaf::server(
                n,
                dir.join(n),
                vec![n.to_string(), "127.0.0.1".into(), "localhost".into()],
            )
        })
        .collect();
    pgrepl::cluster::tls::ensure(dir, &leaves, None, true, false).unwrap();
    leaves
}

/// `[tls]` with the user's own CA (and its key, for the nodes not listed) and a node's own
/// certificate: the servers present exactly those, standbys verify against that CA; a node
/// certificate another CA signed is refused before anything is built.
#[test]
fn the_users_own_ca_and_certificates_are_served_and_checked_first() {
    let cluster = TestCluster::new();
    let users = tempfile::tempdir().unwrap();
    let leaves = users_certificates(users.path(), &["pg_slave"]);
    let ca = pgrepl::cluster::tls::ca_cert_path(users.path());
    let ca_key = ca.with_file_name("ca.key");
    let text = std::fs::read_to_string(&cluster.file).unwrap();
    let section = format!(
        "\n[tls]\nca_cert = \"{}\"\nca_key = \"{}\"\n\n[tls.nodes.pg_slave]\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.display(),
        ca_key.display(),
        leaves[0].cert().display(),
        leaves[0].key().display()
    );
    // A certificate for pg_slave signed by another CA first: refused, nothing built.
    let other = tempfile::tempdir().unwrap();
    let forged = users_certificates(other.path(), &["pg_slave"]);
    let wrong = section.replace(
        &leaves[0].cert().display().to_string(),
        &forged[0].cert().display().to_string(),
    );
    std::fs::write(&cluster.file, format!("{text}{wrong}")).unwrap();
    let refused = cluster.pgrepl(&["up"]);
    let said = stderr(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("[tls.nodes.pg_slave] cert") && said.contains("not signed by [tls] ca_cert"),
        "{said}"
    );
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(!cluster.dir.path().join(".pgrepl/pg_master/data").exists());

    std::fs::write(&cluster.file, format!("{text}{section}")).unwrap();
    cluster.ok(&["up"]);
    let state = cluster.dir.path().join(".pgrepl");
    assert_eq!(
        std::fs::read(state.join("tls/ca.crt")).unwrap(),
        std::fs::read(&ca).unwrap(),
        "the cluster CA is the user's"
    );
    let own = std::fs::read_to_string(leaves[0].cert()).unwrap();
    assert_eq!(served_certificate(cluster.ports[1]).trim(), own.trim());
    // pg_master's certificate was made by up, with the user's CA key.
    let served = served_certificate(cluster.ports[0]);
    let (_, pem) = x509_parser::pem::parse_x509_pem(served.as_bytes()).unwrap();
    let ca_pem = std::fs::read(&ca).unwrap();
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(&ca_pem).unwrap();
    let ca_cert = ca_pem.parse_x509().unwrap();
    pem.parse_x509()
        .unwrap()
        .verify_signature(Some(ca_cert.public_key()))
        .expect("pg_master's certificate is signed by the user's CA");
    // up's checks passed: both standbys stream over verify-full against the user's CA.
    let streaming = cluster.psql(
        0,
        "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl AND r.state = 'streaming'",
    );
    assert_eq!(streaming.trim(), "2");
}
