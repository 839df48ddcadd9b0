//! Installing the image's kernels: unified kernel images (assembled in-process, no ukify) or
//! Type #1 boot loader entries, with the kernel command line, the initrds and the entry token
//! decided as upstream decides them (reference §9.1–§9.4).

use std::cmp::Ordering;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mkosi_config::enums::{Feature, OutputFormat};
use mkosi_formats::pe::KernelType;

use super::{bootloader_is_signed, bootloader_is_uki, mkdir_0700, stub_path, want_efi, want_kernel, want_uki};
use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::log;
use crate::repart::PartitionResult;

/// A kernel of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The version: the name of its `usr/lib/modules/` directory.
    pub version: String,
    /// The kernel image, relative to the image root.
    pub image: PathBuf,
}

/// What kind of PE binary (if any) `path` is; unreadable files are [`KernelType::Unknown`].
pub fn identify(path: &Path) -> KernelType {
    mkosi_formats::pe::kernel_type_of(path).unwrap_or(KernelType::Unknown)
}

/// The content of section `name` of the PE binary at `path`, `None` when it has none.
fn section(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    mkosi_formats::uki::extract_section(path, name).map_err(|e| BuildError::msg(e.to_string()))
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The kernels of the image, newest first (upstream's `gen_kernel_images`): for every
/// `usr/lib/modules/<version>/` the first `vmlinuz*` that is not a UKI, else the first such
/// `vmlinux*`.
pub fn kernel_images(root: &Path) -> Result<Vec<Kernel>> {
    let modules = root.join("usr/lib/modules");
    let mut versions: Vec<String> = sorted_names(&modules).into_iter().filter(|v| modules.join(v).is_dir()).collect();
    versions.sort_by(|a, b| mkosi_config::version::compare_versions(b, a).then_with(|| b.cmp(a)));
    let mut out = Vec::new();
    for version in versions {
        let dir = modules.join(&version);
        let names = sorted_names(&dir);
        let pick = |prefix: &str| {
            names
                .iter()
                .find(|n| n.starts_with(prefix) && dir.join(n).is_file() && identify(&dir.join(n)) != KernelType::Uki)
        };
        if let Some(n) = pick("vmlinuz").or_else(|| pick("vmlinux")) {
            out.push(Kernel { image: PathBuf::from("usr/lib/modules").join(&version).join(n), version });
        }
    }
    Ok(out)
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn os_release_value(root: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(root.join("etc/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")))
        .ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

fn valid_machine_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
}

/// The boot loader entry token, as `kernel-install inspect` reports it for the image:
/// `/etc/kernel/entry-token`, else the machine ID, else os-release's `IMAGE_ID`, else `ID`,
/// else (no os-release) `ImageId=` or the distribution.
pub fn entry_token_of(root: &Path, image_id: Option<&str>, distribution: &str) -> String {
    if let Some(t) = read_trimmed(&root.join("etc/kernel/entry-token")) {
        return t;
    }
    if let Some(id) = read_trimmed(&root.join("etc/machine-id")).filter(|m| valid_machine_id(m)) {
        return id;
    }
    os_release_value(root, "IMAGE_ID")
        .filter(|s| !s.is_empty())
        .or_else(|| os_release_value(root, "ID").filter(|s| !s.is_empty()))
        .or_else(|| image_id.map(str::to_string))
        .unwrap_or_else(|| distribution.to_string())
}

/// [`entry_token_of`] for the image being built.
pub fn entry_token(ctx: &Context) -> String {
    entry_token_of(&ctx.root(), ctx.config.image_id(), &ctx.config.distribution().to_string())
}

/// The kernel command line of installed UKIs and entries (upstream's `finalize_cmdline`):
/// `/etc/kernel/cmdline` (or `/usr/lib/kernel/cmdline`), the `roothash=`/`usrhash=`, then
/// `KernelCommandLine=`; without a root hash, bare `root=PARTUUID` and `mount.usr=PARTUUID`
/// get the partition's UUID.
pub fn finalize_cmdline(
    root: &Path,
    kernel_command_line: &[String],
    partitions: &[PartitionResult],
    roothash: Option<&str>,
) -> Vec<String> {
    let mut cmdline: Vec<String> = read_trimmed(&root.join("etc/kernel/cmdline"))
        .or_else(|| read_trimmed(&root.join("usr/lib/kernel/cmdline")))
        .into_iter()
        .collect();
    if let Some(h) = roothash {
        cmdline.push(h.to_string());
    }
    cmdline.extend(kernel_command_line.iter().cloned());
    if roothash.is_none() {
        for name in ["root", "mount.usr"] {
            let prefix = name.trim_start_matches("mount.");
            let Some(uuid) = partitions.iter().find(|p| p.type_name.starts_with(prefix)).map(|p| p.uuid) else {
                continue;
            };
            let bare = format!("{name}=PARTUUID");
            for c in cmdline.iter_mut() {
                if *c == bare {
                    *c = format!("{name}=PARTUUID={uuid}");
                }
            }
        }
    }
    cmdline
}

/// The file name (without `.efi`) of an installed UKI: `UnifiedKernelImageFormat=` (default
/// `&e-&k`, with `-&h` when there is a root hash) with `&e` the entry token, `&k` the kernel
/// version and `&h` the root hash.
pub fn uki_name(format: Option<&str>, kver: &str, token: &str, roothash: Option<&str>) -> String {
    let hash = roothash.and_then(|h| h.split_once('=')).map(|(_, v)| v.to_string()).unwrap_or_default();
    let format = match format {
        Some(f) => f.to_string(),
        None if roothash.is_some() => "&e-&k-&h".to_string(),
        None => "&e-&k".to_string(),
    };
    mkosi_config::config::expand_delayed_specifiers(&format, |c| match c {
        '&' => Some("&".into()),
        'e' => Some(token.into()),
        'k' => Some(kver.into()),
        'h' => Some(hash.clone()),
        _ => None,
    })
}

fn copy_file_mode(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = dst.parent() {
        mkdir_0700(parent)?;
    }
    std::fs::copy(src, dst).map_err(io("copying", src))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", dst))
}

/// `Initrds=` and the `io.mkosi.initrd` artifacts of earlier images.
pub fn finalize_initrds(ctx: &Context) -> Vec<PathBuf> {
    let mut initrds = ctx.config.paths("Initrds");
    let dir = ctx.artifacts().join("io.mkosi.initrd");
    initrds.extend(sorted_names(&dir).into_iter().map(|n| dir.join(n)));
    initrds
}

/// The systemd-stub's version from its `.sdmagic` section (`#### LoaderInfo: systemd-stub
/// <version> ####`), if it has one.
pub fn stub_version(stub: &Path) -> Result<Option<String>> {
    let Some(magic) = section(stub, ".sdmagic")? else { return Ok(None) };
    let text = String::from_utf8_lossy(&magic).trim_matches('\0').trim().to_string();
    if text.is_empty() {
        return Ok(None);
    }
    let version = text
        .strip_prefix("#### LoaderInfo: systemd-stub ")
        .and_then(|r| r.strip_suffix(" ####"))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.~^+".contains(&b)));
    match version {
        Some(v) => Ok(Some(v.to_string())),
        None => Err(BuildError::msg(format!("Unable to determine systemd-stub version, found {text:?}"))),
    }
}

/// What goes into one UKI besides the kernel.
struct UkiParts {
    microcode: Vec<PathBuf>,
    initrds: Vec<PathBuf>,
    cmdline: Vec<String>,
    profiles: Vec<PathBuf>,
}

/// A device tree blob of a kernel selected by `Devicetrees=`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Devicetree {
    /// The file, relative to the image root.
    pub path: PathBuf,
    /// The file relative to the directory it was found in: what the globs are matched
    /// against, and where a Type #1 entry puts it below the kernel's directory.
    pub name: PathBuf,
}

/// The directories (relative to the image root) holding the device trees of kernel `kver`:
/// the firmware's `device-tree/` directory, Debian's `linux-image-<kver>/` and the modules'
/// `dtb/` directory.
pub fn devicetree_dirs(kver: &str) -> [PathBuf; 3] {
    [
        Path::new("usr/lib/firmware").join(kver).join("device-tree"),
        PathBuf::from(format!("usr/lib/linux-image-{kver}")),
        Path::new("usr/lib/modules").join(kver).join("dtb"),
    ]
}

/// The `*.dtb` files (regular files or symlinks, at any depth, symlinked directories not
/// entered) of kernel `kver` whose path below its [`devicetree_dirs`] directory is matched by
/// the `Devicetrees=` globs (the `KernelModules=` glob rules), sorted by path. Nothing
/// matching is only worth a warning here: the callers decide whether that is an error.
pub fn filter_devicetrees(root: &Path, kver: &str, globs: &[String]) -> Result<Vec<Devicetree>> {
    use std::os::unix::ffi::OsStrExt;

    if globs.is_empty() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for dir in devicetree_dirs(kver) {
        if !root.join(&dir).is_dir() {
            continue;
        }
        let mut all = Vec::new();
        crate::kmod::walk(root, &dir, &mut all)?;
        for path in all {
            if !path.file_name().is_some_and(|n| n.as_bytes().ends_with(b".dtb")) {
                continue;
            }
            let full = root.join(&path);
            let kind = std::fs::symlink_metadata(&full).map_err(io("reading", &full))?.file_type();
            if !(kind.is_file() || kind.is_symlink()) {
                continue;
            }
            let Ok(name) = path.strip_prefix(&dir).map(Path::to_path_buf) else { continue };
            if crate::kmod::globs_match_filename(&name.to_string_lossy(), globs, false) {
                found.push(Devicetree { path, name });
            }
        }
    }
    if found.is_empty() {
        log::warn(&format!("No device tree of kernel {kver} is matched by Devicetrees={}", globs.join(" ")));
    }
    found.sort();
    Ok(found)
}

/// The `.dtb` and `.dtbauto` inputs of a UKI: a single device tree becomes its `.dtb`,
/// several become one `.dtbauto` each (the stub picks the one matching the machine).
pub fn uki_devicetrees(root: &Path, dtbs: &[Devicetree]) -> (Option<PathBuf>, Vec<PathBuf>) {
    match dtbs {
        [one] => (Some(root.join(&one.path)), Vec::new()),
        many => (None, many.iter().map(|d| root.join(&d.path)).collect()),
    }
}

/// The one device tree a Type #1 entry of kernel `kver` gets, when `Devicetrees=` is set:
/// a boot loader entry has room for a single `devicetree` line.
pub fn type1_devicetree(root: &Path, kver: &str, globs: &[String]) -> Result<Option<Devicetree>> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut dtbs = filter_devicetrees(root, kver, globs)?;
    if dtbs.len() != 1 {
        return Err(BuildError::hint(
            format!(
                "Devicetrees= matches {} device trees of kernel {kver}, but a Type #1 boot loader entry takes exactly one",
                dtbs.len()
            ),
            "Narrow Devicetrees= down to a single device tree, or build unified kernel images, which can hold several",
        ));
    }
    Ok(dtbs.pop())
}

