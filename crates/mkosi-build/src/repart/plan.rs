//! Deciding sizes, offsets, UUIDs and labels of partitions — pure functions, no I/O.
//!
//! The rules are systemd-repart's for a new image with `--size=auto`: every partition gets its
//! minimal size (from `SizeMinBytes=`, the filesystem's minimum or the minimized filesystem),
//! the disk is exactly as large as the partitions, their padding and the GPT need, and partitions
//! follow each other from 1 MiB on, aligned to the grain (4 KiB or the sector size). When free
//! space is left in an area (the second pass over an existing image fills the gaps left for
//! deferred partitions), it is shared by weight like repart does.
//!
//! UUIDs are derived from the seed with HMAC-SHA256 exactly like repart, so images are
//! reproducible and identical to upstream's partition tables.

use hmac::{Hmac, Mac};
use mkosi_formats::gpt::{self, Designator};
use sha2::Sha256;
use uuid::Uuid;

use super::definition::{Definition, UuidSetting, Verity};
use super::mkfs;

/// repart's hard lower limit for a new partition.
pub const HARD_MIN_SIZE: u64 = 4096;
/// The fixed size of verity signature partitions.
pub const VERITY_SIG_SIZE: u64 = HARD_MIN_SIZE * 4;
/// The default `SizeMinBytes=` of writable filesystems.
pub const DEFAULT_MIN_SIZE: u64 = 10 * 1024 * 1024;

/// Sector and alignment sizes of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The GPT sector size (`SectorSize=`, else 512).
    pub sector_size: u64,
    /// Partitions start and end at multiples of this (4096, or the sector size if larger).
    pub grain: u64,
    /// The sector size filesystems are made for (`SectorSize=`, else 4096).
    pub fs_sector_size: u64,
}

impl Geometry {
    pub fn new(sector_size: Option<u64>) -> Geometry {
        let ss = sector_size.unwrap_or(512);
        Geometry { sector_size: ss, grain: ss.max(4096), fs_sector_size: sector_size.unwrap_or(4096) }
    }
}

pub fn round_up(v: u64, p: u64) -> u64 {
    v.div_ceil(p).saturating_mul(p)
}

pub fn round_down(v: u64, p: u64) -> u64 {
    v / p * p
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().into()
}

fn v4(bytes: &[u8]) -> Uuid {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid::from_bytes(b)
}

/// repart's `derive_uuid`: HMAC-SHA256 of `token` keyed by `base`, made a v4 UUID.
pub fn derive_uuid(base: Uuid, token: &str) -> Uuid {
    v4(&hmac_sha256(base.as_bytes(), token.as_bytes()))
}

/// The verity salt repart derives from the seed.
pub fn derive_salt(seed: Uuid, token: &str) -> [u8; 32] {
    hmac_sha256(seed.as_bytes(), token.as_bytes())
}

/// The UUID of the `instance`-th (0-based) partition of a type, derived from the seed.
pub fn partition_uuid(seed: Uuid, type_uuid: Uuid, instance: u64) -> Uuid {
    let mut plain = type_uuid.as_bytes().to_vec();
    if instance > 0 {
        plain.extend_from_slice(&instance.to_le_bytes());
    }
    v4(&hmac_sha256(seed.as_bytes(), &plain))
}

/// The identities of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// The partition UUID if already known (verity data and hash partitions get theirs from
    /// the root hash).
    pub uuid: Option<Uuid>,
    /// The UUID the others are derived from (the partition UUID, or what it would have been).
    pub base_uuid: Uuid,
    pub fs_uuid: Uuid,
    pub label: String,
    pub verity_salt: [u8; 32],
    pub verity_uuid: Uuid,
}

