//! User scripts: configure, sync, prepare, build, postinst, finalize,
//! postoutput and clean scripts, the build overlay they work in, and the
//! environment shared by scripts and tools (`$TERM`, `$PATH`).
//!
//! Every script runs in a sandbox with the build sources at `/work/src`
//! (its working directory), the serialized configuration at
//! `/work/config.json` and the directories of its kind below `/work`.
//! Scripts whose name ends in `.chroot` run inside the image (the image is
//! `/`); the others run on the tools side with the image at `/buildroot`
//! and helpers first in `$PATH` (`helpers`). The variables scripts see are
//! built in `env`, the sandboxes in `sandbox`.

pub mod env;
pub mod helpers;
pub mod sandbox;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use mkosi_config::{Args, Config, Host, Verb};
use mkosi_sandbox::run::{self, Cmd, Input, RunError, Sink};
use mkosi_sandbox::{FsOp, Options};

use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::{log, tree};

use self::env::EnvInputs;
use self::sandbox::{bind, Cleanup, RootView, Sources};

/// The kinds of scripts, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptKind {
    Configure,
    Sync,
    Prepare,
    Build,
    PostInst,
    Finalize,
    PostOutput,
    Clean,
}

impl ScriptKind {
    pub const ALL: &'static [ScriptKind] = &[
        ScriptKind::Configure,
        ScriptKind::Sync,
        ScriptKind::Prepare,
        ScriptKind::Build,
        ScriptKind::PostInst,
        ScriptKind::Finalize,
        ScriptKind::PostOutput,
        ScriptKind::Clean,
    ];

    /// The setting listing the scripts.
    pub fn setting(self) -> &'static str {
        match self {
            ScriptKind::Configure => "ConfigureScripts",
            ScriptKind::Sync => "SyncScripts",
            ScriptKind::Prepare => "PrepareScripts",
            ScriptKind::Build => "BuildScripts",
            ScriptKind::PostInst => "PostInstallationScripts",
            ScriptKind::Finalize => "FinalizeScripts",
            ScriptKind::PostOutput => "PostOutputScripts",
            ScriptKind::Clean => "CleanScripts",
        }
    }

    /// Where the script is mounted in its sandbox (`$SCRIPT`).
    pub fn mount_point(self) -> &'static str {
        match self {
            ScriptKind::Configure => "/work/configure",
            ScriptKind::Sync => "/work/sync",
            ScriptKind::Prepare => "/work/prepare",
            ScriptKind::Build => "/work/build-script",
            ScriptKind::PostInst => "/work/postinst",
            ScriptKind::Finalize => "/work/finalize",
            ScriptKind::PostOutput => "/work/postoutput",
            ScriptKind::Clean => "/work/clean",
        }
    }

    /// How messages name a script of this kind.
    pub fn noun(self) -> &'static str {
        match self {
            ScriptKind::Configure => "configure script",
            ScriptKind::Sync => "sync script",
            ScriptKind::Prepare => "prepare script",
            ScriptKind::Build => "build script",
            ScriptKind::PostInst => "post-installation script",
            ScriptKind::Finalize => "finalize script",
            ScriptKind::PostOutput => "post-output script",
            ScriptKind::Clean => "clean script",
        }
    }

    /// Whether `.chroot` scripts of this kind run inside the image.
    pub fn supports_chroot(self) -> bool {
        matches!(self, ScriptKind::Prepare | ScriptKind::Build | ScriptKind::PostInst | ScriptKind::Finalize)
    }
}

/// Script settings that cannot be used yet. Every script type is
/// implemented, so nothing is reported.
pub fn unsupported(_c: &Config) -> Vec<String> {
    Vec::new()
}

/// `$TERM` for commands: the user's terminal type when stderr is a terminal, else `dumb`.
pub fn finalize_term(host: &Host) -> String {
    let tty = std::io::stderr().is_terminal();
    let term = host.env("TERM").unwrap_or("unknown");
    if !tty {
        return "dumb".into();
    }
    if term == "unknown" {
        "vt220".into()
    } else {
        term.into()
    }
}

