//! `mkosi shell` and `mkosi boot`: run the image in a systemd-nspawn container.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use mkosi_config::config::Config;
use mkosi_config::enums::OutputFormat;
use mkosi_config::{Args, Host, Verb};

use super::{check_systemd_tool, die, find_binary, kernel_command_line_extra};

/// Everything the nspawn command line depends on besides the configuration.
pub struct Invocation<'a> {
    pub boot: bool,
    /// The arguments after the verb.
    pub cmdline: &'a [String],
    /// The image (or its ephemeral copy).
    pub image: &'a Path,
    pub image_is_dir: bool,
    /// `(name, path)` of the credentials.
    pub credentials: &'a [(String, PathBuf)],
    /// `RLIMIT_CORE` as `soft:hard`.
    pub rlimit_core: &'a str,
    /// The user `BindUser=` binds.
    pub user: &'a str,
    /// The invocation directory (for `BuildDirectory=` defaults).
    pub cwd: &'a Path,
    /// The version of systemd-nspawn.
    pub nspawn_version: &'a str,
    /// Whether the system bus (and so systemd-machined) can be reached.
    pub system_bus: bool,
}

/// Whether the D-Bus system bus is there, through which nspawn registers the machine.
pub fn have_system_bus() -> bool {
    match std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
        Ok(a) if !a.is_empty() => true,
        _ => Path::new("/run/dbus/system_bus_socket").exists(),
    }
}

/// The machine name: `Machine=` or the image name, with `_` replaced by `-`.
pub fn machine_name(config: &Config) -> String {
    config.str("Machine").filter(|m| !m.is_empty()).unwrap_or(config.image()).replace('_', "-")
}

/// The `RLIMIT_CORE` of this process as nspawn's `--rlimit=` wants it.
pub fn format_rlimit_core() -> String {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut r) } != 0 {
        return "0:0".to_string();
    }
    let f = |v: libc::rlim_t| if v == libc::RLIM_INFINITY { "infinity".to_string() } else { v.to_string() };
    format!("{}:{}", f(r.rlim_cur), f(r.rlim_max))
}

/// `rootidmap` when `path` is not owned by root, else `noidmap`.
fn idmap(path: &Path) -> Result<&'static str> {
    let md = std::fs::metadata(path).with_context(|| format!("{} does not exist", path.display()))?;
    Ok(if md.uid() != 0 { "rootidmap" } else { "noidmap" })
}

fn bind(src: &Path, dst: &Path, options: &str) -> OsString {
    let mut s = OsString::from(src);
    s.push(":");
    s.push(dst);
    s.push(":");
    s.push(options);
    s
}

/// `prefix/target`, or `prefix` for a tree without a target.
fn with_prefix(prefix: &str, target: Option<&Path>) -> PathBuf {
    match target.map(|t| t.to_string_lossy().trim_start_matches('/').to_string()).filter(|t| !t.is_empty()) {
        Some(t) => Path::new(prefix).join(t),
        None => PathBuf::from(prefix),
    }
}

/// Refuse outputs nspawn cannot run.
pub fn check_format(config: &Config, boot: bool) -> Result<()> {
    let opname = if boot { "boot" } else { "acquire shell in" };
    let format = config.output_format();
    if !matches!(format, OutputFormat::Directory | OutputFormat::Disk) {
        bail!("Cannot {opname} {format} images with systemd-nspawn");
    }
    if format.use_outer_compression() && !config.compress_output().is_none() {
        bail!("Cannot {opname} compressed {format} images with systemd-nspawn");
    }
    Ok(())
}

