//! Kernel modules and firmware.
//!
//! - [`filter_image_modules`]: `KernelModules=` (globs, `default`, `host`, legacy `re:` regexes),
//!   `KernelModulesExclude=`, `KernelModulesIncludeHost=`, `FirmwareFiles=`/`FirmwareExclude=`
//!   decide which modules stay in the image; the selected modules pull in their dependencies
//!   and the firmware they ask for, everything else is deleted.
//! - [`build_kernel_modules_initrd`]: the per-kernel initrd holding the modules selected by
//!   `KernelInitrdModules=` (all of them when empty), their dependencies and firmware.
//! - [`microcode_initrds`]/[`build_microcode_initrd`]: the early microcode cpio for x86.
//!
//! Module information is read in-process from the `.modinfo` ELF section of each module
//! (decompressing `.ko.xz`, `.ko.zst` and `.ko.gz` first) and, for built-in modules, from
//! `modules.builtin.modinfo`; no `modinfo` binary is needed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use mkosi_config::enums::{Architecture, Distribution};
use mkosi_config::pyglob::{fnmatch, has_magic};
use mkosi_config::Host;
use mkosi_formats::compress::{Algorithm, Compressor};
use mkosi_formats::cpio::{self, CpioOptions};

use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::log;

/// Module file name endings, in the order they are tried.
const MODULE_SUFFIXES: [&str; 4] = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"];

/// Where firmware lives, relative to the image root.
pub const FIRMWARE_DIR: &str = "usr/lib/firmware";

/// Microcode directories firmware filtering never touches.
const MICROCODE_DIRS: [&str; 2] = ["amd-ucode", "intel-ucode"];

/// The mkosi-initrd configuration files that define the `default` module list.
const DEFAULT_MODULE_CONFIGS: [(&str, &str); 2] = [
    ("00-kernel-modules.conf", include_str!("../../../resources/mkosi-initrd/mkosi.conf.d/00-kernel-modules.conf")),
    (
        "01-kernel-modules-arm64.conf",
        include_str!("../../../resources/mkosi-initrd/mkosi.conf.d/01-kernel-modules-arm64.conf"),
    ),
];

/// `usr/lib/modules/<kver>`, relative to the image root.
pub fn modules_dir(kver: &str) -> PathBuf {
    Path::new("usr/lib/modules").join(kver)
}

// ---------------------------------------------------------------------------------------------
// Names and globs
// ---------------------------------------------------------------------------------------------

/// Module names are compared with dashes: `_` becomes `-`.
pub fn normalize_module_name(name: &str) -> String {
    name.replace('_', "-")
}

/// Like [`normalize_module_name`] for a glob, leaving `[...]` character sets alone.
pub fn normalize_module_glob(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    let mut in_set = false;
    for c in glob.chars() {
        match c {
            '[' if !in_set => {
                in_set = true;
                out.push(c);
            }
            ']' if in_set => {
                in_set = false;
                out.push(c);
            }
            '_' if !in_set => out.push('-'),
            _ => out.push(c),
        }
    }
    out
}

/// The module name of a module file: the file name up to the first `.`, normalized.
pub fn module_path_to_name(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default();
    normalize_module_name(stem)
}

/// Whether `name` (a path relative to the modules or firmware directory, without suffixes)
/// is matched by `globs`. The last matching glob decides; a `-` prefix makes it an exclusion;
/// a trailing `/` matches everything below a directory. A glob matches when
/// - it starts with `/` and matches `/<name>` as `/kernel<glob>` or as itself,
/// - it contains a `/` and matches a trailing part of `/<name>` starting at a `/`,
/// - or it matches the last path component of `name`.
///
/// Matching is `fnmatch`-like: `*` and `?` also match `/`. Without any match the answer is
/// `match_default`.
pub fn globs_match_filename(name: &str, globs: &[String], match_default: bool) -> bool {
    let slashed = format!("/{name}");
    let basename = name.rsplit('/').next().unwrap_or(name);
    for glob in globs.iter().rev() {
        let (negative, glob) = match glob.strip_prefix('-') {
            Some(g) => (true, g),
            None => (false, glob.as_str()),
        };
        let glob = if glob.ends_with('/') { format!("{glob}*") } else { glob.to_string() };
        let absolute =
            glob.starts_with('/') && (fnmatch(&format!("/kernel{glob}"), &slashed) || fnmatch(&glob, &slashed));
        let hit =
            absolute || (glob.contains('/') && fnmatch(&format!("*/{glob}"), &slashed)) || fnmatch(&glob, basename);
        if hit {
            return !negative;
        }
    }
    match_default
}

fn strip_suffix_of<'a>(name: &'a str, suffixes: &[&str]) -> &'a str {
    suffixes.iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

/// [`globs_match_filename`] for a module path (`.ko` and a compression suffix are ignored).
pub fn globs_match_module(name: &str, globs: &[String]) -> bool {
    globs_match_filename(strip_suffix_of(name, &MODULE_SUFFIXES), globs, false)
}

/// [`globs_match_filename`] for a firmware path (a compression suffix is ignored).
pub fn globs_match_firmware(name: &str, globs: &[String], match_default: bool) -> bool {
    globs_match_filename(strip_suffix_of(name, &[".gz", ".xz", ".zst"]), globs, match_default)
}

