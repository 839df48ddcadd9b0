//! Facts about the machine mkosi runs on: its environment, architecture,
//! distribution and systemd version.
//!
//! Everything the configuration engine learns from the host goes through
//! [`Host`], so tests can describe a different host without touching the
//! real one.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::enums::{Architecture, Distribution};

/// A distribution as detected from an os-release file: either one mkosi can
/// build, or just the `ID=` string of something else (e.g. `nixos`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetectedDistribution {
    Known(Distribution),
    Other(String),
}

#[derive(Debug, Clone)]
pub struct Host {
    env: Vec<(String, String)>,
    env_map: HashMap<String, String>,
    arch: Architecture,
    root: PathBuf,
    systemd_version: OnceCell<Option<String>>,
    detected: OnceCell<(Option<DetectedDistribution>, Option<String>)>,
    user: OnceCell<String>,
}

impl Host {
    /// The real host.
    pub fn system() -> Host {
        Host::new(
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect(),
            Architecture::native(),
            PathBuf::from("/"),
        )
    }

    /// A host with the given environment, architecture and root directory
    /// (whose `etc/os-release` describes the host distribution).
    pub fn new(env: Vec<(String, String)>, arch: Architecture, root: PathBuf) -> Host {
        let env_map = env.iter().cloned().collect();
        Host {
            env,
            env_map,
            arch,
            root,
            systemd_version: OnceCell::new(),
            detected: OnceCell::new(),
            user: OnceCell::new(),
        }
    }

    pub fn env(&self, name: &str) -> Option<&str> {
        self.env_map.get(name).map(String::as_str)
    }

    /// All environment variables in the order the process received them.
    pub fn env_vars(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn arch(&self) -> Architecture {
        self.arch
    }

    /// The host distribution and release, honouring `$MKOSI_HOST_DISTRIBUTION`
    /// and `$MKOSI_HOST_RELEASE` like upstream.
    pub fn distribution(&self) -> &(Option<DetectedDistribution>, Option<String>) {
        self.detected.get_or_init(|| detect_distribution(&self.root))
    }

    /// Distribution detected from the os-release of an arbitrary root (tools trees).
    pub fn detect_distribution_at(&self, root: &Path) -> (Option<DetectedDistribution>, Option<String>) {
        if root == Path::new("/") {
            return self.distribution().clone();
        }
        detect_distribution(root)
    }

    /// The version of the host's systemd (`systemctl --version`), if any.
    pub fn systemd_version(&self) -> Option<&str> {
        self.systemd_version
            .get_or_init(|| {
                if let Some(v) = self.env("MKOSI_HOST_SYSTEMD_VERSION") {
                    return Some(v.to_string());
                }
                let out = std::process::Command::new("systemctl").arg("--version").output().ok()?;
                let text = String::from_utf8_lossy(&out.stdout);
                text.split_whitespace().nth(1).map(str::to_string)
            })
            .as_deref()
    }

    /// Name of the user invoking mkosi.
    pub fn user_name(&self) -> &str {
        self.user.get_or_init(|| {
            for var in ["LOGNAME", "USER", "LNAME", "USERNAME"] {
                if let Some(v) = self.env(var) {
                    if !v.is_empty() {
                        return v.to_string();
                    }
                }
            }
            user_name_of(unsafe_getuid()).unwrap_or_else(|| "root".to_string())
        })
    }

    /// Home directory used for `~` expansion.
    pub fn home(&self) -> Option<PathBuf> {
        match self.env("HOME") {
            Some(h) => Some(PathBuf::from(h)),
            None => home_of_uid(unsafe_getuid()),
        }
    }
}

fn unsafe_getuid() -> u32 {
    // SAFETY: getuid() cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

fn passwd_field(uid: Option<u32>, name: Option<&str>, want_home: bool) -> Option<String> {
    let content = std::fs::read_to_string("/etc/passwd").ok()?;
    for line in content.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 {
            continue;
        }
        let matches = match (uid, name) {
            (Some(u), _) => fields[2].parse::<u32>().ok() == Some(u),
            (_, Some(n)) => fields[0] == n,
            _ => false,
        };
        if matches {
            return Some(if want_home { fields[5] } else { fields[0] }.to_string());
        }
    }
    None
}

fn user_name_of(uid: u32) -> Option<String> {
    passwd_field(Some(uid), None, false)
}

fn home_of_uid(uid: u32) -> Option<PathBuf> {
    passwd_field(Some(uid), None, true).map(PathBuf::from)
}

/// Home directory of a named user (for `~user`).
pub fn home_of_user(name: &str) -> Option<PathBuf> {
    passwd_field(None, Some(name), true).map(PathBuf::from)
}

/// `uname -m` of the running kernel.
pub fn uname_machine() -> String {
    // SAFETY: utsname is plain data; uname() fills it or fails.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "x86_64".to_string();
        }
        std::ffi::CStr::from_ptr(u.machine.as_ptr()).to_string_lossy().into_owned()
    }
}