/// UUIDs and labels for `defs` in order, like repart's `context_acquire_partition_uuids_and_labels`.
/// `existing` gives the UUID and label of partitions already on disk (pass two), by index.
pub fn acquire_ids(seed: Uuid, defs: &[&Definition], existing: &[Option<(Uuid, String)>]) -> Vec<Ids> {
    let mut out: Vec<Ids> = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let current = existing.get(i).cloned().flatten();
        let (uuid, base) = if let Some((u, _)) = &current {
            (Some(*u), *u)
        } else if let UuidSetting::Given(u) = d.uuid {
            (Some(u), u)
        } else {
            let k = defs[..i].iter().filter(|q| q.ptype.uuid == d.ptype.uuid).count() as u64;
            let mut u = partition_uuid(seed, d.ptype.uuid, k);
            if out.iter().any(|o| o.uuid == Some(u)) {
                u = Uuid::new_v4();
            }
            let final_uuid = (!matches!(d.verity, Verity::Data | Verity::Hash)).then_some(u);
            (final_uuid, u)
        };
        let label = match (&current, &d.label) {
            (Some((_, l)), _) if !l.is_empty() => l.clone(),
            (_, Some(l)) => l.clone(),
            _ => {
                let prefix = d.ptype.name.map(String::from).unwrap_or_else(|| {
                    if d.ptype.designator.is_some() {
                        d.ptype.display_name()
                    } else {
                        "linux".to_string()
                    }
                });
                let mut label = prefix.clone();
                let mut k = 1;
                while out[..i].iter().any(|o| o.label == label) {
                    k += 1;
                    label = format!("{prefix}-{k}");
                }
                label
            }
        };
        out.push(Ids {
            uuid,
            base_uuid: base,
            fs_uuid: derive_uuid(base, "file-system-uuid"),
            label,
            verity_salt: derive_salt(seed, "verity-salt"),
            verity_uuid: derive_uuid(seed, "verity-uuid"),
        });
    }
    out
}

/// Size constraints of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constraints {
    pub min_size: u64,
    pub max_size: u64,
    pub min_padding: u64,
    pub max_padding: u64,
    pub weight: u64,
    pub padding_weight: u64,
}

/// repart's `partition_min_size`/`partition_max_size` for a new partition. `content_size` is the
/// size of a prepared image (minimized filesystem, verity hash, `CopyBlocks=` source).
pub fn constraints(g: &Geometry, d: &Definition, content_size: Option<u64>) -> Constraints {
    let min_size = if d.designator().is_some_and(Designator::is_verity_sig) {
        VERITY_SIG_SIZE
    } else {
        let mut need = 0;
        if let Some(c) = content_size {
            need += round_up(c, g.grain);
        } else if let Some(f) = &d.format {
            need += match mkfs::minimal_size_by_fs_name(f) {
                Some(m) => round_up(m, g.grain),
                None => g.grain,
            };
        }
        let sz = HARD_MIN_SIZE.max(need);
        let configured =
            d.size_min.unwrap_or(if d.format.as_deref().is_some_and(mkfs::fstype_is_ro) || d.verity != Verity::Off {
                1
            } else {
                DEFAULT_MIN_SIZE
            });
        round_up(configured, g.grain).max(sz)
    };
    let max_size = if d.verity == Verity::Signature {
        VERITY_SIG_SIZE
    } else {
        match d.size_max {
            None => u64::MAX,
            Some(m) => round_down(m, g.grain).max(min_size),
        }
    };
    Constraints {
        min_size,
        max_size,
        min_padding: d.padding_min.unwrap_or(0),
        max_padding: d.padding_max.unwrap_or(u64::MAX),
        weight: d.weight as u64,
        padding_weight: d.padding_weight as u64,
    }
}

impl Constraints {
    pub fn min_with_padding(&self, g: &Geometry) -> u64 {
        round_up(self.min_size + self.min_padding, g.grain)
    }
}

/// Size of a new image holding partitions with these constraints (`--size=auto`).
pub fn auto_size(g: &Geometry, parts: &[Constraints]) -> u64 {
    round_up(gpt::METADATA_SIZE, 4096) + parts.iter().map(|c| c.min_with_padding(g)).sum::<u64>()
}

fn scale_by_weight(value: u64, weight: u64, weight_sum: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    if weight == weight_sum {
        return value;
    }
    (value as u128 * weight as u128 / weight_sum as u128) as u64
}

fn charge(g: &Geometry, total: u64, amount: u64) -> u64 {
    total.saturating_sub(round_up(amount, g.grain))
}

