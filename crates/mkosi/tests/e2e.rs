//! End-to-end builds of real Debian trixie images from the Debian archive.
//!
//! These tests download packages and take minutes, so they only run with
//! `MKOSI_E2E=1`; otherwise each prints a skip message and passes, which keeps
//! a plain `cargo test` fast and offline. CI runs them as
//!
//! ```sh
//! MKOSI_E2E=1 cargo test --release -p mkosi --test e2e -- --test-threads=1
//! ```
//!
//! Environment:
//! - `MKOSI_E2E_CACHE`: package cache (default `/var/cache/mkosi-ci/debian~trixie~x86-64`),
//!   kept between runs so only the first run downloads everything;
//! - `MKOSI_E2E_UNPRIVILEGED_CACHE`: the same for the build as user `mkosi-test`
//!   (default `/var/cache/mkosi-ci/mkosi-test/debian~trixie~x86-64`, owned by that user:
//!   a cache written by real root is not writable from its user namespace);
//! - `MKOSI_E2E_TMPDIR`: where scratch directories go (default `$TMPDIR` or `/tmp`);
//! - `MKOSI_E2E_KEEP=1`: keep the scratch directories for inspection.
//!
//! Builds share the package cache, so the tests serialize themselves (a
//! global lock) even when the harness runs them in parallel.
//!
//! Host requirements (scripts/test.sh installs them on Debian 12):
//! debian-archive-keyring, zstd, cpio, tar, coreutils (sha256sum), uidmap
//! (newuidmap/newgidmap), util-linux (setpriv), and a user `mkosi-test` with
//! a subordinate id range in /etc/subuid and /etc/subgid for the unprivileged
//! test (run as root; skipped otherwise).

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CONFIG: &str = "\
[Distribution]
Distribution=debian
Release=trixie

[Output]
Format=directory

[Content]
Packages=systemd,udev,dbus
";

const SKELETON_FILE: &str = "etc/mkosi-e2e/skeleton.txt";
const SKELETON_TEXT: &str = "from the skeleton tree\n";
const EXTRA_FILE: &str = "usr/share/mkosi-e2e/extra.txt";
const EXTRA_TEXT: &str = "from the extra tree\n";

/// The configuration of the tests: mkosi.conf, the sandbox tree, a skeleton
/// tree and an extra tree.
fn config_tree(dir: &Path, conf: &str) {
    write(dir, "mkosi.conf", conf);
    write(dir, "mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources", SOURCES);
    write(dir, &format!("mkosi.skeleton/{SKELETON_FILE}"), SKELETON_TEXT);
    write(dir, &format!("mkosi.extra/{EXTRA_FILE}"), EXTRA_TEXT);
}

/// `KEY=value` pairs of an os-release file.
fn os_release(p: &Path) -> BTreeMap<String, String> {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    s.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string())).collect()
}

/// Package name → status from a dpkg status file.
fn dpkg_status(p: &Path) -> BTreeMap<String, String> {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut out = BTreeMap::new();
    for stanza in s.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
        };
        if let (Some(pkg), Some(status)) = (field("Package"), field("Status")) {
            out.insert(pkg.to_string(), status.to_string());
        }
    }
    out
}

/// Check the image tree of the test configuration.
fn check_image_tree(root: &Path) {
    let osr = os_release(&root.join("usr/lib/os-release"));
    assert_eq!(osr.get("ID").map(String::as_str), Some("debian"), "{osr:?}");
    assert_eq!(osr.get("VERSION_CODENAME").map(String::as_str), Some("trixie"), "{osr:?}");

    let status = dpkg_status(&root.join("var/lib/dpkg/status"));
    for pkg in ["systemd", "udev", "dbus"] {
        assert_eq!(
            status.get(pkg).map(String::as_str),
            Some("install ok installed"),
            "{pkg} is not installed ({} packages in var/lib/dpkg/status)",
            status.len()
        );
    }

    assert_eq!(std::fs::read_to_string(root.join(SKELETON_FILE)).unwrap(), SKELETON_TEXT);
    assert_eq!(std::fs::read_to_string(root.join(EXTRA_FILE)).unwrap(), EXTRA_TEXT);
}

