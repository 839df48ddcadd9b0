//! `mkosi burn DEVICE`: write the disk image to a block device and refit the GPT to
//! the device, so the backup header sits at its last sector and the usable area
//! spans the whole medium.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use mkosi_config::config::Config;
use mkosi_config::enums::OutputFormat;
use mkosi_config::parse::log;
use mkosi_config::Args;
use mkosi_formats::gpt;

// <linux/fs.h>
const BLKRRPART: libc::c_ulong = 0x125F;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// `major:minor` of a device number.
fn dev_string(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// The devices (`major:minor`) that are the disk `disk` or one of its partitions,
/// according to sysfs below `sys` (`/sys`).
pub fn disk_and_partitions(sys: &Path, disk: u64) -> Vec<String> {
    let mut out = vec![dev_string(disk)];
    let Ok(node) = sys.join("dev/block").join(dev_string(disk)).canonicalize() else { return out };
    if let Ok(rd) = std::fs::read_dir(&node) {
        for e in rd.flatten() {
            if e.path().join("partition").exists() {
                if let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) {
                    out.push(dev.trim().to_string());
                }
            }
        }
    }
    out
}

/// The mount points in `mountinfo` whose source is one of `devices` (`major:minor`).
pub fn mounted_from(mountinfo: &str, devices: &[String]) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let dev = w.nth(2)?;
            let mnt = w.nth(1)?;
            devices.iter().any(|d| d == dev).then(|| mnt.to_string())
        })
        .collect()
}

/// The active swap devices (`major:minor`) in `/proc/swaps`.
fn swap_devices(swaps: &str) -> Vec<String> {
    swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| m.file_type().is_block_device())
        .map(|m| dev_string(m.rdev()))
        .collect()
}

/// Refuse devices that are no block devices, or that are (or have partitions that
/// are) mounted or used as swap.
pub fn check_device(device: &Path, sys: &Path, mountinfo: &str, swaps: &str) -> Result<u64> {
    let md = std::fs::metadata(device).with_context(|| format!("{} does not exist", device.display()))?;
    if !md.file_type().is_block_device() {
        bail!("{} is not a block device", device.display());
    }
    let devices = disk_and_partitions(sys, md.rdev());
    if let Some(m) = mounted_from(mountinfo, &devices).first() {
        bail!("{} is in use: it (or one of its partitions) is mounted on {m}", device.display());
    }
    if swap_devices(swaps).iter().any(|s| devices.contains(s)) {
        bail!("{} is in use: it (or one of its partitions) is used as swap", device.display());
    }
    Ok(md.rdev())
}

fn ioctl_u64(f: &File, req: libc::c_ulong) -> std::io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: the request writes one u64 into v.
    if unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut v as *mut u64) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn ioctl_int(f: &File, req: libc::c_ulong) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int into v.
    if unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut v as *mut libc::c_int) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// The size of `target` (block device or file) and its logical sector size.
fn target_geometry(f: &mut File, block: bool) -> Result<(u64, Option<u64>)> {
    if block {
        let size = ioctl_u64(f, BLKGETSIZE64).context("BLKGETSIZE64")?;
        let ss = ioctl_int(f, BLKSSZGET).context("BLKSSZGET")?;
        return Ok((size, Some(ss as u64)));
    }
    Ok((f.seek(SeekFrom::End(0))?, None))
}

