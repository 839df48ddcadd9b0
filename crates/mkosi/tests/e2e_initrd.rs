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

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::initrd::{cpio_members, extract, mkosi_initrd, modules};
use common::*;

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
        config_dir(&conf, "[Distribution]\nDistribution=debian\nRelease=trixie\n\n[Output]\nFormat=none\n\n[Content]\nBootable=no\nPackages=linux-image-cloud-amd64\n");
        build(&conf, &[]);
    }
    let deb = cached_kernel_deb(cache).expect("no linux-image-*-cloud-amd64 package in the package cache");
    tool(&["dpkg-deb", "-x", &deb.display().to_string(), &unpacked.display().to_string()]);

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
    tool(&["depmod", "-b", &host.display().to_string(), &kver]);
    (kver.clone(), unpacked.join(format!("boot/vmlinuz-{kver}")))
}

#[test]
fn mkosi_initrd_builds_a_trixie_initrd() {
    if !enabled("mkosi_initrd_builds_a_trixie_initrd") {
        return;
    }
    if !is_root() {
        eprintln!("skipping: mkosi-initrd's package cache handling needs root");
        return;
    }
    let _lock = serial();
    let cache = package_cache();
    let dir = Scratch::new("initrd");
    let work = dir.path();
    let host = work.join("host");
    let (kver, vmlinuz) = install_kernel(&host, work, &cache);

    write(&host, "etc/apt/sources.list.d/debian.sources", SOURCES);
    write(&host, "etc/crypttab", "# test\nroot UUID=0123 none luks,x-initrd.attach\nhome UUID=4567 none luks\n");
    write(&host, "etc/cryptsetup-keys.d/root.key", "secret\n");
    // Debian's layout: vconsole.conf links to the keyboard configuration.
    write(&host, "etc/default/keyboard", "XKBLAYOUT=\"de\"\n");
    std::os::unix::fs::symlink("default/keyboard", host.join("etc/vconsole.conf")).unwrap();

    let out = work.join("out");
    let args =
        ["--generic", "--kernel-version", &kver, "--kernel-image", &vmlinuz.display().to_string()].map(Into::into);
    mkosi_initrd(&host, work, &out, &args);
    let tmp = work.join("tmp");

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

    let (plain, members) = cpio_members(&initrd, work);
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
    let ko = modules(&members, &kver);
    assert!(ko.contains("virtio_blk"), "virtio_blk (default module list) missing: {} modules", ko.len());
    assert!(!members.contains(&format!("{kdir}/vmlinuz")), "the kernel image is removed from the initrd");
    assert!(!members.iter().any(|m| m.starts_with("var/lib/dpkg")), "dpkg is removed on trixie");

    let crypttab = extract(&plain, "etc/crypttab", &work.join("x"));
    assert!(crypttab.contains("root UUID=0123 none luks,x-initrd.attach"), "{crypttab}");
    assert!(!crypttab.contains("home"), "only x-initrd.attach entries: {crypttab}");
    let keyboard = extract(&plain, "etc/default/keyboard", &work.join("x"));
    assert_eq!(keyboard, "XKBLAYOUT=\"de\"\n");
    let release = extract(&plain, "usr/lib/os-release", &work.join("x"));
    assert!(release.contains("VERSION_CODENAME=trixie"), "{release}");
}
