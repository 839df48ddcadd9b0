//! GRUB for EFI (`Bootloader=grub`, `grub-signed`) and BIOS (`BiosBootloader=grub`), the way
//! upstream installs it (reference §9.5):
//!
//! - an EFI image made with `grub-mkimage --format <arch>-efi` (or the distribution's signed
//!   grub for `grub-signed`) at `efi/EFI/BOOT/BOOT<ARCH>.EFI`, and for BIOS a `core.img` made
//!   with `grub-mkimage --format i386-pc` in the image's `i386-pc` module directory, both with
//!   an early configuration that finds the ESP by its `/<prefix>/grub.cfg`;
//! - `efi/<prefix>/grub.cfg` (`set timeout=0`, then a menu entry per UKI and Type #1 entry,
//!   written by [`super::kernel`] through [`append_uki_entry`] and [`append_type1_entry`]),
//!   plus the early configuration signed distribution grubs read from `efi/EFI/<distro>/`;
//! - after the disk image is complete, `grub-bios-setup` writes the boot sector and the core
//!   image into the BIOS boot partition ([`bios_setup`]).
//!
//! The grub modules always come from the image. The tools (`grub-mkimage`,
//! `grub-bios-setup`) are taken from the image too when it has them and can run them (same
//! architecture as the host): they then have exactly the version of the modules and
//! `boot.img`/`core.img` they pack and write. Otherwise the host's tools are used (upstream's
//! tools tree), so images without the tools, or of a foreign architecture, still work when
//! the host has `grub-common` (grub-mkimage) and `grub-pc-bin` (grub-bios-setup).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mkosi_config::enums::{Architecture, Distribution, Feature, OutputFormat};
use mkosi_config::Config;
use mkosi_formats::gpt;
use mkosi_sandbox::run::{run, Cmd};
use mkosi_sandbox::Options;

use super::{bootloader, bootloader_is_signed, mkdir_0700, want_efi, want_uki};
use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::log;
use crate::repart::PartitionResult;

/// Where the scratch directory of a grub tool run is mounted in its sandbox.
const SANDBOX_TMP: &str = "/tmp/mkosi-grub";

/// The Debian package with `grub-mkimage`.
pub const MKIMAGE_PACKAGE: &str = "grub-common";
/// The Debian package with `grub-bios-setup` and the `i386-pc` modules.
pub const BIOS_PACKAGE: &str = "grub-pc-bin";

/// grub's name of an architecture (upstream's `Architecture.to_grub`).
pub fn grub_arch(arch: Architecture) -> Option<&'static str> {
    Some(match arch {
        Architecture::X86_64 => "x86_64",
        Architecture::X86 => "i386",
        Architecture::Arm64 => "arm64",
        Architecture::Arm => "arm",
        _ => return None,
    })
}

/// The Debian package with the EFI modules of grub for `arch`.
pub fn efi_modules_package(arch: Architecture) -> &'static str {
    match arch {
        Architecture::X86 => "grub-efi-ia32-bin",
        Architecture::Arm64 => "grub-efi-arm64-bin",
        Architecture::Arm => "grub-efi-arm-bin",
        _ => "grub-efi-amd64-bin",
    }
}

/// The directory of grub's files on the ESP: `grub2` for the RPM distributions, else `grub`.
pub fn grub_prefix(distribution: Distribution) -> &'static str {
    if distribution.is_rpm_distribution() {
        "grub2"
    } else {
        "grub"
    }
}

/// Where signed distribution grubs look for their configuration, relative to the image root.
pub fn early_config_path(distribution: Distribution) -> PathBuf {
    match distribution {
        Distribution::Opensuse => PathBuf::from("efi/EFI/BOOT/grub.cfg"),
        Distribution::Alma => PathBuf::from("efi/EFI/almalinux/grub.cfg"),
        d => PathBuf::from("efi/EFI").join(d.as_str().replace('-', "_")).join("grub.cfg"),
    }
}

/// The image's directory of grub modules for `target` (`x86_64-efi`, `i386-pc`…), if it has
/// one with something in it.
pub fn find_grub_directory(root: &Path, target: &str) -> Option<PathBuf> {
    ["usr/lib/grub", "usr/share/grub2"]
        .iter()
        .map(|d| root.join(d).join(target))
        .find(|p| std::fs::read_dir(p).map(|mut rd| rd.next().is_some()).unwrap_or(false))
}

/// A grub tool and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrubTool {
    /// In the image (run in a chroot of it); the path is absolute inside the image.
    Image(PathBuf),
    /// On the host (the tools tree).
    Host(PathBuf),
}

impl GrubTool {
    /// The path of the tool inside the sandbox it runs in.
    pub fn path(&self) -> &Path {
        match self {
            GrubTool::Image(p) | GrubTool::Host(p) => p,
        }
    }

    /// Where the image root is inside the sandbox the tool runs in.
    pub fn image_root(&self) -> &'static Path {
        match self {
            GrubTool::Image(_) => Path::new("/"),
            GrubTool::Host(_) => Path::new("/buildroot"),
        }
    }
}

