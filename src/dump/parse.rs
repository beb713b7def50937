//! The dump's lexer: splits a plain SQL dump into statements, COPY data and psql meta-commands
//! the way psql's lexer sees them (see the header of `dump`). Sans I/O: fed one line at a time,
//! so tests feed strings.

use bytes::Bytes;

use crate::conn::ConnParams;

/// Something in a dump that cannot be restored as written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line} is not valid UTF-8: pgrepl restores UTF-8 dumps (pg_dump -E UTF8), or restore with psql")]
    NotUtf8 { line: u64 },
    #[error(
        "psql meta-command `\\{command}` at line {line} is not supported by pgrepl's restore; remove it or restore with psql"
    )]
    Unsupported { command: String, line: u64 },
    #[error("psql meta-command `\\{command}` at line {line} is inside the statement that starts at line {statement}: end that statement with `;` first")]
    InsideStatement {
        command: String,
        line: u64,
        statement: u64,
    },
    #[error("psql meta-command `\\{command}` at line {line}: {problem}")]
    Meta {
        command: String,
        line: u64,
        problem: String,
    },
    #[error(
        "text after `COPY ... FROM stdin;` at line {line}: its data must start on the next line"
    )]
    AfterCopy { line: u64 },
    #[error("the dump ends inside the COPY data that starts at line {line} (no `\\.` line): is it truncated?")]
    UnterminatedCopy { line: u64 },
    #[error("the dump ends inside {what} that starts at line {line}: is it truncated?")]
    Unterminated { what: String, line: u64 },
}
/// One thing a dump asks for. Lines count from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A statement to run as it is, without its `;`.
    Statement { line: u64, sql: String },
    /// `COPY ... FROM stdin`: [`Item::CopyData`] lines follow, then [`Item::CopyEnd`].
    CopyStart { line: u64, sql: String },
    /// One data line with its line ending, byte for byte as in the file.
    CopyData(Bytes),
    /// The `\.` line that ends the data.
    CopyEnd,
    /// `\connect`: continue in a new session to this database (`None`: the current one).
    Connect { line: u64, dbname: Option<String> },
    /// A meta-command that needs nothing from pgrepl (see the module docs).
    Skipped { line: u64, command: String },
}

/// Splits a dump into [`Item`]s, fed one line at a time (sans I/O, so tests feed strings).
#[derive(Debug, Default)]
pub struct DumpParser {
    /// Number of the last line fed.
    line: u64,
    /// Line of the COPY statement while its data lines are being read.
    copy_from: Option<u64>,
    /// The key of an open `\restrict`.
    restrict_key: Option<String>,
    statement: Statement,
}

/// The statement being read, and the lexer state that carries over from one line to the next.
#[derive(Debug, Default)]
struct Statement {
    sql: String,
    /// Line of its first token; comments and blank lines before it are not part of it.
    start: Option<u64>,
    lex: Lex,
    /// Where the open quote or comment began, for the error at end of file.
    lex_line: u64,
    paren_depth: u32,
    /// BEGIN/CASE ... END nesting inside a `CREATE FUNCTION|PROCEDURE` (psqlscan.l's heuristic).
    begin_depth: u32,
    words: usize,
    /// First letters of the leading words when they are CREATE, OR, REPLACE, FUNCTION, PROCEDURE.
    lead: [u8; 4],
    is_copy: bool,
    after_from: bool,
    from_stdin: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum Lex {
    #[default]
    Normal,
    /// In a '' string; `backslash` for E'' strings.
    Quote { backslash: bool },
    /// In a "" identifier.
    Ident,
    /// In a dollar-quoted body, ended by this delimiter (`$$`, `$body$`).
    Dollar(String),
    /// In a /* */ comment, nested this deep.
    Comment(u32),
}

impl DumpParser {
    /// Reads one line (with its line ending) and appends what it completes to `items`.
    pub fn feed_line(&mut self, raw: Vec<u8>, items: &mut Vec<Item>) -> Result<(), ParseError> {
        self.line += 1;
        if self.copy_from.is_some() {
            // COPY data goes to the server unchanged; only the end marker is psql's business.
            if matches!(raw.as_slice(), b"\\." | b"\\.\n" | b"\\.\r\n") {
                self.copy_from = None;
                items.push(Item::CopyEnd);
            } else {
                items.push(Item::CopyData(Bytes::from(raw)));
            }
            return Ok(());
        }
        let text = String::from_utf8(raw).map_err(|_| ParseError::NotUtf8 { line: self.line })?;
        // Editors on Windows start files with a byte order mark, which the server would reject.
        let text = if self.line == 1 {
            text.strip_prefix('\u{feff}').unwrap_or(&text)
        } else {
            &text
        };
        self.scan(text, items)
    }

