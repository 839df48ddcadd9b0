//! Differential tests against upstream mkosi.
//!
//! Every directory in `tests/compat/` is a case: a configuration tree, the
//! command line and what upstream's `mkosi --json summary` printed for it
//! (`expected.json`) or that upstream failed (`expected.error`). The expected
//! files are produced by `tests/compat/regen.py`, which needs an upstream
//! checkout; this test only needs the files, so it runs anywhere without
//! network or root.
//!
//! Each case runs our engine through the library API with a controlled host
//! (environment, architecture, os-release) and compares the JSON field by
//! field. Set `COMPAT_CASE=name[,name…]` to run only some cases,
//! `COMPAT_SHOW_ERRORS=1` to print our and upstream's messages for error
//! cases, `COMPAT_TIMING=1` to time cases and `COMPAT_DIR` to use another
//! corpus directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mkosi_config::config::Config;
use mkosi_config::enums::Architecture;
use mkosi_config::parse::log;
use mkosi_config::settings::{self, SETTINGS};
use mkosi_config::{parse_config, Args, CliAssignment, Host, Verb};
use serde_json::{json, Value};

const HOST_CA_BUNDLES: &[&str] = &["/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/certs/ca-certificates.crt"];

fn corpus_dir() -> PathBuf {
    match std::env::var_os("COMPAT_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat"),
    }
}

fn resources_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

fn read_lines(p: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(p) else { return vec![] };
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if text.is_empty() {
        return vec![];
    }
    text.split('\n').map(str::to_string).collect()
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    let Ok(entries) = std::fs::read_dir(src) else { return };
    for e in entries {
        let e = e.unwrap();
        let from = e.path();
        let to = dst.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &to).unwrap();
        } else if ft.is_dir() {
            copy_tree(&from, &to);
        } else {
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

fn apply_setup(case: &Path, tree: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for line in read_lines(&case.join("setup")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [c, ..] if c.starts_with('#') => {}
            ["chmod", mode, path] => {
                let mode = u32::from_str_radix(mode, 8).unwrap();
                std::fs::set_permissions(tree.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
            }
            ["mkdir", path] => std::fs::create_dir_all(tree.join(path)).unwrap(),
            ["symlink", target, path] => std::os::unix::fs::symlink(target, tree.join(path)).unwrap(),
            ["rm", path] => std::fs::remove_file(tree.join(path)).unwrap(),
            _ => panic!("{}/setup: bad line {line}", case.display()),
        }
    }
}

/// A minimal emulation of the `mkosi` command line (the binary uses clap;
/// the engine only needs the resulting assignments).
fn parse_cli(argv: &[String], start: &Path) -> Result<(Args, Vec<CliAssignment>, PathBuf), String> {
    let mut directory = Some(start.to_path_buf());
    let mut cwd = start.to_path_buf();
    let mut assignments = Vec::new();
    let mut verb: Option<Verb> = None;
    let mut cmdline = Vec::new();
    let mut force = 0;
    let mut auto_bump = false;
    let mut json = false;

    let mut i = 0;
    let next = |i: &mut usize, opt: &str| -> Result<String, String> {
        *i += 1;
        argv.get(*i).cloned().ok_or_else(|| format!("{opt}: expected one argument"))
    };
    while i < argv.len() {
        let arg = argv[i].clone();
        if arg == "--" {
            cmdline.extend(argv[i + 1..].iter().cloned());
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (long.to_string(), None),
            };
            match name.as_str() {
                "json" => json = true,
                "force" => force += 1,
                "auto-bump" => auto_bump = true,
                "debug" | "no-pager" | "debug-shell" | "debug-workspace" | "debug-sandbox" | "debug-timing" => {}
                "directory" => {
                    let d = match inline {
                        Some(v) => v,
                        None => next(&mut i, &arg)?,
                    };
                    chdir(&mut cwd, &mut directory, &d)?;
                }
                _ => {
                    let s = settings::by_option(&name).ok_or_else(|| format!("unrecognized arguments: {arg}"))?;
                    let value = match inline {
                        Some(v) => v,
                        None if s.name == "Checksum" => "yes".to_string(),
                        None => next(&mut i, &arg)?,
                    };
                    if let Some(choices) = s.choices {
                        if !choices.contains(&value.as_str()) {
                            return Err(format!("argument --{name}: invalid choice: '{value}'"));
                        }
                    }
                    assignments.push(CliAssignment {
                        setting: s,
                        value: Some(value),
                        cwd: cwd.clone(),
                        option: format!("--{name}"),
                    });
                }
            }
        } else if arg.len() >= 2 && arg.starts_with('-') {
            let c = arg.chars().nth(1).unwrap_or('?');
            match c {
                'f' => force += arg.len() - 1,
                'B' => auto_bump = true,
                'C' => {
                    let d = if arg.len() > 2 { arg[2..].to_string() } else { next(&mut i, &arg)? };
                    chdir(&mut cwd, &mut directory, &d)?;
                }
                _ => {
                    let s = SETTINGS
                        .iter()
                        .find(|s| s.short == Some(c))
                        .ok_or_else(|| format!("unrecognized arguments: {arg}"))?;
                    let value = match s.short_const {
                        Some(v) => v.to_string(),
                        None if arg.len() > 2 => arg[2..].to_string(),
                        None => next(&mut i, &arg)?,
                    };
                    assignments.push(CliAssignment {
                        setting: s,
                        value: Some(value),
                        cwd: cwd.clone(),
                        option: format!("-{c}"),
                    });
                }
            }
        } else if verb.is_none() {
            verb = Some(Verb::from_name(&arg).ok_or_else(|| format!("invalid choice: '{arg}'"))?);
        } else {
            cmdline.push(arg);
        }
        i += 1;
    }

    let mut args = Args::new(verb.unwrap_or(Verb::Build), directory);
    args.cmdline = cmdline;
    args.force = force as u32;
    args.auto_bump = auto_bump;
    args.json = json;
    Ok((args, assignments, cwd))
}

