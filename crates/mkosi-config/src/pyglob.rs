//! Python's `fnmatch.fnmatchcase()` and `glob.glob()` (non-recursive), which
//! upstream uses for `[Match] ImageId=` and for script globs. Unlike most
//! glob libraries, an unclosed `[` is a literal, `**` is just `*`, hidden
//! files are only matched by patterns starting with `.`, and `.`/`..` are
//! never produced by a wildcard.

use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// `*`: any run of characters.
    Star,
    /// `?`: any one character.
    Any,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Set {
        negate: bool,
        ranges: Vec<(char, char)>,
    },
    Literal(char),
}

fn compile(pattern: &str) -> Vec<Token> {
    let pat: Vec<char> = pattern.chars().collect();
    let n = pat.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let c = pat[i];
        i += 1;
        match c {
            '*' => {
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
            }
            '?' => out.push(Token::Any),
            '[' => {
                let mut j = i;
                if j < n && pat[j] == '!' {
                    j += 1;
                }
                if j < n && pat[j] == ']' {
                    j += 1;
                }
                while j < n && pat[j] != ']' {
                    j += 1;
                }
                if j >= n {
                    out.push(Token::Literal('['));
                    continue;
                }
                let mut stuff = &pat[i..j];
                i = j + 1;
                let negate = stuff.first() == Some(&'!');
                if negate {
                    stuff = &stuff[1..];
                }
                let mut ranges = Vec::new();
                let mut k = 0;
                while k < stuff.len() {
                    if k + 2 < stuff.len() && stuff[k + 1] == '-' {
                        // Ranges with the ends reversed are empty.
                        if stuff[k] <= stuff[k + 2] {
                            ranges.push((stuff[k], stuff[k + 2]));
                        }
                        k += 3;
                    } else {
                        ranges.push((stuff[k], stuff[k]));
                        k += 1;
                    }
                }
                out.push(Token::Set { negate, ranges });
            }
            other => out.push(Token::Literal(other)),
        }
    }
    out
}

fn matches_tokens(tokens: &[Token], name: &[char]) -> bool {
    // Iterative matching with backtracking to the last star.
    let (mut t, mut s) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while s < name.len() {
        let ok = match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, s));
                t += 1;
                continue;
            }
            Some(Token::Any) => true,
            Some(Token::Literal(c)) => *c == name[s],
            Some(Token::Set { negate, ranges }) => {
                let c = name[s];
                ranges.iter().any(|(a, b)| *a <= c && c <= *b) != *negate
            }
            None => false,
        };
        if ok {
            t += 1;
            s += 1;
        } else if let Some((st, ss)) = star {
            t = st + 1;
            s = ss + 1;
            star = Some((st, ss + 1));
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

/// `fnmatch.fnmatchcase(name, pattern)`.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let chars: Vec<char> = name.chars().collect();
    matches_tokens(&compile(pattern), &chars)
}

/// `glob.has_magic()`.
pub fn has_magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// `os.path.split()`.
fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => {
            let head = &path[..=i];
            let trimmed = head.trim_end_matches('/');
            (if trimmed.is_empty() { head } else { trimmed }, &path[i + 1..])
        }
        None => ("", path),
    }
}

/// `os.path.join(a, b)` for a relative `b`.
fn join(a: &str, b: &str) -> String {
    if a.is_empty() || a.ends_with('/') {
        format!("{a}{b}")
    } else {
        format!("{a}/{b}")
    }
}

