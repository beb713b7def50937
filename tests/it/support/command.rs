//! Running the pgrepl binary this build made, and reading what it printed.

use std::process::{Command, Output};

/// The pgrepl binary this build made.
pub const PGREPL: &str = env!("CARGO_BIN_EXE_pgrepl");

/// The pgrepl binary, not started yet: every test runs it through this, adding its own arguments
/// and environment.
pub fn pgrepl() -> Command {
    Command::new(PGREPL)
}

/// Runs `pgrepl ARGS` to the end with no password from the environment or a passfile but
/// `password`, as `PGPASSWORD`.
pub fn pgrepl_output(args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = pgrepl();
    cmd.args(args)
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent");
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    cmd.output().expect("run pgrepl")
}

/// Takes every `PG*` variable and `RUST_LOG` of the test's environment from `cmd`, and points
/// `PGPASSFILE` nowhere: the command sees only what the test gives it.
pub fn without_pg_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PG") || key == "RUST_LOG" {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("PGPASSFILE", "/nonexistent")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
