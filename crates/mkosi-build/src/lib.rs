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

    let run = Run {
        args,
        cwd,
        run_dir: &run_dir.path,
        metadata_dir: &metadata_dir,
        pkgcache: &pkgcache,
        package_dir: &package_dir,
    };
    let mut i = 0;
    while i < images.len() {
        let config = &images[i];
        i += 1;
        if skipped(config) {
            continue;
        }
        scripts::check_scripts(config).map_err(|e| e.in_step(&format!("Checking image {}", config.image())))?;
        match images
            .get(i)
            .filter(|next| !skipped(next))
            .map(|next| (next, sequential_reason(&run, host, config, next)))
        {
            Some((next, None)) => {
                scripts::check_scripts(next).map_err(|e| e.in_step(&format!("Checking image {}", next.image())))?;
                build_concurrently(&run, host, config, next)?;
                i += 1;
            }
            Some((_, Some(reason))) if config.image() == DEFAULT_INITRD => {
                log::debug(&format!("Building the {DEFAULT_INITRD} image first: {reason}"));
                build_one(&run, host, config)?;
            }
            _ => build_one(&run, host, config)?,
        }
    }
    Ok(())
}

/// The image mkosi generates for `Initrds=default`.
const DEFAULT_INITRD: &str = "default-initrd";

/// Images with nothing to build.
fn skipped(config: &Config) -> bool {
    config.output_format() == mkosi_config::enums::OutputFormat::None && config.list("BuildScripts").is_empty()
}

/// What every image build of one run shares.
struct Run<'r> {
    args: &'r Args,
    cwd: &'r Path,
    run_dir: &'r Path,
    metadata_dir: &'r Path,
    pkgcache: &'r Path,
    package_dir: &'r Path,
}

impl Run<'_> {
    /// Build `config` in the workspace `ws`, returning the step durations too.
    fn build_in(
        &self,
        host: &Host,
        config: &Config,
        ws: &Path,
        private_apt_cache: Option<PathBuf>,
        dependency: Option<&dyn context::Dependency>,
    ) -> (Result<()>, log::Timings) {
        let mut ctx = match Context::new(
            self.args,
            config,
            host,
            ws.to_path_buf(),
            self.metadata_dir.to_path_buf(),
            self.pkgcache.to_path_buf(),
            self.package_dir.to_path_buf(),
            self.cwd.to_path_buf(),
        ) {
            Ok(ctx) => ctx,
            Err(e) => return (Err(e), log::Timings::default()),
        };
        ctx.private_apt_cache = private_apt_cache;
        ctx.dependency = dependency;
        let r = pipeline::build_image(&mut ctx);
        (r, ctx.timings)
    }

    /// What the user sees after an image was built: its step durations and output.
    fn report(&self, config: &Config, timings: &log::Timings) {
        if self.args.debug_timing {
            log::info(&format!("Step durations for image {}:\n{}", config.image(), timings.report()));
        }
        let out = config.output_dir_or_cwd(self.cwd).join(config.output_with_compression());
        log::info(&format!("{} ({})", out.display(), human_size(&out)));
    }
}

/// Build one image on its own.
fn build_one(run: &Run, host: &Host, config: &Config) -> Result<()> {
    let ws = Workspace::new(run.run_dir, run.args.debug_workspace)?;
    let (r, timings) = run.build_in(host, config, &ws.path, None, None);
    r?;
    run.report(config, &timings);
    Ok(())
}

