//! End-to-end test of `mkosi vm` and `mkosi ssh` (`MKOSI_E2E=1`, root).
//!
//! A bootable Debian trixie disk image with an SSH server and a `mkosi genkey`
//! key pair is booted with `mkosi vm` (UEFI firmware, KVM when it works here,
//! else TCG), as an ephemeral copy grown with `RuntimeSize=`. A unit in the
//! image prints a credential given with `--credential` to the console, which
//! `mkosi vm` shows on its standard output. Then `mkosi ssh` runs
//! `cat /etc/os-release` and a few checks in the guest (over vsock where the
//! host has `/dev/vhost-vsock`, else over the user-network port forward), reads
//! a file of a host directory shared with `RuntimeTrees=` (virtiofs), and finally
//! powers it off, which ends `mkosi vm` with success. Then the same image boots
//! again with `Firmware=linux` (direct kernel boot of the split kernel and
//! initrd, `root=` derived from the partition table).
//!
//! ```sh
//! MKOSI_E2E=1 cargo test --release -p mkosi --test e2e_vm -- --nocapture
//! ```
//!
//! Host tools: qemu-system-x86 (and its virtiofsd), ovmf, openssh-client; swtpm and swtpm-tools
//! for the TPM check (skipped without them).

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MARKER: &str = "MKOSI-VM-CREDENTIAL:";
const SECRET: &str = "hello-from-the-host";

/// `mkosi vm` running in its own process group; stopped (SIGTERM, then SIGKILL) when dropped.
struct Vm {
    child: Option<Child>,
    log: PathBuf,
}

impl Vm {
    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let mut b = Vec::new();
            let _ = f.read_to_end(&mut b);
            s = String::from_utf8_lossy(&b).into_owned();
        }
        s
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = self.exited() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pgid = child.id() as libc::pid_t;
        // SAFETY: signals the process group this test created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

fn mkosi_cmd(dir: &Path, runtime: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mkosi"));
    cmd.current_dir(dir).env("XDG_RUNTIME_DIR", runtime).args(args).stdin(Stdio::null());
    cmd
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

#[test]
fn vm_boots_and_ssh_reaches_it() {
    if !enabled("vm_boots_and_ssh_reaches_it") || !is_root() || std::env::consts::ARCH != "x86_64" {
        return;
    }
    let _serial = serial();
    let scratch = Scratch::new("vm");
    let dir = scratch.path();
    config_dir(
        dir,
        "[Distribution]\nDistribution=debian\nRelease=trixie\n\n\
         [Output]\nFormat=disk\nOutput=image\n\n\
         [Content]\n\
         Packages=linux-image-cloud-amd64,systemd,systemd-boot,systemd-boot-efi,udev,dbus,openssh-server\n\
         Bootable=yes\nLocale=C.UTF-8\nKeymap=us\nTimezone=UTC\nRootPassword=mkosi\n",
    );
    write(
        dir,
        "mkosi.extra/etc/systemd/system/mkosi-vm-test.service",
        &format!(
            "[Unit]\nDescription=Show the credential mkosi.vmtest on the console\n\n\
             [Service]\nType=oneshot\nImportCredential=mkosi.vmtest\n\
             ExecStart=/bin/sh -c 'echo \"{MARKER} $(cat \"$CREDENTIALS_DIRECTORY/mkosi.vmtest\")\" >/dev/console'\n"
        ),
    );
    let wants = dir.join("mkosi.extra/etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("../mkosi-vm-test.service", wants.join("mkosi-vm-test.service")).unwrap();
    // The key pair: mkosi.key is the SshKey= of `mkosi ssh`, mkosi.crt's public key is
    // authorized in the guest through the ssh.authorized_keys.root credential.
    let o = run(mkosi_cmd(dir, dir, &["genkey"]), "mkosi genkey");
    assert_success(&o);
    build(dir, &["-f"]);
    let image = dir.join("image.raw");
    let image_size = std::fs::metadata(&image).unwrap().len();

    // A host directory shared with the guest (RuntimeTrees=, over virtiofs).
    write(dir, "shared/hello.txt", "shared-content\n");
    let tree = format!("--runtime-tree={}:shared", dir.join("shared").display());

    let runtime = dir.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let mut vm =
        start_vm(dir, &runtime, SECRET, &["--ephemeral=yes", "--runtime-size=3G", "--ram=1G", "--cpus=2", &tree]);

    // The machine's state file names how to reach it.
    let state = runtime.join("mkosi/machine").join(format!("{}.json", dir.file_name().unwrap().to_string_lossy()));
    assert!(state.exists(), "no state file at {}: {:?}", state.display(), std::fs::read_dir(&runtime).ok());

    // mkosi ssh (sshd may come up a little after the marker).
    let os_release = ssh_until_up(dir, &runtime, &mut vm, "cat /etc/os-release");
    assert!(os_release.lines().any(|l| l == "ID=debian"), "{os_release}");

    // The disk is the ephemeral copy grown to RuntimeSize=, the credential is there too.
    let o = run(
        mkosi_cmd(
            dir,
            &runtime,
            // ssh joins its arguments into one remote shell command line.
            &["ssh", "--", "cat /sys/block/vda/size; systemd-creds --system cat mkosi.vmtest"],
        ),
        "mkosi ssh (disk size, credential)",
    );
    assert_success(&o);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some((3u64 * 1024 * 1024 * 1024 / 512).to_string().as_str()), "{stdout}");
    assert_eq!(lines.next(), Some(SECRET), "{stdout}");
    let o =
        run(mkosi_cmd(dir, &runtime, &["ssh", "cat", "/root/src/shared/hello.txt"]), "mkosi ssh cat (runtime tree)");
    assert_success(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "shared-content\n");
    if have("swtpm") && have("swtpm_setup") {
        let o =
            run(mkosi_cmd(dir, &runtime, &["ssh", "--", "test", "-c", "/dev/tpmrm0"]), "mkosi ssh test -c /dev/tpmrm0");
        assert_success(&o);
    } else {
        eprintln!("swtpm is not installed: not checking the guest's TPM");
    }

    // Powering the guest off ends mkosi vm successfully and removes the state file.
    let _ = run(mkosi_cmd(dir, &runtime, &["ssh", "--", "systemctl --no-block poweroff"]), "mkosi ssh poweroff");
    let status =
        vm.wait(Duration::from_secs(180)).unwrap_or_else(|| panic!("mkosi vm did not end:\n{}", tail(&vm.log(), 40)));
    assert!(status.success(), "mkosi vm: {status}\n{}", tail(&vm.log(), 40));
    assert!(!state.exists(), "the state file is still there");
    // The image itself was not touched, and the ephemeral copy is gone.
    assert_eq!(std::fs::metadata(&image).unwrap().len(), image_size);
    let copies: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("image.raw-"))
        .collect();
    assert!(copies.is_empty(), "{copies:?}");

    // Direct kernel boot (Firmware=linux): the split kernel and initrd next to the image,
    // with the root= mkosi derives from the image's partition table.
    let mut vm = start_vm(dir, &runtime, "direct-boot", &["--firmware=linux", "--ram=1G", "--cpus=2"]);
    let cmdline = ssh_until_up(dir, &runtime, &mut vm, "cat /proc/cmdline");
    assert!(cmdline.contains("root=PARTUUID=") && cmdline.contains("console=hvc0"), "{cmdline}");
    let _ = run(mkosi_cmd(dir, &runtime, &["ssh", "--", "systemctl --no-block poweroff"]), "mkosi ssh poweroff");
    let status =
        vm.wait(Duration::from_secs(180)).unwrap_or_else(|| panic!("mkosi vm did not end:\n{}", tail(&vm.log(), 40)));
    assert!(status.success(), "mkosi vm: {status}\n{}", tail(&vm.log(), 40));
}

