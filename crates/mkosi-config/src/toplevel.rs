//! Turning a command line and a configuration tree into the list of images
//! to build: the main image, its subimages (`mkosi.images/`), the default
//! initrd and the default tools tree, in dependency order.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::config::{is_config_field, partial_from_json, Args, Config, Verb};
use crate::context::{sorted_entries, Context};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::parse::log;
use crate::settings::{self, Scope, Setting, SETTINGS};

/// One setting given on the command line.
#[derive(Debug, Clone)]
pub struct CliAssignment {
    pub setting: &'static Setting,
    /// `None` for argument-less options whose value is implied.
    pub value: Option<String>,
    /// Directory relative paths in the value are resolved against (the
    /// directory current when the option was seen, after earlier `-C`s).
    pub cwd: PathBuf,
    /// The option as written, for error messages.
    pub option: String,
}

/// Everything `parse_config` produces.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub args: Args,
    /// The default tools tree, when `ToolsTree=yes|default`.
    pub tools: Option<Config>,
    /// Subimages and generated images in build order, main image last.
    pub images: Vec<Config>,
    /// History to save (`History=yes`): path and JSON.
    pub history: Option<(PathBuf, Value)>,
}

/// The directory holding the configuration: `D`, or `D/mkosi` when only that has one.
pub fn finalize_configdir(directory: Option<&Path>) -> Option<PathBuf> {
    let d = directory?;
    if !(d.join("mkosi.conf").exists() || d.join("mkosi.tools.conf").exists())
        && (d.join("mkosi/mkosi.conf").is_file() || d.join("mkosi/mkosi.tools.conf").exists())
    {
        return Some(d.join("mkosi"));
    }
    Some(d.to_path_buf())
}

fn want_new_history(args: &Args) -> bool {
    args.directory.is_some()
        && args.verb.needs_build()
        && !args.rerun_build_scripts
        && !(args.verb != Verb::Build && args.force == 0)
}

fn have_history(args: &Args, historydir: &Path) -> bool {
    if want_new_history(args) || args.directory.is_none() {
        return false;
    }
    if matches!(args.verb, Verb::Clean | Verb::Box | Verb::Sandbox | Verb::LatestSnapshot) {
        return false;
    }
    if (args.verb == Verb::Summary || args.verb.needs_tools() || args.verb.needs_build()) && args.force > 0 {
        return false;
    }
    if args.verb == Verb::Build && !args.rerun_build_scripts {
        return false;
    }
    historydir.join("latest.json").exists()
}

/// Compute the next `ImageVersion=` for `bump`/`-B`.
pub fn bump_image_version(configdir: &Path) -> Result<String> {
    let version_file = configdir.join("mkosi.version");
    if is_executable(&version_file) {
        return Err(Error::new(format!("Cannot bump image version, '{}' is executable", version_file.display())));
    }
    let version = std::fs::read_to_string(&version_file).ok().map(|v| v.trim().to_string());
    let bump = configdir.join("mkosi.bump");
    let new_version = if bump.exists() {
        let out = std::process::Command::new(&bump)
            .current_dir(configdir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| Error::new(format!("Failed to run {}: {e}", bump.display())))?;
        if !out.status.success() {
            return Err(Error::new(format!(
                "\"{}\" returned non-zero exit code {}.",
                bump.display(),
                exit_code(&out.status)
            )));
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else if let Some(v) = &version {
        let mut parts: Vec<String> = v.split('.').map(str::to_string).collect();
        let last = parts.last().cloned().unwrap_or_default();
        match last.trim().parse::<u64>() {
            Ok(n) if !last.is_empty() => {
                let idx = parts.len() - 1;
                parts[idx] = (n + 1).to_string();
            }
            _ => {
                log::warn("Last component of current version is not a decimal integer, appending '.2'");
                parts.push("2".to_string());
            }
        }
        parts.join(".")
    } else {
        "1".to_string()
    };
    log::info(&format!("Bumping version: '{}' → '{new_version}'", version.as_deref().unwrap_or("n/a")));
    Ok(new_version)
}

/// A process's exit status as Python's `returncode` prints it (negative
/// signal numbers for processes killed by a signal).
pub(crate) fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| -s)).unwrap_or(-1)
}

