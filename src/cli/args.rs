//! Raw command-line arguments (clap derive). The `///` docs are the help text. Nothing here is
//! validated beyond its type; `cli::mod` converts these into library options.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use super::agent::AgentArgs;
use super::bench::BenchArgs;
use super::cluster::{
    DownArgs, DrillArgs, FailoverArgs, InitArgs, NodeArgs, ReinitArgs, RejoinArgs, SwitchoverArgs,
    UpArgs,
};
use super::config::ConfigArgs;
use super::connection::ConnectionArgs;
use super::ha::{HaproxyConfigArgs, PauseArgs};
use super::history::HistoryArgs;
use super::lag::LagArgs;
use super::receivewal::ReceivewalArgs;
use super::restart::RestartArgs;
use super::shell::{CompletionsArgs, ManArgs};
use super::tls::TlsArgs;

#[derive(Debug, Parser)]
#[command(
    name = "pgrepl",
    version,
    about = "PostgreSQL physical streaming replication, spoken natively"
)]
pub struct Cli {
    /// More detail on stderr (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a base backup over the replication protocol into one or more standby data directories.
    #[command(disable_help_flag = true)]
    Basebackup(BasebackupArgs),
    /// Show each standby's lag in bytes and time at every stage, from both ends; exit 1 over a
    /// limit, 2 when a node is unreachable or misconfigured.
    Lag(LagArgs),
    /// Show the cluster: every node's role, system, timeline and position, and synchronous
    /// replication in words; same exit codes as `lag`.
    Status(LagArgs),
    /// Write the default cluster file: the recipe's primary, sync and async standbys.
    Init(InitArgs),
    /// Build (or complete) the replicated cluster and check it; idempotent.
    Up(UpArgs),
    /// Stop every node (and delete the data with --purge).
    Down(DownArgs),
    /// Start one node of the cluster.
    Start(NodeArgs),
    /// Stop one node of the cluster (fast shutdown).
    Stop(NodeArgs),
    /// Restart one node (by its agent when agents run), or every node with a setting waiting
    /// for it (`--pending`, `--all`): standbys one at a time, then the primary by a switchover.
    Restart(RestartArgs),
    /// Fence the primary, promote a standby, re-point the others, swap the sync names.
    Failover(FailoverArgs),
    /// Planned, lossless role change: the primary becomes a standby of the target.
    Switchover(SwitchoverArgs),
    /// Bring a former primary back as a standby (follow the new timeline, pg_rewind with
    /// --rewind, or re-clone).
    Rejoin(RejoinArgs),
    /// Rebuild a standby from scratch: a fresh base backup of the primary replaces its data
    /// (damaged, or too far behind); refused for the primary, and for a standby that streams
    /// unless --force. With agents, between `pause` and `resume`.
    Reinit(ReinitArgs),
    /// Rebuild a standby whose WAL the primary no longer has from the blocks changed since its
    /// last restartpoint (PostgreSQL 17+ incremental backup, combined in place); where that
    /// does not apply, says why and re-clones. Same rules as reinit.
    Resync(ReinitArgs),
    /// Run the recipe's checks (streaming, reads, read-only standbys, sync blocking, failover,
    /// rejoin) with PASS/FAIL and timings; exit 0 only if all pass.
    Drill(DrillArgs),
    /// Archive WAL into a directory as pg_receivewal does (resumes, follows timeline switches).
    Receivewal(ReceivewalArgs),
    /// Measure what synchronous replication costs: a write load per mode (async, remote_write,
    /// on, remote_apply, any1) with TPS, commit latency, WAL rate and each standby's lag.
    Bench(BenchArgs),
    /// Run the automatic-failover agent for one node: etcd (v3) holds the leader lease; the
    /// agent restarts, promotes, fences and rejoins its server (decisions logged with -v).
    Agent(AgentArgs),
    /// Stop the agents' automatic actions for maintenance (no election, promotion, restart,
    /// rejoin or fencing); the leader keeps its key. Waits until every agent shows it.
    Pause(PauseArgs),
    /// Let the agents act again after `pause`.
    Resume(PauseArgs),
    /// Every role change, oldest first: when, which kind (failover, switchover, manual
    /// failover), from and to which node, the new timeline and where it began, and why.
    History(HistoryArgs),
    /// Cluster-wide PostgreSQL settings: `show`, `set NAME=VALUE...`, `reset NAME...`, `edit`;
    /// checked against the server's pg_settings before any node changes.
    Config(ConfigArgs),
    /// Print an HAProxy configuration (Patroni's shape): a write port that reaches the primary
    /// and a read port for the standbys, each node checked on its agent's HTTP API.
    HaproxyConfig(HaproxyConfigArgs),
    /// The cluster's certificates: when each expires (`tls`), or new ones for the nodes with a
    /// reload and no restart (`tls rotate`).
    Tls(TlsArgs),
    /// Print a shell completion script: bash, zsh or fish.
    Completions(CompletionsArgs),
    /// Print the manual page, pgrepl(1), in roff (`pgrepl man | man -l -`), or write every
    /// command's page with --dir.
    Man(ManArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WalMethodArg {
    Stream,
    Fetch,
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CheckpointArg {
    Fast,
    Spread,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressArg {
    #[value(name = "server-gzip")]
    ServerGzip,
    #[value(name = "server-lz4")]
    ServerLz4,
    #[value(name = "server-zstd")]
    ServerZstd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SyncMethodArg {
    Fsync,
    Syncfs,
}

#[derive(Debug, Args)]
pub struct BasebackupArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Target data directory; repeat to fill several standbys in one pass over the stream.
    #[arg(short = 'D', long = "pgdata", value_name = "DIR", required = true)]
    pub targets: Vec<PathBuf>,
    /// How the targets get the WAL they need.
    #[arg(short = 'X', long = "wal-method", value_enum, default_value = "stream")]
    pub wal_method: WalMethodArg,
    /// Write standby.signal and primary_conninfo (in postgresql.auto.conf) into each target.
    #[arg(short = 'R', long = "write-recovery-conf")]
    pub write_recovery_conf: bool,
    /// application_name for each target's primary_conninfo, once per -D, in the same order.
    #[arg(long = "application-name", value_name = "NAME")]
    pub application_names: Vec<String>,
    /// Checkpoint at the start: fast (immediate) or spread (the server's pace).
    #[arg(short = 'c', long = "checkpoint", value_enum, default_value = "spread")]
    pub checkpoint: CheckpointArg,
    /// Show a progress bar (asks the server for a size estimate first).
    #[arg(short = 'P', long = "progress")]
    pub progress: bool,
    /// Backup label.
    #[arg(short = 'l', long = "label", default_value = "pgrepl base backup")]
    pub label: String,
    /// Maximum transfer rate in kB/s (suffix k or M: 32k..1024M).
    #[arg(short = 'r', long = "max-rate", value_name = "RATE")]
    pub max_rate: Option<String>,
    /// Replication slot to stream with (and to name in primary_slot_name with -R).
    #[arg(short = 'S', long = "slot")]
    pub slot: Option<String>,
    /// Create the slot given with -S first.
    #[arg(short = 'C', long = "create-slot")]
    pub create_slot: bool,
    /// Relocate the tablespace in OLDDIR to NEWDIR; with several -D, once per target in -D order.
    #[arg(short = 'T', long = "tablespace-mapping", value_name = "OLDDIR=NEWDIR")]
    pub tablespace_mappings: Vec<String>,
    /// Do not wait for the files to be safely on disk.
    #[arg(short = 'N', long = "no-sync")]
    pub no_sync: bool,
    /// How to make the backup durable: fsync each file, or syncfs each target's filesystem
    /// (faster; also flushes other data on it). Default: syncfs on Linux 5.8+ (where it reports
    /// write errors), else fsync.
    #[arg(long = "sync-method", value_enum, conflicts_with = "no_sync")]
    pub sync_method: Option<SyncMethodArg>,
    /// Do not ask for (or verify against) a backup manifest.
    #[arg(long = "no-manifest")]
    pub no_manifest: bool,
    /// Checksum algorithm for the manifest: CRC32C, SHA224, SHA256, SHA384, SHA512 or NONE.
    #[arg(long = "manifest-checksums", default_value = "CRC32C")]
    pub manifest_checksums: String,
    /// Compress on the server (PostgreSQL 15+); pgrepl decompresses as it writes.
    #[arg(long = "compress", value_enum)]
    pub compress: Option<CompressArg>,
    /// Give every written file to UID:GID (e.g. 999:999 for a container's postgres user).
    #[arg(long = "owner", value_name = "UID:GID")]
    pub owner: Option<String>,
    /// Host and port the standbys should use for the primary in primary_conninfo (default: the
    /// ones pgrepl connected to).
    #[arg(long = "primary-host", value_name = "HOST[:PORT]")]
    pub primary_host: Option<String>,
    /// With -R, put `passfile=FILE` in primary_conninfo instead of the password: the standby
    /// reads the password from FILE (an absolute path on the standby's host, mode 0600).
    #[arg(
        long = "passfile",
        value_name = "FILE",
        requires = "write_recovery_conf"
    )]
    pub passfile: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long = "json")]
    pub json: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}
