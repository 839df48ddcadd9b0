//! The binary invoked as `mkosi-initrd`: options, errors, and the
//! configuration it hands to mkosi (through `--show-summary`, which builds
//! nothing), against a fake host tree. No network, no root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A `mkosi-initrd` symlink to the binary in `dir`.
fn tool(dir: &Path) -> PathBuf {
    let link = dir.join("mkosi-initrd");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mkosi"), &link).unwrap();
    }
    link
}

fn run(dir: &Path, host: &Path, args: &[&str]) -> Output {
    Command::new(tool(dir))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("TMPDIR", dir)
        .env("MKOSI_HOST_DISTRIBUTION", "debian")
        .env("MKOSI_HOST_RELEASE", "trixie")
        .env("MKOSI_RESOURCES", Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources"))
        .env("MKOSI_INITRD_HOST_ROOT", host)
        .output()
        .expect("running mkosi-initrd")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

const KVER: &str = "6.12.0-test";

fn fake_host(root: &Path) {
    write(root, &format!("usr/lib/modules/{KVER}/modules.dep"), "");
    write(root, "etc/apt/sources.list.d/debian.sources", "Types: deb\n");
    write(root, "etc/mkosi-initrd/mkosi.conf", "[Content]\nPackages=host-extra-package\n");
    write(root, "etc/vconsole.conf", "KEYMAP=de\n");
}

#[test]
fn version_help_and_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let host = d.path().join("host");
    let o = run(d.path(), &host, &["--version"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("mkosi "), "{}", text(&o));

    let o = run(d.path(), &host, &["--help"]);
    assert!(o.status.success(), "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    for opt in ["--kernel-version", "--format", "--output-dir", "--generic", "--profile", "--kernel-image"] {
        assert!(help.contains(opt), "{opt} missing from:\n{help}");
    }

    for bad in [&["--format=disk"][..], &["--profile=nope"], &["--bogus"]] {
        let o = run(d.path(), &host, bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
}

#[test]
fn missing_kernel_modules_are_an_error() {
    let d = tempfile::tempdir().unwrap();
    let host = d.path().join("host");
    fake_host(&host);
    let o = run(d.path(), &host, &["-k", "0.0.0-missing"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("Invalid kernel directory"), "{}", text(&o));
    assert!(text(&o).contains("0.0.0-missing"), "{}", text(&o));
}

#[test]
fn summary_shows_the_configuration_handed_to_mkosi() {
    let d = tempfile::tempdir().unwrap();
    let host = d.path().join("host");
    fake_host(&host);
    let o = run(d.path(), &host, &["-k", KVER, "-S", "--profile=lvm", "-t", "directory", "-o", "tree"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    let modules = format!("{}:/usr/lib/modules/{KVER}", host.join("usr/lib/modules").join(KVER).display());
    let vconsole = format!("{}:/etc/vconsole.conf", host.join("etc/vconsole.conf").display());
    for want in [
        "Output Format: directory",
        "Output: tree",
        modules.as_str(),
        vconsole.as_str(),
        // the built-in configuration, the lvm profile and the host's own configuration
        "Make Initrd: yes",
        "lvm2",
        "host-extra-package",
        "Remove Files: /usr/lib/systemd/catalog",
    ] {
        assert!(s.contains(want), "{want:?} missing from the summary:\n{s}");
    }
    // A summary builds nothing and leaves nothing behind.
    assert!(!d.path().join("tree").exists());
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("mkosi-initrd-"))
        .collect();
    assert!(left.is_empty(), "scratch directories left behind: {left:?}");
}

#[test]
fn manual() {
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mkosi"))
        .args(["--doc-format=markdown", "documentation", "mkosi-initrd"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(md.contains("mkosi-initrd - build an initrd"), "{md}");
    assert!(md.contains("`--kernel-version=KVER`"), "{md}");
}
