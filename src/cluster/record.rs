//! What `pgrepl up` built, remembered in the state directory (`cluster.json`), so that every later
//! command finds the same cluster with no arguments, as `docker compose ps` does: the runtime, the
//! image or the PostgreSQL binaries and their major, and the cluster file (or the built-in
//! defaults). A later command that contradicts the record is refused, since acting on the wrong
//! runtime or binaries harms the nodes (a local `down --purge` under running containers deletes
//! their data; PostgreSQL 15 refuses a PostgreSQL 18 data directory).
//!
//! The record holds no secret: the replication password stays in the cluster file (or its
//! password file), which the record only names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::RuntimeKind;

const FILE_NAME: &str = "cluster.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRecord {
    pub runtime: RuntimeKind,
    /// The cluster file `up` read (absolute), or `None` for the built-in defaults.
    pub cluster_file: Option<PathBuf>,
    /// docker: the image every node runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// local: the directory of the PostgreSQL binaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_bin: Option<PathBuf>,
    /// The PostgreSQL major of the nodes' data (`PG_VERSION`), once the primary exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_major: Option<u32>,
}

/// What the command line says about the cluster, to compare with the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked<'a> {
    pub runtime: Option<RuntimeKind>,
    pub image: Option<&'a str>,
    /// The major of the binaries `--pg-bin` names.
    pub pg_major: Option<u32>,
    /// The cluster file the command reads (absolute): `--cluster`, or `pgrepl.toml` here.
    pub cluster_file: Option<&'a Path>,
}

/// A command line that contradicts what exists: what the cluster in `state_dir` was built
/// with; the text says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the cluster in `{}` was built {built}; {}, or remove it first with `pgrepl down --purge`",
    .state_dir.display(), .built.fix()
)]
pub struct Contradiction {
    pub state_dir: PathBuf,
    pub built: BuiltWith,
}

/// What a cluster was built with, that the command line contradicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltWith {
    Runtime {
        built: RuntimeKind,
        asked: RuntimeKind,
    },
    Image(String),
    /// The data's major, and that of the binaries `--pg-bin` names.
    Major {
        built: u32,
        asked: u32,
    },
    File(PathBuf),
    /// The built-in defaults, and the cluster file the command reads.
    Defaults {
        asked: PathBuf,
    },
}

impl std::fmt::Display for BuiltWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuiltWith::Runtime { built, asked } => {
                write!(f, "on the {} runtime, not {}", name(*built), name(*asked))
            }
            BuiltWith::Image(image) => write!(f, "with the image `{image}`"),
            BuiltWith::Major { built, asked } => {
                write!(f, "with PostgreSQL {built}, and --pg-bin holds {asked}")
            }
            BuiltWith::File(file) => write!(f, "from `{}`", file.display()),
            BuiltWith::Defaults { asked } => {
                write!(f, "from the built-in defaults, not `{}`", asked.display())
            }
        }
    }
}

impl BuiltWith {
    /// How the command line comes to agree.
    fn fix(&self) -> String {
        match self {
            BuiltWith::Runtime { .. } => "drop --runtime".into(),
            BuiltWith::Image(_) => "drop --image".into(),
            BuiltWith::Major { built, .. } => {
                format!("give --pg-bin a PostgreSQL {built} directory or drop it")
            }
            BuiltWith::File(file) => format!("use --cluster {}", file.display()),
            BuiltWith::Defaults { .. } => "drop --cluster (or move that file away)".into(),
        }
    }
}

