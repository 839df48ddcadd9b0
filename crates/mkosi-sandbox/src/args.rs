//! The `mkosi-sandbox` command line (compatible with upstream's
//! `mkosi-sandbox` options) and its construction from Rust.

use std::path::{Path, PathBuf};

use crate::ops::FsOp;
use crate::SandboxError;

pub const HELP: &str = "mkosi-sandbox [OPTIONS...] COMMAND [ARGUMENTS...]

Run the specified command in a custom sandbox.

  -h --help                       Show this help
     --tmpfs DST                  Mount a new tmpfs on DST
     --dev DST                    Mount a minimal /dev on DST
     --dir DST                    Create a new directory at DST
     --bind SRC DST               Bind mount the host path SRC to DST
     --bind-try SRC DST           Bind mount SRC to DST if SRC exists
     --ro-bind SRC DST            Bind mount SRC to DST read-only
     --ro-bind-try SRC DST        Bind mount SRC to DST read-only if SRC exists
     --bind-nofollow SRC DST      Like --bind, without following symlinks for SRC
     --ro-bind-nofollow SRC DST   Like --ro-bind, without following symlinks for SRC
     --symlink SRC DST            Create a symlink at DST pointing to SRC
     --write DATA DST             Write DATA to DST
     --overlay-lowerdir DIR       Add a lower directory for the next overlay
     --overlay-upperdir DIR       Set the upper directory (or 'tmpfs') for the next overlay
     --overlay-workdir DIR        Set the work directory for the next overlay
     --overlay DST                Mount an overlay filesystem at DST
     --setenv NAME VALUE          Set an environment variable
     --unsetenv NAME              Unset an environment variable
     --chdir DIR                  Change to DIR in the sandbox
     --same-dir                   Change to the current directory in the sandbox
     --become-root                Become root:root in the sandbox
     --suppress-chown             Make chown() system calls no-ops
     --suppress-sync              Make sync() system calls no-ops
     --unshare-net                Unshare the network namespace
     --unshare-ipc                Unshare the IPC namespace
     --debug                      Log each filesystem operation

A SRC starting with '+' is looked up in the new root instead of the host.";

/// A sandbox: what to mount and how to run the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub ops: Vec<FsOp>,
    pub setenv: Vec<(String, String)>,
    pub unsetenv: Vec<String>,
    pub chdir: Option<PathBuf>,
    pub become_root: bool,
    pub suppress_chown: bool,
    pub suppress_sync: bool,
    pub unshare_net: bool,
    pub unshare_ipc: bool,
    pub debug: bool,
    pub help: bool,
}

fn abspath(p: &str) -> PathBuf {
    let path = Path::new(p);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(path)
    };
    // Lexical normalisation like os.path.abspath.
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

