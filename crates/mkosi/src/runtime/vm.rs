//! `mkosi vm`: boot the image in qemu (reference §8.3).
//!
//! The command line follows upstream's: the machine type, CPUs and memory, the
//! accelerator (KVM when it is there *and works* — a probe boots a tiny guest
//! first, see `mkosi_build::qemu` — else TCG), the network, the console on
//! stdio through a virtio console, UEFI firmware from the qemu firmware
//! descriptors with a private copy of its variable store, the image as a
//! virtio disk (or a kernel booted directly, a cpio as its initrd, a directory
//! over virtiofs), a software TPM, the credentials as SMBIOS strings, the
//! runtime kernel command line, extra drives, `QemuArgs=` and the arguments
//! after the verb.
//!
//! Where upstream needs `/dev/vhost-vsock` (for `mkosi ssh` and the machine
//! state file), a machine without it gets a user-network port forward from a
//! free port on 127.0.0.1 to the guest's port 22 instead, recorded in the same
//! state file.
//!
//! [`command_line`] is a pure function of the configuration and the resolved
//! [`Inputs`]; [`run_vm`] resolves those (finding tools, starting helpers,
//! writing files) and runs qemu in the foreground.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use mkosi_build::qemu::{self as q, Firmware as Ovmf, FirmwareQuery};
use mkosi_config::config::Config;
use mkosi_config::enums::{Architecture, OutputFormat};
use mkosi_config::{Args, Host};
use mkosi_formats::pe::KernelType;

use super::{die, find_binary};

/// qemu 9.0 and newer take `/dev/kvm` as a passed file descriptor.
const QEMU_KVM_DEVICE_VERSION: (u32, u32) = (9, 0);
/// `VHOST_VSOCK_SET_GUEST_CID`.
const VHOST_VSOCK_SET_GUEST_CID: libc::c_ulong = 0x4008_AF60;
/// The longest virtio-fs tag (bytes).
const VIRTIOFS_MAX_TAG_LEN: usize = 36;

/// The firmware the machine starts (`Firmware=` after `auto` is resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fw {
    Linux,
    LinuxNoinitrd,
    Uefi,
    UefiSecureBoot,
}

impl Fw {
    pub fn is_uefi(self) -> bool {
        matches!(self, Fw::Uefi | Fw::UefiSecureBoot)
    }

    pub fn is_linux(self) -> bool {
        matches!(self, Fw::Linux | Fw::LinuxNoinitrd)
    }

    fn parse(s: &str) -> Option<Fw> {
        Some(match s {
            "linux" => Fw::Linux,
            "linux-noinitrd" => Fw::LinuxNoinitrd,
            "uefi" => Fw::Uefi,
            "uefi-secure-boot" => Fw::UefiSecureBoot,
            _ => return None,
        })
    }
}

/// Resolve `Firmware=auto` (upstream's `finalize_firmware`). `kernel` is the type of the
/// kernel booted directly, if any.
pub fn finalize_firmware(config: &Config, kernel: Option<KernelType>) -> Fw {
    if let Some(fw) = config.str("Firmware").and_then(Fw::parse) {
        return fw;
    }
    if let Some(kt) = kernel {
        return if kt == KernelType::Unknown { Fw::Linux } else { Fw::UefiSecureBoot };
    }
    let arch = config.architecture();
    if matches!(config.output_format(), OutputFormat::Cpio | OutputFormat::Directory) || arch.to_efi().is_none() {
        return Fw::Linux;
    }
    if arch.is_x86_variant() || (arch.is_arm_variant() && config.distribution().is_apt_distribution()) {
        return Fw::UefiSecureBoot;
    }
    Fw::Uefi
}

fn supports_smbios(arch: Architecture, fw: Fw) -> bool {
    arch.is_x86_variant() || (arch.is_arm_variant() && fw.is_uefi())
}

fn supports_fw_cfg(arch: Architecture) -> bool {
    arch.is_x86_variant() || arch.is_arm_variant()
}

/// The qemu machine type of `arch`.
fn default_machine(arch: Architecture) -> &'static str {
    q::default_machine(arch.to_qemu().unwrap_or_default())
}

fn can_kvm(arch: Architecture) -> bool {
    let native = Architecture::native();
    arch == native || (native == Architecture::X86_64 && arch == Architecture::X86)
}

/// The terminal the guest's console is shown on (upstream's `finalize_term` and the
/// terminal size python's `shutil.get_terminal_size` reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub term: String,
    pub columns: u16,
    pub rows: u16,
}

impl Term {
    pub fn detect() -> Term {
        // SAFETY: isatty has no preconditions.
        let tty = unsafe { libc::isatty(2) } == 1;
        let term = match std::env::var("TERM").ok().filter(|t| !t.is_empty() && t != "unknown") {
            Some(_) if !tty => "dumb".to_string(),
            Some(t) => t,
            None if tty => "vt220".to_string(),
            None => "dumb".to_string(),
        };
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u16>().ok()).filter(|v| *v > 0);
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ fills the winsize we pass.
        let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
        let (cols, rows) = if ok && ws.ws_col > 0 && ws.ws_row > 0 { (ws.ws_col, ws.ws_row) } else { (80, 24) };
        Term { term, columns: env("COLUMNS").unwrap_or(cols), rows: env("LINES").unwrap_or(rows) }
    }
}

/// The runtime kernel command line of a VM (upstream's `finalize_kernel_command_line_extra`
/// for `vm`): `term` is the terminal of qemu's console, `None` for systemd-vmspawn, which
/// sets up the console itself.
pub fn kernel_command_line_extra(config: &Config, term: Option<&Term>) -> Vec<String> {
    let extra = config.strings("KernelCommandLineExtra");
    let mut out = super::kernel_command_line_base(&extra);
    out.push("rw".into());
    out.push("module_blacklist=vmw_vmci".into());
    if let Some(Term { term: t, columns: c, rows: r }) = term {
        out.extend([format!("systemd.tty.columns.hvc0={c}"), format!("systemd.tty.rows.hvc0={r}")]);
        out.push(format!("systemd.tty.term.hvc0={t}"));
    }
    if !extra.iter().any(|s| s.starts_with("ip=")) {
        out.extend(["ip=enc0:any", "ip=enp0s1:any", "ip=enp0s2:any", "ip=host0:any", "ip=none"].map(String::from));
    }
    if !extra.iter().any(|s| s.starts_with("loglevel=")) {
        out.push("loglevel=4".into());
    }
    let console = config.str("Console").unwrap_or("native");
    match term {
        Some(Term { term: t, columns: c, rows: r }) if !matches!(console, "gui" | "headless") => {
            out.push(format!("systemd.tty.term.console={t}"));
            out.push(format!("systemd.tty.columns.console={c}"));
            out.push(format!("systemd.tty.rows.console={r}"));
            out.push("console=hvc0".into());
            out.push(format!("TERM={t}"));
        }
        _ if console == "gui" && config.architecture().is_arm_variant() => out.push("console=tty0".into()),
        _ => {}
    }
    out.extend(super::quote_extras(&extra));
    out
}

/// How the guest's CPU runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    /// KVM; with qemu ≥ 9.0 through the passed `/dev/kvm` descriptor.
    Kvm {
        fd: Option<RawFd>,
    },
    Tcg,
}

/// A drive of `Drives=` with its backing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveArg {
    pub id: String,
    pub options: Option<String>,
    pub file: PathBuf,
}

/// Everything [`command_line`] needs besides the configuration, resolved by
/// [`run_vm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// `systemd-pty-forward` (interactive and read-only consoles).
    pub pty_forward: Option<PathBuf>,
    pub qemu: PathBuf,
    pub cpus: u32,
    pub accel: Accel,
    pub firmware: Fw,
    /// UEFI firmware with the machine's variable store and its format.
    pub ovmf: Option<(Ovmf, PathBuf, String)>,
    /// `(vhostfd, cid)` of the vsock device.
    pub vsock: Option<(RawFd, u32)>,
    /// Host port forwarded to the guest's port 22 (when there is no vsock).
    pub ssh_port: Option<u16>,
    /// The image (or its ephemeral copy) and its size.
    pub image: PathBuf,
    pub image_size: u64,
    pub page_size: u64,
    pub kernel: Option<PathBuf>,
    /// The kernel is a unified kernel image (it takes the command line from SMBIOS).
    pub kernel_is_uki: bool,
    pub initrd: Option<PathBuf>,
    /// `(socket, tag)` of each virtiofsd.
    pub virtiofs: Vec<(PathBuf, String)>,
    /// The swtpm control socket.
    pub tpm: Option<PathBuf>,
    /// SMBIOS type 11 files, one per credential.
    pub smbios_credentials: Vec<PathBuf>,
    /// `(name, file)` credentials passed with fw_cfg.
    pub fw_cfg_credentials: Vec<(String, PathBuf)>,
    /// The kernel command line: `-append` (direct boot of a non-UKI kernel) or SMBIOS extras.
    pub kernel_command_line: Vec<String>,
    pub drives: Vec<DriveArg>,
    /// The arguments after the verb.
    pub passthrough: Vec<String>,
}

fn kernel_type(path: &Path) -> Result<KernelType> {
    mkosi_formats::pe::kernel_type_of(path).with_context(|| format!("reading {}", path.display()))
}

