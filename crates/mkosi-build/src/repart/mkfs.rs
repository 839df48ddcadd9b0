//! Making filesystem images with the standard `mkfs.*` tools, populated from a directory.
//!
//! [`make_filesystem`] runs the tool systemd-repart 257 runs for a partition's `Format=`, with the
//! options it passes (`make_filesystem()` in systemd's `src/shared/mkfs-util.c`), always
//! populating from a staged directory (repart's offline mode: no loop devices, no mounting, no
//! root privileges):
//!
//! | fstype          | command line (optional parts in brackets)                                                                          |
//! |-----------------|--------------------------------------------------------------------------------------------------------------------|
//! | ext2/ext3/ext4  | `mkfs.<fs> -L <label> -U <uuid> -I 256 -m 0 -E <[no]discard>,lazy_itable_init=1,hash_seed=<uuid> -b 4096 -T default [-d <root>] <image>` |
//! | btrfs           | `mkfs.btrfs -L <label> -U <uuid> [--nodiscard] [-r <root>] [--compress <alg>[:<level>]] [--sectorsize=<max(ss,4096)>] <image> [--subvol <spec>]...` |
//! | xfs             | `mkfs.xfs -L <label> -m uuid=<uuid> -m reflink=1 [-K] [-p [slashes_are_spaces=1,]<protofile>] [-s size=<ss>] <image>` |
//! | vfat            | `mkfs.vfat [--invariant] -i <volid> -n <LABEL> -F 32 [-S <ss>] <image>`, then `mcopy -s -p -Q -m -i <image> <entries>... ::` |
//! | erofs           | `mkfs.erofs -U <uuid> --quiet [-z<alg>[,level=<level>]] <image> <root>`                                             |
//! | squashfs        | `mksquashfs <root> <image> -noappend [-comp <alg> [-Xcompression-level <level>]]`                                   |
//! | swap            | `mkswap -L <label> -U <uuid> <image>`                                                                               |
//!
//! followed by the `SYSTEMD_REPART_MKFS_OPTIONS_<FSTYPE>` words ([`MkfsRequest::extra_options`]).
//! Labels are shortened the way repart does (16 bytes for ext*, 12 for xfs, 15 for swap, FAT rules
//! for vfat); the vfat volume id is the first four bytes of the UUID.
//!
//! The environment of every tool is `PATH` plus `SOURCE_DATE_EPOCH` when set (repart passes its
//! whole environment on; the epoch is what matters). ext* also get `MKE2FS_DEVICE_SECTSIZE` (as
//! repart sets) and `E2FSPROGS_FAKE_TIME` (for e2fsprogs before 1.47.1, which ignore
//! `SOURCE_DATE_EPOCH`); mcopy gets `MTOOLS_SKIP_CHECK=1 TZ=UTC` like in repart. Standard output of
//! the tools is captured and dropped (repart sends it to its standard error); standard error is
//! forwarded, and its tail is part of errors.
//!
//! Where we differ from repart 257, on purpose:
//!
//! * ext*: `hash_seed=<uuid>` makes directory hashing reproducible (later systemd does the same).
//! * btrfs: subvolumes use the `--subvol [ro:|default:|default-ro:]<path>` syntax btrfs-progs
//!   released with the option (6.12); repart 257's `<path>:<flags>` form is rejected by it.
//!   `Compression=` is passed as `--compress` (btrfs-progs 6.13), which repart 257 ignores.
//!   Older btrfs-progs (Debian bookworm has 6.2) get a clear error for either instead.
//! * xfs: with xfsprogs older than 6.2 (bookworm has 6.1), which cannot read
//!   `slashes_are_spaces=1`, file names containing spaces are refused with a clear error.
//! * erofs: erofs-utils older than 1.8 (bookworm has 1.5) take the level as `-z<alg>,<level>`.
//! * vfat: released dosfstools (up to 4.2) ignore `SOURCE_DATE_EPOCH` for the volume label's
//!   timestamp; with an epoch we pass `--invariant` (before `-i`, so the volume id still comes from
//!   the UUID), which makes that timestamp a fixed constant. mcopy is not run when the tree has
//!   nothing it can copy (repart would run it without sources and fail).
//!
//! Reproducibility: with the same tree, UUID and `SOURCE_DATE_EPOCH`, ext*, vfat, erofs,
//! squashfs and swap images come out byte for byte the same. e2fsprogs before 1.47.1 copy the
//! tree's access and change times unclamped, so those must not change between builds (reading
//! the tree once settles access times under `relatime`). btrfs-progs and xfsprogs use random
//! internal UUIDs and the current time, which no option or variable controls.
//!
//! [`make_minimized`] implements `Minimize=` (see there).

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use mkosi_sandbox::run::{run, Cmd, RunError, Sink};

use super::{io, RepartError, Result};

/// What filesystem to make, where, and from what.
#[derive(Debug, Clone)]
pub struct MkfsRequest<'a> {
    /// `ext2`, `ext3`, `ext4`, `btrfs`, `xfs`, `vfat`, `erofs`, `squashfs` or `swap`.
    pub fstype: &'a str,
    /// Filesystem label (the GPT partition label, as repart uses it).
    pub label: &'a str,
    /// Filesystem UUID (derived from the partition UUID by the planner).
    pub uuid: [u8; 16],
    /// Directory whose contents become the root of the filesystem, if any.
    pub root: Option<&'a Path>,
    /// The image file to write. For read-only filesystems (erofs, squashfs) the tool
    /// creates and sizes it; for the others it must already exist with the wanted size.
    pub output: &'a Path,
    /// Filesystem sector size (repart's `--sector-size`, default 4096 for filesystems).
    /// 0 leaves it to the tools.
    pub sector_size: u64,
    /// Whether to discard (repart's `--discard`, default yes).
    pub discard: bool,
    /// `Compression=` and `CompressionLevel=` of the definition.
    pub compression: Option<&'a str>,
    pub compression_level: Option<&'a str>,
    /// Btrfs subvolumes and the default subvolume. Entries use the syntax of `Subvolumes=`:
    /// a path (absolute as in repart.d, or relative to the root), optionally followed by
    /// `:ro`. Only used when there is a [`root`](Self::root), like in repart.
    pub subvolumes: &'a [String],
    pub default_subvolume: Option<&'a str>,
    /// Extra options from `SYSTEMD_REPART_MKFS_OPTIONS_<FSTYPE>`.
    pub extra_options: Vec<String>,
    /// `SOURCE_DATE_EPOCH` for tools that honour it.
    pub source_date_epoch: Option<u64>,
}

/// Minimal filesystem sizes repart knows (`resize-fs.h`).
const EXT4_MINIMAL_SIZE: u64 = 32 * 1024 * 1024;
const XFS_MINIMAL_SIZE: u64 = 300 * 1024 * 1024;
const BTRFS_MINIMAL_SIZE: u64 = 256 * 1024 * 1024;

/// Size of the sparse file the probing pass of [`make_minimized`] formats (1 TiB, like repart).
const PROBE_SIZE: u64 = 1024 * 1024 * 1024 * 1024;

/// How often [`make_minimized`] grows an image that turned out too small before giving up.
const MAX_GROW_ATTEMPTS: usize = 12;

/// Filesystems that are read-only by design (systemd's `fstype_is_ro()`).
pub fn fstype_is_ro(fstype: &str) -> bool {
    matches!(fstype, "DM_verity_hash" | "cramfs" | "erofs" | "iso9660" | "squashfs")
}

/// The smallest size repart lets a filesystem of this type have (`minimal_size_by_fs_name()`),
/// `None` when it knows no minimum. Note that like in systemd only ext4 of the ext family has one.
pub fn minimal_size_by_fs_name(fstype: &str) -> Option<u64> {
    match fstype {
        "ext4" => Some(EXT4_MINIMAL_SIZE),
        "xfs" => Some(XFS_MINIMAL_SIZE),
        "btrfs" => Some(BTRFS_MINIMAL_SIZE),
        _ => None,
    }
}

/// Whether [`make_filesystem`] can make this filesystem type.
pub fn supported_fstype(fstype: &str) -> bool {
    matches!(fstype, "ext2" | "ext3" | "ext4" | "btrfs" | "xfs" | "vfat" | "erofs" | "squashfs" | "swap")
}

/// Whether the filesystem can be populated from a directory by its mkfs tool
/// (`mkfs_supports_root_option()`); the others would need a loop device.
pub fn mkfs_supports_root_option(fstype: &str) -> bool {
    fstype_is_ro(fstype) || matches!(fstype, "ext2" | "ext3" | "ext4" | "btrfs" | "vfat" | "xfs")
}

/// The Debian packages with the tools for `fstype`, as `apt-get install` takes them
/// (space separated); empty for filesystems [`make_filesystem`] cannot make.
pub fn debian_package_for(fstype: &str) -> &'static str {
    match fstype {
        "ext2" | "ext3" | "ext4" => "e2fsprogs",
        "btrfs" => "btrfs-progs",
        "xfs" => "xfsprogs",
        "vfat" => "dosfstools mtools",
        "erofs" => "erofs-utils",
        "squashfs" => "squashfs-tools",
        "swap" => "util-linux",
        _ => "",
    }
}

/// The Debian package that ships one of the tools we run.
fn debian_package_for_tool(tool: &str) -> &'static str {
    match tool {
        "mkfs.ext2" | "mkfs.ext3" | "mkfs.ext4" => "e2fsprogs",
        "mkfs.btrfs" => "btrfs-progs",
        "mkfs.xfs" => "xfsprogs",
        "mkfs.vfat" => "dosfstools",
        "mcopy" => "mtools",
        "mkfs.erofs" => "erofs-utils",
        "mksquashfs" => "squashfs-tools",
        "mkswap" => "util-linux",
        _ => "",
    }
}

