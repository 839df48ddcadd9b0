//! Reading Debian packages: the `ar` container, and extracting the data
//! archive into a root directory in-process (like `dpkg-deb --fsys-tarfile |
//! tar -x --keep-directory-symlink --no-overwrite-dir`), safe to run for
//! many packages in parallel into the same root.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Errors reading or extracting a package.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn ioe(path: &Path) -> impl FnOnce(io::Error) -> DebError + '_ {
    move |source| DebError::Io { path: path.to_path_buf(), source }
}

/// One member of an `ar` archive: name, offset and size of its data.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// List the members of an `ar` archive.
pub fn ar_members(f: &mut File, path: &Path) -> Result<Vec<Member>, DebError> {
    let bad = |m: &str| DebError::Format { path: path.to_path_buf(), message: m.to_string() };
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic).map_err(ioe(path))?;
    if &magic != b"!<arch>\n" {
        return Err(bad("not a Debian package (bad ar magic)"));
    }
    let len = f.metadata().map_err(ioe(path))?.len();
    let mut offset = 8u64;
    let mut members = Vec::new();
    while offset + 60 <= len {
        f.seek(SeekFrom::Start(offset)).map_err(ioe(path))?;
        let mut header = [0u8; 60];
        f.read_exact(&mut header).map_err(ioe(path))?;
        let name = String::from_utf8_lossy(&header[0..16]).trim_end().trim_end_matches('/').to_string();
        let size: u64 =
            String::from_utf8_lossy(&header[48..58]).trim().parse().map_err(|_| bad("bad ar member size"))?;
        members.push(Member { name, offset: offset + 60, size });
        offset += 60 + size + (size % 2);
    }
    Ok(members)
}

/// A reader for the decompressed data archive of a package.
pub fn data_tar(path: &Path) -> Result<Box<dyn Read + Send>, DebError> {
    let mut f = File::open(path).map_err(ioe(path))?;
    let members = ar_members(&mut f, path)?;
    let Some(m) = members.iter().find(|m| m.name.starts_with("data.tar")) else {
        return Err(DebError::Format { path: path.to_path_buf(), message: "no data.tar member".into() });
    };
    f.seek(SeekFrom::Start(m.offset)).map_err(ioe(path))?;
    let limited = BufReader::with_capacity(1 << 20, f.take(m.size));
    Ok(match m.name.as_str() {
        "data.tar" => Box::new(limited),
        "data.tar.xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(limited)),
        "data.tar.zst" => Box::new(zstd::stream::read::Decoder::with_buffer(limited).map_err(ioe(path))?),
        "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(limited)),
        other => {
            return Err(DebError::Format { path: path.to_path_buf(), message: format!("unsupported member {other}") })
        }
    })
}

/// Resolve `rel` inside `root`, following symlinks of intermediate
/// components but never leaving `root`. The last component is not followed.
fn resolve_parent(root: &Path, rel: &Path) -> PathBuf {
    let comps: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = comps.split_last() else { return root.to_path_buf() };
    let mut resolved = PathBuf::new();
    let mut todo: Vec<PathBuf> = parents.iter().rev().map(PathBuf::from).collect();
    let mut budget = 40;
    while let Some(c) = todo.pop() {
        if c.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&c);
        if budget > 0 {
            if let Ok(target) = std::fs::read_link(root.join(&candidate)) {
                budget -= 1;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => todo.push(PathBuf::from(n)),
                        Component::ParentDir => todo.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
                continue;
            }
        }
        resolved = candidate;
    }
    root.join(resolved).join(last)
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn lchown(p: &Path, uid: u64, gid: u64) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t) };
    if r != 0 {
        let e = io::Error::last_os_error();
        // Without subordinate ids (single-user namespace) ownership cannot be kept; like
        // package managers running with chown suppressed, carry on.
        if e.raw_os_error() != Some(libc::EPERM) && e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Ok(())
}

fn set_mtime(p: &Path, mtime: u64) -> io::Result<()> {
    let c = cpath(p)?;
    let ts = libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: 0 };
    let times = [ts, ts];
    // SAFETY: valid path and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn remove_non_dir(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if !m.is_dir() => std::fs::remove_file(p),
        _ => Ok(()),
    }
}