/// Why the generated default initrd `initrd` cannot be built concurrently
/// with `next`, the image after it; `None` when it can. Only the pair of
/// the default initrd and an image needing it is built concurrently, and
/// only when they share nothing but the package caches (which the initrd
/// build then uses through a private copy, see `mkosi_distro::apt::prepare_private_cache`).
fn sequential_reason(run: &Run, host: &Host, initrd: &Config, next: &Config) -> Option<&'static str> {
    if initrd.image() != DEFAULT_INITRD || !next.strings("Dependencies").iter().any(|d| d == DEFAULT_INITRD) {
        return Some("not the default initrd and an image depending on it");
    }
    if host.env("MKOSI_SEQUENTIAL").is_some_and(|v| !v.is_empty() && v != "0") {
        return Some("MKOSI_SEQUENTIAL is set");
    }
    if run.args.debug_shell {
        return Some("--debug-shell needs the terminal");
    }
    if [initrd, next].iter().any(|c| mkosi_distro::package_manager(c).ok() != Some("apt")) {
        return Some("only apt builds are run concurrently");
    }
    if [initrd, next].iter().any(|c| cache::is_incremental(c)) {
        return Some("incremental builds use caches of their own");
    }
    if [initrd, next].iter().any(|c| !c.list("BuildScripts").is_empty() || !c.list("PackageDirectories").is_empty()) {
        return Some("local packages (build scripts, PackageDirectories=) are shared");
    }
    if mkosi_distro::apt::local_packages(run.package_dir).map_or(true, |p| !p.is_empty()) {
        return Some("the package directory holds packages");
    }
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let archives = run.pkgcache.join("cache/apt/archives");
    if dev(run.run_dir).is_none() || dev(run.run_dir) != dev(&archives) {
        return Some("the workspace and the package cache are on different file systems");
    }
    None
}

/// How an image build ended, with its step durations.
type Built = (Result<()>, log::Timings);

/// The default initrd building on a thread of its own while the image
/// needing it builds on the calling thread (see [`build_concurrently`]).
struct Concurrent<'scope, 'env> {
    run: &'env Run<'env>,
    config: &'env Config,
    handle: std::sync::Mutex<Option<std::thread::ScopedJoinHandle<'scope, Built>>>,
    failed: &'env std::sync::atomic::AtomicBool,
    capture: std::sync::Arc<mkosi_sandbox::run::Capture>,
}

impl Concurrent<'_, '_> {
    /// The error of the concurrent build, naming its image.
    fn name_error(&self, e: BuildError) -> BuildError {
        match e {
            BuildError::Step { step, source } => {
                BuildError::Step { step: format!("{step} ({} image)", self.config.image()), source }
            }
            e => e.in_step(&format!("Building {} image", self.config.image())),
        }
    }

    /// Show what the build printed: everything with `--debug` or after a
    /// failure, else only mkosi's own messages (step headers, durations).
    fn replay(&self, failed: bool) {
        if self.capture.cancelled() {
            log::info(&format!("‣ The build of the {} image was stopped", self.config.image()));
            return;
        }
        if failed || self.run.args.debug {
            match self.capture.contents() {
                Ok(text) => eprint!("{text}"),
                Err(e) => log::warn(&format!("Cannot read {}: {e}", self.capture.path().display())),
            }
        } else {
            for line in self.capture.notices() {
                eprintln!("{line}");
            }
        }
    }
}

impl context::Dependency for Concurrent<'_, '_> {
    fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn wait(&self) -> Result<()> {
        let handle = match self.handle.lock() {
            Ok(mut h) => h.take(),
            Err(_) => return Err(BuildError::msg("Waiting for a concurrent build failed: lock poisoned")),
        };
        let Some(handle) = handle else { return Ok(()) };
        let (r, timings) = handle.join().unwrap_or_else(|_| {
            (
                Err(BuildError::msg(format!("The build of the {} image panicked", self.config.image()))),
                Default::default(),
            )
        });
        self.replay(r.is_err());
        match r {
            Ok(()) => {
                self.run.report(self.config, &timings);
                Ok(())
            }
            Err(e) => {
                if self.run.args.debug_timing {
                    log::info(&format!("Step durations for image {}:\n{}", self.config.image(), timings.report()));
                }
                Err(self.name_error(e))
            }
        }
    }
}

