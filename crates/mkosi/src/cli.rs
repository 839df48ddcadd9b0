//! The command line: upstream's options and verbs, with one option per
//! setting generated from the settings table.
//!
//! Parsing follows Python's argparse as upstream uses it (see `parse_argv`),
//! usage errors are reported like argparse does (usage, `mkosi: error: …`,
//! exit status 2), and the help text is laid out like argparse's. The clap
//! [`command()`] describes the same options for shell completions and
//! renders that help text. `tests/data/cli/` holds upstream's recorded
//! behaviour, checked by the unit tests below and `tests/cli_compat.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgAction, Command};
use mkosi_config::enums::DocFormat;
use mkosi_config::parse::log;
use mkosi_config::settings::{Section, Setting, SETTINGS};
use mkosi_config::{Args, CliAssignment, Host, Verb};

/// The parsed command line.
pub struct Cli {
    pub args: Args,
    pub assignments: Vec<CliAssignment>,
    /// Directory mkosi runs in after `-C` (the original one with `-C ""`).
    pub cwd: PathBuf,
}

const USAGE: &str = "mkosi [options…] init
       mkosi [options…] summary
       mkosi [options…] cat-config
       mkosi [options…] build         [-- command line…]
       mkosi [options…] shell         [-- command line…]
       mkosi [options…] boot          [-- nspawn settings…]
       mkosi [options…] vm            [-- vmm parameters…]
       mkosi [options…] ssh           [-- command line…]
       mkosi [options…] journalctl    [-- command line…]
       mkosi [options…] coredumpctl   [-- command line…]
       mkosi [options…] sysupdate     [-- command line…]
       mkosi [options…] box           [-- command line…]
       mkosi [options…] dependencies  [-- options…]
       mkosi [options…] clean
       mkosi [options…] serve
       mkosi [options…] burn          [device]
       mkosi [options…] bump
       mkosi [options…] genkey
       mkosi [options…] documentation [manual]
       mkosi [options…] completion    [shell]
       mkosi [options…] help
       mkosi -h | --help
       mkosi --version";

fn setting_id(name: &str) -> String {
    format!("setting:{name}")
}

fn compat_id(name: &str, long: &str) -> String {
    format!("setting:{name}:{long}")
}

fn const_id(name: &str) -> String {
    format!("const:{name}")
}

fn flag(id: &'static str, long: &'static str, help: &'static str) -> Arg {
    Arg::new(id).long(long).action(ArgAction::SetTrue).help(help)
}

/// The clap command: used for shell completions; its help is [`help_text`].
pub fn command() -> Command {
    let verbs: Vec<&'static str> = Verb::ALL.iter().map(|v| v.as_str()).collect();
    let mut cmd = Command::new("mkosi")
        .about("Build Bespoke OS Images")
        .override_usage(USAGE)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .allow_hyphen_values(false)
        .args_override_self(false)
        .dont_delimit_trailing_values(true)
        .max_term_width(100)
        .override_help({
            let (bold, reset) = if terminal_is_dumb() { ("", "") } else { ("\x1b[0;1;39m", "\x1b[0m") };
            help_text(terminal_columns(), bold, reset)
        })
        .arg(Arg::new("verb").value_parser(PossibleValuesParser::new(verbs)).hide(true).index(1))
        .arg(Arg::new("cmdline").num_args(0..).hide(true).index(2).trailing_var_arg(false))
        .arg(Arg::new("help").short('h').long("help").action(ArgAction::SetTrue).hide(true))
        .arg(Arg::new("version").long("version").action(ArgAction::SetTrue).hide(true))
        .arg(
            Arg::new("force")
                .short('f')
                .long("force")
                .action(ArgAction::Count)
                .help("Remove existing image file before operation"),
        )
        .arg(
            Arg::new("directory")
                .short('C')
                .long("directory")
                .value_name("PATH")
                .action(ArgAction::Append)
                .allow_hyphen_values(false)
                .help("Change to specified directory before doing anything"),
        )
        .arg(flag("debug", "debug", "Turn on debugging output"))
        .arg(flag("debug-shell", "debug-shell", "Spawn an interactive shell in the image if a chroot command fails"))
        .arg(flag(
            "debug-workspace",
            "debug-workspace",
            "When an error occurs, the workspace directory will not be deleted",
        ))
        .arg(flag("debug-sandbox", "debug-sandbox", "Run mkosi-sandbox with strace"))
        .arg(flag("debug-timing", "debug-timing", "Log the duration of each build step"))
        .arg(flag("no-pager", "no-pager", "Disable paging of long output"))
        .arg(
            Arg::new("genkey-valid-days")
                .long("genkey-valid-days")
                .value_name("DAYS")
                .help("Number of days keys should be valid when generating keys"),
        )
        .arg(
            Arg::new("genkey-common-name")
                .long("genkey-common-name")
                .value_name("CN")
                .help("Template for the CN when generating keys"),
        )
        .arg(
            Arg::new("auto-bump")
                .short('B')
                .long("auto-bump")
                .action(ArgAction::SetTrue)
                .help("Automatically bump image version after building"),
        )
        .arg(
            Arg::new("doc-format")
                .long("doc-format")
                .value_parser(PossibleValuesParser::new(DocFormat::VALUES))
                .help("The format to show documentation in"),
        )
        .arg(flag("json", "json", "Show summary as JSON"))
        .arg(
            Arg::new("wipe-build-dir")
                .short('w')
                .long("wipe-build-dir")
                .action(ArgAction::SetTrue)
                .help("Remove the build directory before building the image"),
        )
        .arg(
            Arg::new("rerun-build-scripts")
                .short('R')
                .long("rerun-build-scripts")
                .action(ArgAction::SetTrue)
                .help("Run build scripts even if the image is not rebuilt"),
        )
        .arg(Arg::new("nspawn-keep-unit").long("nspawn-keep-unit").action(ArgAction::Count).hide(true))
        .arg(Arg::new("ignored-default").long("default").action(ArgAction::Append).hide(true))
        .arg(Arg::new("ignored-cache").long("cache").action(ArgAction::Append).hide(true))
        .arg(Arg::new("ignored-runtime-scratch").long("runtime-scratch").action(ArgAction::Append).hide(true));

    let mut last_section: Option<Section> = None;
    for s in SETTINGS {
        if last_section != Some(s.section) {
            cmd = cmd.next_help_heading(format!("{} configuration options", s.section.as_str()));
            last_section = Some(s.section);
        }

        let configure = |mut arg: Arg, hidden: bool| -> Arg {
            arg = arg.action(ArgAction::Append).num_args(1).allow_hyphen_values(false);
            if let Some(m) = s.metavar {
                arg = arg.value_name(m);
            }
            if let Some(c) = s.choices {
                arg = arg.value_parser(PossibleValuesParser::new(c.iter().copied()));
            }
            if s.name == "Checksum" {
                arg = arg.num_args(0..=1).default_missing_value("yes");
            }
            if hidden {
                arg.hide(true)
            } else {
                arg.help(s.help)
            }
        };

        let mut main = Arg::new(setting_id(s.name)).long(s.long);
        if let (Some(c), None) = (s.short, s.short_const) {
            main = main.short(c);
        }
        cmd = cmd.arg(configure(main, false));
        for long in s.compat_longs {
            cmd = cmd.arg(configure(Arg::new(compat_id(s.name, long)).long(*long), true));
        }
        if let (Some(c), Some(_)) = (s.short, s.short_const) {
            cmd = cmd.arg(Arg::new(const_id(s.name)).short(c).action(ArgAction::Count).help(format!(
                "Same as --{}={}",
                s.long,
                s.short_const.unwrap_or_default()
            )));
        }
    }
    cmd
}