/// Sizes and paddings for the partitions sharing one free area of `span` bytes, by repart's
/// weight rules (partitions that need more than their share get their minimum, those that accept
/// less get their maximum, the rest is shared by weight; left-overs go to whoever can take them,
/// finally to the padding of the last partition).
pub fn grow(g: &Geometry, span: u64, parts: &[Constraints]) -> Vec<(u64, u64)> {
    let mut size: Vec<Option<u64>> = vec![None; parts.len()];
    let mut pad: Vec<Option<u64>> = vec![None; parts.len()];
    let mut span = span;
    let mut weight_sum: u64 = parts.iter().map(|c| c.weight + c.padding_weight).sum();
    #[derive(PartialEq)]
    enum Phase {
        Overcharge,
        Undercharge,
        Distribute,
    }
    for phase in [Phase::Overcharge, Phase::Undercharge, Phase::Distribute] {
        loop {
            let mut again = false;
            for (i, c) in parts.iter().enumerate() {
                if size[i].is_none() {
                    let share = scale_by_weight(span, c.weight, weight_sum);
                    let set = match phase {
                        Phase::Overcharge if c.min_size > share => {
                            again = true;
                            Some(c.min_size)
                        }
                        Phase::Undercharge if c.max_size < share => {
                            again = true;
                            Some(c.max_size)
                        }
                        Phase::Distribute => Some(round_down(share, g.grain).clamp(c.min_size, c.max_size)),
                        _ => None,
                    };
                    if let Some(s) = set {
                        size[i] = Some(s);
                        span = charge(g, span, s);
                        weight_sum -= c.weight;
                    }
                }
                if pad[i].is_none() {
                    let share = scale_by_weight(span, c.padding_weight, weight_sum);
                    let set = match phase {
                        Phase::Overcharge if c.min_padding > share => {
                            again = true;
                            Some(c.min_padding)
                        }
                        Phase::Undercharge if c.max_padding < share => {
                            again = true;
                            Some(c.max_padding)
                        }
                        Phase::Distribute => Some(round_down(share, g.grain).clamp(c.min_padding, c.max_padding)),
                        _ => None,
                    };
                    if let Some(s) = set {
                        pad[i] = Some(s);
                        span = charge(g, span, s);
                        weight_sum -= c.padding_weight;
                    }
                }
            }
            if !again {
                break;
            }
        }
    }
    let mut out: Vec<(u64, u64)> = size.into_iter().zip(pad).map(|(s, p)| (s.unwrap_or(0), p.unwrap_or(0))).collect();
    for (i, c) in parts.iter().enumerate() {
        if span == 0 {
            break;
        }
        let cur = out[i].0;
        let m = round_down(cur + span, g.grain).max(cur).min(c.max_size);
        span = charge(g, span, m - cur);
        out[i].0 = m;
    }
    if span > 0 {
        if let Some(last) = out.last_mut() {
            last.1 += span;
        }
    }
    out
}

/// Where a partition goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub offset: u64,
    pub size: u64,
    pub padding: u64,
}

/// Lays out partitions on a new disk of [`auto_size`] bytes: in order from 1 MiB on.
pub fn place_new(g: &Geometry, parts: &[Constraints]) -> (u64, Vec<Placement>) {
    let disk = auto_size(g, parts);
    let start = round_up(gpt::first_usable_byte(g.sector_size), g.grain);
    let end = round_down(gpt::last_usable_end(disk, g.sector_size), g.grain);
    let sizes = grow(g, end - start, parts);
    let mut offset = start;
    let mut out = Vec::new();
    for (size, padding) in sizes {
        out.push(Placement { offset, size, padding });
        offset += size + padding;
    }
    (disk, out)
}

/// A free area of an existing disk: `(offset, size)`.
pub fn free_areas(g: &Geometry, disk: u64, used: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut used = used.to_vec();
    used.sort();
    let mut areas = Vec::new();
    let mut pos = round_up(gpt::first_usable_byte(g.sector_size), g.grain);
    let end = round_down(gpt::last_usable_end(disk, g.sector_size), g.grain);
    for (o, s) in used {
        if o > pos {
            areas.push((pos, round_down(o, g.grain) - pos));
        }
        pos = pos.max(round_up(o + s, g.grain));
    }
    if end > pos {
        areas.push((pos, end - pos));
    }
    areas.retain(|(_, s)| *s > 0);
    areas
}

