//! `ManifestFormat=`: what an image contains, recorded after the package
//! removals and saved next to the output — `<Output>.manifest` (JSON) and
//! `<Output>.changelog` (a report per source package with its changelog).
//!
//! Recording happens while the root still exists; the files are kept in the
//! workspace and moved into staging after the checksums and the signature
//! (so neither covers them), like upstream.

use std::path::PathBuf;

use mkosi_config::enums::{ManifestFormat, OutputFormat};
use mkosi_config::Config;
use mkosi_distro::apt::Apt;
use mkosi_sandbox::run::{self, Cmd, Sink};
use serde_json::{json, Map, Value};

use crate::context::Context;
use crate::error::{io, Result};
use crate::log;
use crate::pipeline::pm_env;

/// One installed package (the keys of systemd's package metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub kind: &'static str,
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Bytes.
    pub size: u64,
}

/// A source package and the binary packages built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePackage {
    pub name: String,
    pub changelog: Option<String>,
    pub packages: Vec<Package>,
}

impl SourcePackage {
    fn report(&self) -> String {
        let size: u64 = self.packages.iter().map(|p| p.size).sum();
        let names: Vec<&str> = self.packages.iter().map(|p| p.name.as_str()).collect();
        let mut t =
            format!("SourcePackage: {}\nPackages:      {}\nSize:          {size}\n", self.name, names.join(" "));
        if let Some(c) = self.changelog.as_deref().filter(|c| !c.is_empty()) {
            t.push_str(&format!("\nChangelog:\n{c}\n"));
        }
        t
    }
}

/// The recorded content of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub packages: Vec<Package>,
    /// In the order they were first seen.
    pub sources: Vec<SourcePackage>,
    /// extension-release of sysext/confext images.
    pub extension: Vec<(String, String)>,
}

/// Fetches the changelog of a source package, given one of its binary packages.
pub type ChangelogFetcher<'a> = &'a mut dyn FnMut(&str) -> Result<String>;

/// `dpkg-query --showformat` of the recorded fields, tab separated.
pub const DPKG_QUERY_FORMAT: &str =
    "${Package}\\t${source:Package}\\t${Version}\\t${Architecture}\\t${Installed-Size}\\t${db-fsys:Last-Modified}\\n";

/// A package from one line of `dpkg-query` output and its source package,
/// unless it was installed before `since` (seconds since the epoch).
pub fn parse_dpkg_line(line: &str, since: Option<i64>) -> Option<(Package, String)> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [name, source, version, arch, size, installtime] = fields[..] else { return None };
    // Installed-Size is in KiB and optional; very old dpkg lacks the timestamp.
    let installed: i64 = installtime.trim().parse().unwrap_or(0);
    if since.is_some_and(|s| installed < s) {
        return None;
    }
    let kib: u64 = size.trim().parse().unwrap_or(0);
    let package = Package {
        kind: "deb",
        name: name.to_string(),
        version: version.to_string(),
        architecture: arch.to_string(),
        size: kib * 1024,
    };
    let source = if source.is_empty() { name } else { source };
    Some((package, source.to_string()))
}

impl Manifest {
    /// Whether there is anything to save.
    pub fn has_data(&self) -> bool {
        !self.packages.is_empty() || !self.extension.is_empty()
    }

    /// Add packages from `dpkg-query` output (sorted like upstream). With
    /// `since`, only packages installed from then on count (base trees).
    /// `changelog` fetches the changelog of a source package by the name of
    /// its first binary package, when the report is wanted.
    pub fn add_deb_packages(
        &mut self,
        output: &str,
        since: Option<i64>,
        mut changelog: Option<ChangelogFetcher<'_>>,
    ) -> Result<()> {
        let mut lines: Vec<&str> = output.lines().collect();
        lines.sort_unstable();
        for line in lines {
            let Some((package, source)) = parse_dpkg_line(line, since) else { continue };
            self.packages.push(package.clone());
            let Some(fetch) = changelog.as_deref_mut() else { continue };
            match self.sources.iter_mut().find(|s| s.name == source) {
                Some(s) => s.packages.push(package),
                None => {
                    let text = fetch(&package.name)?.trim().to_string();
                    self.sources.push(SourcePackage { name: source, changelog: Some(text), packages: vec![package] });
                }
            }
        }
        Ok(())
    }

    /// The JSON document (upstream's `Manifest.as_dict()`).
    pub fn to_json(&self, config: &Config) -> Value {
        let mut c = Map::new();
        c.insert("name".into(), json!(config.image_id().unwrap_or("image")));
        c.insert("distribution".into(), json!(config.distribution().as_str()));
        c.insert("architecture".into(), json!(config.architecture().as_str()));
        c.insert("output_format".into(), json!(config.output_format().as_str()));
        if let Some(v) = config.image_version() {
            c.insert("version".into(), json!(v));
        }
        if let Some(r) = config.str("Release") {
            c.insert("release".into(), json!(r));
        }
        let packages: Vec<Value> = self
            .packages
            .iter()
            .map(|p| {
                json!({
                    "type": p.kind,
                    "name": p.name,
                    "version": p.version,
                    "architecture": p.architecture,
                    "size": p.size,
                })
            })
            .collect();
        let extension: Map<String, Value> = self.extension.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        json!({
            "manifest_version": 1,
            "config": Value::Object(c),
            "packages": packages,
            "extension": Value::Object(extension),
        })
    }

