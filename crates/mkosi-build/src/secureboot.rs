//! Secure Boot: signing EFI binaries (`SecureBootSignTool=`) and the
//! auto-enrollment key files for systemd-boot.
//!
//! Signing runs `systemd-sbsign sign` or `sbsign` on the host. With
//! `SecureBootSignTool=auto`, `systemd-sbsign` (on `$PATH` or in
//! `/usr/lib/systemd`) is preferred and `sbsign` is the fallback. Keys may be
//! PEM files or come from an OpenSSL engine (`engine:<name>`, `sbsign
//! --engine` / `systemd-sbsign --private-key-source`) or provider
//! (`provider:<name>`, systemd-sbsign only); for those stdin is passed on so
//! that PIN prompts work. `sbsign` only takes certificates from files.
//!
//! Auto-enrollment (bootctl before 257 cannot write the files itself):
//! the certificate is converted to DER, wrapped in an EFI signature list
//! owned by the all-zero GUID (`sbsiglist`), and signed as an authenticated
//! variable update for `PK`, `KEK` and `db` with the same key (`sbvarsign`),
//! giving `loader/keys/auto/{PK,KEK,db}.auth` on the ESP. `sbvarsign` stamps
//! the current time into the `EFI_VARIABLE_AUTHENTICATION_2` header (it has no
//! way to take `SOURCE_DATE_EPOCH`), so those files are not reproducible;
//! upstream mkosi has the same limitation.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mkosi_config::enums::{CertificateSourceType, KeySourceType, SecureBootSignTool};
use mkosi_config::Config;
use mkosi_sandbox::run::{run, Cmd, Input};

use crate::error::{io, BuildError, Result};

/// The Debian package with `sbsign`, `sbsiglist` and `sbvarsign`.
pub const SBSIGNTOOL_PACKAGE: &str = "sbsigntool";

/// Where systemd installs `systemd-sbsign` when it is not on `$PATH`.
const SYSTEMD_SBSIGN_FALLBACK: &str = "/usr/lib/systemd/systemd-sbsign";

/// The attributes of the auto-enrollment variables.
pub const AUTO_ENROLL_ATTRIBUTES: &str =
    "NON_VOLATILE,BOOTSERVICE_ACCESS,RUNTIME_ACCESS,TIME_BASED_AUTHENTICATED_WRITE_ACCESS";

/// The variables the auto-enrollment files are made for, in order.
pub const AUTO_ENROLL_VARIABLES: [&str; 3] = ["PK", "KEK", "db"];

/// Where an OpenSSL key or certificate comes from (`Type` and `Source` of a
/// `*KeySource=`/`*CertificateSource=` setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source<T> {
    pub kind: T,
    pub source: String,
}

impl<T: std::fmt::Display + Copy + PartialEq> Source<T> {
    /// The `type:source` spelling systemd tools take (`--private-key-source=`).
    pub fn spec(&self) -> String {
        if self.source.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}:{}", self.kind, self.source)
        }
    }
}

/// The signing key and certificate of `SecureBoot=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureBootKeys {
    /// A PEM file, or a key name understood by the engine/provider.
    pub key: String,
    pub key_source: Source<KeySourceType>,
    /// A PEM file, or a name understood by the provider.
    pub certificate: String,
    pub certificate_source: Source<CertificateSourceType>,
}

fn source_of<T: std::str::FromStr>(config: &Config, field: &str, default: T) -> Result<Source<T>> {
    let v = config.get(field);
    let kind = match v.get("Type").and_then(|t| t.as_str()) {
        None => default,
        Some(t) => t.parse().map_err(|_| BuildError::msg(format!("{field}=: unknown source type '{t}'")))?,
    };
    let source = v.get("Source").and_then(|s| s.as_str()).unwrap_or_default().to_string();
    Ok(Source { kind, source })
}

impl SecureBootKeys {
    /// `SecureBootKey=`, `SecureBootCertificate=` and their sources; an error
    /// when either is not set.
    pub fn from_config(config: &Config) -> Result<SecureBootKeys> {
        let key = config.str("SecureBootKey").filter(|k| !k.is_empty());
        let certificate = config.str("SecureBootCertificate").filter(|c| !c.is_empty());
        let (Some(key), Some(certificate)) = (key, certificate) else {
            return Err(BuildError::hint(
                "SecureBoot= needs a signing key and a certificate",
                "Set SecureBootKey= and SecureBootCertificate= (mkosi genkey creates a pair)",
            ));
        };
        Ok(SecureBootKeys {
            key: key.to_string(),
            key_source: source_of(config, "SecureBootKeySource", KeySourceType::File)?,
            certificate: certificate.to_string(),
            certificate_source: source_of(config, "SecureBootCertificateSource", CertificateSourceType::File)?,
        })
    }