/// The paths in a tree, relative, without following symlinks.
fn tree_paths(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
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

/// Normalize archive member names (`./usr/`, `usr`) to tree paths (`usr`).
fn normalize(names: &str) -> BTreeSet<String> {
    names
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect()
}

/// Decompress a zstd file with the zstd tool.
fn unzstd(src: &Path, dst: &Path) {
    let mut cmd = Command::new("zstd");
    cmd.args(["-d", "-q", "-f", "-o"]).arg(dst).arg(src);
    let o = run(cmd, &format!("zstd -d {}", src.display()));
    assert!(o.status.success(), "zstd -d {}: {}", src.display(), text(&o));
}

fn listing(mut cmd: Command, what: &str) -> BTreeSet<String> {
    cmd.stderr(Stdio::piped());
    let o = run(cmd, what);
    assert!(o.status.success(), "{what}: {}", text(&o));
    normalize(&String::from_utf8_lossy(&o.stdout))
}

fn set_diff(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).take(20).cloned().collect()
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(o.status.success(), "sha256sum {}: {}", p.display(), text(&o));
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Entries of a directory (names), for "no output" / "nothing left" checks.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

// --- (a) ------------------------------------------------------------------------

#[test]
fn directory_build() {
    if !enabled("directory_build") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("directory");
    let dir = s.path();
    config_tree(dir, CONFIG);
    build(dir, &[]);

    let image = dir.join("image");
    assert!(std::fs::symlink_metadata(&image).unwrap().is_dir(), "the output is not a directory");
    check_image_tree(&image);
    assert_eq!(names(&dir.join("workspace")), Vec::<String>::new(), "leftovers in the workspace directory");

    let archives = package_cache().join("cache/apt/archives");
    let debs = names(&archives).into_iter().filter(|n| n.ends_with(".deb")).count();
    assert!(debs > 50, "the package cache {} holds only {debs} packages", archives.display());
}

// --- (b) ------------------------------------------------------------------------

#[test]
fn tar_and_cpio_match_directory() {
    if !enabled("tar_and_cpio_match_directory") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("formats");
    let dir = s.path();
    config_tree(dir, CONFIG);
    build(dir, &["--output=dir"]);
    build(dir, &["--format=tar", "--output=archive"]);
    build(dir, &["--format=cpio", "--output=archive"]);

    let tree = dir.join("dir");
    check_image_tree(&tree);
    let expected = tree_paths(&tree);

    // Both archives are zstd-compressed by default, with the `Output=` name
    // as a symlink to them.
    for file in ["archive.tar.zst", "archive.cpio.zst"] {
        assert!(dir.join(file).is_file(), "{file} missing: {:?}", names(dir));
    }
    assert_eq!(std::fs::read_link(dir.join("archive")).unwrap(), Path::new("archive.cpio.zst"));

    unzstd(&dir.join("archive.tar.zst"), &dir.join("plain.tar"));
    unzstd(&dir.join("archive.cpio.zst"), &dir.join("plain.cpio"));

    // tar leaves out the contents of the API and temporary file systems.
    let excluded = ["dev", "proc", "sys", "tmp", "run", "var/tmp"];
    let tar_expected: BTreeSet<String> =
        expected.iter().filter(|p| !excluded.iter().any(|x| p.starts_with(&format!("{x}/")))).cloned().collect();
    let mut tar = Command::new("tar");
    tar.args(["--quoting-style=literal", "-tf"]).arg(dir.join("plain.tar"));
    let tar_paths = listing(tar, "tar -t");
    assert!(
        tar_paths == tar_expected,
        "tar listing differs from the directory tree: only in tar: {:?}; only in the tree: {:?}",
        set_diff(&tar_paths, &tar_expected),
        set_diff(&tar_expected, &tar_paths)
    );

    // CleanPackageMetadata=auto keeps package manager metadata in directory
    // and tar outputs only; elsewhere it removes the metadata of package
    // managers the image does not contain (apt here, dpkg stays).
    assert!(!tree.join("usr/bin/apt-get").exists(), "apt is in the image: the expectations below are wrong");
    let cleaned = ["var/lib/apt", "var/cache/apt"];
    let expected: BTreeSet<String> = expected
        .iter()
        .filter(|p| !cleaned.iter().any(|x| *p == x || p.starts_with(&format!("{x}/"))))
        .cloned()
        .collect();
    assert!(expected.contains("var/lib/dpkg/status"));
    let mut cpio = Command::new("cpio");
    cpio.args(["-t", "--quiet", "-F"]).arg(dir.join("plain.cpio"));
    let cpio_paths = listing(cpio, "cpio -t");
    assert!(
        cpio_paths == expected,
        "cpio listing differs from the directory tree: only in cpio: {:?}; only in the tree: {:?}",
        set_diff(&cpio_paths, &expected),
        set_diff(&expected, &cpio_paths)
    );

    // Contents survive the archives.
    let o = Command::new("tar").arg("-xOf").arg(dir.join("plain.tar")).arg(format!("./{EXTRA_FILE}")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), EXTRA_TEXT, "{}", text(&o));
    let extracted = dir.join("from-cpio");
    std::fs::create_dir(&extracted).unwrap();
    let o = Command::new("cpio")
        .current_dir(&extracted)
        .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
        .arg(dir.join("plain.cpio"))
        .arg(SKELETON_FILE)
        .output()
        .unwrap();
    assert!(o.status.success(), "cpio -i: {}", text(&o));
    assert_eq!(std::fs::read_to_string(extracted.join(SKELETON_FILE)).unwrap(), SKELETON_TEXT);
}