// ---------------------------------------------------------------------------
// Parsing. Upstream parses its command line with Python's argparse
// (`allow_abbrev=False`); clap differs from it in many corner cases (how
// positional arguments interleave with options, `--`, values that look like
// options, clustered short options, error messages and their exit status),
// so the parser below follows argparse's algorithm (`_parse_known_args` of
// Python 3.11) instead, with the same option table as `command()`.

/// How many arguments an option takes (argparse's `nargs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nargs {
    Zero,
    One,
    /// `nargs="?"` (only `--checksum`, whose value defaults to `yes`).
    Optional,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Version,
    Help,
    Force,
    Directory,
    Debug,
    DebugShell,
    DebugWorkspace,
    DebugSandbox,
    DebugTiming,
    NoPager,
    GenkeyValidDays,
    GenkeyCommonName,
    AutoBump,
    DocFormat,
    Json,
    WipeBuildDir,
    RerunBuildScripts,
    /// Legacy options that are accepted and ignored with a warning.
    Ignore,
    Setting(&'static Setting),
    /// An argument-less short option standing for a fixed value (`-a`).
    Const(&'static Setting),
}

struct Opt {
    /// Option strings with their dashes, in argparse's order (`-d`, `--distribution`).
    strings: Vec<String>,
    nargs: Nargs,
    kind: Kind,
}

impl Opt {
    /// argparse's name of the option in error messages (`-d/--distribution`).
    fn name(&self) -> String {
        self.strings.join("/")
    }
}

struct Table {
    opts: Vec<Opt>,
    lookup: HashMap<String, usize>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut opts = Vec::new();
        let mut add = |strings: &[&str], nargs: Nargs, kind: Kind| {
            opts.push(Opt { strings: strings.iter().map(|s| s.to_string()).collect(), nargs, kind });
        };
        add(&["--version"], Nargs::Zero, Kind::Version);
        add(&["-f", "--force"], Nargs::Zero, Kind::Force);
        add(&["-C", "--directory"], Nargs::One, Kind::Directory);
        add(&["--debug"], Nargs::Zero, Kind::Debug);
        add(&["--debug-shell"], Nargs::Zero, Kind::DebugShell);
        add(&["--debug-workspace"], Nargs::Zero, Kind::DebugWorkspace);
        add(&["--debug-sandbox"], Nargs::Zero, Kind::DebugSandbox);
        add(&["--debug-timing"], Nargs::Zero, Kind::DebugTiming);
        add(&["--no-pager"], Nargs::Zero, Kind::NoPager);
        add(&["--genkey-valid-days"], Nargs::One, Kind::GenkeyValidDays);
        add(&["--genkey-common-name"], Nargs::One, Kind::GenkeyCommonName);
        add(&["-B", "--auto-bump"], Nargs::Zero, Kind::AutoBump);
        add(&["--doc-format"], Nargs::One, Kind::DocFormat);
        add(&["--json"], Nargs::Zero, Kind::Json);
        add(&["-w", "--wipe-build-dir"], Nargs::Zero, Kind::WipeBuildDir);
        add(&["-R", "--rerun-build-scripts"], Nargs::Zero, Kind::RerunBuildScripts);
        add(&["--nspawn-keep-unit"], Nargs::Zero, Kind::Ignore);
        for legacy in ["--default", "--cache", "--runtime-scratch"] {
            add(&[legacy], Nargs::One, Kind::Ignore);
        }
        add(&["-h", "--help"], Nargs::Zero, Kind::Help);

        for s in SETTINGS {
            let short = s.short.map(|c| format!("-{c}"));
            if let (Some(short), Some(_)) = (&short, s.short_const) {
                add(&[short.as_str()], Nargs::Zero, Kind::Const(s));
            }
            let nargs = if s.name == "Checksum" { Nargs::Optional } else { Nargs::One };
            for (i, long) in std::iter::once(s.long).chain(s.compat_longs.iter().copied()).enumerate() {
                let long = format!("--{long}");
                match (&short, s.short_const) {
                    (Some(short), None) if i == 0 => add(&[short.as_str(), long.as_str()], nargs, Kind::Setting(s)),
                    _ => add(&[long.as_str()], nargs, Kind::Setting(s)),
                }
            }
        }

        let mut lookup = HashMap::new();
        for (i, o) in opts.iter().enumerate() {
            for s in &o.strings {
                lookup.insert(s.clone(), i);
            }
        }
        Table { opts, lookup }
    })
}

