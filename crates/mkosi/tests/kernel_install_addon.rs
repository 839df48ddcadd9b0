//! The kernel-install plugin `kernel-install/51-mkosi-addon.install`: when it calls
//! mkosi-addon (replaced by a stub that records its arguments) and with which arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel-install/51-mkosi-addon.install")
}

/// A stub mkosi-addon in `bin/` that logs its arguments and writes `--output` into
/// `--output-dir`, and a fake host with (or without) local configuration.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(config: Option<&str>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::create_dir_all(d.join("staging")).unwrap();
        let stub = d.join("bin/mkosi-addon");
        std::fs::write(
            &stub,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\nwhile [ $# -gt 0 ]; do case \"$1\" in \
                 --output) o=$2;; --output-dir) od=$2;; esac; shift; done\nmkdir -p \"$od\"\necho built > \"$od/$o\"\n",
                log = d.join("args").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(c) = config {
            std::fs::create_dir_all(d.join("host").join(c)).unwrap();
        } else {
            std::fs::create_dir_all(d.join("host")).unwrap();
        }
        Env { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("sh");
        cmd.arg(plugin())
            .args(args)
            .env("PATH", format!("{}:{}", self.path("bin").display(), std::env::var("PATH").unwrap_or_default()))
            .env("MKOSI_INITRD_HOST_ROOT", self.path("host"))
            .env("KERNEL_INSTALL_STAGING_AREA", self.path("staging"))
            .env("KERNEL_INSTALL_LAYOUT", "uki")
            .env("KERNEL_INSTALL_IMAGE_TYPE", "uki")
            .env_remove("KERNEL_INSTALL_VERBOSE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running 51-mkosi-addon.install")
    }

    fn called(&self) -> Option<Vec<String>> {
        std::fs::read_to_string(self.path("args")).ok().map(|s| s.lines().map(String::from).collect())
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const ARGS: &[&str] = &["add", "6.12.0-1-amd64", "/boot/entry", "/boot/uki.efi"];

#[test]
fn skips_unless_configured_and_a_uki_is_added() {
    type Case = (&'static str, Option<&'static str>, &'static [&'static str], &'static [(&'static str, &'static str)]);
    let cases: &[Case] = &[
        ("no local configuration", None, ARGS, &[]),
        ("configuration elsewhere", Some("usr/lib/mkosi-addon"), ARGS, &[]),
        ("remove", Some("etc/mkosi-addon"), &["remove", "6.12.0-1-amd64"], &[]),
        ("bls layout", Some("etc/mkosi-addon"), ARGS, &[("KERNEL_INSTALL_LAYOUT", "bls")]),
        ("not a UKI", Some("etc/mkosi-addon"), ARGS, &[("KERNEL_INSTALL_IMAGE_TYPE", "pe")]),
    ];
    for (what, config, args, env) in cases {
        let e = Env::new(*config);
        let o = e.run(args, env);
        assert!(o.status.success(), "{what}: {}", text(&o));
        assert_eq!(e.called(), None, "{what}: mkosi-addon must not run");
    }
}

#[test]
fn builds_the_addon_next_to_the_uki() {
    for config in ["etc/mkosi-addon", "run/mkosi-addon"] {
        let e = Env::new(Some(config));
        let o = e.run(ARGS, &[("KERNEL_INSTALL_VERBOSE", "1")]);
        assert!(o.status.success(), "{}", text(&o));
        let dir = e.path("staging/uki.efi.extra.d").display().to_string();
        assert_eq!(e.called().unwrap(), ["--output", "mkosi-local.addon.efi", "--output-dir", &dir, "--debug"]);
        assert_eq!(
            std::fs::read_to_string(e.path("staging/uki.efi.extra.d/mkosi-local.addon.efi")).unwrap(),
            "built\n"
        );
        assert!(text(&o).contains("Building mkosi-local.addon.efi"), "{}", text(&o));
    }
    // Quiet unless verbose.
    let e = Env::new(Some("etc/mkosi-addon"));
    let o = e.run(ARGS, &[]);
    assert!(o.status.success() && text(&o).is_empty(), "{}", text(&o));
    assert_eq!(
        e.called().unwrap().last().map(String::as_str),
        Some(e.path("staging/uki.efi.extra.d").to_str().unwrap())
    );
}

#[test]
fn outside_kernel_install_it_says_so() {
    let e = Env::new(Some("etc/mkosi-addon"));
    let o = Command::new("sh").arg(plugin()).args(["add"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("Usage: 51-mkosi-addon.install"), "{}", text(&o));
    let o = e.run(ARGS, &[("KERNEL_INSTALL_STAGING_AREA", "")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("KERNEL_INSTALL_STAGING_AREA is not set"), "{}", text(&o));
}
