//! SCRAM channel binding's `tls-server-end-point` data: the hash of the server certificate with
//! the hash function its signature algorithm names (RFC 5929), which `auth` sends.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::AlgorithmIdentifier;

/// The hash function of `tls-server-end-point` channel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl EndPointHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            EndPointHash::Sha224 => Sha224::digest(data).to_vec(),
            EndPointHash::Sha256 => Sha256::digest(data).to_vec(),
            EndPointHash::Sha384 => Sha384::digest(data).to_vec(),
            EndPointHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// `tls-server-end-point` data (RFC 5929 §4.1): the certificate's DER hashed with the hash of
/// its signature algorithm, SHA-256 instead of MD5 or SHA-1.
///
/// `None` when the signature has no separate hash (Ed25519, Ed448) or an unknown one. The server
/// cannot compute the value then either (PostgreSQL's `be_tls_get_certificate_hash` fails), so
/// SCRAM must go without channel binding; libpq instead fails the connection.
pub(super) fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(end_point_hash(&cert.signature_algorithm)?.digest(der))
}

pub(super) fn end_point_hash(algorithm: &AlgorithmIdentifier<'_>) -> Option<EndPointHash> {
    use EndPointHash::*;
    let oid = algorithm.algorithm.to_id_string();
    Some(match oid.as_str() {
        // RSASSA-PSS names its hash in the parameters, SHA-1 when absent (RFC 4055).
        "1.2.840.113549.1.1.10" => match SignatureAlgorithm::try_from(algorithm).ok()? {
            SignatureAlgorithm::RSASSA_PSS(params) => {
                digest_hash(&params.hash_algorithm_oid().to_id_string())?
            }
            _ => return None,
        },
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1, dsa-with-sha1, the old OIW sha1WithRSA.
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.10045.4.1"
        | "1.2.840.10040.4.3"
        | "1.3.14.3.2.29" => Sha256,
        // sha224WithRSA, ecdsa-with-SHA224, dsa-with-sha224.
        "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" | "2.16.840.1.101.3.4.3.1" => Sha224,
        // sha256WithRSA, ecdsa-with-SHA256, dsa-with-sha256.
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" | "2.16.840.1.101.3.4.3.2" => Sha256,
        // sha384WithRSA, ecdsa-with-SHA384, dsa-with-sha384.
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" | "2.16.840.1.101.3.4.3.3" => Sha384,
        // sha512WithRSA, ecdsa-with-SHA512, dsa-with-sha512.
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" | "2.16.840.1.101.3.4.3.4" => Sha512,
        _ => return None,
    })
}

/// A bare digest OID, as found in RSASSA-PSS parameters.
pub(super) fn digest_hash(oid: &str) -> Option<EndPointHash> {
    Some(match oid {
        // MD5, SHA-1: SHA-256 instead.
        "1.2.840.113549.2.5" | "1.3.14.3.2.26" => EndPointHash::Sha256,
        "2.16.840.1.101.3.4.2.4" => EndPointHash::Sha224,
        "2.16.840.1.101.3.4.2.1" => EndPointHash::Sha256,
        "2.16.840.1.101.3.4.2.2" => EndPointHash::Sha384,
        "2.16.840.1.101.3.4.2.3" => EndPointHash::Sha512,
        _ => return None,
    })
}
