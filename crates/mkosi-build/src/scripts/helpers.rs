//! The helper commands scripts on the tools side find first in `$PATH`
//! (`/scripts`): `mkosi-chroot`, the package manager wrappers that operate on
//! `/buildroot` with mkosi's configuration, `mkosi-install` and friends, and
//! `useradd`/`groupadd` with `--root`.
//!
//! Helpers that need a different sandbox re-enter one from inside the
//! script's sandbox through the mkosi binary, bound at
//! `/scripts/mkosi-sandbox`.

use std::path::{Path, PathBuf};

use mkosi_distro::apt::Apt;
use mkosi_sandbox::run::shell_quote;
use mkosi_sandbox::{FsOp, Options};

use super::sandbox::{apply_chroot_options, bind, bind_try, set_mode};
use crate::context::Context;
use crate::error::{io, Result};

/// Where the helpers are mounted in script sandboxes.
pub const HELPER_DIR: &str = "/scripts";
/// The sandbox entry point inside script sandboxes.
pub const SANDBOX: &str = "/scripts/mkosi-sandbox";

/// `mkosi-sandbox OPTIONS… --` for a command line.
fn sandbox_prefix(options: &Options, same_dir: bool) -> Vec<String> {
    let mut args = options.to_args();
    // to_args() ends with "--"; the working directory option goes before it.
    let separator = args.pop();
    if same_dir {
        args.push("--same-dir".into());
    }
    args.extend(separator);
    let mut cmd = vec![SANDBOX.to_string()];
    cmd.extend(args);
    cmd
}

/// `mkosi-chroot`: run a command with the image (`/buildroot`) as `/`.
pub fn chroot_helper(network: bool, suppress_chown: bool) -> Vec<String> {
    let mut o = Options::default();
    o.ops.push(bind("/buildroot", "/", false));
    o.ops.push(bind("/var/tmp", "/var/tmp", false));
    o.ops.extend(mkosi_distro::apt::apivfs_ops(Path::new("/")));
    apply_chroot_options(&mut o);
    o.ops.push(bind("/work", "/work", false));
    o.chdir = Some("/work/src".into());
    if network {
        o.ops.push(bind_try("/etc/resolv.conf", "/etc/resolv.conf", true));
    }
    o.suppress_chown = suppress_chown;
    sandbox_prefix(&o, false)
}

/// The sandbox package manager wrappers re-enter: everything the script
/// sees, plus API file systems in the image and root privileges, like
/// mkosi's own package manager runs.
fn package_manager_prefix() -> Vec<String> {
    let mut o = Options::default();
    o.ops.push(bind("/", "/", false));
    o.ops.push(bind("/var/tmp", "/buildroot/var/tmp", false));
    o.ops.extend(mkosi_distro::apt::apivfs_ops(Path::new("/buildroot")));
    o.become_root = true;
    o.suppress_chown = true;
    o.suppress_sync = true;
    o.ops.push(bind_try("/buildroot/etc/machine-id", "/buildroot/etc/machine-id", true));
    o.ops.push(FsOp::Dir { dst: "/run/user/0".into() });
    for f in ["passwd", "group", "shadow", "gshadow"] {
        o.ops.push(FsOp::Symlink { target: Path::new("/buildroot/etc").join(f), dst: Path::new("/etc").join(f) });
    }
    o.ops.push(FsOp::Dir { dst: "/var/lib/apt/lists/partial".into() });
    sandbox_prefix(&o, true)
}

/// The apt and dpkg wrappers and `mkosi-install` & co. for apt.
pub fn apt_helpers(apt: &Apt) -> Result<Vec<(String, Vec<String>)>> {
    let prefix = package_manager_prefix();
    let mut env_cmd = vec!["env".to_string()];
    env_cmd.extend(apt.environment().into_iter().map(|(k, v)| format!("{k}={v}")));
    let mut out = Vec::new();
    for command in [
        "apt",
        "apt-cache",
        "apt-cdrom",
        "apt-config",
        "apt-extracttemplates",
        "apt-get",
        "apt-key",
        "apt-mark",
        "apt-sortpkgs",
    ] {
        let mut cmd = prefix.clone();
        cmd.extend(env_cmd.iter().cloned());
        cmd.extend(apt.cmd(command)?);
        out.push((command.to_string(), cmd));
    }
    for command in ["dpkg", "dpkg-query"] {
        let mut cmd = prefix.clone();
        cmd.extend([
            command.to_string(),
            "--admindir=/buildroot/var/lib/dpkg".to_string(),
            "--root=/buildroot".to_string(),
        ]);
        out.push((command.to_string(), cmd));
    }
    for (name, cmd) in [
        ("mkosi-install", &["apt-get", "install"][..]),
        ("mkosi-upgrade", &["apt-get", "upgrade"]),
        ("mkosi-remove", &["apt-get", "purge"]),
        ("mkosi-reinstall", &["apt-get", "install", "--reinstall"]),
    ] {
        out.push((name.to_string(), cmd.iter().map(|s| s.to_string()).collect()));
    }
    Ok(out)
}

/// Every helper for a script of this context.
pub fn helper_commands(ctx: &Context, network: bool, suppress_chown: bool) -> Result<Vec<(String, Vec<String>)>> {
    let mut helpers: Vec<(String, Vec<String>)> = Vec::new();
    for tool in ["useradd", "groupadd"] {
        if mkosi_sandbox::run::find_binary(tool, Path::new("/")).is_some() {
            helpers.push((tool.to_string(), vec![tool.to_string(), "--root".to_string(), "/buildroot".to_string()]));
        }
    }
    if let Some(ukify) = mkosi_sandbox::run::find_binary("ukify", Path::new("/")) {
        helpers.push(("ukify".to_string(), vec!["python3".to_string(), ukify.to_string_lossy().into_owned()]));
    }
    helpers.push(("mkosi-chroot".to_string(), chroot_helper(network, suppress_chown)));
    if mkosi_distro::package_manager(ctx.config)? == "apt" {
        let env = crate::pipeline::pm_env(ctx)?;
        helpers.extend(apt_helpers(&Apt::new(ctx.config, &env))?);
    }
    Ok(helpers)
}

