//! dm-verity hash trees, written the way `veritysetup format` writes them.
//!
//! The hash device starts with a 512-byte superblock (version 1, hash type 1),
//! which takes up a whole hash block. The tree follows, one level after the
//! other, the level with the single top block first and the level hashing the
//! data blocks last. Every hash is `sha256(salt || block)`; a hash block holds
//! as many digests as fit (rounded down to a power of two), zero filled after
//! the last one. The root hash is the hash of the top block, or of the only
//! data block when there is just one (then the tree is empty).
//!
//! [`hash_size`] is the size systemd-repart reserves for a hash partition,
//! [`hash_device_size`] the size of what [`format`] actually writes.

use std::fs::File;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

const DIGEST_SIZE: usize = 32;
/// Size of the on-disk superblock; it occupies the first hash block.
pub const SUPERBLOCK_SIZE: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
const MAX_SALT_SIZE: usize = 256;
/// How much data each hashing thread reads at once.
const READ_CHUNK: usize = 4 << 20;
/// How many bytes of finished hash blocks a thread collects before writing them.
const WRITE_BATCH: usize = 1 << 20;
/// Below this much data, hashing runs on the calling thread only.
const PARALLEL_THRESHOLD: u64 = 8 << 20;

/// The hash algorithm of the tree (repart only ever uses SHA-256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerityHash {
    #[default]
    Sha256,
}

impl VerityHash {
    /// The name stored in the superblock (as `veritysetup --hash=` takes it).
    pub fn name(self) -> &'static str {
        match self {
            VerityHash::Sha256 => "sha256",
        }
    }
}

/// How to lay out and salt the hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// Size of the blocks the data device is hashed in (power of two, 512 B to 512 KiB).
    pub data_block_size: u64,
    /// Size of the blocks of the hash device (power of two, 512 B to 512 KiB).
    pub hash_block_size: u64,
    /// Up to 256 bytes; repart uses 32.
    pub salt: Vec<u8>,
    /// The superblock UUID, bytes in the order of its textual form.
    pub uuid: [u8; 16],
    pub hash: VerityHash,
}

/// Why a hash tree could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("invalid dm-verity parameters: {0}")]
    Invalid(String),
    #[error("reading dm-verity data at offset {offset}: {source}")]
    Read { offset: u64, source: std::io::Error },
    #[error("writing the dm-verity hash tree at offset {offset}: {source}")]
    Write { offset: u64, source: std::io::Error },
    #[error("starting a dm-verity hashing thread: {0}")]
    Thread(std::io::Error),
}

/// The size systemd-repart gives the content of a hash partition for
/// `data_bytes` of data: superblock, root block and every lower level, in
/// whole hash blocks. For a single data block this is one block more than
/// veritysetup writes (see [`hash_device_size`]). `None` on overflow or
/// unusable block sizes.
pub fn hash_size(data_bytes: u64, hash_block_size: u64, data_block_size: u64) -> Option<u64> {
    if data_block_size == 0 {
        return None;
    }
    let hashes_per_block = hash_block_size / DIGEST_SIZE as u64;
    if hashes_per_block < 2 {
        return None;
    }
    let data_blocks = data_bytes.div_ceil(data_block_size);
    data_blocks.checked_mul(data_block_size)?;

    // Superblock and root block.
    let mut hash_blocks: u64 = 2;
    let mut remaining = data_blocks;
    while remaining > hashes_per_block {
        remaining = remaining.div_ceil(hashes_per_block);
        hash_blocks = hash_blocks.checked_add(remaining)?;
    }
    hash_blocks.checked_mul(hash_block_size)
}

/// Where the levels of a tree lie on the hash device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    data_blocks: u64,
    hashes_per_block: u64,
    /// `(first hash block, number of hash blocks)` per level, the level
    /// hashing the data first. Empty for a single data block.
    levels: Vec<(u64, u64)>,
    /// Hash blocks in all, superblock included.
    total_blocks: u64,
}

fn block_size_ok(size: u64) -> bool {
    size.is_power_of_two() && (512..=512 * 1024).contains(&size)
}

