//! `BaseTrees=`: start from existing trees instead of bootstrapping. Each
//! base tree (a directory, a tarball or a disk image) is copied into the
//! root before anything else, and only `Packages=` are installed on top.
//!
//! With `Overlay=yes` the base trees are not copied: they become the lower
//! layers of an overlay mounted on the root, whose upper layer is the root
//! directory itself. Everything the build adds lands in the upper layer;
//! afterwards whatever also exists in the base trees is removed from it, so
//! the image holds only what is new (as upstream does for extensions).

use std::path::{Path, PathBuf};

use mkosi_config::enums::OutputFormat;
use mkosi_distro::apt::Apt;
use mkosi_sandbox::mounts::{mount_overlay, OverlayMount};
use mkosi_sandbox::run::{self, Cmd};

use crate::context::Context;
use crate::error::{BuildError, Result};
use crate::pipeline::pm_env;
use crate::{log, tree};

/// What kind of base tree a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    Tar,
    DiskImage,
}

/// Classify a base tree (upstream's order: directory, tarball, `.raw` image).
pub fn kind(path: &Path) -> Option<Kind> {
    if path.is_dir() {
        Some(Kind::Directory)
    } else if tree::is_tar(path) {
        Some(Kind::Tar)
    } else if path.extension().is_some_and(|e| e == "raw") {
        Some(Kind::DiskImage)
    } else {
        None
    }
}

fn workdir(p: &Path) -> PathBuf {
    Path::new("/work").join(p.strip_prefix("/").unwrap_or(p))
}

/// Copy the `/` of a disk image into `dst` with `systemd-dissect --copy-from`.
fn copy_from_disk_image(ctx: &Context, src: &Path, dst: &Path) -> Result<()> {
    if run::find_binary("systemd-dissect", Path::new("/")).is_none() {
        return Err(BuildError::hint(
            format!("Base tree {} is a disk image, but systemd-dissect was not found", src.display()),
            "Install systemd-dissect (systemd 252 or newer, e.g. the systemd-container package on Debian and \
             Ubuntu) or use a directory or tar base tree",
        ));
    }
    let parent = dst.parent().unwrap_or(Path::new("/"));
    let options = ctx.sandbox(true, true)?.ro_bind(src, workdir(src)).bind(parent, workdir(parent));
    let cmd = Cmd::new([
        "systemd-dissect".to_string(),
        "--copy-from".to_string(),
        workdir(src).to_string_lossy().into_owned(),
        "/".to_string(),
        workdir(dst).to_string_lossy().into_owned(),
    ])
    .sandbox(options)
    .env([
        ("SYSTEMD_DISSECT_VERITY_EMBEDDED".to_string(), "no".to_string()),
        ("SYSTEMD_DISSECT_VERITY_SIDECAR".to_string(), "no".to_string()),
    ]);
    run::run(&cmd)?;
    Ok(())
}

/// Copy every base tree into the root, in order (later ones win).
pub fn install_base_trees(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let trees = c.paths("BaseTrees");
    if trees.is_empty() || c.bool("Overlay") {
        return Ok(());
    }
    log::step("Copying in base trees");
    let root = ctx.root();
    for path in trees {
        let src = std::fs::canonicalize(&path)
            .map_err(|e| BuildError::msg(format!("Base tree {} cannot be used: {e}", path.display())))?;
        match kind(&src) {
            Some(Kind::Directory) => tree::copy_tree(&src, &root, true)?,
            Some(Kind::Tar) => {
                log::step(&format!("Extracting tar archive {}", src.display()));
                tree::extract_tar(&src, &root)?
            }
            Some(Kind::DiskImage) => copy_from_disk_image(ctx, &src, &root)?,
            None => {
                return Err(BuildError::hint(
                    format!("Unsupported base tree source {}", src.display()),
                    "Base trees are directories, tar archives (.tar, .tar.zst, …) or disk images (.raw)",
                ))
            }
        }
    }
    Ok(())
}