fn chdir(cwd: &mut PathBuf, directory: &mut Option<PathBuf>, d: &str) -> Result<(), String> {
    if d.is_empty() {
        *directory = None;
        return Ok(());
    }
    let target = cwd.join(d);
    let canon = std::fs::canonicalize(&target).map_err(|_| format!("{d} is not a directory!"))?;
    if !canon.is_dir() {
        return Err(format!("{d} is not a directory!"));
    }
    *cwd = canon.clone();
    *directory = Some(canon);
    Ok(())
}

struct Subst {
    tree: String,
    home: String,
    resources: String,
    ca_bundle: Value,
}

impl Subst {
    fn string(&self, s: &str) -> String {
        s.replace("@TREE@", &self.tree).replace("@HOME@", &self.home).replace("@RESOURCES@", &self.resources)
    }

    fn expected(&self, v: &Value, key: &str) -> Value {
        match v {
            Value::String(s) if s == "@HOST_CA_BUNDLE@" && key == "ProxyPeerCertificate" => self.ca_bundle.clone(),
            Value::String(s) => Value::String(self.string(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.expected(x, "")).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (self.string(k), self.expected(x, k))).collect()),
            other => other.clone(),
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}…", &s[..s.char_indices().nth(300).map(|(i, _)| i).unwrap_or(s.len())])
    } else {
        s
    }
}

/// The configuration files read from the built-in configurations depend on
/// how those are laid out (ours are not a copy of upstream's), so `Files`
/// is compared without them.
fn without_builtin_files(v: &Value) -> Value {
    let resources = resources_dir().to_string_lossy().into_owned() + "/";
    match v {
        Value::Array(a) => {
            Value::Array(a.iter().filter(|f| !f.as_str().is_some_and(|f| f.starts_with(&resources))).cloned().collect())
        }
        other => other.clone(),
    }
}