/// Extract the files of `deb` into `root`. Paths for which `exclude`
/// returns true (given without a leading `./`) are skipped. Existing
/// directories (and symlinks to directories) are kept as they are.
pub fn extract(deb: &Path, root: &Path, exclude: &dyn Fn(&str) -> bool) -> Result<(), DebError> {
    extract_from(data_tar(deb)?, deb, root, exclude).map(|_| ())
}

/// Reads through `r`, copying everything read into `w`.
struct Tee<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: io::Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// [`extract`], also writing the decompressed data archive — the bytes
/// `dpkg-deb --fsys-tarfile` prints — to `tar`, so that it need not be
/// decompressed again.
pub fn extract_keeping_tar(
    deb: &Path,
    root: &Path,
    exclude: &dyn Fn(&str) -> bool,
    tar: &Path,
) -> Result<(), DebError> {
    let out = File::create(tar).map_err(ioe(tar))?;
    let tee = Tee { r: data_tar(deb)?, w: io::BufWriter::with_capacity(1 << 20, out) };
    let mut tee = extract_from(tee, deb, root, exclude)?;
    // The end-of-archive blocks and padding the tar reader did not need.
    io::copy(&mut tee, &mut io::sink()).map_err(ioe(deb))?;
    io::Write::flush(&mut tee.w).map_err(ioe(tar))?;
    Ok(())
}

fn extract_from<R: Read>(reader: R, deb: &Path, root: &Path, exclude: &dyn Fn(&str) -> bool) -> Result<R, DebError> {
    let mut archive = tar::Archive::new(reader);
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive.entries().map_err(ioe(deb))? {
        let mut entry = entry.map_err(ioe(deb))?;
        let raw = entry.path().map_err(ioe(deb))?.into_owned();
        let rel_str = raw.to_string_lossy();
        let rel_str = rel_str.trim_start_matches("./").trim_start_matches('/');
        let rel = Path::new(rel_str);
        if rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(DebError::Format { path: deb.to_path_buf(), message: format!("unsafe path {rel_str}") });
        }
        if rel_str.is_empty() {
            continue; // "./": the root itself keeps its metadata.
        }
        if exclude(rel_str.trim_end_matches('/')) {
            continue;
        }
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let target = resolve_parent(root, rel);
        if let Some(parent) = target.parent() {
            if !parent.exists() {
                std::fs::create_dir_all(parent).map_err(ioe(parent))?;
            }
        }
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                if target.is_dir() {
                    continue;
                }
                remove_non_dir(&target).map_err(ioe(&target))?;
                match std::fs::create_dir(&target) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(ioe(&target)(e)),
                }
                lchown(&target, uid, gid).map_err(ioe(&target))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(ioe(&target))?;
                dirs.push((target, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_non_dir(&target).map_err(ioe(&target))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(ioe(&target))?;
                io::copy(&mut entry, &mut f).map_err(ioe(&target))?;
                drop(f);
                lchown(&target, uid, gid).map_err(ioe(&target))?;
                // chmod after chown: chown clears setuid/setgid bits.
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(ioe(&target))?;
                set_mtime(&target, mtime).map_err(ioe(&target))?;
                apply_xattrs(&mut entry, &target);
            }
            tar::EntryType::Symlink => {
                let Some(link) = entry.link_name().map_err(ioe(deb))? else { continue };
                if target.is_dir() && std::fs::symlink_metadata(&target).map(|m| m.is_dir()).unwrap_or(false) {
                    // A real directory stays (like tar's --keep-directory-symlink in reverse).
                    continue;
                }
                remove_non_dir(&target).map_err(ioe(&target))?;
                std::os::unix::fs::symlink(&link, &target).map_err(ioe(&target))?;
                lchown(&target, uid, gid).map_err(ioe(&target))?;
                set_mtime(&target, mtime).map_err(ioe(&target))?;
            }
            tar::EntryType::Link => {
                let Some(link) = entry.link_name().map_err(ioe(deb))? else { continue };
                let link = link.to_string_lossy();
                let src = resolve_parent(root, Path::new(link.trim_start_matches("./").trim_start_matches('/')));
                remove_non_dir(&target).map_err(ioe(&target))?;
                std::fs::hard_link(&src, &target).map_err(ioe(&target))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let kind_bits = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let dev = libc::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                remove_non_dir(&target).map_err(ioe(&target))?;
                let c = cpath(&target).map_err(ioe(&target))?;
                // SAFETY: valid path; mknod creates a node or fails.
                if unsafe { libc::mknod(c.as_ptr(), kind_bits | mode, dev) } != 0 {
                    return Err(ioe(&target)(io::Error::last_os_error()));
                }
                lchown(&target, uid, gid).map_err(ioe(&target))?;
            }
            _ => {}
        }
    }
    // Directory times last, as creating files inside changes them.
    for (d, mtime) in dirs.iter().rev() {
        let _ = set_mtime(d, *mtime);
    }
    Ok(archive.into_inner())
}