    /// Whether the key or the certificate is not a plain file (so stdin is
    /// handed to the tool for PIN prompts).
    pub fn needs_terminal(&self) -> bool {
        self.key_source.kind != KeySourceType::File || self.certificate_source.kind != CertificateSourceType::File
    }
}

/// The signing tool that will be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignTool {
    /// `systemd-sbsign` at this path.
    SystemdSbsign(PathBuf),
    /// `sbsign` at this path.
    Sbsign(PathBuf),
}

/// An executable called `name` in one of the directories of `$PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn find_systemd_sbsign(lookup: &dyn Fn(&str) -> Option<PathBuf>) -> Option<PathBuf> {
    lookup("systemd-sbsign").or_else(|| lookup(SYSTEMD_SBSIGN_FALLBACK))
}

/// Pick the tool for `SecureBootSignTool=` with `lookup` finding executables
/// (by name, or by absolute path for systemd's private directory).
pub fn choose_sign_tool(wanted: SecureBootSignTool, lookup: &dyn Fn(&str) -> Option<PathBuf>) -> Result<SignTool> {
    match wanted {
        SecureBootSignTool::SystemdSbsign => {
            find_systemd_sbsign(lookup).map(SignTool::SystemdSbsign).ok_or_else(|| {
                BuildError::hint(
                    "Could not find systemd-sbsign (SecureBootSignTool=systemd-sbsign)",
                    "systemd-sbsign comes with systemd 257 or newer; or use SecureBootSignTool=sbsign \
                 (on Debian and Ubuntu: apt install sbsigntool)",
                )
            })
        }
        SecureBootSignTool::Sbsign => lookup("sbsign").map(SignTool::Sbsign).ok_or_else(|| {
            BuildError::hint(
                "Could not find sbsign (SecureBootSignTool=sbsign)",
                format!("Install sbsign (on Debian and Ubuntu: apt install {SBSIGNTOOL_PACKAGE})"),
            )
        }),
        SecureBootSignTool::Auto => find_systemd_sbsign(lookup)
            .map(SignTool::SystemdSbsign)
            .or_else(|| lookup("sbsign").map(SignTool::Sbsign))
            .ok_or_else(|| {
                BuildError::hint(
                    "One of systemd-sbsign or sbsign is required to use SecureBoot=",
                    format!("Install sbsign (on Debian and Ubuntu: apt install {SBSIGNTOOL_PACKAGE})"),
                )
            }),
    }
}

fn lookup_host(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    find_on_path(name)
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).ok_or_else(|| BuildError::msg(format!("{} is not a valid UTF-8 path", p.display())))
}

/// The command line signing `input` into `output` with `tool`.
pub fn sign_command(tool: &SignTool, keys: &SecureBootKeys, input: &Path, output: &Path) -> Result<Vec<String>> {
    let (input, output) = (path_str(input)?, path_str(output)?);
    match tool {
        SignTool::SystemdSbsign(exe) => {
            let mut argv = vec![path_str(exe)?, "sign".into(), "--output".into(), output, input];
            if keys.certificate_source.kind != CertificateSourceType::File {
                argv.extend(["--certificate-source".into(), keys.certificate_source.spec()]);
            }
            argv.extend(["--certificate".into(), keys.certificate.clone()]);
            if keys.key_source.kind != KeySourceType::File {
                argv.extend(["--private-key-source".into(), keys.key_source.spec()]);
            }
            argv.extend(["--private-key".into(), keys.key.clone()]);
            Ok(argv)
        }
        SignTool::Sbsign(exe) => {
            if keys.certificate_source.kind != CertificateSourceType::File {
                return Err(BuildError::hint(
                    "Secure boot certificate source must be 'file' when using sbsign as the signing tool",
                    "Use SecureBootSignTool=systemd-sbsign or a certificate file",
                ));
            }
            if keys.key_source.kind == KeySourceType::Provider {
                return Err(BuildError::hint(
                    "sbsign cannot use keys from an OpenSSL provider",
                    "Use SecureBootSignTool=systemd-sbsign (systemd 257 or newer)",
                ));
            }
            let mut argv = vec![path_str(exe)?, "--cert".into(), keys.certificate.clone(), "--output".into(), output];
            if keys.key_source.kind == KeySourceType::Engine {
                argv.extend(["--engine".into(), keys.key_source.source.clone()]);
            }
            argv.extend(["--key".into(), keys.key.clone(), input]);
            Ok(argv)
        }
    }
}

