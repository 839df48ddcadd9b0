//! Staging the files that go into a partition's filesystem.
//!
//! repart copies every `CopyFiles=` source into a temporary directory (minus what is excluded),
//! adds `MakeDirectories=`/`MakeSymlinks=`, and hands that directory to `mkfs`. Copying a whole
//! root is slow, so we do two things instead:
//!
//! * When the partition takes exactly the image root (`CopyFiles=/`) and nothing in it is
//!   excluded, the root itself is handed to `mkfs`.
//! * Otherwise the staging tree is a *hard link farm*: directories are recreated with their
//!   metadata, everything else is hard-linked (copied only if linking fails), which costs one
//!   system call per file. mkfs tools only read the tree, and it is deleted right after.
//!
//! Exclusions follow repart: they are resolved inside the image root and matched by inode;
//! `proc sys dev tmp run var/tmp` always lose their contents; a root partition filled from `/`
//! also loses the contents of the mount points of the other partitions (`/efi`, `/boot`, `/usr`,
//! `/home`, …); `ExcludeFiles=` and `ExcludeFilesTarget=` drop an entry, or only its contents
//! when written with a trailing slash.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use mkosi_formats::gpt::Designator;

use super::definition::Definition;
use super::{io, RepartError, Result};

const APIVFS_TMP_DIRS: [&str; 6] = ["proc", "sys", "dev", "tmp", "run", "var/tmp"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deny {
    /// Leave the entry out.
    Inode,
    /// Keep the directory, leave out what is in it.
    Contents,
}

type Denylist = HashMap<(u64, u64), Deny>;

/// What [`populate`] needs besides the definition.
pub struct PopulateSpec<'a> {
    /// The image root the `CopyFiles=` sources are resolved in.
    pub root: &'a Path,
    pub def: &'a Definition,
    /// The mount points of the other partitions of the image (for a root partition).
    pub other_mountpoints: Vec<&'static str>,
    /// `SOURCE_DATE_EPOCH`, for the timestamps of directories we create.
    pub source_date_epoch: Option<u64>,
    /// Whether files may be hard-linked into the staging tree. mkfs.btrfs (up to at least
    /// 6.2) records wrong link counts for files with more than one link, so for btrfs they
    /// are copied.
    pub hardlinks: bool,
}

/// The tree to make a filesystem from.
#[derive(Debug)]
pub enum Populated {
    /// The image root itself, unchanged.
    Root(PathBuf),
    /// A staging tree created for this partition (delete it when done).
    Staged(PathBuf),
}

impl Populated {
    pub fn path(&self) -> &Path {
        match self {
            Populated::Root(p) | Populated::Staged(p) => p,
        }
    }
}

/// Resolves `rel` inside `root`, following symlinks as if `root` were `/`.
pub(crate) fn chase(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut cur = root.to_path_buf();
    let mut todo: Vec<String> = rel.split('/').filter(|c| !c.is_empty()).map(String::from).rev().collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                if cur != root {
                    cur.pop();
                }
                continue;
            }
            _ => {}
        }
        let next = cur.join(&c);
        let md = std::fs::symlink_metadata(&next).ok()?;
        if md.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&next).ok()?;
            if target.is_absolute() {
                cur = root.to_path_buf();
            }
            for comp in target.components().rev() {
                if let Component::Normal(n) = comp {
                    todo.push(n.to_string_lossy().into_owned());
                } else if comp == Component::ParentDir {
                    todo.push("..".into());
                }
            }
        } else {
            cur = next;
        }
    }
    Some(cur)
}

fn add_exclude(root: &Path, path: &str, deny: Deny, list: &mut Denylist) {
    if let Some(p) = chase(root, path) {
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            list.entry((md.dev(), md.ino())).or_insert(deny);
        }
    }
}

fn deny_kind(path: &str) -> Deny {
    if path.ends_with('/') {
        Deny::Contents
    } else {
        Deny::Inode
    }
}

fn strip_prefix_path<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix == "/" {
        return Some(path.trim_start_matches('/'));
    }
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() || rest.starts_with('/') {
        Some(rest.trim_start_matches('/'))
    } else {
        None
    }
}

