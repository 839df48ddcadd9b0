//! mkosi's sandbox: run a command with a root filesystem assembled from
//! bind mounts, tmpfs, overlays and a minimal `/dev`, in its own mount
//! namespace (and a user namespace when not root).
//!
//! The sandbox is entered by a separate process (`mkosi-sandbox`, the mkosi
//! binary under another name) that sets everything up and then `exec`s the
//! command, so the multi-threaded main process never has to do unsafe work
//! between `fork()` and `exec()`. [`Options`] describes a sandbox and turns
//! into that process's command line ([`Options::to_args`]); [`main`] is its
//! entry point. This crate is the only place with raw mount and namespace
//! system calls.

pub mod args;
pub mod enter;
pub mod mounts;
pub mod ops;
pub mod run;
pub mod seccomp;
pub mod userns;

use std::path::PathBuf;

pub use args::Options;
pub use ops::FsOp;

/// Errors setting up a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{call} {}: {errno}", path.display())]
    Syscall { call: String, path: PathBuf, errno: nix::Error },
    #[error("{what} {}: {source}", path.display())]
    Io { what: String, path: PathBuf, source: std::io::Error },
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("invalid sandbox arguments: {0}")]
    Usage(String),
    #[error("{0}")]
    Unsupported(String),
}

impl SandboxError {
    pub(crate) fn last_os(call: &str) -> SandboxError {
        SandboxError::Syscall { call: call.to_string(), path: PathBuf::from("-"), errno: nix::Error::last() }
    }
}

/// Entry point of the `mkosi-sandbox` process: set up the sandbox described
/// by `argv` (options, then the command) and exec the command. Only returns
/// on error; the exit code follows upstream (127 when the command is missing).
pub fn main(argv: Vec<String>) -> i32 {
    let (options, command) = match Options::parse(&argv) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mkosi-sandbox: {e}");
            return 1;
        }
    };
    if options.help {
        eprintln!("{}", args::HELP);
        return 0;
    }
    if let Err(e) = enter::enter(&options) {
        eprintln!("mkosi-sandbox: {e}");
        if matches!(&e, SandboxError::Syscall { errno: nix::Error::EPERM, call, .. } if call.starts_with("unshare")) {
            eprintln!(
                "mkosi was forbidden to unshare namespaces. This probably means your distribution restricts \
                 unprivileged user namespaces (see sysctl kernel.unprivileged_userns_clone and \
                 kernel.apparmor_restrict_unprivileged_userns)."
            );
        }
        return 1;
    }
    let command = if command.is_empty() { vec!["bash".to_string()] } else { command };
    let err = enter::exec(&command);
    eprintln!("mkosi-sandbox: failed to execute {}: {err}", command[0]);
    if err == nix::Error::ENOENT {
        127
    } else {
        1
    }
}