// --- (c) ------------------------------------------------------------------------

const TEST_USER: &str = "mkosi-test";

fn id_of(flag: &str, user: &str) -> Option<u32> {
    let o = Command::new("id").arg(flag).arg(user).output().ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// The start of `user`'s first range in /etc/subuid or /etc/subgid.
fn subid_start(file: &str, user: &str, id: u32) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        (f.len() == 3 && (f[0] == user || f[0] == id.to_string()) && f[2].parse::<u32>().ok()? > 0)
            .then(|| f[1].parse().ok())
            .flatten()
    })
}

/// A group's id from an image's /etc/group.
fn image_gid(root: &Path, group: &str) -> u32 {
    let s = std::fs::read_to_string(root.join("etc/group")).unwrap();
    s.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == group).then(|| f[2].parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("group {group} not in the image's /etc/group"))
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    if std::fs::symlink_metadata(p).unwrap().is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

#[test]
fn unprivileged_build() {
    if !enabled("unprivileged_build") {
        return;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipping unprivileged_build: needs root to run a build as {TEST_USER}");
        return;
    }
    let (Some(uid), Some(gid)) = (id_of("-u", TEST_USER), id_of("-g", TEST_USER)) else {
        eprintln!("skipping unprivileged_build: no user {TEST_USER} (scripts/test.sh creates it)");
        return;
    };
    let (Some(_subuid), Some(subgid)) =
        (subid_start("/etc/subuid", TEST_USER, uid), subid_start("/etc/subgid", TEST_USER, uid))
    else {
        eprintln!("skipping unprivileged_build: {TEST_USER} has no range in /etc/subuid and /etc/subgid");
        return;
    };
    let _lock = serial();

    // The binary and everything the build reads must be accessible to the user.
    let s = Scratch::new("unprivileged");
    let dir = s.path().join("conf");
    std::fs::create_dir(&dir).unwrap();
    config_tree(&dir, CONFIG);
    let bin = s.path().join("bin/mkosi");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_mkosi"), &bin).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    chown_tree(s.path(), uid, gid);

    // A cache written by real root is not writable as root of the user's
    // namespace, so the user has a cache of its own.
    let cache = std::env::var_os("MKOSI_E2E_UNPRIVILEGED_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mkosi-ci/mkosi-test/debian~trixie~x86-64"));
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::lchown(&cache, Some(uid), Some(gid)).unwrap();

    let as_user = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.current_dir(&dir)
            .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--init-groups".into()])
            .args(["env", "-i"])
            .arg(format!("PATH={}", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())))
            .arg(format!("HOME={}", s.path().display()))
            .arg(format!("USER={TEST_USER}"))
            .arg(format!("LOGNAME={TEST_USER}"))
            .arg(&bin)
            .arg(format!("--package-cache-dir={}", cache.display()))
            .arg(format!("--workspace-directory={}", dir.join("workspace").display()))
            .args(args);
        run(cmd, &format!("mkosi {} (as {TEST_USER})", args.join(" ")))
    };

    assert_success(&as_user(&["build"]));
    let image = dir.join("image");
    check_image_tree(&image);

    // Root of the image is the user; other ids map into the subordinate ranges.
    let md = std::fs::symlink_metadata(&image).unwrap();
    assert_eq!((md.uid(), md.gid()), (uid, gid), "the output is not owned by {TEST_USER}");
    let bash = std::fs::symlink_metadata(image.join("usr/bin/bash")).unwrap();
    assert_eq!((bash.uid(), bash.gid()), (uid, gid), "root-owned files should map to {TEST_USER}");
    let mail = image_gid(&image, "mail");
    let md = std::fs::symlink_metadata(image.join("var/mail")).unwrap();
    assert_eq!(
        md.gid(),
        subgid + mail - 1,
        "var/mail (group mail={mail}) should be owned by subgid {subgid} + {mail} - 1"
    );
    let journal = image_gid(&image, "systemd-journal");
    let md = std::fs::symlink_metadata(image.join("var/log/journal")).unwrap();
    assert_eq!(md.gid(), subgid + journal - 1, "var/log/journal (group systemd-journal={journal})");
    for name in names(&dir) {
        let md = std::fs::symlink_metadata(dir.join(&name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (uid, gid), "{name} in the output directory is not owned by {TEST_USER}");
    }
    assert_eq!(names(&dir.join("workspace")), Vec::<String>::new(), "leftovers in the workspace directory");

    // A tar built without privileges records the image's own ids.
    assert_success(&as_user(&["--format=tar", "--compress-output=none", "--output=archive", "build"]));
    let md = std::fs::symlink_metadata(dir.join("archive.tar")).unwrap();
    assert_eq!((md.uid(), md.gid()), (uid, gid), "archive.tar is not owned by {TEST_USER}");
    let o = Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(dir.join("archive.tar"))
        .args(["./var/mail/", "./usr/bin/bash"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "tar -tv: {}", text(&o));
    let owners: BTreeMap<&str, &str> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((*f.get(5)?, *f.get(1)?))
        })
        .collect();
    assert_eq!(owners.get("./var/mail/"), Some(&format!("0/{mail}").as_str()), "owners in the tar:\n{listing}");
    assert_eq!(owners.get("./usr/bin/bash"), Some(&"0/0"), "owners in the tar:\n{listing}");
}

