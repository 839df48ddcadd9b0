//! The content of verity signature partitions, as systemd-repart writes them.
//!
//! The partition holds one line of compact JSON,
//! `{"rootHash":"<hex>","certificateFingerprint":"<hex>","signature":"<base64>"}`,
//! followed by NUL bytes up to [`VERITY_SIG_SIZE`]. The fingerprint is the
//! SHA-256 of the DER encoded signing certificate; the signature is a detached
//! PKCS#7 `signedData` in DER over the lowercase hex root hash (no trailing
//! newline), with the certificate and no signed attributes. `openssl smime
//! -sign -binary -noattr` produces exactly the structure repart's
//! `PKCS7_sign(..., PKCS7_DETACHED|PKCS7_NOATTR|PKCS7_BINARY)` does, so with
//! RSA keys the result is byte for byte what repart writes.

use std::path::Path;

use mkosi_config::enums::{CertificateSourceType, KeySourceType};
use mkosi_sandbox::run::{run, Cmd, Input, Sink};
use mkosi_sandbox::Options;
use sha2::{Digest, Sha256};

use super::{RepartError, Result};

/// The size of a verity signature partition (repart never makes them larger or smaller).
pub const VERITY_SIG_SIZE: usize = 16 * 1024;

/// The certificate and private key the root hash is signed with.
#[derive(Debug, Clone)]
pub struct VeritySigner<'a> {
    /// A PEM certificate.
    pub certificate: &'a Path,
    pub certificate_source: CertificateSourceType,
    /// A PEM private key.
    pub key: &'a Path,
    pub key_source: KeySourceType,
    /// Where `openssl` runs (the certificate and key must be visible there
    /// under the same paths); `None` runs it on the host.
    pub sandbox: Option<Options>,
}

/// The content of the verity signature partition for `root_hash`: signs the
/// root hash with `signer` and renders the partition (see [`render`]).
pub fn verity_sig_content(root_hash: &[u8; 32], signer: &VeritySigner) -> Result<Vec<u8>> {
    if signer.certificate_source != CertificateSourceType::File {
        return Err(RepartError::hint(
            format!("Verity signing certificates from an OpenSSL {} are not supported yet", signer.certificate_source),
            "Use a PEM certificate file (VerityCertificateSource=file)",
        ));
    }
    if signer.key_source != KeySourceType::File {
        return Err(RepartError::hint(
            format!("Verity signing keys from an OpenSSL {} are not supported yet", signer.key_source),
            "Use a PEM private key file (VerityKeySource=file)",
        ));
    }
    let fingerprint = certificate_fingerprint(signer)?;
    let signature = sign(&hex(root_hash), signer)?;
    render(root_hash, &fingerprint, &signature)
}

fn openssl(argv: Vec<String>, stdin: Input, signer: &VeritySigner) -> Result<Vec<u8>> {
    let mut cmd = Cmd::new(argv).stdin(stdin).stdout(Sink::Capture).quiet();
    if let Some(sandbox) = &signer.sandbox {
        cmd = cmd.sandbox(sandbox.clone());
    }
    Ok(run(&cmd)?.stdout)
}

fn path_arg(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).ok_or_else(|| RepartError::msg(format!("{} is not a valid UTF-8 path", p.display())))
}

/// SHA-256 of the DER form of the signing certificate.
fn certificate_fingerprint(signer: &VeritySigner) -> Result<[u8; 32]> {
    let certificate = path_arg(signer.certificate)?;
    let argv = ["openssl", "x509", "-outform", "DER", "-in", &certificate].map(String::from).to_vec();
    let der = openssl(argv, Input::Null, signer)?;
    if der.is_empty() {
        return Err(RepartError::msg(format!(
            "openssl did not convert certificate {} to DER",
            signer.certificate.display()
        )));
    }
    Ok(Sha256::digest(&der).into())
}

