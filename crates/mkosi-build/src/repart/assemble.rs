//! Putting a disk image together: the part of systemd-repart mkosi uses, in-process.
//!
//! [`make_image`] reads the definitions, prepares minimized filesystems and verity hashes,
//! plans the layout, formats each new partition into a temporary file, copies it into the image
//! (only its data extents) and writes the GPT. Called on an image that already exists (the
//! second pass after the bootloader was installed), it keeps the partitions on disk and fills in
//! the ones that were deferred.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use mkosi_formats::gpt::{self, Designator, PartitionType};
use uuid::Uuid;

use super::definition::{self, CopyBlocks, Definition, Minimize, ParseOptions, Specifiers, Verity};
use super::mkfs::{self, MkfsRequest};
use super::plan::{self, Constraints, Geometry, Placement};
use super::populate::{self, PopulateSpec, Populated};
use super::{io, RepartError, Result};

/// What to build, in systemd-repart's terms.
#[derive(Debug, Clone)]
pub struct RepartRequest {
    /// The image root (`--root=`): `CopyFiles=` sources are resolved in it.
    pub root: PathBuf,
    /// Definition directories (`--definitions=`), in priority order.
    pub definitions: Vec<PathBuf>,
    /// The image file. A new one is created; an existing one is completed.
    pub output: PathBuf,
    /// `--seed=`.
    pub seed: Uuid,
    /// The image's architecture in mkosi's spelling (`x86-64`, `arm64`, …).
    pub architecture: String,
    /// Whether that differs from the host's (repart's `--architecture=`).
    pub foreign: bool,
    /// `--sector-size=`.
    pub sector_size: Option<u64>,
    /// `--defer-partitions=`: types whose space is reserved but which are not written.
    pub defer: Vec<String>,
    /// `--exclude-partitions=`: types whose definitions are ignored.
    pub exclude: Vec<String>,
    /// `--split=yes`: write each partition (with a `SplitName=`) to its own file too.
    pub split: bool,
    /// `--generate-fstab=/etc/fstab`: write an fstab into the root for `MountPoint=`s.
    pub generate_fstab: bool,
    /// `--private-key=`/`--certificate=` for verity signatures.
    pub verity_key: Option<PathBuf>,
    pub verity_certificate: Option<PathBuf>,
    pub verity_key_source: mkosi_config::enums::KeySourceType,
    pub verity_certificate_source: mkosi_config::enums::CertificateSourceType,
    /// Where temporary files go (the build workspace).
    pub workspace: PathBuf,
    pub source_date_epoch: Option<u64>,
    /// Environment for `SYSTEMD_REPART_MKFS_OPTIONS_<FSTYPE>`.
    pub environment: BTreeMap<String, String>,
}

/// One partition of the result, with the fields mkosi uses from repart's JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionResult {
    /// The type's name (`root-x86-64`, `esp`, …) or UUID.
    pub type_name: String,
    pub type_uuid: Uuid,
    pub label: String,
    pub uuid: Uuid,
    /// 0-based partition number.
    pub partno: u32,
    /// The definition file name.
    pub file: String,
    pub offset: u64,
    pub size: u64,
    pub padding: u64,
    /// `create`, or `unchanged` for partitions already on disk.
    pub activity: &'static str,
    /// The verity root hash (hex) of verity data and hash partitions; `TBD` when not computed.
    pub roothash: Option<String>,
    pub split_path: Option<PathBuf>,
    /// Whether it was deferred (space reserved, not written, not in the table).
    pub deferred: bool,
    /// Time spent making this partition's content (filesystem, verity, copying).
    pub elapsed: std::time::Duration,
}

impl PartitionResult {
    /// The same object repart prints with `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": self.type_name,
            "label": self.label,
            "uuid": self.uuid.hyphenated().to_string(),
            "partno": self.partno,
            "file": self.file,
            "offset": self.offset,
            "raw_size": self.size,
            "raw_padding": self.padding,
            "activity": self.activity,
            "roothash": self.roothash,
            "split_path": self.split_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into()),
        })
    }
}

/// A file with prepared content for a partition.
#[derive(Debug, Clone)]
struct Content {
    path: PathBuf,
    size: u64,
    /// Ours to delete.
    temporary: bool,
}

struct Part<'a> {
    def: &'a Definition,
    ids: plan::Ids,
    existing: Option<gpt::Entry>,
    deferred: bool,
    content: Option<Content>,
    roothash: Option<[u8; 32]>,
    placement: Option<Placement>,
    partno: Option<u32>,
    uuid: Option<Uuid>,
}