fn apply_xattrs<R: Read>(entry: &mut tar::Entry<R>, target: &Path) {
    let Ok(Some(exts)) = entry.pax_extensions() else { return };
    for ext in exts.flatten() {
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else { continue };
        let (Ok(cname), Ok(cpath)) = (CString::new(name), cpath(target)) else { continue };
        let value = ext.value_bytes();
        // SAFETY: valid NUL-terminated strings and a value buffer of the given length.
        unsafe {
            libc::lsetxattr(cpath.as_ptr(), cname.as_ptr(), value.as_ptr() as *const libc::c_void, value.len(), 0);
        }
    }
}

/// The package name of a `.deb` file name (`name_version_arch.deb`).
pub fn package_name(deb: &Path) -> String {
    let n = deb.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    n.split('_').next().unwrap_or(&n).trim_end_matches(".deb").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Build a tiny .deb with `dpkg-deb` if available.
    fn build_deb(dir: &Path) -> Option<PathBuf> {
        let pkg = dir.join("pkg");
        std::fs::create_dir_all(pkg.join("DEBIAN")).ok()?;
        std::fs::write(
            pkg.join("DEBIAN/control"),
            "Package: tiny\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: t\n",
        )
        .ok()?;
        std::fs::create_dir_all(pkg.join("bin")).ok()?;
        std::fs::write(pkg.join("bin/hello"), "#!/bin/sh\necho hi\n").ok()?;
        std::fs::set_permissions(pkg.join("bin/hello"), std::fs::Permissions::from_mode(0o755)).ok()?;
        std::os::unix::fs::symlink("hello", pkg.join("bin/hi")).ok()?;
        std::fs::create_dir_all(pkg.join("usr/share/doc/tiny")).ok()?;
        std::fs::write(pkg.join("usr/share/doc/tiny/README"), "doc").ok()?;
        let out = dir.join("tiny.deb");
        let status = std::process::Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&pkg)
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(out)
    }

    #[test]
    fn extracts_through_merged_usr_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let Some(deb) = build_deb(d.path()) else { return };
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        extract(&deb, &root, &|p| p.starts_with("usr/share/doc/")).unwrap();
        assert!(std::fs::read_link(root.join("bin")).is_ok(), "merged-usr symlink kept");
        assert_eq!(std::fs::read_to_string(root.join("usr/bin/hello")).unwrap(), "#!/bin/sh\necho hi\n");
        assert_eq!(std::fs::read_link(root.join("usr/bin/hi")).unwrap(), Path::new("hello"));
        assert_eq!(std::fs::metadata(root.join("usr/bin/hello")).unwrap().permissions().mode() & 0o777, 0o755);
        assert!(!root.join("usr/share/doc/tiny/README").exists());
        assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(package_name(Path::new("/x/libc6_2.41-12_amd64.deb")), "libc6");
    }

    #[test]
    fn kept_data_archive_is_what_dpkg_deb_prints() {
        let d = tempfile::tempdir().unwrap();
        let Some(deb) = build_deb(d.path()) else { return };
        let root = d.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let tar = d.path().join("tiny.deb.tar");
        extract_keeping_tar(&deb, &root, &|p| p.starts_with("usr/share/doc/"), &tar).unwrap();
        // The files are extracted (with the exclusion), the archive is kept whole.
        assert_eq!(std::fs::read_to_string(root.join("bin/hello")).unwrap(), "#!/bin/sh\necho hi\n");
        assert!(!root.join("usr/share/doc/tiny/README").exists());
        let want = std::process::Command::new("dpkg-deb").arg("--fsys-tarfile").arg(&deb).output().unwrap();
        assert!(want.status.success());
        assert_eq!(std::fs::read(&tar).unwrap(), want.stdout);
    }

    #[test]
    fn rejects_non_debs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.deb");
        std::fs::File::create(&p).unwrap().write_all(b"not an archive").unwrap();
        assert!(extract(&p, d.path(), &|_| false).is_err());
    }
}
