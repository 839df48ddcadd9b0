//! The verbs that run or inspect what was built: `shell`/`boot` (systemd-nspawn),
//! `serve` (an HTTP server on the output directory), `burn` (write a disk image to a
//! block device), `journalctl`/`coredumpctl` (inspect the image's journal and core
//! dumps) and `sysupdate`.
//!
//! [`run`] does what these verbs share: it refuses images that were not built yet,
//! builds them first with `--force` (in a child process, as building enters a user and
//! a mount namespace the runtime verbs must not inherit), and checks who owns directory
//! images. The credentials, the runtime kernel command line and the (ephemeral) image
//! handling live here too, as `vm` needs the same.

pub mod burn;
pub mod journal;
pub mod nspawn;
pub mod serve;
pub mod ssh;
pub mod sysupdate;
pub mod vm;
pub mod vmspawn;

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use mkosi_config::config::Config;
use mkosi_config::enums::OutputFormat;
use mkosi_config::{Args, Host, Verb};

/// The first UID of the foreign UID range (systemd's `FOREIGN_UID_BASE`).
pub const FOREIGN_UID_MIN: u32 = 0x7FFE_0000;
/// The last UID of the foreign UID range.
pub const FOREIGN_UID_MAX: u32 = FOREIGN_UID_MIN + 0xFFFF;

/// An error with a hint, reported like configuration errors.
pub fn die(msg: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    mkosi_config::Error::new(msg.into()).with_hint(hint.into()).into()
}

/// Run one of the runtime verbs on the last (main) image.
pub fn run(args: &Args, images: Vec<Config>, host: &Host, cwd: &Path, resources: &Path) -> Result<()> {
    let last = images.last().context("no image")?.clone();
    let verb = args.verb;

    if matches!(verb, Verb::Journalctl | Verb::Coredumpctl) {
        return journal::run_systemd_tool(args, &last, host, cwd);
    }
    if verb == Verb::Ssh {
        return ssh::run_ssh(args, &last, host);
    }

    if last.output_format() == OutputFormat::None {
        bail!("Cannot run '{}' verb on image with output format 'none'", verb.as_str());
    }
    let outdir = last.output_dir_or_cwd(cwd);
    if args.force == 0 && !outdir.join(last.output_with_compression()).exists() {
        return Err(die(
            format!("Image '{}' has not been built yet", last.image()),
            "Make sure to build the image first with 'mkosi build' or use '--force'",
        ));
    }
    if args.force > 0 {
        build_in_child(args, images, host, cwd, resources)?;
    }

    check_directory_owner(&outdir.join(last.output()), is_root())?;

    match verb {
        Verb::Shell | Verb::Boot => nspawn::run_shell(args, &last, host, cwd),
        Verb::Serve => serve::run_serve(&last, cwd),
        Verb::Burn => burn::run_burn(args, &last, cwd),
        Verb::Sysupdate => sysupdate::run_sysupdate(args, &last, host, cwd),
        Verb::Vm | Verb::Qemu if last.str("VirtualMachineMonitor") == Some("vmspawn") => {
            vmspawn::run_vmspawn(args, &last, host, cwd)
        }
        Verb::Vm | Verb::Qemu => vm::run_vm(args, &last, host, cwd),
        other => bail!("'{}' is not a runtime verb", other.as_str()),
    }
}

pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Directory images must be owned by the foreign UID range, or by root with mkosi
/// running as root.
pub fn check_directory_owner(output: &Path, running_as_root: bool) -> Result<()> {
    let Ok(md) = std::fs::metadata(output) else { return Ok(()) };
    if !md.is_dir() || (FOREIGN_UID_MIN..=FOREIGN_UID_MAX).contains(&md.uid()) {
        return Ok(());
    }
    if md.uid() != 0 {
        return Err(die(
            "Can only operate on foreign UID range or root owned directory images",
            "Add ForeignUIDRange=yes to [Build] and rebuild the image to use the foreign UID range",
        ));
    }
    if !running_as_root {
        bail!("Must be root to operate on root owned directory images");
    }
    Ok(())
}

