//! The BASE_BACKUP (PostgreSQL 15+) CopyData demultiplexer: `BackupStreamMessage::parse` on one
//! payload. A new archive's name must never be usable as a path outside the target.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgrepl::proto::base_backup::BackupStreamMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(BackupStreamMessage::NewArchive { name, .. }) =
        BackupStreamMessage::parse(Bytes::copy_from_slice(data))
    {
        assert!(!name.is_empty() && !name.contains('/') && !name.contains('\\'));
        assert!(!name.starts_with('.'), "{name:?}");
    }
});