fn parse_types(names: &[String], arch: &str) -> Result<Vec<Uuid>> {
    names
        .iter()
        .map(|n| {
            PartitionType::parse(n, arch)
                .map(|t| t.uuid)
                .ok_or_else(|| RepartError::msg(format!("unknown partition type '{n}'")))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mkfs_options(env: &BTreeMap<String, String>, fstype: &str) -> Result<Vec<String>> {
    let var = format!("SYSTEMD_REPART_MKFS_OPTIONS_{}", fstype.to_uppercase());
    match env.get(&var).cloned().or_else(|| std::env::var(&var).ok()) {
        None => Ok(Vec::new()),
        Some(v) => mkosi_config::shlex::split(&v, &[' ', '\t', '\n'])
            .map_err(|e| RepartError::msg(format!("failed to parse ${var}: {e}"))),
    }
}

/// Copies `len` bytes of `src` into `dst` at `offset`, skipping holes (the image is sparse).
pub(crate) fn copy_into(src: &Path, dst: &File, offset: u64, len: u64) -> Result<()> {
    let s = File::open(src).map_err(io("opening", src))?;
    let sfd = s.as_raw_fd();
    let dfd = dst.as_raw_fd();
    let mut pos: i64 = 0;
    let end = len as i64;
    while pos < end {
        // SAFETY: lseek on a valid fd.
        let data = unsafe { libc::lseek(sfd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(io("reading", src)(e));
        }
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(sfd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        let mut off_in: libc::loff_t = data;
        let mut off_out: libc::loff_t = offset as i64 + data;
        let mut left = (hole - data) as usize;
        while left > 0 {
            // SAFETY: copy_file_range between two valid fds with explicit offsets.
            let n = unsafe { libc::copy_file_range(sfd, &mut off_in, dfd, &mut off_out, left, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io("copying", src)(e));
            }
            if n == 0 {
                return Err(RepartError::msg(format!("{} is shorter than expected", src.display())));
            }
            left -= n as usize;
        }
        pos = hole;
    }
    Ok(())
}

fn file_size(p: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(p).map_err(io("opening", p))?;
    f.seek(SeekFrom::End(0)).map_err(io("reading", p))
}

/// `what` for an fstab line: the filesystem UUID (vfat: its volume ID).
fn fstab_what(format: &str, fs_uuid: Uuid) -> String {
    let b = fs_uuid.as_bytes();
    if format == "vfat" {
        format!("UUID={:02X}{:02X}-{:02X}{:02X}", b[0], b[1], b[2], b[3])
    } else {
        format!("UUID={}", fs_uuid.hyphenated())
    }
}

/// Mount options like systemd's `partition_pick_mount_options` for a writable mount.
fn mount_options(d: Option<Designator>, format: &str, discard: bool) -> String {
    let mut opts: Vec<&str> = Vec::new();
    let esp = matches!(d, Some(Designator::Esp | Designator::Xbootldr));
    if esp && format == "vfat" {
        opts.push("umask=0077");
    }
    if discard && matches!(format, "btrfs" | "f2fs" | "ext4" | "vfat" | "xfs") {
        opts.push("discard");
    }
    opts.push("rw");
    opts.push("nodev");
    opts.push(if esp || d == Some(Designator::Tmp) { "nosuid" } else { "suid" });
    opts.push(if esp { "noexec" } else { "exec" });
    if esp {
        opts.push("nosymfollow");
    }
    opts.join(",")
}

fn write_fstab(root: &Path, parts: &[Part]) -> Result<()> {
    let wanted: Vec<&Part> = parts.iter().filter(|p| p.def.format.is_some() && !p.def.mountpoints.is_empty()).collect();
    if wanted.is_empty() {
        crate::log::debug("MountPoint= is not specified for any eligible partitions, not generating /etc/fstab");
        return Ok(());
    }
    let mut text = String::from("# Automatically generated by systemd-repart\n\n");
    for p in wanted {
        let format = p.def.format.as_deref().unwrap_or_default();
        let what = fstab_what(format, p.ids.fs_uuid);
        let d = p.def.designator();
        for (wher, extra) in &p.def.mountpoints {
            let discard = !matches!(d, Some(Designator::Esp | Designator::Xbootldr));
            let mut options = mount_options(d, format, discard);
            if let Some(e) = extra {
                options.push(',');
                options.push_str(e);
            }
            let pass = if d == Some(Designator::Root) { 1 } else { 2 };
            text.push_str(&format!("{what} {wher} {format} {options} 0 {pass}\n"));
        }
    }
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).map_err(io("creating", &etc))?;
    let tmp = etc.join(".fstab.mkosi-tmp");
    std::fs::write(&tmp, text).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, etc.join("fstab")).map_err(io("writing", etc.join("fstab")))
}

/// The other partitions' mount points, excluded from a root filled from `/`.
fn other_mountpoints(parts: &[Part], me: usize) -> Vec<&'static str> {
    parts
        .iter()
        .enumerate()
        .filter(|(i, p)| *i != me && p.def.designator() != Some(Designator::Root))
        .flat_map(|(_, p)| p.def.designator().map(|d| d.mountpoints()).unwrap_or(&[]).iter().copied())
        .collect()
}

/// Stages the files of partition `i` (see [`populate`]); a staging tree is removed with `temp`.
fn stage(req: &RepartRequest, parts: &[Part], i: usize, staging: &Path, temp: &mut Temp) -> Result<Populated> {
    let def = parts[i].def;
    let spec = PopulateSpec {
        root: &req.root,
        def,
        other_mountpoints: other_mountpoints(parts, i),
        source_date_epoch: req.source_date_epoch,
        hardlinks: def.format.as_deref() != Some("btrfs"),
    };
    let tree = populate::populate(&spec, staging)?;
    if let Populated::Staged(s) = &tree {
        temp.0.push(s.clone());
    }
    Ok(tree)
}

struct Temp(Vec<PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn mkfs_request<'r>(
    req: &'r RepartRequest,
    g: &Geometry,
    p: &'r Part,
    root: Option<&'r Path>,
    output: &'r Path,
    subvolumes: &'r [String],
) -> Result<MkfsRequest<'r>> {
    let format = p.def.format.as_deref().unwrap_or("ext4");
    Ok(MkfsRequest {
        fstype: format,
        label: &p.ids.label,
        uuid: *p.ids.fs_uuid.as_bytes(),
        root,
        output,
        sector_size: g.fs_sector_size,
        discard: true,
        compression: p.def.compression.as_deref(),
        compression_level: p.def.compression_level.as_deref(),
        subvolumes,
        default_subvolume: p.def.default_subvolume.as_deref(),
        extra_options: mkfs_options(&req.environment, format)?,
        source_date_epoch: req.source_date_epoch,
    })
}

/// Builds (or completes) the disk image described by `req`. A new image that could not be
/// finished is removed again.
pub fn make_image(req: &RepartRequest) -> Result<Vec<PartitionResult>> {
    let existed = std::fs::symlink_metadata(&req.output).is_ok();
    let r = make_image_inner(req);
    if r.is_err() && !existed {
        let _ = std::fs::remove_file(&req.output);
    }
    r
}

fn make_image_inner(req: &RepartRequest) -> Result<Vec<PartitionResult>> {
    let g = Geometry::new(req.sector_size);
    let opts = ParseOptions {
        architecture: req.architecture.clone(),
        foreign: req.foreign,
        specifiers: Specifiers { architecture: req.architecture.clone(), root: Some(req.root.clone()) },
        have_signing_key: req.verity_key.is_some() && req.verity_certificate.is_some(),
    };
    let exclude = parse_types(&req.exclude, &req.architecture)?;
    let defer = parse_types(&req.defer, &req.architecture)?;
    let mut defs = definition::read_definitions(&req.definitions, &opts)?;
    defs.retain(|d| !exclude.contains(&d.ptype.uuid));

    let existing_image = std::fs::metadata(&req.output).is_ok_and(|m| m.len() > 0);
    let (disk_uuid, disk_size, on_disk) = if existing_image {
        let mut f = File::options().read(true).write(true).open(&req.output).map_err(io("opening", &req.output))?;
        let ss = req.sector_size.unwrap_or(gpt::probe_sector_size(&mut f).unwrap_or(512));
        let (u, entries) = gpt::read(&mut f, ss)
            .map_err(|e| RepartError::msg(format!("{}: cannot read the partition table: {e}", req.output.display())))?;
        (u, file_size(&req.output)?, entries)
    } else {
        (plan::derive_uuid(req.seed, "disk-uuid"), 0, Vec::new())
    };

    // Partitions already on disk belong to the first definition of their type.
    let mut matched: Vec<Option<gpt::Entry>> = vec![None; defs.len()];
    let mut foreign = Vec::new();
    for e in &on_disk {
        match (0..defs.len()).find(|&i| matched[i].is_none() && defs[i].ptype.uuid == e.type_uuid) {
            Some(i) => matched[i] = Some(e.clone()),
            None => foreign.push(e.clone()),
        }
    }
    let refs: Vec<&Definition> = defs.iter().collect();
    let current: Vec<Option<(Uuid, String)>> =
        matched.iter().map(|m| m.as_ref().map(|e| (e.uuid, e.label.clone()))).collect();
    let ids = plan::acquire_ids(req.seed, &refs, &current);
    let mut parts: Vec<Part> = defs
        .iter()
        .zip(ids)
        .zip(matched)
        .map(|((def, ids), existing)| {
            let uuid = existing.as_ref().map(|e| e.uuid).or(ids.uuid);
            Part {
                def,
                ids,
                deferred: defer.contains(&def.ptype.uuid),
                existing,
                content: None,
                roothash: None,
                placement: None,
                partno: None,
                uuid,
            }
        })
        .collect();

    if req.generate_fstab {
        write_fstab(&req.root, &parts)?;
    }

    let mut temp = Temp(Vec::new());
    let mut spent = vec![std::time::Duration::ZERO; parts.len()];
    let tmpname = |what: &str, i: usize| req.workspace.join(format!("repart-{what}-{i}"));

    // Verity hash partitions of data partitions with a maximum size get a matching minimum.
    let mut hash_min: BTreeMap<usize, u64> = BTreeMap::new();
    for (i, p) in parts.iter().enumerate() {
        if p.def.verity != Verity::Hash || p.existing.is_some() {
            continue;
        }
        let Some(dp) =
            parts.iter().find(|q| q.def.verity == Verity::Data && q.def.verity_match_key == p.def.verity_match_key)
        else {
            continue;
        };
        if let Some(max) = dp.def.size_max {
            let bs = p.def.verity_hash_block_size.unwrap_or(g.fs_sector_size);
            let dbs = p.def.verity_data_block_size.unwrap_or(g.fs_sector_size);
            if let Some(sz) = mkosi_formats::verity::hash_size(max, bs, dbs) {
                if p.def.size_min.is_none() {
                    hash_min.insert(i, sz);
                }
            }
        }
    }

    // Content prepared before placement: CopyBlocks= sources and minimized filesystems.
    for i in 0..parts.len() {
        let started = std::time::Instant::now();
        let p = &parts[i];
        if p.existing.is_some() {
            continue;
        }
        if let Some(CopyBlocks::Path(src)) = &p.def.copy_blocks {
            let path = PathBuf::from(src);
            let size = file_size(&path)?;
            parts[i].content = Some(Content { path, size, temporary: false });
            continue;
        }
        if p.def.format.is_none() || p.def.minimize == Minimize::Off || !p.def.needs_populate() {
            continue;
        }
        crate::log::debug(&format!(
            "Making a minimal {} filesystem for {}",
            p.def.format.as_deref().unwrap_or(""),
            p.def.file_name()
        ));
        let tree = stage(req, &parts, i, &tmpname("tree", i), &mut temp)?;
        let out = tmpname("fs", i);
        temp.0.push(out.clone());
        let subvols: Vec<String> = p.def.subvolumes.iter().map(|(s, _)| s.clone()).collect();
        let r = mkfs_request(req, &g, p, Some(tree.path()), &out, &subvols)?;
        let size = mkfs::make_minimized(&r, g.grain)?;
        populate::remove_staging(&tree)?;
        parts[i].content = Some(Content { path: out, size, temporary: true });
        spent[i] += started.elapsed();
    }
    for i in 0..parts.len() {
        let p = &parts[i];
        if p.existing.is_some() || p.def.verity != Verity::Hash || p.def.minimize == Minimize::Off {
            continue;
        }
        let Some(di) =
            parts.iter().position(|q| q.def.verity == Verity::Data && q.def.verity_match_key == p.def.verity_match_key)
        else {
            continue;
        };
        let Some(data) = parts[di].content.clone() else {
            return Err(RepartError::msg(format!(
                "{}: the verity data partition has no content to hash",
                p.def.path.display()
            )));
        };
        let started = std::time::Instant::now();
        let out = tmpname("verity", i);
        temp.0.push(out.clone());
        let root_hash = verity_hash(req, &g, p, &data.path, data.size, &out)?;
        let size = file_size(&out)?;
        parts[i].content = Some(Content { path: out, size, temporary: true });
        set_verity_uuids(&mut parts, di, i, root_hash);
        spent[i] += started.elapsed();
    }

    // Sizes and placement.
    let cons: Vec<Constraints> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = plan::constraints(&g, p.def, p.content.as_ref().map(|c| c.size));
            if let Some(m) = hash_min.get(&i) {
                c.min_size = c.min_size.max(plan::round_up(*m, g.grain));
                c.max_size = c.max_size.max(c.min_size);
            }
            c
        })
        .collect();
    let new_idx: Vec<usize> = (0..parts.len()).filter(|&i| parts[i].existing.is_none()).collect();
    let new_cons: Vec<Constraints> = new_idx.iter().map(|&i| cons[i]).collect();
    let (disk_size, placements) = if existing_image {
        let used: Vec<(u64, u64)> = on_disk.iter().map(|e| (e.offset, e.size)).collect();
        let areas = plan::free_areas(&g, disk_size, &used);
        let placements = plan::place_into_areas(&g, &areas, &new_cons).ok_or_else(|| {
            let largest = areas.iter().map(|a| a.1).max().unwrap_or(0);
            RepartError::msg(format!(
                "Can't fit requested partitions into available free space ({largest} bytes), refusing."
            ))
        })?;
        (disk_size, placements)
    } else {
        plan::place_new(&g, &new_cons)
    };
    let mut used_partnos: Vec<u32> = on_disk.iter().map(|e| e.partno).collect();
    for (k, &i) in new_idx.iter().enumerate() {
        parts[i].placement = Some(placements[k]);
        let mut n = 0;
        while used_partnos.contains(&n) {
            n += 1;
        }
        used_partnos.push(n);
        parts[i].partno = Some(n);
    }
    for p in parts.iter_mut() {
        if let Some(e) = &p.existing {
            p.partno = Some(e.partno);
            p.placement = Some(Placement { offset: e.offset, size: e.size, padding: 0 });
        }
    }

    // The image file.
    let file = if existing_image {
        File::options().read(true).write(true).open(&req.output).map_err(io("opening", &req.output))?
    } else {
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&req.output)
            .map_err(io("creating", &req.output))?;
        f.set_len(disk_size).map_err(io("resizing", &req.output))?;
        f
    };

    // Format and copy every new partition that is not deferred.
    for i in 0..parts.len() {
        let p = &parts[i];
        if p.existing.is_some() || p.deferred {
            continue;
        }
        let Some(pl) = p.placement else { continue };
        if p.def.verity == Verity::Signature {
            continue; // written once the hashes are known
        }
        if p.def.verity == Verity::Hash && p.content.is_none() {
            continue; // computed from its data partition below
        }
        let started = std::time::Instant::now();
        let content = match &p.content {
            Some(c) => c.clone(),
            None => match &p.def.format {
                None => continue, // an empty partition
                Some(format) => {
                    crate::log::debug(&format!("Formatting {} ({format})", p.def.file_name()));
                    let out = tmpname("fs", i);
                    temp.0.push(out.clone());
                    let f = File::create(&out).map_err(io("creating", &out))?;
                    f.set_len(pl.size).map_err(io("resizing", &out))?;
                    drop(f);
                    let mut tree = None;
                    if p.def.needs_populate() {
                        tree = Some(stage(req, &parts, i, &tmpname("tree", i), &mut temp)?);
                    }
                    let subvols: Vec<String> = p.def.subvolumes.iter().map(|(s, _)| s.clone()).collect();
                    let r = mkfs_request(req, &g, p, tree.as_ref().map(|t| t.path()), &out, &subvols)?;
                    mkfs::make_filesystem(&r)?;
                    if let Some(t) = &tree {
                        populate::remove_staging(t)?;
                    }
                    Content { path: out, size: pl.size, temporary: true }
                }
            },
        };
        if content.size > pl.size {
            return Err(RepartError::msg(format!(
                "{}: the content ({} bytes) does not fit the partition ({} bytes)",
                p.def.file_name(),
                content.size,
                pl.size
            )));
        }
        copy_into(&content.path, &file, pl.offset, content.size)?;

        // A data partition's hash partition, when it was not prepared already.
        if p.def.verity == Verity::Data {
            if let Some(hi) = parts.iter().position(|q| {
                q.def.verity == Verity::Hash
                    && q.def.verity_match_key == p.def.verity_match_key
                    && q.content.is_none()
                    && q.existing.is_none()
                    && !q.deferred
            }) {
                let out = tmpname("verity", hi);
                temp.0.push(out.clone());
                let root_hash = verity_hash(req, &g, &parts[hi], &content.path, content.size, &out)?;
                let size = file_size(&out)?;
                let hpl = parts[hi].placement.unwrap_or(Placement { offset: 0, size: 0, padding: 0 });
                if size > hpl.size {
                    return Err(RepartError::msg(format!(
                        "Verity hash data does not fit in partition {} with size {} bytes",
                        parts[hi].def.file_name(),
                        hpl.size
                    )));
                }
                copy_into(&out, &file, hpl.offset, size)?;
                parts[hi].content = Some(Content { path: out, size, temporary: true });
                set_verity_uuids(&mut parts, i, hi, root_hash);
            }
        }
        if content.temporary {
            let _ = std::fs::remove_file(&content.path);
        }
        spent[i] += started.elapsed();
    }

    // Minimized hash partitions prepared before placement still need copying.
    for p in parts.iter() {
        if p.existing.is_some() || p.deferred || p.def.verity != Verity::Hash || p.def.minimize == Minimize::Off {
            continue;
        }
        if let (Some(c), Some(pl)) = (&p.content, p.placement) {
            if c.path.exists() {
                copy_into(&c.path, &file, pl.offset, c.size)?;
            }
        }
    }

    // Verity signatures.
    for i in 0..parts.len() {
        let p = &parts[i];
        if p.def.verity != Verity::Signature || p.existing.is_some() || p.deferred {
            continue;
        }
        let Some(hash) = parts
            .iter()
            .find(|q| q.def.verity == Verity::Hash && q.def.verity_match_key == p.def.verity_match_key)
            .and_then(|q| q.roothash)
        else {
            return Err(RepartError::msg(format!(
                "{}: no verity root hash to sign (is the hash partition deferred?)",
                p.def.file_name()
            )));
        };
        let (Some(key), Some(cert)) = (&req.verity_key, &req.verity_certificate) else {
            return Err(RepartError::msg("verity signature partition requested but no key and certificate given"));
        };
        let signer = super::verity_sig::VeritySigner {
            certificate: cert,
            certificate_source: req.verity_certificate_source,
            key,
            key_source: req.verity_key_source,
            sandbox: None,
        };
        let mut data = super::verity_sig::verity_sig_content(&hash, &signer)?;
        let pl = p.placement.unwrap_or(Placement { offset: 0, size: 0, padding: 0 });
        if data.len() as u64 > pl.size {
            return Err(RepartError::msg("Verity signature too long for partition."));
        }
        data.resize(pl.size as usize, 0);
        use std::os::unix::fs::FileExt;
        file.write_all_at(&data, pl.offset).map_err(io("writing", &req.output))?;
    }

    // The partition table: everything on disk before, plus what we wrote now.
    let mut entries: Vec<gpt::Entry> = foreign.clone();
    for p in &parts {
        if p.deferred && p.existing.is_none() {
            continue;
        }
        let (Some(pl), Some(partno)) = (p.placement, p.partno) else { continue };
        if let Some(e) = &p.existing {
            entries.push(e.clone());
            continue;
        }
        entries.push(gpt::Entry {
            partno,
            type_uuid: p.def.ptype.uuid,
            uuid: p.uuid.unwrap_or(p.ids.base_uuid),
            offset: pl.offset,
            size: pl.size,
            label: p.ids.label.clone(),
            flags: p.def.gpt_flags(),
        });
    }
    entries.sort_by_key(|e| e.partno);
    let ss = req.sector_size.unwrap_or(512);
    let mut f = file;
    gpt::write(&mut f, ss, disk_uuid, &entries)
        .map_err(|e| RepartError::msg(format!("{}: writing the partition table: {e}", req.output.display())))?;

    // Results and split files.
    let mut results = Vec::new();
    for (p, elapsed) in parts.iter().zip(spent) {
        let (Some(pl), Some(partno)) = (p.placement, p.partno) else { continue };
        let uuid = p.uuid.unwrap_or(p.ids.base_uuid);
        let roothash = if p.def.verity != Verity::Off {
            let h = if p.def.verity == Verity::Hash {
                p.roothash
            } else {
                parts
                    .iter()
                    .find(|q| q.def.verity == Verity::Hash && q.def.verity_match_key == p.def.verity_match_key)
                    .and_then(|q| q.roothash)
            };
            Some(h.map(|h| hex(&h)).unwrap_or_else(|| "TBD".into()))
        } else {
            None
        };
        results.push(PartitionResult {
            type_name: p.def.ptype.display_name(),
            type_uuid: p.def.ptype.uuid,
            label: p.ids.label.clone(),
            uuid,
            partno,
            file: p.def.file_name(),
            offset: pl.offset,
            size: pl.size,
            padding: pl.padding,
            activity: if p.existing.is_some() { "unchanged" } else { "create" },
            roothash,
            split_path: None,
            deferred: p.deferred,
            elapsed,
        });
        if crate::log::timing() && !p.deferred && p.existing.is_none() {
            crate::log::info(&format!(
                "‣  Partition {} ({}, {} bytes) took {:.3}s",
                partno + 1,
                p.ids.label,
                pl.size,
                elapsed.as_secs_f64()
            ));
        }
    }
    if req.split {
        split(req, &parts, &mut results, &f)?;
    }
    drop(temp);
    Ok(results)
}

