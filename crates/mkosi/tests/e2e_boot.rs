//! End-to-end boots of real Debian trixie images in qemu (`MKOSI_E2E=1`, root).
//!
//! Each image carries a unit, wanted by multi-user.target, that writes a marker
//! line to the serial console and powers the machine off; a test passes when
//! the marker shows up in the serial log. The guests run under KVM when
//! `mkosi_build::qemu::kvm_usable()` says KVM really works here, else under
//! TCG (slow: about a minute to the marker on 2 cores).
//!
//! - `direct_kernel_boot`: a `Format=directory` build with Debian's kernel and
//!   initramfs-tools initrd, copied into an ext4 image with `mkfs.ext4 -d` and
//!   booted with `-kernel/-initrd/-append` under OVMF. It checks the qemu runner,
//!   the firmware discovery and the image's userspace independently of mkosi's
//!   boot loader support.
//! - `uefi_boot_of_a_bootable_disk_image`: `Format=disk` with `Bootable=yes`
//!   (systemd-boot, a UKI with mkosi's initrd), booted from the disk by OVMF
//!   with secure boot support (SMM), the firmware upstream picks for Debian.
//! - `secure_boot_enforcing_with_enrolled_keys`: the same disk image signed
//!   with a `mkosi genkey` key pair (`SecureBoot=yes`, auto-enrollment). The
//!   secure boot firmware starts with its blank variable store (setup mode):
//!   systemd-boot enrolls the keys from `loader/keys/auto` on the ESP and
//!   resets the machine, which then boots with secure boot enforcing, so
//!   systemd-boot, the UKI and the kernel in it must all verify against our
//!   certificate. The log must show the enrollment, the kernel's "Secure boot
//!   enabled" and the marker, in that order. Then the same image with the
//!   firmware whose variable store trusts Microsoft's keys only must be
//!   refused ("Access Denied").
//! - `direct_kernel_boot_with_mkosi_initrd`: the tree of `direct_kernel_boot`,
//!   with an initrd the `mkosi-initrd` tool builds for its kernel (generic,
//!   run against a fake host tree as in `e2e_initrd.rs`) instead of Debian's.
//!
//! ```sh
//! MKOSI_E2E=1 cargo test --release -p mkosi --test e2e_boot -- --test-threads=1 --nocapture
//! ```
//!
//! `MKOSI_E2E_CACHE`, `MKOSI_E2E_TMPDIR` and `MKOSI_E2E_KEEP=1` work as in
//! `e2e.rs`; the serial console log of a failed boot is printed.
//!
//! Host tools: qemu-system-x86 (qemu-system-x86_64), ovmf (firmware and its
//! qemu descriptors), e2fsprogs (mkfs.ext4), mtools (mcopy), and for
//! `mkosi-initrd` unshare and mount (util-linux), zstd and cpio.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use mkosi_build::qemu::{self, Accel, FirmwareQuery, QemuCommand, Serial};

const MARKER: &str = "MKOSI-E2E-BOOT-MARKER-7f3a";

/// A unit that reports a finished boot on the serial console and powers off.
fn marker_unit() -> String {
    format!(
        "[Unit]\n\
         Description=Report a finished boot on the serial console\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/bin/sh -c 'echo {MARKER} >/dev/ttyS0'\n\
         ExecStartPost=/usr/bin/systemctl --no-block poweroff\n"
    )
}

/// An extra tree with the marker unit enabled through a wants symlink.
fn extra_tree(dir: &Path) {
    write(dir, "mkosi.extra/etc/systemd/system/mkosi-e2e-marker.service", &marker_unit());
    let wants = dir.join("mkosi.extra/etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("../mkosi-e2e-marker.service", wants.join("mkosi-e2e-marker.service")).unwrap();
}

/// System configuration that keeps systemd-firstboot from asking anything.
const FIRSTBOOT: &str = "Locale=C.UTF-8\nKeymap=us\nTimezone=UTC\nRootPassword=mkosi\n";

fn usable_for_tests() -> bool {
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipping: the boot tests build x86-64 images");
        return false;
    }
    if !is_root() {
        eprintln!("skipping: the boot tests need root");
        return false;
    }
    true
}

fn accel() -> Accel {
    let probe = qemu::kvm_probe_result();
    let accel = Accel::detect();
    eprintln!("accelerator: {} (KVM probe: {})", accel.name(), probe.reason);
    accel
}

