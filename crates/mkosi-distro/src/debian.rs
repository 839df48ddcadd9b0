//! Debian, Ubuntu and Kali: repositories for apt and the merged-/usr layout.

use std::path::{Path, PathBuf};

use mkosi_config::enums::Distribution;
use mkosi_config::Config;

/// One apt source in deb822 format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRepository {
    pub types: Vec<String>,
    pub url: String,
    pub suite: String,
    pub components: Vec<String>,
    pub signed_by: Option<PathBuf>,
    pub snapshot: Option<String>,
}

impl AptRepository {
    /// The deb822 stanza (followed by a blank line).
    pub fn render(&self) -> String {
        let mut s = format!(
            "Types: {}\nURIs: {}\nSuites: {}\nComponents: {}\n",
            self.types.join(" "),
            self.url,
            self.suite,
            self.components.join(" ")
        );
        match &self.signed_by {
            Some(k) => s.push_str(&format!("Signed-By: {}\n", k.display())),
            None => s.push_str("Trusted: yes\n"),
        }
        if let Some(snap) = &self.snapshot {
            s.push_str(&format!("Snapshot: {snap}\n"));
        }
        s.push('\n');
        s
    }
}

/// Join a mirror URL and a path the way `urllib.parse.urljoin` does for these inputs.
pub fn join_mirror(mirror: &str, link: &str) -> String {
    let mirror = if mirror.ends_with('/') { mirror.to_string() } else { format!("{mirror}/") };
    format!("{mirror}{}", link.trim_start_matches('/'))
}

fn repo(types: &[&str], url: String, suite: String, components: &[String], key: Option<&str>) -> AptRepository {
    AptRepository {
        types: types.iter().map(|t| t.to_string()).collect(),
        url,
        suite,
        components: components.to_vec(),
        signed_by: key.map(PathBuf::from),
        snapshot: None,
    }
}

/// The repositories of the image's distribution. `for_image` gives the ones
/// written into the image (default mirror, no snapshot or local mirror).
pub fn repositories(config: &Config, for_image: bool) -> Vec<AptRepository> {
    let release = config.release().to_string();
    let mirror = if for_image { None } else { config.str("Mirror").map(str::to_string) };
    let snapshot = if for_image { None } else { config.str("Snapshot").map(str::to_string) };
    let mut components = vec!["main".to_string()];
    components.extend(config.strings("Repositories"));

    if let (Some(local), false) = (config.str("LocalMirror"), for_image) {
        return vec![repo(&["deb"], local.to_string(), release, &["main".to_string()], None)];
    }

    match config.distribution() {
        Distribution::Ubuntu => ubuntu_repositories(config, mirror, snapshot, &components, &release),
        Distribution::Kali => {
            let mirror = mirror.unwrap_or_else(|| "http://http.kali.org/kali".to_string());
            vec![repo(
                &["deb", "deb-src"],
                mirror,
                release,
                &components,
                Some("/usr/share/keyrings/kali-archive-keyring.gpg"),
            )]
        }
        _ => debian_repositories(mirror, snapshot, &components, &release),
    }
}

fn debian_repositories(
    mirror: Option<String>,
    snapshot: Option<String>,
    components: &[String],
    release: &str,
) -> Vec<AptRepository> {
    let types = ["deb", "deb-src"];
    let key = Some("/usr/share/keyrings/debian-archive-keyring.gpg");
    let mirror = mirror.unwrap_or_else(|| {
        if snapshot.is_some() {
            "https://snapshot.debian.org".to_string()
        } else {
            "http://deb.debian.org".to_string()
        }
    });
    let mut out = Vec::new();
    let archive = |name: &str| match &snapshot {
        Some(s) => join_mirror(&mirror, &format!("archive/{name}/{s}")),
        None => join_mirror(&mirror, name),
    };
    out.push(repo(&types, archive("debian"), release.to_string(), components, key));
    out.push(repo(&types, archive("debian-debug"), format!("{release}-debug"), components, key));
    if release == "unstable" || release == "sid" {
        return out;
    }
    if snapshot.is_none() {
        out.push(repo(&types, join_mirror(&mirror, "debian"), format!("{release}-updates"), components, key));
    }
    out.push(repo(&types, archive("debian-security"), format!("{release}-security"), components, key));
    out
}

