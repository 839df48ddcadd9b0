//! shim (`ShimBootloader=signed|unsigned`, upstream's `install_shim`).
//!
//! shim becomes the binary the firmware starts, `efi/EFI/BOOT/BOOT<ARCH>.EFI`, with MokManager
//! next to it. The boot loader shim starts (systemd-boot, grub, or the UKI with
//! `Bootloader=uki`) is installed at shim's second-stage path instead
//! ([`super::shim_second_stage_binary`]) by the code installing it.
//!
//! `signed` takes the binaries the distribution signed (Microsoft-signed on Debian, Ubuntu,
//! Fedora and openSUSE) as they are; `unsigned` takes the unsigned ones and signs them with the
//! `SecureBoot=` key when Secure Boot signing is on.

use std::path::{Path, PathBuf};

use mkosi_config::enums::Feature;

use super::{efi_boot_binary, kernel_images, mkdir_0700, want_efi, want_shim};
use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::log;

/// One of the two shim binaries, with where each distribution installs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimBinary {
    /// `shim` or `mok` (for messages).
    pub name: &'static str,
    /// Globs (relative to the image root) of the signed binary, in order of preference.
    pub signed: Vec<String>,
    /// Globs of the unsigned binary, in order of preference.
    pub unsigned: Vec<String>,
}

/// Where shim itself is installed by Ubuntu, Debian, Fedora/CentOS, openSUSE and Arch.
pub fn shim_binary(arch: &str) -> ShimBinary {
    ShimBinary {
        name: "shim",
        signed: vec![
            // Ubuntu
            format!("usr/lib/shim/shim{arch}.efi.signed.latest"),
            // Debian
            format!("usr/lib/shim/shim{arch}.efi.signed"),
            // Fedora, CentOS
            format!("boot/efi/EFI/*/shim{arch}.efi"),
            // openSUSE
            "usr/share/efi/*/shim.efi".to_string(),
        ],
        unsigned: vec![
            // Debian, Ubuntu
            format!("usr/lib/shim/shim{arch}.efi"),
            // Fedora, CentOS
            format!("usr/share/shim/*/*/shim{arch}.efi"),
            // Arch
            format!("usr/share/shim/shim{arch}.efi"),
        ],
    }
}

/// Where MokManager is installed by the same distributions.
pub fn mok_binary(arch: &str) -> ShimBinary {
    ShimBinary {
        name: "mok",
        signed: vec![
            // Debian
            format!("usr/lib/shim/mm{arch}.efi.signed"),
            // Ubuntu (signed along with the package, no suffix)
            format!("usr/lib/shim/mm{arch}.efi"),
            // Fedora, CentOS
            format!("boot/efi/EFI/*/mm{arch}.efi"),
            // openSUSE
            "usr/share/efi/*/MokManager.efi".to_string(),
        ],
        unsigned: vec![
            // Debian, Ubuntu
            format!("usr/lib/shim/mm{arch}.efi"),
            // Fedora, CentOS
            format!("usr/share/shim/*/*/mm{arch}.efi"),
            // Arch
            format!("usr/share/shim/mm{arch}.efi"),
        ],
    }
}

/// The first file in `root` matching one of `patterns`, skipping (with a warning) symlinks to
/// absolute paths: those point outside the image.
pub fn find(root: &Path, patterns: &[String], what: &str) -> Option<PathBuf> {
    for pattern in patterns {
        for p in crate::tree::path_glob(root, pattern) {
            if let Ok(target) = std::fs::read_link(&p) {
                if target.is_absolute() {
                    log::warn(&format!("Ignoring {what} EFI binary which is an absolute path to {}", target.display()));
                    continue;
                }
            }
            return Some(p);
        }
    }
    None
}

/// Where `found` is installed when asked to go to `output` (relative to `root`): into the
/// directory `output` under its own name when `output` is a directory, the name of a signed
/// binary losing its suffixes after `.efi` (`mmx64.efi.signed` becomes `mmx64.efi`), else
/// `output` itself.
pub fn destination(root: &Path, output: &Path, found: &Path, signed: bool) -> PathBuf {
    let target = root.join(output);
    if !target.is_dir() {
        return target;
    }
    let name = found.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match name.split_once('.') {
        Some((stem, rest)) if signed && !rest.is_empty() && !name.ends_with(".efi") => format!("{stem}.efi"),
        _ => name,
    };
    target.join(name)
}

