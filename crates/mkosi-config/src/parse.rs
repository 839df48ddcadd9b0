//! Value parsers and `[Match]` comparisons for every kind of setting.
//!
//! Parsed values are stored as JSON values in exactly the shape upstream's
//! `--json summary` prints them, so a configuration can be serialized, read
//! back and compared without any conversion layer.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::enums::{
    Architecture, ArtifactOutput, CertificateSourceType, Compression, DriveFlag, Feature, KeySourceType,
};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::ini;
use crate::pathutil;
use crate::settings::{DictItem, Item, ListOpts, Matcher, Parser, PathOpts, Split};
use crate::shlex;
use crate::version;

/// The version of upstream mkosi whose behaviour this implementation follows.
pub const MKOSI_VERSION: &str = "27~devel";

/// What a parser may look at besides the value: the directory relative paths
/// are resolved against, and the host (environment variables, home directory).
pub struct Env<'a> {
    pub cwd: &'a Path,
    pub host: &'a Host,
}

/// Python's `int()` of a string in the given radix: surrounding whitespace,
/// a sign, the radix prefix (`0o` for 8, `0x` for 16, `0b` for 2) and single
/// underscores between digits are allowed.
pub fn py_int(s: &str, radix: u32) -> Option<i64> {
    let (neg, v) = py_uint(s, radix)?;
    let v = i64::try_from(v).ok()?;
    Some(if neg { -v } else { v })
}

/// Sign and magnitude of Python's `int()` of a string.
fn py_uint(s: &str, radix: u32) -> Option<(bool, u128)> {
    let s = ini::py_strip(s);
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let prefix = match radix {
        2 => Some("0b"),
        8 => Some("0o"),
        16 => Some("0x"),
        _ => None,
    };
    let digits = match prefix {
        Some(p) if rest.get(..2).is_some_and(|r| r.eq_ignore_ascii_case(p)) => {
            // An underscore may follow the prefix (`0o_755`).
            let r = rest.get(2..).unwrap_or_default();
            r.strip_prefix('_').unwrap_or(r)
        }
        _ => rest,
    };
    if !valid_underscores(digits) {
        return None;
    }
    let cleaned: String = digits.chars().filter(|&c| c != '_').collect();
    if cleaned.is_empty() || !cleaned.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = u128::from_str_radix(&cleaned, radix).ok()?;
    Some((neg && v != 0, v))
}

/// Python's rule for underscores in numbers: only single ones between digits.
fn valid_underscores(digits: &str) -> bool {
    let b = digits.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'_' || (i > 0 && i + 1 < b.len() && b[i - 1].is_ascii_alphanumeric() && b[i + 1].is_ascii_alphanumeric())
    })
}

/// Python's `float()` of a string.
pub fn py_float(s: &str) -> Option<f64> {
    let s = ini::py_strip(s);
    let b = s.as_bytes();
    let underscores_ok = b.iter().enumerate().all(|(i, &c)| {
        c != b'_' || (i > 0 && i + 1 < b.len() && b[i - 1].is_ascii_digit() && b[i + 1].is_ascii_digit())
    });
    if !underscores_ok {
        return None;
    }
    let cleaned: String = s.chars().filter(|&c| c != '_').collect();
    cleaned.parse::<f64>().ok()
}

/// Python's `uuid.UUID(string)`: `urn:`/`uuid:` prefixes, braces and
/// hyphens anywhere are ignored; what remains must be 32 characters that
/// `int(…, 16)` accepts.
pub fn py_uuid(s: &str) -> Option<uuid::Uuid> {
    let hex = s.replace("urn:", "").replace("uuid:", "");
    let hex = hex.trim_matches(|c| c == '{' || c == '}').replace('-', "");
    if hex.chars().count() != 32 {
        return None;
    }
    match py_uint(&hex, 16)? {
        (false, v) => Some(uuid::Uuid::from_u128(v)),
        (true, _) => None,
    }
}

/// Parse a boolean like upstream (`1 true yes y t on always` / `0 false no n f off never`).
pub fn try_parse_boolean(s: &str) -> Option<bool> {
    match s.to_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "t" | "on" | "always" => Some(true),
        "0" | "false" | "no" | "n" | "f" | "off" | "never" => Some(false),
        _ => None,
    }
}

pub fn parse_boolean(s: &str) -> Result<bool> {
    try_parse_boolean(s).ok_or_else(|| Error::new(format!("Invalid boolean literal: '{s}'")))
}

pub fn parse_feature(s: &str) -> Result<Feature> {
    match s.parse::<Feature>() {
        Ok(f) => Ok(f),
        Err(_) => Ok(Feature::from_bool(parse_boolean(s)?)),
    }
}

/// A string without path components (and not `.` or `..`).
pub fn is_valid_filename(s: &str) -> bool {
    let s = ini::py_strip(s);
    !(s == "." || s == ".." || s.contains('/'))
}

