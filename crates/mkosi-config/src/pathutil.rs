//! Path helpers with Python's semantics (`os.path.expandvars`,
//! `Path.expanduser`, `Path.resolve(strict=False)`), so relative and symlinked
//! paths in configuration end up exactly where upstream puts them. All
//! functions take the directory to resolve against explicitly instead of
//! using the process's working directory.

use std::path::{Component, Path, PathBuf};

use crate::host::{home_of_user, Host};

/// Replace `$NAME` and `${NAME}` with the host environment's value; unknown
/// variables are left untouched (like `os.path.expandvars`).
pub fn expandvars(value: &str, host: &Host) -> String {
    if !value.contains('$') {
        return value.to_string();
    }
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            let start = i;
            while i < bytes.len() && bytes[i] != b'$' {
                i += 1;
            }
            out.push_str(&value[start..i]);
            continue;
        }
        let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        if i + 1 < bytes.len() && bytes[i + 1] == b'{' {
            if let Some(end) = value[i + 2..].find('}') {
                let name = &value[i + 2..i + 2 + end];
                if !name.is_empty() && name.bytes().all(is_name) {
                    match host.env(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&value[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
            out.push('$');
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < bytes.len() && is_name(bytes[j]) {
            j += 1;
        }
        if j == i + 1 {
            out.push('$');
            i += 1;
            continue;
        }
        let name = &value[i + 1..j];
        match host.env(name) {
            Some(v) => out.push_str(v),
            None => out.push_str(&value[i..j]),
        }
        i = j;
    }
    out
}

/// Expand a leading `~` or `~user`; returns the path unchanged when the home
/// directory is unknown.
///
/// Like `pathlib.Path.expanduser()`, an unknown user (or no home directory
/// at all) is an error: `None`.
pub fn expanduser(path: &str, host: &Host) -> Option<String> {
    if !path.starts_with('~') {
        return Some(path.to_string());
    }
    let (head, rest) = match path.find('/') {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    };
    let home = if head == "~" { host.home() } else { home_of_user(&head[1..]) };
    let h = home?;
    let h = h.to_string_lossy();
    let h = if rest.is_empty() { h.to_string() } else { h.trim_end_matches('/').to_string() };
    Some(format!("{h}{rest}"))
}

/// `base / path` the way pathlib joins: an absolute `path` replaces the
/// base, and `.` components are dropped (`Path("./x").absolute()`).
pub fn absolute(path: &Path, base: &Path) -> PathBuf {
    let path = normalize(&path.to_string_lossy());
    if path.is_absolute() {
        path
    } else if path == Path::new(".") {
        base.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Make `path` absolute against `base` and resolve symlinks as far as the
/// path exists, keeping any non-existent remainder (`Path.resolve(strict=False)`).
pub fn resolve(path: &Path, base: &Path) -> PathBuf {
    let abs = absolute(path, base);
    let mut out = PathBuf::from("/");
    let mut budget = 40u32;
    resolve_into(&mut out, &abs, &mut budget);
    out
}

fn resolve_into(out: &mut PathBuf, path: &Path, budget: &mut u32) {
    for comp in path.components() {
        match comp {
            Component::RootDir => *out = PathBuf::from("/"),
            Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                let candidate = out.join(name);
                match std::fs::read_link(&candidate) {
                    Ok(target) if *budget > 0 => {
                        *budget -= 1;
                        if target.is_absolute() {
                            *out = PathBuf::from("/");
                        }
                        resolve_into(out, &target, budget);
                    }
                    _ => *out = candidate,
                }
            }
        }
    }
}

/// Lexically normalise a path like `pathlib.PurePosixPath(...)` does: drop
/// `.` components, duplicate and trailing separators (but keep `..`); an
/// empty result is `.`.
pub fn normalize(path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for comp in Path::new(path).components() {
        if comp != Component::CurDir {
            out.push(comp.as_os_str());
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enums::Architecture;

    fn host() -> Host {
        Host::new(
            vec![("HOME".into(), "/home/me".into()), ("FOO".into(), "bar".into())],
            Architecture::X86_64,
            PathBuf::from("/"),
        )
    }

    #[test]
    fn expand_variables() {
        let h = host();
        let cases = [
            ("$FOO/x", "bar/x"),
            ("${FOO}x", "barx"),
            ("$NOPE/x", "$NOPE/x"),
            ("${NOPE}", "${NOPE}"),
            ("a$", "a$"),
            ("$", "$"),
            ("${", "${"),
            ("x$FOO$FOO", "xbarbar"),
            ("no vars", "no vars"),
        ];
        for (input, want) in cases {
            assert_eq!(expandvars(input, &h), want, "{input}");
        }
    }

    #[test]
    fn python_path_normalization() {
        let cases = [
            ("./x", "x"),
            ("a//b/", "a/b"),
            ("a/./b/../c", "a/b/../c"),
            (".", "."),
            ("", "."),
            ("./", "."),
            ("/a/./b", "/a/b"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), PathBuf::from(want), "{input}");
        }
        let base = Path::new("/base");
        assert_eq!(absolute(Path::new("."), base), PathBuf::from("/base"));
        assert_eq!(absolute(Path::new("./x/../y"), base), PathBuf::from("/base/x/../y"));
        assert_eq!(absolute(Path::new("/abs/./z"), base), PathBuf::from("/abs/z"));
    }

    #[test]
    fn expand_home() {
        let h = host();
        assert_eq!(expanduser("~/x", &h).as_deref(), Some("/home/me/x"));
        assert_eq!(expanduser("~", &h).as_deref(), Some("/home/me"));
        assert_eq!(expanduser("a/~", &h).as_deref(), Some("a/~"));
        assert_eq!(expanduser("~root/x", &h).as_deref(), Some("/root/x"));
        assert_eq!(expanduser("~no-such-user-hopefully/x", &h), None);
    }

    #[test]
    fn resolve_lenient() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::os::unix::fs::symlink("real", base.join("link")).unwrap();
        assert_eq!(resolve(Path::new("link/missing/x"), &base), base.join("real/missing/x"));
        assert_eq!(resolve(Path::new("a/../b/./c"), &base), base.join("b/c"));
        assert_eq!(resolve(Path::new("/abs/../y"), &base), PathBuf::from("/y"));
        // Symlink loops terminate.
        std::os::unix::fs::symlink("loop", base.join("loop")).unwrap();
        let _ = resolve(Path::new("loop/x"), &base);
    }
}
