//! `mkosi-initrd`: build an initrd (or a UKI, or a directory tree) for the
//! running system with mkosi's built-in `mkosi-initrd` configuration.
//!
//! The binary becomes this tool when it is invoked as `mkosi-initrd` (a
//! symlink or hard link to `mkosi`). It translates its own small set of
//! options into an ordinary mkosi command line: the host's kernel modules and
//! firmware go in as extra trees, the host's package manager configuration
//! becomes the sandbox tree (with empty placeholders for the repository files
//! mkosi would otherwise write, so that only the host's repositories are
//! used), and host configuration such as `/etc/crypttab` entries needed in the
//! initrd is added. The build runs as a child `mkosi` process (this
//! executable, re-executed) into a private staging directory, and the result
//! is then copied atomically to `<output dir>/<name>`.
//!
//! Every host path is looked up below [`Host::root`], which is `/` except in
//! tests, so the whole command line can be checked against a fake host tree.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Arg, ArgAction};
use mkosi_config::enums::{InitrdProfile, OutputFormat};

/// Test-only override of the host root (see [`Host::system`]).
pub const HOST_ROOT_ENV: &str = "MKOSI_INITRD_HOST_ROOT";

/// The formats `--format` accepts.
const FORMATS: &[&str] = &["cpio", "uki", "directory"];

/// Where the system's own mkosi-initrd configuration may live, in increasing
/// order of priority.
const SYSTEM_CONFIG_DIRS: &[&str] = &["/usr/lib", "/usr/local/lib", "/run", "/etc"];

/// Host package manager configuration copied into the sandbox tree.
const PACKAGE_MANAGER_CONFIG: &[&str] =
    &["/etc/dnf", "/etc/yum.repos.d", "/etc/pki/rpm-gpg", "/etc/apt", "/etc/zypp", "/etc/pacman.conf", "/etc/pacman.d"];

/// Repository files mkosi writes unless the sandbox tree has them: created
/// empty so that the host's own repository definitions are the only ones.
const REPOSITORY_PLACEHOLDERS: &[&str] = &[
    "etc/yum.repos.d/mkosi.repo",
    "etc/apt/sources.list.d/mkosi.sources",
    "etc/zypp/repos.d/mkosi.repo",
    "etc/pacman.conf",
];

const NETWORK_CONFIG: &[&str] = &[
    "/etc/systemd/network",
    "/etc/systemd/networkd.conf",
    "/etc/systemd/networkd.conf.d",
    "/etc/systemd/resolved.conf",
    "/etc/systemd/resolved.conf.d",
];
const NFS_CONFIG: &[&str] = &["/etc/idmapd.conf", "/etc/idmapd.conf.d"];
const RAID_CONFIG: &[&str] =
    &["/etc/mdadm.conf", "/etc/mdadm.conf.d", "/etc/mdadm/mdadm.conf", "/etc/mdadm/mdadm.conf.d"];
const VCONSOLE_CONFIG: &[&str] = &["/etc/default/keyboard", "/etc/vconsole.conf"];

const MANUAL: &str = include_str!("../../../docs/mkosi-initrd.1.md");

/// The manual page of the tool, in markdown.
pub fn manual() -> &'static str {
    MANUAL
}

/// The options of `mkosi-initrd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub kernel_version: String,
    pub format: OutputFormat,
    pub output: String,
    pub output_dir: Option<PathBuf>,
    pub generic: bool,
    pub profiles: Vec<InitrdProfile>,
    pub kernel_image: Option<PathBuf>,
    pub debug: bool,
    pub debug_shell: bool,
    pub debug_sandbox: bool,
    pub show_documentation: bool,
    pub show_summary: bool,
}

/// What the command line of a multi-call tool (`mkosi-initrd`, `mkosi-addon`) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation<O = Options> {
    Build(O),
    Help(String),
    Version,
}

/// Matches the arguments of the multi-call tool `name` (without argv\[0\]) against `cmd`;
/// `--help` and `--version` end there (`Err` with what to do).
pub(crate) fn tool_matches<O>(
    cmd: &mut clap::Command,
    name: &str,
    args: &[OsString],
) -> std::result::Result<std::result::Result<clap::ArgMatches, Invocation<O>>, clap::Error> {
    let m = match cmd.clone().try_get_matches_from(std::iter::once(OsString::from(name)).chain(args.iter().cloned())) {
        Ok(m) => m,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            return Ok(Err(Invocation::Help(cmd.render_help().to_string())));
        }
        Err(e) => return Err(e),
    };
    if m.get_flag("version") {
        return Ok(Err(Invocation::Version));
    }
    Ok(Ok(m))
}

