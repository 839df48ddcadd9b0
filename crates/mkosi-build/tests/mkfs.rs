//! Filesystems made by `repart::mkfs` with the real tools, checked with each filesystem's own
//! checker, `blkid` and a listing of the files inside.
//!
//! Needs (Debian packages): e2fsprogs btrfs-progs xfsprogs dosfstools mtools erofs-utils
//! squashfs-tools util-linux. A missing tool fails the test naming its package. Nothing is
//! mounted; run as root, the tests also check that file ownership is kept.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mkosi_build::repart::mkfs::{make_filesystem, make_minimized, minimal_size_by_fs_name, MkfsRequest};
use mkosi_sandbox::run::{run, Cmd, Sink};
use tempfile::TempDir;

const UUID: [u8; 16] = [0x4f, 0x68, 0xbc, 0xe3, 0xe8, 0xcd, 0x4d, 0xb1, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09];
const UUID_STR: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
const LABEL: &str = "root-x86-64";
const MIB: u64 = 1024 * 1024;

fn search_path() -> String {
    let standard = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{standard}"),
        _ => standard.to_string(),
    }
}

/// Fail (not skip) when a tool is missing, naming the package CI must install.
fn require(tools: &[(&str, &str)]) {
    for (tool, package) in tools {
        if !std::env::split_paths(&search_path()).any(|d| d.join(tool).is_file()) {
            panic!("{tool} is not installed: install the Debian package {package} to run the mkfs tests");
        }
    }
}

/// Run a checking tool; it must succeed. Returns its standard output and error tail.
fn check(argv: &[&str], env: &[(&str, &str)]) -> String {
    let mut all_env = vec![("PATH".to_string(), search_path())];
    all_env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let out = run(&Cmd::new(argv.iter().copied()).env(all_env).stdout(Sink::Capture).quiet())
        .unwrap_or_else(|e| panic!("{e}"));
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), out.stderr_tail)
}

fn blkid(image: &Path) -> HashMap<String, String> {
    let out = check(&["blkid", "-p", "-o", "export", image.to_str().unwrap()], &[]);
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn assert_blkid(image: &Path, fstype: &str, label: Option<&str>, uuid: Option<&str>) {
    let ids = blkid(image);
    assert_eq!(ids.get("TYPE").map(String::as_str), Some(fstype), "{ids:?}");
    assert_eq!(ids.get("LABEL").map(String::as_str), label, "{ids:?}");
    assert_eq!(ids.get("UUID").map(String::as_str), uuid, "{ids:?}");
}

/// Whether files made here can be given to other users (we run as root).
fn can_chown(dir: &Path) -> bool {
    fs::metadata(dir).map(|m| m.uid() == 0).unwrap_or(false)
}

/// A tree with a regular file, a subdirectory with a file, a symlink and (as root) a file
/// owned by 1234:5678.
struct Tree {
    _dir: TempDir,
    root: PathBuf,
    chowned: bool,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("file"), "hello\n").unwrap();
    fs::write(root.join("sub/nested"), "nested\n").unwrap();
    std::os::unix::fs::symlink("file", root.join("link")).unwrap();
    fs::write(root.join("owned"), "owned\n").unwrap();
    let chowned = can_chown(&root);
    if chowned {
        std::os::unix::fs::chown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    }
    Tree { _dir: dir, root, chowned }
}

