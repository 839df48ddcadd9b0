//! JSON output byte-identical to Python's `json.dumps(obj, indent=4,
//! sort_keys=True)`: sorted keys, four-space indentation, `", "`/`": "`
//! separators and every non-ASCII character escaped.

use serde_json::Value;

/// Serialize `value` like upstream's `dump_json()`.
pub fn dump(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0);
    out
}

fn indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("    ");
    }
}

fn write_value(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, level + 1);
                write_value(out, v, level + 1);
            }
            indent(out, level);
            out.push(']');
        }
        Value::Object(o) => {
            if o.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                indent(out, level + 1);
                write_string(out, k);
                out.push_str(": ");
                write_value(out, &o[k.as_str()], level + 1);
            }
            indent(out, level);
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
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