/// The systemd-nspawn command line (without the program itself).
pub fn command_line(config: &Config, inv: &Invocation) -> Result<Vec<OsString>> {
    let mut cmd: Vec<OsString> = ["--quiet", "--link-journal=no", "--suppress-sync=yes"].map(OsString::from).into();
    let push = |cmd: &mut Vec<OsString>, a: &str| cmd.push(a.into());

    match config.str("RuntimeNetwork").unwrap_or("user") {
        "user" => push(&mut cmd, "--resolv-conf=auto"),
        "interface" => {
            push(&mut cmd, "--private-network");
            push(&mut cmd, "--network-veth");
        }
        "none" => push(&mut cmd, "--private-network"),
        other => bail!("'{other}' is not a valid RuntimeNetwork="),
    }
    if config.path("NSpawnSettings").is_some() {
        push(&mut cmd, "--settings=trusted");
    }
    if inv.boot {
        push(&mut cmd, "--boot");
    } else {
        push(&mut cmd, &format!("--rlimit=RLIMIT_CORE={}", inv.rlimit_core));
        push(&mut cmd, "--console=autopipe");
    }
    // Register=auto registers only when machined can be reached (nspawn fails otherwise).
    let register = match config.str("Register").unwrap_or("auto") {
        "disabled" => false,
        "auto" => inv.system_bus,
        _ => true,
    };
    for a in ["--machine", &machine_name(config), "--register", if register { "yes" } else { "no" }] {
        push(&mut cmd, a);
    }
    // Without a system bus nspawn cannot allocate a scope unit either: it stays in ours.
    if !inv.system_bus {
        push(&mut cmd, "--keep-unit");
    }
    for (name, path) in inv.credentials {
        let mut a = OsString::from(format!("--load-credential={name}:"));
        a.push(path);
        cmd.push(a);
    }
    push(&mut cmd, if inv.image_is_dir { "--directory" } else { "--image" });
    cmd.push(inv.image.into());

    if config.bool("RuntimeBuildSources") {
        for (src, tgt) in config.trees("BuildSources") {
            let dst = with_prefix("/work/src", tgt.as_deref());
            push(&mut cmd, "--bind");
            cmd.push(bind(&src, &dst, &format!("norbind,{}", idmap(&src)?)));
        }
        if let Some(build) = config.build_subdir() {
            let build = if build.is_absolute() { build } else { inv.cwd.join(build) };
            push(&mut cmd, "--bind");
            cmd.push(bind(&build, Path::new("/work/build"), &format!("norbind,{}", idmap(&build)?)));
        }
    }
    for (src, tgt) in config.trees("RuntimeTrees") {
        let dst = with_prefix("/root/src", tgt.as_deref());
        push(&mut cmd, "--bind");
        cmd.push(bind(&src, &dst, &format!("norbind,{}", idmap(&src)?)));
    }
    if config.bool("BindUser") {
        for a in ["--bind-user", inv.user, "--bind-user-group=wheel"] {
            push(&mut cmd, a);
        }
    }
    if inv.boot {
        if let Some(journal) = config.path("ForwardJournal") {
            if mkosi_config::version::compare_versions(inv.nspawn_version, "261~devel") == std::cmp::Ordering::Less {
                return Err(die(
                    format!(
                        "ForwardJournal= needs systemd-nspawn 261 or newer with this mkosi (found {})",
                        inv.nspawn_version
                    ),
                    "Unset ForwardJournal= or use a newer systemd-nspawn",
                ));
            }
            let files = if journal.extension().is_some_and(|e| e == "journal") { 1 } else { 100 };
            push(&mut cmd, "--forward-journal");
            cmd.push(journal.into());
            for a in [
                "--forward-journal-max-use=1T".to_string(),
                "--forward-journal-keep-free=1G".to_string(),
                "--forward-journal-max-file-size=4G".to_string(),
                format!("--forward-journal-max-files={files}"),
            ] {
                push(&mut cmd, &a);
            }
        }
    }

    if inv.boot {
        // nspawn stops reading options at the first argument, so the kernel command
        // line goes last: `name=value` without a dot in the name becomes an
        // environment variable of PID 1 (as the kernel does), the rest init arguments.
        let mut argv: Vec<String> = inv.cmdline.to_vec();
        let mut kcl = config.strings("KernelCommandLine");
        kcl.extend(kernel_command_line_extra(config));
        for arg in kcl {
            match arg.split_once('=') {
                Some((name, value)) if !name.contains('.') => {
                    push(&mut cmd, "--setenv");
                    push(&mut cmd, &format!("{}={value}", name.replace('-', "_")));
                }
                _ => argv.push(arg),
            }
        }
        cmd.extend(argv.into_iter().map(OsString::from));
    } else if !inv.cmdline.is_empty() {
        push(&mut cmd, "--");
        cmd.extend(inv.cmdline.iter().map(OsString::from));
    }
    Ok(cmd)
}

