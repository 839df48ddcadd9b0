//! The sandboxes scripts run in: the image root (plain or with the build
//! overlays), the build sources, certificates, package manager state, and
//! the two flavours of script sandbox — on the tools side with the image at
//! `/buildroot`, or `.chroot` scripts with the image as `/`.

use std::path::{Path, PathBuf};

use mkosi_config::enums::BuildSourcesEphemeral;
use mkosi_config::Config;
use mkosi_distro::apt::Apt;
use mkosi_sandbox::{FsOp, Options};

use super::env::SRCDIR;
use crate::context::Context;
use crate::error::{io, BuildError, Result};

pub fn bind(src: impl Into<PathBuf>, dst: impl Into<PathBuf>, readonly: bool) -> FsOp {
    FsOp::Bind { src: src.into(), dst: dst.into(), readonly, required: true, relative: false, nofollow: false }
}

pub fn bind_try(src: impl Into<PathBuf>, dst: impl Into<PathBuf>, readonly: bool) -> FsOp {
    FsOp::Bind { src: src.into(), dst: dst.into(), readonly, required: false, relative: false, nofollow: false }
}

pub(crate) fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", p))
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o755)
}

/// How the image root appears to a command: the root directory itself, or
/// an overlay with extra layers and a writable upper directory on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootView {
    pub root: PathBuf,
    /// Read-only layers above the root, bottom first.
    pub layers: Vec<PathBuf>,
    /// The writable upper directory and its overlayfs work directory.
    pub upper: Option<(PathBuf, PathBuf)>,
}

impl RootView {
    pub fn plain(root: PathBuf) -> RootView {
        RootView { root, layers: Vec::new(), upper: None }
    }

    /// The mount that puts this view at `dst`.
    pub fn op(&self, dst: &Path) -> FsOp {
        if self.layers.is_empty() && self.upper.is_none() {
            return bind(&self.root, dst, false);
        }
        // Overlay lower directories are listed top first.
        let mut lowers: Vec<PathBuf> = self.layers.iter().rev().cloned().collect();
        lowers.push(self.root.clone());
        FsOp::Overlay {
            lowers,
            upper: self.upper.as_ref().map(|(u, _)| u.clone()),
            work: self.upper.as_ref().map(|(_, w)| w.clone()),
            dst: dst.to_path_buf(),
        }
    }
}

/// The persistent build overlay of an image (prepare scripts with `build`,
/// `BuildPackages=`, seen by build scripts only).
pub fn build_overlay_dir(ctx: &Context) -> Result<PathBuf> {
    let d = ctx.workspace.join("build-overlay");
    if !d.exists() {
        std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
        set_mode(&d, 0o755)?;
    }
    Ok(d)
}

/// The root with the build overlay as its writable upper layer.
pub fn build_overlay_view(ctx: &Context) -> Result<RootView> {
    let upper = build_overlay_dir(ctx)?;
    let work = ctx.scratch("build-overlay-work")?;
    Ok(RootView { root: ctx.root(), layers: Vec::new(), upper: Some((upper, work)) })
}

/// The root with the build overlay below a throwaway upper layer (build scripts).
pub fn volatile_build_view(ctx: &Context) -> Result<RootView> {
    let overlay = build_overlay_dir(ctx)?;
    let upper = ctx.scratch("volatile-overlay")?;
    set_mode(&upper, mode_of(&overlay))?;
    let work = ctx.scratch("volatile-overlay-work")?;
    Ok(RootView { root: ctx.root(), layers: vec![overlay], upper: Some((upper, work)) })
}

/// Directories removed when dropped (overlay work directories outside the workspace).
#[derive(Debug, Default)]
pub struct Cleanup(pub Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = crate::tree::rmtree(&self.0);
    }
}

/// How build sources are mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    /// Bound read-write.
    Bind,
    /// Overlays whose changes are thrown away.
    Ephemeral,
    /// Overlays whose changes are kept in the build directory (build scripts
    /// with `BuildSourcesEphemeral=buildcache`).
    BuildCache,
}

impl Sources {
    /// The mode `BuildSourcesEphemeral=` asks for; only build scripts keep a cache.
    pub fn for_config(config: &Config, build_script: bool) -> Sources {
        let setting: BuildSourcesEphemeral =
            config.str("BuildSourcesEphemeral").and_then(|s| s.parse().ok()).unwrap_or(BuildSourcesEphemeral::No);
        match setting {
            BuildSourcesEphemeral::No => Sources::Bind,
            BuildSourcesEphemeral::Yes => Sources::Ephemeral,
            BuildSourcesEphemeral::Buildcache if build_script => Sources::BuildCache,
            BuildSourcesEphemeral::Buildcache => Sources::Ephemeral,
        }
    }
}