/// The mounted base trees of an `Overlay=yes` build.
pub struct Overlay {
    mount: Option<OverlayMount>,
    /// The lower directories, top-most first.
    lowers: Vec<PathBuf>,
    /// Disk images mounted with systemd-dissect, to unmount at the end.
    dissected: Vec<PathBuf>,
}

impl Drop for Overlay {
    fn drop(&mut self) {
        self.mount.take();
        for d in self.dissected.drain(..) {
            let _ = run::run(
                &Cmd::new([
                    "systemd-dissect".to_string(),
                    "--umount".into(),
                    "--rmdir".into(),
                    d.to_string_lossy().into_owned(),
                ])
                .quiet(),
            );
        }
    }
}

/// `Overlay=yes` with base trees: mount them as the lower layers of an overlay on the root.
pub fn mount_base_trees(ctx: &Context) -> Result<Option<Overlay>> {
    let c = ctx.config;
    let trees = c.paths("BaseTrees");
    if trees.is_empty() || !c.bool("Overlay") {
        return Ok(None);
    }
    log::step("Mounting base trees");
    let bases = ctx.workspace.join("bases");
    std::fs::create_dir_all(&bases).map_err(crate::error::io("creating", &bases))?;
    let mut ov = Overlay { mount: None, lowers: Vec::new(), dissected: Vec::new() };
    for (n, path) in trees.iter().enumerate() {
        let src = std::fs::canonicalize(path)
            .map_err(|e| BuildError::msg(format!("Base tree {} cannot be used: {e}", path.display())))?;
        let name = src.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let d = bases.join(format!("{name}-{n}"));
        match kind(&src) {
            Some(Kind::Directory) => ov.lowers.push(src),
            Some(Kind::Tar) => {
                std::fs::create_dir_all(&d).map_err(crate::error::io("creating", &d))?;
                tree::extract_tar(&src, &d)?;
                ov.lowers.push(d);
            }
            Some(Kind::DiskImage) => {
                if run::find_binary("systemd-dissect", Path::new("/")).is_none() {
                    return Err(BuildError::hint(
                        format!("Base tree {} is a disk image, but systemd-dissect was not found", src.display()),
                        "Install systemd-dissect (the systemd-container package on Debian) or use a directory or tar base tree",
                    ));
                }
                let cmd = Cmd::new([
                    "systemd-dissect".to_string(),
                    "--mount".into(),
                    "--mkdir".into(),
                    "--read-only".into(),
                    src.to_string_lossy().into_owned(),
                    d.to_string_lossy().into_owned(),
                ])
                .env([
                    ("SYSTEMD_DISSECT_VERITY_EMBEDDED".to_string(), "no".to_string()),
                    ("SYSTEMD_DISSECT_VERITY_SIDECAR".to_string(), "no".to_string()),
                ]);
                run::run(&cmd)?;
                ov.dissected.push(d.clone());
                ov.lowers.push(d);
            }
            None => {
                return Err(BuildError::hint(
                    format!("Unsupported base tree source {}", src.display()),
                    "Base trees are directories, tar archives (.tar, .tar.zst, …) or disk images (.raw)",
                ))
            }
        }
    }
    let root = ctx.root();
    let work = ctx.workspace.join("overlay-work");
    std::fs::create_dir_all(&work).map_err(crate::error::io("creating", &work))?;
    ov.mount = Some(mount_overlay(&ov.lowers, Some((&root, &work)), &root)?);
    Ok(Some(ov))
}

