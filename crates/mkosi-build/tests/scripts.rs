//! Scripts end to end: a `Distribution=custom` image whose root is a
//! skeleton tree with a static busybox, built with every kind of script.
//! The scripts leave markers (their arguments, environment and what they
//! can see) in the image, `$DESTDIR`, the output directory and the sources,
//! which the tests then check.
//!
//! Needs root and `/bin/busybox` (Debian: busybox-static); skipped otherwise.
//! The sandbox is entered through the mkosi binary, which is built when it
//! is not there yet.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mkosi_config::{parse_config, Args, Config, Host, Verb};

const BUSYBOX: &str = "/bin/busybox";

fn resources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources")
}

/// The mkosi binary (the `mkosi-sandbox` entry point), brought up to date
/// with `cargo build` (a no-op when `cargo test` already built it).
fn mkosi_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // <target>/<profile>/deps/scripts-<hash>
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir.join("mkosi");
    let target_dir = profile_dir.parent()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "mkosi", "--bin", "mkosi"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if !cmd.status().is_ok_and(|s| s.success()) {
        eprintln!("could not build the mkosi binary, using {} as it is", bin.display());
    }
    bin.is_file().then_some(bin)
}

/// Why the tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Some("not running as root".into());
            }
            if !Path::new(BUSYBOX).is_file() {
                return Some(format!("{BUSYBOX} is missing (install busybox-static)"));
            }
            match mkosi_binary() {
                Some(bin) => {
                    // Set once, before any test thread builds anything.
                    std::env::set_var("MKOSI_SANDBOX_EXE", bin);
                    None
                }
                None => Some("the mkosi binary could not be built".into()),
            }
        })
        .clone()
}

