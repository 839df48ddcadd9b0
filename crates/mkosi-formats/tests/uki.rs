//! UKIs built from a real systemd-stub and a real kernel: checked with
//! `objdump -h` and, where ukify is available, compared byte for byte with
//! what `ukify build` writes for the same inputs.
//!
//! Inputs are looked up in (first hit wins):
//! - stubs: `$MKOSI_TEST_EFI_STUB_DIR`, `usr/lib/systemd/boot/efi` of the CI tools
//!   tree, of the CI disk tree, of the host, else extracted from a cached
//!   `systemd-boot-efi_*.deb` below `/var/cache/mkosi-ci`;
//! - kernel: `$MKOSI_TEST_KERNEL`, the CI disk tree's `usr/lib/modules/*/vmlinuz`,
//!   else extracted from a cached `linux-image-*.deb`;
//! - ukify: `usr/lib/systemd/ukify` in the CI tools tree (systemd 257), run with
//!   `chroot` inside `unshare -m` (so every mount vanishes with it) when running
//!   as root or with `MKOSI_UKIFY_COMPARE=1`. Nothing is written to the tree:
//!   the scratch directory is bind mounted on its `/mnt` and a tmpfs on its `/tmp`.
//!
//! Result of the comparison with ukify 257 and the Debian trixie stubs and
//! kernel: identical bytes for UKIs (with one or several initrds, microcode,
//! devicetree, pcrpkey, extra SBAT text), for PE addons, for profile binaries
//! and for UKIs joining profiles.

use std::path::{Path, PathBuf};
use std::process::Command;

use mkosi_formats::pe::{kernel_type, KernelType, PeFile};
use mkosi_formats::uki::{self, UkiInput};

const CI: &str = "/var/cache/mkosi-ci";
const TOOLS_TREE: &str = "/var/cache/mkosi-ci/bench/upstream/mkosi.tools";
const DISK_TREE: &str = "/var/cache/mkosi-ci/bench-disk/tree";

fn cached_debs(prefix: &str) -> Vec<PathBuf> {
    let mut debs = Vec::new();
    let Ok(dirs) = std::fs::read_dir(CI) else { return debs };
    for d in dirs.flatten() {
        let archives = d.path().join("cache/apt/archives");
        let Ok(entries) = std::fs::read_dir(&archives) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && name.ends_with(".deb") {
                debs.push(e.path());
            }
        }
    }
    debs.sort();
    debs
}

fn extract_deb(deb: &Path, into: &Path) -> bool {
    Command::new("dpkg-deb").arg("-x").arg(deb).arg(into).status().is_ok_and(|s| s.success())
}

fn find_stubs(scratch: &Path) -> Option<PathBuf> {
    let has = |d: &Path| d.join("linuxx64.efi.stub").is_file() && d.join("addonx64.efi.stub").is_file();
    if let Some(d) = std::env::var_os("MKOSI_TEST_EFI_STUB_DIR").map(PathBuf::from) {
        return has(&d).then_some(d);
    }
    for root in [TOOLS_TREE, DISK_TREE, "/"] {
        let d = Path::new(root).join("usr/lib/systemd/boot/efi");
        if has(&d) {
            return Some(d);
        }
    }
    for deb in cached_debs("systemd-boot-efi_").into_iter().rev() {
        let into = scratch.join("systemd-boot-efi");
        let d = into.join("usr/lib/systemd/boot/efi");
        if extract_deb(&deb, &into) && has(&d) {
            return Some(d);
        }
    }
    None
}

fn find_kernel(scratch: &Path) -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("MKOSI_TEST_KERNEL").map(PathBuf::from) {
        return k.is_file().then_some(k);
    }
    let modules = Path::new(DISK_TREE).join("usr/lib/modules");
    if let Ok(entries) = std::fs::read_dir(&modules) {
        let mut kernels: Vec<PathBuf> =
            entries.flatten().map(|e| e.path().join("vmlinuz")).filter(|k| k.is_file()).collect();
        kernels.sort();
        if let Some(k) = kernels.pop() {
            return Some(k);
        }
    }
    for deb in cached_debs("linux-image-").into_iter().rev() {
        let into = scratch.join("linux-image");
        if !extract_deb(&deb, &into) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(into.join("boot")) else { continue };
        if let Some(k) = entries
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        {
            return Some(k);
        }
    }
    None
}