    /// End of file: the last statement may lack its `;`, but nothing may be left open.
    pub fn finish(&mut self, items: &mut Vec<Item>) -> Result<(), ParseError> {
        if let Some(line) = self.copy_from {
            return Err(ParseError::UnterminatedCopy { line });
        }
        let statement = std::mem::take(&mut self.statement);
        let what = match &statement.lex {
            Lex::Normal => None,
            Lex::Quote { .. } => Some("a quoted string".to_owned()),
            Lex::Ident => Some("a quoted identifier".to_owned()),
            Lex::Dollar(tag) => Some(format!("the dollar-quoted string `{tag}`")),
            Lex::Comment(_) => Some("a /* comment".to_owned()),
        };
        if let Some(what) = what {
            return Err(ParseError::Unterminated {
                what,
                line: statement.lex_line,
            });
        }
        if let Some(line) = statement.start {
            if statement.from_stdin {
                return Err(ParseError::UnterminatedCopy { line });
            }
            items.push(Item::Statement {
                line,
                sql: statement.sql.trim_end().to_owned(),
            });
        }
        Ok(())
    }

    fn scan(&mut self, line: &str, items: &mut Vec<Item>) -> Result<(), ParseError> {
        let bytes = line.as_bytes();
        // Start of this line's part of the current statement. Every index the scan stops at in
        // `Lex::Normal` is a char boundary: syntax is ASCII, and non-ASCII runs are read whole.
        let mut kept = 0;
        let mut i = 0;
        while i < bytes.len() {
            let next = bytes.get(i + 1).copied();
            let s = &mut self.statement;
            match &s.lex {
                Lex::Quote { backslash } => match bytes[i] {
                    b'\\' if *backslash => i += 2,
                    b'\'' if next == Some(b'\'') => i += 2,
                    b'\'' => {
                        s.lex = Lex::Normal;
                        i += 1;
                    }
                    _ => i += 1,
                },
                Lex::Ident => {
                    // `""` inside an identifier closes and reopens it, which splits the same way.
                    if bytes[i] == b'"' {
                        s.lex = Lex::Normal;
                    }
                    i += 1;
                }
                Lex::Dollar(tag) => match line[i..].find(tag.as_str()) {
                    Some(at) => {
                        i += at + tag.len();
                        s.lex = Lex::Normal;
                    }
                    None => i = bytes.len(),
                },
                Lex::Comment(depth) => {
                    let depth = *depth;
                    if bytes[i] == b'/' && next == Some(b'*') {
                        s.lex = Lex::Comment(depth + 1);
                        i += 2;
                    } else if bytes[i] == b'*' && next == Some(b'/') {
                        s.lex = if depth == 1 {
                            Lex::Normal
                        } else {
                            Lex::Comment(depth - 1)
                        };
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                Lex::Normal => match bytes[i] {
                    b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => i += 1,
                    b'-' if next == Some(b'-') => i = bytes.len(),
                    b'/' if next == Some(b'*') => {
                        s.lex = Lex::Comment(1);
                        s.lex_line = self.line;
                        i += 2;
                    }
                    b'\\' => {
                        let command = meta_name(&line[i..]);
                        if let Some(statement) = s.start {
                            return Err(ParseError::InsideStatement {
                                command,
                                line: self.line,
                                statement,
                            });
                        }
                        // A meta-command's arguments run to the end of the line.
                        self.meta(command, line[i..].trim_end(), items)?;
                        return Ok(());
                    }
                    b';' if s.paren_depth == 0 && s.begin_depth == 0 => {
                        i += 1;
                        let Some(start) = s.start else { continue };
                        s.sql.push_str(&line[kept..i - 1]);
                        let done = std::mem::take(s);
                        let sql = done.sql.trim_end().to_owned();
                        if done.from_stdin {
                            let rest = line[i..].trim_start();
                            if !rest.is_empty() && !rest.starts_with("--") {
                                return Err(ParseError::AfterCopy { line: self.line });
                            }
                            items.push(Item::CopyStart { line: start, sql });
                            self.copy_from = Some(start);
                            return Ok(());
                        }
                        items.push(Item::Statement { line: start, sql });
                    }
                    byte => {
                        if s.start.is_none() {
                            s.start = Some(self.line);
                            kept = i;
                        }
                        i = s.token(line, i, byte, self.line);
                    }
                },
            }
        }
        if self.statement.start.is_some() {
            self.statement.sql.push_str(&line[kept..]);
        }
        Ok(())
    }

    /// Handles the meta-command `text` (from its `\` to the end of the line).
    fn meta(
        &mut self,
        command: String,
        text: &str,
        items: &mut Vec<Item>,
    ) -> Result<(), ParseError> {
        let line = self.line;
        let fail = |problem: String| ParseError::Meta {
            command: command.clone(),
            line,
            problem,
        };
        if self.restrict_key.is_some() && command != "unrestrict" {
            return Err(fail(
                "psql refuses every meta-command between `\\restrict` and `\\unrestrict`: the dump may have been altered".into(),
            ));
        }
        let args = meta_args(&text[1 + command.len()..]).map_err(|p| fail(p.into()))?;
        let item = match command.as_str() {
            "connect" | "c" => Item::Connect { line, dbname: connect_dbname(&args).map_err(fail)? },
            "restrict" => match args.as_slice() {
                [(key, _)] if !key.is_empty() => {
                    self.restrict_key = Some(key.clone());
                    Item::Skipped { line, command }
                }
                _ => return Err(fail("it takes one argument, the key".into())),
            },
            "unrestrict" => match (&self.restrict_key, args.as_slice()) {
                (Some(open), [(key, _)]) if open == key => {
                    self.restrict_key = None;
                    Item::Skipped { line, command }
                }
                (Some(_), _) => return Err(fail("its key is not the one `\\restrict` gave".into())),
                (None, _) => return Err(fail("no `\\restrict` is open".into())),
            },
            "set" => Item::Skipped { line, command },
            "encoding" => match args.as_slice() {
                [(name, _)] if ["utf8", "utf-8", "sql_ascii"].contains(&name.to_ascii_lowercase().as_str()) => {
                    Item::Skipped { line, command }
                }
                _ => {
                    return Err(fail(
                        "pgrepl sends the dump's bytes unconverted, so only UTF8 and SQL_ASCII are accepted; \
                         convert the dump to UTF-8 (iconv) or restore with psql"
                            .into(),
                    ))
                }
            },
            _ => return Err(ParseError::Unsupported { command, line }),
        };
        items.push(item);
        Ok(())
    }
}

impl Statement {
    /// Reads the token that starts with `byte` at `i` (not whitespace, a comment, `;` or `\`)
    /// and returns where the scan continues.
    fn token(&mut self, line: &str, i: usize, byte: u8, line_number: u64) -> usize {
        let bytes = line.as_bytes();
        match byte {
            b'\'' => self.open(Lex::Quote { backslash: false }, line_number),
            b'"' => self.open(Lex::Ident, line_number),
            // `$1` is a parameter; `$$` and `$tag$` open a body that only the same delimiter ends.
            b'$' => {
                if let Some(end) = dollar_delimiter_end(bytes, i) {
                    self.open(Lex::Dollar(line[i..=end].to_owned()), line_number);
                    return end + 1;
                }
            }
            b'(' => self.paren_depth += 1,
            b')' => self.paren_depth = self.paren_depth.saturating_sub(1),
            b if is_ident_start(b) => {
                let end = bytes[i..]
                    .iter()
                    .position(|&b| !is_ident_cont(b))
                    .map_or(bytes.len(), |n| i + n);
                let word = &line[i..end];
                if end - i == 1 && bytes.get(end) == Some(&b'\'') {
                    // E'', B'', X'', N'': a string with a prefix, where only E'' takes escapes.
                    self.open(
                        Lex::Quote {
                            backslash: word.eq_ignore_ascii_case("e"),
                        },
                        line_number,
                    );
                    return end + 1;
                }
                self.word(word);
                return end;
            }
            _ => {}
        }
        i + 1
    }

    fn open(&mut self, lex: Lex, line_number: u64) {
        self.lex = lex;
        self.lex_line = line_number;
    }

    /// Tracks the words psql's lexer tracks: a SQL-standard function body
    /// (`CREATE FUNCTION ... BEGIN ATOMIC ...; ...; END`) is one statement, and
    /// `COPY ... FROM stdin` is followed by data.
    fn word(&mut self, word: &str) {
        let lower = word.to_ascii_lowercase();
        if let Some(slot) = self.lead.get_mut(self.words) {
            *slot = match lower.as_str() {
                "create" | "or" | "replace" | "function" | "procedure" => lower.as_bytes()[0],
                _ => 0,
            };
        }
        self.words += 1;
        let routine = self.lead[0] == b'c'
            && matches!(
                self.lead[1..],
                [b'f' | b'p', ..] | [b'o', b'r', b'f' | b'p']
            );
        if routine && self.paren_depth == 0 {
            match lower.as_str() {
                "begin" => self.begin_depth += 1,
                "case" if self.begin_depth > 0 => self.begin_depth += 1,
                "end" => self.begin_depth = self.begin_depth.saturating_sub(1),
                _ => {}
            }
        }
        if self.paren_depth == 0 {
            if self.words == 1 {
                self.is_copy = lower == "copy";
            }
            self.from_stdin |= self.is_copy && self.after_from && lower == "stdin";
            self.after_from = lower == "from";
        }
    }
}

/// psql's identifier characters: letters, `_` and every non-ASCII byte; digits and `$` follow.
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The index of the `$` that closes a dollar-quote delimiter opening at `i`.
fn dollar_delimiter_end(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if bytes.get(j).is_some_and(|&b| is_ident_start(b)) {
        j += 1;
        while bytes
            .get(j)
            .is_some_and(|&b| is_ident_start(b) || b.is_ascii_digit())
        {
            j += 1;
        }
    }
    (bytes.get(j) == Some(&b'$')).then_some(j)
}

/// The name of the meta-command at the start of `text` (after its `\`).
fn meta_name(text: &str) -> String {
    text[1..]
        .split(|c: char| c.is_whitespace() || c == '\\')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// psql's meta-command arguments: separated by whitespace, with "double" quotes (`""` for a
/// quote, kept verbatim otherwise, as psql does for `\connect`) and 'single' quotes (`''` and
/// backslash escapes). Each comes with whether it was quoted.
fn meta_args(text: &str) -> Result<Vec<(String, bool)>, &'static str> {
    let mut args = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(args);
        }
        let (mut arg, mut quoted) = (String::new(), false);
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            match c {
                '"' | '\'' => {
                    quoted = true;
                    loop {
                        match chars.next() {
                            None => return Err("a quoted argument is not closed"),
                            Some(q) if q == c && chars.next_if_eq(&c).is_some() => arg.push(c),
                            Some(q) if q == c => break,
                            Some('\\') if c == '\'' => match chars.next() {
                                Some('n') => arg.push('\n'),
                                Some('t') => arg.push('\t'),
                                Some(other) => arg.push(other),
                                None => return Err("a quoted argument is not closed"),
                            },
                            Some(other) => arg.push(other),
                        }
                    }
                }
                '`' => return Err("pgrepl does not run shell commands in backquotes"),
                '\\' => return Err("a second meta-command on the same line is not supported"),
                _ => arg.push(c),
            }
        }
        args.push((arg, quoted));
    }
}

