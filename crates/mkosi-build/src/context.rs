//! The state of one image build: configuration, workspace layout, caches,
//! and the base sandbox every tool runs in.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use mkosi_config::{Args, Config, Host};
use mkosi_sandbox::{FsOp, Options};

use crate::error::{io, Result};
use crate::log::Timings;

/// Directories of one build.
pub struct Context<'a> {
    pub args: &'a Args,
    pub config: &'a Config,
    pub host: &'a Host,
    /// `mkosi-workspace-…`, deleted at the end unless `--debug-workspace`.
    pub workspace: PathBuf,
    /// Repository metadata shared by all images of the run.
    pub metadata_dir: PathBuf,
    /// The persistent package download cache.
    pub package_cache_dir: PathBuf,
    /// Run-wide `$PACKAGEDIR`.
    pub package_dir: PathBuf,
    /// The directory the configuration was read in (relative output paths).
    pub cwd: PathBuf,
    pub timings: Timings,
    /// Images this one depends on that are built concurrently (see
    /// [`Dependency`]): the build waits for them before reading their outputs.
    pub dependency: Option<&'a dyn Dependency>,
    /// A package manager cache of this build alone, when it runs concurrently
    /// with another build (see `mkosi_distro::PmEnv::private_cache`).
    pub private_apt_cache: Option<PathBuf>,
    counter: AtomicU64,
}

/// Images being built concurrently with the current one, which needs their outputs.
pub trait Dependency: Sync {
    /// Whether their build failed already.
    fn failed(&self) -> bool;
    /// Wait until their build is done: its error the first time it is asked
    /// for after a failure, else `Ok`.
    fn wait(&self) -> Result<()>;
}

fn bind(src: impl Into<PathBuf>, dst: impl Into<PathBuf>, readonly: bool) -> FsOp {
    FsOp::Bind { src: src.into(), dst: dst.into(), readonly, required: true, relative: false, nofollow: false }
}

