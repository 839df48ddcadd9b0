//! Installing systemd-boot into the image, in-process.
//!
//! Upstream runs `bootctl install --root=… --install-source=image --all-architectures
//! --no-variables` from its tools tree. We do the same work here so that no recent systemd is
//! needed on the host: the result matches bootctl 257 file for file (directories 0700, boot
//! loader binaries 0644 with their original modification time, `loader/loader.conf` 0640 with
//! the commented defaults, `/etc/kernel/entry-token`), except that no `loader/random-seed` is
//! written — upstream deletes it right after `bootctl` anyway.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mkosi_config::enums::Feature;

use super::{entry_token, kernel_images, mkdir_0700, want_efi};
use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::log;

/// Where systemd-boot's binaries live in the image.
pub const BOOT_EFI_DIR: &str = "usr/lib/systemd/boot/efi";

/// The loader configuration `bootctl install` writes when there is none.
pub const LOADER_CONF: &str = "#timeout 3\n#console-mode keep\n";

/// The systemd-boot binaries of the image (`systemd-boot<arch>.efi`), each with the file to
/// install: its `.signed` variant when there is one (as bootctl prefers), sorted by name.
pub fn boot_binaries(root: &Path) -> Vec<(String, PathBuf)> {
    let dir = root.join(BOOT_EFI_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<(String, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let arch = name.strip_prefix("systemd-boot")?.strip_suffix(".efi")?.to_string();
            if arch.is_empty() || !e.path().is_file() {
                return None;
            }
            let signed = dir.join(format!("{name}.signed"));
            Some((arch, if signed.is_file() { signed } else { e.path() }))
        })
        .collect();
    out.sort();
    out
}

/// Copies `src` to `dst` with mode 0644, keeping the modification time (like bootctl).
pub fn copy_preserving_mtime(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_extension("mkosi-tmp");
    std::fs::copy(src, &tmp).map_err(io("copying", src))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io("chmod", &tmp))?;
    let mtime = std::fs::metadata(src).and_then(|m| m.modified()).map_err(io("reading", src))?;
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(mtime))
        .map_err(io("setting the time of", &tmp))?;
    std::fs::rename(&tmp, dst).map_err(io("renaming", &tmp))
}

/// Writes `/etc/kernel/entry-token` the way `bootctl install` does.
fn write_entry_token(root: &Path, token: &str) -> Result<()> {
    let dir = root.join("etc/kernel");
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    }
    let p = dir.join("entry-token");
    if p.exists() {
        return Ok(());
    }
    std::fs::write(&p, format!("{token}\n")).map_err(io("writing", &p))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).map_err(io("chmod", &p))
}

/// The `bootctl install` equivalent: `efi` is the ESP (`/efi`), `boot` the XBOOTLDR
/// directory (`/boot`), both inside `root`.
pub fn bootctl_install(root: &Path, binaries: &[(String, PathBuf)], token: &str) -> Result<()> {
    let efi = root.join("efi");
    let boot = root.join("boot");
    for d in ["EFI/systemd", "EFI/BOOT", "loader/keys"] {
        mkdir_0700(&efi.join(d))?;
    }
    for d in ["loader/entries", "EFI/Linux"] {
        mkdir_0700(&boot.join(d))?;
    }
    for (arch, src) in binaries {
        copy_preserving_mtime(src, &efi.join(format!("EFI/systemd/systemd-boot{arch}.efi")))?;
        copy_preserving_mtime(src, &efi.join(format!("EFI/BOOT/BOOT{}.EFI", arch.to_uppercase())))?;
    }
    let conf = efi.join("loader/loader.conf");
    if !conf.exists() {
        std::fs::write(&conf, LOADER_CONF).map_err(io("writing", &conf))?;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).map_err(io("chmod", &conf))?;
    }
    write_entry_token(root, token)
}

/// With `ShimBootloader=`, shim starts systemd-boot: the installed
/// `efi/EFI/systemd/systemd-boot<arch>.efi` is copied to shim's second-stage path.
pub fn install_shim_second_stage(c: &mkosi_config::Config, root: &Path) -> Result<()> {
    if !super::want_shim(c) {
        return Ok(());
    }
    let (Some(arch), Some(dst)) = (crate::disk::efi_arch(c.architecture()), super::shim_second_stage_binary(c)) else {
        return Ok(());
    };
    let src = root.join(format!("efi/EFI/systemd/systemd-boot{arch}.efi"));
    if !src.is_file() {
        return Err(BuildError::msg(format!(
            "systemd-boot for {arch} was not installed at /efi/EFI/systemd/systemd-boot{arch}.efi, shim cannot start it"
        )));
    }
    let dst = root.join(dst);
    if let Some(parent) = dst.parent() {
        mkdir_0700(parent)?;
    }
    copy_preserving_mtime(&src, &dst)
}

