//! Distributions and their package managers.
//!
//! A distribution knows its releases, mirrors, repositories, keys and
//! architecture names; a package manager driver knows how to run the real
//! tool (apt, dnf, …) on an image root from inside mkosi's sandbox. The build
//! pipeline decides *when* to install; this crate decides *how*.

pub mod apt;
pub mod deb;
pub mod debian;

use std::path::PathBuf;

use mkosi_config::enums::{Architecture, Distribution};
use mkosi_config::Config;
use mkosi_sandbox::run::RunError;
use mkosi_sandbox::Options;

/// Errors of distribution setup and package manager runs.
#[derive(Debug, thiserror::Error)]
pub enum DistroError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{0}")]
    Config(String),
    #[error("{what} {}: {source}", path.display())]
    Io { what: String, path: PathBuf, source: std::io::Error },
    #[error("{0} is not implemented yet for this distribution")]
    NotImplemented(String),
}

pub type Result<T, E = DistroError> = std::result::Result<T, E>;

pub(crate) fn io(what: &str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DistroError {
    let (what, path) = (what.to_string(), path.into());
    move |source| DistroError::Io { what, path, source }
}

/// Everything a package manager run needs besides the configuration: where
/// the image, the sandbox tree and the caches are on the host, and the base
/// sandbox (tools, `/etc` from the sandbox tree, network) to start from.
#[derive(Debug, Clone)]
pub struct PmEnv {
    /// The image root on the host (mounted at `/buildroot`).
    pub root: PathBuf,
    /// Files overlaid on the sandbox's `/etc`, `/var`… (package manager configuration).
    pub sandbox_tree: PathBuf,
    /// Repository metadata: `<dir>/lib/<pm>/…` and `<dir>/cache/<pm>/…`.
    pub metadata_dir: PathBuf,
    /// The persistent package download cache (`PackageCacheDirectory=`).
    pub package_cache_dir: PathBuf,
    /// The local package repository (mounted at `/repository`).
    pub repository: PathBuf,
    /// The base sandbox for commands that need the network.
    pub base: Options,
    /// The environment for package manager runs (`Environment=` etc.).
    pub environment: Vec<(String, String)>,
    /// Where to report progress; `None` lets the package manager print its own output.
    pub progress: Option<Progress>,
    /// A package manager cache directory of this build alone (apt: mounted
    /// at `/var/cache/apt`, see [`apt::prepare_private_cache`]), for a build
    /// that runs concurrently with another one using the same caches.
    pub private_cache: Option<PathBuf>,
}

/// A phase of a package manager run, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Downloading,
    Installing,
}

/// A function receiving progress reports: phase, percent done, description.
pub type ProgressFn = dyn Fn(Phase, f32, &str) + Send + Sync;

/// Receives progress reports.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<ProgressFn>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// Parse one line of apt's status fd (`dlstatus:pkg:percent:text`,
/// `pmstatus:pkg:percent:text`).
pub fn parse_apt_status(line: &str) -> Option<(Phase, f32, String)> {
    let parts: Vec<&str> = line.split(':').collect();
    let kind = *parts.first()?;
    // The package name may contain a colon (`libc6:amd64`): the percentage is
    // the first numeric field after it.
    let idx = (2..parts.len()).find(|&i| parts[i].trim().parse::<f32>().is_ok())?;
    let percent: f32 = parts[idx].trim().parse().ok()?;
    let text = parts[idx + 1..].join(":").trim().to_string();
    let phase = match kind {
        "dlstatus" => Phase::Downloading,
        "pmstatus" => Phase::Installing,
        _ => return None,
    };
    Some((phase, percent, text))
}

