//! The human readable `mkosi summary` and `mkosi cat-config` output, laid
//! out like upstream's so that users and scripts find the same lines.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::Config;
use crate::enums::OutputFormat;
use crate::host::Host;

/// Terminal styling (empty strings when output is not a terminal).
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub bold: &'static str,
    pub blue: &'static str,
    pub reset: &'static str,
}

impl Style {
    pub const PLAIN: Style = Style { bold: "", blue: "", reset: "" };
    pub const ANSI: Style = Style { bold: "\x1b[0;1;39m", blue: "\x1b[0;1;34m", reset: "\x1b[0m" };
}

const INDENT: &str = "\n                                     ";

/// Python's `str()` of a value.
fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            // Trees, and other structured items.
            if let (Some(src), Some(tgt)) = (o.get("Source"), o.get("Target")) {
                return match tgt {
                    Value::Null => py_str(src),
                    t => format!("{}:{}", py_str(src), py_str(t)),
                };
            }
            if o.contains_key("Profile") && o.contains_key("Cmdline") {
                return format!(
                    "UKIProfile(profile={}, cmdline={}, sign_expected_pcr={})",
                    py_repr(o.get("Profile").unwrap_or(&Value::Null)),
                    py_repr(o.get("Cmdline").unwrap_or(&Value::Null)),
                    py_repr(o.get("SignExpectedPcr").unwrap_or(&Value::Null))
                );
            }
            py_repr(v)
        }
        Value::Array(_) => py_repr(v),
    }
}

/// Python's `repr()` of a value.
fn py_repr(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            format!("{{{}}}", o.iter().map(|(k, v)| format!("'{k}': {}", py_repr(v))).collect::<Vec<_>>().join(", "))
        }
        other => py_str(other),
    }
}

fn join_list(items: &[Value]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(py_str).collect::<Vec<_>>().join(INDENT)
}