/// The `main` the multi-call tools share: help, version and usage errors (exit status 2),
/// `--show-documentation` (the tool's `manual`, titled `title`), else `run`.
pub(crate) fn tool_main<O>(
    parsed: std::result::Result<Invocation<O>, clap::Error>,
    manual: &str,
    title: &str,
    show_documentation: impl Fn(&O) -> bool,
    run: impl FnOnce(&O) -> Result<()>,
) -> Result<()> {
    let opts = match parsed {
        Ok(Invocation::Build(o)) => o,
        Ok(Invocation::Help(h)) => {
            print!("{h}");
            return Ok(());
        }
        Ok(Invocation::Version) => {
            println!("mkosi {}", mkosi_config::MKOSI_VERSION);
            return Ok(());
        }
        Err(e) => {
            let _ = e.print();
            return Err(crate::Exit(2).into());
        }
    };
    if show_documentation(&opts) {
        return crate::docs::show_manual(manual, title, true);
    }
    run(&opts)
}

/// The parts of the host the tool reads.
#[derive(Debug, Clone)]
pub struct Host {
    /// Prefix of every host path (`/`, or a fake host tree in tests).
    pub root: PathBuf,
    /// Whether we run as root (uid 0).
    pub is_root: bool,
    /// The running kernel's release, the default `--kernel-version`.
    pub kernel_release: String,
}

impl Host {
    /// The running system. `$MKOSI_INITRD_HOST_ROOT` replaces `/` as the
    /// place host files are read from (all but the package cache in /var);
    /// it exists for tests, which need a kernel modules directory and
    /// repositories the real host may not have.
    pub fn system() -> Host {
        // SAFETY: getuid() cannot fail.
        let uid = unsafe { libc::getuid() };
        let root = std::env::var_os(HOST_ROOT_ENV).filter(|r| !r.is_empty()).map(PathBuf::from);
        Host { root: root.unwrap_or_else(|| PathBuf::from("/")), is_root: uid == 0, kernel_release: uname_release() }
    }

    /// The host file behind an absolute path.
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    pub(crate) fn exists(&self, p: &str) -> bool {
        std::fs::symlink_metadata(self.path(p)).is_ok()
    }

    /// `--extra-tree=<host file>:<same path in the image>`.
    pub(crate) fn extra_tree(&self, p: &str) -> String {
        format!("--extra-tree={}:{}", self.path(p).display(), p)
    }

    /// Extra trees for those of `paths` that exist on the host.
    fn existing_extra_trees(&self, paths: &[&str]) -> Vec<String> {
        paths.iter().filter(|p| self.exists(p)).map(|p| self.extra_tree(p)).collect()
    }
}

/// `uname -r`.
pub fn uname_release() -> String {
    // SAFETY: utsname is plain data that uname() fills in.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    }
}

fn command(default_kernel_version: &str) -> clap::Command {
    let profiles: Vec<&'static str> = InitrdProfile::VALUES.to_vec();
    clap::Command::new("mkosi-initrd")
        .about("Build initrds or unified kernel images for the current system using mkosi")
        .override_usage("mkosi-initrd [options...]")
        .disable_version_flag(true)
        .args_override_self(true)
        .arg(
            Arg::new("output").short('o').long("output").value_name("NAME").default_value("initrd").help("Output name"),
        )
        .arg(Arg::new("kernel-image").long("kernel-image").value_name("KERNEL_IMAGE").help("Kernel image"))
        .arg(
            Arg::new("format")
                .short('t')
                .long("format")
                .value_parser(clap::builder::PossibleValuesParser::new(FORMATS))
                .default_value("cpio")
                .help("Output format (CPIO archive, UKI or local directory)"),
        )
        .arg(
            Arg::new("generic")
                .short('g')
                .long("generic")
                .action(ArgAction::SetTrue)
                .help("Build a generic initrd without host-specific kernel modules"),
        )
        .arg(
            Arg::new("profile")
                .long("profile")
                .action(ArgAction::Append)
                .value_parser(clap::builder::PossibleValuesParser::new(profiles))
                .help("Which profiles to enable for the initrd"),
        )
        .arg(
            Arg::new("kernel-version")
                .short('k')
                .long("kernel-version")
                .value_name("KERNEL_VERSION")
                .default_value(default_kernel_version.to_string())
                .help("Kernel version string"),
        )
        .arg(Arg::new("output-dir").short('O').long("output-dir").value_name("DIR").help("Output directory"))
        .arg(Arg::new("debug").long("debug").action(ArgAction::SetTrue).help("Turn on debugging output"))
        .arg(
            Arg::new("debug-shell")
                .long("debug-shell")
                .action(ArgAction::SetTrue)
                .help("Spawn debug shell if a sandboxed command fails"),
        )
        .arg(
            Arg::new("debug-sandbox")
                .long("debug-sandbox")
                .action(ArgAction::SetTrue)
                .help("Run mkosi-sandbox with strace"),
        )
        .arg(
            Arg::new("show-documentation")
                .short('D')
                .long("show-documentation")
                .action(ArgAction::SetTrue)
                .help("Show the man page"),
        )
        .arg(
            Arg::new("show-summary")
                .short('S')
                .long("show-summary")
                .action(ArgAction::SetTrue)
                .help("Show the summary of configuration"),
        )
        .arg(
            Arg::new("version")
                .long("version")
                .action(ArgAction::SetTrue)
                .help("Show program's version number and exit"),
        )
}

