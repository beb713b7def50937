//! Where fetched builds live: `<cache>/pgrepl/<kind>/<version>/`, `<cache>` being
//! `$XDG_CACHE_HOME`, else `~/.cache`; for root without XDG_CACHE_HOME, `/var/cache`.
//!
//! Why /var/cache for root: the servers run as the OS user `postgres` when pgrepl runs as root,
//! and they execute these binaries; `/root` is mode 0700, so `/root/.cache` would hold
//! binaries nobody but root can run. /var/cache is the system's cache, open to every user.
//! Whatever the directory, root checks that user postgres can enter every directory above it,
//! and everything installed is made readable (and, where executable, executable) by all.
//!
//! A build appears whole or not at all: it is unpacked in a temporary sibling
//! (`.partial-*`, removed when dropped, so also on an error or Ctrl-C) and renamed into place
//! once verified and complete.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::FetchError;

pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache of this process's user, checked for user postgres (`server_user`) when set.
    pub fn locate(server_user: Option<(u32, u32)>) -> Result<Cache, FetchError> {
        let root = root_for(
            std::env::var_os("XDG_CACHE_HOME"),
            std::env::var_os("HOME"),
            crate::os_user::is_root(),
        )
        .ok_or(FetchError::NoCacheDir)?;
        if let Some(user) = server_user {
            if let Some(closed) = closed_to(&root, user) {
                return Err(FetchError::NotReachable {
                    cache: root,
                    closed,
                });
            }
        }
        Ok(Cache { root })
    }

    /// Where `version` of `kind` (postgresql, etcd) lives once fetched.
    pub fn entry(&self, kind: &str, version: &str) -> PathBuf {
        self.root.join(kind).join(version)
    }

    /// Runs `fill` in a fresh staging directory next to the entry; `fill` returns the tree it
    /// built there, which becomes the entry. Another process that installed the same entry
    /// meanwhile wins: its copy is as good as ours.
    pub fn install(
        &self,
        kind: &str,
        version: &str,
        fill: impl FnOnce(&Path) -> Result<PathBuf, FetchError>,
    ) -> Result<PathBuf, FetchError> {
        let target = self.entry(kind, version);
        let parent = self.root.join(kind);
        std::fs::create_dir_all(&parent)
            .map_err(FetchError::io(format!("create `{}`", parent.display())))?;
        for dir in [&self.root, &parent] {
            open_to_all(dir)?;
        }
        let staging = tempfile::Builder::new()
            .prefix(".partial-")
            .tempdir_in(&parent)
            .map_err(FetchError::io(format!(
                "create a directory in `{}`",
                parent.display()
            )))?;
        let tree = fill(staging.path())?;
        open_tree_to_all(&tree)?;
        match std::fs::rename(&tree, &target) {
            Ok(()) => Ok(target),
            Err(_) if target.is_dir() => Ok(target),
            Err(e) => Err(FetchError::io(format!("move into `{}`", target.display()))(
                e,
            )),
        }
    }
}

/// `$XDG_CACHE_HOME/pgrepl`, else `$HOME/.cache/pgrepl`, for root `/var/cache/pgrepl`
/// (see the module doc). Empty or relative values are ignored, as the XDG spec says.
pub fn root_for(xdg: Option<OsString>, home: Option<OsString>, root: bool) -> Option<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = absolute(xdg) {
        return Some(xdg.join("pgrepl"));
    }
    if root {
        return Some(PathBuf::from("/var/cache/pgrepl"));
    }
    absolute(home).map(|home| home.join(".cache").join("pgrepl"))
}

/// The first existing directory on the way to `path` that `user` (uid, gid) may not enter.
fn closed_to(path: &Path, (uid, gid): (u32, u32)) -> Option<PathBuf> {
    path.ancestors()
        .filter_map(|dir| Some((dir, std::fs::metadata(dir).ok()?)))
        .find(|(_, meta)| {
            let mode = meta.mode();
            let search = if meta.uid() == uid {
                mode & 0o100
            } else if meta.gid() == gid {
                mode & 0o010
            } else {
                mode & 0o001
            };
            search == 0
        })
        .map(|(dir, _)| dir.to_owned())
}

fn open_to_all(dir: &Path) -> Result<(), FetchError> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(FetchError::io(format!("chmod `{}`", dir.display())))
}

/// chmod -R u+rwX,go+rX,go-w: the servers' user reads and runs what root unpacked.
fn open_tree_to_all(path: &Path) -> Result<(), FetchError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(FetchError::io(format!("stat `{}`", path.display())))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.mode() & 0o7777;
    let wanted = if meta.is_dir() || mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))
        .map_err(FetchError::io(format!("chmod `{}`", path.display())))?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(FetchError::io(format!("read `{}`", path.display())))?;
        for entry in entries {
            let entry = entry.map_err(FetchError::io(format!("read `{}`", path.display())))?;
            open_tree_to_all(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_root_follows_xdg_then_home_and_root_uses_var_cache() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            root_for(os("/c"), os("/home/u"), false),
            Some("/c/pgrepl".into())
        );
        assert_eq!(
            root_for(os("/c"), os("/root"), true),
            Some("/c/pgrepl".into())
        );
        assert_eq!(
            root_for(None, os("/home/u"), false),
            Some("/home/u/.cache/pgrepl".into())
        );
        assert_eq!(
            root_for(os(""), os("/root"), true),
            Some("/var/cache/pgrepl".into())
        );
        assert_eq!(
            root_for(os("rel"), os("/home/u"), false),
            Some("/home/u/.cache/pgrepl".into())
        );
        assert_eq!(root_for(None, None, false), None);
    }

    #[test]
    fn a_failed_fill_leaves_nothing_and_a_good_one_is_whole_and_open() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            root: dir.path().join("pgrepl"),
        };
        let err = cache
            .install("postgresql", "1.0", |staging| {
                std::fs::write(staging.join("half"), b"x").unwrap();
                Err(FetchError::Cancelled("a test".into()))
            })
            .unwrap_err();
        assert!(matches!(err, FetchError::Cancelled(_)));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("pgrepl/postgresql"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");

        let entry = cache
            .install("postgresql", "1.0", |staging| {
                let tree = staging.join("tree");
                std::fs::create_dir_all(tree.join("bin")).unwrap();
                std::fs::write(tree.join("bin/tool"), b"x").unwrap();
                std::fs::set_permissions(tree.join("bin/tool"), PermissionsExt::from_mode(0o700))
                    .unwrap();
                Ok(tree)
            })
            .unwrap();
        assert_eq!(entry, cache.entry("postgresql", "1.0"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&entry.join("bin/tool")), 0o755);
        assert_eq!(mode(&entry.join("bin")), 0o755);
        assert_eq!(
            std::fs::read_dir(dir.path().join("pgrepl/postgresql"))
                .unwrap()
                .count(),
            1,
            "only the entry remains"
        );
    }

    #[test]
    fn a_directory_closed_to_the_user_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        let a = dir.path().join("a");
        std::fs::set_permissions(&a, PermissionsExt::from_mode(0o700)).unwrap();
        // A user that owns nothing here and is in no group of it.
        let stranger = (u32::MAX - 1, u32::MAX - 1);
        assert_eq!(closed_to(&inner.join("pgrepl"), stranger), Some(a.clone()));
        std::fs::set_permissions(&a, PermissionsExt::from_mode(0o711)).unwrap();
        std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(closed_to(&inner.join("pgrepl"), stranger), None);
    }
}