/// The database a `\connect` switches to. pgrepl restores into one node as one user, so a
/// change of user, host or port is refused rather than ignored.
fn connect_dbname(args: &[(String, bool)]) -> Result<Option<String>, String> {
    const ONLY_DATABASES: &str =
        "pgrepl's restore switches databases only; a change of user, host or port needs psql";
    let args = match args {
        [(option, false), rest @ ..] if option.starts_with("-reuse-previous") => rest,
        _ => args,
    };
    // psql: an unquoted `-` or empty argument means "as before".
    let as_before = |(arg, quoted): &(String, bool)| !quoted && (arg.is_empty() || arg == "-");
    let Some(first) = args.first() else {
        return Ok(None);
    };
    if !args[1..].iter().all(as_before) {
        return Err(ONLY_DATABASES.into());
    }
    let dbname = &first.0;
    if as_before(first) {
        return Ok(None);
    }
    // psql takes an argument with `=` or a URI prefix as a connection string (pg_dump writes
    // `"dbname='...'"` for unusual names).
    if dbname.contains('=')
        || dbname.starts_with("postgresql://")
        || dbname.starts_with("postgres://")
    {
        let params =
            ConnParams::parse(dbname).map_err(|e| format!("connection string `{dbname}`: {e}"))?;
        if params
            != (ConnParams {
                dbname: params.dbname.clone(),
                ..ConnParams::default()
            })
        {
            return Err(ONLY_DATABASES.into());
        }
        return Ok(params.dbname);
    }
    Ok(Some(dbname.clone()))
}
#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Item>, ParseError> {
        parse_bytes(text.as_bytes())
    }

    fn parse_bytes(text: &[u8]) -> Result<Vec<Item>, ParseError> {
        let mut parser = DumpParser::default();
        let mut items = Vec::new();
        for line in text.split_inclusive(|&b| b == b'\n') {
            parser.feed_line(line.to_vec(), &mut items)?;
        }
        parser.finish(&mut items)?;
        Ok(items)
    }

    fn stmt(line: u64, sql: &str) -> Item {
        Item::Statement {
            line,
            sql: sql.into(),
        }
    }

    fn statements(text: &str) -> Vec<(u64, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|item| match item {
                Item::Statement { line, sql } => (line, sql),
                other => panic!("not a statement: {other:?}"),
            })
            .collect()
    }
    #[test]
    fn semicolons_inside_strings_identifiers_and_comments_do_not_split() {
        let text = "INSERT INTO t VALUES ('a;b', 'it''s; fine');\n\
                    SELECT E'\\';still' AS \"x;y\", E'a''b;\\\\';\n\
                    -- a comment; with a semicolon\n\
                    SELECT 1 /* outer /* inner; */ still; */ + 2;\n\
                    SELECT 'multi\n\
                    line; string' -- trailing; comment\n\
                    ;\n";
        assert_eq!(
            statements(text),
            vec![
                (1, "INSERT INTO t VALUES ('a;b', 'it''s; fine')".into()),
                (2, "SELECT E'\\';still' AS \"x;y\", E'a''b;\\\\'".into()),
                (4, "SELECT 1 /* outer /* inner; */ still; */ + 2".into()),
                (
                    5,
                    "SELECT 'multi\nline; string' -- trailing; comment".into()
                ),
            ]
        );
    }

    #[test]
    fn dollar_quoted_bodies_end_only_at_their_own_tag() {
        let text = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\n\
                    BEGIN\n  RAISE NOTICE 'x; $$ y';\n  RETURN 1;\nEND;\n$body$;\n\
                    SELECT $$a;b$$, $q$;$q$;\n\
                    PREPARE p(int) AS SELECT $1; SELECT a$b FROM t;\n";
        let got = statements(text);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].0, 1);
        assert!(got[0].1.ends_with("END;\n$body$"), "{}", got[0].1);
        assert_eq!(got[1], (7, "SELECT $$a;b$$, $q$;$q$".into()));
        assert_eq!(got[2], (8, "PREPARE p(int) AS SELECT $1".into()));
        assert_eq!(got[3], (8, "SELECT a$b FROM t".into()));
    }

    #[test]
    fn begin_atomic_bodies_and_parentheses_keep_their_semicolons() {
        // pg_dump's output for a SQL-standard body, as psql's lexer splits it.
        let text = "CREATE FUNCTION public.f() RETURNS integer\n    LANGUAGE sql\n    BEGIN ATOMIC\n \
                    SELECT CASE WHEN true THEN 1 END;\n SELECT 2;\nEND;\n\
                    CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2));\n\
                    BEGIN;\nCOMMIT;\n";
        let got = statements(text);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].1.ends_with("SELECT 2;\nEND"), "{}", got[0].1);
        assert_eq!(got[1].0, 7);
        assert_eq!(got[2], (8, "BEGIN".into()));
        assert_eq!(got[3], (9, "COMMIT".into()));
    }

    #[test]
    fn leading_comments_are_dropped_and_lines_point_at_the_first_token() {
        let text = "--\n-- Name: t; Type: TABLE\n--\n\n/* block\n; */\n  CREATE TABLE t (\n    a int\n);\n\nSELECT 1; SELECT 2; -- done\n";
        assert_eq!(
            statements(text),
            vec![
                (7, "CREATE TABLE t (\n    a int\n)".into()),
                (11, "SELECT 1".into()),
                (11, "SELECT 2".into())
            ]
        );
    }

    #[test]
    fn copy_data_passes_through_unchanged_until_the_end_marker() {
        let text = "COPY public.t (a, b) FROM stdin;\n\
                    1\tx\\ty\\\\z;\n\
                    2\t\\N\n\
                    3\t\\\\.\n\
                    \\.\n\
                    SELECT 1;\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                Item::CopyStart {
                    line: 1,
                    sql: "COPY public.t (a, b) FROM stdin".into()
                },
                Item::CopyData(Bytes::from_static(b"1\tx\\ty\\\\z;\n")),
                Item::CopyData(Bytes::from_static(b"2\t\\N\n")),
                Item::CopyData(Bytes::from_static(b"3\t\\\\.\n")),
                Item::CopyEnd,
                stmt(6, "SELECT 1"),
            ]
        );
    }

    #[test]
    fn copy_data_need_not_be_utf8_and_other_copies_are_statements() {
        let mut text = b"copy t from STDIN with (format csv);\n".to_vec();
        text.extend_from_slice(b"1,\xe9t\xe9\r\n\\.\r\n");
        text.extend_from_slice(
            b"COPY t FROM '/srv/t.csv';\nCOPY (SELECT 1 FROM stdin) TO STDOUT;\n",
        );
        let items = parse_bytes(&text).unwrap();
        assert_eq!(
            items[0],
            Item::CopyStart {
                line: 1,
                sql: "copy t from STDIN with (format csv)".into()
            }
        );
        assert_eq!(
            items[1],
            Item::CopyData(Bytes::from_static(b"1,\xe9t\xe9\r\n"))
        );
        assert_eq!(items[2], Item::CopyEnd);
        assert_eq!(items[3], stmt(4, "COPY t FROM '/srv/t.csv'"));
        assert_eq!(items[4], stmt(5, "COPY (SELECT 1 FROM stdin) TO STDOUT"));
    }

    #[test]
    fn crlf_lines_and_a_byte_order_mark() {
        let text = "\u{feff}SELECT 1;\r\nSELECT\r\n  2;\r\nCOPY t FROM stdin;\r\n1\r\n\\.\r\n";
        let items = parse(text).unwrap();
        assert_eq!(items[0], stmt(1, "SELECT 1"));
        assert_eq!(items[1], stmt(2, "SELECT\r\n  2"));
        assert_eq!(items[3], Item::CopyData(Bytes::from_static(b"1\r\n")));
        assert_eq!(items[4], Item::CopyEnd);
    }

    #[test]
    fn a_last_statement_without_a_semicolon_runs_at_end_of_file() {
        assert_eq!(
            statements("SELECT 1;\nSELECT 2 -- no semicolon"),
            vec![
                (1, "SELECT 1".into()),
                (2, "SELECT 2 -- no semicolon".into())
            ]
        );
        assert_eq!(
            statements("SELECT 1;\n-- only a comment\n\n"),
            vec![(1, "SELECT 1".into())]
        );
    }

    #[test]
    fn unterminated_things_at_end_of_file_are_errors() {
        let unterminated = |text: &str| match parse(text) {
            Err(ParseError::Unterminated { what, line }) => (what, line),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            unterminated("SELECT 1;\nSELECT 'abc\n;\n"),
            ("a quoted string".into(), 2)
        );
        assert_eq!(
            unterminated("CREATE FUNCTION f() AS $fn$\nSELECT 1;\n"),
            ("the dollar-quoted string `$fn$`".into(), 1)
        );
        assert_eq!(unterminated("/* /* */\n"), ("a /* comment".into(), 1));
        assert_eq!(
            parse("COPY t FROM stdin;\n1\n2\n"),
            Err(ParseError::UnterminatedCopy { line: 1 })
        );
        assert_eq!(
            parse("SELECT 1;\nCOPY t FROM stdin"),
            Err(ParseError::UnterminatedCopy { line: 2 })
        );
        assert_eq!(
            parse("COPY t FROM stdin; SELECT 1;\n"),
            Err(ParseError::AfterCopy { line: 1 })
        );
        assert_eq!(
            parse_bytes(b"SELECT 1;\nSELECT '\xff';\n"),
            Err(ParseError::NotUtf8 { line: 2 })
        );
    }

    #[test]
    fn pg_dump_meta_commands() {
        let text = "\\restrict abc123\n\
                    CREATE DATABASE shop;\n\
                    \\unrestrict abc123\n\
                    \\connect shop\n\
                    \\restrict abc123\n\
                    SELECT 1;\n\
                    \\unrestrict abc123\n\
                    \\encoding SQL_ASCII\n\
                    \\connect -reuse-previous=on \"dbname='we\\\\ird \\'name'\"\n\
                    \\c \"MyDb\"\n\
                    \\c\n\
                    \\set ON_ERROR_STOP on\n";
        let connect = |line, name: Option<&str>| Item::Connect {
            line,
            dbname: name.map(Into::into),
        };
        let skipped = |line, command: &str| Item::Skipped {
            line,
            command: command.into(),
        };
        assert_eq!(
            parse(text).unwrap(),
            vec![
                skipped(1, "restrict"),
                stmt(2, "CREATE DATABASE shop"),
                skipped(3, "unrestrict"),
                connect(4, Some("shop")),
                skipped(5, "restrict"),
                stmt(6, "SELECT 1"),
                skipped(7, "unrestrict"),
                skipped(8, "encoding"),
                connect(9, Some("we\\ird 'name")),
                connect(10, Some("MyDb")),
                connect(11, None),
                skipped(12, "set"),
            ]
        );
    }

    #[test]
    fn other_meta_commands_are_refused_with_their_line() {
        let err = parse("SELECT 1;\n\\i other.sql\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "psql meta-command `\\i` at line 2 is not supported by pgrepl's restore; remove it or restore with psql"
        );
        assert_eq!(
            parse("SELECT 1\n\\gset\n"),
            Err(ParseError::InsideStatement {
                command: "gset".into(),
                line: 2,
                statement: 1
            })
        );
        // A backslash inside a string or comment is no meta-command.
        assert_eq!(statements("SELECT '\\i x' /* \\q */;\n").len(), 1);
        let meta_error = |text: &str| match parse(text) {
            Err(ParseError::Meta { command, line, .. }) => (command, line),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            meta_error("\\restrict k\n\\connect other\n"),
            ("connect".into(), 2)
        );
        assert_eq!(
            meta_error("\\restrict k\n\\unrestrict wrong\n"),
            ("unrestrict".into(), 2)
        );
        assert_eq!(meta_error("\\unrestrict k\n"), ("unrestrict".into(), 1));
        assert_eq!(meta_error("\\connect shop bob\n"), ("connect".into(), 1));
        assert_eq!(
            meta_error("\\c \"dbname=shop user=bob\"\n"),
            ("c".into(), 1)
        );
        assert_eq!(meta_error("\\encoding LATIN1\n"), ("encoding".into(), 1));
        assert_eq!(meta_error("\\c `echo db`\n"), ("c".into(), 1));
    }
}
