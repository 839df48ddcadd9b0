//! Hash the built-in resources so the binary extracts them into a
//! directory named after their content.

use std::hash::{Hash, Hasher};
use std::path::Path;

fn walk(dir: &Path, hasher: &mut std::collections::hash_map::DefaultHasher) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        p.strip_prefix(dir).unwrap_or(&p).hash(hasher);
        if p.is_dir() {
            walk(&p, hasher);
        } else if let Ok(content) = std::fs::read(&p) {
            content.hash(hasher);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    walk(&root, &mut hasher);
    println!("cargo:rustc-env=MKOSI_RESOURCES_HASH={:016x}", hasher.finish());
}
