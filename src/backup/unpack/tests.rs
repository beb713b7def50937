use super::*;
use std::os::unix::fs::MetadataExt;

// ---- fixtures -------------------------------------------------------------------------

/// A ustar header as the server writes it, with the name and link written as raw bytes so
/// hostile names get through (tar-rs' setters refuse `..`).
fn header(name: &[u8], kind: u8, size: u64, mode: u32, link: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn raw(mut self, h: &tar::Header, data: &[u8]) -> Self {
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.0.resize(self.0.len() + pad, 0);
        self
    }
    fn dir(self, name: &str, mode: u32) -> Self {
        self.raw(
            &header(format!("{name}/").as_bytes(), b'5', 0, mode, b""),
            b"",
        )
    }
    fn file(self, name: &str, data: &[u8], mode: u32) -> Self {
        self.raw(
            &header(name.as_bytes(), b'0', data.len() as u64, mode, b""),
            data,
        )
    }
    fn link(self, name: &str, target: &str) -> Self {
        let h = header(
            format!("{name}/").as_bytes(),
            b'2',
            0,
            0o777,
            target.as_bytes(),
        );
        self.raw(&h, b"")
    }
    /// PG 15+ trailer: two zero blocks.
    fn end(mut self) -> Vec<u8> {
        self.0.resize(self.0.len() + 2 * BLOCK, 0);
        self.0
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Roughly what `base.tar` looks like (§3.4), without a trailer.
fn base_archive() -> Tar {
    Tar::default()
        .file("backup_label", b"START WAL LOCATION: 0/2000028\n", 0o600)
        .dir("./base", 0o700)
        .dir("base/1", 0o700)
        .file("base/1/1259", &data(8192 * 3 + 100, 1), 0o600)
        .file("base/1/1259_fsm", &data(513, 2), 0o640)
        .file("base/1/PG_VERSION", b"16\n", 0o600)
        .file("base/1/empty", b"", 0o600)
        .dir("group_dir", 0o750)
        .dir("pg_wal", 0o700)
        .dir("./pg_wal/archive_status", 0o700)
        .dir("global", 0o700)
        .file("global/pg_control", &data(8192, 3), 0o600)
}

fn expected_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("backup_label", b"START WAL LOCATION: 0/2000028\n".to_vec()),
        ("base/1/1259", data(8192 * 3 + 100, 1)),
        ("base/1/1259_fsm", data(513, 2)),
        ("base/1/PG_VERSION", b"16\n".to_vec()),
        ("base/1/empty", vec![]),
        ("global/pg_control", data(8192, 3)),
    ]
}

/// A scratch area: `top/` holds the roots, so "nothing outside the roots" means `top/` holds
/// nothing else.
struct Scratch {
    dir: tempfile::TempDir,
    roots: Vec<PathBuf>,
}

fn scratch(n: usize) -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let roots: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("t{i}"))).collect();
    for r in &roots {
        DirBuilder::new().mode(0o700).create(r).unwrap();
    }
    Scratch { dir, roots }
}

impl Scratch {
    fn dest(&self) -> ArchiveDestination {
        ArchiveDestination {
            roots: self.roots.clone(),
            manifest_prefix: String::new(),
        }
    }
    fn extract(&self, tar: &[u8]) -> Result<Vec<WrittenFile>, UnpackError> {
        extract_archive(
            ReadChunks::new(tar),
            &self.dest(),
            &ExtractOptions::default(),
            &mut |_| {},
        )
    }
    /// Only the roots (and whatever the test put there on purpose) exist beside them.
    fn assert_nothing_outside(&self, extra: &[&str]) {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want: Vec<String> = (0..self.roots.len()).map(|i| format!("t{i}")).collect();
        want.extend(extra.iter().map(|s| s.to_string()));
        want.sort();
        assert_eq!(names, want);
    }
}

