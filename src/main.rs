//! The `pgrepl` binary: parse arguments, set up logging, run, and turn the outcome into one
//! error line (plus a hint when we know one) and an exit code.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    let default_level = match args.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // tokio-postgres logs statement text at debug level, and some statements pgrepl sends carry
    // a replication password (primary_conninfo); secrets never reach logs, at any level.
    let filter = filter.add_directive("tokio_postgres=info".parse().expect("a valid directive"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pgrepl: start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let user = cli::user_hint(&args.command);
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            if stop_signal().await.is_ok() {
                on_signal.cancel();
            }
        });
        match cli::run(args.command, cancel).await {
            Ok(code) => code,
            Err(err) if err.is::<cli::Interrupted>() => {
                eprintln!("pgrepl: {err}");
                ExitCode::from(130)
            }
            Err(err) => {
                eprintln!("pgrepl: {err:#}");
                if let Some(hint) = cli::hints::hint_for(&err, &user) {
                    eprintln!("hint: {hint}");
                }
                ExitCode::from(2)
            }
        }
    })
}

/// Ctrl-C, or SIGTERM: what `kill`, systemd and container runtimes send to stop a process, and
/// it deserves the same clean stop (e.g. receivewal flushing what it received).
async fn stop_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
