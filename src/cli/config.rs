//! `pgrepl config show|set|reset|edit`: cluster-wide PostgreSQL settings. Every change is
//! checked against the primary's `pg_settings` before anything changes; with agents it goes
//! into etcd and each agent applies it to its server, else this command applies it to every
//! node. What needs a restart is shown, and `pgrepl restart --pending` does it.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::cluster_args::{ClusterArgs, EtcdArgs};
use super::out::{outln, Done};
use pgrepl::cluster::settings::{self, Change, Desired, AT_LEAST_THE_PRIMARYS};
use pgrepl::cluster::Cluster;
use pgrepl::ha::route::{Agents, Route};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// What pgrepl holds for every node, what each node runs with, and what waits for a restart
    Show(ShowArgs),
    /// Set settings on every node (`NAME=VALUE`...), checked against the server's pg_settings
    /// first: with agents through etcd, else on each node with ALTER SYSTEM and a reload
    Set(SetArgs),
    /// Take settings back to the server's default on every node
    Reset(ResetArgs),
    /// Edit the settings in $EDITOR (as TOML), then check, show the difference and apply
    Edit(EditArgs),
}

/// Which cluster, and its etcd when agents run.
#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub target: Target,
    /// As JSON: settings (what pgrepl holds), serial, and per node its values, pending_restart
    /// and, with agents, its agent's report.
    #[arg(long)]
    pub json: bool,
}

/// How a change is confirmed and reported.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Apply without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// The result as JSON: command, elapsed_ms, serial, changes, and per node whether it
    /// applied them and what waits for a restart.
    #[arg(long)]
    pub json: bool,
    /// With agents: how long to wait for every agent to apply it; `30s`, `2min`, or seconds.
    #[arg(long = "wait", value_name = "DURATION", default_value = "30s",
          value_parser = pgrepl::units::parse_duration)]
    pub wait: Duration,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub target: Target,
    /// `NAME=VALUE`, as in postgresql.conf (`shared_buffers=1GB`, `max_connections=200`).
    #[arg(value_name = "NAME=VALUE", required = true)]
    pub settings: Vec<String>,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub target: Target,
    /// The settings to take back to the server's default.
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub change: ChangeArgs,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub change: ChangeArgs,
}

pub async fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConfigCommand::Show(args) => show(args).await,
        ConfigCommand::Set(args) => {
            let changes = args
                .settings
                .iter()
                .map(|s| parse_assignment(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            change("config set", &args.target, changes, &args.change).await
        }
        ConfigCommand::Reset(args) => {
            let changes = args.names.iter().map(|n| (n.clone(), None)).collect();
            change("config reset", &args.target, changes, &args.change).await
        }
        ConfigCommand::Edit(args) => edit(args).await,
    }
}

fn parse_assignment(text: &str) -> anyhow::Result<Change> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() && !value.trim().is_empty() => {
            Ok((name.trim().to_owned(), Some(value.trim().to_owned())))
        }
        Some((name, _)) if !name.trim().is_empty() => Err(anyhow!(
            "`{text}`: give a value, or take `{}` back to its default with `pgrepl config reset {}`",
            name.trim(),
            name.trim()
        )),
        _ => Err(anyhow!("`{text}`: write settings as NAME=VALUE, e.g. max_connections=200")),
    }
}

/// Where the settings live: etcd when agents run, else the state directory.
pub(super) enum Holder {
    Agents(Box<Agents>),
    Here,
}

impl Holder {
    pub(super) async fn find(cluster: &Cluster, etcd: &EtcdArgs) -> anyhow::Result<Holder> {
        Ok(match etcd.route(cluster).await? {
            Route::Agents(agents) => Holder::Agents(agents),
            Route::Manual => Holder::Here,
        })
    }

    pub(super) fn primary(&self) -> Option<&str> {
        match self {
            Holder::Agents(agents) => agents.leader(),
            Holder::Here => None,
        }
    }

    pub(super) async fn desired(&self, cluster: &Cluster) -> anyhow::Result<(Desired, i64)> {
        Ok(match self {
            Holder::Agents(agents) => agents.control().settings().await?,
            Holder::Here => (Desired::load(cluster.state_dir())?, 0),
        })
    }
}

/// One node's part of the result.
#[derive(Debug, Serialize)]
pub(super) struct NodeResult {
    pub(super) node: String,
    /// It runs the latest settings (without a restart for those that need one).
    applied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    pub(super) pending_restart: Vec<String>,
    /// Held at the primary's higher value until the primary runs the lower one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    held: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Changed {
    serial: u64,
    changes: Vec<String>,
    nodes: Vec<NodeResult>,
}