/// Start `mkosi --credential mkosi.vmtest=SECRET ARGS… vm` and wait until the guest shows
/// the credential on the console.
fn start_vm(dir: &Path, runtime: &Path, secret: &str, args: &[&str]) -> Vm {
    let log = dir.join(format!("vm-{secret}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let credential = format!("mkosi.vmtest={secret}");
    let mut all = vec!["--credential", &credential];
    all.extend_from_slice(args);
    all.push("vm");
    let mut cmd = mkosi_cmd(dir, runtime, &all);
    cmd.stdout(out.try_clone().unwrap()).stderr(out).process_group(0);
    let start = Instant::now();
    let mut vm = Vm { child: Some(cmd.spawn().expect("starting mkosi vm")), log };
    let kvm = mkosi_build::qemu::kvm_usable();
    let timeout = Duration::from_secs(if kvm { 240 } else { 600 });
    let want = format!("{MARKER} {secret}");
    loop {
        if vm.log().contains(&want) {
            break;
        }
        if let Some(status) = vm.exited() {
            panic!("mkosi {} exited ({status}) before the marker:\n{}", all.join(" "), tail(&vm.log(), 60));
        }
        assert!(start.elapsed() < timeout, "no marker after {:?}:\n{}", start.elapsed(), tail(&vm.log(), 60));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{want:?} on the console after {:.1}s (kvm: {kvm})", start.elapsed().as_secs_f64());
    vm
}

/// `mkosi ssh COMMAND`, retried until sshd in the guest answers; returns its output.
fn ssh_until_up(dir: &Path, runtime: &Path, vm: &mut Vm, command: &str) -> String {
    let start = Instant::now();
    loop {
        let o = run(mkosi_cmd(dir, runtime, &["ssh", "--", command]), &format!("mkosi ssh {command}"));
        if o.status.success() {
            eprintln!("ssh answered {:.1}s after the marker", start.elapsed().as_secs_f64());
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(vm.exited().is_none(), "the machine stopped:\n{}", tail(&vm.log(), 60));
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "mkosi ssh never succeeded: {}\n--- vm ---\n{}",
            text(&o),
            tail(&vm.log(), 60)
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}