/// Removes the copied `.nspawn` file again if it did not exist before.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Run `mkosi shell`/`mkosi boot`.
pub fn run_shell(args: &Args, config: &Config, host: &Host, cwd: &Path) -> Result<()> {
    let boot = args.verb == Verb::Boot;
    check_format(config, boot)?;
    let nspawn = if boot {
        check_systemd_tool("systemd-nspawn", "systemd-container", "254", "boot images")?
    } else {
        find_binary("systemd-nspawn").ok_or_else(|| {
            die(
                "Could not find 'systemd-nspawn' which is required to acquire a shell in images.",
                "Install the 'systemd-container' package",
            )
        })?
    };
    let version = super::systemd_tool_version(&nspawn)?;
    let outdir = config.output_dir_or_cwd(cwd);
    let name = machine_name(config);

    let creds = super::finalize_credentials(config)?;
    let credentials = creds.files()?;

    // The latest .nspawn settings are always used.
    let mut _settings_guard = RemoveOnDrop(None);
    if let Some(settings) = config.path("NSpawnSettings") {
        let dest = outdir.join(format!("{name}.nspawn"));
        if !dest.exists() {
            _settings_guard = RemoveOnDrop(Some(dest.clone()));
        }
        std::fs::copy(&settings, &dest)
            .with_context(|| format!("copying {} to {}", settings.display(), dest.display()))?;
    }

    let target = super::acquire_target(config, &outdir.join(config.output()))?;
    let image_is_dir = target.path.is_dir();
    let rlimit = format_rlimit_core();
    let inv = Invocation {
        boot,
        cmdline: &args.cmdline,
        image: &target.path,
        image_is_dir,
        credentials: &credentials,
        rlimit_core: &rlimit,
        user: host.user_name(),
        cwd,
        nspawn_version: &version,
        system_bus: have_system_bus(),
    };
    let argv = command_line(config, &inv)?;
    let mut cmd = Command::new(&nspawn);
    cmd.args(&argv);
    cmd.envs(mkosi_build::context::finalize_environment(config, host));
    super::run_foreground(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tests::config;
    use serde_json::json;

    fn line(conf: serde_json::Value, boot: bool, cmdline: &[&str]) -> Result<String> {
        let img = tempfile::tempdir().unwrap();
        let image = img.path().join("image");
        std::fs::create_dir(&image).unwrap();
        let c = config(conf);
        let cmdline: Vec<String> = cmdline.iter().map(|s| s.to_string()).collect();
        let creds = vec![
            ("firstboot.locale".to_string(), PathBuf::from("/tmp/c/firstboot.locale")),
            ("firstboot.timezone".to_string(), PathBuf::from("/tmp/c/firstboot.timezone")),
        ];
        let inv = Invocation {
            boot,
            cmdline: &cmdline,
            image: Path::new("/out/image"),
            image_is_dir: true,
            credentials: &creds,
            rlimit_core: "0:infinity",
            user: "alice",
            cwd: Path::new("/src"),
            nspawn_version: "252",
            system_bus: c.str("Machine").is_none_or(|m| m != "no-bus"),
        };
        let argv = command_line(&c, &inv)?;
        Ok(argv.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "))
    }

    const CREDS: &str = "--load-credential=firstboot.locale:/tmp/c/firstboot.locale \
                         --load-credential=firstboot.timezone:/tmp/c/firstboot.timezone";

    #[test]
    fn shell_command_lines() {
        let cases: Vec<(serde_json::Value, Vec<&str>, String)> = vec![
            (
                json!({"Image": "main", "Machine": "my_machine"}),
                vec!["cat", "/etc/os-release"],
                format!(
                    "--quiet --link-journal=no --suppress-sync=yes --resolv-conf=auto \
                     --rlimit=RLIMIT_CORE=0:infinity --console=autopipe --machine my-machine --register yes \
                     {CREDS} --directory /out/image -- cat /etc/os-release"
                ),
            ),
            (
                json!({"Image": "main", "RuntimeNetwork": "interface", "Register": "disabled"}),
                vec![],
                format!(
                    "--quiet --link-journal=no --suppress-sync=yes --private-network --network-veth \
                     --rlimit=RLIMIT_CORE=0:infinity --console=autopipe --machine main --register no \
                     {CREDS} --directory /out/image"
                ),
            ),
            (
                json!({"Image": "main", "RuntimeNetwork": "none", "NSpawnSettings": "/x.nspawn", "BindUser": true}),
                vec!["--", "-l"],
                format!(
                    "--quiet --link-journal=no --suppress-sync=yes --private-network --settings=trusted \
                     --rlimit=RLIMIT_CORE=0:infinity --console=autopipe --machine main --register yes \
                     {CREDS} --directory /out/image --bind-user alice --bind-user-group=wheel -- -- -l"
                ),
            ),
        ];
        // Without a system bus Register=auto does not register, Register=yes still does.
        let got = line(json!({"Image": "main", "Machine": "no-bus"}), false, &[]).unwrap();
        assert!(got.contains("--machine no-bus --register no --keep-unit --load-credential"), "{got}");
        let got = line(json!({"Image": "main", "Machine": "no-bus", "Register": "enabled"}), false, &[]).unwrap();
        assert!(got.contains("--machine no-bus --register yes --keep-unit"), "{got}");
        for (conf, cmdline, want) in cases {
            assert_eq!(line(conf.clone(), false, &cmdline).unwrap(), want, "{conf}");
        }
    }

    #[test]
    fn boot_command_lines() {
        let got = line(
            json!({
                "Image": "main",
                "KernelCommandLine": ["console=ttyS0", "systemd.unit=poweroff.target", "my-var=1"],
                "KernelCommandLineExtra": ["quiet", "x=a b"],
            }),
            true,
            &["--bind=/a:/b", "emergency"],
        )
        .unwrap();
        assert_eq!(
            got,
            format!(
                "--quiet --link-journal=no --suppress-sync=yes --resolv-conf=auto --boot --machine main \
                 --register yes {CREDS} --directory /out/image --setenv console=ttyS0 --setenv my_var=1 \
                 --setenv SYSTEMD_SULOGIN_FORCE=1 --setenv x=\"a b\" --bind=/a:/b emergency \
                 systemd.unit=poweroff.target systemd.wants=network.target quiet"
            )
        );
    }

    #[test]
    fn trees_are_bound() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path().display().to_string();
        let uid = std::fs::metadata(src.path()).unwrap().uid();
        let map = if uid == 0 { "noidmap" } else { "rootidmap" };
        let got = line(
            json!({
                "Image": "main",
                "RuntimeTrees": [{"Source": s, "Target": null}, {"Source": s, "Target": "/sub/dir"}],
                "RuntimeBuildSources": true,
                "BuildSources": [{"Source": s, "Target": "proj"}],
                "BuildDirectory": s,
                "BuildKey": "-",
            }),
            false,
            &[],
        )
        .unwrap();
        let want = format!(
            "--directory /out/image --bind {s}:/work/src/proj:norbind,{map} --bind {s}:/work/build:norbind,{map} \
             --bind {s}:/root/src:norbind,{map} --bind {s}:/root/src/sub/dir:norbind,{map}"
        );
        assert!(got.ends_with(&want), "{got}");

        let err =
            line(json!({"RuntimeTrees": [{"Source": "/does/not/exist", "Target": null}]}), false, &[]).err().unwrap();
        assert_eq!(err.to_string(), "/does/not/exist does not exist");
    }

    #[test]
    fn forward_journal_needs_new_nspawn() {
        let err = line(json!({"ForwardJournal": "/var/log/j.journal"}), true, &[]).err().unwrap();
        assert!(err.to_string().starts_with("ForwardJournal= needs systemd-nspawn 261"), "{err}");
        // Shells do not forward the journal.
        line(json!({"ForwardJournal": "/var/log/j.journal"}), false, &[]).unwrap();
    }

    #[test]
    fn formats() {
        check_format(&config(json!({"Format": "directory"})), false).unwrap();
        check_format(&config(json!({"Format": "disk"})), true).unwrap();
        let err = check_format(&config(json!({"Format": "tar"})), false).err().unwrap();
        assert_eq!(err.to_string(), "Cannot acquire shell in tar images with systemd-nspawn");
        let err = check_format(&config(json!({"Format": "uki"})), true).err().unwrap();
        assert_eq!(err.to_string(), "Cannot boot uki images with systemd-nspawn");
        let err = check_format(&config(json!({"Format": "disk", "CompressOutput": "zstd"})), true).err().unwrap();
        assert_eq!(err.to_string(), "Cannot boot compressed disk images with systemd-nspawn");
    }

    #[test]
    fn machine_names() {
        assert_eq!(machine_name(&config(json!({"Image": "main"}))), "main");
        assert_eq!(machine_name(&config(json!({"Image": "a_b", "Machine": ""}))), "a-b");
        assert_eq!(machine_name(&config(json!({"Image": "main", "Machine": "x_y_z"}))), "x-y-z");
    }

    #[test]
    fn rlimit_format() {
        let r = format_rlimit_core();
        let (soft, hard) = r.split_once(':').unwrap();
        for v in [soft, hard] {
            assert!(v == "infinity" || v.parse::<u64>().is_ok(), "{r}");
        }
    }
}
