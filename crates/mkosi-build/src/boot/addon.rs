//! `Format=addon`: a PE addon for unified kernel images (upstream's `make_addon`).
//!
//! The addon is systemd's addon stub (`usr/lib/systemd/boot/efi/addon<arch>.efi.stub`, saved
//! before `RemoveFiles=` and the finalize scripts can delete it) with `KernelCommandLine=` as
//! its `.cmdline` and, when the image tree is not empty, a cpio archive of the tree
//! (compressed with `CompressOutput=`) as its `.initrd`. systemd-stub picks addons up from
//! `<uki>.efi.extra.d/` and the ESP's `loader/addons/`. With `SecureBoot=` the addon is
//! signed, as systemd-stub only loads addons that verify when Secure Boot is on.

use std::path::{Path, PathBuf};

use mkosi_config::enums::OutputFormat;
use mkosi_config::Config;

use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::log;

/// The addon stub of the image for the target architecture.
pub fn addon_stub_path(c: &Config, root: &Path) -> Option<PathBuf> {
    crate::disk::efi_arch(c.architecture()).map(|a| root.join(format!("usr/lib/systemd/boot/efi/addon{a}.efi.stub")))
}

/// Where [`save_stub`] keeps the stub until the output is made.
fn saved_stub(ctx: &Context) -> PathBuf {
    ctx.workspace.join("addon-stub.efi")
}

/// For `Format=addon`, copies the addon stub out of the image before anything can remove it
/// (upstream does this in `save_esp_components`).
pub fn save_stub(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if c.output_format() != OutputFormat::Addon {
        return Ok(());
    }
    let root = ctx.root();
    let Some(stub) = addon_stub_path(c, &root) else {
        return Err(BuildError::msg(format!("Architecture {} does not support UEFI", c.architecture())));
    };
    if !stub.is_file() {
        return Err(BuildError::hint(
            format!("sd-stub not found at /{} in the image", stub.strip_prefix(&root).unwrap_or(&stub).display()),
            "Add the package providing it to the image (systemd-boot-efi on Debian and Ubuntu), or copy it in \
             with ExtraTrees=/usr/lib/systemd/boot/efi:/usr/lib/systemd/boot/efi",
        ));
    }
    let dst = saved_stub(ctx);
    std::fs::copy(&stub, &dst).map_err(io("copying", &stub))?;
    Ok(())
}

/// What goes into the addon: the stub, the command line and the (compressed) tree.
pub fn addon_input(
    stub: &Path,
    kernel_command_line: &[String],
    initrd: Option<PathBuf>,
) -> mkosi_formats::uki::UkiInput {
    mkosi_formats::uki::UkiInput {
        stub: stub.to_path_buf(),
        linux: None,
        initrds: initrd.into_iter().collect(),
        cmdline: (!kernel_command_line.is_empty()).then(|| mkosi_formats::uki::cmdline_text(kernel_command_line)),
        ..Default::default()
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir).map_err(io("reading", dir))?.next().is_none())
}

/// The tree as a cpio archive compressed with `CompressOutput=`, or `None` for an empty tree.
fn tree_initrd(ctx: &Context) -> Result<Option<PathBuf>> {
    let root = ctx.root();
    if is_empty_dir(&root)? {
        return Ok(None);
    }
    crate::outputs::compressed_tree_cpio(ctx, &ctx.scratch("addon")?).map(Some)
}

/// Builds the addon at `output` from `stub`.
pub fn make_addon(ctx: &Context, stub: &Path, output: &Path) -> Result<()> {
    let c = ctx.config;
    let initrd = tree_initrd(ctx)?;
    log::step(&format!("Generating PE addon {}", output.display()));
    let input = addon_input(stub, &c.strings("KernelCommandLine"), initrd);
    let unsigned =
        if c.bool("SecureBoot") { ctx.scratch("addon-sign")?.join("addon.efi") } else { output.to_path_buf() };
    mkosi_formats::uki::build(&input, &unsigned)
        .map_err(|e| BuildError::msg(format!("Assembling the PE addon {}: {e}", output.display())))?;
    if c.bool("SecureBoot") {
        crate::secureboot::sign_efi(c, &unsigned, output)?;
    }
    Ok(())
}

