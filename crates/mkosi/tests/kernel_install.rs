//! The kernel-install plugin `kernel-install/50-mkosi.install`: when it
//! calls mkosi-initrd (replaced by a stub that records its arguments), with
//! which arguments, and the microcode initrd it builds for the CPU in a fake
//! `/proc/cpuinfo`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel-install/50-mkosi.install")
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A stub mkosi-initrd in `bin/` that logs its arguments and writes
    /// `--output` into `--output-dir`; a fake host with an Intel CPU and its
    /// microcode.
    fn new(cpuinfo: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::create_dir_all(d.join("staging")).unwrap();
        let stub = d.join("bin/mkosi-initrd");
        std::fs::write(
            &stub,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\nwhile [ $# -gt 0 ]; do case \"$1\" in \
                 --output) o=$2;; --output-dir) od=$2;; esac; shift; done\necho built > \"$od/$o\"\n",
                log = d.join("args").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let host = d.join("host");
        std::fs::create_dir_all(host.join("proc")).unwrap();
        std::fs::write(host.join("proc/cpuinfo"), cpuinfo).unwrap();
        std::fs::create_dir_all(host.join("usr/lib/firmware/intel-ucode")).unwrap();
        std::fs::write(host.join("usr/lib/firmware/intel-ucode/06-8f-08"), "intel-blob").unwrap();
        std::fs::create_dir_all(host.join("usr/lib/firmware/amd-ucode")).unwrap();
        std::fs::write(host.join("usr/lib/firmware/amd-ucode/microcode_amd_fam19h.bin"), "amd-blob").unwrap();
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
            .env("KERNEL_INSTALL_LAYOUT", "bls")
            .env("KERNEL_INSTALL_IMAGE_TYPE", "pe")
            .env_remove("KERNEL_INSTALL_INITRD_GENERATOR")
            .env_remove("KERNEL_INSTALL_UKI_GENERATOR")
            .env_remove("KERNEL_INSTALL_VERBOSE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running 50-mkosi.install")
    }

    /// The arguments mkosi-initrd got, or None if it did not run.
    fn called(&self) -> Option<Vec<String>> {
        std::fs::read_to_string(self.path("args")).ok().map(|s| s.lines().map(String::from).collect())
    }
}

const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n\
                     model name\t: Intel(R) Xeon(R)\nstepping\t: 8\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n";
const AMD: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nstepping\t: 1\n";

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const ARGS: &[&str] = &["add", "6.12.0-1-amd64", "/boot/entry", "/boot/vmlinuz-6.12.0-1-amd64"];

