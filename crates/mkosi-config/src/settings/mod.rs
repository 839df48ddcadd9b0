//! The settings table: one declaration per setting.
//!
//! Each [`Setting`] says where the setting lives (section, INI name, old
//! names), how it is spelled on the command line, how its value is parsed
//! and matched, its default, and how it propagates between images. The
//! parser, the CLI, `summary`, JSON, completion and the documentation are all
//! driven by this table, so adding a setting means adding one entry to
//! [`table::SETTINGS`].

mod table;

use std::collections::HashMap;
use std::sync::OnceLock;

pub use table::SETTINGS;

/// INI section a setting belongs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    Include,
    Config,
    Distribution,
    Output,
    Content,
    Validation,
    Build,
    Runtime,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Include => "Include",
            Section::Config => "Config",
            Section::Distribution => "Distribution",
            Section::Output => "Output",
            Section::Content => "Content",
            Section::Validation => "Validation",
            Section::Build => "Build",
            Section::Runtime => "Runtime",
        }
    }

    pub const ALL: &'static [Section] = &[
        Section::Include,
        Section::Config,
        Section::Distribution,
        Section::Output,
        Section::Content,
        Section::Validation,
        Section::Build,
        Section::Runtime,
    ];

    /// Section by name; `Host` is the old name of `Runtime`.
    pub fn from_name(name: &str) -> Option<Section> {
        Some(match name {
            "Include" => Section::Include,
            "Config" => Section::Config,
            "Distribution" => Section::Distribution,
            "Output" => Section::Output,
            "Content" => Section::Content,
            "Validation" => Section::Validation,
            "Build" => Section::Build,
            "Runtime" | "Host" => Section::Runtime,
            _ => return None,
        })
    }
}

/// How a setting propagates between the main image, subimages, the default
/// initrd and the default tools tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Not passed anywhere, configurable everywhere.
    Local,
    /// Forced from the main image onto subimages; configurable in the main image and tools tree.
    Universal,
    /// Forced onto subimages, the default initrd and the tools tree; main image only.
    Multiversal,
    /// Passed down to subimages, which may override it.
    Inherit,
    /// Main image only, not passed down.
    Main,
    /// Main image only, becomes the tools tree's setting without the `ToolsTree` prefix.
    Tools,
    /// Main image only, becomes the default initrd's setting without the `Initrd` prefix.
    Initrd,
    /// Like `Inherit`, but only inherited by the default initrd.
    InitrdInherit,
}

impl Scope {
    /// Settings that may only be configured in the main image.
    pub fn is_main_setting(self) -> bool {
        matches!(self, Scope::Main | Scope::Tools | Scope::Initrd | Scope::Multiversal)
    }
}

/// Options of a path value.
#[derive(Debug, Clone, Copy)]
pub struct PathOpts {
    /// The path must exist when parsed.
    pub required: bool,
    /// Resolve to an absolute path with symlinks resolved.
    pub resolve: bool,
    /// Must not be accessible by "other" (keys, passwords).
    pub secret: bool,
    /// Must be given as an absolute path.
    pub absolute: bool,
    /// Must be a directory (only checked when `required`).
    pub directory: bool,
    /// Must not be below `/usr`.
    pub exclude_usr: bool,
    /// Literal values accepted as-is instead of paths.
    pub constants: &'static [&'static str],
}

impl std::default::Default for PathOpts {
    fn default() -> PathOpts {
        PathOpts::new()
    }
}

impl PathOpts {
    pub const fn new() -> PathOpts {
        PathOpts {
            required: true,
            resolve: true,
            secret: false,
            absolute: false,
            directory: false,
            exclude_usr: false,
            constants: &[],
        }
    }
    pub const fn optional(mut self) -> PathOpts {
        self.required = false;
        self
    }
    pub const fn secret(mut self) -> PathOpts {
        self.secret = true;
        self
    }
    pub const fn absolute(mut self) -> PathOpts {
        self.absolute = true;
        self
    }
    pub const fn constants(mut self, c: &'static [&'static str]) -> PathOpts {
        self.constants = c;
        self
    }
    pub const fn exclude_usr(mut self) -> PathOpts {
        self.exclude_usr = true;
        self
    }
}

