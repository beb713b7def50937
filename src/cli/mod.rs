//! The `pgrepl` command line: turns raw arguments into library options, runs the command, and
//! renders results. Hints for errors live in `hints`, argument definitions in `args` (the
//! commands' own in their files, those many share in `cluster_args`: which cluster, and where
//! its agents' etcd is), the single-server connection flags in `connection`. What a command
//! may do beside live agents is the library's to decide (`pgrepl::ha::route`), not the CLI's.

mod agent;
pub mod args;
mod basebackup;
mod bench;
mod cluster;
mod cluster_args;
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

use std::process::ExitCode;

use clap::CommandFactory;
use tokio_util::sync::CancellationToken;

use self::args::Command;
use self::connection::connect_options;
use pgrepl::cluster::Rebuild;

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
        Command::Basebackup(args) => basebackup::run(args, cancel).await,
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
        Command::Completions(args) => shell::completions(args, args::Cli::command()),
        Command::Man(args) => shell::man(args, args::Cli::command()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
