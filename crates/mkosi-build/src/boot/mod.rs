//! Boot loaders, kernels and unified kernel images.
//!
//! The decisions upstream makes about booting (`want_efi`, `want_kernel`, `want_uki`), the
//! kernels found in the image, and installing them: systemd-boot ([`systemd_boot`]), unified
//! kernel images assembled in-process and Type #1 boot loader entries ([`kernel`]), shim
//! ([`shim`]) and `Format=addon` PE addons ([`addon`]).

use std::path::PathBuf;

use mkosi_config::enums::{Distribution, Feature, OutputFormat};
use mkosi_config::Config;

pub mod addon;
pub mod grub;
pub mod kernel;
pub mod pcrs;
pub mod shim;
pub mod systemd_boot;

pub use kernel::{entry_token, install_kernel, kernel_images, Kernel};

/// Upstream's `want_efi`: whether the image is to be made bootable on EFI firmware.
pub fn want_efi(c: &Config) -> bool {
    let format = c.output_format();
    if format == OutputFormat::Esp {
        return true;
    }
    if c.bootable() == Feature::Disabled || c.str("Bootloader") == Some("none") {
        return false;
    }
    let auto = c.bootable() == Feature::Auto;
    if auto
        && (matches!(format, OutputFormat::Cpio | OutputFormat::None | OutputFormat::Oci | OutputFormat::Uki)
            || format.is_extension_or_portable_image()
            || c.bool("Overlay"))
    {
        return false;
    }
    crate::disk::efi_arch(c.architecture()).is_some()
}

/// Upstream's `want_kernel`: whether kernels found in the image are to be installed.
pub fn want_kernel(c: &Config) -> bool {
    let format = c.output_format();
    if matches!(format, OutputFormat::Uki | OutputFormat::Esp) || c.bootable() == Feature::Disabled {
        return false;
    }
    !(c.bootable() == Feature::Auto
        && (format == OutputFormat::Cpio || format.is_extension_or_portable_image() || c.bool("Overlay")))
}

/// Creates `p` and its missing parents with mode 0700, as bootctl and upstream create the
/// directories of the ESP and of `/boot`.
pub(crate) fn mkdir_0700(p: &std::path::Path) -> crate::error::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if p.is_dir() {
        return Ok(());
    }
    if let Some(parent) = p.parent() {
        mkdir_0700(parent)?;
    }
    std::fs::create_dir(p).map_err(crate::error::io("creating", p))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).map_err(crate::error::io("chmod", p))
}

/// The boot loader setting (`Bootloader=`).
pub fn bootloader(c: &Config) -> &str {
    c.str("Bootloader").unwrap_or("systemd-boot")
}

/// Whether `Bootloader=` names one of the UKI variants (`uki`, `uki-signed`).
pub fn bootloader_is_uki(c: &Config) -> bool {
    bootloader(c).starts_with("uki")
}

/// Whether `Bootloader=` names a signed variant.
pub fn bootloader_is_signed(c: &Config) -> bool {
    bootloader(c).ends_with("-signed")
}

/// The systemd-stub of the image for the target architecture.
pub fn stub_path(c: &Config, root: &std::path::Path) -> Option<std::path::PathBuf> {
    crate::disk::efi_arch(c.architecture()).map(|a| root.join(format!("usr/lib/systemd/boot/efi/linux{a}.efi.stub")))
}

/// Upstream's `want_uki`: whether kernels are installed as unified kernel images. Upstream's
/// `auto` also needs ukify; we assemble UKIs in-process, so only the stub matters.
pub fn want_uki(c: &Config, root: &std::path::Path) -> bool {
    want_efi(c)
        && (bootloader_is_uki(c)
            || matches!(c.str("UnifiedKernelImages"), Some("signed" | "unsigned"))
            || (c.str("UnifiedKernelImages").unwrap_or("auto") == "auto"
                && stub_path(c, root).is_some_and(|s| s.exists())))
}

/// Whether `ShimBootloader=` asks for shim (`signed` or `unsigned`).
pub fn want_shim(c: &Config) -> bool {
    c.str("ShimBootloader").is_some_and(|b| b != "none")
}

