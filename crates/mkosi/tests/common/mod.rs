//! Shared helpers of the end-to-end tests (`MKOSI_E2E=1`): the sandbox tree replacing the
//! unreachable debian-debug suite, the persistent package cache, the global build lock,
//! scratch directories and running `mkosi`.
#![allow(dead_code)]

pub mod initrd;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// The Debian archive without the debian-debug suite, which upstream's
/// default repositories include but which is not reachable from every network.
pub const SOURCES: &str = "\
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie trixie-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: trixie-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

static SERIAL: Mutex<()> = Mutex::new(());

/// Whether the end-to-end tests are enabled; prints a skip message when not.
pub fn enabled(test: &str) -> bool {
    if std::env::var("MKOSI_E2E").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipping {test}: set MKOSI_E2E=1 to run the end-to-end builds (they need network and root)");
    false
}

/// Whether we run as root (some tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Held while a test builds: the package caches are shared, so builds run one at a time,
/// within this process (a mutex) and across processes (an exclusive `flock` next to the
/// cache).
pub struct Serial {
    _guard: std::sync::MutexGuard<'static, ()>,
    _lock: std::fs::File,
}

pub fn serial() -> Serial {
    use std::os::fd::AsRawFd;
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cache = package_cache();
    let path = cache.parent().unwrap_or(&cache).join(".mkosi-e2e.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: flock on a file descriptor we own; released when the file is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("waiting for another end-to-end test run ({} is locked)", path.display());
        // SAFETY: as above.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock {}", path.display());
    }
    Serial { _guard: guard, _lock: lock }
}

/// The persistent package cache (`MKOSI_E2E_CACHE`).
pub fn package_cache() -> PathBuf {
    let p = std::env::var_os("MKOSI_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mkosi-ci/debian~trixie~x86-64"));
    std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating the package cache {}: {e}", p.display()));
    p
}

/// A scratch directory per test, removed at the end unless `MKOSI_E2E_KEEP=1`.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let base = std::env::var_os("MKOSI_E2E_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new().prefix(&format!("mkosi-e2e-{name}-")).tempdir_in(&base).unwrap();
        let path = dir.path().to_path_buf();
        if std::env::var("MKOSI_E2E_KEEP").as_deref() == Ok("1") {
            eprintln!("keeping scratch directory {}", path.display());
            let _ = dir.keep();
            return Scratch { dir: None, path };
        }
        Scratch { dir: Some(dir), path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            make_writable(dir.path());
            let _ = dir.close();
        }
    }
}

/// Image trees contain read-only directories (/boot, /efi…); root removes them anyway,
/// anyone else needs write permission.
pub fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(md) = std::fs::symlink_metadata(p) else { return };
    if md.is_dir() {
        if md.mode() & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(md.mode() | 0o700));
        }
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// Writes `content` to `dir/rel`, creating parent directories.
pub fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
}

/// A configuration directory: `mkosi.conf` and the sandbox tree with the reachable sources.
pub fn config_dir(dir: &Path, conf: &str) {
    write(dir, "mkosi.conf", conf);
    write(dir, "mkosi.sandbox/etc/apt/sources.list.d/mkosi.sources", SOURCES);
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a command, reporting how long it took.
pub fn run(mut cmd: Command, what: &str) -> Output {
    let start = Instant::now();
    let o = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    eprintln!("{what}: {} in {:.1}s", o.status, start.elapsed().as_secs_f64());
    o
}

/// `mkosi ARGS…` in `dir` with the test package cache and a workspace in `dir/workspace`.
pub fn mkosi(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mkosi"));
    cmd.current_dir(dir)
        .arg(format!("--package-cache-dir={}", package_cache().display()))
        .arg(format!("--workspace-directory={}", dir.join("workspace").display()))
        .args(args);
    run(cmd, &format!("mkosi {}", args.join(" ")))
}

pub fn assert_success(o: &Output) {
    assert!(o.status.success(), "mkosi failed ({}):\n{}", o.status, tail(&text(o), 80));
}

/// A build that must succeed.
pub fn build(dir: &Path, args: &[&str]) {
    let mut all = args.to_vec();
    all.push("build");
    assert_success(&mkosi(dir, &all));
}

/// Runs a host tool and returns its output, panicking with its output when it fails.
pub fn tool(argv: &[&str]) -> String {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    let o = run(cmd, &argv.join(" "));
    assert!(o.status.success(), "{} failed: {}", argv.join(" "), text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}