/// The Debian package with the signed or unsigned shim binaries.
fn debian_package(signed: bool) -> &'static str {
    if signed {
        "shim-signed"
    } else {
        "shim-unsigned"
    }
}

/// Installs one shim binary at `output` (a file or a directory, relative to the image root),
/// upstream's `find_and_install_shim_binary`.
fn install_binary(ctx: &Context, binary: &ShimBinary, output: &Path) -> Result<()> {
    let c = ctx.config;
    let root = ctx.root();
    let signed = c.str("ShimBootloader") == Some("signed");
    let kind = if signed { "signed" } else { "unsigned" };
    let patterns = if signed { &binary.signed } else { &binary.unsigned };
    let what = format!("{kind} {}", binary.name);
    let Some(found) = find(&root, patterns, &what) else {
        if c.bootable() == Feature::Enabled {
            return Err(BuildError::hint(
                format!("Couldn't find {what} EFI binary installed in the image"),
                format!("Add the package providing it to Packages= ({} on Debian and Ubuntu)", debian_package(signed)),
            ));
        }
        return Ok(());
    };
    let dst = destination(&root, output, &found, signed);
    let rel = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
    if !signed && c.bool("SecureBoot") {
        log::step(&format!("Signing and installing {what} EFI binary from /{} to /{}", rel(&found), rel(&dst)));
        crate::secureboot::sign_efi(c, &found, &dst)?;
    } else {
        log::step(&format!("Installing {what} EFI binary from /{} to /{}", rel(&found), rel(&dst)));
        std::fs::copy(&found, &dst).map_err(io("copying", &found))?;
    }
    Ok(())
}

