//! Which PostgreSQL major a data directory holds and which the binaries are, and the refusal to
//! start one with the other (a server of another major refuses the data, often only after
//! rewriting nothing but failing late, with a message about `postgresql.conf`). Pure: the
//! runtimes read the texts, this decides.

use std::fmt;
use std::path::Path;

use super::runtime_error::RuntimeError;

/// Where a runtime's server binaries come from, for the messages.
#[derive(Debug, Clone, Copy)]
pub enum Binaries<'a> {
    Dir(&'a Path),
    Image(&'a str),
}

impl Binaries<'_> {
    fn remedy(&self, major: u32) -> String {
        match self {
            Binaries::Dir(_) => format!("give --pg-bin with PostgreSQL {major} binaries"),
            Binaries::Image(_) => format!("give --image with a PostgreSQL {major} image"),
        }
    }
}

impl fmt::Display for Binaries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Binaries::Dir(dir) => write!(f, "`{}`", dir.display()),
            Binaries::Image(image) => write!(f, "image `{image}`"),
        }
    }
}

/// The major in `postgres --version` output: "postgres (PostgreSQL) 15.10 (Debian ...)" is 15,
/// "postgres (PostgreSQL) 18beta1" is 18, "... 9.6.24" is 9.
pub fn major_of_version_output(text: &str) -> Option<u32> {
    let version = text
        .split("(PostgreSQL)")
        .nth(1)?
        .split_whitespace()
        .next()?;
    leading_number(version)
}

/// The major in a data directory's PG_VERSION file ("15\n").
pub fn major_of_pg_version(text: &str) -> Option<u32> {
    leading_number(text.trim())
}

fn leading_number(text: &str) -> Option<u32> {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Refuses to start `node` whose data (PG_VERSION's text, `None` when it has none yet) is of
/// another major than the binaries (`binaries` says where they are, for the message).
pub fn check(
    node: &str,
    pg_version: Option<&str>,
    binaries: Binaries<'_>,
    binaries_major: u32,
) -> Result<(), RuntimeError> {
    let Some(text) = pg_version else {
        return Ok(());
    };
    match major_of_pg_version(text) {
        Some(data_major) if data_major == binaries_major => Ok(()),
        Some(data_major) => Err(RuntimeError::VersionMismatch {
            node: node.to_owned(),
            data_major,
            binaries: binaries.to_string(),
            binaries_major,
            remedy: binaries.remedy(data_major),
        }),
        None => Err(RuntimeError::UnknownMajor {
            binaries: format!("the data of `{node}`"),
            reason: format!("its PG_VERSION says `{}`", text.trim()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors_from_version_output_and_pg_version() {
        let debian = "postgres (PostgreSQL) 15.10 (Debian 15.10-1.pgdg120+1)\n";
        assert_eq!(major_of_version_output(debian), Some(15));
        assert_eq!(
            major_of_version_output("postgres (PostgreSQL) 18beta1"),
            Some(18)
        );
        assert_eq!(
            major_of_version_output("postgres (PostgreSQL) 9.6.24"),
            Some(9)
        );
        assert_eq!(major_of_version_output("something else"), None);
        assert_eq!(major_of_pg_version("17\n"), Some(17));
        assert_eq!(major_of_pg_version(""), None);
    }

    #[test]
    fn other_major_data_is_refused_with_the_way_out() {
        let dir = Binaries::Dir(Path::new("/usr/lib/postgresql/15/bin"));
        assert!(check("pg_master", None, dir, 15).is_ok());
        assert!(check("pg_master", Some("15\n"), dir, 15).is_ok());
        let error = check("pg_master", Some("18\n"), dir, 15).unwrap_err();
        assert_eq!(
            error.to_string(),
            "`pg_master` holds PostgreSQL 18 data and the binaries in `/usr/lib/postgresql/15/bin` are 15: \
             give --pg-bin with PostgreSQL 18 binaries"
        );
        let image = Binaries::Image("pgrepl-local/postgres:15");
        let error = check("pg_slave", Some("16"), image, 15)
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(
                "image `pgrepl-local/postgres:15` are 15: give --image with a PostgreSQL 16 image"
            ),
            "{error}"
        );
        assert!(matches!(
            check("pg_master", Some("junk"), dir, 15),
            Err(RuntimeError::UnknownMajor { .. })
        ));
    }
}
