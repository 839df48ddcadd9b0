//! `mkosi journalctl` / `mkosi coredumpctl`: inspect the journal and the core dumps of
//! the built image (`--root=` for directory images, `--image=` for disk images).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};
use mkosi_config::config::Config;
use mkosi_config::enums::OutputFormat;
use mkosi_config::{Args, Host};

/// The tool's arguments for `output` and the user's arguments.
pub fn tool_args(output: &Path, cmdline: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![if output.is_dir() { "--root" } else { "--image" }.into(), output.into()];
    out.extend(cmdline.iter().map(OsString::from));
    out
}

/// Check that `tool` can inspect the output of `config` in `outdir`.
pub fn check(tool: &str, config: &Config, outdir: &Path) -> Result<std::path::PathBuf> {
    if !matches!(config.output_format(), OutputFormat::Disk | OutputFormat::Directory) {
        bail!("{} images cannot be inspected with {tool}", config.output_format());
    }
    if config.bool("Ephemeral") {
        bail!("Images booted in ephemeral mode cannot be inspected with {tool}");
    }
    let output = outdir.join(config.output());
    if !output.exists() {
        return Err(super::die(
            format!("Output {} does not exist, cannot inspect with {tool}", output.display()),
            format!("Build and boot the image first before inspecting it with {tool}"),
        ));
    }
    Ok(output)
}

pub fn run_systemd_tool(args: &Args, config: &Config, host: &Host, cwd: &Path) -> Result<()> {
    let tool = args.verb.as_str();
    let output = check(tool, config, &config.output_dir_or_cwd(cwd))?;
    let Some(path) = super::find_binary(tool) else { bail!("Failed to find {tool}") };
    let mut cmd = Command::new(path);
    cmd.args(tool_args(&output, &args.cmdline));
    cmd.envs(mkosi_build::context::finalize_environment(config, host));
    super::run_foreground(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tests::config;
    use serde_json::json;

    #[test]
    fn checks_and_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = check("journalctl", &config(json!({"Format": "tar"})), d).err().unwrap();
        assert_eq!(err.to_string(), "tar images cannot be inspected with journalctl");
        let err = check("coredumpctl", &config(json!({"Format": "disk", "Ephemeral": true})), d).err().unwrap();
        assert_eq!(err.to_string(), "Images booted in ephemeral mode cannot be inspected with coredumpctl");
        let err = check("journalctl", &config(json!({"Format": "directory"})), d).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("Output {}/image does not exist, cannot inspect with journalctl", d.display())
        );

        std::fs::create_dir(d.join("image")).unwrap();
        let out = check("journalctl", &config(json!({"Format": "directory"})), d).unwrap();
        let args = tool_args(&out, &["-b".to_string(), "-n".to_string(), "5".to_string()]);
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["--root", &format!("{}/image", d.display()), "-b", "-n", "5"]);

        std::fs::write(d.join("disk.raw"), b"").unwrap();
        let args = tool_args(&d.join("disk.raw"), &[]);
        assert_eq!(args[0], "--image");
    }
}