/// The name of the environment variable with extra mkfs options for `fstype`
/// (`SYSTEMD_REPART_MKFS_OPTIONS_EXT4`, ...).
pub fn mkfs_options_env_name(fstype: &str) -> String {
    format!("SYSTEMD_REPART_MKFS_OPTIONS_{}", fstype.to_ascii_uppercase())
}

/// Split the value of `SYSTEMD_REPART_MKFS_OPTIONS_<FSTYPE>` into words, like repart: on
/// whitespace, without any quoting.
pub fn parse_mkfs_options(value: &str) -> Vec<String> {
    value.split_ascii_whitespace().map(str::to_string).collect()
}

/// The canonical lowercase form of a UUID (`8-4-4-4-12` hex digits).
fn uuid_string(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The FAT volume id repart derives from the UUID: its first four bytes, big endian, in hex.
fn vfat_volume_id(uuid: &[u8; 16]) -> String {
    format!("{:08x}", u32::from_be_bytes([uuid[0], uuid[1], uuid[2], uuid[3]]))
}

/// The longest prefix of `label` of at most `max_len` bytes that ends on a character boundary.
fn mangle_linux_label(label: &str, max_len: usize) -> String {
    let mut end = 0;
    for (i, c) in label.char_indices() {
        if i + c.len_utf8() > max_len {
            break;
        }
        end = i + c.len_utf8();
    }
    label[..end].to_string()
}

/// A FAT label as repart makes it: non-ASCII characters become `_`, at most 11 characters,
/// uppercase, and the characters mkfs.vfat refuses (and control characters) become `_`.
fn mangle_fat_label(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii() { c } else { '_' })
        .take(11)
        .map(|c| if "*?.,;:/\\|+=<>[]\"".contains(c) || c.is_ascii_control() { '_' } else { c.to_ascii_uppercase() })
        .collect()
}

/// The program that makes `fstype` filesystems.
fn mkfs_tool(fstype: &str) -> String {
    match fstype {
        "swap" => "mkswap".to_string(),
        "squashfs" => "mksquashfs".to_string(),
        other => format!("mkfs.{other}"),
    }
}

fn path_arg(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).ok_or_else(|| RepartError::msg(format!("{} is not a valid UTF-8 path", p.display())))
}

/// A tool version (`major.minor.patch`).
type Version = (u32, u32, u32);

/// Versions tools printed, by tool path and argument.
type VersionCache = HashMap<(PathBuf, String), Option<Version>>;

/// The first `a.b[.c]` token of a tool's version or help output (a leading `v` is allowed).
fn parse_version(text: &str) -> Option<Version> {
    text.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',').find_map(|word| {
        let word = word.strip_prefix('v').unwrap_or(word);
        let mut parts = word.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        parts.next().is_none().then_some((major, minor, patch))
    })
}

/// Where tools are looked up and how they are run.
#[derive(Debug, Clone)]
struct Toolbox {
    /// `PATH` to search tools in; also the `PATH` of the tools.
    path: OsString,
}

impl Toolbox {
    /// mkosi's `PATH`, followed by the usual directories: mkfs tools live in `sbin`, which
    /// unprivileged users often do not have in their `PATH`.
    fn from_env() -> Toolbox {
        const STANDARD: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let path = match std::env::var_os("PATH") {
            Some(p) if !p.is_empty() => {
                let mut p = p;
                p.push(":");
                p.push(STANDARD);
                p
            }
            _ => OsString::from(STANDARD),
        };
        Toolbox { path }
    }

    /// The absolute path of `tool`, or an error naming the package to install.
    fn find(&self, tool: &str, purpose: &str) -> Result<PathBuf> {
        for dir in std::env::split_paths(&self.path) {
            let candidate = dir.join(tool);
            if let Ok(md) = fs::metadata(&candidate) {
                if md.is_file() && md.mode() & 0o111 != 0 {
                    return Ok(candidate);
                }
            }
        }
        Err(RepartError::hint(
            format!("{tool} is not installed, but it is needed {purpose}"),
            format!(
                "Install the package that provides {tool} (on Debian and Ubuntu: {})",
                debian_package_for_tool(tool)
            ),
        ))
    }

    fn cmd(&self, argv: Vec<String>, env: Vec<(String, String)>) -> Cmd {
        let mut full_env = vec![("PATH".to_string(), self.path.to_string_lossy().into_owned())];
        full_env.extend(env);
        // The tools' chatter (mke2fs' banner, mkswap's notes about the image file) only shows
        // with --debug; a failure still carries the tail of their error output.
        let cmd = Cmd::new(argv).env(full_env);
        if crate::log::debugging() {
            cmd
        } else {
            cmd.quiet()
        }
    }

    /// The version `tool arg` prints, `None` when it fails or prints none. Cached per tool.
    fn version(&self, tool: &Path, arg: &str) -> Option<Version> {
        static CACHE: OnceLock<Mutex<VersionCache>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let key = (tool.to_path_buf(), arg.to_string());
        if let Some(v) = cache.lock().ok().and_then(|c| c.get(&key).copied()) {
            return v;
        }
        let argv = vec![tool.to_string_lossy().into_owned(), arg.to_string()];
        let version = run(&self.cmd(argv, Vec::new()).stdout(Sink::Capture).quiet())
            .ok()
            .and_then(|out| parse_version(&format!("{}\n{}", String::from_utf8_lossy(&out.stdout), out.stderr_tail)));
        if let Ok(mut c) = cache.lock() {
            c.insert(key, version);
        }
        version
    }
}

/// What the installed tools can do, as far as it matters for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caps {
    /// mkfs.btrfs has `--subvol` (btrfs-progs 6.12).
    btrfs_subvol: bool,
    /// mkfs.btrfs has `--compress` (btrfs-progs 6.13).
    btrfs_compress: bool,
    /// mkfs.xfs understands `-p slashes_are_spaces=1,<file>` (xfsprogs 6.2).
    xfs_slashes_are_spaces: bool,
    /// mkfs.erofs takes `-z<alg>,level=<n>` (erofs-utils 1.8); older ones `-z<alg>,<n>`.
    erofs_level_keyword: bool,
    /// mkfs.vfat ignores `SOURCE_DATE_EPOCH` (all released dosfstools, up to 4.2).
    vfat_needs_invariant: bool,
}

impl Caps {
    /// What current upstream tools can do.
    const NEWEST: Caps = Caps {
        btrfs_subvol: true,
        btrfs_compress: true,
        xfs_slashes_are_spaces: true,
        erofs_level_keyword: true,
        vfat_needs_invariant: false,
    };
}

/// Probe the tool for what `req` needs from it (only runs the tool when that matters).
fn probe_caps(tb: &Toolbox, tool: &Path, req: &MkfsRequest, proto_has_spaces: bool) -> Caps {
    let mut caps = Caps::NEWEST;
    match req.fstype {
        "btrfs" if req.root.is_some() && (!req.subvolumes.is_empty() || req.compression.is_some()) => {
            if let Some(v) = tb.version(tool, "--version") {
                caps.btrfs_subvol = v >= (6, 12, 0);
                caps.btrfs_compress = v >= (6, 13, 0);
            }
        }
        "xfs" if proto_has_spaces => {
            if let Some(v) = tb.version(tool, "-V") {
                caps.xfs_slashes_are_spaces = v >= (6, 2, 0);
            }
        }
        "erofs" if req.compression.is_some() && req.compression_level.is_some() => {
            // `-V` only exists since 1.8, so failing to print a version means an old one.
            caps.erofs_level_keyword = tb.version(tool, "-V").is_some_and(|v| v >= (1, 8, 0));
        }
        "vfat" if req.source_date_epoch.is_some() => {
            if let Some(v) = tb.version(tool, "--help") {
                caps.vfat_needs_invariant = v <= (4, 2, 0);
            }
        }
        _ => {}
    }
    caps
}

/// A command line with its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// Do not forward the tool's standard error (repart's `quiet`).
    quiet: bool,
}

/// The xfs protofile to populate from.
#[derive(Debug, Clone)]
struct Protofile {
    path: PathBuf,
    /// The first file whose name has a space, if any.
    spaced: Option<PathBuf>,
}

/// `--subvol` arguments for the btrfs subvolumes of `req`.
fn btrfs_subvol_args(req: &MkfsRequest) -> Result<Vec<String>> {
    let normalize = |p: &str| p.trim_matches('/').to_string();
    let default = req.default_subvolume.map(normalize);
    let mut args = Vec::new();
    let mut default_found = false;
    for entry in req.subvolumes {
        let (path, flags) = match entry.split_once(':') {
            Some((p, f)) => (p, f),
            None => (entry.as_str(), ""),
        };
        let mut read_only = false;
        for flag in flags.split(',').filter(|f| !f.is_empty()) {
            match flag {
                "ro" => read_only = true,
                other => {
                    return Err(RepartError::msg(format!("Unknown flag \"{other}\" of btrfs subvolume {path}")));
                }
            }
        }
        let path = normalize(path);
        if path.is_empty() {
            return Err(RepartError::msg("The root directory cannot be a btrfs subvolume of itself"));
        }
        let is_default = default.as_deref() == Some(path.as_str());
        default_found |= is_default;
        let prefix = match (is_default, read_only) {
            (false, false) => "",
            (false, true) => "ro:",
            (true, false) => "default:",
            (true, true) => "default-ro:",
        };
        args.push("--subvol".to_string());
        args.push(format!("{prefix}{path}"));
    }
    if let Some(d) = req.default_subvolume {
        if !default_found {
            return Err(RepartError::msg(format!("The default subvolume {d} is not one of the subvolumes")));
        }
    }
    Ok(args)
}

