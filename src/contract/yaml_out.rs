//! A small YAML writer for JSON values: block style, keys in insertion
//! order, strings quoted only when YAML would read them as something else.
//!
//! The crate reads YAML with marked-yaml (which keeps spans for
//! diagnostics) but has no YAML serializer, and the maintained serde YAML
//! crates are either archived or pull a second YAML stack in for one
//! command. Output is YAML 1.2 that any parser reads back to the same JSON
//! value (a test round-trips it through marked-yaml).

use serde_json::Value;

/// `value` as a YAML document (ending in a newline).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(map, 0, &mut out),
        Value::Array(items) if !items.is_empty() => write_seq(items, 0, &mut out),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn indent(level: usize, out: &mut String) {
    for _ in 0..level {
        out.push_str("  ");
    }
}

fn write_map(map: &serde_json::Map<String, Value>, level: usize, out: &mut String) {
    for (key, value) in map {
        indent(level, out);
        out.push_str(&string_text(key));
        out.push(':');
        write_value_after_key(value, level, out);
    }
}

fn write_value_after_key(value: &Value, level: usize, out: &mut String) {
    match value {
        Value::Object(child) if !child.is_empty() => {
            out.push('\n');
            write_map(child, level + 1, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(items, level + 1, out);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn write_seq(items: &[Value], level: usize, out: &mut String) {
    for item in items {
        indent(level, out);
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                // The first key on the dash's line, the rest aligned under it.
                let mut first = true;
                for (key, value) in map {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        indent(level + 1, out);
                    }
                    out.push_str(&string_text(key));
                    out.push(':');
                    write_value_after_key(value, level + 1, out);
                }
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_seq(inner, level + 1, out);
            }
            scalar => {
                out.push(' ');
                out.push_str(&scalar_text(scalar));
                out.push('\n');
            }
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string_text(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// Plain when YAML reads it back as the same string, double-quoted (JSON
/// escapes, which YAML shares) otherwise.
fn string_text(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
    }
}

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let reserved_words = [
        "null", "Null", "NULL", "~", "true", "True", "TRUE", "false", "False", "FALSE", "yes",
        "no", "on", "off", "Yes", "No", "On", "Off", "YES", "NO", "ON", "OFF", ".inf", ".nan",
    ];
    if reserved_words.contains(&s) || looks_numeric(s) {
        return false;
    }
    if first.is_whitespace() || s.ends_with(char::is_whitespace) {
        return false;
    }
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        return false;
    }
    if s.contains(": ") || s.contains(" #") || s.ends_with(':') {
        return false;
    }
    s.chars().all(|c| !c.is_control() && c != '\u{feff}')
}

fn looks_numeric(s: &str) -> bool {
    let t = s.trim_start_matches(['+', '-']);
    t.parse::<f64>().is_ok()
        || t.starts_with("0x")
        || t.starts_with("0o")
        || t.chars().next().is_some_and(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::yaml_to_json;
    use serde_json::json;

    fn round_trip(value: Value) {
        let text = to_yaml(&value);
        let parsed = yaml_to_json(&text)
            .unwrap_or_else(|e| panic!("emitted YAML parses: {:?}\n{text}", e.messages()));
        assert_eq!(parsed, value, "\n{text}");
    }

    #[test]
    fn values_survive_a_round_trip() {
        round_trip(json!({
            "apiVersion": "v3.1.0",
            "version": "3.0.0",
            "n": 42,
            "f": 0.5,
            "neg": -3,
            "flag": true,
            "nothing": null,
            "tricky": ["true", "null", "42", "1e3", "- dash", "a: b", "# hash", "", " pad", "quote\"d", "line\nbreak", "°C", "mm/s", "0x1f", "~", "yes"],
            "empty_list": [],
            "empty_map": {},
            "nested": [{"a": 1, "b": [1, 2], "c": {"d": "e"}}, [1, [2]], "plain"],
        }));
    }
}
