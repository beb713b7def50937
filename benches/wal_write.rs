//! Writing streamed WAL into segment files (`SegmentWriter`), in the chunk size a walsender
//! sends, into a tmpfs directory: the cost of pgrepl's own path (open, preallocate, pwrite,
//! rename), not of the disk.
//!
//!     cargo bench --bench wal_write

use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgrepl::replication::wal_sink::{SegmentNaming, SegmentWriter};
use pgrepl::Lsn;

const SEGMENT: u64 = 16 << 20;
const SEGMENTS: u64 = 4;

fn write(c: &mut Criterion) {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    let chunk = vec![0x3Cu8; 128 * 1024];
    let mut group = c.benchmark_group("WAL segment writing (tmpfs)");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(SEGMENT * SEGMENTS));
    for (name, naming, dirs) in [
        ("archive .partial then rename", SegmentNaming::Archive, 1),
        ("standby, 2 pg_wal dirs", SegmentNaming::Standby, 2),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir_in(&base).expect("temp dir");
                    let targets: Vec<_> = (0..dirs)
                        .map(|i| {
                            let d = dir.path().join(format!("w{i}"));
                            std::fs::create_dir(&d).expect("dir");
                            d
                        })
                        .collect();
                    (dir, targets)
                },
                |(dir, targets)| {
                    let mut writer =
                        SegmentWriter::new(targets, SEGMENT, naming, true).expect("writer");
                    let mut position = 0;
                    while position < SEGMENT * SEGMENTS {
                        writer
                            .write(pgrepl::ids::TimelineId::new(1), Lsn::new(position), &chunk)
                            .expect("write");
                        position += chunk.len() as u64;
                    }
                    writer.finish().expect("finish");
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, write);
criterion_main!(benches);