/// Unmounts the overlay and removes from the upper layer (the root) whatever the base trees
/// already have: files and symlinks are deleted, directories in both keep the base's
/// permissions and timestamps. For sysext only `/usr` and `/opt` are compared, for confext
/// only `/etc`. Whiteouts are removed.
pub fn finish_overlay(ctx: &Context, mut ov: Overlay) -> Result<()> {
    log::step("Removing what the base trees already have");
    if let Some(m) = ov.mount.take() {
        m.unmount()?;
    }
    let root = ctx.root();
    remove_whiteouts(&root)?;
    let merged_dir = ctx.workspace.join("lower");
    let (lower, _merged) = if ov.lowers.len() == 1 {
        (ov.lowers[0].clone(), None)
    } else {
        std::fs::create_dir_all(&merged_dir).map_err(crate::error::io("creating", &merged_dir))?;
        (merged_dir.clone(), Some(mount_overlay(&ov.lowers, None, &merged_dir)?))
    };
    let format = ctx.config.output_format();
    dedupe(&root, &lower, Path::new(""), format)?;
    Ok(())
}

fn remove_whiteouts(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let rd = std::fs::read_dir(dir).map_err(crate::error::io("reading", dir))?;
    for e in rd {
        let e = e.map_err(crate::error::io("reading", dir))?;
        let md = std::fs::symlink_metadata(e.path()).map_err(crate::error::io("reading", e.path()))?;
        if md.file_type().is_char_device() && md.rdev() == 0 {
            std::fs::remove_file(e.path()).map_err(crate::error::io("removing", e.path()))?;
        } else if md.is_dir() {
            remove_whiteouts(&e.path())?;
        }
    }
    Ok(())
}

fn dedupe(upper: &Path, lower: &Path, rel: &Path, format: OutputFormat) -> Result<()> {
    let dir = upper.join(rel);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(crate::error::io("reading", &dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let Some(name) = p.file_name() else { continue };
        let r = rel.join(name);
        let wanted = match format {
            OutputFormat::Sysext => r.starts_with("usr") || r.starts_with("opt"),
            OutputFormat::Confext => r.starts_with("etc"),
            _ => true,
        };
        if !wanted {
            continue;
        }
        let q = lower.join(&r);
        let Ok(qmd) = std::fs::symlink_metadata(&q) else { continue };
        let pmd = std::fs::symlink_metadata(&p).map_err(crate::error::io("reading", &p))?;
        if pmd.is_dir() {
            if !qmd.is_dir() {
                return Err(BuildError::msg(format!(
                    "/{} is a directory in the overlay but not in the base tree",
                    r.display()
                )));
            }
            dedupe(upper, lower, &r, format)?;
            // The base's permissions and timestamps (after the children changed the mtime).
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(qmd.mode() & 0o7777))
                .map_err(crate::error::io("chmod", &p))?;
            let t = |s: i64, ns: i64| libc::timespec { tv_sec: s as libc::time_t, tv_nsec: ns as libc::c_long };
            let times = [t(qmd.atime(), qmd.atime_nsec()), t(qmd.mtime(), qmd.mtime_nsec())];
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| BuildError::msg(format!("path with NUL: {}", p.display())))?;
            // SAFETY: a valid path and two timespecs.
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
        } else {
            log::debug(&format!("Removing duplicate path /{} from overlay", r.display()));
            std::fs::remove_file(&p).map_err(crate::error::io("removing", &p))?;
        }
    }
    Ok(())
}

/// With base trees nothing is bootstrapped: only `Packages=` are installed
/// on top of them.
pub fn install_packages(ctx: &Context) -> Result<()> {
    let packages = ctx.config.strings("Packages");
    if packages.is_empty() || mkosi_distro::package_manager(ctx.config)? != "apt" {
        return Ok(());
    }
    log::step(&format!("Installing extra packages for {}", ctx.config.distribution().pretty_name()));
    let env = pm_env(ctx)?;
    Apt::new(ctx.config, &env).install(&packages, true, false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(kind(d.path()), Some(Kind::Directory));
        for (name, k) in [
            ("base.tar", Some(Kind::Tar)),
            ("base.tar.zst", Some(Kind::Tar)),
            ("base.raw", Some(Kind::DiskImage)),
            ("base.img", None),
        ] {
            let p = d.path().join(name);
            std::fs::write(&p, b"").unwrap();
            assert_eq!(kind(&p), k, "{name}");
        }
    }
}
