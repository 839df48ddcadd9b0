//! End-to-end tests of the partitioned output formats: `disk` (the default
//! layout, a custom repart.d layout with dm-verity and a signature, split
//! artifacts, `OutputSize=`, reproducibility), `esp`, and `sysext`/`confext`
//! built on top of a base tree. The images are real Debian trixie builds,
//! checked with the standard tools rather than with our own code.
//!
//! Like `e2e.rs` they need root, loop devices and the Debian archive, so they
//! only run with `MKOSI_E2E=1` and otherwise print a skip message:
//!
//! ```sh
//! MKOSI_E2E=1 cargo test --release -p mkosi --test e2e_disk -- --test-threads=1
//! ```
//!
//! `MKOSI_E2E_CACHE` (default `/var/cache/mkosi-ci/debian~trixie~x86-64`) is
//! the package cache shared with `e2e.rs` (and its lock file next to it);
//! `MKOSI_E2E_TMPDIR` and `MKOSI_E2E_KEEP=1` work the same way.
//!
//! Host tools: sfdisk and fdisk (fdisk), e2fsck, dumpe2fs, debugfs and mke2fs
//! (e2fsprogs), fsck.vfat (dosfstools), mdir and mtype (mtools), fsck.erofs
//! (erofs-utils), veritysetup (cryptsetup-bin), systemd-dissect
//! (systemd-container), systemd-repart (systemd: the reference for the UUIDs
//! derived from `Seed=`), openssl, zstd, losetup and mount (util-linux).
//! vfat is never mounted (not every kernel has it): the ESP is read with mtools.
//! The expectations are for x86-64 hosts (partition types, `ARCHITECTURE=`).

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const DISTRIBUTION: &str = "[Distribution]\nDistribution=debian\nRelease=trixie\n\n";
const PACKAGES: &str = "Packages=systemd,udev,dbus\n";
const SEED: &str = "0e2b5a86-4f8c-4b3f-9a37-2c5b3b1f2d10";
const EPOCH: &str = "1700000000";
const HOSTNAME: &str = "mkosi-disk-e2e";
const MIB: u64 = 1024 * 1024;

// GPT partition types of the Discoverable Partitions Specification (x86-64).
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const ROOT_VERITY: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";
const ROOT_VERITY_SIG: &str = "41092B05-9FC8-4523-994F-2DEF0408B176";
const USR: &str = "8484680C-9521-48C6-9C11-B0720656F69E";
const USR_VERITY: &str = "77FF5F63-E7B6-4633-ACF4-1565B864C0E6";
const USR_VERITY_SIG: &str = "E7BB33FB-06CF-4E81-8273-E543B413E2E2";

/// `mkosi.conf` and the sandbox tree with the archive's sources.
fn config_tree(dir: &Path, conf: &str) {
    write(dir, "mkosi.conf", &format!("{DISTRIBUTION}{conf}"));
    write(dir, "mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources", SOURCES);
}

/// Run a host tool that must succeed; its standard output.
fn tool(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args).env("MTOOLS_SKIP_CHECK", "1").env("DEBUGFS_PAGER", "__none__");
    let what = format!("{program} {}", args.join(" "));
    let o = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {what}: {e} (is it installed?)"));
    assert!(o.status.success(), "{what} failed ({}):\n{}", o.status, tail(&text(&o), 40));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run a host tool that may fail.
fn try_tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBUGFS_PAGER", "__none__")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (is it installed?)"))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A build that must succeed.
fn build(dir: &Path, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.push("build");
    let o = mkosi(dir, &all);
    assert_success(&o);
    o
}

/// What a build left in `dir`, besides the configuration and the workspace.
fn outputs(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("mkosi.") && n != "workspace" {
            out.insert(n);
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn assert_workspace_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir.join("workspace"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "leftovers in the workspace directory: {left:?}");
}

fn sha256(p: &Path) -> String {
    tool("sha256sum", &[p.to_str().unwrap()]).split_whitespace().next().unwrap_or_default().to_string()
}

/// `KEY=value` pairs of an os-release style text.
fn env_file(s: &str) -> BTreeMap<String, String> {
    s.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// Upstream's `format_bytes()`, for the size mkosi reports.
fn format_bytes(n: u64) -> String {
    let f = n as f64;
    if n >= 1 << 30 {
        format!("{:.1}G", f / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1}M", f / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1}K", f / 1024.0)
    } else {
        format!("{n}B")
    }
}

fn unzstd(src: &Path, dst: &Path) {
    tool("zstd", &["-d", "-q", "-f", "-o", p(dst), p(src)]);
}

// --- GPT, loop devices, UUIDs -------------------------------------------------

#[derive(Debug, Clone)]
struct Part {
    /// Byte offset and length.
    offset: u64,
    len: u64,
    start: u64,
    type_uuid: String,
    uuid: String,
    name: String,
    attrs: String,
}

#[derive(Debug)]
struct Table {
    id: String,
    sector_size: u64,
    last_lba: u64,
    parts: Vec<Part>,
}

impl Table {
    fn part(&self, type_uuid: &str) -> &Part {
        let found: Vec<&Part> = self.parts.iter().filter(|p| p.type_uuid == type_uuid).collect();
        assert_eq!(found.len(), 1, "expected one partition of type {type_uuid}: {:#?}", self.parts);
        found[0]
    }

    fn names(&self) -> Vec<&str> {
        self.parts.iter().map(|p| p.name.as_str()).collect()
    }
}

/// The partition table as `sfdisk --json` reads it.
fn gpt(image: &Path) -> Table {
    let out = tool("sfdisk", &["--json", p(image)]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("sfdisk --json: {e}:\n{out}"));
    let t = &j["partitiontable"];
    assert_eq!(t["label"], "gpt", "{out}");
    let ss = t["sectorsize"].as_u64().unwrap_or(512);
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_uppercase();
    let parts = t["partitions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let start = p["start"].as_u64().unwrap();
                    Part {
                        offset: start * ss,
                        len: p["size"].as_u64().unwrap() * ss,
                        start,
                        type_uuid: s(&p["type"]),
                        uuid: s(&p["uuid"]),
                        name: p["name"].as_str().unwrap_or_default().to_string(),
                        attrs: p["attrs"].as_str().unwrap_or_default().to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Table { id: s(&t["id"]), sector_size: ss, last_lba: t["lastlba"].as_u64().unwrap(), parts }
}

/// `sfdisk --verify`: no errors, and none of the complaints about a misplaced backup GPT.
fn verify_gpt(image: &Path) {
    let o = try_tool("sfdisk", &["--verify", p(image)]);
    let out = text(&o);
    assert!(o.status.success() && out.contains("No errors detected"), "sfdisk --verify {}:\n{out}", image.display());
    for bad in ["mismatch", "backup", "corrupt", "invalid"] {
        assert!(!out.to_lowercase().contains(bad), "sfdisk --verify {} complains:\n{out}", image.display());
    }
}

/// Partitions must be 4096-byte aligned, in order and not overlap; the image
/// ends right after the backup GPT (33 sectors for 512-byte sectors).
fn check_layout(image: &Path, t: &Table) {
    let len = std::fs::metadata(image).unwrap().len();
    assert_eq!(t.sector_size, 512, "{}", image.display());
    assert_eq!(len % 4096, 0, "{} is {len} bytes, not a multiple of 4096", image.display());
    assert_eq!(len, (t.last_lba + 34) * 512, "the backup GPT of {} is not at its end", image.display());
    assert_eq!(t.parts.first().map(|p| p.start), Some(2048), "the first partition should start at 1 MiB");
    let mut end = 0;
    for part in &t.parts {
        assert!(part.offset % 4096 == 0 && part.len % 4096 == 0, "{} is not 4096-byte aligned: {part:?}", part.name);
        assert!(part.offset >= end, "{} overlaps the partition before it", part.name);
        end = part.offset + part.len;
    }
    assert!(end <= (t.last_lba + 1) * 512, "partitions beyond the last usable sector");
}

/// Whether `len` bytes of `a` at `a_off` equal those of `b` at `b_off`.
fn same_bytes(a: &Path, a_off: u64, b: &Path, b_off: u64, len: u64) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    fa.seek(SeekFrom::Start(a_off)).unwrap();
    fb.seek(SeekFrom::Start(b_off)).unwrap();
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
        left -= n as u64;
    }
    true
}

/// Copy a partition out of an image.
fn extract(image: &Path, part: &Part, dst: &Path) {
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(part.offset)).unwrap();
    let mut out = std::fs::File::create(dst).unwrap();
    let n = std::io::copy(&mut f.take(part.len), &mut out).unwrap();
    assert_eq!(n, part.len, "{} is truncated", image.display());
}