/// The command line and environment repart would use for `req` (see the module documentation).
fn mkfs_plan(req: &MkfsRequest, tool: &Path, caps: &Caps, protofile: Option<&Protofile>) -> Result<Plan> {
    let uuid = uuid_string(&req.uuid);
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(epoch) = req.source_date_epoch {
        env.push(("SOURCE_DATE_EPOCH".into(), epoch.to_string()));
    }
    let mut argv = vec![path_arg(tool)?];
    let image = path_arg(req.output)?;
    let root = req.root.map(path_arg).transpose()?;
    let mut quiet = false;
    let push = |argv: &mut Vec<String>, words: &[&str]| argv.extend(words.iter().map(|w| w.to_string()));

    match req.fstype {
        "ext2" | "ext3" | "ext4" => {
            let label = mangle_linux_label(req.label, 16);
            let e =
                format!("{},lazy_itable_init=1,hash_seed={uuid}", if req.discard { "discard" } else { "nodiscard" });
            push(
                &mut argv,
                &["-L", &label, "-U", &uuid, "-I", "256", "-m", "0", "-E", &e, "-b", "4096", "-T", "default"],
            );
            if let Some(root) = &root {
                push(&mut argv, &["-d", root]);
            }
            argv.push(image);
            if req.sector_size > 0 {
                env.push(("MKE2FS_DEVICE_SECTSIZE".into(), req.sector_size.to_string()));
            }
            if let Some(epoch) = req.source_date_epoch {
                env.push(("E2FSPROGS_FAKE_TIME".into(), epoch.to_string()));
            }
        }
        "btrfs" => {
            let label = req.label.to_string();
            push(&mut argv, &["-L", &label, "-U", &uuid]);
            if !req.discard {
                argv.push("--nodiscard".into());
            }
            if let Some(root) = &root {
                push(&mut argv, &["-r", root]);
                if let Some(alg) = req.compression {
                    if !caps.btrfs_compress {
                        return Err(RepartError::hint(
                            "Compression= for btrfs needs mkfs.btrfs --compress, which this btrfs-progs does not have",
                            "Install btrfs-progs 6.13 or newer, or remove Compression= from the partition definition",
                        ));
                    }
                    let spec = match req.compression_level {
                        Some(level) => format!("{alg}:{level}"),
                        None => alg.to_string(),
                    };
                    push(&mut argv, &["--compress", &spec]);
                }
            }
            if req.sector_size > 0 {
                argv.push(format!("--sectorsize={}", req.sector_size.max(4096)));
            }
            argv.push(image);
            if root.is_some() {
                let subvols = btrfs_subvol_args(req)?;
                if !subvols.is_empty() && !caps.btrfs_subvol {
                    return Err(RepartError::hint(
                        "Subvolumes= needs mkfs.btrfs --subvol, which this btrfs-progs does not have",
                        "Install btrfs-progs 6.12 or newer, or remove Subvolumes= and DefaultSubvolume=",
                    ));
                }
                argv.extend(subvols);
            }
        }
        "xfs" => {
            let label = mangle_linux_label(req.label, 12);
            push(&mut argv, &["-L", &label, "-m", &format!("uuid={uuid}"), "-m", "reflink=1"]);
            if !req.discard {
                argv.push("-K".into());
            }
            if let Some(proto) = protofile {
                let file = path_arg(&proto.path)?;
                if let Some(spaced) = &proto.spaced {
                    if !caps.xfs_slashes_are_spaces {
                        return Err(RepartError::hint(
                            format!(
                                "{} has a space in its name, which this mkfs.xfs cannot create \
                                 (it lacks -p slashes_are_spaces=1)",
                                spaced.display()
                            ),
                            "Install xfsprogs 6.2 or newer, or rename the files",
                        ));
                    }
                    push(&mut argv, &["-p", &format!("slashes_are_spaces=1,{file}")]);
                } else {
                    push(&mut argv, &["-p", &file]);
                }
            }
            if req.sector_size > 0 {
                push(&mut argv, &["-s", &format!("size={}", req.sector_size)]);
            }
            argv.push(image);
        }
        "vfat" => {
            if caps.vfat_needs_invariant && req.source_date_epoch.is_some() {
                argv.push("--invariant".into());
            }
            let label = mangle_fat_label(req.label);
            push(&mut argv, &["-i", &vfat_volume_id(&req.uuid), "-n", &label, "-F", "32"]);
            if req.sector_size > 0 {
                push(&mut argv, &["-S", &req.sector_size.to_string()]);
            }
            argv.push(image);
        }
        "swap" => {
            let label = mangle_linux_label(req.label, 15);
            push(&mut argv, &["-L", &label, "-U", &uuid, &image]);
        }
        "squashfs" => {
            let root = root.ok_or_else(|| RepartError::msg("squashfs needs a source tree"))?;
            push(&mut argv, &[&root, &image, "-noappend"]);
            if let Some(alg) = req.compression {
                push(&mut argv, &["-comp", alg]);
                if let Some(level) = req.compression_level {
                    push(&mut argv, &["-Xcompression-level", level]);
                }
            }
        }
        "erofs" => {
            let root = root.ok_or_else(|| RepartError::msg("erofs needs a source tree"))?;
            push(&mut argv, &["-U", &uuid, "--quiet"]);
            quiet = true;
            if let Some(alg) = req.compression {
                argv.push(match (req.compression_level, caps.erofs_level_keyword) {
                    (Some(level), true) => format!("-z{alg},level={level}"),
                    (Some(level), false) => format!("-z{alg},{level}"),
                    (None, _) => format!("-z{alg}"),
                });
            }
            push(&mut argv, &[&image, &root]);
        }
        other => return Err(RepartError::msg(format!("Making {other} filesystems is not supported"))),
    }
    argv.extend(req.extra_options.iter().cloned());
    Ok(Plan { argv, env, quiet })
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    /// A new private directory for the xfs protofile. Its path must not contain whitespace
    /// (symlinks in it stand in for source paths that do), hence `/tmp` as a fallback.
    fn new() -> Result<Scratch> {
        let mut base = std::env::temp_dir();
        if base.as_os_str().as_bytes().iter().any(u8::is_ascii_whitespace) {
            base = PathBuf::from("/tmp");
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("mkosi-mkfs-{}-{n}", std::process::id()));
        fs::create_dir(&dir).map_err(io("creating", &dir))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The entries of `dir`, sorted by name bytes (like repart's `RECURSE_DIR_SORT`).
fn sorted_entries(dir: &Path) -> Result<Vec<(OsString, PathBuf, fs::Metadata)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("reading directory", dir))? {
        let entry = entry.map_err(io("reading directory", dir))?;
        let path = entry.path();
        let md = fs::symlink_metadata(&path).map_err(io("inspecting", &path))?;
        entries.push((entry.file_name(), path, md));
    }
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(entries)
}

/// Major and minor number of a device number (glibc's encoding).
fn dev_major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// Writes the protofile lines for the contents of one directory.
struct ProtoWriter<'s> {
    out: Vec<u8>,
    spaced: Option<PathBuf>,
    scratch: &'s Path,
    links: usize,
}

impl ProtoWriter<'_> {
    fn directory(&mut self, dir: &Path) -> Result<()> {
        for (name, path, md) in sorted_entries(dir)? {
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                b'd'
            } else if ft.is_file() {
                b'-'
            } else if ft.is_symlink() {
                b'l'
            } else if ft.is_fifo() {
                b'p'
            } else if ft.is_block_device() {
                b'b'
            } else if ft.is_char_device() {
                b'c'
            } else {
                continue;
            };
            let name = name.as_bytes();
            if name.iter().any(|b| b.is_ascii_whitespace() && *b != b' ') {
                return Err(RepartError::msg(format!(
                    "{} has a name mkfs.xfs protofiles cannot express (whitespace other than spaces)",
                    path.display()
                )));
            }
            if name.contains(&b' ') {
                self.spaced.get_or_insert_with(|| path.clone());
                self.out.extend(name.iter().map(|b| if *b == b' ' { b'/' } else { *b }));
            } else {
                self.out.extend_from_slice(name);
            }
            let mode = md.mode();
            self.out.extend_from_slice(
                format!(
                    " {}{}{}{:03o} {} {} ",
                    kind as char,
                    if mode & 0o4000 != 0 { 'u' } else { '-' },
                    if mode & 0o2000 != 0 { 'g' } else { '-' },
                    mode & 0o777,
                    md.uid(),
                    md.gid()
                )
                .as_bytes(),
            );
            match kind {
                b'-' => {
                    let source = std::path::absolute(&path).map_err(io("resolving", &path))?;
                    if source.as_os_str().as_bytes().iter().any(u8::is_ascii_whitespace) {
                        // The protofile cannot quote source paths: point at the file through a
                        // symlink whose path has no whitespace.
                        let link = self.scratch.join(format!("file-{}", self.links));
                        self.links += 1;
                        std::os::unix::fs::symlink(&source, &link).map_err(io("creating symlink", &link))?;
                        self.out.extend_from_slice(link.as_os_str().as_bytes());
                    } else {
                        self.out.extend_from_slice(source.as_os_str().as_bytes());
                    }
                }
                b'l' => {
                    let target = fs::read_link(&path).map_err(io("reading symlink", &path))?;
                    if target.as_os_str().as_bytes().iter().any(u8::is_ascii_whitespace) {
                        return Err(RepartError::msg(format!(
                            "Symlink {} points to a path with whitespace, which mkfs.xfs cannot create",
                            path.display()
                        )));
                    }
                    self.out.extend_from_slice(target.as_os_str().as_bytes());
                }
                b'b' | b'c' => {
                    let (major, minor) = dev_major_minor(md.rdev());
                    self.out.extend_from_slice(format!("{major} {minor}").as_bytes());
                }
                _ => {}
            }
            self.out.push(b'\n');
            if kind == b'd' {
                self.directory(&path)?;
                self.out.extend_from_slice(b"$\n");
            }
        }
        Ok(())
    }
}

