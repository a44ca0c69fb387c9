//! `-o yaml`: a JSON value written as block-style YAML, as kubectl writes it. Strings that
//! could be read back as anything else (a number, a boolean, null, or YAML syntax) are
//! written double-quoted with JSON's escapes, which YAML reads the same way.

use serde_json::Value;

/// `value` as YAML text (a mapping's keys in their order), ending with a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => mapping(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => sequence(&mut out, items, 0),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn mapping(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&string(key));
        out.push(':');
        block(out, value, indent, false);
    }
}

fn sequence(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            // A mapping's first entry goes on the dash's line, the rest under it.
            Value::Object(map) if !map.is_empty() => {
                let mut nested = String::new();
                mapping(&mut nested, map, indent + 2);
                out.push(' ');
                out.push_str(&nested[indent + 2..]);
            }
            other => block(out, other, indent, true),
        }
    }
}

/// The rest of an entry after its `key:` or (`after_dash`) its `-`, at `indent`: an inline
/// value or a nested block. A mapping's sequence stays at the mapping's indentation, as
/// kubectl writes it; a sequence's goes deeper.
fn block(out: &mut String, value: &Value, indent: usize, after_dash: bool) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            mapping(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            sequence(out, items, if after_dash { indent + 2 } else { indent });
        }
        scalar => {
            out.push(' ');
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

fn inline(value: &Value) -> String {
    match value {
        Value::String(s) => string(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// A string as a plain scalar where YAML reads it back as that string, else double-quoted
/// (so is anything that starts with a digit: a version, a time, a number).
fn string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " _./@:,+-()".contains(c))
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || "_./".contains(c))
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "inf" | "nan"
        );
    if plain {
        s.to_string()
    } else {
        Value::String(s.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::to_yaml;
    use serde_json::json;

    #[test]
    fn nested_values_are_written_as_block_yaml() {
        let value = json!({
            "path": "root/web",
            "restarts": 2,
            "significant": false,
            "reason": "error: exited with status 3",
            "version": "1.0",
            "empty": "",
            "yes": "yes",
            "children": [{"path": "root/web/a", "pid": 7}, "x"],
            "none": [],
            "last_exit": {"reason": "killed", "time": "2026-12-07T01:02:03.000Z"},
            "text": "two\nlines",
        });
        assert_eq!(
            to_yaml(&value),
            "path: root/web\n\
             restarts: 2\n\
             significant: false\n\
             reason: \"error: exited with status 3\"\n\
             version: \"1.0\"\n\
             empty: \"\"\n\
             \"yes\": \"yes\"\n\
             children:\n\
             - path: root/web/a\n  pid: 7\n\
             - x\n\
             none: []\n\
             last_exit:\n  reason: killed\n  time: \"2026-12-07T01:02:03.000Z\"\n\
             text: \"two\\nlines\"\n"
        );
    }

    #[test]
    fn sequences_nest_under_sequences_and_mappings() {
        let value = json!({"a": {"b": [1, [2, 3]]}});
        assert_eq!(to_yaml(&value), "a:\n  b:\n  - 1\n  -\n    - 2\n    - 3\n");
    }
}
