//! repart.d partition definitions: finding the files, parsing them like systemd does
//! (drop-ins, continuation lines, specifiers) and checking them.
//!
//! Values that cannot be parsed are errors naming the file and line; unknown keys and
//! sections are warnings naming the file and line, as systemd-repart does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mkosi_formats::gpt::{self, Designator, PartitionType};
use uuid::Uuid;

use super::{io, mkfs, RepartError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verity {
    Off,
    Data,
    Hash,
    Signature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Minimize {
    Off,
    Best,
    Guess,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypt {
    Off,
    KeyFile,
    Tpm2,
    KeyFileTpm2,
}

/// `UUID=`: derived from the seed (unset), the nil UUID (`null`), or given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UuidSetting {
    Derived,
    Given(Uuid),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyBlocks {
    Auto,
    Path(String),
}

/// One `[Partition]` definition after its drop-ins were applied.
#[derive(Debug, Clone)]
pub struct Definition {
    pub path: PathBuf,
    pub drop_ins: Vec<PathBuf>,
    pub ptype: PartitionType,
    pub label: Option<String>,
    pub uuid: UuidSetting,
    pub priority: i32,
    pub weight: u32,
    pub padding_weight: u32,
    pub size_min: Option<u64>,
    pub size_max: Option<u64>,
    pub padding_min: Option<u64>,
    pub padding_max: Option<u64>,
    pub factory_reset: bool,
    pub copy_blocks: Option<CopyBlocks>,
    pub format: Option<String>,
    /// `(source, target)` pairs.
    pub copy_files: Vec<(String, String)>,
    pub exclude_files: Vec<String>,
    pub exclude_files_target: Vec<String>,
    pub make_directories: Vec<String>,
    /// `(path, symlink target)` pairs.
    pub make_symlinks: Vec<(String, String)>,
    pub encrypt: Encrypt,
    pub verity: Verity,
    pub verity_match_key: Option<String>,
    pub flags: u64,
    pub read_only: Option<bool>,
    pub no_auto: Option<bool>,
    pub growfs: Option<bool>,
    /// `SplitName=`; `None` when set to `-` (not split).
    pub split_name: Option<String>,
    pub minimize: Minimize,
    /// Subvolume paths with their flags (`ro`, `nodatacow`).
    pub subvolumes: Vec<(String, Vec<String>)>,
    pub default_subvolume: Option<String>,
    pub verity_data_block_size: Option<u64>,
    pub verity_hash_block_size: Option<u64>,
    /// `(where, options)` pairs of `MountPoint=`.
    pub mountpoints: Vec<(String, Option<String>)>,
    pub compression: Option<String>,
    pub compression_level: Option<String>,
    pub supplement_for: Option<String>,
    pub encrypted_volume: Option<String>,
}

impl Definition {
    fn new(path: &Path) -> Definition {
        Definition {
            path: path.to_path_buf(),
            drop_ins: Vec::new(),
            ptype: PartitionType::from_uuid(Uuid::nil()),
            label: None,
            uuid: UuidSetting::Derived,
            priority: 0,
            weight: 1000,
            padding_weight: 0,
            size_min: None,
            size_max: None,
            padding_min: None,
            padding_max: None,
            factory_reset: false,
            copy_blocks: None,
            format: None,
            copy_files: Vec::new(),
            exclude_files: Vec::new(),
            exclude_files_target: Vec::new(),
            make_directories: Vec::new(),
            make_symlinks: Vec::new(),
            encrypt: Encrypt::Off,
            verity: Verity::Off,
            verity_match_key: None,
            flags: 0,
            read_only: None,
            no_auto: None,
            growfs: None,
            split_name: Some("%t".into()),
            minimize: Minimize::Off,
            subvolumes: Vec::new(),
            default_subvolume: None,
            verity_data_block_size: None,
            verity_hash_block_size: None,
            mountpoints: Vec::new(),
            compression: None,
            compression_level: None,
            supplement_for: None,
            encrypted_volume: None,
        }
    }

    pub fn designator(&self) -> Option<Designator> {
        self.ptype.designator
    }

    /// Whether files go into the partition's filesystem.
    pub fn needs_populate(&self) -> bool {
        !self.copy_files.is_empty() || !self.make_directories.is_empty() || !self.make_symlinks.is_empty()
    }

    /// The file name of the definition, as repart prints it.
    pub fn file_name(&self) -> String {
        self.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The GPT attribute bits: `Flags=` merged with `NoAuto=`, `ReadOnly=` and `GrowFileSystem=`
    /// where the partition type knows them.
    pub fn gpt_flags(&self) -> u64 {
        let mut f = self.flags;
        let d = self.designator();
        let mut set = |bit: u64, v: Option<bool>, known: bool, what: &str| {
            if let Some(v) = v {
                if known {
                    if v {
                        f |= bit;
                    } else {
                        f &= !bit;
                    }
                } else {
                    crate::log::warn(&format!(
                        "{}: {what}= is not supported for partition type '{}', ignoring",
                        self.path.display(),
                        self.ptype.display_name()
                    ));
                }
            }
        };
        set(gpt::FLAG_NO_AUTO, self.no_auto, d.is_some_and(Designator::knows_no_auto), "NoAuto");
        set(gpt::FLAG_READ_ONLY, self.read_only, d.is_some_and(Designator::knows_read_only), "ReadOnly");
        set(gpt::FLAG_GROWFS, self.growfs, d.is_some_and(Designator::knows_growfs), "GrowFileSystem");
        f
    }
}

/// Values the specifiers in definitions expand to.
#[derive(Debug, Clone, Default)]
pub struct Specifiers {
    /// `%a`: the architecture (systemd's name for it).
    pub architecture: String,
    /// The image root: `%o %w %W %B %A %M` come from its os-release, `%m` from its machine-id.
    pub root: Option<PathBuf>,
}

impl Specifiers {
    fn os_release(&self, key: &str) -> String {
        let Some(root) = &self.root else { return String::new() };
        let text = std::fs::read_to_string(root.join("etc/os-release"))
            .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")))
            .unwrap_or_default();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return v.trim().trim_matches('"').trim_matches('\'').to_string();
                }
            }
        }
        String::new()
    }

    /// Expands `%` specifiers; an unknown specifier is an error.
    pub fn expand(&self, s: &str) -> std::result::Result<String, String> {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(n) = chars.next() else { return Err("trailing '%'".into()) };
            let v = match n {
                '%' => "%".to_string(),
                'a' => self.architecture.clone(),
                'A' => self.os_release("IMAGE_VERSION"),
                'B' => self.os_release("BUILD_ID"),
                'M' => self.os_release("IMAGE_ID"),
                'o' => self.os_release("ID"),
                'w' => self.os_release("VERSION_ID"),
                'W' => self.os_release("VARIANT_ID"),
                'm' => {
                    let p = self.root.as_deref().unwrap_or(Path::new("/")).join("etc/machine-id");
                    std::fs::read_to_string(&p)
                        .map(|s| s.trim().to_string())
                        .map_err(|_| format!("%m: no machine ID in {}", p.display()))?
                }
                'b' => std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                    .map(|s| s.trim().replace('-', ""))
                    .unwrap_or_default(),
                'H' => hostname(),
                'l' => hostname().split('.').next().unwrap_or_default().to_string(),
                'q' => hostname(),
                'v' => std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
                'T' => std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into()),
                'V' => std::env::var("TMPDIR").unwrap_or_else(|_| "/var/tmp".into()),
                other => return Err(format!("unknown specifier '%{other}'")),
            };
            out.push_str(&v);
        }
        Ok(out)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The `*.conf` files of the definition directories: by file name, the first directory
/// providing a name wins, masked files (empty, or symlinks to /dev/null) are skipped.
pub fn list_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    conf_files(dirs, None)
}

