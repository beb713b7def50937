//! The `pgrepl` command line: turns raw arguments into library options, runs the command, and
//! renders results. Hints for errors live in `hints`, argument definitions in `args` (the
//! commands' own in their files), the single-server connection flags in `connection`.

mod agent;
pub mod args;
mod bench;
mod cluster;
mod config;
mod connection;
mod ha;
pub mod hints;
mod history;
pub mod lag;
mod out;
mod progress;
mod receivewal;
mod restart;
mod shell;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use tokio_util::sync::CancellationToken;

use self::args::{
    BasebackupArgs, CheckpointArg, Command, CompressArg, SyncMethodArg, WalMethodArg,
};
use self::connection::connect_options;
use self::out::outln;
use pgrepl::backup::checksum::ChecksumAlgorithm;
use pgrepl::backup::{self, BackupTarget, BaseBackupOptions, SyncMethod, WalMethod};
use pgrepl::cluster::Rebuild;
use pgrepl::conn::ConnectOptions;
use pgrepl::proto::command::ServerCompression;
use pgrepl::units::{human_bytes, parse_rate_kbps};

/// A command stopped by Ctrl-C or SIGTERM before it finished; says what it leaves behind.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: {0}")]
pub struct Interrupted(pub String);

/// Runs one command. Errors carry their own context; `main` prints them once.
///
/// Commands that watch `cancel` themselves stop their own way (a backup removes its staging,
/// receivewal flushes, bench restores the settings). The others get a short grace for the steps
/// that watch it and are then dropped at their next await: a PostgreSQL tool already running
/// finishes first, and the error says what state the cluster may be in and which command
/// continues from there.
pub async fn run(command: Command, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let Some(note) = interrupted_note(&command) else {
        return run_to_end(command, cancel).await;
    };
    let work = run_to_end(command, cancel.clone());
    tokio::pin!(work);
    tokio::select! {
        biased;
        () = cancel.cancelled() => {}
        result = &mut work => match result {
            // A child process got the terminal's Ctrl-C too and failed because of it.
            Err(_) if cancel.is_cancelled() => {}
            result => return result,
        },
    }
    // Steps that watch the token (up's base backup removing its staging) get a moment to finish.
    let _ = tokio::time::timeout(INTERRUPT_GRACE, &mut work).await;
    Err(Interrupted(note).into())
}