/// The qemu command line (with `systemd-pty-forward` in front when the console asks for it).
pub fn command_line(config: &Config, i: &Inputs) -> Result<Vec<OsString>> {
    let arch = config.architecture();
    let mut a: Vec<OsString> = Vec::new();
    fn s(a: &mut Vec<OsString>, items: &[&str]) {
        a.extend(items.iter().map(OsString::from));
    }
    let console = config.str("Console").unwrap_or("native");
    let name = super::nspawn::machine_name(config);
    if let Some(fwd) = &i.pty_forward {
        a.push(fwd.clone().into());
        s(&mut a, &["--background=48;2;12;51;19", &format!("--title=Virtual Machine {name}")]);
        if console == "read-only" {
            s(&mut a, &["--read-only"]);
        }
    }
    a.push(i.qemu.clone().into());

    let ram_mib = config.int("RAM").unwrap_or(2 << 30) as u64 / (1 << 20);
    let shm = !config.list("RuntimeTrees").is_empty()
        || config.bool("RuntimeBuildSources")
        || config.output_format() == OutputFormat::Directory;
    let mut machine = format!("type={}", default_machine(arch));
    if i.firmware.is_uefi() && arch.is_x86_variant() {
        machine.push_str(if i.firmware == Fw::UefiSecureBoot { ",smm=on" } else { ",smm=off" });
    }
    if shm {
        machine.push_str(",memory-backend=mem");
    }
    if config.bool("CXL") && (arch.is_x86_variant() || arch.is_arm_variant()) {
        machine.push_str(",cxl=on");
    }
    if arch.is_x86_variant() {
        machine.push_str(",hpet=off");
    }
    let mut memory = format!("{ram_mib}M");
    if let Some(max) = config.int("MaxMem") {
        memory.push_str(&format!(",maxmem={}M", max as u64 / (1 << 20)));
    }
    s(&mut a, &["-machine", &machine, "-smp", &i.cpus.to_string(), "-m", &memory]);
    s(&mut a, &["-object", "rng-random,filename=/dev/urandom,id=rng0"]);
    s(&mut a, &["-device", "virtio-rng-pci,rng=rng0,id=rng-device0"]);
    s(&mut a, &["-device", "virtio-balloon,free-page-reporting=on", "-no-user-config"]);
    if shm {
        s(&mut a, &["-object", &format!("memory-backend-memfd,id=mem,size={ram_mib}M,share=on")]);
    }

    let nic_model = if matches!(arch, Architecture::S390 | Architecture::S390x) { "virtio" } else { "virtio-net-pci" };
    match config.str("RuntimeNetwork").unwrap_or("user") {
        "interface" => s(&mut a, &["-nic", "tap,script=no,model=virtio-net-pci"]),
        "none" => s(&mut a, &["-nic", "none"]),
        _ => {
            let mut nic = format!("user,model={nic_model}");
            if let Some(port) = i.ssh_port {
                nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:22"));
            }
            s(&mut a, &["-nic", &nic]);
        }
    }

    match i.accel {
        Accel::Kvm { fd } => {
            let mut accel = "kvm".to_string();
            if let Some(fd) = fd {
                s(&mut a, &["--add-fd", &format!("fd={fd},set=1,opaque=/dev/kvm")]);
                accel.push_str(",device=/dev/fdset/1");
            }
            s(&mut a, &["-cpu", "host", "-accel", &accel]);
        }
        Accel::Tcg => s(&mut a, &["-cpu", "max", "-accel", "tcg"]),
    }

    if let Some((fd, cid)) = i.vsock {
        s(&mut a, &["-device", &format!("vhost-vsock-pci,guest-cid={cid},vhostfd={fd}")]);
    }

    if console == "gui" {
        s(&mut a, &["-device", if arch.is_arm_variant() { "virtio-gpu-pci" } else { "virtio-vga" }]);
        s(&mut a, &["-nodefaults", "-display", "sdl,gl=on", "-audio", "driver=pipewire,model=virtio"]);
    } else {
        s(&mut a, &["-nographic", "-nodefaults"]);
        if console != "headless" {
            s(&mut a, &["-chardev", "stdio,mux=on,id=console,signal=off"]);
            s(&mut a, &["-device", "virtio-serial-pci,id=mkosi-virtio-serial-pci"]);
            s(&mut a, &["-device", "virtconsole,chardev=console", "-mon", "console"]);
        }
    }

    if i.firmware.is_uefi() {
        let Some((fw, vars, vars_format)) = &i.ovmf else { bail!("UEFI firmware was not resolved") };
        let code = path_str(&fw.code)?;
        s(
            &mut a,
            &["-drive", &format!("if=pflash,format={},readonly=on,file={}", fw.code_format, q::escape_option(code))],
        );
        let vars = path_str(vars)?;
        s(&mut a, &["-drive", &format!("file={},if=pflash,format={vars_format}", q::escape_option(vars))]);
        if i.firmware == Fw::UefiSecureBoot && !arch.is_arm_variant() {
            s(&mut a, &["-global", "ICH9-LPC.disable_s3=1"]);
            s(&mut a, &["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
    }

    if let Some(k) = &i.kernel {
        s(&mut a, &["-kernel", path_str(k)?]);
    }
    for (n, (sock, tag)) in i.virtiofs.iter().enumerate() {
        let id = format!("virtiofs{n}");
        s(&mut a, &["-chardev", &format!("socket,id={id},path={}", q::escape_option(path_str(sock)?))]);
        s(&mut a, &["-device", &format!("vhost-user-fs-pci,queue-size=1024,chardev={id},tag={tag}")]);
    }
    if config.output_format() == OutputFormat::Cpio {
        s(&mut a, &["-initrd", path_str(&i.image)?]);
    } else if let Some(initrd) = &i.initrd {
        s(&mut a, &["-initrd", path_str(initrd)?]);
    }

    if matches!(config.output_format(), OutputFormat::Disk | OutputFormat::Esp) {
        let removable = config.bool("Removable");
        let mut disk_type = config.str("DiskType").unwrap_or("virtio-blk");
        if removable && !matches!(disk_type, "virtio-scsi" | "scsi-cd") {
            disk_type = "virtio-scsi";
        }
        if matches!(disk_type, "virtio-scsi" | "scsi-cd") {
            s(&mut a, &["-device", "virtio-scsi-pci,id=mkosi"]);
        }
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let blockdev = [
            "driver=raw".to_string(),
            "node-name=mkosi".into(),
            "discard=unmap".into(),
            "file.driver=file".into(),
            format!("file.filename={}", q::escape_option(path_str(&i.image)?)),
            "file.aio=io_uring".into(),
            format!("cache.direct={}", yes_no(i.image_size.is_multiple_of(i.page_size))),
            format!("cache.no-flush={}", yes_no(config.bool("Ephemeral"))),
        ]
        .join(",");
        let mut device = match disk_type {
            "virtio-scsi" => "scsi-hd".to_string(),
            "nvme" => "nvme,serial=mkosi".to_string(),
            "scsi-cd" => "scsi-cd".to_string(),
            _ => "virtio-blk-pci".to_string(),
        };
        if removable && matches!(disk_type, "virtio-scsi" | "scsi-cd") {
            device.push_str(",device_id=mkosi,removable=on");
        }
        device.push_str(",drive=mkosi,bootindex=1");
        s(&mut a, &["-blockdev", &blockdev, "-device", &device]);
    }

    if let Some(sock) = &i.tpm {
        s(&mut a, &["-chardev", &format!("socket,id=chrtpm,path={}", q::escape_option(path_str(sock)?))]);
        s(&mut a, &["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"]);
        if arch.is_x86_variant() {
            s(&mut a, &["-device", "tpm-tis,tpmdev=tpm0"]);
        } else if arch.is_arm_variant() {
            s(&mut a, &["-device", "tpm-tis-device,tpmdev=tpm0"]);
        }
    }

    for f in &i.smbios_credentials {
        s(&mut a, &["-smbios", &format!("type=11,path={}", q::escape_option(path_str(f)?))]);
    }
    for (name, f) in &i.fw_cfg_credentials {
        s(
            &mut a,
            &["-fw_cfg", &format!("name=opt/io.systemd.credentials/{name},file={}", q::escape_option(path_str(f)?))],
        );
    }

    let kcl = i.kernel_command_line.join(" ");
    if i.kernel.is_some() && (!i.kernel_is_uki || !supports_smbios(arch, i.firmware)) {
        let mut append = config.strings("KernelCommandLine");
        append.extend(i.kernel_command_line.iter().cloned());
        s(&mut a, &["-append", &append.join(" ")]);
    } else if supports_smbios(arch, i.firmware) {
        let kcl = q::escape_option(&kcl);
        s(&mut a, &["-smbios", &format!("type=11,value=io.systemd.stub.kernel-cmdline-extra={kcl}")]);
        s(&mut a, &["-smbios", &format!("type=11,value=io.systemd.boot.kernel-cmdline-extra={kcl}")]);
    }

    for d in &i.drives {
        let mut arg = vec![
            "driver=raw".to_string(),
            format!("node-name={}", d.id),
            "file.driver=file".into(),
            format!("file.filename={}", q::escape_option(path_str(&d.file)?)),
            "file.aio=io_uring".into(),
            "file.locking=off".into(),
            "cache.direct=on".into(),
            "cache.no-flush=yes".into(),
        ];
        if let Some(o) = &d.options {
            arg.push(o.clone());
        }
        s(&mut a, &["-blockdev", &arg.join(",")]);
    }

    a.extend(config.strings("QemuArgs").into_iter().map(OsString::from));
    a.extend(i.passthrough.iter().map(OsString::from));
    Ok(a)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not valid UTF-8", p.display()))
}

/// The kernel booted directly: `Linux=` (with `&b` expanded), else a `-kernel`
/// among the arguments after the verb.
pub fn configured_kernel(config: &Config, passthrough: &[String]) -> Option<PathBuf> {
    if let Some(linux) = config.str("Linux").filter(|s| !s.is_empty()) {
        let build = config.build_subdir().map(|p| p.display().to_string()).unwrap_or_default();
        let expanded = mkosi_config::config::expand_delayed_specifiers(linux, |c| match c {
            '&' => Some("&".into()),
            'b' => Some(build.clone()),
            _ => None,
        });
        return Some(PathBuf::from(expanded));
    }
    let pos = passthrough.iter().position(|a| a == "-kernel")?;
    passthrough.get(pos + 1).map(PathBuf::from)
}

/// The `root=` of a direct kernel boot of a disk image (upstream's `finalize_root`):
/// `roothash=`/`usrhash=` of a verity-protected root or /usr (the hash is the data
/// partition's UUID followed by its verity partition's, as systemd-repart derives
/// them), else the root or /usr partition by PARTUUID.
pub fn finalize_root(entries: &[mkosi_formats::gpt::Entry]) -> Option<String> {
    use mkosi_formats::gpt::{Designator, PartitionType};
    let designator = |e: &mkosi_formats::gpt::Entry| PartitionType::from_uuid(e.type_uuid).designator;
    let hash = |data: Designator, verity: Designator| {
        let d = entries.iter().find(|e| designator(e) == Some(data))?;
        let v = entries.iter().find(|e| designator(e) == Some(verity))?;
        Some(format!("{}{}", d.uuid.simple(), v.uuid.simple()))
    };
    if let Some(h) = hash(Designator::Root, Designator::RootVerity) {
        return Some(format!("roothash={h}"));
    }
    if let Some(h) = hash(Designator::Usr, Designator::UsrVerity) {
        return Some(format!("usrhash={h}"));
    }
    if let Some(e) = entries.iter().find(|e| designator(e) == Some(Designator::Root)) {
        return Some(format!("root=PARTUUID={}", e.uuid));
    }
    entries.iter().find(|e| designator(e) == Some(Designator::Usr)).map(|e| format!("mount.usr=PARTUUID={}", e.uuid))
}

/// `io.systemd.credential.binary:<name>=<base64>`, the SMBIOS string of a credential.
pub fn smbios_credential(name: &str, data: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = format!("io.systemd.credential.binary:{name}=").into_bytes();
    out.extend(base64::engine::general_purpose::STANDARD.encode(data).into_bytes());
    out
}

/// The CID `VSockCID=hash` gives (sha256 of the output path, first 4 bytes little
/// endian, kept out of the well-known CIDs).
pub fn hash_to_cid(digest: &[u8]) -> u32 {
    let cid = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    cid.clamp(3, u32::MAX - 1)
}

fn output_hash(config: &Config, cwd: &Path) -> sha2::Sha256 {
    use sha2::Digest as _;
    let p = config.output_dir_or_cwd(cwd).join(config.output());
    let mut h = sha2::Sha256::new();
    h.update(p.as_os_str().as_encoded_bytes());
    h
}

fn cid_in_use(vfd: RawFd, cid: u32) -> Result<bool> {
    let v: u64 = cid.into();
    // SAFETY: the ioctl reads a u64 from the pointer we pass.
    if unsafe { libc::ioctl(vfd, VHOST_VSOCK_SET_GUEST_CID as _, &v) } == 0 {
        return Ok(false);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EADDRINUSE) {
        return Ok(true);
    }
    Err(e).context("VHOST_VSOCK_SET_GUEST_CID")
}

fn finalize_cid(config: &Config, cwd: &Path, vfd: RawFd) -> Result<u32> {
    use sha2::Digest as _;
    let cid = match config.int("VSockCID") {
        Some(-2) => hash_to_cid(&output_hash(config, cwd).finalize()),
        Some(n) if n >= 3 => u32::try_from(n).context("VSockCID= out of range")?,
        _ => {
            let mut h = output_hash(config, cwd);
            for i in 0u32..64 {
                let cid = hash_to_cid(&h.clone().finalize());
                if !cid_in_use(vfd, cid)? {
                    return Ok(cid);
                }
                h.update(i.to_le_bytes());
            }
            for _ in 0..64 {
                let mut b = [0u8; 4];
                File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).context("reading /dev/urandom")?;
                let cid = hash_to_cid(&b);
                if !cid_in_use(vfd, cid)? {
                    return Ok(cid);
                }
            }
            bail!("Failed to find an unused VSock connection ID");
        }
    };
    if cid_in_use(vfd, cid)? {
        return Err(die(
            format!("VSock connection ID {cid} is already in use by another virtual machine"),
            "Use VSockCID=auto to have mkosi automatically find a free vsock connection ID",
        ));
    }
    Ok(cid)
}

/// Open a device node for qemu, warning like upstream when it is not there.
fn open_device(path: &str, what: &str) -> Result<Option<OwnedFd>> {
    match std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => Ok(Some(f.into())),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) => {
                mkosi_config::parse::log::warn(&format!("{path} not found. Not adding {what} to the virtual machine."));
                Ok(None)
            }
            Some(libc::EPERM) | Some(libc::EACCES) => {
                mkosi_config::parse::log::warn(&format!(
                    "Permission denied to access {path}. Not adding {what} to the virtual machine. (Maybe a kernel \
                     module could not be loaded?)"
                ));
                Ok(None)
            }
            _ => Err(e).with_context(|| format!("opening {path}")),
        },
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// `qemu --version` → (major, minor).
fn qemu_version(qemu: &Path) -> Result<(u32, u32)> {
    let out = Command::new(qemu).arg("--version").output().with_context(|| format!("running {}", qemu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_qemu_version(&text).with_context(|| format!("cannot read the version of {} from {text:?}", qemu.display()))
}

pub fn parse_qemu_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().nth(3)?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next().unwrap_or("0").parse().ok()?))
}

