//! Boot loaders, kernels and unified kernel images.
//!
//! Installing them is not implemented yet. What is here decides, the way upstream does, whether
//! a build *would* install a boot loader or a kernel, so that such builds fail with a clear
//! message instead of producing an image that silently is not bootable.

use mkosi_config::enums::{Feature, OutputFormat};
use mkosi_config::Config;

use crate::context::Context;

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

/// Whether the image has a kernel (`/usr/lib/modules/<version>/vmlinuz*` or `vmlinux*`).
pub fn has_kernel(ctx: &Context) -> bool {
    let modules = ctx.root().join("usr/lib/modules");
    let Ok(rd) = std::fs::read_dir(&modules) else { return false };
    rd.flatten().filter(|e| e.path().is_dir()).any(|e| {
        std::fs::read_dir(e.path()).is_ok_and(|files| {
            files.flatten().any(|f| {
                let n = f.file_name().to_string_lossy().into_owned();
                n.starts_with("vmlinuz") || n.starts_with("vmlinux")
            })
        })
    })
}

const HINT: &str = "Booting support (kernels, UKIs, systemd-boot, grub) is being worked on; \
                    set Bootable=no to build the image without it";

/// Fails when the image has a kernel that upstream would install (with a UKI or boot loader
/// entry), which this version cannot do. Runs once the image content is complete.
pub fn check_kernels(ctx: &Context) -> Result<()> {
    if want_kernel(ctx.config) && has_kernel(ctx) {
        return Err(BuildError::hint(
            "The image has a kernel; installing kernels and unified kernel images (Bootable=auto) is not implemented yet",
            HINT,
        ));
    }
    Ok(())
}

/// Fails early, before anything is built, for settings that need boot loader support.
pub fn check_supported(c: &Config) -> Result<()> {
    let hint = HINT;
    if c.bootable() == Feature::Enabled && c.output_format() != OutputFormat::Esp {
        return Err(BuildError::hint("Bootable=yes is not implemented yet", hint));
    }
    if want_efi(c) && c.output_format() != OutputFormat::Esp {
        if c.str("Bootloader").is_some_and(|b| b.starts_with("grub")) {
            return Err(BuildError::hint(
                format!("Bootloader={} is not implemented yet", c.str("Bootloader").unwrap_or("")),
                hint,
            ));
        }
        if c.str("ShimBootloader").is_some_and(|b| b != "none") {
            return Err(BuildError::hint("ShimBootloader= is not implemented yet", hint));
        }
    }
    if c.output_format() == OutputFormat::Disk
        && c.bootable() != Feature::Disabled
        && c.str("BiosBootloader") == Some("grub")
    {
        return Err(BuildError::hint("BiosBootloader=grub is not implemented yet", hint));
    }
    if c.output_format() == OutputFormat::Uki {
        return Err(BuildError::msg("Format=uki is not implemented yet"));
    }
    Ok(())
}
