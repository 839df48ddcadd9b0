//! The `box` verb (alias `sandbox`): run a command in the relaxed sandbox —
//! the host's file systems with `/usr` (and `/etc`) from the tools tree, or
//! the host's own when there is none — so tools of the tools tree can be
//! used on the host's files.

use std::path::{Path, PathBuf};

use mkosi_config::host::DetectedDistribution;
use mkosi_config::{Args, Config, Host};
use mkosi_sandbox::run::{self, Cmd, RunError};
use mkosi_sandbox::{FsOp, Options};

use crate::error::{BuildError, Result};

/// Top-level directories the relaxed sandbox does not take from the host as they are.
const NOT_FROM_HOST: &[&str] = &["proc", "usr", "opt", "nix", "bin", "sbin", "lib", "lib32", "lib64", "etc"];

fn bind(src: impl Into<PathBuf>, dst: impl Into<PathBuf>, readonly: bool) -> FsOp {
    FsOp::Bind { src: src.into(), dst: dst.into(), readonly, required: true, relative: false, nofollow: false }
}

/// The relaxed sandbox with the network and the host's devices: `/usr`,
/// `/opt`, `/etc` and the merged-usr links from `tools`, everything else at
/// the top level of the host bound as it is (read-write).
pub fn relaxed_sandbox(tools: &Path, path: String, cwd: Option<PathBuf>) -> Options {
    let mut o = Options::default();
    o.ops.push(bind("/proc", "/proc", false));
    o.unsetenv.push("TMPDIR".into());
    o.setenv.push(("SYSTEMD_OFFLINE".into(), "0".into()));
    for d in ["usr", "opt"] {
        if tools.join(d).exists() {
            o.ops.push(bind(tools.join(d), Path::new("/").join(d), true));
        }
    }
    for d in ["bin", "sbin", "lib", "lib32", "lib64", "nix/store"] {
        let p = tools.join(d);
        if let Ok(target) = std::fs::read_link(&p) {
            o.ops.push(FsOp::Symlink { target, dst: Path::new("/").join(d) });
        } else if p.is_dir() {
            o.ops.push(bind(&p, Path::new("/").join(d), true));
        }
    }
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir("/").map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    entries.sort();
    for p in entries {
        let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        if NOT_FROM_HOST.contains(&name.as_str()) {
            continue;
        }
        match std::fs::read_link(&p) {
            Ok(target) => o.ops.push(FsOp::Symlink { target, dst: p }),
            Err(_) => o.ops.push(bind(&p, &p, false)),
        }
    }
    o.ops.push(bind(tools.join("etc"), "/etc", true));
    if Path::new("/etc/resolv.conf").exists() {
        o.ops.push(FsOp::Bind {
            src: "/etc/resolv.conf".into(),
            dst: "/etc/resolv.conf".into(),
            readonly: true,
            required: true,
            relative: false,
            nofollow: true,
        });
    }
    o.setenv.push(("PATH".into(), path));
    o.chdir = cwd;
    o
}

/// `$SHELL_PROMPT_PREFIX` in the box: `(box)` before the current prefix, or
/// the nesting level counted up when already in a box (`(box:2)`, …).
pub fn shell_prompt_prefix(current: &str, in_box: bool) -> String {
    if in_box {
        // The first `(box)` or `(box:N)` (N > 0) marker.
        for (start, _) in current.match_indices("(box") {
            let rest = &current[start + 4..];
            let (level, len) = match rest.strip_prefix(':') {
                Some(r) => {
                    let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
                    let level = if digits.starts_with('0') { None } else { digits.parse::<u64>().ok() };
                    (level, 1 + digits.len())
                }
                None => (Some(1), 0),
            };
            if let Some(level) = level.filter(|_| rest[len..].starts_with(')')) {
                let end = start + 4 + len + 1;
                return format!("{}(box:{}){}", &current[..start], level + 1, &current[end..]);
            }
        }
    }
    format!("(box){current}")
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "yes" | "y" | "true" | "t" | "on")
}