/// Parse the arguments (without argv\[0\]).
pub fn parse(args: &[OsString], default_kernel_version: &str) -> std::result::Result<Invocation, clap::Error> {
    let mut cmd = command(default_kernel_version);
    let m = match tool_matches(&mut cmd, "mkosi-initrd", args)? {
        Ok(m) => m,
        Err(done) => return Ok(done),
    };
    let text = |id: &str| m.get_one::<String>(id).cloned().unwrap_or_default();
    let format = match text("format").as_str() {
        "uki" => OutputFormat::Uki,
        "directory" => OutputFormat::Directory,
        _ => OutputFormat::Cpio,
    };
    let profiles = m
        .get_many::<String>("profile")
        .map(|v| v.filter_map(|p| p.parse::<InitrdProfile>().ok()).collect())
        .unwrap_or_default();
    let kernel_version = text("kernel-version");
    if kernel_version.is_empty() || kernel_version.contains('/') || kernel_version == "." || kernel_version == ".." {
        return Err(cmd.error(
            clap::error::ErrorKind::InvalidValue,
            format!("invalid kernel version '{kernel_version}' (it names a directory in /usr/lib/modules)"),
        ));
    }
    let output = text("output");
    if output.is_empty() || output.contains('/') || output == "." || output == ".." {
        return Err(cmd.error(
            clap::error::ErrorKind::InvalidValue,
            format!("invalid output name '{output}' (a file name is expected; use --output-dir for the directory)"),
        ));
    }
    Ok(Invocation::Build(Options {
        kernel_version,
        format,
        output,
        output_dir: m.get_one::<String>("output-dir").map(PathBuf::from),
        generic: m.get_flag("generic"),
        profiles,
        kernel_image: m.get_one::<String>("kernel-image").map(PathBuf::from),
        debug: m.get_flag("debug"),
        debug_shell: m.get_flag("debug-shell"),
        debug_sandbox: m.get_flag("debug-sandbox"),
        show_documentation: m.get_flag("show-documentation"),
        show_summary: m.get_flag("show-summary"),
    }))
}

/// A kernel modules directory mkosi can use: it has `modules.dep[.bin]`.
pub fn is_valid_modulesd(dir: &Path) -> bool {
    dir.is_dir() && (dir.join("modules.dep").exists() || dir.join("modules.dep.bin").exists())
}

/// Extra trees for the symlinks below `<modules>/weak-updates` (modules
/// shared between kernel versions): their targets must be in the image too.
fn weak_modules(host: &Host, modulesd: &Path) -> Vec<String> {
    let mut links = Vec::new();
    collect_module_symlinks(&modulesd.join("weak-updates"), &mut links);
    links.sort();
    let root = std::fs::canonicalize(&host.root).unwrap_or_else(|_| host.root.clone());
    let mut out = Vec::new();
    for link in links {
        let Ok(target) = std::fs::canonicalize(&link) else { continue };
        let in_image = match target.strip_prefix(&root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => target.clone(),
        };
        out.push(format!("--extra-tree={}:{}", target.display(), in_image.display()));
    }
    out
}

fn collect_module_symlinks(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() {
            collect_module_symlinks(&p, out);
        } else if ft.is_symlink() && e.file_name().to_string_lossy().contains(".ko") {
            out.push(p);
        }
    }
}

/// The `/etc/crypttab` entries the initrd must set up (`x-initrd.attach`),
/// written to `dir/crypttab`, and extra trees for it and its key files.
pub(crate) fn process_crypttab(host: &Host, dir: &Path) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(host.path("/etc/crypttab")) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(vec![]),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            warn("Permission denied to access /etc/crypttab, the initrd may be unbootable");
            return Ok(vec![]);
        }
        Err(e) => return Err(e).context("reading /etc/crypttab"),
    };
    let entries: Vec<&str> = text
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && !f[0].starts_with('#') && f[3].contains("x-initrd.attach")
        })
        .collect();
    if entries.is_empty() {
        return Ok(vec![]);
    }
    let crypttab = dir.join("crypttab");
    std::fs::write(&crypttab, format!("# Automatically generated by mkosi-initrd\n{}\n", entries.join("\n")))
        .with_context(|| format!("writing {}", crypttab.display()))?;
    let mut out = vec![format!("--extra-tree={}:/etc/crypttab", crypttab.display())];
    for line in entries {
        let f: Vec<&str> = line.split_whitespace().collect();
        let default_key = format!("/etc/cryptsetup-keys.d/{}.key", f[0]);
        let key = if matches!(f[2], "-" | "none") && host.exists(&default_key) {
            Some(default_key)
        } else if f[2].starts_with('/') && host.exists(f[2]) {
            Some(f[2].to_string())
        } else {
            None
        };
        if let Some(k) = key {
            out.push(host.extra_tree(&k));
        }
    }
    Ok(out)
}

