//! The environment of user scripts (`$DISTRIBUTION`, `$BUILDROOT`, …), the
//! identity of the invoking user and the JSON handed to scripts.

use mkosi_config::Config;
use serde_json::Value;

use super::ScriptKind;
use crate::error::{BuildError, Result};

/// Where scripts find things inside their sandbox.
pub const SRCDIR: &str = "/work/src";
pub const DESTDIR: &str = "/work/dest";
pub const OUTPUTDIR: &str = "/work/out";
pub const BUILDDIR: &str = "/work/build";
pub const PACKAGEDIR: &str = "/work/packages";
pub const ARTIFACTDIR: &str = "/work/artifacts";
pub const CONFIG_JSON: &str = "/work/config.json";
pub const BUILDROOT: &str = "/buildroot";

/// What the script environment depends on besides the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvInputs {
    /// `$MKOSI_UID` / `$MKOSI_GID`: the user who invoked mkosi.
    pub uid: u32,
    pub gid: u32,
    /// `--debug`.
    pub debug: bool,
}

impl EnvInputs {
    /// The ids of the invoking user, even after mkosi became root in a user namespace.
    pub fn current(debug: bool) -> EnvInputs {
        let (uid, gid) = invoking_ids();
        EnvInputs { uid, gid, debug }
    }
}

/// Set `key` to `value`, replacing an earlier value.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: impl Into<String>) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.into()));
}

/// `later` on top of `env`: later values win.
pub fn merge(env: &mut Vec<(String, String)>, later: impl IntoIterator<Item = (String, String)>) {
    for (k, v) in later {
        set(env, &k, v);
    }
}

