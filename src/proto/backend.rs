//! Server-to-client frames.
//!
//! [`parse`] peeks at the header with `postgres_protocol`'s `Header::parse`, enforces
//! [`MAX_MESSAGE_LEN`], decodes CopyBothResponse (`W`) itself and hands every other tag to
//! `Message::parse`, converting the result into pgrepl's own [`BackendMessage`].

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{Header, Message};

use super::server_error::ServerError;
use super::{ProtocolError, Reader, MAX_MESSAGE_LEN};

/// Tag of CopyBothResponse, which `postgres_protocol` does not know.
/// <https://www.postgresql.org/docs/current/protocol-message-formats.html>
pub const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// One message from the server, as a replication client meets them.
#[derive(Debug)]
pub enum BackendMessage {
    AuthenticationOk,
    AuthenticationCleartextPassword,
    AuthenticationMd5Password {
        salt: [u8; 4],
    },
    AuthenticationSasl {
        mechanisms: Vec<String>,
    },
    AuthenticationSaslContinue(Bytes),
    AuthenticationSaslFinal(Bytes),
    /// GSS, SSPI, Kerberos, SCM: named for the error message.
    AuthenticationUnsupported(&'static str),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData,
    ReadyForQuery,
    RowDescription {
        columns: Vec<String>,
    },
    DataRow {
        values: Vec<Option<Bytes>>,
    },
    CommandComplete {
        tag: String,
    },
    EmptyQueryResponse,
    ErrorResponse(ServerError),
    NoticeResponse(ServerError),
    CopyOutResponse,
    CopyInResponse,
    CopyBothResponse,
    CopyData(Bytes),
    CopyDone,
}

/// Splits one message off the front of `buf`. `Ok(None)`: the message is incomplete and nothing
/// was consumed.
pub fn parse(buf: &mut BytesMut) -> Result<Option<BackendMessage>, ProtocolError> {
    let header = match Header::parse(buf) {
        Ok(Some(header)) => header,
        Ok(None) => return Ok(None),
        Err(e) => return Err(ProtocolError::malformed("message header", e.to_string())),
    };
    // The length counts itself but not the tag byte.
    let total = header.len() as usize + 1;
    if total > MAX_MESSAGE_LEN {
        return Err(ProtocolError::TooLong(total));
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if header.tag() == COPY_BOTH_RESPONSE_TAG {
        let frame = buf.split_to(total);
        let mut body = Reader::new("CopyBothResponse", &frame[5..]);
        let _overall_format = body.u8()?;
        let columns = body.i16()?;
        for _ in 0..columns {
            body.i16()?;
        }
        body.finish()?;
        return Ok(Some(BackendMessage::CopyBothResponse));
    }
    let tag = header.tag();
    let message = Message::parse(buf)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput if e.to_string().contains("unknown message tag") => {
                ProtocolError::UnknownTag(tag)
            }
            _ => ProtocolError::malformed(tag_name(tag), e.to_string()),
        })?
        .expect("a complete frame is buffered");
    convert(message).map(Some)
}

