//! Expected TPM2 PCR 11 values of unified kernel images and signed PCR
//! policies, computed the way `systemd-measure sign` (systemd 257) does when
//! ukify calls it with `--pcr-banks sha256`.
//!
//! - systemd-stub measures every section it knows (except `.pcrsig`) into PCR
//!   11, in its own fixed order ([`UNIFIED_SECTIONS`]), not in file order
//!   (systemd-measure 257 swaps the names of `.hwids` and `.dtbauto`, and so
//!   does this module, see `MEASURE_ORDER`): for
//!   each present, non-empty section the PCR is extended with the SHA-256 of
//!   the name including its terminating NUL, then with the SHA-256 of the
//!   content. The PCR starts as 32 zero bytes. Like systemd-measure 257 (and
//!   unlike 258, which pads `.linux` with zeros up to its PE `SizeOfImage`),
//!   contents are hashed as they are.
//! - Each boot phase path (`enter-initrd:leave-initrd`, …) then extends the
//!   PCR with the SHA-256 of each of its words; [`DEFAULT_PHASES`] are the
//!   paths signed when none are given.
//! - The signed policy is the TPM2 `PolicyPCR` digest for PCR 11 in the
//!   SHA-256 bank ([`policy_pcr_digest`]); the signature is made over the
//!   SHA-256 of that digest (RSA PKCS#1 v1.5, or DER ECDSA for EC keys) by the
//!   caller ([`sign_sections`] takes a signing function).
//! - The `.pcrsig` JSON is what ukify embeds: Python's `json.dumps` of
//!   `{"sha256": [{"pcrs": [11], "pkfp": …, "pol": …, "sig": …}, …]}`, one
//!   entry per phase path, `pkfp` being the SHA-256 of the DER public key
//!   proper (PKCS#1 `RSAPublicKey` for RSA, the EC point for EC keys), `pol`
//!   in hex and `sig` in base64.
//!
//! Which sections ukify has measured: every section it adds itself except the
//! extra `--section`s, `.sbat` only in UKIs (not addons), and `.dtbauto` one at
//! a time (one set of signatures per devicetree, duplicates dropped). For each
//! joined profile: the profile's sections plus the base sections before the
//! first `.profile` that the profile does not override (of several base
//! `.dtbauto`, the first). Each `.pcrsig` follows the sections it signs: the
//! base's comes after the base `.profile` (or last when there are no
//! profiles), each profile's after that profile's sections.

use sha2::{Digest, Sha256};

use crate::uki::NewSection;