/// `BuildSources=` as (source, mount point below `/work/src`), in mount order.
pub fn source_mounts(config: &Config) -> Vec<(PathBuf, PathBuf)> {
    let mut out: Vec<(PathBuf, PathBuf)> = config
        .trees("BuildSources")
        .into_iter()
        .map(|(src, target)| {
            let dst = match target {
                Some(t) => Path::new(SRCDIR).join(t.strip_prefix("/").unwrap_or(&t)),
                None => PathBuf::from(SRCDIR),
            };
            (src, dst)
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The mounts of the build sources. `scratch` makes fresh directories on the
/// workspace's file system; build cache work directories are registered in
/// `cleanup`.
pub fn source_ops(
    config: &Config,
    mode: Sources,
    mut scratch: impl FnMut(&str) -> Result<PathBuf>,
    cleanup: &mut Cleanup,
) -> Result<Vec<FsOp>> {
    let mut ops = Vec::new();
    for (src, dst) in source_mounts(config) {
        match mode {
            Sources::Bind => ops.push(bind(&src, &dst, false)),
            Sources::Ephemeral => {
                let upper = scratch("volatile-source")?;
                set_mode(&upper, mode_of(&src))?;
                let work = scratch("volatile-source-work")?;
                ops.push(FsOp::Overlay { lowers: vec![src], upper: Some(upper), work: Some(work), dst });
            }
            Sources::BuildCache => {
                let Some(subdir) = config.build_subdir() else {
                    return Err(BuildError::hint(
                        "BuildSourcesEphemeral=buildcache was configured, but no build directory exists.",
                        "Configure BuildDirectory= or create mkosi.builddir.",
                    ));
                };
                let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let upper = subdir.join(format!("mkosi.buildovl.{name}"));
                if !upper.exists() {
                    std::fs::create_dir_all(&upper).map_err(io("creating", &upper))?;
                    set_mode(&upper, mode_of(&src))?;
                }
                let work = subdir.join(format!("mkosi.buildovl.{name}-workdir.{}", std::process::id()));
                std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
                cleanup.0.push(work.clone());
                ops.push(FsOp::Overlay { lowers: vec![src], upper: Some(upper), work: Some(work), dst });
            }
        }
    }
    Ok(ops)
}

/// The host's CA certificates, for scripts that download things.
pub fn certificate_ops() -> Vec<FsOp> {
    let mut ops = Vec::new();
    for sub in ["etc/ca-certificates", "etc/pki/ca-trust", "etc/pki/tls", "etc/ssl", "var/lib/ca-certificates"] {
        let p = Path::new("/").join(sub);
        if p.is_dir() && has_files(&p) {
            ops.push(bind(&p, &p, true));
        }
    }
    ops
}

fn has_files(dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else { return false };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() && !e.file_type().map(|t| t.is_symlink()).unwrap_or(false) {
            has_files(&p)
        } else {
            true
        }
    })
}

/// What scripts on the tools side need of the package manager: its caches,
/// repository metadata and the local repository, mounted where the
/// package manager wrappers on `$PATH` expect them.
pub fn package_manager_ops(ctx: &Context) -> Result<Vec<FsOp>> {
    let mut ops = certificate_ops();
    ops.push(bind(ctx.repository(), "/repository", false));
    if mkosi_distro::package_manager(ctx.config)? == "apt" {
        let env = crate::pipeline::pm_env(ctx)?;
        let apt = Apt::new(ctx.config, &env);
        // The package manager's own sandbox minus the base sandbox, the
        // image and what only matters while it installs packages.
        let full = apt.sandbox(false, Vec::new());
        for op in full.ops {
            if env.base.ops.contains(&op) {
                continue;
            }
            let dst = op.dst();
            if dst.starts_with("/buildroot") || dst == Path::new("/run/user/0") {
                continue;
            }
            ops.push(op);
        }
    }
    Ok(ops)
}

/// The sandbox of a script on the tools side: the base sandbox with the
/// helpers at `/scripts` (first in `$PATH`), the image at `/buildroot`
/// and the package manager's state.
pub fn tools_sandbox(ctx: &Context, network: bool, helpers: &Path, root: &RootView, ops: Vec<FsOp>) -> Result<Options> {
    let mut o = ctx.sandbox(network, false)?;
    o.ops.push(bind(helpers, "/scripts", true));
    o.ops.push(bind(mkosi_sandbox::run::sandbox_executable(), "/scripts/mkosi-sandbox", true));
    o.setenv.push(("PATH".into(), format!("/scripts:{}", super::finalize_path(ctx.host))));
    o.ops.push(FsOp::Dir { dst: SRCDIR.into() });
    o.chdir = Some(SRCDIR.into());
    o.ops.extend(ops);
    o.ops.push(root.op(Path::new("/buildroot")));
    o.ops.extend(package_manager_ops(ctx)?);
    Ok(o)
}

/// The sandbox of a `.chroot` script: the image is `/`, with API file
/// systems, a private `/var/tmp`, and `/work` as for other scripts.
pub fn chroot_sandbox(
    ctx: &Context,
    network: bool,
    suppress_chown: bool,
    root: &RootView,
    ops: Vec<FsOp>,
) -> Result<Options> {
    let mut o = Options::default();
    o.ops.push(root.op(Path::new("/")));
    o.unsetenv.push("TMPDIR".into());
    o.setenv.push(("SYSTEMD_OFFLINE".into(), if network { "0" } else { "1" }.into()));
    o.unshare_net = !network;
    o.ops.extend(mkosi_distro::apt::apivfs_ops(Path::new("/")));
    apply_chroot_options(&mut o);
    if network {
        for p in ["/etc/resolv.conf", "/run/systemd/resolve"] {
            if Path::new(p).exists() {
                o.ops.push(bind(p, p, true));
            }
        }
    }
    o.ops.push(bind(ctx.scratch("var-tmp")?, "/var/tmp", false));
    o.ops.push(FsOp::Dir { dst: SRCDIR.into() });
    o.chdir = Some(SRCDIR.into());
    o.ops.extend(ops);
    o.suppress_chown = suppress_chown;
    Ok(o)
}

/// Run as root inside the image, like in a container.
pub fn apply_chroot_options(o: &mut Options) {
    o.become_root = true;
    o.unshare_ipc = true;
    for (k, v) in [("container", "mkosi"), ("HOME", "/"), ("PATH", "/usr/bin:/usr/sbin"), ("BUILDROOT", "/")] {
        o.setenv.push((k.into(), v.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn root_views() {
        let plain = RootView::plain("/ws/root".into());
        assert_eq!(plain.op(Path::new("/buildroot")), bind("/ws/root", "/buildroot", false));
        let build = RootView {
            root: "/ws/root".into(),
            layers: vec!["/ws/build-overlay".into()],
            upper: Some(("/ws/up".into(), "/ws/work".into())),
        };
        assert_eq!(
            build.op(Path::new("/")),
            FsOp::Overlay {
                lowers: vec!["/ws/build-overlay".into(), "/ws/root".into()],
                upper: Some("/ws/up".into()),
                work: Some("/ws/work".into()),
                dst: "/".into(),
            }
        );
        // Through the command line, the root is the first (bottom) lower directory.
        let args = Options { ops: vec![build.op(Path::new("/buildroot"))], ..Options::default() }.to_args();
        assert_eq!(
            args[..4],
            ["--overlay-lowerdir", "/ws/root", "--overlay-lowerdir", "/ws/build-overlay"].map(String::from)
        );
    }

    #[test]
    fn sources() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let c = Config::from_values(vec![(
            "BuildSources".to_string(),
            json!([{"Source": b, "Target": "/sub"}, {"Source": a, "Target": null}]),
        )]);
        assert_eq!(source_mounts(&c), vec![(a.clone(), "/work/src".into()), (b.clone(), "/work/src/sub".into())]);

        let mut cleanup = Cleanup::default();
        let ops = source_ops(&c, Sources::Bind, |_| unreachable!(), &mut cleanup).unwrap();
        assert_eq!(ops, vec![bind(&a, "/work/src", false), bind(&b, "/work/src/sub", false)]);

        let mut n = 0;
        let scratch = d.path().join("scratch");
        let ops = source_ops(
            &c,
            Sources::Ephemeral,
            |p| {
                n += 1;
                let s = scratch.join(format!("{p}-{n}"));
                std::fs::create_dir_all(&s).unwrap();
                Ok(s)
            },
            &mut cleanup,
        )
        .unwrap();
        assert!(matches!(&ops[0], FsOp::Overlay { lowers, upper: Some(_), work: Some(_), dst }
            if lowers == &vec![a.clone()] && dst == Path::new("/work/src")));

        let e = source_ops(&c, Sources::BuildCache, |_| unreachable!(), &mut cleanup).unwrap_err();
        assert!(e.to_string().contains("no build directory"), "{e}");

        let c = Config::from_values(vec![
            ("BuildSources".to_string(), json!([{"Source": a, "Target": null}])),
            ("BuildDirectory".to_string(), json!(d.path().join("build"))),
            ("BuildKey".to_string(), json!("-")),
        ]);
        let ops = source_ops(&c, Sources::BuildCache, |_| unreachable!(), &mut cleanup).unwrap();
        let FsOp::Overlay { upper: Some(upper), work: Some(work), .. } = &ops[0] else { panic!("{ops:?}") };
        assert_eq!(upper, &d.path().join("build/mkosi.buildovl.a"));
        assert!(upper.is_dir() && work.is_dir());
        drop(cleanup);
        assert!(!work.exists());
        assert!(upper.exists());
    }

    #[test]
    fn ephemeral_modes() {
        let c = |v: &str| Config::from_values(vec![("BuildSourcesEphemeral".to_string(), json!(v))]);
        assert_eq!(Sources::for_config(&c("no"), true), Sources::Bind);
        assert_eq!(Sources::for_config(&c("yes"), false), Sources::Ephemeral);
        assert_eq!(Sources::for_config(&c("buildcache"), true), Sources::BuildCache);
        assert_eq!(Sources::for_config(&c("buildcache"), false), Sources::Ephemeral);
    }
}
