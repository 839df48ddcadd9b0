//! End-to-end: `mkosi-initrd` builds a Debian trixie initrd for a trixie
//! kernel, the way a system runs it from kernel-install.
//!
//! Like the other end-to-end tests this only runs with `MKOSI_E2E=1` (it
//! needs root and the Debian archive or a warm package cache):
//!
//! ```sh
//! MKOSI_E2E=1 cargo test --release -p mkosi --test e2e_initrd -- --test-threads=1
//! ```
//!
//! The test host (Debian 12) has neither kernel modules nor trixie
//! repositories, so the tool reads a fake host tree instead of `/`
//! (`MKOSI_INITRD_HOST_ROOT`): the modules of the trixie cloud kernel
//! (unpacked from its package in the package cache, or from a tree built for
//! the purpose when the cache lacks it), the trixie repositories in
//! `etc/apt`, and host configuration that must end up in the initrd
//! (crypttab with a key file, vconsole.conf). As root the tool uses the
//! package cache in `/var`; the test bind-mounts the test package cache
//! (`MKOSI_E2E_CACHE`, default `/var/cache/mkosi-ci/debian~trixie~x86-64`)
//! over `/var/cache/apt` and `/var/lib/apt` in a private mount namespace,
//! so the host's own apt state is not touched.
//!
//! `--generic` keeps the built-in module list instead of the host's loaded
//! modules: test machines may run a kernel without loadable modules.
//!
//! Host requirements: unshare and mount (util-linux), dpkg-deb, depmod
//! (kmod), zstd, cpio, debian-archive-keyring.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const SOURCES: &str = "\
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

fn enabled(test: &str) -> bool {
    if std::env::var("MKOSI_E2E").as_deref() != Ok("1") {
        eprintln!("skipping {test}: set MKOSI_E2E=1 to run the end-to-end builds (they need network and root)");
        return false;
    }
    // SAFETY: getuid() cannot fail.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipping {test}: mkosi-initrd's package cache handling needs root");
        return false;
    }
    true
}

fn package_cache() -> PathBuf {
    let p = std::env::var_os("MKOSI_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mkosi-ci/debian~trixie~x86-64"));
    std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating the package cache {}: {e}", p.display()));
    p
}

/// Serialize with the other end-to-end tests, which share the package cache
/// (the same lock file as e2e.rs).
fn lock() -> std::fs::File {
    use std::os::fd::AsRawFd;
    let cache = package_cache();
    let path = cache.parent().unwrap_or(&cache).join(".mkosi-e2e.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: flock on a file descriptor we own; released when it is closed.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0, "flock {}", path.display());
    f
}

fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("MKOSI_E2E_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::Builder::new().prefix("mkosi-e2e-initrd-").tempdir_in(&base).unwrap();
    if std::env::var("MKOSI_E2E_KEEP").as_deref() == Ok("1") {
        eprintln!("keeping scratch directory {}", dir.path().display());
        let _ = dir.keep();
        return tempfile::Builder::new().prefix("mkosi-e2e-initrd-unused-").tempdir_in(&base).unwrap();
    }
    dir
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run(mut cmd: Command, what: &str) -> Output {
    let start = Instant::now();
    let o = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    eprintln!("{what}: {} in {:.1}s", o.status, start.elapsed().as_secs_f64());
    assert!(o.status.success(), "{what} failed ({}):\n{}", o.status, tail(&text(&o), 80));
    o
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// The newest versioned trixie cloud kernel package in the package cache.
fn cached_kernel_deb(cache: &Path) -> Option<PathBuf> {
    let archives = cache.join("cache/apt/archives");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(archives)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.starts_with("linux-image-")
                && n.as_bytes().get("linux-image-".len()).is_some_and(u8::is_ascii_digit)
                && n.contains("-cloud-amd64_")
                && n.ends_with(".deb")
        })
        .collect();
    debs.sort();
    debs.pop()
}

fn has_package_lists(cache: &Path) -> bool {
    std::fs::read_dir(cache.join("lib/apt/lists"))
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().ends_with("_Packages")))
        .unwrap_or(false)
}

/// Put the trixie cloud kernel's modules into `host/usr/lib/modules` (with
/// `modules.dep`) and return its version and kernel image.
fn install_kernel(host: &Path, work: &Path, cache: &Path) -> (String, PathBuf) {
    let unpacked = work.join("kernel");
    if cached_kernel_deb(cache).is_none() || !has_package_lists(cache) {
        // Cold cache: a trixie tree with the kernel fills it (metadata and package).
        let conf = work.join("kernel-tree");
        write(&conf, "mkosi.conf", "[Distribution]\nDistribution=debian\nRelease=trixie\n\n[Output]\nFormat=none\n\n[Content]\nBootable=no\nPackages=linux-image-cloud-amd64\n");
        write(&conf, "mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources", SOURCES);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mkosi"));
        cmd.current_dir(&conf)
            .arg(format!("--package-cache-dir={}", cache.display()))
            .arg(format!("--workspace-directory={}", work.display()))
            .arg("build");
        run(cmd, "mkosi build (filling the package cache with the kernel)");
    }
    let deb = cached_kernel_deb(cache).expect("no linux-image-*-cloud-amd64 package in the package cache");
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(&deb).arg(&unpacked);
    run(cmd, &format!("dpkg-deb -x {}", deb.display()));

    let modules = unpacked.join("usr/lib/modules");
    let kver = std::fs::read_dir(&modules)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("the kernel package has no modules directory");
    std::fs::create_dir_all(host.join("usr/lib/modules")).unwrap();
    std::fs::rename(modules.join(&kver), host.join("usr/lib/modules").join(&kver)).unwrap();
    // depmod -b wants <base>/lib/modules.
    std::os::unix::fs::symlink("usr/lib", host.join("lib")).unwrap();
    let mut cmd = Command::new("depmod");
    cmd.arg("-b").arg(host).arg(&kver);
    run(cmd, "depmod");
    (kver.clone(), unpacked.join(format!("boot/vmlinuz-{kver}")))
}

