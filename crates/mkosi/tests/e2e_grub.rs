//! End-to-end test of grub (`MKOSI_E2E=1`, root): a Debian trixie `Format=disk` image with
//! `Bootloader=grub` and `BiosBootloader=grub`, booted in qemu twice from the same image:
//!
//! - with SeaBIOS: the boot sector and core image grub-bios-setup wrote into the MBR and the
//!   BIOS boot partition load `grub.cfg` from the ESP and boot the Type #1 entry (kernel,
//!   initrds and `root=PARTUUID=` on the command line);
//! - with OVMF: grub's EFI binary at `EFI/BOOT/BOOTX64.EFI` chainloads the UKI (the image has
//!   systemd-stub, so kernels are installed as UKIs too).
//!
//! The image carries a unit that writes a marker to the serial console and powers off; each
//! boot must reach it. Guests run under KVM when it really works here, else under TCG (about
//! two minutes per boot).
//!
//! ```sh
//! MKOSI_E2E=1 cargo test --release -p mkosi --test e2e_grub -- --nocapture
//! ```
//!
//! Host tools: qemu-system-x86 (qemu-system-x86_64, SeaBIOS), ovmf. The grub tools come from
//! the image (grub-common, grub-pc-bin are pulled in by the module packages).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use mkosi_build::qemu::{self, Accel, FirmwareQuery, QemuCommand, Serial};

const MARKER: &str = "MKOSI-E2E-GRUB-MARKER-51c9";

const PACKAGES: &str = "linux-image-cloud-amd64,systemd,udev,dbus,systemd-boot-efi,grub-efi-amd64-bin,grub-pc-bin";

fn extra_tree(dir: &Path) {
    write(
        dir,
        "mkosi.extra/etc/systemd/system/grub-marker.service",
        &format!(
            "[Unit]\nDescription=Report a finished boot on the serial console\n\n\
             [Service]\nType=oneshot\n\
             ExecStart=/bin/sh -c 'echo {MARKER} >/dev/ttyS0'\n\
             ExecStartPost=/usr/bin/systemctl --no-block poweroff\n"
        ),
    );
    let wants = dir.join("mkosi.extra/etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("../grub-marker.service", wants.join("grub-marker.service")).unwrap();
}

/// Boots `cmd` until the marker and returns the serial console log; fails with the logs when
/// the marker never comes.
fn boot(mut cmd: QemuCommand, dir: &Path, what: &str) -> String {
    let serial = dir.join(format!("serial-{what}.log"));
    cmd.serial = Serial::File(serial);
    let timeout = match cmd.accel {
        Accel::Kvm => Duration::from_secs(180),
        Accel::Tcg => Duration::from_secs(600),
    };
    let args: Vec<String> = cmd.args().unwrap().iter().map(|a| a.to_string_lossy().into_owned()).collect();
    eprintln!("{} {}", cmd.qemu, args.join(" "));
    let run = qemu::run_until_marker(&cmd, MARKER, timeout, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("running qemu: {e}"));
    assert!(
        run.found,
        "{what}: no marker after {:.0?} ({}):\n--- qemu ---\n{}\n--- serial console (tail) ---\n{}",
        run.elapsed,
        cmd.accel.name(),
        tail(&run.qemu_output, 30),
        tail(&run.serial_log, 80),
    );
    eprintln!("{what}: marker after {:.1}s under {}", run.elapsed.as_secs_f64(), cmd.accel.name());
    run.serial_log
}

#[test]
fn grub_boots_with_bios_and_uefi() {
    if !enabled("grub_boots_with_bios_and_uefi") {
        return;
    }
    if !is_root() || std::env::consts::ARCH != "x86_64" {
        eprintln!("skipping grub_boots_with_bios_and_uefi: needs root on x86-64");
        return;
    }
    let scratch = Scratch::new("grub");
    let dir = scratch.path();
    config_dir(
        dir,
        &format!(
            "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
             [Output]\nFormat=disk\nOutput=image\n\n\
             [Content]\nPackages={PACKAGES}\nBootable=yes\nBootloader=grub\nBiosBootloader=grub\n\
             KernelCommandLine=console=ttyS0\n\
             Locale=C.UTF-8\nKeymap=us\nTimezone=UTC\nRootPassword=mkosi\n"
        ),
    );
    extra_tree(dir);
    {
        let _serial = serial();
        build(dir, &["-f"]);
    }
    let image = dir.join("image.raw");

    // grub-bios-setup put grub's boot sector in the MBR (the partition table stays).
    let disk = std::fs::read(&image).unwrap();
    assert!(disk[..440].windows(4).any(|w| w == b"GRUB"), "no grub boot sector in the MBR");
    assert_eq!(&disk[510..512], &[0x55, 0xaa]);

    let accel = Accel::detect();
    eprintln!("accelerator: {} (KVM probe: {})", accel.name(), qemu::kvm_probe_result().reason);

    // BIOS (qemu's default firmware, SeaBIOS): the Type #1 entry.
    let mut cmd = QemuCommand::new();
    cmd.accel = accel;
    cmd.disk = Some(image.clone());
    cmd.extra_args = vec!["-snapshot".into()];
    let log = boot(cmd, dir, "bios");
    assert!(log.contains("Booting `debian-"), "grub did not boot a menu entry:\n{}", tail(&log, 40));
    assert!(
        log.contains("Command line: BOOT_IMAGE=/debian/") && log.contains("root=PARTUUID="),
        "not the Type #1 entry:\n{}",
        tail(&log, 40)
    );

    // UEFI (OVMF): grub's EFI binary chainloads the UKI, whose command line is embedded.
    let fw = qemu::find_firmware(&FirmwareQuery::host(false)).unwrap_or_else(|e| panic!("{e}"));
    let vars = qemu::copy_vars_template(&fw, dir).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = QemuCommand::new();
    cmd.accel = accel;
    cmd.firmware = Some((fw, vars));
    cmd.disk = Some(image);
    cmd.extra_args = vec!["-snapshot".into()];
    let log = boot(cmd, dir, "uefi");
    assert!(log.contains("Booting `debian-"), "grub did not boot a menu entry:\n{}", tail(&log, 40));
    assert!(log.contains("Command line: console=ttyS0"), "not the UKI:\n{}", tail(&log, 40));
    assert!(!log.contains("BOOT_IMAGE="), "UEFI grub booted the Type #1 entry, not the UKI");
}
