//! The local package repository: packages from `PackageDirectories=`,
//! `VolatilePackageDirectories=` and the run-wide `$PACKAGEDIR` are copied
//! into the workspace's repository directory (mounted at `/repository` for
//! the package manager), which is turned into a repository the package
//! manager prefers over all others. `VolatilePackages=` are installed from
//! it (or the distribution) after the build scripts.

use std::path::{Path, PathBuf};

use mkosi_distro::apt::{self, Apt};

use crate::context::Context;
use crate::error::{io, Result};
use crate::log;
use crate::pipeline::pm_env;

/// Whether the build needs the local repository (upstream's `wantrepo`):
/// something installs packages, or scripts may do so.
pub fn wanted(config: &mkosi_config::Config, cached: bool) -> bool {
    let nonempty = |f: &str| !config.list(f).is_empty();
    (!cached && (nonempty("Packages") || nonempty("BuildPackages") || nonempty("PrepareScripts")))
        || nonempty("VolatilePackages")
        || nonempty("PostInstallationScripts")
        || nonempty("FinalizeScripts")
}

/// The repository directory's modification time and its entries (name, size).
type Fingerprint = (Option<std::time::SystemTime>, Vec<(String, u64)>);

/// What identifies the repository's content: the directory's modification
/// time and its entries (a replaced file does not change the former).
fn fingerprint(repo: &Path) -> Result<Fingerprint> {
    let mtime = std::fs::metadata(repo).map_err(io("reading", repo))?.modified().ok();
    let mut entries = Vec::new();
    for e in std::fs::read_dir(repo).map_err(io("reading", repo))? {
        let e = e.map_err(io("reading", repo))?;
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        entries.push((e.file_name().to_string_lossy().into_owned(), len));
    }
    entries.sort();
    Ok((mtime, entries))
}

/// The package files of the given directories (empty and missing ones skipped).
pub fn package_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            continue;
        }
        out.extend(apt::local_packages(d)?);
    }
    Ok(out)
}

/// Copy the packages of `dirs` into the repository directory.
fn install_package_directories(ctx: &Context, dirs: &[PathBuf]) -> Result<()> {
    let files = package_files(dirs)?;
    if files.is_empty() {
        return Ok(());
    }
    log::step("Copying in extra packages");
    let repo = ctx.repository();
    for f in files {
        let Some(name) = f.file_name() else { continue };
        let dst = repo.join(name);
        std::fs::copy(&f, &dst).map_err(io("copying", &f))?;
    }
    Ok(())
}

/// Copy packages from `dirs` into the repository and rebuild its index when
/// that changed the repository (upstream's `createrepo()` context).
pub fn update(ctx: &Context, dirs: &[PathBuf]) -> Result<()> {
    let repo = ctx.repository();
    let before = fingerprint(&repo)?;
    install_package_directories(ctx, dirs)?;
    if fingerprint(&repo)? == before {
        return Ok(());
    }
    if mkosi_distro::package_manager(ctx.config)? != "apt" {
        return Ok(());
    }
    log::step("Rebuilding local package repository");
    let env = pm_env(ctx)?;
    Apt::new(ctx.config, &env).createrepo()?;
    Ok(())
}

/// The repository at the start of the build: `PackageDirectories=`,
/// `VolatilePackageDirectories=` and `$PACKAGEDIR` (packages earlier images
/// of this run built).
pub fn setup(ctx: &Context) -> Result<()> {
    let mut dirs = ctx.config.paths("PackageDirectories");
    dirs.extend(ctx.config.paths("VolatilePackageDirectories"));
    dirs.push(ctx.package_dir.clone());
    update(ctx, &dirs)
}

/// After the build scripts: add what they put into `$PACKAGEDIR`.
pub fn refresh(ctx: &Context) -> Result<()> {
    update(ctx, std::slice::from_ref(&ctx.package_dir))
}

/// `VolatilePackages=`: installed after the build scripts, downgrades allowed.
pub fn install_volatile_packages(ctx: &Context) -> Result<()> {
    let packages = ctx.config.strings("VolatilePackages");
    if packages.is_empty() || mkosi_distro::package_manager(ctx.config)? != "apt" {
        return Ok(());
    }
    log::step(&format!("Installing volatile packages for {}", ctx.config.distribution().pretty_name()));
    let env = pm_env(ctx)?;
    Apt::new(ctx.config, &env).install(&packages, true, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(values: &[(&str, serde_json::Value)]) -> mkosi_config::Config {
        mkosi_config::Config::from_values(values.iter().map(|(k, v)| (k.to_string(), v.clone())))
    }

    #[test]
    fn when_the_repository_is_wanted() {
        assert!(!wanted(&config(&[]), false));
        assert!(wanted(&config(&[("Packages", json!(["systemd"]))]), false));
        assert!(!wanted(&config(&[("Packages", json!(["systemd"]))]), true));
        assert!(wanted(&config(&[("BuildPackages", json!(["gcc"]))]), false));
        assert!(wanted(&config(&[("PrepareScripts", json!(["/x/mkosi.prepare"]))]), false));
        assert!(wanted(&config(&[("VolatilePackages", json!(["foo"]))]), true));
        assert!(wanted(&config(&[("PostInstallationScripts", json!(["/x/mkosi.postinst"]))]), true));
        assert!(wanted(&config(&[("FinalizeScripts", json!(["/x/mkosi.finalize"]))]), true));
        assert!(!wanted(&config(&[("BuildScripts", json!(["/x/mkosi.build"]))]), false));
    }

    #[test]
    fn package_files_of_directories() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("one_1_all.deb"), b"").unwrap();
        std::fs::write(a.path().join("notes.txt"), b"").unwrap();
        std::fs::write(b.path().join("two_1_amd64.ddeb"), b"").unwrap();
        let files = package_files(&[a.path().to_path_buf(), b.path().join("missing"), b.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["one_1_all.deb", "two_1_amd64.ddeb"]);
    }

    #[test]
    fn fingerprint_sees_new_and_replaced_files() {
        let d = tempfile::tempdir().unwrap();
        let f0 = fingerprint(d.path()).unwrap();
        std::fs::write(d.path().join("a.deb"), b"1").unwrap();
        let f1 = fingerprint(d.path()).unwrap();
        assert_ne!(f0, f1);
        std::fs::write(d.path().join("a.deb"), b"22").unwrap();
        assert_ne!(f1, fingerprint(d.path()).unwrap());
    }
}
