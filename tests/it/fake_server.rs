//! What `pgrepl basebackup` makes of a scripted, hostile server (`support::fake_server`).
//!
//! Each case runs the real binary and holds it to the same promise: exit code 2, one `pgrepl:`
//! line on stderr (and at most one `hint:`), the error says what went wrong, nothing is written
//! anywhere in the sandbox but the work directory, which is left empty (no partial target, no
//! staging directory), and the process's peak RSS stays small.

use std::fs;
use std::time::Duration;

use crate::support::fake_server::*;

/// Peak RSS no hostile case may exceed. pgrepl's own buffers (a 16 MiB frame at most, 64
/// chunks in flight, the writer queues) stay well under it.
const RSS_LIMIT_KIB: i64 = 96 * 1024;

// ---------------------------------------------------------------------------------------------
// The cases.

/// The server itself is faithful: a well-formed response in both layouts gives a complete,
/// verified target. (Without this, the failures below could be the fake server's fault.)
#[test]
fn fake_server_well_formed_backup_succeeds() {
    for style in Style::ALL {
        let files = datadir_files();
        let archive = match style {
            Style::Pg14 => datadir_tar().0,
            Style::Pg15 => datadir_tar().finish(),
        };
        let manifest = manifest(&files);
        let server = FakeServer::start(Script::new(
            style,
            backup_response(style, &archive, Some(&manifest)),
        ));
        let sandbox = Sandbox::new();
        let target = sandbox.target();
        let conninfo = server.conninfo();
        let run = run_pgrepl(
            &[
                "basebackup",
                "-d",
                &conninfo,
                "-D",
                target.to_str().unwrap(),
                "-X",
                "none",
                "--json",
            ],
            &[],
            Duration::from_secs(60),
        );
        assert_eq!(run.code, Some(0), "{style:?}: {}", run.stderr);
        assert!(
            run.stdout.contains("\"manifest_verified\": true"),
            "{}",
            run.stdout
        );
        for (name, data) in &files {
            assert_eq!(
                &fs::read(target.join(name)).unwrap(),
                data,
                "{style:?} {name}"
            );
        }
        assert_eq!(fs::read(target.join("backup_manifest")).unwrap(), manifest);
        let queries = server.queries.lock().unwrap().clone();
        assert!(
            queries.iter().any(|q| q.starts_with("BASE_BACKUP")),
            "{queries:?}"
        );
        eprintln!(
            "fake_server: {style:?} well-formed: peak RSS {} MiB",
            run.max_rss_kib / 1024
        );
        assert!(run.max_rss_kib < RSS_LIMIT_KIB);
    }
}

/// The archive for a hostile tar case: a normal start, the hostile part, the rest as usual.
fn hostile_archive(style: Style, hostile: Tar) -> Vec<u8> {
    let mut tar = Tar::default().file("PG_VERSION", b"15\n");
    tar.0.extend_from_slice(&hostile.0);
    let tar = tar.file("global/late", b"written after the hostile entry");
    match style {
        Style::Pg14 => tar.0,
        Style::Pg15 => tar.finish(),
    }
}

fn tar_case(case: &str, hostile: Tar, expect: &[&str]) {
    for style in Style::ALL {
        let archive = hostile_archive(style, hostile.clone());
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&datadir_files()))),
        );
        hostile_case(&format!("{case} ({style:?})"), script, expect);
    }
}

#[test]
fn tar_entries_with_dot_dot_are_refused() {
    tar_case(
        "`../` file",
        Tar::default().file("../../victim", b"overwritten"),
        &["escapes the target"],
    );
    tar_case(
        "`..` inside",
        Tar::default()
            .dir("base")
            .file("base/../../../escape", b"x"),
        &["escapes the target"],
    );
    tar_case(
        "`..` directory",
        Tar::default().dir("../../escape_dir"),
        &["escapes the target"],
    );
}

#[test]
fn tar_entries_with_absolute_paths_are_refused() {
    let sandbox_guess = std::env::temp_dir().join("pgrepl-absolute-escape");
    let name = sandbox_guess.to_str().unwrap().to_owned();
    tar_case(
        "absolute file",
        Tar::default().file(&name, b"x"),
        &["escapes the target"],
    );
    tar_case(
        "absolute ./ file",
        Tar::default().file(&format!("./{name}"), b"x"),
        &["escapes the target"],
    );
    assert!(
        !sandbox_guess.exists(),
        "{} was written",
        sandbox_guess.display()
    );
}

