//! `mkosi ssh`: a shell (or a command) in the machine `mkosi vm` runs (reference §8.5).
//!
//! `mkosi vm` writes `$XDG_RUNTIME_DIR/mkosi/machine/<machine>.json`. Upstream's
//! file names a vsock `ProxyCommand`; on machines without `/dev/vhost-vsock` ours
//! names the host port forwarded to the guest's port 22 instead (`SshHost`,
//! `SshPort`). Either way the key is `SshKey=` of the running machine, and the
//! guest authorizes it through the `ssh.authorized_keys.root` credential.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};
use mkosi_config::config::Config;
use mkosi_config::{Args, Host};

use super::die;

/// The ssh command line for a machine's state file.
pub fn command_line(state: &serde_json::Value, state_path: &Path, cmdline: &[String]) -> Result<Vec<String>> {
    let Some(key) = state.get("SshKey").and_then(|v| v.as_str()) else {
        return Err(die(
            "An SSH key must be configured when booting the image to use 'mkosi ssh'",
            "Use 'mkosi genkey' to generate a new SSH key and certificate",
        ));
    };
    let mut argv: Vec<String> = ["ssh", "-i", key, "-F", "none"].map(String::from).to_vec();
    for o in ["UserKnownHostsFile=/dev/null", "StrictHostKeyChecking=no", "LogLevel=ERROR"] {
        argv.push("-o".into());
        argv.push(o.into());
    }
    if let Some(proxy) = state.get("ProxyCommand").and_then(|v| v.as_str()) {
        argv.push("-o".into());
        argv.push(format!("ProxyCommand={proxy}"));
        argv.push("root@mkosi".into());
    } else if let Some(port) = state.get("SshPort").and_then(|v| v.as_u64()) {
        let host = state.get("SshHost").and_then(|v| v.as_str()).unwrap_or("127.0.0.1");
        argv.extend(["-p".to_string(), port.to_string(), format!("root@{host}")]);
    } else {
        anyhow::bail!("{} names neither a vsock proxy command nor an SSH port", state_path.display());
    }
    argv.extend(cmdline.iter().cloned());
    Ok(argv)
}

/// Run `mkosi ssh`.
pub fn run_ssh(args: &Args, config: &Config, host: &Host) -> Result<()> {
    let name = super::nspawn::machine_name(config);
    let dir = super::vm::state_dir();
    let path = dir.join(format!("{name}.json"));
    let text = {
        let _lock = if dir.is_dir() { super::flock(&dir, libc::LOCK_SH).ok() } else { None };
        std::fs::read_to_string(&path).map_err(|_| {
            die(
                format!("{} not found, cannot SSH into virtual machine {name}", path.display()),
                "Is the machine running (mkosi vm), and was it built with Ssh=yes and an SSH server?",
            )
        })?
    };
    let state: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let argv = command_line(&state, &path, &args.cmdline)?;
    let ssh = super::find_binary("ssh")
        .ok_or_else(|| die("'mkosi ssh' needs ssh, which was not found", "Install the 'openssh-client' package"))?;
    let mut cmd = Command::new(ssh);
    cmd.args(&argv[1..]);
    cmd.envs(mkosi_build::context::finalize_environment(config, host));
    cmd.env("SHELL", "/bin/bash");
    super::run_foreground(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ssh_command_lines() {
        let p = Path::new("/run/mkosi/machine/m.json");
        let vsock = json!({"Machine": "m", "Pid": 1, "ProxyCommand": "socat - VSOCK-CONNECT:42:%p", "SshKey": "/k"});
        assert_eq!(
            command_line(&vsock, p, &["cat".into(), "/etc/os-release".into()]).unwrap().join(" "),
            "ssh -i /k -F none -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR \
             -o ProxyCommand=socat - VSOCK-CONNECT:42:%p root@mkosi cat /etc/os-release"
        );
        let tcp = json!({"Machine": "m", "Pid": 1, "SshHost": "127.0.0.1", "SshPort": 40022, "SshKey": "/k"});
        assert_eq!(
            command_line(&tcp, p, &[]).unwrap().join(" "),
            "ssh -i /k -F none -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR \
             -p 40022 root@127.0.0.1"
        );
        let err = command_line(&json!({"Machine": "m", "SshKey": null, "SshPort": 1}), p, &[]).unwrap_err();
        assert!(err.to_string().starts_with("An SSH key must be configured"), "{err}");
        assert!(command_line(&json!({"SshKey": "/k"}), p, &[]).is_err());
    }
}
