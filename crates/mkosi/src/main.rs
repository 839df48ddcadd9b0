//! `mkosi`: build bespoke OS images.

mod addon_tool;
mod cli;
mod docs;
mod initrd_tool;
mod resources;
mod runtime;
mod verbs;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use mkosi_config::parse::log;
use mkosi_config::{Host, Verb};

/// An error that has already been reported, carrying the exit code.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn report(e: &anyhow::Error) -> u8 {
    if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
        return *code;
    }
    let color = std::io::stderr().is_terminal();
    let (red, reset) = if color { ("\x1b[31;1m", "\x1b[0m") } else { ("", "") };
    if let Some(be) = e.downcast_ref::<mkosi_build::BuildError>() {
        eprintln!("{red}‣ {be}{reset}");
        if let Some(h) = be.hint_text() {
            eprintln!("{red}‣ ({h}){reset}");
        }
    } else if let Some(ce) = e.downcast_ref::<mkosi_config::Error>() {
        eprintln!("{red}‣ {ce}{reset}");
        if let Some(h) = &ce.hint {
            eprintln!("{red}‣ ({h}){reset}");
        }
    } else {
        eprintln!("{red}‣ {e:#}{reset}");
    }
    1
}

fn main() -> ExitCode {
    // Multi-call binary: `mkosi-sandbox` sets up a sandbox and execs a command.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name == "mkosi-sandbox" {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let code = mkosi_sandbox::main(args);
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    // `mkosi-initrd`: build an initrd for the running system.
    if name == "mkosi-initrd" {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return match initrd_tool::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => ExitCode::from(report(&e)),
        };
    }

    // `mkosi-addon`: build a PE addon for the running system.
    if name == "mkosi-addon" {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return match addon_tool::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => ExitCode::from(report(&e)),
        };
    }

    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(report(&e)),
    }
}

/// Show text through a pager when interactive, like upstream's `page()`.
pub fn page(text: &str, pager: bool) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    if !pager {
        writeln!(stdout, "{text}")?;
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal()
        && !matches!(std::env::var("TERM").as_deref(), Ok("dumb") | Ok("emacs"));
    if interactive {
        let pager_cmd = std::env::var("MANPAGER").or_else(|_| std::env::var("PAGER")).unwrap_or_else(|_| "less".into());
        let less = std::env::var("MKOSI_LESS").unwrap_or_else(|_| "FXMKR".into());
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&pager_cmd)
            .env("LESS", less)
            .stdin(std::process::Stdio::piped())
            .spawn();
        if let Ok(mut child) = child {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(text.as_bytes());
            }
            let _ = child.wait();
            return Ok(());
        }
    }
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn run() -> Result<()> {
    let host = Host::system();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let start_cwd = std::env::current_dir().context("cannot determine the current directory")?;

    let cli = match cli::parse(&argv, &start_cwd, host.user_name())? {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return Err(Exit(if e.use_stderr() { 2 } else { 0 }).into());
        }
    };
    log::set_debug(cli.args.debug);

    if cli.args.verb == Verb::Help {
        let help = cli::command().render_help().to_string();
        return page(&help, cli.args.pager);
    }

    std::env::set_current_dir(&cli.cwd).with_context(|| format!("cannot change into {}", cli.cwd.display()))?;
    verbs::run(cli, &host, Path::new("/"))
}
