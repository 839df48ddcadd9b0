//! Files mkosi writes into the image itself: the kernel image location,
//! autologin drop-ins, os-release and extension-release fields, `/init`,
//! ssh-over-vsock units, the clock epoch, the verity certificate and the
//! mount points of portable services.

use std::path::Path;

use mkosi_config::enums::{CertificateSourceType, OutputFormat, Ssh};
use mkosi_config::Config;

use super::{is_regular_file, lexists, mkdir_p, sorted_entries, write_file, Applies};
use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::log;

/// The start of a kernel version in a file name (upstream's
/// `KERNEL_VERSION_PATTERN`, `\d+\.\d+[\w\-.~^+]*`): returns the first match.
pub fn find_kernel_version(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    for start in 0..b.len() {
        let major = digits(start);
        if major == 0 || b.get(start + major) != Some(&b'.') {
            continue;
        }
        let minor_start = start + major + 1;
        if digits(minor_start) == 0 {
            continue;
        }
        let rest = b[minor_start..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'~' | b'^' | b'+'))
            .count();
        return Some(&s[start..minor_start + rest]);
    }
    None
}

/// Whether `s` starts with a kernel version (the pattern anchored at the start).
fn starts_with_kernel_version(s: &str) -> bool {
    find_kernel_version(s).is_some_and(|v| s.starts_with(v))
}

/// The only kernel version directory in `usr/lib/modules`, if there is exactly one.
fn kernel_version_from_modules(root: &Path) -> Result<Option<String>> {
    let versions: Vec<String> = sorted_entries(&root.join("usr/lib/modules"))
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| starts_with_kernel_version(n))
        .collect();
    match versions.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => Err(BuildError::msg(
            "Multiple kernel module directories found in /usr/lib/modules, unable to determine correct version to use",
        )),
    }
}

/// Copy a file with its permissions and timestamps.
fn copy_preserving(src: &Path, dst: &Path) -> Result<()> {
    std::fs::copy(src, dst).map_err(io("copying", src))?;
    let md = std::fs::metadata(src).map_err(io("reading", src))?;
    let mut times = std::fs::FileTimes::new();
    if let Ok(t) = md.accessed() {
        times = times.set_accessed(t);
    }
    if let Ok(t) = md.modified() {
        times = times.set_modified(t);
    }
    let f = std::fs::OpenOptions::new().write(true).open(dst).map_err(io("opening", dst))?;
    f.set_times(times).map_err(io("setting timestamps of", dst))
}

/// Put `boot/vmlinu[xz]-<kver>` at `usr/lib/modules/<kver>/vmlinu[xz]` where missing.
pub fn fixup_vmlinuz(root: &Path) -> Result<()> {
    let modulesd = root.join("usr/lib/modules");
    if !modulesd.exists() {
        return Ok(());
    }
    let dirs = sorted_entries(&modulesd);
    if dirs.iter().all(|d| d.join("vmlinuz").is_file() || d.join("vmlinux").is_file()) {
        return Ok(());
    }
    // Some architectures ship an uncompressed vmlinux.
    for kind in ["vmlinuz", "vmlinux"] {
        let prefix = format!("{kind}-");
        for image in sorted_entries(&root.join("boot")) {
            let Some(name) = image.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
            let Some(suffix) = name.strip_prefix(&prefix) else { continue };
            if std::fs::symlink_metadata(&image).map(|m| m.file_type().is_symlink()).unwrap_or(true) {
                continue;
            }
            let kver = match find_kernel_version(suffix) {
                Some(v) => v.to_string(),
                None => match kernel_version_from_modules(root)? {
                    Some(v) => v,
                    None => continue,
                },
            };
            let target = modulesd.join(&kver).join(kind);
            if !modulesd.join(&kver).exists() {
                continue;
            }
            // Some distributions symlink the modules directory's kernel to
            // /boot; replace such links by the kernel itself.
            if let Ok(link) = std::fs::read_link(&target) {
                if link.is_absolute() && link.starts_with("/boot") {
                    std::fs::remove_file(&target).map_err(io("removing", &target))?;
                }
            }
            if !target.exists() {
                copy_preserving(&image, &target)?;
            }
        }
    }
    Ok(())
}