/// `$PATH` in the sandbox: the host's entries outside /usr (plus /usr/bin
/// and /usr/sbin), and always /usr/bin, /usr/sbin and /usr/local/bin.
pub fn finalize_path(host: &Host) -> String {
    let mut path: Vec<String> = Vec::new();
    for s in host.env("PATH").unwrap_or("/usr/bin:/usr/sbin").split(':') {
        if (s == "/usr/bin" || s == "/usr/sbin" || !s.starts_with("/usr"))
            && !s.is_empty()
            && !path.iter().any(|p| p == s)
        {
            path.push(s.to_string());
        }
    }
    for s in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        if !path.iter().any(|p| p == s) {
            path.push(s.to_string());
        }
    }
    path.join(":")
}

/// Make sure `script` can be executed: fail naming it, or with
/// `MakeScriptsExecutable=yes` make it executable for its owner.
pub fn check_script(config: &Config, script: &Path) -> Result<()> {
    let executable = std::ffi::CString::new(script.as_os_str().as_encoded_bytes())
        // SAFETY: a valid NUL-terminated path; access() has no other preconditions.
        .map(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
        .unwrap_or(false);
    if executable {
        return Ok(());
    }
    if !config.bool("MakeScriptsExecutable") {
        return Err(BuildError::hint(
            format!("{} is not executable", script.display()),
            "Make it executable (chmod +x) or set MakeScriptsExecutable=yes",
        ));
    }
    log::warn(&format!("{} is not executable, attempting to chmod it", script.display()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(script).map_err(io("reading", script))?.permissions().mode();
    std::fs::set_permissions(script, std::fs::Permissions::from_mode(mode | 0o100)).map_err(io("chmod", script))
}

/// Check the scripts a build runs (sync through postoutput), like upstream's input checks.
pub fn check_scripts(config: &Config) -> Result<()> {
    for kind in [
        ScriptKind::Sync,
        ScriptKind::Prepare,
        ScriptKind::Build,
        ScriptKind::PostInst,
        ScriptKind::Finalize,
        ScriptKind::PostOutput,
    ] {
        for script in config.paths(kind.setting()) {
            check_script(config, &script)?;
        }
    }
    Ok(())
}

fn is_chroot(kind: ScriptKind, script: &Path) -> bool {
    kind.supports_chroot() && script.extension().is_some_and(|e| e == "chroot")
}

/// The error for a script that did not succeed: names the script and its exit status.
fn script_error(kind: ScriptKind, script: &Path, chroot: bool, e: RunError) -> BuildError {
    let mut title = kind.noun().to_string();
    title[..1].make_ascii_uppercase();
    match e {
        RunError::Failed { code, stderr_tail, .. } => {
            let tail = if stderr_tail.trim().is_empty() {
                String::new()
            } else {
                format!("\nLast lines of its error output:\n{}", stderr_tail.trim_end())
            };
            let message = format!("{title} {} returned non-zero exit code {code}.{tail}", script.display());
            if code == 127 {
                let place = if chroot { "in the image" } else { "in the tools sandbox" };
                BuildError::hint(
                    message,
                    format!("The script's interpreter (its #! line) or a command it runs was not found {place}"),
                )
            } else {
                BuildError::msg(message)
            }
        }
        RunError::Signaled { signal, .. } => {
            BuildError::msg(format!("{title} {} was killed by signal {signal}.", script.display()))
        }
        other => BuildError::msg(format!("{title} {} could not be run: {other}", script.display())),
    }
}

/// The full environment of a script: mkosi's variables, then the
/// configured environment (`Environment=` wins), then the locale.
fn full_env(ctx: &Context, kind: ScriptKind) -> Result<Vec<(String, String)>> {
    let mut e = env::script_env(kind, ctx.config, EnvInputs::current(ctx.args.debug))?;
    env::merge(&mut e, ctx.environment());
    env::finish(&mut e);
    Ok(e)
}

/// `MKOSI_CHROOT_SUPPRESS_CHOWN=` in the configured environment.
fn suppress_chown(ctx: &Context) -> bool {
    ctx.environment()
        .iter()
        .rev()
        .find(|(k, _)| k == "MKOSI_CHROOT_SUPPRESS_CHOWN")
        .and_then(|(_, v)| mkosi_config::parse::try_parse_boolean(v))
        .unwrap_or(false)
}

/// Write the image's configuration for `$MKOSI_CONFIG`.
fn write_config_json(ctx: &Context) -> Result<PathBuf> {
    let p = ctx.scratch("config")?.join("config.json");
    std::fs::write(&p, mkosi_config::json::dump(&ctx.config.to_json())).map_err(io("writing", &p))?;
    Ok(p)
}

/// The build subdirectory (`BuildDirectory=`), created when missing.
fn build_subdir(config: &Config) -> Result<Option<PathBuf>> {
    let Some(dir) = config.build_subdir() else { return Ok(None) };
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    Ok(Some(dir))
}

/// One script step in the image: how to mount the root, the extra mounts
/// of this kind and the network.
struct InImage<'a> {
    kind: ScriptKind,
    root: RootView,
    network: bool,
    /// Arguments after the script.
    argv: &'a [String],
    /// Mounts besides the script, the configuration and the sources.
    mounts: Vec<FsOp>,
    sources: Sources,
    /// Printed for each script (`{}` is the script).
    message: &'a str,
}

/// Run the scripts of `step.kind` in the image, one after the other.
fn run_in_image(ctx: &Context, step: InImage<'_>) -> Result<()> {
    let scripts = ctx.config.paths(step.kind.setting());
    if scripts.is_empty() {
        return Ok(());
    }
    let environment = full_env(ctx, step.kind)?;
    let json = write_config_json(ctx)?;
    let mut cleanup = Cleanup::default();
    let sources = sandbox::source_ops(ctx.config, step.sources, |p| ctx.scratch(p), &mut cleanup)?;
    let suppress = suppress_chown(ctx);
    let mut helpers: Option<PathBuf> = None;

    for script in scripts {
        log::step(&step.message.replace("{}", &script.display().to_string()));
        let mut mounts = vec![bind(&script, step.kind.mount_point(), true), bind(&json, env::CONFIG_JSON, true)];
        mounts.extend(step.mounts.iter().cloned());
        mounts.extend(sources.iter().cloned());
        let chroot = is_chroot(step.kind, &script);
        let options = if chroot {
            sandbox::chroot_sandbox(ctx, step.network, suppress, &step.root, mounts)?
        } else {
            let dir = match &helpers {
                Some(d) => d.clone(),
                None => {
                    let d = helpers::write_helpers(ctx, step.network, suppress)?;
                    helpers = Some(d.clone());
                    d
                }
            };
            sandbox::tools_sandbox(ctx, step.network, &dir, &step.root, mounts)?
        };
        let mut argv = vec![step.kind.mount_point().to_string()];
        argv.extend(step.argv.iter().cloned());
        let cmd = Cmd::new(argv).sandbox(options).env(environment.clone()).stdin(Input::Inherit);
        run::run(&cmd).map_err(|e| script_error(step.kind, &script, chroot, e))?;
    }
    Ok(())
}

/// Prepare scripts: after the packages are installed (`final`), and again
/// in the build overlay (`build`) when there are build scripts.
pub fn run_prepare_scripts(ctx: &Context, build: bool) -> Result<()> {
    let c = ctx.config;
    if c.list("PrepareScripts").is_empty() || (build && c.list("BuildScripts").is_empty()) {
        return Ok(());
    }
    let root = if build { sandbox::build_overlay_view(ctx)? } else { RootView::plain(ctx.root()) };
    let arg = [if build { "build" } else { "final" }.to_string()];
    run_in_image(
        ctx,
        InImage {
            kind: ScriptKind::Prepare,
            root,
            network: true,
            argv: &arg,
            mounts: vec![
                bind(ctx.artifacts(), env::ARTIFACTDIR, false),
                bind(&ctx.package_dir, env::PACKAGEDIR, false),
            ],
            sources: Sources::for_config(c, false),
            message: if build {
                "Running prepare script {} in build overlay…"
            } else {
                "Running prepare script {}…"
            },
        },
    )
}

/// `BuildPackages=`: installed into the build overlay when there are build scripts.
pub fn install_build_packages(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let packages = c.strings("BuildPackages");
    if c.list("BuildScripts").is_empty() || packages.is_empty() {
        return Ok(());
    }
    log::step(&format!("Installing build packages for {}", c.distribution().pretty_name()));
    let view = sandbox::build_overlay_view(ctx)?;
    // Custom distributions have no package manager to install with.
    if mkosi_distro::package_manager(c)? != "apt" {
        return Ok(());
    }
    let env = crate::pipeline::pm_env(ctx)?;
    let apt = mkosi_distro::apt::Apt::new(c, &env);
    let mut options = apt.sandbox(true, Vec::new());
    // The package manager sees the root with the build overlay on top.
    let overlay = view.op(Path::new(env::BUILDROOT));
    for op in options.ops.iter_mut() {
        if matches!(op, FsOp::Bind { src, dst, .. } if *src == env.root && dst.as_path() == Path::new(env::BUILDROOT)) {
            *op = overlay.clone();
        }
    }
    // Keep daemons from starting, as for any installation.
    let policy = ctx.root().join("usr/sbin/policy-rc.d");
    let wrote_policy = policy.parent().is_some_and(Path::is_dir) && !policy.exists();
    if wrote_policy {
        std::fs::write(&policy, "#!/bin/sh\nexit 101\n").map_err(io("writing", &policy))?;
    }
    let mut argv = apt.cmd("apt-get")?;
    argv.push("install".into());
    argv.extend(packages);
    let r = run::run(&Cmd::new(argv).sandbox(options).env(apt.environment()));
    if wrote_policy {
        let _ = std::fs::remove_file(&policy);
    }
    r?;
    Ok(())
}

/// Build scripts: in a throwaway overlay on top of the image and the build
/// overlay, with `$DESTDIR` (copied into the image later) and the
/// arguments given after `mkosi build`.
pub fn run_build_scripts(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if c.list("BuildScripts").is_empty() {
        return Ok(());
    }
    let root = sandbox::volatile_build_view(ctx)?;
    let mut mounts = vec![
        bind(ctx.install_dir(), env::DESTDIR, false),
        bind(ctx.artifacts(), env::ARTIFACTDIR, false),
        bind(&ctx.package_dir, env::PACKAGEDIR, false),
    ];
    if let Some(dir) = build_subdir(c)? {
        mounts.push(bind(dir, env::BUILDDIR, false));
    }
    let argv: &[String] = if ctx.args.verb == Verb::Build { &ctx.args.cmdline } else { &[] };
    let volatile: Vec<PathBuf> = root.upper.iter().flat_map(|(u, w)| [u.clone(), w.clone()]).collect();
    let r = run_in_image(
        ctx,
        InImage {
            kind: ScriptKind::Build,
            root,
            network: c.bool("WithNetwork"),
            argv,
            mounts,
            sources: Sources::for_config(c, true),
            message: "Running build script {}…",
        },
    );
    // What the build scripts changed in the image is thrown away.
    let _ = tree::rmtree(&volatile);
    r
}

/// Copy what build scripts installed into `$DESTDIR` into the image.
pub fn install_build_dest(ctx: &Context) -> Result<()> {
    let dest = ctx.install_dir();
    let empty = std::fs::read_dir(&dest).map(|mut d| d.next().is_none()).unwrap_or(true);
    if empty {
        return Ok(());
    }
    log::step("Copying in build tree…");
    tree::copy_tree(&dest, &ctx.root(), true)
}

/// Post-installation (`final`) and finalize scripts: the image, the staging
/// directory at `$OUTPUTDIR` and the build directory read-only.
fn run_late_scripts(ctx: &Context, kind: ScriptKind) -> Result<()> {
    let c = ctx.config;
    if c.list(kind.setting()).is_empty() {
        return Ok(());
    }
    let mut mounts = vec![
        bind(ctx.staging(), env::OUTPUTDIR, false),
        bind(ctx.artifacts(), env::ARTIFACTDIR, false),
        bind(&ctx.package_dir, env::PACKAGEDIR, false),
    ];
    if let Some(dir) = build_subdir(c)? {
        mounts.push(bind(dir, env::BUILDDIR, true));
    }
    let fin = ["final".to_string()];
    let (argv, message): (&[String], &str) = match kind {
        ScriptKind::PostInst => (&fin, "Running postinstall script {}…"),
        _ => (&[], "Running finalize script {}…"),
    };
    run_in_image(
        ctx,
        InImage {
            kind,
            root: RootView::plain(ctx.root()),
            network: c.bool("WithNetwork"),
            argv,
            mounts,
            sources: Sources::for_config(c, false),
            message,
        },
    )
}

/// Post-installation scripts, after the build tree and extra trees are in place.
pub fn run_postinst_scripts(ctx: &Context) -> Result<()> {
    run_late_scripts(ctx, ScriptKind::PostInst)
}

/// Finalize scripts, after package metadata and `RemoveFiles=` cleanup.
pub fn run_finalize_scripts(ctx: &Context) -> Result<()> {
    run_late_scripts(ctx, ScriptKind::Finalize)
}

/// Post-output scripts: on the staging directory (`$OUTPUTDIR`) before the
/// outputs move into place, as (fake) root so files they create are owned by root.
pub fn run_postoutput_scripts(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let scripts = c.paths("PostOutputScripts");
    if scripts.is_empty() {
        return Ok(());
    }
    let kind = ScriptKind::PostOutput;
    let environment = full_env(ctx, kind)?;
    let json = write_config_json(ctx)?;
    let mut cleanup = Cleanup::default();
    let sources = sandbox::source_ops(c, Sources::for_config(c, false), |p| ctx.scratch(p), &mut cleanup)?;
    for script in scripts {
        log::step(&format!("Running post-output script {}…", script.display()));
        let mut o = ctx.sandbox(false, false)?;
        o.ops.extend([
            bind(&script, kind.mount_point(), true),
            bind(&json, env::CONFIG_JSON, true),
            bind(ctx.staging(), env::OUTPUTDIR, false),
            FsOp::Dir { dst: env::SRCDIR.into() },
            FsOp::Dir { dst: env::OUTPUTDIR.into() },
        ]);
        o.ops.extend(sources.iter().cloned());
        o.chdir = Some(env::SRCDIR.into());
        o.become_root = true;
        let cmd = Cmd::new([kind.mount_point()]).sandbox(o).env(environment.clone()).stdin(Input::Inherit);
        run::run(&cmd).map_err(|e| script_error(kind, &script, false, e))?;
    }
    Ok(())
}

/// A scratch workspace for scripts that run outside of an image build
/// (configure, sync, clean), removed when dropped.
struct ScratchWorkspace {
    path: PathBuf,
}

impl ScratchWorkspace {
    fn new(parent: &Path, prefix: &str) -> Result<ScratchWorkspace> {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        for n in 0u32..1000 {
            let path = parent.join(format!("mkosi-{prefix}-{:x}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    sandbox::set_mode(&path, 0o755)?;
                    return Ok(ScratchWorkspace { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("creating", &path)(e)),
            }
        }
        Err(BuildError::msg(format!("Could not create a workspace in {}", parent.display())))
    }

    /// A build context on this workspace, for its sandbox and environment.
    fn context<'a>(&self, args: &'a Args, config: &'a Config, host: &'a Host, cwd: &Path) -> Result<Context<'a>> {
        let ws = self.path.join("workspace");
        Context::new(
            args,
            config,
            host,
            ws.clone(),
            ws.join("metadata"),
            ws.join("package-cache"),
            ws.join("packages"),
            cwd.to_path_buf(),
        )
    }
}

impl Drop for ScratchWorkspace {
    fn drop(&mut self) {
        let _ = tree::rmtree(std::slice::from_ref(&self.path));
    }
}

/// The base sandbox of configure, sync and clean scripts with the script,
/// the sources and the working directory.
fn outside_sandbox(ctx: &Context, network: bool, kind: ScriptKind, script: &Path, extra: Vec<FsOp>) -> Result<Options> {
    let mut o = ctx.sandbox(network, false)?;
    o.ops.push(FsOp::Dir { dst: env::SRCDIR.into() });
    o.chdir = Some(env::SRCDIR.into());
    o.ops.push(bind(script, kind.mount_point(), true));
    o.ops.extend(extra);
    let mut cleanup = Cleanup::default();
    o.ops.extend(sandbox::source_ops(ctx.config, Sources::Bind, |p| ctx.scratch(p), &mut cleanup)?);
    Ok(o)
}

/// Run the configure scripts of one image: each gets the configuration as
/// JSON on stdin and prints the new one. Keys it leaves out take the
/// values of `defaults` (the configuration mkosi has without any files).
fn configure_image(args: &Args, mut config: Config, host: &Host, cwd: &Path, defaults: &Config) -> Result<Config> {
    let kind = ScriptKind::Configure;
    let scripts = config.paths(kind.setting());
    if scripts.is_empty() {
        return Ok(config);
    }
    for script in &scripts {
        check_script(&config, script)?;
    }
    let ws = ScratchWorkspace::new(&crate::workspace_dir(&config, host), "configure")?;
    for script in scripts {
        log::step(&format!("Running configure script {}…", script.display()));
        let output = {
            let ctx = ws.context(args, &config, host, cwd)?;
            let mut environment = env::script_env(kind, &config, EnvInputs::current(args.debug))?;
            env::merge(&mut environment, ctx.environment());
            env::finish(&mut environment);
            let options = outside_sandbox(&ctx, false, kind, &script, Vec::new())?;
            let input = env::compact_json(&config.to_json());
            let cmd = Cmd::new([kind.mount_point()])
                .sandbox(options)
                .env(environment)
                .stdin(Input::Data(input.into_bytes()))
                .stdout(Sink::Capture);
            run::run(&cmd).map_err(|e| script_error(kind, &script, false, e))?
        };
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
            BuildError::msg(format!("Configure script {} did not print a JSON configuration: {e}", script.display()))
        })?;
        config = Config::from_json(&json, defaults).map_err(|e| {
            BuildError::msg(format!("Configure script {} printed an invalid configuration: {e}", script.display()))
        })?;
    }
    Ok(config)
}

