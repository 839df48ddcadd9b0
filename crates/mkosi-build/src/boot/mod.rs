//! Boot loaders, kernels and unified kernel images.
//!
//! The decisions upstream makes about booting (`want_efi`, `want_kernel`, `want_uki`), the
//! kernels found in the image, and installing them: systemd-boot ([`systemd_boot`]), unified
//! kernel images assembled in-process and Type #1 boot loader entries ([`kernel`]).

use mkosi_config::enums::{Feature, OutputFormat};
use mkosi_config::Config;

pub mod grub;
pub mod kernel;
pub mod pcrs;
pub mod systemd_boot;

pub use kernel::{entry_token, install_kernel, kernel_images, Kernel};

use crate::error::{BuildError, Result};

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

/// Fails early, before anything is built, for boot settings this version cannot do.
pub fn check_supported(c: &Config) -> Result<()> {
    if want_efi(c) && c.output_format() != OutputFormat::Esp && c.str("ShimBootloader").is_some_and(|b| b != "none") {
        return Err(BuildError::hint("ShimBootloader= is not implemented yet", "Set ShimBootloader=none"));
    }
    if c.output_format() == OutputFormat::Addon {
        return Err(BuildError::msg("Format=addon is not implemented yet"));
    }
    Ok(())
}
