//! Filesystem operations that build a sandbox's root: tmpfs, minimal `/dev`,
//! directories, bind mounts, symlinks, files and overlays.
//!
//! Operations run after the sandbox process has pivoted into a scratch tmpfs
//! that contains `oldroot` (the previous root) and `newroot` (the root being
//! built). Sources are looked up below `oldroot` (or `newroot` for relative
//! binds), destinations below `newroot`, resolving symlinks without leaving
//! that root.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::SandboxError;

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsOp {
    /// A fresh tmpfs at `dst`.
    Tmpfs { dst: PathBuf },
    /// A minimal `/dev` at `dst` (null, zero, full, random, urandom, tty, pts, shm…).
    Dev { dst: PathBuf, tty: Option<PathBuf> },
    /// An empty directory at `dst`.
    Dir { dst: PathBuf },
    /// Bind `src` (from the old root, or the new root when `relative`) to `dst`.
    Bind { src: PathBuf, dst: PathBuf, readonly: bool, required: bool, relative: bool, nofollow: bool },
    /// A symlink at `dst` pointing to `target`.
    Symlink { target: PathBuf, dst: PathBuf },
    /// A file at `dst` with `data`.
    Write { data: Vec<u8>, dst: PathBuf },
    /// An overlay at `dst`. `upper` is a directory, the literal `tmpfs`, or none (read-only).
    Overlay { lowers: Vec<PathBuf>, upper: Option<PathBuf>, work: Option<PathBuf>, dst: PathBuf },
}

fn components(p: &Path) -> Vec<&OsStr> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn is_relative_to(p: &Path, base: &Path) -> bool {
    p.starts_with(base)
}

impl FsOp {
    pub fn dst(&self) -> &Path {
        match self {
            FsOp::Tmpfs { dst }
            | FsOp::Dev { dst, .. }
            | FsOp::Dir { dst }
            | FsOp::Bind { dst, .. }
            | FsOp::Symlink { dst, .. }
            | FsOp::Write { dst, .. }
            | FsOp::Overlay { dst, .. } => dst,
        }
    }

    fn relative(&self) -> bool {
        matches!(self, FsOp::Bind { relative: true, .. })
    }

    /// A one-line description for `--debug`.
    pub fn describe(&self) -> String {
        match self {
            FsOp::Tmpfs { dst } => format!("tmpfs at {}", dst.display()),
            FsOp::Dev { dst, .. } => format!("dev at {}", dst.display()),
            FsOp::Dir { dst } => format!("mkdir {}", dst.display()),
            FsOp::Bind { src, dst, readonly, required, relative, nofollow } => {
                let mut flags = Vec::new();
                if *readonly {
                    flags.push("readonly");
                }
                if !*required {
                    flags.push("optional");
                }
                if *relative {
                    flags.push("relative");
                }
                if *nofollow {
                    flags.push("nofollow");
                }
                let suffix = if flags.is_empty() { String::new() } else { format!(" [{}]", flags.join(", ")) };
                format!("bind {} -> {}{suffix}", src.display(), dst.display())
            }
            FsOp::Symlink { target, dst } => format!("symlink {} -> {}", dst.display(), target.display()),
            FsOp::Write { data, dst } => format!("write {} bytes to {}", data.len(), dst.display()),
            FsOp::Overlay { lowers, upper, dst, .. } => format!(
                "overlay at {} (lowers=[{}], upper={})",
                dst.display(),
                lowers.iter().map(|l| l.display().to_string()).collect::<Vec<_>>().join(", "),
                upper.as_ref().map(|u| u.display().to_string()).unwrap_or_else(|| "-".into())
            ),
        }
    }
}

/// Drop redundant binds (those fully covered by another bind of the same
/// kind) and order operations so parents are mounted before children, binds
/// win over other operations on the same destination, and relative binds go last.
pub fn optimize(ops: Vec<FsOp>) -> Vec<FsOp> {
    let mut binds: Vec<FsOp> = Vec::new();
    let mut rest = Vec::new();
    for op in ops {
        match &op {
            FsOp::Bind { .. } => {
                if !binds.contains(&op) {
                    binds.push(op);
                }
            }
            _ => rest.push(op),
        }
    }

    let covered = |m: &FsOp| -> bool {
        let FsOp::Bind { src: ms, dst: md, readonly: mr, required: mq, relative: ml, nofollow: mn } = m else {
            return false;
        };
        binds.iter().any(|n| {
            let FsOp::Bind { src: ns, dst: nd, readonly: nr, required: nq, relative: nl, nofollow: nn } = n else {
                return false;
            };
            n != m
                && mr == nr
                && mq == nq
                && ml == nl
                && mn == nn
                && is_relative_to(ms, ns)
                && is_relative_to(md, nd)
                && ms.strip_prefix(ns).ok() == md.strip_prefix(nd).ok()
        })
    };
    let kept: Vec<FsOp> = binds.iter().filter(|b| !covered(b)).cloned().collect();

    let mut all: Vec<FsOp> = rest.into_iter().chain(kept).collect();
    all.sort_by(|a, b| (a.relative(), components(a.dst())).cmp(&(b.relative(), components(b.dst()))));
    all
}