/// One regex out of the legacy `re:` entries of `items` (None when there are none).
fn legacy_regex(items: &[String]) -> Result<Option<regex::Regex>> {
    let patterns: Vec<&str> = items.iter().filter_map(|p| p.strip_prefix("re:")).collect();
    if patterns.is_empty() {
        return Ok(None);
    }
    let joined = patterns.join("|");
    regex::Regex::new(&joined)
        .map(Some)
        .map_err(|e| BuildError::msg(format!("Invalid kernel module or firmware regular expression '{joined}': {e}")))
}

fn to_slash_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// Walking the tree
// ---------------------------------------------------------------------------------------------

/// Every path below `root/rel` (relative to `root`), symlinked directories not followed.
pub(crate) fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("reading", &dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io("reading", &dir))?;
        let child = rel.join(e.file_name());
        let is_dir = e.file_type().map_err(io("reading", root.join(&child)))?.is_dir();
        out.push(child.clone());
        if is_dir {
            walk(root, &child, out)?;
        }
    }
    Ok(())
}

/// Every module file of kernel `kver`, relative to `root`, sorted.
pub fn all_modules(root: &Path, kver: &str) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    walk(root, &modules_dir(kver), &mut all)?;
    let mut modules: Vec<PathBuf> = all
        .into_iter()
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            MODULE_SUFFIXES.iter().any(|s| name.ends_with(s))
        })
        .collect();
    modules.sort();
    Ok(modules)
}

/// Every file or symlink below the firmware directory, relative to `root`.
fn all_firmware(root: &Path) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    walk(root, Path::new(FIRMWARE_DIR), &mut all)?;
    Ok(all
        .into_iter()
        .filter(|p| {
            let full = root.join(p);
            full.is_file() || full.is_symlink()
        })
        .collect())
}

/// Python's `pathlib.Path(base).glob(pattern)`, relative to `root`, for a pattern without `**`.
/// Symlinked directories are followed; wildcards match hidden files too.
fn glob_below(root: &Path, base: &Path, pattern: &str) -> Vec<PathBuf> {
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let mut current = vec![base.to_path_buf()];
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for dir in &current {
            if has_magic(part) {
                let Ok(rd) = std::fs::read_dir(root.join(dir)) else { continue };
                let mut names: Vec<String> =
                    rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                for name in names.into_iter().filter(|n| fnmatch(part, n)) {
                    let p = dir.join(&name);
                    if last || root.join(&p).is_dir() {
                        next.push(p);
                    }
                }
            } else {
                let p = dir.join(part);
                let ok = if last { std::fs::symlink_metadata(root.join(&p)).is_ok() } else { root.join(&p).is_dir() };
                if ok {
                    next.push(p);
                }
            }
        }
        current = next;
    }
    if parts.is_empty() {
        return vec![];
    }
    current
}

// ---------------------------------------------------------------------------------------------
// Selecting modules and firmware
// ---------------------------------------------------------------------------------------------

/// The names of the modules of kernel `kver` that `include` and `exclude` select, sorted.
///
/// `include` holds globs (see [`globs_match_filename`]) and legacy `re:` regexes, which are
/// searched for in the module path below `usr/lib/modules/<kver>/<subdir>/`. `exclude` only
/// holds legacy regexes: with any, all modules are kept except those it matches that `include`
/// does not; without, only the included ones are kept (all when `include` is empty too).
pub fn filter_kernel_modules(root: &Path, kver: &str, include: &[String], exclude: &[String]) -> Result<Vec<String>> {
    if !include.is_empty() {
        log::debug(&format!("Kernel modules include directives: {}", include.join(" ")));
    }
    if !exclude.is_empty() {
        log::debug(&format!("Kernel modules exclude directives: {}", exclude.join(" ")));
    }
    let modulesd = modules_dir(kver);
    let modules = all_modules(root, kver)?;
    let total = modules.len();

    // Paths relative to the modules directory, and (for the legacy regexes) relative to its
    // first-level subdirectory (`kernel/`, `updates/`, …).
    let rels = |m: &Path| -> (String, String) {
        let rel = m.strip_prefix(&modulesd).unwrap_or(m);
        let legacy: PathBuf = rel.components().skip(1).collect();
        (to_slash_string(rel), to_slash_string(&legacy))
    };

    let mut keep: BTreeSet<String> = BTreeSet::new();
    if !include.is_empty() {
        let regex = legacy_regex(include)?;
        let globs: Vec<String> =
            include.iter().filter(|p| !p.starts_with("re:")).map(|p| normalize_module_glob(p)).collect();
        for m in &modules {
            let (rel, legacy) = rels(m);
            if regex.as_ref().is_some_and(|r| r.is_match(&legacy))
                || globs_match_module(&normalize_module_name(&rel), &globs)
            {
                keep.insert(rel);
            }
        }
    }

    let selected: Vec<&PathBuf> = if !exclude.is_empty() {
        if let Some(bad) = exclude.iter().find(|p| !p.starts_with("re:")) {
            return Err(BuildError::msg(format!("Kernel module exclusion '{bad}' is not a regular expression")));
        }
        let regex = legacy_regex(exclude)?;
        modules
            .iter()
            .filter(|m| {
                let (rel, legacy) = rels(m);
                keep.contains(&rel) || !regex.as_ref().is_some_and(|r| r.is_match(&legacy))
            })
            .collect()
    } else if !include.is_empty() {
        modules.iter().filter(|m| keep.contains(&rels(m).0)).collect()
    } else {
        modules.iter().collect()
    };

    log::debug(&format!("Passing {}/{total} kernel modules on to dependency resolution.", selected.len()));
    let names: BTreeSet<String> = selected.iter().map(|m| module_path_to_name(m)).collect();
    Ok(names.into_iter().collect())
}