/// The paths `grub-<binary>` can have: `grub-…` and `grub2-…` in the binary directories, and
/// Debian's `/usr/lib/grub/i386-pc/grub-…` (where grub-pc-bin puts grub-bios-setup).
fn tool_candidates(binary: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for name in [format!("grub-{binary}"), format!("grub2-{binary}")] {
        for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
            out.push(Path::new(dir).join(&name));
        }
    }
    out.push(PathBuf::from(format!("/usr/lib/grub/i386-pc/grub-{binary}")));
    out
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `grub-<binary>` (or `grub2-<binary>`): the image's when the image has it and is of the
/// host's architecture, else the host's.
pub fn find_grub_tool(c: &Config, root: &Path, binary: &str) -> Option<GrubTool> {
    let candidates = tool_candidates(binary);
    if c.architecture() == Architecture::native() {
        for cand in &candidates {
            let resolved = mkosi_sandbox::ops::chase(root, cand, false);
            if is_executable(&resolved) {
                return Some(GrubTool::Image(cand.clone()));
            }
        }
    }
    for name in [format!("grub-{binary}"), format!("grub2-{binary}")] {
        if let Some(p) = mkosi_sandbox::run::find_binary(&name, crate::sysconfig::tools_root()) {
            return Some(GrubTool::Host(p));
        }
    }
    candidates.into_iter().find(|c| is_executable(c)).map(GrubTool::Host)
}

fn tool_package(binary: &str) -> &'static str {
    if binary == "bios-setup" {
        BIOS_PACKAGE
    } else {
        MKIMAGE_PACKAGE
    }
}

fn require_tool(c: &Config, root: &Path, binary: &str) -> Result<GrubTool> {
    find_grub_tool(c, root, binary).ok_or_else(|| {
        let package = tool_package(binary);
        BuildError::hint(
            format!("grub-{binary} was not found in the image nor on the host"),
            format!("Add {package} to Packages= or install it on the host (apt install {package})"),
        )
    })
}

/// Upstream's `want_grub_efi`: grub is the EFI boot loader. Fails for `Bootable=yes` when the
/// image has no grub EFI modules (not needed for `grub-signed`).
pub fn want_grub_efi_in(c: &Config, root: &Path) -> Result<bool> {
    if !want_efi(c) || !bootloader(c).starts_with("grub") {
        return Ok(false);
    }
    let Some(arch) = grub_arch(c.architecture()) else { return Ok(false) };
    if !bootloader_is_signed(c)
        && find_grub_directory(root, &format!("{arch}-efi")).is_none()
        && c.bootable() == Feature::Enabled
    {
        return Err(BuildError::hint(
            "An EFI bootable image with grub was requested but grub for EFI is not installed",
            format!("Add {} to Packages=", efi_modules_package(c.architecture())),
        ));
    }
    Ok(true)
}

/// [`want_grub_efi_in`] for the image being built.
pub fn want_grub_efi(ctx: &Context) -> Result<bool> {
    want_grub_efi_in(ctx.config, &ctx.root())
}

fn bios_error(what: &str, hint: String) -> BuildError {
    BuildError::hint(format!("A BIOS bootable image with grub was requested but {what}"), hint)
}

/// Upstream's `want_grub_bios`: grub for BIOS is to be installed (`BiosBootloader=grub`,
/// `Format=disk`). Without `partitions` it only needs the `i386-pc` modules; with the
/// partitions of the disk image it also needs a BIOS boot partition, an ESP, a root or usr
/// partition and both tools. With `Bootable=yes` anything missing is an error; `has_tool`
/// says whether `grub-<binary>` is available.
pub fn want_grub_bios_in(
    c: &Config,
    root: &Path,
    partitions: &[PartitionResult],
    has_tool: impl Fn(&str) -> bool,
) -> Result<bool> {
    if c.bootable() == Feature::Disabled
        || c.output_format() != OutputFormat::Disk
        || c.str("BiosBootloader") != Some("grub")
        || c.bool("Overlay")
    {
        return Ok(false);
    }
    let enabled = c.bootable() == Feature::Enabled;
    let have = find_grub_directory(root, "i386-pc").is_some();
    if !have && enabled {
        return Err(bios_error("grub for BIOS is not installed", format!("Add {BIOS_PACKAGE} to Packages=")));
    }
    let bios = partitions.iter().any(|p| p.type_uuid == gpt::BIOS_BOOT);
    let esp = partitions.iter().any(|p| p.type_name == "esp");
    let rootfs = partitions.iter().any(|p| p.type_name.starts_with("root") || p.type_name.starts_with("usr"));
    let layout_hint =
        || "Add it to the repart definitions, or drop RepartDirectories= for the default layout".to_string();
    if !partitions.is_empty() && enabled {
        if !bios {
            return Err(bios_error("no BIOS Boot Partition was configured", layout_hint()));
        }
        if !esp {
            return Err(bios_error("no ESP partition was configured", layout_hint()));
        }
        if !rootfs {
            return Err(bios_error("no root or usr partition was configured", layout_hint()));
        }
    }
    let mut installed = true;
    for binary in ["mkimage", "bios-setup"] {
        if has_tool(binary) {
            continue;
        }
        if enabled {
            let package = tool_package(binary);
            return Err(bios_error(
                &format!("grub-{binary} was not found"),
                format!("Add {package} to Packages= or install it on the host (apt install {package})"),
            ));
        }
        installed = false;
    }
    Ok(if partitions.is_empty() { have } else { have && bios && esp && rootfs && installed })
}

/// [`want_grub_bios_in`] for the image being built.
pub fn want_grub_bios(ctx: &Context, partitions: &[PartitionResult]) -> Result<bool> {
    let root = ctx.root();
    want_grub_bios_in(ctx.config, &root, partitions, |b| find_grub_tool(ctx.config, &root, b).is_some())
}

/// The early configuration built into grub images: find the ESP by its `grub.cfg` and load
/// modules and configuration from there.
pub fn early_config(prefix: &str) -> String {
    format!("search --no-floppy --set=root --file /{prefix}/grub.cfg\nset prefix=($root)/{prefix}\n")
}

