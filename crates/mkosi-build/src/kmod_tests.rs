//! Tests of kernel module and firmware handling on synthetic module trees (tiny ELF objects
//! with a `.modinfo` section, some compressed) and, when available, a real Debian kernel.

use super::*;

use std::io::Write;

use mkosi_config::{Args, Config, Verb};
use serde_json::{json, Value};

const KVER: &str = "6.1.0-test";

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// A relocatable ELF object with a `.modinfo` section holding `entries`.
fn fake_module(entries: &[(&str, &str)]) -> Vec<u8> {
    use object::write::Object;
    use object::{Architecture as Arch, BinaryFormat, Endianness, SectionKind};
    let mut obj = Object::new(BinaryFormat::Elf, Arch::X86_64, Endianness::Little);
    let id = obj.add_section(vec![], b".modinfo".to_vec(), SectionKind::ReadOnlyData);
    let mut data = Vec::new();
    for (k, v) in entries {
        data.extend_from_slice(format!("{k}={v}").as_bytes());
        data.push(0);
    }
    obj.append_section_data(id, &data, 1);
    obj.write().expect("writing ELF")
}

fn compress(name: &str, data: Vec<u8>) -> Vec<u8> {
    if name.ends_with(".xz") {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(&data).unwrap();
        e.finish().unwrap()
    } else if name.ends_with(".zst") {
        zstd::encode_all(&data[..], 3).unwrap()
    } else if name.ends_with(".gz") {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        e.finish().unwrap()
    } else {
        data
    }
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn symlink(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, p).unwrap();
}

fn md(rel: &str) -> String {
    format!("usr/lib/modules/{KVER}/{rel}")
}

/// A module tree:
/// - ext4 (xz) depends on jbd2 (zst) and mbcache, soft-depends on the alias crypto-crc32c
///   (provided by crc32c_generic, gz);
/// - iwlwifi wants firmware `iwlwifi-8000C-36.ucode` (installed xz-compressed),
///   `intel/ibt-13.sfi` (a symlink to `ibt-12.sfi`) and `nvidia/ad103/gsp.bin` (behind a
///   directory symlink);
/// - foo_drm depends on drm_helper; e1000 and snd-hda-codec need nothing;
/// - the built-in module builtin_fw wants firmware `builtin.bin` and soft-depends on
///   builtin_helper;
/// - firmware `unrelated.bin`, microcode, `modules.*` files and `vdso/`.
fn synthetic_tree(root: &Path) {
    let modules: &[(&str, &[(&str, &str)])] = &[
        (
            "kernel/fs/ext4/ext4.ko.xz",
            &[("softdep", "pre: crypto-crc32c"), ("license", "GPL"), ("depends", "jbd2,mbcache"), ("name", "ext4")],
        ),
        ("kernel/fs/jbd2/jbd2.ko.zst", &[("depends", ""), ("name", "jbd2")]),
        ("kernel/fs/mbcache.ko", &[("depends", ""), ("name", "mbcache")]),
        (
            "kernel/crypto/crc32c_generic.ko.gz",
            &[("alias", "crypto-crc32c"), ("depends", ""), ("name", "crc32c_generic")],
        ),
        (
            "kernel/drivers/net/wireless/iwlwifi.ko",
            &[
                ("firmware", "iwlwifi-8000C-36.ucode"),
                ("firmware", "intel/ibt-13.sfi"),
                ("firmware", "nvidia/ad103/gsp.bin"),
                ("depends", ""),
                ("name", "iwlwifi"),
            ],
        ),
        ("kernel/drivers/gpu/foo_drm.ko", &[("depends", "drm_helper"), ("name", "foo_drm")]),
        ("kernel/drivers/gpu/drm_helper.ko.zst", &[("depends", ""), ("name", "drm_helper")]),
        ("kernel/drivers/net/ethernet/e1000.ko", &[("depends", ""), ("name", "e1000")]),
        ("kernel/sound/snd-hda-codec.ko", &[("depends", ""), ("name", "snd_hda_codec")]),
        ("kernel/lib/builtin_helper.ko", &[("depends", ""), ("name", "builtin_helper")]),
    ];
    for (rel, entries) in modules {
        write(root, &md(rel), &compress(rel, fake_module(entries)));
    }
    write(root, &md("modules.dep"), b"kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.zst kernel/fs/mbcache.ko\n");
    write(root, &md("modules.alias"), b"alias crypto-crc32c crc32c_generic\nalias pci:v00008086d*sv* e1000\n");
    write(root, &md("modules.builtin"), b"kernel/drivers/misc/builtin_fw.ko\n");
    write(
        root,
        &md("modules.builtin.modinfo"),
        b"builtin_fw.firmware=builtin.bin\0builtin_fw.softdep=post: builtin_helper\0",
    );
    write(root, &md("modules.order"), b"");
    write(root, &md("vdso/vdso64.so"), b"vdso");

    let fw = "usr/lib/firmware";
    write(root, &format!("{fw}/iwlwifi-8000C-36.ucode.xz"), b"iwl");
    write(root, &format!("{fw}/intel/ibt-12.sfi"), b"ibt");
    symlink(root, &format!("{fw}/intel/ibt-13.sfi"), "ibt-12.sfi");
    write(root, &format!("{fw}/nvidia/ad102/gsp.bin"), b"gsp");
    symlink(root, &format!("{fw}/nvidia/ad103"), "ad102");
    write(root, &format!("{fw}/builtin.bin"), b"builtin");
    write(root, &format!("{fw}/unrelated.bin"), b"unrelated");
    write(root, &format!("{fw}/other/deep/thing.bin.zst"), b"thing");
    write(root, &format!("{fw}/amd-ucode/microcode_amd_fam17h.bin"), b"AMD17");
    write(root, &format!("{fw}/amd-ucode/microcode_amd.bin"), b"AMD");
    write(root, &format!("{fw}/intel-ucode/06-55-04"), b"INTEL1");
    write(root, &format!("{fw}/intel-ucode/06-8e-09"), b"INTEL2");
}