/// Copy the image (without its backup GPT) to `target` and write a GPT that fits
/// the target. `target` must be at least as large as the image.
pub fn burn(image: &Path, target: &mut File, target_name: &Path, block: bool) -> Result<()> {
    let mut img = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let image_size = img.metadata()?.len();
    let (target_size, target_ss) = target_geometry(target, block)?;
    if target_size < image_size {
        bail!(
            "{} ({target_size} bytes) is smaller than the image {} ({image_size} bytes)",
            target_name.display(),
            image.display()
        );
    }
    let ss = gpt::probe_sector_size(&mut img).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
    let (disk_uuid, entries) = gpt::read(&mut img, ss).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
    let ss = target_ss.unwrap_or(ss);
    if let Some(e) = entries.iter().find(|e| e.offset % ss != 0 || e.size % ss != 0) {
        bail!(
            "Partition {} of {} is not aligned to the {ss} byte sectors of {}",
            e.partno + 1,
            image.display(),
            target_name.display()
        );
    }
    // Everything up to the end of the last partition; the backup table is written anew.
    let end = entries.iter().map(|e| e.offset + e.size).max().unwrap_or(0).max(gpt::first_usable_byte(ss));
    let end = end.min(image_size);
    img.seek(SeekFrom::Start(0))?;
    target.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut left = end;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        img.read_exact(&mut buf[..n]).with_context(|| format!("reading {}", image.display()))?;
        target.write_all(&buf[..n]).with_context(|| format!("writing {}", target_name.display()))?;
        left -= n as u64;
    }
    gpt::write(target, ss, disk_uuid, &entries).map_err(|e| anyhow::anyhow!("{}: {e}", target_name.display()))?;
    target.sync_all().with_context(|| format!("syncing {}", target_name.display()))?;
    Ok(())
}