/// The mkosi arguments (without the program name) for building `opts`.
/// `staging` receives the output, `sandbox_tree` is the prepared sandbox
/// tree and `scratch` a directory for generated files.
pub fn mkosi_args(
    opts: &Options,
    host: &Host,
    staging: &Path,
    sandbox_tree: &Path,
    scratch: &Path,
) -> Result<Vec<String>> {
    let modules = format!("/usr/lib/modules/{}", opts.kernel_version);
    let modulesd = host.path(&modules);
    let mut a: Vec<String> = vec![
        "--force".into(),
        "--directory=".into(),
        format!("--format={}", opts.format),
        format!("--output={}", opts.output),
        format!("--output-directory={}", staging.display()),
        host.extra_tree(&modules),
    ];
    if host.exists("/usr/lib/firmware") {
        a.push(host.extra_tree("/usr/lib/firmware"));
    }
    a.extend([
        "--remove-files=/usr/lib/firmware/*-ucode".into(),
        "--build-sources=".into(),
        "--include=mkosi-initrd".into(),
    ]);
    if !opts.generic {
        a.push("--kernel-modules=host".into());
    }
    a.extend(weak_modules(host, &modulesd));
    for p in &opts.profiles {
        a.extend(["--profile".into(), p.to_string()]);
        a.extend(host.existing_extra_trees(match p {
            InitrdProfile::Network => NETWORK_CONFIG,
            InitrdProfile::Nfs => NFS_CONFIG,
            InitrdProfile::Raid => RAID_CONFIG,
            _ => &[],
        }));
    }
    if let Some(k) = &opts.kernel_image {
        let k = std::path::absolute(k).with_context(|| format!("resolving {}", k.display()))?;
        a.push(format!("--extra-tree={}:{modules}/vmlinuz", k.display()));
    }
    for (on, flag) in
        [(opts.debug, "--debug"), (opts.debug_shell, "--debug-shell"), (opts.debug_sandbox, "--debug-sandbox")]
    {
        if on {
            a.push(flag.into());
        }
    }
    if host.is_root {
        // The system's own package cache, always the real /var (mkosi only
        // allows CacheOnly=metadata without a cache directory for exactly it).
        a.push("--package-cache-dir=/var".into());
        a.push("--cache-only=metadata".into());
        if opts.format != OutputFormat::Directory {
            a.push("--output-mode=600".into());
        }
    }
    for d in SYSTEM_CONFIG_DIRS {
        let p = format!("{d}/mkosi-initrd");
        if host.exists(&p) {
            a.extend(["--include".into(), host.path(&p).display().to_string()]);
        }
    }
    a.push(format!("--sandbox-tree={}", sandbox_tree.display()));
    a.extend(process_crypttab(host, scratch)?);
    match std::fs::read_to_string(host.path("/etc/kernel/cmdline")) {
        Ok(c) => a.extend(["--kernel-command-line".into(), c.trim().to_string()]),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("reading /etc/kernel/cmdline"),
    }
    a.extend(host.existing_extra_trees(VCONSOLE_CONFIG));
    if opts.show_summary {
        a.push("summary".into());
    }
    Ok(a)
}

/// Fill the sandbox tree: empty repository placeholders, then the host's
/// package manager configuration on top.
pub fn prepare_sandbox_tree(host: &Host, tree: &Path) -> Result<()> {
    for p in REPOSITORY_PLACEHOLDERS {
        let f = tree.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&f, b"").with_context(|| format!("creating {}", f.display()))?;
    }
    for p in PACKAGE_MANAGER_CONFIG {
        let src = host.path(p);
        if std::fs::metadata(&src).is_err() {
            continue;
        }
        let dst = tree.join(p.trim_start_matches('/'));
        copy_config(&src, &dst, host.is_root)
            .with_context(|| format!("copying {} into the sandbox tree", src.display()))?;
    }
    Ok(())
}

