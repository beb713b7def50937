//! The node image: inspected once (official image with its entrypoint, or bare binaries; where
//! the server binaries are; which PostgreSQL major), pulled through the engine first when the
//! engine lacks it, as `docker compose up` does.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    ContainerArchiveInfoOptions, CreateContainerOptions, CreateImageOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{engine_err, is_not_found, DockerRuntime};
use crate::cluster::runtime_error::RuntimeError;
use crate::cluster::server_version;
use crate::cluster::ClusterError;

/// A registry that sends nothing for this long is taken as unreachable.
const PULL_SILENCE: Duration = Duration::from_secs(60);
/// Labels and env vars that state the image's PostgreSQL major: compose/build-image's label,
/// the official images' `PG_MAJOR`.
const MAJOR_LABEL: &str = "org.pgrepl.postgres-major";
const MAJOR_ENV: &str = "PG_MAJOR=";

/// What the image offers for running a node.
#[derive(Debug)]
pub(super) enum ImageKind {
    /// The official images: `docker-entrypoint.sh` initialises an empty PGDATA itself.
    Entrypoint,
    /// Binaries only: `postgres` and `initdb` in `bin_dir`.
    Bare { bin_dir: String },
}

#[derive(Debug)]
pub(super) struct Image {
    pub(super) kind: ImageKind,
    /// Where `postgres` is, for one-shot runs and the agents.
    pub(super) bin_dir: String,
    /// The major the image states in a label or its env; `None`: ask `postgres --version`.
    stated_major: Option<u32>,
}

/// The major an image states: its label, else the official images' `PG_MAJOR`.
fn stated_major(labels: Option<&HashMap<String, String>>, env: &[String]) -> Option<u32> {
    labels
        .and_then(|l| l.get(MAJOR_LABEL))
        .map(String::as_str)
        .or_else(|| env.iter().find_map(|v| v.strip_prefix(MAJOR_ENV)))
        .and_then(server_version::major_of_pg_version)
}

impl DockerRuntime {
    /// Inspects the image once (pulling it when the engine lacks it): is it an official image
    /// with its entrypoint, or bare binaries, and does it have `postgres` and `initdb` at all.
    pub(super) async fn image(&self) -> Result<&Image, ClusterError> {
        self.image
            .get_or_try_init(|| async {
                let docker = self.engine().await?;
                let image = &self.settings.image;
                let inspect = match docker.inspect_image(image).await {
                    Err(e) if is_not_found(&e) => {
                        pull(docker, image).await?;
                        docker.inspect_image(image).await
                    }
                    other => other,
                }
                .map_err(engine_err(format!("inspect image `{image}`")))?;
                let config = inspect.config.unwrap_or_default();
                let has_entrypoint_script = config
                    .entrypoint
                    .iter()
                    .chain(config.cmd.iter())
                    .flatten()
                    .any(|a| a.ends_with("docker-entrypoint.sh"));
                // The engine's own PATH when the image sets none.
                let path = config
                    .env
                    .iter()
                    .flatten()
                    .find_map(|v| v.strip_prefix("PATH="))
                    .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                    .to_owned();
                let Some(bin_dir) = self.find_server_binaries(&path).await? else {
                    return Err(RuntimeError::NoServerInImage {
                        image: image.clone(),
                        path,
                    }
                    .into());
                };
                let kind = if has_entrypoint_script {
                    ImageKind::Entrypoint
                } else {
                    ImageKind::Bare {
                        bin_dir: bin_dir.clone(),
                    }
                };
                let stated_major = stated_major(
                    config.labels.as_ref(),
                    config.env.as_deref().unwrap_or_default(),
                );
                tracing::info!(image, ?kind, ?stated_major, "inspected the image");
                Ok(Image {
                    kind,
                    bin_dir,
                    stated_major,
                })
            })
            .await
    }