async fn change(
    command: &str,
    target: &Target,
    changes: Vec<Change>,
    how: &ChangeArgs,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let cluster = target.cluster.open()?;
    let holder = Holder::find(&cluster, &target.etcd).await?;
    let catalog = cluster.settings_catalog(holder.primary()).await?;
    let changes =
        settings::check(&catalog, &changes).map_err(|e| anyhow!("{e}: nothing was changed"))?;
    let (current, revision) = holder.desired(&cluster).await?;
    let next = current.with(&changes);
    let diff = next.as_ref().map(|n| current.diff(n)).unwrap_or_default();
    if next.is_some() && !how.json {
        for line in &diff {
            outln!("{line}");
        }
    }
    if next.is_some() && !how.yes && !confirm()? {
        outln!("nothing was changed");
        return Ok(ExitCode::from(1));
    }
    // Unchanged: applied again all the same (a node that was down, an interrupted run).
    let desired = next.unwrap_or(current);
    let mut nodes = match &holder {
        Holder::Agents(agents) => {
            let control = agents.control();
            let applied = if diff.is_empty() {
                control.wait_applied(desired.serial, how.wait).await?
            } else {
                control.set_settings(&desired, revision, how.wait).await?
            };
            let mut nodes: Vec<NodeResult> = applied
                .reports
                .into_iter()
                .map(|r| NodeResult {
                    applied: r.error.is_none(),
                    node: r.node,
                    error: r.error,
                    pending_restart: r.pending_restart.into_iter().collect(),
                    held: r.held.into_iter().collect(),
                })
                .collect();
            nodes.extend(applied.pending.into_iter().map(|node| NodeResult {
                node,
                applied: false,
                error: Some(format!(
                    "its agent did not report within {} s",
                    how.wait.as_secs()
                )),
                pending_restart: Vec::new(),
                held: Vec::new(),
            }));
            nodes
        }
        Holder::Here => {
            cluster.apply_settings(&desired).await?;
            let names: Vec<&str> = desired.settings.keys().map(String::as_str).collect();
            node_results(&cluster, &names, &desired).await
        }
    };
    // In the cluster file's order, as every other command lists them.
    nodes.sort_by_key(|n| cluster.spec.nodes.iter().position(|s| s.name == n.node));
    let failed = nodes.iter().any(|n| !n.applied);
    let code = if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    if how.json {
        Done {
            command,
            node: None,
            elapsed_ms: started.elapsed().as_millis(),
            detail: Changed {
                serial: desired.serial,
                changes: diff,
                nodes,
            },
        }
        .print()?;
        return Ok(code);
    }
    if diff.is_empty() {
        outln!(
            "no change: the settings (serial {}) applied again",
            desired.serial
        );
    }
    print_nodes(&nodes)?;
    if nodes.iter().any(|n| !n.pending_restart.is_empty()) {
        outln!("`pgrepl restart --pending` restarts them: standbys one at a time, then the primary by a switchover");
    }
    Ok(code)
}

/// What each node runs with, from the nodes themselves (no agents).
pub(super) async fn node_results(
    cluster: &Cluster,
    names: &[&str],
    desired: &Desired,
) -> Vec<NodeResult> {
    let mut asked: Vec<&str> = names.to_vec();
    asked.extend(AT_LEAST_THE_PRIMARYS);
    cluster
        .running_settings(&asked)
        .await
        .into_iter()
        .map(|(node, running)| match running {
            Ok(running) => {
                let held = AT_LEAST_THE_PRIMARYS
                    .iter()
                    .filter(|name| {
                        let wanted = desired.settings.get(**name);
                        wanted.is_some()
                            && running.values.get(**name) != wanted
                            && !running.pending_restart.contains(**name)
                    })
                    .map(|n| n.to_string())
                    .collect();
                NodeResult {
                    node,
                    applied: true,
                    error: None,
                    pending_restart: running.pending_restart.into_iter().collect(),
                    held,
                }
            }
            Err(e) => NodeResult {
                node,
                applied: false,
                error: Some(e.to_string()),
                pending_restart: Vec::new(),
                held: Vec::new(),
            },
        })
        .collect()
}

pub(super) fn print_nodes(nodes: &[NodeResult]) -> anyhow::Result<()> {
    for n in nodes {
        let state = match &n.error {
            Some(e) => format!("not applied: {e}"),
            None if n.pending_restart.is_empty() => "applied".to_owned(),
            None => format!("applied; pending restart: {}", n.pending_restart.join(", ")),
        };
        let held = if n.held.is_empty() {
            String::new()
        } else {
            format!(
                " (held at the primary's value until it restarts: {})",
                n.held.join(", ")
            )
        };
        outln!("  {}: {state}{held}", n.node);
    }
    Ok(())
}

