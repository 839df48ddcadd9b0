//! Signed PCR policies compared with the real tools: the same UKI built with
//! ukify 257 (`--pcr-private-key … --pcr-banks sha256`, as mkosi calls it)
//! and with [`mkosi_build::boot::pcrs`] must be byte for byte identical (RSA
//! PKCS#1 v1.5 signatures are deterministic), and the expected PCR 11 values
//! must match what `systemd-measure calculate` prints.
//!
//! The tools run from the tools tree in `/var/cache/mkosi-ci/bench/upstream/
//! mkosi.tools` (or `$MKOSI_TEST_TOOLS_TREE`), chrooted in a private mount
//! namespace with the test's scratch directory at `/mnt` and `/tmp`; nothing
//! is written into the tree. Skipped (with a message) without that tree, a
//! cached `systemd-boot-efi` package, openssl, or root.

use std::path::{Path, PathBuf};
use std::process::Command;

use mkosi_build::boot::pcrs::{self, PcrKey};
use mkosi_formats::pcr;
use mkosi_formats::pe::PeFile;
use mkosi_formats::uki::{self, UkiInput};

const DEFAULT_TOOLS_TREE: &str = "/var/cache/mkosi-ci/bench/upstream/mkosi.tools";

fn tools_tree() -> Option<PathBuf> {
    let tree =
        std::env::var_os("MKOSI_TEST_TOOLS_TREE").map_or_else(|| PathBuf::from(DEFAULT_TOOLS_TREE), PathBuf::from);
    tree.join("usr/lib/systemd/systemd-measure").is_file().then_some(tree)
}

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

/// A real kernel when one is around (read only), else a PE binary standing in for one.
fn kernel_image(stub_dir: &Path) -> PathBuf {
    let modules = Path::new("/var/tmp/boottree/tree/usr/lib/modules");
    if let Ok(entries) = std::fs::read_dir(modules) {
        for e in entries.flatten() {
            let k = e.path().join("vmlinuz");
            if k.is_file() {
                return k;
            }
        }
    }
    stub_dir.join("systemd-bootx64.efi")
}

struct Env {
    tools: PathBuf,
    dir: tempfile::TempDir,
    stubs: PathBuf,
    openssl: PathBuf,
}

