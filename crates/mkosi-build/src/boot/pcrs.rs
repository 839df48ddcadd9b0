//! Signed PCR policies in unified kernel images (`SignExpectedPcr=`), done
//! in-process instead of through ukify and systemd-measure.
//!
//! Upstream hands `--pcr-private-key <SignExpectedPcrKey> --pcr-banks sha256`
//! to ukify whenever [`want_signed_pcrs`] holds. ukify then puts the public key
//! (`systemd-keyutil public`, the SubjectPublicKeyInfo PEM) into `.pcrpkey`,
//! lets `systemd-measure sign` compute and sign the expected PCR 11 policies
//! of the UKI (and of each joined profile) and embeds them as `.pcrsig`. Here
//! the measurement, policy digests and JSON come from
//! [`mkosi_formats::pcr`]; only the signature itself is made by
//! `openssl dgst -sha256 -sign` (what systemd-measure does through
//! `EVP_DigestSign`: RSA PKCS#1 v1.5, deterministic, or DER ECDSA), and the
//! public key is read with `openssl pkey -pubout`. The result is byte for byte
//! what ukify 257 writes for RSA keys.
//!
//! Not done yet (refused with an error): keys from an OpenSSL engine or
//! provider, and UKI profiles with `SignExpectedPcr=no` (upstream needs
//! ukify 258's `--sign-profile` for those), and `SplitArtifacts=pcrs` without
//! signed PCRs (see [`check_supported`]).

use std::path::{Path, PathBuf};

use mkosi_config::enums::KeySourceType;
use mkosi_config::Config;
use mkosi_formats::pcr::{self, Digest256};
use mkosi_formats::uki::{self, UkiInput};
use mkosi_sandbox::run::{run, Cmd, Input, Sink};

use crate::error::{BuildError, Result};

/// `SignExpectedPcr=` as a word (`enabled`, `disabled`, `auto`); unset is `auto`.
fn setting(c: &Config) -> &str {
    c.str("SignExpectedPcr").unwrap_or("auto")
}

fn non_empty<'c>(c: &'c Config, field: &str) -> Option<&'c str> {
    c.str(field).filter(|s| !s.is_empty())
}

/// Upstream's `want_signed_pcrs`: `SignExpectedPcr=yes`, or `auto` with both
/// `SignExpectedPcrKey=` and `SignExpectedPcrCertificate=` set. (Upstream's
/// `auto` also needs systemd-measure, which its tools tree always has; the
/// policies are computed in-process here, so nothing else is needed.)
pub fn want_signed_pcrs(c: &Config) -> bool {
    match setting(c) {
        "enabled" => true,
        "auto" => non_empty(c, "SignExpectedPcrKey").is_some() && non_empty(c, "SignExpectedPcrCertificate").is_some(),
        _ => false,
    }
}

/// The `SignExpectedPcr=` of each `[UKIProfile]` that becomes a profile binary
/// (those with a `Profile=`), in order.
fn profile_flags(c: &Config) -> Vec<bool> {
    c.list("UnifiedKernelImageProfiles")
        .iter()
        .filter(|p| p.get("Profile").and_then(|v| v.as_object()).is_some())
        .map(|p| p.get("SignExpectedPcr").and_then(|v| v.as_bool()).unwrap_or(true))
        .collect()
}