/// A detached PKCS#7 signature (DER) of `content`, made as repart makes it.
fn sign(content: &str, signer: &VeritySigner) -> Result<Vec<u8>> {
    let (certificate, key) = (path_arg(signer.certificate)?, path_arg(signer.key)?);
    // Without -nodetach the signature is detached; -noattr leaves out the signed attributes.
    let argv = ["openssl", "smime", "-sign", "-binary", "-noattr", "-outform", "DER", "-signer", &certificate]
        .into_iter()
        .chain(["-inkey", &key])
        .map(String::from)
        .collect();
    let der = openssl(argv, Input::Data(content.as_bytes().to_vec()), signer)?;
    if der.is_empty() {
        return Err(RepartError::msg("openssl smime -sign did not produce a signature"));
    }
    Ok(der)
}

/// The partition content for the given root hash, certificate fingerprint
/// and DER signature: the JSON object and NUL padding to [`VERITY_SIG_SIZE`].
pub fn render(root_hash: &[u8; 32], certificate_fingerprint: &[u8; 32], signature: &[u8]) -> Result<Vec<u8>> {
    // Hex and base64 never need escaping in JSON strings.
    let text = format!(
        "{{\"rootHash\":\"{}\",\"certificateFingerprint\":\"{}\",\"signature\":\"{}\"}}",
        hex(root_hash),
        hex(certificate_fingerprint),
        base64(signature)
    );
    // The text must leave room for at least one terminating NUL.
    if text.len() >= VERITY_SIG_SIZE {
        return Err(RepartError::msg(format!(
            "Verity signature too long for partition ({} bytes of JSON, the partition has {VERITY_SIG_SIZE})",
            text.len()
        )));
    }
    let mut content = text.into_bytes();
    content.resize(VERITY_SIG_SIZE, 0);
    Ok(content)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Standard base64 (RFC 4648 alphabet, `=` padding, no line breaks).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                s.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    // A throwaway RSA key and self-signed certificate, and the signature partition systemd-repart (252,
    // OpenSSL 3.0) wrote with them (seed 0f0e0d0c-0b0a-0908-0706-050403020100, 4 MiB of random root data).
    // RSA PKCS#1 v1.5 signatures are deterministic, so ours must be the same.
    const TEST_KEY: &str = "\
        -----BEGIN PRIVATE KEY-----\n\
        MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDMjR2YYyA4qCKX\n\
        Wa/6U84srtsKZh9Z77+4PBL6FmW+Odb57zifZkf6vaig9bG5H2RhWsRVl2czD7U7\n\
        kVZnLTGHb+hO3D/AelQp535LNUCy6ca+zHhKE1DOmhin3TrvzWsR/l1cmDI1kvKF\n\
        2DZkav1dSt2nfHYGKzqhiz/TXrvLzjNp8uE65aHAQ5dD2U4uwm3f8MPoeU1r7Dfi\n\
        N1KJlqTy+WF0G2zuAe3Ls08CY/+u7WAH2BoNCFnuF0ePH9sWo+W4+nHa/GqnTxaV\n\
        eaZPeBdmyKt+obva+pmNplop8X6A//4PJw8Sg32JVpTYyMG1J5EGlA9QsKHm/3bu\n\
        5+qxZRMPAgMBAAECggEATdHeEYycxJFK37PSXHUnuh4n3TPu94NbuBa6zYRZ3t4Y\n\
        aGvXaeU6uy0Oi3YN0DUeNl+W1E1OiMGQHIJ1kblC35j2k5H9exfPD0Yv6SLwY2DH\n\
        KO2XUe85TfCYMrza4EKRWn4gPMr2RyWJuNwCDYAatjR2UXLrX/twSec1OBAReD5i\n\
        lmft59Vtk3btCuCT5WZsnUxjFeL6/5LSXmbi0MeR59Z0Nq4j834BPqM2oiMgHxSw\n\
        YHypxmymRWtwD0TtmnGUu6DiT40BHCZoc8X9Rkuzv88yow39T6ST2XctLo8STN9F\n\
        hXiWFwYKasH4DiMdJGl+peXXaLA4yoaebudTTcLHQQKBgQD9FHjIRM3/giMqNVp+\n\
        mcbhi0tHoCKPxgLQE3ap3UNZZXKjkjM9YJqVX/CjKD8L7cRmw7AyJUVAOt9BoPo7\n\
        yPJ9WE09yJiEqdpP+MSzNiZINCVyc1qASRIaGyvHCDXtndKeUA7HWtBVn1JJRdlx\n\
        Aj1VBbl50X0omvlJUNs3lzVG7wKBgQDO6U2oD+bENW9op2SRxZCxp+p9URiqIlXa\n\
        AsvGwAj4yD4ZOI0I1lrXnl1EOo8N1PfRgjO7Ov8bXNn6Yd9NJjZmq8wzoDjz7og6\n\
        AcP10R5eX4HWqxszqvEJDVAM4F33/pCqyLwk2mR2DVACglx/RFZpjmg2AOd1XfpR\n\
        01cq9EH14QKBgD4wEZ3kiloGuG1evuXtE5nIiK8JAnUhyv8mSTpkTHBjJVBcVIr4\n\
        egPKl28ALL3ZpzE5VMp9rg6iaMnPrK2UK0HxuMk9yXyP4D1We78txypm5ezBu7Na\n\
        QUB4/MDjm5zP8zlDot4Jyre/dpDawRur2TZTOchdWcvoiOkjHTsDxOuxAoGBAKIn\n\
        wz1f4OmKOxqYfT+kxqYEQ8gcYykKqZ+mq07CtwVJ4Sjg4d64Jw9uRAexoOUlL2ZZ\n\
        FPO5463tEcOhKmCK/v1tzCX1fkzldouHUKz4S0WIsfertzDB2g7PCRpeSCaPsY62\n\
        rIRxR2QhQMAGrDjtNI+bFF6mTL71fLTd3SWDsaHhAoGBAICK27cxazqaomc9GMgg\n\
        lfyiZOBRcyFxViOv4tbDup7oLPYO0zGVb4oNxRgMM0KRQfOyb6m0/6FDucZpK/MU\n\
        V4JMnVgpSPoQUOQg+KR/Ehs2589qKUC04xTEGFb4nI2A+I9lL0CXY7DuWNhUdrk5\n\
        BxDogHUNdmU+8uX1ZBX4zB1U\n\
        -----END PRIVATE KEY-----\n\
    ";

    const TEST_CERTIFICATE: &str = "\
        -----BEGIN CERTIFICATE-----\n\
        MIIDCDCCAfCgAwIBAgIBATANBgkqhkiG9w0BAQsFADAcMRowGAYDVQQDDBFta29z\n\
        aSB2ZXJpdHkgdGVzdDAgFw0yNjExMjYwOTI5NDFaGA8yMTI2MTEwMjA5Mjk0MVow\n\
        HDEaMBgGA1UEAwwRbWtvc2kgdmVyaXR5IHRlc3QwggEiMA0GCSqGSIb3DQEBAQUA\n\
        A4IBDwAwggEKAoIBAQDMjR2YYyA4qCKXWa/6U84srtsKZh9Z77+4PBL6FmW+Odb5\n\
        7zifZkf6vaig9bG5H2RhWsRVl2czD7U7kVZnLTGHb+hO3D/AelQp535LNUCy6ca+\n\
        zHhKE1DOmhin3TrvzWsR/l1cmDI1kvKF2DZkav1dSt2nfHYGKzqhiz/TXrvLzjNp\n\
        8uE65aHAQ5dD2U4uwm3f8MPoeU1r7DfiN1KJlqTy+WF0G2zuAe3Ls08CY/+u7WAH\n\
        2BoNCFnuF0ePH9sWo+W4+nHa/GqnTxaVeaZPeBdmyKt+obva+pmNplop8X6A//4P\n\
        Jw8Sg32JVpTYyMG1J5EGlA9QsKHm/3bu5+qxZRMPAgMBAAGjUzBRMB0GA1UdDgQW\n\
        BBQ66TRW2/a2CGmjnPbgboTepfTF4TAfBgNVHSMEGDAWgBQ66TRW2/a2CGmjnPbg\n\
        boTepfTF4TAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4IBAQCBUtig\n\
        ZSNbT0sCtJlG8Fv7+XIm3kaIM9cKFh4NTiR4OBBIPNPj7mf+hoW6TiRWvzs01+T5\n\
        RKuXOEeSWDSU1v5QTPO7FS5Ok3fWAc3Q7vKgTI9sfG0GqbdDgCLtxYs6CGv1zMgA\n\
        55IT7VJGcI/5w6YuBZAD9JKQsnoIXkPliQcl/Phi80ZeW35kzKIGxjb3siMk5q1q\n\
        n70UVl2w3+gBLXveOIYb+YuW9N0kInFdX24PtH6SebRzvYezyfi4Aw51YnYRZyiq\n\
        JNCoBqmat+Y/tMHASh3TFlg85fidZ5TWsIcsyFW87hvpn7iCy5BGwUGY5bOW/M5O\n\
        xU7N60UDIJEJoXRV\n\
        -----END CERTIFICATE-----\n\
    ";

    const REPART_ROOT_HASH: &str = "5823a12bc475434246c6bf2487cb222fbbe45189b886567d84af9787d299a51a";
    const REPART_FINGERPRINT: &str = "ba01b1811a65cde44a769ade876d1a29be1de31e421cacf06dd05d52f1fbc467";
    const REPART_SIGNATURE: &str = "\
        MIIElAYJKoZIhvcNAQcCoIIEhTCCBIECAQExDzANBglghkgBZQMEAgEFADALBgkqhkiG9w0BBwGgggMMMIIDCDCCAfCgAwIB\
        AgIBATANBgkqhkiG9w0BAQsFADAcMRowGAYDVQQDDBFta29zaSB2ZXJpdHkgdGVzdDAgFw0yNjExMjYwOTI5NDFaGA8yMTI2\
        MTEwMjA5Mjk0MVowHDEaMBgGA1UEAwwRbWtvc2kgdmVyaXR5IHRlc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIB\
        AQDMjR2YYyA4qCKXWa/6U84srtsKZh9Z77+4PBL6FmW+Odb57zifZkf6vaig9bG5H2RhWsRVl2czD7U7kVZnLTGHb+hO3D/A\
        elQp535LNUCy6ca+zHhKE1DOmhin3TrvzWsR/l1cmDI1kvKF2DZkav1dSt2nfHYGKzqhiz/TXrvLzjNp8uE65aHAQ5dD2U4u\
        wm3f8MPoeU1r7DfiN1KJlqTy+WF0G2zuAe3Ls08CY/+u7WAH2BoNCFnuF0ePH9sWo+W4+nHa/GqnTxaVeaZPeBdmyKt+obva\
        +pmNplop8X6A//4PJw8Sg32JVpTYyMG1J5EGlA9QsKHm/3bu5+qxZRMPAgMBAAGjUzBRMB0GA1UdDgQWBBQ66TRW2/a2CGmj\
        nPbgboTepfTF4TAfBgNVHSMEGDAWgBQ66TRW2/a2CGmjnPbgboTepfTF4TAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEB\
        CwUAA4IBAQCBUtigZSNbT0sCtJlG8Fv7+XIm3kaIM9cKFh4NTiR4OBBIPNPj7mf+hoW6TiRWvzs01+T5RKuXOEeSWDSU1v5Q\
        TPO7FS5Ok3fWAc3Q7vKgTI9sfG0GqbdDgCLtxYs6CGv1zMgA55IT7VJGcI/5w6YuBZAD9JKQsnoIXkPliQcl/Phi80ZeW35k\
        zKIGxjb3siMk5q1qn70UVl2w3+gBLXveOIYb+YuW9N0kInFdX24PtH6SebRzvYezyfi4Aw51YnYRZyiqJNCoBqmat+Y/tMHA\
        Sh3TFlg85fidZ5TWsIcsyFW87hvpn7iCy5BGwUGY5bOW/M5OxU7N60UDIJEJoXRVMYIBTDCCAUgCAQEwITAcMRowGAYDVQQD\
        DBFta29zaSB2ZXJpdHkgdGVzdAIBATANBglghkgBZQMEAgEFADANBgkqhkiG9w0BAQEFAASCAQBgSlSC1GCWISNFC/dlpSDo\
        paWDmeXX/lC8U80agUhyiOHPwER4lKM9zLhFl3vNvCazBJxg8sniSOQQRNlJYeN+jmSFoiQioY1kivQf+IeGHB8EEedPyZqS\
        l7ti+/Xnvb6xjCUj+IH8hEFri9cBAb0zW2nU7k4YTwgHp+PDp1RFMzqn1FL6EngoO90zy6eTV/sJsxOZfNTluciUXB6+u8Et\
        1e3kPDcQpaZu0qjWLfVaHv3/9qsoZ9qYxAo3BEf14iVkTtuKOW3UsHyYVi7Kg2Sr+KXGTWR/eKKTW1CTbun/tAx7LkYHXQI6\
        Oaor0yLNaXcKUJr+Zs/FfcXwTlddcPxj\
    ";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn openssl_cli(args: &[&str]) -> std::process::Output {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("openssl is needed for the verity signature tests: {e}"));
        assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn file_signer<'a>(certificate: &'a Path, key: &'a Path) -> VeritySigner<'a> {
        VeritySigner {
            certificate,
            certificate_source: CertificateSourceType::File,
            key,
            key_source: KeySourceType::File,
            sandbox: None,
        }
    }

    /// The JSON text of a partition: everything before the NUL padding.
    fn json_text(content: &[u8]) -> &str {
        assert_eq!(content.len(), VERITY_SIG_SIZE);
        let end = content.iter().position(|&b| b == 0).expect("no NUL padding");
        assert!(content[end..].iter().all(|&b| b == 0), "data after the NUL padding");
        std::str::from_utf8(&content[..end]).unwrap()
    }

    #[test]
    fn verity_sig_base64_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf, 0x00]), "+/+/AA==");
    }

    #[test]
    fn verity_sig_render_layout() {
        let root: [u8; 32] = std::array::from_fn(|i| i as u8);
        let fp = [0xab; 32];
        let content = render(&root, &fp, &[0xfb, 0xff, 0xbf, 0x00, 0x41]).unwrap();
        assert_eq!(
            json_text(&content),
            "{\"rootHash\":\"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\",\
             \"certificateFingerprint\":\"abababababababababababababababababababababababababababababababab\",\
             \"signature\":\"+/+/AEE=\"}"
        );
        let v: serde_json::Value = serde_json::from_str(json_text(&content)).unwrap();
        assert_eq!(v["signature"], "+/+/AEE=");
    }

    #[test]
    fn verity_sig_render_too_long() {
        let overhead = render(&[0; 32], &[0; 32], &[]).map(|c| json_text(&c).len()).unwrap();
        // The longest signature whose JSON still leaves room for the terminating NUL ...
        let fits = (VERITY_SIG_SIZE - 1 - overhead) / 4 * 3;
        let content = render(&[0; 32], &[0; 32], &vec![0; fits]).unwrap();
        assert!(json_text(&content).len() > VERITY_SIG_SIZE - 1 - 4);
        // ... and three bytes more, which add four base64 characters.
        assert!(render(&[0; 32], &[0; 32], &vec![0; fits + 3]).is_err());
    }

    /// Byte for byte what systemd-repart wrote for this key and root hash.
    #[test]
    fn verity_sig_matches_repart() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, TEST_CERTIFICATE).unwrap();
        std::fs::write(&key, TEST_KEY).unwrap();
        let root: [u8; 32] = unhex(REPART_ROOT_HASH).try_into().unwrap();

        let content = verity_sig_content(&root, &file_signer(&cert, &key)).unwrap();
        let expected = format!(
            "{{\"rootHash\":\"{REPART_ROOT_HASH}\",\"certificateFingerprint\":\"{REPART_FINGERPRINT}\",\
             \"signature\":\"{REPART_SIGNATURE}\"}}"
        );
        assert_eq!(json_text(&content), expected);
    }

    #[test]
    fn verity_sig_verifies_with_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let d = |name: &str| -> PathBuf { dir.path().join(name) };
        let (cert, key) = (d("cert.pem"), d("key.pem"));
        openssl_cli(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=mkosi verity signature test",
            "-days",
            "2",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        let root: [u8; 32] = std::array::from_fn(|i| (i * 7 + 3) as u8);

        let content = verity_sig_content(&root, &file_signer(&cert, &key)).unwrap();
        let text = json_text(&content);
        assert!(text.starts_with("{\"rootHash\":\""), "{text}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 3);
        assert_eq!(v["rootHash"], hex(&root));

        let fingerprint = String::from_utf8(
            openssl_cli(&["x509", "-noout", "-fingerprint", "-sha256", "-in", cert.to_str().unwrap()]).stdout,
        )
        .unwrap();
        let fingerprint = fingerprint.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
        assert_eq!(v["certificateFingerprint"], fingerprint);

        // The signature is base64 of DER and verifies detached over the hex root hash.
        let b64 = v["signature"].as_str().unwrap();
        std::fs::write(d("sig.b64"), b64).unwrap();
        let der = openssl_cli(&["base64", "-d", "-A", "-in", d("sig.b64").to_str().unwrap()]).stdout;
        assert_eq!(base64(&der), b64);
        std::fs::write(d("sig.der"), &der).unwrap();
        std::fs::write(d("roothash"), hex(&root)).unwrap();
        openssl_cli(&[
            "smime",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            d("sig.der").to_str().unwrap(),
            "-content",
            d("roothash").to_str().unwrap(),
            "-CAfile",
            cert.to_str().unwrap(),
            "-purpose",
            "any",
            "-out",
            d("verified").to_str().unwrap(),
        ]);
        // A different root hash must not verify.
        std::fs::write(d("other"), hex(&[0u8; 32])).unwrap();
        let other = Command::new("openssl")
            .args(["smime", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-CAfile"])
            .arg(&cert)
            .arg("-in")
            .arg(d("sig.der"))
            .arg("-content")
            .arg(d("other"))
            .output()
            .unwrap();
        assert!(!other.status.success());

        // Detached, signer certificate included, no signed attributes.
        let printed = String::from_utf8(
            openssl_cli(&["pkcs7", "-inform", "DER", "-print", "-noout", "-in", d("sig.der").to_str().unwrap()]).stdout,
        )
        .unwrap();
        assert!(printed.contains("d.data: <ABSENT>"), "{printed}");
        let mut lines = printed.lines().map(str::trim).skip_while(|l| *l != "auth_attr:");
        assert_eq!((lines.next(), lines.next()), (Some("auth_attr:"), Some("<ABSENT>")), "{printed}");
        assert!(printed.contains("CN=mkosi verity signature test"), "{printed}");
    }

    #[test]
    fn verity_sig_rejects_engines_and_providers() {
        let (cert, key) = (Path::new("/nonexistent/cert.pem"), Path::new("pkcs11:token=x"));
        let mut signer = file_signer(cert, key);
        signer.key_source = KeySourceType::Engine;
        let e = verity_sig_content(&[0; 32], &signer).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        assert!(e.hint_text().is_some());

        signer.key_source = KeySourceType::Provider;
        assert!(verity_sig_content(&[0; 32], &signer).unwrap_err().to_string().contains("provider"));

        let mut signer = file_signer(cert, key);
        signer.certificate_source = CertificateSourceType::Provider;
        assert!(verity_sig_content(&[0; 32], &signer).unwrap_err().to_string().contains("certificate"));
    }

    #[test]
    fn verity_sig_missing_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, TEST_CERTIFICATE).unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(verity_sig_content(&[0; 32], &file_signer(&cert, &missing)).is_err());
    }
}