/// What a `grub-mkimage` run makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mkimage {
    /// The tool, as seen in its sandbox.
    pub tool: PathBuf,
    /// The module directory, as seen in the sandbox.
    pub directory: PathBuf,
    /// The early configuration file, as seen in the sandbox.
    pub config: PathBuf,
    /// `grub` or `grub2`.
    pub prefix: String,
    pub output: PathBuf,
    /// `x86_64-efi`, `i386-pc`…
    pub format: String,
    pub sbat: Option<PathBuf>,
    /// No shim: `--disable-shim-lock`.
    pub disable_shim_lock: bool,
    /// x86 images get the `keylayouts` module.
    pub x86: bool,
    /// Modules besides the common ones (`chain` for EFI, `biosdisk` for BIOS).
    pub modules: Vec<String>,
}

/// The modules every grub image gets.
const COMMON_MODULES: &[&str] = &[
    "cat",
    "cmp",
    "div",
    "echo",
    "fat",
    "hello",
    "help",
    "keylayouts",
    "linux",
    "loadenv",
    "ls",
    "normal",
    "part_gpt",
    "read",
    "reboot",
    "search_fs_file",
    "search",
    "sleep",
    "test",
    "tr",
    "true",
];

impl Mkimage {
    /// The command line.
    pub fn argv(&self) -> Vec<String> {
        let s = |p: &Path| p.display().to_string();
        let mut a = vec![
            s(&self.tool),
            "--directory".into(),
            s(&self.directory),
            "--config".into(),
            s(&self.config),
            "--prefix".into(),
            format!("/{}", self.prefix),
            "--output".into(),
            s(&self.output),
            "--format".into(),
            self.format.clone(),
        ];
        if let Some(sbat) = &self.sbat {
            a.extend(["--sbat".into(), s(sbat)]);
        }
        if self.disable_shim_lock {
            a.push("--disable-shim-lock".into());
        }
        a.extend(COMMON_MODULES.iter().filter(|m| self.x86 || **m != "keylayouts").map(|m| m.to_string()));
        a.extend(self.modules.iter().cloned());
        a
    }
}

/// The sandbox a grub tool runs in, with `scratch` at [`SANDBOX_TMP`].
fn tool_sandbox(ctx: &Context, tool: &GrubTool, scratch: &Path) -> Result<Options> {
    let o = match tool {
        GrubTool::Image(_) => crate::sysconfig::chroot_sandbox(ctx)?,
        GrubTool::Host(_) => crate::sysconfig::buildroot_sandbox(ctx)?,
    };
    Ok(o.bind(scratch, SANDBOX_TMP))
}

/// `path` (inside the image) as the tool sees it.
fn in_sandbox(tool: &GrubTool, root: &Path, path: &Path) -> PathBuf {
    tool.image_root().join(path.strip_prefix(root).unwrap_or(path))
}

/// Makes a grub image for `target` (upstream's `grub_mkimage`): the core image of the
/// `i386-pc` module directory (`output` none), or an EFI binary at `output` (in the image),
/// with `sbat` as its `.sbat` section when given.
fn grub_mkimage(
    ctx: &Context,
    target: &str,
    modules: &[&str],
    output: Option<&Path>,
    sbat: Option<&[u8]>,
) -> Result<()> {
    let c = ctx.config;
    let root = ctx.root();
    let tool = require_tool(c, &root, "mkimage")?;
    let Some(directory) = find_grub_directory(&root, target) else {
        let package = if target == "i386-pc" { BIOS_PACKAGE } else { efi_modules_package(c.architecture()) };
        return Err(BuildError::hint(
            format!("grub modules for {target} are not installed in the image"),
            format!("Add {package} to Packages="),
        ));
    };
    let prefix = grub_prefix(c.distribution());
    log::step(&format!("Generating grub image for {target}"));
    let scratch = ctx.scratch("grub-mkimage")?;
    let config = scratch.join("early.cfg");
    std::fs::write(&config, early_config(prefix)).map_err(io("writing", &config))?;
    if let Some(data) = sbat {
        let p = scratch.join("sbat");
        std::fs::write(&p, data).map_err(io("writing", &p))?;
    }
    let directory_in = in_sandbox(&tool, &root, &directory);
    let args = Mkimage {
        tool: tool.path().to_path_buf(),
        output: match output {
            Some(o) => in_sandbox(&tool, &root, o),
            None => directory_in.join("core.img"),
        },
        directory: directory_in,
        config: Path::new(SANDBOX_TMP).join("early.cfg"),
        prefix: prefix.to_string(),
        format: target.to_string(),
        sbat: sbat.map(|_| Path::new(SANDBOX_TMP).join("sbat")),
        disable_shim_lock: !super::want_shim(c),
        x86: c.architecture().is_x86_variant(),
        modules: modules.iter().map(|m| m.to_string()).collect(),
    };
    run(&Cmd::new(args.argv())
        .sandbox(tool_sandbox(ctx, &tool, &scratch)?)
        .env(crate::sysconfig::tool_env(ctx, vec![])))?;
    Ok(())
}

/// The signed grub EFI binary the distribution installed in the image, if any (upstream's
/// `find_signed_grub_image`). Absolute symlinks are ignored: they point outside the image.
pub fn find_signed_grub_image(root: &Path, efi_arch: &str) -> Option<PathBuf> {
    let patterns = [
        ("usr/lib/grub", "-signed", format!("grub{efi_arch}.efi.signed")),
        ("boot/efi/EFI", "", format!("grub{efi_arch}.efi")),
        ("usr/share/efi", "", "grub.efi".to_string()),
    ];
    for (dir, suffix, file) in patterns {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else { continue };
        let mut names: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        for n in names.iter().filter(|n| n.ends_with(suffix)) {
            let p = root.join(dir).join(n).join(&file);
            match std::fs::read_link(&p) {
                Ok(target) if target.is_absolute() => {
                    log::warn(&format!(
                        "Ignoring signed grub EFI binary which is an absolute path to {}",
                        target.display()
                    ));
                    continue;
                }
                _ if std::fs::symlink_metadata(&p).is_ok() => return Some(p),
                _ => {}
            }
        }
    }
    None
}