/// Apply `FirmwareFiles=`/`FirmwareExclude=` to the firmware `firmware` (paths relative to
/// `root`): exclusion regexes and `-` globs drop files, include regexes and globs add files
/// from the firmware directory.
pub fn filter_firmware(
    root: &Path,
    mut firmware: BTreeSet<PathBuf>,
    include: &[String],
    exclude: &[String],
) -> Result<BTreeSet<PathBuf>> {
    if !include.is_empty() {
        log::debug(&format!("Firmware include directives: {}", include.join(" ")));
    }
    if !exclude.is_empty() {
        log::debug(&format!("Firmware exclude directives: {}", exclude.join(" ")));
    }
    let firmwared = Path::new(FIRMWARE_DIR);
    let rel = |f: &Path| to_slash_string(f.strip_prefix(firmwared).unwrap_or(f));
    // Globs can exclude firmware too, so they apply to the firmware modules asked for.
    let globs: Vec<String> = include.iter().filter(|p| !p.starts_with("re:")).cloned().collect();

    if !exclude.is_empty() || !globs.is_empty() {
        if let Some(bad) = exclude.iter().find(|p| !p.starts_with("re:")) {
            return Err(BuildError::msg(format!("Firmware exclusion '{bad}' is not a regular expression")));
        }
        let regex = legacy_regex(exclude)?;
        firmware.retain(|f| {
            let r = rel(f);
            !regex.as_ref().is_some_and(|re| re.is_match(&r)) && globs_match_firmware(&r, &globs, true)
        });
    }

    if !include.is_empty() {
        let regex = legacy_regex(include)?;
        for f in all_firmware(root)? {
            let r = rel(&f);
            if regex.as_ref().is_some_and(|re| re.is_match(&r)) || globs_match_firmware(&r, &globs, false) {
                firmware.insert(f);
            }
        }
    }
    log::debug(&format!("A total of {} firmware files will be included in the image", firmware.len()));
    Ok(firmware)
}

// ---------------------------------------------------------------------------------------------
// Module information
// ---------------------------------------------------------------------------------------------

/// The contents of a module file, decompressed.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(io("reading", path))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = Vec::new();
    let res = if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(&raw[..]).read_to_end(&mut out).map(|_| ())
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(&raw[..]).and_then(|mut d| d.read_to_end(&mut out)).map(|_| ())
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map(|_| ())
    } else {
        return Ok(raw);
    };
    res.map_err(io("decompressing", path))?;
    Ok(out)
}

/// The `key=value` entries of the `.modinfo` section of an ELF module image.
pub fn modinfo_entries(elf: &[u8]) -> Result<Vec<(String, String)>> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).map_err(|e| BuildError::msg(format!("not an ELF object: {e}")))?;
    let Some(section) = file.section_by_name(".modinfo") else { return Ok(vec![]) };
    let data = section.data().map_err(|e| BuildError::msg(format!("unreadable .modinfo section: {e}")))?;
    Ok(parse_modinfo_strings(data))
}

/// NUL-separated `key=value` strings.
fn parse_modinfo_strings(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The `.modinfo` entries of the module file at `path`.
pub fn read_modinfo(path: &Path) -> Result<Vec<(String, String)>> {
    let data = read_module(path)?;
    modinfo_entries(&data).map_err(|e| BuildError::msg(format!("{}: {e}", path.display())))
}

/// What a module needs: other modules (by name or alias) and firmware (as named in `firmware=`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleNeeds {
    pub modules: BTreeSet<String>,
    pub firmware: Vec<String>,
}

/// The needs of a module from its info entries: `depends=` (comma separated), `softdep=`
/// (space separated, `pre:`/`post:` markers dropped) and `firmware=`.
pub fn module_needs(entries: &[(String, String)]) -> ModuleNeeds {
    let mut needs = ModuleNeeds::default();
    for (key, value) in entries {
        let value = value.trim();
        match key.as_str() {
            "depends" => needs.modules.extend(value.split(',').filter(|d| !d.is_empty()).map(normalize_module_name)),
            "softdep" => {
                needs.modules.extend(value.split_whitespace().filter(|d| !d.ends_with(':')).map(normalize_module_name))
            }
            "firmware" if !value.is_empty() => needs.firmware.push(value.to_string()),
            _ => {}
        }
    }
    needs
}