fn one_zero(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// The variables mkosi defines for a script of `kind` (before
/// `Environment=` and friends, which the caller layers on top).
pub fn script_env(kind: ScriptKind, config: &Config, inputs: EnvInputs) -> Result<Vec<(String, String)>> {
    let arch = config.architecture();
    let distribution = config.distribution();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: &str| set(&mut env, k, v);

    add("DISTRIBUTION", distribution.as_str());
    add("RELEASE", config.release());
    add("ARCHITECTURE", arch.as_str());
    if kind == ScriptKind::Configure {
        if let Some(q) = arch.to_qemu() {
            add("QEMU_ARCHITECTURE", q);
        }
    }
    let distarch = mkosi_distro::architecture(distribution, arch).map_err(BuildError::from)?;
    add("DISTRIBUTION_ARCHITECTURE", &distarch);
    add("SRCDIR", SRCDIR);
    add("MKOSI_UID", &inputs.uid.to_string());
    add("MKOSI_GID", &inputs.gid.to_string());
    add("MKOSI_DEBUG", one_zero(inputs.debug));
    if let Some(efi) = arch.to_efi() {
        add("EFI_ARCHITECTURE", efi);
    }
    let profiles = config.strings("Profiles");
    if !profiles.is_empty() {
        add("PROFILES", &profiles.join(" "));
    }

    let build_dir = config.path("BuildDirectory").is_some();
    let network = one_zero(config.bool("WithNetwork"));
    let in_image =
        matches!(kind, ScriptKind::Prepare | ScriptKind::Build | ScriptKind::PostInst | ScriptKind::Finalize);

    if kind != ScriptKind::Configure {
        add("MKOSI_CONFIG", CONFIG_JSON);
    }
    if kind == ScriptKind::Sync {
        // Incremental caches are not implemented, so there never is one.
        add("CACHED", "0");
    }
    if in_image {
        add("BUILDROOT", BUILDROOT);
        add("CHROOT_SRCDIR", SRCDIR);
        add("PACKAGEDIR", PACKAGEDIR);
        add("ARTIFACTDIR", ARTIFACTDIR);
        add("SCRIPT", kind.mount_point());
        add("CHROOT_SCRIPT", kind.mount_point());
        add("WITH_NETWORK", network);
    }
    if matches!(kind, ScriptKind::Prepare | ScriptKind::Build) {
        add("WITH_DOCS", one_zero(config.bool("WithDocs")));
        add("WITH_TESTS", one_zero(config.bool("WithTests")));
    }
    if kind == ScriptKind::Build {
        add("DESTDIR", DESTDIR);
        add("CHROOT_DESTDIR", DESTDIR);
        if build_dir {
            add("BUILDDIR", BUILDDIR);
            add("CHROOT_BUILDDIR", BUILDDIR);
        }
    }
    if matches!(kind, ScriptKind::PostInst | ScriptKind::Finalize) {
        add("OUTPUTDIR", OUTPUTDIR);
        add("CHROOT_OUTPUTDIR", OUTPUTDIR);
        if build_dir {
            add("BUILDDIR", BUILDDIR);
        }
    }
    if matches!(kind, ScriptKind::PostOutput | ScriptKind::Clean) {
        add("OUTPUTDIR", OUTPUTDIR);
    }
    Ok(env)
}

/// What every command gets from mkosi's process runner: a UTF-8 locale
/// (no `LC_*` overrides) and `HOME=/` unless set.
pub fn finish(env: &mut Vec<(String, String)>) {
    env.retain(|(k, _)| !k.starts_with("LC_"));
    set(env, "LANG", "C.UTF-8");
    if !env.iter().any(|(k, _)| k == "HOME") {
        set(env, "HOME", "/");
    }
}

/// Map `id` of the current user namespace to the id it has in the parent
/// namespace, per a `/proc/self/{uid,gid}_map` table. Identity when unmapped.
pub fn outer_id(map: &str, id: u32) -> u32 {
    for line in map.lines() {
        let f: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if let [inside, outside, count] = f[..] {
            if u64::from(id) >= inside && u64::from(id) < inside + count {
                return u32::try_from(outside + (u64::from(id) - inside)).unwrap_or(id);
            }
        }
    }
    id
}

/// The uid and gid of the user who invoked mkosi: mkosi may have become
/// root in a user namespace by now, which maps root to that user.
pub fn invoking_ids() -> (u32, u32) {
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let gid_map = std::fs::read_to_string("/proc/self/gid_map").unwrap_or_default();
    (outer_id(&uid_map, uid), outer_id(&gid_map, gid))
}

/// JSON on one line the way upstream feeds configure scripts
/// (`json.dumps(sort_keys=True)`: `", "` and `": "` separators, ASCII only).
pub fn compact_json(value: &Value) -> String {
    mkosi_config::json::dumps(value, mkosi_config::json::Style { indent: None, sort_keys: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> Config {
        let mut values = vec![
            ("Distribution".to_string(), json!("debian")),
            ("Release".to_string(), json!("trixie")),
            ("Architecture".to_string(), json!("x86-64")),
            ("WithDocs".to_string(), json!(true)),
            ("WithTests".to_string(), json!(false)),
            ("WithNetwork".to_string(), json!(false)),
            ("Profiles".to_string(), json!(["a", "b"])),
        ];
        if let Value::Object(o) = extra {
            values.extend(o);
        }
        Config::from_values(values)
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    const INPUTS: EnvInputs = EnvInputs { uid: 1000, gid: 100, debug: true };

    #[test]
    fn common_variables() {
        let c = config(json!({}));
        for kind in ScriptKind::ALL {
            let env = script_env(*kind, &c, INPUTS).unwrap();
            assert_eq!(get(&env, "DISTRIBUTION"), Some("debian"), "{kind:?}");
            assert_eq!(get(&env, "RELEASE"), Some("trixie"));
            assert_eq!(get(&env, "ARCHITECTURE"), Some("x86-64"));
            assert_eq!(get(&env, "DISTRIBUTION_ARCHITECTURE"), Some("amd64"));
            assert_eq!(get(&env, "EFI_ARCHITECTURE"), Some("x64"));
            assert_eq!(get(&env, "SRCDIR"), Some("/work/src"));
            assert_eq!(get(&env, "MKOSI_UID"), Some("1000"));
            assert_eq!(get(&env, "MKOSI_GID"), Some("100"));
            assert_eq!(get(&env, "MKOSI_DEBUG"), Some("1"));
            assert_eq!(get(&env, "PROFILES"), Some("a b"));
            let config_json = if *kind == ScriptKind::Configure { None } else { Some("/work/config.json") };
            assert_eq!(get(&env, "MKOSI_CONFIG"), config_json, "{kind:?}");
        }
    }

    #[test]
    fn per_kind_variables() {
        let c = config(json!({"BuildDirectory": "/b"}));
        let env = script_env(ScriptKind::Configure, &c, INPUTS).unwrap();
        assert_eq!(get(&env, "QEMU_ARCHITECTURE"), Some("x86_64"));
        assert_eq!(get(&env, "BUILDROOT"), None);

        let env = script_env(ScriptKind::Sync, &c, INPUTS).unwrap();
        assert_eq!(get(&env, "CACHED"), Some("0"));
        assert_eq!(get(&env, "QEMU_ARCHITECTURE"), None);
        assert_eq!(get(&env, "BUILDROOT"), None);

        let env = script_env(ScriptKind::Prepare, &c, INPUTS).unwrap();
        assert_eq!(get(&env, "BUILDROOT"), Some("/buildroot"));
        assert_eq!(get(&env, "SCRIPT"), Some("/work/prepare"));
        assert_eq!(get(&env, "CHROOT_SCRIPT"), Some("/work/prepare"));
        assert_eq!(get(&env, "WITH_DOCS"), Some("1"));
        assert_eq!(get(&env, "WITH_TESTS"), Some("0"));
        assert_eq!(get(&env, "WITH_NETWORK"), Some("0"));
        assert_eq!(get(&env, "PACKAGEDIR"), Some("/work/packages"));
        assert_eq!(get(&env, "ARTIFACTDIR"), Some("/work/artifacts"));
        assert_eq!(get(&env, "DESTDIR"), None);
        assert_eq!(get(&env, "BUILDDIR"), None);

        let env = script_env(ScriptKind::Build, &c, INPUTS).unwrap();
        assert_eq!(get(&env, "SCRIPT"), Some("/work/build-script"));
        assert_eq!(get(&env, "DESTDIR"), Some("/work/dest"));
        assert_eq!(get(&env, "CHROOT_DESTDIR"), Some("/work/dest"));
        assert_eq!(get(&env, "BUILDDIR"), Some("/work/build"));
        assert_eq!(get(&env, "CHROOT_BUILDDIR"), Some("/work/build"));
        assert_eq!(get(&env, "OUTPUTDIR"), None);

        for kind in [ScriptKind::PostInst, ScriptKind::Finalize] {
            let env = script_env(kind, &c, INPUTS).unwrap();
            assert_eq!(get(&env, "OUTPUTDIR"), Some("/work/out"));
            assert_eq!(get(&env, "CHROOT_OUTPUTDIR"), Some("/work/out"));
            assert_eq!(get(&env, "BUILDDIR"), Some("/work/build"));
            assert_eq!(get(&env, "CHROOT_BUILDDIR"), None);
            assert_eq!(get(&env, "WITH_DOCS"), None);
            assert_eq!(get(&env, "WITH_NETWORK"), Some("0"));
            assert_eq!(get(&env, "DESTDIR"), None);
        }
        let env = script_env(ScriptKind::Finalize, &c, INPUTS).unwrap();
        assert_eq!(get(&env, "SCRIPT"), Some("/work/finalize"));

        for kind in [ScriptKind::PostOutput, ScriptKind::Clean] {
            let env = script_env(kind, &c, INPUTS).unwrap();
            assert_eq!(get(&env, "OUTPUTDIR"), Some("/work/out"));
            assert_eq!(get(&env, "BUILDROOT"), None);
            assert_eq!(get(&env, "SCRIPT"), None);
            assert_eq!(get(&env, "BUILDDIR"), None);
        }
    }

    #[test]
    fn optional_variables() {
        let c = Config::from_values(vec![
            ("Distribution".to_string(), json!("custom")),
            ("Architecture".to_string(), json!("s390x")),
        ]);
        let env = script_env(ScriptKind::Prepare, &c, INPUTS).unwrap();
        assert_eq!(get(&env, "DISTRIBUTION_ARCHITECTURE"), Some("s390x"));
        assert_eq!(get(&env, "EFI_ARCHITECTURE"), None);
        assert_eq!(get(&env, "PROFILES"), None);
        assert_eq!(get(&env, "RELEASE"), Some(""));
        // An architecture the distribution does not know is an error, like upstream.
        let c = config(json!({"Architecture": "tilegx"}));
        assert!(script_env(ScriptKind::Prepare, &c, INPUTS).is_err());
    }

    #[test]
    fn finishing_touches() {
        let mut env = vec![("LC_ALL".to_string(), "de_DE".to_string()), ("LANG".to_string(), "de_DE".to_string())];
        finish(&mut env);
        assert_eq!(get(&env, "LANG"), Some("C.UTF-8"));
        assert_eq!(get(&env, "LC_ALL"), None);
        assert_eq!(get(&env, "HOME"), Some("/"));
        let mut env = vec![("HOME".to_string(), "/root".to_string())];
        finish(&mut env);
        assert_eq!(get(&env, "HOME"), Some("/root"));
        let mut env = vec![("A".to_string(), "1".to_string())];
        merge(&mut env, vec![("B".to_string(), "2".to_string()), ("A".to_string(), "3".to_string())]);
        assert_eq!(env, vec![("B".to_string(), "2".to_string()), ("A".to_string(), "3".to_string())]);
    }

    #[test]
    fn id_maps() {
        assert_eq!(outer_id("         0          0 4294967295\n", 0), 0);
        assert_eq!(outer_id("         0          0 4294967295\n", 1000), 1000);
        assert_eq!(outer_id("0 1000 1\n", 0), 1000);
        assert_eq!(outer_id("0 1000 1\n1 100000 65536\n", 0), 1000);
        assert_eq!(outer_id("0 1000 1\n1 100000 65536\n", 5), 100004);
        assert_eq!(outer_id("", 42), 42);
    }

    #[test]
    fn compact() {
        let v = json!({"b": [1, true, null], "a": {"y": "é\n", "x": {}}, "c": []});
        assert_eq!(compact_json(&v), r#"{"a": {"x": {}, "y": "\u00e9\n"}, "b": [1, true, null], "c": []}"#);
        assert_eq!(compact_json(&json!("😀")), r#""\ud83d\ude00""#);
        let back: Value = serde_json::from_str(&compact_json(&v)).unwrap();
        assert_eq!(back, v);
    }
}
