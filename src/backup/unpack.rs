use std::collections::HashMap; use std::io::Read; use std::path::PathBuf;
use super::checksum::ChecksumAlgorithm; use super::manifest::WrittenFile;
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct UnpackError;
pub struct ArchiveDestination { pub roots: Vec<PathBuf>, pub manifest_prefix: String }
pub struct ExtractOptions { pub checksum: ChecksumAlgorithm, pub tablespace_links: HashMap<u32, Vec<PathBuf>>, pub owner: Option<(u32, u32)>, pub max_entry_size: u64 }
pub fn extract_archive<R: Read>(_r: R, _d: &ArchiveDestination, _o: &ExtractOptions, _b: &mut dyn FnMut(u64)) -> Result<Vec<WrittenFile>, UnpackError> { Err(UnpackError) }
