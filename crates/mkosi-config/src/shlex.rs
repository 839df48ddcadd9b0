//! POSIX shell-style word splitting as used by upstream for `Environment=`,
//! `QemuArgs=`, `Credentials=` and friends: quotes and backslashes are
//! honoured, `#` is *not* a comment, and only the given characters separate
//! words (newline plus the setting's delimiter — notably not tabs).

/// Split `input` into words, separating on any character in `whitespace`.
pub fn split(input: &str, whitespace: &[char]) -> Result<Vec<String>, String> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Start,
        Word,
        Quote(char),
        Escape { resume: Resume },
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Resume {
        Word,
        Double,
    }

    let mut words = Vec::new();
    let mut token = String::new();
    let mut quoted = false;
    let mut state = State::Start;

    for c in input.chars() {
        match state {
            State::Start => {
                if whitespace.contains(&c) {
                    continue;
                }
                match c {
                    '\\' => state = State::Escape { resume: Resume::Word },
                    '\'' | '"' => {
                        quoted = true;
                        state = State::Quote(c);
                    }
                    _ => {
                        token.push(c);
                        state = State::Word;
                    }
                }
            }
            State::Word => {
                if whitespace.contains(&c) {
                    words.push(std::mem::take(&mut token));
                    quoted = false;
                    state = State::Start;
                    continue;
                }
                match c {
                    '\\' => state = State::Escape { resume: Resume::Word },
                    '\'' | '"' => {
                        quoted = true;
                        state = State::Quote(c);
                    }
                    _ => token.push(c),
                }
            }
            State::Quote(q) => {
                if c == q {
                    state = State::Word;
                } else if c == '\\' && q == '"' {
                    state = State::Escape { resume: Resume::Double };
                } else {
                    token.push(c);
                }
            }
            State::Escape { resume } => {
                if resume == Resume::Double && c != '"' && c != '\\' {
                    token.push('\\');
                }
                token.push(c);
                state = match resume {
                    Resume::Word => State::Word,
                    Resume::Double => State::Quote('"'),
                };
            }
        }
    }

    match state {
        State::Quote(_) => Err("No closing quotation".to_string()),
        State::Escape { .. } => Err("No escaped character".to_string()),
        State::Word => {
            words.push(token);
            Ok(words)
        }
        State::Start => {
            if quoted {
                words.push(token);
            }
            Ok(words)
        }
    }
}

/// Quote a word for a POSIX shell when it needs it (`shlex.quote`).
pub fn quote(s: &str) -> String {
    if s.is_empty() {
        return "''".to_string();
    }
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting() {
        let ws = ['\n', ' '];
        let cases: &[(&str, &[&str])] = &[
            ("a b  c", &["a", "b", "c"]),
            ("A='x y' B=\"1 2\"", &["A=x y", "B=1 2"]),
            ("a\\ b", &["a b"]),
            ("'' x", &["", "x"]),
            ("\"a\\\"b\\\\c\\d\"", &["a\"b\\c\\d"]),
            ("a#b", &["a#b"]),
            ("tab\there", &["tab\there"]),
            ("line1\nline2", &["line1", "line2"]),
            ("", &[]),
            ("   ", &[]),
        ];
        for (input, want) in cases {
            assert_eq!(split(input, &ws).unwrap(), want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{input:?}");
        }
        assert!(split("'open", &ws).is_err());
        assert!(split("trailing\\", &ws).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\"'\"'s'");
        assert_eq!(quote(""), "''");
    }
}
