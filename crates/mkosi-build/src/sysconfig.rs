//! System configuration of the image: os-release, users, tmpfiles,
//! presets, first-boot settings, locale, autologin, ssh, hwdb and depmod.
//!
//! The steps follow upstream's `build_image()`:
//!
//! - before the cache is saved: [`fixup_vmlinuz_location`], [`run_depmod`]
//!   (`cache = true`) and [`run_hwdb`];
//! - after the extra trees and postinst scripts (files written by mkosi
//!   itself, see [`files`]): [`configure_autologin`], [`configure_os_release`],
//!   [`configure_extension_release`], [`configure_initrd`], [`configure_ssh`],
//!   [`configure_clock`], [`configure_verity_certificate`],
//!   [`configure_mountpoints`];
//! - after the boot loaders (tools run on the image, see [`tools`]):
//!   [`run_locale_gen`], [`run_sysusers`], [`run_tmpfiles`], [`run_preset`],
//!   [`run_depmod`], [`run_firstboot`];
//! - after the packages are removed: [`run_selinux_relabel`].
//!
//! Tools that edit the image from the outside (systemd-sysusers,
//! systemd-tmpfiles, systemctl, systemd-firstboot, systemd-hwdb, setfiles)
//! run from the tools tree (the host) with the image at `/buildroot`; tools
//! that must run inside the image (depmod, locale-gen) run in a chroot-like
//! sandbox. A missing host tool is a warning, like upstream.

pub mod files;
pub mod tools;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mkosi_config::enums::OutputFormat;
use mkosi_config::Config;
use mkosi_sandbox::{FsOp, Options};

use crate::context::Context;
use crate::error::{io, Result};

pub use files::{
    configure_autologin, configure_clock, configure_extension_release, configure_initrd, configure_mountpoints,
    configure_os_release, configure_ssh, configure_verity_certificate, fixup_vmlinuz_location,
};
pub use tools::{
    run_depmod, run_firstboot, run_hwdb, run_locale_gen, run_preset, run_selinux_relabel, run_sysusers, run_tmpfiles,
    want_selinux_relabel, SelinuxRelabel,
};

/// System configuration settings not implemented yet (see `pipeline::unsupported_settings`).
///
/// Everything this module is responsible for is implemented. `Credentials=`
/// only matters when the image is booted (`shell`, `boot`, `vm`), so it never
/// blocks a build. Kernel module and firmware filtering (`KernelModules=`,
/// `FirmwareFiles=`, …) belongs to the kernel module code that
/// [`run_depmod`] calls once it exists.
pub fn unsupported(_c: &Config) -> Vec<String> {
    Vec::new()
}

/// Which groups of steps apply to an image, like the early returns of
/// upstream's functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applies {
    /// `/init` and first boot settings (not for overlays, extensions or
    /// portable services).
    pub base_tree: bool,
    /// sysusers, tmpfiles, presets, hwdb (not for overlays, extensions or the tools tree).
    pub system_tools: bool,
    /// os-release edits, locale-gen and the clock epoch (not for overlays or extensions).
    pub root_files: bool,
    /// depmod (not for overlays or the tools tree; not for extensions or
    /// portable services either, checked separately).
    pub depmod: bool,
}

impl Applies {
    pub fn of(c: &Config) -> Applies {
        let overlay = c.bool("Overlay");
        let format = c.output_format();
        let tools = c.image() == "tools";
        Applies {
            base_tree: !overlay && !format.is_extension_or_portable_image(),
            system_tools: !overlay && !format.is_extension_image() && !tools,
            root_files: !overlay && !format.is_extension_image(),
            depmod: !overlay && !tools,
        }
    }
}

/// Where tools run from (upstream's tools tree; this version uses the host).
pub(crate) fn tools_root() -> &'static Path {
    Path::new("/")
}

/// A tool in the tools tree.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    mkosi_sandbox::run::find_binary(name, tools_root())
}

/// The environment of tool runs: what upstream's `run()` always sets plus `extra`.
pub(crate) fn tool_env(ctx: &Context, extra: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        vec![("TERM".into(), crate::scripts::finalize_term(ctx.host)), ("LANG".into(), "C.UTF-8".into())];
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for (k, v) in extra {
        if k != "LANG" && !k.starts_with("LC_") {
            set(&mut env, k, v);
        }
    }
    for k in ["SYSTEMD_LOG_LEVEL", "SYSTEMD_LOG_LOCATION", "LD_LIBRARY_PATH"] {
        if let Some(v) = ctx.host.env(k) {
            set(&mut env, k.to_string(), v.to_string());
        }
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), "/".into()));
    }
    env
}