/// Fails for PCR settings this version cannot build (checked before anything
/// is built). `SplitArtifacts=pcrs` only makes a file upstream when PCRs are
/// *not* signed (ukify `--policy-digest`, systemd 258), which is not
/// implemented; with signed PCRs upstream writes no `.pcrs` file, and neither
/// does this.
pub fn check_supported(c: &Config) -> Result<()> {
    if !want_signed_pcrs(c) {
        if c.strings("SplitArtifacts").iter().any(|a| a == "pcrs") {
            return Err(BuildError::hint(
                "SplitArtifacts=pcrs without signed PCRs (TPM2 policy digests) is not implemented yet",
                "Remove pcrs from SplitArtifacts=",
            ));
        }
        return Ok(());
    }
    if non_empty(c, "SignExpectedPcrKey").is_none() {
        return Err(BuildError::hint(
            "SignExpectedPcr= is enabled but no private key is configured",
            "Run mkosi genkey to generate a key/certificate pair",
        ));
    }
    if non_empty(c, "SignExpectedPcrCertificate").is_none() {
        return Err(BuildError::hint(
            "SignExpectedPcr= is enabled but no certificate is configured",
            "Run mkosi genkey to generate a key/certificate pair",
        ));
    }
    let kind = c.get("SignExpectedPcrKeySource").get("Type").and_then(|t| t.as_str()).unwrap_or("file");
    let kind: KeySourceType = kind
        .parse()
        .map_err(|_| BuildError::msg(format!("SignExpectedPcrKeySource=: unknown source type '{kind}'")))?;
    if kind != KeySourceType::File {
        return Err(BuildError::hint(
            format!("Signing expected PCR values with a key from an OpenSSL {kind} is not implemented yet"),
            "Use a key file for SignExpectedPcrKey=, or set SignExpectedPcr=no",
        ));
    }
    if profile_flags(c).contains(&false) {
        return Err(BuildError::hint(
            "UKI profiles with SignExpectedPcr=no are not implemented yet when PCR signatures are made",
            "Remove SignExpectedPcr=no from the [UKIProfile] sections, or set SignExpectedPcr=no globally",
        ));
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).ok_or_else(|| BuildError::msg(format!("{} is not a valid UTF-8 path", p.display())))
}

/// A private key for signing PCR policies, with its public half.
#[derive(Debug, Clone)]
pub struct PcrKey {
    openssl: PathBuf,
    key: PathBuf,
    public_pem: Vec<u8>,
    fingerprint: Digest256,
}

impl PcrKey {
    /// The `SignExpectedPcrKey=` of `c` (after [`check_supported`]), used
    /// through the host's `openssl`.
    pub fn from_config(c: &Config) -> Result<PcrKey> {
        check_supported(c)?;
        let key = non_empty(c, "SignExpectedPcrKey")
            .ok_or_else(|| BuildError::msg("SignExpectedPcr= is enabled but no private key is configured"))?;
        let openssl = crate::secureboot::find_on_path("openssl").ok_or_else(|| {
            BuildError::hint(
                "openssl is not installed, but it is needed to sign expected PCR values",
                "Install openssl (on Debian and Ubuntu: apt install openssl), or set SignExpectedPcr=no",
            )
        })?;
        PcrKey::load(&openssl, Path::new(key))
    }

    /// The PEM private key file `key`, read with the `openssl` executable at `openssl`.
    pub fn load(openssl: &Path, key: &Path) -> Result<PcrKey> {
        if !key.is_file() {
            return Err(BuildError::msg(format!("PCR signing key {} does not exist", key.display())));
        }
        let argv = [path_str(openssl)?, "pkey".into(), "-in".into(), path_str(key)?, "-pubout".into()];
        let out = run(&Cmd::new(argv).stdin(Input::Null).stdout(Sink::Capture).quiet())?;
        let public_pem = out.stdout;
        let der = pcr::pem_public_key_der(&public_pem)
            .map_err(|e| BuildError::msg(format!("Public key of {}: {e}", key.display())))?;
        let fingerprint = pcr::public_key_fingerprint(&der)
            .map_err(|e| BuildError::msg(format!("Public key of {}: {e}", key.display())))?;
        Ok(PcrKey { openssl: openssl.to_path_buf(), key: key.to_path_buf(), public_pem, fingerprint })
    }

    /// The public key as PEM (SubjectPublicKeyInfo), the `.pcrpkey` content.
    pub fn public_key_pem(&self) -> &[u8] {
        &self.public_pem
    }

    /// The `pkfp` of the key (see [`pcr::public_key_fingerprint`]).
    pub fn fingerprint(&self) -> &Digest256 {
        &self.fingerprint
    }

    /// Sign the policy digest `policy` (SHA-256 of it, signed with the key).
    pub fn sign(&self, policy: &Digest256) -> Result<Vec<u8>> {
        let argv = [
            path_str(&self.openssl)?,
            "dgst".into(),
            "-sha256".into(),
            "-binary".into(),
            "-sign".into(),
            path_str(&self.key)?,
        ];
        let out = run(&Cmd::new(argv).stdin(Input::Data(policy.to_vec())).stdout(Sink::Capture).quiet())?;
        if out.stdout.is_empty() {
            return Err(BuildError::msg(format!("openssl made an empty signature with {}", self.key.display())));
        }
        Ok(out.stdout)
    }
}