/// Parse an os-release style file: `KEY=VALUE` lines, values optionally quoted.
pub fn read_env_file(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        let valid_key = k.len() >= 2
            && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            continue;
        }
        out.push((k.to_string(), unquote(v)));
    }
    out
}

fn unquote(v: &str) -> String {
    let bytes = v.as_bytes();
    if bytes.len() >= 2 && (bytes[0] == b'"' || bytes[0] == b'\'') && bytes[bytes.len() - 1] == bytes[0] {
        let inner = &v[1..v.len() - 1];
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(o) => out.push(o),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        v.to_string()
    }
}

/// Detect the distribution of a root directory from its os-release.
pub fn detect_distribution(root: &Path) -> (Option<DetectedDistribution>, Option<String>) {
    let text = std::fs::read_to_string(root.join("etc/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")));
    let Ok(text) = text else { return (None, None) };
    let vars: HashMap<String, String> = read_env_file(&text).into_iter().collect();

    let id = vars.get("ID").cloned();
    let id_like: Vec<String> =
        vars.get("ID_LIKE").map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default();
    let mut version = if id.as_deref() == Some("opensuse-tumbleweed") {
        Some("tumbleweed".to_string())
    } else {
        vars.get("VERSION_ID").cloned()
    };
    let codename = vars.get("VERSION_CODENAME").cloned();

    let mut found = None;
    for candidate in id.iter().chain(id_like.iter()) {
        if candidate.is_empty() {
            continue;
        }
        let name = if candidate == "azurelinux" { "azure" } else { candidate.as_str() };
        if let Ok(d) = name.parse::<Distribution>() {
            found = Some(d);
            break;
        }
    }

    if let Some(d) = found {
        if d.is_apt_distribution() {
            if let Some(c) = codename.filter(|c| !c.is_empty()) {
                version = Some(c);
            }
        }
        if version.as_deref().is_none_or(str::is_empty) {
            let r = d.default_release();
            version = if r.is_empty() { None } else { Some(r.to_string()) };
        }
        return (Some(DetectedDistribution::Known(d)), version);
    }

    (id.map(DetectedDistribution::Other), version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(text: &str) -> (Option<DetectedDistribution>, Option<String>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/os-release"), text).unwrap();
        detect_distribution(dir.path())
    }

    #[test]
    fn detection() {
        use DetectedDistribution::*;
        assert_eq!(
            detect("ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n"),
            (Some(Known(Distribution::Debian)), Some("bookworm".into()))
        );
        assert_eq!(
            detect("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=21\nVERSION_CODENAME=vanessa\n"),
            (Some(Known(Distribution::Ubuntu)), Some("vanessa".into()))
        );
        assert_eq!(detect("ID=fedora\nVERSION_ID=41\n"), (Some(Known(Distribution::Fedora)), Some("41".into())));
        assert_eq!(
            detect("ID=opensuse-tumbleweed\nID_LIKE=\"opensuse suse\"\nVERSION_ID=20240101\n"),
            (Some(Known(Distribution::Opensuse)), Some("tumbleweed".into()))
        );
        assert_eq!(detect("ID=azurelinux\nVERSION_ID=3.0\n"), (Some(Known(Distribution::Azure)), Some("3.0".into())));
        assert_eq!(detect("ID=arch\n"), (Some(Known(Distribution::Arch)), Some("rolling".into())));
        assert_eq!(detect("ID=nixos\nVERSION_ID=24.05\n"), (Some(Other("nixos".into())), Some("24.05".into())));
        assert_eq!(detect_distribution(Path::new("/nonexistent")), (None, None));
    }
}
