//! Mounts made by the build process itself (not by a sandbox): its private mount namespace
//! and the overlay of `Overlay=yes` builds.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::SandboxError;

fn err(what: &str, path: &Path) -> impl FnOnce(nix::Error) -> SandboxError {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |errno| SandboxError::Syscall { call: what, path, errno }
}

/// Moves the calling process into its own mount namespace in which nothing propagates back,
/// so every mount it makes disappears when it exits, however it exits. Call it while the
/// process has a single thread (right after [`crate::userns::become_root`]).
pub fn private_mount_namespace() -> Result<(), SandboxError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(err("unshare(CLONE_NEWNS)", Path::new("/")))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(err("making mounts private", Path::new("/")))
}

/// An overlay filesystem mounted by [`mount_overlay`]; unmounted when dropped.
#[derive(Debug)]
pub struct OverlayMount {
    dst: PathBuf,
    mounted: bool,
}

impl OverlayMount {
    /// Unmounts it now, reporting failure.
    pub fn unmount(mut self) -> Result<(), SandboxError> {
        self.mounted = false;
        umount2(&self.dst, MntFlags::empty()).map_err(err("umount", &self.dst))
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount2(&self.dst, MntFlags::MNT_DETACH);
        }
    }
}

/// Mounts an overlay of `lowers` (the first is the top-most) at `dst`, with `upper` and `work`
/// as upper and work directory, or read-only without them.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    dst: &Path,
) -> Result<OverlayMount, SandboxError> {
    if lowers.is_empty() {
        return Err(SandboxError::Usage("an overlay needs at least one lower directory".into()));
    }
    for l in lowers {
        if !l.is_dir() {
            return Err(SandboxError::Missing { path: l.clone() });
        }
    }
    let lowerdir: Vec<String> = lowers
        .iter()
        .map(|l| l.to_string_lossy().replace('\\', "\\\\").replace(':', "\\:").replace(',', "\\,"))
        .collect();
    let mut options = vec![format!("lowerdir={}", lowerdir.join(":")), "userxattr".into()];
    let mut flags = MsFlags::empty();
    match upper {
        Some((u, w)) => {
            options.push(format!("upperdir={}", u.display()));
            options.push(format!("workdir={}", w.display()));
        }
        None => flags |= MsFlags::MS_RDONLY,
    }
    mount(Some("overlay"), dst, Some("overlay"), flags, Some(options.join(",").as_str()))
        .map_err(err("mount overlay", dst))?;
    Ok(OverlayMount { dst: dst.to_path_buf(), mounted: true })
}
