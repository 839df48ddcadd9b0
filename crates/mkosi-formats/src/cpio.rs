//! cpio archives in the "newc" format (the one the kernel's initramfs
//! unpacker reads), written in-process and reproducibly: entries in sorted
//! order, inode numbers renumbered from 1, device numbers zeroed.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// How to write the archive.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpioOptions {
    /// Record every entry as owned by root (uid/gid 0).
    pub owner_root: bool,
    /// Clamp modification times to at most this many seconds since the epoch.
    pub mtime_clamp: Option<u64>,
}

/// Errors writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: name too long for a cpio archive")]
    NameTooLong { path: PathBuf },
    #[error("{path}: file too large for a newc cpio archive (4 GiB maximum)")]
    TooLarge { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CpioError + '_ {
    move |source| CpioError::Io { path: path.to_path_buf(), source }
}

/// Every path below `root`, relative to it, in the order upstream sorts
/// them (component by component). Symlinks to directories are not followed.
pub fn sorted_tree(root: &Path) -> Result<Vec<PathBuf>, CpioError> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), CpioError> {
        let dir = root.join(rel);
        let mut names: Vec<OsString> = std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(&dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let child = rel.join(&name);
            out.push(child.clone());
            let md = std::fs::symlink_metadata(root.join(&child)).map_err(io_err(&child))?;
            if md.is_dir() {
                walk(root, &child, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out)?;
    Ok(out)
}

struct Header {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u64,
    filesize: u64,
    rdevmajor: u32,
    rdevminor: u32,
}

fn pad(w: &mut impl Write, written: u64) -> io::Result<u64> {
    let padding = (4 - (written % 4)) % 4;
    w.write_all(&[0u8; 3][..padding as usize])?;
    Ok(padding)
}

fn write_header(w: &mut impl Write, h: &Header, name: &[u8]) -> io::Result<u64> {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.filesize, 0, 0, h.rdevmajor, h.rdevminor, namesize, 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name)?;
    w.write_all(&[0])?;
    let written = header.len() as u64 + namesize as u64;
    Ok(written + pad(w, written)?)
}

fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

/// Write the files `paths` (relative to `root`, in the given order) as a
/// newc archive to `out`. Returns the number of bytes written.
pub fn write_archive<W: Write>(
    root: &Path,
    paths: &[PathBuf],
    out: &mut W,
    opts: CpioOptions,
) -> Result<u64, CpioError> {
    let mut entries = Vec::with_capacity(paths.len());
    for rel in paths {
        let full = root.join(rel);
        let md = std::fs::symlink_metadata(&full).map_err(io_err(&full))?;
        entries.push((rel, full, md));
    }

    // Hard links share an inode number; the data goes with the last link.
    let mut links: HashMap<(u64, u64), (u64, u32, usize)> = HashMap::new();
    let mut next_ino = 1u64;
    let mut inos = Vec::with_capacity(entries.len());
    for (i, (_, _, md)) in entries.iter().enumerate() {
        if !md.is_dir() && md.nlink() > 1 {
            let e = links.entry((md.dev(), md.ino())).or_insert_with(|| {
                let ino = next_ino;
                next_ino += 1;
                (ino, 0, i)
            });
            e.1 += 1;
            e.2 = i;
            inos.push(e.0);
        } else {
            inos.push(next_ino);
            next_ino += 1;
        }
    }

    let mut total = 0u64;
    for (i, (rel, full, md)) in entries.iter().enumerate() {
        let name = rel.as_os_str().as_bytes();
        if name.len() >= u32::MAX as usize {
            return Err(CpioError::NameTooLong { path: full.clone() });
        }
        let ft = md.file_type();
        let linked = links.get(&(md.dev(), md.ino())).filter(|_| !md.is_dir() && md.nlink() > 1);
        let (nlink, carries_data) = match linked {
            Some((_, count, last)) => (*count, *last == i),
            None => (if md.is_dir() { 2 } else { 1 }, true),
        };
        let mtime = match opts.mtime_clamp {
            Some(c) => (md.mtime().max(0) as u64).min(c),
            None => md.mtime().max(0) as u64,
        };
        let (uid, gid) = if opts.owner_root { (0, 0) } else { (md.uid(), md.gid()) };

        let mut data: Option<Vec<u8>> = None;
        let mut filesize = 0u64;
        if ft.is_symlink() {
            let target = std::fs::read_link(full).map_err(io_err(full))?;
            let bytes = target.into_os_string().into_vec();
            filesize = bytes.len() as u64;
            data = Some(bytes);
        } else if ft.is_file() && carries_data {
            filesize = md.len();
            if filesize > u32::MAX as u64 {
                return Err(CpioError::TooLarge { path: full.clone() });
            }
        }
        let (rdevmajor, rdevminor) =
            if ft.is_char_device() || ft.is_block_device() { (major(md.rdev()), minor(md.rdev())) } else { (0, 0) };

        let h = Header { ino: inos[i], mode: md.mode(), uid, gid, nlink, mtime, filesize, rdevmajor, rdevminor };
        total += write_header(out, &h, name).map_err(io_err(full))?;

        if let Some(bytes) = data {
            out.write_all(&bytes).map_err(io_err(full))?;
            total += bytes.len() as u64 + pad(out, bytes.len() as u64).map_err(io_err(full))?;
        } else if filesize > 0 {
            let mut f = std::fs::File::open(full).map_err(io_err(full))?;
            let copied = io::copy(&mut (&mut f).take(filesize), out).map_err(io_err(full))?;
            if copied != filesize {
                return Err(CpioError::Io {
                    path: full.clone(),
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while archiving"),
                });
            }
            total += copied + pad(out, copied).map_err(io_err(full))?;
        }
    }

    let trailer =
        Header { ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, filesize: 0, rdevmajor: 0, rdevminor: 0 };
    total += write_header(out, &trailer, b"TRAILER!!!").map_err(io_err(root))?;
    Ok(total)
}

/// Archive the whole tree below `root`.
pub fn write_tree<W: Write>(root: &Path, out: &mut W, opts: CpioOptions) -> Result<u64, CpioError> {
    let paths = sorted_tree(root)?;
    write_archive(root, &paths, out, opts)
}

/// One entry read back from an archive (used by tests and tooling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u64,
    pub ino: u64,
    pub data: Vec<u8>,
}

