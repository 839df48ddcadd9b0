//! `mkosi vm` with `VirtualMachineMonitor=vmspawn` (reference §8.4): the machine is
//! started by systemd-vmspawn (systemd 256 or newer), which picks the firmware, runs
//! virtiofsd and swtpm and sets up the console itself. mkosi passes the settings, the
//! credentials, a private copy of the firmware's variable store and, through
//! `$SYSTEMD_VMSPAWN_QEMU_EXTRA`, `Drives=` and `QemuArgs=`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use mkosi_config::config::Config;
use mkosi_config::enums::OutputFormat;
use mkosi_config::{Args, Host};

use super::vm::{self, DriveArg, Fw};

/// What [`command_line`] needs besides the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub vmspawn: PathBuf,
    pub cpus: u32,
    pub firmware: Fw,
    /// The private copy of the UEFI variable store.
    pub vars: Option<PathBuf>,
    pub credentials: Vec<(String, PathBuf)>,
    /// The image (`<output>`), a directory or a disk image.
    pub image: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub drives: Vec<DriveArg>,
    pub user: String,
    pub passthrough: Vec<String>,
}

/// `--firmware-features` for the firmware and `FirmwareVariables=`.
pub fn firmware_features(config: &Config, fw: Fw) -> Vec<String> {
    let mut f = Vec::new();
    match fw {
        Fw::UefiSecureBoot => f.push("secure-boot".to_string()),
        Fw::Uefi => f.push("~secure-boot".to_string()),
        _ => {}
    }
    if matches!(config.str("FirmwareVariables"), Some("microsoft") | Some("microsoft-mok")) {
        f.push("enrolled-keys".into());
    }
    f
}

fn tristate(v: Option<&str>) -> &'static str {
    match v {
        Some("enabled") => "yes",
        Some("disabled") => "no",
        _ => "",
    }
}

/// The systemd-vmspawn command line and the value of `$SYSTEMD_VMSPAWN_QEMU_EXTRA`.
pub fn command_line(config: &Config, i: &Inputs) -> (Vec<OsString>, Option<String>) {
    let mut a: Vec<OsString> = vec![i.vmspawn.clone().into()];
    let mut s = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    let ram = config.int("RAM").unwrap_or(2 << 30).to_string();
    s(&["--cpus", &i.cpus.to_string(), "--ram", &ram]);
    s(&["--kvm", tristate(config.str("KVM")), "--vsock", tristate(config.str("VSock"))]);
    s(&["--tpm", tristate(config.str("TPM")), "--tpm-state=off"]);
    s(&["--console", config.str("Console").unwrap_or("native")]);
    s(&["--register", if config.str("Register") == Some("disabled") { "no" } else { "yes" }]);
    let features = firmware_features(config, i.firmware);
    if !features.is_empty() {
        s(&["--firmware-features", &features.join(",")]);
    }
    if let Some(size) = config.int("RuntimeSize") {
        s(&["--grow-image", &size.to_string()]);
    }
    if config.bool("BindUser") {
        s(&["--bind-user", &i.user, "--bind-user-group=wheel"]);
    }
    match config.str("RuntimeNetwork").unwrap_or("user") {
        "user" => s(&["--network-user-mode"]),
        "interface" => s(&["--network-tap"]),
        _ => {}
    }
    if let Some(v) = &i.vars {
        a.push("--efi-nvram-template".into());
        a.push(v.clone().into());
    }
    for (name, path) in &i.credentials {
        let mut arg = OsString::from(format!("--load-credential={name}:"));
        arg.push(path);
        a.push(arg);
    }
    if config.bool("Ephemeral") {
        a.push("--ephemeral".into());
    }
    let mut bind = |src: &Path, dst: &Path| {
        let mut arg = OsString::from(src);
        arg.push(":");
        arg.push(dst);
        a.push("--bind".into());
        a.push(arg);
    };
    if config.bool("RuntimeBuildSources") {
        for (src, dst) in config.trees("BuildSources") {
            bind(&src, &Path::new("/work/src").join(relative(dst.as_deref())));
        }
        if let Some(b) = config.build_subdir() {
            bind(&b, Path::new("/work/build"));
        }
    }
    for (src, dst) in config.trees("RuntimeTrees") {
        bind(&src, &Path::new("/root/src").join(relative(dst.as_deref())));
    }
    if let Some(k) = &i.kernel {
        a.push("--linux".into());
        a.push(k.clone().into());
        if let Some(initrd) = &i.initrd {
            a.push("--initrd".into());
            a.push(initrd.clone().into());
        }
    }
    match config.output_format() {
        OutputFormat::Directory => {
            a.push("--directory".into());
            a.push(i.image.clone().into());
        }
        OutputFormat::Uki => {}
        _ => {
            a.push("--image".into());
            a.push(i.image.clone().into());
        }
    }
    let disk_type = config.str("DiskType").unwrap_or("virtio-blk");
    if disk_type != "virtio-blk" {
        a.push("--image-disk-type".into());
        a.push(disk_type.into());
    }
    if let Some(j) = config.path("ForwardJournal") {
        let files = if j.extension().is_some_and(|e| e == "journal") { 1 } else { 100 };
        a.push("--forward-journal".into());
        a.push(j.into());
        for o in
            ["--forward-journal-max-use=1T", "--forward-journal-keep-free=1G", "--forward-journal-max-file-size=4G"]
        {
            a.push(o.into());
        }
        a.push(format!("--forward-journal-max-files={files}").into());
    }
    a.extend(i.passthrough.iter().map(OsString::from));
    a.extend(config.strings("KernelCommandLine").into_iter().map(OsString::from));
    a.extend(vm::kernel_command_line_extra(config, None).into_iter().map(OsString::from));

    let mut qemu_args = config.strings("QemuArgs");
    for d in &i.drives {
        let mut arg = vec![
            "driver=raw".to_string(),
            format!("node-name={}", d.id),
            "file.driver=file".into(),
            format!("file.filename={}", d.file.display()),
            "file.aio=io_uring".into(),
            "file.locking=off".into(),
            "cache.direct=on".into(),
            "cache.no-flush=yes".into(),
        ];
        arg.extend(d.options.clone());
        qemu_args.push("-blockdev".into());
        qemu_args.push(arg.join(","));
    }
    let extra = (!qemu_args.is_empty())
        .then(|| qemu_args.iter().map(|q| mkosi_config::shlex::quote(q)).collect::<Vec<_>>().join(" "));
    (a, extra)
}

