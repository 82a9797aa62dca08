//! Removing empty values from translator output, and checking that none are
//! left (shared by the HL7 v2 and the CSV/JSON translators).
//!
//! # Why
//! FHIR R4 `json.html` ("JSON representation of primitive elements"): empty
//! strings, empty arrays, empty objects and `null` are not allowed as element
//! values (`null` only as an array placeholder next to a `_element` array,
//! which the translators never write). Issue 5 adds: no empty resources, no
//! empty arrays/strings and never the text `"null"` anywhere. Builders may
//! therefore write optional values freely (`None` becomes `null`); [`prune`]
//! removes them once per resource, bottom-up, so an object whose members
//! all vanished vanishes too.
//!
//! # Rules
//! Removed: `null`; strings that are empty or whitespace only; the strings
//! `"null"` and `"\"\""` (a stray HL7 explicit null that escaped a builder —
//! HL7 `""` means "delete this value", which the v2 translator maps by
//! omitting it); empty arrays and objects (after pruning their members).
//! Numbers and booleans are kept. Inside arrays the same rules apply to the
//! items, so an array of only empty items disappears. The one exception is
//! the primitive-extension arrays (`_line`, `_given` …): there `null` is
//! the required placeholder that keeps them aligned with their value array
//! (`json.html` "Repeating primitives"), so nulls inside them stay unless
//! all items are null.
//!
//! [`find_empty`] is the check used by the tests: it reports the JSON path
//! of the first offending value, if any.

use serde_json::Value;

/// True for values [`prune`] removes (before looking inside containers).
fn is_empty_leaf(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty() || s == "null" || s == "\"\"",
        _ => false,
    }
}

/// True if [`prune`] would change `v` or report it empty: a read-only walk, much cheaper than
/// pruning (which rebuilds every map it retains from).
pub fn has_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            m.iter().any(|(k, c)| {
                if k.starts_with('_') {
                    if let Value::Array(a) = c {
                        return a.is_empty()
                            || a.iter().all(Value::is_null)
                            || a.iter().any(|x| !x.is_null() && has_empty(x));
                    }
                }
                has_empty(c)
            }) || m.is_empty()
        }
        Value::Array(a) => a.is_empty() || a.iter().any(has_empty),
        other => is_empty_leaf(other),
    }
}

/// Removes empty members recursively. Returns true if `v` itself is empty
/// afterwards (the caller removes it).
pub fn prune(v: &mut Value) -> bool {
    match v {
        Value::Object(m) => {
            m.retain(|k, child| {
                if k.starts_with('_') {
                    if let Value::Array(a) = child {
                        for item in a.iter_mut() {
                            if prune(item) {
                                *item = Value::Null;
                            }
                        }
                        return !a.iter().all(Value::is_null);
                    }
                }
                !prune(child)
            });
            m.is_empty()
        }
        Value::Array(a) => {
            a.retain_mut(|child| !prune(child));
            a.is_empty()
        }
        other => is_empty_leaf(other),
    }
}

/// The path of the first empty or forbidden value in `v` (`$.entry[3].resource.name[0]`),
/// or `None` if the value is clean.
pub fn find_empty(v: &Value) -> Option<String> {
    fn walk(v: &Value, path: &mut String) -> bool {
        match v {
            Value::Object(m) => {
                if m.is_empty() {
                    return true;
                }
                for (k, c) in m {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    if let (true, Value::Array(a)) = (k.starts_with('_'), c) {
                        // placeholders allowed, but not only placeholders
                        if a.iter().all(Value::is_null) {
                            return true;
                        }
                        for (i, item) in a.iter().enumerate() {
                            if !item.is_null() && walk(item, path) {
                                path.push_str(&format!("[{i}]"));
                                return true;
                            }
                        }
                    } else if walk(c, path) {
                        return true;
                    }
                    path.truncate(len);
                }
                false
            }
            Value::Array(a) => {
                if a.is_empty() {
                    return true;
                }
                for (i, c) in a.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    if walk(c, path) {
                        return true;
                    }
                    path.truncate(len);
                }
                false
            }
            other => is_empty_leaf(other),
        }
    }
    let mut path = String::from("$");
    walk(v, &mut path).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prunes_recursively() {
        let mut v = json!({
            "a": null, "b": "", "c": "  ", "d": "null", "e": "\"\"",
            "f": [], "g": {}, "h": [null, "", {"x": null}], "i": {"j": {"k": []}},
            "keep": "x", "n": 0, "t": false, "arr": [1, "", "y"]
        });
        assert!(!prune(&mut v));
        assert_eq!(v, json!({"keep": "x", "n": 0, "t": false, "arr": [1, "y"]}));
        assert_eq!(find_empty(&v), None);
        let mut e = json!({"a": {"b": [{}]}});
        assert!(prune(&mut e));
        let mut l = json!({"line": ["a", "b"], "_line": [{"extension": [{"url": "u", "valueString": "x"}]}, null]});
        assert!(!prune(&mut l));
        assert_eq!(l["_line"].as_array().unwrap().len(), 2);
        assert_eq!(find_empty(&l), None);
        let mut l2 = json!({"line": ["a"], "_line": [null]});
        prune(&mut l2);
        assert_eq!(l2, json!({"line": ["a"]}));
    }

    #[test]
    fn has_empty_is_true_exactly_when_prune_changes_something() {
        let cases = [
            json!({"a": null}),
            json!({"a": "x", "b": [1, ""]}),
            json!({"a": {"b": [{}]}}),
            json!({"d": "null"}),
            json!({"line": ["a"], "_line": [null]}),
            json!({"line": ["a", "b"], "_line": [{"extension": [{"url": "u", "valueString": "x"}]}, null]}),
            json!({"line": ["a", "b"], "_line": [{"extension": []}, null]}),
            json!({"keep": "x", "n": 0, "t": false, "o": {"p": [1, "y"]}}),
            json!({}),
        ];
        for c in cases {
            let mut p = c.clone();
            let itself_empty = prune(&mut p);
            assert_eq!(has_empty(&c), p != c || itself_empty, "{c}");
        }
    }

    #[test]
    fn finds_path() {
        let v = json!({"entry": [{"resource": {"name": [{"family": ""}]}}]});
        assert_eq!(
            find_empty(&v).as_deref(),
            Some("$.entry[0].resource.name[0].family")
        );
        assert_eq!(find_empty(&json!({"a": "null"})).as_deref(), Some("$.a"));
        assert_eq!(find_empty(&json!({"a": []})).as_deref(), Some("$.a"));
    }
}
