//! Tools run on the image: depmod and locale-gen inside it; systemd-hwdb,
//! systemd-sysusers, systemd-tmpfiles, systemctl presets, systemd-firstboot
//! and setfiles from the tools tree on `/buildroot`.

use std::path::{Path, PathBuf};

use mkosi_config::enums::{Feature, OutputFormat};
use mkosi_config::Config;
use mkosi_sandbox::run::{run, Cmd, Input, RunError, Sink};
use mkosi_sandbox::{FsOp, Options};

use super::{
    buildroot_sandbox, chroot_sandbox, find_tool, mkdir_p, sorted_entries, tool_env, wants_credstore, write_file,
    Applies,
};
use crate::context::Context;
use crate::error::{io, BuildError, Result};
use crate::log;

/// Whether `kdir` is a kernel modules directory with more than `updates/` in it.
pub fn is_valid_kdir(kdir: &Path) -> bool {
    let entries = sorted_entries(kdir);
    !entries.is_empty() && entries != [kdir.join("updates")]
}

/// The files depmod generates that tell whether it has to run again.
const DEPMOD_OUTPUTS: &[&str] = &["modules.dep", "modules.dep.bin", "modules.symbols", "modules.symbols.bin"];

/// Whether depmod's output exists and is newer than every module.
pub fn depmod_up_to_date(kdir: &Path) -> bool {
    if !DEPMOD_OUTPUTS.iter().all(|o| kdir.join(o).exists()) {
        return false;
    }
    let Ok(dep) = std::fs::metadata(kdir.join("modules.dep")).and_then(|m| m.modified()) else { return false };
    fn walk(dir: &Path, dep: std::time::SystemTime) -> bool {
        let Ok(rd) = std::fs::read_dir(dir) else { return true };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            if name.to_string_lossy().contains(".ko") {
                match std::fs::metadata(&p).and_then(|m| m.modified()) {
                    Ok(t) if t <= dep => {}
                    _ => return false,
                }
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && !walk(&p, dep) {
                return false;
            }
        }
        true
    }
    walk(kdir, dep)
}

/// `depmod` for every kernel in the image where its output is older than a module (or
/// modules were filtered out).
pub fn run_depmod(ctx: &Context, cache: bool) -> Result<()> {
    let c = ctx.config;
    if !Applies::of(c).depmod {
        return Ok(());
    }
    // Kernel module and firmware filtering (KernelModules=, FirmwareFiles=…) happens in the
    // final run (`!cache`), before depmod; kernels that lost modules always get a fresh depmod.
    let mut filtered: Vec<PathBuf> = Vec::new();
    if !cache {
        for kdir in sorted_entries(&ctx.root().join("usr/lib/modules")) {
            if !is_valid_kdir(&kdir) {
                continue;
            }
            let Some(kver) = kdir.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
            if crate::kmod::filter_image_modules(ctx, &kver)? {
                filtered.push(kdir);
            }
        }
    }
    if c.output_format().is_extension_or_portable_image() {
        return Ok(());
    }
    let root = ctx.root();
    for kdir in sorted_entries(&root.join("usr/lib/modules")) {
        if !is_valid_kdir(&kdir) {
            continue;
        }
        let Some(kver) = kdir.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
        // Upstream always runs depmod before the cache is saved. Its output only depends on
        // the modules, so when it is newer than every module (the kernel package's own
        // postinst ran depmod) running it again changes nothing and takes seconds.
        let unchanged = cache || (c.list("KernelModulesExclude").is_empty() && !filtered.contains(&kdir));
        if unchanged && depmod_up_to_date(&kdir) {
            continue;
        }
        log::step(&format!("Running depmod for {kver}"));
        run(&Cmd::new(["depmod", "--all", &kver]).sandbox(chroot_sandbox(ctx)?).env(tool_env(ctx, vec![])))?;
    }
    Ok(())
}