/// Whether ukify can be run here (and should be).
fn ukify_available() -> bool {
    let wanted = std::env::var("MKOSI_UKIFY_COMPARE").is_ok_and(|v| v == "1") || unsafe { libc::geteuid() } == 0;
    let tree = Path::new(TOOLS_TREE);
    wanted
        && tree.join("usr/lib/systemd/ukify").is_file()
        && tree.join("mnt").is_dir()
        && tree.join("tmp").is_dir()
        && Command::new("unshare").arg("--version").output().is_ok()
}

/// Run `ukify build <args>` in the tools tree with `scratch` as its `/mnt` (and
/// the working directory); paths in `args` are relative to `scratch`.
fn run_ukify(scratch: &Path, args: &[&str]) {
    let script = r#"
set -e
T=$1; S=$2; shift 2
mount --make-rprivate /
mount --bind /proc "$T/proc"
mount --rbind /dev "$T/dev"
mount --bind "$S" "$T/mnt"
mount -t tmpfs tmpfs "$T/tmp"
exec chroot "$T" /bin/sh -c 'cd /mnt && exec /usr/bin/ukify build "$@"' ukify "$@"
"#;
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh", TOOLS_TREE])
        .arg(scratch)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running unshare");
    assert!(
        out.status.success(),
        "ukify {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `objdump -h`: (name, size, vma, file offset) of each section.
fn objdump_sections(path: &Path) -> Vec<(String, u64, u64, u64)> {
    let out = Command::new("objdump").arg("-h").arg(path).output().expect("running objdump");
    assert!(out.status.success(), "objdump -h {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sections = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 7 && f[0].parse::<u32>().is_ok() {
            let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
            sections.push((f[1].to_string(), hex(f[2]), hex(f[3]), hex(f[5])));
        }
    }
    sections
}

fn check_layout(path: &Path, expected: &[&str]) {
    let sections = objdump_sections(path);
    let names: Vec<&str> = sections.iter().map(|s| s.0.as_str()).collect();
    for e in expected {
        assert!(names.contains(e), "{e} missing from {}: {names:?}", path.display());
    }
    let data = std::fs::read(path).expect("read");
    let pe = PeFile::parse(&data).expect("parse");
    let base = sections[0].2 - pe.sections[0].virtual_address as u64;
    let mut prev_end = 0u64;
    let mut prev_file_end = 0u64;
    for (name, size, vma, off) in &sections {
        let rva = vma - base;
        assert_eq!(rva % pe.optional.section_alignment as u64, 0, "{name} VMA {vma:#x} not aligned");
        assert_eq!(off % pe.optional.file_alignment as u64, 0, "{name} file offset {off:#x} not aligned");
        assert!(rva >= prev_end, "{name} overlaps the previous section in memory");
        assert!(*off >= prev_file_end, "{name} overlaps the previous section in the file");
        prev_end = rva + size;
        prev_file_end = off + size;
    }
    assert!(pe.optional.size_of_image as u64 >= prev_end);
}

struct Setup {
    _dir: tempfile::TempDir,
    scratch: PathBuf,
}

fn setup() -> Option<Setup> {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).expect("mkdir");
    let Some(stubs) = find_stubs(dir.path()) else {
        println!("SKIPPED: no systemd-stub (linuxx64.efi.stub and addonx64.efi.stub) found");
        return None;
    };
    let Some(kernel) = find_kernel(dir.path()) else {
        println!("SKIPPED: no x86-64 kernel image found");
        return None;
    };
    let copy = |from: &Path, to: &str| std::fs::copy(from, scratch.join(to)).expect("copy");
    copy(&stubs.join("linuxx64.efi.stub"), "linux.stub");
    copy(&stubs.join("addonx64.efi.stub"), "addon.stub");
    copy(&kernel, "vmlinuz");
    // Deterministic pseudo-random payloads with odd sizes.
    let mut x: u32 = 0x1234_5678;
    let mut bytes = |n: usize| {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    for (name, size) in [("initrd1", 70001), ("initrd2", 1003), ("ucode", 4097), ("dtb", 777), ("pcrpkey", 451)] {
        std::fs::write(scratch.join(name), bytes(size)).expect("write");
    }
    std::fs::write(scratch.join("cmdline"), uki::cmdline_text(&["console=ttyS0".into(), "quiet".into()]))
        .expect("write");
    std::fs::write(scratch.join("os-release"), "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nID=debian\n")
        .expect("write");
    Some(Setup { _dir: dir, scratch })
}

fn compare(ours: &Path, theirs: &Path) {
    let a = std::fs::read(ours).expect("read ours");
    let b = std::fs::read(theirs).expect("read ukify's");
    if a != b {
        let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
        panic!(
            "{} differs from ukify's {} (sizes {} and {}, first difference at {first:#x})\nours:\n{:?}\nukify:\n{:?}",
            ours.display(),
            theirs.display(),
            a.len(),
            b.len(),
            objdump_sections(ours),
            objdump_sections(theirs)
        );
    }
    println!("{}: identical to ukify's ({} bytes)", ours.display(), a.len());
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).expect("read")
}

