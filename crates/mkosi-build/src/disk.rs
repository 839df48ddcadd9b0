//! The partitioned outputs: `disk`, `esp`, `sysext`, `confext` and `portable`.
//!
//! These drive [`crate::repart`] the way upstream drives systemd-repart: the user's repart.d
//! directories or a default layout, a first pass that leaves the ESP/XBOOTLDR for after the
//! boot loader and kernels are installed, a second pass that fills them in, split artifacts,
//! the root hash file and `OutputSize=`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mkosi_config::enums::{CertificateSourceType, Feature, KeySourceType, OutputFormat};
use mkosi_formats::gpt;

use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::repart::{self, PartitionResult, RepartRequest};

/// The definitions upstream ships for extension and portable images, by output format.
/// Each has a signed variant (with verity) and an unsigned one (`-unsigned`, no verity).
fn extension_definitions(format: OutputFormat, signed: bool) -> Vec<(&'static str, String)> {
    let copy = match format {
        OutputFormat::Sysext => "CopyFiles=/opt/\nCopyFiles=/usr/\n",
        OutputFormat::Confext => "CopyFiles=/etc/\n",
        _ => "CopyFiles=/\n",
    };
    if !signed {
        return vec![("10-root.conf", format!("[Partition]\nType=root\nFormat=erofs\n{copy}Minimize=best\n"))];
    }
    vec![
        (
            "10-root.conf",
            format!("[Partition]\nType=root\nFormat=erofs\n{copy}Verity=data\nVerityMatchKey=root\nMinimize=best\n"),
        ),
        (
            "20-root-verity.conf",
            "[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\nMinimize=best\n".to_string(),
        ),
        (
            "30-root-verity-sig.conf",
            "[Partition]\nType=root-verity-sig\nVerity=signature\nVerityMatchKey=root\n".to_string(),
        ),
    ]
}

/// The root filesystem upstream picks for a distribution's default disk layout.
fn default_filesystem(distribution: mkosi_config::enums::Distribution) -> &'static str {
    use mkosi_config::enums::Distribution::*;
    match distribution {
        Fedora | Opensuse => "btrfs",
        Centos | Rhel | RhelUbi | Rocky | Alma => "xfs",
        _ => "ext4",
    }
}

/// `Verity=`.
fn verity<'a>(ctx: &Context<'a>) -> &'a str {
    ctx.config.str("Verity").unwrap_or("auto")
}

fn source_type(v: &serde_json::Value) -> String {
    v.get("Type").and_then(|t| t.as_str()).unwrap_or("file").to_string()
}

fn key_source(ctx: &Context, field: &str) -> Result<KeySourceType> {
    source_type(ctx.config.get(field)).parse().map_err(|_| BuildError::msg(format!("{field}=: unknown source type")))
}

fn cert_source(ctx: &Context, field: &str) -> Result<CertificateSourceType> {
    source_type(ctx.config.get(field)).parse().map_err(|_| BuildError::msg(format!("{field}=: unknown source type")))
}

/// The EFI architecture suffix of the default boot loader path (`BOOTX64.EFI`).
pub fn efi_arch(arch: mkosi_config::enums::Architecture) -> Option<&'static str> {
    use mkosi_config::enums::Architecture::*;
    Some(match arch {
        X86_64 => "x64",
        X86 => "ia32",
        Arm64 => "aa64",
        Arm => "arm",
        Riscv64 => "riscv64",
        Loongarch64 => "loongarch64",
        _ => return None,
    })
}

fn request(ctx: &Context, definitions: Vec<PathBuf>, output: PathBuf, with_keys: bool) -> Result<RepartRequest> {
    let c = ctx.config;
    let seed = match c.str("Seed") {
        Some(s) => uuid::Uuid::parse_str(s).map_err(|_| BuildError::msg(format!("Seed={s} is not a UUID")))?,
        None => uuid::Uuid::new_v4(),
    };
    if c.path("Passphrase").is_some() {
        return Err(BuildError::hint(
            "Passphrase= (encrypted partitions) is not supported by this version of mkosi",
            "Remove Passphrase= and Encrypt= from the configuration for now",
        ));
    }
    let mut environment: BTreeMap<String, String> = ctx.environment().into_iter().collect();
    // Kernels of CentOS Stream 9 and Ubuntu jammy cannot mount ext4 with the orphan_file
    // feature that newer mke2fs (the host's) enables by default.
    use mkosi_config::enums::Distribution;
    let old_kernel = (c.distribution() == Distribution::Centos && c.release() == "9")
        || (c.distribution() == Distribution::Ubuntu && c.release() == "jammy");
    if old_kernel && !environment.contains_key("SYSTEMD_REPART_MKFS_OPTIONS_EXT4") {
        environment.insert("SYSTEMD_REPART_MKFS_OPTIONS_EXT4".into(), "-O ^orphan_file".into());
    }
    let arch = c.architecture();
    let (key, cert) = if with_keys { (c.path("VerityKey"), c.path("VerityCertificate")) } else { (None, None) };
    Ok(RepartRequest {
        root: ctx.root(),
        definitions,
        output,
        seed,
        architecture: arch.to_string(),
        foreign: arch != mkosi_config::enums::Architecture::native(),
        sector_size: c.int("SectorSize").map(|s| s as u64),
        defer: Vec::new(),
        exclude: Vec::new(),
        split: false,
        generate_fstab: false,
        verity_key: key,
        verity_certificate: cert,
        verity_key_source: key_source(ctx, "VerityKeySource")?,
        verity_certificate_source: cert_source(ctx, "VerityCertificateSource")?,
        workspace: ctx.workspace.clone(),
        source_date_epoch: c.int("SourceDateEpoch").map(|e| e as u64),
        environment,
    })
}

