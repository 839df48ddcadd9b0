//! The human readable `mkosi summary` and `mkosi cat-config` output compared
//! byte for byte with upstream's.
//!
//! Every directory in `tests/data/summary/` is a case (see `regen.py` there,
//! which records upstream's output as `summary.txt` and `cat-config.txt`;
//! this test only reads them). Output goes to a pipe, so neither upstream
//! nor we use ANSI styling. `SUMMARY_CASE=name` runs only one case.

use std::path::{Path, PathBuf};
use std::process::Command;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/summary")
}

fn resources() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else if ft.is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// The directory holding the case's tree/, env and setup.
fn source_dir(case: &Path) -> PathBuf {
    match std::fs::read_to_string(case.join("source")) {
        Ok(s) => case.join(s.trim()),
        Err(_) => case.to_path_buf(),
    }
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Replace UUIDs in `line` by `@RANDOM@`.
fn mark_uuids(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while !rest.is_empty() {
        if rest.len() >= 36 && rest.is_char_boundary(36) && is_uuid(&rest[..36]) {
            out.push_str("@RANDOM@");
            rest = &rest[36..];
        } else {
            let c = rest.chars().next().unwrap_or_default();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn run(case: &Path, verb: &str) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;

    let src = source_dir(case);
    let tmp = tempfile::Builder::new().prefix("mkosi-summary-").tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let tree = root.join("tree");
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    copy_tree(&src.join("tree"), &tree);
    for line in read_lines(&src.join("setup")) {
        if let ["chmod", mode, path] = line.split_whitespace().collect::<Vec<_>>().as_slice() {
            let mode = u32::from_str_radix(mode, 8).unwrap();
            std::fs::set_permissions(tree.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mkosi"));
    let args: Vec<String> =
        std::fs::read_to_string(case.join("args")).map(|t| t.lines().map(str::to_string).collect()).unwrap_or_default();
    cmd.args(args)
        .arg(verb)
        .current_dir(&tree)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("MKOSI_HOST_DISTRIBUTION", "debian")
        .env("MKOSI_HOST_RELEASE", "trixie")
        .env("MKOSI_RESOURCES", resources())
        .env("TERM", "dumb")
        .stdin(std::process::Stdio::null());
    for line in read_lines(&src.join("env")).into_iter().chain(read_lines(&case.join("env"))) {
        if let Some((k, v)) = line.split_once('=') {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().map_err(|e| format!("running mkosi: {e}"))?;
    if !out.status.success() {
        return Err(format!("mkosi {verb} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .replace(&*tree.to_string_lossy(), "@TREE@")
        .replace(&*home.to_string_lossy(), "@HOME@")
        .replace(&*resources().to_string_lossy(), "@RESOURCES@"))
}

fn compare(case: &Path, verb: &str) -> Result<(), String> {
    let want = std::fs::read_to_string(case.join(format!("{verb}.txt")))
        .map_err(|_| format!("no {verb}.txt (run regen.py)"))?;
    let got = run(case, verb)?;
    let want: Vec<&str> = want.split('\n').collect();
    let got: Vec<String> = got
        .split('\n')
        .enumerate()
        .map(|(i, l)| if want.get(i).is_some_and(|w| w.contains("@RANDOM@")) { mark_uuids(l) } else { l.to_string() })
        .collect();
    let mut diffs = Vec::new();
    for i in 0..want.len().max(got.len()) {
        let (w, g) = (want.get(i).copied(), got.get(i).map(String::as_str));
        if w != g {
            diffs.push(format!(
                "  line {}:\n    upstream: {:?}\n    ours:     {:?}",
                i + 1,
                w.unwrap_or("<end>"),
                g.unwrap_or("<end>")
            ));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        let n = diffs.len();
        diffs.truncate(20);
        Err(format!("{verb}: {n} line(s) differ\n{}", diffs.join("\n")))
    }
}

#[test]
fn summary_and_cat_config_match_upstream() {
    let only = std::env::var("SUMMARY_CASE").ok();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| only.as_deref().is_none_or(|o| p.file_name().is_some_and(|n| n == o)))
        .collect();
    cases.sort();
    assert!(!cases.is_empty());

    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let missing: Vec<String> =
            read_lines(&case.join("requires")).into_iter().filter(|r| !resources().join(r).exists()).collect();
        if !missing.is_empty() {
            eprintln!("summary_compat: skipping {name}: needs {}", missing.join(", "));
            continue;
        }
        for verb in ["summary", "cat-config"] {
            if let Err(e) = compare(case, verb) {
                failures.push(format!("{name} {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} difference(s) from upstream:\n\n{}", failures.len(), failures.join("\n\n"));
}
