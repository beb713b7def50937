//! Where a single-server command connects: the libpq-style flags and how they combine with a
//! conninfo string and the environment.

use clap::Args;

use pgrepl::conn::{ConnParams, ConnectOptions};

/// Where to connect, as libpq tools take it. Flags override the -d string, which overrides
/// PGHOST, PGPORT, PGUSER and friends.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Connection string or URI (`host=... port=... user=...` or `postgresql://user@host:port`).
    #[arg(short = 'd', long = "dbname", value_name = "CONNINFO")]
    pub conninfo: Option<String>,
    /// Server host name or Unix socket directory.
    #[arg(short = 'h', long = "host")]
    pub host: Option<String>,
    /// Server port.
    #[arg(short = 'p', long = "port")]
    pub port: Option<String>,
    /// Role to connect as (needs the REPLICATION attribute).
    #[arg(short = 'U', long = "username")]
    pub user: Option<String>,
}

/// libpq precedence: flags over the -d string over the environment over defaults.
pub fn connect_options(
    args: &ConnectionArgs,
    application_name: Option<&str>,
) -> anyhow::Result<ConnectOptions> {
    let mut params = match &args.conninfo {
        Some(conninfo) => ConnParams::parse(conninfo)?,
        None => ConnParams::default(),
    };
    for (key, value) in [
        ("host", &args.host),
        ("port", &args.port),
        ("user", &args.user),
    ] {
        if let Some(value) = value {
            params.set(key, value)?;
        }
    }
    let mut options = ConnectOptions::from_process_env(params)?;
    if options.application_name.is_none() {
        options.application_name = application_name.map(str::to_owned);
    }
    Ok(options)
}
