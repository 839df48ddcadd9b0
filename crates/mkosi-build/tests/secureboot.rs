//! Secure Boot signing with the real tools: a key pair made with openssl, an
//! EFI binary signed with sbsign and checked with `sbverify --cert`, and the
//! auto-enrollment files made with sbsiglist/sbvarsign.
//!
//! Skipped (with a message) when openssl or sbsigntool are not installed
//! (`apt install openssl sbsigntool`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mkosi_build::secureboot::{self, SignTool};
use mkosi_config::Config;
use serde_json::json;

fn have(tool: &str) -> bool {
    secureboot::find_on_path(tool).is_some()
}

fn tools_present(tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools.iter().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        println!("SKIPPED: {missing:?} not installed (apt install openssl sbsigntool)");
    }
    missing.is_empty()
}

/// A self-signed RSA key and certificate in `dir`.
fn keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let (key, crt) = (dir.join("db.key"), dir.join("db.crt"));
    let out = Command::new("openssl")
        .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=mkosi test/"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    (key, crt)
}

/// A minimal PE32+ EFI application (what sbsign needs: headers, a section,
/// a checksum field and a certificate table directory).
fn tiny_efi() -> Vec<u8> {
    let mut out = vec![0u8; 0x400];
    out[0..2].copy_from_slice(b"MZ");
    out[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    out[0x80..0x84].copy_from_slice(b"PE\0\0");
    let c = 0x84;
    out[c..c + 2].copy_from_slice(&0x8664u16.to_le_bytes());
    out[c + 2..c + 4].copy_from_slice(&1u16.to_le_bytes());
    out[c + 16..c + 18].copy_from_slice(&240u16.to_le_bytes());
    out[c + 18..c + 20].copy_from_slice(&0x0206u16.to_le_bytes());
    let o = c + 20;
    out[o..o + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    out[o + 4..o + 8].copy_from_slice(&0x200u32.to_le_bytes());
    out[o + 16..o + 20].copy_from_slice(&0x1000u32.to_le_bytes());
    out[o + 20..o + 24].copy_from_slice(&0x1000u32.to_le_bytes());
    out[o + 32..o + 36].copy_from_slice(&0x1000u32.to_le_bytes());
    out[o + 36..o + 40].copy_from_slice(&0x200u32.to_le_bytes());
    out[o + 56..o + 60].copy_from_slice(&0x2000u32.to_le_bytes());
    out[o + 60..o + 64].copy_from_slice(&0x200u32.to_le_bytes());
    out[o + 68..o + 70].copy_from_slice(&10u16.to_le_bytes());
    out[o + 108..o + 112].copy_from_slice(&16u32.to_le_bytes());
    let h = o + 240;
    out[h..h + 5].copy_from_slice(b".text");
    out[h + 8..h + 12].copy_from_slice(&1u32.to_le_bytes());
    out[h + 12..h + 16].copy_from_slice(&0x1000u32.to_le_bytes());
    out[h + 16..h + 20].copy_from_slice(&0x200u32.to_le_bytes());
    out[h + 20..h + 24].copy_from_slice(&0x200u32.to_le_bytes());
    out[h + 36..h + 40].copy_from_slice(&0x6000_0020u32.to_le_bytes());
    out[0x200] = 0xc3;
    out
}

/// A `systemd-boot-efi` package cached by the CI builds.
fn cached_systemd_boot_deb() -> Option<PathBuf> {
    let mut debs = Vec::new();
    for d in std::fs::read_dir("/var/cache/mkosi-ci").ok()?.flatten() {
        let Ok(entries) = std::fs::read_dir(d.path().join("cache/apt/archives")) else { continue };
        debs.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("systemd-boot-efi_"))),
        );
    }
    debs.sort();
    debs.pop()
}

/// A real EFI binary (systemd-boot from the host or a cached package) when one
/// is around, else a tiny synthetic one.
fn efi_binary(dir: &Path) -> PathBuf {
    let p = dir.join("test.efi");
    let host = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    let extracted = dir.join("deb/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if host.is_file() {
        std::fs::copy(host, &p).expect("copy");
        return p;
    }
    if let Some(deb) = cached_systemd_boot_deb() {
        let ok = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("deb")).status().is_ok_and(|s| s.success());
        if ok && extracted.is_file() {
            std::fs::copy(&extracted, &p).expect("copy");
            return p;
        }
    }
    println!("no systemd-boot binary found, signing a synthetic PE");
    std::fs::write(&p, tiny_efi()).expect("write");
    p
}