fn rels(root: &Path, paths: impl IntoIterator<Item = PathBuf>) -> Vec<String> {
    let _ = root;
    let mut v: Vec<String> = paths.into_iter().map(|p| p.to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Every file and symlink (not directory) below `root/dir`, relative to `root`.
fn files_below(root: &Path, dir: &str) -> Vec<String> {
    let mut all = Vec::new();
    walk(root, Path::new(dir), &mut all).unwrap();
    let mut v: Vec<String> = all
        .into_iter()
        .filter(|p| !std::fs::symlink_metadata(root.join(p)).unwrap().is_dir())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn sel(include: &[&str], exclude: &[&str], fw_include: &[&str], fw_exclude: &[&str]) -> Selection {
    Selection {
        modules_include: s(include),
        modules_exclude: s(exclude),
        firmware_include: s(fw_include),
        firmware_exclude: s(fw_exclude),
    }
}

// ------------------------------------------------------------------------------------------------
// Globs
// ------------------------------------------------------------------------------------------------

#[test]
fn glob_semantics() {
    // (module path without suffix, globs, expected)
    let cases: &[(&str, &[&str], bool)] = &[
        ("kernel/fs/ext4/ext4", &["ext4"], true),
        ("kernel/fs/ext4/ext4", &["ext*"], true),
        ("kernel/fs/ext4/ext4", &["xfs"], false),
        ("kernel/fs/ext4/ext4", &[], false),
        // Trailing slash: everything below a directory, at a path component boundary.
        ("kernel/fs/ext4/ext4", &["fs/ext4/"], true),
        ("kernel/fs/ext4/ext4", &["s/ext4/"], false),
        ("kernel/fs/ext4/ext4", &["fs/"], true),
        // Absolute globs: below kernel/ first, then below the modules directory.
        ("kernel/fs/ext4/ext4", &["/fs/"], true),
        ("kernel/fs/ext4/ext4", &["/fs/ext4/ext4"], true),
        ("kernel/fs/ext4/ext4", &["/kernel/fs/ext4/ext4"], true),
        ("updates/fs/ext4/ext4", &["/fs/"], false),
        ("updates/fs/ext4/ext4", &["/updates/"], true),
        ("kernel/fs/ext4/ext4", &["/ext4"], false),
        // Wildcards cross `/` (fnmatch, not path globbing).
        ("kernel/fs/ext4/ext4", &["kernel/fs/*"], true),
        ("kernel/fs/ext4/ext4", &["/*/ext4"], true),
        ("kernel/fs/ext4/ext4", &["fs?ext4/ext4"], true),
        ("kernel/drivers/md/raid456", &["raid[0-9]*"], true),
        ("kernel/drivers/md/raid-class", &["raid[0-9]*"], false),
        // The last matching glob wins; `-` excludes.
        ("kernel/fs/ext4/ext4", &["ext4", "-ext4"], false),
        ("kernel/fs/ext4/ext4", &["-ext4", "ext4"], true),
        ("kernel/fs/ext4/ext4", &["-ext4", "xfs"], false),
        ("kernel/drivers/crypto/ccp/ccp", &["crypto/"], true),
        ("kernel/drivers/crypto/ccp/ccp", &["crypto/", "-/drivers/crypto/"], false),
        ("kernel/drivers/crypto/ccp/ccp-crypto", &["crypto/", "-/drivers/crypto/", "ccp-crypto"], true),
        ("kernel/crypto/sha256", &["crypto/", "-/drivers/crypto/", "ccp-crypto"], true),
        // An unclosed `[` is a literal.
        ("kernel/x/a[b", &["a[b"], true),
    ];
    for (name, globs, want) in cases {
        assert_eq!(globs_match_filename(name, &s(globs), false), *want, "{name} vs {globs:?}");
    }
    // match_default answers when nothing matches.
    assert!(globs_match_filename("foo/bar.bin", &[], true));
    assert!(globs_match_filename("foo/bar.bin", &s(&["x"]), true));
    assert!(!globs_match_filename("foo/bar.bin", &s(&["-foo/"]), true));
}

#[test]
fn module_and_firmware_suffixes() {
    for name in [
        "kernel/fs/ext4/ext4.ko",
        "kernel/fs/ext4/ext4.ko.xz",
        "kernel/fs/ext4/ext4.ko.zst",
        "kernel/fs/ext4/ext4.ko.gz",
    ] {
        assert!(globs_match_module(name, &s(&["ext4"])), "{name}");
        assert!(globs_match_module(name, &s(&["/fs/ext4/ext4"])), "{name}");
    }
    assert!(!globs_match_module("kernel/fs/ext4/ext4.ko.xz", &s(&["ext4.ko*"])));
    assert!(globs_match_firmware("iwlwifi-x.ucode.xz", &s(&["iwlwifi-x.ucode"]), false));
    assert!(globs_match_firmware("intel/ibt.sfi.zst", &s(&["intel/"]), false));
    assert!(!globs_match_firmware("intel/ibt.sfi.bz2", &s(&["intel/ibt.sfi"]), false));
}

#[test]
fn normalization() {
    assert_eq!(normalize_module_name("snd_hda_codec"), "snd-hda-codec");
    let cases = [
        ("a_b", "a-b"),
        ("a_b[_x]_c", "a-b[_x]-c"),
        ("raid[0-9]*", "raid[0-9]*"),
        ("x[_", "x[_"),
        ("[]_]_", "[]-]-"),
        ("/drivers/foo_bar/", "/drivers/foo-bar/"),
    ];
    for (glob, want) in cases {
        assert_eq!(normalize_module_glob(glob), want, "{glob}");
    }
    assert_eq!(module_path_to_name(Path::new("kernel/sound/snd_hda_intel.ko.zst")), "snd-hda-intel");
    assert_eq!(module_path_to_name(Path::new("kernel/a/b.c.ko")), "b");
}

#[test]
fn loaded_modules_parsing() {
    let text = "snd_hda_intel 57344 3 - Live 0x0\next4 1007616 1 - Live 0x0\n\n";
    assert_eq!(parse_loaded_modules(text), s(&["snd-hda-intel", "ext4"]));
}

#[test]
fn finalize_include_expands_default_and_host() {
    let mut default = || Ok(s(&["ahci", "ext4"]));
    let mut host = || Ok(s(&["e1000", "ext4"]));
    let got = finalize_kernel_modules_include(
        &s(&["xfs", "default", "host", "ext4", "host"]),
        false,
        &mut default,
        &mut host,
    )
    .unwrap();
    assert_eq!(got, s(&["xfs", "ahci", "ext4", "e1000"]));
    let got = finalize_kernel_modules_include(&s(&["xfs", "host"]), true, &mut default, &mut host).unwrap();
    assert_eq!(got, s(&["e1000", "ext4", "xfs"]));
    let mut failing = || Err(BuildError::msg("no /proc/modules"));
    assert!(finalize_kernel_modules_include(&s(&["xfs"]), false, &mut default, &mut failing).is_ok());
    assert!(finalize_kernel_modules_include(&s(&["host"]), false, &mut default, &mut failing).is_err());
}

#[test]
fn default_module_list_follows_the_architecture() {
    let host = Host::new(vec![], Architecture::X86_64, "/".into());
    let d = tempfile::tempdir().unwrap();
    let x86 = default_kernel_modules(&host, Architecture::X86_64, &d.path().join("x86")).unwrap();
    assert!(x86.contains(&"ahci".to_string()) && x86.contains(&"-/drivers/crypto/".to_string()));
    assert!(!x86.contains(&"/drivers/mmc/host/".to_string()));
    let arm = default_kernel_modules(&host, Architecture::Arm64, &d.path().join("arm")).unwrap();
    assert!(arm.contains(&"/drivers/mmc/host/".to_string()) && arm.contains(&"ahci".to_string()));
    // The order of the file is kept (later entries refine earlier ones).
    let pos = |v: &[String], x: &str| v.iter().position(|e| e == x).unwrap();
    assert!(pos(&x86, "crypto/") < pos(&x86, "-/drivers/crypto/"));
}

// ------------------------------------------------------------------------------------------------
// Module information
// ------------------------------------------------------------------------------------------------

#[test]
fn modinfo_of_compressed_modules() {
    let d = tempfile::tempdir().unwrap();
    let entries = [("depends", "a,b"), ("softdep", "pre: c post: d_e"), ("firmware", "x.bin"), ("name", "m")];
    for suffix in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
        let name = format!("m{suffix}");
        let p = d.path().join(&name);
        std::fs::write(&p, compress(&name, fake_module(&entries))).unwrap();
        let info = read_modinfo(&p).unwrap();
        assert_eq!(info.len(), 4, "{name}");
        let needs = module_needs(&info);
        assert_eq!(needs.modules, ["a", "b", "c", "d-e"].iter().map(|x| x.to_string()).collect());
        assert_eq!(needs.firmware, s(&["x.bin"]));
    }
    let bad = d.path().join("bad.ko");
    std::fs::write(&bad, b"not an elf").unwrap();
    assert!(read_modinfo(&bad).is_err());
    let bad = d.path().join("bad.ko.xz");
    std::fs::write(&bad, b"not xz").unwrap();
    assert!(read_modinfo(&bad).is_err());
}

#[test]
fn firmware_lookup_with_compressed_variants_and_globs() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    let fw = |v: &str| rels(root, firmware_files(root, v));
    assert_eq!(fw("iwlwifi-8000C-36.ucode"), s(&["usr/lib/firmware/iwlwifi-8000C-36.ucode.xz"]));
    assert_eq!(fw("intel/ibt-13.sfi"), s(&["usr/lib/firmware/intel/ibt-13.sfi"]));
    assert_eq!(fw("intel/ibt-*"), s(&["usr/lib/firmware/intel/ibt-12.sfi", "usr/lib/firmware/intel/ibt-13.sfi"]));
    assert_eq!(fw("nvidia/ad103/gsp.bin"), s(&["usr/lib/firmware/nvidia/ad103/gsp.bin"]));
    assert!(fw("missing.bin").is_empty());
}

#[test]
fn dependency_closure() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    let (modules, firmware) = resolve_module_dependencies(root, KVER, &s(&["ext4"])).unwrap();
    assert_eq!(
        rels(root, modules),
        vec![
            md("kernel/crypto/crc32c_generic.ko.gz"),
            md("kernel/fs/ext4/ext4.ko.xz"),
            md("kernel/fs/jbd2/jbd2.ko.zst"),
            md("kernel/fs/mbcache.ko"),
            md("kernel/lib/builtin_helper.ko"),
        ]
    );
    assert_eq!(rels(root, firmware), s(&["usr/lib/firmware/builtin.bin"]));

    let (modules, firmware) = resolve_module_dependencies(root, KVER, &s(&["iwlwifi", "foo-drm"])).unwrap();
    assert_eq!(
        rels(root, modules),
        vec![
            md("kernel/drivers/gpu/drm_helper.ko.zst"),
            md("kernel/drivers/gpu/foo_drm.ko"),
            md("kernel/drivers/net/wireless/iwlwifi.ko"),
            md("kernel/lib/builtin_helper.ko"),
        ]
    );
    assert_eq!(
        rels(root, firmware),
        s(&[
            "usr/lib/firmware/builtin.bin",
            "usr/lib/firmware/intel/ibt-13.sfi",
            "usr/lib/firmware/iwlwifi-8000C-36.ucode.xz",
            "usr/lib/firmware/nvidia/ad103/gsp.bin",
        ])
    );
}