/// Move kernels installed to `/boot` into `/usr/lib/modules/<kver>/`.
pub fn fixup_vmlinuz_location(ctx: &Context) -> Result<()> {
    fixup_vmlinuz(&ctx.root())
}

/// The getty services that get an autologin drop-in and their extra agetty arguments.
pub const AUTOLOGIN_SERVICES: &[(&str, &str)] = &[
    ("console-getty.service", "--noclear --keep-baud console 115200,38400,9600"),
    ("getty@tty1.service", "--noclear -"),
    ("serial-getty@hvc0.service", "--keep-baud 115200,57600,38400,9600 -"),
];

/// The autologin drop-in of a getty service.
pub fn autologin_dropin(extra: &str) -> String {
    format!(
        "[Service]\nExecStart=\nExecStart=-agetty -o '-f -p -- \\\\u' --autologin root {extra} $TERM\n\
         StandardInput=tty\nStandardOutput=tty\n"
    )
}

/// `Autologin=yes`: log in as root on the console, tty1 and hvc0.
pub fn configure_autologin(ctx: &Context) -> Result<()> {
    if !ctx.config.bool("Autologin") {
        return Ok(());
    }
    log::step("Setting up autologin…");
    let root = ctx.root();
    for (service, extra) in AUTOLOGIN_SERVICES {
        let dir = root.join(format!("usr/lib/systemd/system/{service}.d"));
        mkdir_p(&dir, 0o755)?;
        write_file(&dir.join("autologin.conf"), autologin_dropin(extra), 0o644)?;
    }
    Ok(())
}

/// The os-release fields mkosi sets, in the order they are appended.
pub fn os_release_fields(c: &Config) -> Vec<(&'static str, String)> {
    let portable = c.map("Environment").into_iter().find(|(k, _)| k == "PORTABLE_PREFIXES").map(|(_, v)| v);
    [
        ("IMAGE_ID", c.image_id().map(str::to_string)),
        ("IMAGE_VERSION", c.image_version().map(str::to_string)),
        ("DEFAULT_HOSTNAME", c.str("Hostname").map(str::to_string)),
        ("PORTABLE_PREFIXES", portable),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v)))
    .collect()
}

/// Replace the lines setting `fields` and append the ones that were missing.
pub fn edit_os_release(text: &str, fields: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    let mut written = vec![false; fields.len()];
    for line in text.split_inclusive('\n') {
        let hit = fields.iter().position(|(k, _)| line.strip_prefix(k).is_some_and(|r| r.starts_with('=')));
        match hit {
            Some(i) => {
                out.push_str(&format!("{}=\"{}\"\n", fields[i].0, fields[i].1));
                written[i] = true;
            }
            None => out.push_str(line),
        }
    }
    // Unlike upstream, never glue an appended field to an unterminated last line.
    if !out.is_empty() && !out.ends_with('\n') && written.iter().any(|w| !w) {
        out.push('\n');
    }
    for ((k, v), w) in fields.iter().zip(written) {
        if !w {
            out.push_str(&format!("{k}=\"{v}\"\n"));
        }
    }
    out
}

/// Set `IMAGE_ID`, `IMAGE_VERSION`, `DEFAULT_HOSTNAME` and `PORTABLE_PREFIXES`
/// in the image's os-release files (regular files only).
pub fn configure_os_release(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if !Applies::of(c).root_files {
        return Ok(());
    }
    let root = ctx.root();
    let fields = os_release_fields(c);
    let split = c.strings("SplitArtifacts").iter().any(|a| a == "os-release");
    for candidate in ["usr/lib/os-release", "usr/lib/initrd-release", "etc/os-release"] {
        let path = root.join(candidate);
        if !is_regular_file(&path) {
            continue;
        }
        if !fields.is_empty() {
            let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
            let new = path.with_extension("new");
            std::fs::write(&new, edit_os_release(&text, &fields)).map_err(io("writing", &new))?;
            if let Ok(md) = std::fs::metadata(&path) {
                std::fs::set_permissions(&new, md.permissions()).map_err(io("chmod", &new))?;
            }
            std::fs::rename(&new, &path).map_err(io("replacing", &path))?;
        }
        if split {
            let dst = ctx.staging().join(format!("{}.osrelease", c.output()));
            std::fs::copy(&path, &dst).map_err(io("copying", &path))?;
        }
    }
    Ok(())
}

