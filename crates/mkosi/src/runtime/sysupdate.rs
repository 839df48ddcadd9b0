//! `mkosi sysupdate`: update the host from the output directory with
//! systemd-sysupdate and the transfer definitions of `SysupdateDirectory=`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use mkosi_config::config::Config;
use mkosi_config::enums::OutputFormat;
use mkosi_config::{Args, Host};

/// The systemd-sysupdate command line (without the program).
pub fn sysupdate_args(definitions: &Path, outdir: &Path, cmdline: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> =
        vec!["--definitions".into(), definitions.into(), "--transfer-source".into(), outdir.into()];
    out.extend(cmdline.iter().map(OsString::from));
    out
}

/// Whether the partitions must be split off the disk image first.
pub fn needs_split(config: &Config) -> bool {
    config.output_format() == OutputFormat::Disk && !config.strings("SplitArtifacts").iter().any(|a| a == "partitions")
}

fn files_in(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
}

/// Removes the split partition files again.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub fn run_sysupdate(args: &Args, config: &Config, host: &Host, cwd: &Path) -> Result<()> {
    let Some(definitions) = config.path("SysupdateDirectory") else {
        return Err(super::die(
            "No sysupdate definitions directory specified",
            "Specify a directory containing systemd-sysupdate transfer definitions with SysupdateDirectory=",
        ));
    };
    let Some(sysupdate) =
        super::find_binary("systemd-sysupdate").or_else(|| super::find_binary("/usr/lib/systemd/systemd-sysupdate"))
    else {
        bail!("Could not find systemd-sysupdate");
    };
    let version = super::systemd_tool_version(&sysupdate)?;
    if mkosi_config::version::compare_versions(&version, "257") == std::cmp::Ordering::Less {
        return Err(super::die(
            format!(
                "Found '{}' with version {version} but version 257 or newer is required to Update the host system \
                 with systemd-sysupdate.",
                sysupdate.display()
            ),
            "Use ToolsTree=yes to get a newer version of 'systemd-sysupdate'.",
        ));
    }
    let outdir = config.output_dir_or_cwd(cwd);
    let mut cleanup = Cleanup(Vec::new());
    if needs_split(config) {
        let old = files_in(&outdir)?;
        let mut repart = Command::new("systemd-repart");
        repart.args(["--no-pager", "--pretty=no", "--split=yes"]);
        for d in config.paths("RepartDirectories") {
            let mut a = OsString::from("--definitions=");
            a.push(d);
            repart.arg(a);
        }
        repart.arg(outdir.join(config.output_with_format()));
        let status = repart.status().context("running systemd-repart")?;
        cleanup.0 = files_in(&outdir)?.difference(&old).cloned().collect();
        if !status.success() {
            bail!("systemd-repart --split=yes failed with {status}");
        }
    }
    let mut cmd = if super::is_root() {
        Command::new(&sysupdate)
    } else {
        let helper = super::find_binary("run0")
            .or_else(|| super::find_binary("sudo"))
            .context("systemd-sysupdate must run as root but neither run0 nor sudo was found")?;
        let mut c = Command::new(helper);
        c.arg(&sysupdate);
        c
    };
    cmd.args(sysupdate_args(&definitions, &outdir, &args.cmdline));
    cmd.envs(mkosi_build::context::finalize_environment(config, host));
    super::run_foreground(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tests::config;
    use serde_json::json;

    #[test]
    fn command_line_and_split() {
        let args = sysupdate_args(Path::new("/defs"), Path::new("/out"), &["update".to_string()]);
        assert_eq!(args, ["--definitions", "/defs", "--transfer-source", "/out", "update"]);
        assert!(needs_split(&config(json!({"Format": "disk"}))));
        assert!(needs_split(&config(json!({"Format": "disk", "SplitArtifacts": ["uki"]}))));
        assert!(!needs_split(&config(json!({"Format": "disk", "SplitArtifacts": ["partitions"]}))));
        assert!(!needs_split(&config(json!({"Format": "directory"}))));
    }

    #[test]
    fn needs_definitions() {
        let mut a = mkosi_config::Args::new(mkosi_config::Verb::Sysupdate, None);
        a.cmdline = vec![];
        let host = mkosi_config::Host::system();
        let err = run_sysupdate(&a, &config(json!({})), &host, Path::new("/")).err().unwrap();
        assert_eq!(err.to_string(), "No sysupdate definitions directory specified");
    }
}