fn join_strings(items: &[String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.join(INDENT)
}

fn or_word(v: &Value, word: &str) -> String {
    if v.is_null() {
        word.to_string()
    } else {
        py_str(v)
    }
}

fn yes_no(v: &Value) -> &'static str {
    if v.as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

/// Upstream's `format_bytes()`.
pub fn format_bytes(n: i64) -> String {
    let f = n as f64;
    if n >= 1024 * 1024 * 1024 {
        format!("{:.1}G", f / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024 * 1024 {
        format!("{:.1}M", f / (1024.0 * 1024.0))
    } else if n >= 1024 {
        format!("{:.1}K", f / 1024.0)
    } else {
        format!("{n}B")
    }
}

fn bytes_or_none(v: &Value) -> String {
    v.as_i64().map(format_bytes).unwrap_or_else(|| "none".into())
}

/// The cache directory of the invoking user (`$XDG_CACHE_HOME`, `~/.cache`, `/var/cache`).
pub fn user_cache_dir(host: &Host) -> PathBuf {
    if let Some(d) = host.env("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = host.env("CACHE_DIRECTORY").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    // SAFETY: getuid() has no preconditions.
    let uid = unsafe { libc::getuid() };
    if uid >= 1000 {
        if let Some(home) = host.home().filter(|h| h != Path::new("/")) {
            return home.join(".cache");
        }
    }
    PathBuf::from("/var/cache")
}

fn writable(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: access() only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// `WorkspaceDirectory=` or its default.
pub fn workspace_dir_or_default(config: &Config, host: &Host) -> PathBuf {
    if let Some(w) = config.path("WorkspaceDirectory") {
        return w;
    }
    let cache = user_cache_dir(host);
    if cache != Path::new("/var/cache") && writable(&cache) {
        return cache.join("mkosi");
    }
    PathBuf::from("/var/tmp")
}

/// The human readable summary of one image.
pub fn summary(config: &Config, host: &Host, cwd: &Path, style: Style) -> String {
    let b = |s: &str| format!("{}{s}{}", style.bold, style.reset);
    let g = |f: &str| config.get(f);
    let list = |f: &str| join_list(config.list(f));
    let image = config.image();
    let mut out = String::new();

    let _ = writeln!(out, "{}", b(&format!("IMAGE: {image}")));

    if image == "main" || image == "tools" {
        let _ = write!(
            out,
            "
    {}:
                           Profiles: {}
                       Dependencies: {}
                    Minimum Version: {}
                  Configure Scripts: {}
                   Pass Environment: {}

    {}:
                       Distribution: {}
                            Release: {}
                       Architecture: {}
                             Mirror: {}
                           Snapshot: {}
               Local Mirror (build): {}
           Repo Signature/Key check: {}
              Fetch Repository Keys: {}
                       Repositories: {}
",
            b("CONFIG"),
            list("Profiles"),
            list("Dependencies"),
            or_word(g("MinimumVersion"), "none"),
            list("ConfigureScripts"),
            list("PassEnvironment"),
            b("DISTRIBUTION"),
            b(&py_str(g("Distribution"))),
            b(&or_word(g("Release"), "n/a")),
            py_str(g("Architecture")),
            or_word(g("Mirror"), "default"),
            or_word(g("Snapshot"), "none"),
            or_word(g("LocalMirror"), "none"),
            yes_no(g("RepositoryKeyCheck")),
            yes_no(g("RepositoryKeyFetch")),
            list("Repositories"),
        );
    }

    let manifest = config.strings("ManifestFormat").join(" ");
    let seed = or_word(g("Seed"), "random");
    let mode = g("OutputMode").as_i64().map(|m| format!("{m:04o}")).unwrap_or_else(|| "default".into());
    let _ = write!(
        out,
        "
    {}:
                      Output Format: {}
                   Manifest Formats: {}
                             Output: {}
                        Output Size: {}
                        Compression: {}
                  Compression Level: {}
                   Output Directory: {}
                        Output Mode: {}
                           Image ID: {}
                      Image Version: {}
                    Split Artifacts: {}
                 Repart Directories: {}
                        Sector Size: {}
                            Overlay: {}
                               Seed: {}
                          El Torito: {}
                   El Torito System: {}
                   El Torito Volume: {}
                El Torito Publisher: {}
                      Clean Scripts: {}

    {}:
                           Packages: {}
                     Build Packages: {}
                  Volatile Packages: {}
                Package Directories: {}
       Volatile Package Directories: {}
                 With Documentation: {}

                         Base Trees: {}
                     Skeleton Trees: {}
                        Extra Trees: {}

                    Remove Packages: {}
                       Remove Files: {}
     Clean Package Manager Metadata: {}
                  Source Date Epoch: {}

                       Sync Scripts: {}
                    Prepare Scripts: {}
                      Build Scripts: {}
                Postinstall Scripts: {}
                   Finalize Scripts: {}
                 Postoutput Scripts: {}

                           Bootable: {}
                         Bootloader: {}
                    BIOS Bootloader: {}
                    Shim Bootloader: {}
              Unified Kernel Images: {}
        Unified Kernel Image Format: {}
      Unified Kernel Image Profiles: {}
                            Initrds: {}
                    Initrd Profiles: {}
                    Initrd Packages: {}
           Initrd Volatile Packages: {}
                        Devicetrees: {}
                             Splash: {}
                Kernel Command Line: {}
                     Kernel Modules: {}
",
        b("OUTPUT"),
        py_str(g("Format")),
        if manifest.is_empty() { "(none)".to_string() } else { manifest },
        b(&config.output_with_compression()),
        bytes_or_none(g("OutputSize")),
        py_str(g("CompressOutput")),
        py_str(g("CompressLevel")),
        config.output_dir_or_cwd(cwd).display(),
        mode,
        py_str(g("ImageId")),
        py_str(g("ImageVersion")),
        list("SplitArtifacts"),
        list("RepartDirectories"),
        or_word(g("SectorSize"), "default"),
        yes_no(g("Overlay")),
        seed,
        py_str(g("ElTorito")),
        or_word(g("ElToritoSystem"), "none"),
        or_word(g("ElToritoVolume"), "none"),
        or_word(g("ElToritoPublisher"), "none"),
        list("CleanScripts"),
        b("CONTENT"),
        list("Packages"),
        list("BuildPackages"),
        list("VolatilePackages"),
        list("PackageDirectories"),
        list("VolatilePackageDirectories"),
        yes_no(g("WithDocs")),
        list("BaseTrees"),
        list("SkeletonTrees"),
        list("ExtraTrees"),
        list("RemovePackages"),
        list("RemoveFiles"),
        py_str(g("CleanPackageMetadata")),
        or_word(g("SourceDateEpoch"), "none"),
        list("SyncScripts"),
        list("PrepareScripts"),
        list("BuildScripts"),
        list("PostInstallationScripts"),
        list("FinalizeScripts"),
        list("PostOutputScripts"),
        py_str(g("Bootable")),
        py_str(g("Bootloader")),
        py_str(g("BiosBootloader")),
        py_str(g("ShimBootloader")),
        py_str(g("UnifiedKernelImages")),
        py_str(g("UnifiedKernelImageFormat")),
        list("UnifiedKernelImageProfiles"),
        list("Initrds"),
        list("InitrdProfiles"),
        list("InitrdPackages"),
        list("InitrdVolatilePackages"),
        list("Devicetrees"),
        or_word(g("Splash"), "none"),
        list("KernelCommandLine"),
        list("KernelModules"),
    );

    if !config.list("KernelModulesExclude").is_empty() {
        let _ = writeln!(out, "             Kernel Modules Exclude: {}", list("KernelModulesExclude"));
    }
    let _ = write!(
        out,
        "        Kernel Modules Include Host: {}
                     Firmware Files: {}
",
        yes_no(g("KernelModulesIncludeHost")),
        list("FirmwareFiles")
    );
    if !config.list("FirmwareExclude").is_empty() {
        let _ = writeln!(out, "             Firmware Files Exclude: {}", list("FirmwareExclude"));
    }
    let _ = write!(
        out,
        "              Kernel Modules Initrd: {}
              Kernel Initrd Modules: {}
",
        yes_no(g("KernelModulesInitrd")),
        list("KernelInitrdModules")
    );
    if !config.list("KernelModulesInitrdExclude").is_empty() {
        let _ = writeln!(out, "      Kernel Modules Initrd Exclude: {}", list("KernelModulesInitrdExclude"));
    }
    let _ = write!(
        out,
        " Kernel Modules Initrd Include Host: {}

                             Locale: {}
                    Locale Messages: {}
                             Keymap: {}
                           Timezone: {}
                           Hostname: {}
                      Root Password: {}
                         Root Shell: {}
                         Machine ID: {}

                          Autologin: {}
                        Make Initrd: {}
                                SSH: {}
                    SELinux Relabel: {}
",
        yes_no(g("KernelModulesInitrdIncludeHost")),
        or_word(g("Locale"), "default"),
        or_word(g("LocaleMessages"), "default"),
        or_word(g("Keymap"), "default"),
        or_word(g("Timezone"), "default"),
        or_word(g("Hostname"), "default"),
        if g("RootPassword").is_null() { "(default)" } else { "(set)" },
        or_word(g("RootShell"), "default"),
        or_word(g("MachineId"), "none"),
        yes_no(g("Autologin")),
        yes_no(g("MakeInitrd")),
        py_str(g("Ssh")),
        py_str(g("SELinuxRelabel")),
    );

    let format = config.output_format();
    if format.is_extension_or_portable_image()
        || matches!(format, OutputFormat::Disk | OutputFormat::Uki | OutputFormat::Esp)
    {
        let source = |f: &str| {
            let v = g(f);
            let t = v.get("Type").map(py_str).unwrap_or_default();
            let s = v.get("Source").map(py_str).unwrap_or_default();
            if s.is_empty() {
                t
            } else {
                format!("{t}:{s}")
            }
        };
        let _ = write!(
            out,
            "
         {}:
                    UEFI SecureBoot: {}
         UEFI SecureBoot AutoEnroll: {}
             SecureBoot Signing Key: {}
      SecureBoot Signing Key Source: {}
             SecureBoot Certificate: {}
      SecureBoot Certificate Source: {}
               SecureBoot Sign Tool: {}
                             Verity: {}
                 Verity Signing Key: {}
          Verity Signing Key Source: {}
                 Verity Certificate: {}
          Verity Certificate Source: {}
                 Sign Expected PCRs: {}
          Expected PCRs Signing Key: {}
           Expected PCRs Key Source: {}
          Expected PCRs Certificate: {}
   Expected PCRs Certificate Source: {}
                         Passphrase: {}
                           Checksum: {}
                               Sign: {}
                       OpenPGP Tool: {}
                            GPG Key: ({})
",
            b("VALIDATION"),
            yes_no(g("SecureBoot")),
            yes_no(g("SecureBootAutoEnroll")),
            or_word(g("SecureBootKey"), "none"),
            source("SecureBootKeySource"),
            or_word(g("SecureBootCertificate"), "none"),
            source("SecureBootCertificateSource"),
            py_str(g("SecureBootSignTool")),
            py_str(g("Verity")),
            or_word(g("VerityKey"), "none"),
            source("VerityKeySource"),
            or_word(g("VerityCertificate"), "none"),
            source("VerityCertificateSource"),
            py_str(g("SignExpectedPcr")),
            or_word(g("SignExpectedPcrKey"), "none"),
            source("SignExpectedPcrKeySource"),
            or_word(g("SignExpectedPcrCertificate"), "none"),
            source("SignExpectedPcrCertificateSource"),
            or_word(g("Passphrase"), "none"),
            yes_no(g("Checksum")),
            yes_no(g("Sign")),
            py_str(g("OpenPGPTool")),
            or_word(g("Key"), "default"),
        );
    }

    if image == "main" {
        let env: Vec<String> = config.map("Environment").into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let credentials: Vec<String> = config
            .list("Credentials")
            .iter()
            .filter_map(|c| c.get("Name").and_then(Value::as_str).map(str::to_string))
            .collect();
        let cid = match g("VSockCID").as_i64() {
            Some(-1) => "auto".to_string(),
            Some(-2) => "hash".to_string(),
            Some(n) => n.to_string(),
            None => "auto".to_string(),
        };
        let machine = config.str("Machine").filter(|m| !m.is_empty()).unwrap_or(image).to_string();
        let _ = write!(
            out,
            "
    {}:
                         Tools Tree: {}
            Tools Tree Certificates: {}

                 Extra Search Paths: {}
                        Incremental: {}
             Use Only Package Cache: {}
                      Sandbox Trees: {}
                Workspace Directory: {}
                    Cache Directory: {}
                          Cache Key: {}
            Package Cache Directory: {}
                    Build Directory: {}
                          Build Key: {}
                     Use Subvolumes: {}
                     Repart Offline: {}
                       Save History: {}
                      Build Sources: {}
            Build Sources Ephemeral: {}
                 Script Environment: {}
                  Environment Files: {}
         Run Tests in Build Scripts: {}
               Scripts With Network: {}

                          Proxy URL: {}
             Proxy Peer Certificate: {}
           Proxy Client Certificate: {}
                   Proxy Client Key: {}

    Automatically set +x on scripts: {}

    {}:
                    NSpawn Settings: {}
                          Ephemeral: {}
                        Credentials: {}
          Extra Kernel Command Line: {}
                      Runtime Trees: {}
                       Runtime Size: {}
                    Runtime Network: {}
              Runtime Build Sources: {}
                          Bind User: {}
                    SSH Signing Key: {}
                    SSH Certificate: {}
                            Machine: {}
                    Forward Journal: {}
       Register guest with machined: {}
                Storage Target Mode: {}

            Virtual Machine Monitor: {}
                            Console: {}
                          CPU Cores: {}
                                RAM: {}
                             MaxMem: {}
                                KVM: {}
                                CXL: {}
                              VSock: {}
                VSock Connection ID: {}
                                TPM: {}
                          Disk Type: {}
                           Firmware: {}
                 Firmware Variables: {}
                              Linux: {}
               QEMU Extra Arguments: {}
",
            b("BUILD CONFIGURATION"),
            py_str(g("ToolsTree")),
            yes_no(g("ToolsTreeCertificates")),
            list("ExtraSearchPaths"),
            py_str(g("Incremental")),
            py_str(g("CacheOnly")),
            list("SandboxTrees"),
            workspace_dir_or_default(config, host).display(),
            or_word(g("CacheDirectory"), "none"),
            py_str(g("CacheKey")),
            or_word(g("PackageCacheDirectory"), "default"),
            or_word(g("BuildDirectory"), "none"),
            py_str(g("BuildKey")),
            py_str(g("UseSubvolumes")),
            yes_no(g("RepartOffline")),
            yes_no(g("History")),
            list("BuildSources"),
            py_str(g("BuildSourcesEphemeral")),
            join_strings(&env),
            list("EnvironmentFiles"),
            yes_no(g("WithTests")),
            yes_no(g("WithNetwork")),
            or_word(g("ProxyUrl"), "none"),
            or_word(g("ProxyPeerCertificate"), "none"),
            or_word(g("ProxyClientCertificate"), "none"),
            or_word(g("ProxyClientKey"), "none"),
            yes_no(g("MakeScriptsExecutable")),
            b("HOST CONFIGURATION"),
            or_word(g("NSpawnSettings"), "none"),
            py_str(g("Ephemeral")),
            // Upstream passes a generator to line_join_list(), which is
            // always true: no credentials show as an empty value, not "none".
            credentials.join(INDENT),
            list("KernelCommandLineExtra"),
            list("RuntimeTrees"),
            bytes_or_none(g("RuntimeSize")),
            py_str(g("RuntimeNetwork")),
            py_str(g("RuntimeBuildSources")),
            yes_no(g("BindUser")),
            or_word(g("SshKey"), "none"),
            or_word(g("SshCertificate"), "none"),
            machine,
            or_word(g("ForwardJournal"), "none"),
            py_str(g("Register")),
            py_str(g("StorageTargetMode")),
            py_str(g("VirtualMachineMonitor")),
            py_str(g("Console")),
            py_str(g("CPUs")),
            g("RAM").as_i64().map(format_bytes).unwrap_or_default(),
            bytes_or_none(g("MaxMem")),
            py_str(g("KVM")),
            py_str(g("CXL")),
            py_str(g("VSock")),
            cid,
            py_str(g("TPM")),
            py_str(g("DiskType")),
            py_str(g("Firmware")),
            or_word(g("FirmwareVariables"), "none"),
            or_word(g("Linux"), "none"),
            list("QemuArgs"),
        );
    }

    out
}

/// `mkosi cat-config`: every configuration file each image read.
pub fn cat_config(images: &[Config], cwd: &Path, style: Style) -> String {
    let mut out = String::new();
    for (n, config) in images.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{}### IMAGE: {}{}", style.bold, config.image(), style.reset);
        for file in config.paths("Files") {
            let shown = file.strip_prefix(cwd).map(Path::to_path_buf).unwrap_or(file.clone());
            let _ = writeln!(out, "{}# {}{}", style.blue, shown.display(), style.reset);
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let _ = writeln!(out, "{text}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(format_bytes(2147483648), "2.0G");
        assert_eq!(format_bytes(1536), "1.5K");
        assert_eq!(format_bytes(100), "100B");
        assert_eq!(format_bytes(5 * 1024 * 1024), "5.0M");
    }

    #[test]
    fn python_strings() {
        use serde_json::json;
        assert_eq!(py_str(&json!({"Source": "/a", "Target": null})), "/a");
        assert_eq!(py_str(&json!({"Source": "/a", "Target": "/b"})), "/a:/b");
        assert_eq!(py_str(&json!(null)), "None");
        assert_eq!(py_str(&json!(true)), "True");
    }
}
