//! Copying, extracting and removing trees.

use std::path::{Path, PathBuf};

use mkosi_sandbox::run::{self, Cmd};

use crate::error::{io, BuildError, Result};

/// Copy `src` to `dst` with `cp`, merging directories; reflinks where the
/// file system supports them. `preserve` keeps owners, timestamps and xattrs.
pub fn copy_tree(src: &Path, dst: &Path, preserve: bool) -> Result<()> {
    let attrs = if preserve { "mode,links,timestamps,ownership,xattr" } else { "mode,links" };
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let mut argv: Vec<String> = vec![
        "cp".into(),
        "--recursive".into(),
        "--no-dereference".into(),
        format!("--preserve={attrs}"),
        "--reflink=auto".into(),
        "--copy-contents".into(),
        src.to_string_lossy().into_owned(),
        dst.to_string_lossy().into_owned(),
    ];
    if src.is_dir() {
        argv.push("--no-target-directory".into());
    }
    run::run(&Cmd::new(argv))?;
    Ok(())
}

/// Whether `src` looks like a tarball (`.tar`, `.tar.*`).
pub fn is_tar(src: &Path) -> bool {
    let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() >= 2 && parts[parts.len().saturating_sub(2)..].contains(&"tar")
}

/// Extract a tarball into `dst`.
pub fn extract_tar(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io("creating", dst))?;
    let argv: Vec<String> = vec![
        "tar".into(),
        "--extract".into(),
        "--file".into(),
        src.to_string_lossy().into_owned(),
        "--directory".into(),
        dst.to_string_lossy().into_owned(),
        "--keep-directory-symlink".into(),
        "--no-overwrite-dir".into(),
        "--same-permissions".into(),
        "--numeric-owner".into(),
        "--same-order".into(),
        "--xattrs".into(),
        "--force-local".into(),
        "--exclude=./dev/*".into(),
        "--exclude=./proc/*".into(),
        "--exclude=./sys/*".into(),
        "--exclude=./tmp/*".into(),
        "--exclude=./run/*".into(),
        "--exclude=./var/tmp/*".into(),
    ];
    run::run(&Cmd::new(argv))?;
    Ok(())
}

/// Install a tree (directory, tarball or single file) at `dst` (+ `target`).
pub fn install_tree(src: &Path, dst: &Path, target: Option<&Path>, preserve: bool) -> Result<()> {
    let t: PathBuf = match target {
        Some(t) => dst.join(t.strip_prefix("/").unwrap_or(t)),
        None => dst.to_path_buf(),
    };
    if let Some(parent) = t.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    if src.is_dir() || (src.is_file() && target.is_some()) {
        copy_tree(src, &t, preserve)
    } else if is_tar(src) {
        extract_tar(src, &t)
    } else if src.extension().is_some_and(|e| e == "raw") {
        Err(BuildError::msg(format!(
            "{}: disk image trees are not supported yet (they need systemd-dissect)",
            src.display()
        )))
    } else {
        copy_tree(src, &t, preserve)
    }
}

/// Move a tree: rename when possible, else copy and remove the source.
pub fn move_tree(src: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    if std::fs::rename(src, dst).is_ok() {
        return Ok(());
    }
    copy_tree(src, dst, true)?;
    rmtree(&[src.to_path_buf()])
}

/// Remove paths recursively (missing ones are fine).
pub fn rmtree(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        match std::fs::symlink_metadata(p) {
            Err(_) => continue,
            Ok(m) if m.is_dir() => {
                if std::fs::remove_dir_all(p).is_err() {
                    // Directories without write permission (0500 /boot…) block removal.
                    make_writable(p);
                    std::fs::remove_dir_all(p).map_err(io("removing", p))?;
                }
            }
            Ok(_) => std::fs::remove_file(p).map_err(io("removing", p))?,
        }
    }
    Ok(())
}

/// Directories without write permission (e.g. 0500 /boot) cannot be emptied; fix that first.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(md) = std::fs::symlink_metadata(dir) else { return };
    if !md.is_dir() {
        return;
    }
    let mode = md.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_names() {
        assert!(is_tar(Path::new("a.tar")));
        assert!(is_tar(Path::new("a.tar.zst")));
        assert!(!is_tar(Path::new("a.raw")));
        assert!(!is_tar(Path::new("tar")));
    }

    #[test]
    fn copy_and_remove() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/f"), "x").unwrap();
        let dst = d.path().join("dst");
        std::fs::create_dir_all(dst.join("a")).unwrap();
        std::fs::write(dst.join("a/keep"), "k").unwrap();
        copy_tree(&src, &dst, true).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("a/b/f")).unwrap(), "x");
        assert!(dst.join("a/keep").exists());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dst.join("a/b"), std::fs::Permissions::from_mode(0o500)).unwrap();
        rmtree(std::slice::from_ref(&dst)).unwrap();
        assert!(!dst.exists());
    }
}

/// `Path(root).glob(pattern)` with pathlib's semantics: `*` and `?` match
/// within one component (hidden files included), `**` matches any number of
/// directories.
pub fn path_glob(root: &Path, pattern: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, parts: &[&str], out: &mut Vec<PathBuf>) {
        let Some((first, rest)) = parts.split_first() else {
            out.push(dir.to_path_buf());
            return;
        };
        if *first == "**" {
            // Zero directories…
            walk(dir, rest, out);
            // …or one more, recursively (not following symlinks).
            if let Ok(rd) = std::fs::read_dir(dir) {
                let mut subdirs: Vec<PathBuf> = rd
                    .flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path())
                    .collect();
                subdirs.sort();
                for d in subdirs {
                    walk(&d, parts, out);
                }
            }
            return;
        }
        if !mkosi_config::pyglob::has_magic(first) {
            let p = dir.join(first);
            if std::fs::symlink_metadata(&p).is_ok() {
                walk(&p, rest, out);
            }
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for n in names {
            if mkosi_config::pyglob::fnmatch(first, &n) {
                walk(&dir.join(&n), rest, out);
            }
        }
    }
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let mut out = Vec::new();
    if parts.is_empty() {
        return out;
    }
    walk(root, &parts, &mut out);
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod glob_tests {
    use super::*;

    #[test]
    fn pathlib_globs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in ["usr/share/doc/a/README", "usr/share/doc/.hidden", "usr/lib/x.so", "etc/x.conf"] {
            std::fs::create_dir_all(r.join(f).parent().unwrap()).unwrap();
            std::fs::write(r.join(f), "").unwrap();
        }
        let rel =
            |v: Vec<PathBuf>| v.iter().map(|p| p.strip_prefix(r).unwrap().display().to_string()).collect::<Vec<_>>();
        assert_eq!(rel(path_glob(r, "usr/share/doc/*")), vec!["usr/share/doc/.hidden", "usr/share/doc/a"]);
        assert_eq!(rel(path_glob(r, "**/*.so")), vec!["usr/lib/x.so"]);
        assert_eq!(rel(path_glob(r, "etc/x.conf")), vec!["etc/x.conf"]);
        assert!(path_glob(r, "nothing/*").is_empty());
    }
}