fn set_verity_uuids(parts: &mut [Part], data: usize, hash: usize, root_hash: [u8; 32]) {
    let mut first = [0u8; 16];
    first.copy_from_slice(&root_hash[..16]);
    let mut last = [0u8; 16];
    last.copy_from_slice(&root_hash[16..]);
    if parts[data].uuid.is_none() {
        parts[data].uuid = Some(Uuid::from_bytes(first));
    }
    if parts[hash].uuid.is_none() {
        parts[hash].uuid = Some(Uuid::from_bytes(last));
    }
    parts[hash].roothash = Some(root_hash);
    parts[data].roothash = Some(root_hash);
}

fn verity_hash(
    req: &RepartRequest,
    g: &Geometry,
    p: &Part,
    data: &Path,
    data_size: u64,
    out: &Path,
) -> Result<[u8; 32]> {
    let params = mkosi_formats::verity::VerityParams {
        data_block_size: p.def.verity_data_block_size.unwrap_or(g.fs_sector_size),
        hash_block_size: p.def.verity_hash_block_size.unwrap_or(g.fs_sector_size),
        salt: p.ids.verity_salt.to_vec(),
        uuid: *p.ids.verity_uuid.as_bytes(),
        hash: Default::default(),
    };
    let _ = req;
    let data = File::open(data).map_err(io("opening", data))?;
    let mut hash =
        File::options().read(true).write(true).create(true).truncate(true).open(out).map_err(io("creating", out))?;
    mkosi_formats::verity::format(&data, data_size, &mut hash, &params)
        .map_err(|e| RepartError::msg(format!("{}: computing the verity hash tree: {e}", p.def.file_name())))
}