/// The SBAT data for a grub image that shim verifies: the `.sbat` section of the
/// distribution's signed grub (shim refuses images without SBAT entries it knows).
pub fn shim_sbat(root: &Path, efi_arch: &str) -> Result<Vec<u8>> {
    let Some(signed) = find_signed_grub_image(root, efi_arch) else {
        return Err(BuildError::hint(
            "Couldn't find a signed grub EFI binary installed in the image to extract SBAT from",
            "Add the signed grub package to Packages= (grub-efi-amd64-signed on Debian)",
        ));
    };
    match mkosi_formats::uki::extract_section(&signed, ".sbat") {
        Ok(Some(data)) => Ok(data),
        Ok(None) => Err(BuildError::msg(format!("{} has no .sbat section", signed.display()))),
        Err(e) => Err(BuildError::msg(format!("Reading the SBAT of {}: {e}", signed.display()))),
    }
}

/// Installs grub for BIOS and/or EFI (upstream's `install_grub`): the BIOS core image, the EFI
/// binary at `efi/EFI/BOOT/BOOT<ARCH>.EFI` (made with grub-mkimage and signed for Secure Boot,
/// or copied from the distribution's signed grub) and the unicode font.
pub fn install(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let bios = want_grub_bios(ctx, &[])?;
    let efi = want_grub_efi(ctx)?;
    if !bios && !efi {
        return Ok(());
    }
    let root = ctx.root();
    if bios {
        grub_mkimage(ctx, "i386-pc", &["biosdisk"], None, None)?;
    }
    if efi {
        let (Some(efi_arch), Some(arch)) = (crate::disk::efi_arch(c.architecture()), grub_arch(c.architecture()))
        else {
            return Ok(());
        };
        // shim starts grub from its second-stage path.
        let output = root.join(super::boot_loader_binary(c));
        if let Some(parent) = output.parent() {
            mkdir_0700(parent)?;
        }
        if bootloader_is_signed(c) {
            let Some(signed) = find_signed_grub_image(&root, efi_arch) else {
                if c.bootable() == Feature::Enabled {
                    return Err(BuildError::hint(
                        "Couldn't find a signed grub EFI binary installed in the image",
                        format!("Add the signed grub package to Packages= (grub-efi-{}-signed on Debian)", {
                            match c.architecture() {
                                Architecture::Arm64 => "arm64",
                                Architecture::X86 => "ia32",
                                _ => "amd64",
                            }
                        }),
                    ));
                }
                return Ok(());
            };
            log::step(&format!(
                "Installing signed grub EFI binary from /{} to /{}",
                signed.strip_prefix(&root).unwrap_or(&signed).display(),
                output.strip_prefix(&root).unwrap_or(&output).display()
            ));
            std::fs::copy(&signed, &output).map_err(io("copying", &signed))?;
        } else {
            let sbat =
                if c.bool("SecureBoot") && super::want_shim(c) { Some(shim_sbat(&root, efi_arch)?) } else { None };
            grub_mkimage(ctx, &format!("{arch}-efi"), &["chain"], Some(&output), sbat.as_deref())?;
            if c.bool("SecureBoot") {
                let unsigned = ctx.scratch("grub-sign")?.join("grub.efi");
                std::fs::rename(&output, &unsigned)
                    .or_else(|_| std::fs::copy(&output, &unsigned).map(|_| ()))
                    .map_err(io("moving", &output))?;
                crate::secureboot::sign_efi(c, &unsigned, &output)?;
            }
        }
    }
    let fonts = root.join("efi").join(grub_prefix(c.distribution())).join("fonts");
    mkdir_0700(&fonts)?;
    for d in ["grub", "grub2"] {
        let unicode = root.join("usr/share").join(d).join("unicode.pf2");
        if unicode.exists() {
            let dst = fonts.join("unicode.pf2");
            std::fs::copy(&unicode, &dst).map_err(io("copying", &unicode))?;
        }
    }
    Ok(())
}

/// Creates `efi/<prefix>/grub.cfg` with `set timeout=0` unless it exists (grub otherwise
/// stays in its menu), and for EFI grub the early configuration distribution grubs read,
/// pointing at it (upstream's `prepare_grub_config`). Returns the configuration's path.
pub fn prepare_config(ctx: &Context) -> Result<PathBuf> {
    let c = ctx.config;
    let root = ctx.root();
    let prefix = grub_prefix(c.distribution());
    let config = root.join("efi").join(prefix).join("grub.cfg");
    if let Some(parent) = config.parent() {
        mkdir_0700(parent)?;
    }
    if !config.exists() {
        std::fs::write(&config, "set timeout=0\n").map_err(io("writing", &config))?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &config))?;
    }
    if want_grub_efi(ctx)? {
        let early = root.join(early_config_path(c.distribution()));
        if let Some(parent) = early.parent() {
            mkdir_0700(parent)?;
        }
        std::fs::write(&early, format!("configfile /{prefix}/grub.cfg\n")).map_err(io("writing", &early))?;
    }
    Ok(config)
}

fn append(config: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(config).map_err(io("opening", config))?;
    f.write_all(text.as_bytes()).map_err(io("writing", config))
}