/// Write the mkfs.xfs protofile for `root` into `scratch` (repart's `make_protofile()`): the
/// root directory is `0755 root:root`, everything else keeps type, set-id bits, permissions and
/// ownership; sockets are left out.
fn make_protofile(root: &Path, scratch: &Path) -> Result<Protofile> {
    let mut writer = ProtoWriter { out: b"/\n0 0\nd--755 0 0\n".to_vec(), spaced: None, scratch, links: 0 };
    writer.directory(root)?;
    writer.out.extend_from_slice(b"$\n");
    let path = scratch.join("protofile");
    fs::write(&path, &writer.out).map_err(io("writing", &path))?;
    Ok(Protofile { path, spaced: writer.spaced })
}

/// `mcopy` the top-level regular files and directories of `root` into the FAT image, like repart.
fn populate_vfat(tb: &Toolbox, mcopy: &Path, req: &MkfsRequest, root: &Path) -> Result<()> {
    let mut sources = Vec::new();
    for (_, path, md) in sorted_entries(root)? {
        if md.is_file() || md.is_dir() {
            sources.push(path_arg(&path)?);
        } else {
            crate::log::debug(&format!("{} is neither a file nor a directory, vfat cannot hold it", path.display()));
        }
    }
    if sources.is_empty() {
        return Ok(());
    }
    let mut argv = vec![path_arg(mcopy)?];
    argv.extend(["-s", "-p", "-Q", "-m", "-i"].map(String::from));
    argv.push(path_arg(req.output)?);
    argv.extend(sources);
    argv.push("::".into());
    let mut env = vec![("MTOOLS_SKIP_CHECK".to_string(), "1".to_string()), ("TZ".to_string(), "UTC".to_string())];
    if let Some(epoch) = req.source_date_epoch {
        env.push(("SOURCE_DATE_EPOCH".into(), epoch.to_string()));
    }
    run(&tb.cmd(argv, env).stdout(Sink::Capture))?;
    Ok(())
}

/// Make the filesystem `req` describes in `req.output`, with the tool and options
/// systemd-repart 257 uses (see the module documentation).
pub fn make_filesystem(req: &MkfsRequest) -> Result<()> {
    make_filesystem_with(&Toolbox::from_env(), req)
}

fn make_filesystem_with(tb: &Toolbox, req: &MkfsRequest) -> Result<()> {
    if !supported_fstype(req.fstype) {
        return Err(RepartError::msg(format!("Making {} filesystems is not supported", req.fstype)));
    }
    let ro = fstype_is_ro(req.fstype);
    if ro && req.root.is_none() {
        return Err(RepartError::msg(format!(
            "Cannot generate read-only filesystem {} without a source tree.",
            req.fstype
        )));
    }
    if req.fstype == "swap" && req.root.is_some() {
        return Err(RepartError::msg("A swap filesystem can't be populated, refusing"));
    }
    if let Some(root) = req.root {
        if !root.is_dir() {
            return Err(RepartError::msg(format!("The source tree {} is not a directory", root.display())));
        }
    }
    let tool_name = mkfs_tool(req.fstype);
    let purpose = format!("to make {} filesystems", req.fstype);
    let tool = tb.find(&tool_name, &purpose)?;
    let mcopy = match (req.fstype, req.root) {
        ("vfat", Some(_)) => Some(tb.find("mcopy", "to copy files into vfat filesystems")?),
        _ => None,
    };

    if ro {
        // The tool creates the image; do not let it append to or keep the size of an old file.
        match fs::remove_file(req.output) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", req.output)(e));
            }
            _ => {}
        }
    } else {
        let md = fs::metadata(req.output).map_err(io("inspecting", req.output))?;
        if !md.is_file() || md.len() == 0 {
            return Err(RepartError::msg(format!(
                "{} must be an existing file of the size of the filesystem",
                req.output.display()
            )));
        }
    }

    let scratch;
    let protofile = match (req.fstype, req.root) {
        ("xfs", Some(root)) => {
            scratch = Scratch::new()?;
            Some(make_protofile(root, &scratch.0)?)
        }
        _ => None,
    };
    let caps = probe_caps(tb, &tool, req, protofile.as_ref().is_some_and(|p| p.spaced.is_some()));
    if caps.vfat_needs_invariant && req.source_date_epoch.is_some() {
        crate::log::debug("mkfs.vfat ignores SOURCE_DATE_EPOCH, using --invariant for a reproducible image");
    }
    let plan = mkfs_plan(req, &tool, &caps, protofile.as_ref())?;
    let mut cmd = tb.cmd(plan.argv, plan.env).stdout(Sink::Capture);
    if plan.quiet {
        cmd = cmd.quiet();
    }
    run(&cmd)?;

    if let (Some(mcopy), Some(root)) = (mcopy, req.root) {
        populate_vfat(tb, &mcopy, req, root)?;
    }
    if let (true, Some(root), Some(epoch)) =
        (matches!(req.fstype, "ext2" | "ext3" | "ext4"), req.root, req.source_date_epoch)
    {
        if tb.version(&tool, "-V").is_some_and(|v| v < (1, 47, 1)) {
            clamp_ext_times(tb, req.output, root, epoch)?;
        }
    }
    crate::log::debug(&format!(
        "{} successfully formatted as {} (label \"{}\", uuid {})",
        req.output.display(),
        req.fstype,
        req.label,
        uuid_string(&req.uuid)
    ));
    Ok(())
}

/// mke2fs before 1.47.1 copies the change and access times of the source files into the image
/// even with `SOURCE_DATE_EPOCH` set (later versions clamp them). The ctime of the staged files
/// is the time of the build, so set those fields to the epoch afterwards with debugfs, by path.
fn clamp_ext_times(tb: &Toolbox, image: &Path, root: &Path, epoch: u64) -> Result<()> {
    let debugfs = tb.find("debugfs", "to make ext4 timestamps reproducible")?;
    let mut script = String::new();
    let mut stack = vec![PathBuf::from("/")];
    while let Some(rel) = stack.pop() {
        let path = rel.to_string_lossy();
        if path.contains('"') || path.contains('\n') || path.contains('\\') {
            crate::log::debug(&format!("Cannot clamp the timestamps of {path} with debugfs, leaving them"));
        } else {
            for field in ["ctime", "atime"] {
                script.push_str(&format!("sif \"{path}\" {field} @{epoch}\n"));
            }
        }
        let dir = root.join(rel.strip_prefix("/").unwrap_or(&rel));
        let md = fs::symlink_metadata(&dir).map_err(io("inspecting", &dir))?;
        if md.is_dir() {
            let mut names: Vec<std::ffi::OsString> = fs::read_dir(&dir)
                .map_err(io("reading", &dir))?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            for n in names.into_iter().rev() {
                stack.push(rel.join(n));
            }
        }
    }
    let scratch = Scratch::new()?;
    let file = scratch.0.join("clamp-times");
    fs::write(&file, script).map_err(io("writing", &file))?;
    let argv = vec![
        debugfs.to_string_lossy().into_owned(),
        "-w".into(),
        "-f".into(),
        file.to_string_lossy().into_owned(),
        image.to_string_lossy().into_owned(),
    ];
    // The fake time keeps debugfs from stamping the superblock with the current time.
    let env = vec![("E2FSPROGS_FAKE_TIME".to_string(), epoch.to_string())];
    run(&tb.cmd(argv, env).stdout(Sink::Capture).quiet())?;
    Ok(())
}

/// Whether a failed tool run means the image was too small for the tree.
fn is_out_of_space(err: &RepartError) -> bool {
    const SIGNS: [&str; 6] =
        ["Could not allocate", "No space left on device", "ENOSPC", "No free space", "Disk full", "No directory slots"];
    match err {
        RepartError::Run(RunError::Failed { stderr_tail, .. }) => SIGNS.iter().any(|s| stderr_tail.contains(s)),
        _ => false,
    }
}

fn round_up(value: u64, grain: u64) -> u64 {
    value.div_ceil(grain) * grain
}

/// Create (or empty) `path` as a sparse file of `size` bytes.
fn create_sized(path: &Path, size: u64) -> Result<()> {
    let f = fs::File::create(path).map_err(io("creating", path))?;
    f.set_len(size).map_err(io("sizing", path))
}

/// Bytes of `path` that are data rather than holes (repart's `fd_apparent_size()`).
fn allocated_bytes(path: &Path) -> Result<u64> {
    let f = fs::File::open(path).map_err(io("opening", path))?;
    let fd = f.as_raw_fd();
    let mut total: u64 = 0;
    let mut offset: libc::off_t = 0;
    loop {
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, offset, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(total),
                // No SEEK_DATA on this filesystem: count the allocated blocks instead.
                Some(libc::EINVAL) => Ok(f.metadata().map_err(io("inspecting", path))?.blocks() * 512),
                _ => Err(io("seeking data in", path)(err)),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(total),
                _ => Err(io("seeking a hole in", path)(err)),
            };
        }
        total += (hole - data) as u64;
        offset = hole;
    }
}

