//! Value matching for profiles (R4 `elementdefinition.html` fixed[x] and
//! pattern[x], `profiling.html` §5.1.0.9 slicing discriminators): exact
//! (fixed) and partial (pattern) matching of JSON values, and navigation of
//! the restricted FHIRPath that discriminator paths use (`a.b`, `$this`,
//! `extension('url')`, `ofType(T)`, `resolve()` not followed) over instances
//! and over a profile's element tree. Pure functions over borrowed JSON.

use super::model::StructDef;
use serde_json::Value;

fn num_eq(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    a.to_string() == b.to_string() || matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
}

/// `fixed[x]`: the instance is exactly the fixed value (object keys in any order).
pub fn matches_fixed(fixed: &Value, v: &Value) -> bool {
    match (fixed, v) {
        (Value::Number(a), Value::Number(b)) => num_eq(a, b),
        (Value::Object(a), Value::Object(b)) => a.len() == b.len() && a.iter().all(|(k, x)| b.get(k).is_some_and(|y| matches_fixed(x, y))),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| matches_fixed(x, y)),
        _ => fixed == v,
    }
}

/// `pattern[x]`: every property of the pattern is in the instance with a
/// matching value; for an array each pattern item matches some instance item.
pub fn matches_pattern(pattern: &Value, v: &Value) -> bool {
    match (pattern, v) {
        (Value::Number(a), Value::Number(b)) => num_eq(a, b),
        (Value::Object(p), Value::Object(o)) => p.iter().all(|(k, pv)| o.get(k).is_some_and(|ov| matches_pattern(pv, ov))),
        (Value::Array(p), Value::Array(o)) => p.iter().all(|pi| o.iter().any(|oi| matches_pattern(pi, oi))),
        // a single pattern value against a repeating instance (and vice versa)
        (p, Value::Array(o)) => o.iter().any(|oi| matches_pattern(p, oi)),
        _ => pattern == v,
    }
}

/// One step of a discriminator path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    This,
    Name(String),
    Extension(String),
    OfType(String),
    Resolve,
}

/// Parse a discriminator path (`code.coding.system`, `extension('u').value`, `$this`).
pub fn parse_path(path: &str) -> Vec<Step> {
    let mut out = vec![];
    let mut rest = path.trim();
    while !rest.is_empty() {
        let (seg, tail) = split_segment(rest);
        rest = tail;
        let seg = seg.trim();
        if seg == "$this" || seg.is_empty() {
            out.push(Step::This);
        } else if let Some(a) = seg.strip_prefix("extension(").and_then(|s| s.strip_suffix(')')) {
            out.push(Step::Extension(a.trim_matches(|c| c == '\'' || c == '"').to_owned()));
        } else if let Some(a) = seg.strip_prefix("ofType(").and_then(|s| s.strip_suffix(')')) {
            out.push(Step::OfType(a.to_owned()));
        } else if seg == "resolve()" {
            out.push(Step::Resolve);
        } else {
            out.push(Step::Name(seg.trim_end_matches("[x]").to_owned()));
        }
    }
    out
}

/// Split at the first '.' outside parentheses/quotes.
fn split_segment(s: &str) -> (&str, &str) {
    let (mut depth, mut quote) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quote = !quote,
            '(' if !quote => depth += 1,
            ')' if !quote => depth -= 1,
            '.' if !quote && depth == 0 => return (&s[..i], &s[i + 1..]),
            _ => {}
        }
    }
    (s, "")
}

/// JSON children named `name`, choice-aware (`value` finds `valueQuantity`); arrays flattened.
/// The second item is the type suffix for choice properties.
pub fn children<'v>(v: &'v Value, name: &str, out: &mut Vec<(&'v Value, Option<&'v str>)>) {
    let Some(o) = v.as_object() else { return };
    let mut push = |x: &'v Value, t: Option<&'v str>| match x {
        Value::Array(items) => out.extend(items.iter().map(|i| (i, t))),
        x => out.push((x, t)),
    };
    if let Some(x) = o.get(name) {
        push(x, None);
        return;
    }
    for (k, x) in o {
        if let Some(suffix) = k.strip_prefix(name) {
            if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                push(x, Some(suffix));
            }
        }
    }
}