/// Copy host configuration: files are dereferenced at the top, symlinks
/// inside directories are kept. gpg-agent sockets (`S.*`) are skipped, and
/// without root so is the (unreadable) `gnupg` keyring directory.
fn copy_config(src: &Path, dst: &Path, is_root: bool) -> std::io::Result<()> {
    let md = std::fs::metadata(src)?;
    if md.is_file() {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::symlink_metadata(dst).is_ok_and(|m| m.is_file() || m.file_type().is_symlink()) {
            std::fs::remove_file(dst)?;
        }
        std::fs::copy(src, dst)?;
        return Ok(());
    }
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        if (is_root && n.starts_with("S.")) || (!is_root && n == "gnupg") {
            continue;
        }
        let (from, to) = (e.path(), dst.join(&name));
        let ft = e.file_type()?;
        if ft.is_symlink() {
            if std::fs::symlink_metadata(&to).is_ok() {
                std::fs::remove_file(&to)?;
            }
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_dir() {
            copy_config(&from, &to, is_root)?;
        } else if ft.is_file() {
            if std::fs::symlink_metadata(&to).is_ok() {
                std::fs::remove_file(&to)?;
            }
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// Copy the built output `staging/<name>` (dereferenced: mkosi links the
/// name to the real file) to `<dir>/<name>.new`, then move it over
/// `<dir>/<name>`.
pub fn finalize(staging: &Path, name: &str, output_dir: &Path, is_root: bool) -> Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(if is_root { 0o700 } else { 0o777 })
        .create(output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    let built = staging.join(name);
    let src = std::fs::canonicalize(&built).with_context(|| format!("{} was not built", built.display()))?;
    let tmp = output_dir.join(format!("{name}.new"));
    let fin = output_dir.join(name);
    remove_any(&tmp)?;
    notice(&format!("Copying {} to {}", src.display(), tmp.display()));
    if let Err(e) = copy_output(&src, &tmp) {
        let _ = remove_any(&tmp);
        return Err(e);
    }
    notice(&format!("Moving {} to {}", tmp.display(), fin.display()));
    if std::fs::symlink_metadata(&fin).is_ok_and(|m| m.is_dir()) {
        remove_any(&fin)?;
    }
    std::fs::rename(&tmp, &fin).with_context(|| format!("moving {} to {}", tmp.display(), fin.display()))?;
    Ok(fin)
}

fn copy_output(src: &Path, dst: &Path) -> Result<()> {
    if src.is_dir() {
        let status = Command::new("cp")
            .args(["--archive", "--reflink=auto", "--no-target-directory"])
            .arg(src)
            .arg(dst)
            .status()
            .context("running cp")?;
        if !status.success() {
            bail!("copying {} to {} failed ({status})", src.display(), dst.display());
        }
        return Ok(());
    }
    std::fs::copy(src, dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// Remove a file or directory tree if it exists, even with read-only directories inside.
fn remove_any(p: &Path) -> Result<()> {
    let Ok(md) = std::fs::symlink_metadata(p) else { return Ok(()) };
    if !md.is_dir() {
        return std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()));
    }
    if std::fs::remove_dir_all(p).is_ok() {
        return Ok(());
    }
    make_writable(p);
    std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
}

fn make_writable(p: &Path) {
    let Ok(md) = std::fs::symlink_metadata(p) else { return };
    if !md.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(md.permissions().mode() | 0o700));
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            make_writable(&e.path());
        }
    }
}

/// A private scratch directory removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new() -> Result<Scratch> {
        let base = std::env::temp_dir();
        let mut seed = std::process::id() as u64;
        for _ in 0..64 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(u64::from(nanos) | 1);
            let p = base.join(format!("mkosi-initrd-{:012x}", seed & 0xffff_ffff_ffff));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(Scratch(p)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
            }
        }
        bail!("cannot create a scratch directory in {}", base.display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_any(&self.0);
    }
}

fn notice(msg: &str) {
    eprintln!("‣ {msg}");
}

fn warn(msg: &str) {
    eprintln!("‣ Warning: {msg}");
}

/// The name of the host's `dnf` (dnf5 or dnf4) for `$MKOSI_DNF`, so that
/// mkosi prefers the one whose cache is likely populated.
fn host_dnf() -> Option<OsString> {
    let path = std::env::var_os("PATH")?;
    let dnf = std::env::split_paths(&path).map(|d| d.join("dnf")).find(|p| p.is_file())?;
    std::fs::canonicalize(dnf).ok()?.file_name().map(|n| n.to_os_string())
}

/// Run `mkosi-initrd` with `args` (without argv\[0\]).
pub fn main(args: &[OsString]) -> Result<()> {
    let host = Host::system();
    tool_main(parse(args, &host.kernel_release), MANUAL, "MKOSI-INITRD", |o| o.show_documentation, |o| run(o, &host))
}