/// A read-only loop device over part of a file, detached when dropped.
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(file: &Path, offset: u64, len: u64) -> Loop {
        let out = tool(
            "losetup",
            &["--find", "--show", "--read-only", &format!("--offset={offset}"), &format!("--sizelimit={len}"), p(file)],
        );
        Loop { dev: out.trim().to_string() }
    }

    fn part(image: &Path, part: &Part) -> Loop {
        Loop::attach(image, part.offset, part.len)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A read-only mount, unmounted when dropped.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(dev: &str, fstype: &str, dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        tool("mount", &["-t", fstype, "-o", "ro", dev, p(dir)]);
        Mounted { dir: dir.to_path_buf() }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// `8-4-4-4-12` from 32 hex digits, upper case like sfdisk prints them.
fn uuid_from_hex(h: &str) -> String {
    let h = h.to_uppercase();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// HMAC-SHA256 computed by openssl.
fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-mac", "HMAC", "-macopt", &format!("hexkey:{}", hex(key))])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "openssl dgst -mac HMAC: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    unhex(out.rsplit("= ").next().unwrap().trim())
}

/// systemd's `derive_uuid()`: HMAC-SHA256 of `token` keyed with the 16 bytes
/// of `base`, truncated to 128 bits and made a version 4 UUID.
fn derive_uuid(base: &str, token: &[u8]) -> String {
    let mut b = hmac_sha256(&unhex(&base.replace('-', "")), token)[..16].to_vec();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_from_hex(&hex(&b))
}

/// `systemd-dissect --json=short`.
fn dissect(image: &Path) -> serde_json::Value {
    let out = tool("systemd-dissect", &["--json=short", p(image)]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("systemd-dissect --json=short: {e}:\n{out}"))
}

/// Designator → the mount entry of `systemd-dissect --json`.
fn dissect_mounts(j: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    j["mounts"]
        .as_array()
        .unwrap_or_else(|| panic!("no mounts in {j}"))
        .iter()
        .map(|m| (m["designator"].as_str().unwrap_or_default().to_string(), m.clone()))
        .collect()
}

fn json_lines(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|l| l.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Names in a directory of an ext4 image (`debugfs ls -p`), without `.` and `..`.
fn ext4_ls(fs: &str, dir: &str) -> BTreeSet<String> {
    let out = tool("debugfs", &["-R", &format!("ls -p {dir}"), fs]);
    out.lines()
        .filter_map(|l| l.split('/').nth(5).map(String::from))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect()
}

/// A value of `dumpe2fs -h`.
fn dumpe2fs_field(header: &str, field: &str) -> String {
    header
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in dumpe2fs output:\n{header}"))
}

/// The paths in a tree, relative, without following symlinks.
fn tree_paths(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Unpack an erofs image with `fsck.erofs --extract`, which checks it on the way.
fn erofs_extract(image: &Path, dst: &Path) {
    tool("fsck.erofs", &[&format!("--extract={}", p(dst)), p(image)]);
}

/// The verity signature partition: JSON (padded with NULs) whose `rootHash`
/// is `roothash`, the fingerprint of `certificate`, and a PKCS#7 signature of
/// the root hash that openssl verifies with the certificate.
fn check_verity_signature(sig_partition: &Path, roothash: &str, certificate: &Path, work: &Path) {
    let raw = std::fs::read(sig_partition).unwrap();
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    assert!(raw[end..].iter().all(|b| *b == 0), "data after the JSON in the verity signature partition");
    let j: serde_json::Value = serde_json::from_slice(&raw[..end])
        .unwrap_or_else(|e| panic!("the verity signature partition is not JSON ({e}): {:?}", &raw[..end.min(200)]));
    assert_eq!(j["rootHash"].as_str(), Some(roothash), "{j}");

    std::fs::create_dir_all(work).unwrap();
    let der = work.join("certificate.der");
    tool("openssl", &["x509", "-in", p(certificate), "-outform", "DER", "-out", p(&der)]);
    assert_eq!(j["certificateFingerprint"].as_str(), Some(sha256(&der).as_str()), "{j}");

    let (b64, sig, content) = (work.join("signature.b64"), work.join("signature.der"), work.join("roothash.txt"));
    std::fs::write(&b64, j["signature"].as_str().expect("no signature")).unwrap();
    tool("openssl", &["base64", "-d", "-A", "-in", p(&b64), "-out", p(&sig)]);
    std::fs::write(&content, roothash).unwrap();
    let verify = |content: &Path| {
        try_tool(
            "openssl",
            &[
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-in",
                p(&sig),
                "-content",
                p(content),
                "-CAfile",
                p(certificate),
                "-purpose",
                "any",
                "-out",
                "/dev/null",
            ],
        )
    };
    let o = verify(&content);
    assert!(o.status.success(), "the root hash signature does not verify: {}", text(&o));
    let wrong = work.join("wrong.txt");
    std::fs::write(&wrong, other_hash(roothash)).unwrap();
    assert!(!verify(&wrong).status.success(), "the signature verifies for another root hash too");
}

/// The hash with its first digit changed.
fn other_hash(h: &str) -> String {
    format!("{}{}", if h.starts_with('0') { '1' } else { '0' }, &h[1..])
}

/// `veritysetup verify` succeeds with the root hash, and fails with another one.
fn check_verity(data: &Path, hash: &Path, roothash: &str) {
    tool("veritysetup", &["verify", p(data), p(hash), roothash]);
    let o = try_tool("veritysetup", &["verify", p(data), p(hash), &other_hash(roothash)]);
    assert!(!o.status.success(), "veritysetup verify accepts a wrong root hash: {}", text(&o));
}

fn key_pair(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    assert_success(&mkosi(dir, &["genkey"]));
    let (key, crt) = (dir.join("mkosi.key"), dir.join("mkosi.crt"));
    assert!(key.is_file() && crt.is_file(), "mkosi genkey made no mkosi.key/mkosi.crt");
    (key, crt)
}

// --- disk_default_layout --------------------------------------------------------

/// The GPT systemd-repart (the host's) makes with the same seed and a root
/// partition: the reference for the seed-derived disk and partition UUIDs.
fn repart_reference(dir: &Path) -> Table {
    write(dir, "repart.d/10-root.conf", "[Partition]\nType=root\nSizeMinBytes=16M\n");
    let image = dir.join("reference.raw");
    let defs = dir.join("repart.d");
    tool(
        "systemd-repart",
        &[
            "--empty=create",
            "--size=auto",
            "--dry-run=no",
            "--no-pager",
            &format!("--seed={SEED}"),
            &format!("--definitions={}", p(&defs)),
            p(&image),
        ],
    );
    gpt(&image)
}

#[test]
fn disk_default_layout() {
    if !enabled("disk_default_layout") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("disk-default");
    let conf = s.path().join("conf");
    let dir = conf.as_path();
    config_tree(
        dir,
        &format!("[Output]\nFormat=disk\nSeed={SEED}\n\n[Content]\n{PACKAGES}Bootable=no\nHostname={HOSTNAME}\n"),
    );
    let o = build(dir, &[]);
    assert_eq!(outputs(dir), set(&["image", "image.raw"]));
    assert_eq!(std::fs::read_link(dir.join("image")).unwrap(), Path::new("image.raw"));
    assert_workspace_empty(dir);
    let image = dir.join("image.raw");
    let md = std::fs::metadata(&image).unwrap();

    // The size mkosi reports at the end is what the file takes on disk.
    let err = text(&o);
    let reported = err
        .lines()
        .rev()
        .find_map(|l| l.split_once("image.raw (").map(|(_, r)| r.trim_end_matches(')').to_string()))
        .unwrap_or_else(|| panic!("no size reported for image.raw:\n{}", tail(&err, 10)));
    assert_eq!(reported, format_bytes(md.blocks() * 512), "apparent size {}", md.len());

    // One root partition, aligned, with the backup GPT at the end of the file.
    let t = gpt(&image);
    assert_eq!(t.names(), ["root-x86-64"], "{:#?}", t.parts);
    let root = t.part(ROOT).clone();
    check_layout(&image, &t);
    verify_gpt(&image);

    // Disk and partition UUIDs come from the seed exactly as systemd-repart derives them.
    let reference = repart_reference(&s.path().join("reference"));
    assert_eq!(t.id, reference.id, "disk UUID differs from systemd-repart's for the same seed");
    let r = reference.part(ROOT);
    assert_eq!((&root.uuid, &root.name, &root.attrs), (&r.uuid, &r.name, &r.attrs), "systemd-repart: {r:?}");

    // systemd-dissect recognizes the image.
    let j = dissect(&image);
    assert_eq!(j["size"].as_u64(), Some(md.len()), "{j}");
    assert_eq!(j["hostname"].as_str(), Some(HOSTNAME), "{j}");
    let osr = json_lines(&j["osRelease"]);
    for line in ["ID=debian", "VERSION_ID=13"] {
        assert!(osr.iter().any(|l| l == line), "{line} not in the os-release systemd-dissect found: {osr:?}");
    }
    let mounts = dissect_mounts(&j);
    assert_eq!(mounts.keys().collect::<Vec<_>>(), ["root"], "{j}");
    let m = &mounts["root"];
    assert_eq!(m["fstype"], "ext4", "{m}");
    assert_eq!(m["partition_uuid"].as_str().map(str::to_uppercase), Some(root.uuid.clone()), "{m}");
    assert_eq!(m["partition_label"], "root-x86-64", "{m}");
    assert_eq!(m["architecture"], "x86-64", "{m}");

    // The file system: clean, labelled, its UUID derived from the partition UUID; mount it.
    {
        let lo = Loop::part(&image, &root);
        tool("e2fsck", &["-fn", &lo.dev]);
        let header = tool("dumpe2fs", &["-h", &lo.dev]);
        assert_eq!(dumpe2fs_field(&header, "Filesystem volume name"), "root-x86-64");
        assert_eq!(
            dumpe2fs_field(&header, "Filesystem UUID").to_uppercase(),
            derive_uuid(&root.uuid, b"file-system-uuid"),
            "the file system UUID is not derived from the partition UUID like repart does"
        );
        let mnt = Mounted::new(&lo.dev, "ext4", &s.path().join("mnt"));
        let osr = env_file(&std::fs::read_to_string(mnt.dir.join("usr/lib/os-release")).unwrap());
        assert_eq!((osr["ID"].as_str(), osr["VERSION_ID"].as_str()), ("debian", "13"), "{osr:?}");
        assert_eq!(std::fs::read_to_string(mnt.dir.join("etc/hostname")).unwrap().trim(), HOSTNAME);
        for d in ["boot", "efi", "usr/bin", "var/lib/dpkg"] {
            assert!(mnt.dir.join(d).is_dir(), "/{d} is missing in the root file system");
        }
        assert!(mnt.dir.join("usr/lib/systemd/systemd").is_file(), "systemd is missing in the root file system");
    }

    // The same build with SplitArtifacts=partitions: the same UUIDs, and the
    // split file is the partition.
    build(dir, &["--output=split", "--split-artifacts=partitions"]);
    assert_eq!(outputs(dir), set(&["image", "image.raw", "split", "split.raw", "split.root-x86-64.raw"]));
    let split = dir.join("split.raw");
    let t2 = gpt(&split);
    assert_eq!(t2.id, t.id, "a second build with the same seed has another disk UUID");
    assert_eq!(t2.names(), ["root-x86-64"]);
    let root2 = t2.part(ROOT);
    assert_eq!(root2.uuid, root.uuid, "a second build with the same seed has another partition UUID");
    let part_file = dir.join("split.root-x86-64.raw");
    assert_eq!(std::fs::metadata(&part_file).unwrap().len(), root2.len, "split.root-x86-64.raw has the wrong size");
    assert!(same_bytes(&split, root2.offset, &part_file, 0, root2.len), "split.root-x86-64.raw is not the partition");
    tool("e2fsck", &["-fn", p(&part_file)]);
}

// --- disk_custom_layout_with_verity -----------------------------------------

const VERITY_LAYOUT: &[(&str, &str)] = &[
    (
        "00-esp.conf",
        "[Partition]\nType=esp\nFormat=vfat\nCopyFiles=/boot:/\nCopyFiles=/efi:/\nSizeMinBytes=260M\nSizeMaxBytes=260M\n",
    ),
    (
        "10-usr.conf",
        "[Partition]\nType=usr\nFormat=erofs\nCopyFiles=/usr:/\nVerity=data\nVerityMatchKey=usr\nMinimize=best\n",
    ),
    ("20-usr-verity.conf", "[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=usr\nMinimize=best\n"),
    ("30-usr-verity-sig.conf", "[Partition]\nType=usr-verity-sig\nVerity=signature\nVerityMatchKey=usr\n"),
    ("40-root.conf", "[Partition]\nType=root\nFormat=ext4\nCopyFiles=/\nMinimize=guess\n"),
];

const EFI_FILE: &str = "mkosi-e2e-efi.txt";
const EFI_TEXT: &str = "copied from /efi\n";
const BOOT_FILE: &str = "mkosi-e2e-boot.txt";
const BOOT_TEXT: &str = "copied from /boot\n";

#[test]
fn disk_custom_layout_with_verity() {
    if !enabled("disk_custom_layout_with_verity") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("disk-verity");
    let dir = s.path();
    config_tree(
        dir,
        &format!(
            "[Output]\nFormat=disk\nSeed={SEED}\nRepartDirectories=mkosi.repart\n\
             SplitArtifacts=partitions,roothash\nCompressOutput=zstd\n\n\
             [Content]\n{PACKAGES}Bootable=no\n\n\
             [Validation]\nVerityKey=mkosi.key\nVerityCertificate=mkosi.crt\n"
        ),
    );
    for (name, conf) in VERITY_LAYOUT {
        write(dir, &format!("mkosi.repart/{name}"), conf);
    }
    write(dir, &format!("mkosi.extra/efi/{EFI_FILE}"), EFI_TEXT);
    write(dir, &format!("mkosi.extra/boot/{BOOT_FILE}"), BOOT_TEXT);
    let (_, crt) = key_pair(dir);
    build(dir, &[]);

    // Upstream compresses the disk and every split partition with CompressOutput=
    // (maybe_compress() in make_image()); the root hash file stays plain.
    let split = ["esp", "usr-x86-64", "usr-x86-64-verity", "usr-x86-64-verity-sig", "root-x86-64"];
    let mut expected = set(&["image", "image.raw.zst", "image.roothash"]);
    expected.extend(split.iter().map(|n| format!("image.{n}.raw.zst")));
    assert_eq!(outputs(dir), expected);
    assert_eq!(std::fs::read_link(dir.join("image")).unwrap(), Path::new("image.raw.zst"));
    assert_workspace_empty(dir);
    let plain = dir.join("plain");
    std::fs::create_dir(&plain).unwrap();
    for n in std::iter::once("image.raw".to_string()).chain(split.iter().map(|n| format!("image.{n}.raw"))) {
        unzstd(&dir.join(format!("{n}.zst")), &plain.join(&n));
    }
    let file = |n: &str| plain.join(format!("image.{n}.raw"));

    let roothash = std::fs::read_to_string(dir.join("image.roothash")).unwrap();
    assert!(
        roothash.len() == 64 && roothash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "image.roothash is not a SHA-256 root hash: {roothash:?}"
    );

    // The partitions, in the order of the definitions, each labelled with its type.
    let image = plain.join("image.raw");
    let t = gpt(&image);
    assert_eq!(t.names(), split, "{:#?}", t.parts);
    check_layout(&image, &t);
    verify_gpt(&image);
    let (esp, usr, usr_verity, usr_sig, root) =
        (t.part(ESP), t.part(USR), t.part(USR_VERITY), t.part(USR_VERITY_SIG), t.part(ROOT));
    assert_eq!(esp.len, 260 * MIB, "SizeMinBytes=SizeMaxBytes=260M");
    assert_eq!(usr_sig.len, 16 * 1024, "verity signature partitions are 16 KiB");
    // The verity partitions are named after the root hash, and read-only.
    assert_eq!(
        usr.uuid,
        uuid_from_hex(&roothash[..32]),
        "the usr partition UUID is not the first half of the root hash"
    );
    assert_eq!(usr_verity.uuid, uuid_from_hex(&roothash[32..]), "the usr-verity partition UUID is not its second half");
    for part in [usr, usr_verity] {
        assert!(part.attrs.contains("GUID:60"), "{} is not marked read-only: {part:?}", part.name);
    }
    // Every split file is its partition.
    for (name, part) in split.iter().zip(&t.parts) {
        let f = file(name);
        assert_eq!(std::fs::metadata(&f).unwrap().len(), part.len, "image.{name}.raw has the wrong size");
        assert!(same_bytes(&image, part.offset, &f, 0, part.len), "image.{name}.raw is not the {name} partition");
    }

    // dm-verity: the hash partition protects the usr partition with the root hash,
    // and the signature partition signs it with the certificate.
    check_verity(&file("usr-x86-64"), &file("usr-x86-64-verity"), &roothash);
    check_verity_signature(&file("usr-x86-64-verity-sig"), &roothash, &crt, &dir.join("signature"));

    // systemd-dissect sees all of it. (plain/ has no image.roothash next to the
    // image: systemd-dissect would take that usr hash for a root hash.)
    let j = dissect(&image);
    let mounts = dissect_mounts(&j);
    assert_eq!(
        mounts.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["esp", "root", "usr", "usr-verity", "usr-verity-sig"]),
        "{j}"
    );
    for (designator, fstype, part) in [("root", "ext4", root), ("usr", "erofs", usr), ("esp", "vfat", esp)] {
        let m = &mounts[designator];
        assert_eq!(m["fstype"], fstype, "{m}");
        assert_eq!(m["partition_uuid"].as_str().map(str::to_uppercase).as_ref(), Some(&part.uuid), "{m}");
    }

    // The ESP holds /boot and /efi.
    tool("fsck.vfat", &["-n", p(&file("esp"))]);
    let esp_img = file("esp");
    for (name, content) in [(EFI_FILE, EFI_TEXT), (BOOT_FILE, BOOT_TEXT)] {
        assert_eq!(tool("mtype", &["-i", p(&esp_img), &format!("::/{name}")]), content, "{name} in the ESP");
    }

    // The usr partition holds /usr.
    let usr_tree = dir.join("usr-tree");
    erofs_extract(&file("usr-x86-64"), &usr_tree);
    let osr = env_file(&std::fs::read_to_string(usr_tree.join("lib/os-release")).unwrap());
    assert_eq!((osr["ID"].as_str(), osr["VERSION_ID"].as_str()), ("debian", "13"), "{osr:?}");
    assert!(usr_tree.join("lib/systemd/systemd").is_file(), "no lib/systemd/systemd in the usr partition");
    assert!(!usr_tree.join("usr").exists() && !usr_tree.join("etc").exists(), "the usr partition holds more than /usr");

    // The root partition has the rest: the mount points of the other
    // partitions are there but empty (repart leaves out what they hold).
    let root_img = file("root-x86-64");
    tool("e2fsck", &["-fn", p(&root_img)]);
    let top = ext4_ls(p(&root_img), "/");
    for d in ["etc", "var", "usr", "boot", "efi"] {
        assert!(top.contains(d), "/{d} is missing in the root partition: {top:?}");
    }
    for d in ["/usr", "/boot", "/efi"] {
        let inside = ext4_ls(p(&root_img), d);
        assert!(inside.is_empty(), "{d} in the root partition is not empty: {inside:?}");
    }
    assert!(ext4_ls(p(&root_img), "/etc").contains("os-release"), "no /etc/os-release in the root partition");
}

// --- output_size ----------------------------------------------------------------

#[test]
fn output_size() {
    if !enabled("output_size") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("disk-output-size");
    let dir = s.path();
    config_tree(
        dir,
        &format!("[Output]\nFormat=disk\nSeed={SEED}\nOutputSize=2G\n\n[Content]\n{PACKAGES}Bootable=no\n"),
    );
    build(dir, &[]);
    let image = dir.join("image.raw");
    let md = std::fs::metadata(&image).unwrap();
    assert_eq!(md.len(), 2 << 30, "OutputSize=2G");
    let sectors = md.len() / 512;

    // The GPT describes the whole 2 GiB: backup header in the last sector, the
    // protective MBR covering the disk, and sfdisk/fdisk have nothing to say.
    verify_gpt(&image);
    let fdisk = try_tool("fdisk", &["-l", p(&image)]);
    assert!(fdisk.status.success(), "fdisk -l: {}", text(&fdisk));
    assert!(!text(&fdisk).contains("mismatch"), "fdisk -l:\n{}", text(&fdisk));
    let t = gpt(&image);
    assert_eq!(t.last_lba, sectors - 34, "the usable space does not extend to the new end");
    check_layout(&image, &t);
    assert_eq!(t.names(), ["root-x86-64"]);
    let mut f = std::fs::File::open(&image).unwrap();
    let mut head = vec![0u8; 1024];
    f.read_exact(&mut head).unwrap();
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap()) as u64;
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
    assert_eq!(head[446 + 4], 0xee, "no protective MBR partition");
    assert_eq!((le32(&head[446 + 8..446 + 12]), le32(&head[446 + 12..446 + 16])), (1, sectors - 1), "protective MBR");
    assert_eq!(&head[512..520], b"EFI PART");
    assert_eq!(le64(&head[512 + 32..512 + 40]), sectors - 1, "the primary GPT header points elsewhere for its backup");
    let mut backup = vec![0u8; 512];
    f.seek(SeekFrom::Start(md.len() - 512)).unwrap();
    f.read_exact(&mut backup).unwrap();
    assert_eq!(&backup[..8], b"EFI PART", "no backup GPT header in the last sector");
    assert_eq!((le64(&backup[24..32]), le64(&backup[32..40])), (sectors - 1, 1), "backup GPT header");
    {
        let lo = Loop::part(&image, t.part(ROOT));
        tool("e2fsck", &["-fn", &lo.dev]);
    }

    // Too small: a clear error, and no output.
    let before = (md.ino(), md.mtime(), md.len());
    let o = mkosi(dir, &["--output-size=16M", "--output=small", "build"]);
    let out = text(&o);
    assert!(!o.status.success(), "a build with OutputSize=16M succeeded:\n{}", tail(&out, 20));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("OutputSize"), "the error does not mention OutputSize=:\n{}", tail(&err, 20));
    assert_eq!(outputs(dir), set(&["image", "image.raw"]), "outputs left behind by the failed build");
    assert_workspace_empty(dir);
    let md = std::fs::metadata(&image).unwrap();
    assert_eq!((md.ino(), md.mtime(), md.len()), before, "the failed build touched the previous image");
}

// --- esp_format -----------------------------------------------------------------

#[test]
fn esp_format() {
    if !enabled("esp_format") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("esp");
    let dir = s.path();
    config_tree(dir, &format!("[Output]\nFormat=esp\nSeed={SEED}\n\n[Content]\n{PACKAGES}Bootable=no\n"));
    let hello = "hello from the ESP\n";
    write(dir, "mkosi.extra/efi/EFI/BOOT/hello.txt", hello);
    write(dir, &format!("mkosi.extra/boot/{BOOT_FILE}"), BOOT_TEXT);
    build(dir, &[]);
    // An ESP image is never compressed (upstream's use_outer_compression() leaves it out).
    assert_eq!(outputs(dir), set(&["image", "image.raw"]));
    assert_workspace_empty(dir);

    let image = dir.join("image.raw");
    let t = gpt(&image);
    assert_eq!(t.names(), ["esp"], "{:#?}", t.parts);
    check_layout(&image, &t);
    verify_gpt(&image);
    let esp = t.part(ESP).clone();
    // Upstream: at least 260 MiB for FAT32 with 4K sectors (max(content, 250M) + 10M).
    assert!((260 * MIB..=260 * MIB + 4096).contains(&esp.len), "ESP of {} bytes", esp.len);

    {
        let lo = Loop::part(&image, &esp);
        tool("fsck.vfat", &["-n", &lo.dev]);
    }
    // FAT32, with the volume id taken from the file system UUID (derived from the partition UUID).
    let mut boot = vec![0u8; 512];
    let mut f = std::fs::File::open(&image).unwrap();
    f.seek(SeekFrom::Start(esp.offset)).unwrap();
    f.read_exact(&mut boot).unwrap();
    assert_eq!(&boot[82..90], b"FAT32   ", "the ESP is not FAT32");
    let volid = u32::from_le_bytes(boot[67..71].try_into().unwrap());
    let fs_uuid = derive_uuid(&esp.uuid, b"file-system-uuid");
    assert_eq!(format!("{volid:08X}"), fs_uuid[..8], "volume id vs file system UUID {fs_uuid}");

    let img = format!("{}@@{}", image.display(), esp.offset);
    let listing = tool("mdir", &["-i", &img, "-b", "::/EFI/BOOT"]);
    assert!(listing.lines().any(|l| l.trim() == "::/EFI/BOOT/hello.txt"), "mdir ::/EFI/BOOT:\n{listing}");
    assert_eq!(tool("mtype", &["-i", &img, "::/EFI/BOOT/hello.txt"]), hello);
    assert_eq!(tool("mtype", &["-i", &img, &format!("::/{BOOT_FILE}")]), BOOT_TEXT, "/boot is not in the ESP");
}

// --- sysext_from_base_tree ------------------------------------------------------

/// The extension-release upstream writes (configure_extension_release()) for
/// an image without one of its own.
fn expected_extension_release(
    prefix: &str,
    os_release: &BTreeMap<String, String>,
    image_id: &str,
    version: &str,
    scope: &str,
) -> String {
    let mut s = format!("ID={}\n", os_release.get("ID").map(String::as_str).unwrap_or("_any"));
    if let Some(level) = os_release.get(&format!("{prefix}_LEVEL")) {
        s += &format!("{prefix}_LEVEL={level}\n");
    }
    if let Some(v) = os_release.get("VERSION_ID") {
        s += &format!("VERSION_ID={v}\n");
    }
    s += &format!(
        "{prefix}_ID={image_id}\n{prefix}_VERSION_ID={version}\n{prefix}_SCOPE={scope}\nARCHITECTURE=x86-64\n"
    );
    s
}

/// The one erofs partition of an unsigned extension, unpacked.
fn unpack_unsigned_extension(image: &Path, work: &Path) -> PathBuf {
    let t = gpt(image);
    assert_eq!(t.names(), ["root-x86-64"], "{:#?}", t.parts);
    check_layout(image, &t);
    std::fs::create_dir_all(work).unwrap();
    let part = work.join("root.erofs");
    extract(image, t.part(ROOT), &part);
    let tree = work.join("tree");
    erofs_extract(&part, &tree);
    tree
}

#[test]
fn sysext_from_base_tree() {
    if !enabled("sysext_from_base_tree") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("sysext");

    // The base: a directory image.
    let base_dir = s.path().join("base");
    config_tree(&base_dir, &format!("[Output]\nFormat=directory\nOutput=base\n\n[Content]\n{PACKAGES}"));
    build(&base_dir, &[]);
    let base = base_dir.join("base");
    let os_release = env_file(&std::fs::read_to_string(base.join("usr/lib/os-release")).unwrap());
    // Files of the extra trees that the base has already: they must not end up in the extensions.
    let (usr_dup, etc_dup) = ("usr/share/common-licenses/GPL-3", "etc/debian_version");
    for f in [usr_dup, etc_dup] {
        assert!(base.join(f).is_file(), "the base tree has no {f}: pick another file for this test");
    }
    let (key, crt) = key_pair(&s.path().join("keys"));

    // A sysext adding one program.
    let dir = s.path().join("sysext");
    config_tree(
        &dir,
        &format!(
            "[Output]\nFormat=sysext\nOutput=hello\nImageId=hello-ext\nImageVersion=1.2.3\nOverlay=yes\nSeed={SEED}\n\n\
             [Content]\nBaseTrees={}\nSourceDateEpoch={EPOCH}\n",
            base.display()
        ),
    );
    let program = "#!/bin/sh\necho hello from the sysext\n";
    write(&dir, "mkosi.extra/usr/bin/hello-sysext", program);
    std::fs::set_permissions(dir.join("mkosi.extra/usr/bin/hello-sysext"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    write(&dir, &format!("mkosi.extra/{usr_dup}"), "not the base's\n");
    build(&dir, &[]);
    assert_eq!(outputs(&dir), set(&["hello", "hello.raw"]));
    assert_workspace_empty(&dir);
    let release = expected_extension_release("SYSEXT", &os_release, "hello-ext", "1.2.3", "initrd system portable");
    let expected_tree = set(&[
        "usr",
        "usr/bin",
        "usr/bin/hello-sysext",
        "usr/lib",
        "usr/lib/extension-release.d",
        "usr/lib/extension-release.d/extension-release.hello",
    ]);
    let check_sysext_tree = |tree: &Path| {
        assert_eq!(tree_paths(tree), expected_tree, "the sysext should hold only the new file and extension-release");
        let prog = tree.join("usr/bin/hello-sysext");
        assert_eq!(std::fs::read_to_string(&prog).unwrap(), program);
        assert_eq!(std::fs::metadata(&prog).unwrap().mode() & 0o7777, 0o755);
        let got = std::fs::read_to_string(tree.join("usr/lib/extension-release.d/extension-release.hello")).unwrap();
        assert_eq!(got, release, "extension-release.hello");
    };

    // Without keys (Verity=auto): the unsigned definitions, one erofs partition.
    let image = dir.join("hello.raw");
    let j = dissect(&image);
    assert_eq!(j["useSystemExtension"], true, "systemd-dissect does not take it for a system extension: {j}");
    let ext_release = json_lines(&j["extensionRelease"]);
    assert_eq!(ext_release, release.lines().map(String::from).collect::<Vec<_>>(), "{j}");
    let mounts = dissect_mounts(&j);
    assert_eq!(mounts.keys().collect::<Vec<_>>(), ["root"], "{j}");
    assert_eq!(mounts["root"]["fstype"], "erofs", "{j}");
    check_sysext_tree(&unpack_unsigned_extension(&image, &s.path().join("unsigned")));

    // With keys: root, root-verity and root-verity-sig.
    let (key_arg, crt_arg) =
        (format!("--verity-key={}", key.display()), format!("--verity-certificate={}", crt.display()));
    let mut args = vec![key_arg.as_str(), crt_arg.as_str(), "--split-artifacts=roothash", "--output-directory=signed"];
    build(&dir, &args);
    let signed = dir.join("signed");
    assert_eq!(outputs(&signed), set(&["hello", "hello.raw", "hello.roothash"]));
    let image = signed.join("hello.raw");
    let roothash = std::fs::read_to_string(signed.join("hello.roothash")).unwrap();
    assert_eq!(roothash.len(), 64, "hello.roothash: {roothash:?}");
    let t = gpt(&image);
    assert_eq!(t.names(), ["root-x86-64", "root-x86-64-verity", "root-x86-64-verity-sig"], "{:#?}", t.parts);
    check_layout(&image, &t);
    let (root, verity, sig) = (t.part(ROOT), t.part(ROOT_VERITY), t.part(ROOT_VERITY_SIG));
    assert_eq!(root.uuid, uuid_from_hex(&roothash[..32]));
    assert_eq!(verity.uuid, uuid_from_hex(&roothash[32..]));
    let work = s.path().join("signed-parts");
    std::fs::create_dir_all(&work).unwrap();
    for (part, name) in [(root, "root"), (verity, "verity"), (sig, "sig")] {
        extract(&image, part, &work.join(name));
    }
    check_verity(&work.join("root"), &work.join("verity"), &roothash);
    check_verity_signature(&work.join("sig"), &roothash, &crt, &work.join("signature"));
    let j = dissect(&image);
    assert_eq!(j["useSystemExtension"], true, "{j}");
    let mounts = dissect_mounts(&j);
    assert_eq!(mounts.keys().collect::<Vec<_>>(), ["root", "root-verity", "root-verity-sig"], "{j}");
    assert_eq!(mounts["root"]["verity"], "signed", "{j}");
    let tree = work.join("tree");
    erofs_extract(&work.join("root"), &tree);
    check_sysext_tree(&tree);

    // Extension images are reproducible: the same build again gives the same bytes.
    args.pop();
    args.push("--output-directory=signed-again");
    build(&dir, &args);
    assert_eq!(sha256(&image), sha256(&dir.join("signed-again/hello.raw")), "two signed sysext builds differ");

    // A confext adding a configuration file.
    let dir = s.path().join("confext");
    config_tree(
        &dir,
        &format!(
            "[Output]\nFormat=confext\nOutput=hello-conf\nImageId=hello-conf\nImageVersion=1.2.3\nOverlay=yes\n\n\
             [Content]\nBaseTrees={}\n\n[Build]\nEnvironment=CONFEXT_SCOPE=system\n",
            base.display()
        ),
    );
    write(&dir, "mkosi.extra/etc/hello.conf", "greeting=hello\n");
    write(&dir, &format!("mkosi.extra/{etc_dup}"), "not the base's\n");
    build(&dir, &[]);
    assert_eq!(outputs(&dir), set(&["hello-conf", "hello-conf.raw"]));
    let image = dir.join("hello-conf.raw");
    let j = dissect(&image);
    // systemd-dissect knows configuration extensions from systemd 254 on.
    if let Some(confext) = j.get("useConfigurationExtension") {
        assert_eq!(confext, true, "{j}");
    }
    assert_eq!(j["useSystemExtension"], false, "{j}");
    let mounts = dissect_mounts(&j);
    assert_eq!(mounts.keys().collect::<Vec<_>>(), ["root"], "{j}");
    assert_eq!(mounts["root"]["fstype"], "erofs", "{j}");
    let tree = unpack_unsigned_extension(&image, &s.path().join("confext-parts"));
    assert_eq!(
        tree_paths(&tree),
        set(&[
            "etc",
            "etc/hello.conf",
            "etc/extension-release.d",
            "etc/extension-release.d/extension-release.hello-conf"
        ]),
        "the confext should hold only the new file and extension-release"
    );
    assert_eq!(std::fs::read_to_string(tree.join("etc/hello.conf")).unwrap(), "greeting=hello\n");
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/extension-release.d/extension-release.hello-conf")).unwrap(),
        expected_extension_release("CONFEXT", &os_release, "hello-conf", "1.2.3", "system")
    );
}

// --- disk_is_reproducible ---------------------------------------------------------

/// The differing 4 KiB blocks of two equally long ranges of two files (block
/// numbers relative to the start of the ranges).
fn differing_blocks(a: &Path, b: &Path, offset: u64, len: u64) -> Vec<u64> {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    fa.seek(SeekFrom::Start(offset)).unwrap();
    fb.seek(SeekFrom::Start(offset)).unwrap();
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let (mut pos, mut out) = (0u64, Vec::new());
    while pos < len {
        let n = (len - pos).min(MIB) as usize;
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        for (i, (x, y)) in ba[..n].chunks(4096).zip(bb[..n].chunks(4096)).enumerate() {
            if x != y {
                out.push(pos / 4096 + i as u64);
            }
        }
        pos += n as u64;
    }
    out
}

/// `debugfs -f` with `commands`, its output split per command.
fn debugfs_batch(fs: &str, commands: &[String], work: &Path) -> Vec<String> {
    let script = work.join("debugfs.cmds");
    std::fs::write(&script, commands.join("\n") + "\n").unwrap();
    let out = tool("debugfs", &["-f", p(&script), fs]);
    out.split("debugfs: ").skip(1).map(|s| s.split_once('\n').map(|(_, r)| r).unwrap_or("").to_string()).collect()
}

/// Path names of inodes, for examples in the report.
fn inode_paths(fs: &str, inodes: &[u64]) -> Vec<String> {
    if inodes.is_empty() {
        return vec![];
    }
    let list: Vec<String> = inodes.iter().map(u64::to_string).collect();
    let out = tool("debugfs", &["-R", &format!("ncheck {}", list.join(" ")), fs]);
    out.lines().skip(1).filter_map(|l| l.split_once('\t').map(|(i, p)| format!("{i}:{p}"))).collect()
}

/// Explain how two ext4 file systems of the same size differ: superblock
/// fields, inodes (which `debugfs stat` fields), and other blocks (which files).
fn explain_ext4(a: &str, b: &str, a_file: &Path, b_file: &Path, part: &Part, work: &Path) -> Vec<String> {
    let mut report = Vec::new();
    let (ha, hb) = (tool("dumpe2fs", &["-h", a]), tool("dumpe2fs", &["-h", b]));
    for (x, y) in ha.lines().zip(hb.lines()).filter(|(x, y)| x != y) {
        report.push(format!("superblock: {x:?} vs {y:?}"));
    }
    let full = tool("dumpe2fs", &[a]);
    let num = |f: &str| dumpe2fs_field(&ha, f).parse::<u64>().unwrap();
    let (bs, ipg, isz) = (num("Block size"), num("Inodes per group"), num("Inode size"));
    assert_eq!(bs, 4096, "the block comparison assumes 4 KiB blocks");
    // Inode table ranges per group, in file system blocks.
    let tables: Vec<(u64, u64)> = full
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Inode table at "))
        .map(|r| {
            let range = r.split_whitespace().next().unwrap();
            let (s, e) = range.split_once('-').unwrap();
            (s.parse().unwrap(), e.parse().unwrap())
        })
        .collect();

    let blocks = differing_blocks(a_file, b_file, part.offset, part.len);
    let (mut inodes, mut other) = (BTreeSet::new(), Vec::new());
    for blk in &blocks {
        match tables.iter().enumerate().find(|(_, (s, e))| s <= blk && blk <= e) {
            Some((group, (start, _))) => {
                // Which inodes of this table block differ.
                let read = |f: &Path| {
                    let mut buf = vec![0u8; bs as usize];
                    let mut file = std::fs::File::open(f).unwrap();
                    file.seek(SeekFrom::Start(part.offset + blk * bs)).unwrap();
                    file.read_exact(&mut buf).unwrap();
                    buf
                };
                let (x, y) = (read(a_file), read(b_file));
                for (i, (ix, iy)) in x.chunks(isz as usize).zip(y.chunks(isz as usize)).enumerate() {
                    if ix != iy {
                        inodes.insert(group as u64 * ipg + (blk - start) * (bs / isz) + i as u64 + 1);
                    }
                }
            }
            None => other.push(*blk),
        }
    }
    report.push(format!(
        "{} of {} blocks differ: {} in inode tables ({} inodes), {} elsewhere",
        blocks.len(),
        part.len / bs,
        blocks.len() - other.len(),
        inodes.len(),
        other.len()
    ));

    // Which inode fields differ, per `debugfs stat`.
    let mut fields: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    if !inodes.is_empty() {
        let commands: Vec<String> = inodes.iter().map(|i| format!("stat <{i}>")).collect();
        let (sa, sb) = (debugfs_batch(a, &commands, work), debugfs_batch(b, &commands, work));
        for ((ino, x), y) in inodes.iter().zip(&sa).zip(&sb) {
            let (lx, ly): (Vec<&str>, Vec<&str>) = (x.lines().collect(), y.lines().collect());
            if lx.len() != ly.len() {
                fields.entry("(different stat layout)".into()).or_default().push(*ino);
                continue;
            }
            for (l1, _) in lx.iter().zip(&ly).filter(|(l1, l2)| l1 != l2) {
                let key = l1.split(':').next().unwrap_or(l1).trim().to_string();
                fields.entry(key).or_default().push(*ino);
            }
        }
        for (field, inos) in &fields {
            let examples = inode_paths(a, &inos[..inos.len().min(3)]);
            report.push(format!("inode field {field:?} differs in {} inodes, e.g. {examples:?}", inos.len()));
        }
        if let (Some(x), Some(y)) = (sa.first(), sb.first()) {
            report.push(format!("first differing inode, first build:\n{x}second build:\n{y}"));
        }
    }

    // Other blocks: whose data are they?
    if !other.is_empty() {
        let list: Vec<String> = other.iter().take(50).map(u64::to_string).collect();
        let out = tool("debugfs", &["-R", &format!("icheck {}", list.join(" ")), a]);
        let mut owners = BTreeSet::new();
        let mut metadata = Vec::new();
        for l in out.lines().skip(1) {
            match l.split_once('\t') {
                Some((blk, owner)) if owner.starts_with('<') => metadata.push(blk.to_string()),
                Some((_, owner)) => {
                    owners.insert(owner.parse::<u64>().unwrap_or(0));
                }
                None => {}
            }
        }
        let owners: Vec<u64> = owners.into_iter().collect();
        report.push(format!(
            "blocks outside the inode tables: files {:?}, metadata blocks {metadata:?}",
            inode_paths(a, &owners[..owners.len().min(20)])
        ));
    }

    let times_only = ["ctime", "atime", "Inode checksum"];
    if ha == hb && other.is_empty() && !fields.is_empty() && fields.keys().all(|f| times_only.contains(&f.as_str())) {
        report.push(
            "only inode change/access times (and so the inode checksums) differ: mke2fs -d copies st_ctime and \
             st_atime of the staged files into the image, and clamps them to SOURCE_DATE_EPOCH only from \
             e2fsprogs 1.47.1 on (commit f353a1f1 \"mke2fs: implement timestamp clamping if SOURCE_DATE_EPOCH \
             is set\")"
                .to_string(),
        );
    }
    report
}

#[test]
fn disk_is_reproducible() {
    if !enabled("disk_is_reproducible") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("disk-reproducible");
    let mut images = Vec::new();
    for run in ["first", "second"] {
        let dir = s.path().join(run);
        config_tree(
            &dir,
            &format!(
                "[Output]\nFormat=disk\nSeed={SEED}\n\n[Content]\n{PACKAGES}Bootable=no\nSourceDateEpoch={EPOCH}\n"
            ),
        );
        build(&dir, &[]);
        images.push(dir.join("image.raw"));
    }
    let (a, b) = (&images[0], &images[1]);
    let (ha, hb) = (sha256(a), sha256(b));
    if ha == hb {
        eprintln!("image.raw is reproducible: sha256 {ha}");
        return;
    }

    // Find out where they differ: the partition table, then each file system.
    let mut report = vec![format!("image.raw differs between two builds ({ha} vs {hb})")];
    let (la, lb) = (std::fs::metadata(a).unwrap().len(), std::fs::metadata(b).unwrap().len());
    let (ta, tb) = (gpt(a), gpt(b));
    let layout = |t: &Table| t.parts.iter().map(|p| (p.offset, p.len, p.uuid.clone())).collect::<Vec<_>>();
    if la != lb || ta.id != tb.id || layout(&ta) != layout(&tb) {
        report.push(format!("sizes or partition tables differ: {la} vs {lb} bytes\n{ta:#?}\n{tb:#?}"));
    } else {
        let first = ta.parts.first().map(|p| p.offset).unwrap_or(la);
        let last = ta.parts.last().map(|p| p.offset + p.len).unwrap_or(0);
        if !same_bytes(a, 0, b, 0, first) || !same_bytes(a, last, b, last, la - last) {
            report.push("the GPT (protective MBR, headers or partition entries) differs".into());
        }
        for part in &ta.parts {
            if same_bytes(a, part.offset, b, part.offset, part.len) {
                continue;
            }
            report.push(format!("partition {} differs:", part.name));
            let (lo_a, lo_b) = (Loop::part(a, part), Loop::part(b, part));
            if try_tool("dumpe2fs", &["-h", &lo_a.dev]).status.success() {
                let work = s.path().join(format!("diff-{}", part.name));
                std::fs::create_dir_all(&work).unwrap();
                report.extend(
                    explain_ext4(&lo_a.dev, &lo_b.dev, a, b, part, &work).into_iter().map(|l| format!("  {l}")),
                );
            } else {
                let n = differing_blocks(a, b, part.offset, part.len).len();
                report.push(format!("  {n} of {} 4 KiB blocks differ (not ext4)", part.len / 4096));
            }
        }
    }
    let mke2fs = try_tool("mke2fs", &["-V"]);
    report.push(format!("host {}", String::from_utf8_lossy(&mke2fs.stderr).lines().next().unwrap_or("mke2fs ?")));
    panic!("two builds with the same Seed= and SourceDateEpoch= differ:\n{}", report.join("\n"));
}