/// Parse a size: `[0-9.]+[KMG]?`, 1024-based, rounded up to a multiple of 4096.
pub fn parse_bytes(value: &str) -> Result<i64> {
    let (num, factor) = match value.as_bytes().last() {
        Some(b'G') => (&value[..value.len() - 1], 1024f64 * 1024.0 * 1024.0),
        Some(b'M') => (&value[..value.len() - 1], 1024f64 * 1024.0),
        Some(b'K') => (&value[..value.len() - 1], 1024f64),
        _ => (value, 1f64),
    };
    let f = py_float(num).ok_or_else(|| Error::new(format!("'{value}' is not a valid size")))?;
    let result = (f * factor).ceil();
    if !result.is_finite() || result > 9.0e18 {
        return Err(Error::new("Size out of range"));
    }
    let mut result = result as i64;
    if result <= 0 {
        return Err(Error::new("Size out of range"));
    }
    let rem = result % 4096;
    if rem != 0 {
        result += 4096 - rem;
    }
    Ok(result)
}

/// Parse a path as upstream's `parse_path()` does and return it as a string.
pub fn parse_path(value: &str, opts: &PathOpts, env: &Env) -> Result<String> {
    if opts.constants.contains(&value) {
        return Ok(value.to_string());
    }
    let expanded = pathutil::expandvars(value, env.host);
    let path = pathutil::normalize(&expanded);
    let expanded_user = pathutil::expanduser(&path.to_string_lossy(), env.host)
        .ok_or_else(|| Error::new("Could not determine home directory."))?;
    let path = pathutil::normalize(&expanded_user);
    let abs = pathutil::absolute(&path, env.cwd);

    if opts.required {
        if !abs.exists() {
            return Err(Error::new(format!("{expanded} does not exist")));
        }
        if opts.directory && !abs.is_dir() {
            return Err(Error::new(format!("{expanded} is not a directory")));
        }
    }
    if opts.absolute && !path.is_absolute() {
        return Err(Error::new(format!("{expanded} must be an absolute path")));
    }
    if opts.exclude_usr && (path.starts_with("/usr")) {
        return Err(Error::new(format!("{} can not be relative to /usr", path.display())));
    }
    let path = if opts.resolve { pathutil::resolve(&path, env.cwd) } else { path };
    if opts.secret {
        check_secret(&pathutil::absolute(&path, env.cwd))?;
    }
    Ok(path.to_string_lossy().into_owned())
}

/// Refuse secret files that others may read.
pub fn check_secret(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = std::fs::metadata(path) {
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(Error::new(format!("Permissions of '{}' of '{mode:04o}' are too open.", path.display()))
                .with_hint("When creating secret files use an access mode that restricts access to the owner only."));
        }
    }
    Ok(())
}

fn parse_tree(value: &str, required: bool, absolute: bool, directory: bool, env: &Env) -> Result<Value> {
    let (src, tgt) = match value.split_once(':') {
        Some((s, t)) => (s, Some(t)),
        None => (value, None),
    };
    let mut sopts = PathOpts::new();
    sopts.required = required;
    sopts.directory = directory;
    let source = parse_path(src, &sopts, env)?;
    let target = match tgt {
        Some(t) => {
            let expanded = pathutil::expandvars(t, env.host);
            let p = pathutil::normalize(&expanded);
            if absolute && !p.is_absolute() {
                return Err(Error::new(format!("{expanded} must be an absolute path")));
            }
            Value::String(p.to_string_lossy().into_owned())
        }
        None => Value::Null,
    };
    Ok(json!({"Source": source, "Target": target}))
}

fn parse_drive(value: &str, env: &Env) -> Result<Value> {
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() > 6 {
        return Err(Error::new(format!("Too many components in drive '{value}")));
    }
    if parts.len() < 2 {
        return Err(Error::new(format!("Missing size in drive '{value}")));
    }
    let id = parts[0];
    if !is_valid_filename(id) {
        return Err(Error::new(format!("Unsupported path character in drive id '{id}'")));
    }
    let size = parse_bytes(parts[1])?;
    let nonempty = |i: usize| parts.get(i).copied().filter(|p| !p.is_empty());
    let directory = match nonempty(2) {
        Some(p) => Value::String(parse_path(p, &PathOpts::new(), env)?),
        None => Value::Null,
    };
    let options = nonempty(3).map(|s| Value::String(s.to_string())).unwrap_or(Value::Null);
    let file_id = nonempty(4).unwrap_or(id);
    let mut flags = Vec::new();
    if let Some(f) = nonempty(5) {
        for flag in f.split(',') {
            let parsed: DriveFlag =
                flag.parse().map_err(|_| Error::new(format!("'{flag}' is not a valid DriveFlag")))?;
            flags.push(Value::String(parsed.as_str().to_string()));
        }
    }
    Ok(json!({
        "Directory": directory,
        "FileId": file_id,
        "Flags": flags,
        "Id": id,
        "Options": options,
        "Size": size,
    }))
}

