//! Disk images assembled in-process, checked with the real tools: `sfdisk --json` for the
//! partition table, each filesystem's fsck, `veritysetup verify` with our root hash, and (as
//! root, which loop devices need) `systemd-dissect` for designators, mounting and extensions.
//!
//! The tools come from Debian packages `scripts/test.sh` installs: fdisk, e2fsprogs,
//! dosfstools, mtools, erofs-utils, squashfs-tools, btrfs-progs, xfsprogs, cryptsetup-bin,
//! systemd-container and openssl. A missing tool fails the test, naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mkosi_build::repart::{make_image, PartitionResult, RepartRequest};
use mkosi_config::enums::{CertificateSourceType, KeySourceType};

fn tool(name: &str) -> Command {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(name).exists())).unwrap_or(false)
            || Path::new("/usr/sbin").join(name).exists()
            || Path::new("/sbin").join(name).exists();
    assert!(found, "{name} is not installed (scripts/test.sh installs the tools these tests need)");
    let mut c = Command::new(name);
    c.env("PATH", format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default()));
    c
}

fn run(mut c: Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn write(root: &Path, files: &[(&str, &str)]) {
    for (p, content) in files {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    defs: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::Builder::new().prefix("mkosi-repart-test").tempdir_in("/var/tmp").unwrap();
    let base = dir.path().to_path_buf();
    let root = base.join("root");
    write(
        &root,
        &[
            ("usr/lib/os-release", "ID=test\nVERSION_ID=1\n"),
            ("usr/bin/hello", "#!/bin/sh\necho hello\n"),
            ("usr/share/doc/big", &"x".repeat(3 << 20)),
            ("etc/hostname", "repart-test\n"),
            ("boot/vmlinuz-test", "kernel"),
            ("efi/EFI/BOOT/BOOTX64.EFI", "efi binary"),
            ("home/user/file", "home"),
            ("srv/data", "served"),
            ("tmp/junk", "must not be in the image"),
            ("var/tmp/junk", "must not be in the image"),
        ],
    );
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    let defs = base.join("defs");
    std::fs::create_dir_all(&defs).unwrap();
    Fixture { _dir: dir, base, root, defs }
}

fn request(f: &Fixture, output: &str) -> RepartRequest {
    RepartRequest {
        root: f.root.clone(),
        definitions: vec![f.defs.clone()],
        output: f.base.join(output),
        seed: uuid::Uuid::parse_str("0123456789abcdef0123456789abcdef").unwrap(),
        architecture: "x86-64".into(),
        foreign: false,
        sector_size: None,
        defer: Vec::new(),
        exclude: Vec::new(),
        split: true,
        generate_fstab: false,
        verity_key: None,
        verity_certificate: None,
        verity_key_source: KeySourceType::File,
        verity_certificate_source: CertificateSourceType::File,
        workspace: f.base.clone(),
        source_date_epoch: Some(1_700_000_000),
        environment: BTreeMap::new(),
    }
}

fn sfdisk(image: &Path) -> serde_json::Value {
    let mut c = tool("sfdisk");
    c.arg("--json").arg(image);
    serde_json::from_str(&run(c)).unwrap()
}

fn keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let mut c = tool("openssl");
    c.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mkosi test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    run(c);
    (key, cert)
}

fn part<'a>(parts: &'a [PartitionResult], t: &str) -> &'a PartitionResult {
    parts.iter().find(|p| p.type_name == t).unwrap_or_else(|| panic!("no {t} partition in {parts:?}"))
}

fn fsck(fstype: &str, file: &Path) {
    let mut c = match fstype {
        "ext4" => {
            let mut c = tool("e2fsck");
            c.arg("-fn");
            c
        }
        "vfat" => {
            let mut c = tool("fsck.vfat");
            c.arg("-n");
            c
        }
        "erofs" => tool("fsck.erofs"),
        "btrfs" => {
            let mut c = tool("btrfs");
            c.args(["check", "--readonly"]);
            c
        }
        "xfs" => {
            let mut c = tool("xfs_repair");
            c.arg("-n");
            c
        }
        "swap" => {
            let mut c = tool("swaplabel");
            c.arg("--label").arg("swap");
            // swaplabel writes; check on a copy.
            let copy = file.with_extension("check");
            std::fs::copy(file, &copy).unwrap();
            c.arg(&copy);
            run(c);
            return;
        }
        other => panic!("no fsck for {other}"),
    };
    c.arg(file);
    run(c);
}

