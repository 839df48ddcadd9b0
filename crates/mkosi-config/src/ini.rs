//! The INI dialect of mkosi configuration files.
//!
//! Unlike common INI parsers, a key may appear many times (every occurrence is
//! applied in order), `#` starts a comment anywhere on a line, blank lines
//! never end a multi-line value, and an indented line continues the previous
//! value. The whole file is dedented first. Errors carry the line number.

/// One item of a parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `Key=Value` (continuation lines joined with `\n`) inside `section`.
    Setting { section: String, key: String, value: String, line: usize },
    /// The end of a section (emitted before the next header and at the end);
    /// `line` is the line of the section's header.
    SectionEnd { section: String, line: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct IniError {
    pub line: usize,
    pub message: String,
}

/// Python's `str.isspace()` for a single character.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Python's `str.splitlines()`.
pub fn splitlines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut iter = text.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let is_break = matches!(
            c,
            '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}'
        );
        if !is_break {
            continue;
        }
        lines.push(&text[start..i]);
        let mut end = i + c.len_utf8();
        if c == '\r' {
            if let Some(&(j, '\n')) = iter.peek() {
                iter.next();
                end = j + 1;
            }
        }
        start = end;
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// `textwrap.dedent()`: remove the longest common leading whitespace of all
/// non-blank lines; whitespace-only lines become empty.
pub fn dedent(text: &str) -> String {
    // textwrap only treats spaces and tabs as indentation, and only `\n` as a line separator.
    let lines: Vec<&str> = text.split('\n').collect();
    let mut margin: Option<&str> = None;
    for line in &lines {
        if line.trim_matches([' ', '\t']).is_empty() {
            continue;
        }
        let indent_len = line.len() - line.trim_start_matches([' ', '\t']).len();
        let indent = &line[..indent_len];
        margin = Some(match margin {
            None => indent,
            Some(m) => {
                let common = m.bytes().zip(indent.bytes()).take_while(|(a, b)| a == b).count();
                &m[..common]
            }
        });
    }
    let margin = margin.unwrap_or("");
    let mut out = String::with_capacity(text.len());
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if line.trim_matches([' ', '\t']).is_empty() {
            // Whitespace-only lines are normalised to empty lines.
            continue;
        }
        out.push_str(line.strip_prefix(margin).unwrap_or(line));
    }
    out
}

