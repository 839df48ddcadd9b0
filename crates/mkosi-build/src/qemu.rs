//! Running images in qemu: the pieces the `vm` verb and the boot tests share.
//!
//! - [`kvm_usable`] answers whether guests really run under KVM here. An
//!   openable `/dev/kvm` is not enough: nested setups exist where KVM starts a
//!   guest and then stops it with "KVM internal error … emulation failure" on
//!   the first x87 instruction the firmware executes. The probe boots a
//!   512-byte boot sector that initializes the FPU and then prints a marker on
//!   the serial port, and checks that the marker arrives.
//! - [`find_firmware`] picks a UEFI firmware from the qemu firmware descriptors
//!   (`/usr/share/qemu/firmware`, `/etc/qemu/firmware`, `~/.config/qemu/firmware`).
//! - [`QemuCommand`] builds the command line that boots a disk image (or a
//!   kernel directly) with that firmware, and [`run_until_marker`] runs it
//!   until a marker string shows up on the serial console.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{io, BuildError, Result};

/// qemu's name for an architecture (`uname -m` style), as in `qemu-system-<arch>`.
pub fn qemu_arch(arch: &str) -> &str {
    match arch {
        "x86-64" | "amd64" => "x86_64",
        "x86" | "i686" | "i586" | "i386" => "i386",
        "arm64" => "aarch64",
        "arm" | "armhf" | "armv7l" => "arm",
        "ppc64-le" | "ppc64el" => "ppc64",
        "riscv64" => "riscv64",
        "loongarch64" => "loongarch64",
        "s390x" => "s390x",
        other => other,
    }
}

/// The qemu system emulator for the host's architecture.
pub fn host_qemu_binary() -> String {
    format!("qemu-system-{}", qemu_arch(std::env::consts::ARCH))
}

/// Double commas, the escape of qemu's option syntax (`key=value,key=value`).
pub fn escape_option(value: &str) -> String {
    value.replace(',', ",,")
}

// --- KVM probe -------------------------------------------------------------------

/// The line the probe's boot sector prints on the serial port.
pub const KVM_PROBE_MARKER: &str = "mkosi-kvm-probe-ok";

/// A 512-byte x86 boot sector: `fwait; fninit` (the x87 initialization every
/// firmware does, which broken nested KVM cannot run), then print
/// [`KVM_PROBE_MARKER`] on COM1 (port 0x3f8) and halt forever.
pub fn kvm_probe_boot_sector() -> [u8; 512] {
    const CODE: [u8; 26] = [
        0x9b, 0xdb, 0xe3, // fwait; fninit
        0x31, 0xc0, // xor ax, ax
        0x8e, 0xd8, // mov ds, ax
        0xfc, // cld
        0xbe, 0x1a, 0x7c, // mov si, 0x7c1a (the message, right after the code)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xac, // next: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp next
        0xfa, // done: cli
        0xf4, // halt: hlt
        0xeb, 0xfd, // jmp halt
    ];
    let mut sector = [0u8; 512];
    sector[..CODE.len()].copy_from_slice(&CODE);
    let msg = format!("{KVM_PROBE_MARKER}\n");
    sector[CODE.len()..CODE.len() + msg.len()].copy_from_slice(msg.as_bytes());
    // The terminating NUL is already there; the boot signature ends the sector.
    sector[510] = 0x55;
    sector[511] = 0xaa;
    sector
}

/// The answer of one KVM probe, with the reason when KVM cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    pub usable: bool,
    pub reason: String,
}

impl KvmProbe {
    fn no(reason: impl Into<String>) -> KvmProbe {
        KvmProbe { usable: false, reason: reason.into() }
    }
}