    /// Pulls `image` (etcd's, HAProxy's) unless the engine has it; `build`: compose/build-image's
    /// argument that builds it where no registry answers.
    pub async fn ensure_part_image(
        &self,
        image: &str,
        build: &'static str,
    ) -> Result<(), ClusterError> {
        let docker = self.engine().await?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => pull(docker, image).await.map_err(|e| {
                let error = match e {
                    RuntimeError::ImagePull { error, .. } => error,
                    other => other.to_string(),
                };
                RuntimeError::PartImagePull {
                    image: image.to_owned(),
                    error,
                    build,
                }
                .into()
            }),
            Err(e) => Err(engine_err(format!("inspect image `{image}`"))(e)),
        }
    }

    /// The image's PostgreSQL major: what it states, else what its `postgres --version` says
    /// in a one-shot container.
    pub async fn server_major(&self) -> Result<u32, ClusterError> {
        let image = self.image().await?;
        if let Some(major) = image.stated_major {
            return Ok(major);
        }
        let name = &self.settings.image;
        let entrypoint = vec![format!("{}/postgres", image.bin_dir), "--version".into()];
        let probe = self.probe(entrypoint, "for `postgres --version`").await?;
        let output = self.run_to_completion(&probe).await;
        self.remove_container(&probe).await?;
        let output = output?;
        server_version::major_of_version_output(&output).ok_or_else(|| {
            RuntimeError::UnknownMajor {
                binaries: format!("image `{name}`"),
                reason: format!("`postgres --version` printed `{}`", output.trim()),
            }
            .into()
        })
    }

    /// Creates a container of the image without network, to look into or run once; returns its
    /// id. `purpose` completes the error message.
    async fn probe(&self, entrypoint: Vec<String>, purpose: &str) -> Result<String, ClusterError> {
        let image = &self.settings.image;
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(entrypoint),
            labels: Some(self.labels()),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .engine()
            .await?
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(engine_err(format!(
                "create a container from `{image}` {purpose}"
            )))?;
        Ok(created.id)
    }

    /// The first PATH directory of the image holding both `postgres` and `initdb`. Files are
    /// looked up through the archive API on a created (never started) container.
    pub(super) async fn find_server_binaries(
        &self,
        path: &str,
    ) -> Result<Option<String>, ClusterError> {
        let docker = self.engine().await?;
        // An image without CMD cannot even be created; this one is never started.
        let probe = self
            .probe(vec!["postgres".into()], "to look for postgres")
            .await?;
        let found = self.search_path(docker, &probe, path).await;
        let removed = docker
            .remove_container(
                &probe,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(engine_err("remove the image probe container"));
        let found = found?;
        removed?;
        Ok(found)
    }

    pub(super) async fn search_path(
        &self,
        docker: &Docker,
        container: &str,
        path: &str,
    ) -> Result<Option<String>, ClusterError> {
        'dirs: for dir in path
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| d.trim_end_matches('/'))
        {
            for tool in ["postgres", "initdb"] {
                let options = ContainerArchiveInfoOptions {
                    path: format!("{dir}/{tool}"),
                };
                match docker
                    .get_container_archive_info(container, Some(options))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => continue 'dirs,
                    Err(e) => {
                        return Err(engine_err(format!(
                            "look for `{dir}/{tool}` in `{}`",
                            self.settings.image
                        ))(e))
                    }
                }
            }
            return Ok(Some(dir.to_owned()));
        }
        Ok(None)
    }
}

/// Pulls `image` through the engine, with a progress bar over the layers' bytes (drawn only on
/// a terminal). A registry error, or silence, becomes one line naming the way out.
async fn pull(docker: &Docker, image: &str) -> Result<(), RuntimeError> {
    let failed = |error: String| RuntimeError::ImagePull {
        image: image.to_owned(),
        error: error.lines().map(str::trim).collect::<Vec<_>>().join(" "),
    };
    tracing::info!(image, "the engine lacks the image: pulling it");
    let options = CreateImageOptions {
        from_image: Some(image.to_owned()),
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(options), None, None);
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("pull {msg} {bytes}/{total_bytes} {wide_bar}") {
        bar.set_style(style);
    }
    bar.set_message(image.to_owned());
    // Per layer: bytes so far and in all.
    let mut layers: HashMap<String, (u64, u64)> = HashMap::new();
    let outcome = loop {
        match tokio::time::timeout(PULL_SILENCE, stream.next()).await {
            Err(_) => break Err(failed(format!("no answer for {PULL_SILENCE:?}"))),
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(failed(e.to_string())),
            Ok(Some(Ok(info))) => {
                let (Some(id), Some(detail)) = (info.id, info.progress_detail) else {
                    continue;
                };
                let layer = layers.entry(id).or_default();
                layer.0 = detail.current.unwrap_or(0).max(0) as u64;
                layer.1 = layer.1.max(detail.total.unwrap_or(0).max(0) as u64);
                bar.set_length(layers.values().map(|l| l.1).sum());
                bar.set_position(layers.values().map(|l| l.0).sum());
            }
        }
    };
    bar.finish_and_clear();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_major_comes_from_the_label_or_the_official_env() {
        let labels = HashMap::from([(MAJOR_LABEL.to_owned(), "15".to_owned())]);
        assert_eq!(stated_major(Some(&labels), &[]), Some(15));
        let env = vec!["PATH=/usr/bin".to_owned(), "PG_MAJOR=17".to_owned()];
        assert_eq!(stated_major(None, &env), Some(17));
        assert_eq!(stated_major(None, &["PATH=/bin".to_owned()]), None);
    }
}
