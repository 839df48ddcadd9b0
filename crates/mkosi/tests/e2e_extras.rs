//! End-to-end tests of manifests, signatures, local package repositories,
//! volatile packages, base trees, the `box` verb and `--debug-shell`.
//!
//! Like `e2e.rs` they need root (or user namespaces) and the Debian archive,
//! so they only run with `MKOSI_E2E=1` and otherwise print a skip message:
//!
//! ```sh
//! MKOSI_E2E=1 cargo test --release -p mkosi --test e2e_extras -- --test-threads=1
//! ```
//!
//! `MKOSI_E2E_CACHE` (default `/var/cache/mkosi-ci/debian~trixie~x86-64`) is
//! the package cache shared with `e2e.rs`; `MKOSI_E2E_TMPDIR` and
//! `MKOSI_E2E_KEEP=1` work the same way. Host tools: dpkg-deb, apt-ftparchive
//! (apt-utils), gpg, sha256sum, tar and zstd.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

const DISTRIBUTION: &str = "[Distribution]\nDistribution=debian\nRelease=trixie\n\n";

fn require_tools(tools: &[(&str, &str)]) {
    for (tool, package) in tools {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/bin".into(), "/usr/sbin".into()])
            .any(|d| d.join(tool).is_file());
        assert!(found, "{tool} is needed for this test (install {package})");
    }
}

fn executable(dir: &Path, rel: &str, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    write(dir, rel, content);
    std::fs::set_permissions(dir.join(rel), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn mkosi_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mkosi"));
    cmd.current_dir(dir)
        .arg(format!("--package-cache-dir={}", package_cache().display()))
        .arg(format!("--workspace-directory={}", dir.join("workspace").display()))
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// A configuration directory: mkosi.conf and the sandbox tree with sources
/// that leave out the debian-debug archive.
fn config_tree(dir: &Path, conf: &str) {
    write(dir, "mkosi.conf", &format!("{DISTRIBUTION}{conf}"));
    write(dir, "mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources", SOURCES);
}

/// Shell commands that build a tiny architecture-independent package
/// `NAME_VERSION_all.deb` into the directory `$out` (shipping
/// `/usr/share/mkosi-e2e/NAME.txt` with the version as content).
fn deb_script(name: &str, version: &str) -> String {
    format!(
        "d=$(mktemp -d)\n\
         mkdir -p \"$d/DEBIAN\" \"$d/usr/share/mkosi-e2e\"\n\
         printf 'Package: {name}\\nVersion: {version}\\nArchitecture: all\\nMaintainer: mkosi tests <tests@example.invalid>\\n\
         Description: mkosi end-to-end test package\\n' >\"$d/DEBIAN/control\"\n\
         echo {version} >\"$d/usr/share/mkosi-e2e/{name}.txt\"\n\
         dpkg-deb --build --root-owner-group \"$d\" \"$out/{name}_{version}_all.deb\" >/dev/null\n\
         rm -rf \"$d\"\n"
    )
}

/// Build a local package into `dir`.
fn make_deb(dir: &Path, name: &str, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let o = Command::new("sh").arg("-ec").arg(deb_script(name, version)).env("out", dir).output().unwrap();
    assert!(o.status.success(), "building {name}: {}", text(&o));
}

/// Package name → (status, version) from a dpkg status file.
fn dpkg_status(text: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
        };
        if let (Some(pkg), Some(status), Some(version)) = (field("Package"), field("Status"), field("Version")) {
            out.insert(pkg.to_string(), (status.to_string(), version.to_string()));
        }
    }
    out
}

fn installed(status: &BTreeMap<String, (String, String)>, package: &str) -> Option<String> {
    status.get(package).filter(|(s, _)| s == "install ok installed").map(|(_, v)| v.clone())
}

fn manifest(p: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{s}", p.display()))
}

fn manifest_packages(m: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    m["packages"]
        .as_array()
        .unwrap_or_else(|| panic!("no package list in {m}"))
        .iter()
        .map(|p| (p["name"].as_str().unwrap_or_default().to_string(), p.clone()))
        .collect()
}