fn request<'a>(fstype: &'a str, root: Option<&'a Path>, output: &'a Path) -> MkfsRequest<'a> {
    MkfsRequest {
        fstype,
        label: LABEL,
        uuid: UUID,
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

fn sparse(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

const E2FSPROGS: [(&str, &str); 4] =
    [("mkfs.ext4", "e2fsprogs"), ("e2fsck", "e2fsprogs"), ("debugfs", "e2fsprogs"), ("blkid", "util-linux")];

fn check_ext(image: &Path, tree: &Tree) {
    let img = s(image);
    check(&["e2fsck", "-fn", img], &[]);
    let listing = check(&["debugfs", "-R", "ls -l /", img], &[]);
    for name in ["file", "sub", "link", "owned", "lost+found"] {
        assert!(listing.split_whitespace().any(|w| w == name), "{name} missing in {listing}");
    }
    assert!(check(&["debugfs", "-R", "cat /sub/nested", img], &[]).starts_with("nested\n"));
    assert!(check(&["debugfs", "-R", "stat /link", img], &[]).contains("Fast link dest: \"file\""));
    if tree.chowned {
        let stat = words(&check(&["debugfs", "-R", "stat /owned", img], &[]));
        assert!(stat.contains("User: 1234 Group: 5678"), "{stat}");
    }
}

#[test]
fn ext_filesystems() {
    require(&E2FSPROGS);
    let tree = tree();
    let dir = tempfile::tempdir().unwrap();
    for fstype in ["ext2", "ext3", "ext4"] {
        let image = dir.path().join(format!("{fstype}.img"));
        sparse(&image, 64 * MIB);
        make_filesystem(&request(fstype, Some(&tree.root), &image)).unwrap();
        assert_blkid(&image, fstype, Some(LABEL), Some(UUID_STR));
        check_ext(&image, &tree);
    }
    // Without a tree: an empty filesystem, discard off.
    let image = dir.path().join("empty.img");
    sparse(&image, 32 * MIB);
    let mut req = request("ext4", None, &image);
    req.discard = false;
    make_filesystem(&req).unwrap();
    check(&["e2fsck", "-fn", s(&image)], &[]);
    assert_blkid(&image, "ext4", Some(LABEL), Some(UUID_STR));
}

#[test]
fn btrfs_filesystem() {
    require(&[("mkfs.btrfs", "btrfs-progs"), ("btrfs", "btrfs-progs"), ("blkid", "util-linux")]);
    let tree = tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("btrfs.img");
    sparse(&image, 256 * MIB);
    make_filesystem(&request("btrfs", Some(&tree.root), &image)).unwrap();
    let img = s(&image);
    check(&["btrfs", "check", img], &[]);
    assert_blkid(&image, "btrfs", Some(LABEL), Some(UUID_STR));
    let dump = check(&["btrfs", "inspect-internal", "dump-tree", "-t", "fs", img], &[]);
    for name in ["file", "sub", "link", "owned", "nested"] {
        assert!(dump.contains(&format!("name: {name}\n")), "{name} missing in {dump}");
    }
    if tree.chowned {
        assert!(dump.contains("uid 1234 gid 5678"), "{dump}");
    }
    let out = dir.path().join("restored");
    fs::create_dir(&out).unwrap();
    check(&["btrfs", "restore", "-S", img, s(&out)], &[]);
    assert_eq!(fs::read_to_string(out.join("sub/nested")).unwrap(), "nested\n");
    assert_eq!(fs::read_link(out.join("link")).unwrap(), Path::new("file"));

    // Subvolumes need mkfs.btrfs --subvol (btrfs-progs 6.12); older ones are refused clearly.
    fs::create_dir(tree.root.join("home")).unwrap();
    let subvols = vec!["/home".to_string()];
    let mut req = request("btrfs", Some(&tree.root), &image);
    req.subvolumes = &subvols;
    req.default_subvolume = Some("/home");
    sparse(&image, 256 * MIB);
    match make_filesystem(&req) {
        Ok(()) => {
            let roots = check(&["btrfs", "inspect-internal", "dump-tree", "-t", "root", img], &[]);
            assert!(roots.contains("name: home"), "{roots}");
        }
        Err(e) => assert!(e.hint_text().unwrap_or_default().contains("btrfs-progs 6.12"), "{e}"),
    }
}

#[test]
fn xfs_filesystem() {
    require(&[("mkfs.xfs", "xfsprogs"), ("xfs_repair", "xfsprogs"), ("xfs_db", "xfsprogs"), ("blkid", "util-linux")]);
    let tree = tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("xfs.img");
    sparse(&image, 300 * MIB);
    make_filesystem(&request("xfs", Some(&tree.root), &image)).unwrap();
    let img = s(&image);
    check(&["xfs_repair", "-n", "-f", img], &[]);
    assert_blkid(&image, "xfs", Some(LABEL), Some(UUID_STR));
    let listing = check(&["xfs_db", "-r", "-c", "ls /", img], &[]);
    for name in ["file", "sub", "link", "owned"] {
        assert!(listing.contains(&format!(" {name} (good)")), "{name} missing in {listing}");
    }
    let nested = words(&check(&["xfs_db", "-r", "-c", "path /sub/nested", "-c", "print core.size", img], &[]));
    assert!(nested.contains("core.size = 7"), "{nested}");
    if tree.chowned {
        let owner = words(&check(&["xfs_db", "-r", "-c", "path /owned", "-c", "print core.uid core.gid", img], &[]));
        assert!(owner.contains("core.uid = 1234 core.gid = 5678"), "{owner}");
    }

    // Names with spaces need slashes_are_spaces (xfsprogs 6.2); older ones are refused clearly.
    fs::write(tree.root.join("a file"), "spaced\n").unwrap();
    sparse(&image, 300 * MIB);
    match make_filesystem(&request("xfs", Some(&tree.root), &image)) {
        Ok(()) => {
            check(&["xfs_repair", "-n", "-f", img], &[]);
            let listing = check(&["xfs_db", "-r", "-c", "ls /", img], &[]);
            assert!(listing.contains(" a file (good)"), "{listing}");
        }
        Err(e) => assert!(e.hint_text().unwrap_or_default().contains("xfsprogs 6.2"), "{e}"),
    }
}

const MTOOLS_ENV: [(&str, &str); 1] = [("MTOOLS_SKIP_CHECK", "1")];

#[test]
fn vfat_filesystem() {
    require(&[
        ("mkfs.vfat", "dosfstools"),
        ("fsck.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("mdir", "mtools"),
        ("mtype", "mtools"),
        ("blkid", "util-linux"),
    ]);
    let tree = tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("esp.img");
    // FAT32 with 4096 byte sectors needs 65525 clusters of 4 KiB.
    sparse(&image, 300 * MIB);
    make_filesystem(&request("vfat", Some(&tree.root), &image)).unwrap();
    let img = s(&image);
    check(&["fsck.vfat", "-n", img], &[]);
    assert_blkid(&image, "vfat", Some("ROOT-X86-64"), Some("4F68-BCE3"));
    let listing = check(&["mdir", "-b", "-i", img, "::/"], &MTOOLS_ENV);
    for name in ["file", "sub", "owned"] {
        assert!(listing.lines().any(|l| l.trim_end_matches('/').ends_with(&format!("/{name}"))), "{listing}");
    }
    // vfat cannot hold symlinks; repart leaves them out.
    assert!(!listing.contains("link"), "{listing}");
    assert!(check(&["mtype", "-i", img, "::/sub/nested"], &MTOOLS_ENV).starts_with("nested\n"));
}

#[test]
fn erofs_filesystem() {
    require(&[("mkfs.erofs", "erofs-utils"), ("fsck.erofs", "erofs-utils"), ("blkid", "util-linux")]);
    let tree = tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("usr.erofs");
    // A leftover file is replaced, not appended to.
    sparse(&image, 64 * MIB);
    make_filesystem(&request("erofs", Some(&tree.root), &image)).unwrap();
    assert!(fs::metadata(&image).unwrap().len() < MIB);
    let img = s(&image);
    check(&["fsck.erofs", img], &[]);
    assert_blkid(&image, "erofs", None, Some(UUID_STR));
    let out = dir.path().join("extracted");
    check(&["fsck.erofs", &format!("--extract={}", s(&out)), img], &[]);
    assert_eq!(fs::read_to_string(out.join("file")).unwrap(), "hello\n");
    assert_eq!(fs::read_to_string(out.join("sub/nested")).unwrap(), "nested\n");
    assert_eq!(fs::read_link(out.join("link")).unwrap(), Path::new("file"));
    if tree.chowned {
        let md = fs::metadata(out.join("owned")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
    }

    // Compression with a level (the level syntax of the installed erofs-utils is used).
    fs::write(tree.root.join("big"), "compressible ".repeat(100_000)).unwrap();
    let plain = dir.path().join("plain.erofs");
    make_filesystem(&request("erofs", Some(&tree.root), &plain)).unwrap();
    let packed = dir.path().join("packed.erofs");
    let mut req = request("erofs", Some(&tree.root), &packed);
    req.compression = Some("lz4hc");
    req.compression_level = Some("9");
    make_filesystem(&req).unwrap();
    check(&["fsck.erofs", s(&packed)], &[]);
    let (plain_len, packed_len) = (fs::metadata(&plain).unwrap().len(), fs::metadata(&packed).unwrap().len());
    assert!(packed_len * 4 < plain_len, "{packed_len} vs {plain_len}");
}

#[test]
fn squashfs_filesystem() {
    require(&[("mksquashfs", "squashfs-tools"), ("unsquashfs", "squashfs-tools"), ("blkid", "util-linux")]);
    let tree = tree();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("usr.squashfs");
    let mut req = request("squashfs", Some(&tree.root), &image);
    req.compression = Some("zstd");
    req.compression_level = Some("19");
    make_filesystem(&req).unwrap();
    let img = s(&image);
    let sb = check(&["unsquashfs", "-s", img], &[]);
    assert!(sb.contains("Found a valid SQUASHFS 4:0 superblock"), "{sb}");
    assert!(sb.contains("Compression zstd"), "{sb}");
    assert_blkid(&image, "squashfs", None, None);
    let listing = check(&["unsquashfs", "-lln", img], &[]);
    for path in ["squashfs-root/file", "squashfs-root/sub/nested", "squashfs-root/link -> file"] {
        assert!(listing.contains(path), "{path} missing in {listing}");
    }
    if tree.chowned {
        let owned = listing.lines().find(|l| l.ends_with("squashfs-root/owned")).unwrap();
        assert!(owned.contains(" 1234/5678 "), "{owned}");
    }
}

#[test]
fn swap_space() {
    require(&[("mkswap", "util-linux"), ("swaplabel", "util-linux"), ("blkid", "util-linux")]);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("swap.img");
    sparse(&image, 16 * MIB);
    make_filesystem(&request("swap", None, &image)).unwrap();
    assert_blkid(&image, "swap", Some(LABEL), Some(UUID_STR));
    let label = check(&["swaplabel", s(&image)], &[]);
    assert!(label.contains(&format!("LABEL: {LABEL}")) && label.contains(&format!("UUID:  {UUID_STR}")), "{label}");
}

/// Read everything in `dir` once, so that access times stop changing (with `relatime` only the
/// first read after a change updates them). e2fsprogs before 1.47.1 copy access times into the
/// image, and the first build must not change what the second one sees.
fn settle_access_times(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let md = fs::symlink_metadata(&path).unwrap();
        if md.is_dir() {
            settle_access_times(&path);
        } else if md.file_type().is_symlink() {
            fs::read_link(&path).unwrap();
        } else {
            fs::read(&path).unwrap();
        }
    }
}

/// With `SOURCE_DATE_EPOCH`, the same tree gives the same bytes (a second apart).
#[test]
fn reproducible_images() {
    require(&E2FSPROGS);
    require(&[("mkfs.vfat", "dosfstools"), ("mcopy", "mtools"), ("mkfs.erofs", "erofs-utils")]);
    require(&[("mksquashfs", "squashfs-tools")]);
    let tree = tree();
    settle_access_times(&tree.root);
    let dir = tempfile::tempdir().unwrap();
    let cases = [("ext4", 64 * MIB), ("vfat", 300 * MIB), ("erofs", 0), ("squashfs", 0)];
    let build = |round: usize| -> Vec<Vec<u8>> {
        cases
            .iter()
            .map(|(fstype, size)| {
                let image = dir.path().join(format!("{fstype}-{round}.img"));
                if *size > 0 {
                    sparse(&image, *size);
                }
                let mut req = request(fstype, Some(&tree.root), &image);
                req.source_date_epoch = Some(1_700_000_000);
                make_filesystem(&req).unwrap();
                fs::read(&image).unwrap()
            })
            .collect()
    };
    let first = build(0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // A rebuilt tree has the same content and mtimes, but every inode changed (ctime) later.
    fn touch_ctimes(p: &Path) {
        let md = fs::symlink_metadata(p).unwrap();
        if md.file_type().is_symlink() {
            return;
        }
        fs::set_permissions(p, md.permissions()).unwrap();
        if md.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                touch_ctimes(&e.unwrap().path());
            }
        }
    }
    touch_ctimes(&tree.root);
    let second = build(1);
    for ((fstype, _), (a, b)) in cases.iter().zip(first.iter().zip(&second)) {
        assert!(a == b, "{fstype} images differ");
    }
}

/// A tree of `dirs` directories with `files` files of `size` bytes each.
fn bulk_tree(dirs: usize, files: usize, size: usize) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in 0..dirs {
        let sub = root.join(format!("dir-{d}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..files {
            fs::write(sub.join(format!("file-{f}")), vec![(d + f) as u8; size]).unwrap();
        }
    }
    (dir, root)
}

fn e2fsck_counts(image: &Path) -> String {
    check(&["e2fsck", "-fn", s(image)], &[])
}

#[test]
fn minimized_ext4() {
    require(&E2FSPROGS);
    let (_keep, root) = bulk_tree(20, 50, 10_000);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("root.img");
    let size = make_minimized(&request("ext4", Some(&root), &image), 4096).unwrap();
    assert_eq!(fs::metadata(&image).unwrap().len(), size);
    // 1000 files of 3 blocks: about 12 MiB of data, so the ext4 minimum of 32 MiB; repart's
    // first pass into 1 TiB would have measured its 1 GiB journal and asked for over 1.5 GiB.
    assert_eq!(size, minimal_size_by_fs_name("ext4").unwrap());
    let fsck = e2fsck_counts(&image);
    assert!(fsck.contains(" 1031/"), "{fsck}");
    assert!(check(&["debugfs", "-R", "ls /dir-7", s(&image)], &[]).contains("file-49"));

    // Data beyond the minimum: sized by the tree, deterministically.
    let (_keep, root) = bulk_tree(4, 10, 1_000_000);
    let size = make_minimized(&request("ext4", Some(&root), &image), 4096).unwrap();
    assert!(size > 32 * MIB && size < 80 * MIB, "{size}");
    check_ext_tree(&image, 4, 10);
    let again = make_minimized(&request("ext4", Some(&root), &image), 4096).unwrap();
    assert_eq!(size, again);
    let grained = make_minimized(&request("ext4", Some(&root), &image), MIB).unwrap();
    assert_eq!(grained % MIB, 0);
    assert!(grained >= size && grained < size + MIB);
}

fn check_ext_tree(image: &Path, dirs: usize, files: usize) {
    let fsck = e2fsck_counts(image);
    // dirs, files, lost+found and the 10 reserved inodes (the root directory is one of them).
    assert!(fsck.contains(&format!(" {}/", dirs + dirs * files + 11)), "{fsck}");
}

#[test]
fn minimized_ext4_with_many_small_files() {
    require(&E2FSPROGS);
    // Inodes, not bytes, decide the size here.
    let (_keep, root) = bulk_tree(3, 1000, 0);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("root.img");
    let size = make_minimized(&request("ext4", Some(&root), &image), 4096).unwrap();
    assert!(size > 32 * MIB, "{size}");
    check_ext_tree(&image, 3, 1000);

    // With fewer inodes per byte than mke2fs' default, the estimate is too small and the
    // image grows until the tree fits.
    let mut req = request("ext4", Some(&root), &image);
    req.extra_options = vec!["-i".into(), "65536".into()];
    let grown = make_minimized(&req, 4096).unwrap();
    assert!(grown >= 3016 * 65536, "{grown}");
    check_ext_tree(&image, 3, 1000);
}

#[test]
fn minimized_read_only_filesystems() {
    require(&E2FSPROGS);
    require(&[("mkfs.erofs", "erofs-utils"), ("fsck.erofs", "erofs-utils"), ("mksquashfs", "squashfs-tools")]);
    let (_keep, root) = bulk_tree(4, 10, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let erofs = dir.path().join("usr.erofs");
    let size = make_minimized(&request("erofs", Some(&root), &erofs), 4096).unwrap();
    assert_eq!(fs::metadata(&erofs).unwrap().len(), size);
    check(&["fsck.erofs", s(&erofs)], &[]);
    let squashfs = dir.path().join("usr.squashfs");
    let sq_size = make_minimized(&request("squashfs", Some(&root), &squashfs), 4096).unwrap();
    assert_eq!(fs::metadata(&squashfs).unwrap().len(), sq_size);
    let ext4 = dir.path().join("root.img");
    let ext4_size = make_minimized(&request("ext4", Some(&root), &ext4), 4096).unwrap();
    // 4 MB of data: the read-only ones are exactly as big as they need to be.
    assert!((4_000_000..4_300_000).contains(&size), "{size}");
    assert!(size < ext4_size && sq_size < ext4_size);
}

#[test]
fn minimized_with_a_probe_pass() {
    require(&[("mkfs.btrfs", "btrfs-progs"), ("btrfs", "btrfs-progs")]);
    require(&[("mkfs.xfs", "xfsprogs"), ("xfs_repair", "xfsprogs")]);
    require(&[("mkfs.vfat", "dosfstools"), ("fsck.vfat", "dosfstools"), ("mcopy", "mtools")]);
    let (_keep, root) = bulk_tree(4, 10, 100_000);
    let dir = tempfile::tempdir().unwrap();
    for (fstype, floor) in [("btrfs", 256 * MIB), ("xfs", 300 * MIB), ("vfat", 256 * MIB)] {
        let image = dir.path().join(format!("{fstype}.img"));
        let size = make_minimized(&request(fstype, Some(&root), &image), MIB).unwrap();
        assert_eq!(fs::metadata(&image).unwrap().len(), size);
        assert!(size >= floor, "{fstype}: {size}");
        // The probe file is gone.
        let names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains("probe")), "{names:?}");
        let img = s(&image);
        match fstype {
            "btrfs" => check(&["btrfs", "check", img], &[]),
            "xfs" => check(&["xfs_repair", "-n", "-f", img], &[]),
            _ => check(&["fsck.vfat", "-n", img], &[]),
        };
    }
}