/// Run the configure scripts of every image (`ConfigureScripts=`) and
/// return the configurations they produced, in build order again (the
/// scripts may have changed dependencies). `defaults` is the configuration
/// without any configuration files (upstream's `Config.default()`), which
/// supplies the keys a script leaves out.
///
/// The binary calls this for the verbs that build (build, shell, boot,
/// vm, qemu, serve, burn, sysupdate), after parsing and before building.
pub fn run_configure_scripts(
    args: &Args,
    images: &[Config],
    host: &Host,
    cwd: &Path,
    defaults: &Config,
) -> Result<Vec<Config>> {
    let any = images.iter().any(|c| !c.list("ConfigureScripts").is_empty());
    if !any {
        return Ok(images.to_vec());
    }
    let step = "Running configure scripts";
    let mut out = Vec::with_capacity(images.len());
    for config in images {
        out.push(configure_image(args, config.clone(), host, cwd, defaults).map_err(|e| e.in_step(step))?);
    }
    let Some(last) = out.pop() else { return Ok(out) };
    let mut ordered = mkosi_config::toplevel::resolve_deps(out, &last.strings("Dependencies"))
        .map_err(|e| BuildError::from(e).in_step(step))?;
    ordered.push(last);
    Ok(ordered)
}

/// Run the sync scripts of an image (before any image is built): with the
/// host's environment and the network, the user's sandbox trees, `/home`
/// and `/run` (ssh agents and the like), but no image.
/// `workspace_parent` holds the temporary sandbox tree.
pub fn run_sync_scripts(args: &Args, config: &Config, host: &Host, workspace_parent: &Path, cwd: &Path) -> Result<()> {
    let kind = ScriptKind::Sync;
    let scripts = config.paths(kind.setting());
    if scripts.is_empty() {
        return Ok(());
    }
    let step = "Running sync scripts";
    let inner = || -> Result<()> {
        for script in &scripts {
            check_script(config, script)?;
        }
        let ws = ScratchWorkspace::new(workspace_parent, "sync")?;
        let ctx = ws.context(args, config, host, cwd)?;
        crate::pipeline::install_sandbox_trees(&ctx)?;
        let mut environment: Vec<(String, String)> = host.env_vars().to_vec();
        env::merge(&mut environment, env::script_env(kind, config, EnvInputs::current(args.debug))?);
        env::merge(&mut environment, ctx.environment());
        env::finish(&mut environment);
        let json = write_config_json(&ctx)?;
        for script in &scripts {
            log::step(&format!("Running sync script {}…", script.display()));
            let mut extra = sandbox::certificate_ops();
            extra.push(bind(&json, env::CONFIG_JSON, true));
            extra.push(sandbox::bind_try("/home", "/home", true));
            extra.push(bind("/run", "/run", true));
            let options = outside_sandbox(&ctx, true, kind, script, extra)?;
            let cmd =
                Cmd::new([kind.mount_point(), "final"]).sandbox(options).env(environment.clone()).stdin(Input::Inherit);
            run::run(&cmd).map_err(|e| script_error(kind, script, false, e))?;
        }
        Ok(())
    };
    inner().map_err(|e| e.in_step(step))
}

