//! The etcd `up` runs on the docker runtime (`ha::docker_etcd`), alone: three containers from
//! the image `compose/build-image etcd` makes, reached from the host through their published
//! client ports. One member killed, the other two still commit; started again, it rejoins with
//! its data; removed with the cluster's network and state directory, nothing of it is left.
//! Members speak TLS to clients and peers and want the cluster CA's certificates; this test
//! talks to them as etcd's root user (its certificate `up` made).

use std::time::{Duration, Instant};

use bollard::Docker;
use etcd_client::{Client, ConnectOptions, GetOptions};
use pgrepl::cluster::docker::DockerRuntime;
use pgrepl::cluster::spec::DockerSettings;
use pgrepl::cluster::StepLog;
use pgrepl::ha::docker_etcd::DockerEtcd;
use pgrepl::ha::etcd_access::{EtcdAccess, User};

use crate::support::capability;
use crate::support::docker::{
    docker, ensure_image, kill, logs, start, ENGINE, ETCD_IMAGE as IMAGE,
};

/// Names of this test's own, so a cluster another test left behind is never touched.
const SCOPE: &str = "pgrepl-it-etcd";
const NETWORK: &str = "pgrepl_it_etcd_net";

/// Keeps what `ensure_running` reports, to check which members it started.
#[derive(Default)]
struct Steps(std::sync::Mutex<Vec<String>>);

impl StepLog for Steps {
    fn step(&self, text: &str) {
        eprintln!("step: {text}");
        self.0.lock().unwrap().push(text.to_owned());
    }
}

impl Steps {
    /// The containers started since the last call.
    fn take(&self) -> Vec<String> {
        let mut steps = std::mem::take(&mut *self.0.lock().unwrap());
        steps.retain(|s| s.starts_with("start etcd container"));
        steps
    }
}

/// Removes this test's containers and network when it fails half-way, so the next run starts
/// clean (they carry this test's names only).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..3 {
                docker(&["rm", "-f", &container(i)]);
            }
            docker(&["network", "rm", NETWORK]);
        }
    }
}

fn container(i: usize) -> String {
    format!("{SCOPE}-etcd{i}")
}

/// This test's containers and network that exist.
async fn leftovers(engine: &Docker) -> Vec<String> {
    let mut found = Vec::new();
    for i in 0..3 {
        if engine.inspect_container(&container(i), None).await.is_ok() {
            found.push(format!("container {}", container(i)));
        }
    }
    if engine.inspect_network(NETWORK, None).await.is_ok() {
        found.push(format!("network {NETWORK}"));
    }
    found
}

/// etcd's root user's options (the certificate's common name is the user).
fn root(state_dir: &std::path::Path) -> ConnectOptions {
    EtcdAccess::own(state_dir, Vec::new(), true, User::Root)
        .options()
        .unwrap()
}

/// A client whose requests give up after a second, so a write retried while a leader is
/// elected measures the election, not the timeout.
async fn client(urls: &[String], options: &ConnectOptions) -> Client {
    let options = options
        .clone()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(1));
    Client::connect(urls, Some(options)).await.unwrap()
}

/// The value of `key` as `url`'s member alone holds it (a serializable read is answered from
/// the member's own data, without asking the leader).
async fn local_value(url: &str, options: &ConnectOptions, key: &str) -> Option<String> {
    let options = options
        .clone()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let mut client = Client::connect([url], Some(options)).await.ok()?;
    let found = client
        .get(key, Some(GetOptions::new().with_serializable()))
        .await
        .ok()?;
    found
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_owned())
}

/// The index of the member that leads, as it says itself.
async fn leader(urls: &[String], options: &ConnectOptions) -> usize {
    for (i, url) in urls.iter().enumerate() {
        let status = client(std::slice::from_ref(url), options)
            .await
            .status()
            .await
            .unwrap();
        if status.leader() == status.header().unwrap().member_id() {
            return i;
        }
    }
    panic!("no member of {urls:?} says it leads");
}