/// Builds one UKI at `output` from the image's stub and `kernel` (upstream's `build_uki`).
fn build_uki(ctx: &Context, stub: &Path, kernel: &Kernel, parts: &UkiParts, output: &Path) -> Result<()> {
    let root = ctx.root();
    let c = ctx.config;
    super::pcrs::check_supported(c)?;
    log::step(&format!("Generating unified kernel image for kernel version {}", kernel.version));
    let mut initrds = parts.initrds.clone();
    let mut microcode = Vec::new();
    if !parts.microcode.is_empty() {
        // The stub has known `.ucode` sections since systemd 256; before that microcode goes
        // first into the initrds.
        let new_stub =
            stub_version(stub)?.is_some_and(|v| mkosi_config::version::compare_versions(&v, "256") != Ordering::Less);
        if new_stub {
            microcode = parts.microcode.clone();
            if microcode.len() > 1 {
                let joined = ctx.scratch("ucode")?.join("microcode");
                join_initrds(&microcode, &joined)?;
                microcode = vec![joined];
            }
        } else {
            initrds = parts.microcode.iter().cloned().chain(initrds).collect();
        }
    }
    let splash = c.str("Splash").map(|s| root.join(s.trim_start_matches('/')));
    let dtbs = filter_devicetrees(&root, &kernel.version, &c.strings("Devicetrees"))?;
    let (devicetree, devicetree_auto) = uki_devicetrees(&root, &dtbs);
    let scratch = ctx.scratch("uki")?;
    let linux = if c.bool("SecureBoot") {
        // ukify --sign-kernel: the kernel inside the UKI carries a signature too.
        let signed = scratch.join("linux.signed");
        crate::secureboot::sign_efi(ctx.config, &root.join(&kernel.image), &signed)?;
        signed
    } else {
        root.join(&kernel.image)
    };
    let input = mkosi_formats::uki::UkiInput {
        stub: stub.to_path_buf(),
        linux: Some(linux),
        initrds,
        microcode: microcode.into_iter().next(),
        cmdline: (!parts.cmdline.is_empty()).then(|| mkosi_formats::uki::cmdline_text(&parts.cmdline)),
        os_release: Some(
            std::fs::read_to_string(root.join("usr/lib/os-release"))
                .map_err(io("reading", &root.join("usr/lib/os-release")))?,
        ),
        uname: Some(kernel.version.clone()),
        splash,
        devicetree,
        devicetree_auto,
        join_profiles: parts.profiles.clone(),
        ..Default::default()
    };
    let unsigned = if c.bool("SecureBoot") { scratch.join("uki.unsigned.efi") } else { output.to_path_buf() };
    if super::pcrs::want_signed_pcrs(c) {
        // .pcrpkey and .pcrsig, like ukify --pcr-private-key.
        let key = super::pcrs::PcrKey::from_config(c)?;
        super::pcrs::build_signed(&input, &key, &unsigned)
            .map_err(|e| BuildError::msg(format!("Assembling the unified kernel image {}: {e}", output.display())))?;
    } else {
        mkosi_formats::uki::build(&input, &unsigned)
            .map_err(|e| BuildError::msg(format!("Assembling the unified kernel image {}: {e}", output.display())))?;
    }
    if c.bool("SecureBoot") {
        crate::secureboot::sign_efi(ctx.config, &unsigned, output)?;
    }
    Ok(())
}