// --- (d) ------------------------------------------------------------------------

/// One member of a tar archive: its name, its header blocks (including pax
/// and GNU long-name headers before it) and its data.
struct Member {
    name: String,
    header: Vec<u8>,
    data: Vec<u8>,
}

fn octal(field: &[u8]) -> usize {
    if field[0] & 0x80 != 0 {
        // GNU base-256.
        return field[1..].iter().fold(0usize, |n, b| (n << 8) | *b as usize);
    }
    let s: String = field.iter().take_while(|b| **b != 0 && **b != b' ').map(|b| *b as char).collect();
    usize::from_str_radix(s.trim(), 8).unwrap_or(0)
}

fn cstr(field: &[u8]) -> String {
    String::from_utf8_lossy(&field[..field.iter().position(|b| *b == 0).unwrap_or(field.len())]).into_owned()
}

fn tar_members(data: &[u8]) -> Vec<Member> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut pending = Vec::new();
    let mut long_name: Option<String> = None;
    while off + 512 <= data.len() {
        let block = &data[off..off + 512];
        if block.iter().all(|b| *b == 0) {
            break;
        }
        let size = octal(&block[124..136]);
        let body = &data[off + 512..(off + 512 + size).min(data.len())];
        let next = off + 512 + size.div_ceil(512) * 512;
        match block[156] {
            b'x' | b'L' | b'K' | b'g' => {
                if block[156] == b'x' {
                    for rec in String::from_utf8_lossy(body).split('\n') {
                        if let Some((_, kv)) = rec.split_once(' ') {
                            if let Some(path) = kv.strip_prefix("path=") {
                                long_name = Some(path.to_string());
                            }
                        }
                    }
                } else if block[156] == b'L' {
                    long_name = Some(cstr(body));
                }
                pending.extend_from_slice(&data[off..next.min(data.len())]);
            }
            _ => {
                let name = long_name.take().unwrap_or_else(|| {
                    let (prefix, name) = (cstr(&block[345..500]), cstr(&block[0..100]));
                    if &block[257..262] == b"ustar" && !prefix.is_empty() {
                        format!("{prefix}/{name}")
                    } else {
                        name
                    }
                });
                let mut header = std::mem::take(&mut pending);
                header.extend_from_slice(block);
                out.push(Member { name, header, data: body.to_vec() });
            }
        }
        off = next;
    }
    out
}