#[test]
fn skips_unless_wanted_and_needed() {
    type Case = (&'static str, &'static [&'static str], &'static [(&'static str, &'static str)]);
    let cases: &[Case] = &[
        ("no generator configured", ARGS, &[]),
        ("another initrd generator", ARGS, &[("KERNEL_INSTALL_INITRD_GENERATOR", "dracut")]),
        ("remove", &["remove", "6.12.0-1-amd64"], &[("KERNEL_INSTALL_INITRD_GENERATOR", "mkosi-initrd")]),
        (
            "the kernel is a UKI",
            ARGS,
            &[("KERNEL_INSTALL_INITRD_GENERATOR", "mkosi-initrd"), ("KERNEL_INSTALL_IMAGE_TYPE", "uki")],
        ),
        (
            "initrds were given",
            &["add", "6.12.0-1-amd64", "/boot/entry", "/boot/vmlinuz", "/boot/initrd.img"],
            &[("KERNEL_INSTALL_INITRD_GENERATOR", "mkosi")],
        ),
    ];
    for (what, args, env) in cases {
        let e = Env::new(INTEL);
        let o = e.run(args, env);
        assert!(o.status.success(), "{what}: {}", text(&o));
        assert_eq!(e.called(), None, "{what}: mkosi-initrd must not run");
        assert!(!e.path("staging/microcode").exists(), "{what}");
    }
}

#[test]
fn builds_an_initrd_and_microcode() {
    let e = Env::new(INTEL);
    let o = e.run(ARGS, &[("KERNEL_INSTALL_INITRD_GENERATOR", "mkosi-initrd"), ("KERNEL_INSTALL_VERBOSE", "1")]);
    assert!(o.status.success(), "{}", text(&o));
    let staging = e.path("staging").display().to_string();
    assert_eq!(
        e.called().unwrap(),
        [
            "--kernel-version",
            "6.12.0-1-amd64",
            "--format",
            "cpio",
            "--output",
            "initrd",
            "--output-dir",
            &staging,
            "--kernel-image",
            "/boot/vmlinuz-6.12.0-1-amd64",
            "--debug"
        ]
    );
    assert_eq!(std::fs::read_to_string(e.path("staging/initrd")).unwrap(), "built\n");

    let o = Command::new("cpio").args(["-i", "-t", "--quiet", "-F"]).arg(e.path("staging/microcode")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let members = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(members.lines().any(|l| l == "kernel/x86/microcode/GenuineIntel.bin"), "{members}");
    let x = e.path("x");
    std::fs::create_dir_all(&x).unwrap();
    let o = Command::new("cpio")
        .current_dir(&x)
        .args(["-i", "-d", "--quiet", "-F"])
        .arg(e.path("staging/microcode"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(x.join("kernel/x86/microcode/GenuineIntel.bin")).unwrap(), "intel-blob");
}

#[test]
fn amd_microcode_and_missing_microcode() {
    let e = Env::new(AMD);
    let o = e.run(ARGS, &[("KERNEL_INSTALL_INITRD_GENERATOR", "mkosi")]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("cpio").args(["-i", "-t", "--quiet", "-F"]).arg(e.path("staging/microcode")).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("kernel/x86/microcode/AuthenticAMD.bin"), "{}", text(&o));

    // An unknown CPU or no microcode file: the initrd is built, with a warning.
    for cpuinfo in ["processor\t: 0\n", "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 1\nstepping\t: 1\n"] {
        let e = Env::new(cpuinfo);
        let o = e.run(ARGS, &[("KERNEL_INSTALL_INITRD_GENERATOR", "mkosi")]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(e.path("staging/initrd").exists());
        assert!(!e.path("staging/microcode").exists());
        assert!(text(&o).contains("not adding microcode"), "{}", text(&o));
    }
}

#[test]
fn builds_a_uki_for_the_uki_layout() {
    let e = Env::new(INTEL);
    let o = e.run(ARGS, &[("KERNEL_INSTALL_UKI_GENERATOR", "mkosi"), ("KERNEL_INSTALL_LAYOUT", "uki")]);
    assert!(o.status.success(), "{}", text(&o));
    let args = e.called().unwrap();
    assert_eq!(args[2..6], ["--format", "uki", "--output", "uki.efi"]);
    assert!(!args.contains(&"--debug".to_string()));
    assert!(e.path("staging/uki.efi").exists());
    assert!(!e.path("staging/microcode").exists(), "a UKI carries no separate microcode initrd");

    // With the UKI layout but mkosi only as initrd generator, an initrd is built.
    let e = Env::new(INTEL);
    let o = e.run(ARGS, &[("KERNEL_INSTALL_INITRD_GENERATOR", "mkosi"), ("KERNEL_INSTALL_LAYOUT", "uki")]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(e.called().unwrap()[3], "cpio");
}

#[test]
fn needs_kernel_install_environment() {
    let e = Env::new(INTEL);
    let o = e.run(ARGS, &[("KERNEL_INSTALL_INITRD_GENERATOR", "mkosi"), ("KERNEL_INSTALL_STAGING_AREA", "")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("KERNEL_INSTALL_STAGING_AREA"), "{}", text(&o));
    let o = e.run(&["add"], &[]);
    assert!(!o.status.success());
    assert_eq!(e.called(), None);
}