/// The denylist for one `CopyFiles=` pair, or `None` when the pair is excluded as a whole.
fn denylist(spec: &PopulateSpec, source: &str, target: &str) -> Option<Denylist> {
    let root = spec.root;
    let d = spec.def;
    let mut list = Denylist::new();
    for s in APIVFS_TMP_DIRS {
        add_exclude(root, s, Deny::Contents, &mut list);
    }
    for e in &d.exclude_files {
        if strip_prefix_path(source, e).is_some() {
            return None;
        }
        add_exclude(root, e, deny_kind(e), &mut list);
    }
    for e in &d.exclude_files_target {
        if strip_prefix_path(target, e).is_some() {
            return None;
        }
        if let Some(rest) = strip_prefix_path(e, target) {
            let p = format!("{}/{}", source.trim_end_matches('/'), rest);
            add_exclude(root, &p, deny_kind(e), &mut list);
        }
    }
    if d.designator() == Some(Designator::Root) && target == "/" {
        for m in spec.other_mountpoints.iter().chain(APIVFS_TMP_DIRS.iter()) {
            let p = format!("{}/{}", source.trim_end_matches('/'), m.trim_start_matches('/'));
            add_exclude(root, &p, Deny::Contents, &mut list);
        }
    }
    Some(list)
}

/// Whether anything below `dir` is denylisted (so the tree cannot be used as it is).
fn tree_has_denied(dir: &Path, list: &Denylist) -> Result<bool> {
    if list.is_empty() {
        return Ok(false);
    }
    // Anything excluded that has content, or is itself an entry to leave out, makes the tree
    // unusable as it is.
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(io("reading", &d))?;
        for e in rd {
            let e = e.map_err(io("reading", &d))?;
            let md = e.metadata().map_err(io("reading", e.path()))?;
            match list.get(&(md.dev(), md.ino())) {
                Some(Deny::Inode) => return Ok(true),
                Some(Deny::Contents) => {
                    if md.is_dir() && std::fs::read_dir(e.path()).map_err(io("reading", e.path()))?.next().is_some() {
                        return Ok(true);
                    }
                }
                None => {
                    if md.is_dir() {
                        stack.push(e.path());
                    }
                }
            }
        }
    }
    Ok(false)
}

/// Stages the content of `spec.def`'s filesystem. `staging` is a directory path that does not
/// exist yet and may be created (it is only used when the root cannot be used as it is).
pub fn populate(spec: &PopulateSpec, staging: &Path) -> Result<Populated> {
    let d = spec.def;
    if d.copy_files.len() == 1
        && d.copy_files[0] == ("/".to_string(), "/".to_string())
        && d.make_directories.is_empty()
        && d.make_symlinks.is_empty()
        && d.subvolumes.is_empty()
    {
        if let Some(list) = denylist(spec, "/", "/") {
            if !tree_has_denied(spec.root, &list)? {
                return Ok(Populated::Root(spec.root.to_path_buf()));
            }
        }
    }

    std::fs::create_dir(staging).map_err(io("creating", staging))?;
    let out = Populated::Staged(staging.to_path_buf());
    let mut linker = Linker { epoch: spec.source_date_epoch, hardlinks: spec.hardlinks };

    // The root directory takes the metadata of the first directory copied to "/".
    for (src, dst) in &d.copy_files {
        if dst != "/" {
            continue;
        }
        if let Some(s) = chase(spec.root, src) {
            if let Ok(md) = std::fs::symlink_metadata(&s) {
                if md.is_dir() {
                    copy_metadata(&s, staging, &md)?;
                    break;
                }
            }
        }
    }

    for (src, dst) in &d.copy_files {
        let Some(list) = denylist(spec, src, dst) else { continue };
        let Some(s) = chase(spec.root, src) else {
            crate::log::info(&format!("{}: CopyFiles= source {src} does not exist, skipping", d.file_name()));
            continue;
        };
        let md = match std::fs::symlink_metadata(&s) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::log::info(&format!("{}: CopyFiles= source {src} does not exist, skipping", d.file_name()));
                continue;
            }
            Err(e) => return Err(io("reading", &s)(e)),
        };
        let target = staging.join(dst.trim_start_matches('/'));
        if md.is_dir() {
            if !target.is_dir() {
                if let Some(parent) = target.parent() {
                    linker.mkdir_p(staging, parent)?;
                }
                std::fs::create_dir(&target).map_err(io("creating", &target))?;
            }
            linker.copy_dir(&s, &target, &list)?;
            if dst != "/" {
                copy_metadata(&s, &target, &md)?;
            }
        } else {
            if list.contains_key(&(md.dev(), md.ino())) {
                continue;
            }
            if dst == "/" {
                return Err(RepartError::msg(format!(
                    "{}: target path '{dst}' refers to a directory, but source path '{src}' is a regular file",
                    d.file_name()
                )));
            }
            if let Some(parent) = target.parent() {
                linker.mkdir_p(staging, parent)?;
            }
            linker.link(&s, &target, &md)?;
        }
    }

    for dir in &d.make_directories {
        linker.mkdir_p(staging, &staging.join(dir.trim_start_matches('/')))?;
    }
    for (dir, _) in &d.subvolumes {
        linker.mkdir_p(staging, &staging.join(dir.trim_start_matches('/')))?;
    }
    for (path, target) in &d.make_symlinks {
        let p = staging.join(path.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            linker.mkdir_p(staging, parent)?;
        }
        std::os::unix::fs::symlink(target, &p).map_err(io("creating symlink", &p))?;
    }
    Ok(out)
}

