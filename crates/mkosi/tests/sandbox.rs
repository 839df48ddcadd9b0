//! `mkosi-sandbox` (the mkosi binary under that name) end to end: the
//! command sees exactly the root the options describe, privileged or not.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

fn base() -> Vec<&'static str> {
    vec![
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
        "/proc",
        "/proc",
    ]
}

fn sandbox(prefix: &[&str], args: &[&str]) -> Output {
    let (prog, pre) = match prefix.split_first() {
        Some((p, rest)) => (p.to_string(), rest.to_vec()),
        None => (env!("CARGO_BIN_EXE_mkosi").to_string(), vec![]),
    };
    let mut cmd = Command::new(&prog);
    if prefix.is_empty() {
        cmd.arg0("mkosi-sandbox");
    } else {
        cmd.args(&pre);
    }
    cmd.args(args).output().expect("running mkosi-sandbox")
}

fn can_sandbox() -> bool {
    // Namespaces may be unavailable (e.g. in some containers); skip then.
    let o = sandbox(&[], &[&base()[..], &["--", "true"]].concat());
    if !o.status.success() {
        eprintln!("sandbox not available here: {}", String::from_utf8_lossy(&o.stderr));
    }
    o.status.success()
}

#[test]
fn sees_only_what_was_mounted() {
    if !can_sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data"), "payload").unwrap();
    let src = dir.path().to_str().unwrap();
    let args = [
        &base()[..],
        &[
            "--ro-bind",
            src,
            "/work/in",
            "--write",
            "written",
            "/etc/note",
            "--setenv",
            "GREETING",
            "hi",
            "--chdir",
            "/work/in",
            "--",
            "sh",
            "-c",
            "ls / | tr '\\n' ' '; echo; cat data; echo; cat /etc/note; echo; echo $GREETING; pwd; \
           touch /work/in/x 2>/dev/null && echo writable || echo readonly; echo > /dev/null && echo devnull",
        ],
    ]
    .concat();
    let o = sandbox(&[], &args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "bin dev etc lib lib64 proc sbin tmp usr work");
    assert_eq!(lines[1], "payload");
    assert_eq!(lines[2], "written");
    assert_eq!(lines[3], "hi");
    assert_eq!(lines[4], "/work/in");
    assert_eq!(lines[5], "readonly");
    assert_eq!(lines[6], "devnull");
}

#[test]
fn overlay_with_tmpfs_upper_discards_writes() {
    if !can_sandbox() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "lower").unwrap();
    let src = dir.path().to_str().unwrap();
    let args = [
        &base()[..],
        &[
            "--overlay-lowerdir",
            src,
            "--overlay-upperdir",
            "tmpfs",
            "--overlay",
            "/merged",
            "--",
            "sh",
            "-c",
            "echo upper > /merged/f && cat /merged/f",
        ],
    ]
    .concat();
    let o = sandbox(&[], &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "upper");
    assert_eq!(std::fs::read_to_string(dir.path().join("f")).unwrap(), "lower");
}

#[test]
fn missing_command_exits_127() {
    if !can_sandbox() {
        return;
    }
    let o = sandbox(&[], &[&base()[..], &["--", "/no/such/binary"]].concat());
    assert_eq!(o.status.code(), Some(127));
}

#[test]
fn missing_required_bind_fails_clearly() {
    let o = sandbox(&[], &[&base()[..], &["--bind", "/no/such/dir", "/x", "--", "true"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/dir does not exist"));
}

#[test]
fn unprivileged_user_becomes_root() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 || Command::new("setpriv").arg("--version").output().is_err() || !can_sandbox() {
        return;
    }
    // Run as "nobody" from a copy of the binary that user can execute.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("mkosi-sandbox");
    std::fs::copy(env!("CARGO_BIN_EXE_mkosi"), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin.to_str().unwrap().to_string();
    let prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", &bin];
    let o = sandbox(&prefix, &[&base()[..], &["--become-root", "--", "id", "-u"]].concat());
    if !o.status.success() {
        eprintln!("unprivileged user namespaces unavailable: {}", String::from_utf8_lossy(&o.stderr));
        return;
    }
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");
    let o = sandbox(&prefix, &[&base()[..], &["--", "id", "-u"]].concat());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "65534");
}
