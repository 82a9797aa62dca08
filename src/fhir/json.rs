//! JSON helpers over `serde_json::Value` (R4 `json.html`). The crate enables
//! serde_json's `preserve_order` (key order kept) and `arbitrary_precision`
//! (decimals keep their exact text, so `67.50` stays `67.50`), which is what
//! lets the gateway parse, set server fields and write back the bytes a member
//! sent without losing anything.

use serde_json::{Map, Value};

/// Parse bytes as one JSON value. Errors carry line/column.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
}

/// The `resourceType` of a JSON object.
pub fn resource_type(v: &Value) -> Option<&str> {
    v.get("resourceType").and_then(Value::as_str)
}

/// Set `id` and the server-owned parts of `meta` (`versionId`, `lastUpdated`),
/// keeping every other key in place and order. A new `id` goes right after
/// `resourceType`, a new `meta` right after `id`.
pub fn set_server_fields(res: &mut Map<String, Value>, id: &str, version: i64, last_updated: &str) {
    if let Some(v) = res.get_mut("id") {
        *v = Value::String(id.to_owned());
    } else {
        let pos = index_of(res, "resourceType").map(|i| i + 1).unwrap_or(0);
        res.shift_insert(pos, "id".into(), Value::String(id.to_owned()));
    }
    match res.get_mut("meta") {
        Some(Value::Object(meta)) => {
            set_or_insert(meta, 0, "versionId", Value::String(version.to_string()));
            set_or_insert(meta, 1, "lastUpdated", Value::String(last_updated.to_owned()));
        }
        _ => {
            let mut meta = Map::new();
            meta.insert("versionId".into(), Value::String(version.to_string()));
            meta.insert("lastUpdated".into(), Value::String(last_updated.to_owned()));
            res.shift_remove("meta");
            let pos = index_of(res, "id").map(|i| i + 1).unwrap_or(0);
            res.shift_insert(pos, "meta".into(), Value::Object(meta));
        }
    }
}

fn index_of(m: &Map<String, Value>, k: &str) -> Option<usize> {
    m.keys().position(|x| x == k)
}

fn set_or_insert(m: &mut Map<String, Value>, pos: usize, k: &str, v: Value) {
    if let Some(slot) = m.get_mut(k) {
        *slot = v;
    } else {
        let pos = pos.min(m.len());
        m.shift_insert(pos, k.to_owned(), v);
    }
}

/// Visit every string value in a JSON tree mutably, with the key it sits under
/// (array items report their array's key).
pub fn visit_strings_mut(v: &mut Value, key: &str, f: &mut dyn FnMut(&str, &mut String)) {
    match v {
        Value::String(s) => f(key, s),
        Value::Array(a) => a.iter_mut().for_each(|x| visit_strings_mut(x, key, f)),
        Value::Object(m) => m.iter_mut().for_each(|(k, x)| visit_strings_mut(x, k, f)),
        _ => {}
    }
}

/// Keep only the named top-level elements (plus `resourceType`, `id`, `meta`),
/// and mark the resource SUBSETTED (R4 search.html#elements).
pub fn subset_elements(v: &Value, keep: &[&str]) -> Value {
    let Some(m) = v.as_object() else { return v.clone() };
    let mut out = Map::new();
    for (k, x) in m {
        let base = k.strip_prefix('_').unwrap_or(k);
        if k == "resourceType" || k == "id" || k == "meta" || keep.contains(&base) {
            out.insert(k.clone(), x.clone());
        }
    }
    mark_subsetted(&mut out);
    Value::Object(out)
}

/// Add the `SUBSETTED` security label (http://terminology.hl7.org/CodeSystem/v3-ObservationValue).
pub fn mark_subsetted(m: &mut Map<String, Value>) {
    let tag = serde_json::json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
    let meta = m.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        let tags = meta.entry("tag").or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(t) = tags {
            t.push(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn server_fields_keep_order_and_decimals() {
        let raw = br#"{"resourceType":"Observation","status":"final","valueQuantity":{"value":67.50},"zz":1}"#;
        let mut v = parse(raw).unwrap();
        set_server_fields(v.as_object_mut().unwrap(), "abc", 2, "2026-01-01T00:00:00.000Z");
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(
            s,
            r#"{"resourceType":"Observation","id":"abc","meta":{"versionId":"2","lastUpdated":"2026-01-01T00:00:00.000Z"},"status":"final","valueQuantity":{"value":67.50},"zz":1}"#
        );
    }
}