fn missing(tool: &str, what: &str) -> Result<()> {
    log::warn(&format!("{tool} is not installed, not {what}"));
    Ok(())
}

/// `systemd-hwdb update` into `/usr`, replacing any hwdb in `/etc`.
pub fn run_hwdb(ctx: &Context) -> Result<()> {
    if !Applies::of(ctx.config).system_tools {
        return Ok(());
    }
    if find_tool("systemd-hwdb").is_some() {
        log::step("Generating hardware database");
        run(&Cmd::new(["systemd-hwdb", "--root=/buildroot", "--usr", "--strict", "update"])
            .sandbox(buildroot_sandbox(ctx)?)
            .env(tool_env(ctx, vec![])))?;
    } else if ctx.root().join("usr/bin/systemd-hwdb").exists()
        && ctx.config.architecture() == mkosi_config::enums::Architecture::native()
    {
        // Upstream takes systemd-hwdb from its tools tree; without one on the host the image's
        // own (same source data, same result) does the job.
        log::step("Generating hardware database (with the image's systemd-hwdb)");
        run(&Cmd::new(["systemd-hwdb", "--usr", "--strict", "update"])
            .sandbox(chroot_sandbox(ctx)?)
            .env(tool_env(ctx, vec![])))?;
    } else {
        return missing("systemd-hwdb", "generating hwdb");
    }
    let etc = ctx.root().join("etc/udev/hwdb.bin");
    match std::fs::remove_file(&etc) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &etc)(e)),
        _ => Ok(()),
    }
}

/// Whether `/etc/locale.gen` asks for any locale.
pub fn locale_gen_wanted(locale_gen: &str) -> bool {
    locale_gen.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    })
}

/// `locale-gen` inside the image when `/etc/locale.gen` lists locales.
pub fn run_locale_gen(ctx: &Context) -> Result<()> {
    if !Applies::of(ctx.config).root_files {
        return Ok(());
    }
    let path = ctx.root().join("etc/locale.gen");
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read(&path).map_err(io("reading", &path))?;
    if !locale_gen_wanted(&String::from_utf8_lossy(&text)) {
        return Ok(());
    }
    log::step("Generating locales");
    run(&Cmd::new(["locale-gen"]).sandbox(chroot_sandbox(ctx)?).env(tool_env(ctx, vec![])))?;
    Ok(())
}

/// `systemd-sysusers`: create the system users and groups the image declares.
pub fn run_sysusers(ctx: &Context) -> Result<()> {
    if !Applies::of(ctx.config).system_tools {
        return Ok(());
    }
    if find_tool("systemd-sysusers").is_none() {
        return missing("systemd-sysusers", "generating system users");
    }
    log::step("Generating system users");
    // systemd-sysusers before v254 leaves its lock file behind; newer ones do
    // not, so drop it unless the image already had one.
    let lock = ctx.root().join("etc/.pwd.lock");
    let had_lock = std::fs::symlink_metadata(&lock).is_ok();
    run(&Cmd::new(["systemd-sysusers", "--root=/buildroot"])
        .sandbox(buildroot_sandbox(ctx)?)
        .env(tool_env(ctx, ctx.environment())))?;
    if !had_lock {
        remove_stale_lock(&lock)?;
    }
    Ok(())
}

/// Remove an empty lock file a tool created (a non-empty one is not ours to remove).
pub fn remove_stale_lock(lock: &Path) -> Result<()> {
    match std::fs::symlink_metadata(lock) {
        Ok(md) if md.is_file() && md.len() == 0 => std::fs::remove_file(lock).map_err(io("removing", lock)),
        _ => Ok(()),
    }
}

/// The arguments of `systemd-tmpfiles`. Without full root rights the
/// daemon-owned directories in `/var` could not be chowned, so `/var` is skipped then.
pub fn tmpfiles_args(exclude_var: bool) -> Vec<String> {
    let mut a: Vec<String> =
        ["systemd-tmpfiles", "--root=/buildroot", "--boot", "--create", "--remove"].map(String::from).to_vec();
    for d in ["/tmp", "/var/tmp", "/run", "/proc", "/sys", "/dev"] {
        a.push(format!("--exclude-prefix={d}"));
    }
    if exclude_var {
        a.push("--exclude-prefix=/var".into());
    }
    a
}

