//! Where a command finds its cluster, so that after `pgrepl up` every other command needs no
//! argument, as `docker compose ps` does. In order:
//! 1. the cluster file given with `--cluster`;
//! 2. `pgrepl.toml` in the current directory;
//! 3. the record `up` left in `./.pgrepl` (or `--state-dir`), which names the file it read, if any;
//! 4. the built-in defaults (the recipe's cluster), for `up`; other commands refuse, since there
//!    is nothing to act on.
//!
//! The runtime, image and binaries then come from the command line, else from the record, else
//! from the file; a command line that contradicts the record is refused before anything runs.

use std::path::{Path, PathBuf};

use super::record::{self, Asked, ClusterRecord};
use super::runtime::Runtime;
use super::spec::{ClusterSpec, NodeSpec, RuntimeKind};
use super::{docker, local, ports, topology, Cluster, ClusterError};

/// The cluster file a command reads when none is given.
pub const DEFAULT_FILE: &str = "pgrepl.toml";

/// How to find the cluster and place its runtime, from the command line.
#[derive(Debug, Default, Clone)]
pub struct RuntimeChoice {
    /// `--cluster FILE`.
    pub file: Option<PathBuf>,
    pub runtime: Option<RuntimeKind>,
    pub pg_bin: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// The docker runtime's image, instead of the cluster file's `docker.image`.
    pub image: Option<String>,
    /// `up` only: the local runtime may fetch PostgreSQL when the machine has none (or not
    /// the major asked for).
    pub fetch: Option<local::PgFetch>,
}

/// Where the servers come from: the local runtime's binaries (given, or found or fetched),
/// or the docker runtime's image.
struct Binaries<'a> {
    pg_bin: Option<PathBuf>,
    fetch: Option<&'a local::PgFetch>,
    image: Option<String>,
}

/// Whether the command builds the cluster (`up`, which may start from the defaults) or acts on
/// one that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Build,
    Use,
}

impl Cluster {
    /// Finds the cluster the command line means (see the module doc) and opens its runtime.
    pub fn find(choice: &RuntimeChoice, purpose: Purpose) -> Result<Cluster, ClusterError> {
        let cwd = absolute(Path::new("."))?;
        let here_state = cwd.join(choice.state_dir.as_deref().unwrap_or(Path::new(".pgrepl")));
        let file = match &choice.file {
            Some(file) if !file.exists() => {
                return Err(ClusterError::NoClusterFile(file.clone()));
            }
            Some(file) => Some(absolute(file)?),
            None if Path::new(DEFAULT_FILE).exists() => Some(cwd.join(DEFAULT_FILE)),
            None => ClusterRecord::load(&here_state)
                .map_err(|e| record_error(&here_state, e))?
                .and_then(|r| r.cluster_file),
        };
        let (spec, base) = match &file {
            Some(file) => (ClusterSpec::load(file)?, parent(file)),
            None => (ClusterSpec::default(), cwd),
        };
        let state_dir = base.join(choice.state_dir.as_ref().unwrap_or(&spec.state_dir));
        let found = ClusterRecord::load(&state_dir).map_err(|e| record_error(&state_dir, e))?;
        if found.is_none() && purpose == Purpose::Use && !state_dir.exists() {
            return Err(ClusterError::NoCluster(state_dir));
        }
        if let Some(found) = &found {
            let asked = Asked {
                runtime: choice.runtime,
                image: choice.image.as_deref(),
                pg_major: None,
                cluster_file: file.as_deref(),
            };
            found.check(&asked, &state_dir)?;
        }
        let found = found.as_ref();
        let runtime = choice
            .runtime
            .or(found.map(|r| r.runtime))
            .unwrap_or(spec.runtime);
        let pg_bin = choice
            .pg_bin
            .clone()
            .or_else(|| found.and_then(|r| r.pg_bin.clone()));
        let image = choice
            .image
            .clone()
            .or_else(|| found.and_then(|r| r.image.clone()));
        let binaries = Binaries {
            pg_bin,
            fetch: choice.fetch.as_ref(),
            image,
        };
        let cluster = Cluster::open_at(spec, &base, state_dir, file, runtime, binaries)?;
        // Binaries given with --pg-bin must be the major the data was made with.
        if let (Some(found), Some(_), Runtime::Local(local)) =
            (found, &choice.pg_bin, &cluster.runtime)
        {
            let asked = Asked {
                pg_major: Some(local.server_major()?),
                ..Asked::default()
            };
            found.check(&asked, &cluster.state_dir)?;
        }
        // `--pg-version` against the binaries a cluster already has (recorded by an earlier
        // `up`, maybe one cut short before it knew the data's major).
        let asked_major = choice.fetch.as_ref().and_then(|f| f.major);
        if let (Some(asked), Runtime::Local(local)) = (asked_major, &cluster.runtime) {
            let major = local.server_major()?;
            if major != asked {
                return Err(ClusterError::OtherMajor {
                    state_dir: cluster.state_dir.clone(),
                    major,
                    bin_dir: local.bin_dir.clone(),
                    asked,
                });
            }
        }
        Ok(cluster)
    }