#[test]
fn module_selection() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    let f = |inc: &[&str], exc: &[&str]| filter_kernel_modules(root, KVER, &s(inc), &s(exc)).unwrap();
    let all = s(&[
        "builtin-helper",
        "crc32c-generic",
        "drm-helper",
        "e1000",
        "ext4",
        "foo-drm",
        "iwlwifi",
        "jbd2",
        "mbcache",
        "snd-hda-codec",
    ]);
    assert_eq!(f(&[], &[]), all);
    assert_eq!(f(&["ext4"], &[]), s(&["ext4"]));
    // `_` and `-` are the same in names and globs.
    assert_eq!(f(&["snd_hda_codec"], &[]), s(&["snd-hda-codec"]));
    assert_eq!(f(&["foo-drm", "crc32c_*"], &[]), s(&["crc32c-generic", "foo-drm"]));
    assert_eq!(f(&["/drivers/", "-/drivers/net/"], &[]), s(&["drm-helper", "foo-drm"]));
    assert_eq!(f(&["kernel/fs/*", "-mbcache"], &[]), s(&["ext4", "jbd2"]));
    assert_eq!(f(&["-ext4"], &[]), Vec::<String>::new());
    // Legacy regexes match below the first-level directory and are searched for.
    assert_eq!(f(&["re:^fs/"], &[]), s(&["ext4", "jbd2", "mbcache"]));
    assert_eq!(f(&["re:^kernel/"], &[]), Vec::<String>::new());
    assert_eq!(f(&["re:jbd|e1000"], &[]), s(&["e1000", "jbd2"]));
    // With exclusions, everything else stays; inclusions win over exclusions.
    let mut expect = all.clone();
    expect.retain(|m| !["drm-helper", "foo-drm", "e1000", "iwlwifi"].contains(&m.as_str()));
    assert_eq!(f(&[], &["re:drivers/"]), expect);
    expect.push("foo-drm".into());
    expect.sort();
    assert_eq!(f(&["re:foo_drm"], &["re:drivers/"]), expect);
    assert!(filter_kernel_modules(root, KVER, &[], &s(&["ext4"])).is_err(), "exclusions must be regexes");
    assert!(filter_kernel_modules(root, KVER, &s(&["re:("]), &[]).is_err(), "invalid regex");
}

