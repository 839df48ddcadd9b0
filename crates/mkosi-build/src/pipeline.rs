//! The steps of one image build, in upstream's order. Each step is named
//! and timed; a failure names the step it happened in.

use std::path::{Path, PathBuf};

use mkosi_config::enums::{Feature, OutputFormat};
use mkosi_distro::apt::Apt;
use mkosi_distro::PmEnv;

use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::tree;
use crate::{log, outputs, scripts};

/// Settings whose effect is not implemented yet: using them fails the build
/// instead of being silently ignored. Each module lists its own.
pub fn unsupported_settings(c: &mkosi_config::Config) -> Vec<String> {
    let mut out = crate::scripts::unsupported(c);
    out.extend(crate::sysconfig::unsupported(c));
    out.extend(outputs::unsupported(c));
    if c.str("UseSubvolumes") == Some("enabled") {
        out.push("UseSubvolumes=yes".into());
    }
    out
}

/// Fail early for configurations this version cannot build.
pub fn check_supported(config: &mkosi_config::Config) -> Result<()> {
    if !format_supported(config.output_format()) {
        return Err(BuildError::msg(format!("Format={} is not implemented yet", config.output_format())));
    }
    let unsupported = unsupported_settings(config);
    if !unsupported.is_empty() {
        return Err(BuildError::hint(
            format!("Not implemented yet: {}", unsupported.join(", ")),
            "These settings are understood but this version of mkosi cannot build them yet",
        ));
    }
    mkosi_distro::package_manager(config)?;
    Ok(())
}

/// The output formats this version can produce.
pub fn format_supported(format: OutputFormat) -> bool {
    matches!(
        format,
        OutputFormat::Directory
            | OutputFormat::Tar
            | OutputFormat::Cpio
            | OutputFormat::None
            | OutputFormat::Disk
            | OutputFormat::Esp
            | OutputFormat::Uki
            | OutputFormat::Sysext
            | OutputFormat::Confext
            | OutputFormat::Portable
            | OutputFormat::Addon
    )
}

pub(crate) fn pm_env(ctx: &Context) -> Result<PmEnv> {
    Ok(PmEnv {
        root: ctx.root(),
        sandbox_tree: ctx.sandbox_tree(),
        metadata_dir: ctx.metadata_dir.clone(),
        package_cache_dir: ctx.package_cache_dir.clone(),
        repository: ctx.repository(),
        base: ctx.sandbox(true, false)?,
        environment: ctx.environment(),
        // A build whose output is captured (running next to another one) draws no progress bars.
        progress: match mkosi_sandbox::run::current_capture() {
            Some(_) => None,
            None => crate::progress::package_manager_progress(),
        },
        private_cache: ctx.private_apt_cache.clone(),
    })
}

/// Copy the user's sandbox trees and the host files tools need into the sandbox tree.
pub fn install_sandbox_trees(ctx: &Context) -> Result<()> {
    let dst = ctx.sandbox_tree();
    let etc = dst.join("etc");
    std::fs::create_dir_all(&etc).map_err(io("creating", &etc))?;
    for (src, target) in ctx.config.trees("SandboxTrees") {
        tree::install_tree(&src, &dst, target.as_deref(), false)?;
    }
    for f in ["passwd", "group"] {
        let host = Path::new("/etc").join(f);
        if host.exists() {
            std::fs::copy(&host, etc.join(f)).map_err(io("copying", &host))?;
        }
    }
    let mtab = etc.join("mtab");
    if std::fs::read_link(&mtab).is_err() {
        let _ = std::fs::remove_file(&mtab);
        std::os::unix::fs::symlink("../proc/self/mounts", &mtab).map_err(io("creating", &mtab))?;
    }
    let resolv = etc.join("resolv.conf");
    let _ = std::fs::remove_file(&resolv);
    std::fs::write(&resolv, b"").map_err(io("creating", &resolv))?;
    let nss = etc.join("nsswitch.conf");
    if !nss.exists() {
        std::fs::write(
            &nss,
            "passwd:     files\nshadow:     files\ngroup:      files\nhosts:      files myhostname resolve [!UNAVAIL=return] dns\n\
             services:   files\nnetgroup:   files\nautomount:  files\n\naliases:    files\nethers:     files\n\
             gshadow:    files\nnetworks:   files dns\nprotocols:  files\npublickey:  files\nrpc:        files\n",
        )
        .map_err(io("writing", &nss))?;
    }
    let hosts = etc.join("hosts");
    if !hosts.exists() && Path::new("/etc/hosts").exists() {
        std::fs::copy("/etc/hosts", &hosts).map_err(io("copying", "/etc/hosts"))?;
    }
    for d in ["pki/ca-trust", "pki/tls", "ssl", "ca-certificates", "pacman.d/gnupg", "alternatives"] {
        std::fs::create_dir_all(etc.join(d)).map_err(io("creating", etc.join(d)))?;
    }
    for f in ["passwd", "group", "shadow", "gshadow", "ld.so.cache"] {
        let p = etc.join(f);
        if !p.exists() {
            std::fs::write(&p, b"").map_err(io("creating", &p))?;
        }
    }
    Ok(())
}

