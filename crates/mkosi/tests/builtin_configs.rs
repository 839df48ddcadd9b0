//! The built-in configurations (resources/mkosi-initrd, mkosi-tools,
//! mkosi-vm, mkosi-addon) must finalize to exactly the same settings as
//! upstream mkosi's. The golden files in tests/data/builtin/ were produced by
//! upstream mkosi (see regenerate.py there); each one holds the command line
//! of a case and the expected values of the settings the built-in trees
//! influence, for one image of `mkosi --json summary` (the default initrd,
//! the default tools tree or the main image), or the output of
//! `mkosi dependencies`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

struct Case {
    name: String,
    args: Vec<String>,
    /// `default-initrd`, `main` or `tools`; `None` for `dependencies` cases.
    image: Option<String>,
    expect: Option<BTreeMap<String, Value>>,
    lines: Option<Vec<String>>,
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/builtin")
}

fn resources_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources").canonicalize().expect("resources directory")
}

fn load_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("golden data directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files found");

    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("golden file");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let strings = |v: &Value| -> Vec<String> {
                v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_owned()).collect()
            };
            Case {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                args: strings(&v["args"]),
                image: v.get("image").and_then(Value::as_str).map(str::to_owned),
                expect: v.get("expect").map(|e| {
                    e.as_object().expect("expect object").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                }),
                lines: v.get("lines").map(strings),
            }
        })
        .collect()
}

/// Replace the resources directory in all strings by `@RESOURCES@`.
fn normalize(v: &mut Value, resources: &str) {
    match v {
        Value::String(s) if s.contains(resources) => *s = s.replace(resources, "@RESOURCES@"),
        Value::Array(a) => a.iter_mut().for_each(|v| normalize(v, resources)),
        Value::Object(o) => o.values_mut().for_each(|v| normalize(v, resources)),
        _ => {}
    }
}

/// For two lists, which items are missing from and which are extra in the
/// actual one (order aside).
fn list_delta(expected: &Value, actual: &Value) -> String {
    let (Some(e), Some(a)) = (expected.as_array(), actual.as_array()) else {
        return String::new();
    };
    let missing: Vec<&Value> = e.iter().filter(|v| !a.contains(v)).collect();
    let extra: Vec<&Value> = a.iter().filter(|v| !e.contains(v)).collect();
    if missing.is_empty() && extra.is_empty() {
        return "\n    (same items, different order or multiplicity)".to_owned();
    }
    format!("\n    missing {missing:?}\n    extra   {extra:?}")
}

fn run_case(case: &Case, resources: &Path) -> Result<(), String> {
    let cwd = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut args = case.args.clone();
    if case.lines.is_none() {
        args.extend(["--json".to_owned(), "summary".to_owned()]);
    }

    let output = Command::new(env!("CARGO_BIN_EXE_mkosi"))
        .args(&args)
        .current_dir(cwd.path())
        .env("MKOSI_RESOURCES", resources)
        .env("MKOSI_HOST_DISTRIBUTION", "debian")
        .env("MKOSI_HOST_RELEASE", "trixie")
        .env_remove("MKOSI_CONFIG")
        .output()
        .map_err(|e| format!("running mkosi: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "mkosi {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }

    if let Some(lines) = &case.lines {
        let actual: Vec<&str> = stdout.lines().collect();
        if actual != *lines {
            return Err(format!("mkosi {}:\n  expected {lines:?}\n  actual   {actual:?}", args.join(" ")));
        }
        return Ok(());
    }

    let mut summary: Value = serde_json::from_str(&stdout).map_err(|e| format!("invalid JSON from mkosi: {e}"))?;
    normalize(&mut summary, &resources.to_string_lossy());

    let want = case.image.as_deref().expect("image");
    let image = if want == "tools" {
        summary.get("Tools").filter(|t| !t.is_null())
    } else {
        summary["Images"].as_array().and_then(|images| images.iter().find(|i| i["Image"] == want))
    }
    .ok_or_else(|| format!("mkosi {}: no image {want} in the summary", args.join(" ")))?;

    let mut errors = Vec::new();
    for (key, expected) in case.expect.as_ref().expect("expect") {
        let actual = image.get(key).unwrap_or(&Value::Null);
        if actual != expected {
            errors.push(format!(
                "  {key}:\n    expected {expected}\n    actual   {actual}{}",
                list_delta(expected, actual)
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("mkosi {} (image {want}):\n{}", args.join(" "), errors.join("\n")))
    }
}

#[test]
fn builtin_configs_match_upstream() {
    let resources = resources_dir();
    let mut cases = load_cases();

    // The default tools tree is built for the host architecture and the
    // golden data was recorded on x86-64.
    if !cfg!(target_arch = "x86_64") {
        cases.retain(|c| c.image.as_deref() != Some("tools"));
    }

    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|case| {
                let resources = &resources;
                scope.spawn(move || run_case(case, resources).map_err(|e| format!("[{}] {e}", case.name)))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("test thread").err()).collect()
    });

    assert!(
        failures.is_empty(),
        "{} of {} built-in configuration cases differ from upstream:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
