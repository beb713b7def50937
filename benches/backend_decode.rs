//! Decoding what a walsender sends: frames split off the read buffer by `proto::backend::parse`,
//! then the XLogData inside each CopyData by `WalSenderMessage::parse`. The WAL path runs both
//! for every message, so together they bound how fast `receivewal` can consume a stream.
//!
//!     cargo bench --bench backend_decode

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgrepl::proto::backend::{self, BackendMessage};
use pgrepl::proto::replication::WalSenderMessage;

/// One CopyData frame around an XLogData of `wal_bytes` (the server sends up to 128 kB).
fn xlogdata_frame(out: &mut BytesMut, start: u64, wal_bytes: usize) {
    out.put_u8(b'd');
    out.put_u32((4 + 25 + wal_bytes) as u32);
    out.put_u8(b'w');
    out.put_u64(start);
    out.put_u64(start + wal_bytes as u64);
    out.put_i64(0);
    out.put_bytes(0xA5, wal_bytes);
}

/// 16 MB of WAL (one segment) in frames of `wal_bytes`.
fn stream(wal_bytes: usize) -> Bytes {
    let mut buf = BytesMut::new();
    let mut start = 0;
    while start < 16 << 20 {
        xlogdata_frame(&mut buf, start, wal_bytes);
        start += wal_bytes as u64;
    }
    buf.freeze()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode XLogData");
    // 128 kB is what a busy walsender sends; 8 kB is a trickle of single pages.
    for wal_bytes in [128 * 1024, 8 * 1024] {
        let input = stream(wal_bytes);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(format!("{} kB frames", wal_bytes / 1024), |b| {
            b.iter_batched(
                || BytesMut::from(&input[..]),
                |mut buf| {
                    let mut wal = 0;
                    while let Some(message) = backend::parse(&mut buf).expect("valid frames") {
                        let BackendMessage::CopyData(payload) = message else {
                            unreachable!("only CopyData was encoded")
                        };
                        if let WalSenderMessage::XLogData(x) =
                            WalSenderMessage::parse(payload).expect("valid XLogData")
                        {
                            wal += x.data.len();
                        }
                    }
                    wal
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
