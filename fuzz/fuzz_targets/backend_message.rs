//! The backend message decoder, as `Connection::read_message` drives it: `proto::backend::parse`
//! looped over a `BytesMut` that grows in arbitrary pieces.
//!
//! Checked beyond "no panic": `Ok(None)` consumes nothing, and feeding the same bytes in
//! pieces gives exactly the messages (and the error) that feeding them at once gives.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgrepl::proto::backend;

/// Every message `parse` yields from `stream` fed in pieces of the given sizes, as `Debug`
/// strings, and whether it stopped on an error.
fn decode(stream: &[u8], pieces: &[u8]) -> (Vec<String>, bool) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut sizes = pieces.iter().cycle();
    loop {
        let before = buf.len();
        match backend::parse(&mut buf) {
            Ok(Some(message)) => out.push(format!("{message:?}")),
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                if fed == stream.len() {
                    return (out, false);
                }
                let n = match sizes.next() {
                    Some(&n) => usize::from(n).max(1),
                    None => stream.len(),
                };
                let end = (fed + n).min(stream.len());
                buf.extend_from_slice(&stream[fed..end]);
                fed = end;
            }
            Err(_) => return (out, true),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte says how many of the following bytes are piece sizes.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (pieces, stream) = rest.split_at(n);
    let whole = decode(stream, &[]);
    let split = decode(stream, pieces);
    assert_eq!(whole, split, "pieces {pieces:?} change the result");
});