/// Parse `text`. Settings in sections not accepted by `want_section` are
/// skipped (and produce no `SectionEnd` either), like upstream's
/// `only_sections` filter.
pub fn parse(text: &str, want_section: &dyn Fn(&str) -> bool) -> Result<Vec<Event>, IniError> {
    // Files are read with universal newlines upstream: \r\n and \r become \n
    // before dedenting.
    let normalized;
    let text = if text.contains('\r') {
        normalized = text.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        text
    };
    let dedented = dedent(text);
    let mut events = Vec::new();
    let mut section: Option<(String, usize)> = None;
    let mut setting: Option<(String, String, usize)> = None;

    for (idx, raw) in splitlines(&dedented).into_iter().enumerate() {
        let lineno = idx + 1;
        let line = match raw.find('#') {
            Some(i) => &raw[..i],
            None => raw,
        };
        if py_strip(line).is_empty() {
            continue;
        }

        if let (Some(_), Some((_, value, _))) = (&section, &mut setting) {
            if line.chars().next().is_some_and(py_isspace) {
                value.push('\n');
                value.push_str(py_strip(line));
                continue;
            }
        }

        if let (Some((sec, _)), Some((key, value, l))) = (&section, setting.take()) {
            events.push(Event::Setting { section: sec.clone(), key, value, line: l });
        }

        let line = py_strip(line);
        if line.starts_with('[') {
            if !line.ends_with(']') {
                return Err(IniError { line: lineno, message: format!("{line} is not a valid section") });
            }
            if let Some((sec, header)) = section.take() {
                if want_section(&sec) {
                    events.push(Event::SectionEnd { section: sec, line: header });
                }
            }
            let name = py_strip(&line[1..line.len() - 1]);
            if name.is_empty() {
                return Err(IniError { line: lineno, message: "Section name cannot be empty or whitespace".into() });
            }
            section = Some((name.to_string(), lineno));
            continue;
        }

        let Some((sec, _)) = &section else {
            return Err(IniError { line: lineno, message: format!("Setting {line} is located outside of section") });
        };
        if !want_section(sec) {
            continue;
        }

        let Some((key, value)) = line.split_once('=') else {
            return Err(IniError { line: lineno, message: format!("Setting {line} must be followed by '='") });
        };
        if key.is_empty() {
            return Err(IniError { line: lineno, message: format!("Missing setting name before '=' in {line}") });
        }
        setting = Some((py_strip(key).to_string(), py_strip(value).to_string(), lineno));
    }

    if let (Some((sec, _)), Some((key, value, l))) = (&section, setting.take()) {
        events.push(Event::Setting { section: sec.clone(), key, value, line: l });
    }
    if let Some((sec, header)) = section {
        if want_section(&sec) {
            events.push(Event::SectionEnd { section: sec, line: header });
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &str) -> bool {
        true
    }

    fn settings(text: &str) -> Vec<(String, String, String)> {
        parse(text, &all)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                Event::Setting { section, key, value, .. } => Some((section, key, value)),
                _ => None,
            })
            .collect()
    }

    fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn basic_and_repeated_keys() {
        assert_eq!(
            settings("[Content]\nPackages=a\nPackages=b\n[Output]\nFormat = disk \n"),
            vec![s("Content", "Packages", "a"), s("Content", "Packages", "b"), s("Output", "Format", "disk")]
        );
    }

    #[test]
    fn comments_anywhere() {
        assert_eq!(settings("[A]\n# c\nX=1#2\nY=a ; b\n"), vec![s("A", "X", "1"), s("A", "Y", "a ; b")]);
    }

    #[test]
    fn multi_line_values_and_blank_lines() {
        assert_eq!(
            settings("[Content]\nPackages=a\n    b\n\n    c  # comment\nOther=x\n"),
            vec![s("Content", "Packages", "a\nb\nc"), s("Content", "Other", "x")]
        );
        // A value may start on the next line.
        assert_eq!(settings("[C]\nPackages=\n  a\n  b\n"), vec![s("C", "Packages", "\na\nb")]);
    }

    #[test]
    fn dedent_whole_file() {
        assert_eq!(settings("    [A]\n    X=1\n      y\n"), vec![s("A", "X", "1\ny")]);
    }

    #[test]
    fn errors_have_lines() {
        assert_eq!(parse("[A\n", &all).unwrap_err().line, 1);
        assert_eq!(parse("X=1\n", &all).unwrap_err().line, 1);
        assert_eq!(parse("[A]\n\nnovalue\n", &all).unwrap_err().line, 3);
        assert_eq!(parse("[A]\n=v\n", &all).unwrap_err().line, 2);
        assert_eq!(parse("[ ]\n", &all).unwrap_err().line, 1);
    }

    #[test]
    fn section_filter() {
        let only_match = |s: &str| s == "Match";
        let ev = parse("[Match]\nA=1\n[Content]\nB=2\n", &only_match).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::Setting { section: "Match".into(), key: "A".into(), value: "1".into(), line: 2 },
                Event::SectionEnd { section: "Match".into(), line: 1 }
            ]
        );
    }

    #[test]
    fn windows_line_endings() {
        // Normalized before dedenting, so indented CRLF files parse like upstream.
        assert_eq!(
            settings("  [Content]\r\n  Packages=a\r\n\r\n  Packages=b\r\n"),
            vec![s("Content", "Packages", "a"), s("Content", "Packages", "b")]
        );
        assert_eq!(settings("[A]\rX=1\r"), vec![s("A", "X", "1")]);
    }

    #[test]
    fn python_line_splitting() {
        assert_eq!(splitlines("a\r\nb\rc\x0bd"), vec!["a", "b", "c", "d"]);
        assert_eq!(splitlines("a\n"), vec!["a"]);
        assert_eq!(dedent("  a\n\t\n  b"), "a\n\nb");
    }
}