#[test]
fn firmware_selection() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    let base: BTreeSet<PathBuf> =
        ["usr/lib/firmware/builtin.bin", "usr/lib/firmware/intel/ibt-13.sfi"].iter().map(PathBuf::from).collect();
    let f = |inc: &[&str], exc: &[&str]| rels(root, filter_firmware(root, base.clone(), &s(inc), &s(exc)).unwrap());
    assert_eq!(f(&[], &[]), s(&["usr/lib/firmware/builtin.bin", "usr/lib/firmware/intel/ibt-13.sfi"]));
    assert_eq!(f(&["-intel/"], &[]), s(&["usr/lib/firmware/builtin.bin"]));
    assert_eq!(f(&[], &["re:^intel"]), s(&["usr/lib/firmware/builtin.bin"]));
    assert_eq!(
        f(&["unrelated.bin", "other/"], &[]),
        s(&[
            "usr/lib/firmware/builtin.bin",
            "usr/lib/firmware/intel/ibt-13.sfi",
            "usr/lib/firmware/other/deep/thing.bin.zst",
            "usr/lib/firmware/unrelated.bin",
        ])
    );
    // The glob ignores the compression suffix.
    assert_eq!(
        f(&["thing.bin", "-builtin.bin"], &[]),
        s(&["usr/lib/firmware/intel/ibt-13.sfi", "usr/lib/firmware/other/deep/thing.bin.zst"])
    );
    assert_eq!(
        f(&["re:unrel"], &[]),
        s(&["usr/lib/firmware/builtin.bin", "usr/lib/firmware/intel/ibt-13.sfi", "usr/lib/firmware/unrelated.bin"])
    );
}

#[test]
fn required_paths_include_links_parents_and_modules_files() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    let req = required_kernel_modules(root, KVER, &sel(&["iwlwifi"], &[], &[], &[])).unwrap();
    let got: Vec<String> = req.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let want: Vec<String> = [
        "usr/lib/firmware",
        "usr/lib/firmware/builtin.bin",
        "usr/lib/firmware/intel",
        "usr/lib/firmware/intel/ibt-12.sfi",
        "usr/lib/firmware/intel/ibt-13.sfi",
        "usr/lib/firmware/iwlwifi-8000C-36.ucode.xz",
        "usr/lib/firmware/nvidia",
        "usr/lib/firmware/nvidia/ad102",
        "usr/lib/firmware/nvidia/ad102/gsp.bin",
        "usr/lib/firmware/nvidia/ad103",
        "usr/lib/modules",
        &format!("usr/lib/modules/{KVER}"),
        &md("kernel"),
        &md("kernel/drivers"),
        &md("kernel/drivers/net"),
        &md("kernel/drivers/net/wireless"),
        &md("kernel/drivers/net/wireless/iwlwifi.ko"),
        &md("kernel/lib"),
        &md("kernel/lib/builtin_helper.ko"),
        &md("modules.alias"),
        &md("modules.builtin"),
        &md("modules.builtin.modinfo"),
        &md("modules.dep"),
        &md("modules.order"),
        &md("vdso"),
        &md("vdso/vdso64.so"),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    assert_eq!(got, want);
}