/// The environment of the boxed command: mkosi's own plus the box markers.
pub fn box_environment(config: &Config, host: &Host) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = host.env_vars().to_vec();
    let mut set = |k: &str, v: String| {
        env.retain(|(n, _)| n != k);
        env.push((k.to_string(), v));
    };
    set("MKOSI_IN_BOX", "1".into());
    let in_box = host.env("MKOSI_IN_BOX").is_some_and(truthy);
    set("SHELL_PROMPT_PREFIX", shell_prompt_prefix(host.env("SHELL_PROMPT_PREFIX").unwrap_or(""), in_box));
    let (distribution, release) = host.distribution();
    if let Some(d) = distribution {
        let name = match d {
            DetectedDistribution::Known(d) => d.as_str().to_string(),
            DetectedDistribution::Other(s) => s.clone(),
        };
        set("MKOSI_HOST_DISTRIBUTION", name);
    }
    if let Some(r) = release {
        set("MKOSI_HOST_RELEASE", r.clone());
    }
    let extra = config.paths("ExtraSearchPaths");
    if !extra.is_empty() {
        let joined = extra.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":");
        let value = match host.env("PYTHONPATH").filter(|p| !p.is_empty()) {
            Some(existing) => format!("{joined}:{existing}"),
            None => joined,
        };
        set("PYTHONPATH", value);
    }
    env
}

/// Run the `box` verb: the command given after the verb, in the relaxed
/// sandbox, on the user's terminal. Returns the command's exit status.
pub fn run_box(args: &Args, config: &Config, host: &Host, cwd: &Path) -> Result<i32> {
    if args.cmdline.is_empty() {
        return Err(BuildError::msg("Please specify a command to execute in the sandbox"));
    }
    let extra: Vec<String> =
        config.paths("ExtraSearchPaths").iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let mut path = extra.join(":");
    if !path.is_empty() {
        path.push(':');
    }
    path.push_str(&crate::scripts::finalize_path(host));

    run::set_debug(args.debug);
    // The command gets the terminal's signals; mkosi waits for it.
    run::install_signal_handlers();
    let options = relaxed_sandbox(Path::new("/"), path, Some(cwd.to_path_buf()));
    let cmd = Cmd::new(args.cmdline.clone()).sandbox(options).env(box_environment(config, host)).interactive();
    match run::run(&cmd) {
        Ok(_) => Ok(0),
        Err(RunError::Failed { code, .. }) => Ok(code),
        Err(RunError::Signaled { signal, .. }) => Ok(128 + signal),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_prefix_nesting() {
        assert_eq!(shell_prompt_prefix("", false), "(box)");
        assert_eq!(shell_prompt_prefix("[x] ", false), "(box)[x] ");
        // Outside a box an existing marker is not counted.
        assert_eq!(shell_prompt_prefix("(box)", false), "(box)(box)");
        assert_eq!(shell_prompt_prefix("(box)", true), "(box:2)");
        assert_eq!(shell_prompt_prefix("a(box:2)b", true), "a(box:3)b");
        assert_eq!(shell_prompt_prefix("(box:9)", true), "(box:10)");
        assert_eq!(shell_prompt_prefix("(box:0)", true), "(box)(box:0)");
        assert_eq!(shell_prompt_prefix("(boxes)", true), "(box)(boxes)");
        assert_eq!(shell_prompt_prefix("(boxes)(box:4) ", true), "(boxes)(box:5) ");
        assert_eq!(shell_prompt_prefix("", true), "(box)");
    }

    #[test]
    fn relaxed_sandbox_takes_the_host() {
        let o = relaxed_sandbox(Path::new("/"), "/usr/bin".into(), Some("/src".into()));
        let dsts: Vec<PathBuf> = o.ops.iter().map(|op| op.dst().to_path_buf()).collect();
        assert!(dsts.contains(&PathBuf::from("/usr")));
        assert!(dsts.contains(&PathBuf::from("/etc")));
        assert!(dsts.contains(&PathBuf::from("/proc")));
        // /tmp comes from the host as it is, read-write.
        assert!(o
            .ops
            .iter()
            .any(|op| matches!(op, FsOp::Bind { dst, readonly: false, .. } if dst == Path::new("/tmp"))));
        assert!(o.setenv.contains(&("PATH".to_string(), "/usr/bin".to_string())));
        assert!(o.setenv.contains(&("SYSTEMD_OFFLINE".to_string(), "0".to_string())));
        assert_eq!(o.chdir.as_deref(), Some(Path::new("/src")));
        assert!(!o.unshare_net && !o.become_root);
    }
}
