//! The mkosi build pipeline.
//!
//! [`build`] runs the `build` verb for a parsed configuration: it checks
//! whether outputs exist, becomes root in a user namespace when needed,
//! prepares caches and a workspace, and builds every image in order
//! ([`pipeline::build_image`]), each as a list of named, timed steps.

pub mod basetrees;
pub mod boot;
pub mod box_verb;
pub mod cache;
pub mod context;
pub mod disk;
pub mod error;
pub mod kmod;
pub mod log;
pub mod manifest;
pub mod outputs;
pub mod pipeline;
pub mod progress;
pub mod qemu;
pub mod repart;
pub mod repository;
pub mod scripts;
pub mod secureboot;
pub mod signature;
pub mod sysconfig;
pub mod tree;

use std::path::{Path, PathBuf};

use mkosi_config::summary::user_cache_dir;
use mkosi_config::{Args, Config, Host};

pub use error::{BuildError, Result};

use crate::context::Context;
use crate::error::io;

/// `WorkspaceDirectory=` or its default.
pub fn workspace_dir(config: &Config, host: &Host) -> PathBuf {
    mkosi_config::summary::workspace_dir_or_default(config, host)
}

/// `PackageCacheDirectory=` or its default (`<cache>/mkosi/<distro>~<release>~<arch>`).
pub fn package_cache_dir(config: &Config, host: &Host) -> PathBuf {
    config.path("PackageCacheDirectory").unwrap_or_else(|| {
        user_cache_dir(host).join("mkosi").join(format!(
            "{}~{}~{}",
            config.distribution(),
            config.release(),
            config.architecture()
        ))
    })
}

/// Whether the main output of `config` exists in `outdir`.
fn output_exists(config: &Config, outdir: &Path) -> bool {
    std::fs::symlink_metadata(outdir.join(config.output_with_compression())).is_ok()
}

fn check_cache_settings(config: &Config) -> Result<()> {
    use mkosi_config::enums::{CacheOnly, Incremental};
    let has_cache_dir = config.path("CacheDirectory").is_some();
    if cache::is_incremental(config) && !has_cache_dir {
        return Err(BuildError::msg("A cache directory must be configured in order to use --incremental=yes"));
    }
    if config.incremental() != Incremental::No && config.cache_only() == CacheOnly::Never {
        return Err(BuildError::msg("--cache-only=never cannot be used with --incremental=yes"));
    }
    // The system's own package cache (/var, as mkosi-initrd uses it as root)
    // brings its own metadata.
    let system_cache = config.path("PackageCacheDirectory").as_deref() == Some(Path::new("/var"));
    if matches!(config.cache_only(), CacheOnly::Always | CacheOnly::Metadata) && !has_cache_dir && !system_cache {
        return Err(BuildError::msg(format!(
            "A cache directory must be configured in order to use CacheOnly={}",
            config.cache_only()
        )));
    }
    Ok(())
}

/// Whether repository metadata must be synced before building (upstream's
/// `repository_metadata_needs_sync`, driven by `CacheOnly=`).
pub fn metadata_needs_sync(images: &[Config], host: &Host) -> bool {
    use mkosi_config::enums::CacheOnly;
    if images.iter().any(|c| c.cache_only() == CacheOnly::Never) {
        return true;
    }
    let auto: Vec<&Config> = images.iter().filter(|c| c.cache_only() == CacheOnly::Auto).collect();
    if auto.is_empty() {
        log::info("Skipping package manager metadata sync: no images with 'CacheOnly=auto'");
        return false;
    }
    let incremental: Vec<&&Config> = auto.iter().filter(|c| cache::is_incremental(c)).collect();
    if incremental.is_empty() {
        return true;
    }
    let has_manifest = |c: &Config| cache::paths(c).is_some_and(|(_, _, m)| m.exists());
    if incremental.iter().all(|c| !has_manifest(c)) {
        return true;
    }
    if incremental.iter().all(|c| has_manifest(c)) {
        let fresh = incremental.iter().all(|c| cache::have_cache(c, &context::finalize_environment(c, host)));
        if fresh {
            log::info("Skipping package manager metadata sync: all incremental image caches are up to date");
        }
        return !fresh;
    }
    log::info("Skipping package manager metadata sync: some images have a cache and some do not");
    false
}