fn parse_uki_profile(value: &str, env: &Env) -> Result<Value> {
    let path = parse_path(value, &PathOpts::new(), env)?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::new(format!("Failed to read {path}: {e}")))?;
    let events =
        ini::parse(&text, &|s| s == "UKIProfile").map_err(|e| Error::new(e.message).at(&path, Some(e.line), None))?;

    let mut profile: Option<Value> = None;
    let mut profile_set = false;
    let mut cmdline: Option<Value> = None;
    let mut cmdline_set = false;
    let mut sign: Option<Value> = None;
    let mut sign_set = false;
    for ev in events {
        let ini::Event::Setting { key, value, line, .. } = ev else { continue };
        let at = |e: Error| e.at(&path, Some(line), Some(&key));
        match key.as_str() {
            "Profile" => {
                profile =
                    Parser::Dict(DictItem::KeyValueLines).parse(Some(&value), profile.as_ref(), env).map_err(at)?;
                profile_set = true;
            }
            "Cmdline" => {
                let opts =
                    ListOpts { split: Split::Space, item: Item::Str, sort_packages: false, reset: true, globs: false };
                cmdline = Parser::List(opts).parse(Some(&value), cmdline.as_ref(), env).map_err(at)?;
                cmdline_set = true;
            }
            "SignExpectedPcr" => {
                sign = Parser::Bool.parse(Some(&value), sign.as_ref(), env).map_err(at)?;
                sign_set = true;
            }
            other => log::warn(&format!("{path}: Unknown setting {other}")),
        }
    }
    let finalize = |v: Option<Value>, set: bool, default: Value| if set { v.unwrap_or(Value::Null) } else { default };
    Ok(json!({
        "Cmdline": finalize(cmdline, cmdline_set, json!([])),
        "Profile": finalize(profile, profile_set, json!({})),
        "SignExpectedPcr": finalize(sign, sign_set, json!(true)),
    }))
}

impl Item {
    fn parse(&self, value: &str, env: &Env) -> Result<Value> {
        Ok(match self {
            Item::Str => Value::String(value.to_string()),
            Item::Path(opts) => Value::String(parse_path(value, opts, env)?),
            Item::Tree { required, absolute, directory } => parse_tree(value, *required, *absolute, *directory, env)?,
            Item::Profile => {
                if !is_valid_filename(value) {
                    return Err(Error::new(format!("'{value}' is not a valid profile"))
                        .with_hint("Profiles= or --profile= requires a name with no path components."));
                }
                Value::String(value.to_string())
            }
            Item::Enum(name, values) => {
                if !values.contains(&value) {
                    return Err(Error::new(format!("'{value}' is not a valid {name}")));
                }
                Value::String(value.to_string())
            }
            Item::KmodRegex => {
                if value == "default" || value == "host" {
                    Value::String(value.to_string())
                } else {
                    Value::String(format!("re:{value}"))
                }
            }
            Item::Drive => parse_drive(value, env)?,
            Item::UkiProfile => parse_uki_profile(value, env)?,
        })
    }
}

/// Sort key of package lists: plain names, then paths, then conditionals.
fn package_rank(p: &Value) -> (u8, String) {
    let s = p.as_str().unwrap_or_default();
    let rank = if s.starts_with('(') {
        2
    } else if s.starts_with('/') {
        1
    } else {
        0
    };
    (rank, s.to_string())
}

/// Python's `str.split()` without arguments.
fn split_whitespace(s: &str) -> Vec<&str> {
    s.split(ini::py_isspace).filter(|w| !w.is_empty()).collect()
}

/// `sorted(glob.glob(pattern))` relative to `cwd`.
fn expand_glob(pattern: &str, cwd: &Path) -> Vec<String> {
    crate::pyglob::glob(pattern, cwd)
}

