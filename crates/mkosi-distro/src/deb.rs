//! Extracting `.deb` packages into a root without running maintainer
//! scripts (the first stage of bootstrapping), in parallel and in-process.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::apt::DOC_EXCLUDES;
use crate::{DistroError, Result};

/// Whether `path` (relative, without `./`) is skipped when extracting:
/// API file system contents, and documentation with `WithDocs=no`.
pub fn excluded(path: &str, exclude_docs: bool) -> bool {
    let under = |dir: &str| path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/';
    if ["dev", "proc", "sys", "tmp", "run", "var/tmp"].iter().any(|d| under(d)) {
        return true;
    }
    exclude_docs && DOC_EXCLUDES.iter().any(|g| under(g.trim_end_matches("/*")))
}

/// Extract every package into `root`, using all CPUs. With `keep_tars`, the decompressed
/// data archive of each package is kept there as `<file name of the .deb>.tar`.
pub fn extract_all(debs: &[PathBuf], root: &Path, exclude_docs: bool, keep_tars: Option<&Path>) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<DistroError>> = Mutex::new(None);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let exclude = |p: &str| excluded(p, exclude_docs);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(deb) = debs.get(i) else { break };
                let r = match (keep_tars, deb.file_name()) {
                    (Some(dir), Some(name)) => {
                        let mut tar = name.to_os_string();
                        tar.push(".tar");
                        mkosi_formats::deb::extract_keeping_tar(deb, root, &exclude, &dir.join(tar))
                    }
                    _ => mkosi_formats::deb::extract(deb, root, &exclude),
                };
                if let Err(e) = r {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(DistroError::Config(format!("Extracting {}: {e}", deb.display())));
                    }
                    break;
                }
            });
        }
    });
    match failure.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions() {
        assert!(excluded("dev/null", false));
        assert!(!excluded("dev", false));
        assert!(excluded("usr/share/doc/x/copyright", true));
        assert!(!excluded("usr/share/doc/x/copyright", false));
        assert!(!excluded("usr/share/docs", true));
        assert!(excluded("var/tmp/x", false));
    }
}
