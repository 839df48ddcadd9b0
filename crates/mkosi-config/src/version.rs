//! Version comparison following the UAPI Group Version Format Specification,
//! including upstream mkosi's handling of `^` (which compares lower, not
//! higher, than other characters — kept for identical `[Match]` results).

use std::cmp::Ordering;

fn is_valid(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

fn skip_invalid(s: &[u8]) -> &[u8] {
    let i = s.iter().position(|&c| is_valid(c)).unwrap_or(s.len());
    &s[i..]
}

fn prefix_len(s: &[u8], pred: impl Fn(u8) -> bool) -> usize {
    s.iter().position(|&c| !pred(c)).unwrap_or(s.len())
}

fn cmp_digits(a: &[u8], b: &[u8]) -> Ordering {
    let a = &a[prefix_len(a, |c| c == b'0')..];
    let b = &b[prefix_len(b, |c| c == b'0')..];
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Compare two version strings.
pub fn compare_versions(v1: &str, v2: &str) -> Ordering {
    let mut a = v1.as_bytes();
    let mut b = v2.as_bytes();
    loop {
        a = skip_invalid(a);
        b = skip_invalid(b);

        match (a.first(), b.first()) {
            (Some(b'~'), Some(b'~')) => {
                a = &a[1..];
                b = &b[1..];
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            _ => {}
        }

        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }

        for sep in [b'-', b'^', b'.'] {
            match (a.first() == Some(&sep), b.first() == Some(&sep)) {
                (true, true) => {
                    a = &a[1..];
                    b = &b[1..];
                }
                // Upstream treats a leading '^' like '-' and '.': it compares lower.
                (true, false) => return Ordering::Less,
                (false, true) => return Ordering::Greater,
                _ => {}
            }
        }

        let da = prefix_len(a, |c| c.is_ascii_digit());
        let db = prefix_len(b, |c| c.is_ascii_digit());
        if da > 0 || db > 0 {
            match cmp_digits(&a[..da], &b[..db]) {
                Ordering::Equal => {}
                o => return o,
            }
            a = &a[da..];
            b = &b[db..];
            continue;
        }

        let la = prefix_len(a, |c| c.is_ascii_alphabetic());
        let lb = prefix_len(b, |c| c.is_ascii_alphabetic());
        match a[..la].cmp(&b[..lb]) {
            Ordering::Equal => {}
            o => return o,
        }
        a = &a[la..];
        b = &b[lb..];
    }
}

/// Evaluate a version condition such as `>=255`, `!=1.0` or `257` (equality)
/// against `version`.
pub fn version_matches(condition: &str, version: &str) -> bool {
    for (sigil, accept) in [
        ("==", &[Ordering::Equal][..]),
        ("!=", &[Ordering::Less, Ordering::Greater][..]),
        ("<=", &[Ordering::Less, Ordering::Equal][..]),
        (">=", &[Ordering::Greater, Ordering::Equal][..]),
        (">", &[Ordering::Greater][..]),
        ("<", &[Ordering::Less][..]),
    ] {
        if let Some(rhs) = condition.strip_prefix(sigil) {
            return accept.contains(&compare_versions(version, rhs));
        }
    }
    compare_versions(version, condition) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn comparisons() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("001", "1", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0-1", "1.0", Greater),
            ("1.0-1", "1.0.1", Less),
            ("a", "B", Greater),
            ("abc", "abcd", Less),
            ("255", "255.1", Less),
            ("1_0", "1.0", Greater),
            ("257.9", "257", Greater),
            ("1^2", "1.2", Less),
            ("", "", Equal),
            ("", "0", Less),
            ("27~devel", "26", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn conditions() {
        let cases = [
            (">=255", "257", true),
            (">=255", "254", false),
            ("<255", "254", true),
            ("!=1.0", "1.0", false),
            ("!=1.0", "1.1", true),
            ("257", "257", true),
            ("==257", "257.1", false),
            (">257", "257", false),
            ("<=257", "257", true),
        ];
        for (cond, v, want) in cases {
            assert_eq!(version_matches(cond, v), want, "{cond} {v}");
        }
    }
}