/// Parse a newc archive (for verification).
pub fn read_archive(mut bytes: &[u8]) -> io::Result<Vec<Entry>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        if bytes.len() < 110 {
            return Err(bad("truncated header"));
        }
        if &bytes[..6] != b"070701" {
            return Err(bad("bad magic"));
        }
        let field = |i: usize| -> io::Result<u64> {
            let s = std::str::from_utf8(&bytes[6 + i * 8..14 + i * 8]).map_err(|_| bad("bad field"))?;
            u64::from_str_radix(s, 16).map_err(|_| bad("bad field"))
        };
        let (ino, mode, uid, gid, nlink, mtime, filesize) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?, field(5)?, field(6)?);
        let namesize = field(11)? as usize;
        let name_end = 110 + namesize;
        if bytes.len() < name_end || namesize == 0 {
            return Err(bad("truncated name"));
        }
        let name = String::from_utf8_lossy(&bytes[110..name_end - 1]).into_owned();
        let data_start = (offset + name_end).div_ceil(4) * 4 - offset;
        let data_end = data_start + filesize as usize;
        if bytes.len() < data_end {
            return Err(bad("truncated data"));
        }
        if name == "TRAILER!!!" {
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            mode: mode as u32,
            uid: uid as u32,
            gid: gid as u32,
            nlink: nlink as u32,
            mtime,
            ino,
            data: bytes[data_start..data_end].to_vec(),
        });
        let next = (offset + data_end).div_ceil(4) * 4 - offset;
        bytes = &bytes[next.min(bytes.len())..];
        offset += next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir_all(r.join("a-b")).unwrap();
        std::fs::write(r.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(r.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(r.join("usr/data"), vec![7u8; 5]).unwrap();
        std::fs::hard_link(r.join("usr/data"), r.join("a-b/data-link")).unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::fs::write(r.join(".hidden"), b"").unwrap();
        d
    }

    #[test]
    fn order_is_component_wise() {
        let d = sample();
        let names: Vec<String> =
            sorted_tree(d.path()).unwrap().iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec![".hidden", "a-b", "a-b/data-link", "bin", "usr", "usr/bin", "usr/bin/tool", "usr/data"]);
    }

    #[test]
    fn round_trip() {
        let d = sample();
        let mut buf = Vec::new();
        let n = write_tree(d.path(), &mut buf, CpioOptions { owner_root: true, mtime_clamp: Some(100) }).unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % 4, 0);
        let entries = read_archive(&buf).unwrap();
        let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by_name("usr/bin/tool").data, b"#!/bin/sh\necho hi\n");
        assert_eq!(by_name("usr/bin/tool").mode & 0o7777, 0o755);
        assert_eq!(by_name("bin").data, b"usr/bin");
        assert!(entries.iter().all(|e| e.uid == 0 && e.gid == 0 && e.mtime <= 100));
        // Hard links: same inode, data only with the last one.
        let (l1, l2) = (by_name("a-b/data-link"), by_name("usr/data"));
        assert_eq!(l1.ino, l2.ino);
        assert_eq!((l1.nlink, l2.nlink), (2, 2));
        assert!(l1.data.is_empty());
        assert_eq!(l2.data, vec![7u8; 5]);
    }

    #[test]
    fn reproducible() {
        let d = sample();
        let opts = CpioOptions { owner_root: true, mtime_clamp: Some(0) };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_tree(d.path(), &mut a, opts).unwrap();
        write_tree(d.path(), &mut b, opts).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn gnu_cpio_can_read_it() {
        if std::process::Command::new("cpio").arg("--version").output().is_err() {
            return;
        }
        let d = sample();
        let mut buf = Vec::new();
        write_tree(d.path(), &mut buf, CpioOptions::default()).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("usr/bin/tool"), "{listing}");
    }
}