/// (relative path, kind, mode, content or link target), sorted.
fn tree(root: &Path) -> Vec<(String, char, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, char, u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.push((rel, 'l', 0, t.as_os_str().as_bytes().to_vec()));
            } else if m.is_dir() {
                out.push((rel, 'd', mode, vec![]));
                walk(root, &p, out);
            } else {
                out.push((rel, 'f', mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = vec![];
    walk(root, root, &mut out);
    out.sort();
    out
}

fn summary(w: &[WrittenFile]) -> Vec<(String, u64, Option<String>)> {
    w.iter()
        .map(|f| (lossy(&f.path), f.size, f.checksum.clone()))
        .collect()
}

fn crc(bytes: &[u8]) -> Option<String> {
    let mut c = FileChecksum::new(ChecksumAlgorithm::Crc32c);
    c.update(bytes);
    c.finish()
}

/// Returns reads of 1..=7 bytes, cycling from where `step` starts.
struct Dribble<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.step += 1;
        let n = (self.step % 7 + 1).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The first read returns `split` bytes, later ones the rest.
struct SplitAt<'a> {
    data: &'a [u8],
    split: usize,
}

impl Read for SplitAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if self.split > 0 {
            self.split
        } else {
            self.data.len()
        }
        .min(buf.len())
        .min(self.data.len());
        self.split = self.split.saturating_sub(n);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

// ---- normal extraction -----------------------------------------------------------------

#[test]
fn extracts_into_one_root() {
    let s = scratch(1);
    let tar = base_archive().end();
    let mut progress = 0;
    let written = extract_archive(
        ReadChunks::new(&tar[..]),
        &s.dest(),
        &ExtractOptions::default(),
        &mut |n| progress += n,
    )
    .unwrap();

    let want: Vec<_> = expected_files()
        .into_iter()
        .map(|(p, d)| (p.to_string(), d.len() as u64, crc(&d)))
        .collect();
    assert_eq!(summary(&written), want);
    assert_eq!(progress, want.iter().map(|w| w.1).sum::<u64>());

    let root = &s.roots[0];
    for (p, d) in expected_files() {
        assert_eq!(fs::read(root.join(p)).unwrap(), d, "{p}");
    }
    let mode = |p: &str| fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("base/1/1259"), 0o600);
    assert_eq!(mode("base/1/1259_fsm"), 0o640);
    assert_eq!(mode("base"), 0o700);
    assert_eq!(mode("group_dir"), 0o750);
    assert!(root.join("pg_wal/archive_status").is_dir());
    assert_eq!(fs::metadata(root).unwrap().mode() & 0o7777, 0o700);
    s.assert_nothing_outside(&[]);
}

#[test]
fn two_roots_get_identical_trees() {
    let s = scratch(2);
    let tar = base_archive().end();
    let written = s.extract(&tar).unwrap();
    assert_eq!(written.len(), expected_files().len());
    let a = tree(&s.roots[0]);
    assert_eq!(a, tree(&s.roots[1]));

    let one = scratch(1);
    one.extract(&tar).unwrap();
    assert_eq!(a, tree(&one.roots[0]));
    s.assert_nothing_outside(&[]);
}

#[test]
fn large_files_are_written_back_on_the_way_and_come_out_whole() {
    // Past the writeback window, so data is waited for and dropped from the cache midway.
    let size = (WRITEBACK_WINDOW + 2 * WRITEBACK_STEP) as usize + 777;
    let content = data(size, 11);
    let s = scratch(2);
    let w = s
        .extract(&Tar::default().file("big", &content, 0o600).end())
        .unwrap();
    assert_eq!(
        summary(&w),
        [("big".to_string(), size as u64, crc(&content))]
    );
    for r in &s.roots {
        assert!(fs::read(r.join("big")).unwrap() == content);
    }
}

#[test]
fn a_failing_writer_fails_the_extraction_with_its_own_error() {
    let s = scratch(2);
    fs::write(s.roots[1].join("b"), b"in the way").unwrap();
    let mut tar = Tar::default().file("a", b"1", 0o600).file("b", b"2", 0o600);
    // More entries than one hand-over batch, so the parser is still going when it fails.
    for i in 0..HANDOFF_OPS {
        tar = tar.file(&format!("c{i}"), b"3", 0o600);
    }
    let err = s.extract(&tar.end()).expect_err("extraction should fail");
    let in_the_way = s.roots[1].join("b");
    assert!(
        matches!(&err, UnpackError::Duplicate { path, .. } if *path == in_the_way),
        "{err}"
    );
    assert_eq!(fs::read(s.roots[0].join("a")).unwrap(), b"1");
}

