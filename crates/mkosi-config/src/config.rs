//! A finalized image configuration and the command-line arguments that are
//! not settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::enums::*;
use crate::error::{Error, Result};
use crate::settings::{self, Item, Parser, Scope, SETTINGS};

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
    ($fn:ident, $field:literal, $ty:ty, $fallback:expr) => {
        /// The setting's value; values that do not parse (only possible
        /// through [`Config::set`], since [`Config::from_json`] validates)
        /// read as the given fallback.
        pub fn $fn(&self) -> $ty {
            self.enum_value($field).unwrap_or($fallback)
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

    fn enum_value<T: std::str::FromStr + Copy>(&self, field: &str) -> Option<T> {
        self.str(field).and_then(|s| s.parse().ok())
    }

    pub fn image(&self) -> &str {
        self.str("Image").unwrap_or("main")
    }

    enum_getter!(distribution, "Distribution", Distribution, Distribution::Custom);
    enum_getter!(architecture, "Architecture", Architecture, Architecture::native());
    enum_getter!(output_format, "Format", OutputFormat, OutputFormat::Disk);
    enum_getter!(compress_output, "CompressOutput", Compression, Compression::None);
    enum_getter!(bootable, "Bootable", Feature, Feature::Auto);
    enum_getter!(bootloader, "Bootloader", Bootloader, Bootloader::SystemdBoot);
    enum_getter!(incremental, "Incremental", Incremental, Incremental::No);
    enum_getter!(cache_only, "CacheOnly", CacheOnly, CacheOnly::Auto);

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

/// Settings whose upstream `dest` is not what upstream's fallback key
/// transformation (`OutputDir` → `output_dir`) derives from their name.
const DEST_EXCEPTIONS: &[(&str, &str)] = &[
    ("Format", "output_format"),
    ("OutputDirectory", "output_dir"),
    ("RepartDirectories", "repart_dirs"),
    ("PostInstallationScripts", "postinst_scripts"),
    ("PostOutputScripts", "postoutput_scripts"),
    ("KernelModules", "kernel_modules_include"),
    ("KernelInitrdModules", "kernel_modules_initrd_include"),
    ("FirmwareFiles", "firmware_include"),
    ("OpenPGPTool", "openpgp_tool"),
    ("CacheOnly", "cacheonly"),
    ("WorkspaceDirectory", "workspace_dir"),
    ("CacheDirectory", "cache_dir"),
    ("PackageCacheDirectory", "package_cache_dir"),
    ("BuildDirectory", "build_dir"),
    ("ForeignUIDRange", "foreign_uid_range"),
    ("VirtualMachineMonitor", "vmm"),
    ("SysupdateDirectory", "sysupdate_dir"),
    ("MaxMem", "maxmem"),
];

/// Upstream's fallback mapping of a JSON key to a field name: split at
/// lower-to-upper case boundaries and join the lower-cased parts with `_`.
fn fallback_dest(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower = false;
    for c in key.chars() {
        if prev_lower && c.is_ascii_uppercase() {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase();
        out.extend(c.to_lowercase());
    }
    out
}

/// Upstream's internal name (`dest`) of a setting.
fn dest_of(s: &settings::Setting) -> String {
    match DEST_EXCEPTIONS.iter().find(|(n, _)| *n == s.name) {
        Some((_, d)) => d.to_string(),
        None => fallback_dest(s.name),
    }
}

/// The field a JSON key names, the way upstream's `from_partial_json()`
/// maps keys: setting names (and old names) first, then `dest` names.
fn json_key_field(key: &str) -> Option<String> {
    if let Some(s) = settings::by_name(key) {
        return is_config_field(s).then(|| s.field.to_string());
    }
    let dest = fallback_dest(key);
    match dest.as_str() {
        "files" => return Some("Files".to_string()),
        "image" => return Some("Image".to_string()),
        _ => {}
    }
    SETTINGS.iter().find(|s| dest_of(s) == dest).filter(|s| is_config_field(s)).map(|s| s.field.to_string())
}

/// Map the keys of a (partial) JSON configuration to fields, validating and
/// normalizing their values (so the typed getters never see a value of the
/// wrong shape).
pub fn partial_from_json(json: &Value) -> Result<Vec<(String, Value)>> {
    let Some(obj) = json.as_object() else {
        return Err(Error::new("Serialized configuration is not a JSON object"));
    };
    let mut out = Vec::new();
    for (k, v) in obj {
        if k == "BuildSubdirectory" {
            continue;
        }
        let Some(field) = json_key_field(k) else {
            let empty = match v {
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            };
            let dest = fallback_dest(k);
            if empty {
                return Err(Error::new(format!("Config has no field {dest}")));
            }
            return Err(Error::new(format!("Serialized JSON has unknown field {dest} with value {v}"))
                .with_hint("Re-running mkosi once with -f should solve the issue by re-generating the JSON"));
        };
        let value = validate_json_value(&field, v)
            .ok_or_else(|| Error::new(format!("Unable to parse {v} for attribute {k} for Config")))?;
        out.push((field, value));
    }
    Ok(out)
}

fn json_str(v: &Value) -> Option<Value> {
    v.as_str().map(|s| Value::String(s.to_string()))
}

fn json_opt_str(v: &Value) -> Option<Value> {
    if v.is_null() {
        Some(Value::Null)
    } else {
        json_str(v)
    }
}

fn json_enum(v: &Value, values: &[&str]) -> Option<Value> {
    v.as_str().filter(|s| values.contains(s)).map(|s| Value::String(s.to_string()))
}

fn json_uuid(v: &Value) -> Option<Value> {
    let u = crate::parse::py_uuid(v.as_str()?)?;
    Some(Value::String(u.to_string()))
}

fn json_int(v: &Value, nullable: bool) -> Option<Value> {
    if v.is_null() && nullable {
        return Some(Value::Null);
    }
    v.as_i64().map(|i| json!(i))
}

fn json_list(v: &Value, item: impl Fn(&Value) -> Option<Value>) -> Option<Value> {
    v.as_array()?.iter().map(item).collect::<Option<Vec<_>>>().map(Value::Array)
}

fn json_tree(v: &Value) -> Option<Value> {
    let o = v.as_object()?;
    let source = o.get("Source")?.as_str()?;
    let target = json_opt_str(o.get("Target")?)?;
    Some(json!({"Source": source, "Target": target}))
}

fn json_drive(v: &Value) -> Option<Value> {
    let o = v.as_object()?;
    let id = o.get("Id")?.as_str()?;
    let size = match o.get("Size")? {
        Value::String(s) => crate::parse::parse_bytes(s).ok()?,
        other => other.as_i64()?,
    };
    let directory = o.get("Directory").and_then(Value::as_str).filter(|d| !d.is_empty());
    let options = json_opt_str(o.get("Options").unwrap_or(&Value::Null))?;
    let file_id = match o.get("FileId") {
        Some(f) => f.as_str()?,
        None => id,
    };
    let flags = match o.get("Flags") {
        Some(f) => json_list(f, |x| json_enum(x, DriveFlag::VALUES))?,
        None => json!([]),
    };
    Some(json!({
        "Directory": directory,
        "FileId": file_id,
        "Flags": flags,
        "Id": id,
        "Options": options,
        "Size": size,
    }))
}

fn json_uki_profile(v: &Value) -> Option<Value> {
    let o = v.as_object()?;
    let profile = o.get("Profile")?.as_object()?;
    if !profile.values().all(Value::is_string) {
        return None;
    }
    let cmdline = json_list(o.get("Cmdline")?, json_str)?;
    let sign = o.get("SignExpectedPcr")?.as_bool()?;
    Some(json!({"Cmdline": cmdline, "Profile": profile, "SignExpectedPcr": sign}))
}

fn json_credential(v: &Value) -> Option<Value> {
    let o = v.as_object()?;
    let name = o.get("Name")?.as_str()?;
    let value = json_opt_str(o.get("Value").unwrap_or(&Value::Null))?;
    let path = o.get("Path").and_then(Value::as_str).filter(|p| !p.is_empty());
    Some(json!({"Name": name, "Path": path, "Value": value}))
}

fn json_source(v: &Value, types: &[&str]) -> Option<Value> {
    let o = v.as_object()?;
    let typ = json_enum(o.get("Type")?, types)?;
    let source = match o.get("Source") {
        Some(s) => s.as_str()?,
        None => "",
    };
    Some(json!({"Source": source, "Type": typ}))
}

fn json_item(item: &Item, v: &Value) -> Option<Value> {
    match item {
        Item::Str | Item::Path(_) | Item::Profile | Item::KmodRegex => json_str(v),
        Item::Tree { .. } => json_tree(v),
        Item::Enum(_, values) => json_enum(v, values),
        Item::Drive => json_drive(v),
        Item::UkiProfile => json_uki_profile(v),
    }
}

/// Check that `v` has the shape the parser of `field` produces, and
/// normalize it the way upstream's JSON transformers do.
fn validate_json_value(field: &str, v: &Value) -> Option<Value> {
    match field {
        "Files" => return json_list(v, json_str),
        "Image" => return json_str(v),
        _ => {}
    }
    let s = settings::by_field(field)?;
    match &s.parser {
        Parser::Bool => v.as_bool().map(Value::Bool),
        Parser::Feature => json_enum(v, Feature::VALUES),
        Parser::Str
        | Parser::Filename(_)
        | Parser::Path(_)
        | Parser::Key
        | Parser::Certificate
        | Parser::MinimumVersion => json_opt_str(v),
        Parser::Enum(_, values) | Parser::EnumBool { values, .. } => json_enum(v, values),
        Parser::Compression => json_enum(v, Compression::VALUES),
        Parser::KeySource => json_source(v, KeySourceType::VALUES),
        Parser::CertificateSource => json_source(v, CertificateSourceType::VALUES),
        Parser::Uuid if v.is_null() && s.nullable => Some(Value::Null),
        Parser::Uuid => json_uuid(v),
        Parser::SourceDateEpoch
        | Parser::CompressLevel
        | Parser::Mode
        | Parser::Bytes
        | Parser::Number
        | Parser::SectorSize
        | Parser::VsockCid => json_int(v, true),
        Parser::RootPassword => match v {
            Value::Null => Some(Value::Null),
            Value::Array(a) if a.len() == 2 => Some(json!([a[0].as_str()?, a[1].as_bool()?])),
            _ => None,
        },
        // A default factory may leave a list unset (ProxyExclude=).
        Parser::List(_) if v.is_null() => Some(Value::Null),
        Parser::List(opts) => json_list(v, |x| json_item(&opts.item, x)),
        Parser::Dict(_) => {
            let o = v.as_object()?;
            o.values().all(Value::is_string).then(|| v.clone())
        }
        Parser::Credentials => json_list(v, json_credential),
        Parser::SplitArtifacts => json_list(v, |x| json_enum(x, ArtifactOutput::VALUES)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;
    use crate::toplevel::parse_config;

    /// A fully parsed configuration exercising many value shapes.
    fn sample() -> Config {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("drv")).unwrap();
        std::fs::write(root.join("uki.conf"), "[UKIProfile]\nProfile=ID=a\nCmdline=x y\n").unwrap();
        std::fs::write(
            root.join("mkosi.conf"),
            "[Distribution]\nDistribution=fedora\n[Output]\nOutputMode=600\nSeed=random\n\
             [Content]\nPackages=a b\nSkeletonTrees=drv:/x\nRootPassword=hashed:x\nMachineId=random\n\
             UnifiedKernelImageProfiles=uki.conf\n[Validation]\nSecureBootKeySource=engine:e\n\
             [Runtime]\nDrives=d:1G:drv::f:persist\nCredentials=a=b\nVSockCID=hash\n[Build]\nEnvironment=A=1\n\
             BuildDirectory=build\n",
        )
        .unwrap();
        let host = Host::new(
            vec![("MKOSI_HOST_DISTRIBUTION".into(), "debian".into())],
            Architecture::X86_64,
            root.join("hostroot"),
        );
        let parsed =
            parse_config(Args::new(Verb::Summary, Some(root.clone())), &[], &host, Path::new("/nonexistent"), &root)
                .unwrap();
        parsed.images.last().unwrap().clone()
    }

    #[test]
    fn json_round_trip() {
        let config = sample();
        let json = config.to_json();
        assert!(json.get("BuildSubdirectory").is_some());
        let back = Config::from_json(&json, &Config::from_values(vec![])).unwrap();
        assert_eq!(back.to_json(), json);
        assert_eq!(back, config);
    }

    #[test]
    fn json_keys_like_upstream() {
        let defaults = sample();
        // Old names and upstream's internal names are accepted too.
        let c =
            Config::from_json(&json!({"QemuMem": 4096, "OutputDir": "/o", "Cacheonly": "never"}), &defaults).unwrap();
        assert_eq!(c.int("RAM"), Some(4096));
        assert_eq!(c.str("OutputDirectory"), Some("/o"));
        assert_eq!(c.cache_only(), CacheOnly::Never);
        // Absent keys keep the defaults; BuildSubdirectory is derived.
        assert_eq!(c.strings("Packages"), vec!["a", "b"]);
        let c = Config::from_json(&json!({"BuildSubdirectory": "/elsewhere"}), &defaults).unwrap();
        assert_eq!(c, defaults);
        // Unknown keys fail, even with empty values.
        for bad in [json!({"NoSuchThing": 1}), json!({"NoSuchThing": []}), json!({"ToolsTreeDistribution": "arch"})] {
            assert!(Config::from_json(&bad, &defaults).is_err(), "{bad}");
        }
        assert!(Config::from_json(&json!([]), &defaults).is_err());
    }

    #[test]
    fn json_values_are_validated() {
        let defaults = sample();
        let bad = [
            json!({"Distribution": "gentoo"}),
            json!({"Distribution": null}),
            json!({"Format": 1}),
            json!({"CompressOutput": "zst"}),
            json!({"Bootable": true}),
            json!({"WithDocs": "yes"}),
            json!({"Seed": "not-a-uuid"}),
            json!({"Seed": null}),
            json!({"RAM": "2G"}),
            json!({"Packages": "vim"}),
            json!({"Packages": [1]}),
            json!({"SkeletonTrees": [{"Source": "/a"}]}),
            json!({"SkeletonTrees": ["/a"]}),
            json!({"Environment": {"A": 1}}),
            json!({"RootPassword": ["x"]}),
            json!({"SecureBootKeySource": {"Type": "tpm"}}),
            json!({"Drives": [{"Id": "x"}]}),
            json!({"Drives": [{"Id": "x", "Size": "12T"}]}),
            json!({"Drives": [{"Id": "x", "Size": 1, "Flags": ["bogus"]}]}),
            json!({"UnifiedKernelImageProfiles": [{"Profile": {}, "Cmdline": []}]}),
            json!({"Credentials": [{"Value": "x"}]}),
            json!({"SplitArtifacts": ["bogus"]}),
            json!({"ManifestFormat": ["yaml"]}),
            json!({"Files": "x"}),
            json!({"Image": null}),
        ];
        for b in bad {
            let e = Config::from_json(&b, &defaults).expect_err(&b.to_string());
            assert!(e.message.starts_with("Unable to parse"), "{b}: {}", e.message);
        }
    }

    #[test]
    fn json_values_are_normalized() {
        let defaults = sample();
        let c = Config::from_json(
            &json!({
                "Seed": "C2C2C2C2000040008000000000000003",
                "Drives": [{"Id": "x", "Size": "1M"}],
                "SecureBootKeySource": {"Type": "engine"},
                "Credentials": [{"Name": "n", "Path": ""}],
            }),
            &defaults,
        )
        .unwrap();
        assert_eq!(c.str("Seed"), Some("c2c2c2c2-0000-4000-8000-000000000003"));
        assert_eq!(
            c.get("Drives"),
            &json!([{"Directory": null, "FileId": "x", "Flags": [], "Id": "x", "Options": null, "Size": 1048576}])
        );
        assert_eq!(c.get("SecureBootKeySource"), &json!({"Source": "", "Type": "engine"}));
        assert_eq!(c.get("Credentials"), &json!([{"Name": "n", "Path": null, "Value": null}]));
    }

    #[test]
    fn getters_never_panic() {
        let mut c = sample();
        for field in ["Distribution", "Architecture", "Format", "CompressOutput", "Bootable", "Bootloader"] {
            c.set(field, json!(42));
        }
        c.set("Incremental", Value::Null);
        c.set("CacheOnly", json!(["x"]));
        assert_eq!(c.distribution(), Distribution::Custom);
        assert_eq!(c.output_format(), OutputFormat::Disk);
        assert_eq!(c.compress_output(), Compression::None);
        assert_eq!(c.bootable(), Feature::Auto);
        assert_eq!(c.bootloader(), Bootloader::SystemdBoot);
        assert_eq!(c.incremental(), Incremental::No);
        assert_eq!(c.cache_only(), CacheOnly::Auto);
        let _ = c.architecture();
        let _ = c.output_with_compression();
        let _ = c.build_subdir();
    }

    #[test]
    fn fallback_dest_names() {
        assert_eq!(fallback_dest("OutputDir"), "output_dir");
        assert_eq!(fallback_dest("NSpawnSettings"), "nspawn_settings");
        assert_eq!(fallback_dest("CPUs"), "cpus");
        assert_eq!(fallback_dest("OpenPGPTool"), "open_pgptool");
        for s in SETTINGS {
            assert_eq!(json_key_field(s.name).is_some(), is_config_field(s), "{}", s.name);
        }
    }
}