impl Parser {
    /// Parse `value` (None = "no value", used to compute natural defaults)
    /// given the previous value. `Ok(None)` means "unset" (an empty assignment).
    pub fn parse(&self, value: Option<&str>, old: Option<&Value>, env: &Env) -> Result<Option<Value>> {
        let s = |v: &str| Some(Value::String(v.to_string()));
        match self {
            Parser::Bool => match value {
                None => Ok(Some(Value::Bool(false))),
                Some("") => Ok(None),
                Some(v) => Ok(Some(Value::Bool(parse_boolean(v)?))),
            },
            Parser::Feature => match value {
                None => Ok(s("auto")),
                Some("") => Ok(None),
                Some(v) => Ok(s(parse_feature(v)?.as_str())),
            },
            Parser::Str => Ok(value.filter(|v| !v.is_empty()).and_then(s)),
            Parser::Filename(hint) => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) if !is_valid_filename(v) => {
                    Err(Error::new(format!("'{v}' is not a valid filename.")).with_hint(*hint))
                }
                Some(v) => Ok(s(v)),
            },
            Parser::Enum(name, values) => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) if values.contains(&v) => Ok(s(v)),
                Some(v) => Err(Error::new(format!("'{v}' is not a valid {name}"))),
            },
            Parser::EnumBool { values, yes, no, .. } => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) if values.contains(&v) => Ok(s(v)),
                Some(v) => Ok(s(if parse_boolean(v)? { yes } else { no })),
            },
            Parser::Compression => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => match Compression::from_name(v) {
                    Some(c) => Ok(s(c.as_str())),
                    None => Ok(s(if parse_boolean(v)? { "zstd" } else { "none" })),
                },
            },
            Parser::Path(opts) => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => Ok(Some(Value::String(parse_path(v, opts, env)?))),
            },
            Parser::Key | Parser::Certificate => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    if pathutil::absolute(Path::new(v), env.cwd).exists() {
                        let mut opts = PathOpts::new();
                        opts.secret = matches!(self, Parser::Key);
                        Ok(Some(Value::String(parse_path(v, &opts, env)?)))
                    } else {
                        Ok(Some(Value::String(pathutil::normalize(v).to_string_lossy().into_owned())))
                    }
                }
            },
            Parser::KeySource | Parser::CertificateSource => {
                let Some(v) = value.filter(|v| !v.is_empty()) else {
                    return Ok(Some(json!({"Source": "", "Type": "file"})));
                };
                let (typ, source) = v.split_once(':').unwrap_or((v, ""));
                let ok = match self {
                    Parser::KeySource => typ.parse::<KeySourceType>().is_ok(),
                    _ => typ.parse::<CertificateSourceType>().is_ok(),
                };
                if !ok {
                    let what = if matches!(self, Parser::KeySource) { "key" } else { "certificate" };
                    return Err(Error::new(format!("'{v}' is not a valid {what} source")));
                }
                Ok(Some(json!({"Source": source, "Type": typ})))
            }
            Parser::Uuid => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some("random") => Ok(Some(Value::String(uuid::Uuid::new_v4().to_string()))),
                Some(v) => match py_uuid(v) {
                    Some(u) => Ok(Some(Value::String(u.to_string()))),
                    None => Err(Error::new(format!("{v} is not a valid UUID"))),
                },
            },
            Parser::SourceDateEpoch => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    let t =
                        py_int(v, 10).ok_or_else(|| Error::new(format!("Timestamp '{v}' is not a valid integer")))?;
                    if t < 0 {
                        return Err(Error::new(format!("Source date epoch timestamp cannot be negative (got {v})")));
                    }
                    Ok(Some(json!(t)))
                }
            },
            Parser::CompressLevel => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    let l = py_int(v, 10)
                        .ok_or_else(|| Error::new(format!("Compression level '{v}' is not a valid integer")))?;
                    if l < 0 {
                        return Err(Error::new(format!("Compression level cannot be negative (got {v})")));
                    }
                    Ok(Some(json!(l)))
                }
            },
            Parser::Mode => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    let m = py_int(v, 8)
                        .ok_or_else(|| Error::new(format!("Access mode '{v}' is not a valid integer in base 8")))?;
                    if m < 0 {
                        return Err(Error::new(format!("Access mode cannot be negative (got {v})")));
                    }
                    if m > 0o1777 {
                        return Err(Error::new(format!("Access mode cannot be greater than 1777 (got {v})")));
                    }
                    Ok(Some(json!(m)))
                }
            },
            Parser::Bytes => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => Ok(Some(json!(parse_bytes(v)?))),
            },
            Parser::Number => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    Ok(Some(json!(py_int(v, 10).ok_or_else(|| Error::new(format!("'{v}' is not a valid number")))?)))
                }
            },
            Parser::SectorSize => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    let n = py_int(v, 10).ok_or_else(|| Error::new(format!("'{v}' is not a valid number")))?;
                    if !(512..=4096).contains(&n) {
                        return Err(Error::new(format!("Sector size not between 512 and 4096: {n}")));
                    }
                    if n & (n - 1) != 0 {
                        return Err(Error::new(format!("Sector size not power of 2: {n}")));
                    }
                    Ok(Some(json!(n)))
                }
            },
            Parser::VsockCid => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some("auto") => Ok(Some(json!(-1))),
                Some("hash") => Ok(Some(json!(-2))),
                Some(v) => {
                    let cid = py_int(v, 10).ok_or_else(|| {
                        Error::new(format!(
                            "VSock connection ID '{v}' is not a valid number or one of 'auto' or 'hash'"
                        ))
                    })?;
                    if !(3..0xFFFF_FFFF).contains(&cid) {
                        return Err(Error::new(format!(
                            "{cid} is not in the valid VSock connection ID range [3, 0xFFFFFFFF)"
                        )));
                    }
                    Ok(Some(json!(cid)))
                }
            },
            Parser::MinimumVersion => {
                let Some(v) = value.filter(|v| !v.is_empty()) else { return Ok(old.cloned().filter(|o| !o.is_null())) };
                if v.starts_with("commit:") {
                    return Err(Error::new("Cannot check mkosi git version, not running mkosi from a git repository")
                        .with_hint("MinimumVersion=commit:… refers to a git checkout of upstream mkosi; use a version number instead."));
                }
                if version::compare_versions(v, MKOSI_VERSION) == std::cmp::Ordering::Greater {
                    return Err(Error::new(format!(
                        "mkosi {v} or newer is required by this configuration (found {MKOSI_VERSION})"
                    )));
                }
                match old.and_then(Value::as_str) {
                    Some(o) if version::compare_versions(v, o) != std::cmp::Ordering::Greater => Ok(s(o)),
                    _ => Ok(s(v)),
                }
            }
            Parser::RootPassword => match value.filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    let v = ini::py_strip(v);
                    match v.strip_prefix("hashed:") {
                        Some(rest) => Ok(Some(json!([rest, true]))),
                        None => Ok(Some(json!([v, false]))),
                    }
                }
            },
            Parser::List(opts) => parse_list(opts, value, old, env),
            Parser::Dict(item) => parse_dict(*item, value, old, env),
            Parser::Credentials => parse_credentials(value, old, env),
            Parser::SplitArtifacts => {
                let Some(v) = value.filter(|v| !v.is_empty()) else { return Ok(Some(json!([]))) };
                if let Some(b) = try_parse_boolean(v) {
                    let mut items = vec!["uki", "kernel", "initrd"];
                    if b {
                        items.push("partitions");
                    }
                    return Ok(Some(json!(items)));
                }
                let opts = ListOpts {
                    split: Split::Default,
                    item: Item::Enum("ArtifactOutput", ArtifactOutput::VALUES),
                    sort_packages: false,
                    reset: true,
                    globs: false,
                };
                parse_list(&opts, Some(v), old, env)
            }
        }
    }
}

