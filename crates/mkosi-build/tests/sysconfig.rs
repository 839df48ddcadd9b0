//! System configuration end to end: real image builds through the library,
//! then checks of what ended up in the tree.
//!
//! These tests need root and (for the Debian image) the Debian archive, so
//! they only run with `MKOSI_E2E=1`; otherwise they print a skip message and
//! pass, which keeps a plain `cargo test` fast and offline:
//!
//! ```text
//! MKOSI_E2E=1 cargo test -p mkosi-build --test sysconfig [-- FILTER…]
//! ```
//!
//! Three images are built: Debian trixie (`debian::…` checks), and two tiny
//! custom-distribution trees that need no network (`custom::…`, `initrd::…`).
//! A FILTER selects checks by substring of `group::name`; only the images of
//! selected checks are built.
//!
//! Environment (shared with `crates/mkosi/tests/e2e.rs`):
//! - `MKOSI_E2E_CACHE`: package cache (default `/var/cache/mkosi-ci/debian~trixie~x86-64`),
//!   kept between runs so only the first run downloads anything;
//! - `MKOSI_E2E_TMPDIR`: where scratch directories go (default `/var/tmp`);
//! - `MKOSI_E2E_KEEP=1`: keep the scratch directories for inspection.
//!
//! Sandboxed commands re-execute the running binary as `mkosi-sandbox`, so
//! this test has its own `main()` (no libtest harness) that plays that role.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use mkosi_build::sysconfig::files::{autologin_dropin, AUTOLOGIN_SERVICES, SSH_SERVICE, SSH_SOCKET};
use mkosi_config::{parse_config, Args, Host, Verb};

const DEFAULT_PACKAGE_CACHE: &str = "/var/cache/mkosi-ci/debian~trixie~x86-64";
const PASSWORD: &str = "s3cret pw";
const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";
const KVER: &str = "6.1.0-test";
/// `openssl passwd -6 -salt mkositest hunter2`
const HASHED: &str =
    "$6$mkositest$xtQp6wcbmYqx.w7Rk4P3ea5UwlqB5Sd6lpkfz/4hrA3CvMhxsHS3rsnXlF0gM9pHJxJ6GfAuA8ZUHiz2HCxV9/";

type Check = (&'static str, fn(&Path) -> Result<(), String>);

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&argv0).file_name().is_some_and(|n| n == "mkosi-sandbox") {
        let code = mkosi_sandbox::main(std::env::args().skip(1).collect());
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    if std::env::var("MKOSI_E2E").as_deref() != Ok("1") {
        println!("skipping the sysconfig end-to-end tests: set MKOSI_E2E=1 to run them (they need root and network)");
        return ExitCode::SUCCESS;
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        println!("skipping the sysconfig end-to-end tests: they need root");
        return ExitCode::SUCCESS;
    }
    match std::env::current_exe() {
        Ok(exe) => std::env::set_var("MKOSI_SANDBOX_EXE", exe),
        Err(e) => {
            eprintln!("cannot find the test executable: {e}");
            return ExitCode::FAILURE;
        }
    }
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |group: &str, name: &str| {
        let full = format!("{group}::{name}");
        filters.is_empty() || filters.iter().any(|f| full.contains(f.as_str()))
    };

    let mut failed = Vec::new();
    let mut passed = 0;
    for (group, build, checks) in [
        ("debian", build_debian as fn(&Path) -> Result<PathBuf, String>, DEBIAN_CHECKS),
        ("custom", build_custom, CUSTOM_CHECKS),
        ("initrd", build_initrd, INITRD_CHECKS),
    ] {
        let selected: Vec<&Check> = checks.iter().filter(|(n, _)| wanted(group, n)).collect();
        if selected.is_empty() {
            continue;
        }
        let scratch = std::env::var_os("MKOSI_E2E_TMPDIR").map(PathBuf::from).unwrap_or_else(|| "/var/tmp".into());
        let tmp = match tempfile::Builder::new().prefix("mkosi-sysconfig-").tempdir_in(&scratch) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot create a temporary directory: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("building the {group} image…");
        let root = match build(tmp.path()) {
            Ok(r) => r,
            Err(e) => {
                println!("test {group} (build) ... FAILED\n  {e}");
                failed.push(format!("{group}::build"));
                continue;
            }
        };
        for (name, check) in selected {
            match check(&root) {
                Ok(()) => {
                    println!("test {group}::{name} ... ok");
                    passed += 1;
                }
                Err(e) => {
                    println!("test {group}::{name} ... FAILED\n  {e}");
                    failed.push(format!("{group}::{name}"));
                }
            }
        }
        if std::env::var("MKOSI_E2E_KEEP").as_deref() == Ok("1") {
            println!("kept {}", tmp.keep().display());
        }
    }
    println!("\nsysconfig end-to-end: {passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failures: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn write(path: &Path, content: &str) -> Result<(), String> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(err)?;
    }
    std::fs::write(path, content).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dst).map_err(err)?;
    for e in std::fs::read_dir(src).map_err(|e| format!("reading {}: {e}", src.display()))? {
        let e = e.map_err(err)?;
        let to = dst.join(e.file_name());
        if e.file_type().map_err(err)?.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), &to).map_err(err)?;
        }
    }
    Ok(())
}

