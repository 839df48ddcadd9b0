//! `mkosi-addon`: build a PE addon for the running system's unified kernel images with
//! mkosi's built-in `mkosi-addon` configuration (`Format=addon`, no distribution tree).
//!
//! Like `mkosi-initrd` ([`crate::initrd_tool`]), the binary becomes this tool when invoked as
//! `mkosi-addon`. The host's modules directory for the kernel and its firmware go in as extra
//! trees (the built-in configuration strips the kernel image, the module index files and
//! microcode again; what stays is decided by the local configuration, e.g. through
//! `KernelModules=`), local configuration from `/usr/lib`, `/usr/local/lib`, `/run` and `/etc`
//! `/mkosi-addon` is included, `/etc/crypttab` entries for the initrd and
//! `/etc/kernel/cmdline` are added, and the result is copied atomically to
//! `<output dir>/<name>`.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};
use clap::{Arg, ArgAction};

use crate::initrd_tool::Host;

/// Where the system's own mkosi-addon configuration may live, in increasing order of priority.
const SYSTEM_CONFIG_DIRS: &[&str] = &["/usr/lib", "/usr/local/lib", "/run", "/etc"];

/// The default output name, the one kernel-install's plugin uses too.
pub const DEFAULT_OUTPUT: &str = "mkosi-local.addon.efi";

const MANUAL: &str = include_str!("../../../docs/mkosi-addon.1.md");

/// The manual page of the tool, in markdown.
pub fn manual() -> &'static str {
    MANUAL
}

/// The options of `mkosi-addon`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub kernel_version: String,
    pub output: String,
    pub output_dir: Option<PathBuf>,
    pub debug: bool,
    pub debug_shell: bool,
    pub debug_sandbox: bool,
    pub show_documentation: bool,
    pub show_summary: bool,
}

/// What the command line asks for.
pub type Invocation = crate::initrd_tool::Invocation<Options>;

fn command(default_kernel_version: &str) -> clap::Command {
    let flag = |id: &'static str, help: &'static str| Arg::new(id).long(id).action(ArgAction::SetTrue).help(help);
    clap::Command::new("mkosi-addon")
        .about("Build an addon with the initrd, command line and microcode additions of the current system using mkosi")
        .override_usage("mkosi-addon [options...]")
        .disable_version_flag(true)
        .args_override_self(true)
        .arg(
            Arg::new("output")
                .short('o')
                .long("output")
                .value_name("NAME")
                .default_value(DEFAULT_OUTPUT)
                .help("Output name"),
        )
        .arg(
            Arg::new("kernel-version")
                .short('k')
                .long("kernel-version")
                .value_name("KERNEL_VERSION")
                .default_value(default_kernel_version.to_string())
                .help("Kernel version string"),
        )
        .arg(Arg::new("output-dir").short('O').long("output-dir").value_name("DIR").help("Output directory"))
        .arg(flag("debug", "Turn on debugging output"))
        .arg(flag("debug-shell", "Spawn debug shell if a sandboxed command fails"))
        .arg(flag("debug-sandbox", "Run mkosi-sandbox with strace"))
        .arg(flag("show-documentation", "Show the man page").short('D'))
        .arg(flag("show-summary", "Show the summary of configuration").short('S'))
        .arg(flag("version", "Show program's version number and exit"))
}

/// Parse the arguments (without argv\[0\]).
pub fn parse(args: &[OsString], default_kernel_version: &str) -> std::result::Result<Invocation, clap::Error> {
    let mut cmd = command(default_kernel_version);
    let m = match crate::initrd_tool::tool_matches(&mut cmd, "mkosi-addon", args)? {
        Ok(m) => m,
        Err(done) => return Ok(done),
    };
    let text = |id: &str| m.get_one::<String>(id).cloned().unwrap_or_default();
    let bad_name = |s: &str| s.is_empty() || s.contains('/') || s == "." || s == "..";
    let kernel_version = text("kernel-version");
    if bad_name(&kernel_version) {
        return Err(cmd.error(
            clap::error::ErrorKind::InvalidValue,
            format!("invalid kernel version '{kernel_version}' (it names a directory in /usr/lib/modules)"),
        ));
    }
    let output = text("output");
    if bad_name(&output) {
        return Err(cmd.error(
            clap::error::ErrorKind::InvalidValue,
            format!("invalid output name '{output}' (a file name is expected; use --output-dir for the directory)"),
        ));
    }
    Ok(Invocation::Build(Options {
        kernel_version,
        output,
        output_dir: m.get_one::<String>("output-dir").map(PathBuf::from),
        debug: m.get_flag("debug"),
        debug_shell: m.get_flag("debug-shell"),
        debug_sandbox: m.get_flag("debug-sandbox"),
        show_documentation: m.get_flag("show-documentation"),
        show_summary: m.get_flag("show-summary"),
    }))
}