/// Resolves `SplitName=` specifiers (`%t %T %U %n` and the system ones).
fn split_name(req: &RepartRequest, p: &PartitionResult, format: &str) -> Result<String> {
    let mut out = String::new();
    let mut chars = format.chars();
    let spec = Specifiers { architecture: req.architecture.clone(), root: Some(req.root.clone()) };
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push_str(&p.type_name),
            Some('T') => out.push_str(&p.type_uuid.simple().to_string()),
            Some('U') => out.push_str(&p.uuid.simple().to_string()),
            Some('n') => out.push_str(&p.partno.to_string()),
            Some(o) => out.push_str(
                &spec.expand(&format!("%{o}")).map_err(|e| RepartError::msg(format!("SplitName={format}: {e}")))?,
            ),
            None => return Err(RepartError::msg(format!("SplitName={format}: trailing '%'"))),
        }
    }
    Ok(out)
}

fn split(req: &RepartRequest, parts: &[Part], results: &mut [PartitionResult], image: &File) -> Result<()> {
    let name = req.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (base, ext) = match name.strip_suffix(".raw") {
        Some(b) => (b.to_string(), ".raw"),
        None => (name.clone(), ""),
    };
    let dir = req.output.parent().unwrap_or(Path::new("."));
    let mut seen = Vec::new();
    for (p, r) in parts.iter().zip(results.iter_mut()) {
        let Some(fmt) = &p.def.split_name else { continue };
        let resolved = split_name(req, r, fmt)?;
        let path = dir.join(format!("{base}.{resolved}{ext}"));
        if seen.contains(&path) {
            return Err(RepartError::msg(format!(
                "{} has the same resolved split name \"{}\" as another partition, refusing.",
                p.def.path.display(),
                path.display()
            )));
        }
        seen.push(path.clone());
        r.split_path = Some(path);
    }
    for r in results.iter() {
        let Some(path) = &r.split_path else { continue };
        if r.deferred {
            continue;
        }
        let out = File::options().write(true).create_new(true).open(path).map_err(io("creating", path))?;
        out.set_len(r.size).map_err(io("resizing", path))?;
        copy_range(image, r.offset, &out, r.size).map_err(io("writing", path))?;
    }
    Ok(())
}