fn compare(path: &str, want: &Value, got: &Value, diffs: &mut Vec<String>) {
    if want == &json!("@RANDOM@") {
        if got.as_str().is_none_or(|s| uuid::Uuid::parse_str(s).is_err()) {
            diffs.push(format!("{path}: expected a random UUID, got {}", short(got)));
        }
        return;
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let keys: BTreeSet<&String> = w.keys().chain(g.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (w.get(k), g.get(k)) {
                    (Some(a), Some(b)) if k == "Files" => {
                        compare(&p, &without_builtin_files(a), &without_builtin_files(b), diffs)
                    }
                    (Some(a), Some(b)) => compare(&p, a, b, diffs),
                    (Some(a), None) => diffs.push(format!("{p}: missing (upstream: {})", short(a))),
                    (None, Some(b)) => diffs.push(format!("{p}: unexpected key (ours: {})", short(b))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                compare(&format!("{path}[{i}]"), a, b, diffs);
            }
        }
        _ => {
            if want != got {
                diffs.push(format!("{path}:\n      upstream: {}\n      ours:     {}", short(want), short(got)));
            }
        }
    }
}

enum Outcome {
    Pass,
    Skip(String),
    Fail(String),
}

fn run_case(case: &Path) -> Outcome {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    for req in read_lines(&case.join("requires")) {
        if !resources_dir().join(&req).exists() {
            return Outcome::Skip(format!("needs built-in configuration {req}"));
        }
    }
    let expected_json = std::fs::read_to_string(case.join("expected.json")).ok();
    let expected_error = std::fs::read_to_string(case.join("expected.error")).ok();
    if expected_json.is_none() && expected_error.is_none() {
        return Outcome::Fail("no expected.json or expected.error (run regen.py)".into());
    }

    let tmp = tempfile::Builder::new().prefix("mkosi-compat-").tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let tree = root.join("tree");
    let home = root.join("home");
    let hostroot = root.join("hostroot");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(hostroot.join("etc")).unwrap();
    std::fs::write(hostroot.join("etc/os-release"), "ID=debian\nVERSION_CODENAME=trixie\n").unwrap();
    copy_tree(&case.join("tree"), &tree);
    apply_setup(case, &tree);

    let subst = |s: &str| s.replace("@TREE@", &tree.to_string_lossy()).replace("@HOME@", &home.to_string_lossy());
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), home.to_string_lossy().into_owned()),
        ("MKOSI_HOST_DISTRIBUTION".into(), "debian".into()),
        ("MKOSI_HOST_RELEASE".into(), "trixie".into()),
    ];
    for line in read_lines(&case.join("env")) {
        if let Some((k, v)) = line.split_once('=') {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), subst(v)));
        }
    }
    let host = Host::new(env, Architecture::X86_64, hostroot);

    let mut argv: Vec<String> = vec!["--json".into()];
    argv.extend(read_lines(&case.join("args")).iter().map(|a| subst(a)));
    argv.push("summary".into());

    let result = parse_cli(&argv, &tree).map_err(|e| (e, None)).and_then(|(args, assignments, cwd)| {
        parse_config(args, &assignments, &host, &resources_dir(), &cwd).map_err(|e| (e.to_string(), Some(Box::new(e))))
    });

    if let Some(upstream) = expected_error {
        let upstream = upstream.trim_end();
        return match result {
            Ok(_) => Outcome::Fail(format!("upstream fails but we succeed; upstream said:\n    {upstream}")),
            Err((msg, err)) => {
                let mut problems = Vec::new();
                let want = read_lines(&case.join("location"));
                if !want.is_empty() {
                    let loc = err.as_ref().and_then(|e| e.location.clone());
                    for w in &want {
                        let Some((k, v)) = w.split_once('=') else { continue };
                        let ok = match (k, &loc) {
                            ("file", Some(l)) => l.file == tree.join(v),
                            ("line", Some(l)) => l.line.map(|n| n.to_string()).as_deref() == Some(v),
                            ("setting", Some(l)) => l.setting.as_deref() == Some(v),
                            _ => false,
                        };
                        if !ok {
                            problems.push(format!("location {k} should be {v}"));
                        }
                    }
                }
                // Optionally the exact message (without location) upstream prints.
                if let Ok(want) = std::fs::read_to_string(case.join("message")) {
                    let want = subst(want.trim_end());
                    let got = err.as_ref().map(|e| e.message.clone()).unwrap_or_else(|| msg.clone());
                    if got != want {
                        problems.push(format!("message should be {want:?}"));
                    }
                }
                if std::env::var_os("COMPAT_SHOW_ERRORS").is_some() {
                    eprintln!("{name}:\n    ours:     {msg}\n    upstream: {}", upstream.lines().last().unwrap_or(""));
                }
                if problems.is_empty() {
                    Outcome::Pass
                } else {
                    Outcome::Fail(format!("{}\n    ours:     {msg}\n    upstream: {upstream}", problems.join(", ")))
                }
            }
        };
    }

    let parsed = match result {
        Ok(p) => p,
        Err((msg, _)) => return Outcome::Fail(format!("we fail but upstream succeeds: {msg}")),
    };
    let got = json!({
        "Images": parsed.images.iter().map(Config::to_json).collect::<Vec<_>>(),
        "Tools": parsed.tools.as_ref().map(Config::to_json),
    });

    let expected: Value = match serde_json::from_str(expected_json.as_deref().unwrap_or_default()) {
        Ok(v) => v,
        Err(e) => return Outcome::Fail(format!("bad expected.json: {e}")),
    };
    let ca_bundle = HOST_CA_BUNDLES.iter().find(|p| Path::new(p).exists()).map(|p| json!(p)).unwrap_or(Value::Null);
    let s = Subst {
        tree: tree.to_string_lossy().into_owned(),
        home: home.to_string_lossy().into_owned(),
        resources: resources_dir().to_string_lossy().into_owned(),
        ca_bundle,
    };
    let expected = s.expected(&expected, "");

    let mut diffs = Vec::new();
    compare("", &expected, &got, &mut diffs);

    // Every image must survive a JSON round trip unchanged.
    for image in &parsed.images {
        let j = image.to_json();
        match Config::from_json(&j, &Config::from_values(vec![])) {
            Ok(back) if back.to_json() == j => {}
            Ok(back) => {
                let mut d = Vec::new();
                compare("", &j, &back.to_json(), &mut d);
                diffs.push(format!("round trip of image {} changed it: {}", image.image(), d.join("; ")));
            }
            Err(e) => diffs.push(format!("round trip of image {} failed: {e}", image.image())),
        }
    }

    if diffs.is_empty() {
        Outcome::Pass
    } else {
        let _ = name;
        Outcome::Fail(diffs.iter().map(|d| format!("    {d}")).collect::<Vec<_>>().join("\n"))
    }
}

