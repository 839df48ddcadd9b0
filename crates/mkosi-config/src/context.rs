//! The parse context of one image: the two namespaces (command line and
//! files), cached defaults, `[Match]` evaluation, default paths, drop-ins,
//! includes and profiles.
//!
//! The order of operations and the merge rules follow upstream mkosi
//! exactly, down to its quirks (computed defaults are cached the first time
//! they are needed, so a `[Match]` can pin a default early).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::defaults::{self, FactoryNs};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::ini::{self, Event};
use crate::parse::{self, log, Env};
use crate::pathutil;
use crate::settings::{self, Default, Scope, Section, Setting, SETTINGS};

/// Names of the built-in configurations usable with `Include=`.
pub const BUILTIN_CONFIGS: &[&str] = &["mkosi-tools", "mkosi-initrd", "mkosi-vm", "mkosi-addon", "mkosi-obs"];

#[derive(Clone)]
pub struct Context<'h> {
    pub(crate) host: &'h Host,
    pub(crate) resources: PathBuf,
    /// Values from the command line (and promoted local configuration).
    pub(crate) cli: HashMap<&'static str, Option<Value>>,
    /// Fields assigned the empty value on the command line.
    pub(crate) cli_was_none: HashSet<&'static str>,
    /// Values from configuration files.
    pub(crate) config: HashMap<&'static str, Option<Value>>,
    /// Cached defaults.
    pub(crate) defaults: HashMap<&'static str, Option<Value>>,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) image: String,
    pub(crate) directory: Option<PathBuf>,
    pub(crate) includes: HashSet<(u64, u64)>,
    /// The directory relative paths are resolved against.
    pub(crate) cwd: PathBuf,
}

fn merge(config: Value, cli: Value) -> Value {
    match (config, cli) {
        (Value::Array(mut c), Value::Array(v)) => {
            c.extend(v);
            Value::Array(c)
        }
        (Value::Object(mut c), Value::Object(v)) => {
            for (k, val) in v {
                c.insert(k, val);
            }
            Value::Object(c)
        }
        (_, v) => v,
    }
}

fn file_run_or_read(file: &Path, cwd: &Path) -> Result<String> {
    let executable = {
        let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).map_err(|e| Error::new(e.to_string()))?;
        // SAFETY: access() only reads the NUL-terminated path.
        unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
    };
    if executable {
        let abs = pathutil::absolute(file, cwd);
        let out = std::process::Command::new(&abs)
            .current_dir(cwd)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| Error::new(format!("Failed to run {}: {e}", abs.display())))?;
        if !out.status.success() {
            return Err(Error::new(format!(
                "\"{}\" returned non-zero exit code {}.",
                abs.display(),
                crate::toplevel::exit_code(&out.status)
            )));
        }
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let content = std::fs::read(file).map_err(|e| Error::new(format!("Failed to read {}: {e}", file.display())))?;
    let content = String::from_utf8_lossy(&content).into_owned();
    if content.starts_with("#!/") {
        let first = content.lines().next().unwrap_or_default();
        return Err(Error::new(format!("{} starts with a shebang ({first})", file.display()))
            .with_hint("This file should be executable"));
    }
    Ok(content)
}

impl<'h> Context<'h> {
    pub fn new(host: &'h Host, resources: PathBuf, cwd: PathBuf) -> Context<'h> {
        Context {
            host,
            resources,
            cli: HashMap::new(),
            cli_was_none: HashSet::new(),
            config: HashMap::new(),
            defaults: HashMap::new(),
            files: Vec::new(),
            image: "main".to_string(),
            directory: None,
            includes: HashSet::new(),
            cwd,
        }
    }

    fn env(&self) -> Env<'_> {
        Env { cwd: &self.cwd, host: self.host }
    }

    /// Parse `value` for `setting` into the command-line namespace.
    pub fn set_cli(&mut self, setting: &'static Setting, value: Option<&str>, cwd: &Path) -> Result<()> {
        let env = Env { cwd, host: self.host };
        let old = self.cli.get(setting.field).cloned().flatten();
        let parsed = setting.parser.parse(value, old.as_ref(), &env)?;
        if parsed.is_none() {
            self.cli_was_none.insert(setting.field);
        }
        self.cli.insert(setting.field, parsed);
        Ok(())
    }