fn stdin_for(keys: &SecureBootKeys) -> Input {
    if keys.needs_terminal() {
        Input::Inherit
    } else {
        Input::Null
    }
}

/// Sign the EFI binary `input` for Secure Boot into `output` (which may be
/// `input`) with the key and tool of `config`.
pub fn sign_efi(config: &Config, input: &Path, output: &Path) -> Result<()> {
    let keys = SecureBootKeys::from_config(config)?;
    let wanted = config.str("SecureBootSignTool").and_then(|t| t.parse().ok()).unwrap_or(SecureBootSignTool::Auto);
    let tool = choose_sign_tool(wanted, &lookup_host)?;
    sign_efi_with(&tool, &keys, input, output)
}

/// [`sign_efi`] with an explicit tool and keys.
pub fn sign_efi_with(tool: &SignTool, keys: &SecureBootKeys, input: &Path, output: &Path) -> Result<()> {
    if !input.is_file() {
        return Err(BuildError::msg(format!("Cannot sign {}: no such file", input.display())));
    }
    let argv = sign_command(tool, keys, input, output)?;
    run(&Cmd::new(argv).stdin(stdin_for(keys)).quiet())?;
    Ok(())
}

fn require(tool: &str) -> Result<PathBuf> {
    lookup_host(tool).ok_or_else(|| {
        BuildError::hint(
            format!("{tool} is not installed, but it is needed for Secure Boot auto-enrollment"),
            format!(
                "Install {tool} (on Debian and Ubuntu: apt install {})",
                if tool == "openssl" { "openssl" } else { SBSIGNTOOL_PACKAGE }
            ),
        )
    })
}

/// The `sbvarsign` command line making `<var>.auth` in `keys_dir` from the
/// signature list `esl`.
pub fn sbvarsign_command(
    sbvarsign: &Path,
    keys: &SecureBootKeys,
    var: &str,
    esl: &Path,
    keys_dir: &Path,
) -> Result<Vec<String>> {
    if keys.certificate_source.kind != CertificateSourceType::File {
        return Err(BuildError::hint(
            "Secure Boot auto-enrollment needs the certificate in a file (sbvarsign cannot use a provider)",
            "Use SecureBootCertificateSource=file",
        ));
    }
    if keys.key_source.kind == KeySourceType::Provider {
        return Err(BuildError::hint(
            "sbvarsign cannot use keys from an OpenSSL provider for Secure Boot auto-enrollment",
            "Use a key file or an OpenSSL engine (SecureBootKeySource=engine:…)",
        ));
    }
    let mut argv = vec![
        path_str(sbvarsign)?,
        "--attr".into(),
        AUTO_ENROLL_ATTRIBUTES.into(),
        "--cert".into(),
        keys.certificate.clone(),
        "--output".into(),
        path_str(&keys_dir.join(format!("{var}.auth")))?,
    ];
    if keys.key_source.kind == KeySourceType::Engine {
        argv.extend(["--engine".into(), keys.key_source.source.clone()]);
    }
    argv.extend(["--key".into(), keys.key.clone(), var.into(), path_str(esl)?]);
    Ok(argv)
}

/// Write `loader/keys/auto/{PK,KEK,db}.auth` below `esp_root` for systemd-boot's
/// Secure Boot auto-enrollment, all signed with the `SecureBootKey=` of
/// `config`; intermediate files go to `workspace`. The directory is created
/// with mode 0700 and the files with mode 0600.
pub fn write_auto_enroll_keys(config: &Config, esp_root: &Path, workspace: &Path) -> Result<()> {
    let keys = SecureBootKeys::from_config(config)?;
    write_auto_enroll_keys_with(&keys, esp_root, workspace)
}