/// Probe KVM with `qemu` (a `qemu-system-x86_64` or `qemu-system-i386`),
/// waiting at most `timeout`. Not cached; see [`kvm_usable`].
pub fn probe_kvm(qemu: &str, timeout: Duration) -> KvmProbe {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return KvmProbe::no(format!("/dev/kvm cannot be opened: {e}"));
    }
    if !qemu.ends_with("x86_64") && !qemu.ends_with("i386") {
        // The boot sector is x86 code; elsewhere an openable /dev/kvm is all we check.
        return KvmProbe { usable: true, reason: "/dev/kvm can be opened".into() };
    }
    let dir = match TempDir::new("mkosi-kvm-probe") {
        Ok(d) => d,
        Err(e) => return KvmProbe::no(format!("cannot create a temporary directory: {e}")),
    };
    let disk = dir.0.join("probe.img");
    let serial = dir.0.join("serial.log");
    if let Err(e) = std::fs::write(&disk, kvm_probe_boot_sector()) {
        return KvmProbe::no(format!("cannot write {}: {e}", disk.display()));
    }
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "kvm", "-machine", "pc", "-m", "16", "-nodefaults", "-nographic", "-no-user-config"])
        .arg("-chardev")
        .arg(format!("file,id=probe,path={}", escape_option(&serial.to_string_lossy())))
        .args(["-serial", "chardev:probe", "-drive"])
        .arg(format!("format=raw,file={}", escape_option(&disk.to_string_lossy())));
    match run_until_marker_with(cmd, &serial, &dir.0.join("qemu.log"), KVM_PROBE_MARKER, timeout, Duration::ZERO) {
        Err(e) => KvmProbe::no(format!("cannot run {qemu}: {e}")),
        Ok(run) if run.qemu_output.contains("KVM internal error") => {
            KvmProbe::no("guests stop with \"KVM internal error\" (emulation failure)")
        }
        Ok(run) if run.found => KvmProbe { usable: true, reason: format!("probe guest ran in {:.1?}", run.elapsed) },
        Ok(run) => match run.exit {
            Some(status) => KvmProbe::no(format!(
                "the probe guest exited ({status}) without output: {}",
                run.qemu_output.lines().next().unwrap_or("")
            )),
            None => KvmProbe::no(format!("the probe guest printed nothing within {timeout:?}")),
        },
    }
}

/// Whether guests of the host's architecture run under KVM here (the answer
/// of [`probe_kvm`] with the host's qemu, computed once per process).
pub fn kvm_usable() -> bool {
    kvm_probe_result().usable
}

/// A private directory under `$TMPDIR`, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> std::io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        for i in 0..100u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let p = base.join(format!("{prefix}-{}-{nanos:x}{i}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no unique name")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The cached probe behind [`kvm_usable`], for messages saying why not.
pub fn kvm_probe_result() -> &'static KvmProbe {
    static PROBE: OnceLock<KvmProbe> = OnceLock::new();
    PROBE.get_or_init(|| probe_kvm(&host_qemu_binary(), Duration::from_secs(20)))
}

// --- firmware descriptors ------------------------------------------------------------

/// A UEFI firmware picked from a qemu firmware descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// The descriptor file.
    pub descriptor: PathBuf,
    /// Its `description`.
    pub description: String,
    /// The code image (read-only pflash).
    pub code: PathBuf,
    pub code_format: String,
    /// The variable store template, copied for each machine.
    pub vars_template: PathBuf,
    pub vars_format: String,
    pub secure_boot: bool,
    pub enrolled_keys: bool,
    pub requires_smm: bool,
}

/// What firmware to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareQuery {
    /// qemu architecture (`x86_64`, `aarch64`…).
    pub arch: String,
    /// Machine type, matched as a substring of the descriptor's machine globs (`q35` in `pc-q35-*`).
    pub machine: String,
    /// A secure boot capable firmware, or one without secure boot.
    pub secure_boot: bool,
    /// Microsoft keys enrolled in the variable store template, or not.
    pub enrolled_keys: bool,
}

impl FirmwareQuery {
    /// UEFI without secure boot for the host's architecture.
    pub fn host(secure_boot: bool) -> FirmwareQuery {
        let arch = qemu_arch(std::env::consts::ARCH).to_string();
        let machine = default_machine(&arch).to_string();
        FirmwareQuery { arch, machine, secure_boot, enrolled_keys: false }
    }
}

/// The machine type qemu boots images of `arch` (qemu name) with.
pub fn default_machine(arch: &str) -> &'static str {
    match arch {
        "x86_64" | "i386" => "q35",
        "s390x" => "s390-ccw-virtio",
        "ppc64" | "ppc" => "pseries",
        _ => "virt",
    }
}

/// The descriptor directories in increasing priority: a file in a later
/// directory replaces a file of the same name in an earlier one.
pub fn firmware_descriptor_dirs(home: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/usr/share/qemu/firmware"), PathBuf::from("/etc/qemu/firmware")];
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")));
    if let Some(c) = config_home {
        dirs.push(c.join("qemu/firmware"));
    }
    dirs
}

/// A parsed firmware descriptor (only the fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub description: String,
    pub interfaces: Vec<String>,
    /// (architecture, machine globs)
    pub targets: Vec<(String, Vec<String>)>,
    pub features: Vec<String>,
    pub device: String,
    /// (filename, format)
    pub executable: Option<(PathBuf, String)>,
    pub nvram_template: Option<(PathBuf, String)>,
}