fn find_qemu(arch: Architecture) -> Result<PathBuf> {
    let name = format!("qemu-system-{}", arch.to_qemu().unwrap_or("unknown"));
    if let Some(p) = find_binary(&name) {
        return Ok(p);
    }
    if arch == Architecture::native() {
        let p = Path::new("/usr/libexec/qemu-kvm");
        if p.exists() {
            return Ok(p.to_path_buf());
        }
    }
    let package = if arch.is_x86_variant() {
        "qemu-system-x86".to_string()
    } else {
        format!("qemu-system-{}", arch.to_qemu().unwrap_or("misc"))
    };
    Err(die(format!("qemu not found (looked for {name})."), format!("Install the '{package}' package")))
}

/// Whether KVM works for guests here. The answer of the probe is kept in the runtime
/// directory for the current boot, so only the first `mkosi vm` after a reboot pays for it.
fn kvm_works(qemu: &Path) -> q::KvmProbe {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let qemu_id = std::fs::metadata(qemu).map(|m| format!("{}:{}", m.ino(), m.mtime())).unwrap_or_default();
    let key = format!("{}|{}|{qemu_id}", boot_id.trim(), qemu.display());
    let cache = runtime_dir().join("mkosi/kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((k, rest)) = text.split_once('\n') {
            if k == key {
                let (usable, reason) = rest.split_once('\n').unwrap_or((rest, ""));
                return q::KvmProbe { usable: usable == "yes", reason: reason.trim().to_string() };
            }
        }
    }
    let probe = q::probe_kvm(&qemu.to_string_lossy(), Duration::from_secs(20));
    if let Some(parent) = cache.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&cache, format!("{key}\n{}\n{}\n", if probe.usable { "yes" } else { "no" }, probe.reason));
    probe
}

/// The invoking user's runtime directory (`$XDG_RUNTIME_DIR`, `/run/user/<uid>`, or `/run` for root).
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if super::is_root() {
        return PathBuf::from("/run");
    }
    // SAFETY: getuid has no preconditions.
    PathBuf::from(format!("/run/user/{}", unsafe { libc::getuid() }))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// A helper process (swtpm, virtiofsd, systemd-journal-remote), stopped when dropped.
type Daemon = q::ChildGuard;