/// Places new partitions into the free areas of an existing disk: first fit over the areas
/// sorted by size (smallest first), then each area is shared by weight. `None` if they do not fit.
pub fn place_into_areas(g: &Geometry, areas: &[(u64, u64)], parts: &[Constraints]) -> Option<Vec<Placement>> {
    let mut order: Vec<usize> = (0..areas.len()).collect();
    order.sort_by_key(|&i| (areas[i].1, areas[i].0));
    let mut allocated = vec![0u64; areas.len()];
    let mut assigned = Vec::new();
    for c in parts {
        let need = c.min_with_padding(g);
        let a = order.iter().copied().find(|&i| areas[i].1 - allocated[i] >= need)?;
        allocated[a] += need;
        assigned.push(a);
    }
    let mut out = vec![Placement { offset: 0, size: 0, padding: 0 }; parts.len()];
    for (ai, &(start, size)) in areas.iter().enumerate() {
        let members: Vec<usize> = (0..parts.len()).filter(|&i| assigned[i] == ai).collect();
        if members.is_empty() {
            continue;
        }
        let cs: Vec<Constraints> = members.iter().map(|&i| parts[i]).collect();
        let sizes = grow(g, size, &cs);
        let mut offset = start;
        for (k, &i) in members.iter().enumerate() {
            out[i] = Placement { offset, size: sizes[k].0, padding: sizes[k].1 };
            offset += sizes[k].0 + sizes[k].1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repart::definition::{read_definitions, ParseOptions, Specifiers};
    use uuid::uuid;

    const SEED: Uuid = uuid!("01234567-89ab-cdef-0123-456789abcdef");

    fn defs(files: &[(&str, &str)]) -> Vec<Definition> {
        let dir = tempfile::tempdir().unwrap();
        for (n, t) in files {
            std::fs::write(dir.path().join(n), t).unwrap();
        }
        let opts = ParseOptions {
            architecture: "x86-64".into(),
            foreign: false,
            specifiers: Specifiers::default(),
            have_signing_key: true,
        };
        read_definitions(&[dir.path().to_path_buf()], &opts).unwrap()
    }

    /// Checked against systemd-repart 252 on this machine with the same seed and definitions
    /// (`systemd-repart --empty=create --size=auto --seed=0123456789abcdef0123456789abcdef`).
    #[test]
    fn same_layout_and_uuids_as_systemd_repart() {
        let d = defs(&[
            ("00-esp.conf", "[Partition]\nType=esp\nSizeMinBytes=20M\nSizeMaxBytes=20M\n"),
            ("10-root.conf", "[Partition]\nType=root\nSizeMinBytes=30M\n"),
            (
                "20-swap.conf",
                "[Partition]\nType=swap\nLabel=myswap\nSizeMinBytes=5M\nSizeMaxBytes=5M\nPaddingMinBytes=1M\n",
            ),
        ]);
        let refs: Vec<&Definition> = d.iter().collect();
        let ids = acquire_ids(SEED, &refs, &[]);
        assert_eq!(derive_uuid(SEED, "disk-uuid"), uuid!("6913f4b6-6690-4a57-a202-f1b53c56dbdf"));
        assert_eq!(ids[0].uuid, Some(uuid!("b2d552b0-45db-4678-b34f-066168609d1a")));
        assert_eq!(ids[1].uuid, Some(uuid!("9e90c9c3-c7e8-44f2-bf19-9ae2689de795")));
        assert_eq!(ids[2].uuid, Some(uuid!("ee4c2391-c423-44cf-8019-444f4561b526")));
        assert_eq!(ids.iter().map(|i| i.label.as_str()).collect::<Vec<_>>(), vec!["esp", "root-x86-64", "myswap"]);
        let g = Geometry::new(None);
        let cs: Vec<Constraints> = d.iter().map(|d| constraints(&g, d, None)).collect();
        let (disk, p) = place_new(&g, &cs);
        assert_eq!(disk, 59789312);
        assert_eq!(
            p.iter().map(|p| (p.offset, p.size, p.padding)).collect::<Vec<_>>(),
            vec![(1048576, 20971520, 0), (22020096, 31457280, 0), (53477376, 5242880, 1048576)]
        );
    }

    #[test]
    fn labels_and_uuids_of_repeated_types() {
        let d = defs(&[
            ("10-a.conf", "[Partition]\nType=linux-generic\n"),
            ("20-b.conf", "[Partition]\nType=linux-generic\n"),
            ("30-c.conf", "[Partition]\nType=21686148-6449-6e6f-744e-656564454649\n"),
            ("40-d.conf", "[Partition]\nType=root\nUUID=00000000-0000-0000-0000-000000000042\n"),
        ]);
        let refs: Vec<&Definition> = d.iter().collect();
        let ids = acquire_ids(SEED, &refs, &[]);
        assert_eq!(
            ids.iter().map(|i| i.label.as_str()).collect::<Vec<_>>(),
            vec!["linux-generic", "linux-generic-2", "linux", "root-x86-64"]
        );
        assert_ne!(ids[0].uuid, ids[1].uuid);
        assert_eq!(ids[1].uuid, Some(partition_uuid(SEED, d[1].ptype.uuid, 1)));
        assert_eq!(ids[3].uuid, Some(uuid!("00000000-0000-0000-0000-000000000042")));
        assert_eq!(ids[3].fs_uuid, derive_uuid(uuid!("00000000-0000-0000-0000-000000000042"), "file-system-uuid"));
    }

    #[test]
    fn verity_partitions_get_their_uuid_later() {
        let d = defs(&[
            ("10-root.conf", "[Partition]\nType=root\nFormat=erofs\nCopyFiles=/usr\nVerity=data\nVerityMatchKey=r\n"),
            ("20-hash.conf", "[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=r\n"),
            ("30-sig.conf", "[Partition]\nType=root-verity-sig\nVerity=signature\nVerityMatchKey=r\n"),
        ]);
        let refs: Vec<&Definition> = d.iter().collect();
        let ids = acquire_ids(SEED, &refs, &[]);
        assert_eq!(ids[0].uuid, None);
        assert_eq!(ids[1].uuid, None);
        assert!(ids[2].uuid.is_some());
        let g = Geometry::new(None);
        assert_eq!(constraints(&g, &d[2], None).min_size, VERITY_SIG_SIZE);
        assert_eq!(constraints(&g, &d[2], None).max_size, VERITY_SIG_SIZE);
        // Read-only and verity partitions have no 10M default minimum.
        assert_eq!(constraints(&g, &d[0], Some(5000)).min_size, 8192);
        assert_eq!(constraints(&g, &d[1], Some(4096)).min_size, 4096);
    }

    #[test]
    fn sector_size_4096() {
        let g = Geometry::new(Some(4096));
        assert_eq!(g.fs_sector_size, 4096);
        let d = defs(&[("10-root.conf", "[Partition]\nType=root\nSizeMinBytes=8M\nSizeMaxBytes=8M\n")]);
        let (disk, p) = place_new(&g, &[constraints(&g, &d[0], None)]);
        assert_eq!(p[0].offset, 1 << 20);
        assert_eq!(disk, 1044 * 1024 + (8 << 20));
        assert!(p[0].offset + p[0].size <= gpt::last_usable_end(disk, 4096));
    }

    #[test]
    fn growing_by_weight() {
        let g = Geometry::new(None);
        let c = |min, max, w| Constraints {
            min_size: min,
            max_size: max,
            min_padding: 0,
            max_padding: u64::MAX,
            weight: w,
            padding_weight: 0,
        };
        // Two equal weights share 100M; a capped one gives the rest to the other.
        let mb = 1 << 20;
        assert_eq!(
            grow(&g, 100 * mb, &[c(mb, u64::MAX, 1000), c(mb, u64::MAX, 1000)]),
            vec![(50 * mb, 0), (50 * mb, 0)]
        );
        assert_eq!(
            grow(&g, 100 * mb, &[c(mb, 10 * mb, 1000), c(mb, u64::MAX, 1000)]),
            vec![(10 * mb, 0), (90 * mb, 0)]
        );
        assert_eq!(
            grow(&g, 100 * mb, &[c(60 * mb, u64::MAX, 1000), c(mb, u64::MAX, 3000)]),
            vec![(60 * mb, 0), (40 * mb, 0)]
        );
        // Nobody can take it: it becomes padding.
        assert_eq!(grow(&g, 100 * mb, &[c(mb, 10 * mb, 1000)]), vec![(10 * mb, 90 * mb)]);
    }

    #[test]
    fn filling_gaps_of_an_existing_disk() {
        let g = Geometry::new(None);
        let mb = 1 << 20;
        let disk = 600 * mb;
        let areas = free_areas(&g, disk, &[(513 * mb, 50 * mb)]);
        assert_eq!(areas[0], (mb, 512 * mb));
        let esp = Constraints {
            min_size: 512 * mb,
            max_size: 512 * mb,
            min_padding: 0,
            max_padding: u64::MAX,
            weight: 1000,
            padding_weight: 0,
        };
        let p = place_into_areas(&g, &areas, &[esp]).unwrap();
        assert_eq!(p[0], Placement { offset: mb, size: 512 * mb, padding: 0 });
        let too_big = Constraints { min_size: 1024 * mb, ..esp };
        assert!(place_into_areas(&g, &areas, &[too_big]).is_none());
    }
}