#[test]
fn alternatives_symlinks_are_made_relative() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    write(root, "etc/alternatives/real.bin", b"real");
    // /etc/alternatives/alt.bin -> /usr/lib/firmware/alt-target.bin
    symlink(root, "etc/alternatives/alt.bin", "/usr/lib/firmware/alt-target.bin");
    write(root, "usr/lib/firmware/alt-target.bin", b"target");
    symlink(root, "usr/lib/firmware/alt.bin", "/etc/alternatives/alt.bin");
    let req = required_kernel_modules(root, KVER, &sel(&["-*"], &[], &["alt.bin"], &[])).unwrap();
    assert_eq!(std::fs::read_link(root.join("usr/lib/firmware/alt.bin")).unwrap(), PathBuf::from("alt-target.bin"));
    assert!(req.contains(Path::new("usr/lib/firmware/alt.bin")));
    assert!(req.contains(Path::new("usr/lib/firmware/alt-target.bin")));
}

#[test]
fn filtering_the_image() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    assert!(!process_kernel_modules(root, KVER, &Selection::default()).unwrap(), "no filters, nothing to do");
    assert_eq!(files_below(root, "usr/lib/modules").len(), 10 + 5 + 1);

    assert!(process_kernel_modules(root, KVER, &sel(&["ext4", "iwlwifi"], &[], &["unrelated.bin"], &[])).unwrap());
    let mut want: Vec<String> = [
        "kernel/crypto/crc32c_generic.ko.gz",
        "kernel/drivers/net/wireless/iwlwifi.ko",
        "kernel/fs/ext4/ext4.ko.xz",
        "kernel/fs/jbd2/jbd2.ko.zst",
        "kernel/fs/mbcache.ko",
        "kernel/lib/builtin_helper.ko",
        "modules.alias",
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.dep",
        "modules.order",
        "vdso/vdso64.so",
    ]
    .iter()
    .map(|r| md(r))
    .collect();
    want.sort();
    assert_eq!(files_below(root, "usr/lib/modules"), want);
    assert_eq!(
        files_below(root, "usr/lib/firmware"),
        s(&[
            "usr/lib/firmware/amd-ucode/microcode_amd.bin",
            "usr/lib/firmware/amd-ucode/microcode_amd_fam17h.bin",
            "usr/lib/firmware/builtin.bin",
            "usr/lib/firmware/intel-ucode/06-55-04",
            "usr/lib/firmware/intel-ucode/06-8e-09",
            "usr/lib/firmware/intel/ibt-12.sfi",
            "usr/lib/firmware/intel/ibt-13.sfi",
            "usr/lib/firmware/iwlwifi-8000C-36.ucode.xz",
            "usr/lib/firmware/nvidia/ad102/gsp.bin",
            "usr/lib/firmware/nvidia/ad103",
            "usr/lib/firmware/unrelated.bin",
        ])
    );
    assert!(!root.join("usr/lib/firmware/other").exists(), "emptied firmware directories go");
    // As upstream, module directories stay even when emptied.
    assert_eq!(std::fs::read_dir(root.join(md("kernel/drivers/gpu"))).unwrap().count(), 0);

    // A second run with a narrower selection drops firmware too.
    assert!(process_kernel_modules(root, KVER, &sel(&["ext4"], &[], &[], &["re:builtin"])).unwrap());
    assert_eq!(
        files_below(root, "usr/lib/firmware"),
        s(&[
            "usr/lib/firmware/amd-ucode/microcode_amd.bin",
            "usr/lib/firmware/amd-ucode/microcode_amd_fam17h.bin",
            "usr/lib/firmware/intel-ucode/06-55-04",
            "usr/lib/firmware/intel-ucode/06-8e-09",
        ])
    );
    assert!(!root.join(md("kernel/drivers/net/wireless/iwlwifi.ko")).exists());
}

#[test]
fn legacy_exclusion_keeps_dependencies() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    // drm_helper is excluded but foo_drm (kept) depends on it.
    assert!(process_kernel_modules(root, KVER, &sel(&[], &["re:drivers/(gpu/drm|net)"], &[], &[])).unwrap());
    assert!(root.join(md("kernel/drivers/gpu/drm_helper.ko.zst")).exists());
    assert!(root.join(md("kernel/drivers/gpu/foo_drm.ko")).exists());
    assert!(!root.join(md("kernel/drivers/net/ethernet/e1000.ko")).exists());
    assert!(!root.join(md("kernel/drivers/net/wireless/iwlwifi.ko")).exists());
    assert!(root.join(md("kernel/sound/snd-hda-codec.ko")).exists());
    // iwlwifi went, and with it the firmware only it needed.
    assert!(!root.join("usr/lib/firmware/intel").exists());
    assert!(root.join("usr/lib/firmware/builtin.bin").exists());
}