#[test]
fn uki_from_real_stub_and_kernel() {
    let Some(s) = setup() else { return };
    let d = &s.scratch;
    let input = UkiInput {
        stub: d.join("linux.stub"),
        linux: Some(d.join("vmlinuz")),
        initrds: vec![d.join("initrd1"), d.join("initrd2")],
        microcode: Some(d.join("ucode")),
        cmdline: Some(text(&d.join("cmdline"))),
        os_release: Some(text(&d.join("os-release"))),
        uname: Some("6.12.0-test-amd64".into()),
        devicetree: Some(d.join("dtb")),
        pcrpkey: Some(std::fs::read(d.join("pcrpkey")).expect("read")),
        ..Default::default()
    };
    let ours = d.join("ours.efi");
    uki::build(&input, &ours).expect("build");
    check_layout(&ours, &[".osrel", ".cmdline", ".dtb", ".uname", ".pcrpkey", ".linux", ".initrd", ".ucode", ".sbat"]);
    let data = std::fs::read(&ours).expect("read");
    assert_eq!(kernel_type(&data), KernelType::Uki);
    assert_eq!(uki::extract_section(&ours, ".linux").expect("x"), Some(std::fs::read(d.join("vmlinuz")).expect("r")));
    assert_eq!(uki::extract_section(&ours, ".cmdline").expect("x"), Some(b"console=ttyS0 quiet\0".to_vec()));

    // One initrd, extra SBAT text, no microcode.
    let single = UkiInput {
        initrds: vec![d.join("initrd2")],
        microcode: None,
        devicetree: None,
        pcrpkey: None,
        sbat: vec!["sbat,1,SBAT Version,sbat,1,url\nmkosi-test,1,Test,mkosi,1,https://example.com\n".into()],
        ..input.clone()
    };
    let ours_single = d.join("ours-single.efi");
    uki::build(&single, &ours_single).expect("build");
    check_layout(&ours_single, &[".linux", ".initrd", ".sbat"]);

    if !ukify_available() {
        println!("SKIPPED comparison with ukify: not root and MKOSI_UKIFY_COMPARE!=1, or no ukify tools tree");
        return;
    }
    #[rustfmt::skip]
    run_ukify(d, &[
        "--efi-arch", "x64", "--stub", "linux.stub", "--output", "ukify.efi",
        "--cmdline", "@cmdline", "--os-release", "@os-release", "--uname", "6.12.0-test-amd64",
        "--linux", "vmlinuz", "--devicetree", "dtb", "--pcrpkey", "pcrpkey", "--microcode", "ucode",
        "--initrd", "initrd1", "--initrd", "initrd2",
    ]);
    compare(&ours, &d.join("ukify.efi"));
    std::fs::write(d.join("sbat.txt"), &single.sbat[0]).expect("write");
    #[rustfmt::skip]
    run_ukify(d, &[
        "--efi-arch", "x64", "--stub", "linux.stub", "--output", "ukify-single.efi",
        "--cmdline", "@cmdline", "--os-release", "@os-release", "--uname", "6.12.0-test-amd64",
        "--linux", "vmlinuz", "--initrd", "initrd2", "--sbat", "@sbat.txt",
    ]);
    compare(&ours_single, &d.join("ukify-single.efi"));
}