/// Sync repository metadata with the configuration of `config` (the main image).
#[allow(clippy::too_many_arguments)]
fn sync_metadata(
    args: &Args,
    config: &Config,
    host: &Host,
    run_dir: &Path,
    metadata_dir: &Path,
    pkgcache: &Path,
    package_dir: &Path,
    cwd: &Path,
) -> Result<()> {
    if mkosi_distro::package_manager(config)? != "apt" {
        return Ok(());
    }
    let ws = Workspace::new(run_dir, args.debug_workspace)?;
    let ctx = Context::new(
        args,
        config,
        host,
        ws.path.clone(),
        metadata_dir.to_path_buf(),
        pkgcache.to_path_buf(),
        package_dir.to_path_buf(),
        cwd.to_path_buf(),
    )?;
    std::fs::create_dir_all(ctx.root()).map_err(io("creating", ctx.root()))?;
    pipeline::install_sandbox_trees(&ctx)?;
    let env = pipeline::pm_env(&ctx)?;
    let apt = mkosi_distro::apt::Apt::new(config, &env);
    apt.setup()?;
    log::step("Syncing package manager metadata");
    apt.sync()?;
    Ok(())
}

/// Remove the outputs of an image from the output directory.
pub fn clean_outputs(config: &Config, outdir: &Path) -> Result<()> {
    let paths: Vec<PathBuf> = outputs::output_names(config).into_iter().map(|n| outdir.join(n)).collect();
    tree::rmtree(&paths)
}

/// A temporary directory removed when dropped (unless kept for debugging).
struct Workspace {
    path: PathBuf,
    keep: bool,
}

impl Workspace {
    fn new(parent: &Path, keep: bool) -> Result<Workspace> {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        for _ in 0..100 {
            let n: u64 = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let path = parent.join(format!("mkosi-workspace-{:x}{:x}", std::process::id(), n & 0xffffff));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                        .map_err(io("chmod", &path))?;
                    return Ok(Workspace { path, keep });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("creating", &path)(e)),
            }
        }
        Err(BuildError::msg(format!("Could not create a workspace in {}", parent.display())))
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if self.keep {
            log::info(&format!("Workspace: {}", self.path.display()));
            return;
        }
        let _ = tree::rmtree(std::slice::from_ref(&self.path));
    }
}