fn run(msg: &str, req: &RepartRequest) -> Result<Vec<PartitionResult>> {
    crate::log::step(msg);
    let parts = repart::make_image(req)?;
    crate::log::debug(
        &serde_json::to_string_pretty(&parts.iter().map(PartitionResult::to_json).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    Ok(parts)
}

fn split_artifacts(ctx: &Context) -> Vec<String> {
    ctx.config.strings("SplitArtifacts")
}

/// `roothash=…` or `usrhash=…` from the partitions, like upstream's `finalize_roothash`.
pub fn finalize_roothash(parts: &[PartitionResult]) -> Result<Option<String>> {
    let (mut root, mut usr) = (None, None);
    for p in parts {
        let Some(h) = &p.roothash else { continue };
        if !(p.type_name.starts_with("usr") || p.type_name.starts_with("root")) {
            return Err(BuildError::msg(format!(
                "Found roothash property on unexpected partition type {}",
                p.type_name
            )));
        }
        if h == "TBD" {
            continue;
        }
        if p.type_name.starts_with("usr") {
            usr = usr.or(Some(h.clone()));
        } else {
            root = root.or(Some(h.clone()));
        }
    }
    Ok(root.map(|h| format!("roothash={h}")).or(usr.map(|h| format!("usrhash={h}"))))
}

fn write_split_roothash(ctx: &Context, parts: &[PartitionResult]) -> Result<()> {
    if !split_artifacts(ctx).iter().any(|a| a == "roothash") {
        return Ok(());
    }
    if let Some(h) = finalize_roothash(parts)? {
        let p = ctx.staging().join(format!("{}.roothash", ctx.config.output()));
        let value = h.split_once('=').map(|(_, v)| v).unwrap_or_default();
        std::fs::write(&p, value).map_err(io("writing", &p))?;
    }
    Ok(())
}

fn compress_split_files(ctx: &Context, parts: &[PartitionResult], skip: &[String]) -> Result<()> {
    let algorithm = mkosi_formats::compress::Algorithm::from_setting(ctx.config.compress_output().as_str())
        .map_err(BuildError::msg)?;
    if ctx.config.compress_output().is_none() {
        return Ok(());
    }
    let level = ctx.config.int("CompressLevel").unwrap_or(3) as i32;
    for p in parts {
        let Some(path) = &p.split_path else { continue };
        if skip.contains(&p.type_name) || p.deferred || !path.exists() {
            continue;
        }
        let dst = PathBuf::from(format!("{}.{}", path.display(), ctx.config.compress_output().extension()));
        crate::outputs::compress_file(path, &dst, algorithm, level)?;
    }
    Ok(())
}

/// The default disk layout upstream generates when there are no repart.d directories.
fn default_definitions(ctx: &Context) -> Result<PathBuf> {
    let dir = ctx.workspace.join("repart-definitions");
    if dir.exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let c = ctx.config;
    let bootloader =
        efi_arch(c.architecture()).map(|a| ctx.root().join(format!("efi/EFI/BOOT/BOOT{}.EFI", a.to_uppercase())));
    let esp = c.bootable() == Feature::Enabled
        || (c.bootable() == Feature::Auto && bootloader.as_ref().is_some_and(|b| b.exists()));
    let bios = crate::boot::grub::want_grub_bios(ctx, &[])?;
    if esp || bios {
        let size = if bios { "1G" } else { "512M" };
        let p = dir.join("00-esp.conf");
        let text = format!(
            "[Partition]\nType=esp\nFormat=vfat\nCopyFiles=/boot:/\nCopyFiles=/efi:/\nSizeMinBytes={size}\nSizeMaxBytes={size}\n"
        );
        std::fs::write(&p, text).map_err(io("writing", &p))?;
    }
    if bios {
        let p = dir.join("05-bios.conf");
        let text = format!("[Partition]\nType={}\nSizeMinBytes=1M\nSizeMaxBytes=1M\n", gpt::BIOS_BOOT);
        std::fs::write(&p, text).map_err(io("writing", &p))?;
    }
    let p = dir.join("10-root.conf");
    let text = format!(
        "[Partition]\nType=root\nFormat={}\nCopyFiles=/\nMinimize=guess\n",
        default_filesystem(c.distribution())
    );
    std::fs::write(&p, text).map_err(io("writing", &p))?;
    Ok(dir)
}

/// `SplitArtifacts=repart-definitions`: the definitions the image was made from, as
/// `<Output>.repart.d`.
pub fn copy_repart_definitions(ctx: &Context, definitions: &[PathBuf]) -> Result<()> {
    if !split_artifacts(ctx).iter().any(|a| a == "repart-definitions") {
        return Ok(());
    }
    let dst = ctx.staging().join(format!("{}.repart.d", ctx.config.output()));
    for d in definitions {
        if d.exists() {
            crate::tree::copy_tree(d, &dst, true)?;
        }
    }
    Ok(())
}

/// Which pass over the disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Everything but the ESP and XBOOTLDR (and deferred verity signatures); writes the fstab.
    Initial,
    /// Fills in the ESP and XBOOTLDR once kernels and boot loaders are in place.
    Boot,
    /// Writes the split partition files.
    Split,
}

/// One pass of `systemd-repart` over the disk image (only for `Format=disk`).
pub fn make_disk(ctx: &Context, pass: Pass) -> Result<Vec<PartitionResult>> {
    let c = ctx.config;
    if c.output_format() != OutputFormat::Disk {
        return Ok(Vec::new());
    }
    let user_dirs = c.paths("RepartDirectories");
    let definitions = if user_dirs.is_empty() { vec![default_definitions(ctx)?] } else { user_dirs };
    let arch = c.architecture();
    let mut skip: Vec<String> = Vec::new();
    if pass == Pass::Initial {
        skip.extend(["esp".to_string(), "xbootldr".to_string()]);
    }
    let v = verity(ctx);
    if v == "defer" {
        skip.push(format!("root-{arch}-verity-sig"));
        skip.push(format!("usr-{arch}-verity-sig"));
    }
    if pass == Pass::Initial {
        copy_repart_definitions(ctx, &definitions)?;
    }
    let output = ctx.staging().join(c.output_with_format());
    let mut req = request(ctx, definitions, output, matches!(v, "auto" | "signed"))?;
    req.defer = skip.clone();
    req.split = pass == Pass::Split;
    req.generate_fstab = pass == Pass::Initial;
    let msg = match pass {
        Pass::Initial => "Generating disk image",
        Pass::Boot => "Formatting ESP/XBOOTLDR partitions",
        Pass::Split => "Extracting partitions",
    };
    let parts = run(msg, &req)?;
    if v == "signed"
        && !parts.iter().any(|p| {
            p.type_name.starts_with(&format!("usr-{arch}-verity-sig"))
                || p.type_name.starts_with(&format!("root-{arch}-verity-sig"))
        })
    {
        return Err(BuildError::hint(
            "Verity is explicitly enabled but didn't find any verity signature partition",
            "Make sure to add verity signature partitions in mkosi.repart if building a disk image",
        ));
    }
    if pass == Pass::Split {
        compress_split_files(ctx, &parts, &skip)?;
    }
    write_split_roothash(ctx, &parts)?;
    Ok(parts)
}

/// `OutputSize=` for disk images: grows the image (moving the backup GPT to the new end).
pub fn resize_output(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let Some(size) = c.int("OutputSize").map(|s| s as u64) else { return Ok(()) };
    if c.output_format() != OutputFormat::Disk {
        return Ok(());
    }
    let output = ctx.staging().join(c.output_with_format());
    let current = std::fs::metadata(&output).map_err(io("reading", &output))?.len();
    if size < current {
        return Err(BuildError::hint(
            format!("The disk image needs {current} bytes, more than OutputSize={size}"),
            "Increase OutputSize= or make the partitions smaller",
        ));
    }
    if size == current {
        return Ok(());
    }
    crate::log::step(&format!("Resizing output image to {size} bytes"));
    let mut f = std::fs::File::options().read(true).write(true).open(&output).map_err(io("opening", &output))?;
    let ss = gpt::probe_sector_size(&mut f).map_err(|e| BuildError::msg(format!("{}: {e}", output.display())))?;
    let (disk_uuid, entries) =
        gpt::read(&mut f, ss).map_err(|e| BuildError::msg(format!("{}: {e}", output.display())))?;
    f.set_len(size).map_err(io("resizing", &output))?;
    gpt::write(&mut f, ss, disk_uuid, &entries).map_err(|e| BuildError::msg(format!("{}: {e}", output.display())))?;
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    let mut sum = 0;
    for e in rd.flatten() {
        let Ok(md) = std::fs::symlink_metadata(e.path()) else { continue };
        if md.file_type().is_symlink() {
            continue;
        }
        if md.is_file() {
            sum += md.blocks() * 512;
        } else if md.is_dir() {
            sum += dir_size(&e.path());
        }
    }
    sum
}

/// `Format=esp`: an image with just an ESP holding /boot and /efi.
pub fn make_esp(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if efi_arch(c.architecture()).is_none() {
        return Err(BuildError::msg(format!("Architecture {} does not support UEFI", c.architecture())));
    }
    crate::boot::kernel::install_esp_uki(ctx)?;
    let dir = ctx.workspace.join("esp-definitions");
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let min_mb: u64 = if c.int("SectorSize") == Some(512) { 36 } else { 260 };
    let mb = 1024 * 1024;
    let size =
        (dir_size(&ctx.root().join("boot")) + dir_size(&ctx.root().join("efi"))).max((min_mb - 10) * mb) + 10 * mb;
    let p = dir.join("00-esp.conf");
    let text = format!(
        "[Partition]\nType=esp\nFormat=vfat\nCopyFiles=/boot:/\nCopyFiles=/efi:/\nSizeMinBytes={size}\nSizeMaxBytes={}\n",
        size + 4096
    );
    std::fs::write(&p, text).map_err(io("writing", &p))?;
    copy_repart_definitions(ctx, std::slice::from_ref(&dir))?;
    let output = ctx.staging().join(c.output_with_format());
    let req = request(ctx, vec![dir], output, false)?;
    let parts = run("Generating ESP image", &req)?;
    write_split_roothash(ctx, &parts)
}

/// `Format=sysext|confext|portable`: an erofs root with verity, signed when a key is configured.
pub fn make_extension_or_portable_image(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let v = verity(ctx);
    let have_key = c.path("VerityKey").is_some() && c.path("VerityCertificate").is_some();
    let signed = !(v == "disabled" || (v == "auto" && !have_key));
    let dir = ctx.workspace.join(format!("{}{}.repart.d", c.output_format(), if signed { "" } else { "-unsigned" }));
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    for (name, text) in extension_definitions(c.output_format(), signed) {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(io("writing", &p))?;
    }
    copy_repart_definitions(ctx, std::slice::from_ref(&dir))?;
    let output = ctx.staging().join(c.output_with_format());
    let mut req = request(ctx, vec![dir], output, matches!(v, "auto" | "signed"))?;
    if c.str("Seed").is_none() {
        req.seed = uuid::Uuid::new_v4();
    }
    let arch = c.architecture();
    let sigs = vec![format!("root-{arch}-verity-sig"), format!("usr-{arch}-verity-sig")];
    match v {
        "hash" => req.exclude = sigs,
        "defer" => req.defer = sigs,
        _ => {}
    }
    req.split = split_artifacts(ctx).iter().any(|a| a == "partitions");
    let parts = run(&format!("Building {} extension image", c.output_format()), &req)?;
    if req.split {
        compress_split_files(ctx, &parts, &[])?;
    }
    write_split_roothash(ctx, &parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(t: &str, h: Option<&str>) -> PartitionResult {
        PartitionResult { type_name: t.into(), activity: "create", roothash: h.map(String::from), ..Default::default() }
    }

    #[test]
    fn roothash_selection() {
        assert_eq!(finalize_roothash(&[part("esp", None)]).unwrap(), None);
        assert_eq!(
            finalize_roothash(&[part("usr-x86-64", Some("aa")), part("root-x86-64", Some("bb"))]).unwrap(),
            Some("roothash=bb".into())
        );
        assert_eq!(finalize_roothash(&[part("usr-x86-64-verity", Some("aa"))]).unwrap(), Some("usrhash=aa".into()));
        assert_eq!(finalize_roothash(&[part("root-x86-64", Some("TBD"))]).unwrap(), None);
        assert!(finalize_roothash(&[part("esp", Some("aa"))]).is_err());
    }

    #[test]
    fn extension_layouts() {
        let d = extension_definitions(OutputFormat::Sysext, true);
        assert_eq!(d.len(), 3);
        assert!(d[0].1.contains("CopyFiles=/opt/\nCopyFiles=/usr/\n"));
        let d = extension_definitions(OutputFormat::Confext, false);
        assert_eq!(
            d,
            vec![("10-root.conf", "[Partition]\nType=root\nFormat=erofs\nCopyFiles=/etc/\nMinimize=best\n".into())]
        );
        assert!(extension_definitions(OutputFormat::Portable, true)[0].1.contains("CopyFiles=/\n"));
    }
}