/// Parse the JSON of a firmware descriptor.
pub fn parse_descriptor(path: &Path, text: &str) -> Result<Descriptor> {
    let bad = |what: &str| BuildError::msg(format!("Invalid firmware descriptor {}: {what}", path.display()));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
        v.and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let file = |v: Option<&serde_json::Value>| -> Option<(PathBuf, String)> {
        let v = v?;
        let name = v.get("filename")?.as_str()?;
        let format = v.get("format").and_then(|f| f.as_str()).unwrap_or("raw");
        Some((PathBuf::from(name), format.to_string()))
    };
    if !v.is_object() {
        return Err(bad("not a JSON object"));
    }
    let mapping = v.get("mapping");
    let targets = v
        .get("targets")
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|t| {
                    let arch = t.get("architecture")?.as_str()?.to_string();
                    Some((arch, strings(t.get("machines"))))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Descriptor {
        description: v.get("description").and_then(|d| d.as_str()).unwrap_or_default().to_string(),
        interfaces: strings(v.get("interface-types")),
        targets,
        features: strings(v.get("features")),
        device: mapping.and_then(|m| m.get("device")).and_then(|d| d.as_str()).unwrap_or_default().to_string(),
        executable: file(mapping.and_then(|m| m.get("executable"))),
        nvram_template: file(mapping.and_then(|m| m.get("nvram-template"))),
    })
}

/// Why a descriptor does not fit `query`, or `None` when it does.
pub fn descriptor_mismatch(d: &Descriptor, query: &FirmwareQuery) -> Option<String> {
    let has = |f: &str| d.features.iter().any(|x| x == f);
    if !d.interfaces.iter().any(|i| i == "uefi") {
        return Some("not UEFI".into());
    }
    if !d.device.is_empty() && d.device != "flash" {
        return Some(format!("device {} is not flash", d.device));
    }
    let target_ok = d
        .targets
        .iter()
        .any(|(arch, machines)| *arch == query.arch && machines.iter().any(|m| m.contains(&query.machine)));
    if !target_ok {
        return Some(format!("no target for {} machine {}", query.arch, query.machine));
    }
    if d.executable.is_none() {
        return Some("no executable".into());
    }
    if d.nvram_template.is_none() {
        return Some("no nvram-template".into());
    }
    if has("secure-boot") != query.secure_boot {
        return Some(if query.secure_boot { "no secure boot".into() } else { "secure boot".into() });
    }
    if has("enrolled-keys") != query.enrolled_keys {
        return Some(if query.enrolled_keys { "no enrolled keys".into() } else { "enrolled keys".into() });
    }
    None
}

/// The descriptor files of `dirs` (increasing priority), by file name; a file
/// of a later directory masks one of the same name, an empty file just masks.
pub fn descriptor_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut by_name: BTreeMap<OsString, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            by_name.insert(e.file_name(), e.path());
        }
    }
    by_name.into_values().filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0)).collect()
}

/// The first firmware (in descriptor file name order) of `dirs` that fits `query`.
pub fn find_firmware_in(dirs: &[PathBuf], query: &FirmwareQuery) -> Result<Firmware> {
    let mut skipped = Vec::new();
    for p in descriptor_files(dirs) {
        let text = std::fs::read_to_string(&p).map_err(io("reading", &p))?;
        let d = match parse_descriptor(&p, &text) {
            Ok(d) => d,
            Err(e) => {
                skipped.push(e.to_string());
                continue;
            }
        };
        if let Some(why) = descriptor_mismatch(&d, query) {
            skipped.push(format!("{}: {why}", p.display()));
            continue;
        }
        let (Some((code, code_format)), Some((vars_template, vars_format))) = (d.executable, d.nvram_template) else {
            continue;
        };
        let has = |f: &str| d.features.iter().any(|x| x == f);
        return Ok(Firmware {
            descriptor: p,
            description: d.description,
            secure_boot: has("secure-boot"),
            enrolled_keys: has("enrolled-keys"),
            requires_smm: has("requires-smm"),
            code,
            code_format,
            vars_template,
            vars_format,
        });
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut message = format!(
        "No UEFI firmware for {} machine {} {} secure boot{} found in the qemu firmware descriptors ({})",
        query.arch,
        query.machine,
        if query.secure_boot { "with" } else { "without" },
        if query.enrolled_keys { " and with enrolled keys" } else { "" },
        searched.join(", "),
    );
    if !skipped.is_empty() {
        message.push_str(&format!("; skipped: {}", skipped.join("; ")));
    }
    Err(BuildError::hint(
        message,
        "Install OVMF: the `ovmf` package on Debian and Ubuntu (`qemu-efi-aarch64` for arm64), `edk2-ovmf` on Fedora",
    ))
}

/// [`find_firmware_in`] the standard descriptor directories.
pub fn find_firmware(query: &FirmwareQuery) -> Result<Firmware> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    find_firmware_in(&firmware_descriptor_dirs(home.as_deref()), query)
}