#[test]
fn module_symlinks_take_their_target_along() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    write(root, "usr/lib/extra-modules/vendor.ko", &fake_module(&[("name", "vendor")]));
    symlink(root, &md("updates/vendor.ko"), "/usr/lib/extra-modules/vendor.ko");
    assert!(process_kernel_modules(root, KVER, &sel(&["ext4"], &[], &[], &[])).unwrap());
    assert!(std::fs::symlink_metadata(root.join(md("updates/vendor.ko"))).is_err());
    assert!(!root.join("usr/lib/extra-modules/vendor.ko").exists());
}

// ------------------------------------------------------------------------------------------------
// Initrds
// ------------------------------------------------------------------------------------------------

struct TestBuild {
    _dir: tempfile::TempDir,
    ws: PathBuf,
    args: Args,
    host: Host,
    config: Config,
}

impl TestBuild {
    fn new(values: &[(&str, Value)]) -> TestBuild {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        let config = Config::from_values(values.iter().map(|(k, v)| (k.to_string(), v.clone())));
        TestBuild {
            ws,
            _dir: dir,
            args: Args::new(Verb::Build, None),
            host: Host::new(vec![], Architecture::X86_64, "/".into()),
            config,
        }
    }

    fn ctx(&self) -> Context<'_> {
        Context::new(
            &self.args,
            &self.config,
            &self.host,
            self.ws.clone(),
            self.ws.join("metadata"),
            self.ws.join("pkgcache"),
            self.ws.join("packages"),
            self.ws.clone(),
        )
        .unwrap()
    }
}

fn read_cpio(path: &Path) -> Vec<cpio::Entry> {
    let raw = std::fs::read(path).unwrap();
    let data = if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) { zstd::decode_all(&raw[..]).unwrap() } else { raw };
    cpio::read_archive(&data).unwrap()
}

fn names(entries: &[cpio::Entry]) -> Vec<String> {
    entries.iter().map(|e| e.name.clone()).collect()
}

#[test]
fn modules_initrd_compression_rule() {
    use Distribution::*;
    assert_eq!(kernel_modules_initrd_compression(Debian, "bookworm"), Algorithm::Zstd);
    assert_eq!(kernel_modules_initrd_compression(Debian, "sid"), Algorithm::None);
    assert_eq!(kernel_modules_initrd_compression(Debian, "testing"), Algorithm::None);
    assert_eq!(kernel_modules_initrd_compression(Ubuntu, "noble"), Algorithm::Zstd);
    assert_eq!(kernel_modules_initrd_compression(Ubuntu, "sid"), Algorithm::Zstd);
    assert_eq!(kernel_modules_initrd_compression(Kali, "kali-rolling"), Algorithm::Zstd);
    assert_eq!(kernel_modules_initrd_compression(Fedora, "rawhide"), Algorithm::None);
    assert_eq!(kernel_modules_initrd_compression(Arch, "rolling"), Algorithm::None);
}

