//! Boot an image in qemu and report how long it took until a marker string
//! appeared on the serial console (used by scripts/bench-boot.sh).
//!
//! ```text
//! qemu-boot [--secure-boot] [--timeout SECONDS] [--memory MIB] [--cpus N] [--accel kvm|tcg]
//!           [--kernel K [--initrd I] [--append CMDLINE]] [--serial-log FILE] IMAGE MARKER
//! ```
//!
//! Prints the accelerator (and why), the firmware, and the time from starting
//! qemu until the marker; exits 0 when the marker came, 1 when not (the tail
//! of the serial log is printed), 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use mkosi_build::qemu::{self, Accel, FirmwareQuery, QemuCommand, Serial};

struct Options {
    secure_boot: bool,
    timeout: u64,
    memory: u64,
    cpus: u32,
    accel: Option<Accel>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    serial_log: Option<PathBuf>,
    image: PathBuf,
    marker: String,
}

fn parse() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        secure_boot: false,
        timeout: 0,
        memory: 1536,
        cpus: 2,
        accel: None,
        kernel: None,
        initrd: None,
        append: None,
        serial_log: None,
        image: PathBuf::new(),
        marker: String::new(),
    };
    let mut positional = Vec::new();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--secure-boot" => o.secure_boot = true,
            "--timeout" => o.timeout = value(&a)?.parse().map_err(|e| format!("--timeout: {e}"))?,
            "--memory" => o.memory = value(&a)?.parse().map_err(|e| format!("--memory: {e}"))?,
            "--cpus" => o.cpus = value(&a)?.parse().map_err(|e| format!("--cpus: {e}"))?,
            "--accel" => {
                o.accel = Some(match value(&a)?.as_str() {
                    "kvm" => Accel::Kvm,
                    "tcg" => Accel::Tcg,
                    other => return Err(format!("unknown accelerator {other}")),
                })
            }
            "--kernel" => o.kernel = Some(value(&a)?.into()),
            "--initrd" => o.initrd = Some(value(&a)?.into()),
            "--append" => o.append = Some(value(&a)?),
            "--serial-log" => o.serial_log = Some(value(&a)?.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => positional.push(a),
        }
    }
    let [image, marker] = <[String; 2]>::try_from(positional).map_err(|_| "expected IMAGE and MARKER".to_string())?;
    o.image = image.into();
    o.marker = marker;
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("qemu-boot: {e}");
            return ExitCode::from(2);
        }
    };
    let accel = o.accel.unwrap_or_else(|| {
        let probe = qemu::kvm_probe_result();
        println!("KVM probe: {} ({})", if probe.usable { "usable" } else { "not usable" }, probe.reason);
        Accel::detect()
    });
    let fw = match qemu::find_firmware(&FirmwareQuery::host(o.secure_boot)) {
        Ok(fw) => fw,
        Err(e) => {
            eprintln!("qemu-boot: {e}");
            if let Some(h) = e.hint_text() {
                eprintln!("qemu-boot: {h}");
            }
            return ExitCode::from(1);
        }
    };
    let dir = match tempfile::Builder::new().prefix("mkosi-qemu-boot-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("qemu-boot: creating a temporary directory: {e}");
            return ExitCode::from(1);
        }
    };
    let vars = match qemu::copy_vars_template(&fw, dir.path()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("qemu-boot: {e}");
            return ExitCode::from(1);
        }
    };
    println!("firmware: {} ({})", fw.description, fw.descriptor.display());
    let mut cmd = QemuCommand::new();
    cmd.accel = accel;
    cmd.memory_mib = o.memory;
    cmd.cpus = o.cpus;
    cmd.firmware = Some((fw, vars));
    cmd.disk = Some(o.image);
    cmd.kernel = o.kernel;
    cmd.initrd = o.initrd;
    cmd.append = o.append;
    cmd.serial = Serial::File(o.serial_log.unwrap_or_else(|| dir.path().join("serial.log")));
    let timeout = Duration::from_secs(match (o.timeout, accel) {
        (0, Accel::Kvm) => 180,
        (0, Accel::Tcg) => 900,
        (t, _) => t,
    });
    println!("accelerator: {}", accel.name());
    match qemu::run_until_marker(&cmd, &o.marker, timeout, Duration::ZERO) {
        Ok(run) if run.found => {
            println!("qemu start to marker: {:.1}s ({})", run.elapsed.as_secs_f64(), accel.name());
            ExitCode::SUCCESS
        }
        Ok(run) => {
            let lines: Vec<&str> = run.serial_log.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
            eprintln!("{}", run.qemu_output);
            eprintln!("qemu-boot: no marker after {:.1}s ({})", run.elapsed.as_secs_f64(), accel.name());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("qemu-boot: {e}");
            ExitCode::from(1)
        }
    }
}