fn check_params(params: &VerityParams) -> Result<(), VerityError> {
    for (what, size) in [("data", params.data_block_size), ("hash", params.hash_block_size)] {
        if !block_size_ok(size) {
            return Err(VerityError::Invalid(format!(
                "{what} block size {size} is not a power of two between 512 and 524288"
            )));
        }
    }
    if params.salt.len() > MAX_SALT_SIZE {
        return Err(VerityError::Invalid(format!(
            "salt of {} bytes is longer than {MAX_SALT_SIZE} bytes",
            params.salt.len()
        )));
    }
    Ok(())
}

fn layout(data_size: u64, params: &VerityParams) -> Result<Layout, VerityError> {
    check_params(params)?;
    if data_size == 0 {
        return Err(VerityError::Invalid("no data to protect".into()));
    }
    if !data_size.is_multiple_of(params.data_block_size) {
        return Err(VerityError::Invalid(format!(
            "data size {data_size} is not a multiple of the data block size {}",
            params.data_block_size
        )));
    }
    let data_blocks = data_size / params.data_block_size;
    // As many digests as fit, rounded down to a power of two.
    let fit = params.hash_block_size / DIGEST_SIZE as u64;
    let hashes_per_block = 1u64 << fit.ilog2();

    let mut sizes = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(hashes_per_block);
        sizes.push(n);
    }
    // The superblock takes up whole hash blocks; the top level comes right after it.
    let mut position = (SUPERBLOCK_SIZE as u64).div_ceil(params.hash_block_size);
    let mut levels = vec![(0, 0); sizes.len()];
    for (i, &size) in sizes.iter().enumerate().rev() {
        levels[i] = (position, size);
        position = position
            .checked_add(size)
            .filter(|p| p.checked_mul(params.hash_block_size).is_some())
            .ok_or_else(|| VerityError::Invalid("hash device size overflows".into()))?;
    }
    Ok(Layout { data_blocks, hashes_per_block, levels, total_blocks: position })
}

/// The size of the hash device [`format`] writes for `data_size` bytes of
/// data: what `veritysetup format` makes a hash file grow to.
pub fn hash_device_size(data_size: u64, params: &VerityParams) -> Result<u64, VerityError> {
    let layout = layout(data_size, params)?;
    Ok(layout.total_blocks * params.hash_block_size)
}