/// Make `req.output` as a filesystem of minimal size for `req.root` and return the size of the
/// image (`Minimize=best` and `Minimize=guess`, which behave alike in repart 257). The size is
/// not necessarily a multiple of `grain_size` (the read-only tools size their images, and
/// mkfs.btrfs before 6.5.3 may enlarge the file); round it up for the partition, as repart does.
///
/// * Read-only filesystems (erofs, squashfs): one run; the tool sizes the image.
/// * btrfs, xfs and vfat, like repart's `context_minimize()`: a first pass into a 1 TiB sparse
///   file (with a UUID derived from the real one instead of a random one, so the size does not
///   vary), then the size is the bytes it allocated plus 50% (100% for xfs), rounded up to
///   `grain_size`, and at least [`minimal_size_by_fs_name`]; then the real filesystem. vfat
///   images are also at least the smallest FAT32 that mtools copies into (65525 clusters: about
///   257 MiB with 4096 byte sectors), which repart does not ensure (its mcopy then fails).
/// * ext2/3/4: instead of that first pass (a full populate of a 1 TiB filesystem, whose 1 GiB
///   journal and metadata also inflate the result), the bytes the filesystem would allocate are
///   estimated from a walk of the tree (block-rounded file sizes, mapping blocks, directory
///   blocks, long symlinks, external xattr blocks; journal, bitmaps, group descriptors and used
///   inode tables for the filesystem size), then 50% are added as in repart; the size is also at
///   least what holds every inode at mke2fs's inode ratio, so a tree of many small files fits.
///
/// For the writable filesystems, if the tool still runs out of space the size grows by 25%
/// and the filesystem is made again. The result is the same for the same tree and request.
pub fn make_minimized(req: &MkfsRequest, grain_size: u64) -> Result<u64> {
    make_minimized_with(&Toolbox::from_env(), req, grain_size)
}

fn make_minimized_with(tb: &Toolbox, req: &MkfsRequest, grain_size: u64) -> Result<u64> {
    let root = req.root.ok_or_else(|| {
        RepartError::msg(format!("Cannot minimize a {} filesystem without a source tree", req.fstype))
    })?;
    if !supported_fstype(req.fstype) {
        return Err(RepartError::msg(format!("Making {} filesystems is not supported", req.fstype)));
    }
    if fstype_is_ro(req.fstype) {
        make_filesystem_with(tb, req)?;
        return Ok(fs::metadata(req.output).map_err(io("inspecting", req.output))?.len());
    }
    if req.fstype == "swap" {
        return Err(RepartError::msg("A swap filesystem can't be populated, refusing"));
    }
    let grain = grain_size.max(1);
    let mut size = match req.fstype {
        "ext2" | "ext3" | "ext4" => ext_minimal_size(req.fstype, root, grain)?,
        _ => probed_minimal_size(tb, req, grain)?,
    };
    for attempt in 0.. {
        create_sized(req.output, size)?;
        match make_filesystem_with(tb, req) {
            Ok(()) => break,
            Err(e) if attempt < MAX_GROW_ATTEMPTS && is_out_of_space(&e) => {
                let grown = round_up(size + size / 4, grain);
                crate::log::debug(&format!(
                    "{} filesystem of {size} bytes is too small for {}, trying {grown} bytes",
                    req.fstype,
                    root.display()
                ));
                size = grown;
            }
            Err(e) => return Err(e),
        }
    }
    // Some tools enlarge a file that is too small for the tree themselves (mkfs.btrfs before
    // 6.5.3 does); like repart, report the size of what was made.
    let made = fs::metadata(req.output).map_err(io("inspecting", req.output))?.len();
    crate::log::debug(&format!("Minimal size of the {} filesystem of {} is {made} bytes", req.fstype, root.display()));
    Ok(made)
}

/// repart's size heuristic: allocated bytes plus 50% (100% for xfs), rounded up to the grain,
/// at least the filesystem's minimal size.
fn minimize_heuristic(fstype: &str, allocated: u64, grain: u64) -> u64 {
    let extra = if fstype == "xfs" { allocated } else { allocated / 2 };
    let size = round_up(allocated + extra, grain);
    size.max(minimal_size_by_fs_name(fstype).unwrap_or(0))
}

/// The smallest FAT32 image mtools and the kernel accept as FAT32 (65525 clusters of at least
/// one sector, plus two FATs and the reserved sectors), for `sector_size`.
fn vfat_floor(sector_size: u64) -> u64 {
    let sector = sector_size.max(512);
    let clusters: u64 = 65525 + 16;
    let fat_sectors = (clusters * 4).div_ceil(sector);
    (clusters + 2 * fat_sectors + 32) * sector
}

/// The first pass of repart's `context_minimize()` (see [`make_minimized`]).
fn probed_minimal_size(tb: &Toolbox, req: &MkfsRequest, grain: u64) -> Result<u64> {
    let name = req.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let probe = req.output.with_file_name(format!(".{name}.probe-{}", std::process::id()));
    struct Remove<'p>(&'p Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&probe);
    create_sized(&probe, PROBE_SIZE)?;
    let mut probe_uuid = req.uuid;
    for b in probe_uuid.iter_mut() {
        *b ^= 0x5a;
    }
    let probe_req = MkfsRequest { output: &probe, uuid: probe_uuid, ..req.clone() };
    make_filesystem_with(tb, &probe_req)?;
    let allocated = allocated_bytes(&probe)?;
    let mut size = minimize_heuristic(req.fstype, allocated, grain);
    if req.fstype == "vfat" {
        size = size.max(round_up(vfat_floor(req.sector_size), grain));
    }
    Ok(size)
}

/// Block size of the ext filesystems we make (`-b 4096`).
const EXT_BLOCK: u64 = 4096;
/// Inode size (`-I 256`) and bytes per inode (mke2fs.conf's `inode_ratio` for `-T default`).
const EXT_INODE_SIZE: u64 = 256;
const EXT_INODE_RATIO: u64 = 16384;
const EXT_BLOCKS_PER_GROUP: u64 = EXT_BLOCK * 8;
/// Inodes that exist before any file is copied: the reserved ones (1-10), lost+found, and a
/// few spare (e.g. an orphan file).
const EXT_BASE_INODES: u64 = 16;

/// What a tree needs in an ext filesystem, apart from the filesystem's own metadata.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ExtUsage {
    /// Data, mapping (extent or indirect), directory, symlink and xattr blocks.
    blocks: u64,
    /// Inodes of the tree (hard links counted once), the root directory included.
    inodes: u64,
}

/// Blocks of the block map of a file of `n` blocks in ext2/3 (indirect blocks).
fn indirect_blocks(n: u64) -> u64 {
    const PER: u64 = EXT_BLOCK / 4;
    let mut rest = n.saturating_sub(12);
    let mut blocks = 0;
    if rest > 0 {
        blocks += 1;
        rest = rest.saturating_sub(PER);
    }
    if rest > 0 {
        let covered = rest.min(PER * PER);
        blocks += 1 + covered.div_ceil(PER);
        rest -= covered;
    }
    if rest > 0 {
        blocks += 1 + rest.div_ceil(PER * PER) + rest.div_ceil(PER);
    }
    blocks
}

/// Extent tree blocks of a file of `n` blocks in ext4: four extents fit in the inode; an
/// extent covers at most 32768 blocks and we assume one more break per flex group (2 GiB).
fn extent_blocks(n: u64) -> u64 {
    let extents = n.div_ceil(32768) + n / (16 * 32768);
    if extents > 4 {
        extents.div_ceil(340)
    } else {
        0
    }
}

/// Bytes of extended attributes of `path` as stored in an inode or xattr block, 0 when it has
/// none.
fn xattr_bytes(path: &Path) -> u64 {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: a NULL buffer of size 0 asks for the size of the name list only.
    let len = unsafe { libc::llistxattr(c_path.as_ptr(), std::ptr::null_mut(), 0) };
    if len <= 0 {
        return 0;
    }
    let mut names = vec![0u8; len as usize];
    // SAFETY: `names` is valid for `names.len()` bytes.
    let len = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len <= 0 {
        return 0;
    }
    names.truncate(len as usize);
    let mut total = 4; // the terminating entry
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(c_name) = CString::new(name) else { continue };
        // SAFETY: a NULL buffer of size 0 asks for the size of the value only.
        let value = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), std::ptr::null_mut(), 0) };
        let value = value.max(0) as u64;
        total += 16 + (name.len() as u64).div_ceil(4) * 4 + value.div_ceil(4) * 4;
    }
    total
}

/// Walks a tree and adds up what it needs in an ext filesystem of `fstype`.
struct ExtWalker {
    extents: bool,
    dir_block_space: u64,
    usage: ExtUsage,
    hardlinks: HashSet<(u64, u64)>,
}

impl ExtWalker {
    /// Room for xattrs in a 256 byte inode (after the 128 byte base inode, 32 bytes of extra
    /// fields and the xattr header); more goes into an xattr block.
    const INODE_XATTR_SPACE: u64 = EXT_INODE_SIZE - 128 - 32 - 4;

    fn inode(&mut self, path: &Path) {
        self.usage.inodes += 1;
        if xattr_bytes(path) > Self::INODE_XATTR_SPACE {
            self.usage.blocks += 1;
        }
    }

