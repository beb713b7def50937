//! CopyBoth payloads of START_REPLICATION: what the walsender sends ([`WalSenderMessage`]) and
//! what a standby answers ([`StandbyStatusUpdate`]).
//! <https://www.postgresql.org/docs/current/protocol-replication.html>

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use super::{ProtocolError, Reader};
use crate::lsn::Lsn;

/// XLogData: WAL bytes starting at `wal_start`.
pub const XLOG_DATA_TAG: u8 = b'w';
/// Primary keepalive, possibly asking for an immediate reply.
pub const PRIMARY_KEEPALIVE_TAG: u8 = b'k';
/// Standby status update: write/flush/apply positions.
pub const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';

/// Microseconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A server timestamp: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    pub fn from_system_time(time: SystemTime) -> Self {
        let unix_micros = match time.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
        };
        PgTimestamp(unix_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS))
    }

    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// `None` when the value is outside what `SystemTime` can hold.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let unix_micros = self.0.checked_add(PG_EPOCH_OFFSET_MICROS)?;
        if unix_micros >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_micros(unix_micros as u64))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_micros(unix_micros.unsigned_abs()))
        }
    }
}

/// WAL sent by the walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// Position of the first byte of `data`.
    pub wal_start: Lsn,
    /// The server's send horizon when it sent this message.
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    pub data: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    /// The server wants a status update now (it is about to time us out, or shutting down).
    pub reply_requested: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalSenderMessage {
    XLogData(XLogData),
    PrimaryKeepalive(PrimaryKeepalive),
}

impl WalSenderMessage {
    /// Decodes one CopyData payload. `payload` is shared, so WAL bytes are not copied.
    pub fn parse(payload: Bytes) -> Result<Self, ProtocolError> {
        match payload.first() {
            Some(&XLOG_DATA_TAG) => {
                let mut r = Reader::new("XLogData", &payload[1..]);
                let wal_start = Lsn::new(r.u64()?);
                let wal_end = Lsn::new(r.u64()?);
                let send_time = PgTimestamp(r.i64()?);
                Ok(Self::XLogData(XLogData {
                    wal_start,
                    wal_end,
                    send_time,
                    data: payload.slice(25..),
                }))
            }
            Some(&PRIMARY_KEEPALIVE_TAG) => {
                let mut r = Reader::new("PrimaryKeepalive", &payload[1..]);
                let keepalive = PrimaryKeepalive {
                    wal_end: Lsn::new(r.u64()?),
                    send_time: PgTimestamp(r.i64()?),
                    reply_requested: r.u8()? != 0,
                };
                r.finish()?;
                Ok(Self::PrimaryKeepalive(keepalive))
            }
            Some(&other) => Err(ProtocolError::malformed(
                "walsender CopyData",
                format!("unknown message type `{}`", char::from(other)),
            )),
            None => Err(ProtocolError::malformed(
                "walsender CopyData",
                "empty payload",
            )),
        }
    }
}

/// The standby's report of how far it has written, flushed and applied WAL. Positions are "last
/// byte + 1"; [`Lsn::INVALID`] means "not reported" (a flush of 0 keeps a client out of sync rep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
    pub client_time: PgTimestamp,
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Appends the CopyData payload (34 bytes, without the CopyData frame).
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(STANDBY_STATUS_UPDATE_TAG);
        buf.put_u64(self.write.as_u64());
        buf.put_u64(self.flush.as_u64());
        buf.put_u64(self.apply.as_u64());
        buf.put_i64(self.client_time.0);
        buf.put_u8(u8::from(self.reply_requested));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::backend::tests::hex_bytes;

    #[test]
    fn xlog_data_header_is_25_bytes() {
        let payload = Bytes::from(hex_bytes(
            "77 0000000001000000 0000000001000010 0002b1c5a4e2f3d1 deadbeef",
        ));
        let WalSenderMessage::XLogData(x) = WalSenderMessage::parse(payload).unwrap() else {
            panic!("not XLogData")
        };
        assert_eq!(x.wal_start, "0/1000000".parse().unwrap());
        assert_eq!(x.wal_end, "0/1000010".parse().unwrap());
        assert_eq!(x.data.as_ref(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn keepalive_reply_flag() {
        let payload = Bytes::from(hex_bytes("6b 0000000001000010 0002b1c5a4e2f3d1 01"));
        let WalSenderMessage::PrimaryKeepalive(k) = WalSenderMessage::parse(payload).unwrap()
        else {
            panic!("not a keepalive")
        };
        assert!(k.reply_requested);
        assert_eq!(k.wal_end, "0/1000010".parse().unwrap());
    }

    #[test]
    fn short_and_unknown_payloads_are_errors() {
        for bad in [
            "77 00",
            "6b 0000000001000010 0002b1c5a4e2f3d1",
            "6b 0000000001000010 0002b1c5a4e2f3d1 01 00",
            "73 00",
            "",
        ] {
            assert!(
                WalSenderMessage::parse(Bytes::from(hex_bytes(bad))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn status_update_layout() {
        let update = StandbyStatusUpdate {
            write: Lsn::new(0x0100_0010),
            flush: Lsn::new(0x0100_0000),
            apply: Lsn::INVALID,
            client_time: PgTimestamp(1),
            reply_requested: true,
        };
        let mut buf = BytesMut::new();
        update.encode(&mut buf);
        assert_eq!(
            buf.as_ref(),
            hex_bytes("72 0000000001000010 0000000001000000 0000000000000000 0000000000000001 01")
        );
    }

    #[test]
    fn timestamps_use_the_2000_epoch() {
        let t = PgTimestamp::from_system_time(UNIX_EPOCH + Duration::from_secs(946_684_800));
        assert_eq!(t, PgTimestamp(0));
        assert_eq!(
            PgTimestamp(1_000_000).to_system_time(),
            Some(UNIX_EPOCH + Duration::from_secs(946_684_801))
        );
        assert_eq!(PgTimestamp(i64::MAX).to_system_time(), None);
    }
}
