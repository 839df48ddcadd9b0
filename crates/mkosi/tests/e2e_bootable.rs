//! End-to-end builds of bootable Debian trixie images (`MKOSI_E2E=1`, root): Type #1 boot
//! loader entries with systemd-boot, checked with the host's `bootctl`, a Secure Boot
//! signed `Format=uki` image checked with `objdump`, `objcopy` and `sbverify`, shim
//! (`ShimBootloader=signed`) starting systemd-boot, and a `Format=addon` PE addon. Booting them
//! in qemu is in `e2e_boot.rs`.
//!
//! Host tools: bootctl (systemd), binutils (objdump, objcopy), sbsigntool (sbverify), zstd,
//! cpio.

mod common;

use std::path::Path;

use common::*;

const KERNEL_PACKAGES: &str = "linux-image-cloud-amd64,systemd,systemd-boot,systemd-boot-efi,udev";

fn only_kernel_version(root: &Path) -> String {
    let mut versions: Vec<String> = std::fs::read_dir(root.join("usr/lib/modules"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    versions.remove(0)
}

fn is_zstd(p: &Path) -> bool {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

#[test]
fn type1_entries_with_systemd_boot() {
    if !enabled("type1_entries_with_systemd_boot") || !is_root() {
        return;
    }
    let _serial = serial();
    let scratch = Scratch::new("type1");
    let dir = scratch.path();
    config_dir(
        dir,
        &format!(
            "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
             [Output]\nFormat=directory\nOutput=image\n\n\
             [Content]\nPackages={KERNEL_PACKAGES}\nBootable=yes\nUnifiedKernelImages=none\n\
             KernelCommandLine=console=ttyS0 quiet\n"
        ),
    );
    build(dir, &["-f"]);
    let root = dir.join("image");
    let kver = only_kernel_version(&root);

    // systemd-boot, the way bootctl installs it.
    let sdboot = std::fs::read(root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi")).unwrap();
    assert_eq!(std::fs::read(root.join("efi/EFI/BOOT/BOOTX64.EFI")).unwrap(), sdboot);
    assert_eq!(std::fs::read(root.join("efi/EFI/systemd/systemd-bootx64.efi")).unwrap(), sdboot);
    assert_eq!(
        std::fs::read_to_string(root.join("efi/loader/loader.conf")).unwrap(),
        "#timeout 3\n#console-mode keep\n"
    );
    assert_eq!(std::fs::read_to_string(root.join("etc/kernel/entry-token")).unwrap(), "debian\n");
    assert!(!root.join("efi/loader/random-seed").exists());
    // The hardware database is generated (with the image's systemd-hwdb when the host has none).
    assert!(root.join("usr/lib/udev/hwdb.bin").exists());
    assert!(!root.join("etc/udev/hwdb.bin").exists());

    // The Type #1 entry, its kernel and initrds.
    let entry = std::fs::read_to_string(root.join(format!("boot/loader/entries/debian-{kver}.conf"))).unwrap();
    assert_eq!(
        entry,
        format!(
            "title debian {kver}\nversion {kver}\nlinux /debian/{kver}/vmlinuz\noptions console=ttyS0 quiet\n\
             initrd /debian/initrd\ninitrd /debian/{kver}/kernel-modules.initrd\n"
        )
    );
    assert_eq!(
        std::fs::read(root.join(format!("boot/debian/{kver}/vmlinuz"))).unwrap(),
        std::fs::read(root.join(format!("usr/lib/modules/{kver}/vmlinuz"))).unwrap()
    );
    // The default initrd (built as its own image) and the modules initrd (zstd for Debian).
    assert!(is_zstd(&root.join("boot/debian/initrd")));
    assert!(is_zstd(&root.join(format!("boot/debian/{kver}/kernel-modules.initrd"))));
    assert!(dir.join("initrd").exists(), "the default initrd is an output of its own");

    // bootctl (the image's own: the host's systemd may be too old, or bootctl not installed)
    // reads the installation. It wants the ESP to be a file system of its own and /boot to be
    // another one (else it ignores XBOOTLDR), so /efi becomes a tmpfs with a copy of its files
    // in a private mount namespace.
    let bootctl = |args: &str| {
        let script = format!(
            "set -e; R='{r}'; T=$(mktemp -d); cp -a \"$R/efi/.\" \"$T/\"; mount -t tmpfs tmpfs \"$R/efi\"; \
             cp -a \"$T/.\" \"$R/efi/\"; rm -rf \"$T\"; \
             SYSTEMD_RELAX_ESP_CHECKS=1 SYSTEMD_XBOOTLDR_PATH=/boot chroot \"$R\" bootctl --esp-path=/efi --no-pager {args}",
            r = root.display()
        );
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
        let o = run(cmd, &format!("bootctl {args}"));
        let out = text(&o);
        assert!(o.status.success(), "bootctl {args}: {out}");
        out
    };
    let out = bootctl("list");
    assert!(out.contains(&format!("debian {kver}")), "bootctl list does not show the entry:\n{out}");
    assert!(out.contains(&format!("/debian/{kver}/vmlinuz")), "{out}");
    assert!(out.contains("on the Extended Boot Loader Partition"), "{out}");
    assert_eq!(bootctl("is-installed").trim(), "yes");
}

/// Section names, sizes and addresses from `objdump -h`.
fn sections(efi: &Path) -> Vec<(String, u64, u64)> {
    let out = tool(&["objdump", "-h", &efi.display().to_string()]);
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 7 && f[0].parse::<u32>().is_ok() {
                Some((f[1].to_string(), u64::from_str_radix(f[2], 16).ok()?, u64::from_str_radix(f[3], 16).ok()?))
            } else {
                None
            }
        })
        .collect()
}

fn section(efi: &Path, name: &str, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(format!("section{name}"));
    tool(&[
        "objcopy",
        "-O",
        "binary",
        &format!("--only-section={name}"),
        &efi.display().to_string(),
        &out.display().to_string(),
    ]);
    std::fs::read(out).unwrap()
}

#[test]
fn signed_uki_output() {
    if !enabled("signed_uki_output") || !is_root() {
        return;
    }
    let _serial = serial();
    let scratch = Scratch::new("uki");
    let dir = scratch.path();
    config_dir(
        dir,
        "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
         [Output]\nFormat=uki\nOutput=image\n\n\
         [Content]\nPackages=linux-image-cloud-amd64,systemd-boot-efi,systemd,udev\n\
         KernelCommandLine=console=ttyS0 rd.systemd.unit=emergency.target\n\n\
         [Validation]\nSecureBoot=yes\nSecureBootKey=mkosi.key\nSecureBootCertificate=mkosi.crt\n",
    );
    assert_success(&mkosi(dir, &["genkey"]));
    build(dir, &["-f"]);
    let efi = dir.join("image.efi");
    let secs = sections(&efi);
    let names: Vec<&str> = secs.iter().map(|(n, _, _)| n.as_str()).collect();
    for want in [".osrel", ".cmdline", ".uname", ".linux", ".initrd", ".sbat"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // Every section is page aligned and none overlap.
    let mut spans: Vec<(u64, u64)> = secs.iter().map(|(_, size, vma)| (*vma, *vma + *size)).collect();
    spans.sort();
    for (vma, _) in &spans {
        assert_eq!(vma % 4096, 0, "{secs:?}");
    }
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping sections: {secs:?}");
    }

    let cmdline = section(&efi, ".cmdline", dir);
    assert_eq!(cmdline, b"console=ttyS0 rd.systemd.unit=emergency.target\0");
    let osrel = String::from_utf8(section(&efi, ".osrel", dir)).unwrap();
    assert!(osrel.contains("ID=debian"), "{osrel}");
    let uname = String::from_utf8(section(&efi, ".uname", dir)).unwrap();
    assert!(uname.contains("cloud-amd64"), "{uname}");

    // The UKI and the kernel inside it are signed with our certificate.
    let cert = dir.join("mkosi.crt").display().to_string();
    tool(&["sbverify", "--cert", &cert, &efi.display().to_string()]);
    tool(&["sbverify", "--cert", &cert, &dir.join("image.vmlinuz").display().to_string()]);
    // The whole image is the initrd, compressed with zstd.
    assert!(is_zstd(&dir.join("image.initrd")));
    assert_eq!(std::fs::read(dir.join("image.initrd")).unwrap(), section(&efi, ".initrd", dir));
}

#[test]
fn bootable_esp_with_uki_bootloader() {
    if !enabled("bootable_esp_with_uki_bootloader") || !is_root() {
        return;
    }
    let _serial = serial();
    let scratch = Scratch::new("esp");
    let dir = scratch.path();
    config_dir(
        dir,
        "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
         [Output]\nFormat=esp\nOutput=image\n\n\
         [Content]\nPackages=linux-image-cloud-amd64,systemd-boot-efi,systemd,udev\n\
         Bootable=yes\nBootloader=uki\nKernelCommandLine=console=ttyS0\n",
    );
    build(dir, &["-f"]);
    let image = dir.join("image.raw");
    // One ESP partition starting at 1 MiB, holding the UKI as the default boot loader.
    let sfdisk = tool(&["sfdisk", "--json", &image.display().to_string()]);
    let table: serde_json::Value = serde_json::from_str(&sfdisk).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{sfdisk}");
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "{sfdisk}");
    assert_eq!(parts[0]["start"], 2048, "{sfdisk}");
    let esp = format!("{}@@1M", image.display());
    let boot = dir.join("BOOTX64.EFI");
    tool(&["mcopy", "-n", "-i", &esp, "::/EFI/BOOT/BOOTX64.EFI", &boot.display().to_string()]);
    let secs = sections(&boot);
    for want in [".osrel", ".cmdline", ".linux", ".initrd"] {
        assert!(secs.iter().any(|(n, _, _)| n == want), "{want} missing from {secs:?}");
    }
    assert_eq!(section(&boot, ".cmdline", dir), b"console=ttyS0\0");
}

#[test]
fn shim_starts_systemd_boot() {
    if !enabled("shim_starts_systemd_boot") || !is_root() {
        return;
    }
    let _serial = serial();
    let scratch = Scratch::new("shim");
    let dir = scratch.path();
    config_dir(
        dir,
        &format!(
            "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
             [Output]\nFormat=directory\nOutput=image\n\n\
             [Content]\nPackages={KERNEL_PACKAGES},shim-signed\nBootable=yes\nShimBootloader=signed\n\
             KernelCommandLine=console=ttyS0\n"
        ),
    );
    build(dir, &["-f"]);
    let root = dir.join("image");
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    // shim, signed by Microsoft, is what the firmware starts; MokManager is next to it, named
    // without the .signed suffix.
    assert_eq!(read("efi/EFI/BOOT/BOOTX64.EFI"), read("usr/lib/shim/shimx64.efi.signed"));
    assert_eq!(read("efi/EFI/BOOT/mmx64.efi"), read("usr/lib/shim/mmx64.efi.signed"));
    let signers = tool(&["sbverify", "--list", &root.join("efi/EFI/BOOT/BOOTX64.EFI").display().to_string()]);
    assert!(signers.contains("Microsoft"), "shim is not signed by Microsoft:\n{signers}");
    // shim starts systemd-boot from its second-stage path.
    let sdboot = read("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    assert_eq!(read("efi/EFI/BOOT/grubx64.EFI"), sdboot);
    assert_eq!(read("efi/EFI/systemd/systemd-bootx64.efi"), sdboot);
    // The kernel is installed as a UKI for systemd-boot to find.
    let kver = only_kernel_version(&root);
    assert!(root.join(format!("boot/EFI/Linux/debian-{kver}.efi")).exists());
}

#[test]
fn addon_output() {
    if !enabled("addon_output") || !is_root() {
        return;
    }
    let _serial = serial();
    let scratch = Scratch::new("addon");
    let dir = scratch.path();
    // The addon stub comes from a Debian tree (the host may not have systemd-boot-efi), copied
    // in with ExtraTrees= and removed from the payload the way the builtin mkosi-addon
    // configuration does it.
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    config_dir(
        &base,
        "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
         [Output]\nFormat=directory\nOutput=image\n\n\
         [Content]\nPackages=systemd-boot-efi\nBootable=no\n",
    );
    build(&base, &["-f"]);
    let efi = base.join("image/usr/lib/systemd/boot/efi");
    assert!(efi.join("addonx64.efi.stub").exists());

    let addon = dir.join("addon");
    std::fs::create_dir_all(&addon).unwrap();
    config_dir(
        &addon,
        &format!(
            "[Distribution]\nDistribution=custom\n\n\
             [Output]\nFormat=addon\nOutput=extra\nManifestFormat=\n\n\
             [Content]\nBootable=no\nKernelCommandLine=console=ttyS0 systemd.log_level=debug\n\
             ExtraTrees={}:/usr/lib/systemd/boot/efi\nRemoveFiles=/usr/lib/systemd/boot/efi/\n",
            efi.display()
        ),
    );
    write(&addon, "mkosi.extra/usr/lib/modules/6.1.0-extra/extra/hello.ko", "not really a module");
    build(&addon, &["-f"]);
    let out = addon.join("extra.efi");
    let data = std::fs::read(&out).unwrap();
    assert_ne!(mkosi_formats::pe::kernel_type(&data), mkosi_formats::pe::KernelType::Uki);
    let secs = sections(&out);
    let names: Vec<&str> = secs.iter().map(|(n, _, _)| n.as_str()).collect();
    for want in [".cmdline", ".initrd", ".sbat"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(!names.contains(&".linux"), "an addon has no kernel: {names:?}");
    assert_eq!(section(&out, ".cmdline", dir), b"console=ttyS0 systemd.log_level=debug\0");
    let sbat = String::from_utf8(section(&out, ".sbat", dir)).unwrap();
    assert!(sbat.contains("uki-addon"), "{sbat}");

    // The payload: the tree as a zstd-compressed cpio archive, without the stub.
    let initrd = dir.join("initrd.zst");
    std::fs::write(&initrd, section(&out, ".initrd", dir)).unwrap();
    assert!(is_zstd(&initrd));
    let plain = dir.join("initrd.cpio");
    tool(&["zstd", "-q", "-d", "-f", &initrd.display().to_string(), "-o", &plain.display().to_string()]);
    let mut cmd = std::process::Command::new("cpio");
    cmd.args(["-i", "-t", "--quiet"]).stdin(std::fs::File::open(&plain).unwrap());
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "cpio -t: {}", text(&o));
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(listing.lines().any(|l| l == "usr/lib/modules/6.1.0-extra/extra/hello.ko"), "{listing}");
    assert!(!listing.contains("addonx64.efi.stub"), "{listing}");
}