/// Copies `len` bytes from `src` at `offset` to the start of `dst`, skipping holes.
fn copy_range(src: &File, offset: u64, dst: &File, len: u64) -> std::io::Result<()> {
    let sfd = src.as_raw_fd();
    let dfd = dst.as_raw_fd();
    let end = (offset + len) as i64;
    let mut pos = offset as i64;
    while pos < end {
        // SAFETY: lseek on a valid fd.
        let data = unsafe { libc::lseek(sfd, pos, libc::SEEK_DATA) };
        if data < 0 || data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(sfd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        let mut off_in: libc::loff_t = data;
        let mut off_out: libc::loff_t = data - offset as i64;
        let mut left = (hole - data) as usize;
        while left > 0 {
            // SAFETY: copy_file_range between valid fds with explicit offsets.
            let n = unsafe { libc::copy_file_range(sfd, &mut off_in, dfd, &mut off_out, left, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                break;
            }
            left -= n as usize;
        }
        pos = hole;
    }
    Ok(())
}

/// The partitions of an existing image, like `systemd-repart --json=short <image>` lists them
/// (used by the verbs that boot or burn an image).
pub fn read_partitions(image: &Path) -> Result<Vec<PartitionResult>> {
    let mut f = File::open(image).map_err(io("opening", image))?;
    let ss = gpt::probe_sector_size(&mut f).map_err(|e| RepartError::msg(format!("{}: {e}", image.display())))?;
    let (_, entries) = gpt::read(&mut f, ss).map_err(|e| RepartError::msg(format!("{}: {e}", image.display())))?;
    Ok(entries
        .into_iter()
        .map(|e| {
            let t = PartitionType::from_uuid(e.type_uuid);
            PartitionResult {
                type_name: t.display_name(),
                type_uuid: e.type_uuid,
                label: e.label,
                uuid: e.uuid,
                partno: e.partno,
                file: String::new(),
                offset: e.offset,
                size: e.size,
                padding: 0,
                activity: "unchanged",
                roothash: None,
                split_path: None,
                deferred: false,
                elapsed: std::time::Duration::ZERO,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_lines() {
        let u = Uuid::parse_str("0a1b2c3d-0000-4000-8000-000000000000").unwrap();
        assert_eq!(fstab_what("vfat", u), "UUID=0A1B-2C3D");
        assert_eq!(fstab_what("ext4", u), "UUID=0a1b2c3d-0000-4000-8000-000000000000");
        assert_eq!(mount_options(Some(Designator::Root), "ext4", true), "discard,rw,nodev,suid,exec");
        assert_eq!(
            mount_options(Some(Designator::Esp), "vfat", false),
            "umask=0077,rw,nodev,nosuid,noexec,nosymfollow"
        );
        assert_eq!(mount_options(Some(Designator::Usr), "erofs", true), "rw,nodev,suid,exec");
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        {
            use std::os::unix::fs::FileExt;
            let f = File::create(&src).unwrap();
            f.set_len(8 << 20).unwrap();
            f.write_all_at(b"hello", 4096).unwrap();
            f.write_all_at(b"world", 6 << 20).unwrap();
        }
        let dst =
            File::options().read(true).write(true).create(true).truncate(true).open(t.path().join("dst")).unwrap();
        dst.set_len(16 << 20).unwrap();
        copy_into(&src, &dst, 1 << 20, 8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 5];
        dst.read_exact_at(&mut buf, (1 << 20) + 4096).unwrap();
        assert_eq!(&buf, b"hello");
        dst.read_exact_at(&mut buf, (1 << 20) + (6 << 20)).unwrap();
        assert_eq!(&buf, b"world");
    }
}