impl<'a> Context<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &'a Args,
        config: &'a Config,
        host: &'a Host,
        workspace: PathBuf,
        metadata_dir: PathBuf,
        package_cache_dir: PathBuf,
        package_dir: PathBuf,
        cwd: PathBuf,
    ) -> Result<Context<'a>> {
        let ctx = Context {
            args,
            config,
            host,
            workspace,
            metadata_dir,
            package_cache_dir,
            package_dir,
            cwd,
            timings: Timings::default(),
            dependency: None,
            private_apt_cache: None,
            counter: AtomicU64::new(0),
        };
        for d in [ctx.staging(), ctx.sandbox_tree(), ctx.repository(), ctx.artifacts(), ctx.install_dir(), ctx.tmp()] {
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
        }
        Ok(ctx)
    }

    pub fn root(&self) -> PathBuf {
        self.workspace.join("root")
    }
    pub fn staging(&self) -> PathBuf {
        self.workspace.join("staging")
    }
    pub fn sandbox_tree(&self) -> PathBuf {
        self.workspace.join("sandbox")
    }
    pub fn repository(&self) -> PathBuf {
        self.workspace.join("repository")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.workspace.join("artifacts")
    }
    pub fn install_dir(&self) -> PathBuf {
        self.workspace.join("dest")
    }
    pub fn tmp(&self) -> PathBuf {
        self.workspace.join("tmp")
    }

    /// A fresh scratch directory below the workspace.
    pub fn scratch(&self, prefix: &str) -> Result<PathBuf> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let p = self.tmp().join(format!("{prefix}-{n}"));
        std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
        Ok(p)
    }

    /// The directory outputs go to.
    pub fn output_dir(&self) -> PathBuf {
        self.config.output_dir_or_cwd(&self.cwd)
    }

    /// The environment of scripts and package managers from `Environment=`
    /// and friends (upstream's `Config.finalize_environment()`).
    pub fn environment(&self) -> Vec<(String, String)> {
        finalize_environment(self.config, self.host)
    }

    /// The base sandbox: the host's `/usr` read-only, `/etc` and friends from
    /// the sandbox tree, private `/dev`, `/tmp`, `/run`, `/var/tmp`, and the
    /// network when asked for.
    pub fn sandbox(&self, network: bool, devices: bool) -> Result<Options> {
        let tools = Path::new("/");
        let tree = self.sandbox_tree();
        let mut o = Options::default();
        o.ops.push(bind("/proc", "/proc", false));
        o.unsetenv.push("TMPDIR".into());
        o.setenv.push(("SYSTEMD_OFFLINE".into(), if network { "0" } else { "1" }.into()));
        o.unshare_net = !network;

        for d in ["usr", "opt"] {
            if tools.join(d).exists() {
                o.ops.push(bind(tools.join(d), Path::new("/").join(d), true));
            }
        }
        for d in ["bin", "sbin", "lib", "lib32", "lib64"] {
            let p = tools.join(d);
            if let Ok(target) = std::fs::read_link(&p) {
                o.ops.push(FsOp::Symlink { target, dst: Path::new("/").join(d) });
            } else if p.is_dir() {
                o.ops.push(bind(&p, Path::new("/").join(d), true));
            }
        }
        o.ops.push(FsOp::Dir { dst: "/var/tmp".into() });
        o.ops.push(FsOp::Dir { dst: "/var/log".into() });
        o.unshare_ipc = true;
        if Path::new("/home").is_dir() {
            o.ops.push(bind("/home", "/home", true));
        }
        if devices {
            o.ops.push(bind("/sys", "/sys", false));
            o.ops.push(bind("/dev", "/dev", false));
        } else {
            o.ops.push(FsOp::Dev { dst: "/dev".into(), tty: None });
        }
        for p in ["etc/alternatives", "etc/ld.so.cache"] {
            if tools.join(p).exists() {
                o.ops.push(bind(tools.join(p), Path::new("/").join(p), true));
            }
        }
        if network && Path::new("/run/systemd/resolve").exists() {
            o.ops.push(bind("/run/systemd/resolve", "/run/systemd/resolve", true));
        }
        if network && Path::new("/etc/resolv.conf").exists() {
            o.ops.push(FsOp::Bind {
                src: "/etc/resolv.conf".into(),
                dst: "/etc/resolv.conf".into(),
                readonly: true,
                required: true,
                relative: false,
                nofollow: true,
            });
        }
        o.setenv.push(("PATH".into(), crate::scripts::finalize_path(self.host)));

        if tree.join("etc").exists() {
            o.ops.push(bind(tree.join("etc"), "/etc", true));
        } else {
            o.ops.push(FsOp::Dir { dst: "/etc".into() });
        }
        for d in ["srv", "media", "mnt", "var", "run", "tmp"] {
            let scratch = if d == "run" || d == "tmp" { None } else { Some(self.scratch("var-tmp")?) };
            if tree.join(d).exists() {
                let work = match &scratch {
                    Some(_) => Some(self.scratch("var-tmp")?),
                    None => None,
                };
                o.ops.push(FsOp::Overlay {
                    lowers: vec![tree.join(d)],
                    upper: Some(scratch.clone().unwrap_or_else(|| PathBuf::from("tmpfs"))),
                    work,
                    dst: Path::new("/").join(d),
                });
            } else {
                match scratch {
                    Some(s) => o.ops.push(bind(s, Path::new("/").join(d), false)),
                    None => o.ops.push(FsOp::Dir { dst: Path::new("/").join(d) }),
                }
            }
        }
        if !tree.join("var/tmp").exists() {
            o.ops.push(bind(self.scratch("var-tmp")?, "/var/tmp", false));
        }
        Ok(o)
    }
}

/// The environment of scripts and package managers (upstream's
/// `Config.finalize_environment()`).
pub fn finalize_environment(c: &Config, host: &Host) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("SYSTEMD_TMPFILES_FORCE_SUBVOL".into(), "0".into()),
        ("SYSTEMD_ASK_PASSWORD_KEYRING_TIMEOUT_SEC".into(), "infinity".into()),
        ("SYSTEMD_ASK_PASSWORD_KEYRING_TYPE".into(), "session".into()),
        ("TERM".into(), crate::scripts::finalize_term(host)),
    ];
    if c.image() != "main" {
        env.push(("SUBIMAGE".into(), c.image().into()));
    }
    if let Some(id) = c.image_id() {
        env.push(("IMAGE_ID".into(), id.into()));
    }
    if let Some(v) = c.image_version() {
        env.push(("IMAGE_VERSION".into(), v.into()));
    }
    if let Some(e) = c.int("SourceDateEpoch") {
        env.push(("SOURCE_DATE_EPOCH".into(), e.to_string()));
    }
    if let Some(proxy) = c.str("ProxyUrl") {
        for k in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            env.push((k.into(), proxy.into()));
        }
    }
    let exclude = c.strings("ProxyExclude");
    if !exclude.is_empty() {
        for k in ["no_proxy", "NO_PROXY"] {
            env.push((k.into(), exclude.join(",")));
        }
    }
    for file in c.paths("EnvironmentFiles") {
        if let Ok(text) = std::fs::read_to_string(&file) {
            for (k, v) in mkosi_config::host::read_env_file(&text) {
                env.retain(|(n, _)| *n != k);
                env.push((k, v));
            }
        }
    }
    for (k, v) in c.map("Environment") {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    }
    env
}
