//! Seccomp filters that turn `chown()`-family and `sync()`-family system
//! calls into successful no-ops (package managers in a user namespace with a
//! single user cannot chown, and syncing is wasted time for image builds).

use crate::SandboxError;

#[repr(C)]
#[derive(Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

fn native_arch() -> Option<u32> {
    if cfg!(target_arch = "x86_64") {
        Some(AUDIT_ARCH_X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(AUDIT_ARCH_AARCH64)
    } else {
        None
    }
}

/// (arch, chown family, sync family) system call numbers.
fn tables() -> Vec<(u32, Vec<u32>, Vec<u32>)> {
    let mut t = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        t.push((
            AUDIT_ARCH_X86_64,
            vec![libc::SYS_chown, libc::SYS_fchown, libc::SYS_lchown, libc::SYS_fchownat],
            vec![
                libc::SYS_fdatasync,
                libc::SYS_fsync,
                libc::SYS_msync,
                libc::SYS_sync,
                libc::SYS_sync_file_range,
                libc::SYS_syncfs,
            ],
        ));
        // 32-bit binaries on a 64-bit kernel.
        t.push((AUDIT_ARCH_I386, vec![16, 95, 182, 198, 207, 212, 298], vec![36, 118, 144, 148, 314, 344]));
    }
    #[cfg(target_arch = "aarch64")]
    {
        t.push((
            AUDIT_ARCH_AARCH64,
            vec![libc::SYS_fchown, libc::SYS_fchownat],
            vec![
                libc::SYS_fdatasync,
                libc::SYS_fsync,
                libc::SYS_msync,
                libc::SYS_sync,
                libc::SYS_sync_file_range,
                libc::SYS_syncfs,
            ],
        ));
    }
    t.into_iter()
        .map(|(a, c, s)| (a, c.into_iter().map(|n| n as u32).collect(), s.into_iter().map(|n| n as u32).collect()))
        .collect()
}

fn program(chown: bool, sync: bool) -> Vec<SockFilter> {
    let ins = |code, jt, jf, k| SockFilter { code, jt, jf, k };
    let mut prog = vec![ins(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH)];
    let tables = tables();
    for (i, (arch, chowns, syncs)) in tables.iter().enumerate() {
        let mut nrs = Vec::new();
        if chown {
            nrs.extend(chowns);
        }
        if sync {
            nrs.extend(syncs);
        }
        // Block: jeq arch (skip block if not), load nr, jeq each → errno 0, allow, reload arch.
        let block_len = 1 + nrs.len() * 2 + 1 + if i + 1 < tables.len() { 1 } else { 0 };
        prog.push(ins(BPF_JEQ_K, 0, block_len as u8, *arch));
        prog.push(ins(BPF_LD_W_ABS, 0, 0, OFFSET_NR));
        for nr in nrs {
            prog.push(ins(BPF_JEQ_K, 0, 1, nr));
            prog.push(ins(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO));
        }
        prog.push(ins(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW));
        if i + 1 < tables.len() {
            prog.push(ins(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH));
        }
    }
    // Unknown architectures are allowed through.
    prog.push(ins(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW));
    prog
}

/// Install the filter for the current process (inherited by children).
pub fn suppress(chown: bool, sync: bool) -> Result<(), SandboxError> {
    if !chown && !sync {
        return Ok(());
    }
    if native_arch().is_none() {
        return Err(SandboxError::Unsupported(
            "suppressing chown()/sync() is only implemented on x86-64 and arm64".into(),
        ));
    }
    install(&program(chown, sync))
}

fn install(prog: &[SockFilter]) -> Result<(), SandboxError> {
    let fprog = SockFprog { len: prog.len() as u16, filter: prog.as_ptr() };
    // SAFETY: prctl/seccomp receive valid arguments; fprog points into `prog`, which outlives the calls.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(SandboxError::last_os("prctl(PR_SET_NO_NEW_PRIVS)"));
        }
        if libc::syscall(libc::SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, 0, &fprog as *const SockFprog) < 0 {
            return Err(SandboxError::last_os("seccomp"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_stay_in_program() {
        for (c, s) in [(true, false), (false, true), (true, true)] {
            let p = program(c, s);
            for (i, ins) in p.iter().enumerate() {
                if ins.code == BPF_JEQ_K {
                    assert!(i + 1 + (ins.jf as usize) < p.len(), "jump out of program at {i}");
                }
            }
            assert_eq!(p.last().map(|i| i.k), Some(SECCOMP_RET_ALLOW));
        }
    }

    #[test]
    fn filter_makes_chown_a_noop() {
        if native_arch().is_none() {
            return;
        }
        // A scratch file: if the filter failed to match, a chown would only touch it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        use std::os::unix::fs::MetadataExt;
        let before = std::fs::metadata(&file).unwrap().uid();
        let cpath = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        // Run in a child so the filter does not affect the test process. The
        // program is built before fork() so the child does not allocate.
        let prog = program(true, true);
        // SAFETY: the child only performs async-signal-safe work before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match install(&prog) {
                Ok(()) => {
                    // SAFETY: valid NUL-terminated path.
                    let r = unsafe { libc::chown(cpath.as_ptr(), before + 12345, before + 12345) };
                    // SAFETY: sync has no preconditions.
                    unsafe { libc::sync() };
                    if r == 0 {
                        0
                    } else {
                        1
                    }
                }
                Err(_) => 2,
            };
            // SAFETY: terminating the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status}");
        // The call "succeeded" but nothing changed.
        assert_eq!(std::fs::metadata(&file).unwrap().uid(), before);
    }
}
