//! The BASE_BACKUP path after the socket: the demultiplexer (`BackupStreamMessage::parse` on the
//! 15+ typed CopyData payloads) and tar extraction into a tmpfs directory
//! (`backup::unpack::extract_archive`, through its public API only), so the disk is not what
//! is measured.
//!
//!     cargo bench --bench backup_stream

use std::io::Cursor;
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgrepl::backup::unpack::{extract_archive, ArchiveDestination, ExtractOptions, ReadChunks};
use pgrepl::proto::base_backup::BackupStreamMessage;

/// A data directory's shape in miniature: relation files of 1 MB and some small ones.
fn archive() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    // The server sends every directory before its contents.
    for dir in ["base", "base/5"] {
        let mut header = tar::Header::new_ustar();
        header.set_size(0);
        header.set_mode(0o700);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_cksum();
        builder
            .append_data(&mut header, dir, std::io::empty())
            .expect("in-memory tar");
    }
    let mut add = |path: &str, size: usize| {
        let mut header = tar::Header::new_ustar();
        header.set_size(size as u64);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder
            .append_data(&mut header, path, &vec![0x5Au8; size][..])
            .expect("in-memory tar");
    };
    add("PG_VERSION", 3);
    for i in 0..48 {
        add(&format!("base/5/{}", 16384 + i), 1 << 20);
    }
    for i in 0..200 {
        add(&format!("base/5/{}", 20000 + i), 8192);
    }
    builder.into_inner().expect("in-memory tar")
}

fn demux(c: &mut Criterion) {
    // What the server sends: `d` payloads of up to 32 kB (its tar buffer size).
    let tar = archive();
    let payloads: Vec<Bytes> = tar
        .chunks(32 * 1024)
        .map(|chunk| {
            let mut payload = BytesMut::with_capacity(chunk.len() + 1);
            payload.put_u8(b'd');
            payload.put_slice(chunk);
            payload.freeze()
        })
        .collect();
    let mut group = c.benchmark_group("BASE_BACKUP stream");
    group.throughput(Throughput::Bytes(tar.len() as u64));
    group.bench_function("demux 32 kB data payloads", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for payload in &payloads {
                if let BackupStreamMessage::Data(data) =
                    BackupStreamMessage::parse(payload.clone()).expect("valid payload")
                {
                    bytes += data.len();
                }
            }
            bytes
        })
    });
    group.finish();
}

fn extract(c: &mut Criterion) {
    let tar = archive();
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    let options = ExtractOptions {
        // Nothing to write back on tmpfs; the checksum stays on, as in a real backup.
        sync: false,
        ..ExtractOptions::default()
    };
    let mut group = c.benchmark_group("tar extraction (tmpfs)");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(tar.len() as u64));
    for targets in [1, 2] {
        group.bench_function(format!("{targets} target(s)"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir_in(&base).expect("temp dir");
                    let roots = (0..targets)
                        .map(|i| {
                            let root = dir.path().join(format!("t{i}"));
                            std::fs::create_dir(&root).expect("target dir");
                            root
                        })
                        .collect();
                    let dest = ArchiveDestination {
                        roots,
                        manifest_prefix: String::new(),
                    };
                    (dir, dest)
                },
                |(dir, dest)| {
                    let written = extract_archive(
                        ReadChunks::new(Cursor::new(&tar[..])),
                        &dest,
                        &options,
                        &mut |_| {},
                    )
                    .expect("extract");
                    // Removing the files is part of the setup's cost, not the measured one.
                    (dir, written.len())
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, demux, extract);
criterion_main!(benches);