/// Installs shim at `efi/EFI/BOOT/BOOT<ARCH>.EFI` and MokManager next to it (upstream's
/// `install_shim`), when the image boots with EFI, `ShimBootloader=` is not `none`, and there
/// is a kernel or `Bootable=yes`.
pub fn install(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if !want_efi(c) || !want_shim(c) {
        return Ok(());
    }
    let root = ctx.root();
    if c.bootable() == Feature::Auto && kernel_images(&root)?.is_empty() {
        return Ok(());
    }
    let (Some(dst), Some(arch)) = (efi_boot_binary(c), crate::disk::efi_arch(c.architecture())) else {
        return Ok(());
    };
    let dir = dst.parent().map(Path::to_path_buf).unwrap_or_default();
    mkdir_0700(&root.join(&dir))?;
    install_binary(ctx, &shim_binary(arch), &dst)?;
    install_binary(ctx, &mok_binary(arch), &dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(root: &Path, names: &[&str]) {
        for n in names {
            let p = root.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, n.as_bytes()).unwrap();
        }
    }

    fn rel(root: &Path, p: Option<PathBuf>) -> Option<String> {
        p.map(|p| p.strip_prefix(root).unwrap().display().to_string())
    }

    #[test]
    fn lookups_per_distribution() {
        // (distribution, files in the image, signed shim found, signed MokManager found)
        type Case = (&'static str, &'static [&'static str], Option<&'static str>, Option<&'static str>);
        let cases: &[Case] = &[
            // Debian: shim-signed and shim-unsigned.
            (
                "debian",
                &[
                    "usr/lib/shim/shimx64.efi.signed",
                    "usr/lib/shim/mmx64.efi.signed",
                    "usr/lib/shim/shimx64.efi",
                    "usr/lib/shim/mmx64.efi",
                ],
                Some("usr/lib/shim/shimx64.efi.signed"),
                Some("usr/lib/shim/mmx64.efi.signed"),
            ),
            // Ubuntu: the newest signed shim first.
            (
                "ubuntu",
                &[
                    "usr/lib/shim/shimx64.efi.signed",
                    "usr/lib/shim/shimx64.efi.signed.latest",
                    "usr/lib/shim/mmx64.efi",
                ],
                Some("usr/lib/shim/shimx64.efi.signed.latest"),
                Some("usr/lib/shim/mmx64.efi"),
            ),
            (
                "fedora",
                &["boot/efi/EFI/fedora/shimx64.efi", "boot/efi/EFI/fedora/mmx64.efi"],
                Some("boot/efi/EFI/fedora/shimx64.efi"),
                Some("boot/efi/EFI/fedora/mmx64.efi"),
            ),
            (
                "opensuse",
                &["usr/share/efi/x86_64/shim.efi", "usr/share/efi/x86_64/MokManager.efi"],
                Some("usr/share/efi/x86_64/shim.efi"),
                Some("usr/share/efi/x86_64/MokManager.efi"),
            ),
            ("none", &["usr/share/shim/shimx64.efi"], None, None),
        ];
        for (distro, names, shim, mok) in cases {
            let t = tempfile::tempdir().unwrap();
            files(t.path(), names);
            let got = rel(t.path(), find(t.path(), &shim_binary("x64").signed, "shim"));
            assert_eq!(got.as_deref(), *shim, "{distro}: signed shim");
            let got = rel(t.path(), find(t.path(), &mok_binary("x64").signed, "mok"));
            assert_eq!(got.as_deref(), *mok, "{distro}: signed mok");
        }

        let unsigned: &[(&[&str], &str, &str)] = &[
            (
                &["usr/lib/shim/shimx64.efi", "usr/lib/shim/mmx64.efi"],
                "usr/lib/shim/shimx64.efi",
                "usr/lib/shim/mmx64.efi",
            ),
            (
                &["usr/share/shim/15.8/x64/shimx64.efi", "usr/share/shim/15.8/x64/mmx64.efi"],
                "usr/share/shim/15.8/x64/shimx64.efi",
                "usr/share/shim/15.8/x64/mmx64.efi",
            ),
            (
                &["usr/share/shim/shimx64.efi", "usr/share/shim/mmx64.efi"],
                "usr/share/shim/shimx64.efi",
                "usr/share/shim/mmx64.efi",
            ),
        ];
        for (names, shim, mok) in unsigned {
            let t = tempfile::tempdir().unwrap();
            files(t.path(), names);
            assert_eq!(rel(t.path(), find(t.path(), &shim_binary("x64").unsigned, "shim")).as_deref(), Some(*shim));
            assert_eq!(rel(t.path(), find(t.path(), &mok_binary("x64").unsigned, "mok")).as_deref(), Some(*mok));
        }
        // Other architectures use their own names.
        assert_eq!(shim_binary("aa64").signed[1], "usr/lib/shim/shimaa64.efi.signed");
        assert_eq!(mok_binary("aa64").unsigned[0], "usr/lib/shim/mmaa64.efi");
    }

    #[test]
    fn absolute_symlinks_are_skipped() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        files(root, &["usr/lib/shim/shimx64.efi.signed.real", "boot/efi/EFI/fedora/shimx64.efi"]);
        std::os::unix::fs::symlink(
            "/usr/lib/shim/shimx64.efi.signed.real",
            root.join("usr/lib/shim/shimx64.efi.signed"),
        )
        .unwrap();
        assert_eq!(
            rel(root, find(root, &shim_binary("x64").signed, "shim")).as_deref(),
            Some("boot/efi/EFI/fedora/shimx64.efi")
        );
        // Relative symlinks stay inside the image and are fine.
        std::fs::remove_file(root.join("usr/lib/shim/shimx64.efi.signed")).unwrap();
        std::os::unix::fs::symlink("shimx64.efi.signed.real", root.join("usr/lib/shim/shimx64.efi.signed")).unwrap();
        assert_eq!(
            rel(root, find(root, &shim_binary("x64").signed, "shim")).as_deref(),
            Some("usr/lib/shim/shimx64.efi.signed")
        );
    }

    #[test]
    fn placement() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("efi/EFI/BOOT")).unwrap();
        let boot = Path::new("efi/EFI/BOOT/BOOTX64.EFI");
        let dir = Path::new("efi/EFI/BOOT");
        // shim goes to the file path it is given.
        assert_eq!(
            destination(root, boot, &root.join("usr/lib/shim/shimx64.efi.signed"), true),
            root.join("efi/EFI/BOOT/BOOTX64.EFI")
        );
        // MokManager goes next to it under its own name, signed suffixes dropped.
        let cases = [
            ("usr/lib/shim/mmx64.efi.signed", true, "mmx64.efi"),
            ("usr/lib/shim/mmx64.efi", true, "mmx64.efi"),
            ("usr/share/efi/x86_64/MokManager.efi", true, "MokManager.efi"),
            ("usr/lib/shim/mmx64.efi", false, "mmx64.efi"),
            ("usr/lib/shim/mmx64.efi.unsigned", false, "mmx64.efi.unsigned"),
        ];
        for (found, signed, want) in cases {
            assert_eq!(destination(root, dir, &root.join(found), signed), root.join(dir).join(want), "{found}");
        }
    }

    fn testbuild(shim: &str, bootable: &str) -> crate::boot::TestBuild {
        crate::boot::TestBuild::new(serde_json::json!({
            "Format": "disk", "Architecture": "x86-64", "Distribution": "debian",
            "Bootable": bootable, "ShimBootloader": shim,
        }))
    }

    #[test]
    fn installs_debian_signed_shim_and_mok() {
        let b = testbuild("signed", "enabled");
        let ctx = b.ctx();
        let root = ctx.root();
        files(
            &root,
            &["usr/lib/shim/shimx64.efi.signed", "usr/lib/shim/mmx64.efi.signed", "usr/lib/shim/fbx64.efi.signed"],
        );
        install(&ctx).unwrap();
        let f = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(f("efi/EFI/BOOT/BOOTX64.EFI"), "usr/lib/shim/shimx64.efi.signed");
        assert_eq!(f("efi/EFI/BOOT/mmx64.efi"), "usr/lib/shim/mmx64.efi.signed");
        let mut names: Vec<String> = std::fs::read_dir(root.join("efi/EFI/BOOT"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["BOOTX64.EFI", "mmx64.efi"]);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(root.join("efi/EFI/BOOT")).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn when_shim_is_installed() {
        // ShimBootloader=none, or Bootable=auto without a kernel: nothing happens.
        for (shim, bootable) in [("none", "enabled"), ("signed", "auto"), ("signed", "disabled")] {
            let b = testbuild(shim, bootable);
            let ctx = b.ctx();
            files(&ctx.root(), &["usr/lib/shim/shimx64.efi.signed"]);
            install(&ctx).unwrap();
            assert!(!ctx.root().join("efi/EFI/BOOT/BOOTX64.EFI").exists(), "{shim} {bootable}");
        }
        // Bootable=yes without the binaries fails, naming the package.
        let b = testbuild("unsigned", "enabled");
        let ctx = b.ctx();
        files(&ctx.root(), &["usr/lib/shim/shimx64.efi.signed"]);
        let e = install(&ctx).unwrap_err();
        assert!(e.to_string().contains("Couldn't find unsigned shim EFI binary installed in the image"), "{e}");
        assert_eq!(
            e.hint_text(),
            Some("Add the package providing it to Packages= (shim-unsigned on Debian and Ubuntu)")
        );
        // Unsigned binaries without SecureBoot= are copied as they are.
        files(&ctx.root(), &["usr/lib/shim/shimx64.efi", "usr/lib/shim/mmx64.efi"]);
        install(&ctx).unwrap();
        assert_eq!(
            std::fs::read_to_string(ctx.root().join("efi/EFI/BOOT/BOOTX64.EFI")).unwrap(),
            "usr/lib/shim/shimx64.efi"
        );
        assert_eq!(
            std::fs::read_to_string(ctx.root().join("efi/EFI/BOOT/mmx64.efi")).unwrap(),
            "usr/lib/shim/mmx64.efi"
        );
    }

    #[test]
    fn missing_binaries_name_the_package() {
        assert_eq!(debian_package(true), "shim-signed");
        assert_eq!(debian_package(false), "shim-unsigned");
    }
}