fn parse_list(opts: &ListOpts, value: Option<&str>, old: Option<&Value>, env: &Env) -> Result<Option<Value>> {
    let Some(value) = value else { return Ok(Some(json!([]))) };
    let mut new: Vec<Value> = old.and_then(Value::as_array).cloned().unwrap_or_default();

    let values: Vec<String> = match opts.split {
        Split::ShellSpace => {
            let v = shlex::split(value, &['\n', ' ']).map_err(Error::new)?;
            if opts.reset && v.is_empty() {
                return Ok(None);
            }
            v
        }
        Split::Default => {
            let replaced = value.replace(',', " ");
            let v: Vec<String> = split_whitespace(&replaced).into_iter().map(str::to_string).collect();
            if opts.reset && v.is_empty() {
                return Ok(None);
            }
            v
        }
        Split::Space => {
            let v: Vec<String> = value.replace(' ', "\n").split('\n').map(str::to_string).collect();
            if opts.reset && (v.is_empty() || (v.len() == 1 && v[0].is_empty())) {
                return Ok(None);
            }
            v
        }
    };

    let values: Vec<String> =
        if opts.globs { values.iter().flat_map(|v| expand_glob(v, env.cwd)).collect() } else { values };

    for v in values.iter().filter(|v| !v.is_empty()) {
        new.push(opts.item.parse(v, env)?);
    }
    if opts.sort_packages {
        new.sort_by_key(package_rank);
    }
    Ok(Some(Value::Array(new)))
}

impl DictItem {
    fn parse(self, item: &str, env: &Env) -> (String, String) {
        let (k, sep, v) = match item.split_once('=') {
            Some((k, v)) => (k, true, v),
            None => (item, false, ""),
        };
        let k = ini::py_strip(k).to_string();
        let v = ini::py_strip(v).to_string();
        match self {
            DictItem::Environment if !sep => {
                let host_value = env.host.env(&k).unwrap_or("").to_string();
                (k, host_value)
            }
            _ => (k, v),
        }
    }
}

fn parse_dict(item: DictItem, value: Option<&str>, old: Option<&Value>, env: &Env) -> Result<Option<Value>> {
    let Some(value) = value else { return Ok(Some(json!({}))) };
    let mut new: Map<String, Value> = old.and_then(Value::as_object).cloned().unwrap_or_default();
    let values: Vec<String> = if item == DictItem::KeyValueLines {
        let v: Vec<String> = value.split('\n').map(str::to_string).collect();
        if v.len() == 1 && v[0].is_empty() {
            return Ok(None);
        }
        v
    } else {
        let v = shlex::split(value, &['\n', ' ']).map_err(Error::new)?;
        if v.is_empty() {
            return Ok(None);
        }
        v
    };
    for v in values.iter().filter(|v| !v.is_empty()) {
        let (k, val) = item.parse(v, env);
        // Like a Python dict update: an existing key keeps its position.
        new.insert(k, Value::String(val));
    }
    Ok(Some(Value::Object(new)))
}

fn credential(name: &str, value: Option<&str>, path: Option<&Path>) -> Value {
    json!({
        "Name": name,
        "Path": path.map(|p| p.to_string_lossy().into_owned()),
        "Value": value,
    })
}

fn parse_credentials(value: Option<&str>, old: Option<&Value>, env: &Env) -> Result<Option<Value>> {
    let Some(value) = value else { return Ok(Some(json!([]))) };
    let mut new: Vec<Value> = old.and_then(Value::as_array).cloned().unwrap_or_default();

    if !value.is_empty() && !value.contains('=') {
        let path = pathutil::absolute(&pathutil::normalize(value), env.cwd);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(|e| Error::new(format!("Failed to read {}: {e}", path.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| !p.is_dir())
                .collect();
            entries.sort();
            for p in entries {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                new.push(credential(&name, None, Some(&p)));
            }
        } else if path.exists() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            new.push(credential(&name, None, Some(&path)));
        } else {
            return Err(Error::new(format!("{} does not exist", path.display())));
        }
        return Ok(Some(Value::Array(new)));
    }

    let values = shlex::split(value, &['\n', ' ']).map_err(Error::new)?;
    if values.is_empty() {
        return Ok(None);
    }
    for v in values.iter().filter(|v| !v.is_empty()) {
        let (k, val) = v.split_once('=').unwrap_or((v, ""));
        new.push(credential(ini::py_strip(k), Some(ini::py_strip(val)), None));
    }
    Ok(Some(Value::Array(new)))
}

