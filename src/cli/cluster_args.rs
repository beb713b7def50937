//! The arguments many commands share: which cluster (`ClusterArgs`), where its agents' etcd is
//! (`EtcdArgs`), and how long to wait for the agents (`AgentsArgs`), with what they become in
//! the library's terms.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use pgrepl::cluster::spec::RuntimeKind;
use pgrepl::cluster::{Cluster, Purpose, RuntimeChoice};
use pgrepl::ha::etcd_access::{ClientTls, EtcdAccess, Role};
use pgrepl::ha::route::{EtcdTarget, Route};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RuntimeArg {
    Local,
    Docker,
}

/// Which cluster, and where its nodes live.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The cluster file (default: `pgrepl.toml` here, else the one `up` recorded in the state
    /// directory, else the recipe's defaults).
    #[arg(long = "cluster", short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Override the file's runtime: local processes or docker containers.
    #[arg(long = "runtime", value_enum)]
    pub runtime: Option<RuntimeArg>,
    /// Directory of the PostgreSQL binaries for the local runtime (default: PATH, pg_config,
    /// /usr/lib/postgresql/*/bin).
    #[arg(long = "pg-bin", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Where data, logs and sockets live (default: the file's state_dir, `.pgrepl`).
    #[arg(long = "state-dir", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The docker runtime's image (default: the one `up --image` was last given, else the
    /// file's docker.image, `postgres:17`); e.g. `pgrepl-local/postgres:15` from
    /// compose/build-image where no registry is reachable.
    #[arg(long = "image", value_name = "IMAGE")]
    pub image: Option<String>,
}

impl ClusterArgs {
    /// The cluster an existing-cluster command acts on.
    pub fn open(&self) -> anyhow::Result<Cluster> {
        self.find(Purpose::Use)
    }

    pub fn find(&self, purpose: Purpose) -> anyhow::Result<Cluster> {
        Ok(Cluster::find(&self.choice(), purpose)?)
    }

    pub fn choice(&self) -> RuntimeChoice {
        RuntimeChoice {
            file: self.file.clone(),
            runtime: self.runtime.map(|r| match r {
                RuntimeArg::Local => RuntimeKind::Local,
                RuntimeArg::Docker => RuntimeKind::Docker,
            }),
            pg_bin: self.pg_bin.clone(),
            state_dir: self.state_dir.clone(),
            image: self.image.clone(),
            fetch: None,
        }
    }
}

/// Where the agents' etcd is.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (default: the cluster file's `[ha] etcd`, or the etcd
    /// `up` started).
    #[arg(
        long = "etcd",
        value_name = "URL,...",
        env = "PGREPL_ETCD",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// The cluster's name in etcd keys (`/pgrepl/<scope>/`; default: `[ha] scope`, or the
    /// cluster file's name without its extension).
    #[arg(long = "scope", value_name = "NAME")]
    pub scope: Option<String>,
    /// The CA that signed etcd's certificates, for `https://` URLs (default: `[ha] etcd_ca`,
    /// or the cluster CA for the etcd `up` started).
    #[arg(long = "etcd-ca", value_name = "FILE", env = "PGREPL_ETCD_CA")]
    pub ca: Option<PathBuf>,
    /// The client certificate to present to etcd, with --etcd-key (default: `[ha]`'s, or the
    /// one `up` made for the command's role).
    #[arg(
        long = "etcd-cert",
        value_name = "FILE",
        env = "PGREPL_ETCD_CERT",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    #[arg(
        long = "etcd-key",
        value_name = "FILE",
        env = "PGREPL_ETCD_KEY",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The cluster's etcd as `role` reaches it (`[ha]`, or the etcd `up` started), at
    /// `--etcd` when given; `None` when the cluster has no etcd.
    pub fn access(&self, cluster: &Cluster, role: Role) -> anyhow::Result<Option<EtcdAccess>> {
        let own = pgrepl::ha::etcd_access(cluster, role);
        let mut access = if self.etcd.is_empty() {
            match own {
                Some(own) => own,
                None => return Ok(None),
            }
        } else {
            let plain = EtcdAccess::plain(self.etcd.clone());
            own.map_or(plain, |own| own.at(self.etcd.clone()))
        };
        if let Some(ca) = &self.ca {
            let identity = access.tls.take().and_then(|tls| tls.identity);
            access.tls = Some(ClientTls {
                ca: ca.clone(),
                identity,
            });
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let Some(tls) = &mut access.tls else {
                bail!("--etcd-cert needs --etcd-ca: the CA that signed etcd's certificates");
            };
            tls.identity = Some((cert.clone(), key.clone()));
        }
        Ok(Some(access))
    }

    pub fn scope(&self, cluster: &Cluster) -> anyhow::Result<String> {
        match &self.scope {
            Some(scope) if scope.is_empty() || scope.contains('/') => {
                bail!("--scope `{scope}`: give a name without `/`")
            }
            Some(scope) => Ok(scope.clone()),
            None => Ok(pgrepl::ha::scope(cluster)?),
        }
    }

    /// Who carries out a role change on `cluster`: its agents when they run (in this etcd),
    /// else pgrepl itself.
    pub async fn route(&self, cluster: &Cluster) -> anyhow::Result<Route> {
        let etcd = match self.access(cluster, Role::Agent)? {
            Some(access) => Some(EtcdTarget {
                access,
                scope: self.scope(cluster)?,
            }),
            None => None,
        };
        Ok(Route::find(cluster, etcd).await?)
    }
}

/// How a role change through the agents is bounded.
#[derive(Debug, Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// With agents: how long to wait for them to carry it out before giving up (the request
    /// then expires); `30s`, `2min`, or a bare number of seconds.
    #[arg(long = "wait", value_name = "DURATION", default_value = "30s",
          value_parser = pgrepl::units::parse_duration)]
    pub wait: Duration,
}