#[test]
fn compat_corpus() {
    log::set_quiet(true);
    let only: Option<Vec<String>> =
        std::env::var("COMPAT_CASE").ok().map(|v| v.split(',').map(str::to_string).collect());

    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();

    let cases: Vec<PathBuf> = cases
        .into_iter()
        .filter(|c| {
            let name = c.file_name().unwrap().to_string_lossy().into_owned();
            only.as_ref().is_none_or(|o| o.contains(&name))
        })
        .collect();

    // Cases are independent (each works on its own copy of its tree), so run
    // them in parallel.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let start = std::time::Instant::now();
                let outcome = run_case(case);
                if std::env::var_os("COMPAT_TIMING").is_some() {
                    eprintln!("{:>6} ms {}", start.elapsed().as_millis(), case.display());
                }
                results.lock().unwrap().push((i, outcome));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);

    let mut failures = Vec::new();
    let mut passed = 0;
    for (i, outcome) in results {
        let name = cases[i].file_name().unwrap().to_string_lossy().into_owned();
        match outcome {
            Outcome::Pass => passed += 1,
            Outcome::Skip(why) => eprintln!("compat: skipping {name}: {why}"),
            Outcome::Fail(why) => failures.push(format!("{name}:\n{why}")),
        }
    }
    eprintln!("compat: {passed} passed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} compat case(s) differ from upstream:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// The settings table compared with upstream's (tests/compat/settings.json,
// written by regen.py): names, options, scopes, default paths, parsers,
// matchers, defaults.

fn describe_path(o: &mkosi_config::settings::PathOpts) -> Value {
    json!({
        "kind": "path",
        "required": o.required,
        "resolve": o.resolve,
        "secret": o.secret,
        "absolute": o.absolute,
        "exclude_usr": o.exclude_usr,
        "constants": o.constants,
    })
}

fn describe_item(item: &settings::Item) -> Value {
    use settings::Item;
    match item {
        Item::Str => json!({"kind": "str"}),
        Item::Path(o) => describe_path(o),
        Item::Tree { required, absolute, directory } => {
            json!({"kind": "tree", "required": required, "absolute": absolute, "directory": directory})
        }
        Item::Profile => json!({"kind": "profile"}),
        Item::Enum(name, _) => json!({"kind": "enum", "type": name}),
        Item::KmodRegex => json!({"kind": "kmod_regex"}),
        Item::Drive => json!({"kind": "drive"}),
        Item::UkiProfile => json!({"kind": "uki_profile"}),
    }
}

fn describe_parser(p: &settings::Parser) -> Value {
    use settings::{DictItem, Parser, Split};
    let kind = |k: &str| json!({ "kind": k });
    match p {
        Parser::Bool => kind("boolean"),
        Parser::Feature => kind("feature"),
        Parser::Str => kind("string"),
        Parser::Filename(hint) => json!({"kind": "filename", "hint": hint}),
        Parser::Enum(name, _) => json!({"kind": "enum", "type": name}),
        Parser::EnumBool { name, yes, no, .. } => json!({"kind": "enum_bool", "type": name, "yes": yes, "no": no}),
        Parser::Compression => kind("compression"),
        Parser::Path(o) => describe_path(o),
        Parser::Key => kind("key"),
        Parser::Certificate => kind("certificate"),
        Parser::KeySource => kind("key_source"),
        Parser::CertificateSource => kind("certificate_source"),
        Parser::Uuid => kind("uuid"),
        Parser::SourceDateEpoch => kind("source_date_epoch"),
        Parser::CompressLevel => kind("compress_level"),
        Parser::Mode => kind("mode"),
        Parser::Bytes => kind("bytes"),
        Parser::Number => kind("number"),
        Parser::SectorSize => kind("sector_size"),
        Parser::VsockCid => kind("vsock_cid"),
        Parser::MinimumVersion => kind("minimum_version"),
        Parser::RootPassword => kind("root_password"),
        Parser::Credentials => kind("credentials"),
        Parser::SplitArtifacts => kind("artifact_output_list"),
        Parser::List(o) => json!({
            "kind": "list",
            "delimiter": if o.split == Split::Default { Value::Null } else { json!(" ") },
            "unescape": o.split == Split::ShellSpace,
            "reset": o.reset,
            "sort_packages": o.sort_packages,
            "globs": o.globs,
            "item": describe_item(&o.item),
        }),
        Parser::Dict(item) => json!({
            "kind": "dict",
            "delimiter": " ",
            "unescape": true,
            "item": match item {
                DictItem::Environment => json!({"kind": "environment"}),
                DictItem::KeyValue | DictItem::KeyValueLines => json!({"kind": "key_value"}),
            },
        }),
    }
}

fn describe_matcher(m: &settings::Matcher) -> Value {
    use settings::Matcher;
    match m {
        Matcher::ListContains { .. } => json!({"kind": "list"}),
        Matcher::Str => json!({"kind": "string", "globs": false}),
        Matcher::Glob => json!({"kind": "string", "globs": true}),
        Matcher::Enum(name, _) => json!({"kind": "enum", "type": name}),
        Matcher::Architecture => json!({"kind": "architecture"}),
        Matcher::Feature => json!({"kind": "feature"}),
        Matcher::Version => json!({"kind": "version"}),
        Matcher::BuildSources => json!({"kind": "build_sources"}),
        Matcher::KeyValue => json!({"kind": "key_value"}),
    }
}

fn lowercase_keys(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k.to_lowercase(), lowercase_keys(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(lowercase_keys).collect()),
        other => other,
    }
}

