//! The built-in configurations (`mkosi-initrd`, `mkosi-tools`, `mkosi-vm`,
//! `mkosi-addon`, `mkosi-obs`) and other resources ship inside the binary and
//! are extracted on first use into a directory named after their content
//! hash, so configuration parsing can read them like any other tree.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use include_dir::{include_dir, Dir, DirEntry};
use mkosi_config::Host;

static RESOURCES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../resources");
const HASH: &str = env!("MKOSI_RESOURCES_HASH");

fn extract(dir: &Dir, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in dir.entries() {
        let path = dest.join(entry.path().strip_prefix(dir.path()).unwrap_or(entry.path()));
        match entry {
            DirEntry::Dir(d) => {
                std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
                extract(d, &path)?;
            }
            DirEntry::File(f) => {
                std::fs::write(&path, f.contents()).with_context(|| format!("writing {}", path.display()))?;
                let mode = if f.contents().starts_with(b"#!") { 0o755 } else { 0o644 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    Ok(())
}

/// Directory holding the resources, extracting them if needed.
/// `$MKOSI_RESOURCES` points at an unpacked tree instead (for development).
pub fn resources_dir(host: &Host) -> Result<PathBuf> {
    if let Some(p) = host.env("MKOSI_RESOURCES").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let cache = mkosi_config::summary::user_cache_dir(host);
    // SAFETY: getuid() has no preconditions.
    let uid = unsafe { libc::getuid() };
    let candidates = [
        cache.join("mkosi").join(format!("resources-{HASH}")),
        PathBuf::from(format!("/var/tmp/mkosi-resources-{uid}-{HASH}")),
    ];
    for dest in &candidates {
        if dest.join(".complete").exists() {
            return Ok(dest.clone());
        }
    }
    let mut last_err = None;
    for dest in &candidates {
        match install(dest) {
            Ok(()) => return Ok(dest.clone()),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no place to unpack resources")))
}

fn install(dest: &Path) -> Result<()> {
    let parent = dest.parent().context("resource directory has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("r"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    extract(&RESOURCES, &tmp)?;
    std::fs::write(tmp.join(".complete"), HASH)?;
    match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.join(".complete").exists() => {
            // Another mkosi unpacked them concurrently.
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e).with_context(|| format!("moving resources into {}", dest.display()))
        }
    }
}

/// The content of one resource file.
pub fn file(path: &str) -> Option<&'static [u8]> {
    RESOURCES.get_file(path).map(|f| f.contents())
}