fn superblock(data_blocks: u64, params: &VerityParams) -> [u8; SUPERBLOCK_SIZE] {
    let mut sb = [0u8; SUPERBLOCK_SIZE];
    sb[0..8].copy_from_slice(SIGNATURE);
    // Superblock version, then hash type 1 (salt first, as the kernel's "normal" mode).
    sb[8..12].copy_from_slice(&1u32.to_le_bytes());
    sb[12..16].copy_from_slice(&1u32.to_le_bytes());
    sb[16..32].copy_from_slice(&params.uuid);
    let name = params.hash.name().as_bytes();
    sb[32..32 + name.len()].copy_from_slice(name);
    // Block sizes were checked to be at most 512 KiB and the salt to be at most 256 bytes.
    sb[64..68].copy_from_slice(&(params.data_block_size as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(params.hash_block_size as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(params.salt.len() as u16).to_le_bytes());
    sb[88..88 + params.salt.len()].copy_from_slice(&params.salt);
    sb
}

/// Where and how to hash: shared by all threads.
struct Hasher<'a> {
    salted: Sha256,
    data: &'a File,
    data_offset: u64,
    data_block_size: usize,
    hash: &'a File,
    hash_block_size: usize,
    hashes_per_block: usize,
}

impl Hasher<'_> {
    fn digest(&self, block: &[u8]) -> [u8; DIGEST_SIZE] {
        let mut h = self.salted.clone();
        h.update(block);
        h.finalize().into()
    }

    fn write(&self, buf: &[u8], offset: u64) -> Result<(), VerityError> {
        self.hash.write_all_at(buf, offset).map_err(|source| VerityError::Write { offset, source })
    }

    /// Hash data blocks `first..end` into the hash blocks starting at byte
    /// `out_offset` (`first` is the first block a hash block covers), and return
    /// the digests of those hash blocks.
    fn bottom_range(&self, first: u64, end: u64, out_offset: u64) -> Result<Vec<[u8; DIGEST_SIZE]>, VerityError> {
        let dbs = self.data_block_size;
        let hbs = self.hash_block_size;
        let chunk_blocks = (READ_CHUNK / dbs).max(1);
        let mut buf = vec![0u8; chunk_blocks * dbs];
        let mut pending: Vec<u8> = Vec::with_capacity(WRITE_BATCH + hbs);
        let mut pending_offset = out_offset;
        let mut upper = Vec::new();
        // Digests in the hash block being filled (the last `hbs` bytes of `pending`).
        let mut fill = 0usize;

        let mut block = first;
        while block < end {
            let count = (end - block).min(chunk_blocks as u64) as usize;
            let offset = self.data_offset + block * dbs as u64;
            let buf = &mut buf[..count * dbs];
            self.data.read_exact_at(buf, offset).map_err(|source| VerityError::Read { offset, source })?;
            for data_block in buf.chunks_exact(dbs) {
                if fill == 0 {
                    pending.resize(pending.len() + hbs, 0);
                }
                let at = pending.len() - hbs + fill * DIGEST_SIZE;
                pending[at..at + DIGEST_SIZE].copy_from_slice(&self.digest(data_block));
                fill += 1;
                if fill == self.hashes_per_block {
                    upper.push(self.digest(&pending[pending.len() - hbs..]));
                    fill = 0;
                    if pending.len() >= WRITE_BATCH {
                        self.write(&pending, pending_offset)?;
                        pending_offset += pending.len() as u64;
                        pending.clear();
                    }
                }
            }
            block += count as u64;
        }
        if fill > 0 {
            upper.push(self.digest(&pending[pending.len() - hbs..]));
        }
        if !pending.is_empty() {
            self.write(&pending, pending_offset)?;
        }
        Ok(upper)
    }

    /// The level hashing the data, split over threads at hash block boundaries.
    fn bottom_level(
        &self,
        data_blocks: u64,
        level_blocks: u64,
        out_offset: u64,
    ) -> Result<Vec<[u8; DIGEST_SIZE]>, VerityError> {
        let data_bytes = data_blocks * self.data_block_size as u64;
        let threads = if data_bytes < PARALLEL_THRESHOLD {
            1
        } else {
            std::thread::available_parallelism().map(usize::from).unwrap_or(1).min(64) as u64
        }
        .min(level_blocks);
        let hpb = self.hashes_per_block as u64;
        let hbs = self.hash_block_size as u64;
        let range = |i: u64| {
            let hb0 = level_blocks * i / threads;
            let hb1 = level_blocks * (i + 1) / threads;
            (hb0 * hpb, (hb1 * hpb).min(data_blocks), out_offset + hb0 * hbs)
        };
        if threads <= 1 {
            return self.bottom_range(0, data_blocks, out_offset);
        }
        std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for i in 0..threads {
                let (first, end, offset) = range(i);
                let handle = std::thread::Builder::new()
                    .name("verity-hash".into())
                    .spawn_scoped(scope, move || self.bottom_range(first, end, offset))
                    .map_err(VerityError::Thread)?;
                handles.push(handle);
            }
            let mut upper = Vec::with_capacity(level_blocks as usize);
            for handle in handles {
                match handle.join() {
                    Ok(part) => upper.extend(part?),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok(upper)
        })
    }

    /// Write a level above the bottom one from the digests of the level below,
    /// returning the digests of its blocks.
    fn upper_level(
        &self,
        digests: &[[u8; DIGEST_SIZE]],
        out_offset: u64,
    ) -> Result<Vec<[u8; DIGEST_SIZE]>, VerityError> {
        let hbs = self.hash_block_size;
        let mut out = vec![0u8; digests.len().div_ceil(self.hashes_per_block) * hbs];
        let mut upper = Vec::with_capacity(out.len() / hbs);
        for (block, group) in out.chunks_exact_mut(hbs).zip(digests.chunks(self.hashes_per_block)) {
            for (slot, digest) in block.chunks_exact_mut(DIGEST_SIZE).zip(group) {
                slot.copy_from_slice(digest);
            }
            upper.push(self.digest(block));
        }
        self.write(&out, out_offset)?;
        Ok(upper)
    }
}