    /// `<Output>.manifest`: the JSON document as Python's `json.dump(indent=2)` writes it.
    pub fn json_text(&self, config: &Config) -> String {
        mkosi_config::json::dumps(
            &self.to_json(config),
            mkosi_config::json::Style { indent: Some(2), sort_keys: false },
        )
    }

    /// `<Output>.changelog`: totals, then one block per source package.
    pub fn report(&self) -> String {
        let size: u64 = self.packages.iter().map(|p| p.size).sum();
        let mut out = format!("Packages: {}\nSize:     {size}", self.packages.len());
        for s in &self.sources {
            out.push('\n');
            out.push_str(&"-".repeat(80));
            out.push('\n');
            out.push_str(&s.report());
        }
        out
    }
}

/// Seconds since the epoch, for "installed during this build".
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Where recorded manifests wait for the output to be finished.
fn pending_dir(ctx: &Context) -> PathBuf {
    ctx.workspace.join("manifest")
}

fn wants(config: &Config, format: ManifestFormat) -> bool {
    config.strings("ManifestFormat").iter().any(|f| f == format.as_str())
}

/// The installed packages according to the image's dpkg database.
fn query_deb_packages(ctx: &Context) -> Result<String> {
    let root = ctx.root();
    if !root.join("var/lib/dpkg/status").exists() {
        return Ok(String::new());
    }
    let options = ctx.sandbox(false, false)?.ro_bind(&root, "/buildroot");
    let cmd =
        Cmd::new(["dpkg-query", "--admindir=/buildroot/var/lib/dpkg", "--show", "--showformat", DPKG_QUERY_FORMAT])
            .sandbox(options)
            .stdout(Sink::Capture);
    let out = run::run(&cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// extension-release of sysext/confext images.
fn extension_release(ctx: &Context) -> Vec<(String, String)> {
    let c = ctx.config;
    let dir = match c.output_format() {
        OutputFormat::Sysext => "usr/lib",
        OutputFormat::Confext => "etc",
        _ => return Vec::new(),
    };
    let p = ctx.root().join(dir).join(format!("extension-release.d/extension-release.{}", c.output()));
    std::fs::read_to_string(p).map(|t| mkosi_config::host::read_env_file(&t)).unwrap_or_default()
}

/// Record the image's packages (after `RemovePackages=`) and keep the
/// configured manifest files for [`save`]. `started` is when the image
/// build began: with `BaseTrees=` only packages installed since count.
pub fn record(ctx: &Context, started: i64) -> Result<()> {
    let c = ctx.config;
    if c.list("ManifestFormat").is_empty() {
        return Ok(());
    }
    let mut manifest = Manifest { extension: extension_release(ctx), ..Manifest::default() };
    if mkosi_distro::package_manager(c)? == "apt" {
        log::step("Recording packages in manifest");
        let output = query_deb_packages(ctx)?;
        let since = (!c.list("BaseTrees").is_empty()).then_some(started);
        if wants(c, ManifestFormat::Changelog) {
            let env = pm_env(ctx)?;
            let apt = Apt::new(c, &env);
            let mut fetch = |name: &str| -> Result<String> { Ok(apt.changelog(name)?) };
            manifest.add_deb_packages(&output, since, Some(&mut fetch))?;
        } else {
            manifest.add_deb_packages(&output, since, None)?;
        }
    }
    if !manifest.has_data() {
        return Ok(());
    }
    let dir = pending_dir(ctx);
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    if wants(c, ManifestFormat::Json) {
        let p = dir.join(format!("{}.manifest", c.output()));
        std::fs::write(&p, manifest.json_text(c)).map_err(io("writing", &p))?;
    }
    if wants(c, ManifestFormat::Changelog) {
        let p = dir.join(format!("{}.changelog", c.output()));
        std::fs::write(&p, manifest.report()).map_err(io("writing", &p))?;
    }
    Ok(())
}

/// Move the recorded manifest files into staging.
pub fn save(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let dir = pending_dir(ctx);
    for (suffix, what) in [("manifest", "manifest"), ("changelog", "report")] {
        let name = format!("{}.{suffix}", c.output());
        let src = dir.join(&name);
        if !src.exists() {
            continue;
        }
        log::step(&format!("Saving {what} {name}"));
        let dst = ctx.staging().join(&name);
        std::fs::rename(&src, &dst).map_err(io("moving into staging", &src))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(values: &[(&str, Value)]) -> Config {
        Config::from_values(values.iter().map(|(k, v)| (k.to_string(), v.clone())))
    }

    const QUERY: &str = "systemd\tsystemd\t257.7-1\tamd64\t10240\t1700000100\n\
                         libc6\tglibc\t2.41-12\tamd64\t12000\t1700000000\n\
                         udev\tsystemd\t257.7-1\tamd64\t\t1700000200\n\
                         malformed line\n";

    #[test]
    fn dpkg_lines() {
        let (p, src) = parse_dpkg_line("udev\tsystemd\t257.7-1\tamd64\t2048\t1700000200", None).unwrap();
        assert_eq!(
            p,
            Package {
                kind: "deb",
                name: "udev".into(),
                version: "257.7-1".into(),
                architecture: "amd64".into(),
                size: 2048 * 1024
            }
        );
        assert_eq!(src, "systemd");
        assert!(parse_dpkg_line("udev\tsystemd\t257.7-1\tamd64\t2048\t1700000200", Some(1700000201)).is_none());
        assert!(parse_dpkg_line("udev\tsystemd\t257.7-1\tamd64\t2048\t1700000200", Some(1700000200)).is_some());
        // Optional fields: no size, no timestamp (counts as the epoch).
        let (p, _) = parse_dpkg_line("x\t\t1\tall\t\t", None).unwrap();
        assert_eq!(p.size, 0);
        assert!(parse_dpkg_line("x\t\t1\tall\t\t", Some(1)).is_none());
        assert!(parse_dpkg_line("too\tfew", None).is_none());
    }

    #[test]
    fn json_like_upstream() {
        let mut m = Manifest::default();
        m.add_deb_packages(QUERY, None, None).unwrap();
        let names: Vec<&str> = m.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["libc6", "systemd", "udev"]);
        assert!(m.sources.is_empty());
        let c = config(&[
            ("Distribution", json!("debian")),
            ("Release", json!("trixie")),
            ("Architecture", json!("x86-64")),
            ("Format", json!("directory")),
            ("ImageVersion", json!("1.2")),
        ]);
        let expected = r#"{
  "manifest_version": 1,
  "config": {
    "name": "image",
    "distribution": "debian",
    "architecture": "x86-64",
    "output_format": "directory",
    "version": "1.2",
    "release": "trixie"
  },
  "packages": [
    {
      "type": "deb",
      "name": "libc6",
      "version": "2.41-12",
      "architecture": "amd64",
      "size": 12288000
    },
    {
      "type": "deb",
      "name": "systemd",
      "version": "257.7-1",
      "architecture": "amd64",
      "size": 10485760
    },
    {
      "type": "deb",
      "name": "udev",
      "version": "257.7-1",
      "architecture": "amd64",
      "size": 0
    }
  ],
  "extension": {}
}"#;
        assert_eq!(m.json_text(&c), expected);
    }

    #[test]
    fn only_new_packages_with_base_trees() {
        let mut m = Manifest::default();
        m.add_deb_packages(QUERY, Some(1700000150), None).unwrap();
        let names: Vec<&str> = m.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["udev"]);
        let mut empty = Manifest::default();
        empty.add_deb_packages(QUERY, Some(1800000000), None).unwrap();
        assert!(!empty.has_data());
    }

    #[test]
    fn changelog_report() {
        let mut m = Manifest::default();
        let mut asked = Vec::new();
        let mut fetch = |name: &str| -> Result<String> {
            asked.push(name.to_string());
            Ok(format!("{name} (1.0) unstable; urgency=medium\n\n  * Changes.\n\n"))
        };
        m.add_deb_packages(QUERY, None, Some(&mut fetch)).unwrap();
        // One changelog per source package, asked for by its first binary package.
        assert_eq!(asked, vec!["libc6", "systemd"]);
        let expected = format!(
            "Packages: 3\nSize:     {}\n{dash}\nSourcePackage: glibc\nPackages:      libc6\nSize:          12288000\n\n\
             Changelog:\nlibc6 (1.0) unstable; urgency=medium\n\n  * Changes.\n\n{dash}\nSourcePackage: systemd\n\
             Packages:      systemd udev\nSize:          10485760\n\nChangelog:\nsystemd (1.0) unstable; \
             urgency=medium\n\n  * Changes.\n",
            12288000 + 10485760,
            dash = "-".repeat(80)
        );
        assert_eq!(m.report(), expected);
    }

    #[test]
    fn json_strings_are_ascii() {
        let style = mkosi_config::json::Style { indent: Some(2), sort_keys: false };
        let s = mkosi_config::json::dumps(&json!({"k": "é\u{1F600}\"\\\n\u{1}", "a": [], "o": {}}), style);
        assert_eq!(s, "{\n  \"k\": \"\\u00e9\\ud83d\\ude00\\\"\\\\\\n\\u0001\",\n  \"a\": [],\n  \"o\": {}\n}");
    }
}