/// Keys of an env file, each once (first position, last value), like a Python dict.
fn env_dict(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in mkosi_config::host::read_env_file(text) {
        match out.iter_mut().find(|(n, _)| *n == k) {
            Some(e) => e.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

/// What goes into extension-release: the existing fields, then what is missing.
pub struct ExtensionRelease<'a> {
    /// `SYSEXT` or `CONFEXT`.
    pub prefix: &'a str,
    pub existing: &'a str,
    pub os_release: &'a str,
    pub image_id: Option<&'a str>,
    pub image_version: Option<&'a str>,
    /// `$SYSEXT_SCOPE`/`$CONFEXT_SCOPE` from the environment.
    pub scope: Option<&'a str>,
    pub architecture: &'a str,
}

impl ExtensionRelease<'_> {
    pub fn render(&self) -> String {
        let p = self.prefix;
        let ext = env_dict(self.existing);
        let os = env_dict(self.os_release);
        let has = |k: &str| ext.iter().any(|(n, _)| n == k);
        let os_get = |k: &str| os.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
        let mut out = String::new();
        for (k, v) in &ext {
            out.push_str(&format!("{k}={v}\n"));
        }
        if !has("ID") {
            let id = os.iter().find(|(n, _)| n == "ID").map(|(_, v)| v.as_str()).unwrap_or("_any");
            out.push_str(&format!("ID={id}\n"));
        }
        let level = format!("{p}_LEVEL");
        if let (false, Some(l)) = (has(&level), os_get(&level)) {
            out.push_str(&format!("{level}={l}\n"));
        }
        if let (false, Some(v)) = (has("VERSION_ID"), os_get("VERSION_ID")) {
            out.push_str(&format!("VERSION_ID={v}\n"));
        }
        if let (false, Some(id)) = (has(&format!("{p}_ID")), self.image_id.filter(|s| !s.is_empty())) {
            out.push_str(&format!("{p}_ID={id}\n"));
        }
        if let (false, Some(v)) = (has(&format!("{p}_VERSION_ID")), self.image_version.filter(|s| !s.is_empty())) {
            out.push_str(&format!("{p}_VERSION_ID={v}\n"));
        }
        if !has(&format!("{p}_SCOPE")) {
            out.push_str(&format!("{p}_SCOPE={}\n", self.scope.unwrap_or("initrd system portable")));
        }
        if !has("ARCHITECTURE") {
            out.push_str(&format!("ARCHITECTURE={}\n", self.architecture));
        }
        out
    }
}

/// The extension-release file of a sysext or confext image.
pub fn configure_extension_release(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let (prefix, dir) = match c.output_format() {
        OutputFormat::Sysext => ("SYSEXT", "usr/lib"),
        OutputFormat::Confext => ("CONFEXT", "etc"),
        _ => return Ok(()),
    };
    let root = ctx.root();
    let path = root.join(dir).join(format!("extension-release.d/extension-release.{}", c.output()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let read = |p: &Path| -> Result<String> {
        if p.exists() {
            std::fs::read_to_string(p).map_err(io("reading", p))
        } else {
            Ok(String::new())
        }
    };
    let os_release = read(&root.join("usr/lib/os-release"))?;
    let existing = read(&path)?;
    let env = ctx.environment();
    let scope_key = format!("{prefix}_SCOPE");
    let scope = env.iter().find(|(k, _)| *k == scope_key).map(|(_, v)| v.as_str());
    let arch = c.architecture().to_string();
    let text = ExtensionRelease {
        prefix,
        existing: &existing,
        os_release: &os_release,
        image_id: c.image_id(),
        image_version: c.image_version(),
        scope,
        architecture: &arch,
    }
    .render();
    let new = path.with_extension("new");
    std::fs::write(&new, text).map_err(io("writing", &new))?;
    std::fs::rename(&new, &path).map_err(io("replacing", &path))
}

/// `/init` for booting the tree as an initrd, and `/etc/initrd-release` with `MakeInitrd=yes`.
pub fn configure_initrd(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if !Applies::of(c).base_tree {
        return Ok(());
    }
    let root = ctx.root();
    let init = root.join("init");
    if !lexists(&init) && root.join("usr/lib/systemd/systemd").exists() {
        std::os::unix::fs::symlink("/usr/lib/systemd/systemd", &init).map_err(io("creating", &init))?;
    }
    if !c.bool("MakeInitrd") {
        return Ok(());
    }
    let release = root.join("etc/initrd-release");
    if !lexists(&release) {
        std::os::unix::fs::symlink("/etc/os-release", &release).map_err(io("creating", &release))?;
    }
    Ok(())
}

/// `ssh.socket`: sshd on vsock port 22, one service per connection.
pub const SSH_SOCKET: &str = "[Unit]
Description=Mkosi SSH Server VSock Socket
ConditionVirtualization=!container
Wants=sshd-keygen.target

[Socket]
ListenStream=vsock::22
Accept=yes

[Install]
WantedBy=sockets.target
";

/// `ssh@.service`: sshd in inetd mode. PAM is off because sshd -i makes it
/// do a slow reverse lookup of an unknown host; 255 is sshd's normal exit status.
pub const SSH_SERVICE: &str = "[Unit]
Description=Mkosi SSH Server
After=sshd-keygen.target

[Service]
# PAM is disabled: with -i, openssh-server sets PAM_RHOST=UNKNOWN, which makes
# PAM do a very slow reverse DNS lookup.
ExecStart=sshd -i -o UsePAM=no
StandardInput=socket
RuntimeDirectoryPreserve=yes
RuntimeDirectory=sshd
# sshd exits with 255 even on a normal disconnect.
SuccessExitStatus=255
";

/// Whether mkosi installs its own ssh-over-vsock units.
pub fn want_ssh_units(ssh: Ssh, has_ssh_generator: bool, has_sshd: bool) -> bool {
    match ssh {
        Ssh::Never | Ssh::Runtime => false,
        Ssh::Always => true,
        Ssh::Auto => !has_ssh_generator && has_sshd,
    }
}

/// sshd over vsock for `mkosi ssh`, unless systemd's ssh generator does it.
pub fn configure_ssh(ctx: &Context) -> Result<()> {
    let ssh: Ssh = ctx.config.str("Ssh").and_then(|s| s.parse().ok()).unwrap_or(Ssh::Auto);
    let root = ctx.root();
    let generator = root.join("usr/lib/systemd/system-generators/systemd-ssh-generator").exists();
    let sshd = mkosi_sandbox::run::find_binary("sshd", &root).is_some();
    if !want_ssh_units(ssh, generator, sshd) {
        return Ok(());
    }
    let unitdir = root.join("usr/lib/systemd/system");
    mkdir_p(&unitdir, 0o755)?;
    write_file(&unitdir.join("ssh.socket"), SSH_SOCKET, 0o644)?;
    write_file(&unitdir.join("ssh@.service"), SSH_SERVICE, 0o644)?;
    let presetdir = root.join("usr/lib/systemd/system-preset");
    mkdir_p(&presetdir, 0o755)?;
    write_file(&presetdir.join("80-mkosi-ssh.preset"), "enable ssh.socket\n", 0o644)
}

/// `usr/lib/clock-epoch`, so the clock never starts before the build.
pub fn configure_clock(ctx: &Context) -> Result<()> {
    if !Applies::of(ctx.config).root_files {
        return Ok(());
    }
    let path = ctx.root().join("usr/lib/clock-epoch");
    if let Some(parent) = path.parent() {
        mkdir_p(parent, 0o755)?;
    }
    if path.exists() {
        let f = std::fs::OpenOptions::new().write(true).open(&path).map_err(io("opening", &path))?;
        f.set_modified(std::time::SystemTime::now()).map_err(io("touching", &path))
    } else {
        write_file(&path, "", 0o644)
    }
}

/// The name the verity certificate gets in `usr/lib/verity.d` (dissect only reads `.crt`).
pub fn verity_certificate_name(cert: &Path) -> Option<String> {
    cert.with_extension("crt").file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Install `VerityCertificate=` (a file) as `usr/lib/verity.d/<name>.crt`.
pub fn configure_verity_certificate(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let Some(cert) = c.path("VerityCertificate") else { return Ok(()) };
    let source = c.get("VerityCertificateSource").get("Type").and_then(|t| t.as_str()).unwrap_or("file");
    if source.parse::<CertificateSourceType>().ok() != Some(CertificateSourceType::File) {
        return Ok(());
    }
    if c.output_format().is_extension_or_portable_image() {
        return Ok(());
    }
    let Some(name) = verity_certificate_name(&cert) else { return Ok(()) };
    let dir = ctx.root().join("usr/lib/verity.d");
    mkdir_p(&dir, 0o755)?;
    let data = std::fs::read(&cert).map_err(io("reading", &cert))?;
    write_file(&dir.join(name), data, 0o644)
}

/// Files a portable service image needs as mount points.
pub const PORTABLE_MOUNTPOINTS: &[(&str, u32)] = &[
    ("passwd", 0o644),
    ("group", 0o644),
    ("shadow", 0o600),
    ("gshadow", 0o600),
    ("nsswitch.conf", 0o644),
    ("resolv.conf", 0o644),
    ("machine-id", 0o644),
];

/// Portable images: make sure the files portablectl bind mounts over exist.
pub fn configure_mountpoints(ctx: &Context) -> Result<()> {
    if ctx.config.output_format() != OutputFormat::Portable {
        return Ok(());
    }
    let etc = ctx.root().join("etc");
    mkdir_p(&etc, 0o755)?;
    for (name, mode) in PORTABLE_MOUNTPOINTS {
        let p = etc.join(name);
        let is_link = std::fs::symlink_metadata(&p).map(|m| m.file_type().is_symlink()).unwrap_or(false);
        if is_link {
            continue;
        }
        if p.exists() {
            let f = std::fs::OpenOptions::new().write(true).open(&p).map_err(io("opening", &p))?;
            f.set_modified(std::time::SystemTime::now()).map_err(io("touching", &p))?;
        } else {
            write_file(&p, "", *mode)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::sysconfig::tests::config;

    #[test]
    fn kernel_versions() {
        assert_eq!(find_kernel_version("6.12.9-amd64"), Some("6.12.9-amd64"));
        assert_eq!(find_kernel_version("linux-6.1.0+deb12~1^x_y.z"), Some("6.1.0+deb12~1^x_y.z"));
        assert_eq!(find_kernel_version("lts"), None);
        assert_eq!(find_kernel_version("6"), None);
        assert_eq!(find_kernel_version("12.x-1.2"), Some("1.2"));
        assert_eq!(find_kernel_version("a6.1 b"), Some("6.1"));
        assert!(starts_with_kernel_version("6.1.0-13-amd64"));
        assert!(!starts_with_kernel_version("extra-6.1"));
    }

    #[test]
    fn vmlinuz_is_moved_next_to_the_modules() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/lib/modules/6.1.0-13-amd64/kernel")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib/modules/6.2.0/kernel")).unwrap();
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-13-amd64"), "kernel").unwrap();
        std::os::unix::fs::symlink("vmlinuz-6.1.0-13-amd64", root.join("boot/vmlinuz-6.2.0")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-7.0"), "no modules").unwrap();
        fixup_vmlinuz(root).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("usr/lib/modules/6.1.0-13-amd64/vmlinuz")).unwrap(), "kernel");
        assert!(!root.join("usr/lib/modules/6.2.0/vmlinuz").exists(), "symlinked kernels are skipped");
        assert!(!root.join("usr/lib/modules/7.0").exists());

        // A link to /boot is replaced by the kernel itself.
        let m = root.join("usr/lib/modules/6.2.0");
        std::fs::write(root.join("boot/vmlinux-6.2.0"), "uncompressed").unwrap();
        std::os::unix::fs::symlink("/boot/vmlinux-6.2.0", m.join("vmlinux")).unwrap();
        fixup_vmlinuz(root).unwrap();
        assert_eq!(std::fs::read_to_string(m.join("vmlinux")).unwrap(), "uncompressed");
    }

    #[test]
    fn vmlinuz_without_version_uses_the_only_modules_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/lib/modules/6.1.0/kernel")).unwrap();
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-lts"), "k").unwrap();
        fixup_vmlinuz(root).unwrap();
        assert!(root.join("usr/lib/modules/6.1.0/vmlinuz").is_file());

        std::fs::create_dir_all(root.join("usr/lib/modules/6.2.0/kernel")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-current"), "k").unwrap();
        let e = fixup_vmlinuz(root).unwrap_err();
        assert!(e.to_string().contains("Multiple kernel module directories"), "{e}");
    }

    #[test]
    fn autologin_dropins() {
        assert_eq!(
            autologin_dropin("--noclear -"),
            "[Service]\nExecStart=\nExecStart=-agetty -o '-f -p -- \\\\u' --autologin root --noclear - $TERM\n\
             StandardInput=tty\nStandardOutput=tty\n"
        );
        let names: Vec<&str> = AUTOLOGIN_SERVICES.iter().map(|(s, _)| *s).collect();
        assert_eq!(names, ["console-getty.service", "getty@tty1.service", "serial-getty@hvc0.service"]);
    }

    #[test]
    fn os_release_fields_from_config() {
        let c = config(json!({
            "ImageId": "myimage", "ImageVersion": "1.2", "Hostname": "box",
            "Environment": {"PORTABLE_PREFIXES": "foo bar", "OTHER": "x"},
        }));
        assert_eq!(
            os_release_fields(&c),
            vec![
                ("IMAGE_ID", "myimage".to_string()),
                ("IMAGE_VERSION", "1.2".to_string()),
                ("DEFAULT_HOSTNAME", "box".to_string()),
                ("PORTABLE_PREFIXES", "foo bar".to_string()),
            ]
        );
        assert!(os_release_fields(&config(json!({"Environment": {"PORTABLE_PREFIXES": ""}}))).is_empty());
    }

    #[test]
    fn os_release_edits() {
        let fields = vec![("IMAGE_ID", "img".to_string()), ("DEFAULT_HOSTNAME", "box".to_string())];
        let text = "NAME=\"Debian\"\nIMAGE_ID=old\nIMAGE_IDX=keep\nID=debian\n";
        assert_eq!(
            edit_os_release(text, &fields),
            "NAME=\"Debian\"\nIMAGE_ID=\"img\"\nIMAGE_IDX=keep\nID=debian\nDEFAULT_HOSTNAME=\"box\"\n"
        );
        assert_eq!(edit_os_release("ID=x", &fields), "ID=x\nIMAGE_ID=\"img\"\nDEFAULT_HOSTNAME=\"box\"\n");
        assert_eq!(edit_os_release("", &fields), "IMAGE_ID=\"img\"\nDEFAULT_HOSTNAME=\"box\"\n");
    }

    #[test]
    fn extension_release() {
        let r = ExtensionRelease {
            prefix: "SYSEXT",
            existing: "ID=custom\nFOO=\"bar\"\nFOO=baz\n",
            os_release: "ID=debian\nVERSION_ID=\"13\"\nSYSEXT_LEVEL=2\n",
            image_id: Some("ext"),
            image_version: None,
            scope: None,
            architecture: "x86-64",
        };
        assert_eq!(
            r.render(),
            "ID=custom\nFOO=baz\nSYSEXT_LEVEL=2\nVERSION_ID=13\nSYSEXT_ID=ext\n\
             SYSEXT_SCOPE=initrd system portable\nARCHITECTURE=x86-64\n"
        );
        let r = ExtensionRelease {
            prefix: "CONFEXT",
            existing: "",
            os_release: "",
            image_id: None,
            image_version: Some("3"),
            scope: Some("system"),
            architecture: "arm64",
        };
        assert_eq!(r.render(), "ID=_any\nCONFEXT_VERSION_ID=3\nCONFEXT_SCOPE=system\nARCHITECTURE=arm64\n");
    }

    #[test]
    fn ssh_units_decision() {
        assert!(want_ssh_units(Ssh::Always, true, false));
        assert!(!want_ssh_units(Ssh::Never, false, true));
        assert!(!want_ssh_units(Ssh::Runtime, false, true));
        assert!(want_ssh_units(Ssh::Auto, false, true));
        assert!(!want_ssh_units(Ssh::Auto, true, true));
        assert!(!want_ssh_units(Ssh::Auto, false, false));
        assert!(SSH_SOCKET.contains("ListenStream=vsock::22\nAccept=yes\n"));
        assert!(SSH_SERVICE.contains("ExecStart=sshd -i -o UsePAM=no\n"));
    }

    #[test]
    fn verity_certificate_names() {
        assert_eq!(verity_certificate_name(Path::new("/x/mkosi.crt")).as_deref(), Some("mkosi.crt"));
        assert_eq!(verity_certificate_name(Path::new("/x/cert.pem")).as_deref(), Some("cert.crt"));
        assert_eq!(verity_certificate_name(Path::new("/x/cert")).as_deref(), Some("cert.crt"));
    }
}
