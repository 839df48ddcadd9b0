//! Entering a sandbox: namespaces, the scratch root, the filesystem
//! operations and the final `pivot_root`. Runs in the single-threaded
//! `mkosi-sandbox` process right before it executes the command.

use std::ffi::CString;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root};

use crate::args::Options;
use crate::ops::{self, FsOp};
use crate::{seccomp, userns, SandboxError};

fn sys(call: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |errno| SandboxError::Syscall { call: call.to_string(), path, errno }
}

/// Whether the process holds CAP_SYS_ADMIN in its user namespace.
fn have_cap_sys_admin() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 21) != 0)
}

/// Set up the sandbox described by `options` in the current process.
pub fn enter(options: &Options) -> Result<(), SandboxError> {
    let ops = ops::optimize(options.ops.clone());
    for op in &ops {
        if !op.dst().is_absolute() {
            return Err(SandboxError::Usage(format!("{} is not an absolute path", op.dst().display())));
        }
    }

    for (k, v) in &options.setenv {
        std::env::set_var(k, v);
    }
    for k in &options.unsetenv {
        std::env::remove_var(k);
    }

    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let userns = if have_cap_sys_admin() && (!options.become_root || uid == 0) {
        false
    } else {
        userns::unshare_single_user(options.become_root)?;
        true
    };

    let single_user = userns::current_uid_map().iter().map(|(_, _, n)| *n as u64).sum::<u64>() <= 1;
    seccomp::suppress(options.suppress_chown && (userns || single_user), options.suppress_sync)?;

    let mut flags = CloneFlags::CLONE_NEWNS;
    if options.unshare_ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if options.unshare_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(sys("unshare", Path::new("/")))?;

    let root = Path::new("/");
    if !userns {
        // Keep host mount events out and ours from leaking back.
        mount(None::<&str>, root, None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
            .map_err(sys("mount --make-rslave", root))?;
    }

    // A scratch tmpfs holds the old root and the root being built.
    let tmp = Path::new("/tmp");
    mount(Some("tmpfs"), tmp, Some("tmpfs"), MsFlags::empty(), None::<&str>).map_err(sys("mount tmpfs", tmp))?;
    chdir(tmp).map_err(sys("chdir", tmp))?;
    for d in ["newroot", "oldroot"] {
        std::fs::create_dir(d).map_err(|e| SandboxError::Io { what: "mkdir".into(), path: d.into(), source: e })?;
    }
    let newroot = Path::new("newroot");
    mount(Some(newroot), newroot, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(sys("mount", newroot))?;

    if pivot_root(".", "oldroot").is_err() {
        // In an initramfs "/" is not a mount point: move things around instead.
        mount(Some("/"), "oldroot", None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(sys("mount", Path::new("oldroot")))?;
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(sys("mount --move", root))?;
        nix::unistd::chroot(".").map_err(sys("chroot", Path::new(".")))?;
        chdir(".").map_err(sys("chdir", Path::new(".")))?;
        umount2("oldroot/tmp", MntFlags::MNT_DETACH).map_err(sys("umount", Path::new("oldroot/tmp")))?;
    }

    let (oldroot, newroot) = (Path::new("/oldroot"), Path::new("/newroot"));
    for op in &ops {
        if options.debug {
            eprintln!("+ {}", op.describe());
        }
        op.execute(oldroot, newroot)?;
    }

    chdir(newroot).map_err(sys("chdir", newroot))?;
    pivot_root(".", ".").map_err(sys("pivot_root", newroot))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("umount", root))?;
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>)
        .map_err(sys("mount --make-rshared", root))?;

    let cwd = options.chdir.clone().unwrap_or_else(|| "/".into());
    chdir(&cwd).map_err(sys("chdir", &cwd))?;
    Ok(())
}

/// Replace the process with `command` (looked up in `$PATH`). Returns only on error.
pub fn exec(command: &[String]) -> nix::Error {
    let Ok(args) = command.iter().map(|a| CString::new(a.as_bytes())).collect::<Result<Vec<_>, _>>() else {
        return nix::Error::EINVAL;
    };
    let Some(prog) = args.first() else { return nix::Error::EINVAL };
    match nix::unistd::execvp(prog, &args) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Operations that give a command a minimal system: the given `/usr` (read
/// only) with the merged-usr symlinks, `/proc`, a private `/dev`, tmpfs on
/// `/tmp`, `/run` and `/var/tmp`, and `/etc` from `etc` when given.
pub fn base_ops(usr: &Path, etc: Option<&Path>) -> Vec<FsOp> {
    let mut ops = vec![
        FsOp::Bind {
            src: usr.to_path_buf(),
            dst: "/usr".into(),
            readonly: true,
            required: true,
            relative: false,
            nofollow: false,
        },
        FsOp::Bind {
            src: "/proc".into(),
            dst: "/proc".into(),
            readonly: false,
            required: true,
            relative: false,
            nofollow: false,
        },
        FsOp::Dev { dst: "/dev".into(), tty: None },
        FsOp::Tmpfs { dst: "/tmp".into() },
        FsOp::Tmpfs { dst: "/run".into() },
        FsOp::Tmpfs { dst: "/var/tmp".into() },
    ];
    for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        if usr.join(target.trim_start_matches("usr/")).exists() {
            ops.push(FsOp::Symlink { target: target.into(), dst: Path::new("/").join(link) });
        }
    }
    if let Some(etc) = etc {
        ops.push(FsOp::Bind {
            src: etc.to_path_buf(),
            dst: "/etc".into(),
            readonly: true,
            required: true,
            relative: false,
            nofollow: false,
        });
    }
    ops
}