#[test]
fn addon_and_profiles_from_real_stubs() {
    let Some(s) = setup() else { return };
    let d = &s.scratch;

    // A PE addon with a command line.
    let addon = UkiInput {
        stub: d.join("addon.stub"),
        cmdline: Some("debug systemd.log_level=debug".into()),
        ..Default::default()
    };
    let ours_addon = d.join("ours-addon.efi");
    uki::build(&addon, &ours_addon).expect("addon");
    check_layout(&ours_addon, &[".cmdline", ".sbat", ".sdmagic"]);

    // Two profiles, joined into a UKI.
    let p1 = uki::profile_text(&[("ID".into(), "debug".into()), ("TITLE".into(), "Debug boot".into())]);
    let p2 = uki::profile_text(&[("ID".into(), "rescue".into())]);
    std::fs::write(d.join("p1.profile"), &p1).expect("write");
    std::fs::write(d.join("p2.profile"), &p2).expect("write");
    let c1 = uki::cmdline_text(&["console=ttyS0".into(), "debug".into()]);
    let c2 = uki::cmdline_text(&["console=ttyS0".into(), "rescue".into()]);
    std::fs::write(d.join("c1"), &c1).expect("write");
    std::fs::write(d.join("c2"), &c2).expect("write");
    uki::build_profile(&d.join("addon.stub"), &p1, Some(&c1), &d.join("ours-p1.efi")).expect("profile");
    uki::build_profile(&d.join("addon.stub"), &p2, Some(&c2), &d.join("ours-p2.efi")).expect("profile");
    check_layout(&d.join("ours-p1.efi"), &[".profile", ".cmdline"]);

    let joined = UkiInput {
        stub: d.join("linux.stub"),
        linux: Some(d.join("vmlinuz")),
        initrds: vec![d.join("initrd1")],
        cmdline: Some(text(&d.join("cmdline"))),
        os_release: Some(text(&d.join("os-release"))),
        uname: Some("6.12.0-test-amd64".into()),
        join_profiles: vec![d.join("ours-p1.efi"), d.join("ours-p2.efi")],
        ..Default::default()
    };
    let ours_joined = d.join("ours-joined.efi");
    uki::build(&joined, &ours_joined).expect("joined");
    let sections = objdump_sections(&ours_joined);
    assert_eq!(sections.iter().filter(|s| s.0 == ".profile").count(), 3);
    assert_eq!(sections.iter().filter(|s| s.0 == ".cmdline").count(), 3);
    check_layout(&ours_joined, &[".linux", ".initrd", ".profile"]);

    if !ukify_available() {
        println!("SKIPPED comparison with ukify: not root and MKOSI_UKIFY_COMPARE!=1, or no ukify tools tree");
        return;
    }
    #[rustfmt::skip]
    run_ukify(d, &[
        "--efi-arch", "x64", "--stub", "addon.stub", "--output", "ukify-addon.efi",
        "--cmdline", "debug systemd.log_level=debug",
    ]);
    compare(&ours_addon, &d.join("ukify-addon.efi"));
    for p in ["1", "2"] {
        let (profile, cmdline, output) = (format!("@p{p}.profile"), format!("@c{p}"), format!("ukify-p{p}.efi"));
        #[rustfmt::skip]
        run_ukify(d, &[
            "--efi-arch", "x64", "--stub", "addon.stub", "--output", &output,
            "--profile", &profile, "--cmdline", &cmdline,
        ]);
        compare(&d.join(format!("ours-p{p}.efi")), &d.join(&output));
    }
    #[rustfmt::skip]
    run_ukify(d, &[
        "--efi-arch", "x64", "--stub", "linux.stub", "--output", "ukify-joined.efi",
        "--cmdline", "@cmdline", "--os-release", "@os-release", "--uname", "6.12.0-test-amd64",
        "--linux", "vmlinuz", "--initrd", "initrd1",
        "--join-profile", "ukify-p1.efi", "--join-profile", "ukify-p2.efi",
    ]);
    compare(&ours_joined, &d.join("ukify-joined.efi"));
}