struct Linker {
    epoch: Option<u64>,
    hardlinks: bool,
}

impl Linker {
    /// Creates `dir` and its missing parents (mode 0755, root-owned, timestamps at the epoch).
    fn mkdir_p(&mut self, staging: &Path, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            if parent != staging && parent.starts_with(staging) {
                self.mkdir_p(staging, parent)?;
            }
        }
        std::fs::create_dir(dir).map_err(io("creating", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod", dir))?;
        if let Some(e) = self.epoch {
            // Like repart: the new directory and the modification time of its parent.
            if let Some(parent) = dir.parent() {
                set_times(parent, 0, libc::UTIME_OMIT, e as i64, 0)?;
            }
            set_times(dir, e as i64, 0, e as i64, 0)?;
        }
        Ok(())
    }

    fn link(&mut self, src: &Path, dst: &Path, md: &std::fs::Metadata) -> Result<()> {
        if std::fs::symlink_metadata(dst).is_ok() {
            if std::fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir()) {
                return Err(RepartError::msg(format!("cannot replace directory {} with a file", dst.display())));
            }
            std::fs::remove_file(dst).map_err(io("removing", dst))?;
        }
        let linked =
            if self.hardlinks { std::fs::hard_link(src, dst) } else { Err(std::io::ErrorKind::Unsupported.into()) };
        match linked {
            Ok(()) => Ok(()),
            Err(_) if md.file_type().is_symlink() => {
                let t = std::fs::read_link(src).map_err(io("reading", src))?;
                std::os::unix::fs::symlink(&t, dst).map_err(io("creating symlink", dst))?;
                copy_owner(dst, md)?;
                set_times(dst, md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec())
            }
            Err(_) if md.is_file() => {
                std::fs::copy(src, dst).map_err(io("copying", src))?;
                copy_metadata(src, dst, md)
            }
            Err(_) if !self.hardlinks => {
                // Device nodes, FIFOs and sockets.
                let c = cpath(dst)?;
                // SAFETY: mknod with a valid path and the source's mode and device number.
                let r = unsafe { libc::mknod(c.as_ptr(), md.mode() as libc::mode_t, md.rdev() as libc::dev_t) };
                if r != 0 {
                    return Err(io("creating", dst)(std::io::Error::last_os_error()));
                }
                copy_metadata(src, dst, md)
            }
            Err(e) => Err(io("linking", src)(e)),
        }
    }

    fn copy_dir(&mut self, src: &Path, dst: &Path, list: &Denylist) -> Result<()> {
        let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(src)
            .map_err(io("reading", src))?
            .collect::<std::io::Result<_>>()
            .map_err(io("reading", src))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let md = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
            let deny = list.get(&(md.dev(), md.ino())).copied();
            if deny == Some(Deny::Inode) {
                continue;
            }
            let target = dst.join(e.file_name());
            if md.is_dir() {
                match std::fs::symlink_metadata(&target) {
                    Ok(t) if t.is_dir() => {}
                    Ok(_) => {
                        std::fs::remove_file(&target).map_err(io("removing", &target))?;
                        std::fs::create_dir(&target).map_err(io("creating", &target))?;
                    }
                    Err(_) => std::fs::create_dir(&target).map_err(io("creating", &target))?,
                }
                if deny != Some(Deny::Contents) {
                    self.copy_dir(&path, &target, list)?;
                }
                copy_metadata(&path, &target, &md)?;
            } else {
                self.link(&path, &target, &md)?;
            }
        }
        Ok(())
    }
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| RepartError::msg(format!("path with NUL: {}", p.display())))
}

