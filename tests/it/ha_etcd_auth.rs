//! The etcd `up` starts for a cluster with TLS (issue 21): TLS to clients, client certificates
//! the cluster CA signed, auth on, and a user per role limited to its cluster's prefix. Each
//! refusal is checked beside the same request by the user who may make it, so a check cannot
//! pass because etcd did not answer at all.

use std::path::Path;
use std::time::Duration;

use etcd_client::Client;
use pgrepl::cluster::tls::{ca_dir, ensure};
use pgrepl::ha::etcd_access::{client_leaf, provision, ClientTls, EtcdAccess, User};

use crate::support::etcd::EtcdCluster;
use crate::support::ha::up::{ha_cluster, status_json, up_ok};
use crate::support::{capability, harness};

/// `request` again while etcd says the users and roles changed under it (`ErrAuthOldRevision`:
/// nothing was done; etcd's own client retries it too), at most three times.
async fn retried<T, F: std::future::Future<Output = Result<T, String>>>(
    request: impl Fn() -> F,
) -> Result<T, String> {
    let mut result = request().await;
    for _ in 0..3 {
        match &result {
            Err(e) if e.contains("revision of auth store is old") => result = request().await,
            _ => break,
        }
    }
    result
}

/// What a request got: a value (or none), or etcd's refusal.
async fn get(access: &EtcdAccess, key: &str) -> Result<Option<String>, String> {
    retried(|| get_once(access, key)).await
}

async fn put(access: &EtcdAccess, key: &str, value: &str) -> Result<(), String> {
    retried(|| put_once(access, key, value)).await
}

