//! Where each node's agent serves its HTTP API: the node's `api` in the cluster file, else the
//! address `up` picked on 127.0.0.1 and recorded in `<state_dir>/agents/api.json`, so that an
//! agent started again listens where HAProxy already checks it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::HaError;
use crate::cluster::spec::{NodeSpec, LOOPBACK};
use crate::cluster::{ports, Cluster};

fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("agents").join("api.json")
}

/// The addresses `up` recorded (none when it recorded none).
pub fn recorded(state_dir: &Path) -> Result<BTreeMap<String, SocketAddr>, HaError> {
    let path = file(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|error| HaError::DamagedFile { path, error })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(HaError::Io {
            context: format!("read `{}`", path.display()),
            source,
        }),
    }
}

/// Node `node`'s API address: the cluster file's, else the recorded one.
pub fn of(cluster: &Cluster, node: &NodeSpec) -> Result<Option<SocketAddr>, HaError> {
    Ok(known(cluster)?.remove(&node.name))
}

/// Every node's API address that the cluster file gives or `up` recorded (one read).
pub fn known(cluster: &Cluster) -> Result<BTreeMap<String, SocketAddr>, HaError> {
    let mut all = recorded(cluster.state_dir())?;
    for node in &cluster.spec.nodes {
        if let Some(api) = node.api {
            all.insert(node.name.clone(), api);
        }
    }
    Ok(all)
}

/// Every node's API address, picking (and recording) a free port on 127.0.0.1 for each node
/// that has neither an `api` in the cluster file nor a recorded one. `avoid`: ports taken by
/// what `up` starts besides.
pub fn ensure(cluster: &Cluster, avoid: &[u16]) -> Result<BTreeMap<String, SocketAddr>, HaError> {
    let state_dir = cluster.state_dir();
    let mut recorded = recorded(state_dir)?;
    let mut taken: Vec<u16> = avoid.to_vec();
    taken.extend(recorded.values().map(SocketAddr::port));
    taken.extend(
        cluster
            .spec
            .nodes
            .iter()
            .filter_map(|n| n.api.map(|a| a.port())),
    );
    let missing: Vec<&NodeSpec> = cluster
        .spec
        .nodes
        .iter()
        .filter(|n| n.api.is_none() && !recorded.contains_key(&n.name))
        .collect();
    if !missing.is_empty() {
        let mut pick = ports::picker(super::LOCAL_ETCD_PORTS, &taken);
        for node in missing {
            let addr = format!("{LOOPBACK}:{}", pick())
                .parse()
                .expect("an address");
            recorded.insert(node.name.clone(), addr);
        }
        let path = file(state_dir);
        let dir = path.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).map_err(|source| HaError::Io {
            context: format!("create `{}`", dir.display()),
            source,
        })?;
        let text = serde_json::to_string_pretty(&recorded).expect("serializes");
        crate::fs::write_durably(&path, text.as_bytes(), 0o644).map_err(|source| HaError::Io {
            context: format!("write `{}`", path.display()),
            source,
        })?;
    }
    let mut all = BTreeMap::new();
    for node in &cluster.spec.nodes {
        let addr = node.api.or_else(|| recorded.get(&node.name).copied());
        all.insert(node.name.clone(), addr.expect("picked above"));
    }
    Ok(all)
}