/// The firmware files (relative to `root`) a `firmware=` value refers to: the file itself and
/// any compressed variants (`<value>.*`), or what the value matches when it ends with `*`.
pub fn firmware_files(root: &Path, value: &str) -> BTreeSet<PathBuf> {
    let firmwared = Path::new(FIRMWARE_DIR);
    let mut out = BTreeSet::new();
    let exact = firmwared.join(value);
    if root.join(&exact).exists() {
        out.insert(exact);
    }
    let pattern = if value.ends_with('*') { value.to_string() } else { format!("{value}.*") };
    out.extend(glob_below(root, firmwared, &pattern));
    out
}

/// What `modules.alias` and built-in `alias=` entries map names to.
#[derive(Debug, Default)]
struct Aliases {
    exact: HashMap<String, Vec<String>>,
    patterns: Vec<(String, String)>,
}

impl Aliases {
    fn add(&mut self, alias: &str, module: &str) {
        let alias = normalize_module_glob(alias);
        let module = normalize_module_name(module);
        if has_magic(&alias) {
            self.patterns.push((alias, module));
        } else {
            self.exact.entry(alias).or_default().push(module);
        }
    }

    fn resolve(&self, name: &str) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.exact.get(name).into_iter().flatten().cloned().collect();
        out.extend(self.patterns.iter().filter(|(p, _)| fnmatch(p, name)).map(|(_, m)| m.clone()));
        out
    }
}

/// The modules and firmware of kernel `kver` needed by the modules `names` (and by the
/// built-in modules), closed over dependencies: `(module files, firmware files)`, relative to
/// `root`. Dependencies that are neither a module nor built in are looked up in the aliases
/// (`modules.alias`, built-in `alias=`), so soft dependencies like `crypto-crc32c` resolve to
/// the modules providing them; names that resolve to nothing are warned about and skipped.
pub fn resolve_module_dependencies(
    root: &Path,
    kver: &str,
    names: &[String],
) -> Result<(BTreeSet<PathBuf>, BTreeSet<PathBuf>)> {
    let modulesd = root.join(modules_dir(kver));

    let builtin: BTreeSet<String> = match std::fs::read_to_string(modulesd.join("modules.builtin")) {
        Ok(text) => text.lines().filter(|l| !l.trim().is_empty()).map(|l| module_path_to_name(Path::new(l))).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(io("reading", modulesd.join("modules.builtin"))(e)),
    };
    let mut builtin_info: HashMap<String, Vec<(String, String)>> = HashMap::new();
    match std::fs::read(modulesd.join("modules.builtin.modinfo")) {
        Ok(data) => {
            for (key, value) in parse_modinfo_strings(&data) {
                if let Some((module, key)) = key.split_once('.') {
                    builtin_info.entry(normalize_module_name(module)).or_default().push((key.to_string(), value));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", modulesd.join("modules.builtin.modinfo"))(e)),
    }

    // Where a name exists more than once, the copy below `updates/` wins, as with depmod.
    let mut name_to_file: BTreeMap<String, PathBuf> = BTreeMap::new();
    let updates = modules_dir(kver).join("updates");
    for m in all_modules(root, kver)? {
        let name = module_path_to_name(&m);
        let prefer = m.starts_with(&updates) || !name_to_file.contains_key(&name);
        if prefer && !name_to_file.get(&name).is_some_and(|p| p.starts_with(&updates)) {
            name_to_file.insert(name, m);
        }
    }

    let mut aliases: Option<Aliases> = None;
    let load_aliases = || -> Result<Aliases> {
        let mut a = Aliases::default();
        let path = modulesd.join("modules.alias");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    let mut words = line.split_whitespace();
                    if let (Some("alias"), Some(alias), Some(module)) = (words.next(), words.next(), words.next()) {
                        a.add(alias, module);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("reading", &path)(e)),
        }
        for (module, entries) in &builtin_info {
            for (k, v) in entries {
                if k == "alias" {
                    a.add(v, module);
                }
            }
        }
        Ok(a)
    };

    let mut todo: Vec<String> = builtin.iter().cloned().chain(names.iter().cloned()).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut warned: HashSet<String> = HashSet::new();
    let mut firmware: BTreeSet<PathBuf> = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let entries = match name_to_file.get(&name) {
            Some(path) => read_modinfo(&root.join(path))?,
            None => match builtin_info.get(&name) {
                Some(entries) => entries.clone(),
                None => continue,
            },
        };
        let needs = module_needs(&entries);
        for value in &needs.firmware {
            firmware.extend(firmware_files(root, value));
        }
        for dep in needs.modules {
            if name_to_file.contains_key(&dep) {
                todo.push(dep);
                continue;
            }
            if builtin.contains(&dep) {
                continue;
            }
            if aliases.is_none() {
                aliases = Some(load_aliases()?);
            }
            let provided = aliases.as_ref().map(|a| a.resolve(&dep)).unwrap_or_default();
            let installed: Vec<String> =
                provided.iter().filter(|m| name_to_file.contains_key(*m) || builtin.contains(*m)).cloned().collect();
            if installed.is_empty() {
                if warned.insert(dep.clone()) {
                    log::warn(&format!("{dep} is a dependency of {name} but is not installed, ignoring"));
                }
                continue;
            }
            todo.extend(installed.into_iter().filter(|m| name_to_file.contains_key(m)));
        }
    }

    let modules = seen.iter().filter_map(|n| name_to_file.get(n).cloned()).collect();
    Ok((modules, firmware))
}

/// The module and firmware selection of the image or of the modules initrd.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Globs and `re:` regexes, with `default` and `host` already expanded.
    pub modules_include: Vec<String>,
    /// Legacy `re:` regexes.
    pub modules_exclude: Vec<String>,
    /// Globs and `re:` regexes.
    pub firmware_include: Vec<String>,
    /// Legacy `re:` regexes.
    pub firmware_exclude: Vec<String>,
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.modules_include.is_empty()
            && self.modules_exclude.is_empty()
            && self.firmware_include.is_empty()
            && self.firmware_exclude.is_empty()
    }
}