/// Copy the variable store template of `fw` to `dir` (each machine writes its own).
pub fn copy_vars_template(fw: &Firmware, dir: &Path) -> Result<PathBuf> {
    let dst = dir.join("efi-vars.fd");
    std::fs::copy(&fw.vars_template, &dst)
        .map_err(io("copying the UEFI variable store template", &fw.vars_template))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &dst))?;
    Ok(dst)
}

// --- command line ---------------------------------------------------------------------

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// Emulation (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    /// KVM when [`kvm_usable`], else TCG.
    pub fn detect() -> Accel {
        if kvm_usable() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Where the serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    File(PathBuf),
    /// The terminal, multiplexed with the qemu monitor (Ctrl-a c).
    Stdio,
}

/// The command line of a machine booting a disk image or a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    pub qemu: String,
    /// Machine type (`q35`).
    pub machine: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    /// UEFI firmware and the machine's private copy of its variable store;
    /// without it, qemu's default firmware (SeaBIOS on x86).
    pub firmware: Option<(Firmware, PathBuf)>,
    /// A raw disk image, attached as a virtio disk and booted first.
    pub disk: Option<PathBuf>,
    /// Direct kernel boot.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    /// systemd credentials passed with SMBIOS type 11 strings.
    pub credentials: Vec<(String, String)>,
    pub serial: Serial,
    /// Appended as they are.
    pub extra_args: Vec<String>,
}

impl QemuCommand {
    /// A machine for the host's architecture: its qemu and default machine
    /// type, 2 CPUs, 2 GiB, TCG, serial console on stdio, nothing to boot yet.
    pub fn new() -> QemuCommand {
        let arch = qemu_arch(std::env::consts::ARCH);
        QemuCommand {
            qemu: host_qemu_binary(),
            machine: default_machine(arch).to_string(),
            cpus: 2,
            memory_mib: 2048,
            accel: Accel::Tcg,
            firmware: None,
            disk: None,
            kernel: None,
            initrd: None,
            append: None,
            credentials: Vec::new(),
            serial: Serial::Stdio,
            extra_args: Vec::new(),
        }
    }

    /// The arguments after the qemu binary.
    pub fn args(&self) -> Result<Vec<OsString>> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        let x86 = self.machine == "q35" || self.machine.starts_with("pc");
        let mut machine = format!("type={}", self.machine);
        if let (Some((fw, _)), true) = (&self.firmware, x86) {
            machine.push_str(if fw.requires_smm { ",smm=on" } else { ",smm=off" });
        }
        push(&["-machine", &machine]);
        push(&["-smp", &self.cpus.max(1).to_string(), "-m", &format!("{}M", self.memory_mib)]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        }
        push(&["-nographic", "-nodefaults", "-no-user-config"]);
        push(&["-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-pci,rng=rng0"]);
        match &self.serial {
            Serial::File(p) => {
                let path = path_str(p)?;
                push(&["-chardev", &format!("file,id=console,path={}", escape_option(path))]);
                push(&["-serial", "chardev:console"]);
            }
            Serial::Stdio => push(&["-serial", "mon:stdio"]),
        }
        if let Some((fw, vars)) = &self.firmware {
            let code = path_str(&fw.code)?;
            let vars = path_str(vars)?;
            push(&["-drive", &format!("if=pflash,format={},readonly=on,file={}", fw.code_format, escape_option(code))]);
            push(&["-drive", &format!("if=pflash,format={},file={}", fw.vars_format, escape_option(vars))]);
            if fw.requires_smm && x86 {
                push(&["-global", "ICH9-LPC.disable_s3=1"]);
                push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
        }
        if let Some(disk) = &self.disk {
            let disk = path_str(disk)?;
            push(&["-drive", &format!("if=none,id=mkosi,format=raw,discard=unmap,file={}", escape_option(disk))]);
            push(&["-device", "virtio-blk-pci,drive=mkosi,bootindex=1"]);
        }
        if let Some(k) = &self.kernel {
            push(&["-kernel", path_str(k)?]);
            if let Some(i) = &self.initrd {
                push(&["-initrd", path_str(i)?]);
            }
            if let Some(cmdline) = &self.append {
                push(&["-append", cmdline]);
            }
        } else if self.initrd.is_some() || self.append.is_some() {
            return Err(BuildError::msg("An initrd or kernel command line needs a kernel to boot directly"));
        }
        for (name, value) in &self.credentials {
            if name.is_empty() || name.contains(['=', ',', '/']) || name.chars().any(char::is_whitespace) {
                return Err(BuildError::msg(format!("Invalid credential name {name:?}")));
            }
            push(&["-smbios", &format!("type=11,value=io.systemd.credential:{name}={}", escape_option(value))]);
        }
        a.extend(self.extra_args.iter().map(OsString::from));
        Ok(a)
    }

