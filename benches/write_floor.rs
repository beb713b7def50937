//! The write floor of a base backup on this machine: the fastest way to make a given tree of
//! directories and file sizes exist durably, with nothing to receive, parse or check. No client
//! of a backup can beat it, whatever its protocol; `benches/basebackup.py` runs it beside the
//! tools as their limit.
//!
//!     cargo bench --bench write_floor -- SHAPE DEST [--threads N]
//!
//! SHAPE lists the tree, parents first: `d <relative dir>` and `f <size> <relative file>` lines
//! (`harness.write_shape`). Directories are made on one thread; the files are spread over N
//! threads (default 4: on 2 cores, more threads keep the disk queue full while others copy),
//! each writing zeroes from memory in 1 MiB writes and starting writeback every 8 MiB, as a
//! backup client would; then one `syncfs`. Prints the seconds from the first directory to the
//! end of the sync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

const CHUNK: usize = 1 << 20;
const WRITEBACK_EVERY: u64 = 8 << 20;

fn main() {
    if let Err(e) = run() {
        eprintln!("write_floor: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    // `cargo bench` adds `--bench`; anything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (threads, rest) = match args.iter().position(|a| a == "--threads") {
        Some(i) => {
            let n = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(0);
            let rest = [&args[..i], &args[(i + 2).min(args.len())..]].concat();
            (n, rest)
        }
        None => (4, args),
    };
    let [shape, dest] = rest.as_slice() else {
        return Err(io::Error::other(
            "usage: write_floor SHAPE DEST [--threads N] (SHAPE: `d DIR` and `f SIZE FILE` lines)",
        ));
    };
    if threads == 0 {
        return Err(io::Error::other("--threads needs a positive number"));
    }
    let (dirs, files) = read_shape(Path::new(shape))?;
    let dest = PathBuf::from(dest);

    let start = Instant::now();
    fs::DirBuilder::new().mode(0o700).create(&dest)?;
    for dir in &dirs {
        fs::DirBuilder::new().mode(0o700).create(dest.join(dir))?;
    }
    let zeroes = vec![0u8; CHUNK];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (files, dest, zeroes) = (&files, &dest, &zeroes);
                scope.spawn(move || -> io::Result<()> {
                    for (size, path) in files.iter().skip(t).step_by(threads) {
                        write_file(&dest.join(path), *size, zeroes)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a writer panicked"))
    })?;
    let root = File::open(&dest)?;
    // SAFETY: syncfs on a descriptor this function owns.
    if unsafe { libc::syncfs(root.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    println!("{:.3}", start.elapsed().as_secs_f64());
    Ok(())
}

fn write_file(path: &Path, size: u64, zeroes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let mut written = 0u64;
    while written < size {
        let n = (size - written).min(CHUNK as u64) as usize;
        file.write_all(&zeroes[..n])?;
        written += n as u64;
        if written.is_multiple_of(WRITEBACK_EVERY) {
            // SAFETY: a range of a descriptor this function owns; SYNC_FILE_RANGE_WRITE only
            // starts writeback.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    (written - WRITEBACK_EVERY) as i64,
                    WRITEBACK_EVERY as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
    }
    Ok(())
}

type Shape = (Vec<String>, Vec<(u64, String)>);

fn read_shape(path: &Path) -> io::Result<Shape> {
    let bad =
        |line: &str| io::Error::other(format!("`{}`: not a shape line: {line}", path.display()));
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for line in io::BufReader::new(File::open(path)?).lines() {
        let line = line?;
        match line.split_once(' ') {
            Some(("d", dir)) => dirs.push(dir.to_owned()),
            Some(("f", rest)) => {
                let (size, file) = rest.split_once(' ').ok_or_else(|| bad(&line))?;
                files.push((size.parse().map_err(|_| bad(&line))?, file.to_owned()));
            }
            _ => return Err(bad(&line)),
        }
    }
    Ok((dirs, files))
}
