//! apt/dpkg: configuration in the sandbox tree, the apt-get command line,
//! installs, removals, metadata sync, the debootstrap-like bootstrap and
//! local repositories.

use std::path::{Path, PathBuf};

use mkosi_config::enums::Feature;
use mkosi_config::Config;
use mkosi_sandbox::run::{self, Cmd, Sink};
use mkosi_sandbox::{FsOp, Options};

use crate::debian::{self, AptRepository};
use crate::{io, DistroError, PmEnv, Result};

/// Paths excluded from packages with `WithDocs=no`.
pub const DOC_EXCLUDES: &[&str] =
    &["usr/share/doc/*", "usr/share/man/*", "usr/share/groff/*", "usr/share/gtk-doc/*", "usr/share/info/*"];

/// The apt source of the local package repository (mounted at `/repository`).
pub const LOCAL_SOURCES: &str = "Enabled: yes\nTypes: deb\nURIs: file:///repository\nSuites: ./\nTrusted: yes\n";

/// Packages from the local repository (which has no origin) win over all others.
pub const LOCAL_PREFERENCES: &str = "Package: *\nPin: origin \"\"\nPin-Priority: 1100\n";

/// Whether a file name is a package apt can install from a local repository.
pub fn is_package_file(name: &str) -> bool {
    name.ends_with(".deb") || name.ends_with(".ddeb")
}