/// The `[UKIProfile]` sections as PE profiles joined into every UKI (upstream's
/// `build_uki_profiles`).
fn build_uki_profiles(ctx: &Context, cmdline: &[String]) -> Result<Vec<PathBuf>> {
    let profiles = ctx.config.list("UnifiedKernelImageProfiles");
    if profiles.is_empty() {
        return Ok(Vec::new());
    }
    let arch = crate::disk::efi_arch(ctx.config.architecture()).unwrap_or("x64");
    let stub = ctx.root().join(format!("usr/lib/systemd/boot/efi/addon{arch}.efi.stub"));
    if !stub.exists() {
        return Err(BuildError::msg(format!(
            "sd-stub not found at /usr/lib/systemd/boot/efi/addon{arch}.efi.stub in the image"
        )));
    }
    let dir = ctx.workspace.join("uki-profiles");
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let mut out = Vec::new();
    for profile in profiles {
        let Some(fields) = profile.get("Profile").and_then(|p| p.as_object()) else { continue };
        let id = fields.get("ID").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let text = mkosi_formats::uki::profile_text(
            &fields.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect::<Vec<_>>(),
        );
        let mut full: Vec<String> = cmdline.to_vec();
        if let Some(extra) = profile.get("Cmdline").and_then(|c| c.as_array()) {
            full.extend(extra.iter().filter_map(|s| s.as_str().map(str::to_string)));
        }
        let output = dir.join(format!("{id}.efi"));
        log::step(&format!("Generating UKI profile '{id}'"));
        let full = (!full.is_empty()).then(|| mkosi_formats::uki::cmdline_text(&full));
        mkosi_formats::uki::build_profile(&stub, &text, full.as_deref(), &output)
            .map_err(|e| BuildError::msg(format!("Assembling the UKI profile {id}: {e}")))?;
        out.push(output);
    }
    Ok(out)
}

/// The microcode initrds: `$ARTIFACTDIR/io.mkosi.microcode/*`, else built from the image's
/// firmware.
fn finalize_microcode(ctx: &Context) -> Result<Vec<PathBuf>> {
    crate::kmod::microcode_initrds(ctx)
}

fn kernel_modules_initrd(ctx: &Context, kver: &str) -> Result<PathBuf> {
    let out = ctx.workspace.join(format!("kernel-modules-{kver}.initrd"));
    if !out.exists() {
        crate::kmod::build_kernel_modules_initrd(ctx, kver, &out)?;
    }
    Ok(out)
}

/// Where an installed UKI goes: `/boot/EFI/Linux/<name>.efi`, or with `Bootloader=uki` the
/// default boot loader path (shim's second stage with `ShimBootloader=`).
fn uki_path(ctx: &Context, name: &str) -> PathBuf {
    if bootloader_is_uki(ctx.config) {
        return super::boot_loader_binary(ctx.config);
    }
    PathBuf::from(format!("boot/EFI/Linux/{name}.efi"))
}

fn install_uki(
    ctx: &Context,
    kernel: &Kernel,
    token: &str,
    roothash: Option<&str>,
    cmdline: &[String],
    profiles: &[PathBuf],
) -> Result<()> {
    let c = ctx.config;
    let root = ctx.root();
    let name = uki_name(c.str("UnifiedKernelImageFormat"), &kernel.version, token, roothash);
    let target = root.join(uki_path(ctx, &name));
    if let Some(parent) = target.parent() {
        mkdir_0700(parent)?;
    }
    let ukis = c.str("UnifiedKernelImages").unwrap_or("auto");
    if (bootloader_is_signed(c) && ukis == "auto") || ukis == "signed" {
        let dir = root.join("usr/lib/modules").join(&kernel.version);
        match sorted_names(&dir).into_iter().find(|n| n.ends_with(".efi")) {
            Some(n) => {
                log::step(&format!("Installing prebuilt UKI at {} to {}", dir.join(&n).display(), target.display()));
                copy_file_mode(&dir.join(n), &target, 0o644)?;
            }
            None if c.bootable() == Feature::Enabled => {
                return Err(BuildError::msg(format!(
                    "Couldn't find a signed UKI binary installed at /usr/lib/modules/{} in the image",
                    kernel.version
                )))
            }
            None => return Ok(()),
        }
        return super::grub::append_uki_entry(ctx, &target);
    }
    let Some(stub) = stub_path(c, &root) else {
        return Err(BuildError::msg(format!("Architecture {} does not support UEFI", c.architecture())));
    };
    let mut initrds = finalize_initrds(ctx);
    if c.bool("KernelModulesInitrd") {
        initrds.push(kernel_modules_initrd(ctx, &kernel.version)?);
    }
    let parts = UkiParts {
        microcode: finalize_microcode(ctx)?,
        initrds,
        cmdline: cmdline.to_vec(),
        profiles: profiles.to_vec(),
    };
    build_uki(ctx, &stub, kernel, &parts, &target)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).map_err(io("chmod", &target))?;
    log::info(&format!(
        "{} size is {}",
        target.display(),
        mkosi_config::summary::format_bytes(std::fs::metadata(&target).map(|m| m.len() as i64).unwrap_or(0))
    ));
    super::grub::append_uki_entry(ctx, &target)
}

/// The text of a Type #1 boot loader entry.
pub fn type1_entry(
    token: &str,
    kver: &str,
    linux: &str,
    cmdline: &[String],
    initrds: &[String],
    devicetree: Option<&str>,
) -> String {
    let mut s = format!("title {token} {kver}\nversion {kver}\nlinux {linux}\noptions {}\n", cmdline.join(" "));
    for i in initrds {
        s.push_str(&format!("initrd {i}\n"));
    }
    if let Some(d) = devicetree {
        s.push_str(&format!("devicetree {d}\n"));
    }
    s
}