/// Describe how two tar archives differ, member by member.
fn tar_differences(a: &[u8], b: &[u8]) -> Vec<(String, &'static str)> {
    let (ma, mb) = (tar_members(a), tar_members(b));
    let mut out = Vec::new();
    let names_a: Vec<&str> = ma.iter().map(|m| m.name.as_str()).collect();
    let names_b: Vec<&str> = mb.iter().map(|m| m.name.as_str()).collect();
    if names_a != names_b {
        let sa: BTreeSet<&str> = names_a.iter().copied().collect();
        let sb: BTreeSet<&str> = names_b.iter().copied().collect();
        for n in sa.symmetric_difference(&sb) {
            out.push((n.to_string(), "only in one archive"));
        }
        if out.is_empty() {
            out.push(("(member order)".to_string(), "same members in a different order"));
        }
        return out;
    }
    for (x, y) in ma.iter().zip(&mb) {
        if x.header != y.header {
            out.push((x.name.clone(), "header (metadata) differs"));
        } else if x.data != y.data {
            out.push((x.name.clone(), "content differs"));
        }
    }
    if out.is_empty() && a != b {
        out.push(("(archive)".to_string(), "padding or end-of-archive blocks differ"));
    }
    out
}

#[test]
fn tar_is_reproducible() {
    if !enabled("tar_is_reproducible") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("reproducible");
    let mut outputs = Vec::new();
    for run in ["first", "second"] {
        let dir = s.path().join(run);
        std::fs::create_dir(&dir).unwrap();
        config_tree(&dir, CONFIG);
        build(&dir, &["--format=tar", "--source-date-epoch=1700000000"]);
        outputs.push(dir.join("image.tar.zst"));
    }
    let (a, b) = (sha256(&outputs[0]), sha256(&outputs[1]));
    if a == b {
        eprintln!("image.tar.zst is reproducible: sha256 {a}");
        return;
    }

    // Find out what differs: compression, archive structure, or content.
    for p in &outputs {
        unzstd(p, &p.with_extension(""));
    }
    let tars: Vec<Vec<u8>> = outputs.iter().map(|p| std::fs::read(p.with_extension("")).unwrap()).collect();
    assert!(tars[0] != tars[1], "the tar archives are identical but their zstd compressions differ ({a} vs {b})");
    let diffs = tar_differences(&tars[0], &tars[1]);
    let report: Vec<String> = diffs.iter().map(|(n, why)| format!("  {n}: {why}")).collect();
    eprintln!("image.tar.zst differs between two builds ({a} vs {b}):\n{}", report.join("\n"));
    panic!("two builds with the same SourceDateEpoch differ:\n{}", report.join("\n"));
}