fn on_disk(path: &str, cwd: &Path) -> std::path::PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else if path.is_empty() {
        cwd.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// Names in `dir` (`os.scandir()`, so never `.` or `..`); with `dironly`
/// only those that are directories (following symlinks).
fn listdir(dir: &str, cwd: &Path, dironly: bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(on_disk(dir, cwd)) else { return vec![] };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| !dironly || e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn glob1(dir: &str, pattern: &str, cwd: &Path, dironly: bool) -> Vec<String> {
    let hidden_ok = pattern.starts_with('.');
    listdir(dir, cwd, dironly)
        .into_iter()
        .filter(|n| (hidden_ok || !n.starts_with('.')) && fnmatch(pattern, n))
        .collect()
}

fn glob0(dir: &str, basename: &str, cwd: &Path) -> Vec<String> {
    if basename.is_empty() {
        if on_disk(dir, cwd).is_dir() {
            return vec![basename.to_string()];
        }
    } else if std::fs::symlink_metadata(on_disk(&join(dir, basename), cwd)).is_ok() {
        return vec![basename.to_string()];
    }
    vec![]
}

fn iglob(pathname: &str, cwd: &Path, dironly: bool) -> Vec<String> {
    let (dirname, basename) = split(pathname);
    if !has_magic(pathname) {
        let disk = on_disk(pathname, cwd);
        let exists = if basename.is_empty() { disk.is_dir() } else { std::fs::symlink_metadata(&disk).is_ok() };
        return if exists { vec![pathname.to_string()] } else { vec![] };
    }
    if dirname.is_empty() {
        return if has_magic(basename) { glob1("", basename, cwd, dironly) } else { glob0("", basename, cwd) };
    }
    let dirs =
        if dirname != pathname && has_magic(dirname) { iglob(dirname, cwd, true) } else { vec![dirname.to_string()] };
    let mut out = Vec::new();
    for d in dirs {
        let names = if has_magic(basename) { glob1(&d, basename, cwd, dironly) } else { glob0(&d, basename, cwd) };
        out.extend(names.into_iter().map(|n| join(&d, &n)));
    }
    out
}

/// `sorted(glob.glob(pattern))` with relative patterns taken relative to `cwd`.
pub fn glob(pattern: &str, cwd: &Path) -> Vec<String> {
    let mut out = iglob(pattern, cwd, false);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_python() {
        let cases = [
            ("my-*", "my-image", true),
            ("my-image-?", "my-image-1", true),
            ("[a-m]y*", "my", true),
            ("[!a]*", "abc", false),
            ("[!a]*", "bc", true),
            ("[]]", "]", true),
            ("[!]]", "a", true),
            ("a*[", "abc[", true),
            ("a[", "a[", true),
            ("[z-a]", "z", false),
            ("[!z-a]", "q", true),
            ("**", "x/y", true),
            ("*.conf", ".hidden.conf", true),
            ("a?c", "a/c", true),
            ("[a-]", "-", true),
            ("[^a]", "^", true),
            ("", "", true),
            ("", "x", false),
            ("*a*b", "xaybzb", true),
            ("*a*b", "xaybzc", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(fnmatch(p, n), want, "{p} {n}");
        }
    }

    #[test]
    fn glob_like_python() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["a.sh", "b.sh", ".hidden.sh", "sub/c.sh", "sub/.d.sh"] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        std::os::unix::fs::symlink("nowhere", d.join("dangling.sh")).unwrap();
        assert_eq!(glob("*.sh", d), vec!["a.sh", "b.sh", "dangling.sh"]);
        assert_eq!(glob(".*", d), vec![".hidden.sh"]);
        assert_eq!(glob("**/*.sh", d), vec!["sub/c.sh"]);
        assert_eq!(glob("*/.*", d), vec!["sub/.d.sh"]);
        assert_eq!(glob("sub/../*.sh", d), vec!["sub/../a.sh", "sub/../b.sh", "sub/../dangling.sh"]);
        assert_eq!(glob("nope*", d), Vec::<String>::new());
        assert_eq!(glob("a.sh", d), vec!["a.sh"]);
        assert_eq!(glob("missing", d), Vec::<String>::new());
        let abs = format!("{}/s*/c.sh", d.display());
        assert_eq!(glob(&abs, d), vec![format!("{}/sub/c.sh", d.display())]);
    }
}