fn conf_files(dirs: &[PathBuf], sub: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let dir = match sub {
            Some(s) => dir.join(s),
            None => dir.clone(),
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("reading", &dir)(e)),
        };
        for e in entries {
            let e = e.map_err(io("reading", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".conf") || found.contains_key(&name) {
                continue;
            }
            found.insert(name, e.path());
        }
    }
    let mut out = Vec::new();
    for (_, p) in found {
        if std::fs::read_link(&p).is_ok_and(|t| t == Path::new("/dev/null")) {
            continue;
        }
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && m.len() > 0 => out.push(p),
            Ok(m) if m.is_file() => {} // empty: masked
            Ok(_) => {}
            Err(e) => return Err(io("reading", &p)(e)),
        }
    }
    Ok(out)
}

/// Everything parsing needs to know besides the files.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// The image's architecture (mkosi's name, e.g. `x86-64`).
    pub architecture: String,
    /// Whether the image's architecture differs from the host's (repart's `--architecture=`).
    pub foreign: bool,
    pub specifiers: Specifiers,
    /// Whether a verity key and certificate are configured (needed by `Verity=signature`).
    pub have_signing_key: bool,
}

/// Reads all definitions of `dirs` (with drop-ins from `<dir>/<name>.d/`), checks them and their
/// verity pairings. Definitions of partition types that are excluded are still returned; the
/// caller decides.
pub fn read_definitions(dirs: &[PathBuf], opts: &ParseOptions) -> Result<Vec<Definition>> {
    let mut defs = Vec::new();
    for f in list_files(dirs)? {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let drop_ins = conf_files(dirs, Some(&format!("{name}.d")))?;
        let mut d = Definition::new(&f);
        for file in std::iter::once(&f).chain(drop_ins.iter()) {
            let text = std::fs::read_to_string(file).map_err(io("reading", file))?;
            parse_into(&mut d, file, &text, opts)?;
        }
        d.drop_ins = drop_ins;
        finalize(&mut d, opts)?;
        defs.push(d);
    }
    check_verity_siblings(&defs)?;
    Ok(defs)
}