/// Errors from the PCR computations.
#[derive(Debug, thiserror::Error)]
pub enum PcrError {
    #[error("Not a DER SubjectPublicKeyInfo: {0}")]
    PublicKey(String),
    #[error("Not a PEM public key: {0}")]
    Pem(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = PcrError> = std::result::Result<T, E>;

/// The PCR systemd-stub measures the UKI's sections into.
pub const PCR_KERNEL_BOOT: u32 = 11;

/// The sections systemd-stub 257 knows, in the order it measures them
/// (`.pcrsig` is known but never measured).
pub const UNIFIED_SECTIONS: [&str; 14] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrsig", ".pcrpkey",
    ".profile", ".dtbauto", ".hwids",
];

/// The boot phase paths signed when none are given: from entering the initrd
/// up to the system being fully booted.
pub const DEFAULT_PHASES: [&str; 4] = [
    "enter-initrd",
    "enter-initrd:leave-initrd",
    "enter-initrd:leave-initrd:sysinit",
    "enter-initrd:leave-initrd:sysinit:ready",
];

/// TPM2 command code of `TPM2_PolicyPCR`.
const TPM2_CC_POLICY_PCR: u32 = 0x0000_017f;
/// TPM2 algorithm id of SHA-256.
const TPM2_ALG_SHA256: u16 = 0x000b;

/// A SHA-256 PCR value or digest.
pub type Digest256 = [u8; 32];

fn sha256(data: &[u8]) -> Digest256 {
    Sha256::digest(data).into()
}

/// Extend `pcr` with `digest`: `pcr = SHA-256(pcr || digest)`.
pub fn extend(pcr: &Digest256, digest: &Digest256) -> Digest256 {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// Whether the stub measures a section of this name.
pub fn is_measured_by_stub(name: &str) -> bool {
    name != ".pcrsig" && UNIFIED_SECTIONS.contains(&name)
}

/// The order in which systemd-measure 257 measures the sections: the section
/// whose content is hashed, and the name hashed before it. 257 maps
/// `--hwids=` to the `.dtbauto` slot and `--dtbauto=` to the `.hwids` slot, so
/// (as ukify's signatures do) the `.hwids` content is measured under the name
/// `.dtbauto` and the other way round.
const MEASURE_ORDER: [(&str, &str); 13] = [
    (".linux", ".linux"),
    (".osrel", ".osrel"),
    (".cmdline", ".cmdline"),
    (".initrd", ".initrd"),
    (".ucode", ".ucode"),
    (".splash", ".splash"),
    (".dtb", ".dtb"),
    (".uname", ".uname"),
    (".sbat", ".sbat"),
    (".pcrpkey", ".pcrpkey"),
    (".profile", ".profile"),
    (".hwids", ".dtbauto"),
    (".dtbauto", ".hwids"),
];

/// The PCR 11 value after `sections` (name, content) were measured, before
/// any boot phase, as systemd-measure 257 computes it. Sections are taken in
/// the stub's order whatever their order here (with 257's `.hwids`/`.dtbauto`
/// mix-up, see [`MEASURE_ORDER`]); unknown names, `.pcrsig` and empty contents
/// are skipped. Of several sections with the same name the last one counts.
pub fn measure_sections(sections: &[(&str, &[u8])]) -> Digest256 {
    let mut pcr = [0u8; 32];
    for (section, name) in MEASURE_ORDER {
        let Some((_, data)) = sections.iter().rev().find(|(n, _)| *n == section) else { continue };
        if data.is_empty() {
            continue;
        }
        let mut with_nul = name.as_bytes().to_vec();
        with_nul.push(0);
        pcr = extend(&pcr, &sha256(&with_nul));
        pcr = extend(&pcr, &sha256(data));
    }
    pcr
}

/// Extend `pcr` with the words of the boot phase path `phase` (`a:b:c`).
pub fn measure_phase(pcr: &Digest256, phase: &str) -> Digest256 {
    phase.split(':').filter(|w| !w.is_empty()).fold(*pcr, |p, w| extend(&p, &sha256(w.as_bytes())))
}

/// A phase path with empty words dropped (`:a::b:` → `a:b`).
pub fn normalize_phase(phase: &str) -> String {
    phase.split(':').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(":")
}

/// The phase paths systemd-measure uses for `phases`: [`DEFAULT_PHASES`] when
/// empty, else normalized, sorted and deduplicated.
pub fn finalize_phases(phases: &[String]) -> Vec<String> {
    if phases.is_empty() {
        return DEFAULT_PHASES.iter().map(|p| p.to_string()).collect();
    }
    let mut out: Vec<String> = phases.iter().map(|p| normalize_phase(p)).collect();
    out.sort();
    out.dedup();
    out
}

/// One expected PCR 11 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedPcr {
    pub phase: String,
    pub value: Digest256,
}

/// The expected PCR 11 values (SHA-256 bank) for `sections` in each of the
/// phase paths (see [`finalize_phases`]), like `systemd-measure calculate`.
pub fn expected_pcrs(sections: &[(&str, &[u8])], phases: &[String]) -> Vec<ExpectedPcr> {
    let base = measure_sections(sections);
    finalize_phases(phases)
        .into_iter()
        .map(|phase| {
            let value = measure_phase(&base, &phase);
            ExpectedPcr { phase, value }
        })
        .collect()
}

/// The TPM2 policy digest of `TPM2_PolicyPCR` over the single PCR `pcr` of the
/// SHA-256 bank having `value`, starting from the empty policy:
/// `SHA-256(0³² || CC_PolicyPCR || TPML_PCR_SELECTION || SHA-256(value))`.
pub fn policy_pcr_digest(pcr: u32, value: &Digest256) -> Digest256 {
    let mut select = [0u8; 3];
    if let Some(b) = select.get_mut((pcr / 8) as usize) {
        *b |= 1 << (pcr % 8);
    }
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(TPM2_CC_POLICY_PCR.to_be_bytes());
    h.update(1u32.to_be_bytes()); // one TPMS_PCR_SELECTION
    h.update(TPM2_ALG_SHA256.to_be_bytes());
    h.update([select.len() as u8]);
    h.update(select);
    h.update(sha256(value));
    h.finalize().into()
}

/// One signed policy as listed in `.pcrsig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySignature {
    pub pcrs: Vec<u32>,
    /// SHA-256 fingerprint of the public key ([`public_key_fingerprint`]).
    pub pkfp: Digest256,
    /// The signed policy digest.
    pub pol: Digest256,
    pub sig: Vec<u8>,
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode standard base64, ignoring ASCII whitespace.
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits, mut padding) = (0u32, 0u32, 0usize);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return Err(PcrError::Pem("data after base64 padding".into()));
        }
        let v =
            B64.iter().position(|x| *x == c).ok_or_else(|| PcrError::Pem(format!("bad base64 character {c:#x}")))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if padding > 2 || (bits > 0 && acc != 0) {
        return Err(PcrError::Pem("bad base64 padding".into()));
    }
    Ok(out)
}

