//! Restores a plain-format SQL dump (`pg_dump -Fp`, `pg_dumpall`, or handwritten SQL) into a
//! node natively, as `psql -v ON_ERROR_STOP=1 -f FILE` would: statements run one at a time over
//! the simple query protocol, and each `COPY ... FROM stdin` block streams its data lines to the
//! server as they are read. The file is read line by line and never held whole: dumps can be big.
//!
//! Statements end at a `;` the way psql's lexer sees it: not inside '' strings (`''` doubling),
//! E'' strings (backslash escapes), "" identifiers, $$ / $tag$ bodies, -- and nested /* */
//! comments, parentheses, or the BEGIN ... END of a `CREATE FUNCTION ... BEGIN ATOMIC` body. A
//! last statement without `;` still runs at end of file, as psql runs it.
//!
//! psql meta-commands (`\` outside quotes, at a statement boundary):
//! - `\connect` / `\c DBNAME` (pg_dump -C, pg_dumpall): a new session to that database on the
//!   same node. A change of user, host or port is refused.
//! - `\restrict KEY` / `\unrestrict KEY` (pg_dump 13.22, 14.19, 15.14, 16.10, 17.6 and later):
//!   psql's guard against meta-commands smuggled into a dump's data. Between them every other
//!   meta-command is refused, as psql does; otherwise they need nothing.
//! - `\set` (psql variables such as `ON_ERROR_STOP`): skipped. pgrepl always stops at the first
//!   error, and does no `:name` interpolation.
//! - `\encoding UTF8` / `\encoding SQL_ASCII`: skipped, since pgrepl sends the file's bytes
//!   unconverted (pg_dump writes the latter before `\connect` to an unusually named database).
//! - Anything else (`\i`, `\copy`, `\gset`, `\if`, `\!`, ...) is not run: the restore stops with
//!   an error naming the command and its line.
//!
//! Also not done: psql's `--single-transaction` (statements commit one by one, as pg_dump
//! output expects), and pg_restore's archive formats (refused with a hint to convert them).
//!
//! Files: `parse` splits the file into statements, COPY data and meta-commands (pure, tested
//! with strings); this one opens the file, creates the target database when absent, and runs
//! what the parser yields.
//!
//! Neighbours: `cluster::Cluster::up` restores into a freshly initialised primary (`up --dump
//! FILE --dump-database NAME`); `conn::sql` opens the sessions.

mod parse;

use std::fmt;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::AsyncBufReadExt;
use tokio_postgres::{Client, CopyInSink};

pub use self::parse::{DumpParser, Item, ParseError};
use crate::conn::{sql, ConnectOptions, ConnectionError};
use crate::proto::command::quote_ident;

/// Read buffer of the dump file.
const READ_BUFFER: usize = 256 * 1024;

/// How much of a failed statement the error quotes.
const PREVIEW_CHARS: usize = 80;