pub fn run_burn(args: &Args, config: &Config, cwd: &Path) -> Result<()> {
    if !matches!(config.output_format(), OutputFormat::Disk | OutputFormat::Esp) {
        bail!("{} images cannot be burned to disk", config.output_format());
    }
    let device = match args.cmdline.as_slice() {
        [] => {
            return Err(super::die(
                "Please specify a device to burn the image to",
                "For example /dev/disk/by-id/usb-foobar",
            ))
        }
        [d] => PathBuf::from(d),
        _ => bail!("Expected device argument."),
    };
    let image = config.output_dir_or_cwd(cwd).join(config.output());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    check_device(&device, Path::new("/sys"), &mountinfo, &swaps)?;
    let _lock = super::flock_or_die(&image)?;

    log::info("Burning 🔥🔥🔥 to medium…");
    // O_EXCL on a block device fails while the kernel uses it (mounted, in a RAID…).
    let mut dev = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(&device)
        .with_context(|| format!("opening {} (is it in use, or are you not root?)", device.display()))?;
    burn(&image, &mut dev, &device, true)?;
    // Let the kernel see the new partitions; loop devices without partition scanning refuse.
    // SAFETY: BLKRRPART takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKRRPART as _, 0) } != 0 {
        log::debug(&format!(
            "Re-reading the partition table of {} failed: {}",
            device.display(),
            std::io::Error::last_os_error()
        ));
    }
    log::info("Burnt. 🔥🔥🔥");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_matching() {
        let mi = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                  30 22 8:17 / /mnt/usb rw - vfat /dev/sdb1 rw\n\
                  31 22 0:5 / /dev rw - devtmpfs udev rw\n";
        assert_eq!(mounted_from(mi, &["8:16".into(), "8:17".into()]), ["/mnt/usb"]);
        assert_eq!(mounted_from(mi, &["8:16".into()]), Vec::<String>::new());
        assert_eq!(mounted_from(mi, &["8:2".into()]), ["/"]);
    }

    #[test]
    fn partitions_from_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let disk = sys.path().join("devices/virtual/block/loop7");
        for (p, dev) in [("loop7p1", "259:1"), ("loop7p2", "259:2")] {
            std::fs::create_dir_all(disk.join(p)).unwrap();
            std::fs::write(disk.join(p).join("partition"), "1\n").unwrap();
            std::fs::write(disk.join(p).join("dev"), format!("{dev}\n")).unwrap();
        }
        std::fs::create_dir_all(disk.join("queue")).unwrap();
        std::fs::create_dir_all(sys.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.path().join("dev/block/7:7")).unwrap();
        let mut got = disk_and_partitions(sys.path(), libc::makedev(7, 7));
        got.sort();
        assert_eq!(got, ["259:1", "259:2", "7:7"]);
    }

    #[test]
    fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = check_device(&file, Path::new("/sys"), "", "").err().unwrap();
        assert_eq!(err.to_string(), format!("{} is not a block device", file.display()));
        let err = check_device(&dir.path().join("nope"), Path::new("/sys"), "", "").err().unwrap();
        assert!(err.to_string().ends_with("does not exist"), "{err}");

        // A block device whose partition is mounted (a fake sysfs with the device's number).
        let Some(dev) = std::fs::read_dir("/dev")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device()))
        else {
            return;
        };
        let rdev = std::fs::metadata(&dev).unwrap().rdev();
        let sys = tempfile::tempdir().unwrap();
        let node = sys.path().join("devices/x");
        std::fs::create_dir_all(node.join("xp1")).unwrap();
        std::fs::write(node.join("xp1/partition"), "1").unwrap();
        std::fs::write(node.join("xp1/dev"), "250:1").unwrap();
        std::fs::create_dir_all(sys.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&node, sys.path().join("dev/block").join(dev_string(rdev))).unwrap();
        let mi = "30 22 250:1 / /mnt/usb rw - vfat /dev/xp1 rw\n";
        let err = check_device(&dev, sys.path(), mi, "").err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("{} is in use: it (or one of its partitions) is mounted on /mnt/usb", dev.display())
        );
        assert_eq!(check_device(&dev, sys.path(), "", "").unwrap(), rdev);
    }

    fn image_with_partition(path: &Path, size: u64) -> gpt::Entry {
        let mut f = File::create(path).unwrap();
        f.set_len(size).unwrap();
        let e = gpt::Entry {
            partno: 0,
            type_uuid: gpt::parse_id128("0fc63daf-8483-4772-8e79-3d69d8477de4").unwrap(),
            uuid: gpt::parse_id128("11111111-2222-3333-4444-555555555555").unwrap(),
            offset: 1 << 20,
            size: 2 << 20,
            label: "data".into(),
            flags: 0,
        };
        gpt::write(
            &mut f,
            512,
            gpt::parse_id128("aaaaaaaa-2222-3333-4444-555555555555").unwrap(),
            std::slice::from_ref(&e),
        )
        .unwrap();
        f.seek(SeekFrom::Start(e.offset)).unwrap();
        f.write_all(b"partition payload").unwrap();
        e
    }

    #[test]
    fn burn_refits_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("image.raw");
        let e = image_with_partition(&img, 4 << 20);
        let target = dir.path().join("target");
        let mut t = File::options().read(true).write(true).create(true).truncate(true).open(&target).unwrap();
        t.set_len(16 << 20).unwrap();
        burn(&img, &mut t, &target, false).unwrap();
        drop(t);

        let mut t = File::open(&target).unwrap();
        let (uuid, entries) = gpt::read(&mut t, 512).unwrap();
        assert_eq!(uuid, gpt::parse_id128("aaaaaaaa-2222-3333-4444-555555555555").unwrap());
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].offset, entries[0].size, entries[0].label.as_str()), (e.offset, e.size, "data"));
        // The backup header is in the last sector, and points back at LBA 1.
        let mut hdr = [0u8; 512];
        t.seek(SeekFrom::Start((16 << 20) - 512)).unwrap();
        t.read_exact(&mut hdr).unwrap();
        assert_eq!(&hdr[..8], b"EFI PART");
        let lba = |o: usize| u64::from_le_bytes(hdr[o..o + 8].try_into().unwrap());
        assert_eq!((lba(24), lba(32)), ((16 << 20) / 512 - 1, 1));
        // Last usable LBA is right before the backup entries.
        assert_eq!(lba(48), (16 << 20) / 512 - 34);
        let mut payload = [0u8; 17];
        t.seek(SeekFrom::Start(e.offset)).unwrap();
        t.read_exact(&mut payload).unwrap();
        assert_eq!(&payload, b"partition payload");

        // Too small.
        let small = dir.path().join("small");
        let mut s = File::options().read(true).write(true).create(true).truncate(true).open(&small).unwrap();
        s.set_len(2 << 20).unwrap();
        let err = burn(&img, &mut s, &small, false).err().unwrap();
        assert!(err.to_string().contains("is smaller than the image"), "{err}");
    }
}