/// Parse the configuration in `dir` and build it; returns the output path.
fn build_in(dir: &Path, output: &str) -> Result<PathBuf, String> {
    let host = Host::system();
    let resources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources");
    let parsed = parse_config(Args::new(Verb::Build, Some(dir.to_path_buf())), &[], &host, &resources, dir)
        .map_err(|e| format!("parsing the configuration: {e}"))?;
    let mut args = parsed.args;
    args.force = 1;
    mkosi_build::build(&args, &parsed.images, &host, dir).map_err(|e| format!("build failed: {e}"))?;
    let out = dir.join("out").join(output);
    if !out.exists() {
        return Err(format!("{} was not produced", out.display()));
    }
    Ok(out)
}

fn build_debian(tmp: &Path) -> Result<PathBuf, String> {
    let cache = std::env::var("MKOSI_E2E_CACHE").unwrap_or_else(|_| DEFAULT_PACKAGE_CACHE.into());
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/debian/mkosi.sandbox"),
        &tmp.join("sandbox"),
    )?;
    let extra = tmp.join("extra");
    write(&extra.join("etc/locale.gen"), "en_US.UTF-8 UTF-8\n")?;
    write(&extra.join(format!("usr/lib/modules/{KVER}/modules.builtin")), "")?;
    write(&extra.join(format!("usr/lib/modules/{KVER}/modules.order")), "")?;
    write(&extra.join(format!("boot/vmlinuz-{KVER}")), "not really a kernel\n")?;
    write(&extra.join("usr/lib/sysusers.d/mkosi-test.conf"), "u mkositest - \"mkosi test user\"\n")?;
    write(
        &extra.join("usr/lib/tmpfiles.d/mkosi-test.conf"),
        "d /var/lib/mkosi-test 0750 mkositest - -\nf /etc/mkosi-test-file 0640 root root - hello\n",
    )?;
    write(
        &tmp.join("mkosi.conf"),
        &format!(
            "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
             [Output]\nFormat=directory\nImageId=sysconfig-test\nImageVersion=1.2.3\nOutput=image\nOutputDirectory=out\n\n\
             [Build]\nSandboxTrees=sandbox\nPackageCacheDirectory={cache}\n\n\
             [Content]\nBootable=no\nPackages=systemd udev dbus kmod locales\nExtraTrees=extra\n\
             Hostname=sysconfig-test\nLocale=C.UTF-8\nLocaleMessages=en_US.UTF-8\nKeymap=de\nTimezone=Europe/Berlin\n\
             RootPassword={PASSWORD}\nRootShell=/bin/sh\nAutologin=yes\nMachineId={MACHINE_ID}\nSsh=always\nMakeInitrd=yes\n"
        ),
    )?;
    build_in(tmp, "image")
}