/// The package files directly in `dir`, sorted by name.
pub fn local_packages(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("reading", dir))? {
        let entry = entry.map_err(io("reading", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_package_file(&name) && !name.starts_with('.') && !entry.path().is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

pub struct Apt<'a> {
    pub config: &'a Config,
    pub env: &'a PmEnv,
}

fn bind(src: impl Into<PathBuf>, dst: impl Into<PathBuf>, readonly: bool, required: bool) -> FsOp {
    FsOp::Bind { src: src.into(), dst: dst.into(), readonly, required, relative: false, nofollow: false }
}

/// API file systems inside the image root for maintainer scripts.
pub fn apivfs_ops(root: &Path) -> Vec<FsOp> {
    vec![
        FsOp::Tmpfs { dst: root.join("run") },
        FsOp::Tmpfs { dst: root.join("tmp") },
        bind("/proc", root.join("proc"), false, true),
        FsOp::Dev { dst: root.join("dev"), tty: None },
        FsOp::Dir { dst: root.join("run/user/0") },
        FsOp::Write { data: b"mkosi".to_vec(), dst: root.join("run/host/container-manager") },
    ]
}

impl<'a> Apt<'a> {
    pub fn new(config: &'a Config, env: &'a PmEnv) -> Apt<'a> {
        Apt { config, env }
    }

    fn arch(&self) -> Result<String> {
        crate::architecture(self.config.distribution(), self.config.architecture())
    }

    /// Write apt's configuration into the sandbox tree (unless the user's
    /// sandbox trees already provide `mkosi.sources`).
    pub fn setup(&self) -> Result<()> {
        let tree = &self.env.sandbox_tree;
        for d in ["etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d"] {
            std::fs::create_dir_all(tree.join(d)).map_err(io("creating", tree.join(d)))?;
        }
        let conf = tree.join("etc/apt.conf");
        if !conf.exists() {
            std::fs::write(&conf, "Dir::Etc \"/etc/apt\";\n").map_err(io("writing", &conf))?;
        }
        let sources = tree.join("etc/apt/sources.list.d/mkosi.sources");
        if !sources.exists() {
            let repos = debian::repositories(self.config, false);
            let mut text = String::new();
            for r in &repos {
                if let Some(key) = &r.signed_by {
                    if !key.exists() && !tree.join(key.strip_prefix("/").unwrap_or(key)).exists() {
                        return Err(DistroError::Config(format!(
                            "Keyring for repo {} not found at {} (install the debian-archive-keyring, \
                             ubuntu-keyring or kali-archive-keyring package)",
                            r.url,
                            key.display()
                        )));
                    }
                }
                text.push_str(&r.render());
            }
            std::fs::write(&sources, text).map_err(io("writing", &sources))?;
        }
        Ok(())
    }

    /// The environment of apt runs.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env = self.env.environment.clone();
        let has = |env: &Vec<(String, String)>, k: &str| env.iter().any(|(n, _)| n == k);
        let mut set = |k: &str, v: &str| {
            env.retain(|(n, _)| n != k);
            env.push((k.to_string(), v.to_string()));
        };
        set("HOME", "/");
        set("SYSTEMD_IN_CHROOT", "1");
        set("APT_CONFIG", "/etc/apt.conf");
        set("DEBIAN_FRONTEND", "noninteractive");
        set("DEBCONF_INTERACTIVE_SEEN", "true");
        let base = &self.env.environment;
        if !has(base, "SYSTEMD_HWDB_UPDATE_BYPASS") {
            set("SYSTEMD_HWDB_UPDATE_BYPASS", "1");
        }
        if self.config.bootable() != Feature::Disabled {
            if !has(base, "KERNEL_INSTALL_BYPASS") {
                set("KERNEL_INSTALL_BYPASS", "1");
            }
            if !has(base, "INITRD") {
                set("INITRD", "No");
            }
        } else {
            set("BOOT_ROOT", "/boot");
            set("BOOT_MNT", "/boot");
            set("hostonly_l", "no");
        }
        env
    }

    /// `apt-get` (or `command`) with the options mkosi always passes.
    pub fn cmd(&self, command: &str) -> Result<Vec<String>> {
        let arch = self.arch()?;
        let dpkg = run::find_binary("dpkg", Path::new("/")).unwrap_or_else(|| PathBuf::from("/usr/bin/dpkg"));
        let mut c: Vec<String> = vec![command.to_string()];
        let mut o = |s: String| {
            c.push("-o".into());
            c.push(s);
        };
        o(format!("APT::Architecture={arch}"));
        o(format!("APT::Architectures={arch}"));
        o(format!("APT::Install-Recommends={}", self.config.bool("WithRecommends")));
        for opt in [
            "APT::Immediate-Configure=off",
            "APT::Get::Assume-Yes=true",
            "APT::Get::AutomaticRemove=true",
            "APT::Get::Allow-Change-Held-Packages=true",
            "APT::Get::Allow-Remove-Essential=true",
            "APT::Sandbox::User=root",
            "Acquire::AllowReleaseInfoChange=true",
            "Acquire::Check-Valid-Until=false",
            "Dir::Cache=/var/cache/apt",
            "Dir::State=/buildroot/var/lib/apt",
            "Dir::State::lists=/var/lib/apt/lists/",
            "Dir::Log=/var/log/apt",
            "Dir::State::Status=/buildroot/var/lib/dpkg/status",
        ] {
            o(opt.to_string());
        }
        o(format!("Dir::Bin::DPkg={}", dpkg.display()));
        if self.env.private_cache.is_some() {
            // The binary cache depends on the image's dpkg status: keep it in
            // memory rather than writing it for every run.
            o("Dir::Cache::pkgcache=".to_string());
        }
        for opt in [
            "Debug::NoLocking=true",
            "DPkg::Options::=--root=/buildroot",
            "DPkg::Options::=--force-unsafe-io",
            "DPkg::Options::=--force-architecture",
            "DPkg::Options::=--force-depends",
            "DPkg::Options::=--no-debsig",
            "DPkg::Use-Pty=false",
            "DPkg::Install::Recursive::Minimum=1000",
            "pkgCacheGen::ForceEssential=,",
        ] {
            o(opt.to_string());
        }
        if !self.config.bool("RepositoryKeyCheck") {
            for opt in [
                "Acquire::AllowInsecureRepositories=true",
                "Acquire::AllowDowngradeToInsecureRepositories=true",
                "APT::Get::AllowUnauthenticated=true",
            ] {
                o(opt.to_string());
            }
        }
        if !self.config.bool("WithDocs") {
            for g in DOC_EXCLUDES {
                c.push(format!("--option=DPkg::Options::=--path-exclude=/{g}"));
            }
            c.push("--option=DPkg::Options::=--path-include=/usr/share/doc/*/copyright".into());
        }
        if let Some(proxy) = self.config.str("ProxyUrl").filter(|p| !p.is_empty()) {
            c.extend(["-o".into(), format!("Acquire::http::Proxy={proxy}")]);
            c.extend(["-o".into(), format!("Acquire::https::Proxy={proxy}")]);
        }
        Ok(c)
    }

    /// The sandbox of a package manager run.
    pub fn sandbox(&self, apivfs: bool, extra: Vec<FsOp>) -> Options {
        let env = self.env;
        let mut o = env.base.clone();
        o.ops.push(bind(&env.root, "/buildroot", false, true));
        for sub in ["var/lib/ca-certificates", "etc/pki/ca-trust", "etc/pki/tls", "etc/ssl", "etc/ca-certificates"] {
            let p = Path::new("/").join(sub);
            if p.is_dir() {
                o.ops.push(bind(&p, &p, true, true));
            }
        }
        o.ops.push(bind(&env.repository, "/repository", false, true));
        if let Some(mirror) = self.config.str("LocalMirror").and_then(|m| m.strip_prefix("file://")) {
            o.ops.push(bind(mirror, mirror, true, true));
        }
        o.ops.push(bind(env.metadata_dir.join("lib/apt/lists"), "/var/lib/apt/lists", false, true));
        if let Some(private) = &env.private_cache {
            o.ops.push(bind(private, "/var/cache/apt", false, true));
        } else {
            o.ops.push(bind(env.metadata_dir.join("cache/apt"), "/var/cache/apt", false, true));
        }
        if env.private_cache.is_none() && env.metadata_dir != env.package_cache_dir {
            let archives = env.package_cache_dir.join("cache/apt/archives");
            if archives.exists() {
                o.ops.push(bind(archives, "/var/cache/apt/archives", false, true));
            }
        }
        if apivfs {
            o.ops.extend(apivfs_ops(Path::new("/buildroot")));
        }
        o.become_root = true;
        o.suppress_chown = true;
        o.suppress_sync = true;
        o.ops.push(FsOp::Bind {
            src: env.root.join("etc/machine-id"),
            dst: "/buildroot/etc/machine-id".into(),
            readonly: true,
            required: false,
            relative: false,
            nofollow: false,
        });
        o.ops.push(FsOp::Dir { dst: "/run/user/0".into() });
        if apivfs {
            for f in ["passwd", "group", "shadow", "gshadow"] {
                o.ops.push(FsOp::Symlink {
                    target: Path::new("/buildroot/etc").join(f),
                    dst: Path::new("/etc").join(f),
                });
            }
        }
        o.ops.extend(extra);
        o
    }

    /// Run `apt-get OPERATION ARGUMENTS…` on the image.
    pub fn invoke(
        &self,
        operation: &str,
        arguments: &[String],
        apivfs: bool,
        extra: Vec<FsOp>,
        stdout: Sink,
    ) -> Result<()> {
        self.invoke_with(operation, arguments, apivfs, extra, stdout, false)
    }

    fn invoke_with(
        &self,
        operation: &str,
        arguments: &[String],
        apivfs: bool,
        extra: Vec<FsOp>,
        stdout: Sink,
        quiet: bool,
    ) -> Result<()> {
        let root = &self.env.root;
        let dpkg = root.join("var/lib/dpkg");
        std::fs::create_dir_all(&dpkg).map_err(io("creating", &dpkg))?;
        for f in ["status", "available"] {
            let p = dpkg.join(f);
            if !p.exists() {
                std::fs::write(&p, b"").map_err(io("creating", &p))?;
            }
        }
        let mut argv = self.cmd("apt-get")?;
        let progress = self.env.progress.clone().filter(|_| !quiet && matches!(stdout, Sink::Inherit));
        if progress.is_some() {
            argv.extend(["-o".to_string(), "APT::Status-Fd=3".to_string()]);
        }
        argv.push(operation.to_string());
        argv.extend(arguments.iter().cloned());
        let mut cmd = Cmd::new(argv).sandbox(self.sandbox(apivfs, extra)).env(self.environment()).stdout(stdout);
        cmd.quiet = quiet;
        if let Some(p) = progress {
            // apt's own output is replaced by the progress display; errors still
            // show the last lines of its error output.
            cmd.stdout = Sink::Capture;
            cmd.quiet = true;
            cmd.status_fd = Some(run::StatusCallback(std::sync::Arc::new(move |line: &str| {
                if let Some((phase, percent, text)) = crate::parse_apt_status(line) {
                    (p.0)(phase, percent, &text);
                }
            })));
        }
        run::run(&cmd)?;
        Ok(())
    }

    /// `apt-get update`.
    pub fn sync(&self) -> Result<()> {
        self.invoke("update", &[], false, vec![], Sink::Inherit)
    }

    /// Install packages (with daemons kept from starting by `policy-rc.d`).
    pub fn install(&self, packages: &[String], apivfs: bool, allow_downgrade: bool) -> Result<()> {
        self.install_with(packages, apivfs, allow_downgrade, None)
    }

    /// [`Apt::install`]; `fsys_tars` is a directory of decompressed data archives
    /// (`<name>.deb.tar`) that dpkg reads instead of decompressing those packages again.
    fn install_with(
        &self,
        packages: &[String],
        apivfs: bool,
        allow_downgrade: bool,
        fsys_tars: Option<&Path>,
    ) -> Result<()> {
        let root = &self.env.root;
        let policy = root.join("usr/sbin/policy-rc.d");
        if let Some(parent) = policy.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::write(&policy, "#!/bin/sh\nexit 101\n").map_err(io("writing", &policy))?;
        set_mode(&policy, 0o644)?;
        let mut args = Vec::new();
        if allow_downgrade {
            args.push("--allow-downgrades".to_string());
        }
        args.extend(packages.iter().cloned());
        let r = match fsys_tars {
            Some(dir) => {
                let shim = dir.join("bin");
                std::fs::create_dir_all(&shim).map_err(io("creating", &shim))?;
                let script = shim.join("dpkg-deb");
                std::fs::write(&script, DPKG_DEB_SHIM).map_err(io("writing", &script))?;
                set_mode(&script, 0o755)?;
                // apt runs dpkg with $PATH set to DPkg::Path.
                args.insert(0, "-oDPkg::Path=/work/fsys/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
                let ops = vec![bind(dir, "/work/fsys", true, true)];
                self.invoke("install", &args, apivfs, ops, Sink::Inherit)
            }
            None => self.invoke("install", &args, apivfs, vec![], Sink::Inherit),
        };
        let _ = std::fs::remove_file(&policy);
        r?;
        let _ = std::fs::remove_file(root.join("etc/systemd/system-generators/systemd-gpt-auto-generator"));
        if packages.iter().any(|p| p == "apt") {
            self.install_sources_in_image()?;
        }
        Ok(())
    }

    /// `apt-get purge`.
    pub fn remove(&self, packages: &[String]) -> Result<()> {
        self.invoke("purge", packages, true, vec![], Sink::Inherit)
    }

    /// Turn the local package repository (`/repository`) into an apt
    /// repository: a `Packages` index from `apt-ftparchive`, a source that
    /// is trusted and pinned above every other one (so its packages win,
    /// even when older), and an `apt-get update` of just that source.
    /// Does nothing while the repository holds no packages.
    pub fn createrepo(&self) -> Result<()> {
        let repo = &self.env.repository;
        if local_packages(repo)?.is_empty() {
            return Ok(());
        }
        let inside = Path::new("/work").join(repo.strip_prefix("/").unwrap_or(repo));
        let mut options = self.env.base.clone();
        options.ops.push(bind(repo, &inside, true, true));
        options.chdir = Some(inside);
        let index = repo.join("Packages");
        run::run(&Cmd::new(["apt-ftparchive", "packages", "."]).sandbox(options).stdout(Sink::File(index)))?;

        let tree = &self.env.sandbox_tree;
        for (dir, file, text) in [
            ("etc/apt/sources.list.d", "mkosi-local.sources", LOCAL_SOURCES),
            ("etc/apt/preferences.d", "mkosi-local.pref", LOCAL_PREFERENCES),
        ] {
            let d = tree.join(dir);
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
            std::fs::write(d.join(file), text).map_err(io("writing", d.join(file)))?;
        }

        let args: Vec<String> = [
            "-o",
            "Dir::Etc::sourcelist=sources.list.d/mkosi-local.sources",
            "-o",
            "Dir::Etc::sourceparts=-",
            "-o",
            "APT::Get::List-Cleanup=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.invoke("update", &args, false, vec![], Sink::Inherit)
    }

    /// The changelog of an installed package as `apt-get changelog` prints
    /// it (from the image's `/usr/share/doc` when there, else downloaded).
    pub fn changelog(&self, package: &str) -> Result<String> {
        let mut argv = self.cmd("apt-get")?;
        argv.extend(["changelog", "--quiet", "--quiet", "-o", "Dir=/buildroot", package].map(str::to_string));
        let cmd = Cmd::new(argv).sandbox(self.sandbox(false, vec![])).env(self.environment()).stdout(Sink::Capture);
        let out = run::run(&cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Write the image's own sources (default mirror) when apt is installed.
    fn install_sources_in_image(&self) -> Result<()> {
        let p = self.env.root.join(format!("etc/apt/sources.list.d/{}.sources", self.config.release()));
        if p.exists() {
            return Ok(());
        }
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let text: String = debian::repositories(self.config, true).iter().map(AptRepository::render).collect();
        std::fs::write(&p, text).map_err(io("writing", &p))
    }

    /// Install the essential set from scratch, like debootstrap: set up
    /// merged /usr, download the essential packages, extract them so
    /// maintainer scripts find a shell and coreutils, then install them
    /// properly. `workdir` is a scratch directory on the host.
    /// `prepare` runs after the essential packages are extracted and before
    /// they are installed together with `packages`, in one apt run.
    pub fn bootstrap(
        &self,
        workdir: &Path,
        packages: &[String],
        prepare: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<String>> {
        let root = &self.env.root;
        let arch = self.arch()?;
        for d in debian::merged_usr_dirs(&arch) {
            let link = root.join(d);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("usr/{d}"), &link).map_err(io("creating", &link))?;
            }
            let target = root.join("usr").join(d);
            std::fs::create_dir_all(&target).map_err(io("creating", &target))?;
        }

        let list = workdir.join("essential.list");
        std::fs::write(&list, b"").map_err(io("creating", &list))?;
        // With Debug::pkgDPkgPm apt only prints the dpkg calls it would make
        // (on stderr, which is kept quiet); the hook writes the .deb paths.
        self.invoke_with(
            "install",
            &[
                "-oDebug::pkgDPkgPm=1".to_string(),
                "-oDPkg::Pre-Install-Pkgs::=cat >/work/essential.list".to_string(),
                format!("?essential ?architecture({arch})"),
                "base-files".to_string(),
            ],
            false,
            vec![bind(&list, "/work/essential.list", false, true)],
            Sink::Null,
            true,
        )?;
        let text = std::fs::read_to_string(&list).map_err(io("reading", &list))?;
        let debs: Vec<PathBuf> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let p = Path::new(l);
                let private =
                    self.env.private_cache.as_deref().and_then(|c| Some((c, p.strip_prefix("/var/cache/apt").ok()?)));
                if let Some((cache, rel)) = private {
                    cache.join(rel)
                } else if let Ok(rel) = p.strip_prefix("/var/cache") {
                    self.env.package_cache_dir.join("cache").join(rel)
                } else if let Ok(rel) = p.strip_prefix("/repository") {
                    self.env.repository.join(rel)
                } else {
                    p.to_path_buf()
                }
            })
            .collect();
        if debs.is_empty() {
            return Err(DistroError::Config(
                "apt did not select any essential packages; are the repositories reachable and correct?".into(),
            ));
        }

        // The decompressed data archives are kept for dpkg, which unpacks these packages
        // again when the main apt run configures them (through the dpkg-deb shim).
        let tars = workdir.join("fsys");
        std::fs::create_dir_all(&tars).map_err(io("creating", &tars))?;
        crate::deb::extract_all(&debs, root, !self.config.bool("WithDocs"), Some(&tars))?;
        prepare()?;

        let mut names: Vec<String> = debs
            .iter()
            .filter_map(|d| d.file_name())
            .map(|n| {
                let n = n.to_string_lossy();
                n.split('_').next().unwrap_or(&n).trim_end_matches(".deb").to_string()
            })
            .collect();
        // One apt run configures the essential set and installs the requested
        // packages; apt orders the maintainer scripts.
        names.extend(packages.iter().cloned());
        self.install_with(&names, true, false, Some(&tars))?;
        let _ = std::fs::remove_dir_all(&tars);
        debian::fixup_os_release(root, self.config.release()).map_err(io("fixing os-release in", root))?;
        Ok(names)
    }
}

/// `dpkg-deb` as dpkg sees it during the bootstrap's apt run: the data archive of a
/// package extracted before is printed from the kept decompressed copy
/// (`/work/fsys/<file name>.tar`), everything else goes to the real dpkg-deb.
const DPKG_DEB_SHIM: &str = r#"#!/bin/sh
if [ "$#" -eq 2 ] && [ "$1" = "--fsys-tarfile" ]; then
    tar="/work/fsys/${2##*/}.tar"
    if [ -f "$tar" ]; then
        exec cat "$tar"
    fi
fi
exec /usr/bin/dpkg-deb "$@"
"#;

/// The downloaded packages directly in `dir` (regular files named `*.deb`).
fn cached_debs(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("reading", dir))? {
        let entry = entry.map_err(io("reading", dir))?;
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if !text.ends_with(".deb") || text.starts_with('.') {
            continue;
        }
        if entry.file_type().map_err(io("reading", entry.path()))?.is_file() {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// Set up `private` as the apt cache directory (`/var/cache/apt`) of a build
/// that runs while another build uses the shared caches: `archives/` holds
/// hard links of the packages in `shared_archives` (so nothing is downloaded
/// twice, and the other build's apt never sees this one's partial
/// downloads), and the source package cache of `shared_cache` is copied (apt
/// may rewrite it; the shared one stays untouched). `private` must be on the
/// file system of `shared_archives`.
pub fn prepare_private_cache(shared_cache: &Path, shared_archives: &Path, private: &Path) -> Result<()> {
    let archives = private.join("archives");
    let partial = archives.join("partial");
    std::fs::create_dir_all(&partial).map_err(io("creating", &partial))?;
    if shared_archives.is_dir() {
        for (name, path) in cached_debs(shared_archives)? {
            let dst = archives.join(&name);
            match std::fs::hard_link(&path, &dst) {
                Ok(()) => {}
                // Removed in the meantime (or already there): apt downloads it again if needed.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::AlreadyExists) => {}
                Err(e) => return Err(io("linking", &dst)(e)),
            }
        }
    }
    let src = shared_cache.join("srcpkgcache.bin");
    if src.is_file() {
        let dst = private.join("srcpkgcache.bin");
        std::fs::copy(&src, &dst).map_err(io("copying", &src))?;
    }
    Ok(())
}

/// Hand the packages a private cache ([`prepare_private_cache`]) downloaded
/// to the shared cache: each `.deb` of `private_archives` missing in
/// `shared_archives` is hard-linked there. `link()` never replaces a file,
/// so a package the other build stored meanwhile is kept, and no reader ever
/// sees a partial file. Returns the number of packages added.
pub fn link_back_archives(private_archives: &Path, shared_archives: &Path) -> Result<usize> {
    if !private_archives.is_dir() {
        return Ok(0);
    }
    std::fs::create_dir_all(shared_archives).map_err(io("creating", shared_archives))?;
    let mut added = 0;
    for (name, path) in cached_debs(private_archives)? {
        let dst = shared_archives.join(&name);
        if std::fs::symlink_metadata(&dst).is_ok() {
            continue;
        }
        match std::fs::hard_link(&path, &dst) {
            Ok(()) => added += 1,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("linking", &dst)(e)),
        }
    }
    Ok(added)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_repository_files() {
        assert!(is_package_file("foo_1.0_all.deb"));
        assert!(is_package_file("foo-dbgsym_1.0_amd64.ddeb"));
        assert!(!is_package_file("foo.rpm"));
        assert!(!is_package_file("Packages"));

        let dir = tempfile::tempdir().unwrap();
        for f in ["b_1_all.deb", "a_1_all.deb", "c.ddeb", ".hidden.deb", "Packages", "x.rpm"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("dir.deb")).unwrap();
        let names: Vec<String> = local_packages(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a_1_all.deb", "b_1_all.deb", "c.ddeb"]);
    }

    #[test]
    fn private_cache_links_packages_both_ways() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared/cache/apt");
        let archives = shared.join("archives");
        std::fs::create_dir_all(archives.join("partial")).unwrap();
        std::fs::write(archives.join("a_1_amd64.deb"), b"a").unwrap();
        std::fs::write(archives.join("partial/b_1_amd64.deb"), b"half").unwrap();
        std::fs::write(archives.join("lock"), b"").unwrap();
        std::fs::write(shared.join("srcpkgcache.bin"), b"cache").unwrap();

        let private = dir.path().join("ws/apt-cache");
        prepare_private_cache(&shared, &archives, &private).unwrap();
        let pa = private.join("archives");
        assert!(pa.join("partial").is_dir());
        // Linked, not copied; partial downloads and other files stay out.
        assert_eq!(
            std::fs::metadata(pa.join("a_1_amd64.deb")).unwrap().ino(),
            std::fs::metadata(archives.join("a_1_amd64.deb")).unwrap().ino()
        );
        assert!(!pa.join("partial/b_1_amd64.deb").exists());
        assert!(!pa.join("lock").exists());
        // The source cache is a copy: rewriting it leaves the shared one alone.
        std::fs::write(private.join("srcpkgcache.bin"), b"rewritten").unwrap();
        assert_eq!(std::fs::read(shared.join("srcpkgcache.bin")).unwrap(), b"cache");

        // New downloads go back; what the shared cache got meanwhile is kept.
        std::fs::write(pa.join("c_1_amd64.deb"), b"c").unwrap();
        std::fs::write(pa.join("d_1_amd64.deb"), b"private d").unwrap();
        std::fs::write(archives.join("d_1_amd64.deb"), b"shared d").unwrap();
        std::fs::write(pa.join("partial/e_1_amd64.deb"), b"half").unwrap();
        assert_eq!(link_back_archives(&pa, &archives).unwrap(), 1);
        assert_eq!(std::fs::read(archives.join("c_1_amd64.deb")).unwrap(), b"c");
        assert_eq!(std::fs::read(archives.join("d_1_amd64.deb")).unwrap(), b"shared d");
        assert!(!archives.join("partial/e_1_amd64.deb").exists());
        // Removing the private cache (the workspace) keeps the linked packages.
        std::fs::remove_dir_all(&private).unwrap();
        assert_eq!(std::fs::read(archives.join("c_1_amd64.deb")).unwrap(), b"c");
        assert_eq!(link_back_archives(&pa, &archives).unwrap(), 0);
    }

    #[test]
    fn private_cache_is_mounted_and_used() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_values([("Distribution".to_string(), serde_json::json!("debian"))]);
        let mut env = PmEnv {
            root: dir.path().join("root"),
            sandbox_tree: dir.path().join("sandbox"),
            metadata_dir: dir.path().join("meta"),
            package_cache_dir: dir.path().join("pkgcache"),
            repository: dir.path().join("repo"),
            base: Options::default(),
            environment: vec![],
            progress: None,
            private_cache: None,
        };
        let mounts = |env: &PmEnv| -> Vec<(PathBuf, PathBuf)> {
            Apt::new(&config, env)
                .sandbox(false, vec![])
                .ops
                .into_iter()
                .filter_map(|op| match op {
                    FsOp::Bind { src, dst, .. } if dst.starts_with("/var/cache/apt") => Some((src, dst)),
                    _ => None,
                })
                .collect()
        };
        std::fs::create_dir_all(dir.path().join("pkgcache/cache/apt/archives")).unwrap();
        assert_eq!(
            mounts(&env),
            vec![
                (dir.path().join("meta/cache/apt"), PathBuf::from("/var/cache/apt")),
                (dir.path().join("pkgcache/cache/apt/archives"), PathBuf::from("/var/cache/apt/archives")),
            ]
        );
        let argv = Apt::new(&config, &env).cmd("apt-get").unwrap();
        assert!(!argv.iter().any(|a| a.starts_with("Dir::Cache::pkgcache")));

        env.private_cache = Some(dir.path().join("ws/apt-cache"));
        assert_eq!(mounts(&env), vec![(dir.path().join("ws/apt-cache"), PathBuf::from("/var/cache/apt"))]);
        let argv = Apt::new(&config, &env).cmd("apt-get").unwrap();
        assert!(argv.iter().any(|a| a == "Dir::Cache::pkgcache="), "{argv:?}");
    }

    #[test]
    fn local_repository_configuration() {
        assert_eq!(LOCAL_SOURCES, "Enabled: yes\nTypes: deb\nURIs: file:///repository\nSuites: ./\nTrusted: yes\n");
        assert_eq!(LOCAL_PREFERENCES, "Package: *\nPin: origin \"\"\nPin-Priority: 1100\n");
    }
}