/// The menu entry chainloading a UKI, for EFI grub only.
pub fn uki_menuentry(name: &str, path: &str) -> String {
    format!("if [ \"${{grub_platform}}\" == \"efi\" ]; then\nmenuentry \"{name}\" {{\n    chainloader {path}\n}}\nfi\n")
}

/// The menu entry of a Type #1 entry (kernel and initrds on the ESP), only on the grub
/// platforms in `platforms` (`efi`, `pc`).
pub fn type1_menuentry(platforms: &[&str], title: &str, linux: &str, cmdline: &[String], initrds: &[String]) -> String {
    let conditions: Vec<String> = platforms.iter().map(|p| format!("\"${{grub_platform}}\" == \"{p}\"")).collect();
    format!(
        "if [ {} ]; then\nmenuentry \"{title}\" {{\n    linux {linux} {}\n    initrd {}\n}}\nfi\n",
        conditions.join(" -o "),
        cmdline.join(" "),
        initrds.join(" ")
    )
}

/// `/<path relative to the image's /boot>`, the way grub sees files on the ESP.
fn esp_path(root: &Path, path: &Path) -> String {
    let boot = root.join("boot");
    format!("/{}", path.strip_prefix(&boot).unwrap_or(path).display())
}

/// Appends the chainloader entry of the UKI at `uki` (in the image) when grub is the EFI
/// boot loader.
pub fn append_uki_entry(ctx: &Context, uki: &Path) -> Result<()> {
    if !want_grub_efi(ctx)? {
        return Ok(());
    }
    let config = prepare_config(ctx)?;
    let name = uki.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    append(&config, &uki_menuentry(&name, &esp_path(&ctx.root(), uki)))
}

/// The root of a Type #1 entry booted by grub (upstream's `finalize_root`): the root hash,
/// else `root=PARTUUID=` of the first root partition, else `mount.usr=PARTUUID=` of the first
/// usr partition.
pub fn finalize_root(partitions: &[PartitionResult]) -> Result<Option<String>> {
    if let Some(h) = crate::disk::finalize_roothash(partitions)? {
        return Ok(Some(h));
    }
    let by = |prefix: &str| partitions.iter().find(|p| p.type_name.starts_with(prefix)).map(|p| p.uuid);
    Ok(by("root")
        .map(|u| format!("root=PARTUUID={u}"))
        .or_else(|| by("usr").map(|u| format!("mount.usr=PARTUUID={u}"))))
}

/// The command line of a grub menu entry: `cmdline` with the root first unless
/// `KernelCommandLine=` names the root or usr partition itself.
pub fn type1_cmdline(kernel_command_line: &[String], root: Option<String>, cmdline: &[String]) -> Vec<String> {
    let named =
        kernel_command_line.iter().any(|c| c.starts_with("root=PARTUUID=") || c.starts_with("mount.usr=PARTUUID="));
    match root {
        Some(r) if !named => std::iter::once(r).chain(cmdline.iter().cloned()).collect(),
        _ => cmdline.to_vec(),
    }
}

/// Appends the menu entry of a Type #1 entry (kernel `kimg` and `initrds`, in the image's
/// `/boot`) when grub boots it: on EFI when no UKIs are made, on BIOS always.
pub fn append_type1_entry(
    ctx: &Context,
    partitions: &[PartitionResult],
    title: &str,
    kimg: &Path,
    initrds: &[PathBuf],
    cmdline: &[String],
) -> Result<()> {
    let root = ctx.root();
    let efi = want_grub_efi(ctx)?;
    let bios = want_grub_bios(ctx, partitions)?;
    if !efi && !bios {
        return Ok(());
    }
    let config = prepare_config(ctx)?;
    let cmdline = type1_cmdline(&ctx.config.strings("KernelCommandLine"), finalize_root(partitions)?, cmdline);
    let mut platforms = Vec::new();
    if efi && !want_uki(ctx.config, &root) {
        platforms.push("efi");
    }
    if bios {
        platforms.push("pc");
    }
    let initrds: Vec<String> = initrds.iter().map(|i| esp_path(&root, i)).collect();
    append(&config, &type1_menuentry(&platforms, title, &esp_path(&root, kimg), &cmdline, &initrds))
}

/// The `/proc/self/mountinfo` grub-bios-setup gets: the root directory on `image`, so that it
/// takes the image for the disk holding its `--directory` and never opens a block device.
pub fn fake_mountinfo(image: &Path) -> String {
    format!("1 0 1:1 / / - fat {}\n", image.display())
}

