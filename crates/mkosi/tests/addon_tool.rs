//! The binary invoked as `mkosi-addon`: the configuration it hands to mkosi (through
//! `--show-summary`, which builds nothing) against a fake host tree, and usage errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(dir: &Path, host: &Path, args: &[&str]) -> Output {
    let link: PathBuf = dir.join("mkosi-addon");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mkosi"), &link).unwrap();
    }
    Command::new(link)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("TMPDIR", dir)
        .env("MKOSI_RESOURCES", Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources"))
        .env("MKOSI_INITRD_HOST_ROOT", host)
        .output()
        .expect("running mkosi-addon")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn summary_of_the_addon_configuration() {
    let d = tempfile::tempdir().unwrap();
    let host = d.path().join("host");
    std::fs::create_dir_all(host.join("usr/lib/modules/6.1.0-test/kernel")).unwrap();
    std::fs::create_dir_all(host.join("etc/mkosi-addon")).unwrap();
    std::fs::write(host.join("etc/mkosi-addon/mkosi.conf"), "[Content]\nKernelModules=virtio_net\n").unwrap();
    std::fs::create_dir_all(host.join("etc/kernel")).unwrap();
    std::fs::write(host.join("etc/kernel/cmdline"), "console=ttyS0\n").unwrap();
    let o = run(d.path(), &host, &["-k", "6.1.0-test", "-S"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let line = |label: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{label}:")))
            .map(|l| l.to_string())
            .unwrap_or_default()
    };
    assert!(line("Distribution").ends_with("custom"), "{out}");
    assert!(line("Output Format").ends_with("addon"), "{out}");
    assert!(line("Kernel Command Line").ends_with("console=ttyS0"), "{out}");
    assert!(out.contains(&format!("{}:/usr/lib/modules/6.1.0-test", host.join("usr/lib/modules/6.1.0-test").display())));
    assert!(out.contains("/usr/lib/modules/*/modules.*"), "the builtin configuration is included: {out}");
    // Nothing was built.
    assert!(!d.path().join("mkosi-local.addon.efi").exists());
}

#[test]
fn usage_errors_and_version() {
    let d = tempfile::tempdir().unwrap();
    let host = d.path().join("host");
    let o = run(d.path(), &host, &["--version"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("mkosi "), "{}", text(&o));
    let o = run(d.path(), &host, &["--format=cpio"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(d.path(), &host, &["--help"]);
    assert!(o.status.success() && text(&o).contains("--kernel-version"), "{}", text(&o));
}
