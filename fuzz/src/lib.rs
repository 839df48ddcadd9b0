//! Harnesses shared by the fuzz targets (`fuzz_targets/*.rs`) and the
//! regression replay test (`tests/regressions.rs`).
//!
//! Every harness takes arbitrary bytes. Errors returned by the configuration
//! engine are expected and ignored; a panic (including a failed assertion
//! below, an overflow in a debug build or an out-of-bounds slice) is a bug.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mkosi_config::config::Config;
use mkosi_config::enums::Architecture;
use mkosi_config::ini::{self, Event};
use mkosi_config::parse::{log, Env};
use mkosi_config::settings::{self, Setting, SETTINGS};
use mkosi_config::summary::{self, Style};
use mkosi_config::{json, parse_config, Args, Host, Verb};
use serde_json::Value;

/// The input as text: UTF-8 when valid, lossily converted otherwise (so
/// invalid inputs still exercise the parsers instead of being thrown away).
pub fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

// ---------------------------------------------------------------------------
// ini

/// `mkosi_config::ini::parse` with all sections and with a section filter
/// (the way `[Match]` evaluation calls it), plus the helpers it is built on.
pub fn ini(data: &[u8]) {
    let text = text(data);

    let _ = ini::splitlines(&text);
    let _ = ini::dedent(&text);
    let _ = ini::py_strip(&text);

    if let Ok(events) = ini::parse(&text, &|_| true) {
        check_events(&events, &text);
    }
    if let Ok(events) = ini::parse(&text, &|s| s == "Match" || s == "TriggerMatch") {
        check_events(&events, &text);
        assert!(events.iter().all(|e| match e {
            Event::Setting { section, .. } | Event::SectionEnd { section, .. } =>
                section == "Match" || section == "TriggerMatch",
        }));
    }
}