fn convert(message: Message) -> Result<BackendMessage, ProtocolError> {
    let malformed =
        |what: &'static str| move |e: std::io::Error| ProtocolError::malformed(what, e.to_string());
    Ok(match message {
        Message::AuthenticationOk => BackendMessage::AuthenticationOk,
        Message::AuthenticationCleartextPassword => BackendMessage::AuthenticationCleartextPassword,
        Message::AuthenticationMd5Password(body) => {
            BackendMessage::AuthenticationMd5Password { salt: body.salt() }
        }
        Message::AuthenticationSasl(body) => BackendMessage::AuthenticationSasl {
            mechanisms: body
                .mechanisms()
                .map(|m| Ok(m.to_owned()))
                .collect()
                .map_err(malformed("AuthenticationSASL"))?,
        },
        Message::AuthenticationSaslContinue(body) => {
            BackendMessage::AuthenticationSaslContinue(Bytes::copy_from_slice(body.data()))
        }
        Message::AuthenticationSaslFinal(body) => {
            BackendMessage::AuthenticationSaslFinal(Bytes::copy_from_slice(body.data()))
        }
        Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
            BackendMessage::AuthenticationUnsupported("GSSAPI")
        }
        Message::AuthenticationSspi => BackendMessage::AuthenticationUnsupported("SSPI"),
        Message::AuthenticationKerberosV5 => {
            BackendMessage::AuthenticationUnsupported("Kerberos V5")
        }
        Message::AuthenticationScmCredential => {
            BackendMessage::AuthenticationUnsupported("SCM credentials")
        }
        Message::ParameterStatus(body) => BackendMessage::ParameterStatus {
            name: body
                .name()
                .map_err(malformed("ParameterStatus"))?
                .to_owned(),
            value: body
                .value()
                .map_err(malformed("ParameterStatus"))?
                .to_owned(),
        },
        Message::BackendKeyData(_) => BackendMessage::BackendKeyData,
        Message::ReadyForQuery(_) => BackendMessage::ReadyForQuery,
        Message::RowDescription(body) => BackendMessage::RowDescription {
            columns: body
                .fields()
                .map(|f| Ok(f.name().to_owned()))
                .collect()
                .map_err(malformed("RowDescription"))?,
        },
        Message::DataRow(body) => {
            let storage = body.buffer_bytes().clone();
            let values = body
                .ranges()
                .map(|r| Ok(r.map(|r| storage.slice(r))))
                .collect()
                .map_err(malformed("DataRow"))?;
            BackendMessage::DataRow { values }
        }
        Message::CommandComplete(body) => BackendMessage::CommandComplete {
            tag: body.tag().map_err(malformed("CommandComplete"))?.to_owned(),
        },
        Message::EmptyQueryResponse => BackendMessage::EmptyQueryResponse,
        Message::ErrorResponse(body) => {
            BackendMessage::ErrorResponse(ServerError::parse(body.fields())?)
        }
        Message::NoticeResponse(body) => {
            BackendMessage::NoticeResponse(ServerError::parse(body.fields())?)
        }
        Message::CopyOutResponse(_) => BackendMessage::CopyOutResponse,
        Message::CopyInResponse(_) => BackendMessage::CopyInResponse,
        Message::CopyData(body) => BackendMessage::CopyData(body.into_bytes()),
        Message::CopyDone => BackendMessage::CopyDone,
        // Extended-protocol and notification replies never come on a replication connection
        // that only sends simple queries.
        other => {
            return Err(ProtocolError::malformed(
                "backend message",
                format!(
                    "unexpected on a replication connection: {}",
                    message_name(&other)
                ),
            ))
        }
    })
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::NoData => "NoData",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        _ => "message",
    }
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        b'R' => "Authentication",
        b'S' => "ParameterStatus",
        b'K' => "BackendKeyData",
        b'Z' => "ReadyForQuery",
        b'T' => "RowDescription",
        b'D' => "DataRow",
        b'C' => "CommandComplete",
        b'E' => "ErrorResponse",
        b'N' => "NoticeResponse",
        b'H' => "CopyOutResponse",
        b'G' => "CopyInResponse",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        _ => "message",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes a hex fixture, ignoring whitespace.
    pub(crate) fn hex_bytes(hex: &str) -> Vec<u8> {
        let clean: String = hex.split_whitespace().collect();
        hex::decode(clean).expect("valid hex fixture")
    }

    /// Parses `bytes` fed in two pieces split at every offset; each split must give the same
    /// single message and consume everything.
    pub(crate) fn parse_at_every_split(bytes: &[u8]) -> Vec<BackendMessage> {
        (0..=bytes.len())
            .map(|split| {
                let mut buf = BytesMut::from(&bytes[..split]);
                let early = parse(&mut buf).unwrap();
                if split < bytes.len() {
                    assert!(
                        early.is_none(),
                        "complete message reported at split {split}"
                    );
                    assert_eq!(
                        buf.len(),
                        split,
                        "bytes consumed from an incomplete message"
                    );
                    buf.extend_from_slice(&bytes[split..]);
                    let message = parse(&mut buf).unwrap().expect("complete");
                    assert!(buf.is_empty());
                    message
                } else {
                    assert!(buf.is_empty());
                    early.expect("complete")
                }
            })
            .collect()
    }

    #[test]
    fn copy_both_response_is_decoded() {
        for message in parse_at_every_split(&hex_bytes("57 00000007 00 0000")) {
            assert!(matches!(message, BackendMessage::CopyBothResponse));
        }
    }

    #[test]
    fn copy_both_response_with_trailing_bytes_is_rejected() {
        let mut buf = BytesMut::from(&hex_bytes("57 00000008 00 0000 ff")[..]);
        assert!(matches!(
            parse(&mut buf),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn data_row_keeps_nulls_and_values() {
        // DataRow: 2 columns, "1" and NULL.
        let bytes = hex_bytes("44 0000000f 0002 00000001 31 ffffffff");
        for message in parse_at_every_split(&bytes) {
            let BackendMessage::DataRow { values } = message else {
                panic!("not a DataRow")
            };
            assert_eq!(values, vec![Some(Bytes::from_static(b"1")), None]);
        }
    }

    #[test]
    fn error_response_fields_are_typed() {
        let mut body = Vec::new();
        for (t, v) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28000"),
            (b'M', "no pg_hba.conf entry"),
        ] {
            body.push(t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut bytes = vec![b'E'];
        bytes.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        bytes.extend_from_slice(&body);
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(BackendMessage::ErrorResponse(e)) = parse(&mut buf).unwrap() else {
            panic!("not an ErrorResponse")
        };
        assert_eq!(e.code, "28000");
        assert!(e.is_fatal());
        assert_eq!(
            e.to_string(),
            "FATAL: no pg_hba.conf entry (SQLSTATE 28000)"
        );
    }

    #[test]
    fn lying_lengths_are_errors_not_allocations() {
        let mut buf = BytesMut::from(&hex_bytes("64 7fffffff 00")[..]);
        assert!(matches!(parse(&mut buf), Err(ProtocolError::TooLong(_))));
        assert!(buf.capacity() < 1024 * 1024);
        let mut buf = BytesMut::from(&hex_bytes("64 00000002")[..]);
        assert!(parse(&mut buf).is_err());
    }

    #[test]
    fn unknown_tags_are_named() {
        let mut buf = BytesMut::from(&hex_bytes("79 00000004")[..]);
        let err = parse(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "unknown message tag `y`");
    }
}
