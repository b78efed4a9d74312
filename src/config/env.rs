//! `OTPGATE_SECTION__KEY=value` overrides, applied to the parsed document before it is typed.
//!
//! The variable name after the prefix is lower-cased and split on `__` into a key path;
//! a numeric segment indexes a list (`OTPGATE_APPS__0__UPSTREAM`). The value is read as a YAML
//! flow scalar or collection, so `true`, `5` and `[a, b]` keep their types; quote it
//! (`'"5"'`) to force a string, and use `null` to unset an optional key.

use serde_json::Value;

/// The prefix of override variables.
pub(super) const PREFIX: &str = "OTPGATE_";

/// Variables with the prefix that are not overrides (they configure the command line).
const NOT_OVERRIDES: &[&str] = &["OTPGATE_CONFIG"];

/// One applied override, remembered so error messages can name the variable.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) var: String,
    pub(crate) path: String,
}

/// Applies every override in `vars` to `doc`. Problems are returned as (variable, message).
pub(crate) fn apply(
    doc: &mut Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> (Vec<Applied>, Vec<(String, String)>) {
    let mut applied = Vec::new();
    let mut problems = Vec::new();
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && !NOT_OVERRIDES.contains(&k.as_str()))
        .collect();
    // Deterministic order: parents before children, then by name.
    vars.sort();
    for (var, raw) in vars {
        let segments: Vec<String> = var[PREFIX.len()..]
            .to_ascii_lowercase()
            .split("__")
            .map(str::to_owned)
            .collect();
        if segments.iter().any(String::is_empty) {
            problems.push((
                var,
                "malformed override name (empty key between `__`)".into(),
            ));
            continue;
        }
        let value = parse_value(&raw);
        match set(doc, &segments, value) {
            Ok(path) => applied.push(Applied { var, path }),
            Err(msg) => problems.push((var, msg)),
        }
    }
    (applied, problems)
}

fn parse_value(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return Value::String(raw.to_owned());
    }
    // `null` (or `~`) unsets an optional key, as in the file.
    serde_saphyr::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

fn set(doc: &mut Value, segments: &[String], value: Value) -> Result<String, String> {
    let mut path = String::new();
    let mut node = doc;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if let Ok(index) = seg.parse::<usize>() {
            path.push_str(&format!("[{index}]"));
            let Value::Array(items) = node else {
                return Err(format!("{path}: not a list"));
            };
            let len = items.len();
            let Some(item) = items.get_mut(index) else {
                return Err(format!("{path}: the list has {len} entries"));
            };
            node = item;
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(seg);
            if node.is_null() {
                *node = Value::Object(serde_json::Map::new());
            }
            let Value::Object(map) = node else {
                return Err(format!("{path}: the parent is a value, not a section"));
            };
            node = map.entry(seg.clone()).or_insert(Value::Null);
        }
        if last {
            *node = value;
            return Ok(path);
        }
    }
    Err("empty override name".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(doc: Value, vars: &[(&str, &str)]) -> (Value, Vec<Applied>, Vec<(String, String)>) {
        let mut doc = doc;
        let (a, p) = apply(
            &mut doc,
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        (doc, a, p)
    }

    #[test]
    fn sets_nested_scalars_with_types() {
        let (doc, applied, problems) = run(
            json!({"mail": {"transport": "outbox"}, "apps": [{"name": "a", "upstream": "x"}]}),
            &[
                ("OTPGATE_MAIL__TRANSPORT", "smtp://relay:587"),
                ("OTPGATE_APPS__0__UPSTREAM", "http://127.0.0.1:3000"),
                ("OTPGATE_LOG__ACCESS", "false"),
                ("OTPGATE_TRUSTED_PROXIES", "[10.0.0.0/8, 192.0.2.1]"),
                ("OTPGATE_MAIL__FROM", "\"5\""),
                ("OTPGATE_LISTEN__HTTPS", "null"),
                ("OTHER_VAR", "ignored"),
                ("OTPGATE_CONFIG", "ignored"),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(applied.len(), 6);
        assert_eq!(doc["listen"]["https"], Value::Null);
        assert_eq!(doc["mail"]["transport"], "smtp://relay:587");
        assert_eq!(doc["apps"][0]["upstream"], "http://127.0.0.1:3000");
        assert_eq!(doc["log"]["access"], false);
        assert_eq!(doc["trusted_proxies"], json!(["10.0.0.0/8", "192.0.2.1"]));
        assert_eq!(doc["mail"]["from"], "5");
    }

    #[test]
    fn reports_bad_targets() {
        let (_, _, problems) = run(
            json!({"mail": "x", "apps": []}),
            &[
                ("OTPGATE_MAIL__TRANSPORT", "a"),
                ("OTPGATE_APPS__3__NAME", "a"),
                ("OTPGATE_A____B", "x"),
            ],
        );
        let vars: Vec<&str> = problems.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(
            vars,
            [
                "OTPGATE_APPS__3__NAME",
                "OTPGATE_A____B",
                "OTPGATE_MAIL__TRANSPORT"
            ]
        );
    }
}
