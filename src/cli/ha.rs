//! `pgrepl pause` / `resume`, and `switchover` / `failover` / `rejoin` when agents run: the
//! requests go through etcd to the agents (`pgrepl::ha::control`); without agents the role
//! commands keep their manual paths (`cli::cluster`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Args;

use pgrepl::cluster::Cluster;
use pgrepl::ha::control::{Acknowledged, Control};
use pgrepl::ha::etcd_access::{ClientTls, EtcdAccess, Role};
use pgrepl::ha::model::View;
use pgrepl::ha::records::PauseRecord;

use super::cluster::{ClusterArgs, PlanArgs};
use super::out::outln;

/// Where the agents' etcd is.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (default: the cluster file's `[ha] etcd`, or the etcd
    /// `up` started).
    #[arg(
        long = "etcd",
        value_name = "URL,...",
        env = "PGREPL_ETCD",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// The cluster's name in etcd keys (`/pgrepl/<scope>/`; default: `[ha] scope`, or the
    /// cluster file's name without its extension).
    #[arg(long = "scope", value_name = "NAME")]
    pub scope: Option<String>,
    /// The CA that signed etcd's certificates, for `https://` URLs (default: `[ha] etcd_ca`,
    /// or the cluster CA for the etcd `up` started).
    #[arg(long = "etcd-ca", value_name = "FILE", env = "PGREPL_ETCD_CA")]
    pub ca: Option<PathBuf>,
    /// The client certificate to present to etcd, with --etcd-key (default: `[ha]`'s, or the
    /// one `up` made for the command's role).
    #[arg(
        long = "etcd-cert",
        value_name = "FILE",
        env = "PGREPL_ETCD_CERT",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    #[arg(
        long = "etcd-key",
        value_name = "FILE",
        env = "PGREPL_ETCD_KEY",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
}

impl EtcdArgs {
    /// The cluster's etcd as `role` reaches it (`[ha]`, or the etcd `up` started), at
    /// `--etcd` when given; `None` when the cluster has no etcd.
    pub fn access(&self, cluster: &Cluster, role: Role) -> anyhow::Result<Option<EtcdAccess>> {
        let own = pgrepl::ha::etcd_access(cluster, role);
        let mut access = if self.etcd.is_empty() {
            match own {
                Some(own) => own,
                None => return Ok(None),
            }
        } else {
            let plain = EtcdAccess::plain(self.etcd.clone());
            own.map_or(plain, |own| own.at(self.etcd.clone()))
        };
        if let Some(ca) = &self.ca {
            let identity = access.tls.take().and_then(|tls| tls.identity);
            access.tls = Some(ClientTls {
                ca: ca.clone(),
                identity,
            });
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let Some(tls) = &mut access.tls else {
                bail!("--etcd-cert needs --etcd-ca: the CA that signed etcd's certificates");
            };
            tls.identity = Some((cert.clone(), key.clone()));
        }
        Ok(Some(access))
    }

    pub fn scope(&self, cluster: &Cluster) -> anyhow::Result<String> {
        match &self.scope {
            Some(scope) if scope.is_empty() || scope.contains('/') => {
                bail!("--scope `{scope}`: give a name without `/`")
            }
            Some(scope) => Ok(scope.clone()),
            None => Ok(pgrepl::ha::scope(cluster)?),
        }
    }
}

/// How a role change through the agents is bounded.
#[derive(Debug, Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// With agents: how long to wait for them to carry it out before giving up (the request
    /// then expires); `30s`, `2min`, or a bare number of seconds.
    #[arg(long = "wait", value_name = "DURATION", default_value = "30s",
          value_parser = pgrepl::units::parse_duration)]
    pub wait: Duration,
}

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

/// The agents of a cluster, when they run: etcd holds member records.
pub struct Agents {
    control: Control,
    view: View,
}

impl Agents {
    /// `pgrepl pause` is in force: no agent acts on its server.
    pub fn paused(&self) -> bool {
        self.view.pause.is_some()
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The node holding the leader key, if any.
    pub fn leader(&self) -> Option<&str> {
        self.view.leader.as_ref().map(|l| l.node.as_str())
    }
}

/// The running agents of `cluster`, or `None` when it has no etcd or no agent runs. An etcd that
/// does not answer is an error: agents may run, and a manual role change would fight them.
pub async fn agents(cluster: &Cluster, etcd: &EtcdArgs) -> anyhow::Result<Option<Agents>> {
    let Some(access) = etcd.access(cluster, Role::Agent)? else {
        return Ok(None);
    };
    let control = Control::connect(&access, &etcd.scope(cluster)?).await?;
    let view = control.view().await.map_err(|e| {
        anyhow!("{e}: pgrepl cannot tell whether agents run, and a manual role change beside them would fight them; start etcd, or remove the cluster's [ha] section (and --etcd) if no agent runs")
    })?;
    Ok((!view.members.is_empty()).then_some(Agents { control, view }))
}

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

/// `switchover` through the agents.
pub async fn switchover(
    agents: Agents,
    to: Option<&str>,
    output: &PlanArgs,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let Agents { control, view } = agents;
    if output.dry_run {
        let (from, to) =
            pgrepl::ha::requests::switchover_target(&view, to).map_err(|why| anyhow!(why))?;
        outln!("switchover plan (through the agents): `{from}` -> `{to}`");
        outln!("  1. the agent of `{from}` waits until `{to}` has caught up, then stops its server (fast shutdown: `{to}` gets every commit)");
        outln!("  2. once `{to}` holds WAL past the shutdown checkpoint, the leader key passes to `{to}`'s agent");
        outln!("  3. `{to}` is promoted as an elected node is; the other standbys follow it");
        outln!("  4. the agent of `{from}` rejoins it as a standby of `{to}`");
        outln!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let done = control.switchover(&view, to, &who(), wait).await?;
    if output.json {
        outln!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(ExitCode::SUCCESS);
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
    Ok(ExitCode::SUCCESS)
}

/// `failover` through the agents: refused under a live leader; otherwise the election, with
/// `--to` honoured only when it is as safe.
pub async fn failover(
    agents: Agents,
    to: Option<&str>,
    output: &PlanArgs,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let Agents { control, view } = agents;
    if output.dry_run {
        let target =
            pgrepl::ha::requests::failover_target(&view, to).map_err(|why| anyhow!(why))?;
        outln!("failover plan (through the agents): the agents elect `{target}`");
        outln!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let done = control.failover(to, &who(), wait).await?;
    if output.json {
        outln!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        outln!(
            "failover `{}` -> `{}` through the agents: `{}` leads as primary after {:.1} s",
            done.from,
            done.to,
            done.to,
            done.took_ms as f64 / 1000.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A manual rejoin while agents run would race the node's own agent.
pub fn refuse_rejoin(node: &str) -> anyhow::Error {
    anyhow!("agents run for this cluster: the agent of `{node}` rejoins it by itself (`pgrepl status` shows it)")
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