/// The directories between `path` and the directory `below` (both excluded), innermost first.
fn parents_below(path: &Path, below: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut p = path.parent();
    while let Some(dir) = p {
        if dir == below || dir.as_os_str().is_empty() {
            break;
        }
        out.push(dir.to_path_buf());
        p = dir.parent();
    }
    out
}

/// Add `fw` and every symlink on the way to the file it resolves to (all relative to `root`).
/// Symlinks into `/etc/alternatives` are replaced by relative links to their final target.
fn add_firmware_with_links(root: &Path, fw: &Path, out: &mut BTreeSet<PathBuf>) -> Result<()> {
    let mut todo: Vec<PathBuf> = fw.components().rev().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut current = PathBuf::new();
    let mut budget = 64u32;
    while let Some(part) = todo.pop() {
        match part.components().next() {
            Some(Component::RootDir) => {
                current = PathBuf::new();
                continue;
            }
            Some(Component::ParentDir) => {
                current.pop();
                continue;
            }
            Some(Component::CurDir) | None => continue,
            _ => {}
        }
        current.push(&part);
        let full = root.join(&current);
        let Ok(mut target) = std::fs::read_link(&full) else { continue };
        if budget == 0 {
            return Err(BuildError::msg(format!("Too many levels of symbolic links resolving /{}", fw.display())));
        }
        budget -= 1;
        if target.starts_with("/etc/alternatives") {
            let resolved = mkosi_sandbox::ops::chase(root, &current, false);
            let parent = full.parent().unwrap_or(root);
            let rel = relative_path(&resolved, parent);
            std::fs::remove_file(&full).map_err(io("removing", &full))?;
            std::os::unix::fs::symlink(&rel, &full).map_err(io("creating", &full))?;
            target = rel;
        }
        out.insert(current.clone());
        todo.extend(target.components().rev().map(|c| PathBuf::from(c.as_os_str())));
        current.pop();
    }
    if root.join(&current).exists() {
        out.insert(current);
    }
    Ok(())
}

/// `path` relative to the directory `base` (both absolute).
fn relative_path(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<Component> = path.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Every path (relative to `root`) that must exist for the modules of kernel `kver` that
/// `selection` asks for: the modules and their dependencies, their firmware (with the
/// symlinks leading to it), `FirmwareFiles=`, the parent directories below `usr/lib`, the
/// `modules.*` files and `vdso/`. Sorted component by component.
pub fn required_kernel_modules(root: &Path, kver: &str, selection: &Selection) -> Result<BTreeSet<PathBuf>> {
    let modulesd = modules_dir(kver);
    let firmware_present = std::fs::read_dir(root.join(FIRMWARE_DIR)).is_ok_and(|mut rd| rd.next().is_some());

    // Without filters and without firmware every module is needed and no dependency has to
    // be looked at.
    let (modules, firmware) =
        if !selection.modules_include.is_empty() || !selection.modules_exclude.is_empty() || firmware_present {
            let names = filter_kernel_modules(root, kver, &selection.modules_include, &selection.modules_exclude)?;
            resolve_module_dependencies(root, kver, &names)?
        } else {
            log::debug("No modules excluded and no firmware installed, using kernel modules generation fast path");
            (all_modules(root, kver)?.into_iter().collect(), BTreeSet::new())
        };

    let firmware = filter_firmware(root, firmware, &selection.firmware_include, &selection.firmware_exclude)?;
    let mut resolved_firmware = BTreeSet::new();
    for fw in &firmware {
        add_firmware_with_links(root, fw, &mut resolved_firmware)?;
    }

    let usr_lib = Path::new("usr/lib");
    let mut out: BTreeSet<PathBuf> = BTreeSet::new();
    for f in modules.iter().chain(&resolved_firmware) {
        let below = if f.starts_with(usr_lib) { usr_lib } else { Path::new("") };
        out.extend(parents_below(f, below));
    }
    out.extend(modules.iter().cloned());
    out.extend(resolved_firmware);
    if let Ok(rd) = std::fs::read_dir(root.join(&modulesd)) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("modules") {
                out.insert(modulesd.join(e.file_name()));
            }
        }
    }

    let vdso = modulesd.join("vdso");
    if root.join(&vdso).exists() {
        if modules.is_empty() {
            out.extend(parents_below(&vdso, usr_lib));
        }
        out.insert(vdso.clone());
        let rd = std::fs::read_dir(root.join(&vdso)).map_err(io("reading", root.join(&vdso)))?;
        for e in rd.flatten() {
            out.insert(vdso.join(e.file_name()));
        }
    }
    Ok(out)
}