impl Matcher {
    /// Evaluate the condition `cond` (specifiers already expanded, `|`/`!` stripped)
    /// against the setting's current value.
    pub fn matches(&self, cond: &str, value: &Value) -> Result<bool> {
        Ok(match self {
            Matcher::ListContains { profile } => {
                let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
                if cond.is_empty() {
                    items.is_empty()
                } else {
                    if *profile && !is_valid_filename(cond) {
                        return Err(Error::new(format!("'{cond}' is not a valid profile")));
                    }
                    items.iter().any(|i| i.as_str() == Some(cond))
                }
            }
            Matcher::Str => value.as_str() == Some(cond),
            Matcher::Glob => value.as_str().is_some_and(|v| crate::pyglob::fnmatch(cond, v)),
            Matcher::Enum(name, values) => {
                if !values.contains(&cond) {
                    return Err(Error::new(format!("'{cond}' is not a valid {name}")));
                }
                value.as_str() == Some(cond)
            }
            Matcher::Architecture => {
                if cond == "uefi" {
                    value.as_str().and_then(|v| v.parse::<Architecture>().ok()).is_some_and(|a| a.to_efi().is_some())
                } else {
                    if cond.parse::<Architecture>().is_err() {
                        return Err(Error::new(format!("'{cond}' is not a valid Architecture")));
                    }
                    value.as_str() == Some(cond)
                }
            }
            Matcher::Feature => value.as_str() == Some(parse_feature(cond)?.as_str()),
            Matcher::Version => value.as_str().is_some_and(|v| version::version_matches(cond, v)),
            Matcher::BuildSources => {
                let want = pathutil::normalize(cond.trim_start_matches('/'));
                value
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .any(|t| t.get("Target").and_then(Value::as_str).is_some_and(|tgt| Path::new(tgt) == want))
            }
            Matcher::KeyValue => {
                let map = value.as_object();
                match cond.split_once('=') {
                    None => map.is_some_and(|m| m.contains_key(cond)),
                    Some((k, v)) => map.and_then(|m| m.get(k)).and_then(Value::as_str) == Some(v),
                }
            }
        })
    }
}

/// Minimal logging used while parsing: warnings go to stderr in upstream's style.
pub mod log {
    use std::sync::atomic::{AtomicBool, Ordering};

    static QUIET: AtomicBool = AtomicBool::new(false);
    static DEBUG: AtomicBool = AtomicBool::new(false);

    /// Suppress warnings (used by tests and by commands that re-parse configuration).
    pub fn set_quiet(q: bool) {
        QUIET.store(q, Ordering::Relaxed);
    }

    /// Show debug messages (`--debug`).
    pub fn set_debug(d: bool) {
        DEBUG.store(d, Ordering::Relaxed);
    }

    pub fn info(msg: &str) {
        if !QUIET.load(Ordering::Relaxed) {
            eprintln!("{msg}");
        }
    }

    pub fn debug(msg: &str) {
        if DEBUG.load(Ordering::Relaxed) {
            eprintln!("{msg}");
        }
    }

