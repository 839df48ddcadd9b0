//! The `mkosi` binary's command line compared with upstream mkosi's.
//!
//! `tests/data/cli/cases.txt` holds command lines and what upstream did with
//! them (recorded by `tests/data/cli/regen.py`, which needs an upstream
//! checkout; this test only reads the recorded results). Every case whose
//! upstream run was recorded (`> run`), or that upstream rejected while
//! parsing its command line (`> parse N` with N ≠ 0), is run through our
//! binary in a copy of `tests/data/cli/tree`, comparing the exit status, the
//! error line, the first lines of the output and of warnings, and
//! `--json summary`'s JSON.
//! (What the argparse stage produced for the other cases is compared by the
//! unit tests of `src/cli.rs`.) Paths are normalized like regen.py does
//! (`@TREE@`, `@HOME@`, `@RESOURCES@`); `Files` entries from the built-in
//! configurations are not compared, since ours are laid out differently.
//!
//! `CLI_CASE=substring` runs only the cases whose command line contains it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cli")
}

fn resources() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// One case of the corpus.
struct Case {
    line: String,
    results: Vec<(String, String)>,
}

impl Case {
    fn get(&self, key: &str) -> Option<&str> {
        self.results.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn read_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(data_dir().join("cases.txt")).unwrap();
    let mut cases: Vec<Case> = Vec::new();
    for line in text.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            cases.push(Case { line: cmd.to_string(), results: vec![] });
        } else if let Some(result) = line.strip_prefix("> ") {
            let (k, v) = result.split_once(' ').unwrap_or((result, ""));
            if let Some(c) = cases.last_mut() {
                c.results.push((k.to_string(), v.to_string()));
            }
        }
    }
    cases
}

/// The line of stderr that carries the error: argparse's `mkosi: error: …`
/// or the last `‣ ` line that is not a hint (same as regen.py).
fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if let Some(l) = lines.iter().rev().find(|l| l.starts_with("mkosi: error:")) {
        return l.to_string();
    }
    if let Some(l) = lines.iter().rev().find(|l| l.starts_with("‣ ") && !l.starts_with("‣ (")) {
        return l.to_string();
    }
    lines.last().map(|l| l.to_string()).unwrap_or_default()
}

struct Scratch {
    _tmp: tempfile::TempDir,
    tree: PathBuf,
    home: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::Builder::new().prefix("mkosi-cli-").tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let tree = root.join("tree");
        let home = root.join("home");
        std::fs::create_dir_all(&home).unwrap();
        copy_tree(&data_dir().join("tree"), &tree);
        std::fs::set_permissions(tree.join("secret.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(tree.join("file.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
        Scratch { _tmp: tmp, tree, home }
    }

    fn normalize(&self, s: &str) -> String {
        s.replace(&*self.tree.to_string_lossy(), "@TREE@")
            .replace(&*self.home.to_string_lossy(), "@HOME@")
            .replace(&*resources().to_string_lossy(), "@RESOURCES@")
    }

    fn normalize_json(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.normalize(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.normalize_json(x)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (self.normalize(k), self.normalize_json(x))).collect())
            }
            other => other.clone(),
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The configuration files read from the built-in configurations depend on
/// how those are laid out (ours are not a copy of upstream's), so `Files` is
/// compared without them.
fn without_builtin_files(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(
            a.iter().filter(|f| !f.as_str().is_some_and(|f| f.starts_with("@RESOURCES@/"))).cloned().collect(),
        ),
        other => other.clone(),
    }
}