fn timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(180),
        Accel::Tcg => Duration::from_secs(600),
    }
}

/// Boot `cmd`, print how long it took to reach the marker, and fail with the
/// serial log when it never came. Returns the serial log.
fn boot(mut cmd: QemuCommand, dir: &Path, what: &str) -> String {
    let serial = dir.join("serial.log");
    cmd.serial = Serial::File(serial.clone());
    let args: Vec<String> = cmd.args().unwrap().iter().map(|a| a.to_string_lossy().into_owned()).collect();
    eprintln!("{} {}", cmd.qemu, args.join(" "));
    let run = qemu::run_until_marker(&cmd, MARKER, timeout(cmd.accel), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("running qemu: {e}"));
    assert!(
        run.found,
        "{what}: no marker after {:.0?} ({}, qemu {}):\n--- qemu ---\n{}\n--- serial console (tail) ---\n{}",
        run.elapsed,
        cmd.accel.name(),
        run.exit.map(|s| s.to_string()).unwrap_or_else(|| "killed".into()),
        tail(&run.qemu_output, 30),
        tail(&run.serial_log, 80),
    );
    eprintln!(
        "{what}: qemu start to marker in {:.1}s under {}; the guest {}",
        run.elapsed.as_secs_f64(),
        cmd.accel.name(),
        match run.exit {
            Some(s) => format!("powered off ({s})"),
            None => "did not power off within 30s and was stopped".into(),
        }
    );
    run.serial_log
}

