//! Computed defaults ("default factories"). Each gets the finalized values
//! of the settings it declares as dependencies, plus the image name and the
//! invocation directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::enums::{Distribution, OutputFormat};
use crate::error::{Error, Result};
use crate::host::{DetectedDistribution, Host};
use crate::parse::{log, py_int};
use crate::settings::Factory;

/// Inputs of a default factory.
pub struct FactoryNs<'a> {
    pub values: HashMap<&'static str, Option<Value>>,
    pub image: &'a str,
    pub directory: Option<&'a Path>,
    pub host: &'a Host,
}

impl FactoryNs<'_> {
    fn get(&self, field: &str) -> Option<&Value> {
        self.values.get(field).and_then(Option::as_ref).filter(|v| !v.is_null())
    }

    fn str(&self, field: &str) -> Option<&str> {
        self.get(field).and_then(Value::as_str)
    }

    fn distribution(&self, field: &str) -> Option<Distribution> {
        self.str(field).and_then(|s| s.parse().ok())
    }

    fn format(&self) -> OutputFormat {
        self.str("Format").and_then(|s| s.parse().ok()).unwrap_or(OutputFormat::Disk)
    }
}

/// The seed used when none is configured: random, but the same for every
/// image of one invocation.
pub fn process_seed() -> &'static str {
    static SEED: OnceLock<String> = OnceLock::new();
    SEED.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// The host distribution and release, honouring `$MKOSI_HOST_DISTRIBUTION`.
fn host_distribution(host: &Host) -> (Option<DetectedDistribution>, Option<String>) {
    if let Some(d) = host.env("MKOSI_HOST_DISTRIBUTION").and_then(|d| d.parse::<Distribution>().ok()) {
        if let Some(r) = host.env("MKOSI_HOST_RELEASE").filter(|r| !r.is_empty()) {
            return (Some(DetectedDistribution::Known(d)), Some(r.to_string()));
        }
    }
    host.distribution().clone()
}

fn default_distribution(host: &Host) -> Distribution {
    if let Some(d) = host.env("MKOSI_HOST_DISTRIBUTION").and_then(|d| d.parse::<Distribution>().ok()) {
        return d;
    }
    match host.distribution().0 {
        Some(DetectedDistribution::Known(d)) => d,
        _ => Distribution::Custom,
    }
}

fn needs_repository_key_fetch(d: Option<Distribution>) -> bool {
    d.is_some_and(|d| matches!(d, Distribution::Arch | Distribution::Postmarketos) || d.is_rpm_distribution())
}

const PROXY_VARS: &[&str] = &["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"];
const NO_PROXY_VARS: &[&str] = &["no_proxy", "NO_PROXY"];

