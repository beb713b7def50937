//! The pure wire codec: bytes in, typed messages out. Nothing here touches a socket or a clock.
//!
//! postgres-protocol covers the frontend serializers, SCRAM and most backend bodies; it has no
//! CopyBothResponse (`W`, rust-postgres issue #116), so [`backend`] peeks at each frame header and
//! decodes `W` itself before delegating. Everything inside CopyData — the walsender's
//! [`replication`] messages and the typed [`base_backup`] stream of PostgreSQL 15+ — is ours.
//!
//! Neighbours: `conn` moves these messages over sockets; `replication` and `backup` interpret them.

pub mod backend;
pub mod base_backup;
pub mod command;
pub mod replication;
pub mod server_error;

/// A message a server sent that does not follow the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed `{message}` message: {reason}")]
    Malformed {
        message: &'static str,
        reason: String,
    },
    #[error("unknown message tag `{}`", char::from(*.0))]
    UnknownTag(u8),
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLong(usize),
}

impl ProtocolError {
    pub(crate) fn malformed(message: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            message,
            reason: reason.into(),
        }
    }
}

/// Largest frame pgrepl accepts. The biggest legitimate frames are XLogData (at most 16 WAL
/// pages, 512 KiB with 32 KiB pages) and BASE_BACKUP chunks; the cap keeps a lying length field
/// from making us buffer gigabytes.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;

/// A cursor over a message body that fails instead of panicking on short input.
pub(crate) struct Reader<'a> {
    message: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(message: &'static str, buf: &'a [u8]) -> Self {
        Self { message, buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::malformed(
                self.message,
                format!("needs {n} more bytes, has {}", self.buf.len()),
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A NUL-terminated string.
    pub(crate) fn cstr(&mut self) -> Result<String, ProtocolError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or_else(|| {
            ProtocolError::malformed(self.message, "string is not NUL-terminated")
        })?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// Framing is strict: bytes left over after a fixed layout mean we misread the message.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::malformed(
                self.message,
                format!("{} unexpected trailing bytes", self.buf.len()),
            ))
        }
    }
}