fn install_skeleton_trees(ctx: &Context) -> Result<()> {
    for (src, target) in ctx.config.trees("SkeletonTrees") {
        tree::install_tree(&src, &ctx.root(), target.as_deref(), false)?;
    }
    Ok(())
}

fn install_extra_trees(ctx: &Context) -> Result<()> {
    for (src, target) in ctx.config.trees("ExtraTrees") {
        if !src.exists() {
            return Err(BuildError::msg(format!("Extra tree {} does not exist", src.display())));
        }
        tree::install_tree(&src, &ctx.root(), target.as_deref(), false)?;
    }
    Ok(())
}

/// Write `/etc/machine-id` and create the boot loader directories.
fn prepare_root(ctx: &Context) -> Result<()> {
    let root = ctx.root();
    let machine_id = root.join("etc/machine-id");
    std::fs::create_dir_all(root.join("etc")).map_err(io("creating", root.join("etc")))?;
    let id = match ctx.config.str("MachineId") {
        Some(u) => u.replace('-', "") + "\n",
        None => "uninitialized\n".to_string(),
    };
    let created = std::fs::symlink_metadata(&machine_id).is_err();
    std::fs::write(&machine_id, id).map_err(io("writing", &machine_id))?;
    use std::os::unix::fs::PermissionsExt;
    if created {
        // Read-only like systemd creates it.
        std::fs::set_permissions(&machine_id, std::fs::Permissions::from_mode(0o444))
            .map_err(io("chmod", &machine_id))?;
    }

    for (d, mode) in [("efi", 0o500), ("boot", 0o500), ("boot/loader", 0o700)] {
        let p = root.join(d);
        if !p.exists() {
            std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &p))?;
        }
    }
    let srel = root.join("boot/loader/entries.srel");
    if !srel.exists() {
        std::fs::write(&srel, "type1\n").map_err(io("writing", &srel))?;
        std::fs::set_permissions(&srel, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &srel))?;
    }
    Ok(())
}

/// Bootstrap the distribution and install `Packages=`.
fn install_distribution(ctx: &Context) -> Result<()> {
    let root = ctx.root();
    let packages = ctx.config.strings("Packages");
    let extension = ctx.config.bool("Overlay") || ctx.config.output_format().is_extension_image();
    match mkosi_distro::package_manager(ctx.config)? {
        _ if !ctx.config.list("BaseTrees").is_empty() => crate::basetrees::install_packages(ctx)?,
        _ if extension => {
            if !packages.is_empty() {
                return Err(BuildError::hint(
                    "Cannot install packages in extension images without a base tree",
                    "Configure a base tree with the BaseTrees= setting",
                ));
            }
            return Ok(());
        }
        "apt" => {
            let env = pm_env(ctx)?;
            let apt = Apt::new(ctx.config, &env);
            let scratch = ctx.scratch("bootstrap")?;
            log::step(&format!("Installing {}", ctx.config.distribution().pretty_name()));
            if !packages.is_empty() {
                log::step(&format!("Installing packages: {}", packages.join(" ")));
            }
            let mut prepare = || prepare_root(ctx).map_err(|e| mkosi_distro::DistroError::Config(e.to_string()));
            apt.bootstrap(&scratch, &packages, &mut prepare)?;
        }
        _ => prepare_root(ctx)?,
    }

    for f in [
        "var/lib/systemd/random-seed",
        "var/lib/systemd/credential.secret",
        "etc/machine-info",
        "var/lib/dbus/machine-id",
    ] {
        let p = root.join(f);
        if std::fs::symlink_metadata(&p).is_ok() {
            std::fs::remove_file(&p).map_err(io("removing", &p))?;
        }
    }
    Ok(())
}