#[test]
fn tiny_efi_can_be_signed() {
    if !tools_present(&["openssl", "sbsign", "sbverify"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, crt) = keypair(dir.path());
    let input = dir.path().join("tiny.efi");
    std::fs::write(&input, tiny_efi()).expect("write");
    let output = dir.path().join("tiny.signed.efi");
    secureboot::sign_efi(&config(&key, &crt, "sbsign"), &input, &output).expect("sign");
    assert!(sbverify(&crt, &output));
}

fn config(key: &Path, crt: &Path, tool: &str) -> Config {
    Config::from_values([
        ("SecureBoot".to_string(), json!(true)),
        ("SecureBootKey".to_string(), json!(key.to_str().expect("utf8"))),
        ("SecureBootKeySource".to_string(), json!({"Type": "file", "Source": ""})),
        ("SecureBootCertificate".to_string(), json!(crt.to_str().expect("utf8"))),
        ("SecureBootCertificateSource".to_string(), json!({"Type": "file", "Source": ""})),
        ("SecureBootSignTool".to_string(), json!(tool)),
    ])
}

fn sbverify(cert: &Path, file: &Path) -> bool {
    Command::new("sbverify").arg("--cert").arg(cert).arg(file).output().is_ok_and(|o| o.status.success())
}

#[test]
fn sign_with_sbsign_and_verify() {
    if !tools_present(&["openssl", "sbsign", "sbverify"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, crt) = keypair(dir.path());
    let input = efi_binary(dir.path());
    let output = dir.path().join("signed.efi");
    secureboot::sign_efi(&config(&key, &crt, "sbsign"), &input, &output).expect("sign");
    assert!(sbverify(&crt, &output), "sbverify rejected the signed binary");
    assert!(!sbverify(&crt, &input), "the unsigned input verifies?");

    // Signing in place (input == output) works too.
    secureboot::sign_efi(&config(&key, &crt, "sbsign"), &input, &input).expect("sign in place");
    assert!(sbverify(&crt, &input));

    // A different certificate does not verify it.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let (_, other_crt) = keypair(&other);
    assert!(!sbverify(&other_crt, &output));
}

#[test]
fn sign_with_auto_tool() {
    if !tools_present(&["openssl", "sbverify"]) || (!have("sbsign") && !have("systemd-sbsign")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, crt) = keypair(dir.path());
    let input = efi_binary(dir.path());
    let output = dir.path().join("signed.efi");
    secureboot::sign_efi(&config(&key, &crt, "auto"), &input, &output).expect("sign");
    assert!(sbverify(&crt, &output));
}

#[test]
fn signing_failure_names_the_command() {
    if !tools_present(&["openssl", "sbsign"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, crt) = keypair(dir.path());
    let input = efi_binary(dir.path());
    let keys = secureboot::SecureBootKeys::from_config(&config(&dir.path().join("missing.key"), &crt, "sbsign"))
        .expect("keys");
    let tool = SignTool::Sbsign(secureboot::find_on_path("sbsign").expect("sbsign"));
    let err = secureboot::sign_efi_with(&tool, &keys, &input, &dir.path().join("o.efi")).expect_err("no key");
    assert!(err.to_string().contains("sbsign"), "{err}");
}

/// `EFI_CERT_TYPE_PKCS7_GUID` (4aafd29d-68df-49ee-8aa9-347d375665a7) in its on-disk form.
const PKCS7_GUID: [u8; 16] =
    [0x9d, 0xd2, 0xaf, 0x4a, 0xdf, 0x68, 0xee, 0x49, 0x8a, 0xa9, 0x34, 0x7d, 0x37, 0x56, 0x65, 0xa7];
/// `EFI_CERT_X509_GUID` (a5c059a1-94e4-4aa7-87b5-ab155c2bf072).
const X509_GUID: [u8; 16] =
    [0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72];

#[test]
fn auto_enroll_keys() {
    if !tools_present(&["openssl", "sbsiglist", "sbvarsign"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, crt) = keypair(dir.path());
    let esp = dir.path().join("efi");
    let workspace = dir.path().join("ws");
    secureboot::write_auto_enroll_keys(&config(&key, &crt, "auto"), &esp, &workspace).expect("auto-enroll");

    let keys = esp.join("loader/keys/auto");
    assert_eq!(std::fs::metadata(&keys).expect("stat").permissions().mode() & 0o777, 0o700);
    let der =
        Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&crt).output().expect("openssl").stdout;
    assert!(!der.is_empty());
    for var in ["PK", "KEK", "db"] {
        let auth_path = keys.join(format!("{var}.auth"));
        assert_eq!(std::fs::metadata(&auth_path).expect("stat").permissions().mode() & 0o777, 0o600);
        let auth = std::fs::read(&auth_path).expect("read");
        // EFI_VARIABLE_AUTHENTICATION_2: EFI_TIME, then WIN_CERTIFICATE_UEFI_GUID.
        assert!(auth.len() > 16 + 24, "{var}.auth is too short");
        let year = u16::from_le_bytes([auth[0], auth[1]]);
        assert!((2024..=2200).contains(&year), "{var}.auth: timestamp year {year}");
        assert!((1..=12).contains(&auth[2]) && (1..=31).contains(&auth[3]), "{var}.auth: bad date");
        let length = u32::from_le_bytes([auth[16], auth[17], auth[18], auth[19]]) as usize;
        assert_eq!(u16::from_le_bytes([auth[20], auth[21]]), 0x0200, "{var}.auth: wRevision");
        assert_eq!(u16::from_le_bytes([auth[22], auth[23]]), 0x0ef1, "{var}.auth: WIN_CERT_TYPE_EFI_GUID");
        assert_eq!(auth[24..40], PKCS7_GUID, "{var}.auth: CertType");
        assert!(16 + length < auth.len(), "{var}.auth: no payload after the signature");
        // The payload is the EFI signature list of the certificate, owned by the zero GUID.
        let esl = &auth[16 + length..];
        assert_eq!(esl[..16], X509_GUID, "{var}.auth: signature list type");
        let list_size = u32::from_le_bytes([esl[16], esl[17], esl[18], esl[19]]) as usize;
        assert_eq!(list_size, esl.len());
        let sig_size = u32::from_le_bytes([esl[24], esl[25], esl[26], esl[27]]) as usize;
        assert_eq!(sig_size, 16 + der.len());
        assert_eq!(esl[28..44], [0u8; 16], "{var}.auth: owner GUID");
        assert_eq!(&esl[44..], der.as_slice(), "{var}.auth: certificate");
    }
    assert_eq!(std::fs::read_dir(&keys).expect("ls").count(), 3);
}

#[test]
fn auto_enroll_needs_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::from_values([("SecureBoot".to_string(), json!(true))]);
    let err = secureboot::write_auto_enroll_keys(&config, &dir.path().join("efi"), &dir.path().join("ws"))
        .expect_err("no keys");
    assert!(err.to_string().contains("needs a signing key"), "{err}");
    assert!(!dir.path().join("efi").exists());
}

#[test]
fn signed_uki_verifies_and_keeps_its_sections() {
    if !tools_present(&["openssl", "sbsign", "sbverify"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let stub = dir.path().join("deb/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
    let extracted = cached_systemd_boot_deb().is_some_and(|deb| {
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.path().join("deb")).status().is_ok_and(|s| s.success())
    });
    if !extracted || !stub.is_file() {
        println!("SKIPPED: no systemd-stub package cached");
        return;
    }
    let (key, crt) = keypair(dir.path());
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, tiny_efi()).expect("write");
    let input = mkosi_formats::uki::UkiInput {
        stub,
        linux: Some(kernel),
        cmdline: Some("console=ttyS0\0".into()),
        os_release: Some("ID=test\n".into()),
        uname: Some("6.1.0".into()),
        ..Default::default()
    };
    let unsigned = dir.path().join("uki.unsigned.efi");
    mkosi_formats::uki::build(&input, &unsigned).expect("uki");
    let signed = dir.path().join("uki.efi");
    secureboot::sign_efi(&config(&key, &crt, "sbsign"), &unsigned, &signed).expect("sign");
    assert!(sbverify(&crt, &signed));
    let data = std::fs::read(&signed).expect("read");
    assert_eq!(mkosi_formats::pe::kernel_type(&data), mkosi_formats::pe::KernelType::Uki);
    assert!(mkosi_formats::pe::PeFile::parse(&data).expect("parse").is_signed());
    assert_eq!(
        mkosi_formats::uki::extract_section(&signed, ".cmdline").expect("extract"),
        Some(b"console=ttyS0\0".to_vec())
    );
    // A signed UKI cannot serve as a stub.
    let again = mkosi_formats::uki::UkiInput { stub: signed, ..input };
    let err = mkosi_formats::uki::assemble(&again).expect_err("signed stub");
    assert!(err.to_string().contains("signed"), "{err}");
}