fn ubuntu_repositories(
    config: &Config,
    mirror: Option<String>,
    snapshot: Option<String>,
    components: &[String],
    release: &str,
) -> Vec<AptRepository> {
    let types = ["deb", "deb-src"];
    let key = Some("/usr/share/keyrings/ubuntu-archive-keyring.gpg");
    let x86 = config.architecture().is_x86_variant();
    let default_mirror = if x86 { "http://archive.ubuntu.com/ubuntu" } else { "http://ports.ubuntu.com" };
    let mirror = mirror.unwrap_or_else(|| default_mirror.to_string());
    let mut out = vec![
        repo(&types, mirror.clone(), release.to_string(), components, key),
        repo(&types, mirror.clone(), format!("{release}-updates"), components, key),
    ];
    let security = if x86 { "http://security.ubuntu.com/ubuntu" } else { "http://ports.ubuntu.com" };
    let security_mirror = if config.str("Mirror").is_some() { mirror } else { security.to_string() };
    out.push(repo(&types, security_mirror, format!("{release}-security"), components, key));
    for r in &mut out {
        r.snapshot = snapshot.clone();
    }
    out
}

/// Directories that are symlinks into `/usr` on a merged-/usr system, per
/// Debian architecture (as debootstrap sets them up).
pub fn merged_usr_dirs(debian_arch: &str) -> Vec<&'static str> {
    let mut dirs = vec!["bin", "sbin", "lib"];
    dirs.extend(match debian_arch {
        "amd64" => &["lib32", "lib64", "libx32"][..],
        "i386" => &["lib64", "libx32"],
        "mips" | "mipsel" => &["lib32", "lib64"],
        "mips64el" => &["lib32", "lib64", "libo32"],
        "loong64" => &["lib32", "lib64"],
        "powerpc" => &["lib64"],
        "ppc64" => &["lib32", "lib64"],
        "ppc64el" => &["lib64"],
        "s390x" => &["lib32"],
        "sparc" => &["lib64"],
        "sparc64" => &["lib32", "lib64"],
        "x32" => &["lib32", "lib64", "libx32"],
        _ => &[],
    });
    dirs
}

/// Make `VERSION_CODENAME` of sid images say `sid` and keep it that way
/// (base-files in unstable claims the next release's codename).
pub fn fixup_os_release(root: &Path, release: &str) -> std::io::Result<()> {
    if release != "unstable" && release != "sid" {
        return Ok(());
    }
    for candidate in ["etc/os-release", "usr/lib/os-release"] {
        let p = root.join(candidate);
        if std::fs::symlink_metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            let text = std::fs::read_to_string(&p)?;
            let fixed: Vec<String> = text
                .lines()
                .map(|l| {
                    if l.starts_with("VERSION_CODENAME=") {
                        "VERSION_CODENAME=sid".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            std::fs::write(&p, fixed.join("\n") + "\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_join() {
        assert_eq!(join_mirror("http://deb.debian.org", "debian"), "http://deb.debian.org/debian");
        assert_eq!(join_mirror("http://x/", "/archive/debian/1"), "http://x/archive/debian/1");
    }

    #[test]
    fn deb822() {
        let r = repo(&["deb"], "http://m/debian".into(), "trixie".into(), &["main".into()], None);
        assert_eq!(r.render(), "Types: deb\nURIs: http://m/debian\nSuites: trixie\nComponents: main\nTrusted: yes\n\n");
    }

    #[test]
    fn debian_suites() {
        let c = vec!["main".to_string()];
        let suites: Vec<String> = debian_repositories(None, None, &c, "trixie").into_iter().map(|r| r.suite).collect();
        assert_eq!(suites, vec!["trixie", "trixie-debug", "trixie-updates", "trixie-security"]);
        let sid: Vec<String> = debian_repositories(None, None, &c, "sid").into_iter().map(|r| r.suite).collect();
        assert_eq!(sid, vec!["sid", "sid-debug"]);
        let snap = debian_repositories(None, Some("20250101T000000Z".into()), &c, "trixie");
        assert_eq!(snap[0].url, "https://snapshot.debian.org/archive/debian/20250101T000000Z");
        assert_eq!(snap.len(), 3);
    }
}