#[test]
fn sha256_checksums_are_recorded() {
    let s = scratch(1);
    let tar = Tar::default().file("abc", b"abc", 0o600).end();
    let opts = ExtractOptions {
        checksum: ChecksumAlgorithm::Sha256,
        ..ExtractOptions::default()
    };
    let w = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {}).unwrap();
    assert_eq!(
        w[0].checksum.as_deref(),
        Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    let opts = ExtractOptions {
        checksum: ChecksumAlgorithm::None,
        ..ExtractOptions::default()
    };
    let s = scratch(1);
    let w = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {}).unwrap();
    assert_eq!(w[0].checksum, None);
}

#[test]
fn tiny_reads_give_the_same_result() {
    let tar = base_archive().end();
    let reference = scratch(2);
    let want = summary(&reference.extract(&tar).unwrap());
    let want_tree = tree(&reference.roots[0]);
    for phase in 0..7 {
        let s = scratch(2);
        let reader = Dribble {
            data: &tar,
            step: phase,
        };
        let w = extract_archive(
            ReadChunks::new(reader),
            &s.dest(),
            &ExtractOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(summary(&w), want, "phase {phase}");
        assert_eq!(tree(&s.roots[0]), want_tree);
        assert_eq!(tree(&s.roots[1]), want_tree);
    }
}

#[test]
fn split_at_every_offset_gives_the_same_result() {
    let tar = Tar::default()
        .dir("d", 0o700)
        .file("d/a", &data(700, 4), 0o600)
        .file("d/b", b"xyz", 0o600)
        .end();
    let want = summary(&scratch(1).extract(&tar).unwrap());
    // One scratch directory for all runs: creating and removing thousands is slow on ext4.
    let top = tempfile::tempdir().unwrap();
    for split in 1..tar.len() {
        let root = top.path().join(split.to_string());
        fs::create_dir(&root).unwrap();
        let dest = ArchiveDestination {
            roots: vec![root.clone()],
            manifest_prefix: String::new(),
        };
        let reader = SplitAt { data: &tar, split };
        let w = extract_archive(
            ReadChunks::new(reader),
            &dest,
            &ExtractOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(summary(&w), want, "split {split}");
        assert_eq!(fs::read(root.join("d/a")).unwrap(), data(700, 4));
    }
}

#[test]
fn pg14_stream_without_trailer_is_accepted() {
    let s = scratch(1);
    let tar = base_archive().0;
    assert_eq!(s.extract(&tar).unwrap().len(), expected_files().len());
}

#[test]
fn extra_zero_padding_after_the_trailer_is_accepted() {
    let s = scratch(1);
    let mut tar = base_archive().end();
    tar.resize(tar.len() + 10_000, 0);
    assert!(s.extract(&tar).is_ok());
}

#[test]
fn trailing_garbage_after_the_zero_block_is_rejected() {
    let s = scratch(1);
    let mut tar = base_archive().end();
    let at = tar.len() as u64;
    tar.push(1);
    let err = s.extract(&tar).expect_err("extraction should fail");
    assert!(
        matches!(err, UnpackError::TrailingGarbage { offset } if offset == at),
        "{err}"
    );

    // A real entry after one zero block is garbage too: the archive ended.
    let s = scratch(1);
    let mut tar = Tar::default().file("a", b"1", 0o600).0;
    tar.resize(tar.len() + BLOCK, 0);
    let tar = Tar(tar).file("b", b"2", 0o600).end();
    assert!(matches!(
        s.extract(&tar),
        Err(UnpackError::TrailingGarbage { .. })
    ));
    assert!(!s.roots[0].join("b").exists());
}

#[test]
fn pre_existing_pg_wal_is_tolerated() {
    let s = scratch(2);
    for r in &s.roots {
        fs::create_dir_all(r.join("pg_wal/archive_status")).unwrap();
        fs::write(r.join("pg_wal/000000010000000000000002.partial"), b"wal").unwrap();
    }
    s.extract(&base_archive().end()).unwrap();
    for r in &s.roots {
        assert!(r.join("pg_wal/000000010000000000000002.partial").is_file());
        assert!(r.join("global/pg_control").is_file());
    }
}

#[test]
fn wal_files_in_the_archive_are_written() {
    let s = scratch(1);
    let tar = Tar::default()
        .dir("pg_wal", 0o700)
        .dir("./pg_wal/archive_status", 0o700)
        .file("pg_wal/000000010000000000000002", &data(4096, 9), 0o600)
        .file(
            "pg_wal/archive_status/000000010000000000000002.done",
            b"",
            0o600,
        )
        .end();
    let w = s.extract(&tar).unwrap();
    assert_eq!(
        lossy(&w[1].path),
        "pg_wal/archive_status/000000010000000000000002.done"
    );
}

#[test]
fn duplicate_entries_are_rejected() {
    let s = scratch(2);
    let tar = Tar::default()
        .file("a", b"first", 0o600)
        .file("a", b"second", 0o600)
        .end();
    let err = s.extract(&tar).expect_err("extraction should fail");
    assert!(matches!(err, UnpackError::Duplicate { .. }), "{err}");
    assert!(
        err.to_string().starts_with("tar entry `a` is a duplicate"),
        "{err}"
    );
    assert_eq!(fs::read(s.roots[0].join("a")).unwrap(), b"first");

    let s = scratch(1);
    let tar = Tar::default().dir("d", 0o700).file("d", b"x", 0o600).end();
    assert!(matches!(
        s.extract(&tar),
        Err(UnpackError::Duplicate { .. })
    ));

    let s = scratch(1);
    let tar = Tar::default().file("f", b"x", 0o600).dir("f", 0o700).end();
    let err = s.extract(&tar).expect_err("extraction should fail");
    assert!(matches!(err, UnpackError::NotADirectory { .. }), "{err}");
}

#[test]
fn a_pre_existing_symlink_is_never_followed() {
    let s = scratch(1);
    let outside = s.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.roots[0].join("d")).unwrap();
    std::os::unix::fs::symlink(outside.join("f"), s.roots[0].join("f")).unwrap();
    let tar = Tar::default().dir("d", 0o700).end();
    assert!(matches!(
        s.extract(&tar),
        Err(UnpackError::NotADirectory { .. })
    ));
    let tar = Tar::default().file("f", b"x", 0o600).end();
    assert!(matches!(
        s.extract(&tar),
        Err(UnpackError::Duplicate { .. })
    ));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

// ---- tablespaces ------------------------------------------------------------------------

fn ts_options(s: &Scratch) -> ExtractOptions {
    let targets = (0..s.roots.len())
        .map(|i| s.dir.path().join(format!("ts{i}")))
        .collect();
    ExtractOptions {
        tablespace_links: HashMap::from([(16384, targets)]),
        ..ExtractOptions::default()
    }
}

#[test]
fn tablespace_link_points_to_the_mapped_path() {
    let s = scratch(2);
    let opts = ts_options(&s);
    let tar = Tar::default()
        .dir("pg_tblspc", 0o700)
        .link("pg_tblspc/16384", "/srv/pg/ts1")
        .file("PG_VERSION", b"16\n", 0o600)
        .end();
    let w = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {}).unwrap();
    assert_eq!(summary(&w).len(), 1, "links are not recorded as files");
    for (i, r) in s.roots.iter().enumerate() {
        let target = fs::read_link(r.join("pg_tblspc/16384")).unwrap();
        assert_eq!(target, s.dir.path().join(format!("ts{i}")));
    }
}

#[test]
fn entries_under_a_created_link_are_rejected() {
    for tail in [
        Tar::default().file("pg_tblspc/16384/evil", b"x", 0o600),
        Tar::default().dir("pg_tblspc/16384/PG_16_202307071", 0o700),
        Tar::default().dir("pg_tblspc/16384", 0o700),
    ] {
        let s = scratch(1);
        let opts = ts_options(&s);
        fs::create_dir(s.dir.path().join("ts0")).unwrap();
        let mut tar = Tar::default()
            .dir("pg_tblspc", 0o700)
            .link("pg_tblspc/16384", "/srv/pg/ts1")
            .0;
        tar.extend_from_slice(&tail.end());
        let err = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {})
            .expect_err("extraction should fail");
        assert!(matches!(err, UnpackError::UnderSymlink { .. }), "{err}");
        assert_eq!(fs::read_dir(s.dir.path().join("ts0")).unwrap().count(), 0);
    }
}

