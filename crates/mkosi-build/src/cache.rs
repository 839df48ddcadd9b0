//! The incremental image cache (`Incremental=`): the tree after packages,
//! skeleton trees and prepare scripts is saved in `CacheDirectory=` and
//! reused while every input that shaped it is unchanged.
//!
//! Upstream keys the cache on packages, repositories, mirrors, package
//! directories and prepare scripts only. We track every input of the cached
//! steps: also skeleton and sandbox trees (their content), the environment
//! prepare scripts see, documentation and recommends settings, the machine
//! id and whether the image is bootable (which changes how packages install).

use std::path::{Path, PathBuf};

use mkosi_config::enums::Incremental;
use mkosi_config::Config;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::error::{io, Result};
use crate::{log, tree};

struct Hasher(Sha256);

impl Hasher {
    fn new() -> Hasher {
        Hasher(Sha256::new())
    }
    fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn hex(&self) -> String {
        format!("{:x}", self.0.clone().finalize())
    }
}

/// Whether the image uses the incremental cache.
pub fn is_incremental(config: &Config) -> bool {
    config.incremental() != Incremental::No && config.list("BaseTrees").is_empty() && !config.bool("Overlay")
}

/// The cache entries: final tree, build overlay, manifest.
pub fn paths(config: &Config) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let dir = config.path("CacheDirectory")?;
    let key = config.expand_key_specifiers(config.str("CacheKey").unwrap_or("&d~&r~&a~&I"));
    Some((
        dir.join(format!("{key}.cache")),
        dir.join(format!("{key}.build.cache")),
        dir.join(format!("{key}.manifest")),
    ))
}

/// Whether build scripts run on a build overlay that is cached too.
pub fn need_build_overlay(config: &Config) -> bool {
    !config.list("BuildScripts").is_empty()
        && (!config.list("BuildPackages").is_empty() || !config.list("PrepareScripts").is_empty())
}

fn hash_tree(h: &mut Hasher, path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(path) else {
        h.update(b"missing");
        return;
    };
    h.update(&md.mode().to_le_bytes());
    h.update(&md.uid().to_le_bytes());
    h.update(&md.gid().to_le_bytes());
    if md.is_dir() {
        let mut names: Vec<_> =
            std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        names.sort();
        for n in names {
            h.update(n.as_encoded_bytes());
            h.update(b"/");
            hash_tree(h, &path.join(&n));
        }
    } else if md.is_symlink() {
        if let Ok(t) = std::fs::read_link(path) {
            h.update(t.as_os_str().as_encoded_bytes());
        }
    } else if let Ok(content) = std::fs::read(path) {
        h.update(&content);
    }
}

fn trees_digest(config: &Config, field: &str) -> Vec<Value> {
    config
        .trees(field)
        .into_iter()
        .map(|(src, tgt)| {
            let mut h = Hasher::new();
            hash_tree(&mut h, &src);
            json!([src.to_string_lossy(), tgt.map(|t| t.to_string_lossy().into_owned()), h.hex()])
        })
        .collect()
}

