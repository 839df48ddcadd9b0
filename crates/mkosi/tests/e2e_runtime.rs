//! End-to-end tests of the runtime verbs (`MKOSI_E2E=1`, root): `mkosi shell` runs a
//! command in a Debian trixie directory image with systemd-nspawn (credentials,
//! `Ephemeral=`, exit status), `mkosi boot` boots it until it powers off (or is refused
//! with a systemd-nspawn older than 254), and `mkosi burn` writes a disk image to a loop
//! device and refits its GPT.
//!
//! Host tools: systemd-nspawn (systemd-container), losetup, sfdisk (fdisk).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn shell_and_boot_in_a_directory_image() {
    if !enabled("shell_and_boot_in_a_directory_image") || !is_root() {
        return;
    }
    let _serial = serial();
    let scratch = Scratch::new("shell");
    let dir = scratch.path();
    config_dir(
        dir,
        "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
         [Output]\nFormat=directory\nOutput=image\n\n\
         [Content]\nPackages=systemd,udev,dbus\n\n\
         [Runtime]\nCredentials=mkosi.test=hello\n",
    );
    build(dir, &["-f"]);

    // A command in the container, with the user's arguments after `--`.
    let o = mkosi(dir, &["shell", "--", "cat", "/etc/os-release"]);
    assert_success(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|l| l == "ID=debian"), "{}", text(&o));

    // The credentials reach the payload.
    let o = mkosi(
        dir,
        &[
            "shell",
            "--",
            "sh",
            "-c",
            "cat $CREDENTIALS_DIRECTORY/firstboot.locale; echo; cat $CREDENTIALS_DIRECTORY/mkosi.test",
        ],
    );
    assert_success(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().collect::<Vec<_>>(), ["C.UTF-8", "hello"], "{}", text(&o));

    // The command's exit status becomes mkosi's.
    let o = mkosi(dir, &["shell", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));

    // Ephemeral=yes works on a copy that is removed afterwards.
    let o = mkosi(dir, &["--ephemeral=yes", "shell", "--", "touch", "/ephemeral-marker"]);
    assert_success(&o);
    assert!(!dir.join("image/ephemeral-marker").exists());
    let leftovers: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("image-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Without it the image itself is changed.
    assert_success(&mkosi(dir, &["shell", "--", "touch", "/marker"]));
    assert!(dir.join("image/marker").exists());

    // boot: systemd in the container powers it off again.
    let version = tool(&["systemd-nspawn", "--version"]);
    let v: u32 = version.split_whitespace().nth(1).and_then(|v| v.split('.').next()?.parse().ok()).unwrap_or(0);
    let o = mkosi(dir, &["boot", "--", "systemd.unit=poweroff.target"]);
    if v < 254 {
        assert!(!o.status.success());
        assert!(text(&o).contains("version 254 or newer is required to boot images"), "{}", text(&o));
    } else {
        assert_success(&o);
    }
}

#[test]
fn runtime_verbs_refuse_unbuilt_images() {
    if !enabled("runtime_verbs_refuse_unbuilt_images") {
        return;
    }
    let scratch = Scratch::new("unbuilt");
    let dir = scratch.path();
    write(dir, "mkosi.conf", "[Distribution]\nDistribution=custom\n\n[Output]\nFormat=directory\nOutput=image\n");
    for verb in ["shell", "boot", "serve", "burn"] {
        let o = mkosi(dir, &[verb]);
        assert!(!o.status.success());
        assert!(text(&o).contains("Image 'main' has not been built yet"), "{verb}: {}", text(&o));
    }
    let o = mkosi(dir, &["journalctl"]);
    assert!(text(&o).contains("does not exist, cannot inspect with journalctl"), "{}", text(&o));
}

/// A loop device of a file of `size` bytes, detached again on drop.
struct Loop(String);

impl Loop {
    fn new(dir: &Path, name: &str, size: u64) -> Loop {
        let file = dir.join(name);
        std::fs::File::create(&file).unwrap().set_len(size).unwrap();
        let dev = tool(&["losetup", "--find", "--show", file.to_str().unwrap()]);
        Loop(dev.trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn burn_to_a_loop_device() {
    if !enabled("burn_to_a_loop_device") || !is_root() {
        return;
    }
    let scratch = Scratch::new("burn");
    let dir = scratch.path();
    write(dir, "mkosi.conf", "[Distribution]\nDistribution=custom\n\n[Output]\nFormat=disk\nOutput=image\n");

    // The "built" disk image: 16 MiB with two partitions and a marker in the second.
    let img = dir.join("image.raw");
    std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    let mut sfdisk = Command::new("sfdisk");
    sfdisk.arg("--quiet").arg(&img).stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\nstart=10240, size=16384, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root-x86-64\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(10240 * 512)).unwrap();
        f.write_all(b"burnt payload").unwrap();
    }
    std::os::unix::fs::symlink("image.raw", dir.join("image")).unwrap();

    // Refusals: no device, more than one, not a block device, a too small device.
    let o = mkosi(dir, &["burn"]);
    assert!(text(&o).contains("Please specify a device to burn the image to"), "{}", text(&o));
    let o = mkosi(dir, &["burn", "/dev/null", "/dev/null"]);
    assert!(text(&o).contains("Expected device argument."), "{}", text(&o));
    let o = mkosi(dir, &["burn", "/dev/null"]);
    assert!(text(&o).contains("/dev/null is not a block device"), "{}", text(&o));
    let small = Loop::new(dir, "small", 8 << 20);
    let o = mkosi(dir, &["burn", &small.0]);
    assert!(!o.status.success());
    assert!(text(&o).contains("is smaller than the image"), "{}", text(&o));
    drop(small);

    let dev = Loop::new(dir, "medium", 64 << 20);
    let o = mkosi(dir, &["burn", &dev.0]);
    assert_success(&o);
    tool(&["sfdisk", "--verify", &dev.0]);
    let json = tool(&["sfdisk", "--json", &dev.0]);
    let table: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pt = &table["partitiontable"];
    assert_eq!(pt["lastlba"], (64u64 << 20) / 512 - 34, "{json}");
    let parts = pt["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{json}");
    assert_eq!((parts[0]["start"].as_u64(), parts[0]["size"].as_u64()), (Some(2048), Some(8192)));
    assert_eq!((parts[1]["start"].as_u64(), parts[1]["size"].as_u64()), (Some(10240), Some(16384)));
    assert_eq!(parts[1]["name"], "root-x86-64");

    let mut f = std::fs::File::open(&dev.0).unwrap();
    let mut hdr = [0u8; 512];
    f.seek(SeekFrom::Start((64 << 20) - 512)).unwrap();
    f.read_exact(&mut hdr).unwrap();
    assert_eq!(&hdr[..8], b"EFI PART");
    assert_eq!(u64::from_le_bytes(hdr[24..32].try_into().unwrap()), (64u64 << 20) / 512 - 1);
    let mut payload = [0u8; 13];
    f.seek(SeekFrom::Start(10240 * 512)).unwrap();
    f.read_exact(&mut payload).unwrap();
    assert_eq!(&payload, b"burnt payload");
}