/// Why parsing stopped early.
enum Stop {
    /// A usage error: argparse prints the usage and the message and exits with 2.
    Usage(String),
    /// A `die()` while parsing (bad `-C`, bad setting value): exit status 1.
    Die(anyhow::Error),
    /// `-h`/`--help` was seen.
    Help,
    /// `--version` was seen.
    Version,
}

/// Python's `repr()` of a string.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::new();
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// argparse's `_negative_number_matcher`: `^-\d+$|^-\d*\.\d+$`.
fn looks_like_negative_number(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('-') else { return false };
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    if digits(rest) {
        return true;
    }
    match rest.split_once('.') {
        Some((a, b)) => (a.is_empty() || digits(a)) && digits(b),
        None => false,
    }
}

/// One command line argument classified like argparse's `_parse_optional`.
#[derive(Debug, Clone)]
enum Token {
    /// A positional argument (`A`).
    Positional,
    /// A literal `--` (`-`); everything after it is positional.
    DoubleDash,
    /// An option (`O`): the option (None if unknown), the option string
    /// and the argument attached to it (`--opt=value`, `-dvalue`).
    Option(Option<usize>, String, Option<String>),
}

fn classify(arg: &str, t: &Table) -> Token {
    if !arg.starts_with('-') {
        return Token::Positional;
    }
    if let Some(&i) = t.lookup.get(arg) {
        return Token::Option(Some(i), arg.to_string(), None);
    }
    if arg.chars().count() == 1 {
        return Token::Positional;
    }
    if let Some((opt, value)) = arg.split_once('=') {
        if let Some(&i) = t.lookup.get(opt) {
            return Token::Option(Some(i), opt.to_string(), Some(value.to_string()));
        }
    }
    // No abbreviations of long options (allow_abbrev=False), but a single
    // dash option may carry its argument: `-dfedora`.
    if !arg.starts_with("--") {
        let mut chars = arg.chars();
        let prefix: String = chars.by_ref().take(2).collect();
        if let Some(&i) = t.lookup.get(&prefix) {
            return Token::Option(Some(i), prefix, Some(chars.collect()));
        }
    }
    if looks_like_negative_number(arg) || arg.contains(' ') {
        return Token::Positional;
    }
    Token::Option(None, arg.to_string(), None)
}

struct State<'a> {
    args: Args,
    assignments: Vec<CliAssignment>,
    cwd: PathBuf,
    /// Setting values are parsed as they are seen, like upstream's
    /// `ConfigAction`, so that bad values fail in command line order.
    ctx: mkosi_config::context::Context<'a>,
    verb_seen: bool,
}