#[test]
fn cpio_is_reproducible() {
    if !enabled("cpio_is_reproducible") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("reproducible-cpio");
    let mut sums = Vec::new();
    for run in ["first", "second"] {
        let dir = s.path().join(run);
        std::fs::create_dir(&dir).unwrap();
        config_tree(&dir, CONFIG);
        build(&dir, &["--format=cpio", "--source-date-epoch=1700000000"]);
        sums.push(sha256(&dir.join("image.cpio.zst")));
    }
    assert_eq!(sums[0], sums[1], "two cpio builds with the same SourceDateEpoch differ");
}

// --- (e) and (f) --------------------------------------------------------------

#[test]
fn unknown_package_fails_cleanly() {
    if !enabled("unknown_package_fails_cleanly") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("unknown-package");
    let dir = s.path();
    config_tree(dir, &CONFIG.replace("Packages=systemd,udev,dbus", "Packages=systemd,no-such-package-xyz"));
    let o = mkosi(dir, &["build"]);
    let out = text(&o);
    assert!(!o.status.success(), "the build succeeded:\n{}", tail(&out, 40));
    let err = String::from_utf8_lossy(&o.stderr);
    let failure = err.lines().find(|l| l.contains(" failed: ")).unwrap_or_else(|| {
        panic!("no line naming the failed step on stderr:\n{}", tail(&err, 40));
    });
    assert!(failure.contains("Installing the distribution failed"), "{failure}");
    assert!(failure.contains("apt-get") && failure.contains("no-such-package-xyz"), "{failure}");
    assert!(err.contains("Unable to locate package no-such-package-xyz"), "{}", tail(&err, 40));

    let mut left = names(dir);
    left.retain(|n| !n.starts_with("mkosi.") && n != "workspace");
    assert_eq!(left, Vec::<String>::new(), "outputs left behind by a failed build");
    assert_eq!(names(&dir.join("workspace")), Vec::<String>::new(), "leftovers in the workspace directory");
}

/// Identity of an output: inode, mtime and a marker file inside it.
fn fingerprint(p: &Path) -> (u64, i64, String) {
    let md = std::fs::symlink_metadata(p).unwrap();
    let marker = std::fs::read_to_string(p.join("e2e-marker")).unwrap_or_default();
    (md.ino(), md.mtime(), marker)
}

#[test]
fn existing_output_is_kept() {
    if !enabled("existing_output_is_kept") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("existing-output");
    let dir = s.path();
    config_tree(dir, CONFIG);
    build(dir, &[]);
    let image = dir.join("image");
    std::fs::write(image.join("e2e-marker"), "first build\n").unwrap();
    let before = fingerprint(&image);

    // (e) Building again without -f: nothing happens.
    let o = mkosi(dir, &["build"]);
    assert_success(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exists already") && err.contains("--force"), "{}", tail(&err, 20));
    assert!(!err.contains("Installing"), "the second build did work:\n{}", tail(&err, 20));
    assert_eq!(fingerprint(&image), before, "the output changed");

    // (f) A failing build without -f (another format, so it does run)
    // leaves the previous output alone.
    let o = mkosi(dir, &["--format=tar", "--package=no-such-package-xyz", "build"]);
    assert!(!o.status.success(), "the build succeeded");
    assert_eq!(fingerprint(&image), before, "the failed build touched the previous output");
    assert!(std::fs::symlink_metadata(&image).unwrap().is_dir());
    check_image_tree(&image);
    let mut left = names(dir);
    left.retain(|n| !n.starts_with("mkosi.") && n != "workspace" && n != "image");
    assert_eq!(left, Vec::<String>::new(), "outputs left behind by the failed build");
    assert_eq!(names(&dir.join("workspace")), Vec::<String>::new(), "leftovers in the workspace directory");
}
