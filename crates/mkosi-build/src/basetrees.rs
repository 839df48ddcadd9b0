//! `BaseTrees=`: start from existing trees instead of bootstrapping. Each
//! base tree (a directory, a tarball or a disk image) is copied into the
//! root before anything else, and only `Packages=` are installed on top.
//! (`Overlay=yes`, which keeps only the difference, is for extension images
//! and not implemented yet.)

use std::path::{Path, PathBuf};

use mkosi_distro::apt::Apt;
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