/// A private copy of the firmware's variable store in `dir`.
fn firmware(secure_boot: bool, dir: &Path) -> (qemu::Firmware, PathBuf) {
    let fw = qemu::find_firmware(&FirmwareQuery::host(secure_boot)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("firmware: {} ({})", fw.description, fw.descriptor.display());
    let vars = qemu::copy_vars_template(&fw, dir).unwrap_or_else(|e| panic!("{e}"));
    (fw, vars)
}

/// The only file in `dir` whose name starts with `prefix`.
fn only(dir: &Path, prefix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    assert_eq!(found.len(), 1, "{prefix}* in {}: {found:?}", dir.display());
    found.remove(0)
}

/// Builds the `Format=directory` trixie tree the direct kernel boots use
/// (Debian's cloud kernel with its initramfs-tools initrd, systemd, the
/// marker unit) into `dir/image` and returns it.
fn build_directory_tree(dir: &Path) -> PathBuf {
    config_dir(
        dir,
        &format!(
            "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
             [Output]\nFormat=directory\nOutput=image\n\n\
             [Content]\nPackages=linux-image-cloud-amd64,systemd,udev,dbus\nBootable=no\n{FIRSTBOOT}"
        ),
    );
    extra_tree(dir);
    {
        let _serial = serial();
        build(dir, &["-f"]);
    }
    dir.join("image")
}

/// `root` as an ext4 file system labelled `root` (the whole disk, no
/// partition table) in `dir/root.ext4`.
fn ext4_image(root: &Path, dir: &Path) -> PathBuf {
    let img = dir.join("root.ext4");
    let (root_s, img_s) = (root.to_string_lossy(), img.to_string_lossy());
    tool(&["mkfs.ext4", "-q", "-F", "-L", "root", "-d", &root_s, &img_s, "2G"]);
    img
}

/// Boots `kernel` with `initrd` under OVMF (without secure boot) with `disk`
/// as `/dev/vda`, the root file system; returns the serial log.
fn direct_boot(accel: Accel, dir: &Path, kernel: PathBuf, initrd: PathBuf, disk: PathBuf, what: &str) -> String {
    let mut cmd = QemuCommand::new();
    cmd.accel = accel;
    cmd.memory_mib = 1536;
    cmd.firmware = Some(firmware(false, dir));
    cmd.disk = Some(disk);
    cmd.kernel = Some(kernel);
    cmd.initrd = Some(initrd);
    // No systemd-sysv in the image, so no /sbin/init to switch to: name systemd.
    cmd.append = Some("console=ttyS0 root=/dev/vda rw init=/usr/lib/systemd/systemd systemd.firstboot=off".into());
    boot(cmd, dir, what)
}

#[test]
fn direct_kernel_boot() {
    if !enabled("direct_kernel_boot") || !usable_for_tests() {
        return;
    }
    let accel = accel();
    let scratch = Scratch::new("boot-direct");
    let dir = scratch.path();
    let root = build_directory_tree(dir);
    let kernel = only(&root.join("boot"), "vmlinuz-");
    let initrd = only(&root.join("boot"), "initrd.img-");
    let img = ext4_image(&root, dir);
    direct_boot(accel, dir, kernel, initrd, img, "direct kernel boot");
}

/// The image's kernel booted directly with an initrd `mkosi-initrd` built
/// for it (generic: the built-in module list), the root file system found
/// by the initrd's systemd.
#[test]
fn direct_kernel_boot_with_mkosi_initrd() {
    if !enabled("direct_kernel_boot_with_mkosi_initrd") || !usable_for_tests() {
        return;
    }
    let accel = accel();
    let scratch = Scratch::new("boot-mkosi-initrd");
    let dir = scratch.path();
    let root = build_directory_tree(dir);
    let kernel = only(&root.join("boot"), "vmlinuz-");
    let kver = kernel.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();

    // The host mkosi-initrd sees: the kernel's modules (hard links into the
    // tree, whose modules.dep the kernel package made) and the trixie repositories.
    let modules = format!("usr/lib/modules/{kver}");
    let host = dir.join("host");
    std::fs::create_dir_all(host.join("usr/lib/modules")).unwrap();
    tool(&["cp", "-al", &root.join(&modules).display().to_string(), &host.join(&modules).display().to_string()]);
    write(&host, "etc/apt/sources.list.d/debian.sources", SOURCES);
    let work = dir.join("initrd-work");
    let out = dir.join("initrd-out");
    std::fs::create_dir_all(&work).unwrap();
    {
        let _serial = serial();
        let args =
            ["--generic", "--kernel-version", &kver, "--kernel-image", &kernel.display().to_string()].map(Into::into);
        initrd::mkosi_initrd(&host, &work, &out, &args);
    }
    let mkosi_initrd = out.join("initrd");

    // What the initrd needs to find the root file system: the virtio disk
    // driver and ext4, as modules or built into the kernel.
    let (_, members) = initrd::cpio_members(&mkosi_initrd, &work);
    let in_initrd = initrd::modules(&members, &kver);
    let builtin = std::fs::read_to_string(root.join(&modules).join("modules.builtin")).unwrap_or_default();
    for module in ["virtio_blk", "ext4"] {
        let built_in = builtin.lines().any(|l| l.ends_with(&format!("/{module}.ko")));
        assert!(
            in_initrd.contains(module) || built_in,
            "{module} is neither in the initrd ({} modules) nor built into the kernel",
            in_initrd.len()
        );
    }

    let img = ext4_image(&root, dir);
    let log = direct_boot(accel, dir, kernel, mkosi_initrd, img, "direct kernel boot with mkosi-initrd's initrd");
    // mkosi's initrd runs systemd, initramfs-tools' does not.
    assert!(log.contains("Running in initrd"), "{}", tail(&log, 80));
}

#[test]
fn uefi_boot_of_a_bootable_disk_image() {
    if !enabled("uefi_boot_of_a_bootable_disk_image") || !usable_for_tests() {
        return;
    }
    let accel = accel();
    let scratch = Scratch::new("boot-disk");
    let dir = scratch.path();
    config_dir(
        dir,
        &format!(
            "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
             [Output]\nFormat=disk\nOutput=image\n\n\
             [Content]\n\
             Packages=linux-image-cloud-amd64,systemd,systemd-boot,systemd-boot-efi,udev,dbus\n\
             Bootable=yes\nKernelCommandLine=console=ttyS0\n{FIRSTBOOT}"
        ),
    );
    extra_tree(dir);
    {
        let _serial = serial();
        build(dir, &["-f"]);
    }
    let img = dir.join("image.raw");
    assert!(img.is_file(), "no {}", img.display());

    let mut cmd = QemuCommand::new();
    cmd.accel = accel;
    cmd.memory_mib = 1536;
    cmd.firmware = Some(firmware(true, dir));
    cmd.disk = Some(img);
    // The same answers again as credentials, should the image's settings be missed.
    cmd.credentials = vec![("firstboot.locale".into(), "C.UTF-8".into()), ("firstboot.timezone".into(), "UTC".into())];
    boot(cmd, dir, "UEFI boot of the disk image");
}

/// The position of the first of `needles` in `log`, or a failure naming `what`
/// with the serial log.
fn position(log: &str, needles: &[&str], what: &str) -> usize {
    needles
        .iter()
        .filter_map(|n| log.find(n))
        .min()
        .unwrap_or_else(|| panic!("{what}: none of {needles:?} on the serial console:\n{}", tail(log, 80)))
}

#[test]
fn secure_boot_enforcing_with_enrolled_keys() {
    if !enabled("secure_boot_enforcing_with_enrolled_keys") || !usable_for_tests() {
        return;
    }
    let accel = accel();
    let scratch = Scratch::new("boot-sb");
    let dir = scratch.path();
    config_dir(
        dir,
        &format!(
            "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
             [Output]\nFormat=disk\nOutput=image\n\n\
             [Content]\n\
             Packages=linux-image-cloud-amd64,systemd,systemd-boot,systemd-boot-efi,udev,dbus\n\
             Bootable=yes\nKernelCommandLine=console=ttyS0\n{FIRSTBOOT}\n\
             [Validation]\nSecureBoot=yes\nSecureBootKey=mkosi.key\nSecureBootCertificate=mkosi.crt\n"
        ),
    );
    extra_tree(dir);
    assert_success(&mkosi(dir, &["genkey"]));
    {
        let _serial = serial();
        build(dir, &["-f"]);
    }
    let img = dir.join("image.raw");
    assert!(img.is_file(), "no {}", img.display());

    // systemd-boot finds the keys to enroll on the ESP (the first partition, at 1 MiB).
    let esp = format!("{}@@1M", img.display());
    for var in ["PK", "KEK", "db"] {
        let out = dir.join(format!("{var}.auth"));
        tool(&["mcopy", "-n", "-i", &esp, &format!("::/loader/keys/auto/{var}.auth"), &out.display().to_string()]);
        let len = std::fs::metadata(&out).unwrap().len();
        assert!(len > 0, "{var}.auth on the ESP is empty");
    }

    // The secure boot capable firmware with its blank variable store: setup
    // mode, so systemd-boot enrolls the keys and resets the machine, which
    // then boots with secure boot enforcing and must verify every binary.
    let (fw, vars) = firmware(true, dir);
    assert!(fw.secure_boot && !fw.enrolled_keys, "{fw:?}");
    let mut cmd = QemuCommand::new();
    cmd.accel = accel;
    cmd.memory_mib = 1536;
    cmd.firmware = Some((fw, vars));
    cmd.disk = Some(img);
    cmd.credentials = vec![("firstboot.locale".into(), "C.UTF-8".into()), ("firstboot.timezone".into(), "UTC".into())];
    let log = boot(cmd.clone(), dir, "secure boot with enrolled keys");

    let enrolled = position(&log, &["successfully enrolled"], "key enrollment");
    let enforcing = position(&log, &["Secure boot enabled"], "secure boot enforcing");
    let marker = position(&log, &[MARKER], "boot");
    assert!(
        enrolled < enforcing && enforcing < marker,
        "enrollment, then secure boot, then the marker:\n{}",
        tail(&log, 80)
    );
    assert!(!log.contains("Secure boot disabled"), "{}", tail(&log, 80));

    // The other way round: a firmware that trusts Microsoft's keys only
    // refuses our boot loader.
    let query = FirmwareQuery { enrolled_keys: true, ..FirmwareQuery::host(true) };
    let fw = qemu::find_firmware(&query).unwrap_or_else(|e| panic!("{e}"));
    let other = dir.join("ms-keys");
    std::fs::create_dir_all(&other).unwrap();
    let vars = qemu::copy_vars_template(&fw, &other).unwrap_or_else(|e| panic!("{e}"));
    cmd.firmware = Some((fw, vars));
    cmd.serial = Serial::File(other.join("serial.log"));
    let run = qemu::run_until_marker(&cmd, "Access Denied", Duration::from_secs(180), Duration::ZERO)
        .unwrap_or_else(|e| panic!("running qemu: {e}"));
    assert!(
        run.found && !run.serial_log.contains("Enrolling") && !run.serial_log.contains(MARKER),
        "the firmware with Microsoft's keys does not deny our boot loader (after {:.0?}):\n{}",
        run.elapsed,
        tail(&run.serial_log, 40)
    );
    eprintln!("firmware with Microsoft's keys denied the boot loader after {:.1}s", run.elapsed.as_secs_f64());
}
