//! `pgrepl tls`: when the cluster's certificates expire, and `tls rotate`, which renews the
//! nodes' certificates with a reload and no downtime (`cluster/tls.rs`).

use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use pgrepl::cluster::tls::Expiry;

use super::cluster::PrintSteps;
use super::cluster_args::ClusterArgs;
use super::out::outln;

#[derive(Debug, Args)]
pub struct TlsArgs {
    /// `show` (the default) or `rotate`.
    #[arg(value_enum, default_value_t = TlsAction::Show)]
    pub action: TlsAction,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// One JSON array: each certificate's owner (`CA` or a node), path and expiry (RFC 3339).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TlsAction {
    /// When the CA's and each node's certificate expire, soonest first (the default).
    Show,
    /// New certificates and keys for the nodes from the cluster CA; each server reloads them
    /// (sessions already open keep theirs), then a verify-full session checks each one.
    Rotate,
}

pub async fn run(args: TlsArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.cluster.open()?;
    let expiries = match args.action {
        TlsAction::Show => cluster.tls_expiries()?,
        TlsAction::Rotate => cluster.rotate_tls(&PrintSteps(Instant::now())).await?,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&expiries)?);
    } else if expiries.is_empty() {
        outln!(
            "no certificates: the cluster runs without TLS, or `pgrepl up` has not made them yet"
        );
    } else {
        outln!("{}", table(&expiries));
    }
    Ok(ExitCode::SUCCESS)
}

fn table(expiries: &[Expiry]) -> String {
    let width = expiries.iter().map(|e| e.of.len()).max().unwrap_or(0);
    expiries
        .iter()
        .map(|e| {
            format!(
                "{:<width$}  valid until {}  {}",
                e.of,
                e.not_after,
                e.path.display()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