fn blkid(file: &Path) -> BTreeMap<String, String> {
    let mut c = tool("blkid");
    c.args(["-p", "-o", "export"]).arg(file);
    run(c).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn disk_with_every_kind_of_partition() {
    let f = fixture();
    let (key, cert) = keypair(&f.base);
    write(
        &f.defs,
        &[
            ("00-esp.conf", "[Partition]\nType=esp\nFormat=vfat\nCopyFiles=/boot:/\nCopyFiles=/efi:/\nSizeMinBytes=260M\nSizeMaxBytes=260M\n"),
            ("10-usr.conf", "[Partition]\nType=usr\nFormat=erofs\nCopyFiles=/usr:/\nVerity=data\nVerityMatchKey=usr\nMinimize=best\n"),
            ("11-usr-verity.conf", "[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\nMinimize=best\n"),
            ("12-usr-verity-sig.conf", "[Partition]\nType=usr-verity-sig\nVerity=signature\nVerityMatchKey=usr\n"),
            ("20-root.conf", "[Partition]\nType=root\nFormat=ext4\nCopyFiles=/\nMinimize=guess\nMakeDirectories=/mnt/extra\nExcludeFiles=/etc/hostname\n"),
            ("30-swap.conf", "[Partition]\nType=swap\nSizeMinBytes=8M\nSizeMaxBytes=8M\n"),
            ("40-home.conf", "[Partition]\nType=home\nFormat=btrfs\nCopyFiles=/home\nSizeMinBytes=128M\n"),
            ("50-srv.conf", "[Partition]\nType=srv\nFormat=xfs\nCopyFiles=/srv\nSizeMinBytes=300M\n"),
        ],
    );
    let mut req = request(&f, "image.raw");
    req.verity_key = Some(key);
    req.verity_certificate = Some(cert.clone());
    let parts = make_image(&req).unwrap();
    let image = f.base.join("image.raw");

    // The partition table as sfdisk reads it.
    let table = sfdisk(&image);
    let pt = &table["partitiontable"];
    assert_eq!(pt["label"], "gpt");
    assert_eq!(pt["id"].as_str().unwrap().to_lowercase(), "6913f4b6-6690-4a57-a202-f1b53c56dbdf");
    let entries = pt["partitions"].as_array().unwrap();
    assert_eq!(entries.len(), 8);
    let types: Vec<String> = entries.iter().map(|e| e["type"].as_str().unwrap().to_lowercase()).collect();
    assert_eq!(
        types,
        vec![
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", // esp
            "8484680c-9521-48c6-9c11-b0720656f69e", // usr-x86-64
            "77ff5f63-e7b6-4633-acf4-1565b864c0e6", // usr-x86-64-verity
            "e7bb33fb-06cf-4e81-8273-e543b413e2e2", // usr-x86-64-verity-sig
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", // root-x86-64
            "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", // swap
            "933ac7e1-2eb4-4f13-b844-0e14e2aef915", // home
            "3b8f8425-20e0-4f3b-907f-1a25a76f98e8", // srv
        ]
    );
    let mut end = 0;
    for (e, p) in entries.iter().zip(&parts) {
        let start = e["start"].as_u64().unwrap() * 512;
        let size = e["size"].as_u64().unwrap() * 512;
        assert_eq!(start % 4096, 0, "aligned");
        assert_eq!(size % 4096, 0, "aligned");
        assert!(start >= end, "no overlap");
        end = start + size;
        assert_eq!((start, size), (p.offset, p.size));
        assert_eq!(e["uuid"].as_str().unwrap().to_lowercase(), p.uuid.hyphenated().to_string());
        assert_eq!(e["name"].as_str().unwrap(), p.label);
    }
    assert_eq!(entries[0]["size"].as_u64().unwrap() * 512, 260 << 20);
    assert_eq!(entries[5]["size"].as_u64().unwrap() * 512, 8 << 20);
    assert_eq!(entries[4]["attrs"], "GUID:59", "root grows");
    assert_eq!(entries[1]["attrs"], "GUID:60", "usr with verity is read-only");

    // Verity: the hash partition verifies the data partition with our root hash, the UUIDs
    // come from the root hash, the signature partition carries it.
    let usr = part(&parts, "usr-x86-64");
    let hash = part(&parts, "usr-x86-64-verity");
    let sig = part(&parts, "usr-x86-64-verity-sig");
    let roothash = usr.roothash.clone().unwrap();
    assert_eq!(roothash.len(), 64);
    assert_eq!(hash.roothash.as_deref(), Some(roothash.as_str()));
    assert_eq!(usr.uuid.simple().to_string(), roothash[..32]);
    assert_eq!(hash.uuid.simple().to_string(), roothash[32..]);
    let mut c = tool("veritysetup");
    c.arg("verify").arg(usr.split_path.as_ref().unwrap()).arg(hash.split_path.as_ref().unwrap()).arg(&roothash);
    run(c);
    let content = std::fs::read(sig.split_path.as_ref().unwrap()).unwrap();
    assert_eq!(content.len(), 16384);
    let text = String::from_utf8_lossy(&content).trim_end_matches('\0').to_string();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["rootHash"], roothash.as_str());

    // Every filesystem is clean and labelled as repart labels it.
    for (t, fs) in [
        ("esp", "vfat"),
        ("usr-x86-64", "erofs"),
        ("root-x86-64", "ext4"),
        ("swap", "swap"),
        ("home", "btrfs"),
        ("srv", "xfs"),
    ] {
        let p = part(&parts, t);
        let file = p.split_path.as_ref().unwrap();
        fsck(fs, file);
        let id = blkid(file);
        assert_eq!(id.get("TYPE").map(String::as_str), Some(fs), "{t}: {id:?}");
        // repart gives erofs no label; vfat labels are upper-cased FAT volume labels.
        if fs != "vfat" && fs != "erofs" {
            assert_eq!(id.get("LABEL").map(String::as_str), Some(p.label.as_str()), "{t}: {id:?}");
        }
    }

    // Contents: the root has the tree minus excluded files, directories of the other
    // partitions are empty mount points, and the ESP has /boot and /efi.
    let root_fs = part(&parts, "root-x86-64").split_path.clone().unwrap();
    let ls = |dir: &str| {
        let mut c = tool("debugfs");
        c.arg("-R").arg(format!("ls -p {dir}")).arg(&root_fs);
        run(c)
    };
    assert!(ls("/etc").contains("/os-release/"));
    assert!(!ls("/etc").contains("/hostname/"), "ExcludeFiles=");
    assert!(ls("/mnt").contains("/extra/"), "MakeDirectories=");
    assert!(!ls("/usr").contains("/bin/"), "/usr belongs to the usr partition");
    assert!(!ls("/boot").contains("vmlinuz"), "/boot belongs to the ESP");
    assert!(!ls("/tmp").contains("junk"), "/tmp is empty");
    assert!(!ls("/home").contains("user"), "/home belongs to its partition");
    let esp = part(&parts, "esp").split_path.clone().unwrap();
    let mut c = tool("mdir");
    c.arg("-i").arg(&esp).arg("-b").arg("::/EFI/BOOT");
    assert!(run(c).contains("BOOTX64.EFI"));

    // The kernel's view, through systemd-dissect (loop devices need root).
    if is_root() {
        let mut c = tool("systemd-dissect");
        c.arg("--json=short").arg(&image);
        let d: serde_json::Value = serde_json::from_str(&run(c)).unwrap();
        let designators: Vec<&str> =
            d["mounts"].as_array().unwrap().iter().map(|m| m["designator"].as_str().unwrap()).collect();
        for want in ["root", "usr", "esp", "swap", "home", "srv", "usr-verity"] {
            assert!(designators.contains(&want), "{want} in {designators:?}");
        }
        // Mount partitions read-only (each on its own: this kernel may lack vfat, which
        // mounting the whole image with systemd-dissect --mount would need for the ESP).
        let mount = |file: &Path, dir: &str, check: &dyn Fn(&Path)| {
            let mnt = f.base.join(dir);
            std::fs::create_dir_all(&mnt).unwrap();
            let mut c = tool("mount");
            c.args(["-o", "ro,loop"]).arg(file).arg(&mnt);
            run(c);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mnt)));
            let mut c = tool("umount");
            c.arg(&mnt);
            run(c);
            if let Err(e) = r {
                std::panic::resume_unwind(e);
            }
        };
        mount(usr.split_path.as_ref().unwrap(), "mnt-usr", &|m| {
            assert_eq!(std::fs::read_to_string(m.join("bin/hello")).unwrap(), "#!/bin/sh\necho hello\n");
        });
        mount(&root_fs, "mnt-root", &|m| {
            assert!(std::fs::read_to_string(m.join("usr/lib/os-release")).is_err(), "usr is elsewhere");
            assert!(m.join("mnt/extra").is_dir());
            assert_eq!(std::fs::read_link(m.join("etc/os-release")).unwrap(), Path::new("../usr/lib/os-release"));
        });
    } else {
        eprintln!("not root: skipping the systemd-dissect checks (CI runs them as root)");
    }
}