/// Let `cmd` inherit `fd` (as the same number).
fn inherit_fd(cmd: &mut Command, fd: RawFd) {
    // SAFETY: fcntl is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Start swtpm with fresh state for this machine; returns its control socket.
fn start_swtpm(dir: &Path, daemons: &mut Vec<Daemon>) -> Result<PathBuf> {
    let setup = find_binary("swtpm_setup")
        .ok_or_else(|| die("TPM=yes needs swtpm_setup, which was not found", "Install the 'swtpm-tools' package"))?;
    let swtpm = find_binary("swtpm")
        .ok_or_else(|| die("TPM=yes needs swtpm, which was not found", "Install the 'swtpm' package"))?;
    let state = dir.join("swtpm");
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let mut cmd = Command::new(&setup);
    cmd.arg("--tpm-state").arg(&state).args(["--tpm2", "--pcr-banks", "sha256", "--config", "/dev/null"]);
    let version =
        Command::new(&setup).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let newer = version.ok().and_then(|v| {
        let word = v.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?.to_string();
        Some(mkosi_config::version::compare_versions(word.trim_end_matches(','), "0.10.0") != std::cmp::Ordering::Less)
    });
    if newer == Some(true) {
        cmd.args(["--profile-name=custom", "--profile-remove-disabled=check"]);
    }
    let out = cmd.output().with_context(|| format!("running {}", setup.display()))?;
    if !out.status.success() {
        bail!(
            "swtpm_setup failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let sock = state.join("sock");
    let listener =
        std::os::unix::net::UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(&swtpm);
    cmd.args(["socket", "--tpm2", "--tpmstate"])
        .arg(format!("dir={}", state.display()))
        .args(["--ctrl", &format!("type=unixio,fd={fd}")])
        .stdin(Stdio::null());
    inherit_fd(&mut cmd, fd);
    let child = cmd.spawn().with_context(|| format!("running {}", swtpm.display()))?;
    drop(listener);
    daemons.push(q::ChildGuard::new(child));
    Ok(sock)
}

/// virtiofsd: the Rust one (`--shared-dir`) or qemu's older C one (`-o source=`).
fn find_virtiofsd() -> Option<PathBuf> {
    find_binary("virtiofsd").or_else(|| {
        ["/usr/libexec/virtiofsd", "/usr/lib/virtiofsd", "/usr/lib/qemu/virtiofsd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    })
}

/// Share `directory` with the guest through a virtiofsd; returns its socket. When the
/// directory belongs to another user than mkosi runs as, virtiofsd runs as that user
/// in a user namespace that maps it to root (so the guest sees root's files).
fn start_virtiofsd(dir: &Path, directory: &Path, uidmap: bool, daemons: &mut Vec<Daemon>) -> Result<PathBuf> {
    let virtiofsd = find_virtiofsd().ok_or_else(|| {
        die(
            "virtiofsd must be installed to boot directory images or use RuntimeTrees= with mkosi vm",
            "Install the 'virtiofsd' package (on Debian 12: 'qemu-system-common')",
        )
    })?;
    let legacy = virtiofsd.starts_with("/usr/lib/qemu");
    let md = std::fs::metadata(directory).with_context(|| format!("{} does not exist", directory.display()))?;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let switch = uidmap && (md.uid() != uid || md.gid() != gid);
    let ctx = dir.join(format!("virtiofsd-{}", daemons.len()));
    std::fs::create_dir_all(&ctx).with_context(|| format!("creating {}", ctx.display()))?;
    let sock = ctx.join("sock");
    let listener =
        std::os::unix::net::UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    if switch {
        for p in [dir, ctx.as_path(), sock.as_path()] {
            std::os::unix::fs::chown(p, Some(md.uid()), Some(md.gid()))
                .with_context(|| format!("chown {}", p.display()))?;
        }
    }
    let fd = listener.as_raw_fd();
    let handles = if super::is_root() && !uidmap { "prefer" } else { "never" };
    let mut argv: Vec<OsString> = Vec::new();
    if legacy {
        argv.push(format!("--fd={fd}").into());
        argv.push("-o".into());
        argv.push(format!("source={}", directory.display()).into());
        for o in ["xattr", "sandbox=chroot", "log_level=err", "modcaps=-mknod"] {
            argv.push("-o".into());
            argv.push(o.into());
        }
    } else {
        argv.push("--shared-dir".into());
        argv.push(directory.into());
        for o in ["--xattr", "--no-announce-submounts", "--sandbox=chroot", "--log-level=error", "--modcaps=-mknod"] {
            argv.push(o.into());
        }
        argv.push(format!("--inode-file-handles={handles}").into());
        argv.push("--fd".into());
        argv.push(fd.to_string().into());
    }
    let mut cmd = if switch {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", md.uid()))
            .arg(format!("--regid={}", md.gid()))
            .arg("--clear-groups")
            .args(["unshare", "--user", "--map-root-user", "--"])
            .arg(&virtiofsd);
        c
    } else {
        Command::new(&virtiofsd)
    };
    cmd.args(&argv).stdin(Stdio::null());
    inherit_fd(&mut cmd, fd);
    let child = cmd.spawn().with_context(|| format!("running {}", virtiofsd.display()))?;
    drop(listener);
    daemons.push(q::ChildGuard::new(child));
    Ok(sock)
}

/// Add a virtiofs share mounted at `dst` in the guest (an `fstab.extra` credential line).
fn add_virtiofs_mount(creds: &Path, sock: PathBuf, dst: &str, shares: &mut Vec<(PathBuf, String)>) -> Result<()> {
    if dst.len() > VIRTIOFS_MAX_TAG_LEN {
        bail!("virtio-fs tag {dst} derived from destination is too long");
    }
    let path = creds.join("fstab.extra");
    let mut fstab = std::fs::read_to_string(&path).unwrap_or_default();
    if !fstab.is_empty() && !fstab.ends_with('\n') {
        fstab.push('\n');
    }
    fstab.push_str(&format!("{dst} {dst} virtiofs x-initrd.mount\n"));
    std::fs::write(&path, fstab).with_context(|| format!("writing {}", path.display()))?;
    shares.push((sock, dst.to_string()));
    Ok(())
}

/// Grow a disk image to `RuntimeSize=` (rounded up to the page size) and move its
/// backup GPT to the new end, as `systemd-repart --size=` does with no definitions.
pub fn apply_runtime_size(image: &Path, size: u64) -> Result<()> {
    use mkosi_formats::gpt;
    let size = round_up(size, page_size());
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let current = f.metadata()?.len();
    if size < current {
        bail!("RuntimeSize= ({size} bytes) is smaller than the image {} ({current} bytes)", image.display());
    }
    if size == current {
        return Ok(());
    }
    let ss = gpt::probe_sector_size(&mut f).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
    let (disk_uuid, entries) = gpt::read(&mut f, ss).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
    f.set_len(size).with_context(|| format!("growing {}", image.display()))?;
    gpt::write(&mut f, ss, disk_uuid, &entries).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
    Ok(())
}

/// The backing file of a group of drives sharing a file id.
fn drive_file(config: &Config, drive: &serde_json::Value, tmp: &mut Vec<tempfile::NamedTempFile>) -> Result<PathBuf> {
    let id = drive.get("Id").and_then(|v| v.as_str()).unwrap_or_default();
    let size = drive.get("Size").and_then(|v| v.as_u64()).unwrap_or_default();
    let dir = PathBuf::from(drive.get("Directory").and_then(|v| v.as_str()).unwrap_or("/var/tmp"));
    let persist =
        drive.get("Flags").and_then(|v| v.as_array()).is_some_and(|f| f.iter().any(|x| x.as_str() == Some("persist")));
    let name = format!("mkosi-drive-{}-{id}", super::nspawn::machine_name(config));
    let (file, path) = if persist {
        let p = dir.join(&name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        (f, p)
    } else {
        let t = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempfile_in(&dir)
            .with_context(|| format!("creating a drive in {}", dir.display()))?;
        let f = t.reopen()?;
        let p = t.path().to_path_buf();
        tmp.push(t);
        (f, p)
    };
    make_nocow(&path);
    file.set_len(round_up(size, page_size())).with_context(|| format!("sizing {}", path.display()))?;
    Ok(path)
}

/// The machine's state file (`$XDG_RUNTIME_DIR/mkosi/machine/<machine>.json`), removed
/// when dropped.
pub struct StateFile(PathBuf);

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn state_dir() -> PathBuf {
    runtime_dir().join("mkosi/machine")
}

/// Write the state file `mkosi ssh` reads; refuses a second machine of the same name.
fn write_state(config: &Config, cid: Option<u32>, ssh_port: Option<u16>) -> Result<StateFile> {
    let dir = state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = super::flock(&dir, libc::LOCK_EX).with_context(|| format!("locking {}", dir.display()))?;
    let name = super::nspawn::machine_name(config);
    let p = dir.join(format!("{name}.json"));
    if let Ok(text) = std::fs::read_to_string(&p) {
        let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let alive =
            state.get("Pid").and_then(|v| v.as_u64()).is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if alive {
            return Err(die(
                format!("Another virtual machine named {name} is already running"),
                "Use --machine to specify a different virtual machine name",
            ));
        }
    }
    let mut state = serde_json::Map::new();
    state.insert("Machine".into(), name.clone().into());
    state.insert("Pid".into(), std::process::id().into());
    if let Some(cid) = cid {
        state.insert("ProxyCommand".into(), format!("socat - VSOCK-CONNECT:{cid}:%p").into());
    }
    if let Some(port) = ssh_port {
        state.insert("SshHost".into(), "127.0.0.1".into());
        state.insert("SshPort".into(), port.into());
    }
    state.insert("SshKey".into(), config.path("SshKey").map(|p| p.display().to_string()).into());
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(state))?;
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(StateFile(p))
}

/// A free TCP port on 127.0.0.1 for the SSH forward.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// Run `mkosi vm`.
pub fn run_vm(args: &Args, config: &Config, host: &Host, cwd: &Path) -> Result<()> {
    check_config(config)?;
    let format = config.output_format();
    let arch = config.architecture();
    let kvm_setting = config.str("KVM").unwrap_or("auto");

    let kvm_fd = if kvm_setting != "disabled" { open_device("/dev/kvm", "KVM acceleration")? } else { None };
    let vsock_fd = if config.str("VSock").unwrap_or("auto") != "disabled" {
        open_device("/dev/vhost-vsock", "a VSock device")?
    } else {
        None
    };

    let qemu = find_qemu(arch)?;
    let version = qemu_version(&qemu)?;
    let accel = finalize_accel(kvm_setting, arch, kvm_fd.as_ref(), &qemu, version);
    if kvm_setting == "enabled" && accel == Accel::Tcg {
        bail!("KVM acceleration requested but cannot access /dev/kvm");
    }
    if config.str("VSock") == Some("enabled") && vsock_fd.is_none() {
        bail!("VSock requested but cannot access /dev/vhost-vsock");
    }
    // As upstream, the guest's journald forwards over vsock. (Over TCP through the user
    // network it blocked the guest's journald during boot, before the network was up.)
    if config.path("ForwardJournal").is_some() && vsock_fd.is_none() {
        return Err(die(
            "ForwardJournal= needs a vsock device (/dev/vhost-vsock), which is not available",
            "Load the vhost_vsock kernel module, or boot without ForwardJournal=",
        ));
    }
    let console = config.str("Console").unwrap_or("native");
    let pty_forward = if matches!(console, "interactive" | "read-only") {
        Some(find_binary("systemd-pty-forward").ok_or_else(|| {
            die(
                format!("Console mode {console} requested but systemd-pty-forward not found"),
                "Use Console=native, or install systemd 256 or newer (systemd-pty-forward)",
            )
        })?)
    } else {
        None
    };

    let outdir = config.output_dir_or_cwd(cwd);
    let (kernel, ktype, firmware) = finalize_kernel(config, &args.cmdline, &outdir)?;

    let work = tempfile::Builder::new().prefix("mkosi-vm-").tempdir().context("creating a temporary directory")?;
    let mut daemons: Vec<Daemon> = Vec::new();

    let ovmf = if firmware.is_uefi() { Some(finalize_ovmf(config, firmware, work.path())?) } else { None };

    let target = super::acquire_target(config, &outdir.join(config.output_with_compression()))?;
    if format == OutputFormat::Disk {
        if let Some(size) = config.int("RuntimeSize") {
            apply_runtime_size(&target.path, size as u64)?;
        }
    }

    let creds = super::finalize_credentials(config)?;
    let cdir = creds.dir.path();
    let mut kcl: Vec<String> = Vec::new();
    let mut virtiofs: Vec<(PathBuf, String)> = Vec::new();
    let runtime_kcl = kernel_command_line_extra(config, Some(&Term::detect()));
    if kernel.is_some() {
        let extra = &runtime_kcl;
        let user_root = extra.iter().any(|s| s.starts_with("root="));
        if user_root {
            // The user's root= wins.
        } else if format == OutputFormat::Disk {
            let mut f = File::open(&target.path).with_context(|| format!("opening {}", target.path.display()))?;
            let ss = mkosi_formats::gpt::probe_sector_size(&mut f).map_err(|e| anyhow::anyhow!("{e}"))?;
            let (_, entries) = mkosi_formats::gpt::read(&mut f, ss).map_err(|e| anyhow::anyhow!("{e}"))?;
            let root = finalize_root(&entries)
                .context("Cannot perform a direct kernel boot without a root or usr partition")?;
            kcl.push(root);
        } else if format == OutputFormat::Directory {
            let sock = start_virtiofsd(work.path(), &target.path, false, &mut daemons)?;
            virtiofs.push((sock, "root".into()));
            kcl.extend(["root=root".to_string(), "rootfstype=virtiofs".to_string()]);
        }
    }
    if config.bool("RuntimeBuildSources") {
        for (src, dst) in config.trees("BuildSources") {
            let dst = Path::new("/work/src")
                .join(dst.as_deref().map(|d| d.strip_prefix("/").unwrap_or(d)).unwrap_or(Path::new("")));
            let sock = start_virtiofsd(work.path(), &src, true, &mut daemons)?;
            add_virtiofs_mount(cdir, sock, &dst.display().to_string(), &mut virtiofs)?;
        }
        if let Some(b) = config.build_subdir() {
            let sock = start_virtiofsd(work.path(), &b, true, &mut daemons)?;
            add_virtiofs_mount(cdir, sock, "/work/build", &mut virtiofs)?;
        }
    }
    for (src, dst) in config.trees("RuntimeTrees") {
        let dst = Path::new("/root/src")
            .join(dst.as_deref().map(|d| d.strip_prefix("/").unwrap_or(d)).unwrap_or(Path::new("")));
        let sock = start_virtiofsd(work.path(), &src, true, &mut daemons)?;
        let dst = dst.display().to_string();
        add_virtiofs_mount(cdir, sock, dst.trim_end_matches('/'), &mut virtiofs)?;
    }

    let mut _initrd_guard = RemoveFile(None);
    let initrd = if format != OutputFormat::Cpio
        && kernel.is_some()
        && ktype != Some(KernelType::Uki)
        && !args.cmdline.iter().any(|a| a == "-initrd")
        && firmware != Fw::LinuxNoinitrd
    {
        finalize_initrd(config, &outdir, &mut _initrd_guard)?
    } else {
        None
    };

    let tpm_setting = config.str("TPM").unwrap_or("auto");
    let tpm = if tpm_setting == "enabled"
        || (tpm_setting == "auto"
            && firmware.is_uefi()
            && find_binary("swtpm").is_some()
            && find_binary("swtpm_setup").is_some())
    {
        Some(start_swtpm(work.path(), &mut daemons)?)
    } else {
        None
    };

    let cid = match &vsock_fd {
        Some(fd) => Some(finalize_cid(config, cwd, fd.as_raw_fd())?),
        None => None,
    };
    let vsock_listener = match cid {
        Some(_) => Some(vsock_listen(cdir)?),
        None => None,
    };
    let ssh_port = if cid.is_none() && config.str("RuntimeNetwork").unwrap_or("user") == "user" {
        Some(free_port()?)
    } else {
        None
    };
    if let (Some(journal), Some(_)) = (config.path("ForwardJournal"), cid) {
        let (listener, address) = vsock_listener_address()?;
        start_journal_remote(&journal, listener, &mut daemons)?;
        std::fs::write(cdir.join("journal.forward_to_socket"), address)
            .context("writing the journal.forward_to_socket credential")?;
    }

    let smbios_dir = work.path().join("smbios");
    std::fs::create_dir_all(&smbios_dir)?;
    let mut smbios_credentials = Vec::new();
    let mut fw_cfg_credentials = Vec::new();
    for (name, path) in creds.files()? {
        let data = std::fs::read(&path).with_context(|| format!("reading credential {name}"))?;
        if supports_smbios(arch, firmware) {
            let f = smbios_dir.join(&name);
            std::fs::write(&f, smbios_credential(&name, &data))?;
            smbios_credentials.push(f);
        } else if supports_fw_cfg(arch) && format!("opt/io.systemd.credentials/{name}").len() <= 55 {
            fw_cfg_credentials.push((name, path));
        } else if kernel.is_some() {
            use base64::Engine as _;
            kcl.push(format!(
                "systemd.set_credential_binary={name}:{}",
                base64::engine::general_purpose::STANDARD.encode(&data)
            ));
        }
    }
    kcl.extend(runtime_kcl);

    let mut drive_tmp = Vec::new();
    let drives = finalize_drives(config, &mut drive_tmp)?;

    let cpus = finalize_cpus(config);
    let image_size = std::fs::metadata(&target.path).map(|m| m.len()).unwrap_or(0);
    let inputs = Inputs {
        pty_forward,
        qemu,
        cpus,
        accel,
        firmware,
        ovmf,
        vsock: vsock_fd.as_ref().zip(cid).map(|(fd, cid)| (fd.as_raw_fd(), cid)),
        ssh_port,
        image: target.path.clone(),
        image_size,
        page_size: page_size(),
        kernel,
        kernel_is_uki: ktype == Some(KernelType::Uki),
        initrd,
        virtiofs,
        tpm,
        smbios_credentials,
        fw_cfg_credentials,
        kernel_command_line: kcl,
        drives,
        passthrough: args.cmdline.clone(),
    };
    let argv = command_line(config, &inputs)?;
    let _state = if cid.is_some() || ssh_port.is_some() { Some(write_state(config, cid, ssh_port)?) } else { None };
    let register = finalize_register(config)?;

    mkosi_build::log::set_debug(args.debug);
    mkosi_build::log::debug(&format!("+ {}", shell_words(&argv)));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.envs(mkosi_build::context::finalize_environment(config, host));
    // Give qemu its own open file descriptions of stdio (it makes them non-blocking).
    for (fd, write) in [(0, false), (1, true), (2, true)] {
        let p = format!("/proc/self/fd/{fd}");
        if let Ok(f) = std::fs::OpenOptions::new().read(!write).write(write).open(&p) {
            match fd {
                0 => cmd.stdin(f),
                1 => cmd.stdout(f),
                _ => cmd.stderr(f),
            };
        }
    }
    for fd in [kvm_fd.as_ref().map(|f| f.as_raw_fd()), vsock_fd.as_ref().map(|f| f.as_raw_fd())].into_iter().flatten() {
        inherit_fd(&mut cmd, fd);
    }
    let exit_status = vsock_listener.map(notify_thread);
    let image = target.path.clone();
    let result = super::run_foreground_with(&mut cmd, |pid| match &register {
        Some(socket) => register_machine(config, socket, pid, &image, cid),
        None => Ok(()),
    });
    drop(daemons);
    drop(drive_tmp);
    if let (Some(status), Ok(())) = (exit_status, &result) {
        let status = status.lock().map(|s| *s).unwrap_or(None);
        if let Some(code) = status.filter(|c| *c != 0) {
            return Err(crate::Exit(code.clamp(1, 255) as u8).into());
        }
    }
    result
}

/// The checks upstream makes before anything is started.
fn check_config(config: &Config) -> Result<()> {
    let format = config.output_format();
    if !matches!(
        format,
        OutputFormat::Disk | OutputFormat::Cpio | OutputFormat::Uki | OutputFormat::Esp | OutputFormat::Directory
    ) {
        bail!("{format} images cannot be booted in qemu");
    }
    let configured_fw = config.str("Firmware").and_then(Fw::parse);
    if matches!(format, OutputFormat::Cpio | OutputFormat::Uki | OutputFormat::Esp) {
        if let Some(fw) = configured_fw {
            if !fw.is_linux() && !fw.is_uefi() {
                bail!("{format} images cannot be booted with the '{}' firmware", config.str("Firmware").unwrap_or(""));
            }
        }
    }
    let arch = config.architecture();
    let kvm_setting = config.str("KVM").unwrap_or("auto");
    if kvm_setting == "enabled" && arch != Architecture::native() {
        bail!("KVM acceleration requested but {arch} does not match the native host architecture");
    }
    let fw_vars = config.str("FirmwareVariables").map(str::to_string);
    if matches!(fw_vars.as_deref(), Some("custom") | Some("microsoft-mok"))
        && config.path("SecureBootCertificate").is_none()
    {
        bail!("SecureBootCertificate= must be configured to use FirmwareVariables=custom|microsoft-mok");
    }
    if config.bool("BindUser") {
        bail!("mkosi vm does not support --bind-user=");
    }
    Ok(())
}

/// KVM when `/dev/kvm` could be opened, the architecture can use it and (with `KVM=auto`)
/// the probe says guests really run under it; else TCG.
fn finalize_accel(
    kvm_setting: &str,
    arch: Architecture,
    kvm_fd: Option<&OwnedFd>,
    qemu: &Path,
    version: (u32, u32),
) -> Accel {
    match kvm_fd {
        Some(fd) if can_kvm(arch) => {
            let probe = if kvm_setting == "auto" { Some(kvm_works(qemu)) } else { None };
            match probe {
                Some(p) if !p.usable => {
                    mkosi_config::parse::log::warn(&format!(
                        "/dev/kvm is there but KVM does not work here ({}); running the virtual machine with TCG. \
                         Use KVM=yes to use it anyway.",
                        p.reason
                    ));
                    Accel::Tcg
                }
                _ => Accel::Kvm { fd: (version >= QEMU_KVM_DEVICE_VERSION).then(|| fd.as_raw_fd()) },
            }
        }
        _ => Accel::Tcg,
    }
}

/// `CPUs=`, 0 meaning every CPU of the host.
pub(super) fn finalize_cpus(config: &Config) -> u32 {
    match config.int("CPUs") {
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
        _ => std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
    }
}

/// The kernel booted directly (if any), its type and the firmware.
pub(super) fn finalize_kernel(
    config: &Config,
    cmdline: &[String],
    outdir: &Path,
) -> Result<(Option<PathBuf>, Option<KernelType>, Fw)> {
    let format = config.output_format();
    let mut kernel = configured_kernel(config, cmdline);
    if matches!(format, OutputFormat::Uki | OutputFormat::Esp) && kernel.is_some() {
        mkosi_config::parse::log::warn(&format!(
            "Booting UKI output, kernel {} configured with Linux= or passed with -kernel will not be used",
            kernel.as_deref().map(|k| k.display().to_string()).unwrap_or_default()
        ));
        kernel = None;
    }
    if let Some(k) = &kernel {
        if !k.exists() {
            bail!("Kernel not found at {}", k.display());
        }
    }
    let mut ktype = match &kernel {
        Some(k) => Some(kernel_type(k)?),
        None => None,
    };
    let firmware = finalize_firmware(config, ktype);
    if kernel.is_none()
        && (firmware.is_linux() || matches!(format, OutputFormat::Cpio | OutputFormat::Directory | OutputFormat::Uki))
    {
        let o = config.output();
        let k = if firmware.is_uefi() {
            outdir.join(if format == OutputFormat::Uki { o.to_string() } else { format!("{o}.efi") })
        } else {
            outdir.join(format!("{o}.vmlinuz"))
        };
        if !k.exists() {
            return Err(die(
                format!("Kernel or UKI not found at {}, please install a kernel in the image or provide a -kernel argument to mkosi vm", k.display()),
                "Add a kernel package (linux-image-cloud-amd64 on Debian) to Packages=",
            ));
        }
        ktype = Some(kernel_type(&k)?);
        kernel = Some(k);
    }
    Ok((kernel, ktype, firmware))
}

/// The UEFI firmware, and a private copy of its variable store (`FirmwareVariables=`).
fn finalize_ovmf(config: &Config, firmware: Fw, work: &Path) -> Result<(Ovmf, PathBuf, String)> {
    let arch = config.architecture();
    let query = FirmwareQuery {
        arch: arch.to_qemu().unwrap_or("x86_64").to_string(),
        machine: default_machine(arch).to_string(),
        secure_boot: firmware == Fw::UefiSecureBoot,
        enrolled_keys: matches!(config.str("FirmwareVariables"), Some("microsoft") | Some("microsoft-mok")),
    };
    let fw = match config.path("ToolsTree").filter(|t| t.join("usr/share/qemu/firmware").is_dir()) {
        Some(t) => q::find_firmware_in(&[t.join("usr/share/qemu/firmware")], &query),
        None => q::find_firmware(&query),
    }
    .map_err(|e| anyhow::anyhow!("{e}{}", e.hint_text().map(|h| format!(" ({h})")).unwrap_or_default()))?;
    let (vars, fmt) = finalize_firmware_variables(config, &fw.vars_template, &fw.vars_format, work)?;
    Ok((fw, vars, fmt))
}

/// The machine's private UEFI variable store (`FirmwareVariables=`) made from `template`,
/// and its format.
pub fn finalize_firmware_variables(
    config: &Config,
    template: &Path,
    template_format: &str,
    work: &Path,
) -> Result<(PathBuf, String)> {
    let fw_vars = config.str("FirmwareVariables");
    let vars = work.join("ovmf-vars.fd");
    let fmt = match fw_vars {
        Some("custom") | Some("microsoft-mok") => {
            let tool = find_binary("virt-fw-vars").ok_or_else(|| {
                die(
                    "FirmwareVariables=custom|microsoft-mok needs virt-fw-vars",
                    "Install the 'python3-virt-firmware' package",
                )
            })?;
            let cert = config.path("SecureBootCertificate").context("SecureBootCertificate= is not set")?;
            let mut cmd = Command::new(tool);
            cmd.arg("--input").arg(template).arg("--output").arg(&vars);
            if fw_vars == Some("custom") {
                cmd.arg("--enroll-cert").arg(&cert).args(["--add-db", "OvmfEnrollDefaultKeys"]).arg(&cert);
                cmd.args(["--no-microsoft", "--secure-boot"]);
            } else {
                cmd.args(["--add-mok", "605dab50-e046-4300-abb6-3dd810dd8b23"]).arg(&cert);
            }
            cmd.args(["--loglevel", "WARNING"]);
            let st = cmd.status().context("running virt-fw-vars")?;
            if !st.success() {
                bail!("virt-fw-vars failed with {st}");
            }
            if fw_vars == Some("custom") {
                template_format.to_string()
            } else {
                "raw".to_string()
            }
        }
        Some("microsoft") | None => {
            std::fs::copy(template, &vars).with_context(|| format!("copying {}", template.display()))?;
            template_format.to_string()
        }
        Some(path) => {
            if !Path::new(path).exists() {
                bail!("Firmware variables file {path} does not exist");
            }
            std::fs::copy(path, &vars).with_context(|| format!("copying {path}"))?;
            "raw".to_string()
        }
    };
    Ok((vars, fmt))
}

/// The initrd of a direct kernel boot: `<output>.initrd`, else `Initrds=` joined into a
/// temporary file next to the output (removed through `guard`).
pub(super) fn finalize_initrd(config: &Config, outdir: &Path, guard: &mut RemoveFile) -> Result<Option<PathBuf>> {
    let split = outdir.join(format!("{}.initrd", config.output()));
    if split.exists() {
        return Ok(Some(split));
    }
    if config.paths("Initrds").is_empty() {
        return Ok(None);
    }
    let p = outdir.join(format!("initrd-{}", super::random_hex::<16>()?));
    let mut out = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    guard.0 = Some(p.clone());
    for i in config.paths("Initrds") {
        let mut f = File::open(&i).with_context(|| format!("opening {}", i.display()))?;
        std::io::copy(&mut f, &mut out).with_context(|| format!("joining initrd {}", i.display()))?;
    }
    Ok(Some(p))
}

/// The backing files of `Drives=` (one per file id).
pub(super) fn finalize_drives(config: &Config, tmp: &mut Vec<tempfile::NamedTempFile>) -> Result<Vec<DriveArg>> {
    let mut drives = Vec::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for d in config.list("Drives") {
        let file_id = d.get("FileId").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let file = match files.iter().find(|(id, _)| *id == file_id) {
            Some((_, f)) => f.clone(),
            None => {
                let f = drive_file(config, d, tmp)?;
                files.push((file_id, f.clone()));
                f
            }
        };
        drives.push(DriveArg {
            id: d.get("Id").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            options: d.get("Options").and_then(|v| v.as_str()).map(str::to_string),
            file,
        });
    }
    Ok(drives)
}

/// A command line as a shell would read it back (for `--debug`).
fn shell_words(argv: &[OsString]) -> String {
    argv.iter().map(|a| mkosi_config::shlex::quote(&a.to_string_lossy())).collect::<Vec<_>>().join(" ")
}

/// The machined varlink socket when the machine is to be registered (`Register=`).
fn finalize_register(config: &Config) -> Result<Option<PathBuf>> {
    let setting = config.str("Register").unwrap_or("auto");
    if setting == "disabled" {
        return Ok(None);
    }
    use std::os::unix::fs::FileTypeExt;
    let socket = runtime_dir().join("systemd/machine/io.systemd.Machine");
    if std::fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) && find_binary("varlinkctl").is_some() {
        return Ok(Some(socket));
    }
    if setting == "enabled" {
        return Err(die(
            "Container registration was requested but systemd-machined is not available",
            "Is the systemd-container package installed and sufficiently new (v259 or newer)?",
        ));
    }
    Ok(None)
}

/// Register the running machine with systemd-machined over varlink.
fn register_machine(config: &Config, socket: &Path, pid: u32, image: &Path, cid: Option<u32>) -> Result<()> {
    let mut params = serde_json::Map::new();
    params.insert("name".into(), super::nspawn::machine_name(config).into());
    params.insert("service".into(), "mkosi".into());
    params.insert("class".into(), "vm".into());
    params.insert("leader".into(), pid.into());
    if image.is_dir() {
        params.insert("rootDirectory".into(), image.display().to_string().into());
    }
    if let Some(cid) = cid {
        params.insert("vSockCid".into(), cid.into());
        params.insert("sshAddress".into(), format!("vsock/{cid}").into());
    }
    if let Some(key) = config.path("SshKey") {
        params.insert("sshPrivateKeyPath".into(), key.display().to_string().into());
    }
    params.insert("allocateUnit".into(), true.into());
    let status = Command::new("varlinkctl")
        .arg("call")
        .arg(socket)
        .arg("io.systemd.Machine.Register")
        .arg(serde_json::Value::Object(params).to_string())
        .stdout(Stdio::null())
        .status()
        .context("running varlinkctl")?;
    if !status.success() {
        bail!("Registering the machine with systemd-machined failed ({status})");
    }
    Ok(())
}

/// Collect the guest's `EXIT_STATUS=` from the notify socket while the machine runs.
fn notify_thread(listener: OwnedFd) -> std::sync::Arc<std::sync::Mutex<Option<i32>>> {
    let status = std::sync::Arc::new(std::sync::Mutex::new(None));
    let out = status.clone();
    std::thread::spawn(move || loop {
        // SAFETY: accept on the (blocking) listener this thread owns.
        let fd = unsafe {
            libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        // SAFETY: fd was just returned by accept4 and is ours.
        let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        for line in text.lines() {
            if let Some(code) = line.strip_prefix("EXIT_STATUS=").and_then(|v| v.trim().parse().ok()) {
                if let Ok(mut s) = out.lock() {
                    *s = Some(code);
                }
            }
        }
    });
    status
}

/// Mark a new, empty file No_COW (best effort: only btrfs and a few others know it).
fn make_nocow(path: &Path) {
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
    const FS_NOCOW_FL: libc::c_long = 0x0080_0000;
    let Ok(f) = File::open(path) else { return };
    let mut flags: libc::c_long = 0;
    // SAFETY: the ioctls read and write a long through the pointer we pass.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) == 0 {
            flags |= FS_NOCOW_FL;
            libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS as _, &flags);
        }
    }
}

pub(super) struct RemoveFile(pub(super) Option<PathBuf>);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A host vsock listener whose address becomes the guest's `vmm.notify_socket`.
fn vsock_listen(creds: &Path) -> Result<OwnedFd> {
    let (fd, address) = vsock_listener_address()?;
    std::fs::write(creds.join("vmm.notify_socket"), address).context("writing vmm.notify_socket")?;
    Ok(fd)
}

/// A listening vsock socket on a free port, and its address as the guest names it
/// (`vsock-stream:2:<port>`).
fn vsock_listener_address() -> Result<(OwnedFd, String)> {
    // SAFETY: plain socket syscalls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("creating a vsock socket");
        }
        let owned = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as _;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = libc::VMADDR_PORT_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        if libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 || libc::listen(fd, 16) != 0 {
            return Err(std::io::Error::last_os_error()).context("listening on vsock");
        }
        let mut got: libc::sockaddr_vm = std::mem::zeroed();
        let mut glen = len;
        if libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut glen) != 0 {
            return Err(std::io::Error::last_os_error()).context("getsockname");
        }
        Ok((owned, format!("vsock-stream:{}:{}", libc::VMADDR_CID_HOST, got.svm_port)))
    }
}