impl State<'_> {
    /// argparse's `take_action()` for an option.
    fn take(&mut self, opt: &Opt, mut values: Vec<String>, option_string: &str) -> Result<(), Stop> {
        // argparse drops the first `--` from an option's arguments (only
        // possible as an attached argument, `--opt=--`).
        if let Some(i) = values.iter().position(|v| v == "--") {
            values.remove(i);
        }
        let value = match opt.nargs {
            Nargs::Zero => None,
            Nargs::Optional if values.is_empty() => Some("yes".to_string()),
            // `--opt=--` leaves no value; argparse then stores an empty list,
            // which for settings means nothing happens.
            _ if values.is_empty() => {
                if matches!(opt.kind, Kind::Ignore) {
                    log::warn(&format!("{option_string} is no longer supported"));
                }
                return Ok(());
            }
            _ => values.pop(),
        };
        let value = value.unwrap_or_default();
        let a = &mut self.args;
        match opt.kind {
            Kind::Version => return Err(Stop::Version),
            Kind::Help => return Err(Stop::Help),
            Kind::Force => a.force += 1,
            Kind::Directory => {
                if value.is_empty() {
                    // `-C ""`: ignore the configuration in the current directory.
                    a.directory = None;
                } else {
                    self.cwd = chdir(&self.cwd, &value).map_err(Stop::Die)?;
                    a.directory = Some(self.cwd.clone());
                }
            }
            Kind::Debug => a.debug = true,
            Kind::DebugShell => a.debug_shell = true,
            Kind::DebugWorkspace => a.debug_workspace = true,
            Kind::DebugSandbox => a.debug_sandbox = true,
            Kind::DebugTiming => a.debug_timing = true,
            Kind::NoPager => a.pager = false,
            Kind::GenkeyValidDays => a.genkey_valid_days = value,
            Kind::GenkeyCommonName => a.genkey_common_name = value,
            Kind::AutoBump => a.auto_bump = true,
            Kind::DocFormat => {
                a.doc_format = value.parse().map_err(|_| {
                    Stop::Usage(format!("argument {}: invalid DocFormat value: {}", opt.name(), py_repr(&value)))
                })?;
            }
            Kind::Json => a.json = true,
            Kind::WipeBuildDir => a.wipe_build_dir = true,
            Kind::RerunBuildScripts => a.rerun_build_scripts = true,
            Kind::Ignore => log::warn(&format!("{option_string} is no longer supported")),
            Kind::Setting(s) => {
                if let Some(choices) = s.choices {
                    if !choices.contains(&value.as_str()) {
                        let choices = choices.iter().map(|c| py_repr(c)).collect::<Vec<_>>().join(", ");
                        return Err(Stop::Usage(format!(
                            "argument {}: invalid choice: {} (choose from {choices})",
                            opt.name(),
                            py_repr(&value)
                        )));
                    }
                }
                self.ctx.set_cli(s, Some(&value), &self.cwd).map_err(|e| Stop::Die(e.into()))?;
                self.assignments.push(CliAssignment {
                    setting: s,
                    value: Some(value),
                    cwd: self.cwd.clone(),
                    option: option_string.to_string(),
                });
            }
            Kind::Const(s) => {
                let value = s.short_const.map(str::to_string);
                self.ctx.set_cli(s, value.as_deref(), &self.cwd).map_err(|e| Stop::Die(e.into()))?;
                self.assignments.push(CliAssignment {
                    setting: s,
                    value,
                    cwd: self.cwd.clone(),
                    option: option_string.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The positional arguments: the verb and the arguments after it.
    fn take_positionals(&mut self, mut verb: Vec<String>, mut cmdline: Vec<String>) -> Result<(), Stop> {
        self.verb_seen = true;
        if let Some(i) = verb.iter().position(|v| v == "--") {
            verb.remove(i);
        }
        if let Some(v) = verb.pop() {
            self.args.verb = Verb::from_name(&v)
                .ok_or_else(|| Stop::Usage(format!("argument verb: invalid Verb value: {}", py_repr(&v))))?;
        }
        if let Some(i) = cmdline.iter().position(|v| v == "--") {
            cmdline.remove(i);
        }
        self.args.cmdline = cmdline;
        Ok(())
    }
}

/// Change directory like `-C` does (upstream's `parse_chdir()`).
fn chdir(cwd: &Path, dir: &str) -> Result<PathBuf> {
    let target = cwd.join(dir);
    match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(mkosi_config::Error::new(format!("{dir} is not a directory!")).into()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Err(mkosi_config::Error::new(format!("{dir} is not a directory!")).into())
        }
        Err(e) => {
            return Err(mkosi_config::Error::new(format!(
                "Cannot change the directory to {dir}: [Errno {}] {}: '{dir}'",
                e.raw_os_error().unwrap_or(0),
                strerror(&e)
            ))
            .into())
        }
    }
    std::fs::canonicalize(&target)
        .map_err(|e| mkosi_config::Error::new(format!("Cannot change the directory to {dir}: {e}")).into())
}

/// The message of an OS error without Rust's " (os error N)" suffix.
fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// What the command line asks for.
enum Parsed {
    Run(Cli),
    /// `-h`/`--help`: show the help (with the pager setting seen so far).
    Help(Cli),
    Version,
}

/// argparse's `_parse_known_args()` for our option table.
fn parse_argv(argv: &[String], start_cwd: &Path, user: &str, host: &Host) -> Result<Parsed, Stop> {
    let t = table();

    // The argument pattern: `A` positional, `O` option, `-` for `--`.
    let mut tokens: Vec<Token> = Vec::with_capacity(argv.len());
    let mut after_dashes = false;
    for arg in argv {
        let token = if after_dashes {
            Token::Positional
        } else if arg == "--" {
            after_dashes = true;
            Token::DoubleDash
        } else {
            classify(arg, t)
        };
        tokens.push(token);
    }
    let is_option = |i: usize| matches!(tokens.get(i), Some(Token::Option(..)));

    let mut args = Args::new(Verb::Build, Some(start_cwd.to_path_buf()));
    args.genkey_common_name = format!("mkosi of {user}");
    let mut st = State {
        args,
        assignments: Vec::new(),
        cwd: start_cwd.to_path_buf(),
        ctx: mkosi_config::context::Context::new(host, PathBuf::from("/"), start_cwd.to_path_buf()),
        verb_seen: false,
    };
    let into_cli = |st: State| Cli { args: st.args, assignments: st.assignments, cwd: st.cwd };

    // Positionals are matched greedily as `(-*A?-*)(-*[A-]*)` the first time
    // a run of non-option arguments is seen; both are used up then, even if
    // the run is just the verb (so `mkosi shell --debug ls` is an error).
    let consume_positionals = |st: &mut State, start: usize| -> Result<usize, Stop> {
        if st.verb_seen {
            return Ok(start);
        }
        let mut i = start;
        let dash = |i: usize| matches!(tokens.get(i), Some(Token::DoubleDash));
        let positional = |i: usize| matches!(tokens.get(i), Some(Token::Positional));
        while dash(i) {
            i += 1;
        }
        if positional(i) {
            i += 1;
        }
        while dash(i) {
            i += 1;
        }
        let verb_end = i;
        while dash(i) || positional(i) {
            i += 1;
        }
        st.take_positionals(argv[start..verb_end].to_vec(), argv[verb_end..i].to_vec())?;
        Ok(i)
    };

    let mut extras: Vec<String> = Vec::new();

    // argparse's `consume_optional()`.
    let consume_optional = |st: &mut State, extras: &mut Vec<String>, start: usize| -> Result<usize, Stop> {
        let Some(Token::Option(index, option_string, explicit)) = tokens.get(start).cloned() else {
            return Ok(start + 1);
        };
        let Some(mut index) = index else {
            extras.push(argv[start].clone());
            return Ok(start + 1);
        };
        let mut option_string = option_string;
        let mut explicit = explicit;
        let mut actions: Vec<(usize, Vec<String>, String)> = Vec::new();
        let stop;
        loop {
            let opt = &t.opts[index];
            if let Some(arg) = explicit.clone() {
                if opt.nargs == Nargs::Zero {
                    // `-xyz` is `-x -y -z` when `-x` takes no argument.
                    let single_dash = option_string.chars().nth(1).is_some_and(|c| c != '-');
                    if single_dash && !arg.is_empty() {
                        actions.push((index, vec![], option_string.clone()));
                        let mut chars = arg.chars();
                        let next = format!("-{}", chars.next().unwrap_or_default());
                        let rest: String = chars.collect();
                        match t.lookup.get(&next) {
                            Some(&i) => {
                                index = i;
                                option_string = next;
                                explicit = if rest.is_empty() { None } else { Some(rest) };
                                continue;
                            }
                            None => {
                                return Err(Stop::Usage(format!(
                                    "argument {}: ignored explicit argument {}",
                                    opt.name(),
                                    py_repr(&arg)
                                )))
                            }
                        }
                    }
                    return Err(Stop::Usage(format!(
                        "argument {}: ignored explicit argument {}",
                        opt.name(),
                        py_repr(&arg)
                    )));
                }
                actions.push((index, vec![arg], option_string.clone()));
                stop = start + 1;
                break;
            }
            let follows = |i: usize| matches!(tokens.get(i), Some(Token::Positional));
            let count = match opt.nargs {
                Nargs::Zero => 0,
                Nargs::One if follows(start + 1) => 1,
                Nargs::One => return Err(Stop::Usage(format!("argument {}: expected one argument", opt.name()))),
                Nargs::Optional => usize::from(follows(start + 1)),
            };
            actions.push((index, argv[start + 1..start + 1 + count].to_vec(), option_string.clone()));
            stop = start + 1 + count;
            break;
        }
        for (index, values, option_string) in actions {
            st.take(&t.opts[index], values, &option_string)?;
        }
        Ok(stop)
    };

    let run = |st: &mut State, extras: &mut Vec<String>| -> Result<(), Stop> {
        let option_indices: Vec<usize> = (0..tokens.len()).filter(|&i| is_option(i)).collect();
        let mut start = 0;
        while let Some(&next) = option_indices.iter().find(|&&i| i >= start) {
            if start != next {
                let end = consume_positionals(st, start)?;
                if end > start {
                    start = end;
                    continue;
                }
            }
            if !is_option(start) {
                extras.extend(argv[start..next].iter().cloned());
                start = next;
            }
            start = consume_optional(st, extras, start)?;
        }
        let stop = consume_positionals(st, start)?;
        extras.extend(argv[stop..].iter().cloned());
        Ok(())
    };

    match run(&mut st, &mut extras) {
        Ok(()) => {}
        Err(Stop::Help) => {
            st.args.verb = Verb::Help;
            return Ok(Parsed::Help(into_cli(st)));
        }
        Err(Stop::Version) => return Ok(Parsed::Version),
        Err(e) => return Err(e),
    }
    if !extras.is_empty() {
        return Err(Stop::Usage(format!("unrecognized arguments: {}", extras.join(" "))));
    }
    Ok(Parsed::Run(into_cli(st)))
}

// ---------------------------------------------------------------------------
// The help text, laid out like argparse's HelpFormatter (with upstream's
// CustomHelpFormatter tweaks) so that `mkosi -h` prints what upstream prints.

/// One option in the help: its invocation (`-d, --distribution {…}`) and
/// help text (`None` when argparse would not show a help text).
struct HelpItem {
    invocation: String,
    help: Option<&'static str>,
}

/// The field name upstream stores a setting in (argparse's `dest`), whose
/// upper case form is the default metavar.
fn setting_dest(s: &Setting) -> String {
    match s.name {
        "OpenPGPTool" => "openpgp_tool".into(),
        "ForeignUIDRange" => "foreign_uid_range".into(),
        name => {
            let mut out = String::new();
            for (i, c) in name.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            }
            out
        }
    }
}

fn help_sections() -> Vec<(String, Vec<HelpItem>)> {
    let item = |invocation: &str, help: &'static str| HelpItem { invocation: invocation.to_string(), help: Some(help) };
    let doc_formats = format!("--doc-format {{{}}}", DocFormat::VALUES.join(","));
    let mut sections = vec![(
        "options".to_string(),
        vec![
            item("-f, --force", "Remove existing image file before operation"),
            item("-C, --directory PATH", "Change to specified directory before doing anything"),
            item("--debug", "Turn on debugging output"),
            item("--debug-shell", "Spawn an interactive shell in the image if a chroot command fails"),
            item("--debug-workspace", "When an error occurs, the workspace directory will not be deleted"),
            item("--debug-sandbox", "Run mkosi-sandbox with strace"),
            item("--debug-timing", "Log the duration of each build step"),
            item("--no-pager", "Enable paging for long output"),
            item("--genkey-valid-days DAYS", "Number of days keys should be valid when generating keys"),
            item("--genkey-common-name CN", "Template for the CN when generating keys"),
            item("-B, --auto-bump", "Automatically bump image version after building"),
            item(&doc_formats, "The format to show documentation in"),
            item("--json", "Show summary as JSON"),
            item("-w, --wipe-build-dir", "Remove the build directory before building the image"),
            item("-R, --rerun-build-scripts", "Run build scripts even if the image is not rebuilt"),
        ],
    )];

    let mut last_section: Option<Section> = None;
    for s in SETTINGS {
        if last_section != Some(s.section) {
            sections.push((format!("{} configuration options", s.section.as_str()), vec![]));
            last_section = Some(s.section);
        }
        let Some((_, items)) = sections.last_mut() else { continue };
        // Upstream hides --qemu-args from the help (arguments after the `vm`
        // verb do the same); it is accepted all the same.
        if s.name == "QemuArgs" {
            continue;
        }
        if let (Some(c), Some(_)) = (s.short, s.short_const) {
            // store_const with an empty help: the invocation only.
            items.push(HelpItem { invocation: format!("-{c}"), help: None });
        }
        let metavar = match (s.metavar, s.choices) {
            (Some(m), _) => m.to_string(),
            (None, Some(c)) => format!("{{{}}}", c.join(",")),
            (None, None) => setting_dest(s).to_uppercase(),
        };
        let metavar = if s.name == "Checksum" { format!("[{metavar}]") } else { metavar };
        let strings = match (s.short, s.short_const) {
            (Some(c), None) => format!("-{c}, --{}", s.long),
            _ => format!("--{}", s.long),
        };
        items.push(HelpItem { invocation: format!("{strings} {metavar}"), help: Some(s.help) });
    }
    sections
}

/// Python's `textwrap.wrap(text, width, break_long_words=False,
/// break_on_hyphens=False, subsequent_indent=indent)`.
fn textwrap(text: &str, width: usize, subsequent_indent: &str) -> Vec<String> {
    const WS: &[char] = &['\t', '\n', '\x0b', '\x0c', '\r', ' '];
    let len = |s: &str| s.chars().count();
    // expand_tabs, then replace_whitespace.
    let mut expanded = String::new();
    let mut col = 0;
    for c in text.chars() {
        match c {
            '\t' => {
                let n = 8 - col % 8;
                expanded.push_str(&" ".repeat(n));
                col += n;
            }
            '\n' | '\r' => {
                expanded.push(' ');
                col = 0;
            }
            c if WS.contains(&c) => {
                expanded.push(' ');
                col += 1;
            }
            c => {
                expanded.push(c);
                col += 1;
            }
        }
    }
    // Chunks: runs of whitespace and runs of anything else.
    let mut chunks: Vec<String> = Vec::new();
    for c in expanded.chars() {
        let ws = c == ' ';
        match chunks.last_mut() {
            Some(last) if last.starts_with(' ') == ws => last.push(c),
            _ => chunks.push(c.to_string()),
        }
    }
    chunks.reverse();
    let is_ws = |s: &str| s.trim().is_empty();

    let mut lines: Vec<String> = Vec::new();
    while !chunks.is_empty() {
        let indent = if lines.is_empty() { "" } else { subsequent_indent };
        let avail = width.saturating_sub(len(indent));
        if !lines.is_empty() && chunks.last().is_some_and(|c| is_ws(c)) {
            chunks.pop();
        }
        let mut cur: Vec<String> = Vec::new();
        let mut cur_len = 0;
        while let Some(chunk) = chunks.last() {
            let l = len(chunk);
            if cur_len + l > avail {
                break;
            }
            cur_len += l;
            cur.extend(chunks.pop());
        }
        if chunks.last().is_some_and(|c| len(c) > avail) && cur.is_empty() {
            cur.extend(chunks.pop());
        }
        if cur.last().is_some_and(|c| is_ws(c)) {
            cur.pop();
        }
        if !cur.is_empty() {
            lines.push(format!("{indent}{}", cur.concat()));
        }
    }
    lines
}

/// The help text `mkosi -h` shows, for a terminal `columns` wide.
pub fn help_text(columns: usize, bold: &str, reset: &str) -> String {
    let width = columns.saturating_sub(2);
    let max_help_position = 24.min(width.saturating_sub(20).max(4));
    let sections = help_sections();
    let indent = 2;
    let len = |s: &str| s.chars().count();
    let max_len = sections.iter().flat_map(|(_, items)| items).map(|i| len(&i.invocation) + indent).max().unwrap_or(0);
    let help_position = (max_len + 2).min(max_help_position);
    let help_width = width.saturating_sub(help_position).max(11);
    let action_width = help_position.saturating_sub(indent + 2);

    let mut out = usage(bold, reset);
    out.push('\n');
    let description = textwrap("Build Bespoke OS Images", width.max(11), "");
    out.push_str(&description.join("\n"));
    out.push_str("\n\n");
    for (title, items) in &sections {
        if items.is_empty() {
            continue;
        }
        out.push_str(&format!("{title}:\n"));
        for item in items {
            let pad = " ".repeat(indent);
            let help = item.help.filter(|h| !h.is_empty());
            let Some(help) = help else {
                out.push_str(&format!("{pad}{}\n", item.invocation));
                continue;
            };
            let indent_first = if len(&item.invocation) <= action_width {
                out.push_str(&format!("{pad}{:<action_width$}  ", item.invocation));
                0
            } else {
                out.push_str(&format!("{pad}{}\n", item.invocation));
                help_position
            };
            // CustomHelpFormatter._split_lines: every line wrapped on its
            // own, continuation lines indented when the first ends in ':'.
            let text_lines: Vec<&str> = help.lines().collect();
            let sub = if text_lines.first().is_some_and(|l| l.ends_with(':')) { "    " } else { "" };
            let lines: Vec<String> = text_lines.iter().flat_map(|l| textwrap(l, help_width, sub)).collect();
            if lines.is_empty() {
                out.push('\n');
            }
            for (i, line) in lines.iter().enumerate() {
                let n = if i == 0 { indent_first } else { help_position };
                out.push_str(&format!("{}{line}\n", " ".repeat(n)));
            }
        }
        out.push('\n');
    }
    let trimmed = out.trim_end_matches('\n');
    format!("{trimmed}\n")
}

/// The terminal width argparse uses: `$COLUMNS`, the terminal's, or 80.
fn terminal_columns() -> usize {
    if let Some(c) = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok()).filter(|&c| c > 0) {
        return c;
    }
    // SAFETY: TIOCGWINSZ only writes a winsize structure.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return usize::from(ws.ws_col);
        }
    }
    80
}