/// How list values are split into items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Commas and any whitespace.
    Default,
    /// Spaces and newlines only.
    Space,
    /// Shell-style words separated by spaces and newlines (quotes honoured).
    ShellSpace,
}

/// Parser of one list item.
#[derive(Debug, Clone, Copy)]
pub enum Item {
    Str,
    Path(PathOpts),
    /// `SRC[:TARGET]`.
    Tree {
        required: bool,
        absolute: bool,
        directory: bool,
    },
    /// A bare name (profiles).
    Profile,
    Enum(&'static str, &'static [&'static str]),
    /// Legacy kernel module regexes, stored with a `re:` prefix.
    KmodRegex,
    Drive,
    UkiProfile,
}

#[derive(Debug, Clone, Copy)]
pub struct ListOpts {
    pub split: Split,
    pub item: Item,
    /// Keep sorted like package lists (names, then paths, then conditionals).
    pub sort_packages: bool,
    /// An assignment without items resets the list.
    pub reset: bool,
    /// Expand globs (relative to the parse directory) in each item.
    pub globs: bool,
}

/// Parser of dictionary items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictItem {
    /// `KEY=VALUE`, or `KEY` to copy the host's value.
    Environment,
    /// `KEY=VALUE`.
    KeyValue,
    /// `KEY=VALUE` items on separate lines (no shell quoting; `[UKIProfile]` `Profile=`).
    KeyValueLines,
}

/// How a setting's value is parsed from text.
#[derive(Debug, Clone, Copy)]
pub enum Parser {
    Bool,
    Feature,
    Str,
    /// A file name without `/`; the string is a hint shown on error.
    Filename(&'static str),
    Enum(&'static str, &'static [&'static str]),
    /// An enum that also accepts booleans, mapping yes/no to the given values.
    EnumBool {
        name: &'static str,
        values: &'static [&'static str],
        yes: &'static str,
        no: &'static str,
    },
    Compression,
    Path(PathOpts),
    /// A key: a path when it exists (then checked like a secret), else kept verbatim (engine/provider URIs).
    Key,
    /// A certificate: a path when it exists, else kept verbatim.
    Certificate,
    KeySource,
    CertificateSource,
    Uuid,
    SourceDateEpoch,
    CompressLevel,
    Mode,
    Bytes,
    Number,
    SectorSize,
    VsockCid,
    MinimumVersion,
    RootPassword,
    List(ListOpts),
    Dict(DictItem),
    Credentials,
    SplitArtifacts,
}

/// How a `[Match]` condition on a setting compares.
#[derive(Debug, Clone, Copy)]
pub enum Matcher {
    /// Membership of a list (empty condition = empty list); `true` validates profile names.
    ListContains {
        profile: bool,
    },
    Str,
    Glob,
    Enum(&'static str, &'static [&'static str]),
    Architecture,
    Feature,
    Version,
    BuildSources,
    KeyValue,
}

/// Computed defaults (see `defaults.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factory {
    NativeArchitecture,
    Seed,
    Distribution,
    Release,
    Output,
    OutputExtension,
    CompressOutput,
    RepositoryKeyFetch,
    SourceDateEpoch,
    ProxyUrl,
    ProxyExclude,
    ProxyPeerCertificate,
    ProxyClientKey,
    Initrds,
    Checksum,
    BuildSources,
    Machine,
    ToolsTreeDistribution,
    ToolsTreeRelease,
    ToolsTreeMirror,
}

/// A setting's default value.
#[derive(Debug, Clone, Copy)]
pub enum Default {
    /// Whatever the parser returns for "no value" (false, `auto`, `[]`, unset…).
    Natural,
    /// A constant, written as JSON.
    Static(&'static str),
    /// Computed from other settings (which are finalized first).
    Factory(Factory, &'static [&'static str]),
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Name in configuration files and JSON (`Distribution`).
    pub name: &'static str,
    /// Name of the value this setting stores (the JSON key). Differs from
    /// `name` only for legacy settings sharing storage with a newer one.
    pub field: &'static str,
    pub section: Section,
    pub parser: Parser,
    pub matcher: Option<Matcher>,
    pub default: Default,
    pub scope: Scope,
    pub short: Option<char>,
    /// Long option without the leading dashes.
    pub long: &'static str,
    pub compat_names: &'static [&'static str],
    pub compat_longs: &'static [&'static str],
    /// `mkosi.<suffix>` files or directories picked up as this setting.
    pub paths: &'static [&'static str],
    /// `mkosi.<dir>/<glob>` entries picked up one by one, sorted.
    pub recursive_paths: &'static [&'static str],
    /// Default path files hold the value (executables print it).
    pub read_text: bool,
    /// Default path files must not be accessible by others.
    pub secret: bool,
    pub specifier: Option<char>,
    /// May be set in the default tools tree's configuration.
    pub tools: bool,
    /// An explicit empty assignment leaves the value empty/unset instead of
    /// falling back to the default (lists, dictionaries, optional values).
    pub nullable: bool,
    /// Value the argument-less short option stands for (`-a`, `-i`, `-T`).
    pub short_const: Option<&'static str>,
    pub metavar: Option<&'static str>,
    /// Values accepted on the command line (an empty string resets).
    pub choices: Option<&'static [&'static str]>,
    pub help: &'static str,
}