#[test]
fn tar_symlinks_and_hard_links_that_escape_are_refused() {
    // A symlink to the sandbox's victim, then a write through it.
    let via_symlink = |target: &str| {
        Tar::default()
            .entry("evil", b'2', b"", 0o777, target)
            .file("evil", b"overwritten")
    };
    tar_case(
        "symlink to a file outside",
        via_symlink("../../victim"),
        &["symlink"],
    );
    tar_case(
        "symlink to an absolute dir",
        Tar::default()
            .entry("evil", b'2', b"", 0o777, "/tmp")
            .file("evil/x", b"x"),
        &["symlink"],
    );
    // Even the one kind of link a base archive may hold must not be followed or point where
    // the archive says.
    tar_case(
        "pg_tblspc link without a tablespace",
        Tar::default()
            .dir("pg_tblspc")
            .entry("pg_tblspc/16385", b'2', b"", 0o777, "/tmp")
            .file("pg_tblspc/16385/x", b"x"),
        &["16385"],
    );
    tar_case(
        "hard link to a file outside",
        Tar::default()
            .entry("hard", b'1', b"", 0o600, "../../victim")
            .file("hard", b"overwritten"),
        &["unsupported type"],
    );
    tar_case(
        "hard link inside",
        Tar::default().entry("hard", b'1', b"", 0o600, "PG_VERSION"),
        &["unsupported type"],
    );
}

#[test]
fn tar_device_and_fifo_entries_are_refused() {
    tar_case(
        "character device",
        Tar::default().entry("dev_null", b'3', b"", 0o666, ""),
        &["unsupported type"],
    );
    tar_case(
        "block device",
        Tar::default().entry("sda", b'4', b"", 0o660, ""),
        &["unsupported type"],
    );
    tar_case(
        "fifo",
        Tar::default().entry("pipe", b'6', b"", 0o600, ""),
        &["unsupported type"],
    );
    tar_case(
        "contiguous file",
        Tar::default().entry("cont", b'7', b"x", 0o600, ""),
        &["unsupported type"],
    );
    tar_case(
        "pax header",
        Tar::default().entry(
            "PaxHeaders.0/victim",
            b'x',
            b"20 path=../victim\n",
            0o600,
            "",
        ),
        &["unsupported type"],
    );
    tar_case(
        "GNU long name",
        Tar::default().entry("@LongLink", b'L', b"../../victim\0", 0o600, ""),
        &["unsupported type"],
    );
}

#[test]
fn tar_size_larger_than_the_stream_is_refused() {
    for style in Style::ALL {
        // The header promises 1 MiB; the archive ends after 1000 bytes.
        let tar = Tar::default().file("PG_VERSION", b"15\n").lying_file(
            "base_big",
            1 << 20,
            &[1u8; 1000],
        );
        let mut archive = tar.0;
        archive.resize(archive.len().div_ceil(BLOCK) * BLOCK, 0);
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&datadir_files()))),
        );
        hostile_case(
            &format!("size beyond the stream ({style:?})"),
            script,
            &["base_big"],
        );
        // A size beyond any real file (above the 1 TiB cap), in base-256.
        let tar = Tar::default().lying_file("huge", 1 << 50, b"");
        let script = Script::new(style, backup_response(style, &tar.0, None));
        hostile_case(&format!("impossible size ({style:?})"), script, &["huge"]);
    }
}

#[test]
fn truncated_streams_are_refused() {
    let archive = datadir_tar().finish();
    for style in Style::ALL {
        let full = backup_response(style, &archive, Some(&manifest(&datadir_files())));
        let copy_start = backup_header().len();
        // Cut inside the archive data, inside a frame header, and just before the trailer.
        for (what, at) in [
            ("inside the archive", copy_start + archive.len() / 2),
            ("inside a frame header", copy_start + 2),
            (
                "before the end position",
                full.len() - backup_trailer().len(),
            ),
        ] {
            let mut script = Script::new(style, full[..at].to_vec());
            script.then = Then::Close;
            hostile_case(
                &format!("connection closed {what} ({style:?})"),
                script,
                &["closed the connection"],
            );
        }
        // The archive itself ends inside a header (and the server ends the copy normally).
        let cut = &archive[..BLOCK * 3 + 100];
        let script = Script::new(style, backup_response(style, cut, None));
        hostile_case(
            &format!("archive cut inside a header ({style:?})"),
            script,
            &["archive ends"],
        );
    }
}