/// argparse's usage text, shown with usage errors.
fn usage(bold: &str, reset: &str) -> String {
    let mut out = String::from("usage: \n");
    for line in USAGE.lines() {
        let line = line.trim_start();
        // The verb is shown in bold.
        let styled = match line.strip_prefix("mkosi [options…] ") {
            Some(rest) => {
                let (verb, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if tail.is_empty() { String::new() } else { format!(" {tail}") };
                format!("mkosi [options…] {bold}{verb}{reset}{tail}")
            }
            None => line.to_string(),
        };
        out.push_str("  ");
        out.push_str(&styled);
        out.push('\n');
    }
    out
}

fn terminal_is_dumb() -> bool {
    use std::io::IsTerminal;
    !std::io::stdout().is_terminal()
        || !std::io::stderr().is_terminal()
        || std::env::var("TERM").is_ok_and(|t| t == "dumb")
}

/// Parse `argv` (without the program name).
///
/// Usage errors are printed here, like argparse does, and returned as
/// [`crate::Exit`] with status 2; `--version` prints the version and
/// returns `Exit(0)`. The inner error is never produced any more but kept
/// for the callers' sake.
pub fn parse(argv: &[String], start_cwd: &Path, user: &str) -> Result<Result<Cli, clap::Error>> {
    let host = Host::system();
    match parse_argv(argv, start_cwd, user, &host) {
        Ok(Parsed::Run(cli)) => {
            check_verb(&cli.args)?;
            Ok(Ok(cli))
        }
        Ok(Parsed::Help(cli)) => Ok(Ok(cli)),
        Ok(Parsed::Version) => {
            println!("mkosi {}", mkosi_config::MKOSI_VERSION);
            Err(crate::Exit(0).into())
        }
        Err(Stop::Usage(msg)) => {
            let (bold, reset) = if terminal_is_dumb() { ("", "") } else { ("\x1b[0;1;39m", "\x1b[0m") };
            eprintln!("{}mkosi: error: {msg}", usage(bold, reset));
            Err(crate::Exit(2).into())
        }
        Err(Stop::Die(e)) => Err(e),
        Err(Stop::Help | Stop::Version) => Err(crate::Exit(0).into()),
    }
}

/// The checks upstream's `parse_config()` makes right after parsing the
/// command line, before anything else (the verbs that need no
/// configuration, like `genkey` and `help`, run before our configuration
/// engine, which repeats them).
fn check_verb(args: &Args) -> Result<()> {
    let verb = args.verb.as_str();
    if args.rerun_build_scripts && !args.verb.needs_build() {
        return Err(mkosi_config::Error::new(format!(
            "--rerun-build-scripts cannot be used with the '{verb}' command"
        ))
        .into());
    }
    if args.rerun_build_scripts && args.force > 0 {
        return Err(mkosi_config::Error::new("--force cannot be used together with --rerun-build-scripts").into());
    }
    if !args.cmdline.is_empty() && !args.verb.supports_cmdline() {
        return Err(mkosi_config::Error::new(format!(
            "Arguments after verb are not supported for the '{verb}' command"
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn host() -> Host {
        Host::new(vec![("HOME".into(), "/nonexistent".into())], mkosi_config::enums::Architecture::native(), "/".into())
    }

    fn parse_at(argv: &[&str], cwd: &Path) -> Result<Parsed, Stop> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        parse_argv(&argv, cwd, "tester", &host())
    }

    fn parse_ok(argv: &[&str]) -> Cli {
        match parse_at(argv, Path::new("/")) {
            Ok(Parsed::Run(c)) => c,
            Ok(_) => panic!("{argv:?}: help or version"),
            Err(Stop::Usage(m)) => panic!("{argv:?}: {m}"),
            Err(Stop::Die(e)) => panic!("{argv:?}: {e}"),
            Err(_) => panic!("{argv:?}: stopped"),
        }
    }

    fn usage_error(argv: &[&str]) -> String {
        match parse_at(argv, Path::new("/")) {
            Err(Stop::Usage(m)) => m,
            _ => panic!("{argv:?} should be a usage error"),
        }
    }

    fn values(cli: &Cli) -> Vec<(&'static str, Option<String>)> {
        cli.assignments.iter().map(|a| (a.setting.name, a.value.clone())).collect()
    }

    #[test]
    fn command_is_valid() {
        command().debug_assert();
    }

    #[test]
    fn option_table_has_no_duplicates() {
        let t = table();
        let n: usize = t.opts.iter().map(|o| o.strings.len()).sum();
        assert_eq!(n, t.lookup.len());
    }

    #[test]
    fn verbs_and_options_anywhere() {
        let c = parse_ok(&["-d", "debian", "summary", "--release=trixie", "-ff"]);
        assert_eq!(c.args.verb, Verb::Summary);
        assert_eq!(c.args.force, 2);
        assert_eq!(values(&c), vec![("Distribution", Some("debian".into())), ("Release", Some("trixie".into()))]);
        assert_eq!(parse_ok(&[]).args.verb, Verb::Build);
    }

    #[test]
    fn passthrough_arguments() {
        let c = parse_ok(&["shell", "ls", "--", "-l", "--all"]);
        assert_eq!(c.args.verb, Verb::Shell);
        assert_eq!(c.args.cmdline, vec!["ls", "-l", "--all"]);
        let c = parse_ok(&["build", "--", "--foo"]);
        assert_eq!(c.args.cmdline, vec!["--foo"]);
        assert_eq!(usage_error(&["shell", "ls", "-l"]), "unrecognized arguments: -l");
        // argparse matches the verb and its arguments in one go.
        assert_eq!(usage_error(&["shell", "--debug", "ls"]), "unrecognized arguments: ls");
    }

    #[test]
    fn order_is_kept_across_aliases_and_shorts() {
        let c = parse_ok(&["--ram=1G", "--qemu-mem=2G", "-p", "a", "--package=", "--package", "b", "-a", "-i", "-T"]);
        assert_eq!(
            values(&c),
            vec![
                ("RAM", Some("1G".into())),
                ("RAM", Some("2G".into())),
                ("Packages", Some("a".into())),
                ("Packages", Some("".into())),
                ("Packages", Some("b".into())),
                ("Autologin", Some("yes".into())),
                ("Incremental", Some("yes".into())),
                ("WithTests", Some("no".into())),
            ]
        );
    }

    #[test]
    fn choices_and_unknown_options() {
        assert!(usage_error(&["--cache-only=none"]).starts_with("argument --cache-only: invalid choice: 'none'"));
        usage_error(&["--incremental=true"]);
        parse_ok(&["--incremental=strict"]);
        parse_ok(&["--distribution="]);
        assert_eq!(usage_error(&["--no-such-option=1"]), "unrecognized arguments: --no-such-option=1");
        assert_eq!(usage_error(&["frobnicate"]), "argument verb: invalid Verb value: 'frobnicate'");
    }

    #[test]
    fn checksum_optional_value() {
        let c = parse_ok(&["--checksum"]);
        assert_eq!(values(&c), vec![("Checksum", Some("yes".into()))]);
        let c = parse_ok(&["--checksum=no"]);
        assert_eq!(values(&c), vec![("Checksum", Some("no".into()))]);
    }

    #[test]
    fn python_repr() {
        assert_eq!(py_repr("a"), "'a'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'\"b"), "'a\\'\"b'");
        assert_eq!(py_repr("a\\b\n"), "'a\\\\b\\n'");
        assert!(looks_like_negative_number("-1"));
        assert!(looks_like_negative_number("-.5"));
        assert!(looks_like_negative_number("-1.5"));
        assert!(!looks_like_negative_number("-1."));
        assert!(!looks_like_negative_number("-x"));
    }

    #[test]
    fn directory_changes_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(base.join("sub/a")).unwrap();
        std::fs::create_dir_all(base.join("a")).unwrap();
        let Ok(Parsed::Run(c)) = parse_at(&["--extra-tree=a", "-C", "sub", "--extra-tree=a"], &base) else {
            panic!("parse failed")
        };
        assert_eq!(c.assignments[0].cwd, base);
        assert_eq!(c.assignments[1].cwd, base.join("sub"));
        assert_eq!(c.args.directory, Some(base.join("sub")));
        let Ok(Parsed::Run(c)) = parse_at(&["-C", ""], &base) else { panic!("parse failed") };
        assert_eq!(c.args.directory, None);
        assert_eq!(c.cwd, base);
    }

    #[test]
    fn textwrap_like_python() {
        assert_eq!(textwrap("a b c", 3, ""), vec!["a b", "c"]);
        assert_eq!(textwrap("  lead", 10, ""), vec!["  lead"]);
        assert_eq!(textwrap("averylongword x", 4, ""), vec!["averylongword", "x"]);
        assert_eq!(textwrap("one two three", 8, "    "), vec!["one two", "    three"]);
        assert!(textwrap("", 10, "").is_empty());
    }

    /// The lines of a help text without the help strings: usage, section
    /// headings and option invocations.
    fn help_skeleton(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                if let Some(rest) = l.strip_prefix("  -") {
                    Some(format!("  -{}", rest.split("  ").next().unwrap_or_default()))
                } else if l.starts_with("                        ") {
                    None
                } else {
                    Some(l.to_string())
                }
            })
            .collect()
    }

    #[test]
    fn help_like_upstream() {
        let want = std::fs::read_to_string(data_dir().join("help.txt")).unwrap();
        let got = help_text(80, "", "");
        // Up to the settings, byte for byte.
        let head = |t: &str| t.split("Include configuration options:").next().unwrap_or_default().to_string();
        assert_eq!(head(&got), head(&want));
        // The settings' help strings are our own; their layout is upstream's.
        let (w, g) = (help_skeleton(&want), help_skeleton(&got));
        for (i, (a, b)) in w.iter().zip(&g).enumerate() {
            assert_eq!(a, b, "line {i} of the help skeleton");
        }
        assert_eq!(w.len(), g.len());
    }

    // -----------------------------------------------------------------------
    // The corpus recorded from upstream (tests/data/cli/cases.txt, see
    // regen.py there): the argparse stage of every case.

    fn data_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cli")
    }

    fn copy_tree(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            let to = dst.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &to);
            } else {
                std::fs::copy(e.path(), &to).unwrap();
            }
        }
    }

    fn args_json(a: &Args, tree: &str) -> Value {
        let dir = a.directory.as_ref().map(|d| d.to_string_lossy().replace(tree, "@TREE@"));
        json!({
            "AutoBump": a.auto_bump,
            "Cmdline": a.cmdline,
            "Debug": a.debug,
            "DebugSandbox": a.debug_sandbox,
            "DebugShell": a.debug_shell,
            "DebugTiming": a.debug_timing,
            "DebugWorkspace": a.debug_workspace,
            "Directory": dir,
            "DocFormat": a.doc_format.as_str(),
            "Force": a.force,
            "GenkeyCommonName": a.genkey_common_name,
            "GenkeyValidDays": a.genkey_valid_days,
            "Json": a.json,
            "Pager": a.pager,
            "RerunBuildScripts": a.rerun_build_scripts,
            "Verb": a.verb.as_str(),
            "WipeBuildDir": a.wipe_build_dir,
        })
    }

    #[test]
    fn upstream_corpus_argparse_stage() {
        use std::os::unix::fs::PermissionsExt;

        let baseline: Value =
            serde_json::from_str(&std::fs::read_to_string(data_dir().join("baseline.json")).unwrap()).unwrap();
        let cases = std::fs::read_to_string(data_dir().join("cases.txt")).unwrap();

        let tmp = tempfile::tempdir().unwrap();
        let tree = std::fs::canonicalize(tmp.path()).unwrap().join("tree");
        copy_tree(&data_dir().join("tree"), &tree);
        std::fs::set_permissions(tree.join("secret.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        // The expected messages quote this mode; a checkout with another umask must not matter.
        std::fs::set_permissions(tree.join("file.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let tree_s = tree.to_string_lossy().into_owned();

        let mut failures = Vec::new();
        let mut n = 0;
        let mut lines = cases.lines().peekable();
        while let Some(line) = lines.next() {
            let Some(cmd) = line.strip_prefix("$ ") else { continue };
            let Some(expected) = lines.peek().and_then(|l| l.strip_prefix("> parse ")) else {
                failures.push(format!("{cmd}: no recorded result (run regen.py)"));
                continue;
            };
            n += 1;
            let argv: Vec<String> = mkosi_config::shlex::split(cmd, &[' '])
                .unwrap()
                .into_iter()
                .map(|a| a.replace("@TREE@", &tree_s))
                .collect();
            let (code, what) = expected.split_once(' ').unwrap();
            let got = parse_argv(&argv, &tree, "@USER@", &host());
            let got = match got {
                Ok(Parsed::Run(c)) => ("0".to_string(), args_json(&c.args, &tree_s).to_string()),
                Ok(Parsed::Help(_)) => ("0".into(), "help".into()),
                Ok(Parsed::Version) => ("0".into(), "version".into()),
                Err(Stop::Usage(m)) => ("2".into(), format!("mkosi: error: {m}").replace(&tree_s, "@TREE@")),
                Err(Stop::Die(e)) => ("1".into(), format!("‣ {e}").replace(&tree_s, "@TREE@")),
                Err(_) => ("?".into(), String::new()),
            };
            let ok = match (code, what.starts_with('{')) {
                ("0", true) => {
                    let mut want = baseline["Args"].clone();
                    let delta: Value = serde_json::from_str(what).unwrap();
                    for (k, v) in delta.as_object().unwrap() {
                        want[k] = v.clone();
                    }
                    got.0 == "0" && serde_json::from_str::<Value>(&got.1).ok() == Some(want)
                }
                // Upstream fails with a Python exception here; we only need to fail too.
                ("1", _) if what.contains("Error: ") => got.0 == "1",
                // Our messages may carry a location (`file:line: `) first.
                ("1", _) => {
                    got.0 == "1"
                        && (got.1 == what
                            || what.strip_prefix("‣ ").is_some_and(|w| got.1.ends_with(&format!(": {w}"))))
                }
                _ => got.0 == code && got.1 == what,
            };
            if !ok {
                failures.push(format!("{cmd}\n    upstream: {code} {what}\n    ours:     {} {}", got.0, got.1));
            }
        }
        assert!(n > 0);
        assert!(failures.is_empty(), "{} of {n} cases differ from upstream:\n{}", failures.len(), failures.join("\n"));
    }
}