/// Writes grub's boot sector and core image into the finished disk image (upstream's
/// `grub_bios_setup`).
pub fn bios_setup(ctx: &Context, partitions: &[PartitionResult]) -> Result<()> {
    if !want_grub_bios(ctx, partitions)? {
        return Ok(());
    }
    let c = ctx.config;
    let root = ctx.root();
    let tool = require_tool(c, &root, "bios-setup")?;
    let Some(directory) = find_grub_directory(&root, "i386-pc") else {
        return Err(bios_error("grub for BIOS is not installed", format!("Add {BIOS_PACKAGE} to Packages=")));
    };
    log::step("Installing grub boot loader for BIOS…");
    let scratch = ctx.scratch("grub-bios-setup")?;
    let image = Path::new(SANDBOX_TMP).join("staging").join(c.output_with_format());
    let mountinfo = scratch.join("mountinfo");
    std::fs::write(&mountinfo, fake_mountinfo(&image)).map_err(io("writing", &mountinfo))?;
    std::fs::create_dir_all(scratch.join("staging")).map_err(io("creating", &scratch))?;
    let sandbox = tool_sandbox(ctx, &tool, &scratch)?
        .bind(ctx.staging(), Path::new(SANDBOX_TMP).join("staging"))
        .bind(&mountinfo, "/proc/self/mountinfo");
    let argv = vec![
        tool.path().display().to_string(),
        "--directory".to_string(),
        in_sandbox(&tool, &root, &directory).display().to_string(),
        image.display().to_string(),
    ];
    run(&Cmd::new(argv).sandbox(sandbox).env(crate::sysconfig::tool_env(ctx, vec![])))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(values: serde_json::Value) -> Config {
        let mut c = Config::from_values([("Format".to_string(), json!("disk"))]);
        for (k, v) in values.as_object().into_iter().flatten() {
            c.set(k, v.clone());
        }
        c
    }

    fn part(t: &str, type_uuid: uuid::Uuid, uuid: &str, roothash: Option<&str>) -> PartitionResult {
        PartitionResult {
            type_name: t.into(),
            type_uuid,
            uuid: uuid::Uuid::parse_str(uuid).unwrap(),
            activity: "create",
            roothash: roothash.map(String::from),
            ..Default::default()
        }
    }

    const ROOT: &str = "6c8fb8ad-6bbb-4e95-a6a5-d3d5a2b1b4a7";
    const USR: &str = "0f1d5d7e-1111-4222-8333-944455556666";
    const OTHER: &str = "11111111-1111-4111-8111-111111111111";

    fn layout() -> Vec<PartitionResult> {
        vec![
            part("esp", uuid::Uuid::nil(), OTHER, None),
            part(&gpt::BIOS_BOOT.to_string(), gpt::BIOS_BOOT, OTHER, None),
            part("root-x86-64", uuid::Uuid::nil(), ROOT, None),
        ]
    }

    fn modules(root: &Path, target: &str) {
        let d = root.join("usr/lib/grub").join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("normal.mod"), b"").unwrap();
    }

    #[test]
    fn names() {
        assert_eq!(grub_arch(Architecture::X86_64), Some("x86_64"));
        assert_eq!(grub_arch(Architecture::X86), Some("i386"));
        assert_eq!(grub_arch(Architecture::Arm64), Some("arm64"));
        assert_eq!(grub_arch(Architecture::Riscv64), None);
        assert_eq!(grub_prefix(Distribution::Debian), "grub");
        assert_eq!(grub_prefix(Distribution::Ubuntu), "grub");
        for d in [Distribution::Fedora, Distribution::Centos, Distribution::Opensuse, Distribution::Mageia] {
            assert_eq!(grub_prefix(d), "grub2", "{d}");
        }
        assert_eq!(early_config_path(Distribution::Debian), Path::new("efi/EFI/debian/grub.cfg"));
        assert_eq!(early_config_path(Distribution::RhelUbi), Path::new("efi/EFI/rhel_ubi/grub.cfg"));
        assert_eq!(early_config_path(Distribution::Opensuse), Path::new("efi/EFI/BOOT/grub.cfg"));
        assert_eq!(early_config_path(Distribution::Alma), Path::new("efi/EFI/almalinux/grub.cfg"));
        assert_eq!(efi_modules_package(Architecture::X86_64), "grub-efi-amd64-bin");
    }

    #[test]
    fn grub_directory_must_have_content() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(find_grub_directory(t.path(), "i386-pc"), None);
        std::fs::create_dir_all(t.path().join("usr/lib/grub/i386-pc")).unwrap();
        assert_eq!(find_grub_directory(t.path(), "i386-pc"), None);
        std::fs::create_dir_all(t.path().join("usr/share/grub2/i386-pc")).unwrap();
        std::fs::write(t.path().join("usr/share/grub2/i386-pc/boot.img"), b"").unwrap();
        assert_eq!(find_grub_directory(t.path(), "i386-pc"), Some(t.path().join("usr/share/grub2/i386-pc")));
        modules(t.path(), "i386-pc");
        assert_eq!(find_grub_directory(t.path(), "i386-pc"), Some(t.path().join("usr/lib/grub/i386-pc")));
    }

    #[test]
    fn mkimage_command_lines() {
        let efi = Mkimage {
            tool: "/usr/bin/grub-mkimage".into(),
            directory: "/buildroot/usr/lib/grub/x86_64-efi".into(),
            config: "/tmp/mkosi-grub/early.cfg".into(),
            prefix: "grub".into(),
            output: "/buildroot/efi/EFI/BOOT/BOOTX64.EFI".into(),
            format: "x86_64-efi".into(),
            sbat: None,
            disable_shim_lock: true,
            x86: true,
            modules: vec!["chain".into()],
        };
        assert_eq!(
            efi.argv().join(" "),
            "/usr/bin/grub-mkimage --directory /buildroot/usr/lib/grub/x86_64-efi \
             --config /tmp/mkosi-grub/early.cfg --prefix /grub --output /buildroot/efi/EFI/BOOT/BOOTX64.EFI \
             --format x86_64-efi --disable-shim-lock cat cmp div echo fat hello help keylayouts linux loadenv \
             ls normal part_gpt read reboot search_fs_file search sleep test tr true chain"
        );
        let arm = Mkimage {
            format: "arm64-efi".into(),
            prefix: "grub2".into(),
            sbat: Some("/tmp/mkosi-grub/sbat".into()),
            disable_shim_lock: false,
            x86: false,
            ..efi.clone()
        };
        let argv = arm.argv();
        assert!(!argv.contains(&"keylayouts".to_string()));
        assert!(!argv.contains(&"--disable-shim-lock".to_string()));
        assert_eq!(
            argv[5..11].join(" "),
            "--prefix /grub2 --output /buildroot/efi/EFI/BOOT/BOOTX64.EFI --format arm64-efi"
        );
        assert_eq!(argv[11..13].join(" "), "--sbat /tmp/mkosi-grub/sbat");
        assert_eq!(
            early_config("grub"),
            "search --no-floppy --set=root --file /grub/grub.cfg\nset prefix=($root)/grub\n"
        );
    }

    #[test]
    fn menu_entries() {
        assert_eq!(
            uki_menuentry("debian-6.12.1-amd64", "/EFI/Linux/debian-6.12.1-amd64.efi"),
            "if [ \"${grub_platform}\" == \"efi\" ]; then\n\
             menuentry \"debian-6.12.1-amd64\" {\n    chainloader /EFI/Linux/debian-6.12.1-amd64.efi\n}\nfi\n"
        );
        let cmdline = vec!["root=PARTUUID=x".to_string(), "console=ttyS0".to_string()];
        let initrds = vec!["/debian/initrd".to_string(), "/debian/6.12/kernel-modules.initrd".to_string()];
        assert_eq!(
            type1_menuentry(&["efi", "pc"], "debian-6.12", "/debian/6.12/vmlinuz", &cmdline, &initrds),
            "if [ \"${grub_platform}\" == \"efi\" -o \"${grub_platform}\" == \"pc\" ]; then\n\
             menuentry \"debian-6.12\" {\n    linux /debian/6.12/vmlinuz root=PARTUUID=x console=ttyS0\n    \
             initrd /debian/initrd /debian/6.12/kernel-modules.initrd\n}\nfi\n"
        );
        assert!(
            type1_menuentry(&["pc"], "t", "/k", &[], &[]).starts_with("if [ \"${grub_platform}\" == \"pc\" ]; then\n")
        );
    }

    #[test]
    fn root_of_grub_entries() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let parts = layout();
        let root = finalize_root(&parts).unwrap();
        assert_eq!(root.as_deref(), Some(format!("root=PARTUUID={ROOT}").as_str()));
        assert_eq!(
            type1_cmdline(&s(&["console=ttyS0"]), root.clone(), &s(&["console=ttyS0"])),
            vec![format!("root=PARTUUID={ROOT}"), "console=ttyS0".into()]
        );
        // The user named the root partition: nothing is added.
        let named = s(&[&format!("root=PARTUUID={ROOT}")]);
        assert_eq!(type1_cmdline(&named, root.clone(), &named), named);
        assert_eq!(type1_cmdline(&s(&["mount.usr=PARTUUID=y"]), root, &s(&["rw"])), s(&["rw"]));
        // usr only, and a root hash winning over both.
        let usr = [part("usr-x86-64", uuid::Uuid::nil(), USR, None)];
        assert_eq!(finalize_root(&usr).unwrap(), Some(format!("mount.usr=PARTUUID={USR}")));
        let verity = [part("root-x86-64", uuid::Uuid::nil(), ROOT, Some("abcd"))];
        assert_eq!(finalize_root(&verity).unwrap(), Some("roothash=abcd".into()));
        assert_eq!(finalize_root(&[]).unwrap(), None);
        assert_eq!(type1_cmdline(&[], None, &s(&["rw"])), s(&["rw"]));
    }

    #[test]
    fn when_grub_for_efi() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let c = config(json!({"Bootloader": "grub", "Bootable": "enabled", "Architecture": "x86-64"}));
        let e = want_grub_efi_in(&c, root).unwrap_err();
        assert!(e.to_string().contains("grub for EFI is not installed"), "{e}");
        assert_eq!(e.hint_text(), Some("Add grub-efi-amd64-bin to Packages="));
        // Signed grub comes prebuilt: no modules needed. Bootable=auto tolerates their absence.
        let signed = config(json!({"Bootloader": "grub-signed", "Bootable": "enabled", "Architecture": "x86-64"}));
        assert!(want_grub_efi_in(&signed, root).unwrap());
        modules(root, "x86_64-efi");
        assert!(want_grub_efi_in(&c, root).unwrap());
        let sdboot = config(json!({"Bootloader": "systemd-boot", "Bootable": "enabled", "Architecture": "x86-64"}));
        assert!(!want_grub_efi_in(&sdboot, root).unwrap());
        let off = config(json!({"Bootloader": "grub", "Bootable": "disabled", "Architecture": "x86-64"}));
        assert!(!want_grub_efi_in(&off, root).unwrap());
        let riscv = config(json!({"Bootloader": "grub", "Bootable": "enabled", "Architecture": "riscv64"}));
        assert!(!want_grub_efi_in(&riscv, root).unwrap());
    }

    #[test]
    fn when_grub_for_bios() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let all = |_: &str| true;
        let auto = config(json!({"BiosBootloader": "grub", "Bootable": "auto"}));
        let yes = config(json!({"BiosBootloader": "grub", "Bootable": "enabled"}));
        // No i386-pc modules.
        assert!(!want_grub_bios_in(&auto, root, &[], all).unwrap());
        let e = want_grub_bios_in(&yes, root, &[], all).unwrap_err();
        assert!(e.to_string().contains("grub for BIOS is not installed"), "{e}");
        modules(root, "i386-pc");
        assert!(want_grub_bios_in(&auto, root, &[], all).unwrap());
        assert!(want_grub_bios_in(&yes, root, &layout(), all).unwrap());
        // Other settings.
        for other in [
            json!({"BiosBootloader": "none", "Bootable": "enabled"}),
            json!({"BiosBootloader": "grub", "Bootable": "disabled"}),
            json!({"BiosBootloader": "grub", "Bootable": "enabled", "Format": "directory"}),
            json!({"BiosBootloader": "grub", "Bootable": "enabled", "Overlay": true}),
        ] {
            assert!(!want_grub_bios_in(&config(other.clone()), root, &layout(), all).unwrap(), "{other}");
        }
        // The layout needs a BIOS boot partition, an ESP and a root or usr partition.
        let without = |t: &str| layout().into_iter().filter(|p| !p.type_name.starts_with(t)).collect::<Vec<_>>();
        for (missing, what) in [("2168", "no BIOS Boot Partition"), ("esp", "no ESP"), ("root", "no root or usr")] {
            let parts = without(missing);
            assert!(!want_grub_bios_in(&auto, root, &parts, all).unwrap(), "{missing}");
            let e = want_grub_bios_in(&yes, root, &parts, all).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
        // Both tools are needed.
        let no_setup = |b: &str| b != "bios-setup";
        assert!(want_grub_bios_in(&auto, root, &[], no_setup).unwrap(), "without partitions only modules count");
        assert!(!want_grub_bios_in(&auto, root, &layout(), no_setup).unwrap());
        let e = want_grub_bios_in(&yes, root, &layout(), no_setup).unwrap_err();
        assert!(e.to_string().contains("grub-bios-setup was not found"), "{e}");
        assert!(e.hint_text().is_some_and(|h| h.contains("grub-pc-bin")));
    }

    #[test]
    fn tools_from_the_image_first() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let native = config(json!({"Architecture": Architecture::native().as_str()}));
        let exe = |p: &str| {
            let f = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, b"#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        exe("/usr/lib/grub/i386-pc/grub-bios-setup");
        assert_eq!(
            find_grub_tool(&native, root, "bios-setup"),
            Some(GrubTool::Image("/usr/lib/grub/i386-pc/grub-bios-setup".into()))
        );
        exe("/usr/bin/grub2-mkimage");
        assert_eq!(find_grub_tool(&native, root, "mkimage"), Some(GrubTool::Image("/usr/bin/grub2-mkimage".into())));
        // A merged-usr image: /sbin is a relative symlink to usr/sbin.
        std::os::unix::fs::symlink("usr/sbin", root.join("sbin")).unwrap();
        exe("/usr/sbin/grub-probe");
        assert_eq!(find_grub_tool(&native, root, "probe"), Some(GrubTool::Image("/usr/sbin/grub-probe".into())));
        // A non-executable file does not count; foreign images never run their tools.
        std::fs::write(root.join("usr/bin/grub-editenv"), b"").unwrap();
        assert!(!matches!(find_grub_tool(&native, root, "editenv"), Some(GrubTool::Image(_))));
        let foreign = if Architecture::native() == Architecture::Arm64 { "x86-64" } else { "arm64" };
        let foreign = config(json!({"Architecture": foreign}));
        assert!(!matches!(find_grub_tool(&foreign, root, "mkimage"), Some(GrubTool::Image(_))));
        assert_eq!(GrubTool::Image("/x".into()).image_root(), Path::new("/"));
        assert_eq!(GrubTool::Host("/x".into()).image_root(), Path::new("/buildroot"));
    }

    #[test]
    fn signed_grub_lookup() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert_eq!(find_signed_grub_image(root, "x64"), None);
        let d = root.join("usr/lib/grub/x86_64-efi-signed");
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink("/usr/lib/grub/elsewhere", d.join("grubx64.efi.signed")).unwrap();
        assert_eq!(find_signed_grub_image(root, "x64"), None, "absolute symlinks are skipped");
        let f = root.join("boot/efi/EFI/fedora/grubx64.efi");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b"MZ").unwrap();
        assert_eq!(find_signed_grub_image(root, "x64"), Some(f));
        std::fs::remove_file(d.join("grubx64.efi.signed")).unwrap();
        std::fs::write(d.join("grubx64.efi.signed"), b"MZ").unwrap();
        assert_eq!(find_signed_grub_image(root, "x64"), Some(d.join("grubx64.efi.signed")));
        let suse = root.join("usr/share/efi/aarch64/grub.efi");
        std::fs::create_dir_all(suse.parent().unwrap()).unwrap();
        std::fs::write(&suse, b"MZ").unwrap();
        assert_eq!(find_signed_grub_image(root, "aa64"), Some(suse));
    }

    #[test]
    fn sbat_for_shim_comes_from_the_signed_grub() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let e = shim_sbat(root, "x64").unwrap_err();
        assert!(e.to_string().contains("to extract SBAT from"), "{e}");
        let d = root.join("usr/lib/grub/x86_64-efi-signed");
        std::fs::create_dir_all(&d).unwrap();
        let sbat = b"sbat,1,SBAT Version,sbat,1,https://example.org\ngrub,4,Free Software Foundation,grub,2.12,https://example.org\n";
        std::fs::write(
            d.join("grubx64.efi.signed"),
            mkosi_formats::pe::testpe::build(&[(".text", b"x"), (".sbat", sbat)], 0),
        )
        .unwrap();
        assert_eq!(shim_sbat(root, "x64").unwrap(), sbat);
        std::fs::write(d.join("grubx64.efi.signed"), mkosi_formats::pe::testpe::build(&[(".text", b"x")], 0)).unwrap();
        let e = shim_sbat(root, "x64").unwrap_err();
        assert!(e.to_string().contains("has no .sbat section"), "{e}");
    }

    #[test]
    fn mountinfo_points_root_at_the_image() {
        assert_eq!(
            fake_mountinfo(Path::new("/tmp/mkosi-grub/staging/image.raw")),
            "1 0 1:1 / / - fat /tmp/mkosi-grub/staging/image.raw\n"
        );
    }
}