/// How long a signalled command may go on cleaning up before it is dropped.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What a command that does not watch the token leaves when it is stopped midway; `None` for
/// the commands that stop cleanly by themselves.
fn interrupted_note(command: &Command) -> Option<String> {
    let node_change = |verb: &str, node: &str| {
        format!("`{node}` may be half {verb}: `pgrepl status` shows it; run the command again")
    };
    Some(match command {
        Command::Basebackup(_)
        | Command::Lag(_)
        | Command::Status(_)
        | Command::Receivewal(_)
        | Command::Bench(_)
        | Command::Agent(_)
        | Command::Pause(_)
        | Command::Resume(_)
        | Command::HaproxyConfig(_)
        | Command::History(_)
        | Command::Tls(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::Init(_) => return None,
        Command::Up(_) => "the cluster may be half built: `pgrepl up` again completes it, `pgrepl down --purge` removes it (with the etcd and agents `up` started for [ha])".into(),
        Command::Down(_) => "some nodes (or, with [ha], agents or etcd members) may still run: run `pgrepl down` again".into(),
        Command::Start(args) => node_change("started", &args.node),
        Command::Stop(args) => node_change("stopped", &args.node),
        Command::Restart(args) => match &args.node {
            Some(node) => node_change("restarted", node),
            // The rolling restart watches the token and stops between steps by itself.
            None => return None,
        },
        Command::Config(_) => "some nodes may run the new settings and others not: `pgrepl config show` shows which; the same `pgrepl config set` again finishes it".into(),
        Command::Failover(_) | Command::Switchover(_) => "the role change may be half done (the old primary fenced, no new primary yet): `pgrepl status` shows each node; `pgrepl failover` promotes the most advanced standby".into(),
        Command::Reinit(args) => format!("`{}` may be stopped, or its data half copied (the old data kept aside as `data.before-rejoin`): run `pgrepl reinit {} --force` again", args.node, args.node),
        Command::Resync(args) => format!("`{}` may be stopped, or half combined (it will not start so): run `pgrepl resync {} --force` again, which finishes it", args.node, args.node),
        Command::Rejoin(args) => format!("`{}` may be stopped or half re-cloned: run `pgrepl rejoin {}` again", args.node, args.node),
        Command::Drill(_) => "the drill may have left a node stopped or the roles changed: `pgrepl status` shows it; `pgrepl up` restarts stopped nodes, `pgrepl rejoin NODE` brings back a former primary".into(),
    })
}

async fn run_to_end(command: Command, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    match command {
        Command::Basebackup(args) => basebackup(args, cancel).await,
        Command::Lag(args) => lag::run(args, lag::View::Lag, cancel).await,
        Command::Status(args) => lag::run(args, lag::View::Status, cancel).await,
        Command::Init(args) => cluster::init(args),
        Command::Up(args) => cluster::up(args, cancel).await,
        Command::Down(args) => cluster::down(args).await,
        Command::Start(args) => cluster::node(args, cluster::NodeAction::Start).await,
        Command::Stop(args) => cluster::node(args, cluster::NodeAction::Stop).await,
        Command::Restart(args) => restart::run(args, cancel).await,
        Command::Config(args) => config::run(args).await,
        Command::Failover(args) => cluster::failover(args).await,
        Command::Switchover(args) => cluster::switchover(args).await,
        Command::Rejoin(args) => cluster::rejoin(args).await,
        Command::Reinit(args) => cluster::rebuild(args, Rebuild::Reclone).await,
        Command::Resync(args) => cluster::rebuild(args, Rebuild::Resync).await,
        Command::Drill(args) => cluster::drill(args).await,
        Command::Receivewal(args) => receivewal::run(args, cancel).await,
        Command::Bench(args) => bench::run(args, cancel).await,
        Command::Agent(args) => agent::run(args, cancel).await,
        Command::Pause(args) => ha::pause(args).await,
        Command::Resume(args) => ha::resume(args).await,
        Command::HaproxyConfig(args) => ha::haproxy_config(args),
        Command::History(args) => history::run(args).await,
        Command::Tls(args) => tls::run(args).await,
        Command::Completions(args) => shell::completions(args),
        Command::Man(args) => shell::man(args),
    }
}

/// The role name the user connects as, for hints (before or after options resolve).
pub fn user_hint(command: &Command) -> String {
    let user = match command {
        Command::Basebackup(args) => connect_options(&args.connection, None).map(|o| o.user).ok(),
        Command::Receivewal(args) => connect_options(&args.connection, None).map(|o| o.user).ok(),
        Command::Lag(args) | Command::Status(args) => lag::user_hint(args),
        _ => None,
    };
    user.unwrap_or_else(|| "replicator".into())
}

async fn basebackup(args: BasebackupArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
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

    /// `--serve ADDR` as people type it, `--serve=ADDR`, and `--serve` alone.
    #[test]
    fn serve_takes_its_address_with_a_space_an_equals_sign_or_none() {
        use clap::Parser;
        let serve = |argv: &[&str]| match args::Cli::try_parse_from(argv).unwrap().command {
            Command::Lag(lag) => (lag.serve.map(|a| a.to_string()), lag.nodes.len()),
            other => panic!("{other:?}"),
        };
        let addr = Some("0.0.0.0:9187".to_owned());
        assert_eq!(
            serve(&["pgrepl", "lag", "--serve", "0.0.0.0:9187"]),
            (addr.clone(), 0)
        );
        assert_eq!(serve(&["pgrepl", "lag", "--serve=0.0.0.0:9187"]), (addr, 0));
        assert_eq!(
            serve(&["pgrepl", "lag", "host=a", "--serve"]),
            (Some("127.0.0.1:9187".to_owned()), 1)
        );
    }
}