async fn get_once(access: &EtcdAccess, key: &str) -> Result<Option<String>, String> {
    let request = async {
        let options = access.options().map_err(|e| e.to_string())?;
        let mut client = Client::connect(&access.endpoints, Some(options))
            .await
            .map_err(|e| e.to_string())?;
        let found = client.get(key, None).await.map_err(|e| e.to_string())?;
        Ok(found
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

async fn put_once(access: &EtcdAccess, key: &str, value: &str) -> Result<(), String> {
    let request = async {
        let options = access.options().map_err(|e| e.to_string())?;
        let mut client = Client::connect(&access.endpoints, Some(options))
            .await
            .map_err(|e| e.to_string())?;
        client
            .put(key, value, None)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()))
}

fn denied(result: Result<impl std::fmt::Debug, String>, what: &str) {
    match result {
        Err(e) if e.contains("permission denied") => {}
        other => panic!("{what}: expected etcd's `permission denied`, got {other:?}"),
    }
}

/// A client certificate for `user` of `scope`, signed by the CA in `state_dir` (made there
/// when `new_ca`).
fn identity(state_dir: &Path, scope: &str, user: User, new_ca: bool) -> ClientTls {
    let leaf = client_leaf(state_dir, scope, user);
    ensure(state_dir, std::slice::from_ref(&leaf), None, new_ca, false).unwrap();
    ClientTls {
        ca: ca_dir(state_dir).join("ca.crt"),
        identity: Some((leaf.cert(), leaf.key())),
    }
}

#[test]
fn the_etcd_up_starts_admits_only_the_clusters_certificates_each_user_to_its_prefix_and_role() {
    let test = "the_etcd_up_starts_admits_only_the_clusters_certificates";
    let Some(cluster) = ha_cluster(test) else {
        return;
    };
    up_ok(&cluster);
    let state = cluster.state_dir();
    let endpoints: Vec<String> = std::fs::read_to_string(state.join("etcd/endpoints"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        endpoints
            .iter()
            .all(|u| u.starts_with("https://127.0.0.1:")),
        "{endpoints:?}"
    );
    // The cluster file is pgrepl.toml: its scope is `pgrepl`.
    let leader = "/pgrepl/pgrepl/leader";
    let as_user = |user| EtcdAccess::own(&state, endpoints.clone(), true, user);
    let (agent, reader, root) = (
        as_user(User::Agent),
        as_user(User::Reader),
        as_user(User::Root),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The reader reads the leader the agents wrote, and cannot replace it.
        let value = get(&reader, leader).await.unwrap();
        assert!(
            value.as_deref().unwrap_or("").contains("pg_master"),
            "{value:?}"
        );
        denied(
            put(&reader, leader, "{}").await,
            "the reader writes the leader key",
        );
        // The agents' user writes under its prefix, and nowhere else.
        put(&agent, "/pgrepl/pgrepl/it-probe", "1").await.unwrap();
        denied(
            put(&agent, "/pgrepl/other/leader", "{}").await,
            "the agents' user writes another cluster's key",
        );
        denied(
            get(&agent, "/").await,
            "the agents' user reads outside its prefix",
        );

        // No certificate, or plain HTTP: no answer at all (the TLS handshake fails).
        let anonymous = EtcdAccess {
            endpoints: endpoints.clone(),
            tls: Some(ClientTls {
                ca: ca_dir(&state).join("ca.crt"),
                identity: None,
            }),
            user: None,
        };
        let refused = get(&anonymous, leader).await;
        assert!(
            refused.is_err(),
            "a client without a certificate read {refused:?}"
        );
        let plain: Vec<String> = endpoints
            .iter()
            .map(|u| u.replace("https://", "http://"))
            .collect();
        let refused = get(&EtcdAccess::plain(plain), leader).await;
        assert!(refused.is_err(), "a plain-HTTP client read {refused:?}");

        // A certificate for the agents' very name from another CA is refused.
        let elsewhere = tempfile::tempdir().unwrap();
        let forged = EtcdAccess {
            endpoints: endpoints.clone(),
            tls: Some(ClientTls {
                ca: ca_dir(&state).join("ca.crt"),
                identity: identity(elsewhere.path(), "pgrepl", User::Agent, true).identity,
            }),
            user: None,
        };
        let refused = put(&forged, leader, "{}").await;
        assert!(
            refused.is_err(),
            "another CA's certificate wrote the leader key"
        );

        // A second cluster in the same etcd (its users made by root, its certificate by the
        // same CA) has its own prefix and cannot touch the first's.
        provision(&root, "other").await.unwrap();
        let second = tempfile::tempdir().unwrap();
        let tls_dir = ca_dir(second.path());
        std::fs::create_dir_all(&tls_dir).unwrap();
        for file in ["ca.crt", "ca.key"] {
            std::fs::copy(ca_dir(&state).join(file), tls_dir.join(file)).unwrap();
        }
        let other = EtcdAccess {
            endpoints: endpoints.clone(),
            tls: Some(identity(second.path(), "other", User::Agent, false)),
            user: None,
        };
        put(&other, "/pgrepl/other/leader", "{}").await.unwrap();
        denied(
            get(&other, leader).await,
            "the second cluster reads the first's leader",
        );
        denied(
            put(&other, leader, "{}").await,
            "the second cluster writes the first's leader",
        );
        // Nothing of the above changed the first cluster's leader.
        let after = get(&reader, leader).await.unwrap();
        assert_eq!(after, value);
    });
    // `status` reads as the reader and sees the agents.
    let status = status_json(&cluster);
    assert_eq!(status["ha"]["error"], serde_json::Value::Null, "{status:#}");
    assert_eq!(status["ha"]["leader"], "pg_master", "{status:#}");
    cluster.ok(&["down", "--purge"]);
}

/// An etcd of one's own with a password user (`[ha] etcd_user`, `etcd_password_file`): the
/// password is read from its file and used (the user may write what the certificate's own user
/// may not), and a wrong one is refused without the error showing it.
#[test]
fn an_etcd_password_is_read_from_its_file_used_and_never_shown() {
    let test = "an_etcd_password_is_read_from_its_file";
    if capability::tool(test, "etcd", "apt-get install etcd-server").is_none() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let secret = format!("Etcd-Secret-{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
    std::fs::write(&right, format!("{secret}\n")).unwrap();
    std::fs::write(&wrong, "not-it\n").unwrap();
    rt.block_on(async {
        let root = etcd.root();
        let mut client = Client::connect(&root.endpoints, Some(root.options().unwrap()))
            .await
            .unwrap();
        client.user_add("pw", secret.as_str(), None).await.unwrap();
        client.user_grant_role("pw", "pgrepl-pgrepl").await.unwrap();
        // The reader's certificate gets through TLS; the password makes the user.
        let reader = etcd.access(User::Reader);
        let key = "/pgrepl/pgrepl/it-password";
        denied(put(&reader, key, "1").await, "the reader writes");
        let with = |file: &Path| EtcdAccess {
            user: Some(("pw".into(), file.to_owned())),
            ..reader.clone()
        };
        put(&with(&right), key, "1").await.unwrap();
        let refused = put(&with(&wrong), key, "2").await.unwrap_err();
        assert!(
            refused.contains("authentication failed"),
            "a wrong password: {refused}"
        );
        assert!(
            !refused.contains("not-it"),
            "the error shows the password: {refused}"
        );
        assert_eq!(get(&reader, key).await.unwrap().as_deref(), Some("1"));
    });
}

/// An etcd `up` made before etcd had TLS (its members recorded without `tls`) keeps speaking
/// plain HTTP, and the cluster's TLS does not make pgrepl talk TLS to it.
#[test]
fn an_etcd_made_before_tls_keeps_plain_http_and_still_serves_the_agents() {
    let test = "an_etcd_made_before_tls_keeps_plain_http";
    let Some(cluster) = ha_cluster(test) else {
        return;
    };
    let etcd_dir = cluster.state_dir().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let pick = harness::pick_port;
    let members: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::json!({"name": format!("etcd{i}"), "client_port": pick(), "peer_port": pick()}))
        .collect();
    std::fs::write(
        etcd_dir.join("members.json"),
        serde_json::to_string(&members).unwrap(),
    )
    .unwrap();
    up_ok(&cluster);
    let endpoints = std::fs::read_to_string(etcd_dir.join("endpoints")).unwrap();
    assert!(
        endpoints.lines().all(|u| u.starts_with("http://")),
        "{endpoints}"
    );
    let status = status_json(&cluster);
    assert_eq!(status["ha"]["leader"], "pg_master", "{status:#}");
    cluster.ok(&["down", "--purge"]);
}
