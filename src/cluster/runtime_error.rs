//! What can go wrong inside a runtime (local processes or containers) or with the state it
//! keeps on disk (topology file, pg_control), one variant per failure,
//! so callers such as the HA agent can match on what failed rather than on message text.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("`{0}` has no postgres and initdb binaries; give the bin directory of a PostgreSQL installation")]
    NotABinDir(PathBuf),
    #[error(
        "no PostgreSQL binaries found (PATH, pg_config, /usr/lib/postgresql/*/bin): install PostgreSQL \
         (e.g. apt-get install postgresql-15) or give --pg-bin DIR"
    )]
    NoBinaries,
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error(
        "pgrepl runs as root and PostgreSQL refuses root: create an OS user `postgres` \
         (useradd --system postgres) or run pgrepl as an ordinary user"
    )]
    NoServerUser,
    #[error("`{tool}` failed: {error}")]
    ToolFailed { tool: String, error: String },
    #[error("start `{node}`: {error}; see `{}`", log.display())]
    StartFailed {
        node: String,
        error: String,
        log: PathBuf,
    },
    #[error("port {port} for `{node}` is in use ({holder} listens there): stop it, or change the node's port in the cluster file")]
    PortInUse {
        node: String,
        port: u16,
        /// `pid N (comm)` when /proc shows it, else "something".
        holder: String,
    },
    #[error("port {port} for `{node}` stays taken by a client connection's local end (it lies in the ephemeral port range): retry, or give the node a port outside {low}-{high}", low = crate::cluster::ports::EPHEMERAL.0, high = crate::cluster::ports::EPHEMERAL.1)]
    PortHeldByClient { node: String, port: u16 },
    #[error("host `{host}` of `{node}` is no address of this machine: run the node's agent on the machine that has it, or fix its host in the cluster file")]
    NotThisMachine { node: String, host: String },
    #[error("`pg_rewind` is not in `{}`: install it with the PostgreSQL server package, or rejoin without --rewind", .0.display())]
    NoRewind(PathBuf),
    #[error("`{node}` is running: stop it before pg_rewind")]
    RunningDuringRewind { node: String },
    #[error("`{node}` holds PostgreSQL {data_major} data and the binaries in {binaries} are {binaries_major}: {remedy}")]
    VersionMismatch {
        node: String,
        data_major: u32,
        binaries: String,
        binaries_major: u32,
        remedy: String,
    },
    #[error("`{}` is damaged ({reason}); fix or delete it", path.display())]
    DamagedStateFile { path: PathBuf, reason: String },
    #[error("`{}` is too short to be pg_control", .0.display())]
    ShortControlFile(PathBuf),
    #[error("could not tell the PostgreSQL major of {binaries}: {reason}")]
    UnknownMajor { binaries: String, reason: String },
    #[error("nothing deleted: {} still running (could not stop {}); stop {} by hand and run `pgrepl down --purge` again",
        if .0.len() == 1 { "a node is" } else { "nodes are" }, names(.0), if .0.len() == 1 { "it" } else { "them" })]
    NotStopped(Vec<String>),
    #[error(
        "image `{image}` is not on this Docker engine and pulling it failed ({error}): `docker pull {image}`, or build \
         one without a registry with compose/build-image and give --image pgrepl-local/postgres:15"
    )]
    ImagePull { image: String, error: String },
    #[error(
        "image `{image}` is not on this Docker engine and pulling it failed ({error}): `docker pull {image}`, or build \
         it without a registry: compose/build-image {build}"
    )]
    PartImagePull {
        image: String,
        error: String,
        /// compose/build-image's argument that builds it.
        build: &'static str,
    },
    #[error(
        "image `{image}` has no PostgreSQL server: no directory on its PATH (`{path}`) holds `postgres` and `initdb`; \
         give a PostgreSQL image (--image postgres:17, or one built by compose/build-image)"
    )]
    NoServerInImage { image: String, path: String },
    #[error("network `{0}` has no IPv4 subnet: remove it and run `pgrepl up` again")]
    NoSubnet(String),
    #[error("a container named `{0}` exists and is not this cluster's: remove it (docker rm -f {0}) or rename the node in the cluster file")]
    ForeignContainer(String),
    #[error("container `{name}` exited before accepting connections; its last log lines:\n{logs}")]
    ExitedBeforeReady { name: String, logs: String },
    #[error("container `{name}` failed (exit code {code}); its last log lines:\n{logs}")]
    OneShotFailed {
        name: String,
        code: String,
        logs: String,
    },
}

/// `a`, `a` and `b`, `a`, `b` and `c`: backquoted.
fn names(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_stopped_names_every_node_on_one_line() {
        let one = RuntimeError::NotStopped(vec!["pg_slave".into()]).to_string();
        assert!(one.contains("could not stop `pg_slave`"), "{one}");
        assert!(one.contains("a node is still running"), "{one}");
        let two = RuntimeError::NotStopped(vec!["a".into(), "b".into(), "c".into()]).to_string();
        assert!(two.contains("`a`, `b` and `c`"), "{two}");
        assert!(!two.contains('\n'));
    }
}