/// A Type #1 entry `boot/loader/entries/<token>-<kver>.conf` with the kernel and its initrds
/// under `boot/<token>/` (upstream's `install_type1`), and its grub menu entry when grub
/// boots it.
fn install_type1(
    ctx: &Context,
    kernel: &Kernel,
    token: &str,
    cmdline: &[String],
    partitions: &[PartitionResult],
) -> Result<()> {
    let c = ctx.config;
    let root = ctx.root();
    let boot = root.join("boot");
    let dst = boot.join(token).join(&kernel.version);
    mkdir_0700(&dst)?;
    mkdir_0700(&boot.join("loader/entries"))?;
    let dtb = type1_devicetree(&root, &kernel.version, &c.strings("Devicetrees"))?;
    let microcode = finalize_microcode(ctx)?;
    let initrds = finalize_initrds(ctx);
    let kmods = kernel_modules_initrd(ctx, &kernel.version)?;

    let kimg = dst.join("vmlinuz");
    if want_efi(c)
        && c.bool("SecureBoot")
        && !bootloader_is_signed(c)
        && identify(&root.join(&kernel.image)) == KernelType::Pe
    {
        crate::secureboot::sign_efi(ctx.config, &root.join(&kernel.image), &kimg)?;
        std::fs::set_permissions(&kimg, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &kimg))?;
    } else {
        copy_file_mode(&root.join(&kernel.image), &kimg, 0o600)?;
    }
    let mut installed = Vec::new();
    for i in microcode.iter().chain(&initrds) {
        let Some(name) = i.file_name() else { continue };
        let target = dst.parent().unwrap_or(&dst).join(name);
        copy_file_mode(i, &target, 0o600)?;
        installed.push(target);
    }
    let target = dst.join("kernel-modules.initrd");
    copy_file_mode(&kmods, &target, 0o600)?;
    installed.push(target);
    // The device tree keeps its path below the directory it was found in.
    let dtb_target = match &dtb {
        Some(d) => {
            let target = dst.join(&d.name);
            copy_file_mode(&root.join(&d.path), &target, 0o600)?;
            Some(target)
        }
        None => None,
    };

    let rel = |p: &Path| format!("/{}", p.strip_prefix(&boot).unwrap_or(p).display());
    let text = type1_entry(
        token,
        &kernel.version,
        &rel(&kimg),
        cmdline,
        &installed.iter().map(|p| rel(p)).collect::<Vec<_>>(),
        dtb_target.as_deref().map(rel).as_deref(),
    );
    let entry = boot.join(format!("loader/entries/{token}-{}.conf", kernel.version));
    std::fs::write(&entry, text).map_err(io("writing", &entry))?;
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &entry))?;
    let title = format!("{token}-{}", kernel.version);
    super::grub::append_type1_entry(ctx, partitions, &title, &kimg, &installed, cmdline)
}

/// Installs every kernel of the image as a UKI or Type #1 entry (upstream's `install_kernel`);
/// runs after the first disk pass, so the partition UUIDs and root hash are known.
pub fn install_kernel(ctx: &Context, partitions: &[PartitionResult]) -> Result<()> {
    let c = ctx.config;
    if !want_kernel(c) {
        return Ok(());
    }
    let root = ctx.root();
    let uki = want_uki(c, &root);
    if uki && !stub_path(c, &root).is_some_and(|s| s.exists()) {
        let arch = crate::disk::efi_arch(c.architecture()).unwrap_or("x64");
        return Err(BuildError::hint(
            format!(
                "Unified kernel image(s) requested but systemd-stub not found at /usr/lib/systemd/boot/efi/linux{arch}.efi.stub"
            ),
            "Add the package providing it to Packages= (systemd-boot-efi on Debian and Ubuntu)",
        ));
    }
    let kernels = kernel_images(&root)?;
    if c.bootable() == Feature::Enabled && kernels.is_empty() {
        return Err(BuildError::hint(
            "A bootable image was requested but no kernel was found",
            "Add a kernel package to Packages= (linux-image-amd64 on Debian), or set Bootable=no",
        ));
    }
    if kernels.is_empty() {
        return Ok(());
    }
    if uki {
        super::pcrs::check_supported(c)?;
    }
    let token = entry_token(ctx);
    let roothash = crate::disk::finalize_roothash(partitions)?;
    let cmdline = finalize_cmdline(&root, &c.strings("KernelCommandLine"), partitions, roothash.as_deref());
    let profiles = if uki { build_uki_profiles(ctx, &cmdline)? } else { Vec::new() };
    // grub for BIOS cannot boot UKIs: it gets Type #1 entries too.
    let grub_bios = super::grub::want_grub_bios(ctx, partitions)?;
    for kernel in &kernels {
        if uki {
            install_uki(ctx, kernel, &token, roothash.as_deref(), &cmdline, &profiles)?;
        }
        if !uki || grub_bios {
            install_type1(ctx, kernel, &token, &cmdline, partitions)?;
        }
        if bootloader_is_uki(c) {
            break;
        }
    }
    Ok(())
}

/// The UKI whose parts become split artifacts (upstream's `get_uki_path`).
pub fn split_uki_path(ctx: &Context) -> Option<PathBuf> {
    let c = ctx.config;
    if !want_efi(c) || c.str("UnifiedKernelImages") == Some("none") {
        return None;
    }
    let root = ctx.root();
    let arch = crate::disk::efi_arch(c.architecture())?;
    let boot = root.join(format!("efi/EFI/BOOT/BOOT{}.EFI", arch.to_uppercase()));
    if boot.exists() && identify(&boot) == KernelType::Uki {
        return Some(boot);
    }
    if let Some(second) = super::shim_second_stage_binary(c).map(|p| root.join(p)) {
        if second.exists() && identify(&second) == KernelType::Uki {
            return Some(second);
        }
    }
    let dir = root.join("boot/EFI/Linux");
    let mut ukis: Vec<String> = sorted_names(&dir).into_iter().filter(|n| n.ends_with(".efi")).collect();
    ukis.sort_by(|a, b| mkosi_config::version::compare_versions(b, a));
    ukis.first().map(|n| dir.join(n))
}

fn write_section(uki: &Path, name: &str, output: &Path) -> Result<()> {
    let Some(data) = section(uki, name)? else {
        return Err(BuildError::msg(format!("{} has no {name} section", uki.display())));
    };
    std::fs::write(output, data).map_err(io("writing", output))
}

/// Concatenates initrds, each padded to 4 bytes (upstream's `join_initrds`).
pub fn join_initrds(initrds: &[PathBuf], output: &Path) -> Result<()> {
    let mut data = Vec::new();
    for i in initrds {
        let bytes = std::fs::read(i).map_err(io("reading", i))?;
        data.extend_from_slice(&bytes);
        data.resize(data.len().next_multiple_of(4), 0);
    }
    std::fs::write(output, data).map_err(io("writing", output))
}