#[test]
fn modules_initrd_content() {
    let b = TestBuild::new(&[
        ("Distribution", json!("debian")),
        ("Release", json!("bookworm")),
        ("KernelInitrdModules", json!(["ext4"])),
        ("FirmwareFiles", json!(["unrelated.bin"])),
        ("SourceDateEpoch", json!(1000)),
    ]);
    let ctx = b.ctx();
    synthetic_tree(&ctx.root());
    let out = b.ws.join("kmods.initrd");
    build_kernel_modules_initrd(&ctx, KVER, &out).unwrap();
    assert!(std::fs::read(&out).unwrap().starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd for Debian bookworm");
    let entries = read_cpio(&out);
    let want: Vec<String> = [
        "usr/lib/firmware",
        "usr/lib/firmware/builtin.bin",
        "usr/lib/firmware/unrelated.bin",
        "usr/lib/modules",
        &format!("usr/lib/modules/{KVER}"),
        &md("kernel"),
        &md("kernel/crypto"),
        &md("kernel/crypto/crc32c_generic.ko.gz"),
        &md("kernel/fs"),
        &md("kernel/fs/ext4"),
        &md("kernel/fs/ext4/ext4.ko.xz"),
        &md("kernel/fs/jbd2"),
        &md("kernel/fs/jbd2/jbd2.ko.zst"),
        &md("kernel/fs/mbcache.ko"),
        &md("kernel/lib"),
        &md("kernel/lib/builtin_helper.ko"),
        &md("modules.alias"),
        &md("modules.builtin"),
        &md("modules.builtin.modinfo"),
        &md("modules.dep"),
        &md("modules.order"),
        &md("vdso"),
        &md("vdso/vdso64.so"),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    assert_eq!(names(&entries), want);
    assert!(entries.iter().all(|e| e.mtime <= 1000), "mtimes are clamped");
    let ext4 = entries.iter().find(|e| e.name.ends_with("ext4.ko.xz")).unwrap();
    assert_eq!(ext4.data, std::fs::read(ctx.root().join(md("kernel/fs/ext4/ext4.ko.xz"))).unwrap());
    // The image itself is untouched.
    assert!(ctx.root().join(md("kernel/sound/snd-hda-codec.ko")).exists());

    // Deterministic.
    let again = b.ws.join("kmods2.initrd");
    build_kernel_modules_initrd(&ctx, KVER, &again).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn modules_initrd_without_selection_has_all_modules() {
    let b = TestBuild::new(&[("Distribution", json!("fedora")), ("Release", json!("41"))]);
    let ctx = b.ctx();
    let root = ctx.root();
    synthetic_tree(&root);
    let out = b.ws.join("kmods.initrd");
    build_kernel_modules_initrd(&ctx, KVER, &out).unwrap();
    assert!(std::fs::read(&out).unwrap().starts_with(b"070701"), "uncompressed for Fedora");
    let got = names(&read_cpio(&out));
    for m in all_modules(&root, KVER).unwrap() {
        assert!(got.contains(&m.to_string_lossy().into_owned()), "{}", m.display());
    }
    // Firmware is installed, so it is only what modules ask for.
    assert!(got.contains(&"usr/lib/firmware/iwlwifi-8000C-36.ucode.xz".to_string()));
    assert!(!got.contains(&"usr/lib/firmware/unrelated.bin".to_string()));
    assert!(!got.iter().any(|n| n.contains("ucode/")), "microcode is not module firmware");

    // Without firmware the fast path takes every module without looking at them.
    std::fs::remove_dir_all(root.join("usr/lib/firmware")).unwrap();
    std::fs::write(root.join(md("kernel/sound/snd-hda-codec.ko")), b"garbage").unwrap();
    build_kernel_modules_initrd(&ctx, KVER, &out).unwrap();
    assert!(names(&read_cpio(&out)).contains(&md("kernel/sound/snd-hda-codec.ko")));
}

#[test]
fn modules_initrd_legacy_settings_and_debian_sid() {
    let b = TestBuild::new(&[
        ("Distribution", json!("debian")),
        ("Release", json!("sid")),
        ("KernelInitrdModules", json!(["re:^fs/jbd2", "foo_drm"])),
    ]);
    let ctx = b.ctx();
    synthetic_tree(&ctx.root());
    let out = b.ws.join("kmods.initrd");
    build_kernel_modules_initrd(&ctx, KVER, &out).unwrap();
    assert!(std::fs::read(&out).unwrap().starts_with(b"070701"), "uncompressed for Debian sid");
    let modules: Vec<String> = names(&read_cpio(&out)).into_iter().filter(|n| n.contains(".ko")).collect();
    assert_eq!(
        modules,
        vec![
            md("kernel/drivers/gpu/drm_helper.ko.zst"),
            md("kernel/drivers/gpu/foo_drm.ko"),
            md("kernel/fs/jbd2/jbd2.ko.zst"),
            md("kernel/lib/builtin_helper.ko"),
        ]
    );
}

#[test]
fn image_filtering_from_the_configuration() {
    let b = TestBuild::new(&[("KernelModules", json!(["e1000"])), ("FirmwareExclude", json!(["re:."]))]);
    let ctx = b.ctx();
    let root = ctx.root();
    synthetic_tree(&root);
    assert!(filter_image_modules(&ctx, KVER).unwrap());
    let left: Vec<String> =
        all_modules(&root, KVER).unwrap().iter().map(|p| p.to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec![md("kernel/drivers/net/ethernet/e1000.ko"), md("kernel/lib/builtin_helper.ko")]);
    assert!(!root.join("usr/lib/firmware/builtin.bin").exists());

    let b = TestBuild::new(&[]);
    let ctx = b.ctx();
    synthetic_tree(&ctx.root());
    assert!(!filter_image_modules(&ctx, KVER).unwrap(), "no settings, no filtering");
    assert_eq!(all_modules(&ctx.root(), KVER).unwrap().len(), 10);
}

#[test]
fn microcode_initrd() {
    let b = TestBuild::new(&[("Architecture", json!("x86-64")), ("SourceDateEpoch", json!(5))]);
    let ctx = b.ctx();
    synthetic_tree(&ctx.root());
    let initrds = microcode_initrds(&ctx).unwrap();
    assert_eq!(initrds, vec![b.ws.join("microcode.initrd")]);
    let entries = read_cpio(&initrds[0]);
    assert_eq!(
        names(&entries),
        s(&[
            "kernel",
            "kernel/x86",
            "kernel/x86/microcode",
            "kernel/x86/microcode/AuthenticAMD.bin",
            "kernel/x86/microcode/GenuineIntel.bin"
        ])
    );
    assert_eq!(entries[3].data, b"AMDAMD17");
    assert_eq!(entries[4].data, b"INTEL1INTEL2");
    assert!(entries.iter().all(|e| e.mtime <= 5));
    assert_eq!(entries[2].mode & 0o7777, 0o755);
    // Built once per workspace.
    assert_eq!(microcode_initrds(&ctx).unwrap(), initrds);

    // Prebuilt microcode from an earlier stage wins.
    let art = ctx.artifacts().join("io.mkosi.microcode");
    write(&art, "b.img", b"b");
    write(&art, "a.img", b"a");
    assert_eq!(microcode_initrds(&ctx).unwrap(), vec![art.join("a.img"), art.join("b.img")]);
}

#[test]
fn microcode_initrd_only_on_x86_with_microcode() {
    let b = TestBuild::new(&[("Architecture", json!("arm64"))]);
    let ctx = b.ctx();
    synthetic_tree(&ctx.root());
    assert!(!build_microcode_initrd(&ctx, &b.ws.join("u")).unwrap());
    assert!(microcode_initrds(&ctx).unwrap().is_empty());

    let b = TestBuild::new(&[("Architecture", json!("x86-64"))]);
    let ctx = b.ctx();
    std::fs::create_dir_all(ctx.root().join("usr/lib/firmware")).unwrap();
    assert!(!build_microcode_initrd(&ctx, &b.ws.join("u")).unwrap());
    assert!(!b.ws.join("u").exists());
}

#[test]
fn cpu_identification() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    synthetic_tree(root);
    write(root, "usr/lib/firmware/intel-ucode/06-9e-0a.initramfs", b"X");
    let fw = root.join("usr/lib/firmware");
    let info = |vendor: &str, family: u32, model: u32, stepping: u32| {
        format!(
            "processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n\
             model name\t: Some CPU\nstepping\t: {stepping}\n\nprocessor\t: 1\nvendor_id\t: Other\n"
        )
    };
    let amd = Some(PathBuf::from("AuthenticAMD.bin"));
    let intel = Some(PathBuf::from("GenuineIntel.bin"));
    assert_eq!(
        identify_cpu(root, &info("AuthenticAMD", 23, 1, 1)),
        (amd.clone(), Some(fw.join("amd-ucode/microcode_amd_fam17h.bin")))
    );
    assert_eq!(
        identify_cpu(root, &info("AuthenticAMD", 16, 1, 1)),
        (amd.clone(), Some(fw.join("amd-ucode/microcode_amd.bin")))
    );
    assert_eq!(identify_cpu(root, &info("AuthenticAMD", 25, 1, 1)), (amd, None));
    assert_eq!(
        identify_cpu(root, &info("GenuineIntel", 6, 85, 4)),
        (intel.clone(), Some(fw.join("intel-ucode/06-55-04")))
    );
    assert_eq!(
        identify_cpu(root, &info("GenuineIntel", 6, 158, 10)),
        (intel.clone(), Some(fw.join("intel-ucode/06-9e-0a.initramfs")))
    );
    assert_eq!(identify_cpu(root, &info("GenuineIntel", 6, 1, 1)), (intel, None));
    assert_eq!(identify_cpu(root, "processor\t: 0\nvendor_id\t: GenuineIntel\n"), (None, None));
}

// ------------------------------------------------------------------------------------------------
// A real kernel
// ------------------------------------------------------------------------------------------------

const REAL_TREE: &str = "/var/cache/mkosi-ci/bench-disk/tree";

fn real_kernel() -> Option<(PathBuf, String)> {
    let root = PathBuf::from(REAL_TREE);
    let rd = std::fs::read_dir(root.join("usr/lib/modules")).ok()?;
    let mut kvers: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join("modules.dep").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kvers.sort();
    Some((root, kvers.pop()?))
}

/// The module files (relative to the modules directory) `modprobe --show-depends` names.
fn modprobe_closure(root: &Path, kver: &str, modules: &[&str]) -> Option<BTreeSet<String>> {
    let mut cmd = std::process::Command::new("modprobe");
    cmd.arg("--show-depends").arg("-d").arg(root).arg("-S").arg(kver).arg("-a").args(modules);
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let marker = format!("/lib/modules/{kver}/");
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("insmod "))
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|p| p.split_once(&marker).map(|(_, rel)| rel.to_string()))
            .collect(),
    )
}