/// A tiny custom-distribution tree: no packages, so no network.
fn custom_skeleton(tmp: &Path) -> Result<(), String> {
    let sk = tmp.join("skeleton");
    write(&sk.join("usr/lib/os-release"), "ID=mkosi-test\nNAME=\"mkosi test\"\n")?;
    write(&sk.join("etc/os-release"), "ID=mkosi-test\nIMAGE_ID=old\n")?;
    write(&sk.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    write(&sk.join("etc/group"), "root:x:0:\n")?;
    write(&sk.join("etc/shadow"), "root:*:19000:0:99999:7:::\n")?;
    std::fs::set_permissions(sk.join("etc/shadow"), std::fs::Permissions::from_mode(0o600)).map_err(err)
}

fn build_custom(tmp: &Path) -> Result<PathBuf, String> {
    custom_skeleton(tmp)?;
    write(
        &tmp.join("mkosi.conf"),
        &format!(
            "[Distribution]\nDistribution=custom\n\n\
             [Output]\nFormat=directory\nImageId=custom\nOutput=image\nOutputDirectory=out\n\n\
             [Content]\nBootable=no\nSkeletonTrees=skeleton\nRootPassword=hashed:{HASHED}\nTimezone=UTC\nSsh=never\n"
        ),
    )?;
    build_in(tmp, "image")
}

fn build_initrd(tmp: &Path) -> Result<PathBuf, String> {
    custom_skeleton(tmp)?;
    write(
        &tmp.join("mkosi.conf"),
        "[Distribution]\nDistribution=custom\n\n\
         [Output]\nFormat=cpio\nCompressOutput=none\nOutput=initrd\nOutputDirectory=out\n\n\
         [Content]\nBootable=no\nSkeletonTrees=skeleton\nMakeInitrd=yes\nRootPassword=hashed:\nKeymap=us\n",
    )?;
    let cpio = build_in(tmp, "initrd.cpio")?;
    let dir = tmp.join("extracted");
    std::fs::create_dir_all(&dir).map_err(err)?;
    let f = std::fs::File::open(&cpio).map_err(err)?;
    let st = Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames"])
        .current_dir(&dir)
        .stdin(f)
        .status()
        .map_err(|e| format!("running cpio: {e}"))?;
    if !st.success() {
        return Err(format!("cpio -i failed: {st}"));
    }
    Ok(dir)
}

// Helpers for checks.

fn read(root: &Path, p: &str) -> Result<String, String> {
    std::fs::read_to_string(root.join(p)).map_err(|e| format!("reading {p}: {e}"))
}

fn mode(root: &Path, p: &str) -> Result<u32, String> {
    std::fs::symlink_metadata(root.join(p)).map(|m| m.permissions().mode() & 0o7777).map_err(|e| format!("{p}: {e}"))
}

fn link(root: &Path, p: &str) -> Result<PathBuf, String> {
    std::fs::read_link(root.join(p)).map_err(|e| format!("{p} is not a symlink: {e}"))
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    ensure(got == want, || format!("{what}: got {got:?}, want {want:?}"))
}

/// The entry of `user` in a colon-separated database.
fn entry(root: &Path, db: &str, user: &str) -> Result<Vec<String>, String> {
    let text = read(root, db)?;
    text.lines()
        .find(|l| l.split(':').next() == Some(user))
        .map(|l| l.split(':').map(str::to_string).collect())
        .ok_or_else(|| format!("no {user} in {db}:\n{text}"))
}

/// The hash field of root's shadow entry.
fn root_hash(root: &Path) -> Result<String, String> {
    entry(root, "etc/shadow", "root")?.get(1).cloned().ok_or_else(|| "short shadow entry".into())
}

fn openssl_hash(salt: &str, password: &str) -> Result<String, String> {
    let out = Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, password])
        .output()
        .map_err(|e| format!("running openssl: {e}"))?;
    ensure(out.status.success(), || format!("openssl passwd failed: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether the image's preset files enable `unit` (first matching rule wins,
/// files in name order).
fn preset_enables(root: &Path, unit: &str) -> Result<Option<bool>, String> {
    let dir = root.join("usr/lib/systemd/system-preset");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).map_err(err)?.flatten().map(|e| e.path()).collect();
    files.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    for f in files {
        for line in std::fs::read_to_string(&f).map_err(err)?.lines() {
            let mut words = line.split_whitespace();
            let (Some(verb), Some(pattern)) = (words.next(), words.next()) else { continue };
            if mkosi_config::pyglob::fnmatch(pattern, unit) {
                match verb {
                    "enable" => return Ok(Some(true)),
                    "disable" => return Ok(Some(false)),
                    _ => {}
                }
            }
        }
    }
    Ok(None)
}

// The Debian image.

const DEBIAN_CHECKS: &[Check] = &[
    ("hostname", |r| eq("etc/hostname", read(r, "etc/hostname")?, "sysconfig-test\n".into())),
    ("locale", |r| {
        // Debian trixie reads /etc/locale.conf; /etc/default/locale stays a link to it.
        let conf = read(r, "etc/locale.conf")?;
        ensure(conf.lines().any(|l| l == "LANG=C.UTF-8"), || format!("no LANG in locale.conf:\n{conf}"))?;
        ensure(conf.lines().any(|l| l == "LC_MESSAGES=en_US.UTF-8"), || format!("no LC_MESSAGES:\n{conf}"))?;
        if std::fs::symlink_metadata(r.join("etc/default/locale")).is_ok() {
            eq("etc/default/locale", link(r, "etc/default/locale")?, PathBuf::from("../locale.conf"))?;
        }
        Ok(())
    }),
    ("timezone", |r| eq("etc/localtime", link(r, "etc/localtime")?, "../usr/share/zoneinfo/Europe/Berlin".into())),
    ("keymap", |r| {
        let v = read(r, "etc/vconsole.conf")?;
        ensure(v.lines().any(|l| l == "KEYMAP=de"), || format!("vconsole.conf:\n{v}"))
    }),
    ("root_password", |r| {
        let hash = root_hash(r)?;
        let salt =
            hash.strip_prefix("$6$").and_then(|h| h.split('$').next()).ok_or(format!("not sha512-crypt: {hash}"))?;
        eq("root's password hash", hash.clone(), openssl_hash(salt, PASSWORD)?)?;
        eq("credential", read(r, "usr/lib/credstore/passwd.hashed-password.root")?, hash)
    }),
    ("root_shell", |r| eq("root's shell", entry(r, "etc/passwd", "root")?.get(6).cloned(), Some("/bin/sh".into()))),
    ("credstore", |r| {
        eq("credstore mode", mode(r, "usr/lib/credstore")?, 0o755)?;
        let mut names: Vec<String> = std::fs::read_dir(r.join("usr/lib/credstore"))
            .map_err(err)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        eq(
            "credentials",
            names,
            [
                "firstboot.keymap",
                "firstboot.locale",
                "firstboot.locale-messages",
                "firstboot.timezone",
                "passwd.hashed-password.root",
                "passwd.shell.root",
            ]
            .map(String::from)
            .to_vec(),
        )?;
        for (name, value, m) in [
            ("firstboot.keymap", "de", 0o644),
            ("firstboot.locale", "C.UTF-8", 0o644),
            ("firstboot.locale-messages", "en_US.UTF-8", 0o644),
            ("firstboot.timezone", "Europe/Berlin", 0o644),
            ("passwd.shell.root", "/bin/sh", 0o644),
        ] {
            let p = format!("usr/lib/credstore/{name}");
            eq(&p, read(r, &p)?, value.to_string())?;
            eq(&format!("mode of {p}"), mode(r, &p)?, m)?;
        }
        eq("password credential mode", mode(r, "usr/lib/credstore/passwd.hashed-password.root")?, 0o600)
    }),
    ("autologin", |r| {
        for (service, extra) in AUTOLOGIN_SERVICES {
            let p = format!("usr/lib/systemd/system/{service}.d/autologin.conf");
            eq(&p, read(r, &p)?, autologin_dropin(extra))?;
            eq(&format!("mode of {p}"), mode(r, &p)?, 0o644)?;
        }
        let c = read(r, "usr/lib/systemd/system/getty@tty1.service.d/autologin.conf")?;
        ensure(c.contains("ExecStart=-agetty -o '-f -p -- \\\\u' --autologin root --noclear - $TERM\n"), || c.clone())
    }),
    ("os_release", |r| {
        let text = read(r, "usr/lib/os-release")?;
        for line in ["IMAGE_ID=\"sysconfig-test\"", "IMAGE_VERSION=\"1.2.3\"", "DEFAULT_HOSTNAME=\"sysconfig-test\""] {
            eq(&format!("lines {line}"), text.lines().filter(|l| *l == line).count(), 1)?;
        }
        ensure(text.contains("ID=debian"), || text.clone())
    }),
    ("sysusers", |r| {
        let e = entry(r, "etc/passwd", "mkositest")?;
        ensure(e.get(4).map(String::as_str) == Some("mkosi test user"), || format!("{e:?}"))?;
        entry(r, "etc/group", "mkositest").map(|_| ())
    }),
    ("tmpfiles", |r| {
        let uid: u32 = entry(r, "etc/passwd", "mkositest")?.get(2).and_then(|u| u.parse().ok()).ok_or("no uid")?;
        let md = std::fs::metadata(r.join("var/lib/mkosi-test")).map_err(err)?;
        ensure(md.is_dir() && md.uid() == uid, || format!("var/lib/mkosi-test owned by {}", md.uid()))?;
        eq("var/lib/mkosi-test mode", mode(r, "var/lib/mkosi-test")?, 0o750)?;
        eq("etc/mkosi-test-file", read(r, "etc/mkosi-test-file")?, "hello".into())?;
        eq("etc/mkosi-test-file mode", mode(r, "etc/mkosi-test-file")?, 0o640)
    }),
    ("presets", |r| {
        let wants = |p: &str| std::fs::symlink_metadata(r.join("etc/systemd/system").join(p)).is_ok();
        ensure(wants("getty.target.wants/getty@tty1.service"), || "getty@tty1 is not enabled".into())?;
        ensure(!wants("getty.target.wants/console-getty.service"), || "console-getty is enabled".into())?;
        eq("console-getty preset", preset_enables(r, "console-getty.service")?, Some(false))?;
        // Whatever the distribution's presets say about networkd is what happened.
        let networkd = preset_enables(r, "systemd-networkd.service")?.unwrap_or(false);
        eq("systemd-networkd enabled", wants("multi-user.target.wants/systemd-networkd.service"), networkd)?;
        // Our own preset for the ssh socket, and the user units (--global).
        ensure(wants("sockets.target.wants/ssh.socket"), || "ssh.socket is not enabled".into())?;
        let user = r.join("etc/systemd/user/timers.target.wants/systemd-tmpfiles-clean.timer");
        ensure(std::fs::symlink_metadata(&user).is_ok(), || "user presets were not applied".into())
    }),
    ("ssh", |r| {
        eq("ssh.socket", read(r, "usr/lib/systemd/system/ssh.socket")?, SSH_SOCKET.into())?;
        eq("ssh@.service", read(r, "usr/lib/systemd/system/ssh@.service")?, SSH_SERVICE.into())?;
        eq("ssh preset", read(r, "usr/lib/systemd/system-preset/80-mkosi-ssh.preset")?, "enable ssh.socket\n".into())
    }),
    ("clock_epoch", |r| {
        ensure(r.join("usr/lib/clock-epoch").is_file(), || "no usr/lib/clock-epoch".into())?;
        eq("clock-epoch mode", mode(r, "usr/lib/clock-epoch")?, 0o644)
    }),
    ("machine_id", |r| eq("etc/machine-id", read(r, "etc/machine-id")?, format!("{MACHINE_ID}\n"))),
    ("initrd", |r| {
        eq("/init", link(r, "init")?, "/usr/lib/systemd/systemd".into())?;
        eq("etc/initrd-release", link(r, "etc/initrd-release")?, "/etc/os-release".into())
    }),
    ("locale_gen", |r| ensure(r.join("usr/lib/locale/locale-archive").is_file(), || "no locale archive".into())),
    ("depmod_and_vmlinuz", |r| {
        let k = format!("usr/lib/modules/{KVER}");
        ensure(r.join(&k).join("modules.dep").is_file(), || format!("no {k}/modules.dep"))?;
        eq("vmlinuz", read(r, &format!("{k}/vmlinuz"))?, "not really a kernel\n".into())
    }),
    ("hwdb", |r| {
        // Generated with the host's systemd-hwdb, or the image's (udev) when the host has none.
        ensure(r.join("usr/lib/udev/hwdb.bin").is_file(), || "no usr/lib/udev/hwdb.bin".into())?;
        ensure(!r.join("etc/udev/hwdb.bin").exists(), || "etc/udev/hwdb.bin was kept".into())
    }),
];

// A custom-distribution image with a pre-hashed password.

const CUSTOM_CHECKS: &[Check] = &[
    ("hashed_password", |r| {
        eq("root hash", root_hash(r)?, HASHED.into())?;
        eq("the hash", openssl_hash("mkositest", "hunter2")?, HASHED.into())?;
        eq("credential", read(r, "usr/lib/credstore/passwd.hashed-password.root")?, HASHED.into())?;
        eq("shadow mode", mode(r, "etc/shadow")?, 0o600)
    }),
    ("only_configured_credentials", |r| {
        let mut names: Vec<String> = std::fs::read_dir(r.join("usr/lib/credstore"))
            .map_err(err)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        eq("credentials", names, vec!["firstboot.timezone".to_string(), "passwd.hashed-password.root".into()])
    }),
    ("os_release_files", |r| {
        eq(
            "usr/lib/os-release",
            read(r, "usr/lib/os-release")?,
            "ID=mkosi-test\nNAME=\"mkosi test\"\nIMAGE_ID=\"custom\"\n".into(),
        )?;
        eq("etc/os-release", read(r, "etc/os-release")?, "ID=mkosi-test\nIMAGE_ID=\"custom\"\n".into())
    }),
    ("no_init_without_systemd", |r| {
        ensure(std::fs::symlink_metadata(r.join("init")).is_err(), || "/init without systemd".into())?;
        ensure(std::fs::symlink_metadata(r.join("etc/initrd-release")).is_err(), || "initrd-release".into())
    }),
    ("no_autologin_no_ssh", |r| {
        ensure(!r.join("usr/lib/systemd/system/getty@tty1.service.d").exists(), || "autologin drop-in".into())?;
        ensure(!r.join("usr/lib/systemd/system/ssh.socket").exists(), || "ssh.socket with Ssh=never".into())
    }),
];

// A cpio initrd: no credentials in /usr, empty root password.

const INITRD_CHECKS: &[Check] = &[
    ("no_credstore", |r| ensure(!r.join("usr/lib/credstore").exists(), || "usr/lib/credstore in an initrd".into())),
    ("empty_root_password", |r| eq("root hash", root_hash(r)?, String::new())),
    ("keymap", |r| eq("vconsole.conf", read(r, "etc/vconsole.conf")?, "KEYMAP=us\n".into())),
    ("initrd_release", |r| eq("etc/initrd-release", link(r, "etc/initrd-release")?, "/etc/os-release".into())),
];