#[test]
fn missing_tablespace_mapping_names_dash_t() {
    let s = scratch(1);
    let tar = Tar::default()
        .dir("pg_tblspc", 0o700)
        .link("pg_tblspc/99999", "/srv/pg/ts9")
        .end();
    let err = s.extract(&tar).expect_err("extraction should fail");
    assert_eq!(
        err.to_string(),
        "tablespace 99999 at `/srv/pg/ts9` has no mapping; give -T /srv/pg/ts9=NEWDIR"
    );
}

#[test]
fn mapping_with_the_wrong_number_of_targets_is_an_error() {
    let s = scratch(2);
    let mut opts = ts_options(&s);
    opts.tablespace_links.get_mut(&16384).unwrap().pop();
    let tar = Tar::default()
        .dir("pg_tblspc", 0o700)
        .link("pg_tblspc/16384", "/srv/pg/ts1")
        .end();
    let err = extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {})
        .expect_err("extraction should fail");
    assert!(matches!(
        err,
        UnpackError::MappingMismatch {
            got: 1,
            want: 2,
            ..
        }
    ));
}

#[test]
fn tablespace_archive_paths_get_the_prefix_and_links_are_refused() {
    let s = scratch(2);
    let dest = ArchiveDestination {
        roots: s.roots.clone(),
        manifest_prefix: "pg_tblspc/16384/".into(),
    };
    let tar = Tar::default()
        .dir("PG_16_202307071", 0o700)
        .dir("PG_16_202307071/5", 0o700)
        .file("PG_16_202307071/5/16385", &data(9000, 5), 0o600)
        .end();
    let w = extract_archive(
        ReadChunks::new(&tar[..]),
        &dest,
        &ExtractOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(lossy(&w[0].path), "pg_tblspc/16384/PG_16_202307071/5/16385");
    assert_eq!(tree(&s.roots[0]), tree(&s.roots[1]));

    let s = scratch(1);
    let dest = ArchiveDestination {
        roots: s.roots.clone(),
        manifest_prefix: "pg_tblspc/16384/".into(),
    };
    let opts = ts_options(&s);
    let tar = Tar::default()
        .dir("pg_tblspc", 0o700)
        .link("pg_tblspc/16384", "/x")
        .end();
    let err = extract_archive(ReadChunks::new(&tar[..]), &dest, &opts, &mut |_| {})
        .expect_err("extraction should fail");
    assert!(
        matches!(err, UnpackError::UnexpectedSymlink { .. }),
        "{err}"
    );
}

// ---- hostile and broken streams ----------------------------------------------------------

/// A valid prefix, then `hostile`; must fail without touching anything outside the roots.
fn assert_hostile(hostile: Vec<u8>, check: impl Fn(&UnpackError) -> bool) -> UnpackError {
    let s = scratch(2);
    let mut tar = Tar::default()
        .dir("base", 0o700)
        .file("base/ok", b"ok", 0o600)
        .0;
    tar.extend_from_slice(&hostile);
    let err = s.extract(&tar).expect_err("extraction should fail");
    assert!(check(&err), "unexpected error: {err}");
    s.assert_nothing_outside(&[]);
    for r in &s.roots {
        let names: Vec<_> = tree(r).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["base", "base/ok"]);
    }
    err
}