fn err(path: &Path, line: usize, message: impl Into<String>) -> RepartError {
    RepartError::Definition { path: path.to_path_buf(), line, message: message.into() }
}

fn warn(path: &Path, line: usize, message: &str) {
    crate::log::warn(&format!("{}:{line}: {message}", path.display()));
}

/// systemd's INI dialect: `#`/`;` comment lines (also inside continued lines), a trailing
/// unescaped backslash continues the line (replaced by a space), sections. Returns
/// `(line, section, key, value)`, the line being the last line of a continued assignment.
pub(crate) fn parse_ini(path: &Path, text: &str) -> Vec<(usize, Option<String>, String, String)> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    let mut continuation: Option<String> = None;
    let mut last = 0;
    let handle = |lineno: usize, l: &str, section: &mut Option<String>, out: &mut Vec<_>| {
        let l = l.trim();
        if l.is_empty() {
            return;
        }
        if l.starts_with('[') {
            if let Some(name) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                *section = Some(name.to_string());
            } else {
                warn(path, lineno, &format!("invalid section header '{l}', ignoring"));
                *section = None;
            }
            return;
        }
        let Some((k, v)) = l.split_once('=') else {
            warn(path, lineno, &format!("missing '=', ignoring line: {l}"));
            return;
        };
        out.push((lineno, section.clone(), k.trim().to_string(), v.trim().to_string()));
    };
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        last = lineno;
        let stripped = raw.trim_start();
        if stripped.starts_with('#') || stripped.starts_with(';') {
            continue;
        }
        let mut buf = continuation.take().unwrap_or_default();
        buf.push_str(raw);
        let mut escaped = false;
        for c in buf.chars() {
            escaped = if escaped { false } else { c == '\\' };
        }
        if escaped {
            buf.pop();
            buf.push(' ');
            continuation = Some(buf);
            continue;
        }
        handle(lineno, &buf, &mut section, &mut out);
    }
    if let Some(buf) = continuation {
        handle(last, &buf, &mut section, &mut out);
    }
    out
}

/// systemd's `parse_boolean`.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// systemd's `parse_size(…, 1024)`: a number, optionally with a fraction, and one of the
/// suffixes B, K, M, G, T, P, E.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut total: u128 = 0;
    let mut rest = s;
    loop {
        let int_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if int_end == 0 && !rest.starts_with('.') {
            return None;
        }
        let int: u128 = if int_end == 0 { 0 } else { rest[..int_end].parse().ok()? };
        rest = &rest[int_end..];
        let mut frac = (0u128, 1u128);
        if let Some(r) = rest.strip_prefix('.') {
            let fe = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            if fe == 0 {
                return None;
            }
            let digits = &r[..fe.min(18)];
            frac = (digits.parse().ok()?, 10u128.pow(digits.len() as u32));
            rest = &r[fe..];
        }
        rest = rest.trim_start();
        let (mult, len): (u128, usize) = match rest.chars().next() {
            Some('E') => (1 << 60, 1),
            Some('P') => (1 << 50, 1),
            Some('T') => (1 << 40, 1),
            Some('G') => (1 << 30, 1),
            Some('M') => (1 << 20, 1),
            Some('K') => (1 << 10, 1),
            Some('B') => (1, 1),
            _ => (1, 0),
        };
        rest = &rest[len..];
        total += int * mult + frac.0 * mult / frac.1;
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        if len == 0 {
            return None;
        }
    }
    u64::try_from(total).ok()
}

/// Splits on unquoted whitespace, removing quotes (systemd's `EXTRACT_UNQUOTE`).
fn split_words(s: &str) -> std::result::Result<Vec<String>, String> {
    mkosi_config::shlex::split(s, &[' ', '\t', '\n'])
}

/// Splits `a:b` on the first unescaped colon, unescaping C escapes (`\:` included).
fn split_colon(s: &str) -> (String, Option<String>) {
    let mut first = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    first.push(n);
                }
            }
            ':' => {
                let rest: String = chars.collect();
                return (first, Some(rest.replace("\\:", ":")));
            }
            c => first.push(c),
        }
    }
    (first, None)
}

/// Normalizes an absolute path like systemd's `path_simplify` (repeated and trailing slashes,
/// `.` components); `..` and relative paths are rejected.
fn simplify_abs(s: &str, keep_trailing_slash: bool) -> Option<String> {
    if !s.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return None;
    }
    let mut out = format!("/{}", parts.join("/"));
    if keep_trailing_slash && s.ends_with('/') && out != "/" {
        out.push('/');
    }
    Some(out)
}