#[test]
fn lying_message_lengths_are_refused() {
    for style in Style::ALL {
        // A frame length below the 4 bytes of the length itself.
        let mut response = backup_header();
        response.extend(copy_out_response());
        response.extend([b'd', 0, 0, 0, 2, 0xff, 0xff]);
        hostile_case(
            &format!("CopyData length 2 ({style:?})"),
            Script::new(style, response),
            &["length"],
        );

        // A DataRow whose column claims more bytes than the message holds.
        let mut response = result_set(
            &["recptr", "tli"],
            &[&[Some("0/2000028"), Some("1")]],
            "SELECT",
        );
        let mut row = vec![0, 2];
        row.extend_from_slice(&100u32.to_be_bytes());
        row.extend_from_slice(b"0/2000028");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        response.extend(row_description(&["spcoid", "spclocation", "size"]));
        response.extend(msg(b'D', &row));
        hostile_case(
            &format!("DataRow column length lies ({style:?})"),
            Script::new(style, response),
            &["DataRow"],
        );
    }
    // A 'n' message whose strings run past the payload.
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"nbase.tar"));
    hostile_case(
        "new-archive message without its NULs",
        Script::new(Style::Pg15, response),
        &["NUL"],
    );
    // A progress message shorter than its Int64.
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"nbase.tar\0\0"));
    response.extend(copy_data(b"p\0\0\0"));
    hostile_case(
        "short progress message",
        Script::new(Style::Pg15, response),
        &["progress"],
    );
}

#[test]
fn gigantic_lengths_do_not_exhaust_memory() {
    for style in Style::ALL {
        // A CopyData that claims 2 GiB, followed by 64 MiB of data the client must not buffer.
        let mut response = backup_header();
        response.extend(copy_out_response());
        response.extend([b'd', 0x7f, 0xff, 0xff, 0xf0]);
        let mut script = Script::new(style, response);
        script.then_repeat = Some((vec![0x55; 1 << 20], 64));
        let run = hostile_case(&format!("2 GiB CopyData ({style:?})"), script, &["exceeds"]);
        assert!(
            run.max_rss_kib < RSS_LIMIT_KIB,
            "peak RSS {} KiB",
            run.max_rss_kib
        );

        // The same with a length that does fit the cap, and the stream ending before it.
        let mut response = backup_header();
        response.extend(copy_out_response());
        response.extend([b'd', 0x00, 0xff, 0xff, 0xf0]);
        response.extend(vec![0u8; 1 << 20]);
        let mut script = Script::new(style, response);
        script.then = Then::Close;
        let run = hostile_case(
            &format!("16 MiB CopyData cut short ({style:?})"),
            script,
            &["closed"],
        );
        assert!(
            run.max_rss_kib < RSS_LIMIT_KIB,
            "peak RSS {} KiB",
            run.max_rss_kib
        );

        // A tar header for a 2^39-byte file, then 256 MiB of its data: streamed to disk in
        // bounded pieces, then refused as truncated.
        let archive = Tar::default().lying_file("base_gigantic", 1 << 39, &[]).0;
        let mut response = backup_header();
        response.extend(copy_out_response());
        if style == Style::Pg15 {
            response.extend(copy_data(b"nbase.tar\0\0"));
            let mut payload = vec![b'd'];
            payload.extend_from_slice(&archive);
            response.extend(copy_data(&payload));
        } else {
            response.extend(copy_data(&archive));
        }
        let mut payload = if style == Style::Pg15 {
            vec![b'd']
        } else {
            Vec::new()
        };
        payload.extend(vec![0x42u8; 1 << 20]);
        let mut script = Script::new(style, response);
        script.then_repeat = Some((copy_data(&payload), 128));
        script.then = Then::Close;
        let run = hostile_case(
            &format!("2^39-byte tar entry ({style:?})"),
            script,
            &["closed"],
        );
        assert!(
            run.max_rss_kib < RSS_LIMIT_KIB,
            "peak RSS {} KiB",
            run.max_rss_kib
        );
    }
}