/// `SplitArtifacts=uki,kernel,initrd`: `<Output>.efi`, `<Output>.vmlinuz` and
/// `<Output>.initrd` next to the image (upstream's `copy_uki`, `copy_vmlinuz`, `copy_initrd`).
pub fn copy_split_artifacts(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let split = c.strings("SplitArtifacts");
    let staging = ctx.staging();
    let output = c.output();
    let uki = split_uki_path(ctx);
    if split.iter().any(|a| a == "uki") {
        let dst = staging.join(format!("{output}.efi"));
        if let (Some(u), false) = (&uki, dst.exists()) {
            std::fs::copy(u, &dst).map_err(io("copying", u))?;
        }
    }
    if split.iter().any(|a| a == "kernel") {
        let dst = staging.join(format!("{output}.vmlinuz"));
        if !dst.exists() {
            if let Some(u) = &uki {
                write_section(u, ".linux", &dst)?;
            } else if let Some(k) = kernel_images(&ctx.root())?.first() {
                std::fs::copy(ctx.root().join(&k.image), &dst).map_err(io("copying", &k.image))?;
            }
        }
    }
    if split.iter().any(|a| a == "initrd") {
        let dst = staging.join(format!("{output}.initrd"));
        let initrds = finalize_initrds(ctx);
        if !dst.exists() && !initrds.is_empty() {
            if let Some(u) = &uki {
                write_section(u, ".initrd", &dst)?;
            } else if let Some(k) = kernel_images(&ctx.root())?.first() {
                let mut all = initrds;
                if c.bool("KernelModulesInitrd") {
                    all.push(kernel_modules_initrd(ctx, &k.version)?);
                }
                join_initrds(&all, &dst)?;
            }
        }
    }
    Ok(())
}

/// Where the parts of a UKI are kept between saving them (before `RemoveFiles=` and the
/// finalize scripts may delete them) and building `Format=uki` or a bootable `Format=esp`.
fn esp_components_dir(ctx: &Context) -> PathBuf {
    ctx.workspace.join("esp-components")
}

/// The systemd-stub, newest kernel and microcode saved by [`save_esp_components`].
pub struct EspComponents {
    pub stub: PathBuf,
    pub kernel: Kernel,
    pub microcode: Vec<PathBuf>,
}

/// Saves the stub, the newest kernel and the microcode for `Format=uki` and `Format=esp`
/// (upstream's `save_esp_components`).
pub fn save_esp_components(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let format = c.output_format();
    if !matches!(format, OutputFormat::Uki | OutputFormat::Esp) {
        return Ok(());
    }
    let root = ctx.root();
    let Some(kernel) = kernel_images(&root)?.into_iter().next() else {
        if format == OutputFormat::Uki {
            return Err(BuildError::hint(
                "A kernel must be installed in the image to build a UKI",
                "Add a kernel package to Packages= (linux-image-amd64 on Debian)",
            ));
        }
        if c.bootable() == Feature::Enabled {
            return Err(BuildError::hint(
                "A kernel must be installed in the image to build a bootable ESP image",
                "Add a kernel package to Packages= (linux-image-amd64 on Debian)",
            ));
        }
        return Ok(());
    };
    let Some(stub) = stub_path(c, &root) else {
        return Err(BuildError::msg(format!("Architecture {} does not support UEFI", c.architecture())));
    };
    if !stub.exists() {
        return Err(BuildError::hint(
            format!("sd-stub not found at /{} in the image", stub.strip_prefix(&root).unwrap_or(&stub).display()),
            "Add the package providing it to Packages= (systemd-boot-efi on Debian and Ubuntu)",
        ));
    }
    let dir = esp_components_dir(ctx);
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    std::fs::copy(&stub, dir.join("stub")).map_err(io("copying", &stub))?;
    std::fs::copy(root.join(&kernel.image), dir.join("kernel")).map_err(io("copying", &kernel.image))?;
    std::fs::write(dir.join("version"), &kernel.version).map_err(io("writing", &dir))?;
    let ucode = dir.join("microcode");
    std::fs::create_dir_all(&ucode).map_err(io("creating", &ucode))?;
    crate::kmod::build_microcode_initrd(ctx, &ucode.join("00"))?;
    Ok(())
}

/// What [`save_esp_components`] saved, if anything.
pub fn load_esp_components(ctx: &Context) -> Result<Option<EspComponents>> {
    let dir = esp_components_dir(ctx);
    let Ok(version) = std::fs::read_to_string(dir.join("version")) else { return Ok(None) };
    let ucode = dir.join("microcode");
    Ok(Some(EspComponents {
        stub: dir.join("stub"),
        kernel: Kernel { version, image: dir.join("kernel") },
        microcode: sorted_names(&ucode).into_iter().map(|n| ucode.join(n)).collect(),
    }))
}

/// A UKI with the whole image as its initrd (`Format=uki`, and the UKI of a bootable
/// `Format=esp`), upstream's `make_uki`. The command line is `KernelCommandLine=` alone.
pub fn make_uki(ctx: &Context, comps: &EspComponents, output: &Path) -> Result<()> {
    let c = ctx.config;
    let compressed = crate::outputs::compressed_tree_cpio(ctx, &ctx.scratch("uki-initrd")?)?;
    let cmdline = c.strings("KernelCommandLine");
    let profiles = build_uki_profiles(ctx, &cmdline)?;
    // The kernel was saved outside the image: build from there (absolute path).
    let kernel = Kernel { version: comps.kernel.version.clone(), image: comps.kernel.image.clone() };
    let parts = UkiParts { microcode: comps.microcode.clone(), initrds: vec![compressed], cmdline, profiles };
    build_uki(ctx, &comps.stub, &kernel, &parts, output)?;
    let split = c.strings("SplitArtifacts");
    let staging = ctx.staging();
    if split.iter().any(|a| a == "kernel") {
        write_section(output, ".linux", &staging.join(format!("{}.vmlinuz", c.output())))?;
    }
    if split.iter().any(|a| a == "initrd") {
        write_section(output, ".initrd", &staging.join(format!("{}.initrd", c.output())))?;
    }
    Ok(())
}

/// `Format=uki`: the UKI is the output.
pub fn make_uki_output(ctx: &Context) -> Result<()> {
    let Some(comps) = load_esp_components(ctx)? else {
        return Err(BuildError::msg("A kernel must be installed in the image to build a UKI"));
    };
    make_uki(ctx, &comps, &ctx.staging().join(ctx.config.output_with_format()))
}

