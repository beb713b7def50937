//! What `-R` writes into a target, as `pg_basebackup -R` does for PostgreSQL 12+: an empty
//! `standby.signal` and `primary_conninfo` (plus `primary_slot_name`) appended to
//! `postgresql.auto.conf`, where the last occurrence of a setting wins.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::conn::config::conf_string_literal;

/// Appends the standby settings to `data_dir`. The auto.conf may hold a password, so a file
/// created here is 0600 (the server's own files are 0600 too).
pub fn write_standby_config(
    data_dir: &Path,
    primary_conninfo: &str,
    slot: Option<&str>,
) -> io::Result<()> {
    let mut settings = String::from("# Standby settings written by pgrepl basebackup -R\n");
    settings.push_str(&format!(
        "primary_conninfo = {}\n",
        conf_string_literal(primary_conninfo)
    ));
    if let Some(slot) = slot {
        settings.push_str(&format!(
            "primary_slot_name = {}\n",
            conf_string_literal(slot)
        ));
    }
    let mut auto_conf = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(data_dir.join("postgresql.auto.conf"))?;
    // The mode above only applies to a new file; the one from the archive keeps the server's
    // (0640 in a cluster with group access). Tighten it before the password goes in.
    let mode = auto_conf.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        auto_conf.set_permissions(fs::Permissions::from_mode(mode & 0o700))?;
    }
    auto_conf.write_all(settings.as_bytes())?;
    fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(data_dir.join("standby.signal"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_after_existing_settings() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("postgresql.auto.conf"),
            "work_mem = '8MB'\n",
        )
        .unwrap();
        write_standby_config(tmp.path(), "host=db user=rep password='a\\'b'", Some("s1")).unwrap();
        let text = fs::read_to_string(tmp.path().join("postgresql.auto.conf")).unwrap();
        assert!(text.starts_with("work_mem = '8MB'\n"));
        assert!(text.contains("primary_slot_name = 's1'\n"), "{text}");
        assert!(
            text.contains("primary_conninfo = 'host=db user=rep password=''a\\\\''b'''\n"),
            "{text}"
        );
        assert!(tmp.path().join("standby.signal").exists());
    }

    #[test]
    fn an_existing_group_readable_auto_conf_becomes_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let auto_conf = tmp.path().join("postgresql.auto.conf");
        fs::write(&auto_conf, "# from the archive\n").unwrap();
        fs::set_permissions(&auto_conf, fs::Permissions::from_mode(0o640)).unwrap();
        write_standby_config(tmp.path(), "host=db password=secret", None).unwrap();
        let mode = fs::metadata(&auto_conf).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