#[test]
fn manifest_checksum_mismatches_are_refused() {
    let files = datadir_files();
    for style in Style::ALL {
        let archive = match style {
            Style::Pg14 => datadir_tar().0,
            Style::Pg15 => datadir_tar().finish(),
        };
        // A file's CRC differs (the manifest's own checksum is right).
        let mut lying = files.clone();
        lying[3].1[100] ^= 1;
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&lying))),
        );
        hostile_case(
            &format!("file checksum mismatch ({style:?})"),
            script,
            &["base/1/1259", "checksum"],
        );
        // A size differs.
        let mut lying = files.clone();
        lying[1].1.push(b'\n');
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&lying))),
        );
        hostile_case(
            &format!("file size mismatch ({style:?})"),
            script,
            &["PG_VERSION"],
        );
        // A file the manifest lists was never sent.
        let mut lying = files.clone();
        lying.push(("base/1/2619", vec![0; 8192]));
        let script = Script::new(
            style,
            backup_response(style, &archive, Some(&manifest(&lying))),
        );
        hostile_case(
            &format!("file missing from the archive ({style:?})"),
            script,
            &["base/1/2619"],
        );
        // The manifest's own checksum does not match its bytes.
        let mut corrupt = manifest(&files);
        let at = corrupt.windows(4).position(|w| w == b"1259").unwrap();
        corrupt[at] = b'9';
        let script = Script::new(style, backup_response(style, &archive, Some(&corrupt)));
        hostile_case(
            &format!("manifest checksum mismatch ({style:?})"),
            script,
            &["manifest checksum mismatch"],
        );
        // No manifest at all although one was asked for. (PG 14 style: the end position
        // arrives where the manifest's CopyOutResponse should.)
        let script = Script::new(style, backup_response(style, &archive, None));
        let expect = match style {
            Style::Pg14 => "expected CopyOutResponse",
            Style::Pg15 => "manifest",
        };
        hostile_case(&format!("manifest missing ({style:?})"), script, &[expect]);
    }
}

#[test]
fn base_backup_results_of_the_wrong_shape_are_refused() {
    let tail = |style: Style| {
        backup_copy(
            style,
            &datadir_tar().finish(),
            Some(&manifest(&datadir_files())),
            8192,
        )
    };
    for style in Style::ALL {
        let start = result_set(
            &["recptr", "tli"],
            &[&[Some("0/2000028"), Some("1")]],
            "SELECT",
        );
        let base_row: &[Option<&str>] = &[None, None, None];
        let spaces = |rows: &[&[Option<&str>]]| {
            result_set(&["spcoid", "spclocation", "size"], rows, "SELECT")
        };
        let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
            (
                "no tablespace rows",
                [start.clone(), spaces(&[]), tail(style)].concat(),
                &["tablespace list"],
            ),
            (
                "data directory not last",
                [
                    start.clone(),
                    spaces(&[base_row, &[Some("16385"), Some("/srv/ts"), None]]),
                    tail(style),
                ]
                .concat(),
                &["tablespace list"],
            ),
            (
                "tablespace columns missing",
                [
                    start.clone(),
                    result_set(&["spcoid"], &[&[None]], "SELECT"),
                    tail(style),
                ]
                .concat(),
                &["no column `size`"],
            ),
            (
                "start position without tli",
                [
                    result_set(&["recptr"], &[&[Some("0/2000028")]], "SELECT"),
                    spaces(&[base_row]),
                    tail(style),
                ]
                .concat(),
                &["tli"],
            ),
            (
                "start position with two rows",
                [
                    result_set(
                        &["recptr", "tli"],
                        &[
                            &[Some("0/2000028"), Some("1")],
                            &[Some("0/3000028"), Some("1")],
                        ],
                        "SELECT",
                    ),
                    spaces(&[base_row]),
                    tail(style),
                ]
                .concat(),
                &["2 rows"],
            ),
            (
                "start position not an LSN",
                [
                    result_set(
                        &["recptr", "tli"],
                        &[&[Some("nowhere"), Some("1")]],
                        "SELECT",
                    ),
                    spaces(&[base_row]),
                    tail(style),
                ]
                .concat(),
                &["nowhere"],
            ),
            (
                "start position NULL",
                [
                    result_set(&["recptr", "tli"], &[&[None, Some("1")]], "SELECT"),
                    spaces(&[base_row]),
                    tail(style),
                ]
                .concat(),
                &["NULL"],
            ),
            (
                "no result sets, straight to the copy",
                tail(style),
                &["CopyOutResponse"],
            ),
            (
                "end position missing",
                [
                    backup_header(),
                    tail(style),
                    command_complete("BASE_BACKUP"),
                    ready_for_query(),
                ]
                .concat(),
                &["end position"],
            ),
            (
                "an ordinary query's rows instead of the copy",
                [
                    backup_header(),
                    result_set(&["x"], &[&[Some("1")]], "SELECT"),
                ]
                .concat(),
                &["CopyOutResponse"],
            ),
            (
                "server error during the copy",
                [
                    backup_header(),
                    copy_out_response(),
                    error_response("ERROR", "XX000", "could not read file \"base/1/1259\""),
                    ready_for_query(),
                ]
                .concat(),
                &["could not read file"],
            ),
        ];
        for (what, response, expect) in cases {
            hostile_case(
                &format!("{what} ({style:?})"),
                Script::new(style, response),
                expect,
            );
        }
    }
    // PG 15 only: an archive for a tablespace that was never listed, and an unsafe archive name.
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"n16385.tar\0/srv/ts\0"));
    hostile_case(
        "archive for an unlisted tablespace",
        Script::new(Style::Pg15, response),
        &["/srv/ts"],
    );
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"n../base.tar\0\0"));
    hostile_case(
        "archive name with a slash",
        Script::new(Style::Pg15, response),
        &["unsafe archive name"],
    );
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"nbase.zip\0\0"));
    hostile_case(
        "archive of an unknown kind",
        Script::new(Style::Pg15, response),
        &["base.zip"],
    );
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"dPG_VERSION"));
    hostile_case(
        "data before any archive",
        Script::new(Style::Pg15, response),
        &["before the first archive"],
    );
}