    pub(crate) fn setting_prohibited(&self, s: &Setting) -> bool {
        let image = self.image.as_str();
        (!s.tools && image == "tools")
            || (s.scope.is_main_setting() && image != "main")
            || (s.scope == Scope::Universal && image != "main" && image != "tools")
    }

    /// The value a setting has given everything parsed so far.
    pub fn finalize_value(&mut self, s: &'static Setting) -> Result<Option<Value>> {
        let field = s.field;
        if let Some(Some(v)) = self.cli.get(field) {
            let cfg = self.config.get(field).cloned().flatten();
            return Ok(Some(match cfg {
                Some(c) if !self.cli_was_none.contains(field) => merge(c, v.clone()),
                _ => v.clone(),
            }));
        }

        if !self.cli.contains_key(field) {
            if let Some(Some(v)) = self.config.get(field) {
                return Ok(Some(v.clone()));
            }
        }

        let explicitly_set = self.cli.contains_key(field) || self.config.contains_key(field);
        let default = if explicitly_set && s.nullable {
            s.parser.parse(None, None, &self.env())?
        } else if let Some(d) = self.defaults.get(field) {
            d.clone()
        } else {
            match s.default {
                Default::Factory(f, deps) => {
                    let mut values = HashMap::new();
                    for d in deps {
                        let dep = settings::by_field(d).ok_or_else(|| Error::new(format!("unknown setting {d}")))?;
                        values.insert(dep.field, self.finalize_value(dep)?);
                    }
                    let ns =
                        FactoryNs { values, image: &self.image, directory: self.directory.as_deref(), host: self.host };
                    defaults::compute(f, &ns)?
                }
                Default::Static(json) => Some(
                    serde_json::from_str(json).map_err(|e| Error::new(format!("bad default of {}: {e}", s.name)))?,
                ),
                Default::Natural => s.parser.parse(None, None, &self.env())?,
            }
        };
        self.defaults.insert(field, default.clone());
        Ok(default)
    }