/// Run the clean scripts of an image (`mkosi clean`, and `mkosi -f build`
/// after removing the outputs), with the output directory at `$OUTPUTDIR`.
pub fn run_clean_scripts(args: &Args, config: &Config, host: &Host, cwd: &Path) -> Result<()> {
    let kind = ScriptKind::Clean;
    let scripts = config.paths(kind.setting());
    if scripts.is_empty() {
        return Ok(());
    }
    let step = "Running clean scripts";
    let inner = || -> Result<()> {
        for script in &scripts {
            check_script(config, script)?;
        }
        let ws = ScratchWorkspace::new(&crate::workspace_dir(config, host), "clean")?;
        let ctx = ws.context(args, config, host, cwd)?;
        let mut environment = env::script_env(kind, config, EnvInputs::current(args.debug))?;
        env::merge(&mut environment, ctx.environment());
        env::finish(&mut environment);
        let json = write_config_json(&ctx)?;
        let outdir = config.output_dir_or_cwd(cwd);
        for script in &scripts {
            log::step(&format!("Running clean script {}…", script.display()));
            let mut extra = vec![FsOp::Dir { dst: env::OUTPUTDIR.into() }, bind(&json, env::CONFIG_JSON, true)];
            if outdir.exists() {
                extra.push(bind(&outdir, env::OUTPUTDIR, false));
            }
            let options = outside_sandbox(&ctx, false, kind, script, extra)?;
            let cmd = Cmd::new([kind.mount_point()]).sandbox(options).env(environment.clone()).stdin(Input::Inherit);
            run::run(&cmd).map_err(|e| script_error(kind, script, false, e))?;
        }
        Ok(())
    };
    inner().map_err(|e| e.in_step(step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkosi_config::enums::Architecture;
    use serde_json::json;

    #[test]
    fn path() {
        let h = Host::new(
            vec![("PATH".into(), "/root/bin:/usr/local/sbin:/usr/bin:/bin:/usr/bin".into())],
            Architecture::X86_64,
            "/".into(),
        );
        assert_eq!(finalize_path(&h), "/root/bin:/usr/bin:/bin:/usr/sbin:/usr/local/bin");
    }

    #[test]
    fn kinds() {
        assert!(is_chroot(ScriptKind::Prepare, Path::new("/x/mkosi.prepare.chroot")));
        assert!(is_chroot(ScriptKind::Finalize, Path::new("/x/mkosi.finalize.d/10-a.chroot")));
        assert!(!is_chroot(ScriptKind::Prepare, Path::new("/x/mkosi.prepare")));
        assert!(!is_chroot(ScriptKind::PostOutput, Path::new("/x/mkosi.postoutput.chroot")));
        assert!(!is_chroot(ScriptKind::Sync, Path::new("/x/mkosi.sync.chroot")));
        for kind in ScriptKind::ALL {
            assert!(kind.mount_point().starts_with("/work/"));
            assert!(mkosi_config::settings::by_name(kind.setting()).is_some(), "{kind:?}");
        }
    }

    #[test]
    fn errors_name_the_script_and_status() {
        let e = RunError::Failed { command: "/work/prepare final".into(), code: 42, stderr_tail: "oops".into() };
        let e = script_error(ScriptKind::Prepare, Path::new("/src/mkosi.prepare"), false, e)
            .in_step("Running prepare scripts");
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "Running prepare scripts failed: Prepare script /src/mkosi.prepare returned non-zero exit code 42."
            ),
            "{msg}"
        );
        assert!(msg.contains("oops"), "{msg}");
        let e = RunError::Failed { command: "x".into(), code: 127, stderr_tail: String::new() };
        let e = script_error(ScriptKind::Build, Path::new("/b.chroot"), true, e);
        assert!(e.hint_text().is_some_and(|h| h.contains("in the image")));
        let e = RunError::Signaled { command: "x".into(), signal: 9 };
        let msg = script_error(ScriptKind::PostInst, Path::new("/p"), false, e).to_string();
        assert_eq!(msg, "Post-installation script /p was killed by signal 9.");
    }

    #[test]
    fn executable_check() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("mkosi.prepare");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = Config::from_values(vec![("PrepareScripts".to_string(), json!([script]))]);
        // Root may execute anything with an x bit; without one access() fails for everyone.
        let e = check_scripts(&c).unwrap_err();
        assert_eq!(e.to_string(), format!("{} is not executable", script.display()));
        assert!(e.hint_text().is_some_and(|h| h.contains("MakeScriptsExecutable")));
        c.set("MakeScriptsExecutable", json!(true));
        check_scripts(&c).unwrap();
        assert_eq!(std::fs::metadata(&script).unwrap().permissions().mode() & 0o777, 0o744);
        check_scripts(&c).unwrap();
    }
}