#[test]
fn unknown_copy_data_message_types_are_refused() {
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b"nbase.tar\0\0"));
    let mut data = vec![b'd'];
    data.extend_from_slice(&Tar::default().file("PG_VERSION", b"15\n").0);
    response.extend(copy_data(&data));
    response.extend(copy_data(b"zzzz"));
    hostile_case(
        "unknown sub-message `z`",
        Script::new(Style::Pg15, response),
        &["unknown message type `z`"],
    );
    let mut response = backup_header();
    response.extend(copy_out_response());
    response.extend(copy_data(b""));
    hostile_case(
        "empty CopyData payload",
        Script::new(Style::Pg15, response),
        &["empty"],
    );
    // An unknown backend message in the middle of the copy, in both layouts.
    for style in Style::ALL {
        let mut response = backup_header();
        response.extend(copy_out_response());
        response.extend(msg(b'y', b"what"));
        hostile_case(
            &format!("unknown message tag ({style:?})"),
            Script::new(style, response),
            &["unknown message tag `y`"],
        );
    }
}

#[test]
fn unsupported_authentication_methods_are_refused() {
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("GSSAPI", auth(7, b""), &["GSSAPI"]),
        ("SSPI", auth(9, b""), &["SSPI"]),
        ("Kerberos V5", auth(2, b""), &["Kerberos"]),
        (
            "SASL without SCRAM",
            auth(10, b"SCRAM-SHA-512\0\0"),
            &["SCRAM-SHA-512"],
        ),
        ("unknown request", auth(99, b""), &[]),
        (
            "SASLContinue before SASL",
            auth(11, b"r=abc,s=c2FsdA==,i=4096"),
            &["SCRAM"],
        ),
    ];
    for (what, request, expect) in cases {
        let mut script = Script::new(Style::Pg15, Vec::new());
        script.auth = Auth::Request(request);
        let run = hostile_case_with(what, script, &[("PGPASSWORD", "hunter2-secret")], expect);
        assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    }
}

/// A server may send CopyData frames as large as the 16 MiB frame cap. What is in flight is
/// bounded in frames (the socket buffer, the extractor channel, the writer queues' slices each
/// pin a frame), so memory scales with the frame size: about 17 frames, ~272 MiB at 16 MiB, far
/// above the few MiB a real server's 32 KiB chunks cost. Bounded, but counting bytes instead
/// would keep it flat.
#[test]
fn big_copy_data_frames_keep_memory_bounded() {
    for style in Style::ALL {
        let archive = Tar::default().lying_file("base_gigantic", 1 << 39, &[]).0;
        let mut response = backup_header();
        response.extend(copy_out_response());
        let prefix: &[u8] = if style == Style::Pg15 { b"d" } else { b"" };
        if style == Style::Pg15 {
            response.extend(copy_data(b"nbase.tar\0\0"));
        }
        response.extend(copy_data(&[prefix, &archive[..]].concat()));
        let frame = copy_data(&[prefix, &vec![0x42u8; (16 << 20) - 64][..]].concat());
        let mut script = Script::new(style, response);
        script.then_repeat = Some((frame, 64));
        script.then = Then::Close;
        let run = hostile_case(
            &format!("1 GiB in 16 MiB frames ({style:?})"),
            script,
            &["closed"],
        );
        assert!(
            run.max_rss_kib < 320 * 1024,
            "peak RSS {} MiB",
            run.max_rss_kib / 1024
        );
    }
}