    /// The command, ready to spawn.
    pub fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args()?);
        Ok(cmd)
    }
}

impl Default for QemuCommand {
    fn default() -> Self {
        QemuCommand::new()
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| BuildError::msg(format!("Path {} is not valid UTF-8", p.display())))
}

// --- runner -----------------------------------------------------------------------------

/// What happened while waiting for a marker.
#[derive(Debug, Clone)]
pub struct BootRun {
    /// The marker appeared on the serial console.
    pub found: bool,
    /// From starting qemu until the marker appeared, qemu exited or the time was up.
    pub elapsed: Duration,
    /// qemu's exit status when it exited by itself (before the time was up, or
    /// within the grace period after the marker).
    pub exit: Option<ExitStatus>,
    /// The serial console log.
    pub serial_log: String,
    /// qemu's own stdout and stderr.
    pub qemu_output: String,
}

/// Start `cmd` (whose serial console must go to a file), wait until
/// `marker` appears on the serial console, qemu exits or `timeout` passes,
/// then stop the qemu started here and return the logs. `grace` is how long
/// qemu may take to exit by itself after the marker (e.g. a guest that
/// powers off) before it is killed.
pub fn run_until_marker(cmd: &QemuCommand, marker: &str, timeout: Duration, grace: Duration) -> Result<BootRun> {
    let Serial::File(serial) = &cmd.serial else {
        return Err(BuildError::msg("Waiting for a marker needs the serial console in a file"));
    };
    let qemu_log = serial.with_extension("qemu.log");
    run_until_marker_with(cmd.command()?, serial, &qemu_log, marker, timeout, grace)
}