/// Run the `build` verb. `cwd` is the invocation directory (after `-C`).
pub fn build(args: &Args, images: &[Config], host: &Host, cwd: &Path) -> Result<()> {
    let Some(last) = images.last() else { return Ok(()) };
    log::set_timing(args.debug_timing);
    mkosi_sandbox::run::set_debug(args.debug);
    mkosi_sandbox::run::set_debug_shell(args.debug_shell);
    mkosi_sandbox::run::install_signal_handlers();

    for config in images {
        pipeline::check_supported(config).map_err(|e| e.in_step(&format!("Checking image {}", config.image())))?;
        check_cache_settings(config).map_err(|e| e.in_step(&format!("Checking image {}", config.image())))?;
    }

    let outdir = last.output_dir_or_cwd(cwd);
    if args.force == 0 && output_exists(last, &outdir) {
        log::info(&format!(
            "Output path {} exists already. (Use --force to rebuild.)",
            outdir.join(last.output_with_compression()).display()
        ));
        return Ok(());
    }

    // Paths that depend on who runs mkosi are decided before becoming root.
    let pkgcache = package_cache_dir(last, host);
    let workspace_parent = workspace_dir(last, host);

    // Everything below runs as root, in a user namespace when we are not root, and in a mount
    // namespace of its own, so no mount outlives the build however it ends.
    mkosi_sandbox::userns::become_root(host.user_name())?;
    mkosi_sandbox::mounts::private_mount_namespace()?;
    if let Some(t) = last.str("ToolsTree").filter(|t| *t != "none") {
        log::warn(&format!(
            "ToolsTree={t} is not used: this mkosi builds with the host's tools and needs no tools tree"
        ));
    }

    let mut run_timings = log::Timings::default();
    for config in images {
        let dir = config.output_dir_or_cwd(cwd);
        if args.force > 0 {
            run_timings.step("Removing previous outputs", || clean_outputs(config, &dir))?;
            scripts::run_clean_scripts(args, config, host, cwd)?;
        }
    }

    for d in [outdir.clone(), pkgcache.join("cache/apt/archives/partial"), pkgcache.join("lib/apt/lists/partial")] {
        std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
    }
    let metadata_dir = match last.path("CacheDirectory") {
        Some(dir) => {
            let m = dir.join(format!(
                "{}.metadata.cache",
                last.expand_key_specifiers(last.str("CacheKey").unwrap_or("&d~&r~&a~&I"))
            ));
            for d in [m.join("cache/apt"), m.join("lib/apt/lists/partial")] {
                std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
            }
            m
        }
        // Without a cache directory the metadata lives next to the package
        // cache, so repeated builds only fetch what changed.
        None => pkgcache.clone(),
    };

    let run_dir = Workspace::new(&workspace_parent, args.debug_workspace)?;
    let package_dir = run_dir.path.join("packages");
    std::fs::create_dir_all(&package_dir).map_err(io("creating", &package_dir))?;

    // Stale incremental caches are dropped; repository metadata is synced
    // once for the whole run (with the main image's configuration).
    let needs_sync = metadata_needs_sync(images, host);
    for config in images {
        let env = context::finalize_environment(config, host);
        let stale = cache::is_incremental(config) && !cache::have_cache(config, &env);
        if args.force > 1 || stale || (needs_sync && cache::is_incremental(config)) {
            if let Some((a, b, c)) = cache::paths(config) {
                let existing: Vec<PathBuf> =
                    [a, b, c].into_iter().filter(|p| std::fs::symlink_metadata(p).is_ok()).collect();
                if !existing.is_empty() {
                    log::step(&format!("Removing cache entries of {} image", config.image()));
                    tree::rmtree(&existing)?;
                }
            }
        }
    }
    for config in images {
        if config.incremental() == mkosi_config::enums::Incremental::Strict
            && !cache::have_cache(config, &context::finalize_environment(config, host))
        {
            return Err(BuildError::hint(
                format!("Strict incremental mode is enabled but the cache of image {} is out of date", config.image()),
                "Build once without --incremental=strict to refresh the cache",
            ));
        }
    }
    if needs_sync {
        run_timings
            .step("Syncing package manager metadata", || {
                sync_metadata(args, last, host, &run_dir.path, &metadata_dir, &pkgcache, &package_dir, cwd)
            })
            .map_err(|e| e.in_step("Syncing package manager metadata"))?;
    }
    if args.debug_timing && !run_timings.steps.is_empty() {
        log::info(&format!("Step durations before building:\n{}", run_timings.report()));
    }

    for config in images {
        scripts::run_sync_scripts(args, config, host, &run_dir.path, cwd)?;
    }

    for config in images {
        if config.output_format() == mkosi_config::enums::OutputFormat::None && config.list("BuildScripts").is_empty() {
            continue;
        }
        scripts::check_scripts(config).map_err(|e| e.in_step(&format!("Checking image {}", config.image())))?;
        let ws = Workspace::new(&run_dir.path, args.debug_workspace)?;
        let mut ctx = Context::new(
            args,
            config,
            host,
            ws.path.clone(),
            metadata_dir.clone(),
            pkgcache.clone(),
            package_dir.clone(),
            cwd.to_path_buf(),
        )?;
        pipeline::build_image(&mut ctx)?;
        if args.debug_timing {
            log::info(&format!("Step durations for image {}:\n{}", config.image(), ctx.timings.report()));
        }
        let out = config.output_dir_or_cwd(cwd).join(config.output_with_compression());
        log::info(&format!("{} ({})", out.display(), human_size(&out)));
    }
    Ok(())
}

fn human_size(p: &Path) -> String {
    fn size(p: &Path) -> u64 {
        let Ok(md) = std::fs::symlink_metadata(p) else { return 0 };
        if md.is_dir() {
            std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| size(&e.path())).sum()).unwrap_or(0)
        } else {
            use std::os::unix::fs::MetadataExt;
            md.blocks() * 512
        }
    }
    mkosi_config::summary::format_bytes(size(p) as i64)
}

/// The incremental cache entries of an image (`<CacheDirectory>/<key>.cache` etc.).
pub fn cache_tree_paths(config: &Config) -> Vec<PathBuf> {
    let Some(dir) = config.path("CacheDirectory") else { return vec![] };
    let key = config.expand_key_specifiers(config.str("CacheKey").unwrap_or("&d~&r~&a~&I"));
    ["cache", "build.cache", "manifest"].iter().map(|s| dir.join(format!("{key}.{s}"))).collect()
}