fn remove_if_present(p: &Path) -> Result<()> {
    let md = match std::fs::symlink_metadata(p) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspecting", p)(e)),
    };
    let res = if md.is_dir() { std::fs::remove_dir(p) } else { std::fs::remove_file(p) };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // Directories that still hold something kept (microcode) stay.
        Err(e) if md.is_dir() && e.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(e) => Err(io("removing", p)(e)),
    }
}

/// Delete the modules of kernel `kver` and the firmware that `selection` does not need from
/// the image at `root`. Microcode (`amd-ucode/`, `intel-ucode/`) is always kept. Returns
/// whether anything was deleted; does nothing without any filter setting.
pub fn process_kernel_modules(root: &Path, kver: &str, selection: &Selection) -> Result<bool> {
    if selection.is_empty() {
        return Ok(false);
    }
    let required = required_kernel_modules(root, kver, selection)?;
    log::step("Applying kernel module filters");
    let mut removed = false;

    let mut modules = all_modules(root, kver)?;
    modules.reverse();
    for m in modules.iter().filter(|m| !required.contains(*m)) {
        let p = root.join(m);
        if p.is_symlink() {
            let target = mkosi_sandbox::ops::chase(root, m, false);
            if target.is_file() {
                std::fs::remove_file(&target).map_err(io("removing", &target))?;
            }
        }
        remove_if_present(&p)?;
        removed = true;
    }

    let firmwared = Path::new(FIRMWARE_DIR);
    let mut firmware = Vec::new();
    walk(root, firmwared, &mut firmware)?;
    firmware.sort();
    firmware.reverse();
    for fw in firmware.iter().filter(|f| !required.contains(*f)) {
        if MICROCODE_DIRS.iter().any(|d| fw.starts_with(firmwared.join(d))) {
            continue;
        }
        let p = root.join(fw);
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        remove_if_present(&p)?;
        removed = true;
        if !md.is_dir() {
            if let Some(parent) = p.parent().filter(|d| *d != root.join(firmwared)) {
                if std::fs::read_dir(parent).is_ok_and(|mut rd| rd.next().is_none()) {
                    remove_if_present(parent)?;
                }
            }
        }
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// `default` and `host`
// ---------------------------------------------------------------------------------------------

/// The names of the modules loaded on the host, from the text of `/proc/modules`.
pub fn parse_loaded_modules(proc_modules: &str) -> Vec<String> {
    proc_modules.lines().filter_map(|l| l.split_whitespace().next()).map(normalize_module_name).collect()
}

/// The modules loaded on the host (`/proc/modules`).
pub fn loaded_modules() -> Result<Vec<String>> {
    let path = Path::new("/proc/modules");
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_loaded_modules(&text)),
        // A kernel without loadable module support has no /proc/modules: nothing is loaded.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::warn(
                "/proc/modules does not exist (the running kernel has no loadable modules); 'host' selects no modules",
            );
            Ok(Vec::new())
        }
        Err(e) => Err(io("reading", path)(e)),
    }
}

/// The `KernelModules=` list of the built-in mkosi-initrd configuration for `arch` (what
/// `default` stands for), parsed with the configuration parser in the scratch directory `dir`.
pub fn default_kernel_modules(host: &Host, arch: Architecture, dir: &Path) -> Result<Vec<String>> {
    let confd = dir.join("mkosi.conf.d");
    std::fs::create_dir_all(&confd).map_err(io("creating", &confd))?;
    for (name, text) in DEFAULT_MODULE_CONFIGS {
        let p = confd.join(name);
        std::fs::write(&p, text).map_err(io("writing", &p))?;
    }
    let setting = |field: &str| {
        mkosi_config::settings::by_field(field).ok_or_else(|| BuildError::msg(format!("unknown setting {field}")))
    };
    let mut cfg = mkosi_config::context::Context::new(host, dir.to_path_buf(), dir.to_path_buf());
    cfg.set_cli(setting("Architecture")?, Some(arch.as_str()), dir)?;
    cfg.parse_config_one(dir, false, false)?;
    let value = cfg.finalize_value(setting("KernelModules")?)?;
    Ok(value
        .as_ref()
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default())
}