fn entry(name: &[u8], kind: u8, link: &[u8]) -> Vec<u8> {
    Tar::default()
        .raw(&header(name, kind, 5, 0o600, link), b"evil!")
        .end()
}

#[test]
fn dot_dot_is_rejected() {
    for name in [&b"../x"[..], b"base/../../x", b"./../x", b"base/.."] {
        let err = assert_hostile(entry(name, b'0', b""), |e| {
            matches!(e, UnpackError::Escapes { .. })
        });
        let shown = String::from_utf8_lossy(name);
        assert_eq!(
            err.to_string(),
            format!("tar entry `{shown}` escapes the target directory")
        );
    }
}

#[test]
fn absolute_paths_are_rejected() {
    let s = scratch(1);
    let abs = s.dir.path().join("abs_evil");
    let err = assert_hostile(entry(abs.as_os_str().as_bytes(), b'0', b""), |e| {
        matches!(e, UnpackError::Escapes { .. })
    });
    assert!(err.to_string().contains("escapes the target directory"));
    assert!(!abs.exists());
    assert_hostile(entry(b".//x", b'0', b""), |e| {
        matches!(e, UnpackError::Escapes { .. })
    });
}

#[test]
fn odd_names_are_rejected() {
    for name in [&b"./"[..], b"base/./x", b"base//x", b"a//", b"./."] {
        assert_hostile(entry(name, b'0', b""), |e| {
            matches!(e, UnpackError::InvalidName { .. })
        });
    }
}