fn clean_image(args: &Args, config: &Config, pkgcache: &Path, cwd: &Path) -> Result<()> {
    let outdir = config.output_dir_or_cwd(cwd);
    let mut outputs: Vec<PathBuf> = outputs::output_names(config)
        .into_iter()
        .map(|n| outdir.join(n))
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    // The `Output` symlink may point at an artifact of an older configuration.
    let extra: Vec<PathBuf> = outputs
        .iter()
        .filter_map(|p| std::fs::read_link(p).ok().map(|t| if t.is_absolute() { t } else { outdir.join(t) }))
        .filter(|t| t.starts_with(&outdir) && std::fs::symlink_metadata(t).is_ok())
        .collect();
    outputs.extend(extra);
    outputs.sort();
    outputs.dedup();
    if !outputs.is_empty() {
        log::step(&format!("Removing output files of {} image", config.image()));
        tree::rmtree(&outputs)?;
    }

    if args.force > 0 || args.wipe_build_dir {
        if let Some(sub) = config.build_subdir().filter(|s| s.is_dir()) {
            let entries: Vec<PathBuf> = std::fs::read_dir(&sub)
                .map_err(io("reading", &sub))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            if !entries.is_empty() {
                log::step(&format!("Clearing out build directory of {} image", config.image()));
                tree::rmtree(&entries)?;
            }
        }
    }
    if args.force > 0 {
        let caches: Vec<PathBuf> = cache_tree_paths(config).into_iter().filter(|p| p.exists()).collect();
        if !caches.is_empty() {
            log::step(&format!("Removing cache entries of {} image", config.image()));
            tree::rmtree(&caches)?;
        }
    }
    if args.force > 1 && (config.image() == "main" || config.image() == "tools") {
        let mut meta = Vec::new();
        if let Some(dir) = config.path("CacheDirectory") {
            let key = config.expand_key_specifiers(config.str("CacheKey").unwrap_or("&d~&r~&a~&I"));
            meta.push(dir.join(format!("{key}.metadata.cache")));
            meta.push(dir.join(format!("{key}.keyring.cache")));
        }
        // Without a cache directory the repository metadata lives in the package cache.
        meta.push(pkgcache.join("lib"));
        let meta: Vec<PathBuf> = meta.into_iter().filter(|p| p.exists()).collect();
        if !meta.is_empty() {
            log::step(&format!("Clearing out metadata and keyring cache of {} image", config.image()));
            tree::rmtree(&meta)?;
        }
    }
    Ok(())
}

/// Run the `clean` verb: outputs; with `-f` also build directories and
/// image caches (and the default tools tree); with `-ff` also repository
/// metadata caches. Downloaded packages are never removed.
pub fn clean(args: &Args, tools: Option<&Config>, images: &[Config], host: &Host, cwd: &Path) -> Result<()> {
    // Paths that depend on who runs mkosi are decided before becoming root.
    let tools_cache = tools.map(|t| package_cache_dir(t, host));
    let caches: Vec<PathBuf> = images.iter().map(|c| package_cache_dir(c, host)).collect();
    // Outputs of unprivileged builds contain files owned by subordinate ids.
    mkosi_sandbox::userns::become_root(host.user_name())?;
    if let (Some(t), Some(cache), true) = (tools, tools_cache.as_deref(), args.force > 0) {
        clean_image(args, t, cache, cwd)?;
        scripts::run_clean_scripts(args, t, host, cwd)?;
    }
    for (config, cache) in images.iter().zip(&caches) {
        clean_image(args, config, cache, cwd)?;
        scripts::run_clean_scripts(args, config, host, cwd)?;
    }
    if let Some(dir) = args.directory.as_deref().and_then(|d| mkosi_config::finalize_configdir(Some(d))) {
        tree::rmtree(&[dir.join(".mkosi-private/history")])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cache_only_needs_a_cache_directory_or_the_system_cache() {
        let check = |v: serde_json::Value| {
            let mut c = Config::from_values([("Format".to_string(), json!("directory"))]);
            for (k, v) in v.as_object().into_iter().flatten() {
                c.set(k, v.clone());
            }
            check_cache_settings(&c)
        };
        assert!(check(json!({"CacheOnly": "metadata"})).is_err());
        assert!(check(json!({"CacheOnly": "always", "PackageCacheDirectory": "/var/cache/x"})).is_err());
        assert!(check(json!({"CacheOnly": "metadata", "CacheDirectory": "/var/cache/x"})).is_ok());
        // mkosi-initrd as root: the system's package cache and metadata.
        assert!(check(json!({"CacheOnly": "metadata", "PackageCacheDirectory": "/var"})).is_ok());
        assert!(check(json!({"CacheOnly": "auto"})).is_ok());
    }
}
