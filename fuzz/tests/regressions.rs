//! Replays every file under `fuzz/regressions/<target>/` (and, when present,
//! `fuzz/corpus/<target>/` with `MKOSI_FUZZ_REPLAY_CORPUS=1`) through the
//! same harness the fuzz target uses. Runs on stable: `cargo test` in fuzz/.
//!
//! A file whose name starts with `known-` documents a crash that is not fixed
//! yet: it is replayed too, and the test fails until the bug is fixed (then
//! drop the prefix). Set `MKOSI_FUZZ_SKIP_KNOWN=1` to skip those.
//!
//! Inputs that once hung a target (`timeout-*` artifacts) must finish within
//! `MKOSI_FUZZ_SLOW_MS` milliseconds (default 10000, debug build).

use std::path::{Path, PathBuf};
use std::time::Instant;

type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] =
    &[("ini", mkosi_fuzz::ini), ("config_file", mkosi_fuzz::config_file), ("values", mkosi_fuzz::values)];

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

fn replay(kind: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let skip_known = std::env::var_os("MKOSI_FUZZ_SKIP_KNOWN").is_some_and(|v| v == "1");
    let slow_ms: u128 = std::env::var("MKOSI_FUZZ_SLOW_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // Keep the panic messages, but print them once per failing input.
    let mut failures = Vec::new();
    let mut count = 0;
    for (target, harness) in TARGETS {
        for file in files(&root.join(kind).join(target)) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".md") || (skip_known && name.starts_with("known-")) {
                continue;
            }
            let data = std::fs::read(&file).unwrap();
            count += 1;
            let start = Instant::now();
            if std::panic::catch_unwind(|| harness(&data)).is_err() {
                failures.push(format!("{target}: {} panicked", file.display()));
            } else if start.elapsed().as_millis() > slow_ms {
                failures.push(format!(
                    "{target}: {} took {} ms (limit {slow_ms} ms)",
                    file.display(),
                    start.elapsed().as_millis()
                ));
            }
        }
    }
    eprintln!("replayed {count} {kind} inputs");
    assert!(failures.is_empty(), "{} input(s) failed:\n  {}", failures.len(), failures.join("\n  "));
}

#[test]
fn regressions() {
    replay("regressions");
}

#[test]
fn corpus() {
    if std::env::var_os("MKOSI_FUZZ_REPLAY_CORPUS").is_some_and(|v| v == "1") {
        replay("corpus");
    }
}