/// Whether this process is not real root or root of a user namespace that
/// maps only one user.
fn limited_root() -> bool {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let map = mkosi_sandbox::userns::current_uid_map();
    uid != 0 || (map.len() == 1 && map[0].2 == 1)
}

/// Symlinks making the image's user database the one tools see.
fn passwd_symlinks(root: &Path) -> Vec<FsOp> {
    ["passwd", "group", "shadow", "gshadow"]
        .iter()
        .map(|f| FsOp::Symlink { target: root.join("etc").join(f), dst: Path::new("/etc").join(f) })
        .collect()
}

/// `systemd-tmpfiles --boot --create --remove` on the image, except for API
/// and temporary directories. Exit codes 65 and 73 count as success, as for
/// systemd-tmpfiles-setup.service.
pub fn run_tmpfiles(ctx: &Context) -> Result<()> {
    if !Applies::of(ctx.config).system_tools {
        return Ok(());
    }
    if find_tool("systemd-tmpfiles").is_none() {
        return missing("systemd-tmpfiles", "generating volatile files");
    }
    log::step("Generating volatile files");
    let mut sandbox = buildroot_sandbox(ctx)?;
    // ACLs in tmpfiles.d are resolved with the image's users, and root must
    // exist for chown() to root to work.
    sandbox.ops.extend(passwd_symlinks(Path::new("/buildroot")));
    sandbox.become_root = true;
    run(&Cmd::new(tmpfiles_args(limited_root()))
        .sandbox(sandbox)
        .env(tool_env(ctx, vec![("SYSTEMD_TMPFILES_FORCE_SUBVOL".into(), "0".into())]))
        .success_codes(&[65, 73]))?;
    Ok(())
}

/// `systemctl preset-all` for system and user units.
pub fn run_preset(ctx: &Context) -> Result<()> {
    if !Applies::of(ctx.config).system_tools {
        return Ok(());
    }
    if find_tool("systemctl").is_none() {
        return missing("systemctl", "applying presets");
    }
    log::step("Applying presets…");
    for argv in [
        &["systemctl", "--root=/buildroot", "preset-all"][..],
        &["systemctl", "--root=/buildroot", "--global", "preset-all"],
    ] {
        run(&Cmd::new(argv.iter().copied()).sandbox(buildroot_sandbox(ctx)?).env(tool_env(ctx, vec![])))?;
    }
    Ok(())
}

/// `RootPassword=` as (password, already hashed).
pub fn root_password(c: &Config) -> Option<(String, bool)> {
    let v = c.get("RootPassword").as_array()?;
    let pw = v.first()?.as_str()?.to_string();
    let hashed = v.get(1).and_then(|h| h.as_bool()).unwrap_or(false);
    Some((pw, hashed))
}

/// One first boot setting: the systemd-firstboot option, the credential
/// that carries it (none for the hostname) and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstbootSetting {
    pub option: &'static str,
    pub credential: Option<&'static str>,
    pub value: String,
}

/// The first boot settings of `c`, with the root password already hashed.
pub fn firstboot_settings(c: &Config, hashed_password: Option<String>) -> Vec<FirstbootSetting> {
    let s = |f: &str| c.str(f).map(str::to_string);
    [
        ("--locale", Some("firstboot.locale"), s("Locale")),
        ("--locale-messages", Some("firstboot.locale-messages"), s("LocaleMessages")),
        ("--keymap", Some("firstboot.keymap"), s("Keymap")),
        ("--timezone", Some("firstboot.timezone"), s("Timezone")),
        ("--hostname", None, s("Hostname")),
        ("--root-password-hashed", Some("passwd.hashed-password.root"), hashed_password),
        ("--root-shell", Some("passwd.shell.root"), s("RootShell")),
    ]
    .into_iter()
    .filter_map(|(option, credential, value)| value.map(|value| FirstbootSetting { option, credential, value }))
    .collect()
}