#[test]
fn real_debian_kernel() {
    let Some((root, kver)) = real_kernel() else {
        eprintln!("skipping: no kernel modules at {REAL_TREE}/usr/lib/modules");
        return;
    };
    let modulesd = modules_dir(&kver);
    let to_rel = |set: &BTreeSet<PathBuf>| -> BTreeSet<String> {
        set.iter().map(|p| p.strip_prefix(&modulesd).unwrap().to_string_lossy().into_owned()).collect()
    };
    let wanted = ["virtio_blk", "virtio_scsi", "ext4"];
    // Read-only on the real tree.
    let names = filter_kernel_modules(&root, &kver, &s(&wanted), &[]).unwrap();
    assert_eq!(names, s(&["ext4", "virtio-blk", "virtio-scsi"]));
    let (modules, _) = resolve_module_dependencies(&root, &kver, &names).unwrap();
    let ours = to_rel(&modules);
    assert!(ours.iter().any(|m| m.contains("crc32c")), "the crc32c soft dependency is followed: {ours:?}");
    assert!(ours.iter().any(|m| m.ends_with("jbd2.ko.xz") || m.contains("/jbd2.ko")), "{ours:?}");

    match modprobe_closure(&root, &kver, &wanted) {
        Some(theirs) => {
            // What the built-in modules pull in comes on top.
            let (base, _) = resolve_module_dependencies(&root, &kver, &[]).unwrap();
            let expected: BTreeSet<String> = theirs.union(&to_rel(&base)).cloned().collect();
            assert_eq!(ours, expected, "closure differs from modprobe --show-depends");
        }
        None => eprintln!("skipping the modprobe comparison: modprobe --show-depends is not available"),
    }

    // The modules initrd from a copy holding just the closure and the modules.* files.
    let b = TestBuild::new(&[
        ("Distribution", json!("debian")),
        ("Release", json!("trixie")),
        ("KernelInitrdModules", json!(wanted)),
    ]);
    let ctx = b.ctx();
    let copy = ctx.root();
    let src = root.join(&modulesd);
    for m in &modules {
        let dst = copy.join(m);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(root.join(m), dst).unwrap();
    }
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("modules") {
            std::fs::copy(e.path(), copy.join(&modulesd).join(e.file_name())).unwrap();
        }
    }
    let out = b.ws.join("kmods.initrd");
    build_kernel_modules_initrd(&ctx, &kver, &out).unwrap();
    let entries = read_cpio(&out);
    let got: BTreeSet<String> = entries
        .iter()
        .filter(|e| e.name.contains(".ko"))
        .map(|e| Path::new(&e.name).strip_prefix(&modulesd).unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(got, ours);
    assert!(entries.iter().any(|e| e.name == modulesd.join("modules.dep").to_string_lossy()));
    assert!(!entries.iter().any(|e| e.name == "usr" || e.name == "usr/lib"), "parents stop below usr/lib");
}