    pub fn warn(msg: &str) {
        if !QUIET.load(Ordering::Relaxed) {
            eprintln!("‣ {msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enums::Architecture;
    use crate::settings::by_name;

    fn host() -> Host {
        Host::new(
            vec![("HOME".into(), "/home/me".into()), ("HOSTVAR".into(), "hv".into())],
            Architecture::X86_64,
            "/".into(),
        )
    }

    fn p(setting: &str, value: &str) -> Result<Option<Value>> {
        let h = host();
        let env = Env { cwd: Path::new("/"), host: &h };
        by_name(setting).unwrap().parser.parse(Some(value), None, &env)
    }

    fn ok(setting: &str, value: &str) -> Value {
        p(setting, value).unwrap_or_else(|e| panic!("{setting}={value}: {e}")).unwrap_or(Value::Null)
    }

    #[test]
    fn scalar_values() {
        let cases: &[(&str, &str, Value)] = &[
            ("WithDocs", "yes", json!(true)),
            ("WithDocs", "NEVER", json!(false)),
            ("WithDocs", "", Value::Null),
            ("Bootable", "auto", json!("auto")),
            ("Bootable", "1", json!("enabled")),
            ("Bootable", "off", json!("disabled")),
            ("Distribution", "debian", json!("debian")),
            ("CompressOutput", "zst", json!("zstd")),
            ("CompressOutput", "gzip", json!("gz")),
            ("CompressOutput", "yes", json!("zstd")),
            ("CompressOutput", "no", json!("none")),
            ("CacheOnly", "yes", json!("always")),
            ("CacheOnly", "no", json!("auto")),
            ("CacheOnly", "metadata", json!("metadata")),
            ("Incremental", "strict", json!("strict")),
            ("Incremental", "true", json!("yes")),
            ("UnifiedKernelImages", "yes", json!("signed")),
            ("Ssh", "no", json!("never")),
            ("Verity", "yes", json!("signed")),
            ("OutputSize", "1", json!(4096)),
            ("OutputSize", "1.9M", json!(1994752)),
            ("OutputSize", "2G", json!(2147483648i64)),
            ("RAM", "4096", json!(4096)),
            ("OutputMode", "600", json!(384)),
            ("CompressLevel", "19", json!(19)),
            ("SourceDateEpoch", "1_000", json!(1000)),
            ("SectorSize", "4096", json!(4096)),
            ("VSockCID", "auto", json!(-1)),
            ("VSockCID", "hash", json!(-2)),
            ("VSockCID", "42", json!(42)),
            ("RootPassword", "hashed:$6$x", json!(["$6$x", true])),
            ("RootPassword", " secret ", json!(["secret", false])),
            ("Seed", "0f7d8a3a-0000-4000-8000-000000000001", json!("0f7d8a3a-0000-4000-8000-000000000001")),
            ("Seed", "0F7D8A3A000040008000000000000001", json!("0f7d8a3a-0000-4000-8000-000000000001")),
            ("SecureBootKeySource", "engine:pkcs11", json!({"Source": "pkcs11", "Type": "engine"})),
            ("SecureBootKeySource", "", json!({"Source": "", "Type": "file"})),
            ("SecureBootKey", "pkcs11:token=x", json!("pkcs11:token=x")),
            ("Output", "image", json!("image")),
            ("SplitArtifacts", "yes", json!(["uki", "kernel", "initrd", "partitions"])),
            ("SplitArtifacts", "no", json!(["uki", "kernel", "initrd"])),
            ("SplitArtifacts", "tar,roothash", json!(["tar", "roothash"])),
            ("SplitArtifacts", "", json!([])),
        ];
        for (setting, value, want) in cases {
            assert_eq!(&ok(setting, value), want, "{setting}={value}");
        }
    }

    #[test]
    fn scalar_errors() {
        let cases: &[(&str, &str, &str)] = &[
            ("WithDocs", "maybe", "Invalid boolean literal: 'maybe'"),
            ("Distribution", "gentoo", "'gentoo' is not a valid Distribution"),
            ("CacheOnly", "none", "Invalid boolean literal: 'none'"),
            ("OutputSize", "0", "Size out of range"),
            ("OutputSize", "12T", "'12T' is not a valid size"),
            ("OutputMode", "2000", "Access mode cannot be greater than 1777 (got 2000)"),
            ("OutputMode", "9", "Access mode '9' is not a valid integer in base 8"),
            ("CompressLevel", "-1", "Compression level cannot be negative (got -1)"),
            ("SectorSize", "1000", "Sector size not power of 2: 1000"),
            ("SectorSize", "8192", "Sector size not between 512 and 4096: 8192"),
            ("VSockCID", "2", "2 is not in the valid VSock connection ID range [3, 0xFFFFFFFF)"),
            ("Output", "a/b", "'a/b' is not a valid filename."),
            ("Seed", "xyz", "xyz is not a valid UUID"),
            ("SecureBootKeySource", "tpm:x", "'tpm:x' is not a valid key source"),
            ("SecureBootCertificateSource", "engine:x", "'engine:x' is not a valid certificate source"),
            ("MinimumVersion", "999", "mkosi 999 or newer is required by this configuration (found 27~devel)"),
            ("SplitArtifacts", "bogus", "'bogus' is not a valid ArtifactOutput"),
            ("Profiles", "a/b", "'a/b' is not a valid profile"),
            ("Drives", "x", "Missing size in drive 'x"),
            ("Environment", "A='open", "No closing quotation"),
        ];
        for (setting, value, want) in cases {
            let e = p(setting, value).expect_err(&format!("{setting}={value} should fail"));
            assert_eq!(e.message, *want, "{setting}={value}");
        }
    }

    #[test]
    fn lists() {
        assert_eq!(ok("Packages", "b,a  c\n/x (cond) d"), json!(["a", "b", "c", "d", "/x", "(cond)"]));
        assert_eq!(p("Packages", "").unwrap(), None);
        assert_eq!(p("Packages", " , ").unwrap(), None);
        assert_eq!(ok("Packages", "!foo"), json!(["!foo"]));
        assert_eq!(ok("KernelCommandLine", "a=1,b=2 c"), json!(["a=1,b=2", "c"]));
        assert_eq!(ok("QemuArgs", "-m '4 G' -smp 2"), json!(["-m", "4 G", "-smp", "2"]));
        assert_eq!(ok("KernelModulesInclude", "ext4 default"), json!(["re:ext4", "default"]));
        assert_eq!(ok("KernelModules", "ext4"), json!(["ext4"]));
        assert_eq!(ok("ManifestFormat", "json,changelog"), json!(["json", "changelog"]));
        assert_eq!(
            ok("Drives", "d1:1G::cache=unsafe:shared:persist"),
            json!([{"Directory": null, "FileId": "shared", "Flags": ["persist"], "Id": "d1", "Options": "cache=unsafe", "Size": 1073741824}])
        );
    }

    #[test]
    fn dicts_and_credentials() {
        assert_eq!(
            ok("Environment", "A=1 'B=two words' HOSTVAR C="),
            json!({"A": "1", "B": "two words", "HOSTVAR": "hv", "C": ""})
        );
        assert_eq!(ok("OciLabels", "a=b"), json!({"a": "b"}));
        assert_eq!(p("Environment", "").unwrap(), None);
        assert_eq!(
            ok("Credentials", "a=1 b='x y'"),
            json!([{"Name": "a", "Path": null, "Value": "1"}, {"Name": "b", "Path": null, "Value": "x y"}])
        );
    }

    #[test]
    fn matchers() {
        let m =
            |setting: &str, cond: &str, value: Value| by_name(setting).unwrap().matcher.unwrap().matches(cond, &value);
        assert!(m("Distribution", "debian", json!("debian")).unwrap());
        assert!(!m("Distribution", "fedora", json!("debian")).unwrap());
        assert!(m("Distribution", "gentoo", json!("debian")).is_err());
        assert!(m("Architecture", "uefi", json!("arm64")).unwrap());
        assert!(!m("Architecture", "uefi", json!("s390x")).unwrap());
        assert!(m("ImageId", "foo*", json!("foobar")).unwrap());
        assert!(!m("ImageId", "foo*", Value::Null).unwrap());
        assert!(m("ImageVersion", ">=1.2", json!("1.10")).unwrap());
        assert!(m("Profiles", "", json!([])).unwrap());
        assert!(m("Profiles", "a", json!(["a", "b"])).unwrap());
        assert!(m("Bootable", "yes", json!("enabled")).unwrap());
        assert!(m("Environment", "A", json!({"A": "1"})).unwrap());
        assert!(m("Environment", "A=1", json!({"A": "1"})).unwrap());
        assert!(!m("Environment", "A=2", json!({"A": "1"})).unwrap());
        assert!(m("BuildSources", "/src/x", json!([{"Source": "/a", "Target": "src/x"}])).unwrap());
        assert!(m("Repositories", "", json!([])).unwrap());
    }

    #[test]
    fn no_panics_on_odd_values() {
        let h = host();
        let env = Env { cwd: Path::new("/"), host: &h };
        let odd = [
            "",
            " ",
            "é",
            "0é",
            "%",
            "€:€",
            "a:b:c:d:e:f:g",
            ":",
            "::",
            "=",
            "'",
            "\"",
            "\\",
            "$",
            "${",
            "~",
            "~é/x",
            "[",
            "*",
            "\u{0}",
            "-",
            "+",
            "0x",
            "0o",
            "1e999",
            "nan",
            "inf",
            "99999999999999999999999",
            "-99999999999999999999",
            "1.5G",
            "ÿG",
            "G",
            "K",
            ".",
            "..",
            "/",
            "hashed:",
            "engine:",
            "x=",
            "=y",
            "a b",
            "d:1G:/nonexistent-dir",
            "d:ÿ",
            "commit:",
            "1.2.3",
            "{}",
            "urn:uuid:",
            "--",
            "\n\n",
            "a\tb",
        ];
        for s in crate::settings::SETTINGS {
            for v in odd {
                let _ = s.parser.parse(Some(v), None, &env);
                let _ = s.parser.parse(Some(v), Some(&json!(["x"])), &env);
                if let Some(m) = s.matcher {
                    for value in [json!("x"), json!(["x"]), json!({"x": "y"}), Value::Null, json!(1)] {
                        let _ = m.matches(v, &value);
                    }
                }
            }
        }
        for v in odd {
            let _ = parse_bytes(v);
            let _ = py_uuid(v);
            let _ = py_float(v);
            let _ = crate::version::version_matches(v, v);
            let _ = crate::pyglob::fnmatch(v, v);
        }
    }

    #[test]
    fn python_int() {
        assert_eq!(py_int(" 42 ", 10), Some(42));
        assert_eq!(py_int("-7", 10), Some(-7));
        assert_eq!(py_int("1_0", 10), Some(10));
        assert_eq!(py_int("1__0", 10), None);
        assert_eq!(py_int("0x10", 10), None);
        assert_eq!(py_int("755", 8), Some(0o755));
        assert_eq!(py_int("0o755", 8), Some(0o755));
        assert_eq!(py_int(" 0O7_55 ", 8), Some(0o755));
        assert_eq!(py_int("0o_755", 8), Some(0o755));
        assert_eq!(py_int("0o", 8), None);
        assert_eq!(py_int("755_", 8), None);
        assert_eq!(py_int("0x10", 8), None);
        assert_eq!(py_int("+5", 10), Some(5));
        assert_eq!(py_int("0é", 8), None);
        assert_eq!(py_int("é", 16), None);
    }

    #[test]
    fn python_float_and_uuid() {
        assert_eq!(py_float("1_0"), Some(10.0));
        assert_eq!(py_float("1__0"), None);
        assert_eq!(py_float("1_.5"), None);
        assert_eq!(py_float(" 1e1_0 "), Some(1e10));
        assert_eq!(py_float("+.5"), Some(0.5));
        assert_eq!(py_float("0x10"), None);
        let want = "01234567-89ab-cdef-0123-456789abcdef";
        for ok in [
            "{0123456789abcdef0123456789abcdef}",
            "urn:uuid:01234567-89ab-cdef-0123-456789abcdef",
            "0123-4567-89ab-cdef-0123-4567-89ab-cdef",
            "uuid:0123456789ABCDEF0123456789ABCDEF",
            "{{0123456789abcdef0123456789abcdef}}",
        ] {
            assert_eq!(py_uuid(ok).map(|u| u.to_string()).as_deref(), Some(want), "{ok}");
        }
        assert_eq!(py_uuid(" 123456789abcdef0123456789abcdef").map(|u| u.to_string()).as_deref(), Some(want));
        assert_eq!(
            py_uuid("0123456789abcdef0123456789abcd_f").map(|u| u.to_string()).as_deref(),
            Some("00123456-789a-bcde-f012-3456789abcdf")
        );
        assert!(py_uuid("0123456789abcdef0123456789abcdef\n").is_none());
        assert!(py_uuid("xyz").is_none());
        assert!(py_uuid("-123456789abcdef0123456789abcdef").is_none());
    }
}