/// Build the images (`--force`) in a child process: building becomes root in a user
/// namespace and enters a private mount namespace, which must not leak into the
/// process that runs the image afterwards.
fn build_in_child(args: &Args, images: Vec<Config>, host: &Host, cwd: &Path, resources: &Path) -> Result<()> {
    use std::io::Write;
    // SAFETY: mkosi is single-threaded here; the child only builds and then exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        let result = (|| -> Result<()> {
            let images = if images.iter().any(|c| !c.list("ConfigureScripts").is_empty()) {
                let defaults = crate::verbs::default_config(host, resources)?;
                mkosi_build::scripts::run_configure_scripts(args, &images, host, cwd, &defaults)?
            } else {
                images
            };
            mkosi_build::build(args, &images, host, cwd)?;
            Ok(())
        })();
        let code = match result {
            Ok(()) => 0,
            Err(e) => crate::report(&e),
        };
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: ends the forked child without running the parent's destructors twice.
        unsafe { libc::_exit(i32::from(code)) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("waiting for the build");
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    Err(crate::Exit(code.clamp(1, 255) as u8).into())
}

/// The path of `name` on `$PATH`, or the path itself when it contains a slash.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The version a systemd tool reports (`systemd 252 (252.39-1)` → `252`).
pub fn systemd_tool_version(tool: &Path) -> Result<String> {
    let out = Command::new(tool).arg("--version").output().with_context(|| format!("running {}", tool.display()))?;
    parse_systemd_version(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("cannot determine the version of {}", tool.display()))
}

/// The version in the first line of a systemd tool's `--version` output.
pub fn parse_systemd_version(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    let mut words = first.split_whitespace();
    if words.next()? != "systemd" {
        return None;
    }
    words.next().map(str::to_string)
}

/// Find a systemd tool and check it is at least `version`, with upstream's messages.
pub fn check_systemd_tool(name: &str, package: &str, version: &str, reason: &str) -> Result<PathBuf> {
    let Some(tool) = find_binary(name) else {
        return Err(die(
            format!("Could not find '{name}' which is required to {reason}."),
            format!("Install the '{package}' package"),
        ));
    };
    let v = systemd_tool_version(&tool)?;
    if mkosi_config::version::compare_versions(&v, version) == std::cmp::Ordering::Less {
        return Err(die(
            format!(
                "Found '{}' with version {v} but version {version} or newer is required to {reason}.",
                tool.display()
            ),
            format!("Use ToolsTree=yes to get a newer version of '{name}'."),
        ));
    }
    Ok(tool)
}

/// Credentials passed to the machine, as files in a temporary directory.
pub struct Credentials {
    pub dir: tempfile::TempDir,
}

impl Credentials {
    /// `(name, path)` of every credential, sorted by name.
    pub fn files(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path()).with_context(|| format!("reading {}", self.dir.path().display()))? {
            let e = e?;
            out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
        out.sort();
        Ok(out)
    }
}

/// The value of one `Credentials=` entry: its value, or the file's contents, or the
/// output of the file when it is executable.
pub fn resolve_credential(entry: &serde_json::Value) -> Result<(String, Vec<u8>)> {
    let name = entry.get("Name").and_then(serde_json::Value::as_str).context("credential without a name")?;
    if let Some(path) = entry.get("Path").and_then(serde_json::Value::as_str) {
        let path = Path::new(path);
        if is_executable(path) {
            let out = Command::new(path).output().with_context(|| format!("running {}", path.display()))?;
            if !out.status.success() {
                bail!("{} failed with {} while producing credential {name}", path.display(), out.status);
            }
            return Ok((name.to_string(), out.stdout));
        }
        let data = std::fs::read(path).with_context(|| format!("reading credential {name} from {}", path.display()))?;
        return Ok((name.to_string(), data));
    }
    let value = entry.get("Value").and_then(serde_json::Value::as_str).unwrap_or_default();
    Ok((name.to_string(), value.as_bytes().to_vec()))
}