pub fn compute(factory: Factory, ns: &FactoryNs) -> Result<Option<Value>> {
    let host = ns.host;
    Ok(match factory {
        Factory::NativeArchitecture => Some(json!(host.arch().as_str())),
        Factory::Seed => Some(json!(process_seed())),
        Factory::Distribution => Some(json!(default_distribution(host).as_str())),
        Factory::Release => {
            let (hd, hr) = host_distribution(host);
            let dist = ns.distribution("Distribution");
            match (dist, hd, hr) {
                (Some(d), Some(DetectedDistribution::Known(h)), Some(r)) if d == h && !r.is_empty() => Some(json!(r)),
                (Some(d), _, _) => Some(json!(d.default_release())),
                (None, _, _) => None,
            }
        }
        Factory::Output => {
            let mut output = if ns.image != "main" {
                ns.image.to_string()
            } else {
                ns.str("ImageId").unwrap_or("image").to_string()
            };
            if let Some(v) = ns.str("ImageVersion").filter(|v| !v.is_empty()) {
                output.push('_');
                output.push_str(v);
            }
            Some(json!(output))
        }
        Factory::OutputExtension => Some(json!(ns.format().extension())),
        Factory::CompressOutput => Some(json!(match ns.format() {
            OutputFormat::Tar | OutputFormat::Cpio | OutputFormat::Uki | OutputFormat::Esp | OutputFormat::Addon =>
                "zstd",
            OutputFormat::Oci => "gz",
            _ => "none",
        })),
        Factory::RepositoryKeyFetch => {
            let dist = ns.distribution("Distribution");
            let tools_tree = ns.str("ToolsTree");
            if !matches!(tools_tree, Some("default") | Some("yes")) {
                let root = PathBuf::from(tools_tree.unwrap_or("/"));
                let detected = host.detect_distribution_at(&root).0;
                Some(json!(match detected {
                    Some(DetectedDistribution::Other(id)) if id == "nixos" => true,
                    Some(DetectedDistribution::Known(Distribution::Ubuntu)) => needs_repository_key_fetch(dist),
                    _ => false,
                }))
            } else {
                Some(json!(
                    ns.distribution("ToolsTreeDistribution") == Some(Distribution::Ubuntu)
                        && needs_repository_key_fetch(dist)
                ))
            }
        }
        Factory::SourceDateEpoch => {
            // Upstream means to consult Environment= first, but iterates the
            // dictionary's keys, so only the host environment takes effect.
            match host.env("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
                None => None,
                Some(v) => {
                    let t =
                        py_int(v, 10).ok_or_else(|| Error::new(format!("Timestamp '{v}' is not a valid integer")))?;
                    if t < 0 {
                        return Err(Error::new(format!("Source date epoch timestamp cannot be negative (got {v})")));
                    }
                    Some(json!(t))
                }
            }
        }
        Factory::ProxyUrl => {
            // Environment= keys shadow the host, but (as upstream) with an empty value.
            let env = ns.get("Environment").and_then(Value::as_object);
            if env.is_some_and(|e| e.keys().any(|k| PROXY_VARS.contains(&k.as_str()))) {
                Some(json!(""))
            } else {
                host.env_vars().iter().find(|(k, _)| PROXY_VARS.contains(&k.as_str())).map(|(_, v)| json!(v))
            }
        }
        Factory::ProxyExclude => {
            let env = ns.get("Environment").and_then(Value::as_object);
            if env.is_some_and(|e| e.keys().any(|k| NO_PROXY_VARS.contains(&k.as_str()))) {
                Some(json!([""]))
            } else {
                host.env_vars()
                    .iter()
                    .find(|(k, _)| NO_PROXY_VARS.contains(&k.as_str()))
                    .map(|(_, v)| json!(v.split(',').collect::<Vec<_>>()))
            }
        }
        Factory::ProxyPeerCertificate => ["/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/certs/ca-certificates.crt"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .map(|p| json!(p)),
        Factory::ProxyClientKey => ns.get("ProxyClientCertificate").cloned(),
        Factory::Initrds => Some(json!(default_initrds(ns))),
        Factory::Checksum => Some(json!(ns.get("Sign").and_then(Value::as_bool).unwrap_or(false))),
        Factory::BuildSources => Some(match ns.directory {
            Some(d) => json!([{"Source": d.to_string_lossy(), "Target": null}]),
            None => json!([]),
        }),
        Factory::Machine => {
            ns.directory.map(|d| json!(d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()))
        }
        Factory::ToolsTreeDistribution => {
            let d = if let Some(d) = host.env("MKOSI_HOST_DISTRIBUTION").and_then(|d| d.parse::<Distribution>().ok()) {
                d.default_tools_tree_distribution().unwrap_or(d)
            } else {
                match host.distribution().0 {
                    Some(DetectedDistribution::Known(d)) => d.default_tools_tree_distribution().unwrap_or(d),
                    _ => Distribution::Custom,
                }
            };
            Some(json!(d.as_str()))
        }
        Factory::ToolsTreeRelease => ns.distribution("ToolsTreeDistribution").map(|d| json!(d.default_release())),
        Factory::ToolsTreeMirror => {
            let mirror = ns.str("Mirror").filter(|m| !m.is_empty());
            match mirror {
                Some(m) if ns.distribution("Distribution") == ns.distribution("ToolsTreeDistribution") => {
                    Some(json!(m))
                }
                _ => None,
            }
        }
    })
}

fn default_initrds(ns: &FactoryNs) -> Vec<String> {
    let format = ns.format();
    let bootable = ns.str("Bootable").unwrap_or("auto");
    let image = ns.image;
    let debug = |why: &str| log::debug(&format!("Not building default initrd for image '{image}': {why}"));

    if matches!(format, OutputFormat::Uki | OutputFormat::Esp) {
        debug(&format!("output format {format} does not use an initrd"));
        return vec![];
    }
    if bootable == "disabled" {
        debug("Bootable=no");
        return vec![];
    }
    let overlay = ns.get("Overlay").and_then(Value::as_bool).unwrap_or(false);
    if bootable == "auto"
        && (matches!(format, OutputFormat::Cpio | OutputFormat::Directory)
            || format.is_extension_or_portable_image()
            || overlay)
    {
        debug(&format!("Bootable=auto and output format {format} is not bootable by default"));
        return vec![];
    }
    if bootable == "auto" {
        let dist = ns.distribution("Distribution").unwrap_or(Distribution::Custom);
        let has_kernel = ["Packages", "VolatilePackages"].iter().any(|f| {
            ns.get(f)
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p.as_str().is_some_and(|p| dist.is_kernel_package(p))))
        });
        if !has_kernel {
            debug("Bootable=auto and no kernel package found in Packages= or VolatilePackages=");
            return vec![];
        }
    }
    vec!["default".to_string()]
}