fn parse_into(d: &mut Definition, path: &Path, text: &str, opts: &ParseOptions) -> Result<()> {
    for (line, section, key, value) in parse_ini(path, text) {
        match section.as_deref() {
            Some("Partition") => {}
            Some(s) if s.starts_with("X-") => continue,
            Some(s) => {
                warn(path, line, &format!("unknown section '{s}', ignoring"));
                continue;
            }
            None => {
                warn(path, line, "assignment outside of a section, ignoring");
                continue;
            }
        }
        let e = |m: String| err(path, line, m);
        let expand = |v: &str| opts.specifiers.expand(v).map_err(|m| err(path, line, format!("{key}={v}: {m}")));
        let abs = |v: &str, trailing: bool| {
            simplify_abs(v, trailing).ok_or_else(|| err(path, line, format!("{key}=: '{v}' is not an absolute path")))
        };
        let size = |v: &str| parse_size(v).ok_or_else(|| err(path, line, format!("Failed to parse size value: {v}")));
        let tristate = |v: &str| -> Result<Option<bool>> {
            if v.is_empty() {
                return Ok(None);
            }
            parse_bool(v).map(Some).ok_or_else(|| err(path, line, format!("Failed to parse {key}= value: {v}")))
        };
        match key.as_str() {
            "Type" => {
                let mut t = PartitionType::parse(&value, &opts.architecture)
                    .ok_or_else(|| e(format!("Failed to parse partition type: {value}")))?;
                if opts.foreign {
                    t = t.override_arch(&opts.architecture);
                }
                d.ptype = t;
            }
            "Label" => {
                let l = expand(&value)?;
                if l.encode_utf16().count() > 36 {
                    return Err(e(format!("Partition label too long for GPT table: \"{l}\"")));
                }
                d.label = Some(l);
            }
            "UUID" => {
                d.uuid = match value.as_str() {
                    "" => UuidSetting::Derived,
                    "null" => UuidSetting::Given(Uuid::nil()),
                    v => UuidSetting::Given(
                        gpt::parse_id128(v).ok_or_else(|| e(format!("Failed to parse 128-bit ID/UUID: {v}")))?,
                    ),
                }
            }
            "Priority" => d.priority = value.parse().map_err(|_| e(format!("Failed to parse Priority=: {value}")))?,
            "Weight" | "PaddingWeight" => {
                let w: u32 = value.parse().map_err(|_| e(format!("Failed to parse weight value: {value}")))?;
                if w > 1_000_000 {
                    return Err(e(format!("Weight needs to be in range 0…1000000: {w}")));
                }
                if key == "Weight" {
                    d.weight = w
                } else {
                    d.padding_weight = w
                }
            }
            "SizeMinBytes" => d.size_min = Some(round_down(size(&value)?, 4096)),
            "SizeMaxBytes" => d.size_max = Some(round_up(size(&value)?, 4096)),
            "PaddingMinBytes" => d.padding_min = Some(round_down(size(&value)?, 4096)),
            "PaddingMaxBytes" => d.padding_max = Some(round_up(size(&value)?, 4096)),
            "FactoryReset" => d.factory_reset = tristate(&value)?.unwrap_or(false),
            "CopyBlocks" => {
                d.copy_blocks = match value.as_str() {
                    "" => None,
                    "auto" => Some(CopyBlocks::Auto),
                    v => Some(CopyBlocks::Path(abs(&expand(v)?, false)?)),
                }
            }
            "Format" => {
                let v = std::env::var("SYSTEMD_REPART_OVERRIDE_FSTYPE").unwrap_or(value.clone());
                if v.is_empty() || v.contains('/') || v == "." || v == ".." {
                    return Err(e(format!("File system type is not valid: {v}")));
                }
                d.format = Some(v);
            }
            "CopyFiles" => {
                let (src, dst) = split_colon(&value);
                if src.is_empty() {
                    warn(path, line, &format!("No argument specified: {value}"));
                    continue;
                }
                if dst.as_deref().is_some_and(|t| t.contains(':')) {
                    return Err(e(format!("Too many arguments: {value}")));
                }
                let src = abs(&expand(&src)?, false)?;
                let dst = match dst {
                    Some(t) => abs(&expand(&t)?, false)?,
                    None => src.clone(),
                };
                d.copy_files.push((src, dst));
            }
            "ExcludeFiles" | "ExcludeFilesTarget" => {
                let list = if key == "ExcludeFiles" { &mut d.exclude_files } else { &mut d.exclude_files_target };
                if value.is_empty() {
                    list.clear();
                    continue;
                }
                for w in split_words(&value).map_err(|m| e(format!("Invalid syntax: {m}")))? {
                    list.push(abs(&expand(&w)?, true)?);
                }
            }
            "MakeDirectories" => {
                for w in split_words(&value).map_err(|m| e(format!("Invalid syntax: {m}")))? {
                    let p = abs(&expand(&w)?, false)?;
                    if !d.make_directories.contains(&p) {
                        d.make_directories.push(p);
                    }
                }
            }
            "MakeSymlinks" => {
                for w in split_words(&value).map_err(|m| e(format!("Invalid syntax: {m}")))? {
                    let (p, t) = split_colon(&w);
                    let Some(t) = t else {
                        return Err(e(format!("Missing source or target in {value}")));
                    };
                    d.make_symlinks.push((abs(&expand(&p)?, false)?, t));
                }
            }
            "Encrypt" => {
                d.encrypt = match value.as_str() {
                    "" | "off" => Encrypt::Off,
                    "key-file" => Encrypt::KeyFile,
                    "tpm2" => Encrypt::Tpm2,
                    "key-file+tpm2" => Encrypt::KeyFileTpm2,
                    v => match parse_bool(v) {
                        Some(true) => Encrypt::KeyFile,
                        Some(false) => Encrypt::Off,
                        None => return Err(e(format!("Failed to parse Encrypt=: {v}"))),
                    },
                }
            }
            "Verity" => {
                d.verity = match value.as_str() {
                    "" | "off" => Verity::Off,
                    "data" => Verity::Data,
                    "hash" => Verity::Hash,
                    "signature" => Verity::Signature,
                    v => return Err(e(format!("Failed to parse Verity=: {v}"))),
                }
            }
            "VerityMatchKey" => d.verity_match_key = (!value.is_empty()).then(|| value.clone()),
            "Flags" => {
                d.flags = if let Some(h) = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
                    u64::from_str_radix(h, 16).ok()
                } else {
                    value.parse().ok()
                }
                .ok_or_else(|| e(format!("Failed to parse Flags= value: {value}")))?
            }
            "ReadOnly" => d.read_only = tristate(&value)?,
            "NoAuto" => d.no_auto = tristate(&value)?,
            "GrowFileSystem" => d.growfs = tristate(&value)?,
            "SplitName" => d.split_name = if value == "-" { None } else { Some(value.clone()) },
            "Minimize" => {
                d.minimize = match value.as_str() {
                    "" | "off" => Minimize::Off,
                    "best" => Minimize::Best,
                    "guess" => Minimize::Guess,
                    v => match parse_bool(v) {
                        Some(true) => Minimize::Best,
                        Some(false) => Minimize::Off,
                        None => return Err(e(format!("Failed to parse Minimize=: {v}"))),
                    },
                }
            }
            "Subvolumes" => {
                for w in split_words(&value).map_err(|m| e(format!("Invalid syntax: {m}")))? {
                    let (p, flags) = split_colon(&w);
                    let p = abs(&expand(&p)?, false)?;
                    let flags: Vec<String> =
                        flags.map(|f| f.split(',').map(String::from).collect()).unwrap_or_default();
                    if let Some(bad) = flags.iter().find(|f| !matches!(f.as_str(), "ro" | "nodatacow")) {
                        return Err(e(format!("Unknown subvolume flag: {bad}")));
                    }
                    match d.subvolumes.iter_mut().find(|(q, _)| *q == p) {
                        Some((_, f)) if !flags.is_empty() => *f = flags,
                        Some(_) => {}
                        None => d.subvolumes.push((p, flags)),
                    }
                }
            }
            "DefaultSubvolume" => {
                d.default_subvolume = if value.is_empty() { None } else { Some(abs(&expand(&value)?, false)?) }
            }
            "VerityDataBlockSizeBytes" | "VerityHashBlockSizeBytes" => {
                let v = size(&value)?;
                if !(512..=4096).contains(&v) || !v.is_power_of_two() {
                    return Err(e(format!("{key}= must be a power of two between 512 and 4096: {value}")));
                }
                if key == "VerityDataBlockSizeBytes" {
                    d.verity_data_block_size = Some(v)
                } else {
                    d.verity_hash_block_size = Some(v)
                }
            }
            "MountPoint" => {
                if value.is_empty() {
                    d.mountpoints.clear();
                    continue;
                }
                let (w, o) = split_colon(&value);
                d.mountpoints.push((abs(&w, false)?, o.filter(|o| !o.is_empty())));
            }
            "EncryptedVolume" => d.encrypted_volume = (!value.is_empty()).then(|| value.clone()),
            "Compression" => d.compression = (!value.is_empty()).then(|| value.clone()),
            "CompressionLevel" => d.compression_level = (!value.is_empty()).then(|| value.clone()),
            "SupplementFor" => d.supplement_for = (!value.is_empty()).then(|| value.clone()),
            other => warn(path, line, &format!("unknown key '{other}' in section [Partition], ignoring")),
        }
    }
    Ok(())
}