#[test]
fn unsupported_types_are_rejected() {
    for (kind, link) in [
        (b'1', &b"/etc/passwd"[..]), // hard link
        (b'3', b""),                 // character device
        (b'4', b""),                 // block device
        (b'6', b""),                 // fifo
        (b'7', b""),                 // contiguous file
        (b'L', b""),                 // GNU long name
        (b'K', b""),                 // GNU long link name
        (b'x', b""),                 // pax header
        (b'g', b""),                 // pax global header
        (b'S', b""),                 // GNU sparse
    ] {
        let err = assert_hostile(entry(b"base/evil", kind, link), |e| {
            matches!(e, UnpackError::UnsupportedType { .. })
        });
        assert_eq!(
            err.to_string(),
            format!(
                "tar entry `base/evil` has unsupported type {}",
                kind as char
            )
        );
    }
}

#[test]
fn symlinks_outside_pg_tblspc_are_rejected() {
    for name in [
        &b"base/evil"[..],
        b"pg_tblspc/abc",
        b"pg_tblspc/1/2",
        b"pg_tblspc/",
    ] {
        let tar = Tar::default()
            .raw(&header(name, b'2', 0, 0o777, b"/etc"), b"")
            .end();
        assert_hostile(tar, |e| matches!(e, UnpackError::UnexpectedSymlink { .. }));
    }
}

#[test]
fn bad_header_checksum_is_rejected() {
    let mut h = header(b"base/evil", b'0', 5, 0o600, b"");
    h.as_mut_bytes()[0] ^= 1;
    let tar = Tar::default().raw(&h, b"evil!").end();
    let err = assert_hostile(tar, |e| {
        matches!(e, UnpackError::BadChecksum { offset: 1536, .. })
    });
    assert!(err.to_string().contains("bad checksum"), "{err}");
}

#[test]
fn huge_sizes_are_rejected() {
    // 2 TiB in GNU base-256, as the server would write it.
    let h = header(b"base/huge", b'0', 2 << 40, 0o600, b"");
    assert_eq!(h.as_old().size[0], 0x80);
    let err = assert_hostile(
        Tar::default().raw(&h, b"").end(),
        |e| matches!(e, UnpackError::ImpossibleSize { size, .. } if *size == 2 << 40),
    );
    assert_eq!(
        err.to_string(),
        format!("tar entry `base/huge` has impossible size {}", 2u64 << 40)
    );

    // Wider than 64 bits, and negative: tar-rs would read only the low 8 bytes.
    for field in [
        [0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5],
        [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 5],
    ] {
        let mut h = header(b"base/huge", b'0', 0, 0o600, b"");
        h.as_old_mut().size = field;
        h.set_cksum();
        assert_hostile(Tar::default().raw(&h, b"evil!").end(), |e| {
            matches!(e, UnpackError::Malformed { .. })
        });
    }
}