#[test]
fn deferred_partitions_are_filled_in_by_a_second_pass() {
    let f = fixture();
    write(
        &f.defs,
        &[
            ("00-esp.conf", "[Partition]\nType=esp\nFormat=vfat\nCopyFiles=/boot:/\nCopyFiles=/efi:/\nSizeMinBytes=260M\nSizeMaxBytes=260M\n"),
            ("10-root.conf", "[Partition]\nType=root\nFormat=ext4\nCopyFiles=/\nMinimize=guess\n"),
        ],
    );
    let mut req = request(&f, "two.raw");
    req.split = false;
    req.defer = vec!["esp".into(), "xbootldr".into()];
    let first = make_image(&req).unwrap();
    assert!(part(&first, "esp").deferred);
    let t = sfdisk(&req.output);
    assert_eq!(t["partitiontable"]["partitions"].as_array().unwrap().len(), 1, "the ESP is not in the table yet");

    // The boot loader lands in /efi between the passes.
    write(&f.root, &[("efi/loader/loader.conf", "timeout 0\n")]);
    req.defer.clear();
    let second = make_image(&req).unwrap();
    assert_eq!(part(&second, "root-x86-64").activity, "unchanged");
    assert_eq!(part(&second, "esp").activity, "create");

    // The same layout as building everything at once.
    let mut once = request(&f, "once.raw");
    once.split = false;
    make_image(&once).unwrap();
    let a = sfdisk(&req.output);
    let b = sfdisk(&once.output);
    let strip = |v: &serde_json::Value| {
        v["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["start"].clone(), p["size"].clone(), p["type"].clone(), p["uuid"].clone(), p["name"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(std::fs::metadata(&req.output).unwrap().len(), std::fs::metadata(&once.output).unwrap().len());
}

#[test]
fn sector_size_4096() {
    let f = fixture();
    write(&f.defs, &[("10-root.conf", "[Partition]\nType=root\nFormat=ext4\nCopyFiles=/\nMinimize=guess\n")]);
    let mut req = request(&f, "4k.raw");
    req.sector_size = Some(4096);
    let parts = make_image(&req).unwrap();
    // This util-linux's sfdisk cannot be told the sector size of an image file; fdisk can.
    let mut c = tool("fdisk");
    c.args(["-b", "4096", "-l", "-o", "Start,Sectors,Type-UUID"]).arg(&req.output);
    let out = run(c);
    assert!(out.contains("Disklabel type: gpt"), "{out}");
    let line = out.lines().last().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(line, format!("256 {} 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", parts[0].size / 4096), "{out}");
    assert_eq!(parts[0].offset, 256 * 4096);
    fsck("ext4", parts[0].split_path.as_ref().unwrap());
}

#[test]
fn sysext_is_an_extension_image() {
    let f = fixture();
    write(
        &f.root,
        &[
            ("usr/lib/extension-release.d/extension-release.ext", "ID=_any\nARCHITECTURE=x86-64\n"),
            ("opt/tool", "tool"),
        ],
    );
    write(
        &f.defs,
        &[("10-root.conf", "[Partition]\nType=root\nFormat=erofs\nCopyFiles=/opt/\nCopyFiles=/usr/\nMinimize=best\n")],
    );
    let mut req = request(&f, "ext.raw");
    req.split = false;
    let parts = make_image(&req).unwrap();
    assert_eq!(parts.len(), 1);
    if is_root() {
        let mut c = tool("systemd-dissect");
        c.arg("--json=short").arg(&req.output);
        let d: serde_json::Value = serde_json::from_str(&run(c)).unwrap();
        assert_eq!(d["useSystemExtension"], true, "{d}");
    } else {
        eprintln!("not root: skipping the systemd-dissect check (CI runs it as root)");
    }
}

#[test]
fn bad_input_leaves_no_image() {
    let f = fixture();
    write(&f.defs, &[("10-root.conf", "[Partition]\nType=root\nSizeMinBytes=many\n")]);
    let req = request(&f, "bad.raw");
    let e = make_image(&req).unwrap_err().to_string();
    assert!(e.contains("10-root.conf:3"), "{e}");
    assert!(!req.output.exists());

    // Content that does not fit the partition's fixed size: no image either.
    let mut blob = vec![0u8; 40 << 20];
    let mut x: u32 = 1;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(f.root.join("usr/share/blob"), blob).unwrap();
    write(
        &f.defs,
        &[("10-root.conf", "[Partition]\nType=root\nFormat=ext4\nCopyFiles=/\nSizeMinBytes=32M\nSizeMaxBytes=32M\n")],
    );
    let e = make_image(&req).unwrap_err().to_string();
    assert!(e.contains("mkfs.ext4") || e.contains("space"), "{e}");
    assert!(!req.output.exists());
}