#[test]
fn docker_etcd_keeps_quorum_without_one_member_which_rejoins_with_its_data() {
    let test = "docker_etcd_keeps_quorum_without_one_member_which_rejoins_with_its_data";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = match rt.block_on(async {
        let engine = Docker::connect_with_unix_defaults().map_err(|e| e.to_string())?;
        engine.negotiate_version().await.map_err(|e| e.to_string())
    }) {
        Ok(engine) => engine,
        Err(why) => {
            capability::skip(test, "docker", &format!("no Docker engine answers: {why}"));
            return;
        }
    };
    let _engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    rt.block_on(ensure_image(&engine, IMAGE, "etcd"));
    assert_eq!(
        rt.block_on(leftovers(&engine)),
        Vec::<String>::new(),
        "left by an earlier run: remove them first"
    );

    let _cleanup = Cleanup;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join(".pgrepl");
    let settings = DockerSettings {
        network: NETWORK.into(),
        ..DockerSettings::default()
    };
    let runtime = DockerRuntime::new(state_dir.clone(), settings, None).unwrap();
    let etcd = DockerEtcd::new(&runtime, &state_dir, SCOPE, IMAGE);
    let steps = Steps::default();

    rt.block_on(async {
        let started = Instant::now();
        let urls = etcd.ensure_running(&[], true, &steps).await.unwrap();
        eprintln!(
            "3 etcd containers answer after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(steps.take().len(), 3);
        assert!(
            urls.host
                .endpoints
                .iter()
                .all(|u| u.starts_with("https://127.0.0.1:")),
            "{urls:?}"
        );
        let expected: Vec<String> = (0..3)
            .map(|i| format!("https://{}:2379", container(i)))
            .collect();
        assert_eq!(urls.network, expected);
        // The host's commands find the published ports through the endpoints file.
        let recorded =
            std::fs::read_to_string(pgrepl::ha::local_etcd_endpoints_file(&state_dir)).unwrap();
        assert_eq!(recorded.lines().collect::<Vec<_>>(), urls.host.endpoints);
        let hosts = &urls.host.endpoints;
        let root = root(&state_dir);

        // The members advertise their container names to clients, as the agents reach them.
        let mut all = client(hosts, &root).await;
        let members = all.member_list().await.unwrap();
        let mut advertised: Vec<String> = members
            .members()
            .iter()
            .flat_map(|m| m.client_urls().to_vec())
            .collect();
        advertised.sort();
        assert_eq!(advertised, expected);
        let ids_before: Vec<u64> = {
            let mut ids: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
            ids.sort();
            ids
        };
        all.put("/it/before", "1", None).await.unwrap();

        // Only the cluster CA's certificates get in, and each user only as far as its role.
        let ca = std::fs::read(pgrepl::cluster::tls::ca_cert_path(&state_dir)).unwrap();
        let anonymous = ConnectOptions::new()
            .with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(ca)),
            )
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(1));
        let refused = async {
            let mut c = Client::connect(hosts, Some(anonymous)).await?;
            c.get("/it/before", None).await
        };
        assert!(
            refused.await.is_err(),
            "a client without a certificate read"
        );
        let reader = EtcdAccess::own(&state_dir, hosts.clone(), true, User::Reader);
        let mut reading = client(hosts, &reader.options().unwrap()).await;
        let leader_key = format!("/pgrepl/{SCOPE}/leader");
        let denied = reading
            .put(leader_key.as_str(), "{}", None)
            .await
            .unwrap_err();
        assert!(denied.to_string().contains("permission denied"), "{denied}");
        reading.get(leader_key.as_str(), None).await.unwrap();

        // A second call finds everything running and starts nothing.
        assert_eq!(etcd.ensure_running(&[], true, &steps).await.unwrap(), urls);
        assert_eq!(steps.take(), Vec::<String>::new());

        // etcd's leader killed: the other two elect one across the network and commit.
        let down = leader(hosts, &root).await;
        kill(&container(down));
        let others: Vec<String> = (0..3)
            .filter(|&i| i != down)
            .map(|i| hosts[i].clone())
            .collect();
        let mut two = client(&others, &root).await;
        let started = Instant::now();
        // When the killed one led, the first tries fail until the other two elect a leader.
        while let Err(e) = two.put("/it/during", "2", None).await {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no write committed with one member down: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "a write with one member down committed in {} ms",
            started.elapsed().as_millis()
        );
        assert_eq!(
            local_value(&hosts[down], &root, "/it/before").await,
            None,
            "the killed member answered"
        );

        // Started again by the engine, the killed member rejoins under its name with its own data, and
        // catches up on what was written without it.
        start(&container(down));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if local_value(&hosts[down], &root, "/it/during")
                .await
                .as_deref()
                == Some("2")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not catch up within 30 s:\n{}",
                container(down),
                logs(&container(down))
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            local_value(&hosts[down], &root, "/it/before")
                .await
                .as_deref(),
            Some("1")
        );

        // A member stopped behind pgrepl's back is started by the next ensure_running.
        let other = (down + 1) % 3;
        kill(&container(other));
        assert_eq!(etcd.ensure_running(&[], true, &steps).await.unwrap(), urls);
        let restarted = steps.take();
        assert_eq!(restarted.len(), 1, "{restarted:?}");
        assert!(restarted[0].contains(&container(other)), "{restarted:?}");
        let mut all = client(hosts, &root).await;
        let members = all.member_list().await.unwrap();
        let mut ids_after: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
        ids_after.sort();
        assert_eq!(
            ids_after, ids_before,
            "a member was replaced, not restarted"
        );
        assert_eq!(
            local_value(&hosts[other], &root, "/it/during")
                .await
                .as_deref(),
            Some("2")
        );

        // Removed, then purged the way `down --purge` does: no container, network or data.
        etcd.remove().await.unwrap();
        for i in 0..3 {
            let inspect = docker(&["inspect", &container(i)]);
            assert!(!inspect.status.success(), "{} still exists", container(i));
        }
        assert!(state_dir.join("etcd/etcd0/member").is_dir());
        runtime.remove(&[], true).await.unwrap();
        assert!(!state_dir.exists(), "the etcd data was not purged");
        assert_eq!(leftovers(&engine).await, Vec::<String>::new());
    });
}