fn copy_owner(dst: &Path, md: &std::fs::Metadata) -> Result<()> {
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid())).map_err(io("chown", dst))
}

fn set_times(p: &Path, atime: i64, atime_ns: i64, mtime: i64, mtime_ns: i64) -> Result<()> {
    let c = cpath(p)?;
    let ts = [
        libc::timespec { tv_sec: atime as libc::time_t, tv_nsec: atime_ns as libc::c_long },
        libc::timespec { tv_sec: mtime as libc::time_t, tv_nsec: mtime_ns as libc::c_long },
    ];
    // SAFETY: c is a valid NUL-terminated path and ts points to two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 {
        return Err(io("setting times of", p)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Copies owner, mode, extended attributes and timestamps of `src` to `dst`.
fn copy_metadata(src: &Path, dst: &Path, md: &std::fs::Metadata) -> Result<()> {
    copy_owner(dst, md)?;
    if !md.file_type().is_symlink() {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(io("chmod", dst))?;
    }
    copy_xattrs(src, dst)?;
    set_times(dst, md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec())
}

fn copy_xattrs(src: &Path, dst: &Path) -> Result<()> {
    let s = cpath(src)?;
    let d = cpath(dst)?;
    // SAFETY: querying the size of the attribute name list of a valid path.
    let n = unsafe { libc::llistxattr(s.as_ptr(), std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Ok(());
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: names has room for n bytes.
    let n = unsafe { libc::llistxattr(s.as_ptr(), names.as_mut_ptr() as *mut libc::c_char, names.len()) };
    if n <= 0 {
        return Ok(());
    }
    for name in names[..n as usize].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else { continue };
        // SAFETY: size query for one attribute.
        let len = unsafe { libc::lgetxattr(s.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            continue;
        }
        let mut val = vec![0u8; len as usize];
        // SAFETY: val has room for len bytes.
        let len =
            unsafe { libc::lgetxattr(s.as_ptr(), cname.as_ptr(), val.as_mut_ptr() as *mut libc::c_void, val.len()) };
        if len < 0 {
            continue;
        }
        // SAFETY: setting an attribute from a buffer of len bytes. Failures (e.g. attributes
        // the filesystem or namespace does not allow) are ignored like repart's COPY_ALL_XATTRS.
        unsafe {
            libc::lsetxattr(d.as_ptr(), cname.as_ptr(), val.as_ptr() as *const libc::c_void, len as usize, 0);
        }
    }
    Ok(())
}

/// Removes a staging tree created by [`populate`].
pub fn remove_staging(p: &Populated) -> Result<()> {
    if let Populated::Staged(dir) = p {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io("removing", dir))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repart::definition::{read_definitions, ParseOptions, Specifiers};

    fn def(text: &str) -> Definition {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-x.conf"), text).unwrap();
        let opts = ParseOptions {
            architecture: "x86-64".into(),
            foreign: false,
            specifiers: Specifiers::default(),
            have_signing_key: false,
        };
        read_definitions(&[dir.path().to_path_buf()], &opts).unwrap().remove(0)
    }

    fn tree(root: &Path, files: &[&str]) {
        for f in files {
            let p = root.join(f);
            if f.ends_with('/') {
                std::fs::create_dir_all(&p).unwrap();
            } else {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, f).unwrap();
            }
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                if e.file_type().unwrap().is_dir() {
                    out.push(format!("{rel}/"));
                    stack.push(e.path());
                } else {
                    out.push(rel);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_root_is_used_as_it_is_when_nothing_is_excluded() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        tree(&root, &["etc/os-release", "usr/bin/x", "proc/", "boot/", "tmp/"]);
        let d = def("[Partition]\nType=root\nCopyFiles=/\n");
        let spec = PopulateSpec {
            root: &root,
            def: &d,
            other_mountpoints: vec!["/efi", "/boot"],
            source_date_epoch: None,
            hardlinks: true,
        };
        let p = populate(&spec, &t.path().join("stage")).unwrap();
        assert!(matches!(p, Populated::Root(_)));
        assert!(!t.path().join("stage").exists());
    }

    #[test]
    fn excluded_contents_force_a_staging_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        tree(
            &root,
            &[
                "etc/os-release",
                "usr/bin/x",
                "boot/vmlinuz",
                "efi/EFI/BOOT/x.efi",
                "tmp/junk",
                "var/tmp/junk2",
                "var/lib/keep",
            ],
        );
        std::os::unix::fs::symlink("../usr/bin/x", root.join("etc/link")).unwrap();
        let d = def("[Partition]\nType=root\nCopyFiles=/\nExcludeFiles=/etc/os-release\n");
        let spec = PopulateSpec {
            root: &root,
            def: &d,
            other_mountpoints: vec!["/efi", "/boot"],
            source_date_epoch: Some(0),
            hardlinks: true,
        };
        let stage = t.path().join("stage");
        let p = populate(&spec, &stage).unwrap();
        assert!(matches!(p, Populated::Staged(_)));
        assert_eq!(
            listing(&stage),
            vec![
                "boot/",
                "efi/",
                "etc/",
                "etc/link",
                "tmp/",
                "usr/",
                "usr/bin/",
                "usr/bin/x",
                "var/",
                "var/lib/",
                "var/lib/keep",
                "var/tmp/"
            ]
        );
        // Files are hard links into the root, symlinks stay symlinks.
        let a = std::fs::metadata(root.join("usr/bin/x")).unwrap();
        let b = std::fs::metadata(stage.join("usr/bin/x")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(std::fs::read_link(stage.join("etc/link")).unwrap(), Path::new("../usr/bin/x"));
        remove_staging(&p).unwrap();
        assert!(!stage.exists());
        assert!(root.join("usr/bin/x").exists(), "the root is untouched");
    }

    #[test]
    fn esp_takes_boot_and_efi_and_make_directories() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        tree(&root, &["boot/vmlinuz", "efi/EFI/BOOT/BOOTX64.EFI", "etc/x"]);
        let d = def("[Partition]\nType=esp\nCopyFiles=/boot:/\nCopyFiles=/efi:/\nMakeDirectories=/loader/entries\nMakeSymlinks=/a:b\n");
        let spec = PopulateSpec {
            root: &root,
            def: &d,
            other_mountpoints: vec![],
            source_date_epoch: Some(7),
            hardlinks: true,
        };
        let stage = t.path().join("stage");
        populate(&spec, &stage).unwrap();
        assert_eq!(
            listing(&stage),
            vec!["EFI/", "EFI/BOOT/", "EFI/BOOT/BOOTX64.EFI", "a", "loader/", "loader/entries/", "vmlinuz"]
        );
        assert_eq!(std::fs::metadata(stage.join("loader")).unwrap().mtime(), 7);
    }

    #[test]
    fn copy_files_to_a_subdirectory_and_target_excludes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        tree(&root, &["usr/lib/a", "usr/lib/b/c", "usr/share/d", "opt/e"]);
        let d = def(
            "[Partition]\nType=usr\nCopyFiles=/usr:/\nCopyFiles=/opt/e:/x/e\nExcludeFilesTarget=/lib/b/\nExcludeFiles=/usr/share\n",
        );
        let spec =
            PopulateSpec { root: &root, def: &d, other_mountpoints: vec![], source_date_epoch: None, hardlinks: true };
        let stage = t.path().join("stage");
        populate(&spec, &stage).unwrap();
        assert_eq!(listing(&stage), vec!["lib/", "lib/a", "lib/b/", "x/", "x/e"]);
    }

    #[test]
    fn chase_stays_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        tree(&root, &["usr/lib/os-release", "etc/"]);
        std::os::unix::fs::symlink("/usr/lib/os-release", root.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("etc/up")).unwrap();
        assert_eq!(chase(&root, "etc/os-release").unwrap(), root.join("usr/lib/os-release"));
        assert_eq!(chase(&root, "etc/up").unwrap(), root);
    }
}
