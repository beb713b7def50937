//! Results on stdout. A reader that goes away early (`pgrepl drill | head -1`) is not an error:
//! the rest of the output is dropped quietly and the command ends with its own exit code, where
//! `println!` would panic.

use std::io::Write;

use anyhow::Context;

/// What a command that changes state prints with `--json` (besides its own fields): which
/// command, on which node, and how long it took. Fields are only ever added.
#[derive(serde::Serialize)]
pub struct Done<'a, T: serde::Serialize> {
    pub command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<&'a str>,
    pub elapsed_ms: u128,
    #[serde(flatten)]
    pub detail: T,
}

impl<T: serde::Serialize> Done<'_, T> {
    pub fn print(&self) -> anyhow::Result<()> {
        print(&format!("{}\n", serde_json::to_string_pretty(self)?))?;
        Ok(())
    }
}

/// Writes `text` to stdout; `false` when the reader has closed the pipe.
pub fn print(text: &str) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("write to stdout"),
    }
}

/// `println!` that survives a closed pipe; other write errors return from the caller.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::print(&format!("{}\n", format_args!($($arg)*)))?
    };
}
pub(crate) use outln;

/// A JSON result with the cluster's application URIs (`"uris"`) appended when the nodes come
/// from a cluster, and an `"ha"` member when it has `[ha]`; the result's own members keep their
/// order (a `serde_json::Value` would sort them).
#[derive(serde::Serialize)]
pub struct WithHa<'a, T, H> {
    #[serde(flatten)]
    pub result: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uris: Option<&'a pgrepl::cluster::client_uris::ClientUris>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha: Option<&'a H>,
}

/// The lines that give an application the cluster's addresses.
pub fn uris_text(uris: &pgrepl::cluster::client_uris::ClientUris) -> String {
    let mut text = format!(
        "application (libpq finds the primary after a failover):\n  writes: {}\n  reads:  {}\n",
        uris.write, uris.read
    );
    if let Some(proxy) = &uris.proxy {
        text.push_str(&format!(
            "application through HAProxy ([proxy]):\n  writes: {}\n  reads:  {}\n",
            proxy.write, proxy.read
        ));
        if proxy.no_password {
            text.push_str("  (over TCP the superuser needs a password: set [local] superuser_password_file, or connect as a role of your own)\n");
        }
    }
    text
}
