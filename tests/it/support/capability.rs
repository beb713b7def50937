//! What a test needs from the machine beyond PostgreSQL 15: other majors, a Docker engine, tmpfs
//! mounts, etcd, promtool, chromium. A test that finds one missing calls [`skip`]: the skip is
//! printed straight to the terminal (libtest captures `eprintln!`, not writes to the stderr
//! handle), and when `PGREPL_REQUIRE` names the capability (CI names them all), the test fails
//! instead, so a green run means the test really ran.

use std::io::Write;
use std::path::PathBuf;

/// A capability as `PGREPL_REQUIRE` names it: `pg14`, `docker`, `tmpfs`, `etcd`, ...
pub type Capability<'a> = &'a str;

/// Whether `PGREPL_REQUIRE` (comma-separated names, or `all`) asks for `capability`.
fn required(capability: Capability) -> bool {
    std::env::var("PGREPL_REQUIRE")
        .map(|list| required_by(&list, capability))
        .unwrap_or(false)
}

fn required_by(list: &str, capability: Capability) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|name| name == "all" || name == capability)
}

/// Records that `test` could not run (all or part of it) without `capability`: fails the test
/// when the capability is required, else prints one line that the run shows.
pub fn skip(test: &str, capability: Capability, reason: &str) {
    if required(capability) {
        panic!("missing capability `{capability}` (PGREPL_REQUIRE): {reason}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no `{capability}` here ({reason}); PGREPL_REQUIRE={capability} makes this a failure"
    );
}

/// The path of `program` on PATH, or a skip of `test` for the capability named after it.
pub fn tool(test: &str, program: &str, install_hint: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        skip(
            test,
            program,
            &format!("`{program}` is not on PATH: {install_hint}"),
        );
    }
    found
}

#[test]
fn require_lists_name_capabilities() {
    assert!(required_by("pg14,docker", "docker"));
    assert!(required_by("pg14, docker", "docker"));
    assert!(required_by("all", "etcd"));
    assert!(!required_by("pg14,pg16", "pg1"));
    assert!(!required_by("", "docker"));
}
