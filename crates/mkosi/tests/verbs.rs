//! The `mkosi` binary end to end on small configuration trees: the verbs that
//! need no image, errors, and the command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn resources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources")
}

fn mkosi(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mkosi"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("MKOSI_HOST_DISTRIBUTION", "debian")
        .env("MKOSI_HOST_RELEASE", "trixie")
        .env("MKOSI_RESOURCES", resources())
        .output()
        .expect("running mkosi")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

fn json_summary(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "summary"];
    all.extend_from_slice(args);
    let o = mkosi(dir, &all);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

#[test]
fn json_summary_reflects_files_and_cli() {
    let t = tree(&[
        ("mkosi.conf", "[Distribution]\nDistribution=fedora\nRelease=41\n[Content]\nPackages=systemd\n"),
        ("mkosi.conf.d/10-more.conf", "[Content]\nPackages=udev\n"),
    ]);
    let j = json_summary(t.path(), &["-p", "bash", "--image-id=demo"]);
    let main = &j["Images"][0];
    assert_eq!(main["Distribution"], "fedora");
    assert_eq!(main["Release"], "41");
    // Command line values are appended after the (sorted) values from files, like upstream.
    assert_eq!(main["Packages"], serde_json::json!(["systemd", "udev", "bash"]));
    assert_eq!(main["Output"], "demo");
    assert_eq!(main["Image"], "main");
    assert_eq!(j["Tools"], serde_json::Value::Null);
    assert_eq!(main.as_object().unwrap().len(), 178);
}

#[test]
fn json_output_is_python_formatted() {
    let t = tree(&[("mkosi.conf", "[Content]\nPackages=a\n")]);
    let o = mkosi(t.path(), &["--json", "summary"]);
    let text = stdout(&o);
    assert!(text.starts_with("{\n    \"Images\": [\n        {\n            \"Architecture\": "), "{text}");
    // Piped output has no trailing newline, like upstream.
    assert!(text.ends_with("\n}"), "{text:?}");
    let o = mkosi(t.path(), &["--json", "--no-pager", "summary"]);
    assert!(stdout(&o).ends_with("}\n"));
}

#[test]
fn human_summary_and_cat_config() {
    let t = tree(&[("mkosi.conf", "[Distribution]\nDistribution=arch\n# comment\n")]);
    let o = mkosi(t.path(), &["summary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.starts_with("IMAGE: main\n"), "{s}");
    assert!(s.contains("                       Distribution: arch\n"), "{s}");
    assert!(s.contains("                            Release: rolling\n"), "{s}");

    let o = mkosi(t.path(), &["cat-config"]);
    let s = stdout(&o);
    assert!(s.contains("### IMAGE: main\n# mkosi.conf\n[Distribution]\nDistribution=arch\n# comment\n"), "{s}");
}

#[test]
fn subimages_come_first() {
    let t = tree(&[
        ("mkosi.conf", "[Output]\nFormat=directory\n"),
        ("mkosi.images/base/mkosi.conf", "[Content]\nPackages=base-files\n"),
        ("mkosi.images/app.conf", "[Config]\nDependencies=base\n"),
    ]);
    let j = json_summary(t.path(), &[]);
    let names: Vec<&str> = j["Images"].as_array().unwrap().iter().map(|i| i["Image"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["base", "app", "main"]);
    assert_eq!(j["Images"][2]["Dependencies"], serde_json::json!(["app", "base"]));
}

#[test]
fn errors_name_file_line_and_setting() {
    let t = tree(&[("mkosi.conf", "[Output]\nFormat=bogus\n")]);
    let o = mkosi(t.path(), &["summary"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("mkosi.conf:2: Format=: 'bogus' is not a valid OutputFormat"), "{e}");

    let t = tree(&[("mkosi.conf", "[Match]\nNoSuchKey=1\n")]);
    let o = mkosi(t.path(), &["summary"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("mkosi.conf:2: NoSuchKey=: NoSuchKey cannot be used in [Match]"), "{}", stderr(&o));

    let t = tree(&[("mkosi.conf", "[Content]\nPackages=a\nbroken line\n")]);
    let o = mkosi(t.path(), &["summary"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("mkosi.conf:3:"), "{}", stderr(&o));
}

#[test]
fn unknown_settings_warn() {
    let t = tree(&[("mkosi.conf", "[Content]\nPackages=a\nNoSuchSetting=1\n[Unknown]\nX=1\n")]);
    let o = mkosi(t.path(), &["--json", "summary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("mkosi.conf:3: Unknown setting NoSuchSetting"), "{}", stderr(&o));
}

#[test]
fn empty_directory_option_ignores_configuration() {
    let t = tree(&[("mkosi.conf", "[Distribution]\nDistribution=arch\n")]);
    let j = json_summary(t.path(), &["-C", ""]);
    let main = &j["Images"][0];
    assert_eq!(main["Distribution"], "debian");
    assert_eq!(main["Machine"], serde_json::Value::Null);
    assert_eq!(main["BuildSources"], serde_json::json!([]));
}

#[test]
fn no_configuration_found() {
    // Like upstream, "no configuration" means: identical to what mkosi sees in /proc.
    let t = tree(&[]);
    let o = mkosi(t.path(), &["-C", "/proc", "summary"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("No configuration found"), "{}", stderr(&o));
}

#[test]
fn command_line_errors_exit_2() {
    let t = tree(&[]);
    for args in [&["--no-such-option"][..], &["frobnicate"], &["--cache-only=none", "summary"], &["summary", "extra"]] {
        let o = mkosi(t.path(), args);
        assert_ne!(o.status.code(), Some(0), "{args:?}");
    }
    let o = mkosi(t.path(), &["--no-such-option"]);
    assert_eq!(o.status.code(), Some(2));
    let o = mkosi(t.path(), &["summary", "extra"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Arguments after verb are not supported for the 'summary' command"));
}

#[test]
fn ssh_needs_a_running_machine() {
    let t = tree(&[("mkosi.conf", "[Content]\nPackages=a\n")]);
    let run = t.path().join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_mkosi"))
        .current_dir(t.path())
        .env("XDG_RUNTIME_DIR", &run)
        .args(["--machine=mach", "ssh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("mkosi/machine/mach.json not found, cannot SSH into virtual machine mach"), "{err}");
}

#[test]
fn runtime_verbs_need_a_built_image() {
    let t = tree(&[("mkosi.conf", "[Content]\nPackages=a\n")]);
    for verb in ["shell", "boot", "vm", "serve", "burn", "sysupdate"] {
        let o = mkosi(t.path(), &[verb]);
        assert_eq!(o.status.code(), Some(1), "{verb}");
        assert!(stderr(&o).contains("Image 'main' has not been built yet"), "{verb}: {}", stderr(&o));
        assert!(stderr(&o).contains("Make sure to build the image first with 'mkosi build' or use '--force'"));
    }
    for verb in ["journalctl", "coredumpctl"] {
        let o = mkosi(t.path(), &[verb]);
        assert_eq!(o.status.code(), Some(1), "{verb}");
        assert!(stderr(&o).contains(&format!("does not exist, cannot inspect with {verb}")), "{verb}: {}", stderr(&o));
    }
}

#[test]
fn build_refuses_settings_it_cannot_build_yet() {
    // The check happens before anything is downloaded or built.
    let t = tree(&[("mkosi.conf", "[Output]\nFormat=directory\n[Build]\nUseSubvolumes=yes\n[Content]\nPackages=a\n")]);
    let o = mkosi(
        t.path(),
        &[
            "--workspace-directory",
            t.path().to_str().unwrap(),
            "--package-cache-dir",
            t.path().join("cache").to_str().unwrap(),
            "build",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("Not implemented yet: UseSubvolumes=yes"), "{e}");
    assert!(!t.path().join("cache").exists(), "nothing was prepared");
}

#[test]
fn clean_removes_outputs_only_of_this_configuration() {
    let t = tree(&[("mkosi.conf", "[Output]\nImageId=img\nFormat=tar\n"), ("mkosi.output/keep.txt", "mine")]);
    let out = t.path().join("mkosi.output");
    for f in ["img.tar.zst", "img.SHA256SUMS", "img.manifest"] {
        std::fs::write(out.join(f), "x").unwrap();
    }
    std::os::unix::fs::symlink("img.tar.zst", out.join("img")).unwrap();
    let o = mkosi(t.path(), &["clean"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["keep.txt"]);
}

#[test]
fn version_and_help() {
    let t = tree(&[]);
    let o = mkosi(t.path(), &["--version"]);
    assert_eq!(stdout(&o).trim(), "mkosi 27~devel");
    for args in [&["--help"][..], &["help"], &["-h"]] {
        let o = mkosi(t.path(), args);
        assert!(o.status.success());
        let s = stdout(&o);
        assert!(s.contains("Distribution configuration options"), "{s}");
        assert!(s.contains("--distribution"), "{s}");
    }
}

#[test]
fn bump_increments_versions() {
    let t = tree(&[("mkosi.conf", "[Output]\nImageId=x\n")]);
    let version = || std::fs::read_to_string(t.path().join("mkosi.version")).unwrap();
    assert!(mkosi(t.path(), &["bump"]).status.success());
    assert_eq!(version(), "1");
    assert!(mkosi(t.path(), &["bump"]).status.success());
    assert_eq!(version(), "2");
    std::fs::write(t.path().join("mkosi.version"), "1.9\n").unwrap();
    assert!(mkosi(t.path(), &["bump"]).status.success());
    assert_eq!(version(), "1.10");
    std::fs::write(t.path().join("mkosi.version"), "1.rc").unwrap();
    assert!(mkosi(t.path(), &["bump"]).status.success());
    assert_eq!(version(), "1.rc.2");

    // A bump script decides the version.
    use std::os::unix::fs::PermissionsExt;
    let script = t.path().join("mkosi.bump");
    std::fs::write(&script, "#!/bin/sh\necho 42.0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(mkosi(t.path(), &["bump"]).status.success());
    assert_eq!(version(), "42.0");

    // The image version is visible in the summary.
    let j = json_summary(t.path(), &[]);
    assert_eq!(j["Images"][0]["ImageVersion"], "42.0");
    assert_eq!(j["Images"][0]["Output"], "x_42.0");
}

#[test]
fn genkey_creates_key_pair() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed, skipping");
        return;
    }
    let t = tree(&[("mkosi.conf", "")]);
    let o = mkosi(t.path(), &["genkey", "--genkey-common-name=test"]);
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(t.path().join("mkosi.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let crt = std::fs::read_to_string(t.path().join("mkosi.crt")).unwrap();
    assert!(crt.contains("BEGIN CERTIFICATE"));
    // Refuses to overwrite without -f.
    let o = mkosi(t.path(), &["genkey"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"));
    assert!(mkosi(t.path(), &["-f", "genkey"]).status.success());
    // The key pair is picked up as SecureBootKey/SecureBootCertificate.
    let j = json_summary(t.path(), &[]);
    assert_eq!(j["Images"][0]["SecureBootKey"], t.path().join("mkosi.key").canonicalize().unwrap().to_str().unwrap());
}

#[test]
fn completion_scripts() {
    let t = tree(&[]);
    for (shell, marker) in [("bash", "complete"), ("zsh", "#compdef"), ("fish", "complete -c mkosi")] {
        let o = mkosi(t.path(), &["completion", shell]);
        assert!(o.status.success(), "{shell}");
        let s = stdout(&o);
        assert!(s.contains(marker) && s.contains("distribution"), "{shell}");
    }
    let o = mkosi(t.path(), &["completion"]);
    assert_eq!(o.status.code(), Some(1));
    let o = mkosi(t.path(), &["completion", "tcsh"]);
    assert!(stderr(&o).contains("tcsh is not supported"));
}

#[test]
fn documentation_as_markdown() {
    let t = tree(&[]);
    let o = mkosi(t.path(), &["--no-pager", "--doc-format=markdown", "documentation"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("# NAME"));
    assert!(s.contains("`Distribution=`, `--distribution=`, `-d`") || s.contains("`Distribution=`"), "{s}");
    assert!(s.contains("`--kernel-initrd-modules=`"));
}

#[test]
fn init_installs_tmpfiles_snippet() {
    let t = tree(&[]);
    let o = Command::new(env!("CARGO_BIN_EXE_mkosi"))
        .arg("init")
        .current_dir(t.path())
        .env("XDG_CONFIG_HOME", t.path().join("config"))
        .env("MKOSI_RESOURCES", resources())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let f = std::fs::read_to_string(t.path().join("config/user-tmpfiles.d/mkosi.conf")).unwrap();
    assert!(f.contains("d %C/mkosi - - - 90d"));
}

#[test]
fn options_after_the_verb_and_passthrough() {
    let t = tree(&[("mkosi.conf", "[Content]\nPackages=a\n")]);
    let j = json_summary(t.path(), &["--distribution=ubuntu", "--release=noble"]);
    assert_eq!(j["Images"][0]["Distribution"], "ubuntu");
    assert_eq!(j["Images"][0]["Release"], "noble");
}

/// `mkosi vm` with `PATH` set to `path` (and nothing else from the environment).
fn vm_with_path(dir: &Path, path: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mkosi"))
        .args(args)
        .arg("vm")
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("MKOSI_HOST_DISTRIBUTION", "debian")
        .env("MKOSI_HOST_RELEASE", "trixie")
        .env("MKOSI_RESOURCES", resources())
        .output()
        .expect("running mkosi")
}

#[test]
fn vm_names_the_packages_of_missing_tools() {
    let t = tree(&[
        ("mkosi.conf", "[Output]\nFormat=disk\nOutput=image\n[Runtime]\nKVM=no\nVSock=no\n"),
        ("image.raw", ""),
        ("image.tar", ""),
        ("image.tar.zst", ""),
        ("empty/.keep", ""),
    ]);
    let o = vm_with_path(t.path(), &t.path().join("empty"), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("qemu not found") && err.contains("Install the 'qemu-system-x86' package"), "{err}");

    // With a qemu but no swtpm, TPM=yes names swtpm's package.
    let bin = t.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let qemu = bin.join("qemu-system-x86_64");
    std::fs::write(&qemu, "#!/bin/sh\necho 'QEMU emulator version 7.2.0'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = vm_with_path(
        t.path(),
        &bin,
        &["--tpm=yes", "--firmware=linux", "--linux=/dev/null", "--kernel-command-line-extra=root=/dev/vda"],
    );
    let err = stderr(&o);
    assert!(err.contains("TPM=yes needs swtpm_setup") && err.contains("'swtpm-tools'"), "{err}");

    // ForwardJournal= forwards over vsock, which is switched off here.
    let o = vm_with_path(
        t.path(),
        &bin,
        &[
            "--tpm=no",
            "--firmware=linux",
            "--linux=/dev/null",
            "--kernel-command-line-extra=root=/dev/vda",
            "--forward-journal=/j.journal",
        ],
    );
    assert!(stderr(&o).contains("ForwardJournal= needs a vsock device"), "{}", stderr(&o));

    // Formats qemu cannot boot are refused.
    let o = vm_with_path(t.path(), &bin, &["--format=tar"]);
    assert!(stderr(&o).contains("tar images cannot be booted in qemu"), "{}", stderr(&o));
}
