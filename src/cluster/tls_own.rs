//! `[tls]` with the user's own CA (`ca_cert`, and `ca_key` for `up` to sign with) and node
//! certificates (`[tls.nodes.NAME]`): copied to where `up`'s own would be, each node's checked
//! first (signed by the CA, and its key the certificate's), so nothing after this tells the two
//! apart.

use std::path::Path;

use super::spec::{NodeTlsFiles, TlsSpec};
use super::tls::{ca_dir, read, write_file, Leaf, TlsError};

/// Installs the user's CA in `<state_dir>/tls/` when `[tls]` names one. Returns whether it
/// replaced another (certificates `up` made with the old one must be made again). Without
/// `ca_key`, a key left there by an earlier CA is removed: it must not sign for this one.
pub(crate) fn install_ca(state_dir: &Path, spec: &TlsSpec) -> Result<bool, TlsError> {
    let Some(cert) = &spec.ca_cert else {
        return Ok(false);
    };
    let pem = read(cert)?;
    let first = der(&pem, cert)?;
    let first = parse(&first);
    if !first.is_ca() {
        return Err(TlsError::NotCa(cert.clone()));
    }
    let dir = ca_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Io {
        what: format!("create `{}`", dir.display()),
        source,
    })?;
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let changed = std::fs::read_to_string(&ca_crt).ok().as_deref() != Some(pem.as_str());
    if changed {
        write_file(&ca_crt, pem.as_bytes(), 0o644, None)?;
    }
    match &spec.ca_key {
        Some(key) => {
            let text = read(key)?;
            let pair =
                rcgen::KeyPair::from_pem(&text).map_err(|_| TlsError::Unreadable(key.clone()))?;
            if pair.public_key_der() != first.public_key().raw {
                return Err(TlsError::KeyMismatch {
                    cert: cert.clone(),
                    key: key.clone(),
                });
            }
            if std::fs::read_to_string(&ca_key).ok().as_deref() != Some(text.as_str()) {
                write_file(&ca_key, text.as_bytes(), 0o600, None)?;
            }
        }
        None => match std::fs::remove_file(&ca_key) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TlsError::Io {
                    what: format!("remove `{}`", ca_key.display()),
                    source,
                })
            }
        },
    }
    Ok(changed)
}

/// Puts the user's certificate and key for `leaf`'s node in its directory, with the CA's copy,
/// once they are checked against the CA in `ca_pem`; whether the certificate or key changed.
pub(crate) fn install_node(
    leaf: &Leaf,
    files: &NodeTlsFiles,
    ca_pem: &str,
    owner: Option<(u32, u32)>,
) -> Result<bool, TlsError> {
    let (cert_pem, key_pem) = (read(&files.cert)?, read(&files.key)?);
    let (cert, ca) = (
        der(&cert_pem, &files.cert)?,
        der(ca_pem, Path::new("ca.crt"))?,
    );
    let (cert, ca) = (parse(&cert), parse(&ca));
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(TlsError::NotSigned {
            node: leaf.name.clone(),
            cert: files.cert.clone(),
        });
    }
    let pair =
        rcgen::KeyPair::from_pem(&key_pem).map_err(|_| TlsError::Unreadable(files.key.clone()))?;
    if pair.public_key_der() != cert.public_key().raw {
        return Err(TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        });
    }
    std::fs::create_dir_all(&leaf.dir).map_err(|source| TlsError::Io {
        what: format!("create `{}`", leaf.dir.display()),
        source,
    })?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&leaf.dir, Some(uid), Some(gid)).map_err(|source| {
            TlsError::Io {
                what: format!("chown `{}`", leaf.dir.display()),
                source,
            }
        })?;
    }
    let mut changed = false;
    for (path, text, mode) in [
        (leaf.dir.join("ca.crt"), ca_pem, 0o644),
        (leaf.cert(), cert_pem.as_str(), 0o644),
        (leaf.key(), key_pem.as_str(), 0o600),
    ] {
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            write_file(&path, text.as_bytes(), mode, owner)?;
            changed |= mode != 0o644 || path == leaf.cert();
        }
    }
    Ok(changed)
}

/// The DER of the first certificate in a PEM text, once it parses.
fn der(pem: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let unreadable = || TlsError::Unreadable(path.to_owned());
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| unreadable())?;
    pem.parse_x509().map_err(|_| unreadable())?;
    Ok(pem.contents)
}

fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der)
        .expect("parsed once already")
        .1
}