/// The mkosi arguments (without the program name) for building `opts`. `staging` receives
/// the output and `scratch` is a directory for generated files.
pub fn mkosi_args(opts: &Options, host: &Host, staging: &Path, scratch: &Path) -> Result<Vec<String>> {
    let modules = format!("/usr/lib/modules/{}", opts.kernel_version);
    let mut a: Vec<String> = vec![
        "--force".into(),
        "--directory=".into(),
        format!("--output={}", opts.output),
        format!("--output-directory={}", staging.display()),
        "--build-sources=".into(),
        "--include=mkosi-addon".into(),
    ];
    if host.exists(&modules) {
        a.push(host.extra_tree(&modules));
    }
    if host.exists("/usr/lib/firmware") {
        a.push(host.extra_tree("/usr/lib/firmware"));
    }
    for (on, flag) in
        [(opts.debug, "--debug"), (opts.debug_shell, "--debug-shell"), (opts.debug_sandbox, "--debug-sandbox")]
    {
        if on {
            a.push(flag.into());
        }
    }
    if host.is_root {
        a.push("--output-mode=600".into());
    }
    for d in SYSTEM_CONFIG_DIRS {
        let p = format!("{d}/mkosi-addon");
        if host.exists(&p) {
            a.extend(["--include".into(), host.path(&p).display().to_string()]);
        }
    }
    a.extend(crate::initrd_tool::process_crypttab(host, scratch)?);
    match std::fs::read_to_string(host.path("/etc/kernel/cmdline")) {
        Ok(c) => a.extend(["--kernel-command-line".into(), c.trim().to_string()]),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("reading /etc/kernel/cmdline"),
    }
    if opts.show_summary {
        a.push("summary".into());
    }
    Ok(a)
}

/// Run `mkosi-addon` with `args` (without argv\[0\]).
pub fn main(args: &[OsString]) -> Result<()> {
    let host = Host::system();
    crate::initrd_tool::tool_main(
        parse(args, &host.kernel_release),
        MANUAL,
        "MKOSI-ADDON",
        |o| o.show_documentation,
        |o| run(o, &host),
    )
}