    fn directory(&mut self, dir: &Path) -> Result<()> {
        self.inode(dir);
        // "." and ".." come first; entries do not span blocks.
        let mut blocks = 1;
        let mut used = 24;
        for entry in fs::read_dir(dir).map_err(io("reading directory", dir))? {
            let entry = entry.map_err(io("reading directory", dir))?;
            let path = entry.path();
            let md = fs::symlink_metadata(&path).map_err(io("inspecting", &path))?;
            let ft = md.file_type();
            if ft.is_socket() {
                continue;
            }
            let rec_len = (8 + entry.file_name().len() as u64).div_ceil(4) * 4;
            if used + rec_len > self.dir_block_space {
                blocks += 1;
                used = 0;
            }
            used += rec_len;
            if ft.is_dir() {
                self.directory(&path)?;
                continue;
            }
            if md.nlink() > 1 && !self.hardlinks.insert((md.dev(), md.ino())) {
                continue;
            }
            self.inode(&path);
            if ft.is_file() {
                let n = md.len().div_ceil(EXT_BLOCK);
                self.usage.blocks += n + if self.extents { extent_blocks(n) } else { indirect_blocks(n) };
            } else if ft.is_symlink() {
                // Targets of 60 bytes and more do not fit into the inode.
                if md.len() >= 60 {
                    self.usage.blocks += 1;
                }
            }
        }
        self.usage.blocks += blocks;
        Ok(())
    }
}

/// Walk `root` for an ext filesystem of `fstype`.
fn ext_usage(fstype: &str, root: &Path) -> Result<ExtUsage> {
    let ext4 = fstype == "ext4";
    let mut walker = ExtWalker {
        extents: ext4,
        // ext4 has metadata_csum: a 12 byte checksum tail in every directory block.
        dir_block_space: if ext4 { EXT_BLOCK - 12 } else { EXT_BLOCK },
        usage: ExtUsage::default(),
        hardlinks: HashSet::new(),
    };
    walker.directory(root)?;
    Ok(walker.usage)
}

/// e2fsprogs' default journal size (in blocks) for a filesystem of `blocks` blocks.
fn ext_journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..=2047 => 0,
        2048..=32767 => 1024,
        32768..=262_143 => 4096,
        262_144..=524_287 => 8192,
        524_288..=4_194_303 => 16384,
        4_194_304..=8_388_607 => 32768,
        8_388_608..=16_777_215 => 65536,
        16_777_216..=33_554_431 => 131_072,
        _ => 262_144,
    }
}

/// Whether block group `g` holds a superblock backup (sparse_super: 0, 1, powers of 3, 5, 7).
fn ext_group_has_backup(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut p = base;
        while p < g {
            p *= base;
        }
        p == g
    })
}

/// The layout mke2fs gives an ext filesystem of `size` bytes (with our options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExtLayout {
    blocks: u64,
    groups: u64,
    inodes_per_group: u64,
    reserved_gdt_blocks: u64,
    journal_blocks: u64,
    /// Blocks in use before any file is copied, with the whole inode tables.
    metadata_blocks: u64,
    /// The same with only the first `used_inode_table_blocks` of the inode tables, which is what
    /// mke2fs writes with `lazy_itable_init=1`.
    written_metadata_blocks: u64,
}

impl ExtLayout {
    fn new(fstype: &str, size: u64) -> ExtLayout {
        let blocks = size / EXT_BLOCK;
        let groups = blocks.div_ceil(EXT_BLOCKS_PER_GROUP).max(1);
        let inodes_per_block = EXT_BLOCK / EXT_INODE_SIZE;
        let inodes_per_group =
            (blocks * EXT_BLOCK / EXT_INODE_RATIO).div_ceil(groups).div_ceil(inodes_per_block) * inodes_per_block;
        let inodes_per_group = inodes_per_group.min(EXT_BLOCK * 8);
        // ext4 has the 64bit feature: 64 byte group descriptors.
        let desc_size = if fstype == "ext4" { 64 } else { 32 };
        let descs_per_block = EXT_BLOCK / desc_size;
        let gdt_blocks = groups.div_ceil(descs_per_block);
        let max_blocks = if blocks < 0xffff_ffff / 1024 { blocks * 1024 } else { 0xffff_ffff };
        let reserved_gdt_blocks = max_blocks
            .div_ceil(EXT_BLOCKS_PER_GROUP)
            .div_ceil(descs_per_block)
            .saturating_sub(gdt_blocks)
            .min(EXT_BLOCK / 4);
        let backups = (0..groups).filter(|g| ext_group_has_backup(*g)).count() as u64;
        let journal_blocks = if fstype == "ext2" { 0 } else { ext_journal_blocks(blocks) };
        let inode_table_blocks = groups * inodes_per_group / inodes_per_block;
        // Superblock and descriptor copies, bitmaps, journal, lost+found (4 blocks), root (1),
        // and some spare for what newer mke2fs.conf add (an orphan file).
        let fixed = backups * (1 + gdt_blocks + reserved_gdt_blocks) + 2 * groups + journal_blocks + 5 + 512;
        ExtLayout {
            blocks,
            groups,
            inodes_per_group,
            reserved_gdt_blocks,
            journal_blocks,
            metadata_blocks: fixed + inode_table_blocks,
            written_metadata_blocks: fixed,
        }
    }

    fn inodes(&self) -> u64 {
        self.groups * self.inodes_per_group
    }
}

/// The size [`make_minimized`] makes an ext filesystem of `fstype` for `root` (see there).
fn ext_minimal_size(fstype: &str, root: &Path, grain: u64) -> Result<u64> {
    let usage = ext_usage(fstype, root)?;
    Ok(ext_size_for_usage(fstype, usage, grain))
}