    /// Opens the runtime for `spec`, its roles as the last role change left them.
    fn open_at(
        spec: ClusterSpec,
        base: &Path,
        state_dir: PathBuf,
        file: Option<PathBuf>,
        kind: RuntimeKind,
        binaries: Binaries<'_>,
    ) -> Result<Cluster, ClusterError> {
        let Binaries {
            pg_bin,
            fetch,
            image,
        } = binaries;
        let mut spec = spec;
        spec.runtime = kind;
        // The etcd credentials are read by whoever opens the cluster, from wherever it runs.
        if let Some(ha) = &mut spec.ha {
            for file in ha.etcd_files_mut() {
                *file = file.take().map(|f| base.join(f));
            }
        }
        for file in spec.tls.files_mut() {
            *file = base.join(&*file);
        }
        let replication_password = spec.replication_password(base)?;
        let file_spec = spec.clone();
        // After a failover or switchover the recorded primary decides the roles.
        if let Some(topology) = topology::Topology::load(&state_dir)? {
            spec = spec.with_primary(&topology.primary)?;
        }
        if let (RuntimeKind::Docker, Some(node)) =
            (kind, spec.nodes.iter().find(|n| n.host.is_some()))
        {
            return Err(ClusterError::HostOnDocker(node.name.clone()));
        }
        let runtime = match kind {
            RuntimeKind::Local => {
                let mut settings = spec.local.clone();
                settings.superuser_password_file =
                    settings.superuser_password_file.map(|file| base.join(file));
                Runtime::Local(local::LocalRuntime::new(
                    state_dir.clone(),
                    pg_bin,
                    settings,
                    fetch,
                )?)
            }
            RuntimeKind::Docker => Runtime::Docker(Box::new(docker::DockerRuntime::new(
                state_dir.clone(),
                spec.docker.clone(),
                image,
            )?)),
        };
        Ok(Cluster {
            spec,
            file_spec,
            runtime,
            replication_password,
            state_dir,
            cluster_file: file,
            machine: None,
        }
        .with_machine_of_its_hosts())
    }

    /// A command on the local runtime whose nodes name hosts of other machines acts only on
    /// this machine's nodes and reaches the others over the network: a socket path of this
    /// machine would name a server of its own that listens on the same port.
    fn with_machine_of_its_hosts(mut self) -> Cluster {
        if !matches!(self.runtime, Runtime::Local(_)) {
            return self;
        }
        let mut hosts: Vec<&str> = self.spec.nodes.iter().map(NodeSpec::host).collect();
        hosts.sort_unstable();
        hosts.dedup();
        let (here, elsewhere): (Vec<&str>, Vec<&str>) =
            hosts.into_iter().partition(|h| ports::is_local_address(h));
        if !elsewhere.is_empty() {
            self.machine = Some(here.into_iter().map(str::to_owned).collect());
        }
        self
    }

    /// What `up` records: this cluster's runtime, file, image or binaries, and data major.
    pub(crate) fn record(&self) -> Result<ClusterRecord, ClusterError> {
        let primary_data = self.runtime.data_dir(self.file_spec.primary());
        let pg_major = record::data_major(&primary_data)
            .map_err(|e| ClusterError::io(format!("read `{}`", primary_data.display()), e))?;
        let (image, pg_bin) = match &self.runtime {
            Runtime::Local(local) => (None, Some(local.bin_dir.clone())),
            Runtime::Docker(docker) => (Some(docker.image_name().to_owned()), None),
        };
        Ok(ClusterRecord {
            runtime: self.spec.runtime,
            cluster_file: self.cluster_file.clone(),
            image,
            pg_bin,
            pg_major,
        })
    }

    /// Writes the record when it says something new.
    pub(crate) fn save_record(&self) -> Result<(), ClusterError> {
        let record = self.record()?;
        let path = ClusterRecord::path(&self.state_dir);
        let current =
            ClusterRecord::load(&self.state_dir).map_err(|e| record_error(&self.state_dir, e))?;
        if current.as_ref() != Some(&record) {
            record
                .save(&self.state_dir)
                .map_err(|e| ClusterError::io(format!("write `{}`", path.display()), e))?;
        }
        Ok(())
    }
}

fn absolute(path: &Path) -> Result<PathBuf, ClusterError> {
    std::path::absolute(path)
        .map_err(|e| ClusterError::io(format!("resolve `{}`", path.display()), e))
}

fn parent(file: &Path) -> PathBuf {
    file.parent().unwrap_or(Path::new("/")).to_owned()
}

fn record_error(state_dir: &Path, error: std::io::Error) -> ClusterError {
    ClusterError::io(
        format!("read `{}`", ClusterRecord::path(state_dir).display()),
        error,
    )
}