/// Resolve `path` inside `root`, following symlinks without escaping `root`.
/// A missing remainder is kept as is. With `nofollow`, the last component
/// is not followed.
pub fn chase(root: &Path, path: &Path, nofollow: bool) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut todo: Vec<PathBuf> = components(path).into_iter().rev().map(PathBuf::from).collect();
    let mut budget = 64;
    while let Some(comp) = todo.pop() {
        if comp.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        if comp.as_os_str() == "." {
            continue;
        }
        let candidate = resolved.join(&comp);
        let last = todo.is_empty();
        if !(last && nofollow) && budget > 0 {
            if let Ok(target) = std::fs::read_link(root.join(&candidate)) {
                budget -= 1;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
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
    root.join(resolved)
}

fn err(what: &str, path: &Path) -> impl FnOnce(nix::Error) -> SandboxError {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |e| SandboxError::Syscall { call: what, path, errno: e }
}

fn ioerr(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |e| SandboxError::Io { what, path, source: e }
}

fn mkdir_p(p: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(p).map_err(ioerr("mkdir", p))
}

fn touch(p: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(p)
        .map_err(ioerr("create", p))?;
    Ok(())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

fn cstr(p: &Path) -> Result<std::ffi::CString, SandboxError> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Usage(format!("{} contains a NUL byte", p.display())))
}

/// Bind `src` onto `dst` (recursively), without following a symlink at
/// either end, optionally read-only. Uses the new mount API so symlinks can
/// be bound as such; falls back to mount(2) on old kernels.
fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<(), SandboxError> {
    let csrc = cstr(src)?;
    let cdst = cstr(dst)?;
    // SAFETY: valid NUL-terminated paths; the returned fd is closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            csrc.as_ptr(),
            OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | AT_RECURSIVE
                | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
        )
    };
    if fd < 0 {
        let errno = nix::Error::last();
        if errno != nix::Error::ENOSYS {
            return Err(SandboxError::Syscall { call: "open_tree".into(), path: src.to_path_buf(), errno });
        }
        return bind_legacy(src, dst, readonly);
    }
    let fd = fd as libc::c_int;
    let result = (|| {
        if readonly {
            let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
            let empty = c"";
            // SAFETY: fd is an open mount fd; attr is a valid mount_attr of the given size.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    fd,
                    empty.as_ptr(),
                    (libc::AT_EMPTY_PATH as libc::c_uint) | AT_RECURSIVE,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                )
            };
            if r < 0 {
                return Err(SandboxError::Syscall {
                    call: "mount_setattr".into(),
                    path: dst.to_path_buf(),
                    errno: nix::Error::last(),
                });
            }
        }
        let empty = c"";
        // SAFETY: fd is an open mount fd and cdst a valid path.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd,
                empty.as_ptr(),
                libc::AT_FDCWD,
                cdst.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r < 0 {
            return Err(SandboxError::Syscall {
                call: "move_mount".into(),
                path: dst.to_path_buf(),
                errno: nix::Error::last(),
            });
        }
        Ok(())
    })();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    result
}

fn bind_legacy(src: &Path, dst: &Path, readonly: bool) -> Result<(), SandboxError> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(err("mount", dst))?;
    if readonly {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err("remount read-only", dst))?;
    }
    Ok(())
}

fn is_tmp(dst: &Path) -> bool {
    dst.ends_with("tmp")
        && (dst == Path::new("/tmp") || dst.ends_with("var/tmp") || dst.to_string_lossy().ends_with("/tmp"))
}

