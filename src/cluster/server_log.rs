//! Why a server did not start, in PostgreSQL's own words. pg_ctl only says "Examine the log
//! output"; the reason is in the log file it was given (`-l`), where the server writes before
//! any logging collector could take over. Only what a start wrote counts: the file keeps
//! every earlier run, and an old FATAL there is another attempt's.
//!
//! The lines quoted are the first FATAL or PANIC, its DETAIL, and the few lines its process
//! wrote just before (the setting it refused, the address it could not bind). Never a
//! STATEMENT line: that is SQL a client sent, which may hold a password.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Where a log file ends now (0 while it does not exist): a start's lines come after it.
pub(crate) fn mark(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// The server's reason for a failed start, from what `log` got after `mark`; `None` when it
/// wrote no FATAL or PANIC there (pg_ctl timed out, or could not even run the server).
pub(crate) fn start_failure(log: &Path, mark: u64) -> Option<String> {
    reason(&read_after(log, mark).ok()?)
}

/// At most this much of the end is read: a failed start writes a few lines, and a file
/// replaced by a long one since the mark must not be read whole.
const READ_LIMIT: u64 = 256 * 1024;

fn read_after(log: &Path, mark: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(log)?;
    let len = file.metadata()?.len();
    // Shorter than at the mark: replaced or truncated since, so all of it is new.
    let from = if len < mark { 0 } else { mark }.max(len.saturating_sub(READ_LIMIT));
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(len - from).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Lines of the failing process quoted before its FATAL or PANIC: one bad setting is one line,
/// a port in use is the bind failure and a warning.
const LEAD_IN: usize = 2;

/// The postmaster's opening lines: every start writes them, so they explain nothing.
const BANNER: [&str; 2] = ["starting PostgreSQL", "listening on "];

/// `LOG: …; FATAL: …; DETAIL: …` from a log's text, or `None` without a FATAL or PANIC.
fn reason(text: &str) -> Option<String> {
    let entries: Vec<Entry> = text.lines().filter_map(Entry::parse).collect();
    let at = entries
        .iter()
        .position(|e| matches!(e.severity, "FATAL" | "PANIC"))?;
    let fatal = &entries[at];
    let mut lead_in: Vec<&Entry> = entries[..at]
        .iter()
        .rev()
        .filter(|e| e.process == fatal.process && matches!(e.severity, "LOG" | "WARNING" | "ERROR"))
        .filter(|e| !BANNER.iter().any(|b| e.message.starts_with(b)))
        .take(LEAD_IN)
        .collect();
    lead_in.reverse();
    // Its own continuation lines follow it directly.
    let detail = entries[at + 1..]
        .iter()
        .take_while(|e| {
            e.process == fatal.process && matches!(e.severity, "DETAIL" | "HINT" | "CONTEXT")
        })
        .filter(|e| e.severity == "DETAIL");
    let quoted: Vec<String> = lead_in
        .into_iter()
        .chain(std::iter::once(fatal))
        .chain(detail)
        .map(|e| format!("{}: {}", e.severity, e.message))
        .collect();
    Some(quoted.join("; "))
}

/// One line of a server log: `<log_line_prefix>SEVERITY:  message`.
struct Entry<'a> {
    /// The pid in the prefix (`[1234]`, as the default `%m [%p] ` writes it); `None` when the
    /// prefix has none, and then every line counts as one process's.
    process: Option<&'a str>,
    severity: &'a str,
    message: &'a str,
}

/// What the server writes before the two spaces after the colon. English: the servers run
/// with initdb's `--locale=C`.
const SEVERITIES: [&str; 11] = [
    "DEBUG", "LOG", "INFO", "NOTICE", "WARNING", "ERROR", "FATAL", "PANIC", "DETAIL", "HINT",
    "CONTEXT",
];

impl<'a> Entry<'a> {
    /// `None` for a line without a severity (a continuation of a multi-line message, or
    /// another program's output) and for a STATEMENT line.
    fn parse(line: &'a str) -> Option<Entry<'a>> {
        // The first severity in the line: a message may quote another.
        let (start, severity) = SEVERITIES
            .iter()
            .filter_map(|s| {
                let at = line.find(&format!("{s}:  "))?;
                let boundary = at == 0 || line[..at].ends_with(' ');
                boundary.then_some((at, *s))
            })
            .min_by_key(|(at, _)| *at)?;
        let prefix = &line[..start];
        let process = prefix.rfind('[').and_then(|open| {
            let close = open + prefix[open..].find(']')?;
            let pid = &prefix[open + 1..close];
            (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
        });
        Some(Entry {
            process,
            severity,
            message: line[start + severity.len() + 3..].trim_end(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD_SETTING: &str = include_str!("../../tests/fixtures/server_log/bad_setting.log");
    const PORT_IN_USE: &str = include_str!("../../tests/fixtures/server_log/port_in_use.log");
    const RECOVERY_PANIC: &str = include_str!("../../tests/fixtures/server_log/recovery_panic.log");

    #[test]
    fn a_bad_setting_is_quoted_with_the_fatal_it_caused() {
        // Two healthy runs before the failing start, as in a node's log after a crash.
        assert_eq!(
            reason(BAD_SETTING).unwrap(),
            "LOG: invalid value for parameter \"shared_buffers\": \"nonsense\"; \
             FATAL: configuration file \"/var/lib/pgrepl/pg_master/data/postgresql.auto.conf\" contains errors"
        );
    }

    #[test]
    fn a_port_in_use_is_quoted_with_the_bind_failure_not_the_banner() {
        assert_eq!(
            reason(PORT_IN_USE).unwrap(),
            "LOG: could not bind IPv4 address \"127.0.0.1\": Address already in use; \
             WARNING: could not create listen socket for \"127.0.0.1\"; \
             FATAL: could not create any TCP/IP sockets"
        );
    }

    #[test]
    fn a_recovery_panic_is_quoted_from_the_startup_process() {
        // The postmaster's own lines after it (its child was aborted) are consequences.
        assert_eq!(
            reason(RECOVERY_PANIC).unwrap(),
            "LOG: database system was interrupted; last known up at 2026-12-06 13:43:16 UTC; \
             LOG: invalid primary checkpoint record; \
             PANIC: could not locate a valid checkpoint record"
        );
    }

    #[test]
    fn a_detail_is_kept_and_a_statement_never() {
        let text = "2026-01-01 00:00:00.000 UTC [7] FATAL:  requested timeline 2 is not a child of this server's history\n\
                    2026-01-01 00:00:00.000 UTC [7] DETAIL:  Latest checkpoint is at 0/3000028 on timeline 1.\n\
                    2026-01-01 00:00:00.000 UTC [7] STATEMENT:  ALTER ROLE x PASSWORD 'secret'\n";
        let quoted = reason(text).unwrap();
        assert_eq!(
            quoted,
            "FATAL: requested timeline 2 is not a child of this server's history; \
             DETAIL: Latest checkpoint is at 0/3000028 on timeline 1."
        );
    }

    #[test]
    fn a_healthy_start_has_no_reason() {
        let healthy = BAD_SETTING.split("[17640]").next().unwrap();
        assert_eq!(reason(healthy), None);
        // A prefix without a pid (a custom log_line_prefix) still finds the line.
        assert_eq!(
            reason("LOG:  x\nFATAL:  y\n").as_deref(),
            Some("LOG: x; FATAL: y")
        );
    }

    #[test]
    fn only_what_the_start_wrote_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("postgres.log");
        assert_eq!(mark(&log), 0);
        // An earlier attempt failed for another reason; its FATAL is not this start's.
        std::fs::write(&log, PORT_IN_USE).unwrap();
        let before = mark(&log);
        assert_eq!(before, PORT_IN_USE.len() as u64);
        assert_eq!(start_failure(&log, before), None);
        let mut text = PORT_IN_USE.to_owned();
        text.push_str(BAD_SETTING);
        std::fs::write(&log, &text).unwrap();
        assert!(start_failure(&log, before)
            .unwrap()
            .starts_with("LOG: invalid value for parameter \"shared_buffers\""));
        // Replaced by a shorter file since the mark: all of it is new.
        std::fs::write(&log, RECOVERY_PANIC).unwrap();
        assert!(start_failure(&log, text.len() as u64)
            .unwrap()
            .ends_with("PANIC: could not locate a valid checkpoint record"));
        assert_eq!(start_failure(&dir.path().join("absent.log"), 0), None);
    }
}