/// The systemd-firstboot command line.
pub fn firstboot_args(settings: &[FirstbootSetting]) -> Vec<String> {
    let mut a: Vec<String> = vec!["systemd-firstboot".into(), "--root=/buildroot".into(), "--force".into()];
    for s in settings {
        a.push(s.option.into());
        a.push(s.value.clone());
    }
    a
}

/// The files in `usr/lib/credstore`: name, content and mode (secrets 0600).
pub fn credstore_files(settings: &[FirstbootSetting]) -> Vec<(&'static str, String, u32)> {
    settings
        .iter()
        .filter_map(|s| {
            let name = s.credential?;
            Some((name, s.value.clone(), if name.contains("password") { 0o600 } else { 0o644 }))
        })
        .collect()
}

/// `shadow` with a locked root entry appended when it has none.
pub fn add_root_shadow_entry(shadow: &str, days: u64) -> Option<String> {
    if shadow.lines().any(|l| l.starts_with("root:")) {
        return None;
    }
    let sep = if shadow.is_empty() || shadow.ends_with('\n') { "" } else { "\n" };
    Some(format!("{shadow}{sep}root:!*:{days}::::::\n"))
}

/// Older systemd-firstboot versions (like 252 on Debian 12) only edit the
/// root entry of an existing `/etc/shadow` and never add one. Debian images
/// without the `passwd` package have a shadow file from sysusers without
/// root, so the root password would silently be lost. Give firstboot an
/// entry to edit, like the one newer versions add themselves.
fn ensure_root_shadow_entry(root: &Path) -> Result<()> {
    let shadow = root.join("etc/shadow");
    if !super::is_regular_file(&shadow) {
        return Ok(());
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    if !passwd.lines().any(|l| l.starts_with("root:")) {
        return Ok(());
    }
    let text = std::fs::read_to_string(&shadow).map_err(io("reading", &shadow))?;
    let days =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() / 86400).unwrap_or(0);
    match add_root_shadow_entry(&text, days) {
        // Writing the existing file keeps its mode.
        Some(new) => std::fs::write(&shadow, new).map_err(io("writing", &shadow)),
        None => Ok(()),
    }
}

/// Locale files that may be symlinks to each other (Debian: `/etc/default/locale`
/// → `../locale.conf`, or the other way round in older releases).
const LOCALE_FILES: &[&str] = &["etc/locale.conf", "etc/default/locale"];

/// The locale files that are symlinks, with their targets.
fn symlinked_locale_files(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    LOCALE_FILES
        .iter()
        .filter_map(|f| {
            let p = root.join(f);
            std::fs::read_link(&p).ok().map(|t| (p, t))
        })
        .collect()
}

/// Where the symlink at `link` pointing to `target` leads, inside `root`.
pub fn resolve_in_root(root: &Path, link: &Path, target: &Path) -> Option<PathBuf> {
    let joined =
        if target.is_absolute() { root.join(target.strip_prefix("/").ok()?) } else { link.parent()?.join(target) };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out.starts_with(root).then_some(out)
}

/// A systemd-firstboot whose distribution patched the locale file name
/// (Debian 12 writes `/etc/default/locale`) replaces a symlink the image
/// relies on by a file the image's systemd never reads. Put the symlink back
/// and the settings where it points.
fn restore_symlinked_locale_files(root: &Path, links: &[(PathBuf, PathBuf)]) -> Result<()> {
    for (path, target) in links {
        if !super::is_regular_file(path) {
            continue;
        }
        let Some(dest) = resolve_in_root(root, path, target) else { continue };
        if dest == *path || std::fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
            continue;
        }
        let content = std::fs::read(path).map_err(io("reading", path))?;
        std::fs::remove_file(path).map_err(io("removing", path))?;
        std::os::unix::fs::symlink(target, path).map_err(io("creating", path))?;
        if let Some(parent) = dest.parent() {
            mkdir_p(parent, 0o755)?;
        }
        std::fs::write(&dest, content).map_err(io("writing", &dest))?;
    }
    Ok(())
}