/// Build the addon `opts` describes on `host`.
pub fn run(opts: &Options, host: &Host) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot determine the current directory")?;
    let output_dir = opts.output_dir.as_ref().map(|d| cwd.join(d)).unwrap_or_else(|| cwd.clone());
    let scratch = crate::initrd_tool::Scratch::new()?;
    let staging = scratch.0.join("staging");
    let generated = scratch.0.join("generated");
    for d in [&staging, &generated] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let args = mkosi_args(opts, host, &staging, &generated)?;
    if opts.debug {
        eprintln!("‣ Running mkosi {}", args.join(" "));
    }
    let status = Command::new("/proc/self/exe").arg0("mkosi").args(&args).status().context("running mkosi")?;
    if !status.success() {
        return Err(crate::Exit(status.code().map(|c| c.clamp(1, 255) as u8).unwrap_or(1)).into());
    }
    if !opts.show_summary {
        crate::initrd_tool::finalize(&staging, &opts.output, &output_dir, host.is_root)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn defaults() -> Options {
        Options {
            kernel_version: "6.1.0-test".into(),
            output: DEFAULT_OUTPUT.into(),
            output_dir: None,
            debug: false,
            debug_shell: false,
            debug_sandbox: false,
            show_documentation: false,
            show_summary: false,
        }
    }

    #[test]
    fn option_parsing() {
        type Case = (&'static [&'static str], fn(&mut Options));
        let cases: &[Case] = &[
            (&[], |_| {}),
            (&["-k", "6.12.0"], |o| o.kernel_version = "6.12.0".into()),
            (&["--kernel-version=6.12.0"], |o| o.kernel_version = "6.12.0".into()),
            (&["-o", "x.addon.efi"], |o| o.output = "x.addon.efi".into()),
            (&["-O", "/boot/EFI/Linux/uki.efi.extra.d"], |o| {
                o.output_dir = Some("/boot/EFI/Linux/uki.efi.extra.d".into())
            }),
            (&["--debug", "--debug-shell", "--debug-sandbox"], |o| {
                o.debug = true;
                o.debug_shell = true;
                o.debug_sandbox = true;
            }),
            (&["-D"], |o| o.show_documentation = true),
            (&["-S"], |o| o.show_summary = true),
        ];
        for (args, edit) in cases {
            let mut want = defaults();
            edit(&mut want);
            match parse(&argv(args), "6.1.0-test") {
                Ok(Invocation::Build(o)) => assert_eq!(o, want, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        assert_eq!(parse(&argv(&["--version"]), "k").ok(), Some(Invocation::Version));
        assert!(matches!(parse(&argv(&["--help"]), "k"), Ok(Invocation::Help(h)) if h.contains("mkosi-addon")));
        for bad in [&["-k", "../x"][..], &["-o", "a/b"], &["-o", ""], &["--format=cpio"], &["--generic"]] {
            assert!(parse(&argv(bad), "k").is_err(), "{bad:?}");
        }
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn mkosi_command_line() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("host");
        let host = Host { root: root.clone(), is_root: true, kernel_release: "6.1.0-test".into() };
        let (staging, scratch) = (d.path().join("staging"), d.path().join("scratch"));
        std::fs::create_dir_all(&scratch).unwrap();
        let r = |p: &str| root.join(p).display().to_string();
        // A bare host: no modules, firmware or configuration.
        let a = mkosi_args(&defaults(), &host, &staging, &scratch).unwrap();
        assert_eq!(
            a,
            vec![
                "--force".to_string(),
                "--directory=".into(),
                format!("--output={DEFAULT_OUTPUT}"),
                format!("--output-directory={}", staging.display()),
                "--build-sources=".into(),
                "--include=mkosi-addon".into(),
                "--output-mode=600".into(),
            ]
        );
        write(&root, "usr/lib/modules/6.1.0-test/modules.dep", "");
        write(&root, "usr/lib/firmware/x.bin", "");
        write(&root, "usr/lib/mkosi-addon/mkosi.conf", "");
        write(&root, "etc/mkosi-addon/mkosi.conf", "");
        write(&root, "etc/kernel/cmdline", "quiet splash\n");
        write(&root, "etc/crypttab", "home UUID=1 none luks\nswap UUID=2 none luks,x-initrd.attach\n");
        let opts = Options { debug: true, show_summary: true, ..defaults() };
        let host = Host { is_root: false, ..host };
        let a = mkosi_args(&opts, &host, &staging, &scratch).unwrap();
        assert_eq!(
            a[6..],
            [
                format!("--extra-tree={}:/usr/lib/modules/6.1.0-test", r("usr/lib/modules/6.1.0-test")),
                format!("--extra-tree={}:/usr/lib/firmware", r("usr/lib/firmware")),
                "--debug".into(),
                "--include".into(),
                r("usr/lib/mkosi-addon"),
                "--include".into(),
                r("etc/mkosi-addon"),
                format!("--extra-tree={}:/etc/crypttab", scratch.join("crypttab").display()),
                "--kernel-command-line".into(),
                "quiet splash".into(),
                "summary".into(),
            ]
        );
        let crypttab = std::fs::read_to_string(scratch.join("crypttab")).unwrap();
        assert!(crypttab.contains("swap UUID=2") && !crypttab.contains("home"), "{crypttab}");
    }
}
