//! Per-file checksums as `backup_manifest` records them.
//!
//! The server computes the checksum over the file bytes exactly as sent; pgrepl computes the same
//! digest while it writes each file, so verification costs no second read of the data.

use std::fmt;
use std::str::FromStr;

use sha2::Digest;

/// A `MANIFEST_CHECKSUMS` algorithm, spelled as the server spells it in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChecksumAlgorithm {
    None,
    #[default]
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl ChecksumAlgorithm {
    /// The name used in `BASE_BACKUP (MANIFEST_CHECKSUMS '...')` and in the manifest's
    /// `Checksum-Algorithm` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Crc32c => "CRC32C",
            Self::Sha224 => "SHA224",
            Self::Sha256 => "SHA256",
            Self::Sha384 => "SHA384",
            Self::Sha512 => "SHA512",
        }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChecksumAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::None,
            Self::Crc32c,
            Self::Sha224,
            Self::Sha256,
            Self::Sha384,
            Self::Sha512,
        ]
        .into_iter()
        .find(|alg| alg.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown checksum algorithm `{s}`"))
    }
}

/// An incremental checksum over one file's bytes.
pub enum FileChecksum {
    None,
    Crc32c(u32),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl FileChecksum {
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::None => Self::None,
            ChecksumAlgorithm::Crc32c => Self::Crc32c(0),
            ChecksumAlgorithm::Sha224 => Self::Sha224(sha2::Sha224::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            ChecksumAlgorithm::Sha384 => Self::Sha384(sha2::Sha384::new()),
            ChecksumAlgorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::None => {}
            Self::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            Self::Sha224(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha384(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    /// Lower-case hex as the manifest writes it, or `None` for `ChecksumAlgorithm::None`.
    pub fn finish(self) -> Option<String> {
        match self {
            Self::None => None,
            // The server copies the CRC's four bytes in its native order (little-endian on every
            // platform PostgreSQL ships for today), not the conventional big-endian rendering.
            Self::Crc32c(crc) => Some(hex::encode(crc.to_le_bytes())),
            Self::Sha224(h) => Some(hex::encode(h.finalize())),
            Self::Sha256(h) => Some(hex::encode(h.finalize())),
            Self::Sha384(h) => Some(hex::encode(h.finalize())),
            Self::Sha512(h) => Some(hex::encode(h.finalize())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_rendered_in_native_byte_order() {
        // CRC-32C("123456789") = 0xE3069283; the manifest shows its little-endian bytes.
        let mut c = FileChecksum::new(ChecksumAlgorithm::Crc32c);
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.finish().as_deref(), Some("839206e3"));
    }

    #[test]
    fn sha256_matches_known_digest() {
        let mut c = FileChecksum::new(ChecksumAlgorithm::Sha256);
        c.update(b"abc");
        assert_eq!(
            c.finish().as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }

    #[test]
    fn algorithm_names_round_trip() {
        for name in ["NONE", "CRC32C", "sha224", "SHA256", "SHA384", "SHA512"] {
            let alg: ChecksumAlgorithm = name.parse().unwrap();
            assert!(alg.as_str().eq_ignore_ascii_case(name));
        }
        assert!("MD5".parse::<ChecksumAlgorithm>().is_err());
    }
}