/// sha512-crypt hash of `password` by `openssl passwd -6`.
fn hash_password(ctx: &Context, password: &str) -> Result<String> {
    let out = run(&Cmd::new(["openssl", "passwd", "-stdin", "-6"])
        .sandbox(ctx.sandbox(false, false)?)
        .env(tool_env(ctx, vec![]))
        .stdin(Input::Data(password.as_bytes().to_vec()))
        .stdout(Sink::Capture))?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if hash.is_empty() {
        return Err(BuildError::msg("openssl passwd did not print a password hash"));
    }
    Ok(hash)
}

/// Locale, keymap, timezone, hostname and root account via
/// `systemd-firstboot --force`, and the same values (except the hostname)
/// as credentials in `usr/lib/credstore`.
pub fn run_firstboot(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if !Applies::of(c).base_tree {
        return Ok(());
    }
    if find_tool("systemd-firstboot").is_none() {
        return missing("systemd-firstboot", "applying first boot settings");
    }
    let password = match root_password(c) {
        Some((pw, false)) if !pw.is_empty() => Some(hash_password(ctx, &pw)?),
        Some((pw, _)) => Some(pw),
        None => None,
    };
    let settings = firstboot_settings(c, password);
    if settings.is_empty() {
        return Ok(());
    }
    log::step("Applying first boot settings");
    let root = ctx.root();
    if settings.iter().any(|s| s.option.starts_with("--root-")) {
        ensure_root_shadow_entry(&root)?;
    }
    let links = symlinked_locale_files(&root);
    run(&Cmd::new(firstboot_args(&settings)).sandbox(buildroot_sandbox(ctx)?).env(tool_env(ctx, vec![])))?;
    restore_symlinked_locale_files(&root, &links)?;

    // Initrds rarely consist of just /usr, so credentials there would not help them.
    if wants_credstore(c.output_format(), c.bool("MakeInitrd")) {
        let dir = ctx.root().join("usr/lib/credstore");
        mkdir_p(&dir, 0o755)?;
        for (name, value, mode) in credstore_files(&settings) {
            write_file(&dir.join(name), value, mode)?;
        }
    }
    Ok(())
}

/// What SELinux relabeling needs: setfiles, the policy name, and the file
/// contexts and binary policy inside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelinuxRelabel {
    pub setfiles: PathBuf,
    pub policy: String,
    pub file_contexts: PathBuf,
    pub binary_policy: PathBuf,
}

/// Whether `SELinuxRelabel=` allows relabeling this format at all (auto
/// skips directories, which are not booted from their labels).
pub fn selinux_relabel_allowed(setting: Feature, format: OutputFormat) -> bool {
    match setting {
        Feature::Disabled => false,
        Feature::Auto => format != OutputFormat::Directory,
        Feature::Enabled => true,
    }
}