fn compare(path: &str, want: &Value, got: &Value, diffs: &mut Vec<String>) {
    if want == &Value::String("@RANDOM@".into()) {
        if !got.as_str().is_some_and(is_uuid) {
            diffs.push(format!("{path}: expected a random UUID, got {got}"));
        }
        return;
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for k in w.keys().chain(g.keys().filter(|k| !w.contains_key(*k))) {
                let p = format!("{path}.{k}");
                match (w.get(k), g.get(k)) {
                    (Some(a), Some(b)) if k == "Files" => {
                        compare(&p, &without_builtin_files(a), &without_builtin_files(b), diffs)
                    }
                    (Some(a), Some(b)) => compare(&p, a, b, diffs),
                    (Some(a), None) => diffs.push(format!("{p}: missing (upstream: {a})")),
                    (None, Some(b)) => diffs.push(format!("{p}: unexpected key (ours: {b})")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                compare(&format!("{path}[{i}]"), a, b, diffs);
            }
        }
        _ if want != got => diffs.push(format!("{path}:\n        upstream: {want}\n        ours:     {got}")),
        _ => {}
    }
}

/// Upstream's JSON: the baseline's main image with the recorded changes.
fn expected_json(baseline: &Value, delta: &Value) -> Value {
    let base = &baseline["Json"]["Images"][0];
    let apply = |d: &Value| -> Value {
        let mut image = base.clone();
        for (k, v) in d.as_object().into_iter().flatten() {
            image[k] = v.clone();
        }
        image
    };
    let images: Vec<Value> = delta["Images"].as_array().into_iter().flatten().map(apply).collect();
    let tools = if delta["Tools"].is_null() { Value::Null } else { apply(&delta["Tools"]) };
    serde_json::json!({"Images": images, "Tools": tools})
}

/// Cases whose first stderr line is a `--debug` message, which our
/// configuration engine logs without upstream's `‣ ` prefix (and with
/// slightly different wording); not a command line matter.
const DEBUG_LOG_DIFFERS: &[&str] = &["--debug -- summary", "--json summary --debug"];

fn run_case(case: &Case, baseline: &Value) -> Result<bool, String> {
    let parse = case.get("parse").ok_or("no recorded result (run regen.py)")?;
    let (parse_code, _) = parse.split_once(' ').unwrap_or((parse, ""));
    let expected_code: i32 = match case.get("run") {
        Some(code) => code.parse().map_err(|_| "bad run line")?,
        None if parse_code != "0" => parse_code.parse().map_err(|_| "bad parse line")?,
        // Upstream would do real work (build, boot, …); the unit tests
        // compare the parsed command line.
        None => return Ok(false),
    };

    let s = Scratch::new();
    let argv: Vec<String> = mkosi_config::shlex::split(&case.line, &[' '])
        .map_err(|e| format!("bad command line: {e}"))?
        .into_iter()
        .map(|a| a.replace("@TREE@", &s.tree.to_string_lossy()))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_mkosi"))
        .args(&argv)
        .current_dir(&s.tree)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &s.home)
        .env("MKOSI_HOST_DISTRIBUTION", "debian")
        .env("MKOSI_HOST_RELEASE", "trixie")
        .env("MKOSI_RESOURCES", resources())
        .env("TERM", "dumb")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running mkosi: {e}"))?;
    let stdout = s.normalize(&String::from_utf8_lossy(&out.stdout));
    let stderr = s.normalize(&String::from_utf8_lossy(&out.stderr));
    let code = out.status.code().unwrap_or(-1);

    let mut problems = Vec::new();
    if code != expected_code {
        problems.push(format!("exit status {code}, upstream {expected_code}"));
    }
    if expected_code != 0 {
        let want = case.get("stderr").map(str::to_string).unwrap_or_else(|| {
            let (_, what) = parse.split_once(' ').unwrap_or(("", ""));
            what.to_string()
        });
        let got = error_line(&stderr);
        // Upstream fails with a Python exception in some cases; we only need
        // to fail. Our messages may carry a location (`file:line: `) first.
        let python_exception = !want.starts_with("‣ ") && !want.starts_with("mkosi: error:");
        let matches = got == want
            || python_exception
            || (want.starts_with("‣ ") && got.starts_with("‣ ") && got.ends_with(&format!(": {}", &want[4..])));
        if !matches {
            problems.push(format!("error line\n        upstream: {want}\n        ours:     {got}"));
        }
    } else if let Some(delta) = case.get("json") {
        let delta: Value = serde_json::from_str(delta).map_err(|e| format!("bad json line: {e}"))?;
        match serde_json::from_str::<Value>(&stdout) {
            Ok(got) => {
                let mut diffs = Vec::new();
                compare("", &expected_json(baseline, &delta), &s.normalize_json(&got), &mut diffs);
                problems.extend(diffs);
            }
            Err(e) => problems.push(format!("output is not JSON ({e}): {stdout}")),
        }
    } else if let Some(first) = case.get("stdout") {
        let got = stdout.lines().next().unwrap_or_default();
        if got != first {
            problems.push(format!("first line of output\n        upstream: {first}\n        ours:     {got}"));
        }
    }
    if expected_code == 0 && !DEBUG_LOG_DIFFERS.contains(&case.line.as_str()) {
        if let Some(want) = case.get("warning") {
            let got = stderr.lines().next().unwrap_or_default();
            if got != want {
                problems.push(format!("first line of stderr\n        upstream: {want}\n        ours:     {got}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(true)
    } else {
        Err(format!(
            "{}\n        (stderr: {})",
            problems.join("\n    "),
            stderr.trim_end().replace('\n', "\n         ")
        ))
    }
}

#[test]
fn command_line_matches_upstream() {
    let baseline: Value =
        serde_json::from_str(&std::fs::read_to_string(data_dir().join("baseline.json")).unwrap()).unwrap();
    let only = std::env::var("CLI_CASE").ok();
    let cases: Vec<Case> =
        read_cases().into_iter().filter(|c| only.as_ref().is_none_or(|o| c.line.contains(o.as_str()))).collect();
    assert!(!cases.is_empty());

    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let r = run_case(case, &baseline);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);

    let mut failures = Vec::new();
    let mut ran = 0;
    for (i, r) in results {
        match r {
            Ok(true) => ran += 1,
            Ok(false) => {}
            Err(why) => failures.push(format!("$ {}\n    {why}", cases[i].line)),
        }
    }
    eprintln!("cli_compat: {ran} cases ran like upstream, {} differ", failures.len());
    assert!(failures.is_empty(), "{} case(s) differ from upstream:\n\n{}", failures.len(), failures.join("\n\n"));
}