fn setup() -> Option<Env> {
    let Some(tools) = tools_tree() else {
        println!("SKIPPED: no tools tree with systemd-measure at {DEFAULT_TOOLS_TREE}");
        return None;
    };
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        println!("SKIPPED: running the tools tree needs root (unshare -m, chroot)");
        return None;
    }
    let Some(openssl) = mkosi_build::secureboot::find_on_path("openssl") else {
        println!("SKIPPED: openssl is not installed");
        return None;
    };
    let Some(deb) = cached_systemd_boot_deb() else {
        println!("SKIPPED: no systemd-boot-efi package cached in /var/cache/mkosi-ci");
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("tmp")).expect("mkdir");
    let ok = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.path().join("deb")).status();
    let stubs = dir.path().join("deb/usr/lib/systemd/boot/efi");
    if !ok.is_ok_and(|s| s.success()) || !stubs.join("linuxx64.efi.stub").is_file() {
        println!("SKIPPED: could not extract {}", deb.display());
        return None;
    }
    Some(Env { tools, dir, stubs, openssl })
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run `argv` in the tools tree with the scratch directory at /mnt; the output.
    fn run_tool(&self, argv: &[String]) -> Vec<u8> {
        let script = r#"T=$0; S=$1; shift
mount --bind "$S" "$T/mnt" && mount --bind "$S/tmp" "$T/tmp" && mount --bind "$S/tmp" "$T/var/tmp" &&
mount -t proc proc "$T/proc" && mount --rbind /dev "$T/dev" && cd / && exec chroot "$T" "$@""#;
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script])
            .arg(&self.tools)
            .arg(self.dir.path())
            .args(argv)
            .output()
            .expect("unshare");
        assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).expect("write");
        p
    }

    fn genkey(&self, name: &str, args: &[&str]) -> PathBuf {
        let key = self.path(name);
        let out = Command::new(&self.openssl).args(args).arg("-out").arg(&key).output().expect("openssl");
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        key
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

const UNAME: &str = "6.12.118+deb13-cloud-amd64";

/// The inputs shared by ukify and us: (ukify arguments, our input).
fn inputs(env: &Env) -> (Vec<String>, UkiInput) {
    let kernel = env.path("vmlinuz");
    std::fs::copy(kernel_image(&env.stubs), &kernel).expect("copy kernel");
    let initrd: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    env.write("initrd", &initrd);
    let osrel = "ID=debian\nVERSION_ID=13\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n";
    env.write("os-release", osrel.as_bytes());
    let cmdline = uki::cmdline_text(&[s("root=PARTUUID=1234"), s("quiet"), s("console=ttyS0")]);
    env.write("cmdline", cmdline.as_bytes());
    let args = vec![
        s("ukify"),
        s("build"),
        s("--stub=/mnt/deb/usr/lib/systemd/boot/efi/linuxx64.efi.stub"),
        s("--linux=/mnt/vmlinuz"),
        s("--initrd=/mnt/initrd"),
        s("--os-release=@/mnt/os-release"),
        s("--cmdline=@/mnt/cmdline"),
        format!("--uname={UNAME}"),
        s("--pcr-banks=sha256"),
    ];
    let input = UkiInput {
        stub: env.stubs.join("linuxx64.efi.stub"),
        linux: Some(kernel),
        initrds: vec![env.path("initrd")],
        cmdline: Some(cmdline),
        os_release: Some(osrel.to_string()),
        uname: Some(UNAME.to_string()),
        ..Default::default()
    };
    (args, input)
}

fn sections(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let pe = PeFile::parse(data).expect("parse");
    pe.sections.iter().map(|s| (s.name.clone(), pe.section_data(data, s).to_vec())).collect()
}

#[test]
fn rsa_signed_uki_is_identical_to_ukify() {
    let Some(env) = setup() else { return };
    let key = env.genkey("key.pem", &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let (mut args, input) = inputs(&env);
    args.extend([s("--pcr-private-key=/mnt/key.pem"), s("--output=/mnt/ukify.efi")]);
    env.run_tool(&args);
    let want = std::fs::read(env.path("ukify.efi")).expect("read");

    let k = PcrKey::load(&env.openssl, &key).expect("key");
    let ours = env.path("ours.efi");
    pcrs::build_signed(&input, &k, &ours).expect("build");
    let got = std::fs::read(&ours).expect("read");
    let names: Vec<String> = sections(&got).into_iter().map(|(n, _)| n).collect();
    assert!(names.ends_with(&[s(".pcrpkey"), s(".linux"), s(".initrd"), s(".pcrsig")]), "{names:?}");
    assert!(got == want, "our UKI differs from ukify's: {:?} vs {:?}", sections_summary(&got), sections_summary(&want));

    // systemd-measure calculate agrees with our expected PCR values.
    let secs = sections(&got);
    let find = |n: &str| secs.iter().find(|(name, _)| name == n).map(|(_, d)| d.clone()).expect("section");
    let mut argv = vec![s("/usr/lib/systemd/systemd-measure"), s("calculate"), s("--bank=sha256"), s("--json=short")];
    let mut measured: Vec<(&str, Vec<u8>)> = Vec::new();
    for name in [".osrel", ".cmdline", ".uname", ".pcrpkey", ".linux", ".initrd", ".sbat"] {
        let file = format!("section{name}");
        env.write(&file, &find(name));
        argv.push(format!("--{}=/mnt/{file}", name.trim_start_matches('.')));
        measured.push((name, find(name)));
    }
    let json = String::from_utf8(env.run_tool(&argv)).expect("utf8");
    let refs: Vec<(&str, &[u8])> = measured.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    for e in pcr::expected_pcrs(&refs, &[]) {
        let value: String = e.value.iter().map(|b| format!("{b:02x}")).collect();
        let entry = format!("{{\"phase\":\"{}\",\"pcr\":11,\"hash\":\"{value}\"}}", e.phase);
        assert!(json.contains(&entry), "{entry} not in {json}");
    }
}

fn sections_summary(data: &[u8]) -> Vec<(String, usize)> {
    sections(data).into_iter().map(|(n, d)| (n, d.len())).collect()
}

#[test]
fn rsa_signed_uki_with_profiles_is_identical_to_ukify() {
    let Some(env) = setup() else { return };
    let key = env.genkey("key.pem", &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"]);
    let (mut args, mut input) = inputs(&env);
    let addon = env.stubs.join("addonx64.efi.stub");
    let mut profiles = Vec::new();
    for (id, extra) in [("debug", Some("debug")), ("plain", None)] {
        let text = uki::profile_text(&[(s("ID"), s(id)), (s("TITLE"), format!("Profile {id}"))]);
        let cmdline = extra.map(|e| uki::cmdline_text(&[s("quiet"), s(e)]));
        let out = env.path(&format!("{id}.efi"));
        uki::build_profile(&addon, &text, cmdline.as_deref(), &out).expect("profile");
        args.push(format!("--join-profile=/mnt/{id}.efi"));
        profiles.push(out);
    }
    input.join_profiles = profiles;
    args.extend([s("--pcr-private-key=/mnt/key.pem"), s("--output=/mnt/ukify.efi")]);
    env.run_tool(&args);
    let want = std::fs::read(env.path("ukify.efi")).expect("read");

    let k = PcrKey::load(&env.openssl, &key).expect("key");
    let got = pcrs::assemble_signed(&input, &k).expect("assemble");
    let names: Vec<String> = sections(&got).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.iter().filter(|n| *n == ".pcrsig").count(), 3, "{names:?}");
    assert!(got == want, "our UKI differs from ukify's: {:?} vs {:?}", sections_summary(&got), sections_summary(&want));
}

#[test]
fn ec_signed_uki_matches_ukify_but_for_the_signatures() {
    let Some(env) = setup() else { return };
    let key = env.genkey("key.pem", &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let (mut args, input) = inputs(&env);
    args.extend([s("--pcr-private-key=/mnt/key.pem"), s("--output=/mnt/ukify.efi")]);
    env.run_tool(&args);
    let want = sections(&std::fs::read(env.path("ukify.efi")).expect("read"));

    let k = PcrKey::load(&env.openssl, &key).expect("key");
    let got = sections(&pcrs::assemble_signed(&input, &k).expect("assemble"));
    assert_eq!(got.len(), want.len());
    // ECDSA signatures are randomized: everything else must be the same.
    let strip_sigs = |json: &[u8]| {
        let text = String::from_utf8(json.to_vec()).expect("utf8");
        text.split("\"sig\": \"")
            .enumerate()
            .map(|(i, p)| if i == 0 { p } else { p.split_once('"').map_or(p, |x| x.1) })
            .collect::<Vec<_>>()
            .join("|")
    };
    for ((gn, gd), (wn, wd)) in got.iter().zip(&want) {
        assert_eq!(gn, wn);
        if gn == ".pcrsig" {
            assert_eq!(strip_sigs(gd), strip_sigs(wd));
        } else {
            assert!(gd == wd, "section {gn} differs");
        }
    }
    // And our signatures verify against the public key.
    let pcrsig = String::from_utf8(got.iter().find(|(n, _)| n == ".pcrsig").expect("pcrsig").1.clone()).expect("utf8");
    let public = env.write("pub.pem", k.public_key_pem());
    let mut checked = 0;
    for part in pcrsig.split("\"pol\": \"").skip(1) {
        let (pol, rest) = part.split_once('"').expect("pol");
        let sig = rest.split("\"sig\": \"").nth(1).and_then(|x| x.split_once('"')).expect("sig").0;
        let pol: Vec<u8> =
            (0..pol.len()).step_by(2).map(|i| u8::from_str_radix(&pol[i..i + 2], 16).expect("hex")).collect();
        let polf = env.write("pol.bin", &pol);
        let sigf = env.write("sig.bin", &pcr::base64_decode(sig).expect("base64"));
        let out = Command::new(&env.openssl)
            .args(["dgst", "-sha256", "-verify"])
            .arg(&public)
            .arg("-signature")
            .arg(&sigf)
            .arg(&polf)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        checked += 1;
    }
    assert_eq!(checked, 4);
}