fn remove_packages(ctx: &Context) -> Result<()> {
    let packages = ctx.config.strings("RemovePackages");
    if packages.is_empty() || ctx.config.distribution() == mkosi_config::enums::Distribution::Custom {
        return Ok(());
    }
    let env = pm_env(ctx)?;
    Apt::new(ctx.config, &env).remove(&packages)?;
    Ok(())
}

fn check_root_populated(ctx: &Context) -> Result<()> {
    let format = ctx.config.output_format();
    if format == OutputFormat::None || format.is_extension_or_portable_image() {
        return Ok(());
    }
    let root = ctx.root();
    if !root.join("usr/lib/os-release").exists() && !root.join("etc/os-release").exists() {
        return Err(BuildError::hint(
            "usr/lib/os-release not found in image",
            "The root does not look like an operating system tree; check Packages= and the skeleton/extra trees",
        ));
    }
    Ok(())
}

/// Remove package manager databases and caches when configured (or when
/// the package manager is not part of the image).
fn clean_package_metadata(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let setting: Feature = c.str("CleanPackageMetadata").and_then(|s| s.parse().ok()).unwrap_or(Feature::Auto);
    if setting == Feature::Disabled {
        return Ok(());
    }
    if setting == Feature::Auto && matches!(c.output_format(), OutputFormat::Directory | OutputFormat::Tar) {
        return Ok(());
    }
    let root = ctx.root();
    let has = |tool: &str| mkosi_sandbox::run::find_binary(tool, &root).is_some();
    let mut remove: Vec<PathBuf> = Vec::new();
    for (tool, paths) in [
        ("rpm", &["var/lib/rpm", "usr/lib/sysimage/rpm"][..]),
        ("dnf5", &["usr/lib/sysimage/libdnf5"]),
        ("dpkg", &["var/lib/dpkg"]),
        ("apt-get", &["var/lib/apt", "var/cache/apt"]),
    ] {
        if setting == Feature::Enabled || !has(tool) {
            remove.extend(paths.iter().map(|p| root.join(p)).filter(|p| p.exists()));
        }
    }
    tree::rmtree(&remove)
}

/// With `SourceDateEpoch=`, drop what package installation leaves behind that no clock setting
/// makes reproducible: update-alternatives' log (wall-clock times) and ldconfig's auxiliary
/// cache (inode numbers and ctimes; ldconfig rebuilds it when needed).
fn remove_unreproducible_files(ctx: &Context) -> Result<()> {
    if ctx.config.int("SourceDateEpoch").is_none() {
        return Ok(());
    }
    let root = ctx.root();
    let remove: Vec<PathBuf> = ["var/log/alternatives.log", "var/cache/ldconfig/aux-cache"]
        .iter()
        .map(|p| root.join(p))
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    tree::rmtree(&remove)
}

/// `RemoveFiles=`: globs relative to the image root.
fn remove_files(ctx: &Context) -> Result<()> {
    let globs = ctx.config.strings("RemoveFiles");
    if globs.is_empty() {
        return Ok(());
    }
    let root = ctx.root();
    let mut remove = Vec::new();
    for g in globs {
        remove.extend(tree::path_glob(&root, g.trim_start_matches('/')));
    }
    tree::rmtree(&remove)
}

/// Extension images drop the directories that are left empty.
fn remove_empty_directories(ctx: &Context) -> Result<()> {
    fn walk(dir: &Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let md = std::fs::symlink_metadata(e.path())?;
            if md.is_dir() {
                walk(&e.path())?;
                if std::fs::read_dir(e.path())?.next().is_none() {
                    std::fs::remove_dir(e.path())?;
                }
            }
        }
        Ok(())
    }
    if !ctx.config.output_format().is_extension_image() {
        return Ok(());
    }
    let root = ctx.root();
    walk(&root).map_err(io("removing empty directories in", &root))
}

/// Clamp modification times to `SourceDateEpoch=`.
pub fn normalize_mtime(root: &Path, epoch: Option<i64>) -> Result<()> {
    let Some(epoch) = epoch else { return Ok(()) };
    fn walk(p: &Path, epoch: i64) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(p)?;
        if md.is_dir() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), epoch)?;
            }
        }
        if md.mtime() > epoch || md.atime() > epoch {
            let ts = libc::timespec { tv_sec: epoch, tv_nsec: 0 };
            let times = [ts, ts];
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            // SAFETY: valid path and two timespecs; AT_SYMLINK_NOFOLLOW touches links themselves.
            let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    walk(root, epoch).map_err(io("clamping modification times in", root))
}

