//! A finalized image configuration and the command-line arguments that are
//! not settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::enums::*;
use crate::error::{Error, Result};
use crate::settings::{self, Scope, SETTINGS};

/// The verbs of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Build,
    Clean,
    Summary,
    CatConfig,
    Shell,
    Boot,
    Vm,
    Qemu,
    Ssh,
    Serve,
    Bump,
    Help,
    Genkey,
    Documentation,
    Journalctl,
    Coredumpctl,
    Burn,
    Dependencies,
    Completion,
    Sysupdate,
    Box,
    Sandbox,
    Init,
    LatestSnapshot,
}

impl Verb {
    pub const ALL: &'static [Verb] = &[
        Verb::Build,
        Verb::Clean,
        Verb::Summary,
        Verb::CatConfig,
        Verb::Shell,
        Verb::Boot,
        Verb::Vm,
        Verb::Qemu,
        Verb::Ssh,
        Verb::Serve,
        Verb::Bump,
        Verb::Help,
        Verb::Genkey,
        Verb::Documentation,
        Verb::Journalctl,
        Verb::Coredumpctl,
        Verb::Burn,
        Verb::Dependencies,
        Verb::Completion,
        Verb::Sysupdate,
        Verb::Box,
        Verb::Sandbox,
        Verb::Init,
        Verb::LatestSnapshot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Build => "build",
            Verb::Clean => "clean",
            Verb::Summary => "summary",
            Verb::CatConfig => "cat-config",
            Verb::Shell => "shell",
            Verb::Boot => "boot",
            Verb::Vm => "vm",
            Verb::Qemu => "qemu",
            Verb::Ssh => "ssh",
            Verb::Serve => "serve",
            Verb::Bump => "bump",
            Verb::Help => "help",
            Verb::Genkey => "genkey",
            Verb::Documentation => "documentation",
            Verb::Journalctl => "journalctl",
            Verb::Coredumpctl => "coredumpctl",
            Verb::Burn => "burn",
            Verb::Dependencies => "dependencies",
            Verb::Completion => "completion",
            Verb::Sysupdate => "sysupdate",
            Verb::Box => "box",
            Verb::Sandbox => "sandbox",
            Verb::Init => "init",
            Verb::LatestSnapshot => "latest-snapshot",
        }
    }

    pub fn from_name(s: &str) -> Option<Verb> {
        Verb::ALL.iter().copied().find(|v| v.as_str() == s)
    }

    /// Verbs that take arguments after the verb.
    pub fn supports_cmdline(self) -> bool {
        use Verb::*;
        matches!(
            self,
            Build
                | Shell
                | Boot
                | Vm
                | Qemu
                | Ssh
                | Journalctl
                | Coredumpctl
                | Burn
                | Completion
                | Documentation
                | Sysupdate
                | Box
                | Sandbox
                | Dependencies
        )
    }

    /// Verbs that only need the tools tree, not a built image.
    pub fn needs_tools(self) -> bool {
        use Verb::*;
        matches!(self, Box | Sandbox | Journalctl | Coredumpctl | Ssh | LatestSnapshot)
    }

    /// Verbs that build the image if needed.
    pub fn needs_build(self) -> bool {
        use Verb::*;
        matches!(self, Build | Shell | Boot | Vm | Qemu | Serve | Burn | Sysupdate)
    }

    /// Verbs that read the configuration.
    pub fn needs_config(self) -> bool {
        use Verb::*;
        !matches!(self, Help | Genkey | Documentation | Dependencies | Completion | Init)
    }
}

/// Command-line arguments that are not image settings.
#[derive(Debug, Clone)]
pub struct Args {
    pub verb: Verb,
    pub cmdline: Vec<String>,
    pub force: u32,
    /// The invocation directory (`-C`); `None` with `--directory=""`.
    pub directory: Option<PathBuf>,
    pub debug: bool,
    pub debug_shell: bool,
    pub debug_workspace: bool,
    pub debug_sandbox: bool,
    pub debug_timing: bool,
    pub pager: bool,
    pub genkey_valid_days: String,
    pub genkey_common_name: String,
    pub auto_bump: bool,
    pub doc_format: DocFormat,
    pub json: bool,
    pub wipe_build_dir: bool,
    pub rerun_build_scripts: bool,
}