/// Expand `default` and `host` in `include` (and prepend the host's modules with
/// `include_host`), dropping duplicates but keeping the order.
pub fn finalize_kernel_modules_include(
    include: &[String],
    include_host: bool,
    default: &mut dyn FnMut() -> Result<Vec<String>>,
    host: &mut dyn FnMut() -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut host_done = false;
    if include_host {
        out.extend(host()?);
        host_done = true;
    }
    for p in include {
        match p.as_str() {
            "default" => out.extend(default()?),
            "host" if !host_done => {
                out.extend(host()?);
                host_done = true;
            }
            "host" => {}
            _ => out.push(p.clone()),
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

fn context_include(ctx: &Context, field: &str, host_field: &str) -> Result<Vec<String>> {
    let include = ctx.config.strings(field);
    let arch = ctx.config.architecture();
    finalize_kernel_modules_include(
        &include,
        ctx.config.bool(host_field),
        &mut || default_kernel_modules(ctx.host, arch, &ctx.scratch("mkosi-initrd-modules")?),
        &mut loaded_modules,
    )
}

/// The image's selection: `KernelModules=` (with `KernelModulesIncludeHost=`),
/// `KernelModulesExclude=`, `FirmwareFiles=`, `FirmwareExclude=`.
pub fn image_selection(ctx: &Context) -> Result<Selection> {
    Ok(Selection {
        modules_include: context_include(ctx, "KernelModules", "KernelModulesIncludeHost")?,
        modules_exclude: ctx.config.strings("KernelModulesExclude"),
        firmware_include: ctx.config.strings("FirmwareFiles"),
        firmware_exclude: ctx.config.strings("FirmwareExclude"),
    })
}

/// The modules initrd's selection: `KernelInitrdModules=` (with
/// `KernelModulesInitrdIncludeHost=`), `KernelModulesInitrdExclude=`, `FirmwareFiles=`,
/// `FirmwareExclude=`.
pub fn initrd_selection(ctx: &Context) -> Result<Selection> {
    Ok(Selection {
        modules_include: context_include(ctx, "KernelInitrdModules", "KernelModulesInitrdIncludeHost")?,
        modules_exclude: ctx.config.strings("KernelModulesInitrdExclude"),
        firmware_include: ctx.config.strings("FirmwareFiles"),
        firmware_exclude: ctx.config.strings("FirmwareExclude"),
    })
}

/// Apply the image's module and firmware filters to kernel `kver` of the image. Returns
/// whether anything was deleted (then depmod has to run again).
pub fn filter_image_modules(ctx: &Context, kver: &str) -> Result<bool> {
    let c = ctx.config;
    let any = !c.list("KernelModules").is_empty()
        || c.bool("KernelModulesIncludeHost")
        || !c.list("KernelModulesExclude").is_empty()
        || !c.list("FirmwareFiles").is_empty()
        || !c.list("FirmwareExclude").is_empty();
    if !any {
        return Ok(false);
    }
    let selection = image_selection(ctx)?;
    process_kernel_modules(&ctx.root(), kver, &selection)
}

// ---------------------------------------------------------------------------------------------
// Initrds
// ---------------------------------------------------------------------------------------------

fn cpio_options(ctx: &Context) -> CpioOptions {
    // SAFETY: getuid has no preconditions.
    let owner_root = unsafe { libc::getuid() } != 0;
    CpioOptions { owner_root, mtime_clamp: ctx.config.int("SourceDateEpoch").map(|e| e.max(0) as u64) }
}

/// How the modules initrd is compressed: zstd for apt distributions (whose older releases
/// ship uncompressed modules), except Debian `sid`/`testing`; none everywhere else.
pub fn kernel_modules_initrd_compression(distribution: Distribution, release: &str) -> Algorithm {
    if !distribution.is_apt_distribution() {
        return Algorithm::None;
    }
    if distribution == Distribution::Debian && matches!(release, "sid" | "testing") {
        Algorithm::None
    } else {
        Algorithm::Zstd
    }
}

/// Write `paths` (relative to `root`) as a cpio archive to `output`, compressed with
/// `algorithm`.
fn write_cpio(
    root: &Path,
    paths: &[PathBuf],
    output: &Path,
    opts: CpioOptions,
    algorithm: Algorithm,
    level: i32,
) -> Result<()> {
    let f = std::fs::File::create(output).map_err(io("creating", output))?;
    let mut c = Compressor::new(std::io::BufWriter::new(f), algorithm, level).map_err(io("compressing", output))?;
    cpio::write_archive(root, paths, &mut c, opts).map_err(|e| BuildError::msg(e.to_string()))?;
    let mut w = c.finish().map_err(io("writing", output))?;
    std::io::Write::flush(&mut w).map_err(io("writing", output))?;
    Ok(())
}

/// Build the kernel modules initrd of kernel `kver` into `output`: the modules selected by
/// `KernelInitrdModules=` (all when empty) with their dependencies and firmware, the
/// `modules.*` files, the parent directories below `usr/lib` and `vdso/`.
pub fn build_kernel_modules_initrd(ctx: &Context, kver: &str, output: &Path) -> Result<()> {
    log::step("Building kernel modules initrd");
    let root = ctx.root();
    let selection = initrd_selection(ctx)?;
    let files: Vec<PathBuf> = required_kernel_modules(&root, kver, &selection)?.into_iter().collect();
    let algorithm = kernel_modules_initrd_compression(ctx.config.distribution(), ctx.config.release());
    let level = ctx.config.int("CompressLevel").unwrap_or(3) as i32;
    write_cpio(&root, &files, output, cpio_options(ctx), algorithm, level)
}

/// The microcode file for the CPU described by `cpuinfo` (the text of `/proc/cpuinfo`):
/// `(<vendor>.bin, file in the image)`; either is None when unknown.
pub fn identify_cpu(root: &Path, cpuinfo: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    let mut found = None;
    for block in cpuinfo.split("\n\n") {
        let (mut vendor, mut family, mut model, mut stepping) = (None, None, None, None);
        for line in block.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || value.is_empty() {
                continue;
            }
            match key {
                "vendor_id" => vendor = Some(value.to_string()),
                "cpu family" => family = value.parse::<u32>().ok(),
                "model" => model = value.parse::<u32>().ok(),
                "stepping" => stepping = value.parse::<u32>().ok(),
                _ => {}
            }
            if let (Some(v), Some(f), Some(m), Some(s)) = (&vendor, family, model, stepping) {
                found = Some((v.clone(), f, m, s));
                break;
            }
        }
        if found.is_some() {
            break;
        }
    }
    let Some((vendor, family, model, stepping)) = found else { return (None, None) };
    let vendor_file = PathBuf::from(format!("{vendor}.bin"));
    let candidates: Vec<PathBuf> = match vendor.as_str() {
        "AuthenticAMD" => {
            let dir = root.join(FIRMWARE_DIR).join("amd-ucode");
            if family > 21 {
                vec![dir.join(format!("microcode_amd_fam{family:x}h.bin"))]
            } else {
                vec![dir.join("microcode_amd.bin")]
            }
        }
        "GenuineIntel" => {
            let dir = root.join(FIRMWARE_DIR).join("intel-ucode");
            let base = format!("{family:02x}-{model:02x}-{stepping:02x}");
            vec![dir.join(&base), dir.join(format!("{base}.initramfs"))]
        }
        _ => vec![],
    };
    (Some(vendor_file), candidates.into_iter().find(|p| p.exists()))
}

/// Concatenate the regular files of `dir` (sorted by name) into `dst`.
fn concatenate(dir: &Path, dst: &Path) -> Result<()> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("reading", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut out = std::fs::File::create(dst).map_err(io("creating", dst))?;
    for p in names {
        let mut f = std::fs::File::open(&p).map_err(io("opening", &p))?;
        std::io::copy(&mut f, &mut out).map_err(io("copying", &p))?;
    }
    Ok(())
}

/// Build the x86 early microcode initrd into `output`: an uncompressed cpio with
/// `kernel/x86/microcode/AuthenticAMD.bin` and `GenuineIntel.bin` (all blobs of
/// `usr/lib/firmware/amd-ucode` and `intel-ucode` concatenated, in name order), or with
/// `MicrocodeHost=yes` only the host CPU's blob. Returns false (and writes nothing) when there
/// is nothing to build: not x86, no microcode in the image, or the host CPU is unknown.
pub fn build_microcode_initrd(ctx: &Context, output: &Path) -> Result<bool> {
    if !ctx.config.architecture().is_x86_variant() {
        return Ok(false);
    }
    let root = ctx.root();
    let amd = root.join(FIRMWARE_DIR).join("amd-ucode");
    let intel = root.join(FIRMWARE_DIR).join("intel-ucode");
    if !amd.exists() && !intel.exists() {
        log::warn("/usr/lib/firmware/{amd-ucode,intel-ucode} not found, not adding microcode");
        return Ok(false);
    }
    log::step("Building microcode initrd");
    let staging = ctx.scratch("microcode-root")?;
    let destdir = staging.join("kernel/x86/microcode");
    for d in [staging.join("kernel"), staging.join("kernel/x86"), destdir.clone()] {
        std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod", &d))?;
    }
    if ctx.config.bool("MicrocodeHost") {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").map_err(io("reading", "/proc/cpuinfo"))?;
        let (Some(vendor_file), Some(ucode)) = identify_cpu(&root, &cpuinfo) else {
            log::warn("Unable to identify CPU for MicrocodeHost=");
            return Ok(false);
        };
        let dst = destdir.join(vendor_file);
        std::fs::copy(&ucode, &dst).map_err(io("copying", &ucode))?;
    } else {
        if amd.exists() {
            concatenate(&amd, &destdir.join("AuthenticAMD.bin"))?;
        }
        if intel.exists() {
            concatenate(&intel, &destdir.join("GenuineIntel.bin"))?;
        }
    }
    let paths = cpio::sorted_tree(&staging).map_err(|e| BuildError::msg(e.to_string()))?;
    write_cpio(&staging, &paths, output, cpio_options(ctx), Algorithm::None, 0)?;
    Ok(true)
}

/// The microcode initrds to put before all other initrds: the files in
/// `$ARTIFACTDIR/io.mkosi.microcode/` when there are any, else the one
/// [`build_microcode_initrd`] builds (once per workspace), else none.
pub fn microcode_initrds(ctx: &Context) -> Result<Vec<PathBuf>> {
    let dir = ctx.artifacts().join("io.mkosi.microcode");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        if !files.is_empty() {
            files.sort();
            return Ok(files);
        }
    }
    let output = ctx.workspace.join("microcode.initrd");
    if output.exists() {
        return Ok(vec![output]);
    }
    Ok(if build_microcode_initrd(ctx, &output)? { vec![output] } else { vec![] })
}

#[cfg(test)]
#[path = "kmod_tests.rs"]
mod tests;