    /// Expand `%` specifiers in a value read from `path`.
    pub fn expand_specifiers(&mut self, text: &str, path: &Path) -> Result<String> {
        if !text.contains('%') {
            return Ok(text.to_string());
        }
        let mut result = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                result.push(c);
                continue;
            }
            let Some(c) = chars.next() else {
                result.push('%');
                break;
            };
            if c == '%' {
                result.push('%');
            } else if let Some(setting) = settings::by_specifier(c) {
                match self.finalize_value(setting)? {
                    Some(v) if !v.is_null() => result.push_str(&value_to_string(&v)),
                    _ => log::warn(&format!(
                        "{}: Setting {} specified by specifier '%{c}' in {text} is not yet set, ignoring",
                        path.display(),
                        setting.name
                    )),
                }
            } else {
                match c {
                    'C' => {
                        let parent = pathutil::resolve(path, &self.cwd);
                        result.push_str(&parent.parent().unwrap_or(Path::new("/")).to_string_lossy());
                    }
                    'P' => result.push_str(&self.cwd.to_string_lossy()),
                    'D' => match &self.directory {
                        Some(d) => result.push_str(&pathutil::resolve(d, &self.cwd).to_string_lossy()),
                        None => {
                            return Err(Error::new(format!(
                                "%D cannot be used in {text} when no directory is configured (--directory=\"\")"
                            )))
                        }
                    },
                    'F' => {
                        let dist = settings::by_field("Distribution").ok_or_else(|| Error::new("no Distribution"))?;
                        match self.finalize_value(dist)? {
                            Some(Value::String(d)) => {
                                let fs = d.parse::<crate::enums::Distribution>().map(|d| d.filesystem()).unwrap_or("ext4");
                                result.push_str(fs);
                            }
                            _ => log::warn(&format!(
                                "{}: Setting Distribution which specifier '%F' in {text} depends on is not yet set, ignoring",
                                path.display()
                            )),
                        }
                    }
                    'I' => result.push_str(&self.image),
                    _ => log::warn(&format!("{}: Unknown specifier '%{c}' found in {text}, ignoring", path.display())),
                }
            }
        }
        Ok(result)
    }

    /// Evaluate the `[Match]`/`[TriggerMatch]` (or, with `asserts`, the
    /// `[Assert]`/`[TriggerAssert]`) sections of `path`.
    pub fn match_config(&mut self, path: &Path, asserts: bool) -> Result<bool> {
        let abs = pathutil::absolute(path, &self.cwd);
        if !abs.exists() {
            return Ok(true);
        }
        let (plain, trigger) = if asserts { ("Assert", "TriggerAssert") } else { ("Match", "TriggerMatch") };
        let text = read_config(&abs)?;
        let events = ini::parse(&text, &|s| s == plain || s == trigger)
            .map_err(|e| Error::new(e.message).at(&abs, Some(e.line), None))?;

        let mut condition_triggered: Option<bool> = None;
        let mut match_triggered: Option<bool> = None;
        let mut skip = false;

        for ev in events {
            let (section, key, value, line) = match ev {
                Event::SectionEnd { section, line } => {
                    if condition_triggered == Some(false) {
                        if section == "Assert" {
                            return Err(Error::new("Trigger condition in [Assert] section was not satisfied").at(
                                &abs,
                                Some(line),
                                None,
                            ));
                        } else if section == "Match" {
                            return Ok(false);
                        }
                    }
                    if section == "TriggerAssert" || section == "TriggerMatch" {
                        match_triggered = Some(match_triggered.unwrap_or(false) || condition_triggered != Some(false));
                    }
                    condition_triggered = None;
                    skip = false;
                    continue;
                }
                Event::Setting { section, key, value, line } => (section, key, value, line),
            };
            if skip {
                continue;
            }
            let at = |e: Error| e.at(&abs, Some(line), Some(&key));

            let raw = value.clone();
            let trig = value.starts_with('|');
            let v = value.strip_prefix('|').unwrap_or(&value);
            let negate = v.starts_with('!');
            let v = v.strip_prefix('!').unwrap_or(v);
            let v = self.expand_specifiers(v, &abs).map_err(at)?;

            let mut result = if let Some(s) = settings::by_name(&key) {
                let Some(matcher) = s.matcher else {
                    return Err(at(Error::new(format!("{key} cannot be used in [{section}]"))));
                };
                if s.scope == Scope::Main && self.image != "main" {
                    return Err(at(Error::new(format!("{key} cannot be matched on outside of the main image"))));
                }
                if key != s.name {
                    log::warn(&format!(
                        "{}: Setting {key} is deprecated, please use {} instead.",
                        abs.display(),
                        s.name
                    ));
                }
                match self.finalize_value(s).map_err(at)? {
                    None | Some(Value::Null) => false,
                    Some(value) => matcher.matches(&v, &value).map_err(at)?,
                }
            } else {
                match key.as_str() {
                    "PathExists" => !v.is_empty() && pathutil::absolute(Path::new(&v), &self.cwd).exists(),
                    "SystemdVersion" => {
                        !v.is_empty()
                            && match self.host.systemd_version() {
                                Some(sv) => crate::version::version_matches(&v, sv),
                                None => return Err(at(Error::new("Could not determine the host's systemd version"))),
                            }
                    }
                    "HostArchitecture" => {
                        let a: crate::enums::Architecture =
                            v.parse().map_err(|_| at(Error::new(format!("'{v}' is not a valid Architecture"))))?;
                        a == self.host.arch()
                    }
                    "Image" => v == self.image,
                    _ => return Err(at(Error::new(format!("{key} cannot be used in [{section}]")))),
                }
            };

            if negate {
                result = !result;
            }
            if !trig && !result {
                if section.starts_with("Trigger") {
                    skip = true;
                    condition_triggered = Some(false);
                    continue;
                }
                if asserts {
                    return Err(at(Error::new(format!("{key}={raw} in [Assert] section was not satisfied"))));
                }
                return Ok(false);
            }
            if trig {
                condition_triggered = Some(condition_triggered.unwrap_or(false) || result);
            }
        }

        if match_triggered == Some(false) && asserts {
            return Err(Error::new("None of the [TriggerAssert] sections was satisfied").at(&abs, None, None));
        }
        Ok(match_triggered != Some(false))
    }

    /// Run `f` with the parse directory temporarily changed to `dir`. Like
    /// upstream's `chdir()`, the working directory is the physical one
    /// (symlinks resolved), which `%P`, relative paths and `Path.cwd()` see.
    pub(crate) fn with_cwd<T>(&mut self, dir: &Path, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let old = std::mem::replace(&mut self.cwd, dir);
        let r = f(self);
        self.cwd = old;
        r
    }

    /// Parse directory `dir` the way upstream parses `Path.cwd()` after
    /// changing into it: through its physical path.
    pub(crate) fn parse_dir(&mut self, dir: &Path, parse_profiles: bool, parse_local: bool) -> Result<bool> {
        self.with_cwd(dir, |c| {
            let cwd = c.cwd.clone();
            c.parse_config_one(&cwd, parse_profiles, parse_local)
        })
    }

    /// Parse a configuration file, or a configuration directory (its
    /// `mkosi.conf`, default paths, local configuration, drop-ins and
    /// profiles). Returns `false` when its `[Match]` sections did not match.
    pub fn parse_config_one(&mut self, path: &Path, parse_profiles: bool, parse_local: bool) -> Result<bool> {
        let extras = path.is_dir();
        let path = if extras { path.join("mkosi.conf") } else { path.to_path_buf() };

        if !self.match_config(&path, false)? {
            return Ok(false);
        }
        self.match_config(&path, true)?;

        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();

        if extras {
            if parse_local {
                let local_dir = dir.join("mkosi.local");
                let local_conf = dir.join("mkosi.local.conf");
                let mut locals = Vec::new();
                if local_dir.is_dir() {
                    locals.push(local_dir);
                }
                if local_conf.is_file() {
                    locals.push(local_conf);
                }
                for local in locals {
                    if local.is_dir() {
                        self.parse_dir(&local, false, false)?;
                    } else {
                        self.parse_config_one(&local, false, false)?;
                    }
                    // Local configuration overrides the other files but not the command line.
                    for s in SETTINGS {
                        if self.config.contains_key(s.field) {
                            let v = self.finalize_value(s)?;
                            self.cli.insert(s.field, v);
                            self.config.remove(s.field);
                        }
                    }
                }
            }

            self.parse_default_paths()?;
        }

        let abs = pathutil::absolute(&path, &self.cwd);
        if abs.exists() {
            self.parse_file(&abs)?;
        }

        if extras {
            let dropins = dir.join("mkosi.conf.d");
            if dropins.exists() {
                for p in sorted_entries(&dropins)? {
                    if p.is_dir() {
                        self.parse_dir(&p, false, false)?;
                    } else if p.extension().is_some_and(|e| e == "conf") {
                        if !p.is_file() {
                            // Upstream recurses into the current directory
                            // forever for these (dangling symlinks, sockets…).
                            return Err(Error::new(format!(
                                "{} is neither a regular file nor a directory",
                                p.display()
                            ))
                            .at(&p, None, None));
                        }
                        self.parse_config_one(&p, false, false)?;
                    }
                }
            }
        }

        if parse_profiles {
            let profiles_setting = settings::by_field("Profiles").ok_or_else(|| Error::new("no Profiles setting"))?;
            let profiles = self.finalize_value(profiles_setting)?;
            let profiles: Vec<String> = profiles
                .as_ref()
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            for profile in profiles {
                for name in [profile.clone(), format!("{profile}.conf")] {
                    let p = self.cwd.join("mkosi.profiles").join(name);
                    if p.is_dir() {
                        self.parse_dir(&p, false, false)?;
                    } else if p.exists() {
                        self.parse_config_one(&p, false, false)?;
                    }
                }
            }
        }

        Ok(true)
    }

    fn assign(&mut self, s: &'static Setting, value: &str) -> Result<()> {
        let old = self.config.get(s.field).cloned().flatten();
        let parsed = s.parser.parse(Some(value), old.as_ref(), &self.env())?;
        self.config.insert(s.field, parsed);
        Ok(())
    }

    fn parse_default_paths(&mut self) -> Result<()> {
        for s in SETTINGS {
            if self.setting_prohibited(s) || (s.paths.is_empty() && s.recursive_paths.is_empty()) {
                continue;
            }
            for suffix in s.paths {
                let name = format!("mkosi.{suffix}");
                let abs = self.cwd.join(&name);
                if !abs.exists() {
                    continue;
                }
                let at = |e: Error| e.at(&abs, None, Some(s.name));
                if s.secret {
                    parse::check_secret(&abs).map_err(at)?;
                }
                if s.read_text {
                    let text = file_run_or_read(&abs, &self.cwd).map_err(at)?;
                    self.assign(s, text.trim_end_matches('\n')).map_err(at)?;
                } else {
                    self.assign(s, &name).map_err(at)?;
                }
            }
            for pattern in s.recursive_paths {
                let (base, glob) = pattern.split_once('/').unwrap_or((pattern, "*"));
                let base = format!("mkosi.{base}");
                let dir = self.cwd.join(&base);
                if !dir.exists() {
                    continue;
                }
                if !dir.is_dir() {
                    return Err(Error::new(format!("{} should be a directory, but isn't.", dir.display())));
                }
                for entry in sorted_entries(&dir)? {
                    let Some(fname) = entry.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
                    if !crate::pyglob::fnmatch(glob, &fname) {
                        continue;
                    }
                    let rel = format!("{base}/{fname}");
                    let at = |e: Error| e.at(&entry, None, Some(s.name));
                    if !entry.exists() {
                        // Dangling symlinks.
                        return Err(at(Error::new(format!("{rel} does not exist"))));
                    }
                    if s.secret {
                        parse::check_secret(&entry).map_err(at)?;
                    }
                    self.assign(s, &rel).map_err(at)?;
                }
            }
        }
        Ok(())
    }

    fn parse_file(&mut self, abs: &Path) -> Result<()> {
        log::debug(&format!("Loading configuration file {}", abs.display()));
        self.files.push(abs.to_path_buf());
        let text = read_config(abs)?;
        let events = ini::parse(&text, &|s| Section::from_name(s).is_some())
            .map_err(|e| Error::new(e.message).at(abs, Some(e.line), None))?;

        for ev in events {
            let Event::Setting { section, key, value, line } = ev else { continue };
            let name = match key.strip_prefix('@') {
                Some(n) => {
                    log::warn(&format!(
                        "{}: The '@' specifier is deprecated, please use {n} instead of {key}",
                        abs.display()
                    ));
                    n
                }
                None => key.as_str(),
            };
            let Some(s) = settings::by_name(name) else {
                log::warn(&format!("{}:{line}: Unknown setting {name}", abs.display()));
                continue;
            };
            let at = |e: Error| e.at(abs, Some(line), Some(name));
            if self.setting_prohibited(s) {
                return Err(at(Error::new(format!("Setting {name} cannot be configured in {} image", self.image))));
            }
            if section != s.section.as_str() {
                log::warn(&format!(
                    "{}:{line}: Setting {name} should be configured in [{}], not [{section}].",
                    abs.display(),
                    s.section.as_str()
                ));
            }
            if name != s.name {
                log::warn(&format!(
                    "{}:{line}: Setting {name} is deprecated, please use {} instead.",
                    abs.display(),
                    s.name
                ));
            }
            let v = self.expand_specifiers(&value, abs).map_err(at)?;
            self.assign(s, &v).map_err(at)?;
            self.parse_new_includes().map_err(at)?;
        }
        Ok(())
    }

    /// Parse includes that were added since the last call.
    pub fn parse_new_includes(&mut self) -> Result<()> {
        let mut includes: Vec<String> = Vec::new();
        for ns in [&self.cli, &self.config] {
            if let Some(Some(Value::Array(a))) = ns.get("Include") {
                includes.extend(a.iter().filter_map(|v| v.as_str().map(str::to_string)));
            }
        }
        for inc in includes {
            let path =
                if BUILTIN_CONFIGS.contains(&inc.as_str()) { self.resources.join(&inc) } else { PathBuf::from(&inc) };
            let md =
                std::fs::metadata(&path).map_err(|e| Error::new(format!("Cannot include {}: {e}", path.display())))?;
            if !self.includes.insert((md.dev(), md.ino())) {
                continue;
            }
            if md.is_dir() {
                self.parse_dir(&path, true, false)?;
            } else {
                self.parse_config_one(&path, false, false)?;
            }
        }
        Ok(())
    }

    /// The finalized value of every field.
    pub fn finalize(&mut self) -> Result<HashMap<&'static str, Value>> {
        let mut out = HashMap::new();
        for s in SETTINGS {
            let v = self.finalize_value(s)?;
            out.insert(s.field, v.unwrap_or(Value::Null));
        }
        Ok(out)
    }
}

/// Entries of a directory sorted by name.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::new(format!("Failed to read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

fn read_config(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::new(format!("Failed to read {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|_| Error::new("File is not valid UTF-8").at(path, None, None))
}

/// A value as upstream's `str()` prints it inside a specifier.
pub fn value_to_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "None".to_string(),
        other => other.to_string(),
    }
}
