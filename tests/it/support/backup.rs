//! Base backups the tests take with pgrepl to make standbys.

use std::path::Path;
use std::process::Output;

use crate::support::harness::{self, PgServer};
use crate::support::{pgrepl_output, stderr};

/// A backup of `server` into `targets` as the SCRAM replication role, asserting success.
pub fn backup_into(server: &PgServer, targets: &[&Path], extra: &[&str]) -> Output {
    let conninfo = server.tcp_conninfo(harness::REP_SCRAM, None);
    let mut args = vec!["basebackup", "-d", &conninfo, "-c", "fast"];
    for t in targets {
        args.extend(["-D", t.to_str().unwrap()]);
    }
    let owner = owner_arg();
    if let Some(owner) = &owner {
        args.extend(["--owner", owner]);
    }
    args.extend_from_slice(extra);
    let output = pgrepl_output(&args, Some(harness::REP_SCRAM_PASSWORD));
    assert!(
        output.status.success(),
        "pgrepl basebackup failed: {}\nserver log:\n{}",
        stderr(&output),
        server.log_tail()
    );
    output
}

/// `--owner UID:GID` of the servers' user when the tests run as root.
pub fn owner_arg() -> Option<String> {
    harness::postgres_ids().map(|(uid, gid)| format!("{uid}:{gid}"))
}