/// `ForwardJournal=`: systemd-journal-remote, socket-activated with `listener`, writes what
/// the guest's journald forwards into one `.journal` file or a directory of them.
fn start_journal_remote(target: &Path, listener: OwnedFd, daemons: &mut Vec<Daemon>) -> Result<()> {
    let bin = find_binary("systemd-journal-remote")
        .or_else(|| {
            let p = PathBuf::from("/usr/lib/systemd/systemd-journal-remote");
            p.exists().then_some(p)
        })
        .ok_or_else(|| {
            die(
                "systemd-journal-remote must be installed to forward logs from the virtual machine",
                "Install the 'systemd-journal-remote' package",
            )
        })?;
    let single = target.extension().is_some_and(|e| e == "journal");
    let dir = if single { target.parent().unwrap_or(Path::new(".")) } else { target };
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        make_nocow(dir);
    }
    // Socket activation: the listener as fd 3, LISTEN_PID set by the shell that execs the daemon.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\""])
        .arg(&bin)
        .arg("--output")
        .arg(target)
        .args(["--split-mode", if single { "none" } else { "host" }])
        .stdin(Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("running {}", bin.display()))?;
    drop(listener);
    daemons.push(q::ChildGuard::new(child));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tests::config;
    use serde_json::json;

    fn term() -> Term {
        Term { term: "dumb".into(), columns: 80, rows: 24 }
    }

    fn ovmf(secure: bool) -> Ovmf {
        Ovmf {
            descriptor: PathBuf::from("/d.json"),
            description: String::new(),
            code: PathBuf::from("/fw/CODE.fd"),
            code_format: "raw".into(),
            vars_template: PathBuf::from("/fw/VARS.fd"),
            vars_format: "raw".into(),
            secure_boot: secure,
            enrolled_keys: false,
            requires_smm: secure,
        }
    }

    fn inputs() -> Inputs {
        Inputs {
            pty_forward: None,
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            cpus: 2,
            accel: Accel::Tcg,
            firmware: Fw::UefiSecureBoot,
            ovmf: Some((ovmf(true), PathBuf::from("/w/vars.fd"), "raw".into())),
            vsock: None,
            ssh_port: Some(40022),
            image: PathBuf::from("/out/image.raw"),
            image_size: 1 << 30,
            page_size: 4096,
            kernel: None,
            kernel_is_uki: false,
            initrd: None,
            virtiofs: vec![],
            tpm: Some(PathBuf::from("/w/swtpm/sock")),
            smbios_credentials: vec![PathBuf::from("/w/smbios/firstboot.locale")],
            fw_cfg_credentials: vec![],
            kernel_command_line: vec!["rw".into(), "console=hvc0".into()],
            drives: vec![],
            passthrough: vec![],
        }
    }

    fn line(conf: serde_json::Value, i: &Inputs) -> String {
        let argv = command_line(&config(conf), i).unwrap();
        argv.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn disk_image_with_uefi_secure_boot_firmware() {
        let got =
            line(json!({"Image": "main", "Format": "disk", "Architecture": "x86-64", "RAM": 2147483648u64}), &inputs());
        assert_eq!(
            got,
            "/usr/bin/qemu-system-x86_64 -machine type=q35,smm=on,hpet=off -smp 2 -m 2048M \
             -object rng-random,filename=/dev/urandom,id=rng0 -device virtio-rng-pci,rng=rng0,id=rng-device0 \
             -device virtio-balloon,free-page-reporting=on -no-user-config \
             -nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:40022-:22 -cpu max -accel tcg \
             -nographic -nodefaults -chardev stdio,mux=on,id=console,signal=off \
             -device virtio-serial-pci,id=mkosi-virtio-serial-pci -device virtconsole,chardev=console -mon console \
             -drive if=pflash,format=raw,readonly=on,file=/fw/CODE.fd -drive file=/w/vars.fd,if=pflash,format=raw \
             -global ICH9-LPC.disable_s3=1 -global driver=cfi.pflash01,property=secure,value=on \
             -blockdev driver=raw,node-name=mkosi,discard=unmap,file.driver=file,file.filename=/out/image.raw,\
             file.aio=io_uring,cache.direct=yes,cache.no-flush=no -device virtio-blk-pci,drive=mkosi,bootindex=1 \
             -chardev socket,id=chrtpm,path=/w/swtpm/sock -tpmdev emulator,id=tpm0,chardev=chrtpm \
             -device tpm-tis,tpmdev=tpm0 -smbios type=11,path=/w/smbios/firstboot.locale \
             -smbios type=11,value=io.systemd.stub.kernel-cmdline-extra=rw console=hvc0 \
             -smbios type=11,value=io.systemd.boot.kernel-cmdline-extra=rw console=hvc0"
        );
    }

    #[test]
    fn settings_change_the_command_line() {
        let base = json!({"Image": "main", "Format": "disk", "Architecture": "x86-64", "RAM": 1073741824u64});
        let with = |extra: serde_json::Value| {
            let mut c = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            c
        };
        let mut i = inputs();
        i.firmware = Fw::Uefi;
        i.ovmf = Some((ovmf(false), PathBuf::from("/w/vars.fd"), "qcow2".into()));
        i.accel = Accel::Kvm { fd: Some(7) };
        i.image_size = 1000;
        i.tpm = None;
        i.ssh_port = None;
        i.vsock = Some((9, 1234));
        let cases: Vec<(serde_json::Value, &[&str], &[&str])> = vec![
            (
                json!({}),
                &[
                    "-machine type=q35,smm=off,hpet=off",
                    "-drive file=/w/vars.fd,if=pflash,format=qcow2",
                    "--add-fd fd=7,set=1,opaque=/dev/kvm -cpu host -accel kvm,device=/dev/fdset/1",
                    "-device vhost-vsock-pci,guest-cid=1234,vhostfd=9",
                    "cache.direct=no,cache.no-flush=no",
                    "-nic user,model=virtio-net-pci --add-fd",
                ],
                &["cfi.pflash01", "tpm", "hostfwd"],
            ),
            (
                json!({"Ephemeral": true, "MaxMem": 4294967296u64}),
                &["-m 1024M,maxmem=4096M", "cache.no-flush=yes"],
                &[],
            ),
            (json!({"RuntimeNetwork": "none"}), &["-nic none"], &["-nic user"]),
            (json!({"RuntimeNetwork": "interface"}), &["-nic tap,script=no,model=virtio-net-pci"], &[]),
            (json!({"CXL": true}), &["type=q35,smm=off,cxl=on,hpet=off"], &[]),
            (
                json!({"DiskType": "nvme"}),
                &["-device nvme,serial=mkosi,drive=mkosi,bootindex=1"],
                &["virtio-blk-pci", "virtio-scsi-pci"],
            ),
            (
                json!({"Removable": true}),
                &[
                    "-device virtio-scsi-pci,id=mkosi",
                    "-device scsi-hd,device_id=mkosi,removable=on,drive=mkosi,bootindex=1",
                ],
                &[],
            ),
            (
                json!({"DiskType": "scsi-cd"}),
                &["-device virtio-scsi-pci,id=mkosi", "-device scsi-cd,drive=mkosi,bootindex=1"],
                &[],
            ),
            (json!({"Console": "headless"}), &["-nographic -nodefaults -drive"], &["virtconsole", "-chardev stdio"]),
            (
                json!({"Console": "gui"}),
                &["-device virtio-vga -nodefaults -display sdl,gl=on -audio driver=pipewire,model=virtio"],
                &["-nographic"],
            ),
            (
                json!({"QemuArgs": ["-device", "virtio-blk-pci,drive=scratch"]}),
                &["kernel-cmdline-extra=rw console=hvc0 -device virtio-blk-pci,drive=scratch"],
                &[],
            ),
            (
                json!({"RuntimeTrees": [{"Source": "/src", "Target": null}]}),
                &[
                    "type=q35,smm=off,memory-backend=mem,hpet=off",
                    "-object memory-backend-memfd,id=mem,size=1024M,share=on",
                ],
                &[],
            ),
        ];
        for (extra, want, not) in cases {
            let got = line(with(extra.clone()), &i);
            for w in want {
                assert!(got.contains(w), "{extra}: missing {w:?} in\n{got}");
            }
            for n in not {
                assert!(!got.contains(n), "{extra}: unexpected {n:?} in\n{got}");
            }
        }

        // Interactive consoles go through systemd-pty-forward.
        let mut i = inputs();
        i.pty_forward = Some(PathBuf::from("/usr/bin/systemd-pty-forward"));
        let got = line(with(json!({"Console": "read-only", "Machine": "my_vm"})), &i);
        assert!(
            got.starts_with(
                "/usr/bin/systemd-pty-forward --background=48;2;12;51;19 --title=Virtual Machine my-vm --read-only \
                 /usr/bin/qemu-system-x86_64 "
            ),
            "{got}"
        );
    }

    #[test]
    fn direct_kernel_boot_appends_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        std::fs::write(&k, b"not a PE kernel").unwrap();
        let mut i = inputs();
        i.kernel = Some(k.clone());
        i.initrd = Some(PathBuf::from("/out/image.initrd"));
        i.firmware = Fw::Linux;
        i.ovmf = None;
        i.tpm = None;
        i.kernel_command_line = vec!["root=PARTUUID=x".into(), "rw".into()];
        i.drives =
            vec![DriveArg { id: "d1".into(), options: Some("read-only=on".into()), file: PathBuf::from("/var/tmp/f") }];
        i.passthrough = vec!["-s".into()];
        let got = line(json!({"Format": "disk", "Architecture": "x86-64", "KernelCommandLine": ["quiet"]}), &i);
        let k = k.display().to_string();
        for want in [
            "-machine type=q35,hpet=off ",
            &format!("-kernel {k} -initrd /out/image.initrd"),
            "-append quiet root=PARTUUID=x rw",
            "-blockdev driver=raw,node-name=d1,file.driver=file,file.filename=/var/tmp/f,file.aio=io_uring,\
             file.locking=off,cache.direct=on,cache.no-flush=yes,read-only=on -s",
        ] {
            assert!(got.contains(want), "missing {want:?} in\n{got}");
        }
        assert!(!got.contains("pflash") && !got.contains("kernel-cmdline-extra"), "{got}");

        // A UKI booted directly takes the command line from SMBIOS (x86), not -append.
        let mut u = i.clone();
        u.kernel_is_uki = true;
        u.initrd = None;
        let got = line(json!({"Format": "disk", "Architecture": "x86-64"}), &u);
        assert!(
            !got.contains("-append") && got.contains("io.systemd.stub.kernel-cmdline-extra=root=PARTUUID=x rw"),
            "{got}"
        );

        // A cpio image is the initrd.
        let got = line(json!({"Format": "cpio", "Architecture": "x86-64"}), &i);
        assert!(
            got.contains("-initrd /out/image.raw") && !got.contains("-blockdev driver=raw,node-name=mkosi"),
            "{got}"
        );
    }

    #[test]
    fn firmware_selection() {
        let c = |v: serde_json::Value| config(v);
        let cases = [
            (json!({"Format": "disk", "Architecture": "x86-64"}), None, Fw::UefiSecureBoot),
            (json!({"Format": "directory", "Architecture": "x86-64"}), None, Fw::Linux),
            (json!({"Format": "cpio", "Architecture": "x86-64"}), None, Fw::Linux),
            (json!({"Format": "disk", "Architecture": "s390x"}), None, Fw::Linux),
            (json!({"Format": "disk", "Architecture": "arm64", "Distribution": "debian"}), None, Fw::UefiSecureBoot),
            (json!({"Format": "disk", "Architecture": "arm64", "Distribution": "fedora"}), None, Fw::Uefi),
            (json!({"Format": "disk", "Architecture": "riscv64"}), None, Fw::Uefi),
            (json!({"Format": "disk"}), Some(KernelType::Unknown), Fw::Linux),
            (json!({"Format": "disk"}), Some(KernelType::Uki), Fw::UefiSecureBoot),
            (json!({"Format": "disk"}), Some(KernelType::Pe), Fw::UefiSecureBoot),
            (json!({"Format": "disk", "Firmware": "linux-noinitrd"}), Some(KernelType::Uki), Fw::LinuxNoinitrd),
            (json!({"Format": "cpio", "Firmware": "uefi"}), None, Fw::Uefi),
        ];
        for (conf, kt, want) in cases {
            assert_eq!(finalize_firmware(&c(conf.clone()), kt), want, "{conf} {kt:?}");
        }
    }

    #[test]
    fn runtime_kernel_command_line() {
        let c = config(json!({"KernelCommandLineExtra": ["x=a b", "quiet"]}));
        assert_eq!(
            kernel_command_line_extra(&c, Some(&term())).join(" "),
            "systemd.wants=network.target SYSTEMD_SULOGIN_FORCE=1 rw module_blacklist=vmw_vmci \
             systemd.tty.columns.hvc0=80 systemd.tty.rows.hvc0=24 systemd.tty.term.hvc0=dumb \
             ip=enc0:any ip=enp0s1:any ip=enp0s2:any ip=host0:any ip=none loglevel=4 \
             systemd.tty.term.console=dumb systemd.tty.columns.console=80 systemd.tty.rows.console=24 \
             console=hvc0 TERM=dumb x=\"a b\" quiet"
        );
        let c = config(json!({"KernelCommandLineExtra": ["ip=dhcp", "loglevel=7"], "Console": "headless"}));
        let got = kernel_command_line_extra(&c, Some(&term())).join(" ");
        assert!(got.ends_with("systemd.tty.term.hvc0=dumb ip=dhcp loglevel=7"), "{got}");
        let c = config(json!({"Console": "gui", "Architecture": "arm64"}));
        assert!(kernel_command_line_extra(&c, Some(&term())).join(" ").ends_with("loglevel=4 console=tty0"));
    }

    #[test]
    fn kernels_and_roots() {
        let c = config(json!({"Linux": "&b/vmlinuz-&&", "BuildDirectory": null}));
        assert_eq!(configured_kernel(&c, &[]), Some(PathBuf::from("/vmlinuz-&")));
        let c = config(json!({}));
        assert_eq!(configured_kernel(&c, &["-kernel".into(), "/k".into()]), Some(PathBuf::from("/k")));
        assert_eq!(configured_kernel(&c, &["-kernel".into()]), None);

        use mkosi_formats::gpt::{Designator, Entry, PartitionType};
        let e = |d: Designator, u: &str| Entry {
            partno: 0,
            type_uuid: PartitionType::for_arch(d, "x86-64")
                .or_else(|| PartitionType::for_arch(d, "x86_64"))
                .map(|t| t.uuid)
                .unwrap_or_default(),
            uuid: u.parse().unwrap(),
            offset: 0,
            size: 0,
            label: String::new(),
            flags: 0,
        };
        let root = e(Designator::Root, "11111111-1111-1111-1111-111111111111");
        let rootv = e(Designator::RootVerity, "22222222-2222-2222-2222-222222222222");
        let usr = e(Designator::Usr, "33333333-3333-3333-3333-333333333333");
        assert_eq!(
            finalize_root(std::slice::from_ref(&root)).unwrap(),
            "root=PARTUUID=11111111-1111-1111-1111-111111111111"
        );
        assert_eq!(
            finalize_root(&[rootv, root.clone()]).unwrap(),
            format!("roothash={}{}", "1".repeat(32), "2".repeat(32))
        );
        assert_eq!(finalize_root(&[usr]).unwrap(), "mount.usr=PARTUUID=33333333-3333-3333-3333-333333333333");
        assert_eq!(finalize_root(&[]), None);
    }

    #[test]
    fn debug_command_lines_quote() {
        let argv: Vec<OsString> = ["qemu", "-smbios", "type=11,value=a b", "it's"].iter().map(OsString::from).collect();
        let line = shell_words(&argv);
        assert_eq!(line, "qemu -smbios 'type=11,value=a b' 'it'\"'\"'s'");
        // A shell reads it back as the same words.
        let out = Command::new("sh").arg("-c").arg(format!("printf '%s\\n' {line}")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "qemu\n-smbios\ntype=11,value=a b\nit's\n");
    }

    #[test]
    fn credentials_cids_and_versions() {
        assert_eq!(smbios_credential("a.b", b"hi\n"), b"io.systemd.credential.binary:a.b=aGkK".to_vec());
        assert_eq!(hash_to_cid(&[0, 0, 0, 0]), 3);
        assert_eq!(hash_to_cid(&[0xff, 0xff, 0xff, 0xff]), u32::MAX - 1);
        assert_eq!(hash_to_cid(&[0x10, 0x27, 0, 0, 9]), 10000);
        assert_eq!(parse_qemu_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\n"), Some((7, 2)));
        assert_eq!(parse_qemu_version("QEMU emulator version 10.0.2\n"), Some((10, 0)));
        assert_eq!(parse_qemu_version("nonsense"), None);
    }

    #[test]
    fn runtime_size_grows_the_disk_and_moves_the_backup_table() {
        use mkosi_formats::gpt;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        let mut f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&img).unwrap();
        f.set_len(8 << 20).unwrap();
        let entry = gpt::Entry {
            partno: 0,
            type_uuid: gpt::PartitionType::for_arch(gpt::Designator::Root, "x86-64").unwrap().uuid,
            uuid: "11111111-1111-1111-1111-111111111111".parse().unwrap(),
            offset: 1 << 20,
            size: 4 << 20,
            label: "root".into(),
            flags: 0,
        };
        gpt::write(&mut f, 512, Default::default(), std::slice::from_ref(&entry)).unwrap();
        drop(f);
        apply_runtime_size(&img, (16 << 20) + 1).unwrap();
        let len = std::fs::metadata(&img).unwrap().len();
        assert_eq!(len, (16 << 20) + page_size());
        let mut f = File::open(&img).unwrap();
        let (_, entries) = gpt::read(&mut f, 512).unwrap();
        assert_eq!(entries, [entry]);
        // The backup header is in the last sector.
        use std::io::{Seek, SeekFrom};
        let mut sig = [0u8; 8];
        f.seek(SeekFrom::Start(len - 512)).unwrap();
        f.read_exact(&mut sig).unwrap();
        assert_eq!(&sig, b"EFI PART");
        let err = apply_runtime_size(&img, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("is smaller than the image"), "{err}");
    }
}
