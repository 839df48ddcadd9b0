//! Turning the finished root into the configured output and moving the
//! artifacts into the output directory.

use std::path::{Path, PathBuf};

use mkosi_config::enums::OutputFormat;
use mkosi_formats::compress::{Algorithm, Compressor};
use mkosi_formats::cpio::{self, CpioOptions};
use mkosi_sandbox::run::{self, Cmd, Sink};
use mkosi_sandbox::FsOp;

use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::tree;

/// Output settings not implemented yet (see `pipeline::unsupported_settings`).
pub fn unsupported(_c: &mkosi_config::Config) -> Vec<String> {
    Vec::new()
}

/// Every file name a build of `config` may produce (used to clean up before rebuilding).
pub fn output_names(config: &mkosi_config::Config) -> Vec<String> {
    let o = config.output();
    let mut names = vec![o.to_string(), config.output_with_format(), config.output_with_compression()];
    for suffix in [
        "efi",
        "vmlinuz",
        "initrd",
        "pcrs",
        "roothash",
        "osrelease",
        "kernel-modules-initrd",
        "repart.d",
        "nspawn",
        "SHA256SUMS",
        "SHA256SUMS.gpg",
        "manifest",
        "changelog",
        "efinvramstate",
        "tpmstate",
    ] {
        names.push(format!("{o}.{suffix}"));
    }
    let mut tar = format!("{o}.tar");
    let c = config.compress_output();
    if !c.is_none() {
        tar.push('.');
        tar.push_str(c.extension());
    }
    names.push(tar);
    names.sort();
    names.dedup();
    names
}

fn compression(ctx: &Context) -> Result<Algorithm> {
    Algorithm::from_setting(ctx.config.compress_output().as_str()).map_err(BuildError::msg)
}

/// Write a tar archive of the root (GNU tar, reproducible: sorted, no
/// atime/ctime, owners from the image's passwd).
fn make_tar(ctx: &Context, dst: &Path) -> Result<()> {
    let root = ctx.root();
    let mut argv: Vec<String> = [
        "tar",
        "--create",
        "--file",
        "-",
        "--directory",
        "/buildroot",
        "--acls",
        "--selinux",
        "--xattrs",
        "--pax-option=delete=atime,delete=ctime,delete=mtime",
        "--sort=name",
        "--sparse",
        "--force-local",
        "--exclude",
        "./dev/*",
        "--exclude",
        "./proc/*",
        "--exclude",
        "./sys/*",
        "--exclude",
        "./tmp/*",
        "--exclude",
        "./run/*",
        "--exclude",
        "./var/tmp/*",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        argv.extend(["--owner=root:0".to_string(), "--group=root:0".to_string()]);
    }
    argv.push(".".into());
    let mut options = ctx.sandbox(false, false)?;
    options.ops.push(FsOp::Bind {
        src: root.clone(),
        dst: "/buildroot".into(),
        readonly: true,
        required: true,
        relative: false,
        nofollow: false,
    });
    for f in ["passwd", "group", "shadow", "gshadow"] {
        options.ops.push(FsOp::Symlink { target: Path::new("/buildroot/etc").join(f), dst: Path::new("/etc").join(f) });
    }
    run::run(&Cmd::new(argv).sandbox(options).stdout(Sink::File(dst.to_path_buf())))?;
    Ok(())
}

fn make_cpio(ctx: &Context, dst: &Path) -> Result<()> {
    let root = ctx.root();
    let mut f = std::fs::File::create(dst).map_err(io("creating", dst))?;
    // SAFETY: getuid has no preconditions.
    let owner_root = unsafe { libc::getuid() } != 0;
    cpio::write_tree(&root, &mut f, CpioOptions { owner_root, mtime_clamp: None })
        .map_err(|e| BuildError::msg(format!("Archiving {}: {e}", root.display())))?;
    Ok(())
}

/// The image as a cpio archive compressed with `CompressOutput=`, in `dir`: the initrd of
/// `Format=uki` (and bootable `Format=esp`) UKIs and of `Format=addon` addons.
pub(crate) fn compressed_tree_cpio(ctx: &Context, dir: &Path) -> Result<PathBuf> {
    let cpio = dir.join("initrd.cpio");
    make_cpio(ctx, &cpio)?;
    let initrd = dir.join("initrd");
    compress_file(&cpio, &initrd, compression(ctx)?, ctx.config.int("CompressLevel").unwrap_or(3) as i32)?;
    Ok(initrd)
}

/// Compress `src` into `dst` (in place semantics: `src` is removed).
pub fn compress_file(src: &Path, dst: &Path, algorithm: Algorithm, level: i32) -> Result<()> {
    if algorithm == Algorithm::None {
        if src != dst {
            std::fs::rename(src, dst).map_err(io("renaming", src))?;
        }
        return Ok(());
    }
    let tmp = dst.with_extension("tmp-compress");
    {
        let mut input = std::fs::File::open(src).map_err(io("opening", src))?;
        let out = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut c = Compressor::new(std::io::BufWriter::new(out), algorithm, level).map_err(io("compressing", src))?;
        std::io::copy(&mut input, &mut c).map_err(io("compressing", src))?;
        c.finish().map_err(io("compressing", src))?;
    }
    std::fs::remove_file(src).map_err(io("removing", src))?;
    std::fs::rename(&tmp, dst).map_err(io("renaming", &tmp))?;
    Ok(())
}