/// Installs systemd-boot when the image is to boot with it (upstream's
/// `install_systemd_boot`), signing its binaries first with `SecureBoot=yes`.
pub fn install(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if !want_efi(c) {
        return Ok(());
    }
    let bootloader = c.str("Bootloader").unwrap_or("systemd-boot");
    if !bootloader.starts_with("systemd-boot") {
        return Ok(());
    }
    let root = ctx.root();
    if kernel_images(&root)?.is_empty() && c.bootable() == Feature::Auto {
        return Ok(());
    }
    let signed = bootloader == "systemd-boot-signed";
    let dir = root.join(BOOT_EFI_DIR);
    let have = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                if signed {
                    n.ends_with(".efi.signed")
                } else {
                    n.ends_with(".efi")
                }
            })
        })
        .unwrap_or(false);
    if !have {
        if c.bootable() == Feature::Enabled {
            return Err(BuildError::hint(
                format!(
                    "An EFI bootable image with systemd-boot was requested but a {}systemd-boot binary was not found at /{BOOT_EFI_DIR}",
                    if signed { "signed " } else { "" }
                ),
                "Add the package providing it to Packages= (systemd-boot-efi on Debian and Ubuntu)",
            ));
        }
        return Ok(());
    }
    if c.bool("SecureBoot") && !signed {
        log::step("Signing systemd-boot binaries…");
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io("reading", &dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "efi" || e == "EFI"))
            .collect();
        inputs.sort();
        for input in inputs {
            let output = PathBuf::from(format!("{}.signed", input.display()));
            crate::secureboot::sign_efi(ctx.config, &input, &output)?;
        }
    }
    let binaries = boot_binaries(&root);
    let binaries: Vec<(String, PathBuf)> = if signed {
        binaries.into_iter().filter(|(_, p)| p.extension().is_some_and(|e| e == "signed")).collect()
    } else {
        binaries
    };
    if binaries.is_empty() {
        return Err(BuildError::msg(format!("No systemd-boot<arch>.efi binary found in /{BOOT_EFI_DIR}")));
    }
    log::step("Installing systemd-boot…");
    bootctl_install(&root, &binaries, &entry_token(ctx))?;
    install_shim_second_stage(c, &root)?;
    if c.bool("SecureBoot") && c.bool("SecureBootAutoEnroll") {
        log::step("Setting up secure boot auto-enrollment…");
        crate::secureboot::write_auto_enroll_keys(c, &root.join("efi"), &ctx.workspace)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn installs_like_bootctl() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let dir = root.join(BOOT_EFI_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("systemd-bootx64.efi"), b"MZ boot").unwrap();
        std::fs::write(dir.join("linuxx64.efi.stub"), b"MZ stub").unwrap();
        std::fs::write(dir.join("systemd-bootia32.efi"), b"MZ ia32").unwrap();
        std::fs::write(dir.join("systemd-bootia32.efi.signed"), b"MZ ia32 signed").unwrap();
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        std::fs::File::options().write(true).open(dir.join("systemd-bootx64.efi")).unwrap().set_modified(t0).unwrap();
        std::fs::create_dir_all(root.join("efi")).unwrap();
        std::fs::create_dir_all(root.join("boot/loader")).unwrap();

        let bins = boot_binaries(root);
        assert_eq!(
            bins.iter().map(|(a, p)| (a.as_str(), p.file_name().unwrap().to_str().unwrap())).collect::<Vec<_>>(),
            vec![("ia32", "systemd-bootia32.efi.signed"), ("x64", "systemd-bootx64.efi")]
        );
        bootctl_install(root, &bins, "debian").unwrap();

        let f = |p: &str| std::fs::read(root.join(p)).unwrap();
        assert_eq!(f("efi/EFI/systemd/systemd-bootx64.efi"), b"MZ boot");
        assert_eq!(f("efi/EFI/BOOT/BOOTX64.EFI"), b"MZ boot");
        assert_eq!(f("efi/EFI/BOOT/BOOTIA32.EFI"), b"MZ ia32 signed");
        assert_eq!(f("efi/loader/loader.conf"), LOADER_CONF.as_bytes());
        assert_eq!(f("etc/kernel/entry-token"), b"debian\n");
        let md = |p: &str| std::fs::metadata(root.join(p)).unwrap();
        assert_eq!(md("efi/EFI/BOOT/BOOTX64.EFI").mtime(), 1_700_000_000);
        assert_eq!(md("efi/EFI/BOOT/BOOTX64.EFI").mode() & 0o7777, 0o644);
        assert_eq!(md("efi/loader/loader.conf").mode() & 0o7777, 0o640);
        for d in ["efi/EFI", "efi/EFI/systemd", "efi/loader/keys", "boot/loader/entries", "boot/EFI/Linux"] {
            assert_eq!(md(d).mode() & 0o7777, 0o700, "{d}");
        }
        // An existing loader.conf and entry token are kept.
        std::fs::write(root.join("efi/loader/loader.conf"), "timeout 0\n").unwrap();
        bootctl_install(root, &bins, "other").unwrap();
        assert_eq!(f("efi/loader/loader.conf"), b"timeout 0\n");
        assert_eq!(f("etc/kernel/entry-token"), b"debian\n");
    }

    #[test]
    fn shim_starts_systemd_boot() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let dir = root.join(BOOT_EFI_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("systemd-bootx64.efi"), b"MZ boot").unwrap();
        let config = |shim: &str| {
            mkosi_config::Config::from_values([
                ("Architecture".to_string(), serde_json::json!("x86-64")),
                ("ShimBootloader".to_string(), serde_json::json!(shim)),
            ])
        };
        // Without shim nothing is copied; without systemd-boot installed shim has nothing to start.
        install_shim_second_stage(&config("none"), root).unwrap();
        assert!(!root.join("efi/EFI/BOOT/grubx64.EFI").exists());
        let e = install_shim_second_stage(&config("signed"), root).unwrap_err();
        assert!(e.to_string().contains("shim cannot start it"), "{e}");
        bootctl_install(root, &boot_binaries(root), "debian").unwrap();
        install_shim_second_stage(&config("signed"), root).unwrap();
        assert_eq!(std::fs::read(root.join("efi/EFI/BOOT/grubx64.EFI")).unwrap(), b"MZ boot");
        assert_eq!(std::fs::metadata(root.join("efi/EFI/BOOT/grubx64.EFI")).unwrap().mode() & 0o7777, 0o644);
    }
}
