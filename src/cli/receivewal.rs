//! `pgrepl receivewal`: arguments, and the one-line summary of a run. The work is
//! `pgrepl::replication::receivewal`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::connection::{connect_options, ConnectionArgs};
use super::out::outln;
use pgrepl::replication::receivewal::{self, ReceiveEvent, ReceiveOptions, StartSource, StoppedBy};
use pgrepl::replication::wal_compress::WalCompression;
use pgrepl::units::human_bytes;
use pgrepl::Lsn;

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct ReceivewalArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Archive directory (must exist): segments as PostgreSQL names them, `.partial` for the
    /// open one. A run resumes from what the directory holds.
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub dir: PathBuf,
    /// Replication slot to stream from; the server then keeps the WAL not yet flushed here.
    #[arg(short = 'S', long = "slot")]
    pub slot: Option<String>,
    /// Create the slot given with -S (permanent, WAL reserved) before streaming.
    #[arg(short = 'C', long = "create-slot", requires = "slot")]
    pub create_slot: bool,
    /// Stop once WAL up to this LSN has been received (e.g. 0/3000000).
    #[arg(short = 'E', long = "endpos", value_name = "LSN")]
    pub endpos: Option<Lsn>,
    /// Do not wait for the files to be safely on disk.
    #[arg(long = "no-sync")]
    pub no_sync: bool,
    /// Stop when the server goes away, instead of connecting again (after 1 s, doubling up to
    /// 10 s) and resuming.
    #[arg(short = 'n', long = "no-loop")]
    pub no_loop: bool,
    /// Compress each segment once complete (`.gz` / `.lz4`, as pg_receivewal names them).
    #[arg(long = "compress", value_enum, value_name = "METHOD")]
    pub compress: Option<WalCompressArg>,
    /// Time between status updates to the server (`10s`, `500ms`, or a bare number of seconds).
    #[arg(
        short = 's',
        long = "status-interval",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = pgrepl::units::parse_duration
    )]
    pub status_interval: Duration,
    /// Print the summary as JSON.
    #[arg(long = "json")]
    pub json: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WalCompressArg {
    Gzip,
    Lz4,
}

pub async fn run(args: ReceivewalArgs, cancel: CancellationToken) -> anyhow::Result<ExitCode> {
    let connect = connect_options(&args.connection, Some("pgrepl receivewal"))?;
    // Never zero (the parser refuses it): the server would time the stream out without any
    // status update.
    let mut options = ReceiveOptions::new(args.dir.clone());
    options.slot = args.slot.clone();
    options.create_slot = args.create_slot;
    options.end = args.endpos;
    options.sync = !args.no_sync;
    options.status_interval = args.status_interval;
    options.reconnect = !args.no_loop;
    options.compression = args.compress.map(|c| match c {
        WalCompressArg::Gzip => WalCompression::Gzip,
        WalCompressArg::Lz4 => WalCompression::Lz4,
    });
    let summary = receivewal::receive_wal(&connect, &options, &cancel, &report_event)
        .await
        .with_context(|| {
            format!(
                "receive WAL from `{}` into `{}`",
                connect.redacted(),
                args.dir.display()
            )
        })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let from = start_words(summary.start_source);
        let why = match summary.stopped_by {
            StoppedBy::EndPosition => "reached the end position",
            StoppedBy::Cancelled => "interrupted, everything received is flushed",
            StoppedBy::ServerShutdown => "the server ended the stream",
        };
        let reconnects = match summary.reconnects {
            0 => String::new(),
            n => format!(", reconnected {n} time(s)"),
        };
        eprintln!(
            "pgrepl: received {} to {} ({}) on timeline {} (started {from}{reconnects}) into {}; {why}; {:.1} s",
            summary.start_lsn,
            summary.end_lsn,
            human_bytes(summary.bytes),
            summary.start_timeline,
            args.dir.display(),
            summary.elapsed_ms as f64 / 1000.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn start_words(source: StartSource) -> &'static str {
    match source {
        StartSource::CompleteSegment => "after the last complete segment",
        StartSource::PartialSegment => "at the partial segment",
        StartSource::Slot => "at the slot's restart position",
        StartSource::Server => "at the server's position",
    }
}

/// One stderr line per lost connection and per resumption, as pg_receivewal says
/// "disconnected; waiting 5 seconds to try again".
fn report_event(event: &ReceiveEvent) {
    match event {
        ReceiveEvent::Disconnected { reason, retry_in } => eprintln!(
            "pgrepl: disconnected ({reason}); reconnecting in {} s",
            retry_in.as_secs()
        ),
        ReceiveEvent::Resumed {
            start,
            timeline,
            source,
        } => eprintln!(
            "pgrepl: reconnected; resuming at {start} on timeline {timeline} ({})",
            start_words(*source)
        ),
    }
}