/// Write the hash device for the first `data_size` bytes of `data` to
/// `hash_out`, starting at its beginning, and return the root hash. The result
/// is what `veritysetup format` with the same parameters writes to an empty
/// file (see [`format_at`]).
pub fn format(
    data: &File,
    data_size: u64,
    hash_out: &mut File,
    params: &VerityParams,
) -> Result<[u8; 32], VerityError> {
    format_at(data, 0, data_size, hash_out, 0, params)
}

/// Like [`format`], with the data at byte `data_offset` of `data` and the hash
/// device written at byte `hash_offset` of `hash_out` (e.g. partitions of one
/// image). `data_size` must be a non-zero multiple of the data block size.
/// Exactly [`hash_device_size`] bytes are written, padding included; `hash_out`
/// is not truncated.
pub fn format_at(
    data: &File,
    data_offset: u64,
    data_size: u64,
    hash_out: &mut File,
    hash_offset: u64,
    params: &VerityParams,
) -> Result<[u8; 32], VerityError> {
    let layout = layout(data_size, params)?;
    data_offset
        .checked_add(data_size)
        .and_then(|_| hash_offset.checked_add(layout.total_blocks * params.hash_block_size))
        .ok_or_else(|| VerityError::Invalid("offsets overflow".into()))?;

    let mut salted = Sha256::new();
    salted.update(&params.salt);
    let hasher = Hasher {
        salted,
        data,
        data_offset,
        data_block_size: params.data_block_size as usize,
        hash: hash_out,
        hash_block_size: params.hash_block_size as usize,
        hashes_per_block: layout.hashes_per_block as usize,
    };

    let mut first_block = vec![0u8; params.hash_block_size as usize];
    first_block[..SUPERBLOCK_SIZE].copy_from_slice(&superblock(layout.data_blocks, params));
    hasher.write(&first_block, hash_offset)?;

    let level_offset = |level: usize| hash_offset + layout.levels[level].0 * params.hash_block_size;
    let Some(&(_, bottom_blocks)) = layout.levels.first() else {
        // A single data block: its hash is the root hash.
        let mut block = vec![0u8; hasher.data_block_size];
        data.read_exact_at(&mut block, data_offset)
            .map_err(|source| VerityError::Read { offset: data_offset, source })?;
        return Ok(hasher.digest(&block));
    };
    let mut digests = hasher.bottom_level(layout.data_blocks, bottom_blocks, level_offset(0))?;
    for level in 1..layout.levels.len() {
        digests = hasher.upper_level(&digests, level_offset(level))?;
    }
    match digests.as_slice() {
        [root] => Ok(*root),
        _ => Err(VerityError::Invalid(format!("hash tree ended with {} top blocks", digests.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn veritysetup() -> PathBuf {
        let mut dirs: Vec<PathBuf> =
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
        dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
        dirs.into_iter().map(|d| d.join("veritysetup")).find(|p| p.is_file()).unwrap_or_else(|| {
            panic!("veritysetup is needed to check the dm-verity hash trees: install cryptsetup-bin")
        })
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn uuid_string(u: &[u8; 16]) -> String {
        let h = hex(u);
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }

    /// Deterministic test data with some all-zero and some repeated blocks.
    fn test_data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        if len >= 4096 * 3 {
            v[4096..8192].fill(0);
            let (a, b) = v.split_at_mut(8192);
            b[..4096].copy_from_slice(&a[..4096]);
        }
        v
    }

    fn params(data_block_size: u64, hash_block_size: u64, salt: &[u8]) -> VerityParams {
        VerityParams {
            data_block_size,
            hash_block_size,
            salt: salt.to_vec(),
            uuid: [0x3c, 0x1a, 0x9e, 0x02, 0x55, 0x10, 0x4b, 0x7e, 0x91, 0x0d, 0xaa, 0x63, 0x07, 0xfe, 0x12, 0x48],
            hash: VerityHash::Sha256,
        }
    }

    /// Run `veritysetup format` on `data`, returning the hash file and root hash.
    fn reference(dir: &Path, data: &Path, p: &VerityParams) -> (Vec<u8>, String) {
        let hash = dir.join("reference.hash");
        let salt = if p.salt.is_empty() { "-".to_string() } else { hex(&p.salt) };
        let out = Command::new(veritysetup())
            .arg("format")
            .arg("--hash=sha256")
            .arg(format!("--data-block-size={}", p.data_block_size))
            .arg(format!("--hash-block-size={}", p.hash_block_size))
            .arg(format!("--salt={salt}"))
            .arg(format!("--uuid={}", uuid_string(&p.uuid)))
            .arg(data)
            .arg(&hash)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "veritysetup format failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let root = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .map(|r| r.trim().to_string())
            .unwrap_or_else(|| panic!("no root hash in veritysetup output: {stdout}"));
        (std::fs::read(&hash).unwrap(), root)
    }

    fn verify(data: &Path, hash: &Path, root: &str) {
        let out = Command::new(veritysetup()).arg("verify").arg(data).arg(hash).arg(root).output().unwrap();
        assert!(
            out.status.success(),
            "veritysetup verify rejected our hash tree: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn compare(data_blocks: usize, p: &VerityParams) {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        let data_size = data_blocks * p.data_block_size as usize;
        std::fs::write(&data_path, test_data(data_size, data_blocks as u64 * 31 + p.hash_block_size)).unwrap();
        let (expected, expected_root) = reference(dir.path(), &data_path, p);

        let hash_path = dir.path().join("ours.hash");
        let data = File::open(&data_path).unwrap();
        let mut hash = File::create(&hash_path).unwrap();
        let root = format(&data, data_size as u64, &mut hash, p).unwrap();
        drop(hash);
        let ours = std::fs::read(&hash_path).unwrap();

        let what = format!("{data_blocks} blocks, {}/{}", p.data_block_size, p.hash_block_size);
        assert_eq!(hex(&root), expected_root, "root hash of {what}");
        assert_eq!(ours.len(), expected.len(), "hash device size of {what}");
        assert!(ours == expected, "hash device content of {what} differs from veritysetup's");
        assert_eq!(hash_device_size(data_size as u64, p).unwrap(), expected.len() as u64, "{what}");
        verify(&data_path, &hash_path, &hex(&root));
    }

    const SALT: [u8; 32] = [
        0x9f, 0x27, 0x61, 0x0b, 0xc4, 0x3e, 0x58, 0x12, 0xaa, 0x70, 0x05, 0xd9, 0x4b, 0x88, 0x21, 0x6e, 0x33, 0xf0,
        0x1c, 0x97, 0x5a, 0x04, 0xbe, 0x69, 0x2d, 0x80, 0x17, 0xe5, 0x46, 0xcb, 0x0a, 0x7d,
    ];

    #[test]
    fn verity_single_block() {
        compare(1, &params(4096, 4096, &SALT));
        compare(1, &params(512, 4096, &SALT));
    }

    #[test]
    fn verity_one_level() {
        compare(2, &params(4096, 4096, &SALT));
        compare(128, &params(4096, 4096, &SALT));
    }

    #[test]
    fn verity_4k_blocks() {
        compare(129, &params(4096, 4096, &SALT));
        // A few MB, not a multiple of the 128 hashes per block.
        compare(777, &params(4096, 4096, &SALT));
        // Three levels.
        compare(128 * 128 + 5, &params(4096, 4096, &SALT));
    }

    #[test]
    fn verity_mixed_block_sizes() {
        compare(10_001, &params(512, 4096, &SALT));
        compare(300, &params(4096, 512, &SALT));
        compare(1_000, &params(1024, 2048, &SALT));
    }

    #[test]
    fn verity_small_hash_blocks_many_levels() {
        // 16 hashes per 512-byte block: 5000 -> 313 -> 20 -> 2 -> 1.
        compare(5_000, &params(512, 512, &SALT));
        compare(16 * 16, &params(512, 512, &SALT));
    }

    #[test]
    fn verity_large_parallel() {
        // More than the parallel threshold, split over threads at odd boundaries.
        compare(3 * 2048 + 77, &params(4096, 4096, &SALT));
        compare(40_000, &params(512, 512, &SALT));
    }

    #[test]
    fn verity_other_salts() {
        compare(200, &params(4096, 4096, &[]));
        compare(200, &params(4096, 4096, &[1, 2, 3, 4, 5]));
        compare(200, &params(4096, 4096, &[0xee; 256]));
    }

    #[test]
    fn verity_at_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let p = params(4096, 4096, &SALT);
        let data_bytes = test_data(300 * 4096, 7);
        let data_path = dir.path().join("data");
        std::fs::write(&data_path, &data_bytes).unwrap();
        let (expected, expected_root) = reference(dir.path(), &data_path, &p);

        // The same data inside a bigger file, the hash device inside another one.
        let image_path = dir.path().join("image");
        let mut image = vec![0x5au8; 3 * 4096];
        image.extend_from_slice(&data_bytes);
        image.extend_from_slice(&[0xa5; 4096]);
        std::fs::write(&image_path, &image).unwrap();
        let hash_path = dir.path().join("hash");
        std::fs::write(&hash_path, vec![0xffu8; 2 * 4096 + expected.len() + 4096]).unwrap();

        let data = File::open(&image_path).unwrap();
        let mut hash = File::options().read(true).write(true).open(&hash_path).unwrap();
        let root = format_at(&data, 3 * 4096, data_bytes.len() as u64, &mut hash, 2 * 4096, &p).unwrap();
        drop(hash);
        assert_eq!(hex(&root), expected_root);
        let out = std::fs::read(&hash_path).unwrap();
        assert!(out[..2 * 4096].iter().all(|&b| b == 0xff));
        assert!(out[2 * 4096..2 * 4096 + expected.len()] == expected[..]);
        assert!(out[2 * 4096 + expected.len()..].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn verity_hash_size_matches_veritysetup() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        for (blocks, dbs, hbs) in [
            (1u64, 4096u64, 4096u64),
            (2, 4096, 4096),
            (128, 4096, 4096),
            (129, 4096, 4096),
            (16_390, 4096, 4096),
            (5_000, 512, 512),
            (300, 4096, 512),
            (10_001, 512, 4096),
        ] {
            let p = params(dbs, hbs, &SALT);
            let size = blocks * dbs;
            std::fs::write(&data_path, vec![0u8; size as usize]).unwrap();
            let (reference, _) = reference(dir.path(), &data_path, &p);
            std::fs::remove_file(dir.path().join("reference.hash")).unwrap();
            let ours = hash_size(size, hbs, dbs).unwrap();
            // repart always counts a root block, which a single data block does not need.
            let extra = if blocks == 1 { hbs } else { 0 };
            assert_eq!(ours, reference.len() as u64 + extra, "{blocks} blocks of {dbs}, hash blocks of {hbs}");
        }
    }

    #[test]
    fn verity_hash_size_formula() {
        // superblock + root
        assert_eq!(hash_size(4096, 4096, 4096), Some(2 * 4096));
        assert_eq!(hash_size(128 * 4096, 4096, 4096), Some(2 * 4096));
        assert_eq!(hash_size(129 * 4096, 4096, 4096), Some(4 * 4096));
        // Partial blocks round up.
        assert_eq!(hash_size(129 * 4096 - 1, 4096, 4096), Some(4 * 4096));
        assert_eq!(hash_size(100, 4096, 0), None);
        assert_eq!(hash_size(100, 32, 4096), None);
        assert_eq!(hash_size(u64::MAX, 4096, 4096), None);
    }

    #[test]
    fn verity_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        std::fs::write(&data_path, vec![1u8; 8192]).unwrap();
        let data = File::open(&data_path).unwrap();
        let mut hash = File::create(dir.path().join("hash")).unwrap();
        let run = |size: u64, p: &VerityParams, hash: &mut File| format(&data, size, hash, p);

        assert!(matches!(run(8000, &params(4096, 4096, &SALT), &mut hash), Err(VerityError::Invalid(_))));
        assert!(matches!(run(0, &params(4096, 4096, &SALT), &mut hash), Err(VerityError::Invalid(_))));
        assert!(matches!(run(8192, &params(3000, 4096, &SALT), &mut hash), Err(VerityError::Invalid(_))));
        assert!(matches!(run(8192, &params(4096, 256, &SALT), &mut hash), Err(VerityError::Invalid(_))));
        assert!(matches!(run(8192, &params(4096, 4096, &[0; 257]), &mut hash), Err(VerityError::Invalid(_))));
        // More data than the file has.
        assert!(matches!(run(3 * 4096, &params(4096, 4096, &SALT), &mut hash), Err(VerityError::Read { .. })));
        assert!(run(8192, &params(4096, 4096, &SALT), &mut hash).is_ok());
    }
}