/// `SplitArtifacts=tar` for formats other than `tar`: a (compressed) tar of the root next to
/// the image.
pub fn make_split_tar(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if c.output_format() == OutputFormat::Tar || !c.strings("SplitArtifacts").iter().any(|a| a == "tar") {
        return Ok(());
    }
    let staging = ctx.staging();
    let tar = staging.join(format!("{}.tar", c.output()));
    make_tar(ctx, &tar)?;
    if !c.compress_output().is_none() {
        let dst = staging.join(format!("{}.tar.{}", c.output(), c.compress_output().extension()));
        let level = c.int("CompressLevel").unwrap_or(3) as i32;
        compress_file(&tar, &dst, compression(ctx)?, level)?;
    }
    Ok(())
}

/// `NSpawnSettings=`: the settings file goes next to the image as `<Output>.nspawn`.
pub fn copy_nspawn_settings(ctx: &Context) -> Result<()> {
    let Some(src) = ctx.config.path("NSpawnSettings") else { return Ok(()) };
    let dst = ctx.staging().join(format!("{}.nspawn", ctx.config.output()));
    std::fs::copy(&src, &dst).map_err(io("copying", &src))?;
    Ok(())
}

/// Produce the format-specific output in the staging directory, then
/// compression, checksums and the `Output` symlink.
pub fn make_output(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let staging = ctx.staging();
    let with_format = staging.join(c.output_with_format());
    match c.output_format() {
        OutputFormat::Directory => {
            std::fs::rename(ctx.root(), &with_format).map_err(io("moving the root to", &with_format))?;
        }
        OutputFormat::Tar => make_tar(ctx, &with_format)?,
        OutputFormat::Cpio => make_cpio(ctx, &with_format)?,
        OutputFormat::None => return Ok(()),
        OutputFormat::Disk => crate::disk::resize_output(ctx)?,
        OutputFormat::Esp => crate::disk::make_esp(ctx)?,
        OutputFormat::Uki => crate::boot::kernel::make_uki_output(ctx)?,
        OutputFormat::Addon => crate::boot::addon::make_output(ctx)?,
        f if f.is_extension_or_portable_image() => crate::disk::make_extension_or_portable_image(ctx)?,
        other => return Err(BuildError::msg(format!("Format={other} is not implemented yet"))),
    }

    if c.output_format().use_outer_compression() {
        let algorithm = compression(ctx)?;
        let dst = staging.join(c.output_with_compression());
        let level = c.int("CompressLevel").unwrap_or(3) as i32;
        compress_file(&with_format, &dst, algorithm, level)?;
    }

    if c.bool("Checksum") {
        let sums = mkosi_formats::checksum::sha256sums(&staging).map_err(io("checksumming", &staging))?;
        let p = staging.join(format!("{}.SHA256SUMS", c.output()));
        std::fs::write(&p, sums).map_err(io("writing", &p))?;
    }
    // Neither the checksums nor the signature cover the manifests.
    crate::signature::calculate_signature(ctx)?;
    crate::manifest::save(ctx)?;

    let base = staging.join(c.output());
    if std::fs::symlink_metadata(&base).is_err() {
        std::os::unix::fs::symlink(c.output_with_compression(), &base).map_err(io("creating", &base))?;
    }
    Ok(())
}

/// Move everything from staging into the output directory, replacing older
/// artifacts. Each artifact appears atomically: it is renamed into place
/// (copied next to its destination first when staging is on another file
/// system), and an older artifact is moved aside before and removed after.
pub fn finalize_staging(ctx: &Context) -> Result<()> {
    let outdir = ctx.output_dir();
    std::fs::create_dir_all(&outdir).map_err(io("creating", &outdir))?;
    let staging = ctx.staging();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&staging)
        .map_err(io("reading", &staging))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let pid = std::process::id();
    for f in entries {
        let Some(name) = f.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let dst = outdir.join(&name);
        let md = std::fs::symlink_metadata(&f).map_err(io("reading", &f))?;
        if md.is_file() {
            if let Some(mode) = ctx.config.int("OutputMode") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode as u32)).map_err(io("chmod", &f))?;
            }
        }
        // Get the new artifact onto the output file system first.
        let src = if std::fs::rename(&f, outdir.join(format!(".mkosi-new-{name}-{pid}"))).is_ok() {
            outdir.join(format!(".mkosi-new-{name}-{pid}"))
        } else {
            let tmp = outdir.join(format!(".mkosi-new-{name}-{pid}"));
            tree::rmtree(std::slice::from_ref(&tmp))?;
            if md.is_symlink() {
                let target = std::fs::read_link(&f).map_err(io("reading", &f))?;
                std::os::unix::fs::symlink(target, &tmp).map_err(io("creating", &tmp))?;
            } else {
                tree::copy_tree(&f, &tmp, true)?;
            }
            tree::rmtree(std::slice::from_ref(&f))?;
            tmp
        };
        let old = outdir.join(format!(".mkosi-old-{name}-{pid}"));
        let had_old = std::fs::symlink_metadata(&dst).is_ok();
        if had_old {
            std::fs::rename(&dst, &old).map_err(io("moving aside", &dst))?;
        }
        std::fs::rename(&src, &dst).map_err(io("moving into place", &dst))?;
        if had_old {
            tree::rmtree(&[old])?;
        }
    }
    Ok(())
}
