//! Running the `mkosi-initrd` tool against a fake host tree, and reading the
//! cpio archive it makes.
//!
//! The tool reads the host below `MKOSI_INITRD_HOST_ROOT` instead of `/`: the
//! test puts kernel modules (with `modules.dep`), `etc/apt` with the trixie
//! repositories and whatever host configuration it wants there. As root the
//! tool uses the package cache in `/var`; the test package cache is
//! bind-mounted over `/var/cache/apt` and `/var/lib/apt` in a private mount
//! namespace, so the host's own apt state is not touched.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{package_cache, run, tail, text};

/// Runs a command that must succeed, returning its output.
fn must(cmd: Command, what: &str) -> std::process::Output {
    let o = run(cmd, what);
    assert!(o.status.success(), "{what} failed ({}):\n{}", o.status, tail(&text(&o), 80));
    o
}

/// `mkosi-initrd ARGS… --output-dir OUT` (the multi-call name, a symlink in
/// `work/bin`) reading the host tree `host`, with `work/tmp` as its `TMPDIR`.
pub fn mkosi_initrd(host: &Path, work: &Path, out: &Path, args: &[OsString]) {
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("mkosi-initrd");
    if !tool.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mkosi"), &tool).unwrap();
    }
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg("mount --bind \"$1/cache/apt\" /var/cache/apt; mount --bind \"$1/lib/apt\" /var/lib/apt; shift; exec \"$@\"")
        .arg("sh")
        .arg(package_cache())
        .arg(&tool)
        .args(args)
        .arg("--output-dir")
        .arg(out)
        .current_dir(work)
        .env("MKOSI_INITRD_HOST_ROOT", host)
        .env("MKOSI_HOST_DISTRIBUTION", "debian")
        .env("MKOSI_HOST_RELEASE", "trixie")
        .env("TMPDIR", &tmp);
    let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    must(cmd, &format!("mkosi-initrd {}", shown.join(" ")));
}

/// Decompresses the zstd-compressed cpio `archive` to `work/initrd.cpio` and
/// returns that path with the archive's member names (without `./`).
pub fn cpio_members(archive: &Path, work: &Path) -> (PathBuf, BTreeSet<String>) {
    let plain = work.join("initrd.cpio");
    let mut cmd = Command::new("zstd");
    cmd.args(["-d", "-q", "-f", "-o"]).arg(&plain).arg(archive);
    must(cmd, "zstd -d");
    let mut cmd = Command::new("cpio");
    cmd.args(["-i", "-t", "--quiet", "-F"]).arg(&plain);
    let o = must(cmd, "cpio -t");
    let members = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect();
    (plain, members)
}

/// Extracts `member` of the uncompressed cpio archive `plain` below `dest`
/// and returns its text.
pub fn extract(plain: &Path, member: &str, dest: &Path) -> String {
    std::fs::create_dir_all(dest).unwrap();
    let mut cmd = Command::new("cpio");
    cmd.current_dir(dest).args(["-i", "-d", "--quiet", "-F"]).arg(plain).arg(member);
    must(cmd, &format!("cpio -i {member}"));
    std::fs::read_to_string(dest.join(member)).unwrap_or_else(|e| panic!("{member}: {e}"))
}

/// The kernel modules (`.ko` files, compressed or not) of kernel `kver` in
/// the archive's member list, by module name (`virtio_blk`).
pub fn modules(members: &BTreeSet<String>, kver: &str) -> BTreeSet<String> {
    let kdir = format!("usr/lib/modules/{kver}/");
    members
        .iter()
        .filter(|m| m.starts_with(&kdir))
        .filter_map(|m| {
            let name = m.rsplit('/').next()?;
            let (stem, _) = name.split_once(".ko")?;
            Some(stem.replace('-', "_"))
        })
        .collect()
}
