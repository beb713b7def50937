//! `pgrepl completions SHELL` and `pgrepl man`: shell completion scripts and a manual page,
//! generated from the same definitions as `--help` (clap_complete, clap_mangen), so they never
//! disagree with the binary that prints them.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: ShellArg,
}

/// Prints the completion script for `cli`, pgrepl's command line (bash: `pgrepl completions
/// bash > /etc/bash_completion.d/pgrepl`; the README lists the others).
pub fn completions(args: CompletionsArgs, mut cli: clap::Command) -> anyhow::Result<ExitCode> {
    use clap_complete::Shell;
    let shell = match args.shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cli, "pgrepl", &mut out);
    super::out::print(&String::from_utf8(out)?)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write every page into DIR instead: pgrepl.1 and one pgrepl-COMMAND.1 per command, the
    /// pages pgrepl(1) refers to (e.g. /usr/local/share/man/man1).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

/// Prints pgrepl(1) in roff for `cli`, pgrepl's command line, or writes it and each command's
/// page into `--dir`.
pub fn man(args: ManArgs, cli: clap::Command) -> anyhow::Result<ExitCode> {
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(cli, &dir))
                .map_err(|e| {
                    anyhow::anyhow!("write the manual pages into `{}`: {e}", dir.display())
                })?;
            eprintln!(
                "wrote pgrepl.1 and a page per command into `{}`",
                dir.display()
            );
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cli).render(&mut out)?;
            super::out::print(&String::from_utf8(out)?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_pages_are_one_per_command() {
        let dir = tempfile::tempdir().unwrap();
        man(
            ManArgs {
                dir: Some(dir.path().to_owned()),
            },
            Cli::command(),
        )
        .unwrap();
        for page in ["pgrepl.1", "pgrepl-switchover.1", "pgrepl-history.1"] {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(text.starts_with(".ie"), "{page}: {text}");
        }
    }

    #[test]
    fn every_shell_completes_every_command() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "pgrepl", &mut out);
            let text = String::from_utf8(out).unwrap();
            for command in ["switchover", "history", "haproxy-config", "completions"] {
                assert!(text.contains(command), "{shell}: no `{command}`");
            }
        }
    }
}
