//! `pgrepl basebackup`: its flags turned into `backup::BaseBackupOptions`, the backup run,
//! and its one-line (or `--json`) summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use tokio_util::sync::CancellationToken;

use super::args::{BasebackupArgs, CheckpointArg, CompressArg, SyncMethodArg, WalMethodArg};
use super::connection::connect_options;
use super::out::outln;
use super::progress;
use pgrepl::backup::checksum::ChecksumAlgorithm;
use pgrepl::backup::{self, BackupTarget, BaseBackupOptions, SyncMethod, WalMethod};
use pgrepl::conn::ConnectOptions;
use pgrepl::proto::command::ServerCompression;
use pgrepl::units::{human_bytes, parse_rate_kbps};

pub(super) async fn run(
    args: BasebackupArgs,
    cancel: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let connect = connect_options(&args.connection, Some("pgrepl"))?;
    let options = backup_options(&args, &connect)?;
    let progress: Arc<dyn backup::Progress> = if args.progress {
        Arc::new(progress::Bar::new())
    } else {
        Arc::new(backup::NoProgress)
    };
    tracing::info!(server = %connect.redacted(), targets = options.targets.len(), "starting base backup");
    let summary = backup::base_backup(&connect, &options, progress, cancel)
        .await
        .with_context(|| format!("base backup from `{}`", connect.redacted()))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let targets: Vec<String> = summary
            .targets
            .iter()
            .map(|t| t.display().to_string())
            .collect();
        outln!(
            "pgrepl: backup of system {} (PostgreSQL {}) from {} to {} on timeline {}: {} files, {}, into {}{}; {:.1} s",
            summary.system_identifier,
            summary.server_major,
            summary.start_lsn,
            summary.end_lsn,
            summary.timeline,
            summary.files,
            human_bytes(summary.bytes),
            targets.join(", "),
            if summary.manifest_verified { "; every file matches the manifest" } else { "" },
            summary.elapsed_ms as f64 / 1000.0,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn backup_options(
    args: &BasebackupArgs,
    connect: &ConnectOptions,
) -> anyhow::Result<BaseBackupOptions> {
    let names = &args.application_names;
    if !names.is_empty() && names.len() != args.targets.len() {
        bail!(
            "{} --application-name values for {} targets: give one per -D, in the same order",
            names.len(),
            args.targets.len()
        );
    }
    if !names.is_empty() && !args.write_recovery_conf {
        bail!("--application-name only matters with -R (--write-recovery-conf): add -R");
    }
    let targets = args
        .targets
        .iter()
        .enumerate()
        .map(|(i, dir)| BackupTarget {
            dir: dir.clone(),
            application_name: names.get(i).cloned(),
        })
        .collect();
    let mut options = BaseBackupOptions::new(targets);
    options.wal_method = match args.wal_method {
        WalMethodArg::Stream => WalMethod::Stream,
        WalMethodArg::Fetch => WalMethod::Fetch,
        WalMethodArg::None => WalMethod::None,
    };
    options.write_recovery_conf = args.write_recovery_conf;
    options.fast_checkpoint = matches!(args.checkpoint, CheckpointArg::Fast);
    options.estimate_size = args.progress;
    options.label = args.label.clone();
    options.max_rate_kbps = args.max_rate.as_deref().map(parse_rate_kbps).transpose()?;
    options.slot = args.slot.clone();
    options.create_slot = args.create_slot;
    options.tablespace_mappings = args
        .tablespace_mappings
        .iter()
        .map(|m| parse_mapping(m))
        .collect::<Result<_, _>>()?;
    options.sync = !args.no_sync;
    if let Some(method) = args.sync_method {
        options.sync_method = match method {
            SyncMethodArg::Fsync => SyncMethod::Fsync,
            SyncMethodArg::Syncfs => SyncMethod::Syncfs,
        };
    }
    options.manifest_checksums = if args.no_manifest {
        None
    } else {
        Some(
            args.manifest_checksums
                .parse::<ChecksumAlgorithm>()
                .map_err(|e| anyhow!("{e}: use CRC32C, SHA224, SHA256, SHA384, SHA512 or NONE"))?,
        )
    };
    options.compression = args.compress.map(|c| match c {
        CompressArg::ServerGzip => ServerCompression::Gzip,
        CompressArg::ServerLz4 => ServerCompression::Lz4,
        CompressArg::ServerZstd => ServerCompression::Zstd,
    });
    options.owner = args.owner.as_deref().map(parse_owner).transpose()?;
    options.primary_host_override = args
        .primary_host
        .as_deref()
        .map(|h| parse_host_port(h, connect.port))
        .transpose()?;
    if let Some(passfile) = &args.passfile {
        if !passfile.is_absolute() {
            bail!(
                "--passfile `{}` must be an absolute path: the standby reads it from its own working directory",
                passfile.display()
            );
        }
        options.primary_passfile = Some(passfile.clone());
    }
    Ok(options)
}

fn parse_mapping(text: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    // `\=` escapes an equals sign inside a path, as in pg_basebackup.
    let mut old = String::new();
    let mut chars = text.chars();
    let mut new = None;
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.clone().next() == Some('=') => old.push(chars.next().expect("peeked")),
            '=' => {
                new = Some(chars.as_str().replace("\\=", "="));
                break;
            }
            c => old.push(c),
        }
    }
    let new =
        new.ok_or_else(|| anyhow!("invalid tablespace mapping `{text}`: use OLDDIR=NEWDIR"))?;
    let (old, new) = (PathBuf::from(old), PathBuf::from(new));
    if !old.is_absolute() || !new.is_absolute() {
        bail!("invalid tablespace mapping `{text}`: both directories must be absolute paths");
    }
    Ok((old, new))
}

fn parse_owner(text: &str) -> anyhow::Result<(u32, u32)> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or_else(|| anyhow!("invalid --owner `{text}`: use UID:GID, e.g. 999:999"))?;
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| anyhow!("invalid --owner `{text}`: use numeric UID:GID, e.g. 999:999"))
    };
    Ok((number(uid)?, number(gid)?))
}

fn parse_host_port(text: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port = port
                .parse()
                .map_err(|_| anyhow!("invalid port in `{text}`"))?;
            Ok((host.to_owned(), port))
        }
        _ => Ok((text.to_owned(), default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_and_owners() {
        assert_eq!(
            parse_mapping("/a=/b").unwrap(),
            (PathBuf::from("/a"), PathBuf::from("/b"))
        );
        assert_eq!(
            parse_mapping("/a\\=x=/b").unwrap(),
            (PathBuf::from("/a=x"), PathBuf::from("/b"))
        );
        assert!(parse_mapping("/a").is_err());
        assert!(parse_mapping("a=/b").is_err());
        assert_eq!(parse_owner("999:998").unwrap(), (999, 998));
        assert!(parse_owner("postgres").is_err());
        assert_eq!(
            parse_host_port("pg_master:5432", 1).unwrap(),
            ("pg_master".into(), 5432)
        );
        assert_eq!(
            parse_host_port("pg_master", 7).unwrap(),
            ("pg_master".into(), 7)
        );
    }
}