fn bind(src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> FsOp {
    FsOp::Bind { src: src.into(), dst: dst.into(), readonly: false, required: true, relative: false, nofollow: false }
}

/// The base sandbox with the image at `/buildroot` (upstream's
/// `context.sandbox(options=context.rootoptions())`).
pub(crate) fn buildroot_sandbox(ctx: &Context) -> Result<Options> {
    let mut o = ctx.sandbox(false, false)?;
    o.ops.push(bind(ctx.root(), "/buildroot"));
    Ok(o)
}

/// A sandbox whose root is the image (upstream's `chroot_cmd()`): API file
/// systems, fake root, no network, a private `/var/tmp`.
pub(crate) fn chroot_sandbox(ctx: &Context) -> Result<Options> {
    let mut o = Options::default();
    o.ops.push(bind(ctx.root(), "/"));
    o.unsetenv.push("TMPDIR".into());
    o.setenv.push(("SYSTEMD_OFFLINE".into(), "1".into()));
    o.unshare_net = true;
    o.ops.extend(mkosi_distro::apt::apivfs_ops(Path::new("/")));
    o.become_root = true;
    o.unshare_ipc = true;
    for (k, v) in [("container", "mkosi"), ("HOME", "/"), ("PATH", "/usr/bin:/usr/sbin"), ("BUILDROOT", "/")] {
        o.setenv.push((k.into(), v.into()));
    }
    o.ops.push(bind(ctx.scratch("var-tmp")?, "/var/tmp"));
    Ok(o)
}

/// The entries of `dir`, sorted (none when it cannot be read).
pub(crate) fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Whether `p` is a regular file that is not a symlink.
pub(crate) fn is_regular_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).map(|m| m.file_type().is_file()).unwrap_or(false)
}

/// Whether anything (even a dangling symlink) exists at `p`.
pub(crate) fn lexists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Create `dir` and its missing parents with `mode` (like upstream's
/// `mkdir(parents=True)` under a umask).
pub(crate) fn mkdir_p(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        mkdir_p(parent, mode)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", dir)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io("creating", dir)(e)),
    }
}

/// Write `data` to `path` and give it `mode`.
pub(crate) fn write_file(path: &Path, data: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io("creating", path))?;
    f.write_all(data.as_ref()).map_err(io("writing", path))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// Whether output format `f` keeps first boot credentials in `/usr/lib/credstore`.
pub(crate) fn wants_credstore(format: OutputFormat, make_initrd: bool) -> bool {
    format != OutputFormat::Cpio || !make_initrd
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn config(values: serde_json::Value) -> Config {
        let mut c = Config::from_values([("Format".to_string(), json!("directory"))]);
        if let Some(m) = values.as_object() {
            for (k, v) in m {
                c.set(k, v.clone());
            }
        }
        c
    }

    #[test]
    fn nothing_unsupported_any_more() {
        let c = config(json!({
            "Hostname": "h", "Locale": "C.UTF-8", "LocaleMessages": "C", "Keymap": "us", "Timezone": "UTC",
            "RootPassword": ["x", false], "RootShell": "/bin/sh", "Autologin": true, "MakeInitrd": true,
            "Credentials": [{"a": "b"}],
        }));
        assert!(unsupported(&c).is_empty());
    }

    #[test]
    fn which_steps_apply() {
        let all = Applies { base_tree: true, system_tools: true, root_files: true, depmod: true };
        assert_eq!(Applies::of(&config(json!({}))), all);
        assert_eq!(
            Applies::of(&config(json!({"Format": "sysext"}))),
            Applies { base_tree: false, system_tools: false, root_files: false, depmod: true }
        );
        assert_eq!(
            Applies::of(&config(json!({"Format": "portable"}))),
            Applies { base_tree: false, system_tools: true, root_files: true, depmod: true }
        );
        assert_eq!(
            Applies::of(&config(json!({"Overlay": true}))),
            Applies { base_tree: false, system_tools: false, root_files: false, depmod: false }
        );
        assert_eq!(
            Applies::of(&config(json!({"Image": "tools"}))),
            Applies { base_tree: true, system_tools: false, root_files: true, depmod: false }
        );
    }

    #[test]
    fn credstore_except_for_initrd_cpio() {
        assert!(wants_credstore(OutputFormat::Directory, true));
        assert!(wants_credstore(OutputFormat::Cpio, false));
        assert!(!wants_credstore(OutputFormat::Cpio, true));
    }

    #[test]
    fn file_helpers() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("a/b/c");
        mkdir_p(&sub, 0o750).unwrap();
        for p in [d.path().join("a"), d.path().join("a/b"), sub.clone()] {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o750);
        }
        let f = sub.join("f");
        write_file(&f, "x", 0o600).unwrap();
        write_file(&f, "yy", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "yy");
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777, 0o644);
        assert!(is_regular_file(&f) && lexists(&f));
        std::os::unix::fs::symlink("f", sub.join("l")).unwrap();
        assert!(!is_regular_file(&sub.join("l")));
        std::os::unix::fs::symlink("nowhere", sub.join("dangling")).unwrap();
        assert!(lexists(&sub.join("dangling")));
    }
}