impl FsOp {
    /// Execute the operation; `oldroot` and `newroot` are directories of the
    /// current (scratch) root.
    pub fn execute(&self, oldroot: &Path, newroot: &Path) -> Result<(), SandboxError> {
        match self {
            FsOp::Tmpfs { dst } => {
                let d = chase(newroot, dst, false);
                mkdir_p(&d, 0o755)?;
                let options = if is_tmp(dst) { None } else { Some("mode=0755") };
                mount(Some("tmpfs"), &d, Some("tmpfs"), MsFlags::empty(), options).map_err(err("mount tmpfs", &d))?;
            }
            FsOp::Dev { dst, tty } => {
                let d = chase(newroot, dst, false);
                mkdir_p(&d, 0o755)?;
                mount(Some("tmpfs"), &d, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
                    .map_err(err("mount tmpfs", &d))?;
                for node in ["null", "zero", "full", "random", "urandom", "tty", "fuse"] {
                    let src = oldroot.join("dev").join(node);
                    if node == "fuse" && !src.exists() {
                        continue;
                    }
                    let ndst = d.join(node);
                    touch(&ndst, 0o644)?;
                    mount(Some(&src), &ndst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                        .map_err(err("mount", &ndst))?;
                }
                for (i, node) in ["stdin", "stdout", "stderr"].iter().enumerate() {
                    std::os::unix::fs::symlink(format!("/proc/self/fd/{i}"), d.join(node))
                        .map_err(ioerr("symlink", &d))?;
                }
                std::os::unix::fs::symlink("/proc/self/fd", d.join("fd")).map_err(ioerr("symlink", &d))?;
                std::os::unix::fs::symlink("/proc/kcore", d.join("core")).map_err(ioerr("symlink", &d))?;
                mkdir_p(&d.join("shm"), 0o1777)?;
                set_mode(&d.join("shm"), 0o1777)?;
                mkdir_p(&d.join("pts"), 0o755)?;
                mount(
                    Some("devpts"),
                    &d.join("pts"),
                    Some("devpts"),
                    MsFlags::empty(),
                    Some("newinstance,ptmxmode=0666,mode=620"),
                )
                .map_err(err("mount devpts", &d))?;
                std::os::unix::fs::symlink("pts/ptmx", d.join("ptmx")).map_err(ioerr("symlink", &d))?;
                if let Some(tty) = tty {
                    let console = d.join("console");
                    touch(&console, 0o644)?;
                    let src = oldroot.join(tty.strip_prefix("/").unwrap_or(tty));
                    mount(Some(&src), &console, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                        .map_err(err("mount", &console))?;
                }
            }
            FsOp::Dir { dst } => {
                let d = chase(newroot, dst, false);
                if let Some(parent) = d.parent() {
                    mkdir_p(parent, 0o755)?;
                }
                if !d.exists() {
                    let mode = if is_tmp(dst) { 0o1777 } else { 0o755 };
                    mkdir_p(&d, mode)?;
                    set_mode(&d, mode)?;
                }
            }
            FsOp::Bind { src, dst, readonly, required, relative, nofollow } => {
                let base = if *relative { newroot } else { oldroot };
                let s = chase(base, src, *nofollow);
                let exists = if *nofollow { std::fs::symlink_metadata(&s).is_ok() } else { s.exists() };
                if !exists {
                    if *required {
                        return Err(SandboxError::Missing { path: src.clone() });
                    }
                    return Ok(());
                }
                let src_is_link = *nofollow && std::fs::symlink_metadata(&s).map(|m| m.is_symlink()).unwrap_or(false);
                let src_is_dir = s.is_dir() && !src_is_link;

                let raw_dst = newroot.join(dst.strip_prefix("/").unwrap_or(dst));
                if !src_is_dir && std::fs::symlink_metadata(&raw_dst).map(|m| m.is_symlink()).unwrap_or(false) {
                    return bind(&s, &raw_dst, *readonly);
                }
                let d = chase(newroot, dst, false);
                if std::fs::symlink_metadata(&d).is_err() {
                    if let Some(parent) = d.parent() {
                        mkdir_p(parent, 0o755)?;
                    }
                    if src_is_dir {
                        mkdir_p(&d, 0o755)?;
                    } else {
                        touch(&d, 0o644)?;
                    }
                }
                bind(&s, &d, *readonly)?;
            }
            FsOp::Symlink { target, dst } => {
                let d = newroot.join(dst.strip_prefix("/").unwrap_or(dst));
                if let Some(parent) = d.parent() {
                    mkdir_p(parent, 0o755)?;
                }
                match std::os::unix::fs::symlink(target, &d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if std::fs::read_link(&d).ok().as_deref() == Some(target.as_path()) {
                            return Ok(());
                        }
                        if d.is_dir() {
                            return Err(ioerr("symlink", &d)(e));
                        }
                        // Put the symlink elsewhere and mount it over the existing file.
                        let tmp = PathBuf::from("/symlink");
                        std::os::unix::fs::symlink(target, &tmp).map_err(ioerr("symlink", &tmp))?;
                        let r = bind(&tmp, &d, false);
                        let _ = std::fs::remove_file(&tmp);
                        r?;
                    }
                    Err(e) => return Err(ioerr("symlink", &d)(e)),
                }
            }
            FsOp::Write { data, dst } => {
                let d = chase(newroot, dst, false);
                if let Some(parent) = d.parent() {
                    mkdir_p(parent, 0o755)?;
                }
                std::fs::write(&d, data).map_err(ioerr("write", &d))?;
            }
            FsOp::Overlay { lowers, upper, work, dst } => {
                let lowers: Vec<PathBuf> = lowers.iter().map(|l| chase(oldroot, l, false)).collect();
                for l in &lowers {
                    if !l.exists() {
                        return Err(SandboxError::Missing { path: l.clone() });
                    }
                }
                let d = chase(newroot, dst, false);
                if let Some(parent) = d.parent() {
                    mkdir_p(parent, 0o755)?;
                }
                let mode = if is_tmp(dst) { 0o1777 } else { 0o755 };
                if !d.exists() {
                    mkdir_p(&d, mode)?;
                }
                let lowerdir: Vec<String> = lowers.iter().map(|l| l.to_string_lossy().into_owned()).collect();
                let mut options = vec![
                    format!("lowerdir={}", lowerdir.join(":")),
                    "userxattr".into(),
                    "index=off".into(),
                    "metacopy=off".into(),
                ];
                match upper {
                    Some(u) if u.as_os_str() == "tmpfs" => {
                        mount(Some("tmpfs"), &d, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
                            .map_err(err("mount tmpfs", &d))?;
                        mkdir_p(&d.join("upper"), mode)?;
                        mkdir_p(&d.join("work"), 0o755)?;
                        options.push(format!("upperdir={}/upper", d.display()));
                        options.push(format!("workdir={}/work", d.display()));
                    }
                    Some(u) => {
                        let u = chase(oldroot, u, false);
                        if !u.exists() {
                            return Err(SandboxError::Missing { path: u });
                        }
                        options.push(format!("upperdir={}", u.display()));
                        if let Some(w) = work {
                            let w = chase(oldroot, w, false);
                            if !w.exists() {
                                return Err(SandboxError::Missing { path: w });
                            }
                            options.push(format!("workdir={}", w.display()));
                        }
                    }
                    None => {}
                }
                mount(Some("overlayfs"), &d, Some("overlay"), MsFlags::empty(), Some(options.join(",").as_str()))
                    .map_err(err("mount overlay", &d))?;
            }
        }
        Ok(())
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(ioerr("chmod", p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(src: &str, dst: &str) -> FsOp {
        FsOp::Bind {
            src: src.into(),
            dst: dst.into(),
            readonly: false,
            required: true,
            relative: false,
            nofollow: false,
        }
    }

    #[test]
    fn optimize_drops_covered_binds_and_sorts() {
        let ops = vec![
            b("/usr/lib", "/usr/lib"),
            FsOp::Tmpfs { dst: "/tmp".into() },
            b("/usr", "/usr"),
            b("/usr", "/usr"),
            b("/home/x/src", "/work/src"),
            FsOp::Dir { dst: "/work".into() },
            FsOp::Bind {
                src: "/etc".into(),
                dst: "/etc".into(),
                readonly: true,
                required: true,
                relative: true,
                nofollow: false,
            },
        ];
        let out = optimize(ops);
        let dsts: Vec<String> = out.iter().map(|o| o.dst().display().to_string()).collect();
        assert_eq!(dsts, vec!["/tmp", "/usr", "/work", "/work/src", "/etc"]);
        // A non-bind on the same destination comes before the bind.
        let out = optimize(vec![b("/x", "/a"), FsOp::Dir { dst: "/a".into() }]);
        assert!(matches!(out[0], FsOp::Dir { .. }) && matches!(out[1], FsOp::Bind { .. }));
    }

    #[test]
    fn chase_stays_in_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::os::unix::fs::symlink("/usr", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../..", r.join("usr/up")).unwrap();
        assert_eq!(chase(r, Path::new("/bin/sh"), false), r.join("usr/bin/sh"));
        assert_eq!(chase(r, Path::new("/abs/bin"), false), r.join("usr/bin"));
        assert_eq!(chase(r, Path::new("/usr/up/etc"), false), r.join("etc"));
        assert_eq!(chase(r, Path::new("/bin"), true), r.join("bin"));
        assert_eq!(chase(r, Path::new("/missing/x"), false), r.join("missing/x"));
    }
}