/// The manifest is collected in memory, up to a cap; a server that never ends it is refused.
#[test]
fn an_endless_manifest_does_not_exhaust_memory() {
    for style in Style::ALL {
        let archive = match style {
            Style::Pg14 => datadir_tar().0,
            Style::Pg15 => datadir_tar().finish(),
        };
        let mut response = backup_header();
        let copy = backup_copy(
            style,
            &archive,
            Some(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n"),
            8192,
        );
        // Everything but the final CopyDone: the manifest stays open.
        response.extend_from_slice(&copy[..copy.len() - copy_done().len()]);
        let prefix: &[u8] = if style == Style::Pg15 { b"d" } else { b"" };
        let frame = copy_data(&[prefix, &vec![b' '; 1 << 20][..]].concat());
        let mut script = Script::new(style, response);
        script.then_repeat = Some((frame, 512));
        script.then = Then::Close;
        let run = hostile_case(
            &format!("512 MiB manifest ({style:?})"),
            script,
            // No cap any more: the manifest goes to disk as it arrives, memory stays flat, and
            // the stream's end is the error.
            &["server closed the connection"],
        );
        assert!(
            run.max_rss_kib < 2 * RSS_LIMIT_KIB,
            "peak RSS {} MiB",
            run.max_rss_kib / 1024
        );
    }
}

/// Answers to replication commands are capped: endless rows where IDENTIFY_SYSTEM's one row
/// should be.
#[test]
fn endless_identify_system_rows_are_refused() {
    let mut script = Script::new(Style::Pg15, Vec::new());
    let row = data_row(&[
        Some("7362182938384710211"),
        Some("1"),
        Some(&"0".repeat(1 << 20)),
        None,
    ]);
    script.identify_system = Some((
        row_description(&["systemid", "timeline", "xlogpos", "dbname"]),
        row,
        512,
    ));
    let run = hostile_case(
        "512 MiB of IDENTIFY_SYSTEM rows",
        script,
        &["at most 32 MiB", "IDENTIFY_SYSTEM"],
    );
    assert!(
        run.max_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} MiB",
        run.max_rss_kib / 1024
    );
}

/// A segment size PostgreSQL cannot have would break the WAL arithmetic (0 divides by zero).
#[test]
fn impossible_wal_segment_sizes_are_refused() {
    for size in [
        "0",
        "3MB",
        "2GB",
        "512kB",
        "99999999999999999999GB",
        "sixteen",
    ] {
        for method in ["none", "stream"] {
            let mut script = Script::new(Style::Pg15, Vec::new());
            script.wal_segment_size = size.into();
            let server = FakeServer::start(script);
            let sandbox = Sandbox::new();
            let before = snapshot(sandbox.root());
            let (conninfo, target) = (server.conninfo(), sandbox.target());
            let args = [
                "basebackup",
                "-d",
                &conninfo,
                "-D",
                target.to_str().unwrap(),
                "-X",
                method,
            ];
            let run = run_pgrepl(&args, &[], Duration::from_secs(60));
            let case = format!("wal_segment_size `{size}` with -X {method}");
            assert_clean_failure(&case, &run, &sandbox, &before, &["wal_segment_size", size]);
        }
    }
}

/// Result sets are collected in memory too: endless rows where the tablespace list should be.
#[test]
fn endless_result_rows_do_not_exhaust_memory() {
    let row = data_row(&[None, None, Some(&"x".repeat(1 << 20))]);
    for style in Style::ALL {
        let mut response = result_set(
            &["recptr", "tli"],
            &[&[Some("0/2000028"), Some("1")]],
            "SELECT",
        );
        response.extend(row_description(&["spcoid", "spclocation", "size"]));
        let mut script = Script::new(style, response);
        script.then_repeat = Some((row.clone(), 512));
        script.then = Then::Close;
        let run = hostile_case(
            &format!("512 MiB of tablespace rows ({style:?})"),
            script,
            &["result set exceeds"],
        );
        assert!(
            run.max_rss_kib < 2 * RSS_LIMIT_KIB,
            "peak RSS {} MiB",
            run.max_rss_kib / 1024
        );
    }
}