fn ext_size_for_usage(fstype: &str, usage: ExtUsage, grain: u64) -> u64 {
    let inodes_needed = usage.inodes + EXT_BASE_INODES;
    let inode_table_blocks = (inodes_needed * EXT_INODE_SIZE).div_ceil(EXT_BLOCK);
    let floor = round_up(minimal_size_by_fs_name(fstype).unwrap_or(0).max(1), grain);
    // Every term grows with the size, so iterating from the smallest size converges on the
    // smallest size that satisfies all of them.
    let mut size = floor;
    for _ in 0..64 {
        let layout = ExtLayout::new(fstype, size);
        let written = (usage.blocks + inode_table_blocks + layout.written_metadata_blocks) * EXT_BLOCK;
        let by_heuristic = minimize_heuristic(fstype, written, grain);
        let by_space = round_up((usage.blocks + layout.metadata_blocks) * EXT_BLOCK, grain);
        let by_inodes = round_up(inodes_needed * EXT_INODE_RATIO, grain);
        let mut next = by_heuristic.max(by_space).max(by_inodes).max(floor);
        if layout.inodes() < inodes_needed {
            next = next.max(size + grain);
        }
        if next <= size {
            break;
        }
        size = next;
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(fstype: &'a str, root: Option<&'a Path>, output: &'a Path) -> MkfsRequest<'a> {
        MkfsRequest {
            fstype,
            label: "root-x86-64",
            uuid: [0x4f, 0x68, 0xbc, 0xe3, 0xe8, 0xcd, 0x4d, 0xb1, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09],
            root,
            output,
            sector_size: 4096,
            discard: true,
            compression: None,
            compression_level: None,
            subvolumes: &[],
            default_subvolume: None,
            extra_options: Vec::new(),
            source_date_epoch: None,
        }
    }

    fn argv_of(req: &MkfsRequest, caps: &Caps, proto: Option<&Protofile>) -> String {
        let tool = PathBuf::from(format!("/usr/sbin/{}", mkfs_tool(req.fstype)));
        mkfs_plan(req, &tool, caps, proto).unwrap().argv.join(" ")
    }

    #[test]
    fn fstype_tables() {
        for ro in ["erofs", "squashfs", "iso9660", "cramfs", "DM_verity_hash"] {
            assert!(fstype_is_ro(ro), "{ro}");
        }
        for rw in ["ext4", "btrfs", "xfs", "vfat", "swap", "ext2"] {
            assert!(!fstype_is_ro(rw), "{rw}");
        }
        assert_eq!(minimal_size_by_fs_name("ext4"), Some(32 << 20));
        assert_eq!(minimal_size_by_fs_name("xfs"), Some(300 << 20));
        assert_eq!(minimal_size_by_fs_name("btrfs"), Some(256 << 20));
        assert_eq!(minimal_size_by_fs_name("ext2"), None);
        assert_eq!(minimal_size_by_fs_name("vfat"), None);
        for fs in ["ext2", "ext3", "ext4", "btrfs", "xfs", "vfat", "erofs", "squashfs", "swap"] {
            assert!(supported_fstype(fs), "{fs}");
            assert!(!debian_package_for(fs).is_empty(), "{fs}");
        }
        assert!(!supported_fstype("f2fs"));
        assert!(!supported_fstype("iso9660"));
        assert_eq!(debian_package_for("vfat"), "dosfstools mtools");
        assert_eq!(debian_package_for("swap"), "util-linux");
        assert_eq!(debian_package_for("zfs"), "");
        assert!(mkfs_supports_root_option("vfat") && mkfs_supports_root_option("erofs"));
        assert!(!mkfs_supports_root_option("swap"));
    }

    #[test]
    fn labels_and_ids() {
        assert_eq!(mangle_linux_label("a-very-long-label-indeed", 16), "a-very-long-labe");
        assert_eq!(mangle_linux_label("short", 12), "short");
        // 2-byte characters are never cut in half.
        assert_eq!(mangle_linux_label("ééééééééé", 16), "éééééééé");
        assert_eq!(mangle_linux_label("aéééééééé", 16), "aééééééé");
        assert_eq!(mangle_fat_label("esp"), "ESP");
        assert_eq!(mangle_fat_label("bööt:part.1"), "B__T_PART_1");
        assert_eq!(mangle_fat_label("a-long-fat-label"), "A-LONG-FAT-");
        assert_eq!(mangle_fat_label("tab\there"), "TAB_HERE");
        let uuid = [0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        assert_eq!(vfat_volume_id(&uuid), "deadbeef");
        assert_eq!(uuid_string(&uuid), "deadbeef-0102-0304-0506-0708090a0b0c");
    }

    #[test]
    fn extra_options_from_the_environment() {
        assert_eq!(mkfs_options_env_name("ext4"), "SYSTEMD_REPART_MKFS_OPTIONS_EXT4");
        assert_eq!(mkfs_options_env_name("vfat"), "SYSTEMD_REPART_MKFS_OPTIONS_VFAT");
        assert_eq!(parse_mkfs_options("  -O fast_commit\t-E  test_fs "), ["-O", "fast_commit", "-E", "test_fs"]);
        assert!(parse_mkfs_options("   ").is_empty());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("mkfs.btrfs, part of btrfs-progs v6.2\n"), Some((6, 2, 0)));
        assert_eq!(parse_version("mkfs.xfs version 6.1.0"), Some((6, 1, 0)));
        assert_eq!(parse_version("mkfs.fat 4.2 (2021-01-31)\nUsage: mkfs.fat"), Some((4, 2, 0)));
        assert_eq!(parse_version("mkfs.erofs (erofs-utils) 1.8.1\navailable compressors: lz4"), Some((1, 8, 1)));
        assert_eq!(parse_version("usage: [options] FILE DIRECTORY"), None);
    }

    #[test]
    fn ext_command_line() {
        let out = Path::new("/img/root.raw");
        let root = Path::new("/stage/root");
        let mut req = request("ext4", Some(root), out);
        req.source_date_epoch = Some(1700000000);
        req.extra_options = vec!["-O".into(), "fast_commit".into()];
        let tool = PathBuf::from("/usr/sbin/mkfs.ext4");
        let plan = mkfs_plan(&req, &tool, &Caps::NEWEST, None).unwrap();
        let uuid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
        assert_eq!(
            plan.argv.join(" "),
            format!(
                "/usr/sbin/mkfs.ext4 -L root-x86-64 -U {uuid} -I 256 -m 0 \
                 -E discard,lazy_itable_init=1,hash_seed={uuid} -b 4096 -T default -d /stage/root \
                 /img/root.raw -O fast_commit"
            )
        );
        assert_eq!(
            plan.env,
            [
                ("SOURCE_DATE_EPOCH".to_string(), "1700000000".to_string()),
                ("MKE2FS_DEVICE_SECTSIZE".to_string(), "4096".to_string()),
                ("E2FSPROGS_FAKE_TIME".to_string(), "1700000000".to_string()),
            ]
        );
        assert!(!plan.quiet);
        req.discard = false;
        req.root = None;
        req.extra_options.clear();
        req.label = "a-label-longer-than-sixteen";
        req.fstype = "ext2";
        assert_eq!(
            argv_of(&req, &Caps::NEWEST, None),
            format!(
                "/usr/sbin/mkfs.ext2 -L a-label-longer-t -U {uuid} -I 256 -m 0 \
                 -E nodiscard,lazy_itable_init=1,hash_seed={uuid} -b 4096 -T default /img/root.raw"
            )
        );
    }

    #[test]
    fn btrfs_command_line() {
        let out = Path::new("/img/root.raw");
        let root = Path::new("/stage/root");
        let subvols = vec!["/home".to_string(), "/var:ro".to_string(), "srv".to_string()];
        let mut req = request("btrfs", Some(root), out);
        let uuid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
        assert_eq!(
            argv_of(&req, &Caps::NEWEST, None),
            format!("/usr/sbin/mkfs.btrfs -L root-x86-64 -U {uuid} -r /stage/root --sectorsize=4096 /img/root.raw")
        );
        req.subvolumes = &subvols;
        req.default_subvolume = Some("/srv");
        req.discard = false;
        req.sector_size = 512;
        req.compression = Some("zstd");
        req.compression_level = Some("15");
        assert_eq!(
            argv_of(&req, &Caps::NEWEST, None),
            format!(
                "/usr/sbin/mkfs.btrfs -L root-x86-64 -U {uuid} --nodiscard -r /stage/root --compress zstd:15 \
                 --sectorsize=4096 /img/root.raw --subvol home --subvol ro:var --subvol default:srv"
            )
        );
        let old = Caps { btrfs_subvol: false, btrfs_compress: false, ..Caps::NEWEST };
        let err = mkfs_plan(&req, Path::new("/usr/sbin/mkfs.btrfs"), &old, None).unwrap_err();
        assert!(err.hint_text().unwrap().contains("btrfs-progs 6.13"), "{err}");
        req.compression = None;
        let err = mkfs_plan(&req, Path::new("/usr/sbin/mkfs.btrfs"), &old, None).unwrap_err();
        assert!(err.hint_text().unwrap().contains("btrfs-progs 6.12"), "{err}");
        // Without a tree, subvolumes are not made (as in repart) and the old tool is fine.
        req.root = None;
        assert!(mkfs_plan(&req, Path::new("/usr/sbin/mkfs.btrfs"), &old, None).is_ok());
        req.root = Some(root);
        req.default_subvolume = Some("/nope");
        assert!(btrfs_subvol_args(&req).is_err());
        let bad = vec!["/x:rw".to_string()];
        req.subvolumes = &bad;
        req.default_subvolume = None;
        assert!(btrfs_subvol_args(&req).is_err());
    }

    #[test]
    fn other_command_lines() {
        let out = Path::new("/img/p.raw");
        let root = Path::new("/stage/root");
        let uuid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

        let mut req = request("xfs", Some(root), out);
        let proto = Protofile { path: PathBuf::from("/tmp/s/protofile"), spaced: None };
        assert_eq!(
            argv_of(&req, &Caps::NEWEST, Some(&proto)),
            format!(
                "/usr/sbin/mkfs.xfs -L root-x86-64 -m uuid={uuid} -m reflink=1 -p /tmp/s/protofile -s size=4096 \
                 /img/p.raw"
            )
        );
        let spaced = Protofile { spaced: Some(PathBuf::from("/stage/root/a b")), ..proto.clone() };
        req.discard = false;
        req.label = "thirteen-char";
        assert_eq!(
            argv_of(&req, &Caps::NEWEST, Some(&spaced)),
            format!(
                "/usr/sbin/mkfs.xfs -L thirteen-cha -m uuid={uuid} -m reflink=1 -K \
                 -p slashes_are_spaces=1,/tmp/s/protofile -s size=4096 /img/p.raw"
            )
        );
        let old = Caps { xfs_slashes_are_spaces: false, ..Caps::NEWEST };
        let err = mkfs_plan(&req, Path::new("/usr/sbin/mkfs.xfs"), &old, Some(&spaced)).unwrap_err();
        assert!(err.hint_text().unwrap().contains("xfsprogs 6.2"), "{err}");
        assert!(err.to_string().starts_with("/stage/root/a b has a space"), "{err}");

        let mut req = request("vfat", Some(root), out);
        req.label = "esp";
        assert_eq!(
            argv_of(&req, &Caps::NEWEST, None),
            "/usr/sbin/mkfs.vfat -i 4f68bce3 -n ESP -F 32 -S 4096 /img/p.raw"
        );
        req.source_date_epoch = Some(0);
        let old = Caps { vfat_needs_invariant: true, ..Caps::NEWEST };
        assert_eq!(
            argv_of(&req, &old, None),
            "/usr/sbin/mkfs.vfat --invariant -i 4f68bce3 -n ESP -F 32 -S 4096 /img/p.raw"
        );

        let mut req = request("swap", None, out);
        req.label = "swap-partition-1";
        assert_eq!(
            argv_of(&req, &Caps::NEWEST, None),
            format!("/usr/sbin/mkswap -L swap-partition- -U {uuid} /img/p.raw")
        );

        let mut req = request("squashfs", Some(root), out);
        assert_eq!(argv_of(&req, &Caps::NEWEST, None), "/usr/sbin/mksquashfs /stage/root /img/p.raw -noappend");
        req.compression = Some("zstd");
        req.compression_level = Some("19");
        assert_eq!(
            argv_of(&req, &Caps::NEWEST, None),
            "/usr/sbin/mksquashfs /stage/root /img/p.raw -noappend -comp zstd -Xcompression-level 19"
        );

        let mut req = request("erofs", Some(root), out);
        let tool = PathBuf::from("/usr/bin/mkfs.erofs");
        let plan = mkfs_plan(&req, &tool, &Caps::NEWEST, None).unwrap();
        assert_eq!(plan.argv.join(" "), format!("/usr/bin/mkfs.erofs -U {uuid} --quiet /img/p.raw /stage/root"));
        assert!(plan.quiet);
        req.compression = Some("lz4hc");
        assert!(argv_of(&req, &Caps::NEWEST, None).contains(" -zlz4hc /img"));
        req.compression_level = Some("12");
        assert!(argv_of(&req, &Caps::NEWEST, None).contains(" -zlz4hc,level=12 /img"));
        let old = Caps { erofs_level_keyword: false, ..Caps::NEWEST };
        assert!(argv_of(&req, &old, None).contains(" -zlz4hc,12 /img"));

        let req = request("f2fs", None, out);
        assert!(mkfs_plan(&req, &tool, &Caps::NEWEST, None).is_err());
    }

    #[test]
    fn protofile() {
        let scratch = tempfile::tempdir().unwrap();
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path().join("with space");
        fs::create_dir_all(root.join("dir/sub")).unwrap();
        fs::write(root.join("dir/a file"), "x").unwrap();
        fs::write(root.join("plain"), "y").unwrap();
        std::os::unix::fs::symlink("plain", root.join("link")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [("plain", 0o4750), ("dir", 0o755), ("dir/a file", 0o644), ("dir/sub", 0o2700)] {
            fs::set_permissions(root.join(path), fs::Permissions::from_mode(mode)).unwrap();
        }
        let proto = make_protofile(&root, scratch.path()).unwrap();
        assert_eq!(proto.spaced, Some(root.join("dir/a file")));
        let text = String::from_utf8(fs::read(&proto.path).unwrap()).unwrap();
        let md = fs::metadata(root.join("plain")).unwrap();
        let (uid, gid) = (md.uid(), md.gid());
        // Regular files are named by absolute paths; the ones with whitespace via symlinks.
        let link0 = scratch.path().join("file-0");
        let link1 = scratch.path().join("file-1");
        assert_eq!(fs::read_link(&link0).unwrap(), root.join("dir/a file"));
        assert_eq!(fs::read_link(&link1).unwrap(), root.join("plain"));
        let expected = format!(
            "/\n0 0\nd--755 0 0\n\
             dir d--755 {uid} {gid} \n\
             a/file ---644 {uid} {gid} {}\n\
             sub d-g700 {uid} {gid} \n$\n$\n\
             link l--777 {uid} {gid} plain\n\
             plain -u-750 {uid} {gid} {}\n$\n",
            link0.display(),
            link1.display()
        );
        assert_eq!(text, expected);

        fs::write(root.join("tab\tname"), "z").unwrap();
        assert!(make_protofile(&root, scratch.path()).is_err());
    }

    #[test]
    fn device_numbers() {
        // makedev(8, 1) and makedev(259, 70000) in glibc's encoding.
        assert_eq!(dev_major_minor(0x801), (8, 1));
        let dev = ((259u64 & 0xfff) << 8) | (70000u64 & 0xff) | ((70000u64 & !0xff) << 12);
        assert_eq!(dev_major_minor(dev), (259, 70000));
    }

    #[test]
    fn missing_tools_name_their_package() {
        let empty = tempfile::tempdir().unwrap();
        let tb = Toolbox { path: empty.path().as_os_str().to_owned() };
        let out = empty.path().join("img");
        for (fstype, package) in [
            ("ext4", "e2fsprogs"),
            ("btrfs", "btrfs-progs"),
            ("xfs", "xfsprogs"),
            ("vfat", "dosfstools"),
            ("erofs", "erofs-utils"),
            ("squashfs", "squashfs-tools"),
            ("swap", "util-linux"),
        ] {
            let root = (fstype != "swap").then_some(empty.path());
            let req = request(fstype, root, &out);
            let err = make_filesystem_with(&tb, &req).unwrap_err();
            let tool = mkfs_tool(fstype);
            assert!(err.to_string().contains(&format!("{tool} is not installed")), "{err}");
            assert!(err.hint_text().unwrap().contains(package), "{err:?}");
        }
        // mcopy is needed as well when a FAT filesystem gets files.
        let bin = tempfile::tempdir().unwrap();
        let fake = bin.path().join("mkfs.vfat");
        fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let tb = Toolbox { path: bin.path().as_os_str().to_owned() };
        let req = request("vfat", Some(empty.path()), &out);
        let err = make_filesystem_with(&tb, &req).unwrap_err();
        assert!(err.to_string().contains("mcopy is not installed"), "{err}");
        assert!(err.hint_text().unwrap().contains("mtools"), "{err:?}");
    }

    #[test]
    fn refuses_impossible_requests() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img");
        let tb = Toolbox::from_env();
        let err = make_filesystem_with(&tb, &request("erofs", None, &out)).unwrap_err();
        assert!(err.to_string().contains("without a source tree"), "{err}");
        let err = make_filesystem_with(&tb, &request("swap", Some(dir.path()), &out)).unwrap_err();
        assert!(err.to_string().contains("can't be populated"), "{err}");
        let err = make_filesystem_with(&tb, &request("zfs", None, &out)).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        let err = make_minimized_with(&tb, &request("ext4", None, &out), 4096).unwrap_err();
        assert!(err.to_string().contains("without a source tree"), "{err}");
    }

    #[test]
    fn out_of_space_is_recognized() {
        let failed = |tail: &str| {
            RepartError::Run(RunError::Failed { command: "mkfs".into(), code: 1, stderr_tail: tail.into() })
        };
        assert!(is_out_of_space(&failed(
            "__populate_fs: Could not allocate block in ext2 filesystem while writing file \"big\""
        )));
        assert!(is_out_of_space(&failed("ERROR: failed to copy: No space left on device")));
        assert!(is_out_of_space(&failed("Disk full")));
        assert!(!is_out_of_space(&failed("mkfs.ext4: invalid option -- 'Z'")));
        assert!(!is_out_of_space(&RepartError::msg("Could not allocate")));
    }

    #[test]
    fn allocated_bytes_skips_holes() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut f = fs::File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[1u8; 8192]).unwrap();
        f.sync_all().unwrap();
        let allocated = allocated_bytes(&path).unwrap();
        assert!((8192..=1 << 20).contains(&allocated), "{allocated}");
    }

    #[test]
    fn ext_layout_matches_mke2fs() {
        // Values from dumpe2fs of `mkfs.ext4 -T default -b 4096 -I 256` images (e2fsprogs 1.47).
        let l = ExtLayout::new("ext4", 700 << 20);
        assert_eq!((l.blocks, l.groups, l.inodes_per_group, l.reserved_gdt_blocks), (179200, 6, 7472, 87));
        assert_eq!(l.inodes(), 44832);
        assert_eq!(l.journal_blocks, 4096);
        let l = ExtLayout::new("ext4", 1 << 30);
        assert_eq!((l.inodes(), l.reserved_gdt_blocks, l.journal_blocks), (65536, 127, 8192));
        let l = ExtLayout::new("ext4", 2 << 30);
        assert_eq!((l.inodes(), l.reserved_gdt_blocks, l.journal_blocks), (131072, 255, 16384));
        assert_eq!(ExtLayout::new("ext2", 1 << 30).journal_blocks, 0);
        assert_eq!(ext_journal_blocks(2047), 0);
        assert_eq!(ext_journal_blocks(32768), 4096);
        assert_eq!(ext_journal_blocks(1 << 28), 262144);
        let backups: Vec<u64> = (0..50).filter(|g| ext_group_has_backup(*g)).collect();
        assert_eq!(backups, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn ext_mapping_blocks() {
        assert_eq!(indirect_blocks(12), 0);
        assert_eq!(indirect_blocks(13), 1);
        assert_eq!(indirect_blocks(12 + 1024), 1);
        assert_eq!(indirect_blocks(12 + 1024 + 1), 3);
        assert_eq!(indirect_blocks(12 + 1024 + 1024 * 1024 + 1), 1 + 1 + 1024 + 3);
        assert_eq!(extent_blocks(4 * 32768), 0);
        assert_eq!(extent_blocks(5 * 32768), 1);
    }

    #[test]
    fn ext_sizes() {
        // Small trees get the ext4 minimum.
        let small = ExtUsage { blocks: 10, inodes: 5 };
        assert_eq!(ext_size_for_usage("ext4", small, 4096), 32 << 20);
        // Data dominated: written blocks plus 50%.
        let data = ExtUsage { blocks: 131072, inodes: 1000 };
        let size = ext_size_for_usage("ext4", data, 1 << 20);
        assert_eq!(size % (1 << 20), 0);
        let lower = (131072 + 4096) * 4096 * 3 / 2;
        assert!(size > lower && size < lower + (16 << 20), "{size}");
        // Inode dominated: many empty files need the inode ratio's bytes per inode.
        let files = ExtUsage { blocks: 100, inodes: 100_000 };
        let size = ext_size_for_usage("ext4", files, 4096);
        assert!(ExtLayout::new("ext4", size).inodes() >= 100_000 + EXT_BASE_INODES, "{size}");
        // ext2 has no minimum and no journal.
        assert!(ext_size_for_usage("ext2", small, 4096) < 8 << 20);
        // Deterministic.
        assert_eq!(ext_size_for_usage("ext4", data, 4096), ext_size_for_usage("ext4", data, 4096));
    }

    #[test]
    fn ext_usage_of_a_tree() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/f"), vec![1u8; 10000]).unwrap();
        fs::hard_link(root.join("d/f"), root.join("hard")).unwrap();
        std::os::unix::fs::symlink("x".repeat(80), root.join("long")).unwrap();
        std::os::unix::fs::symlink("short", root.join("short")).unwrap();
        let usage = ext_usage("ext4", root).unwrap();
        // root and d directories (1 block each), f (3 blocks, linked twice), long symlink (1).
        assert_eq!(usage, ExtUsage { blocks: 2 + 3 + 1, inodes: 2 + 1 + 2 });
    }

    #[test]
    fn minimize_heuristic_like_repart() {
        assert_eq!(minimize_heuristic("btrfs", 100 << 20, 4096), 256 << 20);
        assert_eq!(minimize_heuristic("btrfs", 400 << 20, 1 << 20), 600 << 20);
        assert_eq!(minimize_heuristic("xfs", 400 << 20, 1 << 20), 800 << 20);
        assert_eq!(minimize_heuristic("vfat", 10 << 20, 1 << 20), 15 << 20);
        assert_eq!(minimize_heuristic("vfat", 1001, 1000), 2000);
        assert!(vfat_floor(4096) > 256 << 20 && vfat_floor(4096) < 260 << 20);
        assert!(vfat_floor(512) < 34 << 20);
    }
}