fn describe_setting(s: &settings::Setting) -> Value {
    use settings::{Default, Factory, Scope};
    let host = Host::new(vec![], Architecture::X86_64, PathBuf::from("/nonexistent"));
    let env = mkosi_config::parse::Env { cwd: Path::new("/"), host: &host };
    let (default, factory, depends): (Value, bool, Vec<&str>) = match s.default {
        Default::Natural => (Value::Null, false, vec![]),
        Default::Static(j) => (lowercase_keys(serde_json::from_str(j).unwrap()), false, vec![]),
        Default::Factory(Factory::Seed, _) => (json!("@FRESH-UUID@"), false, vec![]),
        Default::Factory(Factory::NativeArchitecture, _) => (json!("@NATIVE@"), false, vec![]),
        Default::Factory(_, deps) => (Value::Null, true, deps.to_vec()),
    };
    let short_const = s.short_const.map(|c| s.parser.parse(Some(c), None, &env).unwrap().unwrap());
    json!({
        "name": s.name,
        "field": s.field,
        "section": s.section.as_str(),
        "compat_names": s.compat_names,
        "long": s.long,
        "compat_longs": s.compat_longs,
        "short": s.short.map(|c| c.to_string()),
        "short_const": short_const,
        "scope": match s.scope {
            Scope::Local => "local",
            Scope::Universal => "universal",
            Scope::Multiversal => "multiversal",
            Scope::Inherit => "inherit",
            Scope::Main => "main",
            Scope::Tools => "tools",
            Scope::Initrd => "initrd",
            Scope::InitrdInherit => "initrd-inherit",
        },
        "specifier": s.specifier.map(|c| c.to_string()),
        "paths": s.paths,
        "recursive_paths": s.recursive_paths,
        "read_text": s.read_text,
        "secret": s.secret,
        "tools": s.tools,
        "choices": s.choices,
        "nullable": s.nullable,
        "default": default,
        "factory": factory,
        "factory_depends": depends,
        "match": s.matcher.as_ref().map(describe_matcher),
        "parser": describe_parser(&s.parser),
    })
}

#[test]
fn settings_table_matches_upstream() {
    let text = std::fs::read_to_string(corpus_dir().join("settings.json")).unwrap();
    let upstream: Vec<Value> = serde_json::from_str(&text).unwrap();
    let ours: Vec<Value> = SETTINGS.iter().map(describe_setting).collect();

    let mut diffs = Vec::new();
    let names = |v: &[Value]| v.iter().map(|s| s["name"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>();
    if names(&upstream) != names(&ours) {
        diffs.push(format!(
            "setting order differs:\n  upstream: {:?}\n  ours:     {:?}",
            names(&upstream),
            names(&ours)
        ));
    }
    for u in &upstream {
        let name = u["name"].as_str().unwrap_or_default();
        match ours.iter().find(|o| o["name"] == u["name"]) {
            Some(o) => compare(name, u, o, &mut diffs),
            None => diffs.push(format!("{name}: missing")),
        }
    }
    assert!(diffs.is_empty(), "settings table differs from upstream:\n{}", diffs.join("\n"));
}