/// Build the initrd `opts` describes on `host`.
pub fn run(opts: &Options, host: &Host) -> Result<()> {
    let modulesd = host.path(&format!("/usr/lib/modules/{}", opts.kernel_version));
    if !is_valid_modulesd(&modulesd) {
        bail!("Invalid kernel directory: {}", modulesd.display());
    }
    let cwd = std::env::current_dir().context("cannot determine the current directory")?;
    let output_dir = opts.output_dir.as_ref().map(|d| cwd.join(d)).unwrap_or_else(|| cwd.clone());

    let scratch = Scratch::new()?;
    let staging = scratch.0.join("staging");
    let sandbox = scratch.0.join("sandbox");
    let generated = scratch.0.join("generated");
    for d in [&staging, &sandbox, &generated] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    prepare_sandbox_tree(host, &sandbox)?;
    let args = mkosi_args(opts, host, &staging, &sandbox, &generated)?;
    if opts.debug {
        notice(&format!("Running mkosi {}", args.join(" ")));
    }

    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("mkosi").args(&args);
    if let Some(dnf) = host_dnf() {
        cmd.env("MKOSI_DNF", dnf);
    }
    let status = cmd.status().context("running mkosi")?;
    if !status.success() {
        return Err(crate::Exit(status.code().map(|c| c.clamp(1, 255) as u8).unwrap_or(1)).into());
    }
    if !opts.show_summary {
        finalize(&staging, &opts.output, &output_dir, host.is_root)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn build(s: &[&str]) -> Options {
        match parse(&argv(s), "6.1.0-test") {
            Ok(Invocation::Build(o)) => o,
            other => panic!("{s:?}: {other:?}"),
        }
    }

    fn defaults() -> Options {
        Options {
            kernel_version: "6.1.0-test".into(),
            format: OutputFormat::Cpio,
            output: "initrd".into(),
            output_dir: None,
            generic: false,
            profiles: vec![],
            kernel_image: None,
            debug: false,
            debug_shell: false,
            debug_sandbox: false,
            show_documentation: false,
            show_summary: false,
        }
    }

    #[test]
    fn option_parsing() {
        type Case = (&'static [&'static str], fn(&mut Options));
        let cases: &[Case] = &[
            (&[], |_| {}),
            (&["-k", "6.12.0"], |o| o.kernel_version = "6.12.0".into()),
            (&["--kernel-version=6.12.0"], |o| o.kernel_version = "6.12.0".into()),
            (&["-t", "uki"], |o| o.format = OutputFormat::Uki),
            (&["--format", "directory"], |o| o.format = OutputFormat::Directory),
            (&["-o", "uki.efi"], |o| o.output = "uki.efi".into()),
            (&["--output=x"], |o| o.output = "x".into()),
            (&["-O", "/boot"], |o| o.output_dir = Some("/boot".into())),
            (&["--output-dir=out"], |o| o.output_dir = Some("out".into())),
            (&["-g"], |o| o.generic = true),
            (&["--generic"], |o| o.generic = true),
            (&["--profile", "lvm", "--profile=raid"], |o| o.profiles = vec![InitrdProfile::Lvm, InitrdProfile::Raid]),
            (&["--kernel-image", "/boot/vmlinuz"], |o| o.kernel_image = Some("/boot/vmlinuz".into())),
            (&["--debug", "--debug-shell", "--debug-sandbox"], |o| {
                o.debug = true;
                o.debug_shell = true;
                o.debug_sandbox = true;
            }),
            (&["-D"], |o| o.show_documentation = true),
            (&["--show-summary"], |o| o.show_summary = true),
            (&["-S"], |o| o.show_summary = true),
            (&["-k", "1", "-k", "2"], |o| o.kernel_version = "2".into()),
        ];
        for (args, edit) in cases {
            let mut want = defaults();
            edit(&mut want);
            assert_eq!(build(args), want, "{args:?}");
        }
    }

    #[test]
    fn option_errors() {
        for bad in [
            &["--format=disk"][..],
            &["--profile=bogus"],
            &["--kernel-version=../../etc"],
            &["-k", ""],
            &["-o", "a/b"],
            &["--unknown"],
            &["extra-argument"],
        ] {
            assert!(parse(&argv(bad), "6.1").is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse(&argv(&["--version"]), "6.1").unwrap(), Invocation::Version);
        match parse(&argv(&["-h"]), "6.1").unwrap() {
            Invocation::Help(h) => {
                assert!(h.contains("--kernel-version"), "{h}");
                assert!(h.contains("mkosi-initrd [options...]"), "{h}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A fake host: kernel modules (with a weak-updates link), firmware,
    /// apt configuration with a gpg socket, system config dirs, crypttab
    /// with a key file, kernel command line, keyboard configuration and
    /// networkd/mdadm configuration.
    fn fake_host(d: &Path) -> Host {
        let w = |p: &str, s: &str| {
            let f = d.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        w("usr/lib/modules/6.1.0-test/modules.dep", "");
        w("usr/lib/modules/6.1.0-test/kernel/fs/ext4.ko", "");
        w("usr/lib/modules/6.1.0-old/extra/vendor.ko.xz", "");
        std::fs::create_dir_all(d.join("usr/lib/modules/6.1.0-test/weak-updates/vendor")).unwrap();
        std::os::unix::fs::symlink(
            "../../../6.1.0-old/extra/vendor.ko.xz",
            d.join("usr/lib/modules/6.1.0-test/weak-updates/vendor/vendor.ko.xz"),
        )
        .unwrap();
        w("usr/lib/firmware/amd-ucode/microcode_amd.bin", "");
        w("etc/apt/sources.list.d/debian.sources", "Types: deb\n");
        w("etc/apt/trusted.gpg.d/S.gpg-agent", "socket stand-in");
        std::os::unix::fs::symlink("debian.sources", d.join("etc/apt/sources.list.d/link.sources")).unwrap();
        w("usr/lib/mkosi-initrd/mkosi.conf", "");
        w("etc/mkosi-initrd/mkosi.conf", "");
        w(
            "etc/crypttab",
            "# comment x-initrd.attach\nroot UUID=1 none luks,x-initrd.attach\nhome UUID=2 /etc/home.key luks\n\
             swap UUID=3 /etc/swap.key luks,x-initrd.attach\n#old UUID=4 none x-initrd.attach\n",
        );
        w("etc/cryptsetup-keys.d/root.key", "k");
        w("etc/swap.key", "k");
        w("etc/kernel/cmdline", "quiet rw\n");
        w("etc/default/keyboard", "XKBLAYOUT=us\n");
        w("etc/systemd/network/10-eth.network", "");
        w("etc/mdadm/mdadm.conf", "");
        Host { root: d.to_path_buf(), is_root: true, kernel_release: "6.1.0-test".into() }
    }

    #[test]
    fn mkosi_command_line() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let host = fake_host(&root);
        let (staging, sandbox, scratch) = (Path::new("/s/staging"), Path::new("/s/sandbox"), root.join("gen"));
        std::fs::create_dir(&scratch).unwrap();
        let r = root.display().to_string();

        let opts = Options {
            profiles: vec![InitrdProfile::Network, InitrdProfile::Raid],
            kernel_image: Some("/boot/vmlinuz-6.1.0-test".into()),
            debug: true,
            ..defaults()
        };
        let got = mkosi_args(&opts, &host, staging, sandbox, &scratch).unwrap();
        let want: Vec<String> = [
            "--force".to_string(),
            "--directory=".into(),
            "--format=cpio".into(),
            "--output=initrd".into(),
            "--output-directory=/s/staging".into(),
            format!("--extra-tree={r}/usr/lib/modules/6.1.0-test:/usr/lib/modules/6.1.0-test"),
            format!("--extra-tree={r}/usr/lib/firmware:/usr/lib/firmware"),
            "--remove-files=/usr/lib/firmware/*-ucode".into(),
            "--build-sources=".into(),
            "--include=mkosi-initrd".into(),
            "--kernel-modules=host".into(),
            format!(
                "--extra-tree={r}/usr/lib/modules/6.1.0-old/extra/vendor.ko.xz:/usr/lib/modules/6.1.0-old/extra/vendor.ko.xz"
            ),
            "--profile".into(),
            "network".into(),
            format!("--extra-tree={r}/etc/systemd/network:/etc/systemd/network"),
            "--profile".into(),
            "raid".into(),
            format!("--extra-tree={r}/etc/mdadm/mdadm.conf:/etc/mdadm/mdadm.conf"),
            "--extra-tree=/boot/vmlinuz-6.1.0-test:/usr/lib/modules/6.1.0-test/vmlinuz".into(),
            "--debug".into(),
            "--package-cache-dir=/var".into(),
            "--cache-only=metadata".into(),
            "--output-mode=600".into(),
            "--include".into(),
            format!("{r}/usr/lib/mkosi-initrd"),
            "--include".into(),
            format!("{r}/etc/mkosi-initrd"),
            "--sandbox-tree=/s/sandbox".into(),
            format!("--extra-tree={}/crypttab:/etc/crypttab", scratch.display()),
            format!("--extra-tree={r}/etc/cryptsetup-keys.d/root.key:/etc/cryptsetup-keys.d/root.key"),
            format!("--extra-tree={r}/etc/swap.key:/etc/swap.key"),
            "--kernel-command-line".into(),
            "quiet rw".into(),
            format!("--extra-tree={r}/etc/default/keyboard:/etc/default/keyboard"),
        ]
        .to_vec();
        assert_eq!(got, want);

        let crypttab = std::fs::read_to_string(scratch.join("crypttab")).unwrap();
        assert_eq!(
            crypttab,
            "# Automatically generated by mkosi-initrd\nroot UUID=1 none luks,x-initrd.attach\n\
             swap UUID=3 /etc/swap.key luks,x-initrd.attach\n"
        );
    }

    #[test]
    fn mkosi_command_line_variants() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("usr/lib/modules/6.1.0-test")).unwrap();
        std::fs::write(root.join("usr/lib/modules/6.1.0-test/modules.dep.bin"), "").unwrap();
        let scratch = root.join("gen");
        std::fs::create_dir(&scratch).unwrap();
        let (staging, sandbox) = (Path::new("/st"), Path::new("/sb"));

        // A bare host, unprivileged, generic UKI with a summary: no firmware,
        // no host modules, no package cache or output mode, no host config.
        let host = Host { root: root.clone(), is_root: false, kernel_release: "x".into() };
        let opts = Options {
            format: OutputFormat::Uki,
            output: "uki.efi".into(),
            generic: true,
            show_summary: true,
            ..defaults()
        };
        let got = mkosi_args(&opts, &host, staging, sandbox, &scratch).unwrap();
        let r = root.display();
        assert_eq!(
            got,
            vec![
                "--force".to_string(),
                "--directory=".into(),
                "--format=uki".into(),
                "--output=uki.efi".into(),
                "--output-directory=/st".into(),
                format!("--extra-tree={r}/usr/lib/modules/6.1.0-test:/usr/lib/modules/6.1.0-test"),
                "--remove-files=/usr/lib/firmware/*-ucode".into(),
                "--build-sources=".into(),
                "--include=mkosi-initrd".into(),
                "--sandbox-tree=/sb".into(),
                "summary".into(),
            ]
        );

        // As root, a directory output gets no --output-mode.
        let host = Host { is_root: true, ..host };
        let opts = Options { format: OutputFormat::Directory, ..defaults() };
        let got = mkosi_args(&opts, &host, staging, sandbox, &scratch).unwrap();
        assert!(got.contains(&"--cache-only=metadata".to_string()), "{got:?}");
        assert!(!got.iter().any(|a| a.starts_with("--output-mode")), "{got:?}");
        assert!(got.contains(&"--kernel-modules=host".to_string()), "{got:?}");
    }

    #[test]
    fn modules_directory_validation() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("6.1");
        assert!(!is_valid_modulesd(&k));
        std::fs::create_dir(&k).unwrap();
        assert!(!is_valid_modulesd(&k), "no modules.dep");
        std::fs::write(k.join("modules.dep.bin"), "").unwrap();
        assert!(is_valid_modulesd(&k));
    }

    #[test]
    fn sandbox_tree_has_placeholders_and_host_config() {
        let d = tempfile::tempdir().unwrap();
        let host = fake_host(&d.path().join("host"));
        let tree = d.path().join("tree");
        prepare_sandbox_tree(&host, &tree).unwrap();
        for p in REPOSITORY_PLACEHOLDERS {
            assert_eq!(std::fs::read(tree.join(p)).unwrap(), b"", "{p}");
        }
        assert_eq!(
            std::fs::read_to_string(tree.join("etc/apt/sources.list.d/debian.sources")).unwrap(),
            "Types: deb\n"
        );
        assert_eq!(
            std::fs::read_link(tree.join("etc/apt/sources.list.d/link.sources")).unwrap(),
            Path::new("debian.sources")
        );
        assert!(!tree.join("etc/apt/trusted.gpg.d/S.gpg-agent").exists(), "gpg sockets are skipped as root");
        assert!(!tree.join("etc/dnf").exists());

        // A host mkosi.sources replaces the placeholder.
        std::fs::write(host.path("/etc/apt/sources.list.d/mkosi.sources"), "host\n").unwrap();
        prepare_sandbox_tree(&host, &tree).unwrap();
        assert_eq!(std::fs::read_to_string(tree.join("etc/apt/sources.list.d/mkosi.sources")).unwrap(), "host\n");
    }

    #[test]
    fn crypttab_without_initrd_entries() {
        let d = tempfile::tempdir().unwrap();
        let host = Host { root: d.path().to_path_buf(), is_root: true, kernel_release: "x".into() };
        assert!(process_crypttab(&host, d.path()).unwrap().is_empty(), "no crypttab");
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/crypttab"), "data UUID=1 none luks\n").unwrap();
        assert!(process_crypttab(&host, d.path()).unwrap().is_empty());
        assert!(!d.path().join("crypttab").exists());
    }

    #[test]
    fn finalize_copies_atomically() {
        let d = tempfile::tempdir().unwrap();
        let staging = d.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("initrd.cpio.zst"), "new").unwrap();
        std::os::unix::fs::symlink("initrd.cpio.zst", staging.join("initrd")).unwrap();
        let out = d.path().join("out/nested");
        let fin = finalize(&staging, "initrd", &out, true).unwrap();
        assert_eq!(fin, out.join("initrd"));
        let md = std::fs::symlink_metadata(&fin).unwrap();
        assert!(md.is_file(), "the output is dereferenced");
        assert_eq!(std::fs::read_to_string(&fin).unwrap(), "new");
        assert!(!out.join("initrd.new").exists());
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o700);

        // Replacing an existing output, and a directory output.
        std::fs::write(staging.join("initrd.cpio.zst"), "newer").unwrap();
        finalize(&staging, "initrd", &out, true).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("initrd")).unwrap(), "newer");
        std::fs::create_dir_all(staging.join("tree/etc")).unwrap();
        std::fs::write(staging.join("tree/etc/initrd-release"), "ID=x\n").unwrap();
        finalize(&staging, "tree", &out, true).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("tree/etc/initrd-release")).unwrap(), "ID=x\n");

        assert!(finalize(&staging, "missing", &out, true).is_err());
    }
}