pub(crate) fn round_up(v: u64, p: u64) -> u64 {
    v.div_ceil(p).saturating_mul(p)
}

pub(crate) fn round_down(v: u64, p: u64) -> u64 {
    v / p * p
}

/// The checks and implied defaults repart applies after reading a definition.
fn finalize(d: &mut Definition, opts: &ParseOptions) -> Result<()> {
    let path = d.path.clone();
    let e = |m: &str| err(&path, 1, m);
    if d.ptype.uuid.is_nil() {
        return Err(e("Type= not defined, refusing."));
    }
    if let (Some(a), Some(b)) = (d.size_min, d.size_max) {
        if a > b {
            return Err(e("SizeMinBytes= larger than SizeMaxBytes=, refusing."));
        }
    }
    if let (Some(a), Some(b)) = (d.padding_min, d.padding_max) {
        if a > b {
            return Err(e("PaddingMinBytes= larger than PaddingMaxBytes=, refusing."));
        }
    }
    if d.copy_blocks.is_some() && (d.format.is_some() || d.needs_populate()) {
        return Err(e(
            "Format=/CopyFiles=/MakeDirectories=/MakeSymlinks= and CopyBlocks= cannot be combined, refusing.",
        ));
    }
    if d.needs_populate() && d.format.as_deref() == Some("swap") {
        return Err(e("Format=swap and CopyFiles=/MakeDirectories=/MakeSymlinks= cannot be combined, refusing."));
    }
    if d.format.is_none() {
        if d.designator() == Some(Designator::Swap) {
            d.format = Some("swap".into());
        } else if d.needs_populate() || (d.encrypt != Encrypt::Off && d.copy_blocks.is_none()) {
            let vfat = matches!(d.designator(), Some(Designator::Esp | Designator::Xbootldr));
            d.format = Some(if vfat { "vfat" } else { "ext4" }.into());
        }
    }
    if d.minimize != Minimize::Off && d.format.is_none() && d.verity != Verity::Hash {
        return Err(e("Minimize= can only be enabled if Format= or Verity=hash are set."));
    }
    if d.minimize == Minimize::Best
        && d.format.as_deref().is_some_and(|f| !mkfs::fstype_is_ro(f))
        && d.verity != Verity::Hash
    {
        return Err(e("Minimize=best can only be used with read-only filesystems or Verity=hash."));
    }
    if let Some(f) = &d.format {
        if !mkfs::supported_fstype(f) {
            return Err(e(&format!("Unsupported file system type '{f}'.")));
        }
        if mkfs::fstype_is_ro(f) && !d.needs_populate() {
            return Err(e(&format!("Cannot format {f} filesystem without source files, refusing.")));
        }
    }
    if d.verity != Verity::Off && d.verity_match_key.is_none() {
        return Err(e(&format!("VerityMatchKey= must be set if Verity={}.", verity_name(d.verity))));
    }
    if d.verity == Verity::Off && d.verity_match_key.is_some() {
        return Err(e("VerityMatchKey= can only be set if Verity= is not \"off\"."));
    }
    if matches!(d.verity, Verity::Hash | Verity::Signature)
        && (d.copy_blocks.is_some() || d.format.is_some() || d.needs_populate())
    {
        return Err(e(&format!(
            "CopyBlocks=/CopyFiles=/Format=/MakeDirectories=/MakeSymlinks= cannot be used with Verity={}.",
            verity_name(d.verity)
        )));
    }
    if d.verity != Verity::Off && d.encrypt != Encrypt::Off {
        return Err(e("Encrypting verity hash/data partitions is not supported."));
    }
    if d.verity == Verity::Signature && !opts.have_signing_key {
        return Err(RepartError::hint(
            format!(
                "{}: verity signature partition requested but no verity key and certificate are configured",
                path.display()
            ),
            "Set VerityKey= and VerityCertificate= (mkosi genkey creates a pair)",
        ));
    }
    if d.verity == Verity::Signature && (d.size_min.is_some() || d.size_max.is_some()) {
        return Err(e("SizeMinBytes=/SizeMaxBytes= cannot be used with Verity=signature."));
    }
    if let Some(ds) = &d.default_subvolume {
        if !d.subvolumes.iter().any(|(p, _)| p == ds) {
            return Err(e("DefaultSubvolume= must be one of the paths in Subvolumes=."));
        }
    }
    // Features we do not implement (yet) fail clearly instead of building something else.
    if d.encrypt != Encrypt::Off {
        return Err(RepartError::hint(
            format!("{}: Encrypt= is not supported by this version of mkosi", path.display()),
            "Encrypted partitions need systemd-repart and cryptsetup; build without Encrypt= for now",
        ));
    }
    if d.supplement_for.is_some() {
        return Err(e("SupplementFor= is not supported by this version of mkosi"));
    }
    if d.copy_blocks == Some(CopyBlocks::Auto) {
        return Err(e("CopyBlocks=auto is not supported when building images (there is no host partition to copy)"));
    }
    if d.encrypted_volume.is_some() {
        return Err(e("EncryptedVolume= is not supported by this version of mkosi"));
    }
    if (matches!(d.designator(), Some(Designator::RootVerity | Designator::UsrVerity)) || d.verity == Verity::Data)
        && d.read_only.is_none()
    {
        d.read_only = Some(true);
    }
    if d.designator().is_some_and(Designator::knows_growfs) && d.read_only != Some(true) && d.growfs.is_none() {
        d.growfs = Some(true);
    }
    if let Some(designator) = d.designator().filter(|d| d.has_filesystem()) {
        let var = format!("SYSTEMD_REPART_OVERRIDE_FSTYPE_{}", designator.name().to_uppercase().replace('-', "_"));
        if let Ok(v) = std::env::var(&var) {
            if !v.is_empty() {
                d.format = Some(v);
            }
        }
    }
    Ok(())
}