/// The newest binary policy among `policy.NN` file names.
pub fn newest_binary_policy(names: &[String]) -> Option<String> {
    let mut policies: Vec<&String> = names
        .iter()
        .filter(|n| {
            Path::new(n.as_str())
                .extension()
                .map(|e| e.to_string_lossy().into_owned())
                .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    policies.sort_by(|a, b| mkosi_config::version::compare_versions(b, a));
    policies.first().map(|s| s.to_string())
}

/// Whether and how to relabel the tree at `root` (upstream's
/// `want_selinux_relabel`). With `fatal`, missing pieces are errors when
/// relabeling was explicitly enabled. `base` is the sandbox to read the
/// policy name in.
pub fn want_selinux_relabel(c: &Config, root: &Path, base: &Options, fatal: bool) -> Result<Option<SelinuxRelabel>> {
    let setting: Feature = c.str("SELinuxRelabel").and_then(|s| s.parse().ok()).unwrap_or(Feature::Auto);
    if !selinux_relabel_allowed(setting, c.output_format()) {
        return Ok(None);
    }
    let fail = |msg: String| -> Result<Option<SelinuxRelabel>> {
        if fatal && setting == Feature::Enabled {
            Err(BuildError::msg(msg))
        } else {
            Ok(None)
        }
    };
    let config = root.join("etc/selinux/config");
    if !config.exists() {
        return fail("SELinux relabel is requested but could not find selinux config at /etc/selinux/config".into());
    }
    let inside = Path::new("/work").join(config.strip_prefix("/").unwrap_or(&config));
    let mut sandbox = base.clone();
    sandbox.ops.push(FsOp::Bind {
        src: config.clone(),
        dst: inside.clone(),
        readonly: true,
        required: true,
        relative: false,
        nofollow: false,
    });
    let script = format!(". {} && echo $SELINUXTYPE", mkosi_sandbox::run::shell_quote(&inside.to_string_lossy()));
    let out = run(&Cmd::new(["sh", "-c", &script]).sandbox(sandbox).stdout(Sink::Capture))?;
    let policy = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if policy.is_empty() {
        return fail("SELinux relabel is requested but no selinux policy is configured in /etc/selinux/config".into());
    }
    let Some(setfiles) = find_tool("setfiles") else {
        return fail("SELinux relabel is requested but setfiles is not installed".into());
    };
    let file_contexts = root.join("etc/selinux").join(&policy).join("contexts/files/file_contexts");
    if !file_contexts.exists() {
        return fail(format!(
            "SELinux relabel is requested but SELinux file contexts not found in {}",
            file_contexts.display()
        ));
    }
    let policydir = root.join("etc/selinux").join(&policy).join("policy");
    let names: Vec<String> = sorted_entries(&policydir)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let Some(binary) = newest_binary_policy(&names) else {
        return fail(format!(
            "SELinux relabel is requested but SELinux binary policy not found in {}",
            policydir.display()
        ));
    };
    Ok(Some(SelinuxRelabel { setfiles, policy, file_contexts, binary_policy: policydir.join(binary) }))
}

/// `setfiles` over the whole image with the image's own policy. Failures
/// only count when relabeling was explicitly enabled.
pub fn run_selinux_relabel(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let root = ctx.root();
    let Some(s) = want_selinux_relabel(c, &root, &ctx.sandbox(false, false)?, true)? else { return Ok(()) };
    let inside = |p: &Path| Path::new("/buildroot").join(p.strip_prefix(&root).unwrap_or(p));
    log::step(&format!("Relabeling files using {} policy", s.policy));
    let argv = vec![
        s.setfiles.to_string_lossy().into_owned(),
        "-mFr".into(),
        "/buildroot".into(),
        "-T0".into(),
        "-c".into(),
        inside(&s.binary_policy).to_string_lossy().into_owned(),
        inside(&s.file_contexts).to_string_lossy().into_owned(),
        "/buildroot".into(),
    ];
    let enabled = c.str("SELinuxRelabel") == Some("enabled");
    match run(&Cmd::new(argv).sandbox(buildroot_sandbox(ctx)?).env(tool_env(ctx, vec![]))) {
        Err(RunError::Failed { .. }) if !enabled => Ok(()),
        r => r.map(|_| ()).map_err(Into::into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::sysconfig::tests::config;

    #[test]
    fn kernel_module_directories() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("6.1");
        assert!(!is_valid_kdir(&k));
        std::fs::create_dir_all(k.join("updates")).unwrap();
        assert!(!is_valid_kdir(&k), "only updates/");
        std::fs::create_dir_all(k.join("kernel/fs")).unwrap();
        assert!(is_valid_kdir(&k));
    }

    #[test]
    fn stale_lock_files() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join(".pwd.lock");
        remove_stale_lock(&lock).unwrap();
        std::fs::write(&lock, "").unwrap();
        remove_stale_lock(&lock).unwrap();
        assert!(!lock.exists(), "an empty lock file is removed");
        std::fs::write(&lock, "x").unwrap();
        remove_stale_lock(&lock).unwrap();
        assert!(lock.exists(), "a lock file with content is kept");
    }

    #[test]
    fn depmod_staleness() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path();
        std::fs::create_dir_all(k.join("kernel/fs")).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let set = |p: &Path, t| std::fs::File::options().write(true).open(p).unwrap().set_modified(t).unwrap();
        std::fs::write(k.join("kernel/fs/a.ko.xz"), "").unwrap();
        set(&k.join("kernel/fs/a.ko.xz"), old);
        assert!(!depmod_up_to_date(k), "no outputs yet");
        for o in DEPMOD_OUTPUTS {
            std::fs::write(k.join(o), "").unwrap();
        }
        assert!(depmod_up_to_date(k));
        std::fs::write(k.join("kernel/fs/b.ko"), "").unwrap();
        set(&k.join("modules.dep"), old);
        assert!(!depmod_up_to_date(k), "b.ko is newer than modules.dep");
    }

    #[test]
    fn locale_gen_needs_an_active_line() {
        assert!(!locale_gen_wanted("# en_US.UTF-8 UTF-8\n\n   \n"));
        assert!(locale_gen_wanted("# comment\n en_US.UTF-8 UTF-8\n"));
    }

    #[test]
    fn tmpfiles_command_line() {
        let a = tmpfiles_args(false);
        assert_eq!(&a[..5], ["systemd-tmpfiles", "--root=/buildroot", "--boot", "--create", "--remove"]);
        assert_eq!(a.iter().filter(|a| a.starts_with("--exclude-prefix=")).count(), 6);
        assert!(!a.contains(&"--exclude-prefix=/var".to_string()));
        assert_eq!(tmpfiles_args(true).last().map(String::as_str), Some("--exclude-prefix=/var"));
    }

    #[test]
    fn root_passwords() {
        assert_eq!(root_password(&config(json!({}))), None);
        assert_eq!(root_password(&config(json!({"RootPassword": ["pw", false]}))), Some(("pw".into(), false)));
        assert_eq!(root_password(&config(json!({"RootPassword": ["", true]}))), Some(("".into(), true)));
    }

    #[test]
    fn firstboot_options_and_credentials() {
        let c = config(json!({
            "Locale": "de_DE.UTF-8", "LocaleMessages": "C.UTF-8", "Keymap": "de", "Timezone": "Europe/Berlin",
            "Hostname": "box", "RootShell": "/bin/zsh",
        }));
        let s = firstboot_settings(&c, Some("$6$salt$hash".into()));
        assert_eq!(
            firstboot_args(&s),
            [
                "systemd-firstboot",
                "--root=/buildroot",
                "--force",
                "--locale",
                "de_DE.UTF-8",
                "--locale-messages",
                "C.UTF-8",
                "--keymap",
                "de",
                "--timezone",
                "Europe/Berlin",
                "--hostname",
                "box",
                "--root-password-hashed",
                "$6$salt$hash",
                "--root-shell",
                "/bin/zsh",
            ]
        );
        assert_eq!(
            credstore_files(&s),
            vec![
                ("firstboot.locale", "de_DE.UTF-8".to_string(), 0o644),
                ("firstboot.locale-messages", "C.UTF-8".to_string(), 0o644),
                ("firstboot.keymap", "de".to_string(), 0o644),
                ("firstboot.timezone", "Europe/Berlin".to_string(), 0o644),
                ("passwd.hashed-password.root", "$6$salt$hash".to_string(), 0o600),
                ("passwd.shell.root", "/bin/zsh".to_string(), 0o644),
            ]
        );
        assert!(firstboot_settings(&config(json!({})), None).is_empty());

        // `hashed:` alone: an empty, unlocked password is still passed on.
        let s = firstboot_settings(&config(json!({})), Some(String::new()));
        assert_eq!(firstboot_args(&s)[3..], ["--root-password-hashed".to_string(), String::new()]);
        assert_eq!(credstore_files(&s), vec![("passwd.hashed-password.root", String::new(), 0o600)]);

        // The hostname is not a credential.
        let s = firstboot_settings(&config(json!({"Hostname": "h"})), None);
        assert_eq!(firstboot_args(&s)[3..], ["--hostname".to_string(), "h".to_string()]);
        assert!(credstore_files(&s).is_empty());
    }

    #[test]
    fn root_shadow_entry() {
        assert_eq!(add_root_shadow_entry("root:*:1::::::\n", 5), None);
        assert_eq!(
            add_root_shadow_entry("messagebus:!*:20000::::::\n", 20783).as_deref(),
            Some("messagebus:!*:20000::::::\nroot:!*:20783::::::\n")
        );
        assert_eq!(add_root_shadow_entry("", 1).as_deref(), Some("root:!*:1::::::\n"));
        assert_eq!(add_root_shadow_entry("a:x", 1).as_deref(), Some("a:x\nroot:!*:1::::::\n"));
    }

    #[test]
    fn locale_symlinks_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("etc/default")).unwrap();
        std::fs::write(root.join("etc/locale.conf"), "# generated\n").unwrap();
        std::os::unix::fs::symlink("../locale.conf", root.join("etc/default/locale")).unwrap();
        let links = symlinked_locale_files(root);
        assert_eq!(links, vec![(root.join("etc/default/locale"), PathBuf::from("../locale.conf"))]);
        // What a Debian 12 systemd-firstboot does: replace the link by a file.
        std::fs::remove_file(root.join("etc/default/locale")).unwrap();
        std::fs::write(root.join("etc/default/locale"), "LANG=C.UTF-8\n").unwrap();
        restore_symlinked_locale_files(root, &links).unwrap();
        assert_eq!(std::fs::read_link(root.join("etc/default/locale")).unwrap(), Path::new("../locale.conf"));
        assert_eq!(std::fs::read_to_string(root.join("etc/locale.conf")).unwrap(), "LANG=C.UTF-8\n");

        assert_eq!(resolve_in_root(root, &root.join("etc/a"), Path::new("/etc/b")), Some(root.join("etc/b")));
        assert_eq!(resolve_in_root(root, &root.join("etc/a"), Path::new("../../../x")), None);
    }

    #[test]
    fn selinux_decisions() {
        assert!(!selinux_relabel_allowed(Feature::Disabled, OutputFormat::Disk));
        assert!(!selinux_relabel_allowed(Feature::Auto, OutputFormat::Directory));
        assert!(selinux_relabel_allowed(Feature::Auto, OutputFormat::Disk));
        assert!(selinux_relabel_allowed(Feature::Enabled, OutputFormat::Directory));
        let names: Vec<String> =
            ["policy.31", "policy.33", "policy.9", "policy.bak", ".33", "policy."].map(String::from).to_vec();
        assert_eq!(newest_binary_policy(&names).as_deref(), Some("policy.33"));
        assert_eq!(newest_binary_policy(&["x".to_string()]), None);
    }

    #[test]
    fn selinux_without_config() {
        let d = tempfile::tempdir().unwrap();
        let base = Options::default();
        let c = config(json!({"Format": "disk"}));
        assert_eq!(want_selinux_relabel(&c, d.path(), &base, true).unwrap(), None);
        let c = config(json!({"Format": "directory", "SELinuxRelabel": "enabled"}));
        let e = want_selinux_relabel(&c, d.path(), &base, true).unwrap_err();
        assert!(e.to_string().contains("could not find selinux config"), "{e}");
        assert_eq!(want_selinux_relabel(&c, d.path(), &base, false).unwrap(), None);
    }
}