impl Options {
    /// Parse `mkosi-sandbox` arguments into options and the command.
    pub fn parse(argv: &[String]) -> Result<(Options, Vec<String>), SandboxError> {
        let mut o = Options::default();
        let mut lowers: Vec<PathBuf> = Vec::new();
        let mut upper: Option<PathBuf> = None;
        let mut work: Option<PathBuf> = None;
        let mut it = argv.iter().peekable();
        let next = |it: &mut std::iter::Peekable<std::slice::Iter<'_, String>>, opt: &str| {
            it.next().cloned().ok_or_else(|| SandboxError::Usage(format!("{opt} needs an argument")))
        };
        while let Some(arg) = it.peek().map(|s| s.as_str()) {
            if arg == "--" {
                it.next();
                break;
            }
            if !arg.starts_with('-') {
                break;
            }
            let arg = it.next().cloned().unwrap_or_default();
            match arg.as_str() {
                "-h" | "--help" => o.help = true,
                "--tmpfs" => o.ops.push(FsOp::Tmpfs { dst: abspath(&next(&mut it, &arg)?) }),
                "--dev" => {
                    let tty = nix::unistd::ttyname(std::io::stderr()).ok();
                    o.ops.push(FsOp::Dev { dst: abspath(&next(&mut it, &arg)?), tty })
                }
                "--dir" => o.ops.push(FsOp::Dir { dst: abspath(&next(&mut it, &arg)?) }),
                "--bind" | "--ro-bind" | "--bind-try" | "--ro-bind-try" | "--bind-nofollow" | "--ro-bind-nofollow" => {
                    let src = next(&mut it, &arg)?;
                    let dst = next(&mut it, &arg)?;
                    let relative = src.starts_with('+');
                    o.ops.push(FsOp::Bind {
                        src: abspath(src.strip_prefix('+').unwrap_or(&src)),
                        dst: abspath(&dst),
                        readonly: arg.starts_with("--ro"),
                        required: !arg.ends_with("-try"),
                        relative,
                        nofollow: arg.ends_with("-nofollow"),
                    });
                }
                "--symlink" => {
                    let target = next(&mut it, &arg)?;
                    let dst = next(&mut it, &arg)?;
                    o.ops.push(FsOp::Symlink { target: target.into(), dst: abspath(&dst) });
                }
                "--write" => {
                    let data = next(&mut it, &arg)?;
                    let dst = next(&mut it, &arg)?;
                    o.ops.push(FsOp::Write { data: data.into_bytes(), dst: abspath(&dst) });
                }
                "--overlay-lowerdir" => lowers.push(abspath(&next(&mut it, &arg)?)),
                "--overlay-upperdir" => {
                    let u = next(&mut it, &arg)?;
                    upper = Some(if u == "tmpfs" { PathBuf::from("tmpfs") } else { abspath(&u) });
                }
                "--overlay-workdir" => work = Some(abspath(&next(&mut it, &arg)?)),
                "--overlay" => {
                    let dst = abspath(&next(&mut it, &arg)?);
                    // Like upstream, the first given lower directory is the bottom layer.
                    let mut l = std::mem::take(&mut lowers);
                    l.reverse();
                    o.ops.push(FsOp::Overlay { lowers: l, upper: upper.take(), work: work.take(), dst });
                }
                "--setenv" => {
                    let k = next(&mut it, &arg)?;
                    let v = next(&mut it, &arg)?;
                    o.setenv.push((k, v));
                }
                "--unsetenv" => o.unsetenv.push(next(&mut it, &arg)?),
                "--chdir" => o.chdir = Some(abspath(&next(&mut it, &arg)?)),
                "--same-dir" => o.chdir = std::env::current_dir().ok(),
                "--become-root" => o.become_root = true,
                "--suppress-chown" => o.suppress_chown = true,
                "--suppress-sync" => o.suppress_sync = true,
                "--unshare-net" => o.unshare_net = true,
                "--unshare-ipc" => o.unshare_ipc = true,
                "--debug" => o.debug = true,
                other => return Err(SandboxError::Usage(format!("unrecognized option {other}"))),
            }
        }
        Ok((o, it.cloned().collect()))
    }

    /// The arguments that make `mkosi-sandbox` build this sandbox.
    pub fn to_args(&self) -> Vec<String> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut a = Vec::new();
        for op in &self.ops {
            match op {
                FsOp::Tmpfs { dst } => a.extend(["--tmpfs".into(), s(dst)]),
                FsOp::Dev { dst, .. } => a.extend(["--dev".into(), s(dst)]),
                FsOp::Dir { dst } => a.extend(["--dir".into(), s(dst)]),
                FsOp::Bind { src, dst, readonly, required, relative, nofollow } => {
                    let opt = match (readonly, required, nofollow) {
                        (false, true, false) => "--bind",
                        (true, true, false) => "--ro-bind",
                        (false, false, _) => "--bind-try",
                        (true, false, _) => "--ro-bind-try",
                        (false, true, true) => "--bind-nofollow",
                        (true, true, true) => "--ro-bind-nofollow",
                    };
                    let src = if *relative { format!("+{}", s(src)) } else { s(src) };
                    a.extend([opt.to_string(), src, s(dst)]);
                }
                FsOp::Symlink { target, dst } => a.extend(["--symlink".into(), s(target), s(dst)]),
                FsOp::Write { data, dst } => {
                    a.extend(["--write".into(), String::from_utf8_lossy(data).into_owned(), s(dst)])
                }
                FsOp::Overlay { lowers, upper, work, dst } => {
                    for l in lowers.iter().rev() {
                        a.extend(["--overlay-lowerdir".into(), s(l)]);
                    }
                    if let Some(u) = upper {
                        a.extend(["--overlay-upperdir".into(), s(u)]);
                    }
                    if let Some(w) = work {
                        a.extend(["--overlay-workdir".into(), s(w)]);
                    }
                    a.extend(["--overlay".into(), s(dst)]);
                }
            }
        }
        for (k, v) in &self.setenv {
            a.extend(["--setenv".into(), k.clone(), v.clone()]);
        }
        for k in &self.unsetenv {
            a.extend(["--unsetenv".into(), k.clone()]);
        }
        if let Some(d) = &self.chdir {
            a.extend(["--chdir".into(), s(d)]);
        }
        for (flag, on) in [
            ("--become-root", self.become_root),
            ("--suppress-chown", self.suppress_chown),
            ("--suppress-sync", self.suppress_sync),
            ("--unshare-net", self.unshare_net),
            ("--unshare-ipc", self.unshare_ipc),
            ("--debug", self.debug),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        a.push("--".into());
        a
    }

    // Builder helpers.

    pub fn bind(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Options {
        self.ops.push(FsOp::Bind {
            src: src.into(),
            dst: dst.into(),
            readonly: false,
            required: true,
            relative: false,
            nofollow: false,
        });
        self
    }

    pub fn ro_bind(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Options {
        self.ops.push(FsOp::Bind {
            src: src.into(),
            dst: dst.into(),
            readonly: true,
            required: true,
            relative: false,
            nofollow: false,
        });
        self
    }

    pub fn ro_bind_try(mut self, src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> Options {
        self.ops.push(FsOp::Bind {
            src: src.into(),
            dst: dst.into(),
            readonly: true,
            required: false,
            relative: false,
            nofollow: false,
        });
        self
    }

    pub fn op(mut self, op: FsOp) -> Options {
        self.ops.push(op);
        self
    }

    pub fn setenv(mut self, k: impl Into<String>, v: impl Into<String>) -> Options {
        self.setenv.push((k.into(), v.into()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn round_trip() {
        let argv = v(&[
            "--tmpfs",
            "/tmp",
            "--ro-bind",
            "/usr",
            "/usr",
            "--bind-try",
            "+/etc/x",
            "/etc/x",
            "--overlay-lowerdir",
            "/a",
            "--overlay-lowerdir",
            "/b",
            "--overlay-upperdir",
            "tmpfs",
            "--overlay",
            "/merged",
            "--symlink",
            "usr/bin",
            "/bin",
            "--write",
            "hello",
            "/etc/motd",
            "--setenv",
            "A",
            "1",
            "--become-root",
            "--suppress-chown",
            "--chdir",
            "/work",
            "--",
            "ls",
            "-l",
        ]);
        let (o, cmd) = Options::parse(&argv).unwrap();
        assert_eq!(cmd, v(&["ls", "-l"]));
        assert!(o.become_root && o.suppress_chown && !o.suppress_sync);
        assert_eq!(o.ops.len(), 6);
        let (o2, cmd2) = Options::parse(&[o.to_args(), cmd.clone()].concat()).unwrap();
        assert_eq!(o, o2);
        assert_eq!(cmd, cmd2);
        match &o.ops[3] {
            FsOp::Overlay { lowers, upper, .. } => {
                assert_eq!(lowers, &vec![PathBuf::from("/b"), PathBuf::from("/a")]);
                assert_eq!(upper.as_deref(), Some(Path::new("tmpfs")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn command_without_separator_and_errors() {
        let (_, cmd) = Options::parse(&v(&["--dir", "/x", "true"])).unwrap();
        assert_eq!(cmd, v(&["true"]));
        assert!(Options::parse(&v(&["--bogus"])).is_err());
        assert!(Options::parse(&v(&["--bind", "/x"])).is_err());
    }
}