macro_rules! require_root_and_busybox {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn script(path: &Path, body: &str) {
    write(path, &format!("#!/bin/sh\nset -e\n{body}"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A merged-/usr busybox root with os-release.
fn skeleton(dir: &Path) {
    let bin = dir.join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(dir.join("usr/sbin")).unwrap();
    std::fs::create_dir_all(dir.join("usr/lib")).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    let list = std::process::Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        std::os::unix::fs::symlink(target, dir.join(link)).unwrap();
    }
    write(&dir.join("usr/lib/os-release"), "ID=busyboxos\nNAME=\"Busybox OS\"\n");
}

struct Tree {
    _tmp: tempfile::TempDir,
    conf: PathBuf,
    out: PathBuf,
}

/// A configuration directory with a skeleton and settings; scripts are added by the caller.
fn tree(extra_conf: &str) -> Tree {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("conf");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&conf).unwrap();
    skeleton(&conf.join("mkosi.skeleton"));
    let ws = tmp.path().join("ws");
    let cache = tmp.path().join("pkgcache");
    write(
        &conf.join("mkosi.conf"),
        &format!(
            "[Distribution]\nDistribution=custom\n\n[Output]\nFormat=directory\nOutputDirectory={}\n\n\
             [Content]\nBootable=no\n\n[Build]\nWorkspaceDirectory={}\nPackageCacheDirectory={}\n\
             Environment=FOO=bar\n{extra_conf}",
            out.display(),
            ws.display(),
            cache.display(),
        ),
    );
    Tree { _tmp: tmp, conf, out }
}

fn host() -> Host {
    Host::system()
}

fn parse(conf: &Path, cmdline: &[&str]) -> (Args, Vec<Config>) {
    let mut args = Args::new(Verb::Build, Some(conf.to_path_buf()));
    args.cmdline = cmdline.iter().map(|s| s.to_string()).collect();
    let parsed = parse_config(args, &[], &host(), &resources(), conf).expect("parsing the configuration");
    (parsed.args, parsed.images)
}

fn defaults() -> Config {
    let proc = Path::new("/proc");
    let parsed = parse_config(Args::new(Verb::Build, Some(proc.to_path_buf())), &[], &host(), &resources(), proc)
        .expect("parsing the default configuration");
    parsed.images.last().cloned().expect("a default image")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// `KEY=VALUE` lines of an `env` dump.
fn env_of(p: &Path) -> Vec<(String, String)> {
    read(p).lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn var<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

#[test]
fn every_script_type_runs_with_its_environment() {
    require_root_and_busybox!();
    let t = tree("");
    let c = &t.conf;
    std::fs::create_dir_all(c.join("mkosi.builddir")).unwrap();

    script(
        &c.join("mkosi.configure"),
        "[ -z \"$MKOSI_CONFIG\" ]\nsed 's/\"Environment\": {/\"Environment\": {\"CONFIGURED\": \"yes\", /'\n",
    );
    script(
        &c.join("mkosi.sync"),
        "env > \"$SRCDIR/sync.env\"\necho \"$@\" > \"$SRCDIR/sync.args\"\ntest -f \"$MKOSI_CONFIG\"\n",
    );
    script(
        &c.join("mkosi.prepare"),
        r#"if [ "$1" = final ]; then
    env > "$BUILDROOT/env-prepare"
    command -v mkosi-chroot > "$BUILDROOT/prepare-helper"
    pwd > "$BUILDROOT/prepare-pwd"
    mkosi-chroot sh -c 'echo "$container $BUILDROOT $(pwd) $(. /usr/lib/os-release; echo $ID)"' > "$BUILDROOT/prepare-chroot-helper"
else
    echo build > "$BUILDROOT/in-build-overlay"
fi
"#,
    );
    script(
        &c.join("mkosi.prepare.chroot"),
        r#". /usr/lib/os-release
echo "$1 $container $BUILDROOT $PATH $(pwd) $ID" >> /prepare-chroot
"#,
    );
    script(
        &c.join("mkosi.build.d/10-host.sh"),
        r#"env > "$DESTDIR/env-build"
printf '%s\n' "$@" > "$DESTDIR/build-args"
test -f "$BUILDROOT/in-build-overlay" && echo yes > "$DESTDIR/saw-build-overlay"
touch "$BUILDROOT/build-script-was-here"
echo cached > "$BUILDDIR/build-dir-marker"
mkdir -p "$DESTDIR/usr/share/demo"
echo installed > "$DESTDIR/usr/share/demo/file"
"#,
    );
    script(
        &c.join("mkosi.build.d/20-chroot.chroot"),
        r#"echo "$container $BUILDROOT $(cat /prepare-chroot | wc -l)" > "$DESTDIR/from-chroot-build"
test -f /in-build-overlay && echo yes > "$DESTDIR/chroot-saw-build-overlay"
"#,
    );
    script(
        &c.join("mkosi.postinst.chroot"),
        r#"echo "$1" > /postinst-args
env > /env-postinst
test -d "$OUTPUTDIR"
if touch "$BUILDDIR/ro-test" 2>/dev/null; then echo rw; else echo ro; fi > /postinst-builddir
"#,
    );
    script(
        &c.join("mkosi.finalize"),
        r#"env > "$BUILDROOT/env-finalize"
echo "$#" > "$BUILDROOT/finalize-argc"
test -f "$BUILDROOT/postinst-args" && echo yes > "$BUILDROOT/finalize-saw-postinst"
"#,
    );
    script(
        &c.join("mkosi.postoutput"),
        r#"env > "$OUTPUTDIR/env-postoutput"
ls "$OUTPUTDIR" > "$OUTPUTDIR/postoutput-listing"
id -u > "$OUTPUTDIR/postoutput-uid"
"#,
    );
    script(&c.join("mkosi.clean"), "env > \"$SRCDIR/clean.env\"\nls \"$OUTPUTDIR\" > \"$SRCDIR/clean-listing\"\n");

    let (args, images) = parse(c, &["one", "two words"]);
    let main = images.last().unwrap();
    assert_eq!(main.paths("PrepareScripts"), vec![c.join("mkosi.prepare"), c.join("mkosi.prepare.chroot")]);
    assert_eq!(main.paths("BuildScripts").len(), 2);

    // Configure scripts change the configuration the build uses.
    let images = mkosi_build::scripts::run_configure_scripts(&args, &images, &host(), c, &defaults()).unwrap();
    let main = images.last().unwrap();
    assert!(
        main.map("Environment").contains(&("CONFIGURED".to_string(), "yes".to_string())),
        "{:?}",
        main.map("Environment")
    );

    mkosi_build::build(&args, &images, &host(), c).unwrap();

    let image = t.out.join("image");
    assert!(image.join("usr/bin/busybox").is_file());
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() }.to_string();

    // Sync scripts: before the build, with "final" and $CACHED.
    let sync = env_of(&c.join("sync.env"));
    assert_eq!(read(&c.join("sync.args")), "final\n");
    assert_eq!(var(&sync, "CACHED"), Some("0"));
    assert_eq!(var(&sync, "MKOSI_CONFIG"), Some("/work/config.json"));
    assert_eq!(var(&sync, "CONFIGURED"), Some("yes"));
    assert_eq!(var(&sync, "BUILDROOT"), None);

    // Prepare scripts on the tools side see the image at /buildroot and the helpers.
    let prepare = env_of(&image.join("env-prepare"));
    for (k, v) in [
        ("DISTRIBUTION", "custom"),
        ("RELEASE", ""),
        ("BUILDROOT", "/buildroot"),
        ("SRCDIR", "/work/src"),
        ("CHROOT_SRCDIR", "/work/src"),
        ("PACKAGEDIR", "/work/packages"),
        ("ARTIFACTDIR", "/work/artifacts"),
        ("SCRIPT", "/work/prepare"),
        ("CHROOT_SCRIPT", "/work/prepare"),
        ("MKOSI_CONFIG", "/work/config.json"),
        ("MKOSI_UID", uid.as_str()),
        ("MKOSI_DEBUG", "0"),
        ("WITH_DOCS", "1"),
        ("WITH_TESTS", "1"),
        ("WITH_NETWORK", "0"),
        ("FOO", "bar"),
        ("CONFIGURED", "yes"),
        ("LANG", "C.UTF-8"),
    ] {
        assert_eq!(var(&prepare, k), Some(v), "{k}");
    }
    assert!(var(&prepare, "ARCHITECTURE").is_some());
    assert_eq!(var(&prepare, "ARCHITECTURE"), var(&prepare, "DISTRIBUTION_ARCHITECTURE"));
    assert!(var(&prepare, "PATH").is_some_and(|p| p.starts_with("/scripts:")));
    assert_eq!(read(&image.join("prepare-helper")), "/scripts/mkosi-chroot\n");
    assert_eq!(read(&image.join("prepare-pwd")), "/work/src\n");
    assert_eq!(read(&image.join("prepare-chroot-helper")), "mkosi / /work/src busyboxos\n");

    // .chroot prepare scripts run inside the image; the "build" run only
    // changed the build overlay.
    assert_eq!(read(&image.join("prepare-chroot")), "final mkosi / /usr/bin:/usr/sbin /work/src busyboxos\n");
    assert!(!image.join("in-build-overlay").exists());

    // Build scripts: arguments, $DESTDIR copied into the image, the build
    // overlay visible, their own changes to the image thrown away.
    let build = env_of(&image.join("env-build"));
    for (k, v) in [
        ("DESTDIR", "/work/dest"),
        ("CHROOT_DESTDIR", "/work/dest"),
        ("SCRIPT", "/work/build-script"),
        ("BUILDDIR", "/work/build"),
        ("CHROOT_BUILDDIR", "/work/build"),
        ("BUILDROOT", "/buildroot"),
        ("WITH_NETWORK", "0"),
    ] {
        assert_eq!(var(&build, k), Some(v), "{k}");
    }
    assert_eq!(read(&image.join("build-args")), "one\ntwo words\n");
    assert_eq!(read(&image.join("saw-build-overlay")), "yes\n");
    assert_eq!(read(&image.join("chroot-saw-build-overlay")), "yes\n");
    // The build overlay also has what the "build" run of the prepare script appended.
    assert_eq!(read(&image.join("from-chroot-build")), "mkosi / 2\n");
    assert_eq!(read(&image.join("usr/share/demo/file")), "installed\n");
    assert!(!image.join("build-script-was-here").exists());
    let build_dir = c.join("mkosi.builddir/custom~~").to_string_lossy().into_owned();
    let marker = std::fs::read_dir(c.join("mkosi.builddir"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("build-dir-marker"))
        .find(|p| p.exists());
    assert!(marker.is_some(), "no build directory marker below {build_dir}");

    // Post-installation scripts: "final", $OUTPUTDIR, build directory read-only.
    assert_eq!(read(&image.join("postinst-args")), "final\n");
    let postinst = env_of(&image.join("env-postinst"));
    assert_eq!(var(&postinst, "OUTPUTDIR"), Some("/work/out"));
    assert_eq!(var(&postinst, "BUILDDIR"), Some("/work/build"));
    assert_eq!(var(&postinst, "BUILDROOT"), Some("/"));
    assert_eq!(var(&postinst, "container"), Some("mkosi"));
    assert_eq!(var(&postinst, "SCRIPT"), Some("/work/postinst"));
    assert_eq!(read(&image.join("postinst-builddir")), "ro\n");

    // Finalize scripts: no arguments, after post-installation scripts.
    assert_eq!(read(&image.join("finalize-argc")), "0\n");
    assert_eq!(read(&image.join("finalize-saw-postinst")), "yes\n");
    let finalize = env_of(&image.join("env-finalize"));
    assert_eq!(var(&finalize, "SCRIPT"), Some("/work/finalize"));
    assert_eq!(var(&finalize, "OUTPUTDIR"), Some("/work/out"));
    assert!(!image.join("work").exists(), "/work must not be left in the image");

    // Post-output scripts see the outputs and can add files.
    let listing = read(&t.out.join("postoutput-listing"));
    assert!(listing.lines().any(|l| l == "image"), "{listing}");
    assert_eq!(read(&t.out.join("postoutput-uid")), "0\n");
    let postoutput = env_of(&t.out.join("env-postoutput"));
    assert_eq!(var(&postoutput, "OUTPUTDIR"), Some("/work/out"));
    assert_eq!(var(&postoutput, "BUILDROOT"), None);

    // Clean scripts see the output directory.
    mkosi_build::scripts::run_clean_scripts(&args, images.last().unwrap(), &host(), c).unwrap();
    let clean = env_of(&c.join("clean.env"));
    assert_eq!(var(&clean, "OUTPUTDIR"), Some("/work/out"));
    assert!(read(&c.join("clean-listing")).lines().any(|l| l == "image"));
}

#[test]
fn failing_script_names_step_script_and_status() {
    require_root_and_busybox!();
    let t = tree("");
    let failing = t.conf.join("mkosi.finalize.chroot");
    script(&failing, "echo 'something went wrong' >&2\nexit 42\n");
    let (args, images) = parse(&t.conf, &[]);
    let e = mkosi_build::build(&args, &images, &host(), &t.conf).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("Running finalize scripts failed: "), "{msg}");
    assert!(msg.contains(&format!("Finalize script {} returned non-zero exit code 42.", failing.display())), "{msg}");
    assert!(msg.contains("something went wrong"), "{msg}");
    assert!(!t.out.join("image").exists());
}

#[test]
fn scripts_must_be_executable() {
    require_root_and_busybox!();
    let t = tree("");
    let s = t.conf.join("mkosi.postinst");
    script(&s, "true\n");
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (args, images) = parse(&t.conf, &[]);
    let e = mkosi_build::build(&args, &images, &host(), &t.conf).unwrap_err();
    assert!(e.to_string().contains(&format!("{} is not executable", s.display())), "{e}");

    // With MakeScriptsExecutable=yes it is made executable and runs.
    let t = tree("MakeScriptsExecutable=yes\n");
    let s = t.conf.join("mkosi.postinst");
    script(&s, "touch \"$BUILDROOT/postinst-ran\"\n");
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (args, images) = parse(&t.conf, &[]);
    mkosi_build::build(&args, &images, &host(), &t.conf).unwrap();
    assert!(t.out.join("image/postinst-ran").exists());
}