/// The removable-media boot path firmware starts, `efi/EFI/BOOT/BOOT<ARCH>.EFI` (upstream's
/// `efi_boot_binary`); `None` for architectures without UEFI.
pub fn efi_boot_binary(c: &Config) -> Option<PathBuf> {
    crate::disk::efi_arch(c.architecture()).map(|a| PathBuf::from(format!("efi/EFI/BOOT/BOOT{}.EFI", a.to_uppercase())))
}

/// Where shim looks for the boot loader it starts: `efi/EFI/BOOT/grub<arch>.EFI`, or
/// `efi/EFI/BOOT/grub.EFI` on openSUSE (upstream's `shim_second_stage_binary`).
pub fn shim_second_stage_binary(c: &Config) -> Option<PathBuf> {
    let arch = crate::disk::efi_arch(c.architecture())?;
    Some(if c.distribution() == Distribution::Opensuse {
        PathBuf::from("efi/EFI/BOOT/grub.EFI")
    } else {
        PathBuf::from(format!("efi/EFI/BOOT/grub{arch}.EFI"))
    })
}

/// Where the boot loader (or, with `Bootloader=uki`, the UKI) goes on the ESP: shim's second
/// stage when shim is used, else the removable-media path. Architectures without UEFI get the
/// x86-64 names (nothing boots them from an ESP anyway).
pub fn boot_loader_binary(c: &Config) -> PathBuf {
    let path = if want_shim(c) { shim_second_stage_binary(c) } else { efi_boot_binary(c) };
    path.unwrap_or_else(|| {
        PathBuf::from(if want_shim(c) { "efi/EFI/BOOT/grubx64.EFI" } else { "efi/EFI/BOOT/BOOTX64.EFI" })
    })
}

/// A build context over a temporary workspace, for tests of the boot steps.
#[cfg(test)]
pub(crate) struct TestBuild {
    _dir: tempfile::TempDir,
    ws: PathBuf,
    args: mkosi_config::Args,
    host: mkosi_config::Host,
    pub config: Config,
}

#[cfg(test)]
impl TestBuild {
    pub fn new(values: serde_json::Value) -> TestBuild {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = dir.path().join("ws");
        let config = Config::from_values(values.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
        TestBuild {
            ws,
            _dir: dir,
            args: mkosi_config::Args::new(mkosi_config::Verb::Build, None),
            host: mkosi_config::Host::new(vec![], mkosi_config::enums::Architecture::X86_64, "/".into()),
            config,
        }
    }

    pub fn ctx(&self) -> crate::context::Context<'_> {
        crate::context::Context::new(
            &self.args,
            &self.config,
            &self.host,
            self.ws.clone(),
            self.ws.join("metadata"),
            self.ws.join("pkgcache"),
            self.ws.join("packages"),
            self.ws.clone(),
        )
        .expect("context")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn boot_binary_paths() {
        let b = |v: serde_json::Value| TestBuild::new(v).config;
        let plain = b(json!({"Architecture": "x86-64", "Distribution": "debian"}));
        assert!(!want_shim(&plain));
        assert_eq!(efi_boot_binary(&plain), Some(PathBuf::from("efi/EFI/BOOT/BOOTX64.EFI")));
        assert_eq!(shim_second_stage_binary(&plain), Some(PathBuf::from("efi/EFI/BOOT/grubx64.EFI")));
        assert_eq!(boot_loader_binary(&plain), PathBuf::from("efi/EFI/BOOT/BOOTX64.EFI"));
        let none = b(json!({"Architecture": "x86-64", "ShimBootloader": "none"}));
        assert!(!want_shim(&none));
        let shim = b(json!({"Architecture": "arm64", "Distribution": "debian", "ShimBootloader": "signed"}));
        assert!(want_shim(&shim));
        assert_eq!(efi_boot_binary(&shim), Some(PathBuf::from("efi/EFI/BOOT/BOOTAA64.EFI")));
        assert_eq!(boot_loader_binary(&shim), PathBuf::from("efi/EFI/BOOT/grubaa64.EFI"));
        let suse = b(json!({"Architecture": "x86-64", "Distribution": "opensuse", "ShimBootloader": "unsigned"}));
        assert_eq!(boot_loader_binary(&suse), PathBuf::from("efi/EFI/BOOT/grub.EFI"));
        let s390 = b(json!({"Architecture": "s390x", "ShimBootloader": "signed"}));
        assert_eq!(efi_boot_binary(&s390), None);
        assert_eq!(shim_second_stage_binary(&s390), None);
    }
}