impl ClusterRecord {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE_NAME)
    }

    /// `Ok(None)` when no `up` ever ran with this state directory.
    pub fn load(state_dir: &Path) -> std::io::Result<Option<ClusterRecord>> {
        let path = Self::path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("`{}` is damaged ({e}): fix or delete it", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Written to a temporary name, synced and renamed: a crash leaves the old record or the new.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a record serializes");
        crate::fs::write_durably(&Self::path(state_dir), text.as_bytes(), 0o644)
    }

    /// Forgets the cluster (`down --purge`, after its nodes are gone).
    pub fn remove(state_dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(Self::path(state_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Refuses a command line that names another runtime, image, major or cluster file than
    /// the cluster in `state_dir` was built with.
    pub fn check(&self, asked: &Asked, state_dir: &Path) -> Result<(), Contradiction> {
        let built = |built: BuiltWith| {
            Err(Contradiction {
                state_dir: state_dir.to_path_buf(),
                built,
            })
        };
        if let Some(asked) = asked.runtime.filter(|r| *r != self.runtime) {
            return built(BuiltWith::Runtime {
                built: self.runtime,
                asked,
            });
        }
        if let (Some(image), Some(built_with)) = (asked.image, &self.image) {
            if image != built_with {
                return built(BuiltWith::Image(built_with.clone()));
            }
        }
        if let (Some(major), Some(built_major)) = (asked.pg_major, self.pg_major) {
            if major != built_major {
                return built(BuiltWith::Major {
                    built: built_major,
                    asked: major,
                });
            }
        }
        if let Some(file) = asked.cluster_file {
            match &self.cluster_file {
                Some(built_file) if built_file != file => {
                    return built(BuiltWith::File(built_file.clone()))
                }
                None => {
                    return built(BuiltWith::Defaults {
                        asked: file.to_path_buf(),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn name(runtime: RuntimeKind) -> &'static str {
    match runtime {
        RuntimeKind::Local => "local",
        RuntimeKind::Docker => "docker",
    }
}

/// The major in a data directory's `PG_VERSION`, `None` when there is no data yet.
pub fn data_major(data_dir: &Path) -> std::io::Result<Option<u32>> {
    let path = data_dir.join("PG_VERSION");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("`{}` does not hold a PostgreSQL major", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker() -> ClusterRecord {
        ClusterRecord {
            runtime: RuntimeKind::Docker,
            cluster_file: None,
            image: Some("pgrepl-local/postgres:15".into()),
            pg_bin: None,
            pg_major: Some(15),
        }
    }

    #[test]
    fn a_record_round_trips_through_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ClusterRecord::load(dir.path()).unwrap(), None);
        docker().save(dir.path()).unwrap();
        assert_eq!(ClusterRecord::load(dir.path()).unwrap(), Some(docker()));
        ClusterRecord::remove(dir.path()).unwrap();
        ClusterRecord::remove(dir.path()).unwrap();
        assert_eq!(ClusterRecord::load(dir.path()).unwrap(), None);
        std::fs::write(ClusterRecord::path(dir.path()), "{").unwrap();
        let damaged = ClusterRecord::load(dir.path()).unwrap_err().to_string();
        assert!(damaged.contains("is damaged"), "{damaged}");
    }

    #[test]
    fn a_command_line_that_agrees_is_accepted_and_a_file_against_the_defaults_is_not() {
        let state = Path::new(".pgrepl");
        let record = docker();
        assert_eq!(record.check(&Asked::default(), state), Ok(()));
        let same = Asked {
            runtime: Some(RuntimeKind::Docker),
            image: Some("pgrepl-local/postgres:15"),
            pg_major: Some(15),
            cluster_file: None,
        };
        assert_eq!(record.check(&same, state), Ok(()));
        let file = Asked {
            cluster_file: Some(Path::new("/srv/pgrepl.toml")),
            ..Asked::default()
        };
        let text = record.check(&file, state).unwrap_err().to_string();
        assert!(text.contains("defaults, not `/srv/pgrepl.toml`"), "{text}");
    }

    #[test]
    fn a_contradiction_says_what_exists_and_what_to_do() {
        let state = Path::new("/srv/.pgrepl");
        let record = docker();
        let local = Asked {
            runtime: Some(RuntimeKind::Local),
            ..Asked::default()
        };
        let text = record.check(&local, state).unwrap_err().to_string();
        assert_eq!(
            text,
            "the cluster in `/srv/.pgrepl` was built on the docker runtime, not local; drop --runtime, or remove it first with `pgrepl down --purge`"
        );
        let image = Asked {
            image: Some("postgres:17"),
            ..Asked::default()
        };
        assert!(record
            .check(&image, state)
            .unwrap_err()
            .to_string()
            .contains("`pgrepl-local/postgres:15`"));
        let major = Asked {
            pg_major: Some(18),
            ..Asked::default()
        };
        assert!(record
            .check(&major, state)
            .unwrap_err()
            .to_string()
            .contains("PostgreSQL 15, and --pg-bin holds 18"));
        let mut from_file = docker();
        from_file.cluster_file = Some("/srv/pgrepl.toml".into());
        let other = Asked {
            cluster_file: Some(Path::new("/srv/other.toml")),
            ..Asked::default()
        };
        assert!(from_file
            .check(&other, state)
            .unwrap_err()
            .to_string()
            .contains("use --cluster /srv/pgrepl.toml"));
    }

    #[test]
    fn data_majors_come_from_pg_version() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(data_major(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("PG_VERSION"), "18\n").unwrap();
        assert_eq!(data_major(dir.path()).unwrap(), Some(18));
        std::fs::write(dir.path().join("PG_VERSION"), "x").unwrap();
        assert!(data_major(dir.path()).is_err());
    }
}