impl Setting {
    pub const fn new(name: &'static str, section: Section, parser: Parser, long: &'static str) -> Setting {
        Setting {
            name,
            field: name,
            section,
            parser,
            matcher: None,
            default: Default::Natural,
            scope: Scope::Local,
            short: None,
            long,
            compat_names: &[],
            compat_longs: &[],
            paths: &[],
            recursive_paths: &[],
            read_text: false,
            secret: false,
            specifier: None,
            tools: false,
            nullable: false,
            short_const: None,
            metavar: None,
            choices: None,
            help: "",
        }
    }
    pub const fn field(mut self, f: &'static str) -> Setting {
        self.field = f;
        self
    }
    pub const fn matcher(mut self, m: Matcher) -> Setting {
        self.matcher = Some(m);
        self
    }
    pub const fn default_json(mut self, json: &'static str) -> Setting {
        self.default = Default::Static(json);
        self
    }
    pub const fn factory(mut self, f: Factory, deps: &'static [&'static str]) -> Setting {
        self.default = Default::Factory(f, deps);
        self
    }
    pub const fn scope(mut self, s: Scope) -> Setting {
        self.scope = s;
        self
    }
    pub const fn short(mut self, c: char) -> Setting {
        self.short = Some(c);
        self
    }
    pub const fn short_const(mut self, c: char, value: &'static str) -> Setting {
        self.short = Some(c);
        self.short_const = Some(value);
        self
    }
    pub const fn compat(mut self, names: &'static [&'static str]) -> Setting {
        self.compat_names = names;
        self
    }
    pub const fn compat_longs(mut self, longs: &'static [&'static str]) -> Setting {
        self.compat_longs = longs;
        self
    }
    pub const fn paths(mut self, p: &'static [&'static str]) -> Setting {
        self.paths = p;
        self
    }
    pub const fn recursive_paths(mut self, p: &'static [&'static str]) -> Setting {
        self.recursive_paths = p;
        self
    }
    pub const fn read_text(mut self) -> Setting {
        self.read_text = true;
        self
    }
    pub const fn secret(mut self) -> Setting {
        self.secret = true;
        self
    }
    pub const fn specifier(mut self, c: char) -> Setting {
        self.specifier = Some(c);
        self
    }
    pub const fn tools(mut self) -> Setting {
        self.tools = true;
        self
    }
    pub const fn nullable(mut self) -> Setting {
        self.nullable = true;
        self
    }
    pub const fn metavar(mut self, m: &'static str) -> Setting {
        self.metavar = Some(m);
        self
    }
    pub const fn choices(mut self, c: &'static [&'static str]) -> Setting {
        self.choices = Some(c);
        self
    }
    pub const fn help(mut self, h: &'static str) -> Setting {
        self.help = h;
        self
    }

    /// Storage key of this setting's value in the given kind of image:
    /// `ToolsTree*` settings become the tools tree's own settings and
    /// `Initrd*` settings the default initrd's.
    pub fn scoped_field(&self) -> &'static str {
        match self.scope {
            Scope::Tools => self.field.strip_prefix("ToolsTree").unwrap_or(self.field),
            Scope::Initrd => self.field.strip_prefix("Initrd").unwrap_or(self.field),
            _ => self.field,
        }
    }

    /// Whether the stored value is a list.
    pub fn is_list(&self) -> bool {
        matches!(self.parser, Parser::List(_) | Parser::Credentials | Parser::SplitArtifacts)
    }
}