/// Everything the cached tree depends on.
pub fn manifest(config: &Config, environment: &[(String, String)]) -> Value {
    let mut packages = config.strings("Packages");
    packages.sort();
    let mut build_packages = config.strings("BuildPackages");
    build_packages.sort();
    let mut repositories = config.strings("Repositories");
    repositories.sort();
    let mut package_directories = Vec::new();
    for dir in config.paths("PackageDirectories") {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "deb" || e == "ddeb"))
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        for p in entries {
            use std::os::unix::fs::MetadataExt;
            let mtime =
                std::fs::metadata(&p).map(|m| m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128).unwrap_or(0);
            package_directories
                .push(json!([p.file_name().map(|n| n.to_string_lossy().into_owned()), mtime.to_string()]));
        }
    }
    let mut prepare: Vec<String> = config
        .paths("PrepareScripts")
        .iter()
        .map(|p| {
            let mut h = Hasher::new();
            hash_tree(&mut h, p);
            h.hex()
        })
        .collect();
    prepare.sort();
    // $TERM only says whether a terminal is attached.
    let mut env: Vec<Value> = environment.iter().filter(|(k, _)| k != "TERM").map(|(k, v)| json!([k, v])).collect();
    env.sort_by_key(|v| v.to_string());
    json!({
        "format": 1,
        "distribution": config.distribution().as_str(),
        "release": config.release(),
        "mirror": config.get("Mirror"),
        "local_mirror": config.get("LocalMirror"),
        "snapshot": config.get("Snapshot"),
        "architecture": config.architecture().as_str(),
        "package_manager": if config.image() == "tools" { Value::Null } else { json!("apt-get") },
        "packages": packages,
        "build_packages": build_packages,
        "package_directories": package_directories,
        "repositories": repositories,
        "overlay": config.bool("Overlay"),
        "prepare_scripts": prepare,
        "skeleton_trees": trees_digest(config, "SkeletonTrees"),
        "sandbox_trees": trees_digest(config, "SandboxTrees"),
        "environment": env,
        "with_docs": config.bool("WithDocs"),
        "with_recommends": config.bool("WithRecommends"),
        "repository_key_check": config.bool("RepositoryKeyCheck"),
        "bootable": config.get("Bootable"),
        "machine_id": config.get("MachineId"),
        "build_overlay": need_build_overlay(config),
    })
}

/// Whether a valid cache exists for the image.
pub fn have_cache(config: &Config, environment: &[(String, String)]) -> bool {
    if !is_incremental(config) {
        return false;
    }
    let Some((final_, build, manifest_path)) = paths(config) else { return false };
    if !final_.exists() {
        log::debug(&format!("{} does not exist, not reusing cached images", final_.display()));
        return false;
    }
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if std::fs::metadata(&final_).map(|m| m.uid()).ok() != Some(uid) {
        log::debug(&format!("{} is owned by another user, not reusing cached images", final_.display()));
        return false;
    }
    if need_build_overlay(config) && !build.exists() {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(&manifest_path) else { return false };
    let Ok(prev) = serde_json::from_str::<Value>(&text) else { return false };
    if prev != manifest(config, environment) {
        log::info(&format!("Cache manifest mismatch for {} image, not reusing cached images", config.image()));
        return false;
    }
    true
}

/// Save the root (and build overlay) as the image's cache.
pub fn save(ctx: &Context) -> Result<()> {
    let config = ctx.config;
    if !is_incremental(config) {
        return Ok(());
    }
    let Some((final_, build, manifest_path)) = paths(config) else { return Ok(()) };
    log::step("Installing cache copies");
    tree::rmtree(&[final_.clone(), build.clone(), manifest_path.clone()])?;
    tree::move_tree(&ctx.root(), &final_)?;
    let overlay = ctx.workspace.join("build-overlay");
    if need_build_overlay(config) && overlay.exists() && !overlay.is_symlink() {
        tree::move_tree(&overlay, &build)?;
    }
    let text = serde_json::to_string_pretty(&manifest(config, &ctx.environment()))
        .map_err(|e| crate::BuildError::msg(format!("serializing the cache manifest: {e}")))?;
    std::fs::write(&manifest_path, text).map_err(io("writing", &manifest_path))?;
    Ok(())
}

/// Start the root from the cache. Returns whether the cache was used.
pub fn reuse(ctx: &Context) -> Result<bool> {
    let config = ctx.config;
    if !is_incremental(config) {
        return Ok(false);
    }
    let Some((final_, build, _)) = paths(config) else { return Ok(false) };
    if !final_.exists() || (need_build_overlay(config) && !build.exists()) {
        return Ok(false);
    }
    log::step("Copying cached trees");
    tree::copy_tree(&final_, &ctx.root(), true)?;
    if need_build_overlay(config) {
        let overlay = ctx.workspace.join("build-overlay");
        tree::rmtree(std::slice::from_ref(&overlay))?;
        std::os::unix::fs::symlink(&build, &overlay).map_err(io("linking", &overlay))?;
    }
    Ok(true)
}