/// Build the default initrd `initrd` on a thread of its own while `next`,
/// which needs it, builds on this one; `next` waits for it before installing
/// kernels ([`context::Dependency`]). The initrd's output goes to a log in its
/// workspace, shown when it is waited for; its apt uses a private cache
/// directory whose new downloads are handed to the shared cache afterwards.
/// Whichever fails first stops the run; both are done when this returns.
fn build_concurrently(run: &Run, host: &Host, initrd: &Config, next: &Config) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    log::header(&format!("Building {} image in the background", initrd.image()));
    let ws = Workspace::new(run.run_dir, run.args.debug_workspace)?;
    let capture = mkosi_sandbox::run::Capture::create(&ws.path.join("output.log"))
        .map_err(io("creating", ws.path.join("output.log")))?;
    let private = ws.path.join("apt-cache");
    let shared_archives = run.pkgcache.join("cache/apt/archives");
    mkosi_distro::apt::prepare_private_cache(&run.metadata_dir.join("cache/apt"), &shared_archives, &private)?;
    let failed = AtomicBool::new(false);
    let initrd_host = host.clone();

    std::thread::scope(|s| {
        let thread_capture = std::sync::Arc::clone(&capture);
        let (failed_ref, ws_path, private_ref, archives_ref) = (&failed, &ws.path, &private, &shared_archives);
        let handle = s.spawn(move || {
            let _guard = mkosi_sandbox::run::capture_output(thread_capture);
            let (r, timings) = run.build_in(&initrd_host, initrd, ws_path, Some(private_ref.clone()), None);
            // Whatever happened, keep what was downloaded.
            let linked = mkosi_distro::apt::link_back_archives(&private_ref.join("archives"), archives_ref);
            let r = r.and_then(|()| {
                let n = linked?;
                log::debug(&format!("Added {n} downloaded packages to the package cache"));
                Ok(())
            });
            if r.is_err() {
                failed_ref.store(true, Ordering::SeqCst);
            }
            (r, timings)
        });
        let concurrent = Concurrent {
            run,
            config: initrd,
            handle: std::sync::Mutex::new(Some(handle)),
            failed: &failed,
            capture: std::sync::Arc::clone(&capture),
        };
        let (r, timings) = match Workspace::new(run.run_dir, run.args.debug_workspace) {
            Ok(ws) => run.build_in(host, next, &ws.path, None, Some(&concurrent)),
            Err(e) => (Err(e), log::Timings::default()),
        };
        if r.is_err() {
            // Stop the initrd build before its next step or command, and wait for it.
            capture.cancel();
        }
        let initrd_result = context::Dependency::wait(&concurrent);
        r?;
        initrd_result?;
        run.report(next, &timings);
        Ok(())
    })
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

    fn image(name: &str, extra: serde_json::Value) -> Config {
        let mut c = Config::from_values([
            ("Image".to_string(), json!(name)),
            ("Distribution".to_string(), json!("debian")),
            ("Format".to_string(), json!("directory")),
        ]);
        for (k, v) in extra.as_object().into_iter().flatten() {
            c.set(k, v.clone());
        }
        c
    }

    struct Dirs {
        _tmp: tempfile::TempDir,
        run_dir: PathBuf,
        pkgcache: PathBuf,
        package_dir: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        let pkgcache = tmp.path().join("cache");
        let package_dir = run_dir.join("packages");
        std::fs::create_dir_all(&package_dir).unwrap();
        std::fs::create_dir_all(pkgcache.join("cache/apt/archives")).unwrap();
        Dirs { _tmp: tmp, run_dir, pkgcache, package_dir }
    }

    fn host(env: &[(&str, &str)]) -> Host {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Host::new(env, mkosi_config::enums::Architecture::X86_64, PathBuf::from("/"))
    }

    #[test]
    fn default_initrd_builds_concurrently_only_when_safe() {
        let d = dirs();
        let mut args = Args::new(mkosi_config::Verb::Build, None);
        let reason = |args: &Args, host: &Host, initrd: &Config, next: &Config| {
            let run = Run {
                args,
                cwd: &d.run_dir,
                run_dir: &d.run_dir,
                metadata_dir: &d.pkgcache,
                pkgcache: &d.pkgcache,
                package_dir: &d.package_dir,
            };
            sequential_reason(&run, host, initrd, next)
        };
        let initrd = image(DEFAULT_INITRD, json!({}));
        let main = image("main", json!({"Dependencies": [DEFAULT_INITRD]}));
        let h = host(&[]);
        assert_eq!(reason(&args, &h, &initrd, &main), None);

        // Only the default initrd and an image that needs it.
        assert!(reason(&args, &h, &initrd, &image("main", json!({}))).is_some());
        assert!(reason(&args, &h, &image("other", json!({})), &main).is_some());
        // Turned off for debugging.
        assert!(reason(&args, &host(&[("MKOSI_SEQUENTIAL", "1")]), &initrd, &main).is_some());
        assert_eq!(reason(&args, &host(&[("MKOSI_SEQUENTIAL", "0")]), &initrd, &main), None);
        // Shared caches and local packages.
        let incremental = image(DEFAULT_INITRD, json!({"Incremental": "yes", "CacheDirectory": "/var/cache/x"}));
        assert!(reason(&args, &h, &incremental, &main).is_some());
        let scripts = image("main", json!({"Dependencies": [DEFAULT_INITRD], "BuildScripts": ["/x.build"]}));
        assert!(reason(&args, &h, &initrd, &scripts).is_some());
        std::fs::write(d.package_dir.join("foo_1_all.deb"), b"").unwrap();
        assert!(reason(&args, &h, &initrd, &main).is_some());
        std::fs::remove_file(d.package_dir.join("foo_1_all.deb")).unwrap();
        // The debug shell needs the terminal.
        args.debug_shell = true;
        assert!(reason(&args, &h, &initrd, &main).is_some());
    }

    /// A concurrent build that ends with `result`, and the steps of the image waiting for it.
    fn with_concurrent(result: Result<()>, check: impl FnOnce(&Concurrent)) {
        let d = dirs();
        let args = Args::new(mkosi_config::Verb::Build, None);
        let run = Run {
            args: &args,
            cwd: &d.run_dir,
            run_dir: &d.run_dir,
            metadata_dir: &d.pkgcache,
            pkgcache: &d.pkgcache,
            package_dir: &d.package_dir,
        };
        let initrd = image(DEFAULT_INITRD, json!({}));
        let capture = mkosi_sandbox::run::Capture::create(&d.run_dir.join("output.log")).unwrap();
        let failed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let c = std::sync::Arc::clone(&capture);
            let failed_ref = &failed;
            let handle = s.spawn(move || {
                let _g = mkosi_sandbox::run::capture_output(c);
                log::step("Installing Debian");
                if result.is_err() {
                    failed_ref.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                (result, log::Timings::default())
            });
            // Let the build finish so `failed` is settled.
            while !handle.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let concurrent = Concurrent {
                run: &run,
                config: &initrd,
                handle: std::sync::Mutex::new(Some(handle)),
                failed: &failed,
                capture: std::sync::Arc::clone(&capture),
            };
            check(&concurrent);
        });
        // Its messages went to its log, not to this thread's output.
        assert!(capture.contents().unwrap().contains("Installing Debian"));
    }

    #[test]
    fn a_failed_concurrent_build_stops_the_image_waiting_for_it() {
        use context::Dependency;
        with_concurrent(Err(BuildError::msg("boom").in_step("Installing the distribution")), |c| {
            assert!(c.failed());
            let d = dirs();
            let (args, config, h) = (Args::new(mkosi_config::Verb::Build, None), image("main", json!({})), host(&[]));
            let mut ctx = Context::new(
                &args,
                &config,
                &h,
                d.run_dir.join("ws"),
                d.pkgcache.clone(),
                d.pkgcache.clone(),
                d.package_dir.clone(),
                d.run_dir.clone(),
            )
            .unwrap();
            ctx.dependency = Some(c);
            let mut ran = false;
            let e = pipeline::step(&mut ctx, "Generating locales", |_| {
                ran = true;
                Ok(())
            })
            .unwrap_err();
            assert!(!ran);
            // The error names the step of the initrd build and its image.
            assert_eq!(e.to_string(), "Installing the distribution (default-initrd image) failed: boom");
            // Reported once; the build is joined.
            assert!(c.wait().is_ok());
            assert!(c.handle.lock().unwrap().is_none());
        });
    }

    #[test]
    fn a_successful_concurrent_build_is_waited_for_once() {
        use context::Dependency;
        with_concurrent(Ok(()), |c| {
            assert!(!c.failed());
            assert!(c.wait().is_ok());
            assert!(c.wait().is_ok());
            assert!(c.handle.lock().unwrap().is_none());
        });
    }
}