fn check_events(events: &[Event], text: &str) {
    // Upper bound on line numbers: dedent never adds lines.
    let max_line = ini::splitlines(&ini::dedent(text)).len();
    for e in events {
        match e {
            Event::Setting { section, key, value, line } => {
                assert!(!section.is_empty(), "empty section name in {e:?}");
                assert!(!key.is_empty(), "empty key in {e:?}");
                assert_eq!(key.as_str(), ini::py_strip(key), "key not stripped in {e:?}");
                assert!(!key.contains('#') && !value.contains('#'), "comment not removed in {e:?}");
                assert!(*line >= 1 && *line <= max_line, "line {line} out of range 1..={max_line}");
            }
            Event::SectionEnd { section, .. } => assert!(!section.is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------
// Fixed fake host

struct Fixture {
    /// Per-process scratch directory.
    base: PathBuf,
    /// The configuration directory (`mkosi -C`), holding only `mkosi.conf`.
    confdir: PathBuf,
    /// Root of the fake host (`etc/os-release`).
    root: PathBuf,
    /// Built-in configurations (`mkosi-tools`, `mkosi-initrd`, …).
    resources: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        log::set_quiet(true);
        let base = std::env::var_os("MKOSI_FUZZ_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("mkosi-fuzz-{}", std::process::id()));
        let confdir = base.join("conf");
        let root = base.join("root");
        let home = base.join("home");
        for d in [&confdir, &root.join("etc"), &home] {
            std::fs::create_dir_all(d).expect("creating the fuzz scratch directory");
        }
        std::fs::write(
            root.join("etc/os-release"),
            "ID=debian\nVERSION_ID=12\nVERSION_CODENAME=bookworm\nPRETTY_NAME=\"Debian GNU/Linux 12\"\n",
        )
        .expect("writing os-release");
        // A few things for Include=/ExtraTrees=/PathExists= etc. to find.
        std::fs::write(base.join("included.conf"), "[Content]\nPackages=included\n").ok();
        std::fs::create_dir_all(base.join("tree/usr/lib")).ok();
        let resources = std::env::var_os("MKOSI_FUZZ_RESOURCES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources"));
        Fixture { base, confdir, root, resources }
    })
}

/// A host that does not depend on the machine the fuzzer runs on.
fn host() -> Host {
    let f = fixture();
    let env: Vec<(String, String)> = [
        ("HOME", f.base.join("home").to_string_lossy().into_owned()),
        ("USER", "fuzz".into()),
        ("LOGNAME", "fuzz".into()),
        ("PATH", "/usr/bin:/bin".into()),
        ("TERM", "dumb".into()),
        ("LANG", "C.UTF-8".into()),
        ("MKOSI_HOST_SYSTEMD_VERSION", "256.7".into()),
        ("FOO", "bar".into()),
        ("http_proxy", "http://proxy.invalid:3128".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Host::new(env, Architecture::X86_64, f.root.clone())
}

/// Whether the input could make the parser read a device, procfs/sysfs or a
/// FIFO (`Include=/dev/zero`, `Include=/dev/stdin`, `/proc/kcore`, …): those
/// hang or exhaust memory exactly like upstream would, which is not the kind
/// of bug we are looking for, so such inputs are skipped.
pub fn touches_special_files(text: &str) -> bool {
    ["dev", "proc", "/sys", "sys/", "/run", "run/"].iter().any(|needle| text.contains(needle))
}

// ---------------------------------------------------------------------------
// config_file

/// Write the input as `mkosi.conf` and run `mkosi summary` / `mkosi --json
/// summary` on it, in-process.
pub fn config_file(data: &[u8]) {
    let text = text(data);
    if touches_special_files(&text) {
        return;
    }
    let f = fixture();
    std::fs::write(f.confdir.join("mkosi.conf"), data).expect("writing mkosi.conf");
    let host = host();
    let args = Args::new(Verb::Summary, Some(f.confdir.clone()));
    let Ok(parsed) = parse_config(args, &[], &host, &f.resources, &f.confdir) else { return };

    let mut images: Vec<Value> = Vec::new();
    for config in parsed.tools.iter().chain(parsed.images.iter()) {
        let j = config.to_json();
        check_json_dump(&j);
        let _ = summary::summary(config, &host, &f.confdir, Style::PLAIN);
        let _ = summary::summary(config, &host, &f.confdir, Style::ANSI);
        // Reading the JSON back must not panic either (errors are fine).
        let _ = Config::from_json(&j, config);
        images.push(j);
    }
    let _ = summary::cat_config(&parsed.images, &f.confdir, Style::PLAIN);
    let obj = serde_json::json!({
        "Images": images,
        "Tools": parsed.tools.as_ref().map(Config::to_json),
    });
    check_json_dump(&obj);
}

/// `json::dump` must produce valid JSON that means the same value.
fn check_json_dump(v: &Value) {
    let dumped = json::dump(v);
    let back: Value =
        serde_json::from_str(&dumped).unwrap_or_else(|e| panic!("json::dump produced invalid JSON ({e}):\n{dumped}"));
    assert!(json_eq(&back, v), "json::dump changed the value:\n{dumped}");
}

/// Structural equality that ignores object key order and compares numbers by
/// value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_eq(v, w)),
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------
// values

/// Split the input into `Name=value`. When `Name` is a known setting, only
/// its parser and matcher run; otherwise the first byte picks a setting (so
/// the fuzzer reaches every setting cheaply) and the whole input is the
/// value. The value is parsed with no previous value, parsed again on top of
/// the first result (list appending, `!item` removal, dictionary merging…)
/// and used as a `[Match]` condition against the parsed value.
pub fn values(data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let text = text(data);
    let (setting, value): (&'static Setting, &str) = match text.split_once('=') {
        Some((name, value)) if settings::by_name(name.trim()).is_some() => {
            (settings::by_name(name.trim()).unwrap(), value)
        }
        _ => {
            let rest = text.char_indices().nth(1).map_or(text.len(), |(i, _)| i);
            (&SETTINGS[data[0] as usize % SETTINGS.len()], &text[rest..])
        }
    };
    if touches_special_files(value) {
        return;
    }
    one_value(setting, value);
}

fn one_value(setting: &'static Setting, value: &str) {
    let f = fixture();
    let host = host();
    let env = Env { cwd: &f.base, host: &host };

    let default = setting.parser.parse(None, None, &env);
    let first = setting.parser.parse(Some(value), None, &env);
    let first = match first {
        Ok(v) => v,
        Err(_) => default.ok().flatten(),
    };
    if let Some(v) = &first {
        check_json_dump(v);
        let _ = mkosi_config::context::value_to_string(v);
    }
    if let Ok(Some(v)) = setting.parser.parse(Some(value), first.as_ref(), &env) {
        check_json_dump(&v);
    }

    if let Some(m) = &setting.matcher {
        let current = first.clone().unwrap_or(Value::Null);
        let cond = value.trim_start_matches(['!', '|']);
        let _ = m.matches(cond, &current);
        let _ = m.matches(cond, &Value::Null);
        let _ = m.matches(cond, &Value::String(value.to_string()));
        let _ = m.matches(cond, &serde_json::json!([value]));
    }
}