/// `Format=addon`: the addon is the output, `<Output>.efi`.
pub fn make_output(ctx: &Context) -> Result<()> {
    let stub = saved_stub(ctx);
    if !stub.is_file() {
        return Err(BuildError::msg("The addon stub was not saved from the image"));
    }
    make_addon(ctx, &stub, &ctx.staging().join(ctx.config.output_with_format()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkosi_formats::pe::{kernel_type, testpe, KernelType, PeFile};
    use serde_json::json;

    fn stub() -> Vec<u8> {
        let sbat = b"sbat,1,SBAT Version,sbat,1,https://example.org\nsystemd-stub,1,The systemd Developers,systemd,257,https://systemd.io\n";
        testpe::build(
            &[(".text", b"code"), (".sbat", sbat), (".sdmagic", b"#### LoaderInfo: systemd-addon 257 ####")],
            8,
        )
    }

    fn sections(path: &Path) -> Vec<(String, Vec<u8>)> {
        let data = std::fs::read(path).unwrap();
        let pe = PeFile::parse(&data).unwrap();
        pe.sections.iter().map(|s| (s.name.clone(), pe.section_data(&data, s).to_vec())).collect()
    }

    fn build(values: serde_json::Value) -> crate::boot::TestBuild {
        let mut v = json!({"Format": "addon", "Architecture": "x86-64", "Output": "myaddon", "OutputExtension": "efi"});
        for (k, x) in values.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        crate::boot::TestBuild::new(v)
    }

    #[test]
    fn stub_is_saved_for_addons_only() {
        let b = build(json!({}));
        let ctx = b.ctx();
        let root = ctx.root();
        std::fs::create_dir_all(&root).unwrap();
        let e = save_stub(&ctx).unwrap_err();
        assert!(e.to_string().contains("sd-stub not found at /usr/lib/systemd/boot/efi/addonx64.efi.stub"), "{e}");
        assert!(e.hint_text().unwrap_or_default().contains("systemd-boot-efi"));
        let dir = root.join("usr/lib/systemd/boot/efi");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("addonx64.efi.stub"), stub()).unwrap();
        save_stub(&ctx).unwrap();
        // RemoveFiles= may delete it afterwards: the saved copy is used.
        std::fs::remove_dir_all(root.join("usr")).unwrap();
        assert_eq!(std::fs::read(saved_stub(&ctx)).unwrap(), stub());

        let other = build(json!({"Format": "uki"}));
        let ctx = other.ctx();
        std::fs::create_dir_all(ctx.root()).unwrap();
        save_stub(&ctx).unwrap();
        assert!(!saved_stub(&ctx).exists());
    }

    #[test]
    fn addon_with_cmdline_and_tree() {
        let b = build(json!({"KernelCommandLine": ["console=ttyS0", "quiet"], "CompressOutput": "zstd"}));
        let ctx = b.ctx();
        let root = ctx.root();
        std::fs::create_dir_all(root.join("usr/lib/modules/6.1/extra")).unwrap();
        std::fs::write(root.join("usr/lib/modules/6.1/extra/foo.ko"), b"module").unwrap();
        std::fs::write(saved_stub(&ctx), stub()).unwrap();
        make_output(&ctx).unwrap();
        let out = ctx.staging().join("myaddon.efi");
        let data = std::fs::read(&out).unwrap();
        // Not a UKI (no `.linux`); upstream's classification calls it a plain PE binary.
        assert_eq!(kernel_type(&data), KernelType::Pe);
        let s = sections(&out);
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&".cmdline") && names.contains(&".initrd") && names.contains(&".sbat"), "{names:?}");
        assert!(!names.contains(&".linux"), "{names:?}");
        let get = |n: &str| s.iter().find(|(x, _)| x == n).map(|(_, d)| d.clone()).unwrap();
        assert_eq!(String::from_utf8_lossy(&get(".cmdline")).trim_end_matches('\0'), "console=ttyS0 quiet");
        // The tree, as a zstd-compressed cpio archive.
        let initrd = get(".initrd");
        assert!(initrd.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd");
        let cpio = zstd::decode_all(&initrd[..]).unwrap();
        let names: Vec<String> =
            mkosi_formats::cpio::read_archive(&cpio).unwrap().into_iter().map(|e| e.name).collect();
        assert!(names.iter().any(|n| n == "usr/lib/modules/6.1/extra/foo.ko"), "{names:?}");
        // The addon SBAT entry, not the stub's.
        let sbat = String::from_utf8_lossy(&get(".sbat")).into_owned();
        assert!(sbat.contains("uki-addon,1,UKI Addon"), "{sbat}");
    }

    #[test]
    fn empty_tree_and_no_cmdline() {
        let b = build(json!({"CompressOutput": "none"}));
        let ctx = b.ctx();
        std::fs::create_dir_all(ctx.root()).unwrap();
        std::fs::write(saved_stub(&ctx), stub()).unwrap();
        make_output(&ctx).unwrap();
        let s = sections(&ctx.staging().join("myaddon.efi"));
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&".initrd") && !names.contains(&".cmdline"), "{names:?}");
        assert!(names.contains(&".sbat"), "{names:?}");
        // Without a saved stub there is nothing to build from.
        std::fs::remove_file(saved_stub(&ctx)).unwrap();
        assert!(make_output(&ctx).is_err());
    }

    #[test]
    fn uncompressed_initrd_is_plain_cpio() {
        let b = build(json!({"CompressOutput": "none"}));
        let ctx = b.ctx();
        std::fs::create_dir_all(ctx.root().join("etc")).unwrap();
        std::fs::write(ctx.root().join("etc/hello"), b"hi").unwrap();
        std::fs::write(saved_stub(&ctx), stub()).unwrap();
        make_output(&ctx).unwrap();
        let s = sections(&ctx.staging().join("myaddon.efi"));
        let initrd = s.iter().find(|(n, _)| n == ".initrd").map(|(_, d)| d.clone()).unwrap();
        assert!(initrd.starts_with(b"070701"), "newc cpio");
    }
}
