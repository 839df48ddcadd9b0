//! The verbs that work on configuration alone (summary, cat-config, bump,
//! genkey, completion, documentation, dependencies, init) and the dispatch
//! of the rest.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use mkosi_config::config::Config;
use mkosi_config::parse::log;
use mkosi_config::summary::{cat_config, summary, Style};
use mkosi_config::{finalize_configdir, json, parse_config, Args, Host, Parsed, Verb};

use crate::cli::Cli;
use crate::{docs, page, resources};

fn style() -> Style {
    let dumb = !std::io::stdout().is_terminal()
        || !std::io::stderr().is_terminal()
        || std::env::var("TERM").is_ok_and(|t| t == "dumb");
    if dumb {
        Style::PLAIN
    } else {
        Style::ANSI
    }
}

/// Whether every image equals the configuration mkosi sees without any
/// configuration (upstream compares against a parse from `/proc`).
fn no_configuration_found(images: &[Config], host: &Host, resources: &Path) -> Result<bool> {
    // Any configuration file read makes the image differ from the default.
    if images.iter().any(|c| !c.list("Files").is_empty()) {
        return Ok(false);
    }
    let default = default_config(host, resources)?;
    Ok(images.iter().all(|c| *c == default))
}

/// The configuration mkosi sees without any configuration (upstream's
/// `Config.default()`, parsed from `/proc`).
pub(crate) fn default_config(host: &Host, resources: &Path) -> Result<Config> {
    let proc = Path::new("/proc");
    let parsed = parse_config(Args::new(Verb::Build, Some(proc.to_path_buf())), &[], host, resources, proc)?;
    parsed.images.last().cloned().context("no default configuration")
}

fn not_implemented(verb: Verb) -> anyhow::Error {
    anyhow::anyhow!(
        "The '{}' verb is not implemented yet in this version of mkosi; only build, clean, box, shell, boot, vm, ssh, \
         serve, burn, journalctl, coredumpctl, sysupdate, summary, cat-config, bump, genkey, completion, documentation, dependencies, init and help work so far",
        verb.as_str()
    )
}

pub fn run(cli: Cli, host: &Host, _root: &Path) -> Result<()> {
    let args = cli.args.clone();

    match args.verb {
        Verb::Init => return init(host),
        Verb::Completion => return completion(&args),
        Verb::Documentation => return docs::documentation(&args),
        Verb::Genkey => return genkey(&args),
        Verb::Dependencies => return dependencies(&args, host, &cli.cwd),
        _ => {}
    }

    let resources = resources::resources_dir(host)?;
    let parsed = parse_config(cli.args, &cli.assignments, host, &resources, &cli.cwd)?;
    let Parsed { args, tools, images, history } = parsed;

    if no_configuration_found(&images, host, &resources)? {
        return Err(mkosi_config::Error::new("No configuration found")
            .with_hint("Make sure mkosi is run from a directory with configuration files")
            .into());
    }

    match args.verb {
        Verb::Summary => {
            let text = if args.json {
                let obj = serde_json::json!({
                    "Images": images.iter().map(Config::to_json).collect::<Vec<_>>(),
                    "Tools": tools.as_ref().map(Config::to_json),
                });
                json::dump(&obj)
            } else {
                let st = style();
                let mut text = String::new();
                if let Some(t) = &tools {
                    text.push_str(&summary(t, host, &cli.cwd, st));
                    text.push('\n');
                }
                text.push_str(&images.iter().map(|c| summary(c, host, &cli.cwd, st)).collect::<Vec<_>>().join("\n"));
                text
            };
            page(&text, args.pager)
        }
        Verb::CatConfig => page(&cat_config(&images, &cli.cwd, style()), args.pager),
        Verb::Bump => write_bumped_version(&args, &images),
        Verb::Clean => {
            mkosi_build::clean(&args, tools.as_ref(), &images, host, &cli.cwd)?;
            Ok(())
        }
        Verb::Build => {
            let images = if images.iter().any(|c| !c.list("ConfigureScripts").is_empty()) {
                let defaults = default_config(host, &resources)?;
                mkosi_build::scripts::run_configure_scripts(&args, &images, host, &cli.cwd, &defaults)?
            } else {
                images
            };
            if let Some((path, json)) = &history {
                write_history(path, json)?;
            }
            mkosi_build::build(&args, &images, host, &cli.cwd)?;
            if args.auto_bump {
                write_bumped_version(&args, &images)?;
            }
            Ok(())
        }
        Verb::Box | Verb::Sandbox => {
            let last = images.last().context("no image")?;
            match mkosi_build::box_verb::run_box(&args, last, host, &cli.cwd)? {
                0 => Ok(()),
                code => Err(crate::Exit(code.clamp(1, 255) as u8).into()),
            }
        }
        Verb::Shell
        | Verb::Boot
        | Verb::Serve
        | Verb::Burn
        | Verb::Sysupdate
        | Verb::Vm
        | Verb::Qemu
        | Verb::Ssh
        | Verb::Journalctl
        | Verb::Coredumpctl => crate::runtime::run(&args, images, host, &cli.cwd, &resources),
        verb => Err(not_implemented(verb)),
    }
}

