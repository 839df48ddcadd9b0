//! JSON output byte-identical to Python's `json.dumps()` (with the default `ensure_ascii`):
//! `", "`/`": "` separators on one line, or with `indent` one item per line and `","` at line
//! ends; every non-ASCII character escaped. [`dump`] is upstream's `dump_json()`
//! (`indent=4, sort_keys=True`).

use serde_json::Value;

/// How to lay out the JSON, like the arguments of Python's `json.dumps()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Spaces per level, or everything on one line.
    pub indent: Option<usize>,
    /// Sort object keys (else keep their order).
    pub sort_keys: bool,
}

/// Serialize `value` like upstream's `dump_json()`.
pub fn dump(value: &Value) -> String {
    dumps(value, Style { indent: Some(4), sort_keys: true })
}

/// Serialize `value` like Python's `json.dumps(value, indent=…, sort_keys=…)`.
pub fn dumps(value: &Value, style: Style) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0, style);
    out
}

fn separator(out: &mut String, first: bool, level: usize, style: Style) {
    match style.indent {
        Some(n) => {
            if !first {
                out.push(',');
            }
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
        None => {
            if !first {
                out.push_str(", ");
            }
        }
    }
}

fn close(out: &mut String, level: usize, style: Style) {
    if let Some(n) = style.indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
}

fn write_value(out: &mut String, value: &Value, level: usize, style: Style) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                separator(out, i == 0, level + 1, style);
                write_value(out, v, level + 1, style);
            }
            close(out, level, style);
            out.push(']');
        }
        Value::Object(o) if o.is_empty() => out.push_str("{}"),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            if style.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                separator(out, i == 0, level + 1, style);
                write_string(out, k);
                out.push_str(": ");
                write_value(out, &o[k.as_str()], level + 1, style);
            }
            close(out, level, style);
            out.push('}');
        }
    }
}

/// A JSON string literal with Python's escaping (`ensure_ascii=True`).
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_compatible() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "é\u{1F600}\"\\\n\u{7f}", "c": [], "d": {}});
        let want = "{\n    \"a\": \"\\u00e9\\ud83d\\ude00\\\"\\\\\\n\\u007f\",\n    \"b\": [\n        1,\n        {\n            \"a\": true,\n            \"z\": null\n        }\n    ],\n    \"c\": [],\n    \"d\": {}\n}";
        assert_eq!(dump(&v), want);
    }
}