/// Write the credentials of the machine (upstream's order, later entries win):
/// `firstboot.locale`, `Credentials=`, the host's time zone and the root SSH key
/// derived from `SshCertificate=`.
pub fn finalize_credentials(config: &Config) -> Result<Credentials> {
    let dir =
        tempfile::Builder::new().prefix("mkosi-credentials-").tempdir().context("creating a temporary directory")?;
    let d = dir.path();
    std::fs::write(d.join("firstboot.locale"), "C.UTF-8").context("writing firstboot.locale")?;
    for entry in config.list("Credentials") {
        let (name, data) = resolve_credential(entry)?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            bail!("'{name}' is not a valid credential name");
        }
        std::fs::write(d.join(&name), data).with_context(|| format!("writing credential {name}"))?;
    }
    if !d.join("firstboot.timezone").exists() {
        let tz = match find_binary("timedatectl") {
            Some(t) => Command::new(t)
                .args(["show", "-p", "Timezone", "--value"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default(),
            None => "UTC".to_string(),
        };
        std::fs::write(d.join("firstboot.timezone"), tz).context("writing firstboot.timezone")?;
    }
    if !d.join("ssh.authorized_keys.root").exists() {
        if let Some(cert) = config.path("SshCertificate") {
            let key = ssh_public_key(&cert)?;
            std::fs::write(d.join("ssh.authorized_keys.root"), key).context("writing ssh.authorized_keys.root")?;
        } else if matches!(config.str("Ssh"), Some("always") | Some("runtime")) {
            return Err(die(
                "Ssh= is enabled but no SSH certificate was found",
                "Run 'mkosi genkey' to automatically create one",
            ));
        }
    }
    Ok(Credentials { dir })
}

/// The OpenSSH public key of an X.509 certificate.
fn ssh_public_key(cert: &Path) -> Result<Vec<u8>> {
    let out = Command::new("openssl")
        .arg("x509")
        .arg("-in")
        .arg(cert)
        .args(["-pubkey", "-noout"])
        .env("OPENSSL_CONF", "/dev/null")
        .output()
        .context("running openssl (install the 'openssl' package)")?;
    if !out.status.success() {
        bail!("openssl x509 -pubkey failed on {}: {}", cert.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut child = Command::new("ssh-keygen")
        .args(["-f", "/dev/stdin", "-i", "-m", "PKCS8"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running ssh-keygen (install the 'openssh-client' package)")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(&out.stdout).context("writing to ssh-keygen")?;
    }
    let res = child.wait_with_output().context("waiting for ssh-keygen")?;
    if !res.status.success() {
        bail!("ssh-keygen could not convert the public key of {}", cert.display());
    }
    Ok(res.stdout)
}

/// The runtime kernel command line additions (upstream's
/// `finalize_kernel_command_line_extra`) for `boot`; `vm` adds console and network
/// arguments on top of these.
pub fn kernel_command_line_extra(config: &Config) -> Vec<String> {
    let extra = config.strings("KernelCommandLineExtra");
    let mut out = kernel_command_line_base(&extra);
    out.extend(quote_extras(&extra));
    out
}

/// What every runtime kernel command line starts with: networking, and sulogin even
/// with a locked root account (unless `extra` sets it).
pub fn kernel_command_line_base(extra: &[String]) -> Vec<String> {
    let mut out = vec!["systemd.wants=network.target".to_string()];
    if !extra.iter().any(|s| s.starts_with("SYSTEMD_SULOGIN_FORCE=")) {
        out.push("SYSTEMD_SULOGIN_FORCE=1".to_string());
    }
    out
}

/// `KernelCommandLineExtra=` entries as they go on the command line: values with
/// spaces in double quotes.
pub fn quote_extras(extra: &[String]) -> Vec<String> {
    extra
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if v.contains(' ') => format!("{k}=\"{v}\""),
            _ => s.clone(),
        })
        .collect()
}

/// The image a runtime verb works on: the output itself (locked exclusively), or an
/// ephemeral copy next to it that is removed again.
pub struct Target {
    pub path: PathBuf,
    _lock: Option<File>,
    copy: Option<PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(copy) = self.copy.take() {
            if let Err(e) = mkosi_build::tree::rmtree(std::slice::from_ref(&copy)) {
                eprintln!("‣ Could not remove {}: {e}", copy.display());
            }
        }
    }
}

pub(crate) fn flock(path: &Path, op: libc::c_int) -> std::io::Result<File> {
    let f = File::open(path)?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Lock `src` exclusively, failing if another process holds it.
pub fn flock_or_die(src: &Path) -> Result<File> {
    match flock(src, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Err(die(
            format!("Cannot lock {} as it is locked by another process", src.display()),
            "Maybe another mkosi process is still using it? Use Ephemeral=yes to enable booting multiple instances \
             of the same image",
        )),
        Err(e) => Err(e).with_context(|| format!("locking {}", src.display())),
    }
}

/// `2 * N` random hexadecimal digits.
pub fn random_hex<const N: usize>() -> Result<String> {
    let mut b = [0u8; N];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The image to run: with `Ephemeral=yes` a `cp --reflink=auto` copy
/// `<output>-<16 hex digits>` next to it (the output is locked shared while it is
/// copied), otherwise the output, locked exclusively while it runs. cpio and UKI
/// outputs are used as they are.
pub fn acquire_target(config: &Config, src: &Path) -> Result<Target> {
    if matches!(config.output_format(), OutputFormat::Cpio | OutputFormat::Uki) {
        return Ok(Target { path: src.to_path_buf(), _lock: None, copy: None });
    }
    if !config.bool("Ephemeral") {
        let lock = flock_or_die(src)?;
        return Ok(Target { path: src.to_path_buf(), _lock: Some(lock), copy: None });
    }
    let src = src.canonicalize().with_context(|| format!("resolving {}", src.display()))?;
    let name = src.file_name().unwrap_or(OsStr::new("image")).to_string_lossy().into_owned();
    let parent = src.parent().unwrap_or(Path::new("/"));
    let tmp = parent.join(format!("{name}-{}", random_hex::<8>()?));
    let lock = flock(&src, libc::LOCK_SH).with_context(|| format!("locking {}", src.display()))?;
    // From here on the copy is removed again whatever happens.
    let target = Target { path: tmp.clone(), _lock: None, copy: Some(tmp.clone()) };
    let status = Command::new("cp")
        .args(["--archive", "--reflink=auto", "--no-target-directory"])
        .arg(&src)
        .arg(&tmp)
        .status()
        .context("running cp")?;
    drop(lock);
    if !status.success() {
        bail!("Copying {} to {} failed with {status}", src.display(), tmp.display());
    }
    Ok(target)
}

/// Run `cmd` in the foreground: mkosi ignores SIGINT/SIGTERM meanwhile (the command
/// gets them) so it can clean up afterwards. A failing command becomes mkosi's exit
/// status.
pub fn run_foreground(cmd: &mut Command) -> Result<()> {
    run_foreground_with(cmd, |_| Ok(()))
}

/// [`run_foreground`], calling `started` with the pid of the command once it runs.
pub fn run_foreground_with(cmd: &mut Command, started: impl FnOnce(u32) -> Result<()>) -> Result<()> {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().with_context(|| format!("running {program}"))?;
    // SAFETY: replacing the signal dispositions of this process.
    let (old_int, old_term) =
        unsafe { (libc::signal(libc::SIGINT, libc::SIG_IGN), libc::signal(libc::SIGTERM, libc::SIG_IGN)) };
    if let Err(e) = started(child.id()) {
        let _ = child.kill();
        let _ = child.wait();
        // SAFETY: restoring the dispositions saved above.
        unsafe {
            libc::signal(libc::SIGINT, old_int);
            libc::signal(libc::SIGTERM, old_term);
        }
        return Err(e);
    }
    let status = child.wait();
    // SAFETY: restoring the dispositions saved above.
    unsafe {
        libc::signal(libc::SIGINT, old_int);
        libc::signal(libc::SIGTERM, old_term);
    }
    let status = status.with_context(|| format!("waiting for {program}"))?;
    if status.success() {
        return Ok(());
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Err(crate::Exit(code.clamp(1, 255) as u8).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn config(values: serde_json::Value) -> Config {
        let obj = values.as_object().cloned().unwrap_or_default();
        Config::from_values(obj)
    }

    #[test]
    fn systemd_versions() {
        assert_eq!(parse_systemd_version("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT"), Some("252".into()));
        assert_eq!(parse_systemd_version("systemd 257.7 (257.7-1)"), Some("257.7".into()));
        assert_eq!(parse_systemd_version("qemu 8"), None);
        assert_eq!(parse_systemd_version(""), None);
    }

    #[test]
    fn kernel_command_line_extras() {
        let c = config(serde_json::json!({}));
        assert_eq!(kernel_command_line_extra(&c), ["systemd.wants=network.target", "SYSTEMD_SULOGIN_FORCE=1"]);
        let c = config(serde_json::json!({
            "KernelCommandLineExtra": ["SYSTEMD_SULOGIN_FORCE=0", "a=b c", "quiet"]
        }));
        assert_eq!(
            kernel_command_line_extra(&c),
            ["systemd.wants=network.target", "SYSTEMD_SULOGIN_FORCE=0", "a=\"b c\"", "quiet"]
        );
    }

    #[test]
    fn credentials_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cred-file");
        std::fs::write(&file, "from a file").unwrap();
        let script = dir.path().join("cred-script");
        std::fs::write(&script, "#!/bin/sh\necho generated\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = config(serde_json::json!({
            "Credentials": [
                {"Name": "firstboot.locale", "Value": "de_DE.UTF-8", "Path": null},
                {"Name": "firstboot.timezone", "Value": "Europe/Berlin", "Path": null},
                {"Name": "file", "Value": null, "Path": file},
                {"Name": "script", "Value": null, "Path": script},
            ]
        }));
        let creds = finalize_credentials(&c).unwrap();
        let files = creds.files().unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["file", "firstboot.locale", "firstboot.timezone", "script"]);
        let read = |n: &str| std::fs::read_to_string(creds.dir.path().join(n)).unwrap();
        assert_eq!(read("firstboot.locale"), "de_DE.UTF-8");
        assert_eq!(read("firstboot.timezone"), "Europe/Berlin");
        assert_eq!(read("file"), "from a file");
        assert_eq!(read("script"), "generated\n");
    }

    #[test]
    fn default_credentials_and_ssh_requirement() {
        let creds = finalize_credentials(&config(serde_json::json!({}))).unwrap();
        let files = creds.files().unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["firstboot.locale", "firstboot.timezone"]);
        assert_eq!(std::fs::read_to_string(creds.dir.path().join("firstboot.locale")).unwrap(), "C.UTF-8");

        let err = finalize_credentials(&config(serde_json::json!({"Ssh": "always"}))).err().unwrap();
        assert_eq!(err.to_string(), "Ssh= is enabled but no SSH certificate was found");
        let err = finalize_credentials(&config(serde_json::json!({
            "Credentials": [{"Name": "../x", "Value": "1", "Path": null}]
        })))
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "'../x' is not a valid credential name");
    }

    #[test]
    fn directory_owner_rules() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("image");
        std::fs::create_dir(&img).unwrap();
        // A file output or a missing one is not checked.
        check_directory_owner(&dir.path().join("missing"), false).unwrap();
        let uid = std::fs::metadata(&img).unwrap().uid();
        let res = check_directory_owner(&img, uid == 0);
        if uid == 0 {
            res.unwrap();
            let err = check_directory_owner(&img, false).err().unwrap();
            assert_eq!(err.to_string(), "Must be root to operate on root owned directory images");
            std::os::unix::fs::chown(&img, Some(1000), None).unwrap();
            let err = check_directory_owner(&img, true).err().unwrap();
            assert_eq!(err.to_string(), "Can only operate on foreign UID range or root owned directory images");
            std::os::unix::fs::chown(&img, Some(FOREIGN_UID_MIN), None).unwrap();
            check_directory_owner(&img, false).unwrap();
        } else {
            let err = res.err().unwrap();
            assert_eq!(err.to_string(), "Can only operate on foreign UID range or root owned directory images");
        }
    }

    #[test]
    fn ephemeral_copies_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("image.raw");
        std::fs::write(&img, b"disk").unwrap();
        std::os::unix::fs::symlink("image.raw", dir.path().join("image")).unwrap();

        // Not ephemeral: the output itself, locked exclusively.
        let c = config(serde_json::json!({"Format": "disk"}));
        let t = acquire_target(&c, &dir.path().join("image")).unwrap();
        assert_eq!(t.path, dir.path().join("image"));
        let err = flock_or_die(&img).err().unwrap();
        assert!(err.to_string().starts_with("Cannot lock"), "{err}");
        drop(t);
        drop(flock_or_die(&img).unwrap());

        // Ephemeral: a copy next to the resolved output, removed again.
        let c = config(serde_json::json!({"Format": "disk", "Ephemeral": true}));
        let t = acquire_target(&c, &dir.path().join("image")).unwrap();
        let name = t.path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("image.raw-") && name.len() == "image.raw-".len() + 16, "{name}");
        assert_eq!(t.path.parent(), Some(dir.path().canonicalize().unwrap().as_path()));
        assert_eq!(std::fs::read(&t.path).unwrap(), b"disk");
        // The source is not locked while the copy runs.
        drop(flock_or_die(&img).unwrap());
        let copy = t.path.clone();
        drop(t);
        assert!(!copy.exists());
    }
}