pub fn verity_name(v: Verity) -> &'static str {
    match v {
        Verity::Off => "off",
        Verity::Data => "data",
        Verity::Hash => "hash",
        Verity::Signature => "signature",
    }
}

/// Every verity data partition needs exactly one hash partition with the same match key (and vice
/// versa); signature partitions are optional but unique; siblings share their priority.
fn check_verity_siblings(defs: &[Definition]) -> Result<()> {
    for d in defs.iter().filter(|d| d.verity != Verity::Off) {
        for mode in [Verity::Data, Verity::Hash, Verity::Signature] {
            if mode == d.verity {
                continue;
            }
            let sibs: Vec<&Definition> =
                defs.iter().filter(|q| q.verity == mode && q.verity_match_key == d.verity_match_key).collect();
            let key = d.verity_match_key.as_deref().unwrap_or_default();
            match sibs.len() {
                0 if mode != Verity::Signature => {
                    return Err(err(
                        &d.path,
                        1,
                        format!(
                            "Missing verity {} partition for verity {} partition with VerityMatchKey={key}.",
                            verity_name(mode),
                            verity_name(d.verity)
                        ),
                    ))
                }
                0 => {}
                1 => {
                    if sibs[0].priority != d.priority {
                        return Err(err(
                            &d.path,
                            1,
                            format!(
                                "Priority mismatch ({} != {}) for verity sibling partitions with VerityMatchKey={key}.",
                                d.priority, sibs[0].priority
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(err(
                        &d.path,
                        1,
                        format!(
                            "Multiple verity {} partitions found for verity {} partition with VerityMatchKey={key}.",
                            verity_name(mode),
                            verity_name(d.verity)
                        ),
                    ))
                }
            }
        }
    }
    for d in defs.iter().filter(|d| d.verity == Verity::Hash && d.minimize != Minimize::Off) {
        if let Some(data) = defs.iter().find(|q| q.verity == Verity::Data && q.verity_match_key == d.verity_match_key) {
            if data.minimize == Minimize::Off && data.copy_blocks.is_none() {
                return Err(err(
                    &d.path,
                    1,
                    "Minimize= set for verity hash partition but data partition does not set CopyBlocks= or Minimize=.",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ParseOptions {
        ParseOptions {
            architecture: "x86-64".into(),
            foreign: false,
            specifiers: Specifiers { architecture: "x86-64".into(), root: None },
            have_signing_key: false,
        }
    }

    fn parse(files: &[(&str, &str)]) -> Result<Vec<Definition>> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        read_definitions(&[dir.path().to_path_buf()], &opts())
    }

    fn one(text: &str) -> Result<Definition> {
        parse(&[("10-x.conf", text)]).map(|mut v| v.remove(0))
    }

    #[test]
    fn sizes() {
        let cases = [
            ("512M", Some(512 << 20)),
            ("1G", Some(1 << 30)),
            ("1.5G", Some(3 << 29)),
            ("4096", Some(4096)),
            ("10 K", Some(10240)),
            ("1G 512M", Some((1 << 30) + (512 << 20))),
            ("1g", None),
            ("-1", None),
            ("", None),
            ("abc", None),
            ("12Q", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s), want, "{s}");
        }
    }

    #[test]
    fn defaults_and_implied_values() {
        let d = one("[Partition]\nType=root\nCopyFiles=/\n").unwrap();
        assert_eq!(d.ptype.display_name(), "root-x86-64");
        assert_eq!(d.format.as_deref(), Some("ext4"));
        assert_eq!(d.copy_files, vec![("/".to_string(), "/".to_string())]);
        assert_eq!(d.growfs, Some(true));
        assert_eq!(d.weight, 1000);
        assert_eq!(d.split_name.as_deref(), Some("%t"));
        assert_eq!(d.gpt_flags(), gpt::FLAG_GROWFS);

        let d = one("[Partition]\nType=esp\nCopyFiles=/boot:/\n").unwrap();
        assert_eq!(d.format.as_deref(), Some("vfat"));
        assert_eq!(d.copy_files, vec![("/boot".to_string(), "/".to_string())]);
        assert_eq!(d.gpt_flags(), 0);

        let d = one("[Partition]\nType=swap\n").unwrap();
        assert_eq!(d.format.as_deref(), Some("swap"));

        let d = one(
            "[Partition]\nType=root\nFormat=erofs\nCopyFiles=/usr\nVerity=data\nVerityMatchKey=root\n[Partition]\n",
        );
        assert!(d.is_err(), "a data partition without hash sibling is refused");

        let defs = parse(&[
            (
                "10-root.conf",
                "[Partition]\nType=root\nFormat=erofs\nCopyFiles=/usr\nVerity=data\nVerityMatchKey=r\nMinimize=best\n",
            ),
            ("20-verity.conf", "[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=r\nMinimize=best\n"),
        ])
        .unwrap();
        assert_eq!(defs[0].read_only, Some(true));
        assert_eq!(defs[0].growfs, None);
        assert_eq!(defs[0].gpt_flags(), gpt::FLAG_READ_ONLY);
        assert_eq!(defs[1].read_only, Some(true));
    }

    #[test]
    fn drop_ins_and_continuations() {
        let defs = parse(&[
            (
                "10-root.conf",
                "# comment\n[Partition]\nType=root\nCopyFiles=/a:/b\nMakeDirectories=/x\\\n  # inside\n/y\nLabel=x\n",
            ),
            ("10-root.conf.d/override.conf", "[Partition]\nLabel=y\nSizeMinBytes=1G\n"),
            ("20-empty.conf", ""),
        ])
        .unwrap();
        assert_eq!(defs.len(), 1, "empty files are masked");
        assert_eq!(defs[0].label.as_deref(), Some("y"), "the drop-in wins");
        assert_eq!(defs[0].size_min, Some(1 << 30));
        assert_eq!(defs[0].copy_files, vec![("/a".to_string(), "/b".to_string())]);
        assert_eq!(defs[0].make_directories, vec!["/x".to_string(), "/y".to_string()]);
        let d = one("[Partition]\nType=root\nLabel=x\\\ny\n").unwrap();
        assert_eq!(d.label.as_deref(), Some("x y"));
        assert_eq!(defs[0].drop_ins.len(), 1);
    }

    #[test]
    fn bad_values_name_file_and_line() {
        let cases = [
            ("[Partition]\nType=rooot\n", 2, "Failed to parse partition type"),
            ("[Partition]\nType=root\nSizeMinBytes=lots\n", 3, "Failed to parse size value"),
            ("[Partition]\nType=root\nMinimize=sometimes\n", 3, "Minimize"),
            ("[Partition]\nType=root\nVerity=maybe\n", 3, "Verity"),
            ("[Partition]\nType=root\nUUID=xyz\n", 3, "UUID"),
            ("[Partition]\nType=root\nCopyFiles=relative\n", 3, "absolute"),
            ("[Partition]\nType=root\nLabel=%Z\n", 3, "unknown specifier"),
            ("[Partition]\n\nType=root\nVerityDataBlockSizeBytes=1000\n", 4, "power of two"),
            ("[Partition]\nLabel=x\n", 1, "Type= not defined"),
            ("[Partition]\nType=root\nSizeMinBytes=2G\nSizeMaxBytes=1G\n", 1, "SizeMinBytes= larger"),
            ("[Partition]\nType=root\nFormat=erofs\n", 1, "without source files"),
            ("[Partition]\nType=root\nFormat=zfs\nCopyFiles=/\n", 1, "Unsupported file system"),
            ("[Partition]\nType=root\nFormat=ext4\nMinimize=best\n", 1, "read-only filesystems"),
            ("[Partition]\nType=swap\nFormat=swap\nCopyFiles=/\n", 1, "Format=swap"),
            ("[Partition]\nType=root\nEncrypt=key-file\n", 1, "Encrypt="),
            ("[Partition]\nType=root-verity-sig\nVerity=signature\nVerityMatchKey=r\n", 1, "verity key"),
        ];
        for (text, line, msg) in cases {
            let e = one(text).expect_err(text);
            let s = e.to_string();
            assert!(s.contains(msg), "{text}: {s}");
            if let RepartError::Definition { line: l, .. } = e {
                assert_eq!(l, line, "{text}: {s}");
            }
        }
    }

    #[test]
    fn unknown_keys_are_not_fatal() {
        let d = one("[Partition]\nType=root\nFrobnicate=yes\n[X-Custom]\nA=b\n[Other]\nB=c\n").unwrap();
        assert_eq!(d.ptype.display_name(), "root-x86-64");
    }

    #[test]
    fn foreign_architecture_overrides_types() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-root.conf"), "[Partition]\nType=root-x86-64\n").unwrap();
        let mut o = opts();
        o.architecture = "arm64".into();
        o.foreign = true;
        let d = read_definitions(&[dir.path().to_path_buf()], &o).unwrap();
        assert_eq!(d[0].ptype.display_name(), "root-arm64");
    }

    #[test]
    fn specifiers_from_the_image_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/os-release"), "ID=debian\nVERSION_ID=\"13\"\n").unwrap();
        let s = Specifiers { architecture: "x86-64".into(), root: Some(dir.path().to_path_buf()) };
        assert_eq!(s.expand("%o-%w-%a-%%").unwrap(), "debian-13-x86-64-%");
        assert!(s.expand("%m").is_err());
    }

    #[test]
    fn first_directory_wins() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("10-root.conf"), "[Partition]\nType=root\nLabel=a\n").unwrap();
        std::fs::write(b.path().join("10-root.conf"), "[Partition]\nType=root\nLabel=b\n").unwrap();
        std::fs::write(b.path().join("20-swap.conf"), "[Partition]\nType=swap\n").unwrap();
        let d = read_definitions(&[a.path().to_path_buf(), b.path().to_path_buf()], &opts()).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].label.as_deref(), Some("a"));
    }
}