impl Args {
    pub fn new(verb: Verb, directory: Option<PathBuf>) -> Args {
        Args {
            verb,
            cmdline: Vec::new(),
            force: 0,
            directory,
            debug: false,
            debug_shell: false,
            debug_workspace: false,
            debug_sandbox: false,
            debug_timing: false,
            pager: true,
            genkey_valid_days: "730".to_string(),
            genkey_common_name: "mkosi".to_string(),
            auto_bump: false,
            doc_format: DocFormat::Auto,
            json: false,
            wipe_build_dir: false,
            rerun_build_scripts: false,
        }
    }
}

/// Whether a field is part of an image's configuration (and its JSON).
pub fn is_config_field(s: &settings::Setting) -> bool {
    s.scope != Scope::Tools && s.name != "Include"
}

/// The configuration of one image, fully resolved: every setting has its
/// final value, stored as the JSON value upstream prints for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    values: BTreeMap<String, Value>,
}

macro_rules! enum_getter {
    ($fn:ident, $field:literal, $ty:ty) => {
        pub fn $fn(&self) -> $ty {
            self.enum_value($field)
        }
    };
}

impl Config {
    /// Build a configuration from finalized values (extra keys are ignored).
    pub fn from_values(values: impl IntoIterator<Item = (String, Value)>) -> Config {
        let mut map = BTreeMap::new();
        for (k, v) in values {
            let keep = k == "Files" || k == "Image" || settings::by_field(&k).is_some_and(is_config_field);
            if keep {
                map.insert(k, v);
            }
        }
        Config { values: map }
    }

    /// All values, keyed by JSON name.
    pub fn values(&self) -> &BTreeMap<String, Value> {
        &self.values
    }

    pub fn get(&self, field: &str) -> &Value {
        self.values.get(field).unwrap_or(&Value::Null)
    }

    pub fn set(&mut self, field: &str, value: Value) {
        self.values.insert(field.to_string(), value);
    }

    pub fn str(&self, field: &str) -> Option<&str> {
        self.get(field).as_str()
    }

    pub fn bool(&self, field: &str) -> bool {
        self.get(field).as_bool().unwrap_or(false)
    }

    pub fn int(&self, field: &str) -> Option<i64> {
        self.get(field).as_i64()
    }

    pub fn path(&self, field: &str) -> Option<PathBuf> {
        self.str(field).map(PathBuf::from)
    }

    pub fn list(&self, field: &str) -> &[Value] {
        self.get(field).as_array().map(Vec::as_slice).unwrap_or_default()
    }

    pub fn strings(&self, field: &str) -> Vec<String> {
        self.list(field).iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
    }

    pub fn paths(&self, field: &str) -> Vec<PathBuf> {
        self.list(field).iter().filter_map(|v| v.as_str().map(PathBuf::from)).collect()
    }

    /// `(source, target)` pairs of a tree list.
    pub fn trees(&self, field: &str) -> Vec<(PathBuf, Option<PathBuf>)> {
        self.list(field)
            .iter()
            .filter_map(|t| {
                let src = t.get("Source")?.as_str()?;
                let tgt = t.get("Target").and_then(Value::as_str).map(PathBuf::from);
                Some((PathBuf::from(src), tgt))
            })
            .collect()
    }

    pub fn map(&self, field: &str) -> Vec<(String, String)> {
        self.get(field)
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default()
    }

    fn enum_value<T: std::str::FromStr + Copy>(&self, field: &str) -> T {
        match self.str(field).and_then(|s| s.parse().ok()) {
            Some(v) => v,
            None => panic!("setting {field} has no valid value: {:?}", self.get(field)),
        }
    }

    pub fn image(&self) -> &str {
        self.str("Image").unwrap_or("main")
    }

    enum_getter!(distribution, "Distribution", Distribution);
    enum_getter!(architecture, "Architecture", Architecture);
    enum_getter!(output_format, "Format", OutputFormat);
    enum_getter!(compress_output, "CompressOutput", Compression);
    enum_getter!(bootable, "Bootable", Feature);
    enum_getter!(bootloader, "Bootloader", Bootloader);
    enum_getter!(incremental, "Incremental", Incremental);
    enum_getter!(cache_only, "CacheOnly", CacheOnly);

    pub fn release(&self) -> &str {
        self.str("Release").unwrap_or_default()
    }

    pub fn output(&self) -> &str {
        self.str("Output").unwrap_or("image")
    }

    pub fn image_id(&self) -> Option<&str> {
        self.str("ImageId")
    }

    pub fn image_version(&self) -> Option<&str> {
        self.str("ImageVersion")
    }