impl From<pcr::PcrError> for BuildError {
    fn from(e: pcr::PcrError) -> BuildError {
        BuildError::msg(format!("Signing expected PCR values: {e}"))
    }
}

/// The UKI described by `input` with `.pcrpkey` (the public key of `key`) and
/// `.pcrsig` sections (base and each joined profile) signed with `key`, like
/// `ukify build --pcr-private-key … --pcr-banks sha256` (`input.pcrpkey` and
/// `input.pcrsig` are ignored).
pub fn assemble_signed(input: &UkiInput, key: &PcrKey) -> Result<Vec<u8>> {
    let uki_err = |e: uki::UkiError| BuildError::msg(format!("{}: {e}", input.stub.display()));
    let input = UkiInput { pcrpkey: Some(key.public_key_pem().to_vec()), pcrsig: None, ..input.clone() };
    let planned = uki::plan_sections(&input).map_err(uki_err)?;
    let unmeasured: Vec<String> = input.extra.iter().map(|(n, _)| n.clone()).collect();
    let mut sign = |policy: &Digest256| key.sign(policy);
    let sections =
        pcr::sign_sections(&planned, input.join_profiles.len(), &unmeasured, &[], key.fingerprint(), &mut sign)?;
    let stub = std::fs::read(&input.stub).map_err(crate::error::io("reading", &input.stub))?;
    uki::add_sections(&stub, &sections).map_err(uki_err)
}