/// Run one named step, recording its duration and naming it in errors.
pub(crate) fn step(ctx: &mut Context, name: &str, f: impl FnOnce(&Context) -> Result<()>) -> Result<()> {
    if mkosi_sandbox::run::interrupted() {
        return Err(BuildError::msg("Interrupted").in_step(name));
    }
    // An image this one depends on failed while building concurrently: stop with its error.
    if let Some(dependency) = ctx.dependency.filter(|d| d.failed()) {
        dependency.wait()?;
    }
    let mut timings = std::mem::take(&mut ctx.timings);
    let r = timings.step(name, || f(ctx));
    ctx.timings = timings;
    r.map_err(|e| e.in_step(name))
}

/// Build one image into its staging directory and move the outputs into place.
///
/// The order is upstream's (`build_image()` in mkosi/__init__.py). Lines
/// marked `HOOK(module)` are where the steps owned by other modules go once
/// they exist.
pub fn build_image(ctx: &mut Context) -> Result<()> {
    let config = ctx.config;
    log::header(&format!("Building {} image", config.image()));
    check_supported(config)?;
    // With base trees, the manifest lists what is installed from now on.
    let started = crate::manifest::now();

    step(ctx, "Copying in sandbox trees", install_sandbox_trees)?;
    step(ctx, "Copying in base trees", crate::basetrees::install_base_trees)?;
    let mut cached = false;
    step(ctx, "Reusing the cached image", |ctx| {
        cached = crate::cache::reuse(ctx)?;
        Ok(())
    })?;
    step(ctx, "Creating the root directory", |ctx| {
        let root = ctx.root();
        std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod", &root))
    })?;
    // Overlay=yes: the base trees stay mounted under the root until the content is complete.
    let mut overlay = None;
    step(ctx, "Mounting base trees", |ctx| {
        overlay = crate::basetrees::mount_base_trees(ctx)?;
        Ok(())
    })?;

    if mkosi_distro::package_manager(config)? == "apt" {
        step(ctx, "Setting up the package manager", |ctx| {
            let env = pm_env(ctx)?;
            Ok(Apt::new(ctx.config, &env).setup()?)
        })?;
    }
    let wantrepo = crate::repository::wanted(config, cached);
    if wantrepo {
        step(ctx, "Setting up the local package repository", crate::repository::setup)?;
    }

    if !cached {
        step(ctx, "Copying in skeleton trees", install_skeleton_trees)?;
        step(ctx, "Installing the distribution", install_distribution)?;
        step(ctx, "Running prepare scripts", |ctx| scripts::run_prepare_scripts(ctx, false))?;
        step(ctx, "Installing build packages", scripts::install_build_packages)?;
        step(ctx, "Running prepare scripts in the build overlay", |ctx| scripts::run_prepare_scripts(ctx, true))?;
        step(ctx, "Fixing up the kernel location", crate::sysconfig::fixup_vmlinuz_location)?;
        step(ctx, "Running depmod", |ctx| crate::sysconfig::run_depmod(ctx, true))?;
        step(ctx, "Generating the hardware database", crate::sysconfig::run_hwdb)?;
        if crate::cache::is_incremental(config) {
            step(ctx, "Saving the cached image", crate::cache::save)?;
            step(ctx, "Reusing the cached image", |ctx| crate::cache::reuse(ctx).map(|_| ()))?;
        }
    }
    step(ctx, "Checking the root", check_root_populated)?;
    step(ctx, "Running build scripts", scripts::run_build_scripts)?;

    if config.output_format() == OutputFormat::None {
        return Ok(());
    }

    if wantrepo {
        step(ctx, "Refreshing the local package repository", crate::repository::refresh)?;
    }
    step(ctx, "Installing volatile packages", crate::repository::install_volatile_packages)?;
    step(ctx, "Copying in the build tree", scripts::install_build_dest)?;
    step(ctx, "Copying in extra trees", install_extra_trees)?;
    step(ctx, "Running post-installation scripts", scripts::run_postinst_scripts)?;
    step(ctx, "Fixing up the kernel location", crate::sysconfig::fixup_vmlinuz_location)?;
    step(ctx, "Setting up autologin", crate::sysconfig::configure_autologin)?;
    step(ctx, "Configuring os-release", crate::sysconfig::configure_os_release)?;
    step(ctx, "Configuring extension-release", crate::sysconfig::configure_extension_release)?;
    step(ctx, "Configuring the initrd", crate::sysconfig::configure_initrd)?;
    step(ctx, "Configuring ssh", crate::sysconfig::configure_ssh)?;
    step(ctx, "Configuring the clock epoch", crate::sysconfig::configure_clock)?;
    step(ctx, "Installing the verity certificate", crate::sysconfig::configure_verity_certificate)?;
    step(ctx, "Creating mount points", crate::sysconfig::configure_mountpoints)?;
    step(ctx, "Installing systemd-boot", crate::boot::systemd_boot::install)?;
    step(ctx, "Installing grub", crate::boot::grub::install)?;
    step(ctx, "Installing shim", crate::boot::shim::install)?;
    step(ctx, "Generating locales", crate::sysconfig::run_locale_gen)?;
    step(ctx, "Generating system users", crate::sysconfig::run_sysusers)?;
    step(ctx, "Generating volatile files", crate::sysconfig::run_tmpfiles)?;
    step(ctx, "Applying presets", crate::sysconfig::run_preset)?;
    step(ctx, "Running depmod", |ctx| crate::sysconfig::run_depmod(ctx, false))?;
    step(ctx, "Applying first boot settings", crate::sysconfig::run_firstboot)?;
    step(ctx, "Saving the ESP components", |ctx| {
        crate::boot::kernel::save_esp_components(ctx)?;
        crate::boot::addon::save_stub(ctx)
    })?;
    step(ctx, "Removing packages", remove_packages)?;
    step(ctx, "Recording packages in manifest", |ctx| crate::manifest::record(ctx, started))?;
    step(ctx, "Relabeling files", crate::sysconfig::run_selinux_relabel)?;
    if let Some(ov) = overlay.take() {
        step(ctx, "Unmounting base trees", |ctx| crate::basetrees::finish_overlay(ctx, ov))?;
    }
    step(ctx, "Cleaning package manager metadata", clean_package_metadata)?;
    step(ctx, "Removing files", remove_files)?;
    step(ctx, "Removing files that cannot be reproduced", remove_unreproducible_files)?;
    step(ctx, "Removing empty directories", remove_empty_directories)?;
    step(ctx, "Running finalize scripts", scripts::run_finalize_scripts)?;
    step(ctx, "Removing /work", |ctx| tree::rmtree(&[ctx.root().join("work")]))?;
    step(ctx, "Clamping modification times", |ctx| normalize_mtime(&ctx.root(), ctx.config.int("SourceDateEpoch")))?;
    let mut partitions = Vec::new();
    step(ctx, "Generating disk image", |ctx| {
        partitions = crate::disk::make_disk(ctx, crate::disk::Pass::Initial)?;
        Ok(())
    })?;
    // The initrds are read from here on: an image building them concurrently must be done.
    if let Some(dependency) = ctx.dependency {
        step(ctx, "Waiting for the images this one depends on", |_| dependency.wait())?;
    }
    step(ctx, "Installing kernels", |ctx| crate::boot::install_kernel(ctx, &partitions))?;
    step(ctx, "Clamping modification times of /boot and /efi", |ctx| {
        let epoch = ctx.config.int("SourceDateEpoch");
        for d in ["boot", "efi"] {
            let p = ctx.root().join(d);
            if p.exists() {
                normalize_mtime(&p, epoch)?;
            }
        }
        Ok(())
    })?;
    step(ctx, "Formatting ESP/XBOOTLDR partitions", |ctx| {
        if partitions.iter().any(|p| p.deferred) {
            partitions = crate::disk::make_disk(ctx, crate::disk::Pass::Boot)?;
        }
        Ok(())
    })?;
    step(ctx, "grub BIOS setup", |ctx| crate::boot::grub::bios_setup(ctx, &partitions))?;
    if ctx.config.strings("SplitArtifacts").iter().any(|a| a == "partitions") {
        step(ctx, "Extracting partitions", |ctx| crate::disk::make_disk(ctx, crate::disk::Pass::Split).map(|_| ()))?;
    }
    step(ctx, "Creating the split tar archive", outputs::make_split_tar)?;
    step(ctx, "Copying the nspawn settings", outputs::copy_nspawn_settings)?;
    step(ctx, "Copying the kernel, initrd and UKI", crate::boot::kernel::copy_split_artifacts)?;
    step(ctx, "Generating the output", outputs::make_output)?;
    step(ctx, "Running post-output scripts", scripts::run_postoutput_scripts)?;
    step(ctx, "Moving outputs into place", outputs::finalize_staging)?;
    Ok(())
}