fn relative(p: Option<&Path>) -> &Path {
    match p {
        Some(p) => p.strip_prefix("/").unwrap_or(p),
        None => Path::new(""),
    }
}

/// The variable store template `systemd-vmspawn --firmware=describe` names.
fn describe_vars(vmspawn: &Path, features: &[String]) -> Result<(PathBuf, String)> {
    let mut cmd = Command::new(vmspawn);
    cmd.arg("--firmware=describe");
    if !features.is_empty() {
        cmd.args(["--firmware-features", &features.join(",")]);
    }
    let out = cmd.output().with_context(|| format!("running {}", vmspawn.display()))?;
    if !out.status.success() {
        bail!("{} --firmware=describe failed: {}", vmspawn.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing the firmware description")?;
    let t = &j["mapping"]["nvram-template"];
    let file = t["filename"].as_str().context("the firmware description names no nvram-template")?;
    Ok((PathBuf::from(file), t["format"].as_str().unwrap_or("raw").to_string()))
}

/// Run `mkosi vm` with systemd-vmspawn.
pub fn run_vmspawn(args: &Args, config: &Config, host: &Host, cwd: &Path) -> Result<()> {
    let format = config.output_format();
    if !matches!(format, OutputFormat::Disk | OutputFormat::Esp | OutputFormat::Directory | OutputFormat::Uki) {
        bail!("{format} images cannot be booted in systemd-vmspawn");
    }
    let vmspawn = super::check_systemd_tool("systemd-vmspawn", "systemd-container", "256", "boot images with vmspawn")?;
    let outdir = config.output_dir_or_cwd(cwd);
    // Only Linux= names a kernel for vmspawn (arguments after the verb go to vmspawn).
    let (kernel, _, firmware) = vm::finalize_kernel(config, &[], &outdir)?;
    let work = tempfile::Builder::new().prefix("mkosi-vmspawn-").tempdir().context("creating a temporary directory")?;
    let vars = if firmware.is_uefi() {
        let (template, fmt) = describe_vars(&vmspawn, &firmware_features(config, firmware))?;
        Some(vm::finalize_firmware_variables(config, &template, &fmt, work.path())?.0)
    } else {
        None
    };
    let creds = super::finalize_credentials(config)?;
    let image = outdir.join(config.output());
    let _lock = if !config.bool("Ephemeral") && format != OutputFormat::Uki {
        Some(super::flock_or_die(&image)?)
    } else {
        None
    };
    let mut initrd_guard = vm::RemoveFile(None);
    let initrd = match &kernel {
        Some(_) if firmware != Fw::LinuxNoinitrd => vm::finalize_initrd(config, &outdir, &mut initrd_guard)?,
        _ => None,
    };
    let mut drive_tmp = Vec::new();
    let drives = vm::finalize_drives(config, &mut drive_tmp)?;
    let cpus = vm::finalize_cpus(config);
    let inputs = Inputs {
        vmspawn,
        cpus,
        firmware,
        vars,
        credentials: creds.files()?,
        image,
        kernel,
        initrd,
        drives,
        user: host.user_name().to_string(),
        passthrough: args.cmdline.clone(),
    };
    let (argv, extra) = command_line(config, &inputs);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.envs(mkosi_build::context::finalize_environment(config, host));
    if let Some(e) = extra {
        cmd.env("SYSTEMD_VMSPAWN_QEMU_EXTRA", e);
    }
    let result = super::run_foreground(&mut cmd);
    drop(drive_tmp);
    drop(initrd_guard);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tests::config;
    use serde_json::json;

    fn inputs() -> Inputs {
        Inputs {
            vmspawn: PathBuf::from("/usr/bin/systemd-vmspawn"),
            cpus: 2,
            firmware: Fw::UefiSecureBoot,
            vars: Some(PathBuf::from("/w/ovmf-vars.fd")),
            credentials: vec![("firstboot.locale".into(), PathBuf::from("/c/firstboot.locale"))],
            image: PathBuf::from("/out/image"),
            kernel: None,
            initrd: None,
            drives: vec![],
            user: "alice".into(),
            passthrough: vec![],
        }
    }

    fn line(conf: serde_json::Value, i: &Inputs) -> (String, Option<String>) {
        let (argv, extra) = command_line(&config(conf), i);
        (argv.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "), extra)
    }

    #[test]
    fn disk_image() {
        let (got, extra) =
            line(json!({"Format": "disk", "RAM": 2147483648u64, "KernelCommandLine": ["quiet"]}), &inputs());
        assert_eq!(
            got,
            "/usr/bin/systemd-vmspawn --cpus 2 --ram 2147483648 --kvm  --vsock  --tpm  --tpm-state=off \
             --console native --register yes --firmware-features secure-boot --network-user-mode \
             --efi-nvram-template /w/ovmf-vars.fd --load-credential=firstboot.locale:/c/firstboot.locale \
             --image /out/image quiet systemd.wants=network.target SYSTEMD_SULOGIN_FORCE=1 rw \
             module_blacklist=vmw_vmci ip=enc0:any ip=enp0s1:any ip=enp0s2:any ip=host0:any ip=none loglevel=4"
        );
        assert_eq!(extra, None);
    }

    #[test]
    fn settings() {
        let mut i = inputs();
        i.firmware = Fw::Linux;
        i.vars = None;
        i.kernel = Some(PathBuf::from("/out/image.vmlinuz"));
        i.initrd = Some(PathBuf::from("/out/image.initrd"));
        i.drives = vec![DriveArg { id: "d".into(), options: None, file: PathBuf::from("/var/tmp/x") }];
        i.passthrough = vec!["--pass".into()];
        let (got, extra) = line(
            json!({
                "Format": "directory", "KVM": "disabled", "TPM": "enabled", "Register": "disabled",
                "Ephemeral": true, "BindUser": true, "RuntimeNetwork": "interface", "RuntimeSize": 1000,
                "DiskType": "nvme", "FirmwareVariables": "microsoft",
                "RuntimeTrees": [{"Source": "/src", "Target": "t"}],
                "ForwardJournal": "/j/x.journal", "QemuArgs": ["-device", "a b"],
            }),
            &i,
        );
        for want in [
            "--kvm no --vsock  --tpm yes",
            "--register no --firmware-features enrolled-keys --grow-image 1000",
            "--bind-user alice --bind-user-group=wheel --network-tap --load-credential",
            "--ephemeral --bind /src:/root/src/t --linux /out/image.vmlinuz --initrd /out/image.initrd",
            "--directory /out/image --image-disk-type nvme --forward-journal /j/x.journal",
            "--forward-journal-max-files=1 --pass systemd.wants",
        ] {
            assert!(got.contains(want), "missing {want:?} in {got}");
        }
        assert_eq!(
            extra.as_deref(),
            Some(
                "-device 'a b' -blockdev driver=raw,node-name=d,file.driver=file,file.filename=/var/tmp/x,\
                 file.aio=io_uring,file.locking=off,cache.direct=on,cache.no-flush=yes"
            )
        );
        let f = firmware_features(&config(json!({})), Fw::Uefi);
        assert_eq!(f, ["~secure-boot"]);
    }
}