/// Asks on the terminal; refuses to guess without one.
fn confirm() -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("not a terminal to ask on: add --yes to apply without asking");
    }
    eprint!("apply to every node? [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

#[derive(Debug, Serialize)]
struct Shown {
    serial: u64,
    settings: BTreeMap<String, String>,
    nodes: Vec<ShownNode>,
}

#[derive(Debug, Serialize)]
struct ShownNode {
    node: String,
    /// What it runs with, of the settings pgrepl holds.
    values: BTreeMap<String, String>,
    pending_restart: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// With agents: the serial its agent applied last.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_serial: Option<u64>,
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.target.cluster.open()?;
    let holder = Holder::find(&cluster, &args.target.etcd).await?;
    let (desired, _) = holder.desired(&cluster).await?;
    let reports = match &holder {
        Holder::Agents(agents) => agents.control().applied().await?,
        Holder::Here => Vec::new(),
    };
    let names: Vec<&str> = desired.settings.keys().map(String::as_str).collect();
    let nodes: Vec<ShownNode> = cluster
        .running_settings(&names)
        .await
        .into_iter()
        .map(|(node, running)| {
            let report = reports.iter().find(|r| r.node == node);
            let (values, pending, error) = match running {
                Ok(r) => (r.values, r.pending_restart.into_iter().collect(), None),
                Err(e) => (BTreeMap::new(), Vec::new(), Some(e.to_string())),
            };
            ShownNode {
                error: error.or_else(|| report.and_then(|r| r.error.clone())),
                agent_serial: report.map(|r| r.serial),
                node,
                values,
                pending_restart: pending,
            }
        })
        .collect();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&Shown {
                serial: desired.serial,
                settings: desired.settings,
                nodes,
            })?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let place = match holder {
        Holder::Agents(_) => "in etcd, applied by the agents",
        Holder::Here => "in the state directory",
    };
    if desired.settings.is_empty() {
        outln!("no cluster-wide settings ({place}); `pgrepl config set NAME=VALUE` adds some");
    } else {
        outln!(
            "cluster-wide settings (serial {}, {place}):",
            desired.serial
        );
        for (name, value) in &desired.settings {
            outln!("  {name} = {value}");
        }
    }
    for node in &nodes {
        let mut parts = Vec::new();
        if let Some(e) = &node.error {
            parts.push(format!("unreachable or refused: {e}"));
        }
        let differ: Vec<String> = node
            .values
            .iter()
            .filter(|(name, value)| desired.settings.get(*name) != Some(value))
            .map(|(name, value)| format!("{name} = {value}"))
            .collect();
        if !differ.is_empty() {
            parts.push(format!("runs {}", differ.join(", ")));
        }
        if !node.pending_restart.is_empty() {
            parts.push(format!(
                "pending restart: {}",
                node.pending_restart.join(", ")
            ));
        }
        if parts.is_empty() {
            parts.push("runs them all".into());
        }
        outln!("{}: {}", node.node, parts.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

/// `config edit`: the settings as TOML in $VISUAL/$EDITOR, then `change` with what differs.
async fn edit(args: EditArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.target.cluster.open()?;
    let holder = Holder::find(&cluster, &args.target.etcd).await?;
    let (current, _) = holder.desired(&cluster).await?;
    drop(holder);
    let mut text = String::from(
        "# Cluster-wide PostgreSQL settings: name = \"value\". A line removed takes the setting\n\
         # back to the server's default. Save and quit to check and apply; empty the file to cancel.\n",
    );
    for (name, value) in &current.settings {
        text.push_str(&format!(
            "{name} = {}\n",
            toml::Value::String(value.clone())
        ));
    }
    let path = cluster.state_dir().join("settings.edit.toml");
    pgrepl::fs::write_durably(&path, text.as_bytes(), 0o600)
        .with_context(|| format!("write `{}`", path.display()))?;
    let edited = run_editor(&path);
    let _ = std::fs::remove_file(&path);
    let edited = edited?;
    if edited.trim().is_empty() {
        outln!("empty file: nothing was changed");
        return Ok(ExitCode::from(1));
    }
    let table: BTreeMap<String, toml::Value> = toml::from_str(&edited).map_err(|e| {
        anyhow!(
            "the edited settings are not TOML ({}): nothing was changed",
            e.message()
        )
    })?;
    let mut changes: Vec<Change> = table
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Boolean(b) => if b { "on" } else { "off" }.to_owned(),
                other => other.to_string(),
            };
            (name, Some(value))
        })
        .collect();
    let kept: Vec<String> = changes.iter().map(|(n, _)| n.clone()).collect();
    changes.extend(
        current
            .settings
            .keys()
            .filter(|name| !kept.contains(name))
            .map(|name| (name.clone(), None)),
    );
    change("config edit", &args.target, changes, &args.change).await
}

// The user's own editor is the one program this command must start: the clippy rule against
// shelling out is about PostgreSQL's tools.
#[allow(clippy::disallowed_methods)]
fn run_editor(path: &std::path::Path) -> anyhow::Result<String> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // $EDITOR may carry arguments (`code --wait`): the shell splits it, as git does.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status()
        .with_context(|| format!("run the editor `{editor}`"))?;
    if !status.success() {
        bail!("the editor `{editor}` failed ({status}): nothing was changed");
    }
    std::fs::read_to_string(path).with_context(|| format!("read `{}`", path.display()))
}