/// `Format=esp` with a kernel (or `Bootable=yes`): the UKI goes into the ESP's tree first.
pub fn install_esp_uki(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let Some(comps) = load_esp_components(ctx)? else { return Ok(()) };
    if c.bootable() == Feature::Disabled {
        return Ok(());
    }
    let token = entry_token(ctx);
    let name = uki_name(c.str("UnifiedKernelImageFormat"), &comps.kernel.version, &token, None);
    let target = ctx.root().join(uki_path(ctx, &name));
    if let Some(parent) = target.parent() {
        mkdir_0700(parent)?;
    }
    make_uki(ctx, &comps, &target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(t: &str, uuid: &str) -> PartitionResult {
        PartitionResult {
            type_name: t.into(),
            uuid: uuid::Uuid::parse_str(uuid).unwrap(),
            activity: "create",
            ..Default::default()
        }
    }

    const ROOT_UUID: &str = "6c8fb8ad-6bbb-4e95-a6a5-d3d5a2b1b4a7";
    const USR_UUID: &str = "0f1d5d7e-1111-4222-8333-944455556666";

    #[test]
    fn cmdline_cases() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let parts = [part("esp", "11111111-1111-4111-8111-111111111111"), part("root-x86-64", ROOT_UUID)];
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (kernel command line, roothash, expected)
        let cases: Vec<(Vec<String>, Option<&str>, Vec<String>)> = vec![
            (s(&["console=ttyS0"]), None, s(&["console=ttyS0"])),
            (s(&["root=PARTUUID", "rw"]), None, vec![format!("root=PARTUUID={ROOT_UUID}"), "rw".into()]),
            (s(&["root=PARTUUID=x"]), None, s(&["root=PARTUUID=x"])),
            (s(&["root=PARTUUID"]), Some("roothash=abcd"), s(&["roothash=abcd", "root=PARTUUID"])),
            (s(&["mount.usr=PARTUUID"]), None, s(&["mount.usr=PARTUUID"])),
        ];
        for (kcl, hash, want) in cases {
            assert_eq!(finalize_cmdline(root, &kcl, &parts, hash), want, "{kcl:?} {hash:?}");
        }
        let parts = [part("usr-x86-64", USR_UUID)];
        assert_eq!(
            finalize_cmdline(root, &s(&["mount.usr=PARTUUID"]), &parts, None),
            vec![format!("mount.usr=PARTUUID={USR_UUID}")]
        );
        // /etc/kernel/cmdline comes first, then /usr/lib/kernel/cmdline only when it is absent.
        std::fs::create_dir_all(root.join("usr/lib/kernel")).unwrap();
        std::fs::write(root.join("usr/lib/kernel/cmdline"), "quiet splash\n").unwrap();
        assert_eq!(finalize_cmdline(root, &s(&["rw"]), &[], None), s(&["quiet splash", "rw"]));
        std::fs::create_dir_all(root.join("etc/kernel")).unwrap();
        std::fs::write(root.join("etc/kernel/cmdline"), "  console=hvc0  \n").unwrap();
        assert_eq!(
            finalize_cmdline(root, &s(&["rw"]), &[], Some("usrhash=ff")),
            s(&["console=hvc0", "usrhash=ff", "rw"])
        );
    }

    #[test]
    fn entry_token_order() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert_eq!(entry_token_of(root, None, "debian"), "debian");
        assert_eq!(entry_token_of(root, Some("myimage"), "debian"), "myimage");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("etc/kernel")).unwrap();
        std::fs::write(root.join("usr/lib/os-release"), "ID=debian\nVERSION_ID=13\n").unwrap();
        assert_eq!(entry_token_of(root, Some("myimage"), "fedora"), "debian");
        std::fs::write(root.join("usr/lib/os-release"), "ID=debian\nIMAGE_ID=\"img\"\n").unwrap();
        assert_eq!(entry_token_of(root, None, "debian"), "img");
        std::fs::write(root.join("etc/machine-id"), "uninitialized\n").unwrap();
        assert_eq!(entry_token_of(root, None, "debian"), "img");
        std::fs::write(root.join("etc/machine-id"), "b0a5e8c8a0e94a4e9a0c7b9c5e2f1d3a\n").unwrap();
        assert_eq!(entry_token_of(root, None, "debian"), "b0a5e8c8a0e94a4e9a0c7b9c5e2f1d3a");
        std::fs::write(root.join("etc/kernel/entry-token"), "custom\n").unwrap();
        assert_eq!(entry_token_of(root, None, "debian"), "custom");
    }

    #[test]
    fn uki_names() {
        assert_eq!(uki_name(None, "6.12.1-amd64", "debian", None), "debian-6.12.1-amd64");
        assert_eq!(uki_name(None, "6.1", "debian", Some("roothash=abc")), "debian-6.1-abc");
        assert_eq!(uki_name(Some("&e_&k&&x"), "6.1", "tok", Some("usrhash=abc")), "tok_6.1&x");
        assert_eq!(uki_name(Some("fixed-&h"), "6.1", "tok", None), "fixed-");
    }

    #[test]
    fn type1_entry_text() {
        let text = type1_entry(
            "debian",
            "6.12",
            "/debian/6.12/vmlinuz",
            &["root=PARTUUID=x".into(), "rw".into()],
            &["/debian/initrd".into(), "/debian/6.12/kernel-modules.initrd".into()],
            None,
        );
        assert_eq!(
            text,
            "title debian 6.12\nversion 6.12\nlinux /debian/6.12/vmlinuz\noptions root=PARTUUID=x rw\n\
             initrd /debian/initrd\ninitrd /debian/6.12/kernel-modules.initrd\n"
        );
        // The devicetree line comes last.
        let text = type1_entry(
            "debian",
            "6.12",
            "/debian/6.12/vmlinuz",
            &["rw".into()],
            &["/debian/6.12/kernel-modules.initrd".into()],
            Some("/debian/6.12/rockchip/rk3588-rock-5b.dtb"),
        );
        assert_eq!(
            text,
            "title debian 6.12\nversion 6.12\nlinux /debian/6.12/vmlinuz\noptions rw\n\
             initrd /debian/6.12/kernel-modules.initrd\ndevicetree /debian/6.12/rockchip/rk3588-rock-5b.dtb\n"
        );
    }

    const DT_KVER: &str = "6.12.9-arm64";

    fn put(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn link(root: &Path, rel: &str, target: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// Device trees in all three search directories of `DT_KVER`, plus things that are not
    /// candidates: other file types, a directory named `*.dtb`, a symlinked directory, and
    /// another kernel's device trees.
    fn devicetree_tree(root: &Path) {
        let m = format!("usr/lib/modules/{DT_KVER}/dtb");
        put(root, &format!("{m}/vendor/board.dtb"), b"board");
        put(root, &format!("{m}/vendor/board2.dtb"), b"board2");
        put(root, &format!("{m}/vendor/rev/b.dtb"), b"rev-b");
        put(root, &format!("{m}/vendor/README"), b"text");
        put(root, &format!("{m}/vendor/board.dtbo"), b"overlay");
        put(root, &format!("{m}/other/x.dtb"), b"x");
        std::fs::create_dir_all(root.join(format!("{m}/other/sub.dtb"))).unwrap();
        link(root, &format!("{m}/other/link.dtb"), "../vendor/board.dtb");
        link(root, &format!("{m}/linked"), "vendor");
        put(root, &format!("usr/lib/linux-image-{DT_KVER}/rockchip/rk3588-rock-5b.dtb"), b"rock");
        put(root, &format!("usr/lib/firmware/{DT_KVER}/device-tree/qcom/sc8280xp-x13s.dtb"), b"x13s");
        put(root, "usr/lib/modules/6.1.0-old/dtb/vendor/board.dtb", b"old");
        put(root, "usr/lib/firmware/qcom/not-a-devicetree-dir.dtb", b"fw");
    }

    fn dt_paths(root: &Path, globs: &[&str]) -> Vec<String> {
        let globs: Vec<String> = globs.iter().map(|g| g.to_string()).collect();
        filter_devicetrees(root, DT_KVER, &globs).unwrap().iter().map(|d| d.path.display().to_string()).collect()
    }

    #[test]
    fn devicetree_search_dirs() {
        let dirs = devicetree_dirs("6.1");
        let dirs: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
        assert_eq!(dirs, ["usr/lib/firmware/6.1/device-tree", "usr/lib/linux-image-6.1", "usr/lib/modules/6.1/dtb"]);
    }

    #[test]
    fn devicetree_globs() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        devicetree_tree(root);
        let m = |rel: &str| format!("usr/lib/modules/{DT_KVER}/dtb/{rel}");
        let rock = format!("usr/lib/linux-image-{DT_KVER}/rockchip/rk3588-rock-5b.dtb");
        let x13s = format!("usr/lib/firmware/{DT_KVER}/device-tree/qcom/sc8280xp-x13s.dtb");
        // (globs, expected matches, sorted by their path in the image)
        let cases: Vec<(&[&str], Vec<String>)> = vec![
            (&[], vec![]),
            // The basename.
            (&["board.dtb"], vec![m("vendor/board.dtb")]),
            // A trailing part of the path, at a component boundary.
            (&["vendor/board.dtb"], vec![m("vendor/board.dtb")]),
            (&["endor/board.dtb"], vec![]),
            (&["rev/b.dtb"], vec![m("vendor/rev/b.dtb")]),
            // Absolute: the whole path below the search directory.
            (&["/vendor/board.dtb"], vec![m("vendor/board.dtb")]),
            (&["/board.dtb"], vec![]),
            (&["/rockchip/*"], vec![rock.clone()]),
            // Wildcards; `*` crosses `/`.
            (&["rk3588*"], vec![rock.clone()]),
            (&["sc8280xp-*.dtb"], vec![x13s.clone()]),
            (&["vendor/*"], vec![m("vendor/board.dtb"), m("vendor/board2.dtb"), m("vendor/rev/b.dtb")]),
            // A trailing `/`: everything below.
            (&["vendor/"], vec![m("vendor/board.dtb"), m("vendor/board2.dtb"), m("vendor/rev/b.dtb")]),
            (&["qcom/"], vec![x13s.clone()]),
            // Symlinked files count, symlinked directories are not entered.
            (&["link.dtb"], vec![m("other/link.dtb")]),
            (&["linked/"], vec![]),
            // Only `*.dtb` files: no overlays, no other files, no directories.
            (&["board.dtbo"], vec![]),
            (&["README"], vec![]),
            (&["sub.dtb"], vec![]),
            (&["nothing.dtb"], vec![]),
            // Everything of this kernel, and only of this kernel, in path order.
            (
                &["*"],
                vec![
                    x13s.clone(),
                    rock.clone(),
                    m("other/link.dtb"),
                    m("other/x.dtb"),
                    m("vendor/board.dtb"),
                    m("vendor/board2.dtb"),
                    m("vendor/rev/b.dtb"),
                ],
            ),
            // Exclusions; the last matching pattern decides.
            (&["*", "-vendor/", "-other/"], vec![x13s.clone(), rock.clone()]),
            (&["vendor/", "-board*.dtb"], vec![m("vendor/rev/b.dtb")]),
            (&["-board.dtb", "vendor/"], vec![m("vendor/board.dtb"), m("vendor/board2.dtb"), m("vendor/rev/b.dtb")]),
            (&["-board.dtb"], vec![]),
        ];
        for (globs, want) in cases {
            assert_eq!(dt_paths(root, globs), want, "{globs:?}");
        }
        // The name is the path below the search directory.
        let one = filter_devicetrees(root, DT_KVER, &["rk3588-rock-5b.dtb".to_string()]).unwrap();
        assert_eq!(one[0].name, Path::new("rockchip/rk3588-rock-5b.dtb"));
    }

    #[test]
    fn devicetrees_of_a_kernel_without_any() {
        let t = tempfile::tempdir().unwrap();
        assert!(dt_paths(t.path(), &["*"]).is_empty());
        // A search path that is a file is no directory to search.
        put(t.path(), &format!("usr/lib/linux-image-{DT_KVER}"), b"file");
        assert!(dt_paths(t.path(), &["*"]).is_empty());
    }

    #[test]
    fn uki_devicetree_sections() {
        let root = Path::new("/r");
        let dt = |p: &str| Devicetree { path: PathBuf::from(p), name: PathBuf::from("x.dtb") };
        assert_eq!(uki_devicetrees(root, &[]), (None, vec![]));
        assert_eq!(uki_devicetrees(root, &[dt("a/x.dtb")]), (Some(PathBuf::from("/r/a/x.dtb")), vec![]));
        assert_eq!(
            uki_devicetrees(root, &[dt("a/x.dtb"), dt("b/x.dtb")]),
            (None, vec![PathBuf::from("/r/a/x.dtb"), PathBuf::from("/r/b/x.dtb")])
        );
    }

    #[test]
    fn type1_takes_exactly_one_devicetree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        devicetree_tree(root);
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(type1_devicetree(root, DT_KVER, &[]).unwrap(), None);
        let one = type1_devicetree(root, DT_KVER, &g(&["rev/b.dtb"])).unwrap().unwrap();
        assert_eq!(one.path, Path::new(&format!("usr/lib/modules/{DT_KVER}/dtb/vendor/rev/b.dtb")));
        assert_eq!(one.name, Path::new("vendor/rev/b.dtb"));
        for (globs, n) in [(g(&["vendor/"]), 3), (g(&["nothing.dtb"]), 0)] {
            let e = type1_devicetree(root, DT_KVER, &globs).unwrap_err();
            assert!(e.to_string().contains(&format!("matches {n} device trees")), "{e}");
            assert!(e.to_string().contains("exactly one"), "{e}");
            assert!(e.hint_text().is_some_and(|h| h.contains("unified kernel images")), "{e:?}");
        }
    }

    struct TestBuild {
        _dir: tempfile::TempDir,
        ws: PathBuf,
        args: mkosi_config::Args,
        host: mkosi_config::Host,
        config: mkosi_config::Config,
    }

    impl TestBuild {
        fn new(values: &[(&str, serde_json::Value)]) -> TestBuild {
            let dir = tempfile::tempdir().unwrap();
            TestBuild {
                ws: dir.path().join("ws"),
                _dir: dir,
                args: mkosi_config::Args::new(mkosi_config::Verb::Build, None),
                host: mkosi_config::Host::new(vec![], mkosi_config::enums::Architecture::Arm64, "/".into()),
                config: mkosi_config::Config::from_values(values.iter().map(|(k, v)| (k.to_string(), v.clone()))),
            }
        }

        fn ctx(&self) -> Context<'_> {
            Context::new(
                &self.args,
                &self.config,
                &self.host,
                self.ws.clone(),
                self.ws.join("metadata"),
                self.ws.join("pkgcache"),
                self.ws.join("packages"),
                self.ws.clone(),
            )
            .unwrap()
        }
    }

    fn dt_build(globs: &[&str]) -> TestBuild {
        use serde_json::json;
        TestBuild::new(&[
            ("Architecture", json!("arm64")),
            ("Devicetrees", json!(globs)),
            ("Bootloader", json!("systemd-boot")),
        ])
    }

    /// A UKI built for a kernel with device trees carries them as `.dtb` or `.dtbauto`.
    #[test]
    fn uki_gets_dtb_or_dtbauto_sections() {
        // (globs, expected (section, content) pairs)
        type Sections<'a> = Vec<(&'a str, &'a [u8])>;
        let cases: Vec<(&[&str], Sections)> = vec![
            (&[], vec![]),
            (&["nothing.dtb"], vec![]),
            (&["rk3588*"], vec![(".dtb", b"rock")]),
            (&["board.dtb", "rk3588*"], vec![(".dtbauto", b"rock"), (".dtbauto", b"board")]),
        ];
        for (globs, want) in cases {
            let b = dt_build(globs);
            let ctx = b.ctx();
            let root = ctx.root();
            devicetree_tree(&root);
            put(&root, &format!("usr/lib/modules/{DT_KVER}/vmlinuz"), b"kernel");
            put(&root, "usr/lib/os-release", b"ID=debian\n");
            let stub = b.ws.join("stub.efi");
            std::fs::write(&stub, mkosi_formats::pe::testpe::build(&[(".text", b"\xc3")], 16)).unwrap();
            let kernel = Kernel { version: DT_KVER.into(), image: format!("usr/lib/modules/{DT_KVER}/vmlinuz").into() };
            let parts = UkiParts { microcode: vec![], initrds: vec![], cmdline: vec!["rw".into()], profiles: vec![] };
            let out = b.ws.join("uki.efi");
            build_uki(&ctx, &stub, &kernel, &parts, &out).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            let pe = mkosi_formats::pe::PeFile::parse(&bytes).unwrap();
            let got: Vec<(String, Vec<u8>)> = pe
                .sections
                .iter()
                .filter(|s| s.name.starts_with(".dtb"))
                .map(|s| (s.name.clone(), pe.section_data(&bytes, s).to_vec()))
                .collect();
            let want: Vec<(String, Vec<u8>)> = want.iter().map(|(n, d)| (n.to_string(), d.to_vec())).collect();
            assert_eq!(got, want, "{globs:?}");
            assert_eq!(section(&out, ".uname").unwrap().as_deref(), Some(DT_KVER.as_bytes()));
        }
    }

    /// A Type #1 entry gets its device tree next to the kernel and a `devicetree` line.
    #[test]
    fn type1_entry_with_devicetree() {
        let b = dt_build(&["rk3588-rock-5b.dtb"]);
        let ctx = b.ctx();
        let root = ctx.root();
        devicetree_tree(&root);
        put(&root, &format!("usr/lib/modules/{DT_KVER}/vmlinuz"), b"kernel");
        let kernel = Kernel { version: DT_KVER.into(), image: format!("usr/lib/modules/{DT_KVER}/vmlinuz").into() };
        install_type1(&ctx, &kernel, "debian", &["rw".into()], &[]).unwrap();
        let dst = root.join(format!("boot/debian/{DT_KVER}"));
        let dtb = dst.join("rockchip/rk3588-rock-5b.dtb");
        assert_eq!(std::fs::read(&dtb).unwrap(), b"rock");
        assert_eq!(std::fs::metadata(&dtb).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dst.join("rockchip")).unwrap().permissions().mode() & 0o777, 0o700);
        let entry = std::fs::read_to_string(root.join(format!("boot/loader/entries/debian-{DT_KVER}.conf"))).unwrap();
        assert_eq!(
            entry,
            format!(
                "title debian {DT_KVER}\nversion {DT_KVER}\nlinux /debian/{DT_KVER}/vmlinuz\noptions rw\n\
                 initrd /debian/{DT_KVER}/kernel-modules.initrd\n\
                 devicetree /debian/{DT_KVER}/rockchip/rk3588-rock-5b.dtb\n"
            )
        );
    }

    /// Several (or no) matching device trees: no Type #1 entry, and nothing copied.
    #[test]
    fn type1_entry_refuses_other_counts() {
        for globs in [&["vendor/"][..], &["nothing.dtb"][..]] {
            let b = dt_build(globs);
            let ctx = b.ctx();
            let root = ctx.root();
            devicetree_tree(&root);
            put(&root, &format!("usr/lib/modules/{DT_KVER}/vmlinuz"), b"kernel");
            let kernel = Kernel { version: DT_KVER.into(), image: format!("usr/lib/modules/{DT_KVER}/vmlinuz").into() };
            let e = install_type1(&ctx, &kernel, "debian", &[], &[]).unwrap_err();
            assert!(e.to_string().contains("exactly one"), "{e}");
            assert!(!root.join(format!("boot/debian/{DT_KVER}/vmlinuz")).exists());
            assert!(!root.join(format!("boot/loader/entries/debian-{DT_KVER}.conf")).exists());
        }
    }

    #[test]
    fn kernels_newest_first() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("usr/lib/modules");
        for (v, files) in [
            ("6.1.0-9-amd64", &["vmlinuz"][..]),
            ("6.10.0-1-amd64", &["vmlinux", "vmlinuz-x"][..]),
            ("6.2.0", &["vmlinux"][..]),
            ("5.0-nokernel", &["modules.dep"][..]),
        ] {
            std::fs::create_dir_all(m.join(v)).unwrap();
            for f in files {
                std::fs::write(m.join(v).join(f), b"not a PE").unwrap();
            }
        }
        let ks = kernel_images(t.path()).unwrap();
        let got: Vec<(&str, String)> = ks.iter().map(|k| (k.version.as_str(), k.image.display().to_string())).collect();
        assert_eq!(
            got,
            vec![
                ("6.10.0-1-amd64", "usr/lib/modules/6.10.0-1-amd64/vmlinuz-x".to_string()),
                ("6.2.0", "usr/lib/modules/6.2.0/vmlinux".to_string()),
                ("6.1.0-9-amd64", "usr/lib/modules/6.1.0-9-amd64/vmlinuz".to_string()),
            ]
        );
    }

    #[test]
    fn joined_initrds_are_padded() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        std::fs::write(&a, b"12345").unwrap();
        std::fs::write(&b, b"xy").unwrap();
        let out = t.path().join("out");
        join_initrds(&[a, b], &out).unwrap();
        assert_eq!(std::fs::read(out).unwrap(), b"12345\0\0\0xy\0\0");
    }
}
