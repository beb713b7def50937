//! `pgrepl pause` / `resume`, `haproxy-config`, and what `switchover` / `failover` print when
//! the agents carried them out (`pgrepl::ha::route` decides who does; `pgrepl::ha::control`
//! talks to the agents through etcd).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Args;

use pgrepl::cluster::Cluster;
use pgrepl::ha::control::{Acknowledged, Control, FailedOver, Switched};
use pgrepl::ha::etcd_access::Role;
use pgrepl::ha::records::PauseRecord;

use super::cluster_args::{ClusterArgs, EtcdArgs};
use super::out::outln;

#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The result as JSON: command, elapsed_ms, record (who paused, when), already, and the
    /// agents that agreed, are pending or absent.
    #[arg(long)]
    pub json: bool,
}

/// How long `pause`/`resume` wait for every agent to show the new state.
const ACK_WAIT: Duration = Duration::from_secs(5);

async fn control(cluster: &Cluster, etcd: &EtcdArgs) -> anyhow::Result<Control> {
    let access = etcd.access(cluster, Role::Agent)?.ok_or_else(|| {
        anyhow!(
            "no etcd for this cluster: give --etcd URL,... or an [ha] section in the cluster file"
        )
    })?;
    Ok(Control::connect(&access, &etcd.scope(cluster)?).await?)
}

pub async fn pause(args: PauseArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let started = Instant::now();
    let control = control(&cluster, &args.etcd).await?;
    let ack = control
        .pause(&who(), &node_names(&cluster), ACK_WAIT)
        .await?;
    if args.json {
        return print_json("pause", started, ack);
    }
    let record = ack
        .record
        .as_ref()
        .expect("pause returns the record in force");
    if ack.already {
        outln!("already paused ({})", describe(record));
    } else {
        outln!("paused: the agents take no automatic action until `pgrepl resume`");
    }
    print_agents(&ack, "paused")?;
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(args: PauseArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let started = Instant::now();
    let control = control(&cluster, &args.etcd).await?;
    let ack = control.resume(&node_names(&cluster), ACK_WAIT).await?;
    if args.json {
        return print_json("resume", started, ack);
    }
    match &ack.record {
        Some(record) => {
            outln!("resumed ({}): the agents act again", describe(record));
        }
        None => {
            outln!("not paused: the agents act by themselves");
        }
    }
    print_agents(&ack, "acting")?;
    Ok(ExitCode::SUCCESS)
}

fn print_json(command: &str, started: Instant, ack: Acknowledged) -> anyhow::Result<ExitCode> {
    let done = super::out::Done {
        command,
        node: None,
        elapsed_ms: started.elapsed().as_millis(),
        detail: ack,
    };
    done.print()?;
    Ok(ExitCode::SUCCESS)
}

fn node_names(cluster: &Cluster) -> Vec<String> {
    cluster.spec.nodes.iter().map(|n| n.name.clone()).collect()
}

fn print_agents(ack: &Acknowledged, state: &str) -> anyhow::Result<()> {
    if ack.agreed.is_empty() && ack.pending.is_empty() {
        outln!("no agent runs");
        return Ok(());
    }
    if !ack.agreed.is_empty() {
        outln!("{state}: {}", ack.agreed.join(", "));
    }
    if !ack.pending.is_empty() {
        outln!(
            "not yet {state} after {} s: {} (its agent may be busy; `pgrepl status` shows it)",
            ACK_WAIT.as_secs(),
            ack.pending.join(", ")
        );
    }
    if !ack.absent.is_empty() {
        outln!(
            "no live agent: {} (an agent reads the pause key when it starts)",
            ack.absent.join(", ")
        );
    }
    Ok(())
}

/// A switchover's plan through the agents (`--dry-run`).
pub fn print_switchover_plan(from: &str, to: &str) -> anyhow::Result<()> {
    outln!("switchover plan (through the agents): `{from}` -> `{to}`");
    outln!("  1. the agent of `{from}` waits until `{to}` has caught up, then stops its server (fast shutdown: `{to}` gets every commit)");
    outln!("  2. once `{to}` holds WAL past the shutdown checkpoint, the leader key passes to `{to}`'s agent");
    outln!("  3. `{to}` is promoted as an elected node is; the other standbys follow it");
    outln!("  4. the agent of `{from}` rejoins it as a standby of `{to}`");
    outln!("dry run: nothing was changed");
    Ok(())
}

/// A switchover the agents carried out.
pub fn print_switched(done: &Switched, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(done)?);
        return Ok(());
    }
    outln!(
        "switchover `{}` -> `{}` through the agents: `{}` leads as primary after {:.1} s",
        done.from,
        done.to,
        done.to,
        done.took_ms as f64 / 1000.0
    );
    match done.rejoined_ms {
        Some(ms) => {
            outln!(
                "`{}` streams from `{}` after {:.1} s",
                done.from,
                done.to,
                ms as f64 / 1000.0
            );
        }
        None => {
            outln!(
                "`{}` does not stream from `{}` yet: its agent rejoins it (`pgrepl status` shows it)",
                done.from,
                done.to
            );
        }
    }
    Ok(())
}