/// Evaluate a parsed path on an instance node. None: the path cannot be followed here (resolve()).
pub fn eval<'v>(v: &'v Value, steps: &[Step]) -> Option<Vec<(&'v Value, Option<&'v str>)>> {
    let mut cur: Vec<(&'v Value, Option<&'v str>)> = vec![(v, None)];
    for s in steps {
        if *s == Step::Resolve {
            return None;
        }
        let mut next = vec![];
        for (n, t) in &cur {
            match s {
                Step::This => next.push((*n, *t)),
                Step::Name(name) => children(n, name, &mut next),
                Step::Extension(url) => {
                    let mut ext = vec![];
                    children(n, "extension", &mut ext);
                    next.extend(ext.into_iter().filter(|(e, _)| e.get("url").and_then(Value::as_str) == Some(url)));
                }
                Step::OfType(ty) => {
                    let actual = t.map(str::to_owned).or_else(|| n.get("resourceType").and_then(Value::as_str).map(str::to_owned));
                    if actual.is_some_and(|a| a.eq_ignore_ascii_case(ty)) {
                        next.push((*n, *t));
                    }
                }
                Step::Resolve => {}
            }
        }
        cur = next;
    }
    Some(cur)
}

/// The element of `sd` reached from element `from` by `steps` (following
/// element ids: `X.code`, `X.value[x]`, `X.extension:name`); None when the
/// profile does not define it. Returns the element and the steps left over
/// (when a fixed/pattern value on an ancestor must be looked into).
pub fn profile_element<'s>(sd: &StructDef, from: usize, steps: &'s [Step]) -> (usize, &'s [Step]) {
    let mut cur = from;
    for (i, s) in steps.iter().enumerate() {
        let id = &sd.elements[cur].id;
        let found = match s {
            Step::This => Some(cur),
            Step::Name(n) => sd.by_id.get(&format!("{id}.{n}")).or_else(|| sd.by_id.get(&format!("{id}.{n}[x]"))).copied(),
            Step::Extension(url) => sd.slices.get(sd.by_id.get(&format!("{id}.extension")).copied().unwrap_or(usize::MAX)).and_then(|sl| {
                sl.iter().copied().find(|&s| {
                    sd.elements[s].types.iter().any(|t| t.profiles.iter().any(|p| p == url))
                        || sd.by_id.get(&format!("{}.url", sd.elements[s].id)).and_then(|&u| sd.elements[u].fixed.as_ref()).and_then(Value::as_str) == Some(url)
                })
            }),
            Step::OfType(_) => Some(cur),
            Step::Resolve => None,
        };
        match found {
            Some(e) => cur = e,
            None => return (cur, &steps[i..]),
        }
    }
    (cur, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fixed_is_exact() {
        assert!(matches_fixed(&json!({"system": "s", "code": "c"}), &json!({"code": "c", "system": "s"})));
        assert!(!matches_fixed(&json!({"system": "s"}), &json!({"system": "s", "code": "c"})));
        assert!(matches_fixed(&json!(1.0), &json!(1.0)));
        assert!(!matches_fixed(&json!("a"), &json!("b")));
    }

    #[test]
    fn pattern_is_partial_with_arrays() {
        let p = json!({"coding": [{"system": "http://loinc.org", "code": "8867-4"}]});
        let ok = json!({"coding": [{"system": "x", "code": "y"}, {"system": "http://loinc.org", "code": "8867-4", "display": "HR"}], "text": "t"});
        let bad = json!({"coding": [{"system": "http://loinc.org", "code": "1234-5"}]});
        assert!(matches_pattern(&p, &ok));
        assert!(!matches_pattern(&p, &bad));
        assert!(!matches_pattern(&p, &json!({"text": "t"})));
    }

    #[test]
    fn discriminator_paths() {
        assert_eq!(parse_path("extension('http://x/a').value"), vec![Step::Extension("http://x/a".into()), Step::Name("value".into())]);
        assert_eq!(parse_path("$this"), vec![Step::This]);
        let obs = json!({"code": {"coding": [{"system": "a"}, {"system": "b"}]}, "valueQuantity": {"value": 1}});
        let r = eval(&obs, &parse_path("code.coding.system")).unwrap();
        assert_eq!(r.len(), 2);
        let r = eval(&obs, &parse_path("value")).unwrap();
        assert_eq!(r[0].1, Some("Quantity"));
        assert!(eval(&obs, &parse_path("subject.resolve()")).is_none());
    }
}
