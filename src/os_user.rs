//! The operating system's users, as pgrepl needs them: the effective user's name and home
//! directory (libpq's default user name, `~/.pgpass`, `~/.postgresql/root.crt`), and the
//! `postgres` user that servers run as when pgrepl runs as root. Read with nix's wrappers of
//! `getpwuid_r`/`getpwnam_r`: `getpwnam` returns static storage another thread may overwrite.

use std::path::PathBuf;

use nix::unistd::{Uid, User};

/// One passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl From<User> for OsUser {
    fn from(user: User) -> Self {
        OsUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        }
    }
}

/// The entry of the effective uid, which is what libpq's `pg_fe_getauthname` uses.
pub fn effective() -> Option<OsUser> {
    User::from_uid(Uid::effective())
        .ok()
        .flatten()
        .map(OsUser::from)
}

/// The entry named `name`.
pub fn named(name: &str) -> Option<OsUser> {
    User::from_name(name).ok().flatten().map(OsUser::from)
}

/// The home directory as libpq finds it: `$HOME`, else the effective user's entry.
pub fn home_dir() -> Option<PathBuf> {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
        _ => effective().map(|user| user.home),
    }
}

/// Whether pgrepl runs as root (servers then run as `postgres`).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_user_and_root_are_found_by_id_and_name() {
        let me = effective().expect("the effective uid has a passwd entry");
        assert_eq!(me.uid, Uid::effective().as_raw());
        assert_eq!(named(&me.name), Some(me));
        assert_eq!(named("root").map(|root| root.uid), Some(0));
        assert_eq!(named("no-such-user-pgrepl"), None);
    }
}