/// The DER of a PEM `PUBLIC KEY` block (SubjectPublicKeyInfo).
pub fn pem_public_key_der(pem: &[u8]) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(pem).map_err(|_| PcrError::Pem("not UTF-8".into()))?;
    let begin = "-----BEGIN PUBLIC KEY-----";
    let end = "-----END PUBLIC KEY-----";
    let start = text.find(begin).ok_or_else(|| PcrError::Pem(format!("no {begin} line")))? + begin.len();
    let stop = text[start..].find(end).ok_or_else(|| PcrError::Pem(format!("no {end} line")))? + start;
    base64_decode(&text[start..stop])
}

/// A DER element: (tag, content, rest).
fn der_element(data: &[u8]) -> Result<(u8, &[u8], &[u8])> {
    let bad = |m: &str| PcrError::PublicKey(m.to_string());
    let (&tag, rest) = data.split_first().ok_or_else(|| bad("truncated"))?;
    let (&first, rest) = rest.split_first().ok_or_else(|| bad("truncated length"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad("bad length"));
        }
        (rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize), &rest[n..])
    };
    if rest.len() < len {
        return Err(bad("truncated content"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The `pkfp` of a public key given as DER SubjectPublicKeyInfo: the SHA-256
/// of the key proper (the `subjectPublicKey` bits, which is what OpenSSL's
/// `i2d_PublicKey` writes: the PKCS#1 `RSAPublicKey` for RSA, the point for EC).
pub fn public_key_fingerprint(spki_der: &[u8]) -> Result<Digest256> {
    let bad = |m: &str| PcrError::PublicKey(m.to_string());
    let (tag, spki, _) = der_element(spki_der)?;
    if tag != 0x30 {
        return Err(bad("not a SEQUENCE"));
    }
    let (tag, _algorithm, rest) = der_element(spki)?;
    if tag != 0x30 {
        return Err(bad("no algorithm identifier"));
    }
    let (tag, bits, _) = der_element(rest)?;
    if tag != 0x03 {
        return Err(bad("no BIT STRING"));
    }
    match bits.split_first() {
        Some((0, key)) => Ok(sha256(key)),
        _ => Err(bad("BIT STRING with unused bits")),
    }
}

/// The `.pcrsig` text ukify writes for `entries` of the `bank` bank
/// (Python's `json.dumps` layout).
pub fn pcrsig_json(bank: &str, entries: &[PolicySignature]) -> String {
    let items: Vec<String> = entries
        .iter()
        .map(|e| {
            let pcrs: Vec<String> = e.pcrs.iter().map(u32::to_string).collect();
            format!(
                "{{\"pcrs\": [{}], \"pkfp\": \"{}\", \"pol\": \"{}\", \"sig\": \"{}\"}}",
                pcrs.join(", "),
                hex(&e.pkfp),
                hex(&e.pol),
                base64_encode(&e.sig)
            )
        })
        .collect();
    format!("{{\"{bank}\": [{}]}}", items.join(", "))
}

/// Sign the policies of every phase path for each of `sets` (sections
/// measured together) with `sign`, which gets the policy digest and returns the
/// signature; identical entries are listed once.
pub fn sign_sets<E>(
    sets: &[Vec<(&str, &[u8])>],
    phases: &[String],
    pkfp: &Digest256,
    sign: &mut dyn FnMut(&Digest256) -> Result<Vec<u8>, E>,
) -> Result<Vec<PolicySignature>, E> {
    let mut out: Vec<PolicySignature> = Vec::new();
    for set in sets {
        for expected in expected_pcrs(set, phases) {
            let pol = policy_pcr_digest(PCR_KERNEL_BOOT, &expected.value);
            let entry = PolicySignature { pcrs: vec![PCR_KERNEL_BOOT], pkfp: *pkfp, pol, sig: sign(&pol)? };
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
    }
    Ok(out)
}

/// The parts of a planned UKI that get their own `.pcrsig`: the base and each
/// joined profile, as index ranges into the section list.
fn segments(sections: &[NewSection], profiles: usize) -> Result<Vec<std::ops::Range<usize>>> {
    let starts: Vec<usize> =
        sections.iter().enumerate().filter(|(_, s)| s.name == ".profile").map(|(i, _)| i).collect();
    if profiles == 0 {
        return Ok(std::iter::once(0..sections.len()).collect());
    }
    if starts.len() < profiles {
        return Err(PcrError::Invalid(format!(
            "Expected {profiles} joined profiles but found {} .profile sections",
            starts.len()
        )));
    }
    let starts = &starts[starts.len() - profiles..];
    let mut out: Vec<std::ops::Range<usize>> = std::iter::once(0..starts[0]).collect();
    for (i, s) in starts.iter().enumerate() {
        out.push(*s..starts.get(i + 1).copied().unwrap_or(sections.len()));
    }
    Ok(out)
}

/// What ukify measures of `sections` for one segment: one set per `.dtbauto`
/// (or a single set without).
fn measurement_sets<'a>(
    sections: &'a [NewSection],
    segment: &std::ops::Range<usize>,
    base: Option<&std::ops::Range<usize>>,
    measured: &dyn Fn(&str) -> bool,
) -> Vec<Vec<(&'a str, &'a [u8])>> {
    let mut unique: Vec<(&str, &[u8])> = Vec::new();
    let put = |unique: &mut Vec<(&'a str, &'a [u8])>, s: &'a NewSection, replace: bool| match unique
        .iter_mut()
        .find(|(n, _)| *n == s.name)
    {
        Some(slot) if replace => *slot = (s.name.as_str(), s.data.as_slice()),
        Some(_) => {}
        None => unique.push((s.name.as_str(), s.data.as_slice())),
    };
    let own = &sections[segment.clone()];
    for s in own.iter().filter(|s| measured(&s.name) && s.name != ".dtbauto") {
        put(&mut unique, s, true);
    }
    if let Some(base) = base {
        for s in sections[base.clone()].iter().take_while(|s| s.name != ".profile") {
            if measured(&s.name) {
                put(&mut unique, s, false);
            }
        }
    }
    let dtbs: Vec<&NewSection> = own.iter().filter(|s| measured(&s.name) && s.name == ".dtbauto").collect();
    if dtbs.is_empty() {
        return vec![unique];
    }
    dtbs.into_iter()
        .map(|d| {
            let mut set = unique.clone();
            put(&mut set, d, true);
            set
        })
        .collect()
}

/// Add `.pcrsig` sections to the planned sections of a UKI
/// ([`crate::uki::plan_sections`], with `.pcrpkey` already in place and no
/// `.pcrsig`) the way ukify does with one `--pcr-private-key`: one after the
/// base and one after each of the last `profiles` joined profiles. Sections
/// named in `unmeasured` (ukify's extra `--section`s) are not measured.
/// `sign` signs a policy digest (see the module documentation) with the key
/// whose fingerprint is `pkfp`; `phases` as for [`finalize_phases`].
pub fn sign_sections<E: From<PcrError>>(
    sections: &[NewSection],
    profiles: usize,
    unmeasured: &[String],
    phases: &[String],
    pkfp: &Digest256,
    sign: &mut dyn FnMut(&Digest256) -> Result<Vec<u8>, E>,
) -> Result<Vec<NewSection>, E> {
    if sections.iter().any(|s| s.name == ".pcrsig") {
        return Err(PcrError::Invalid("The sections already have a .pcrsig section".into()).into());
    }
    if !sections.iter().any(|s| s.name == ".linux") {
        return Err(PcrError::Invalid("Only images with a kernel (.linux) can have signed PCR policies".into()).into());
    }
    let measured = |n: &str| n != ".pcrsig" && !unmeasured.iter().any(|u| u == n);
    let parts = segments(sections, profiles)?;
    let mut out = Vec::with_capacity(sections.len() + parts.len());
    for (i, part) in parts.iter().enumerate() {
        let base = (i > 0).then(|| &parts[0]);
        let sets = measurement_sets(sections, part, base, &measured);
        let entries = sign_sets(&sets, phases, pkfp, sign)?;
        out.extend_from_slice(&sections[part.clone()]);
        out.push(NewSection { name: ".pcrsig".into(), data: pcrsig_json("sha256", &entries).into_bytes() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Digest256 {
        let v: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect();
        v.try_into().expect("32 bytes")
    }

    fn section(name: &str, data: &[u8]) -> NewSection {
        NewSection { name: name.into(), data: data.to_vec() }
    }

    #[test]
    fn policy_digest_known_vectors() {
        // PCR 11 values and the policies systemd-measure 257 signed for them.
        let cases = [
            (
                "03a1feeb93ae31bd8f2712755d8ef8bc68d0d9096ee1816b405f0cc2b6e11e28",
                "5889d505f2cf28251fe3aac0fcaac0db45d198d035c70b61dfb1aa95c6883a04",
            ),
            (
                "7289d30f6dc3db5223df4399c3e3839a1bb5853c8c73cc998e0c064fa526b741",
                "a060ca013562a72ecabdad3af713cc98e2a215e737ca17ec64ff523770a8695d",
            ),
        ];
        for (pcr, pol) in cases {
            assert_eq!(policy_pcr_digest(11, &unhex(pcr)), unhex(pol));
        }
    }

    #[test]
    fn empty_measurement_and_phases() {
        assert_eq!(measure_sections(&[]), [0; 32]);
        // Unknown, unmeasured and empty sections change nothing.
        assert_eq!(measure_sections(&[(".pcrsig", b"x"), (".foo", b"y"), (".cmdline", b"")]), [0; 32]);
        let p = measure_phase(&[0; 32], "enter-initrd");
        assert_eq!(p, extend(&[0; 32], &sha256(b"enter-initrd")));
        assert_eq!(measure_phase(&[0; 32], ":enter-initrd::"), p);
        assert_eq!(finalize_phases(&[]), DEFAULT_PHASES.map(String::from).to_vec());
        assert_eq!(finalize_phases(&["b:".into(), "a".into(), "::b".into()]), ["a", "b"]);
    }

    #[test]
    fn sections_are_measured_in_stub_order() {
        let a = measure_sections(&[(".cmdline", b"quiet"), (".linux", b"kernel"), (".osrel", b"ID=x\n")]);
        let b = measure_sections(&[(".osrel", b"ID=x\n"), (".linux", b"kernel"), (".cmdline", b"quiet")]);
        assert_eq!(a, b);
        let mut manual = [0u8; 32];
        for (name, data) in [(".linux\0", &b"kernel"[..]), (".osrel\0", b"ID=x\n"), (".cmdline\0", b"quiet")] {
            manual = extend(&manual, &sha256(name.as_bytes()));
            manual = extend(&manual, &sha256(data));
        }
        assert_eq!(a, manual);
        // The last of several sections with the same name counts.
        assert_eq!(measure_sections(&[(".linux", b"old"), (".linux", b"kernel")]), {
            let m = extend(&[0; 32], &sha256(b".linux\0"));
            extend(&m, &sha256(b"kernel"))
        });
    }

    #[test]
    fn pe_kernels_are_not_padded() {
        // systemd-measure 257 hashes the file as it is, even when its
        // SizeOfImage is larger.
        let kernel = crate::pe::testpe::build(&[(".text", &[0x90; 0x300])], 0);
        let image = crate::pe::PeFile::parse(&kernel).expect("parse").optional.size_of_image as usize;
        assert!(image > kernel.len());
        let expect = extend(&extend(&[0; 32], &sha256(b".linux\0")), &sha256(&kernel));
        assert_eq!(measure_sections(&[(".linux", &kernel)]), expect);
    }

    #[test]
    fn base64_round_trip() {
        for (plain, enc) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).expect("decode"), plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)).expect("decode"), all);
        assert!(base64_decode("Zm9v!").is_err());
        assert!(base64_decode("Zg==Zg").is_err());
    }

    #[test]
    fn fingerprint_of_spki() {
        // A hand-made SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { OID }, BIT STRING { 0, key } }.
        let key = b"\x04pointdata";
        let mut bits = vec![0x03, (key.len() + 1) as u8, 0];
        bits.extend_from_slice(key);
        let alg = [0x30, 0x03, 0x06, 0x01, 0x2a];
        let mut spki = vec![0x30, (alg.len() + bits.len()) as u8];
        spki.extend_from_slice(&alg);
        spki.extend_from_slice(&bits);
        assert_eq!(public_key_fingerprint(&spki).expect("fp"), sha256(key));
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", base64_encode(&spki));
        assert_eq!(pem_public_key_der(pem.as_bytes()).expect("pem"), spki);
        assert!(public_key_fingerprint(&spki[..5]).is_err());
        assert!(public_key_fingerprint(&alg).is_err());
        assert!(pem_public_key_der(b"junk").is_err());
    }

    #[test]
    fn json_layout() {
        let e = PolicySignature { pcrs: vec![11], pkfp: [0xab; 32], pol: [1; 32], sig: b"sig".to_vec() };
        let json = pcrsig_json("sha256", &[e.clone(), e]);
        let one = format!(
            "{{\"pcrs\": [11], \"pkfp\": \"{}\", \"pol\": \"{}\", \"sig\": \"c2ln\"}}",
            "ab".repeat(32),
            "01".repeat(32)
        );
        assert_eq!(json, format!("{{\"sha256\": [{one}, {one}]}}"));
        assert_eq!(pcrsig_json("sha256", &[]), "{\"sha256\": []}");
    }

    fn fake_sign(pol: &Digest256) -> Result<Vec<u8>, PcrError> {
        Ok(pol[..4].to_vec())
    }

    #[test]
    fn pcrsig_goes_last_without_profiles() {
        let sections = vec![
            section(".osrel", b"ID=x\n"),
            section(".linux", b"kernel"),
            section(".extra", b"not measured"),
            section(".sbat", b"sbat,1\n"),
        ];
        let out =
            sign_sections(&sections, 0, &[".extra".into()], &[], &[7; 32], &mut fake_sign).expect("sign sections");
        let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".osrel", ".linux", ".extra", ".sbat", ".pcrsig"]);
        let base = measure_sections(&[(".osrel", b"ID=x\n"), (".linux", b"kernel"), (".sbat", b"sbat,1\n")]);
        let entries: Vec<PolicySignature> = DEFAULT_PHASES
            .iter()
            .map(|p| {
                let pol = policy_pcr_digest(11, &measure_phase(&base, p));
                PolicySignature { pcrs: vec![11], pkfp: [7; 32], pol, sig: pol[..4].to_vec() }
            })
            .collect();
        assert_eq!(out[4].data, pcrsig_json("sha256", &entries).into_bytes());

        let mut refuse = |_: &Digest256| -> Result<Vec<u8>, PcrError> { Err(PcrError::Invalid("no".into())) };
        assert!(sign_sections(&sections, 0, &[], &[], &[0; 32], &mut refuse).is_err());
        assert!(sign_sections(&sections[..1], 0, &[], &[], &[0; 32], &mut fake_sign).is_err());
        assert!(sign_sections(&out, 0, &[], &[], &[0; 32], &mut fake_sign).is_err());
    }

    #[test]
    fn profiles_are_measured_with_the_base() {
        let sections = vec![
            section(".osrel", b"ID=x\n"),
            section(".cmdline", b"base"),
            section(".linux", b"kernel"),
            section(".sbat", b"sbat,1\n"),
            section(".profile", b"ID=main"),
            section(".profile", b"ID=debug"),
            section(".cmdline", b"debug"),
            section(".profile", b"ID=plain"),
        ];
        let out = sign_sections(&sections, 2, &[], &["enter-initrd".into()], &[1; 32], &mut fake_sign).expect("sign");
        let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                ".osrel", ".cmdline", ".linux", ".sbat", ".profile", ".pcrsig", ".profile", ".cmdline", ".pcrsig",
                ".profile", ".pcrsig"
            ]
        );
        let sig_for = |set: &[(&str, &[u8])]| {
            let pol = policy_pcr_digest(11, &measure_phase(&measure_sections(set), "enter-initrd"));
            pcrsig_json("sha256", &[PolicySignature { pcrs: vec![11], pkfp: [1; 32], pol, sig: pol[..4].to_vec() }])
                .into_bytes()
        };
        let base: Vec<(&str, &[u8])> = vec![
            (".osrel", b"ID=x\n"),
            (".cmdline", b"base"),
            (".linux", b"kernel"),
            (".sbat", b"sbat,1\n"),
            (".profile", b"ID=main"),
        ];
        assert_eq!(out[5].data, sig_for(&base));
        // The profile's own .cmdline replaces the base's; the base .profile is not measured.
        let debug: Vec<(&str, &[u8])> = vec![
            (".profile", b"ID=debug"),
            (".cmdline", b"debug"),
            (".osrel", b"ID=x\n"),
            (".linux", b"kernel"),
            (".sbat", b"sbat,1\n"),
        ];
        assert_eq!(out[8].data, sig_for(&debug));
        let plain: Vec<(&str, &[u8])> = vec![
            (".profile", b"ID=plain"),
            (".osrel", b"ID=x\n"),
            (".cmdline", b"base"),
            (".linux", b"kernel"),
            (".sbat", b"sbat,1\n"),
        ];
        assert_eq!(out[10].data, sig_for(&plain));
        assert!(sign_sections(&sections, 4, &[], &[], &[1; 32], &mut fake_sign).is_err());
    }

    #[test]
    fn one_signature_set_per_dtbauto() {
        let sections = vec![
            section(".linux", b"kernel"),
            section(".dtbauto", b"board-a"),
            section(".dtbauto", b"board-b"),
            section(".dtbauto", b"board-a"),
        ];
        let out = sign_sections(&sections, 0, &[], &["enter-initrd".into()], &[1; 32], &mut fake_sign).expect("sign");
        let json = String::from_utf8(out[4].data.clone()).expect("utf8");
        // board-a twice gives the same entry, listed once.
        assert_eq!(json.matches("\"pcrs\"").count(), 2);
        let a = policy_pcr_digest(
            11,
            &measure_phase(&measure_sections(&[(".linux", b"kernel"), (".dtbauto", b"board-a")]), "enter-initrd"),
        );
        assert!(json.contains(&hex(&a)));
    }
    /// The values `systemd-measure calculate --bank=sha256 --json=short` (257)
    /// printed for a 1536-byte PE kernel (`SizeOfImage` 0x2000, not padded)
    /// alone, and together with every other section it knows, each containing
    /// `content of <name without dot>`.
    #[test]
    fn measurement_known_vectors() {
        let kernel = crate::pe::testpe::build(&[(".text", &[0x90; 0x300])], 0);
        assert_eq!(kernel.len(), 1536);
        let alone = expected_pcrs(&[(".linux", &kernel)], &[]);
        let want = [
            "4df1c09b72ece8b463afa36ee68c2594ce3f10cd60467c2f9d745c879f735f50",
            "512c671ed3793f52d9e4eeed49118f1f2d3ee34c51cc730bb310171917c3cada",
            "6ac818792b294a296ac12093c943960a506c3c98c5bb79cb24d9f5c294ddb1fb",
            "e19fb087607cc251e6205eeeee7df37639f91e94257bdcda2261efed3c46be44",
        ];
        assert_eq!(alone.len(), 4);
        for ((got, want), phase) in alone.iter().zip(want).zip(DEFAULT_PHASES) {
            assert_eq!(got.phase, phase);
            assert_eq!(hex(&got.value), want, "{phase}");
        }

        let names = [
            "osrel", "cmdline", "initrd", "ucode", "splash", "dtb", "uname", "sbat", "pcrpkey", "profile", "hwids",
            "dtbauto",
        ];
        let contents: Vec<(String, Vec<u8>)> =
            names.iter().map(|n| (format!(".{n}"), format!("content of {n}").into_bytes())).collect();
        // Given in reverse order: the stub's order is what counts.
        let mut all: Vec<(&str, &[u8])> = contents.iter().rev().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        all.push((".linux", &kernel));
        let want = [
            "cc54d91f90a17d453035a13141c0b05886c92e061bb3efe654f39751a8de959a",
            "a8e65a00d08bdab3f540bcea37fb500745fd4c8910d9df67ba21aaefa96ba0d3",
            "5c3cfd14800c5a8fd4641eea94439b0db8fdb62c1720ca10dd408462680d98f2",
            "be84088c6a0229a842ac1ce064109b78196b64ecdbd04bf2ce067bb7693d7cd3",
        ];
        let got: Vec<String> = expected_pcrs(&all, &[]).iter().map(|e| hex(&e.value)).collect();
        assert_eq!(got, want);
        // Explicit phases are normalized and sorted.
        let got = expected_pcrs(&all, &["foo::bar:".into(), "enter-initrd".into()]);
        assert_eq!(got[0].phase, "enter-initrd");
        assert_eq!(hex(&got[0].value), want[0]);
        assert_eq!(got[1].phase, "foo:bar");
        assert_eq!(hex(&got[1].value), "d62e01e812d0abe665a68a2aa45e4050f6570f7c88b1df51c6732b3dd65f2498");

        // 257 measures the .hwids content as ".dtbauto" and the .dtbauto content as ".hwids".
        for (name, want) in [
            ("hwids", "a4b6e494c8a68d6b4df13f1e0a1bb3dcbd40ab257eef28d813ebfd6bbae2ab6e"),
            ("dtbauto", "bf509727d635f6c5b2841107f475d74eec381bff799207ea17178ba2f82b3b21"),
            ("profile", "a3ce00f8675538e04cf20ad670312a700f6484e538940d6b563aeb506f9e2288"),
        ] {
            let data = format!("content of {name}").into_bytes();
            let section = format!(".{name}");
            let got = expected_pcrs(&[(".linux", &kernel), (&section, &data)], &["enter-initrd".into()]);
            assert_eq!(hex(&got[0].value), want, "{name}");
        }
    }
}
