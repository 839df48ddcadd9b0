//! The command line: upstream's options and verbs, with one option per
//! setting generated from the settings table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgAction, ArgMatches, Command};
use mkosi_config::enums::DocFormat;
use mkosi_config::settings::{Section, SETTINGS};
use mkosi_config::{Args, CliAssignment, Verb};

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

/// Build the clap command.
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

fn indexed_values(m: &ArgMatches, id: &str) -> Vec<(usize, String)> {
    match (m.get_raw(id), m.indices_of(id)) {
        (Some(values), Some(indices)) => {
            values.zip(indices).map(|(v, i)| (i, v.to_string_lossy().into_owned())).collect()
        }
        _ => vec![],
    }
}

/// Change directory like `-C` does: an empty value means "ignore the current
/// directory's configuration".
fn apply_chdir(cwd: &Path, dir: &str) -> Result<PathBuf> {
    let target = if Path::new(dir).is_absolute() { PathBuf::from(dir) } else { cwd.join(dir) };
    let canon = std::fs::canonicalize(&target).with_context(|| format!("{dir} is not a directory!"))?;
    if !canon.is_dir() {
        bail!("{dir} is not a directory!");
    }
    Ok(canon)
}

/// Parse `argv` (without the program name).
pub fn parse(argv: &[String], start_cwd: &Path, user: &str) -> Result<Result<Cli, clap::Error>> {
    let matches = match command().try_get_matches_from(std::iter::once("mkosi".to_string()).chain(argv.iter().cloned()))
    {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };

    // Directory changes happen in command-line order, like upstream's `-C`.
    let mut chdirs = indexed_values(&matches, "directory");
    chdirs.sort_by_key(|(i, _)| *i);
    let mut directory: Option<PathBuf> = Some(start_cwd.to_path_buf());
    let mut cwd = start_cwd.to_path_buf();
    let mut cwd_at: Vec<(usize, PathBuf)> = Vec::new();
    for (i, d) in &chdirs {
        if d.is_empty() {
            directory = None;
        } else {
            cwd = apply_chdir(&cwd, d)?;
            directory = Some(cwd.clone());
        }
        cwd_at.push((*i, cwd.clone()));
    }
    let cwd_for = |index: usize| -> PathBuf {
        cwd_at.iter().rev().find(|(i, _)| *i < index).map(|(_, c)| c.clone()).unwrap_or(start_cwd.to_path_buf())
    };

    let mut assignments: Vec<(usize, CliAssignment)> = Vec::new();
    for s in SETTINGS {
        let mut ids: Vec<(String, String)> = vec![(setting_id(s.name), format!("--{}", s.long))];
        for long in s.compat_longs {
            ids.push((compat_id(s.name, long), format!("--{long}")));
        }
        for (id, option) in ids {
            for (i, v) in indexed_values(&matches, &id) {
                assignments
                    .push((i, CliAssignment { setting: s, value: Some(v), cwd: cwd_for(i), option: option.clone() }));
            }
        }
        if s.short_const.is_some() && matches.get_count(&const_id(s.name)) > 0 {
            if let Some(indices) = matches.indices_of(&const_id(s.name)) {
                for i in indices {
                    let option = format!("-{}", s.short.unwrap_or('?'));
                    assignments.push((
                        i,
                        CliAssignment { setting: s, value: s.short_const.map(str::to_string), cwd: cwd_for(i), option },
                    ));
                }
            }
        }
    }
    assignments.sort_by_key(|(i, _)| *i);

    for ignored in ["ignored-default", "ignored-cache", "ignored-runtime-scratch"] {
        if matches.contains_id(ignored) && matches.get_raw(ignored).is_some() {
            let name = ignored.trim_start_matches("ignored-");
            eprintln!("‣ --{name} is no longer supported");
        }
    }
    if matches.get_count("nspawn-keep-unit") > 0 {
        eprintln!("‣ --nspawn-keep-unit is no longer supported");
    }

    let verb = matches.get_one::<String>("verb").and_then(|v| Verb::from_name(v)).unwrap_or(Verb::Build);
    let mut args = Args::new(verb, directory);
    args.cmdline = matches.get_many::<String>("cmdline").map(|v| v.cloned().collect()).unwrap_or_default();
    args.force = u32::from(matches.get_count("force"));
    args.debug = matches.get_flag("debug");
    args.debug_shell = matches.get_flag("debug-shell");
    args.debug_workspace = matches.get_flag("debug-workspace");
    args.debug_sandbox = matches.get_flag("debug-sandbox");
    args.debug_timing = matches.get_flag("debug-timing");
    args.pager = !matches.get_flag("no-pager");
    if let Some(d) = matches.get_one::<String>("genkey-valid-days") {
        args.genkey_valid_days = d.clone();
    }
    args.genkey_common_name =
        matches.get_one::<String>("genkey-common-name").cloned().unwrap_or_else(|| format!("mkosi of {user}"));
    args.auto_bump = matches.get_flag("auto-bump");
    if let Some(f) = matches.get_one::<String>("doc-format") {
        args.doc_format = f.parse().unwrap_or(DocFormat::Auto);
    }
    args.json = matches.get_flag("json");
    args.wipe_build_dir = matches.get_flag("wipe-build-dir");
    args.rerun_build_scripts = matches.get_flag("rerun-build-scripts");

    if matches.get_flag("help") {
        args.verb = Verb::Help;
    }
    if matches.get_flag("version") {
        println!("mkosi {}", mkosi_config::MKOSI_VERSION);
        std::process::exit(0);
    }

    Ok(Ok(Cli { args, assignments: assignments.into_iter().map(|(_, a)| a).collect(), cwd }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(argv: &[&str]) -> Cli {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        match parse(&argv, Path::new("/"), "tester").unwrap() {
            Ok(c) => c,
            Err(e) => panic!("{argv:?}: {e}"),
        }
    }

    fn parse_err(argv: &[&str]) -> clap::Error {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        match parse(&argv, Path::new("/"), "tester").unwrap() {
            Ok(_) => panic!("{argv:?} should fail"),
            Err(e) => e,
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
        parse_err(&["shell", "ls", "-l"]);
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
        parse_err(&["--cache-only=none"]);
        parse_err(&["--incremental=true"]);
        parse_ok(&["--incremental=strict"]);
        parse_ok(&["--distribution="]);
        parse_err(&["--no-such-option=1"]);
        parse_err(&["frobnicate"]);
    }

    #[test]
    fn checksum_optional_value() {
        let c = parse_ok(&["--checksum"]);
        assert_eq!(values(&c), vec![("Checksum", Some("yes".into()))]);
        let c = parse_ok(&["--checksum=no"]);
        assert_eq!(values(&c), vec![("Checksum", Some("no".into()))]);
    }

    #[test]
    fn directory_changes_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(base.join("sub")).unwrap();
        let argv: Vec<String> =
            ["--extra-tree=a", "-C", "sub", "--extra-tree=b"].iter().map(|s| s.to_string()).collect();
        let c = parse(&argv, &base, "u").unwrap().unwrap();
        assert_eq!(c.assignments[0].cwd, base);
        assert_eq!(c.assignments[1].cwd, base.join("sub"));
        assert_eq!(c.args.directory, Some(base.join("sub")));
        let argv: Vec<String> = ["-C", ""].iter().map(|s| s.to_string()).collect();
        let c = parse(&argv, &base, "u").unwrap().unwrap();
        assert_eq!(c.args.directory, None);
        assert_eq!(c.cwd, base);
    }
}