/// A helper as a shell script. A helper that runs a command of its own name
/// takes `/scripts` out of `$PATH` first so it does not find itself again.
pub fn render(name: &str, cmd: &[String]) -> String {
    let mut text = String::from("#!/bin/sh\n");
    if cmd.iter().any(|a| a == name && !a.contains('/')) {
        text.push_str(&format!(
            "path=\nIFS=:\nfor d in $PATH; do\n    [ \"$d\" = {HELPER_DIR} ] || path=\"${{path:+$path:}}$d\"\ndone\nunset IFS\n\
             PATH=\"$path\"\nexport PATH\n"
        ));
    }
    let words: Vec<String> = cmd.iter().map(|a| shell_quote(a)).collect();
    text.push_str(&format!("exec {} \"$@\"\n", words.join(" ")));
    text
}

/// Write the helpers into a fresh directory (mounted at `/scripts`), with
/// an empty `mkosi-sandbox` the mkosi binary gets bound onto.
pub fn write_helpers(ctx: &Context, network: bool, suppress_chown: bool) -> Result<PathBuf> {
    let dir = ctx.scratch("scripts")?;
    for (name, cmd) in helper_commands(ctx, network, suppress_chown)? {
        let p = dir.join(&name);
        std::fs::write(&p, render(&name, &cmd)).map_err(io("writing", &p))?;
        set_mode(&p, 0o755)?;
        let epoch = std::fs::FileTimes::new().set_accessed(std::time::UNIX_EPOCH).set_modified(std::time::UNIX_EPOCH);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_times(epoch))
            .map_err(io("setting the times of", &p))?;
    }
    let entry = dir.join("mkosi-sandbox");
    std::fs::write(&entry, b"").map_err(io("creating", &entry))?;
    set_mode(&entry, 0o755)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering() {
        let cmd: Vec<String> = ["apt-get", "install"].map(String::from).to_vec();
        assert_eq!(render("mkosi-install", &cmd), "#!/bin/sh\nexec apt-get install \"$@\"\n");
        let cmd: Vec<String> = ["useradd", "--root", "/buildroot"].map(String::from).to_vec();
        let text = render("useradd", &cmd);
        assert!(text.contains("[ \"$d\" = /scripts ]"), "{text}");
        assert!(text.ends_with("exec useradd --root /buildroot \"$@\"\n"), "{text}");
        let cmd: Vec<String> = ["/scripts/mkosi-sandbox", "env", "A=b c"].map(String::from).to_vec();
        assert!(render("env2", &cmd).ends_with("exec /scripts/mkosi-sandbox env 'A=b c' \"$@\"\n"));
    }

    #[test]
    fn path_filter_runs() {
        let cmd: Vec<String> = ["sh", "-c", "echo $PATH"].map(String::from).to_vec();
        let text = render("sh", &cmd);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&text)
            .env("PATH", "/scripts:/usr/bin:/bin")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/usr/bin:/bin\n");
    }

    #[test]
    fn chroot_helper_arguments() {
        let cmd = chroot_helper(true, false);
        assert_eq!(cmd[0], SANDBOX);
        let (o, rest) = Options::parse(&cmd[1..]).unwrap();
        assert!(rest.is_empty());
        assert!(o.become_root && o.unshare_ipc && !o.suppress_chown);
        assert_eq!(o.chdir.as_deref(), Some(Path::new("/work/src")));
        assert!(o.ops.contains(&bind("/buildroot", "/", false)));
        assert!(o.ops.contains(&bind("/work", "/work", false)));
        assert!(o.ops.contains(&bind_try("/etc/resolv.conf", "/etc/resolv.conf", true)));
        assert!(o.ops.contains(&FsOp::Write { data: b"mkosi".to_vec(), dst: "/run/host/container-manager".into() }));
        for kv in [("container", "mkosi"), ("HOME", "/"), ("PATH", "/usr/bin:/usr/sbin"), ("BUILDROOT", "/")] {
            assert!(o.setenv.contains(&(kv.0.to_string(), kv.1.to_string())), "{kv:?}");
        }
        let (o, _) = Options::parse(&chroot_helper(false, true)[1..]).unwrap();
        assert!(o.suppress_chown);
        assert!(!o.ops.iter().any(|op| op.dst() == Path::new("/etc/resolv.conf")));
    }

    #[test]
    fn package_manager_sandbox_arguments() {
        let cmd = package_manager_prefix();
        assert_eq!(cmd[0], SANDBOX);
        assert_eq!(cmd.last().map(String::as_str), Some("--"));
        assert!(cmd.contains(&"--same-dir".to_string()));
        let (o, rest) = Options::parse(&cmd[1..]).unwrap();
        assert!(rest.is_empty());
        assert!(o.become_root && o.suppress_chown && o.suppress_sync);
        assert!(o.ops.contains(&bind("/", "/", false)));
        assert!(o.ops.contains(&FsOp::Tmpfs { dst: "/buildroot/run".into() }));
        assert!(o.ops.contains(&FsOp::Symlink { target: "/buildroot/etc/passwd".into(), dst: "/etc/passwd".into() }));
    }
}