/// Save the command line of a build for later verbs (`History=yes`).
fn write_history(path: &Path, json: &serde_json::Value) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, json::dump(json)).with_context(|| format!("writing {}", path.display()))
}

/// Write the (bumped) image version to `mkosi.version` (`bump`, `-B`).
fn write_bumped_version(args: &Args, images: &[Config]) -> Result<()> {
    let configdir = finalize_configdir(args.directory.as_deref())
        .context("Image version cannot be finalized with empty --directory")?;
    let last = images.last().context("no image")?;
    let version = last.image_version().context("no image version was computed")?;
    let path = configdir.join("mkosi.version");
    std::fs::write(&path, version).with_context(|| format!("writing {}", path.display()))?;
    log::info(&format!("Wrote new version {version} to {}", path.display()));
    Ok(())
}

fn init(host: &Host) -> Result<()> {
    let config_home = host
        .env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| host.home().map(|h| h.join(".config")))
        .context("cannot determine the configuration directory")?;
    let dir = if config_home == Path::new("/") || config_home == Path::new("/root") {
        PathBuf::from("/etc/tmpfiles.d")
    } else {
        config_home.join("user-tmpfiles.d")
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let content =
        resources::file("tmpfiles.d/mkosi.conf").context("tmpfiles.d/mkosi.conf is missing from the build")?;
    let dest = dir.join("mkosi.conf");
    std::fs::write(&dest, content).with_context(|| format!("writing {}", dest.display()))?;
    log::info(&format!("Copied mkosi tmpfiles dropins to {}", dir.display()));
    Ok(())
}

fn completion(args: &Args) -> Result<()> {
    let Some(shell) = args.cmdline.first() else {
        bail!("No shell to generate completion script for specified");
    };
    let shell = match shell.as_str() {
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        other => bail!("{other} is not supported"),
    };
    let mut cmd = crate::cli::command();
    clap_complete::generate(shell, &mut cmd, "mkosi", &mut std::io::stdout());
    Ok(())
}

fn genkey(args: &Args) -> Result<()> {
    let configdir =
        finalize_configdir(args.directory.as_deref()).context("genkey cannot be used with empty --directory")?;
    let key = configdir.join("mkosi.key");
    let crt = configdir.join("mkosi.crt");
    for f in [&key, &crt] {
        if f.exists() && args.force == 0 {
            return Err(mkosi_config::Error::new(format!("{} already exists", f.display()))
                .with_hint("To generate new keys, first remove mkosi.key and mkosi.crt")
                .into());
        }
    }
    let days: u32 = args
        .genkey_valid_days
        .trim()
        .parse()
        .with_context(|| format!("--genkey-valid-days={} is not a number of days", args.genkey_valid_days))?;
    log::info(&format!("Generating keys rsa:2048 for CN '{}'.", args.genkey_common_name));
    log::info(&format!("The keys will expire in {days} days. Remember to roll them over to new ones before then."));
    let status = std::process::Command::new("openssl")
        .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .args(["-days", &days.to_string(), "-subj", &format!("/CN={}/", args.genkey_common_name), "-nodes"])
        .env("OPENSSL_CONF", "/dev/null")
        .status()
        .context("running openssl (install the 'openssl' package)")?;
    if !status.success() {
        bail!("openssl req failed with {status}");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn dependencies(args: &Args, host: &Host, cwd: &Path) -> Result<()> {
    let mut argv: Vec<String> = vec!["--directory=".into(), "--repositories=".into()];
    argv.extend(args.cmdline.iter().cloned());
    argv.extend(["--include=mkosi-tools".to_string(), "build".to_string()]);
    let cli = match crate::cli::parse(&argv, cwd, host.user_name())? {
        Ok(c) => c,
        Err(e) => bail!("{e}"),
    };
    let resources = resources::resources_dir(host)?;
    let parsed = parse_config(cli.args, &cli.assignments, host, &resources, &cli.cwd)?;
    let main = parsed.images.last().context("no image")?;
    let mut packages = main.strings("Packages");
    packages.sort();
    for p in packages {
        println!("{p}");
    }
    Ok(())
}