fn is_executable(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: access() only reads the NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

fn in_box(host: &Host) -> bool {
    host.env("MKOSI_IN_BOX").and_then(crate::parse::try_parse_boolean).unwrap_or(false)
}

type Finalized = HashMap<&'static str, Value>;

fn filtered_environment(finalized: &Finalized) -> Value {
    let env = finalized.get("Environment").and_then(Value::as_object);
    let pass: Vec<&str> = finalized
        .get("PassEnvironment")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = serde_json::Map::new();
    if let Some(env) = env {
        for name in pass {
            if let Some(v) = env.get(name) {
                out.insert(name.to_string(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn to_config(ctx: &Context, finalized: Finalized) -> Config {
    let mut values: Vec<(String, Value)> = finalized.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    values.push(("Files".into(), json!(ctx.files.iter().map(|f| f.to_string_lossy()).collect::<Vec<_>>())));
    values.push(("Image".into(), json!(ctx.image)));
    Config::from_values(values)
}

/// Copy a main-image setting of `scope` (Tools or Initrd) into a generated
/// image's context, in the namespace kind it had in the main image.
fn copy_scoped(main: &Context, ctx: &mut Context, s: &'static Setting, finalized: &Finalized) -> Result<()> {
    let dest = settings::by_field(s.scoped_field())
        .ok_or_else(|| Error::new(format!("{} maps to an unknown setting", s.name)))?
        .field;
    let value = finalized.get(s.field).cloned().unwrap_or(Value::Null);
    let value = if value.is_null() { None } else { Some(value) };
    if main.cli.contains_key(s.field) {
        if main.cli_was_none.contains(s.field) {
            ctx.cli_was_none.insert(dest);
        }
        ctx.cli.insert(dest, value);
    } else if main.config.contains_key(s.field) {
        ctx.config.insert(dest, value);
    } else {
        ctx.defaults.insert(dest, value);
    }
    Ok(())
}

fn finalize_default_tools<'h>(
    main: &Context<'h>,
    finalized: &Finalized,
    configdir: Option<&Path>,
    invocation_cwd: &Path,
) -> Result<Config> {
    let mut ctx = Context::new(main.host, main.resources.clone(), invocation_cwd.to_path_buf());
    for s in SETTINGS {
        if s.scope == Scope::Multiversal {
            ctx.cli.insert(s.field, finalized.get(s.field).cloned().filter(|v| !v.is_null()));
        } else if s.scope == Scope::Tools {
            copy_scoped(main, &mut ctx, s, finalized)?;
        }
    }
    ctx.cli.insert("Format", Some(json!("directory")));
    ctx.image = "tools".to_string();
    ctx.directory = main.directory.clone();
    ctx.config.insert("Environment", Some(filtered_environment(finalized)));

    parse_generated_config(&mut ctx, configdir.map(|c| c.join("mkosi.tools.conf")), "mkosi-tools")?;
    let f = ctx.finalize()?;
    Ok(to_config(&ctx, f))
}

fn finalize_default_initrd<'h>(
    main: &Context<'h>,
    finalized: &Finalized,
    configdir: Option<&Path>,
    invocation_cwd: &Path,
) -> Result<Config> {
    let mut ctx = Context::new(main.host, main.resources.clone(), invocation_cwd.to_path_buf());
    for s in SETTINGS {
        match s.scope {
            Scope::Universal | Scope::Multiversal => {
                ctx.cli.insert(s.field, finalized.get(s.field).cloned().filter(|v| !v.is_null()));
            }
            Scope::Inherit | Scope::InitrdInherit => {
                if let Some(v) = finalized.get(s.field) {
                    ctx.config.insert(s.field, if v.is_null() { None } else { Some(v.clone()) });
                }
            }
            Scope::Initrd => copy_scoped(main, &mut ctx, s, finalized)?,
            _ => {}
        }
    }
    ctx.image = "default-initrd".to_string();
    ctx.directory = main.directory.clone();
    ctx.config.insert("Environment", Some(filtered_environment(finalized)));

    parse_generated_config(&mut ctx, configdir.map(|c| c.join("mkosi.initrd.conf")), "mkosi-initrd")?;
    let f = ctx.finalize()?;
    Ok(to_config(&ctx, f))
}

fn parse_generated_config(ctx: &mut Context, user: Option<PathBuf>, builtin: &str) -> Result<()> {
    if let Some(p) = user.filter(|p| p.exists()) {
        if p.is_dir() {
            ctx.with_cwd(&p, |c| c.parse_config_one(&p, true, true))?;
        } else {
            ctx.parse_config_one(&p, false, false)?;
        }
    }
    let dir = ctx.resources.join(builtin);
    ctx.with_cwd(&dir, |c| c.parse_config_one(&dir, true, false))?;
    Ok(())
}

/// Order the images `include` depends on (transitively) so that
/// dependencies come first.
pub fn resolve_deps(images: Vec<Config>, include: &[String]) -> Result<Vec<Config>> {
    let names: Vec<String> = images.iter().map(|c| c.image().to_string()).collect();
    let graph: HashMap<String, Vec<String>> =
        images.iter().map(|c| (c.image().to_string(), c.strings("Dependencies"))).collect();

    if let Some(missing) = include.iter().find(|i| !graph.contains_key(*i)) {
        return Err(Error::new(format!("No image found with name {missing}")));
    }

    let mut needed = HashSet::new();
    let mut queue: std::collections::VecDeque<String> = include.iter().cloned().collect();
    while let Some(image) = queue.pop_front() {
        if needed.insert(image.clone()) {
            let deps = graph.get(&image).ok_or_else(|| Error::new(format!("No image found with name {image}")))?;
            queue.extend(deps.iter().cloned());
        }
    }

    let images: Vec<Config> = images.into_iter().filter(|c| needed.contains(c.image())).collect();
    let order_names: Vec<&String> = names.iter().filter(|n| needed.contains(*n)).collect();
    let order = topological_order(&order_names, &graph)?;
    let mut images = images;
    images.sort_by_key(|c| order.iter().position(|n| n == c.image()).unwrap_or(usize::MAX));
    Ok(images)
}

/// The cycle graphlib's `TopologicalSorter._find_cycle()` reports: a depth
/// first search along successor edges (from an image to the images that
/// depend on it), starting from the nodes in insertion order.
fn find_cycle(order: &[String], succ: &[Vec<usize>]) -> Option<Vec<String>> {
    let mut seen = HashSet::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut itstack: Vec<usize> = Vec::new();
    let mut stack_index: HashMap<usize, usize> = HashMap::new();
    for start in 0..order.len() {
        if seen.contains(&start) {
            continue;
        }
        let mut node = start;
        loop {
            if seen.contains(&node) {
                if let Some(&i) = stack_index.get(&node) {
                    let mut cycle: Vec<String> = stack[i..].iter().map(|&n| order[n].clone()).collect();
                    cycle.push(order[node].clone());
                    return Some(cycle);
                }
            } else {
                seen.insert(node);
                itstack.push(0);
                stack_index.insert(node, stack.len());
                stack.push(node);
            }
            // Backtrack to the topmost entry with another successor.
            let mut next = None;
            while let (Some(&top), Some(pos)) = (stack.last(), itstack.last_mut()) {
                if let Some(&s) = succ[top].get(*pos) {
                    *pos += 1;
                    next = Some(s);
                    break;
                }
                stack_index.remove(&top);
                stack.pop();
                itstack.pop();
            }
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
    }
    None
}

/// Topological order like Python's `graphlib.TopologicalSorter.static_order()`.
fn topological_order(nodes: &[&String], graph: &HashMap<String, Vec<String>>) -> Result<Vec<String>> {
    // Node insertion order: each node, then its predecessors as first seen.
    let mut order: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut npred: Vec<usize> = Vec::new();
    let mut succ: Vec<Vec<usize>> = Vec::new();
    let mut node_id = |n: &str, order: &mut Vec<String>, npred: &mut Vec<usize>, succ: &mut Vec<Vec<usize>>| -> usize {
        if let Some(&i) = index.get(n) {
            return i;
        }
        order.push(n.to_string());
        npred.push(0);
        succ.push(Vec::new());
        index.insert(n.to_string(), order.len() - 1);
        order.len() - 1
    };
    for n in nodes {
        let id = node_id(n, &mut order, &mut npred, &mut succ);
        let preds = graph.get(*n).cloned().unwrap_or_default();
        npred[id] += preds.len();
        for p in preds {
            let pid = node_id(&p, &mut order, &mut npred, &mut succ);
            succ[pid].push(id);
        }
    }

    let mut ready: Vec<usize> = (0..order.len()).filter(|&i| npred[i] == 0).collect();
    let mut out = Vec::new();
    let mut done = 0;
    while !ready.is_empty() {
        let group = std::mem::take(&mut ready);
        for &n in &group {
            out.push(order[n].clone());
            done += 1;
        }
        for n in group {
            for &s in &succ[n].clone() {
                npred[s] -= 1;
                if npred[s] == 0 {
                    ready.push(s);
                }
            }
        }
    }
    if done != order.len() {
        return Err(match find_cycle(&order, &succ) {
            Some(cycle) => Error::new(format!("Image dependency cycle detected: {}", cycle.join(" => "))),
            None => Error::new("Image dependency cycle detected"),
        });
    }
    Ok(out)
}

/// Parse the command line settings and the configuration tree.
///
/// `invocation_cwd` is the directory mkosi runs in after `-C` was applied
/// (the original one with `-C ""`); `resources` holds the built-in
/// configurations (`mkosi-initrd`, `mkosi-tools`, …).
pub fn parse_config(
    args: Args,
    cli: &[CliAssignment],
    host: &Host,
    resources: &Path,
    invocation_cwd: &Path,
) -> Result<Parsed> {
    if args.rerun_build_scripts && !args.verb.needs_build() {
        return Err(Error::new(format!(
            "--rerun-build-scripts cannot be used with the '{}' command",
            args.verb.as_str()
        )));
    }
    if args.rerun_build_scripts && args.force > 0 {
        return Err(Error::new("--force cannot be used together with --rerun-build-scripts"));
    }
    if !args.cmdline.is_empty() && !args.verb.supports_cmdline() {
        return Err(Error::new(format!(
            "Arguments after verb are not supported for the '{}' command",
            args.verb.as_str()
        )));
    }

    let mut ctx = Context::new(host, resources.to_path_buf(), invocation_cwd.to_path_buf());
    let mut cli_order: Vec<&'static str> = Vec::new();
    for a in cli {
        ctx.set_cli(a.setting, a.value.as_deref(), &a.cwd).map_err(|e| e.on_cli(&a.option))?;
        if !cli_order.contains(&a.setting.field) {
            cli_order.push(a.setting.field);
        }
    }

    if !args.verb.needs_config() {
        return Ok(Parsed { args, tools: None, images: vec![], history: None });
    }

    let configdir = finalize_configdir(args.directory.as_deref());
    let historydir = configdir.clone().unwrap_or_else(|| invocation_cwd.to_path_buf()).join(".mkosi-private/history");

    if have_history(&args, &historydir) {
        let path = historydir.join("latest.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::new(format!("Failed to read {}: {e}", path.display())))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::new(format!("{} is not valid JSON: {e}", path.display())))?;
        for (field, v) in partial_from_json(&json)? {
            let Some(s) = settings::by_field(&field) else { continue };
            if matches!(s.section, settings::Section::Include | settings::Section::Runtime) {
                continue;
            }
            let v = if v.is_null() { None } else { Some(v) };
            if let Some(current) = ctx.cli.get(s.field) {
                if *current != v {
                    log::warn(&format!(
                        "Ignoring --{} from the CLI. Run with -f to rebuild the image with this setting",
                        s.long
                    ));
                }
            }
            let empty = match &v {
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(o)) => o.is_empty(),
                _ => false,
            };
            if empty {
                ctx.cli_was_none.insert(s.field);
            }
            if !cli_order.contains(&s.field) {
                cli_order.push(s.field);
            }
            ctx.cli.insert(s.field, v);
        }
    }

    ctx.directory = args.directory.clone();

    let mut cli_final: Vec<(&'static str, Value)> = Vec::new();
    for field in &cli_order {
        let s = settings::by_field(field).ok_or_else(|| Error::new(format!("unknown setting {field}")))?;
        cli_final.push((s.field, ctx.finalize_value(s)?.unwrap_or(Value::Null)));
    }

    ctx.parse_new_includes()?;
    ctx.files.clear();

    if ((args.auto_bump && args.verb.needs_build()) || args.verb == Verb::Bump)
        && ctx.cli.get("ImageVersion").cloned().flatten().is_none()
    {
        if let Some(cd) = &configdir {
            ctx.cli.insert("ImageVersion", Some(json!(bump_image_version(cd)?)));
        }
    }

    if let Some(cd) = &configdir {
        ctx.with_cwd(cd, |c| c.parse_config_one(cd, true, true))?;
    }

    let mut config = ctx.finalize()?;
    let maincontext = ctx.clone();

    let history = if config.get("History").and_then(Value::as_bool).unwrap_or(false) && want_new_history(&args) {
        let mut obj = serde_json::Map::new();
        for (field, v) in &cli_final {
            if settings::by_field(field).is_some_and(is_config_field) {
                obj.insert(field.to_string(), v.clone());
            }
        }
        Some((historydir.join("latest.json"), Value::Object(obj)))
    } else {
        None
    };

    let mut tools = None;
    match config.get("ToolsTree").and_then(Value::as_str) {
        Some("default") | Some("yes") => {
            if in_box(host) {
                let p = host.env("MKOSI_DEFAULT_TOOLS_TREE_PATH").unwrap_or_default().to_string();
                config.insert("ToolsTree", json!(p));
            } else {
                let t = finalize_default_tools(&ctx, &config, configdir.as_deref(), invocation_cwd)?;
                let path = t.output_dir_or_cwd(invocation_cwd).join(t.output());
                config.insert("ToolsTree", json!(path.to_string_lossy()));
                tools = Some(t);
            }
        }
        Some("no") => {
            config.insert("ToolsTree", Value::Null);
        }
        _ => {}
    }

    let explicit_deps = ctx.cli.contains_key("Dependencies") || ctx.config.contains_key("Dependencies");
    let mut dependencies: Option<Vec<String>> = if explicit_deps { None } else { Some(vec![]) };

    for s in SETTINGS {
        if matches!(s.scope, Scope::Universal | Scope::Multiversal) {
            ctx.cli.insert(s.field, config.get(s.field).cloned().filter(|v| !v.is_null()));
        } else {
            ctx.cli.remove(s.field);
        }
    }

    let mut subimages: Vec<Config> = Vec::new();
    let imagedir = configdir.as_ref().map(|c| c.join("mkosi.images"));
    if let Some(imagedir) = imagedir.filter(|d| d.exists()) {
        for p in sorted_entries(&imagedir)? {
            let is_conf = p.extension().is_some_and(|e| e == "conf");
            if !p.is_dir() && !is_conf {
                continue;
            }
            let fname = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let name = fname.strip_suffix(".conf").unwrap_or(&fname).to_string();
            if name.is_empty() {
                return Err(Error::new(format!("{} is not a valid image name", p.display())));
            }

            ctx.config.clear();
            ctx.files.clear();
            ctx.image = name.clone();
            ctx.directory = args.directory.clone();
            for s in SETTINGS {
                if s.scope == Scope::Inherit {
                    if let Some(v) = config.get(s.field) {
                        ctx.config.insert(s.field, if v.is_null() { None } else { Some(v.clone()) });
                    }
                }
            }
            ctx.config.insert("Environment", Some(filtered_environment(&config)));
            ctx.includes.clear();
            ctx.defaults.clear();

            let matched = if p.is_dir() {
                ctx.parse_dir(&p, true, true)?
            } else {
                ctx.cwd = invocation_cwd.to_path_buf();
                ctx.parse_config_one(&p, false, true)?
            };
            if !matched {
                continue;
            }
            let f = ctx.finalize()?;
            subimages.push(to_config(&ctx, f));
            if let Some(d) = dependencies.as_mut() {
                d.push(name);
            }
        }
    }

    if let Some(d) = dependencies {
        config.insert("Dependencies", json!(d));
    }

    let mut main = to_config(&maincontext, config.clone());

    let wants_initrd = |c: &Config| c.strings("Initrds").iter().any(|i| i == "default");
    if subimages.iter().any(wants_initrd) || wants_initrd(&main) {
        let initrd = finalize_default_initrd(&maincontext, &config, configdir.as_deref(), invocation_cwd)?;
        let initrd_path = initrd.output_dir_or_cwd(invocation_cwd).join(initrd.output()).to_string_lossy().into_owned();
        let patch = |c: &mut Config| {
            if !wants_initrd(c) {
                return;
            }
            let initrds: Vec<Value> = c
                .strings("Initrds")
                .into_iter()
                .map(|i| if i == "default" { json!(initrd_path) } else { json!(i) })
                .collect();
            let mut deps = c.strings("Dependencies");
            deps.push(initrd.image().to_string());
            c.set("Initrds", Value::Array(initrds));
            c.set("Dependencies", json!(deps));
        };
        patch(&mut main);
        for s in subimages.iter_mut() {
            patch(s);
        }
        subimages.push(initrd);
    }

    let deps = main.strings("Dependencies");
    let mut images = resolve_deps(subimages, &deps)?;
    images.push(main);

    Ok(Parsed { args, tools, images, history })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str, deps: &[&str]) -> Config {
        Config::from_values(vec![("Image".to_string(), json!(name)), ("Dependencies".to_string(), json!(deps))])
    }

    fn names(images: &[Config]) -> Vec<String> {
        images.iter().map(|c| c.image().to_string()).collect()
    }

    #[test]
    fn dependency_order() {
        let images = vec![img("a", &["b"]), img("b", &[]), img("c", &["a"]), img("d", &[])];
        let r = resolve_deps(images, &["c".into()]).unwrap();
        assert_eq!(names(&r), vec!["b", "a", "c"]);
    }

    #[test]
    fn independent_images_keep_directory_order() {
        let images = vec![img("x", &[]), img("y", &[]), img("z", &["x"])];
        let r = resolve_deps(images, &["z".into(), "y".into()]).unwrap();
        assert_eq!(names(&r), vec!["x", "y", "z"]);
    }

    #[test]
    fn cycles_and_unknown_names() {
        let images = vec![img("a", &["b"]), img("b", &["a"])];
        let e = resolve_deps(images, &["a".into()]).unwrap_err();
        assert!(e.message.starts_with("Image dependency cycle detected: "), "{}", e.message);
        let e = resolve_deps(vec![img("a", &[])], &["nope".into()]).unwrap_err();
        assert_eq!(e.message, "No image found with name nope");
        let e = resolve_deps(vec![img("a", &["ghost"])], &["a".into()]).unwrap_err();
        assert_eq!(e.message, "No image found with name ghost");
    }
}