#[test]
fn base_256_sizes_within_limits_are_accepted() {
    let s = scratch(1);
    let mut h = header(b"f", b'0', 0, 0o600, b"");
    h.as_old_mut().size = [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    h.set_cksum();
    let tar = Tar::default().raw(&h, b"hello").end();
    assert_eq!(s.extract(&tar).unwrap()[0].size, 5);
}

#[test]
fn truncated_streams_are_rejected() {
    let full = Tar::default()
        .dir("base", 0o700)
        .file("base/f", &data(1000, 7), 0o600)
        .0;
    let s = scratch(1);
    let err = s
        .extract(&full[..BLOCK * 2 + 300])
        .expect_err("extraction should fail");
    assert_eq!(
        err.to_string(),
        "archive ends inside `base/f` (got 300 of 1000 bytes)"
    );

    let s = scratch(1);
    let err = s
        .extract(&full[..BLOCK * 2 + 1010])
        .expect_err("extraction should fail");
    assert!(matches!(err, UnpackError::TruncatedPadding { .. }), "{err}");

    let s = scratch(1);
    let err = s
        .extract(&full[..BLOCK + 100])
        .expect_err("extraction should fail");
    assert!(
        matches!(
            err,
            UnpackError::TruncatedHeader {
                offset: 512,
                got: 100
            }
        ),
        "{err}"
    );
}

#[test]
fn non_empty_directories_are_malformed() {
    let tar = Tar::default()
        .raw(&header(b"base/d/", b'5', 5, 0o700, b""), b"evil!")
        .end();
    assert_hostile(tar, |e| matches!(e, UnpackError::Malformed { .. }));
}

#[test]
fn setuid_bits_are_dropped_and_owner_bits_forced() {
    let s = scratch(1);
    let tar = Tar::default()
        .file("suid", b"x", 0o4755)
        .file("ro", b"x", 0o400)
        .dir("rodir", 0o500)
        .file("rodir/f", b"x", 0o600)
        .end();
    s.extract(&tar).unwrap();
    let mode = |p: &str| fs::metadata(s.roots[0].join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("ro"), 0o600);
    assert_eq!(mode("rodir"), 0o700);
}

#[test]
fn owner_is_applied() {
    let s = scratch(1);
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let opts = ExtractOptions {
        owner: Some((uid, gid)),
        ..ts_options(&s)
    };
    let tar = Tar::default()
        .dir("pg_tblspc", 0o700)
        .link("pg_tblspc/16384", "/x")
        .file("f", b"x", 0o640)
        .end();
    extract_archive(ReadChunks::new(&tar[..]), &s.dest(), &opts, &mut |_| {}).unwrap();
    let m = fs::metadata(s.roots[0].join("f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (uid, gid, 0o640));
}

#[test]
fn read_and_write_errors_name_their_place() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("connection reset"))
        }
    }
    let s = scratch(1);
    let err = extract_archive(
        ReadChunks::new(Failing),
        &s.dest(),
        &ExtractOptions::default(),
        &mut |_| {},
    )
    .expect_err("extraction should fail");
    // The message names the place; the cause follows in the source chain.
    let cause = |e: &UnpackError| std::error::Error::source(e).unwrap().to_string();
    assert_eq!(err.to_string(), "read the tar stream at offset 0");
    assert_eq!(cause(&err), "connection reset");

    // A missing parent directory: the server always sends it first, so this is an error.
    let s = scratch(1);
    let err = s
        .extract(&Tar::default().file("nodir/f", b"x", 0o600).end())
        .expect_err("extraction should fail");
    let path = s.roots[0].join("nodir/f");
    assert_eq!(err.to_string(), format!("create `{}`", path.display()));
    assert_eq!(cause(&err), "No such file or directory (os error 2)");
}

#[test]
fn no_roots_is_an_error() {
    let dest = ArchiveDestination {
        roots: vec![],
        manifest_prefix: String::new(),
    };
    let err = extract_archive(
        ReadChunks::new(&[][..]),
        &dest,
        &ExtractOptions::default(),
        &mut |_| {},
    )
    .expect_err("extraction should fail");
    assert!(matches!(err, UnpackError::NoDestinations));
}

#[test]
fn clean_name_table() {
    let ok =
        |raw: &str, want: &str| assert_eq!(clean_name(raw.as_bytes()).unwrap(), want.as_bytes());
    ok("./pg_wal/archive_status", "pg_wal/archive_status");
    ok("base/", "base");
    ok("a", "a");
    ok("..a/b..", "..a/b..");
    for bad in [
        "", "/", "./", "/a", "a/../b", "..", "./..", "a/./b", ".", "a//b", "a//", "a\0b",
    ] {
        assert!(clean_name(bad.as_bytes()).is_err(), "{bad:?}");
    }
}