/// The distribution's name for an architecture (`$DISTRIBUTION_ARCHITECTURE`).
pub fn architecture(distribution: Distribution, arch: Architecture) -> Result<String> {
    use Architecture::*;
    use Distribution as D;
    let name: Option<&str> = match distribution {
        D::Debian | D::Ubuntu => match arch {
            Arm64 => Some("arm64"),
            Arm => Some("armhf"),
            Alpha => Some("alpha"),
            X86_64 => Some("amd64"),
            X86 => Some("i386"),
            Ia64 => Some("ia64"),
            Loongarch64 => Some("loong64"),
            Mips64Le => Some("mips64el"),
            MipsLe => Some("mipsel"),
            Parisc => Some("hppa"),
            Ppc64Le => Some("ppc64el"),
            Ppc64 => Some("ppc64"),
            Riscv64 => Some("riscv64"),
            S390x => Some("s390x"),
            S390 => Some("s390"),
            _ => None,
        },
        D::Kali => match arch {
            Arm64 => Some("arm64"),
            Arm => Some("armhf"),
            X86_64 => Some("amd64"),
            X86 => Some("i386"),
            _ => None,
        },
        D::Fedora | D::Mageia | D::Openmandriva => match arch {
            Arm64 => Some("aarch64"),
            Mips64Le => Some("mips64el"),
            MipsLe => Some("mipsel"),
            Ppc64Le => Some("ppc64le"),
            Riscv64 => Some("riscv64"),
            S390x => Some("s390x"),
            X86_64 => Some("x86_64"),
            _ => None,
        },
        D::Azure => match arch {
            Arm64 => Some("aarch64"),
            X86_64 => Some("x86_64"),
            _ => None,
        },
        D::Centos | D::Alma | D::Rocky | D::Rhel | D::RhelUbi => match arch {
            X86_64 => Some("x86_64"),
            Ppc64Le => Some("ppc64le"),
            S390x => Some("s390x"),
            Arm64 => Some("aarch64"),
            _ => None,
        },
        D::Opensuse => match arch {
            X86_64 => Some("x86_64"),
            Arm64 => Some("aarch64"),
            Ppc64Le => Some("ppc64le"),
            Riscv64 => Some("riscv64"),
            S390x => Some("s390x"),
            _ => None,
        },
        D::Arch => match arch {
            X86_64 => Some("x86_64"),
            Arm64 => Some("aarch64"),
            Arm => Some("armv7h"),
            _ => None,
        },
        D::Postmarketos => match arch {
            Arm64 => Some("aarch64"),
            Arm => Some("armv7"),
            Loongarch64 => Some("loongarch64"),
            Ppc64Le => Some("ppc64le"),
            Riscv64 => Some("riscv64"),
            X86 => Some("x86"),
            X86_64 => Some("x86_64"),
            _ => None,
        },
        D::Custom => return Ok(arch.as_str().to_string()),
    };
    name.map(str::to_string).ok_or_else(|| {
        DistroError::Config(format!("Architecture {arch} is not supported by {}", distribution.pretty_name()))
    })
}

/// The package manager of a distribution, if mkosi can drive it yet.
pub fn package_manager(config: &Config) -> Result<&'static str> {
    match config.distribution() {
        Distribution::Debian | Distribution::Ubuntu | Distribution::Kali => Ok("apt"),
        Distribution::Custom => Ok("custom"),
        d => Err(DistroError::NotImplemented(format!("Building {} images", d.pretty_name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_status_lines() {
        assert_eq!(
            parse_apt_status("dlstatus:1:12.5:Retrieving file 3 of 40"),
            Some((Phase::Downloading, 12.5, "Retrieving file 3 of 40".into()))
        );
        assert_eq!(
            parse_apt_status("pmstatus:libc6:amd64:50:Unpacking libc6 (amd64)"),
            Some((Phase::Installing, 50.0, "Unpacking libc6 (amd64)".into()))
        );
        assert_eq!(
            parse_apt_status("pmstatus:dpkg-exec:75:Running dpkg"),
            Some((Phase::Installing, 75.0, "Running dpkg".into()))
        );
        assert_eq!(parse_apt_status("pmconffile:/etc/x:a:b"), None);
    }

    #[test]
    fn architecture_names() {
        assert_eq!(architecture(Distribution::Debian, Architecture::X86_64).unwrap(), "amd64");
        assert_eq!(architecture(Distribution::Fedora, Architecture::Arm64).unwrap(), "aarch64");
        assert_eq!(architecture(Distribution::Custom, Architecture::X86_64).unwrap(), "x86-64");
        let e = architecture(Distribution::Kali, Architecture::Riscv64).unwrap_err();
        assert_eq!(e.to_string(), "Architecture riscv64 is not supported by Kali Linux");
    }
}