/// The application_name of the restore's sessions.
const SESSION_NAME: &str = "pgrepl";

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("open dump `{}`", .path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` is not a plain SQL dump: {problem}", .path.display())]
    NotPlain {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("read dump `{}`", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dump `{}`", .path.display())]
    Parse { path: PathBuf, source: ParseError },
    #[error("connect to database `{dbname}` to restore dump `{}`", .path.display())]
    Connect {
        path: PathBuf,
        dbname: String,
        /// Boxed: a connection error is large, and rare here.
        source: Box<ConnectionError>,
    },
    #[error("create the dump's database `{database}`: {}; statement: {statement}", server_message(.error))]
    CreateDatabase {
        database: String,
        statement: String,
        error: tokio_postgres::Error,
    },
    /// The server refused a statement or COPY block; `error` is not a `source` because the
    /// message must end with the statement, after the server's words.
    #[error("dump `{}` failed at line {line}: {}; statement: {statement}", .path.display(), server_message(.error))]
    Failed {
        path: PathBuf,
        line: u64,
        statement: String,
        error: tokio_postgres::Error,
    },
}
/// A dump file opened and checked to be plain SQL, before anything is created for it.
#[derive(Debug)]
pub struct DumpFile {
    path: PathBuf,
    file: std::fs::File,
}

impl DumpFile {
    pub fn open(path: &Path) -> Result<DumpFile, DumpError> {
        let open = |source| DumpError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(open)?;
        let not_plain = |problem| {
            Err(DumpError::NotPlain {
                path: path.to_owned(),
                problem,
            })
        };
        if file.metadata().map_err(open)?.is_dir() {
            return not_plain(
                "it is a directory (a pg_dump -Fd archive?): turn it into SQL with `pg_restore -f dump.sql DIR`",
            );
        }
        let mut head = Vec::with_capacity(8);
        (&mut file).take(8).read_to_end(&mut head).map_err(open)?;
        // pg_dump -Fc starts with PGDMP; -Ft is a tar whose first member is toc.dat.
        if head.starts_with(b"PGDMP") || head.starts_with(b"toc.dat") {
            return not_plain(
                "it is a pg_dump archive (custom or tar format): turn it into SQL with `pg_restore -f dump.sql FILE`",
            );
        }
        if head.starts_with(&[0x1f, 0x8b]) {
            return not_plain("it is gzip-compressed: decompress it first (gunzip)");
        }
        file.rewind().map_err(open)?;
        Ok(DumpFile {
            path: path.to_owned(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a restore ran.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreSummary {
    pub statements: u64,
    pub copy_blocks: u64,
    pub copy_rows: u64,
    pub copy_bytes: u64,
    pub connects: u64,
    pub skipped_meta_commands: u64,
}

impl fmt::Display for RestoreSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} statements, {} COPY blocks ({} rows, {} bytes), {} \\connect, {} psql meta-commands skipped",
            self.statements, self.copy_blocks, self.copy_rows, self.copy_bytes, self.connects, self.skipped_meta_commands
        )
    }
}

/// Where a restore reports its steps (a `\connect`, a database it creates).
pub type Log<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Runs `dump` against `database` on the node `options` reaches (created first when absent),
/// then wherever `\connect` goes, and stops at the first failure.
pub async fn restore(
    options: &ConnectOptions,
    dump: DumpFile,
    database: &str,
    log: Log<'_>,
) -> Result<RestoreSummary, DumpError> {
    let DumpFile { path, file } = dump;
    ensure_database(options, database, &path, log).await?;
    let dbname = database.to_owned();
    let client = connect(options, &dbname, &path).await?;
    let mut run = Run {
        path: &path,
        options,
        log,
        dbname,
        client,
        copy: None,
        summary: RestoreSummary::default(),
    };
    let mut reader =
        tokio::io::BufReader::with_capacity(READ_BUFFER, tokio::fs::File::from_std(file));
    let mut parser = DumpParser::default();
    let mut items = Vec::new();
    loop {
        let mut line = Vec::new();
        let read = reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|source| DumpError::Read {
                path: path.clone(),
                source,
            })?;
        let parsed = if read == 0 {
            parser.finish(&mut items)
        } else {
            parser.feed_line(line, &mut items)
        };
        // What the line completed before a parse error runs first, as it would in psql.
        for item in items.drain(..) {
            run.apply(item).await?;
        }
        parsed.map_err(|source| DumpError::Parse {
            path: path.clone(),
            source,
        })?;
        if read == 0 {
            return Ok(run.summary);
        }
    }
}

/// A restore in progress: the session, and the COPY block being streamed.
struct Run<'a> {
    path: &'a Path,
    options: &'a ConnectOptions,
    log: Log<'a>,
    dbname: String,
    client: Client,
    copy: Option<ActiveCopy>,
    summary: RestoreSummary,
}

struct ActiveCopy {
    line: u64,
    sql: String,
    sink: Pin<Box<CopyInSink<Bytes>>>,
}

impl Run<'_> {
    async fn apply(&mut self, item: Item) -> Result<(), DumpError> {
        match item {
            Item::Statement { line, sql } => {
                if let Err(error) = self.client.batch_execute(&sql).await {
                    return Err(self.failed(line, &sql, error));
                }
                self.summary.statements += 1;
            }
            Item::CopyStart { line, sql } => {
                match self.client.copy_in::<_, Bytes>(sql.as_str()).await {
                    Ok(sink) => {
                        self.copy = Some(ActiveCopy {
                            line,
                            sql,
                            sink: Box::pin(sink),
                        })
                    }
                    Err(error) => return Err(self.failed(line, &sql, error)),
                }
            }
            Item::CopyData(data) => {
                let copy = self
                    .copy
                    .as_mut()
                    .expect("the parser yields COPY data only after a COPY statement");
                let len = data.len() as u64;
                // `feed` batches lines into CopyData messages and waits when the server is behind.
                if let Err(error) = copy.sink.feed(data).await {
                    let (line, sql) = (copy.line, copy.sql.clone());
                    return Err(self.failed(line, &sql, error));
                }
                self.summary.copy_bytes += len;
            }
            Item::CopyEnd => {
                let mut copy = self
                    .copy
                    .take()
                    .expect("the parser ends COPY data only after a COPY statement");
                // A bad data line is reported here: the server answers only at the end.
                match copy.sink.as_mut().finish().await {
                    Ok(rows) => self.summary.copy_rows += rows,
                    Err(error) => return Err(self.failed(copy.line, &copy.sql, error)),
                }
                self.summary.copy_blocks += 1;
            }
            Item::Connect { line, dbname } => {
                let dbname = dbname.unwrap_or_else(|| self.dbname.clone());
                (self.log)(&format!("line {line}: \\connect `{dbname}`"));
                self.client = connect(self.options, &dbname, self.path).await?;
                self.dbname = dbname;
                self.summary.connects += 1;
            }
            Item::Skipped { line, command } => {
                tracing::debug!(line, "skipped psql meta-command `\\{command}`");
                self.summary.skipped_meta_commands += 1;
            }
        }
        Ok(())
    }

    fn failed(&self, line: u64, sql: &str, error: tokio_postgres::Error) -> DumpError {
        DumpError::Failed {
            path: self.path.to_owned(),
            line,
            statement: preview(sql),
            error,
        }
    }
}

/// Creates `database` unless it exists, from a session to the options' own database.
async fn ensure_database(
    options: &ConnectOptions,
    database: &str,
    path: &Path,
    log: Log<'_>,
) -> Result<(), DumpError> {
    let maintenance = options
        .dbname
        .clone()
        .unwrap_or_else(|| sql::DEFAULT_DATABASE.to_owned());
    if maintenance == database {
        return Ok(());
    }
    let client = connect(options, &maintenance, path).await?;
    let failed = |statement: &str, error| DumpError::CreateDatabase {
        database: database.to_owned(),
        statement: statement.to_owned(),
        error,
    };
    let exists = "SELECT 1 FROM pg_database WHERE datname = $1";
    let found = client
        .query_opt(exists, &[&database])
        .await
        .map_err(|e| failed(exists, e))?;
    if found.is_none() {
        let create = format!("CREATE DATABASE {}", quote_ident(database));
        client
            .batch_execute(&create)
            .await
            .map_err(|e| failed(&create, e))?;
        log(&format!("created database `{database}`"));
    }
    Ok(())
}

async fn connect(options: &ConnectOptions, dbname: &str, path: &Path) -> Result<Client, DumpError> {
    let mut options = options.clone();
    options.dbname = Some(dbname.to_owned());
    sql::connect(&options, SESSION_NAME)
        .await
        .map_err(|source| DumpError::Connect {
            path: path.to_owned(),
            dbname: dbname.to_owned(),
            source: Box::new(source),
        })
}

/// The server's words for a failure on one line, with DETAIL and CONTEXT (which place a COPY
/// error on its data line), or the client's when the session broke.
fn server_message(error: &tokio_postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        return error.to_string();
    };
    let mut text = format!("{}: {}", db.severity(), db.message());
    if let Some(detail) = db.detail() {
        text += &format!(" (detail: {detail})");
    }
    if let Some(context) = db.where_() {
        text += &format!(" (context: {context})");
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The start of a statement on one line, for an error message.
fn preview(sql: &str) -> String {
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(PREVIEW_CHARS) {
        Some((at, _)) => format!("{}...", &flat[..at]),
        None => flat,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_one_line_and_short() {
        assert_eq!(preview("SELECT\n  1"), "SELECT 1");
        let long = format!("INSERT INTO t VALUES ('{}')", "é".repeat(100));
        let shown = preview(&long);
        assert_eq!(shown.chars().count(), PREVIEW_CHARS + 3);
        assert!(shown.ends_with("éé..."));
    }
}