/// [`assemble_signed`], written to `output`.
pub fn build_signed(input: &UkiInput, key: &PcrKey, output: &Path) -> Result<()> {
    let data = assemble_signed(input, key)?;
    uki::write_atomically(output, &data).map_err(|e| BuildError::msg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(values: &[(&str, serde_json::Value)]) -> Config {
        Config::from_values(values.iter().map(|(k, v)| (k.to_string(), v.clone())))
    }

    #[test]
    fn when_pcrs_are_signed() {
        let keys = [("SignExpectedPcrKey", json!("/k.key")), ("SignExpectedPcrCertificate", json!("/k.crt"))];
        assert!(!want_signed_pcrs(&config(&[])));
        assert!(want_signed_pcrs(&config(&keys)));
        assert!(!want_signed_pcrs(&config(&keys[..1])));
        let mut auto = keys.to_vec();
        auto.push(("SignExpectedPcr", json!("auto")));
        assert!(want_signed_pcrs(&config(&auto)));
        let mut off = keys.to_vec();
        off.push(("SignExpectedPcr", json!("disabled")));
        assert!(!want_signed_pcrs(&config(&off)));
        assert!(check_supported(&config(&off)).is_ok());
        assert!(want_signed_pcrs(&config(&[("SignExpectedPcr", json!("enabled"))])));
    }

    #[test]
    fn unsupported_combinations_are_refused() {
        let on = ("SignExpectedPcr", json!("enabled"));
        let key = ("SignExpectedPcrKey", json!("/k.key"));
        let crt = ("SignExpectedPcrCertificate", json!("/k.crt"));
        let err = check_supported(&config(std::slice::from_ref(&on))).expect_err("no key");
        assert!(err.to_string().contains("no private key"), "{err}");
        let err = check_supported(&config(&[on.clone(), key.clone()])).expect_err("no certificate");
        assert!(err.to_string().contains("no certificate"), "{err}");
        assert!(check_supported(&config(&[on.clone(), key.clone(), crt.clone()])).is_ok());

        let engine = ("SignExpectedPcrKeySource", json!({"Type": "engine", "Source": "pkcs11"}));
        let err = check_supported(&config(&[key.clone(), crt.clone(), engine])).expect_err("engine");
        assert!(err.to_string().contains("OpenSSL engine"), "{err}");
        let bad = ("SignExpectedPcrKeySource", json!({"Type": "tpm"}));
        assert!(check_supported(&config(&[key.clone(), crt.clone(), bad])).is_err());

        let profiles = |sign: bool| {
            (
                "UnifiedKernelImageProfiles",
                json!([
                    {"Profile": {"ID": "a"}, "Cmdline": [], "SignExpectedPcr": true},
                    {"Profile": {"ID": "b"}, "Cmdline": [], "SignExpectedPcr": sign},
                ]),
            )
        };
        assert!(check_supported(&config(&[key.clone(), crt.clone(), profiles(true)])).is_ok());
        let err = check_supported(&config(&[key.clone(), crt.clone(), profiles(false)])).expect_err("unsigned");
        assert!(err.to_string().contains("SignExpectedPcr=no"), "{err}");
        // Without PCR signing, unsigned profiles are fine.
        let off = ("SignExpectedPcr", json!("disabled"));
        assert!(check_supported(&config(&[key.clone(), crt.clone(), off.clone(), profiles(false)])).is_ok());

        // SplitArtifacts=pcrs: nothing to do with signed PCRs, not implemented without.
        let split = ("SplitArtifacts", json!(["uki", "pcrs"]));
        assert!(check_supported(&config(&[key, crt, split.clone()])).is_ok());
        let err = check_supported(&config(&[off, split])).expect_err("policy digests");
        assert!(err.to_string().contains("SplitArtifacts=pcrs"), "{err}");
        assert!(check_supported(&config(&[("SplitArtifacts", json!(["uki"]))])).is_ok());
    }

    fn have_openssl() -> Option<PathBuf> {
        let found = crate::secureboot::find_on_path("openssl");
        if found.is_none() {
            println!("SKIPPED: openssl is not installed");
        }
        found
    }

    fn genkey(openssl: &Path, dir: &Path, args: &[&str]) -> PathBuf {
        let key = dir.join("key.pem");
        let mut argv = vec![path_str(openssl).expect("utf8")];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv.extend(["-out".to_string(), path_str(&key).expect("utf8")]);
        run(&Cmd::new(argv).quiet()).expect("openssl genpkey");
        key
    }

    #[test]
    fn rsa_keys_sign_deterministically() {
        let Some(openssl) = have_openssl() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let key = genkey(&openssl, dir.path(), &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
        let k = PcrKey::load(&openssl, &key).expect("load");
        assert!(k.public_key_pem().starts_with(b"-----BEGIN PUBLIC KEY-----\n"));
        let a = k.sign(&[1; 32]).expect("sign");
        assert_eq!(a.len(), 256);
        assert_eq!(k.sign(&[1; 32]).expect("sign"), a);
        assert_ne!(k.sign(&[2; 32]).expect("sign"), a);
        // The fingerprint is the SHA-256 of the PKCS#1 RSAPublicKey.
        let argv = [path_str(&openssl).expect("utf8"), "rsa".into(), "-in".into(), path_str(&key).expect("utf8")];
        let mut argv = argv.to_vec();
        argv.extend(["-RSAPublicKey_out".into(), "-outform".into(), "DER".into()]);
        let der = run(&Cmd::new(argv).stdout(Sink::Capture).quiet()).expect("openssl rsa").stdout;
        use sha2::Digest;
        let want: Digest256 = sha2::Sha256::digest(&der).into();
        assert_eq!(k.fingerprint(), &want);

        assert!(PcrKey::load(&openssl, &dir.path().join("missing.pem")).is_err());
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key").expect("write");
        assert!(PcrKey::load(&openssl, &junk).is_err());
    }

    #[test]
    fn ec_keys_sign_too() {
        let Some(openssl) = have_openssl() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let key = genkey(&openssl, dir.path(), &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        let k = PcrKey::load(&openssl, &key).expect("load");
        let sig = k.sign(&[3; 32]).expect("sign");
        // A DER ECDSA-Sig-Value.
        assert_eq!(sig[0], 0x30);
        // The fingerprint is the SHA-256 of the uncompressed point (65 bytes for P-256).
        let der = pcr::pem_public_key_der(k.public_key_pem()).expect("der");
        use sha2::Digest;
        let want: Digest256 = sha2::Sha256::digest(&der[der.len() - 65..]).into();
        assert_eq!(k.fingerprint(), &want);
    }
}