/// A failover's plan through the agents (`--dry-run`): whom they elect.
pub fn print_failover_plan(to: &str) -> anyhow::Result<()> {
    outln!("failover plan (through the agents): the agents elect `{to}`");
    outln!("dry run: nothing was changed");
    Ok(())
}

/// A failover the agents carried out.
pub fn print_failed_over(done: &FailedOver, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(done)?);
    } else {
        outln!(
            "failover `{}` -> `{}` through the agents: `{}` leads as primary after {:.1} s",
            done.from,
            done.to,
            done.to,
            done.took_ms as f64 / 1000.0
        );
    }
    Ok(())
}

/// `user@host` of whoever runs the command, for the records.
pub(super) fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "?".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    format!("{user}@{host}")
}

/// "by root@db1, 12 s ago"
fn describe(record: &PauseRecord) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let ago = now.saturating_sub(record.at_unix_ms) / 1000;
    format!("by {}, {ago} s ago", record.by)
}

#[derive(Debug, Args)]
pub struct HaproxyConfigArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The address HAProxy listens on (any other interface than loopback must be named).
    #[arg(long = "bind", value_name = "ADDR", default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// The port that reaches the primary (Patroni's example: 5000).
    #[arg(long = "write-port", value_name = "PORT", default_value_t = 5000)]
    pub write_port: u16,
    /// The port that reaches the standbys.
    #[arg(long = "read-port", value_name = "PORT", default_value_t = 5001)]
    pub read_port: u16,
}

/// Prints an HAProxy configuration whose checks ask each node's agent (`pgrepl::ha::haproxy`).
pub fn haproxy_config(args: HaproxyConfigArgs) -> anyhow::Result<ExitCode> {
    use pgrepl::ha::haproxy::{config, Listen};
    if args.write_port == args.read_port {
        bail!(
            "--write-port and --read-port are both {}: give two ports",
            args.write_port
        );
    }
    // A file whose nodes name their `api` is enough: the proxy may be set up before `up`.
    let cluster = args.cluster.find(pgrepl::cluster::Purpose::Build)?;
    let backends = pgrepl::ha::proxy::backends(&cluster)?;
    let listen = Listen {
        bind: args.bind.to_string(),
        write_port: args.write_port,
        read_port: args.read_port,
        stats_socket: None,
        resolver: None,
        // The agents serve HTTPS with the cluster's TLS; the CA is where `up` made it.
        api_ca: cluster
            .spec
            .tls_on()
            .then(|| pgrepl::cluster::tls::ca_cert_path(cluster.state_dir())),
    };
    super::out::print(&config(&listen, &backends))?;
    Ok(ExitCode::SUCCESS)
}