#[test]
fn manifest_and_signed_checksums() {
    if !enabled("manifest_and_signed_checksums") {
        return;
    }
    require_tools(&[("gpg", "gnupg"), ("sha256sum", "coreutils"), ("tar", "tar"), ("zstd", "zstd")]);
    let _lock = serial();
    let s = Scratch::new("manifest-signed");
    let dir = s.path();

    // A throwaway signing key.
    let gnupghome = dir.join("gnupg");
    std::fs::create_dir(&gnupghome).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupghome, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let gpg = |args: &[&str]| {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", &gnupghome).args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""]);
        c.args(args).stdin(Stdio::null());
        run(c, &format!("gpg {}", args.join(" ")))
    };
    let o = gpg(&["--quick-gen-key", "mkosi e2e <e2e@example.invalid>", "ed25519", "sign", "never"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = gpg(&["--list-secret-keys", "--with-colons"]);
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    let fingerprint = listing
        .lines()
        .find_map(|l| l.strip_prefix("fpr:").map(|r| r.trim_matches(':').to_string()))
        .unwrap_or_else(|| panic!("no key fingerprint in\n{listing}"));

    config_tree(
        dir,
        &format!(
            "[Output]\nFormat=tar\nOutput=image\nManifestFormat=json\nImageVersion=1.2.3\n\n[Content]\nPackages=systemd\n\n\
             [Validation]\nChecksum=yes\nSign=yes\nKey={fingerprint}\n"
        ),
    );
    let mut cmd = mkosi_cmd(dir, &["build"]);
    cmd.env("GNUPGHOME", &gnupghome);
    let o = run(cmd, "mkosi build");
    assert_success(&o);
    // Stop the agent the key generation started.
    let _ = Command::new("gpgconf").env("GNUPGHOME", &gnupghome).args(["--kill", "gpg-agent"]).status();

    // The checksums cover the image only, and the signature is good.
    let sums = std::fs::read_to_string(dir.join("image.SHA256SUMS")).unwrap();
    let listed: Vec<&str> = sums.lines().filter_map(|l| l.split_once(" *").map(|(_, n)| n)).collect();
    assert_eq!(listed, vec!["image.tar.zst"], "{sums}");
    let o = Command::new("sha256sum").arg("--check").arg("image.SHA256SUMS").current_dir(dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let signature = dir.join("image.SHA256SUMS.gpg").to_string_lossy().into_owned();
    let signed = dir.join("image.SHA256SUMS").to_string_lossy().into_owned();
    let o = gpg(&["--verify", &signature, &signed]);
    assert!(o.status.success(), "gpg --verify failed:\n{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Good signature"), "{}", text(&o));

    // The manifest describes the image and its packages with the versions dpkg has.
    let m = manifest(&dir.join("image.manifest"));
    assert_eq!(m["manifest_version"], 1);
    assert_eq!(
        m["config"],
        serde_json::json!({
            "name": "image",
            "distribution": "debian",
            "architecture": "x86-64",
            "output_format": "tar",
            "version": "1.2.3",
            "release": "trixie",
        })
    );
    assert_eq!(m["extension"], serde_json::json!({}));
    let raw = std::fs::read_to_string(dir.join("image.manifest")).unwrap();
    assert!(raw.starts_with("{\n  \"manifest_version\": 1,\n  \"config\": {\n"), "not indented by 2:\n{raw}");

    let o = Command::new("tar")
        .args(["--zstd", "-xOf", "image.tar.zst", "./var/lib/dpkg/status"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let status = dpkg_status(&String::from_utf8_lossy(&o.stdout));
    let packages = manifest_packages(&m);
    let systemd = &packages.get("systemd").unwrap_or_else(|| panic!("systemd is not in the manifest: {m}"));
    let version = installed(&status, "systemd").expect("systemd is not installed in the image");
    assert_eq!(systemd["version"], serde_json::json!(version));
    assert_eq!(systemd["type"], "deb");
    assert_eq!(systemd["architecture"], "amd64");
    assert!(systemd["size"].as_u64().is_some_and(|s| s > 1024 * 1024), "{systemd}");
    let in_image: Vec<&String> = status.keys().filter(|p| installed(&status, p).is_some()).collect();
    assert_eq!(packages.keys().collect::<Vec<_>>(), in_image, "the manifest lists other packages than dpkg");
}

#[test]
fn local_packages_volatile_packages_and_base_trees() {
    if !enabled("local_packages_volatile_packages_and_base_trees") {
        return;
    }
    require_tools(&[("dpkg-deb", "dpkg"), ("apt-ftparchive", "apt-utils")]);
    let _lock = serial();
    let s = Scratch::new("local-packages");
    let root = s.path();

    // The base image: a package from PackageDirectories=, and a volatile
    // package a build script puts into $PACKAGEDIR (a newer version than the
    // one in PackageDirectories=, which must not win).
    let base = root.join("base");
    make_deb(&base.join("debs"), "mkosi-e2e-local", "1.0");
    make_deb(&base.join("debs"), "mkosi-e2e-volatile", "1.0");
    config_tree(
        &base,
        "[Output]\nFormat=directory\nOutput=base\n\n[Content]\nPackages=mkosi-e2e-local\nPackageDirectories=debs\n\
         VolatilePackages=mkosi-e2e-volatile\n",
    );
    executable(
        &base,
        "mkosi.build",
        &format!("#!/bin/sh\nset -e\nout=\"$PACKAGEDIR\"\n{}", deb_script("mkosi-e2e-volatile", "2.0")),
    );
    let o = mkosi(&base, &["build"]);
    assert_success(&o);
    let image = base.join("base");
    let status = dpkg_status(&std::fs::read_to_string(image.join("var/lib/dpkg/status")).unwrap());
    assert_eq!(installed(&status, "mkosi-e2e-local").as_deref(), Some("1.0"));
    assert_eq!(installed(&status, "mkosi-e2e-volatile").as_deref(), Some("2.0"), "the volatile package");
    assert_eq!(std::fs::read_to_string(image.join("usr/share/mkosi-e2e/mkosi-e2e-local.txt")).unwrap(), "1.0\n");
    assert_eq!(std::fs::read_to_string(image.join("usr/share/mkosi-e2e/mkosi-e2e-volatile.txt")).unwrap(), "2.0\n");
    let err = String::from_utf8_lossy(&o.stderr);
    let build_script = err.find("Running build script").expect("the build script did not run");
    let volatile = err.find("Installing volatile packages").expect("no volatile package installation");
    assert!(volatile > build_script, "volatile packages were installed before the build scripts");

    // On top of it: BaseTrees= and one more package; nothing is bootstrapped
    // and the manifest lists only the new package.
    let top = root.join("top");
    make_deb(&top.join("debs"), "mkosi-e2e-extra", "3.0");
    config_tree(
        &top,
        &format!(
            "[Output]\nFormat=directory\nOutput=top\nManifestFormat=json\n\n[Content]\nBaseTrees={}\n\
             Packages=mkosi-e2e-extra\nPackageDirectories=debs\n",
            image.display()
        ),
    );
    let o = mkosi(&top, &["build"]);
    assert_success(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Copying in base trees"), "{}", tail(&err, 40));
    assert!(!err.contains("Installing Debian\n") && !err.contains("Installing Debian\u{1b}"), "{}", tail(&err, 60));
    let out = top.join("top");
    let status = dpkg_status(&std::fs::read_to_string(out.join("var/lib/dpkg/status")).unwrap());
    assert_eq!(installed(&status, "mkosi-e2e-extra").as_deref(), Some("3.0"));
    assert_eq!(installed(&status, "mkosi-e2e-local").as_deref(), Some("1.0"), "base tree content is missing");
    assert!(installed(&status, "bash").is_some(), "base tree content is missing");
    assert!(out.join("usr/share/mkosi-e2e/mkosi-e2e-volatile.txt").exists());
    let m = manifest(&top.join("top.manifest"));
    let packages = manifest_packages(&m);
    assert_eq!(packages.keys().collect::<Vec<_>>(), vec!["mkosi-e2e-extra"], "{m}");
    assert_eq!(packages["mkosi-e2e-extra"]["version"], "3.0");
}

/// A GPT disk image with an ext4 root partition holding `tree` (no loop
/// devices needed to create it: `mkfs.ext4 -d` fills the file system).
fn make_disk_image(tree: &Path, image: &Path) {
    let part = image.with_extension("part");
    let sectors = 100_000u64;
    let script = format!(
        "truncate -s 64M {img}\n\
         printf 'label: gpt\\nstart=2048, size={sectors}, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709\\n' | sfdisk -q {img}\n\
         truncate -s {bytes} {part}\n\
         mkfs.ext4 -q -d {tree} {part}\n\
         dd if={part} of={img} bs=512 seek=2048 conv=notrunc status=none\n\
         rm {part}\n",
        img = image.display(),
        part = part.display(),
        tree = tree.display(),
        bytes = sectors * 512,
    );
    let o = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    assert!(o.status.success(), "creating {}: {}", image.display(), text(&o));
}

#[test]
fn disk_image_base_tree() {
    if !enabled("disk_image_base_tree") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("raw-base-tree");
    let dir = s.path();
    config_tree(dir, "[Output]\nFormat=directory\n\n[Content]\nBaseTrees=base.raw\n");
    let dissect = ["/usr/bin/systemd-dissect", "/usr/sbin/systemd-dissect", "/usr/local/bin/systemd-dissect"]
        .iter()
        .any(|p| Path::new(p).exists());

    if !dissect {
        // Without systemd-dissect the build stops with an error naming it.
        write(dir, "base.raw", "not really a disk image");
        let o = mkosi(dir, &["build"]);
        assert!(!o.status.success(), "the build succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("Copying in base trees failed"), "{}", tail(&err, 20));
        assert!(err.contains("systemd-dissect was not found"), "{}", tail(&err, 20));
        return;
    }

    require_tools(&[("sfdisk", "fdisk"), ("mkfs.ext4", "e2fsprogs")]);
    let tree = dir.join("tree");
    write(&tree, "etc/mkosi-e2e/raw-marker", "from the disk image\n");
    write(&tree, "usr/lib/os-release", "ID=debian\nVERSION_CODENAME=trixie\n");
    make_disk_image(&tree, &dir.join("base.raw"));
    let o = mkosi(dir, &["build"]);
    assert_success(&o);
    assert_eq!(std::fs::read_to_string(dir.join("image/etc/mkosi-e2e/raw-marker")).unwrap(), "from the disk image\n");
}

#[test]
fn box_runs_commands_with_the_host_system() {
    if !enabled("box_runs_commands_with_the_host_system") {
        return;
    }
    let s = Scratch::new("box");
    let dir = s.path();
    config_tree(dir, "");

    let o = mkosi(dir, &["box", "--", "cat", "/etc/os-release"]);
    assert_success(&o);
    let host = std::fs::read_to_string("/etc/os-release").unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), host);

    let o = mkosi(
        dir,
        &[
            "sandbox",
            "--",
            "sh",
            "-c",
            "echo \"$MKOSI_IN_BOX|$SHELL_PROMPT_PREFIX|$MKOSI_HOST_DISTRIBUTION|$PWD\"; exit 7",
        ],
    );
    assert_eq!(o.status.code(), Some(7), "the command's exit status is mkosi's:\n{}", text(&o));
    let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert_eq!(&fields[..2], &["1", "(box)"], "{line}");
    let id = host.lines().find_map(|l| l.strip_prefix("ID=")).map(|v| v.trim_matches('"')).unwrap_or_default();
    assert_eq!(fields[2], id, "{line}");
    assert_eq!(Path::new(fields[3]).canonicalize().unwrap(), dir.canonicalize().unwrap(), "{line}");

    let o = mkosi(dir, &["box"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Please specify a command to execute in the sandbox"),
        "{}",
        text(&o)
    );
}

#[test]
fn debug_shell_opens_in_the_failed_sandbox() {
    if !enabled("debug_shell_opens_in_the_failed_sandbox") {
        return;
    }
    let _lock = serial();
    let s = Scratch::new("debug-shell");
    let dir = s.path();
    config_tree(dir, "[Output]\nFormat=directory\n");
    executable(dir, "mkosi.sync", "#!/bin/sh\nexit 3\n");

    let run_with_input = |args: &[&str]| {
        let mut cmd = mkosi_cmd(dir, args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            // The shell reads its commands from standard input; it runs in the
            // script's sandbox, where the script is mounted.
            stdin
                .write_all(b"echo \"debug shell $((6 * 7))\"; test -x /work/sync && echo sync-script-visible\n")
                .unwrap();
        }
        child.wait_with_output().unwrap()
    };

    let o = run_with_input(&["--debug-shell", "build"]);
    assert!(!o.status.success(), "the build succeeded");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("debug shell 42"), "no debug shell ran:\n{}", text(&o));
    assert!(out.contains("sync-script-visible"), "the shell is not in the script's sandbox:\n{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("returned non-zero exit code 3"), "{}", tail(&err, 20));

    let o = run_with_input(&["build"]);
    assert!(!o.status.success(), "the build succeeded");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("debug shell 42"), "a shell ran without --debug-shell");
}
