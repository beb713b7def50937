//! `[tls]` with the user's own CA (`ca_cert`, and `ca_key` for `up` to sign with) and node
//! certificates (`[tls.nodes.NAME]`): copied to where `up`'s own would be, each node's checked
//! first (signed by the CA, and its key the certificate's), so nothing after this tells the two
//! apart.

use std::path::Path;

use rcgen::PublicKeyData;

use super::spec::{NodeTlsFiles, TlsSpec};
use super::tls::{ca_dir, create_owned_dir, read, write_if_changed, Leaf, TlsError};

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
    create_owned_dir(&dir, None)?;
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let changed = write_if_changed(&ca_crt, &pem, 0o644, None)?;
    match &spec.ca_key {
        Some(key) => {
            let text = key_of(&first, cert, key)?;
            write_if_changed(&ca_key, &text, 0o600, None)?;
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
    let cert_pem = read(&files.cert)?;
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
    let key_pem = key_of(&cert, &files.cert, &files.key)?;
    create_owned_dir(&leaf.dir, owner)?;
    write_if_changed(&leaf.dir.join("ca.crt"), ca_pem, 0o644, owner)?;
    let cert_changed = write_if_changed(&leaf.cert(), &cert_pem, 0o644, owner)?;
    let key_changed = write_if_changed(&leaf.key(), &key_pem, 0o600, owner)?;
    Ok(cert_changed || key_changed)
}

/// The PEM text of `key_path`, once it is known to be the key of `cert` (from `cert_path`).
fn key_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<String, TlsError> {
    let text = read(key_path)?;
    let pair =
        rcgen::KeyPair::from_pem(&text).map_err(|_| TlsError::Unreadable(key_path.to_owned()))?;
    if pair.subject_public_key_info() != cert.public_key().raw {
        return Err(TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        });
    }
    Ok(text)
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
