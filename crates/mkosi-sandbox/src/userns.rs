//! Becoming root without being root: user namespaces.
//!
//! [`become_root`] puts the calling process into a new user namespace where
//! it is uid/gid 0, mapped to the invoking user, and — when `/etc/subuid`
//! and `/etc/subgid` grant the user subordinate ranges and `newuidmap`/
//! `newgidmap` are installed — uids/gids 1…N mapped to those ranges, so
//! images can contain files owned by other users and `chown()` works.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::SandboxError;

/// A subordinate id range from `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

/// Find the first range for `user` (by name or numeric id) in a subuid/subgid file.
pub fn parse_subid(content: &str, user: &str, id: u32) -> Option<IdRange> {
    for line in content.lines() {
        let mut fields = line.trim().split(':');
        let (Some(owner), Some(start), Some(count)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if owner != user && owner.parse::<u32>().ok() != Some(id) {
            continue;
        }
        let (Ok(start), Ok(count)) = (start.trim().parse::<u32>(), count.trim().parse::<u32>()) else { continue };
        if count > 0 {
            return Some(IdRange { start, count });
        }
    }
    None
}

/// How the current process's user namespace maps ids (from `/proc/self/uid_map`).
pub fn current_uid_map() -> Vec<(u32, u32, u32)> {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    let f: Vec<u32> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                    (f.len() == 3).then(|| (f[0], f[1], f[2]))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The result of [`become_root`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privileges {
    /// Already root, nothing changed.
    Root,
    /// Root in a new user namespace with only the invoking user mapped.
    SingleUser,
    /// Root in a new user namespace with subordinate ranges mapped too.
    SubIds { uids: IdRange, gids: IdRange },
}

/// Become root in a new user namespace (see the module documentation).
/// Must be called while the process is single-threaded.
pub fn become_root(user: &str) -> Result<Privileges, SandboxError> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid == 0 {
        return Ok(Privileges::Root);
    }

    let subuid = std::fs::read_to_string("/etc/subuid").ok().and_then(|c| parse_subid(&c, user, uid));
    let subgid = std::fs::read_to_string("/etc/subgid").ok().and_then(|c| parse_subid(&c, user, uid));
    let tools = (find_program("newuidmap"), find_program("newgidmap"));

    if let (Some(uids), Some(gids), (Some(newuidmap), Some(newgidmap))) = (subuid, subgid, tools) {
        // newuidmap must run outside the new namespace: start it first and
        // let it wait until we have unshared.
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let script = format!(
            "read _ || exit 1\n'{}' {pid} 0 {uid} 1 1 {} {} || exit 1\nexec '{}' {pid} 0 {gid} 1 1 {} {}\n",
            newuidmap.display(),
            uids.start,
            uids.count,
            newgidmap.display(),
            gids.start,
            gids.count
        );
        let mut uidmapper = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| SandboxError::Io { what: "spawn".into(), path: "/bin/sh".into(), source: e })?;
        let unshared = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER);
        if let Some(mut stdin) = uidmapper.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
        let status = uidmapper.wait().map_err(|e| SandboxError::Io {
            what: "wait".into(),
            path: newuidmap.clone(),
            source: e,
        })?;
        unshared.map_err(|e| SandboxError::Syscall {
            call: "unshare(CLONE_NEWUSER)".into(),
            path: "/".into(),
            errno: e,
        })?;
        if !status.success() {
            return Err(SandboxError::Unsupported(format!(
                "newuidmap/newgidmap failed ({status}) to map {user}'s subordinate ids {}:{} and {}:{}",
                uids.start, uids.count, gids.start, gids.count
            )));
        }
        set_root_ids()?;
        return Ok(Privileges::SubIds { uids, gids });
    }

    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| SandboxError::Syscall {
        call: "unshare(CLONE_NEWUSER)".into(),
        path: "/".into(),
        errno: e,
    })?;
    write_file("/proc/self/setgroups", "deny\n")?;
    write_file("/proc/self/uid_map", &format!("0 {uid} 1\n"))?;
    write_file("/proc/self/gid_map", &format!("0 {gid} 1\n"))?;
    set_root_ids()?;
    Ok(Privileges::SingleUser)
}

fn write_file(path: &str, content: &str) -> Result<(), SandboxError> {
    std::fs::write(path, content).map_err(|e| SandboxError::Io {
        what: "write".into(),
        path: Path::new(path).into(),
        source: e,
    })
}

fn set_root_ids() -> Result<(), SandboxError> {
    // SAFETY: plain system calls without pointers.
    unsafe {
        if libc::setresgid(0, 0, 0) < 0 {
            return Err(SandboxError::last_os("setresgid"));
        }
        if libc::setresuid(0, 0, 0) < 0 {
            return Err(SandboxError::last_os("setresuid"));
        }
    }
    Ok(())
}

/// Enter a new user namespace mapping only the current ids (to `0` with
/// `as_root`, else to themselves), to gain the capabilities needed for
/// mounting. Used by sandbox processes started without privileges.
pub fn unshare_single_user(as_root: bool) -> Result<(), SandboxError> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(|e| SandboxError::Syscall {
        call: "unshare(CLONE_NEWUSER)".into(),
        path: "/".into(),
        errno: e,
    })?;
    let (inner_uid, inner_gid) = if as_root { (0, 0) } else { (uid, gid) };
    write_file("/proc/self/setgroups", "deny\n")?;
    write_file("/proc/self/uid_map", &format!("{inner_uid} {uid} 1\n"))?;
    write_file("/proc/self/gid_map", &format!("{inner_gid} {gid} 1\n"))?;
    if as_root {
        set_root_ids()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_files() {
        let content = "root:100000:65536\nalice:165536:65536\n1001:231072:1000\nbroken\nbob:1:0\n";
        assert_eq!(parse_subid(content, "alice", 1000), Some(IdRange { start: 165536, count: 65536 }));
        assert_eq!(parse_subid(content, "carol", 1001), Some(IdRange { start: 231072, count: 1000 }));
        assert_eq!(parse_subid(content, "bob", 1002), None);
        assert_eq!(parse_subid(content, "nobody", 9), None);
    }
}