    pub fn output_with_format(&self) -> String {
        match self.str("OutputExtension").filter(|e| !e.is_empty()) {
            Some(ext) => format!("{}.{ext}", self.output()),
            None => self.output().to_string(),
        }
    }

    pub fn output_with_compression(&self) -> String {
        let mut out = self.output_with_format();
        let c = self.compress_output();
        if !c.is_none() && self.output_format().use_outer_compression() {
            out.push('.');
            out.push_str(c.extension());
        }
        out
    }

    /// `OutputDirectory=`, or the configuration directory of `cwd`.
    pub fn output_dir_or_cwd(&self, cwd: &Path) -> PathBuf {
        self.path("OutputDirectory")
            .unwrap_or_else(|| crate::finalize_configdir(Some(cwd)).unwrap_or(cwd.to_path_buf()))
    }

    /// Expand the delayed `&` specifiers of `CacheKey=`/`BuildKey=`.
    pub fn expand_key_specifiers(&self, key: &str) -> String {
        let spec = |c: char| -> Option<String> {
            Some(match c {
                '&' => "&".to_string(),
                'd' => self.distribution().to_string(),
                'r' => self.release().to_string(),
                'a' => self.architecture().to_string(),
                'i' => self.image_id().unwrap_or_default().to_string(),
                'v' => self.image_version().unwrap_or_default().to_string(),
                'I' => self.image().to_string(),
                _ => return None,
            })
        };
        expand_delayed_specifiers(key, spec)
    }

    /// The build subdirectory (`BuildDirectory=` + expanded `BuildKey=`).
    pub fn build_subdir(&self) -> Option<PathBuf> {
        let dir = self.path("BuildDirectory")?;
        let key = self.expand_key_specifiers(self.str("BuildKey").unwrap_or("&d~&r~&a"));
        Some(if key == "-" { dir } else { dir.join(key) })
    }

    /// The JSON object upstream prints for this image.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.values {
            map.insert(k.clone(), v.clone());
        }
        if let Some(sub) = self.build_subdir() {
            map.insert("BuildSubdirectory".to_string(), json!(sub.to_string_lossy()));
        }
        Value::Object(map)
    }

    /// Read a configuration back from JSON. Keys that are absent take the
    /// values of `defaults` (upstream: the all-default configuration).
    pub fn from_json(json: &Value, defaults: &Config) -> Result<Config> {
        let partial = partial_from_json(json)?;
        let mut values = defaults.values.clone();
        for (k, v) in partial {
            values.insert(k, v);
        }
        Ok(Config { values })
    }
}

/// Map the keys of a (partial) JSON configuration to fields, validating them.
pub fn partial_from_json(json: &Value) -> Result<Vec<(String, Value)>> {
    let Some(obj) = json.as_object() else {
        return Err(Error::new("Serialized configuration is not a JSON object"));
    };
    let mut out = Vec::new();
    for (k, v) in obj {
        if k == "BuildSubdirectory" {
            continue;
        }
        let field = match settings::by_name(k) {
            Some(s) => Some(s.field.to_string()),
            None if k == "Files" || k == "Image" => Some(k.clone()),
            None => None,
        };
        match field {
            Some(f) if settings::by_field(&f).is_none_or(is_config_field) => out.push((f, v.clone())),
            _ => {
                let empty = match v {
                    Value::Array(a) => a.is_empty(),
                    Value::Object(o) => o.is_empty(),
                    _ => false,
                };
                if !empty {
                    return Err(Error::new(format!("Serialized JSON has unknown field {k} with value {v}"))
                        .with_hint("Re-running mkosi once with -f should solve the issue by re-generating the JSON"));
                }
            }
        }
    }
    Ok(out)
}

/// Expand `&x` specifiers with `spec`; unknown ones are dropped with a warning.
pub fn expand_delayed_specifiers(text: &str, spec: impl Fn(char) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '&' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some(n) if n == '&' || n.is_ascii_alphabetic() => {
                chars.next();
                match spec(n) {
                    Some(v) => out.push_str(&v),
                    None => crate::parse::log::warn(&format!("Unknown specifier '&{n}' found in {text}, ignoring")),
                }
            }
            _ => out.push('&'),
        }
    }
    out
}

/// The fields of an image configuration in JSON order.
pub fn config_fields() -> impl Iterator<Item = &'static str> {
    SETTINGS.iter().filter(|s| is_config_field(s)).map(|s| s.field)
}