/// [`write_auto_enroll_keys`] with explicit keys.
pub fn write_auto_enroll_keys_with(keys: &SecureBootKeys, esp_root: &Path, workspace: &Path) -> Result<()> {
    if keys.certificate_source.kind != CertificateSourceType::File {
        // Checked before anything is run.
        sbvarsign_command(Path::new("sbvarsign"), keys, "PK", Path::new("x"), Path::new("x"))?;
    }
    let openssl = require("openssl")?;
    let sbsiglist = require("sbsiglist")?;
    let sbvarsign = require("sbvarsign")?;

    let dir = esp_root.join("loader/keys/auto");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io("creating", &dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod", &dir))?;
    std::fs::create_dir_all(workspace).map_err(io("creating", workspace))?;

    let der = workspace.join("mkosi.der");
    let esl = workspace.join("mkosi.esl");
    run(&Cmd::new([
        path_str(&openssl)?,
        "x509".into(),
        "-outform".into(),
        "DER".into(),
        "-in".into(),
        keys.certificate.clone(),
        "-out".into(),
        path_str(&der)?,
    ])
    .stdin(Input::Null)
    .quiet())?;
    run(&Cmd::new([
        path_str(&sbsiglist)?,
        "--owner".into(),
        "00000000-0000-0000-0000-000000000000".into(),
        "--type".into(),
        "x509".into(),
        "--output".into(),
        path_str(&esl)?,
        path_str(&der)?,
    ])
    .stdin(Input::Null)
    .quiet())?;

    for var in AUTO_ENROLL_VARIABLES {
        let argv = sbvarsign_command(&sbvarsign, keys, var, &esl, &dir)?;
        run(&Cmd::new(argv).stdin(stdin_for(keys)).quiet())?;
        let auth = dir.join(format!("{var}.auth"));
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", &auth))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(values: &[(&str, serde_json::Value)]) -> Config {
        Config::from_values(values.iter().map(|(k, v)| (k.to_string(), v.clone())))
    }

    fn file_keys() -> SecureBootKeys {
        SecureBootKeys {
            key: "/k/db.key".into(),
            key_source: Source { kind: KeySourceType::File, source: String::new() },
            certificate: "/k/db.crt".into(),
            certificate_source: Source { kind: CertificateSourceType::File, source: String::new() },
        }
    }

    #[test]
    fn keys_from_config() {
        let c = config(&[
            ("SecureBootKey", json!("pkcs11:token=x")),
            ("SecureBootKeySource", json!({"Type": "engine", "Source": "pkcs11"})),
            ("SecureBootCertificate", json!("/k/db.crt")),
            ("SecureBootCertificateSource", json!({"Type": "file", "Source": ""})),
        ]);
        let k = SecureBootKeys::from_config(&c).expect("keys");
        assert_eq!(k.key, "pkcs11:token=x");
        assert_eq!(k.key_source, Source { kind: KeySourceType::Engine, source: "pkcs11".into() });
        assert_eq!(k.key_source.spec(), "engine:pkcs11");
        assert_eq!(k.certificate_source.kind, CertificateSourceType::File);
        assert!(k.needs_terminal());
        assert!(!file_keys().needs_terminal());

        // Sources default to files.
        let c = config(&[("SecureBootKey", json!("/k/a.key")), ("SecureBootCertificate", json!("/k/a.crt"))]);
        let k = SecureBootKeys::from_config(&c).expect("keys");
        assert_eq!(k.key_source.kind, KeySourceType::File);

        let err = SecureBootKeys::from_config(&config(&[("SecureBootKey", json!("/k/a.key"))])).expect_err("no cert");
        assert!(err.to_string().contains("SecureBoot= needs a signing key and a certificate"));
        assert!(err.hint_text().is_some_and(|h| h.contains("SecureBootCertificate=")));
    }

    #[test]
    fn tool_choice() {
        let both = |n: &str| match n {
            "systemd-sbsign" => None,
            SYSTEMD_SBSIGN_FALLBACK => Some(PathBuf::from(SYSTEMD_SBSIGN_FALLBACK)),
            "sbsign" => Some(PathBuf::from("/usr/bin/sbsign")),
            _ => None,
        };
        let only_sbsign = |n: &str| (n == "sbsign").then(|| PathBuf::from("/usr/bin/sbsign"));
        let none = |_: &str| None;
        assert_eq!(
            choose_sign_tool(SecureBootSignTool::Auto, &both).expect("auto"),
            SignTool::SystemdSbsign(SYSTEMD_SBSIGN_FALLBACK.into())
        );
        assert_eq!(
            choose_sign_tool(SecureBootSignTool::Auto, &only_sbsign).expect("auto"),
            SignTool::Sbsign("/usr/bin/sbsign".into())
        );
        assert_eq!(
            choose_sign_tool(SecureBootSignTool::Sbsign, &both).expect("sbsign"),
            SignTool::Sbsign("/usr/bin/sbsign".into())
        );
        let err = choose_sign_tool(SecureBootSignTool::SystemdSbsign, &only_sbsign).expect_err("missing");
        assert!(err.to_string().contains("Could not find systemd-sbsign"));
        let err = choose_sign_tool(SecureBootSignTool::Auto, &none).expect_err("missing");
        assert!(err.to_string().contains("One of systemd-sbsign or sbsign is required"));
        assert!(err.hint_text().is_some_and(|h| h.contains("sbsigntool")));
        let err = choose_sign_tool(SecureBootSignTool::Sbsign, &none).expect_err("missing");
        assert!(err.hint_text().is_some_and(|h| h.contains("apt install sbsigntool")));
    }

    #[test]
    fn sbsign_command_lines() {
        let tool = SignTool::Sbsign("/usr/bin/sbsign".into());
        let argv = sign_command(&tool, &file_keys(), Path::new("/in.efi"), Path::new("/out.efi")).expect("argv");
        assert_eq!(
            argv,
            ["/usr/bin/sbsign", "--cert", "/k/db.crt", "--output", "/out.efi", "--key", "/k/db.key", "/in.efi"]
        );
        let mut engine = file_keys();
        engine.key_source = Source { kind: KeySourceType::Engine, source: "pkcs11".into() };
        engine.key = "pkcs11:object=db".into();
        let argv = sign_command(&tool, &engine, Path::new("/in.efi"), Path::new("/out.efi")).expect("argv");
        assert_eq!(argv[5..], ["--engine", "pkcs11", "--key", "pkcs11:object=db", "/in.efi"]);

        let mut provider = file_keys();
        provider.key_source = Source { kind: KeySourceType::Provider, source: "pkcs11".into() };
        assert!(sign_command(&tool, &provider, Path::new("/i"), Path::new("/o")).is_err());
        let mut cert_provider = file_keys();
        cert_provider.certificate_source = Source { kind: CertificateSourceType::Provider, source: "p".into() };
        let err = sign_command(&tool, &cert_provider, Path::new("/i"), Path::new("/o")).expect_err("cert");
        assert!(err.to_string().contains("certificate source must be 'file'"));
    }

    #[test]
    fn systemd_sbsign_command_lines() {
        let tool = SignTool::SystemdSbsign("/usr/bin/systemd-sbsign".into());
        let argv = sign_command(&tool, &file_keys(), Path::new("/in.efi"), Path::new("/out.efi")).expect("argv");
        #[rustfmt::skip]
        assert_eq!(argv, [
            "/usr/bin/systemd-sbsign", "sign", "--output", "/out.efi", "/in.efi",
            "--certificate", "/k/db.crt", "--private-key", "/k/db.key",
        ]);
        let mut k = file_keys();
        k.key_source = Source { kind: KeySourceType::Provider, source: "pkcs11".into() };
        k.certificate_source = Source { kind: CertificateSourceType::Provider, source: "pkcs11".into() };
        let argv = sign_command(&tool, &k, Path::new("/in.efi"), Path::new("/out.efi")).expect("argv");
        #[rustfmt::skip]
        assert_eq!(argv[5..], [
            "--certificate-source", "provider:pkcs11", "--certificate", "/k/db.crt",
            "--private-key-source", "provider:pkcs11", "--private-key", "/k/db.key",
        ]);
    }

    #[test]
    fn sbvarsign_command_lines() {
        let argv = sbvarsign_command(
            Path::new("/usr/bin/sbvarsign"),
            &file_keys(),
            "KEK",
            Path::new("/ws/mkosi.esl"),
            Path::new("/esp/loader/keys/auto"),
        )
        .expect("argv");
        #[rustfmt::skip]
        assert_eq!(argv, [
            "/usr/bin/sbvarsign", "--attr", AUTO_ENROLL_ATTRIBUTES, "--cert", "/k/db.crt",
            "--output", "/esp/loader/keys/auto/KEK.auth", "--key", "/k/db.key", "KEK", "/ws/mkosi.esl",
        ]);
        let mut engine = file_keys();
        engine.key_source = Source { kind: KeySourceType::Engine, source: "e".into() };
        let argv =
            sbvarsign_command(Path::new("sbvarsign"), &engine, "db", Path::new("/e"), Path::new("/d")).expect("argv");
        assert!(argv.windows(2).any(|w| w == ["--engine", "e"]));
        let mut provider = file_keys();
        provider.key_source = Source { kind: KeySourceType::Provider, source: "p".into() };
        assert!(sbvarsign_command(Path::new("sbvarsign"), &provider, "db", Path::new("/e"), Path::new("/d")).is_err());
    }

    #[test]
    fn signing_a_missing_file_is_an_error() {
        let tool = SignTool::Sbsign("/usr/bin/sbsign".into());
        let err = sign_efi_with(&tool, &file_keys(), Path::new("/nonexistent/x.efi"), Path::new("/tmp/y.efi"))
            .expect_err("missing");
        assert!(err.to_string().contains("no such file"), "{err}");
    }
}