/// The runner behind [`run_until_marker`] and the KVM probe: `cmd` writes
/// the serial console to `serial`; its stdout and stderr go to `qemu_log`.
fn run_until_marker_with(
    mut cmd: Command,
    serial: &Path,
    qemu_log: &Path,
    marker: &str,
    timeout: Duration,
    grace: Duration,
) -> Result<BootRun> {
    // A stale log from an earlier run must not count.
    match std::fs::remove_file(serial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", serial)(e)),
    }
    let out = std::fs::File::create(qemu_log).map_err(io("creating", qemu_log))?;
    let err = out.try_clone().map_err(io("duplicating", qemu_log))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| BuildError::msg(format!("Could not start {:?}: {e}", cmd.get_program())))?;
    let mut guard = ChildGuard(Some(child));
    let marker = marker.as_bytes();
    let mut found = false;
    let mut exit = None;
    let mut seen = Vec::new();
    loop {
        read_new(serial, &mut seen);
        if !marker.is_empty() && seen.windows(marker.len()).any(|w| w == marker) {
            found = true;
            break;
        }
        if let Some(child) = guard.0.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                exit = Some(status);
                guard.0 = None;
                read_new(serial, &mut seen);
                found = !marker.is_empty() && seen.windows(marker.len()).any(|w| w == marker);
                break;
            }
        }
        if start.elapsed() >= timeout {
            break;
        }
        // Also stop early on errors qemu reports itself (they end the guest's progress).
        if std::fs::read(qemu_log).is_ok_and(|b| String::from_utf8_lossy(&b).contains("KVM internal error")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = start.elapsed();
    if found && exit.is_none() {
        let deadline = Instant::now() + grace;
        while let Some(child) = guard.0.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                exit = Some(status);
                guard.0 = None;
            } else if Instant::now() >= deadline {
                break;
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    guard.stop();
    read_new(serial, &mut seen);
    let qemu_output = std::fs::read(qemu_log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    Ok(BootRun { found, elapsed, exit, serial_log: String::from_utf8_lossy(&seen).into_owned(), qemu_output })
}

/// Read the whole serial log again (it only grows).
fn read_new(path: &Path, buf: &mut Vec<u8>) {
    if let Ok(mut f) = std::fs::File::open(path) {
        let mut all = Vec::new();
        if f.read_to_end(&mut all).is_ok() && all.len() >= buf.len() {
            *buf = all;
        }
    }
}

/// Stops a process we started (and only it) when dropped: SIGTERM, then SIGKILL
/// after five seconds.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.0.take() else { return };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SIGTERM first: qemu exits cleanly on it (flushing its files).
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_SB: &str = r#"{
        "description": "secure boot, SMM",
        "interface-types": ["uefi"],
        "mapping": {"device": "flash",
            "executable": {"filename": "/fw/CODE.secboot.fd", "format": "raw"},
            "nvram-template": {"filename": "/fw/VARS.fd", "format": "raw"}},
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": ["acpi-s3", "requires-smm", "secure-boot"]
    }"#;
    const X86_SB_MS: &str = r#"{
        "description": "secure boot, MS keys",
        "interface-types": ["uefi"],
        "mapping": {"device": "flash",
            "executable": {"filename": "/fw/CODE.ms.fd", "format": "raw"},
            "nvram-template": {"filename": "/fw/VARS.ms.fd", "format": "raw"}},
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": ["enrolled-keys", "requires-smm", "secure-boot"]
    }"#;
    const X86_PLAIN: &str = r#"{
        "description": "plain",
        "interface-types": ["uefi"],
        "mapping": {"device": "flash",
            "executable": {"filename": "/fw/CODE.fd", "format": "raw"},
            "nvram-template": {"filename": "/fw/VARS.fd", "format": "qcow2"}},
        "targets": [{"architecture": "x86_64", "machines": ["pc-i440fx-*", "pc-q35-*"]}],
        "features": ["acpi-s3"]
    }"#;
    const AARCH64: &str = r#"{
        "description": "arm",
        "interface-types": ["uefi"],
        "mapping": {"device": "flash",
            "executable": {"filename": "/fw/AAVMF_CODE.fd", "format": "raw"},
            "nvram-template": {"filename": "/fw/AAVMF_VARS.fd", "format": "raw"}},
        "targets": [{"architecture": "aarch64", "machines": ["virt-*"]}],
        "features": []
    }"#;
    const BIOS: &str = r#"{
        "description": "seabios",
        "interface-types": ["bios"],
        "mapping": {"device": "memory", "filename": "/fw/bios.bin"},
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": []
    }"#;

    fn query(secure_boot: bool, enrolled_keys: bool) -> FirmwareQuery {
        FirmwareQuery { arch: "x86_64".into(), machine: "q35".into(), secure_boot, enrolled_keys }
    }

    fn dirs(files: &[(&str, &str, &str)]) -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        for d in ["usr", "etc", "home"] {
            let p = t.path().join(d);
            std::fs::create_dir_all(&p).unwrap();
            dirs.push(p);
        }
        for (dir, name, text) in files {
            std::fs::write(t.path().join(dir).join(name), text).unwrap();
        }
        (t, dirs)
    }

    #[test]
    fn parses_descriptor() {
        let d = parse_descriptor(Path::new("x.json"), X86_PLAIN).unwrap();
        assert_eq!(d.description, "plain");
        assert_eq!(d.interfaces, ["uefi"]);
        assert_eq!(d.targets, [("x86_64".to_string(), vec!["pc-i440fx-*".to_string(), "pc-q35-*".to_string()])]);
        assert_eq!(d.executable, Some((PathBuf::from("/fw/CODE.fd"), "raw".to_string())));
        assert_eq!(d.nvram_template, Some((PathBuf::from("/fw/VARS.fd"), "qcow2".to_string())));
        assert!(parse_descriptor(Path::new("x.json"), "[1]").is_err());
        assert!(parse_descriptor(Path::new("x.json"), "{").is_err());
    }

    #[test]
    fn picks_firmware_by_features() {
        let (_t, dirs) = dirs(&[
            ("usr", "10-bios.json", BIOS),
            ("usr", "20-arm.json", AARCH64),
            ("usr", "40-ms.json", X86_SB_MS),
            ("usr", "50-sb.json", X86_SB),
            ("usr", "60-plain.json", X86_PLAIN),
        ]);
        let plain = find_firmware_in(&dirs, &query(false, false)).unwrap();
        assert_eq!(plain.code, Path::new("/fw/CODE.fd"));
        assert_eq!(plain.vars_format, "qcow2");
        assert!(!plain.requires_smm && !plain.secure_boot);
        assert!(plain.descriptor.ends_with("60-plain.json"));

        let sb = find_firmware_in(&dirs, &query(true, false)).unwrap();
        assert_eq!(sb.code, Path::new("/fw/CODE.secboot.fd"));
        assert!(sb.requires_smm && sb.secure_boot && !sb.enrolled_keys);
        assert_eq!(sb.description, "secure boot, SMM");

        let ms = find_firmware_in(&dirs, &query(true, true)).unwrap();
        assert_eq!(ms.vars_template, Path::new("/fw/VARS.ms.fd"));

        let arm =
            FirmwareQuery { arch: "aarch64".into(), machine: "virt".into(), secure_boot: false, enrolled_keys: false };
        assert_eq!(find_firmware_in(&dirs, &arm).unwrap().code, Path::new("/fw/AAVMF_CODE.fd"));
    }

    #[test]
    fn later_directories_override_and_mask() {
        let custom = X86_PLAIN.replace("/fw/CODE.fd", "/home/CODE.fd");
        let (_t, dirs) = dirs(&[("usr", "60-plain.json", X86_PLAIN), ("home", "60-plain.json", &custom)]);
        assert_eq!(find_firmware_in(&dirs, &query(false, false)).unwrap().code, Path::new("/home/CODE.fd"));

        // An empty file in /etc masks the packaged descriptor.
        let (_t, dirs) = self::dirs(&[("usr", "60-plain.json", X86_PLAIN), ("etc", "60-plain.json", "")]);
        assert!(find_firmware_in(&dirs, &query(false, false)).is_err());
    }

    #[test]
    fn missing_firmware_names_the_package() {
        let (_t, dirs) = dirs(&[("usr", "10-bios.json", BIOS), ("usr", "junk.json", "not json")]);
        let err = find_firmware_in(&dirs, &query(false, false)).unwrap_err();
        assert!(err.to_string().contains("No UEFI firmware"), "{err}");
        assert!(err.hint_text().is_some_and(|h| h.contains("`ovmf`")), "{err:?}");
    }

    #[test]
    fn descriptor_dirs_follow_xdg() {
        let dirs = firmware_descriptor_dirs(Some(Path::new("/home/u")));
        assert_eq!(dirs[0], Path::new("/usr/share/qemu/firmware"));
        assert_eq!(dirs[1], Path::new("/etc/qemu/firmware"));
        assert_eq!(dirs.len(), 3);
    }

    fn firmware(requires_smm: bool) -> Firmware {
        Firmware {
            descriptor: PathBuf::from("/d.json"),
            description: String::new(),
            code: PathBuf::from("/fw/CODE.fd"),
            code_format: "raw".into(),
            vars_template: PathBuf::from("/fw/VARS.fd"),
            vars_format: "raw".into(),
            secure_boot: requires_smm,
            enrolled_keys: false,
            requires_smm,
        }
    }

    fn strings(cmd: &QemuCommand) -> Vec<String> {
        cmd.args().unwrap().into_iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn has_pair(args: &[String], a: &str, b: &str) -> bool {
        args.windows(2).any(|w| w[0] == a && w[1] == b)
    }

    #[test]
    fn command_line_for_a_disk_image() {
        let mut cmd = QemuCommand::new();
        cmd.qemu = "qemu-system-x86_64".into();
        cmd.machine = "q35".into();
        cmd.cpus = 4;
        cmd.memory_mib = 1536;
        cmd.firmware = Some((firmware(true), PathBuf::from("/tmp/vm/vars.fd")));
        cmd.disk = Some(PathBuf::from("/tmp/a,b.raw"));
        cmd.serial = Serial::File(PathBuf::from("/tmp/vm/serial.log"));
        cmd.credentials = vec![("firstboot.locale".into(), "C.UTF-8".into()), ("x".into(), "a,b".into())];
        let a = strings(&cmd);
        assert!(has_pair(&a, "-machine", "type=q35,smm=on"), "{a:?}");
        assert!(has_pair(&a, "-smp", "4") && has_pair(&a, "-m", "1536M"), "{a:?}");
        assert!(has_pair(&a, "-accel", "tcg") && has_pair(&a, "-cpu", "max"), "{a:?}");
        assert!(a.contains(&"-nographic".to_string()) && a.contains(&"-nodefaults".to_string()));
        assert!(has_pair(&a, "-drive", "if=pflash,format=raw,readonly=on,file=/fw/CODE.fd"), "{a:?}");
        assert!(has_pair(&a, "-drive", "if=pflash,format=raw,file=/tmp/vm/vars.fd"), "{a:?}");
        assert!(has_pair(&a, "-global", "driver=cfi.pflash01,property=secure,value=on"), "{a:?}");
        assert!(has_pair(&a, "-drive", "if=none,id=mkosi,format=raw,discard=unmap,file=/tmp/a,,b.raw"), "{a:?}");
        assert!(has_pair(&a, "-device", "virtio-blk-pci,drive=mkosi,bootindex=1"), "{a:?}");
        assert!(has_pair(&a, "-chardev", "file,id=console,path=/tmp/vm/serial.log"), "{a:?}");
        assert!(has_pair(&a, "-serial", "chardev:console"), "{a:?}");
        assert!(has_pair(&a, "-smbios", "type=11,value=io.systemd.credential:firstboot.locale=C.UTF-8"), "{a:?}");
        assert!(has_pair(&a, "-smbios", "type=11,value=io.systemd.credential:x=a,,b"), "{a:?}");
        assert!(!a.contains(&"-kernel".to_string()));
    }

    #[test]
    fn command_line_for_direct_boot_with_kvm() {
        let mut cmd = QemuCommand::new();
        cmd.machine = "q35".into();
        cmd.accel = Accel::Kvm;
        cmd.firmware = Some((firmware(false), PathBuf::from("/v.fd")));
        cmd.kernel = Some(PathBuf::from("/k/vmlinuz"));
        cmd.initrd = Some(PathBuf::from("/k/initrd"));
        cmd.append = Some("console=ttyS0 root=/dev/vda rw".into());
        let a = strings(&cmd);
        assert!(has_pair(&a, "-machine", "type=q35,smm=off"), "{a:?}");
        assert!(has_pair(&a, "-accel", "kvm") && has_pair(&a, "-cpu", "host"), "{a:?}");
        assert!(!a.iter().any(|s| s.contains("cfi.pflash01")), "{a:?}");
        assert!(has_pair(&a, "-kernel", "/k/vmlinuz") && has_pair(&a, "-initrd", "/k/initrd"), "{a:?}");
        assert!(has_pair(&a, "-append", "console=ttyS0 root=/dev/vda rw"), "{a:?}");
        assert!(has_pair(&a, "-serial", "mon:stdio"), "{a:?}");

        cmd.kernel = None;
        assert!(cmd.args().is_err());
        cmd.initrd = None;
        cmd.append = None;
        cmd.credentials = vec![("bad=name".into(), "v".into())];
        assert!(cmd.args().is_err());
    }

    #[test]
    fn probe_boot_sector() {
        let s = kvm_probe_boot_sector();
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        // The message starts where `mov si` points (0x7c00 + 0x1a) and ends with a NUL.
        let msg = &s[0x1a..0x1a + KVM_PROBE_MARKER.len()];
        assert_eq!(msg, KVM_PROBE_MARKER.as_bytes());
        assert_eq!(s[0x1a + KVM_PROBE_MARKER.len() + 1], 0);
    }

    #[test]
    fn runner_stops_on_marker_and_timeout() {
        let t = tempfile::tempdir().unwrap();
        let serial = t.path().join("serial.log");
        let script = format!("echo booting > {0}; sleep 0.3; echo MARKER-1 >> {0}; sleep 60", serial.display());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        let run = run_until_marker_with(
            cmd,
            &serial,
            &t.path().join("q.log"),
            "MARKER-1",
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .unwrap();
        assert!(run.found && run.exit.is_none(), "{run:?}");
        assert!(run.elapsed < Duration::from_secs(20), "{run:?}");
        assert!(run.serial_log.contains("booting"));

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo oops >&2; exit 3"]);
        let run = run_until_marker_with(
            cmd,
            &serial,
            &t.path().join("q.log"),
            "MARKER-1",
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .unwrap();
        assert!(!run.found && run.exit.is_some_and(|s| s.code() == Some(3)), "{run:?}");
        assert!(run.qemu_output.contains("oops"));

        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let run = run_until_marker_with(
            cmd,
            &serial,
            &t.path().join("q.log"),
            "MARKER-1",
            Duration::from_millis(300),
            Duration::ZERO,
        )
        .unwrap();
        assert!(!run.found && run.exit.is_none(), "{run:?}");
    }
}