struct Lookup {
    by_name: HashMap<&'static str, &'static Setting>,
    by_field: HashMap<&'static str, &'static Setting>,
    by_option: HashMap<String, &'static Setting>,
    by_specifier: HashMap<char, &'static Setting>,
    fields: Vec<&'static str>,
}

fn lookup() -> &'static Lookup {
    static LOOKUP: OnceLock<Lookup> = OnceLock::new();
    LOOKUP.get_or_init(|| {
        let mut l = Lookup {
            by_name: HashMap::new(),
            by_field: HashMap::new(),
            by_option: HashMap::new(),
            by_specifier: HashMap::new(),
            fields: Vec::new(),
        };
        for s in SETTINGS {
            l.by_name.insert(s.name, s);
            for c in s.compat_names {
                l.by_name.insert(c, s);
            }
            // The last setting declared for a field is its canonical one.
            if l.by_field.insert(s.field, s).is_none() {
                l.fields.push(s.field);
            }
            l.by_option.insert(s.long.to_string(), s);
            for c in s.compat_longs {
                l.by_option.insert(c.to_string(), s);
            }
            if let Some(c) = s.specifier {
                l.by_specifier.insert(c, s);
            }
        }
        l
    })
}

/// Setting by INI name (including old names).
pub fn by_name(name: &str) -> Option<&'static Setting> {
    lookup().by_name.get(name).copied()
}

/// The canonical setting storing `field`.
pub fn by_field(field: &str) -> Option<&'static Setting> {
    lookup().by_field.get(field).copied()
}

/// Setting by long option name without dashes.
pub fn by_option(long: &str) -> Option<&'static Setting> {
    lookup().by_option.get(long).copied()
}

pub fn by_specifier(c: char) -> Option<&'static Setting> {
    lookup().by_specifier.get(&c).copied()
}

/// Every stored field, in table order.
pub fn fields() -> &'static [&'static str] {
    &lookup().fields
}

/// Names usable as match keys that are not settings.
pub const MATCH_ONLY_KEYS: &[&str] = &["PathExists", "SystemdVersion", "HostArchitecture", "Image"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert_eq!(SETTINGS.len(), 188);
        let mut names = std::collections::HashSet::new();
        let mut longs = std::collections::HashSet::new();
        let mut shorts = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(names.insert(s.name), "duplicate name {}", s.name);
            for c in s.compat_names {
                assert!(names.insert(c), "duplicate name {c}");
            }
            assert!(longs.insert(s.long), "duplicate option {}", s.long);
            for c in s.compat_longs {
                assert!(longs.insert(c), "duplicate option {c}");
            }
            if let Some(c) = s.short {
                assert!(shorts.insert(c), "duplicate short option {c}");
            }
            assert!(!s.help.is_empty(), "{} has no help", s.name);
            if let Default::Static(json) = s.default {
                serde_json::from_str::<serde_json::Value>(json).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            }
            if let Default::Factory(_, deps) = s.default {
                for d in deps {
                    assert!(by_field(d).is_some(), "{}: unknown dependency {d}", s.name);
                }
            }
        }
    }

    #[test]
    fn shared_storage_uses_newest_name() {
        assert_eq!(by_name("KernelModulesInclude").unwrap().field, "KernelModules");
        assert_eq!(by_field("KernelModules").unwrap().name, "KernelModules");
        assert_eq!(by_field("KernelInitrdModules").unwrap().name, "KernelInitrdModules");
        assert_eq!(by_field("FirmwareFiles").unwrap().name, "FirmwareFiles");
        assert_eq!(by_name("QemuMem").unwrap().name, "RAM");
        assert_eq!(by_option("qemu-mem").unwrap().name, "RAM");
    }
}