/// Member names of a zstd-compressed cpio archive.
fn cpio_members(archive: &Path, work: &Path) -> BTreeSet<String> {
    let plain = work.join("initrd.cpio");
    let mut cmd = Command::new("zstd");
    cmd.args(["-d", "-q", "-f", "-o"]).arg(&plain).arg(archive);
    run(cmd, "zstd -d");
    let mut cmd = Command::new("cpio");
    cmd.args(["-i", "-t", "--quiet", "-F"]).arg(&plain);
    let o = run(cmd, "cpio -t");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect()
}

fn extract(archive_plain: &Path, member: &str, dest: &Path) -> String {
    std::fs::create_dir_all(dest).unwrap();
    let mut cmd = Command::new("cpio");
    cmd.current_dir(dest).args(["-i", "-d", "--quiet", "-F"]).arg(archive_plain).arg(member);
    run(cmd, &format!("cpio -i {member}"));
    std::fs::read_to_string(dest.join(member)).unwrap_or_else(|e| panic!("{member}: {e}"))
}

#[test]
fn mkosi_initrd_builds_a_trixie_initrd() {
    if !enabled("mkosi_initrd_builds_a_trixie_initrd") {
        return;
    }
    let _lock = lock();
    let cache = package_cache();
    let dir = scratch();
    let work = dir.path();
    let host = work.join("host");
    let (kver, vmlinuz) = install_kernel(&host, work, &cache);

    write(&host, "etc/apt/sources.list.d/debian.sources", SOURCES);
    write(&host, "etc/crypttab", "# test\nroot UUID=0123 none luks,x-initrd.attach\nhome UUID=4567 none luks\n");
    write(&host, "etc/cryptsetup-keys.d/root.key", "secret\n");
    // Debian's layout: vconsole.conf links to the keyboard configuration.
    write(&host, "etc/default/keyboard", "XKBLAYOUT=\"de\"\n");
    std::os::unix::fs::symlink("default/keyboard", host.join("etc/vconsole.conf")).unwrap();

    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("mkosi-initrd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mkosi"), &tool).unwrap();
    let out = work.join("out");
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();

    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg("mount --bind \"$1/cache/apt\" /var/cache/apt; mount --bind \"$1/lib/apt\" /var/lib/apt; shift; exec \"$@\"")
        .arg("sh")
        .arg(&cache)
        .arg(&tool)
        .args(["--generic", "--kernel-version", &kver, "--output-dir"])
        .arg(&out)
        .arg("--kernel-image")
        .arg(&vmlinuz)
        .current_dir(work)
        .env("MKOSI_INITRD_HOST_ROOT", &host)
        .env("MKOSI_HOST_DISTRIBUTION", "debian")
        .env("MKOSI_HOST_RELEASE", "trixie")
        .env("TMPDIR", &tmp);
    run(cmd, &format!("mkosi-initrd --generic -k {kver}"));

    // The output: the file itself (not mkosi's symlink), root-only, moved into place.
    let initrd = out.join("initrd");
    let md = std::fs::symlink_metadata(&initrd).unwrap();
    assert!(md.is_file(), "{} is not a regular file", initrd.display());
    assert_eq!(md.mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o700);
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "only the initrd in the output directory: {left:?}");
    let scratch_left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(scratch_left.is_empty(), "scratch directories left behind: {scratch_left:?}");

    let members = cpio_members(&initrd, work);
    let kdir = format!("usr/lib/modules/{kver}");
    for want in [
        "init".to_string(),
        "etc/initrd-release".into(),
        "usr/lib/systemd/systemd".into(),
        "usr/lib/systemd/system/initrd.target".into(),
        "usr/lib/systemd/system-generators/systemd-fstab-generator".into(),
        "usr/bin/udevadm".into(),
        "usr/bin/kmod".into(),
        format!("{kdir}/modules.dep"),
        "etc/crypttab".into(),
        "etc/cryptsetup-keys.d/root.key".into(),
        "etc/vconsole.conf".into(),
        "etc/default/keyboard".into(),
    ] {
        assert!(members.contains(&want), "{want} is not in the initrd ({} members)", members.len());
    }
    let ko: Vec<&String> =
        members.iter().filter(|m| m.starts_with(&format!("{kdir}/kernel/")) && m.contains(".ko")).collect();
    assert!(
        ko.iter().any(|m| m.contains("/virtio_blk.ko")),
        "virtio_blk (default module list) missing: {} modules",
        ko.len()
    );
    assert!(!members.contains(&format!("{kdir}/vmlinuz")), "the kernel image is removed from the initrd");
    assert!(!members.iter().any(|m| m.starts_with("var/lib/dpkg")), "dpkg is removed on trixie");

    let plain = work.join("initrd.cpio");
    let crypttab = extract(&plain, "etc/crypttab", &work.join("x"));
    assert!(crypttab.contains("root UUID=0123 none luks,x-initrd.attach"), "{crypttab}");
    assert!(!crypttab.contains("home"), "only x-initrd.attach entries: {crypttab}");
    let keyboard = extract(&plain, "etc/default/keyboard", &work.join("x"));
    assert_eq!(keyboard, "XKBLAYOUT=\"de\"\n");
    let release = extract(&plain, "usr/lib/os-release", &work.join("x"));
    assert!(release.contains("VERSION_CODENAME=trixie"), "{release}");
}
