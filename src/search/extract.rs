//! Index extraction: evaluates the `expression` of R4 SearchParameters over a
//! resource and turns the values into index rows (R4 `search.html`, section
//! per parameter type; `searchparameter-registry.html`).
//!
//! The expressions are FHIRPath, but the core package uses a small subset for
//! search: paths with choice elements, `A | B` unions, `as T` / `.as(T)` /
//! `.ofType(T)`, `.where(resolve() is T)`, `.where(field='x')`,
//! `.extension('url')` and `[n]`. This module compiles exactly that subset
//! once per parameter (a path branch that uses more is skipped and counted in
//! `Registry::skipped_branches`). Values are classified by their JSON shape
//! (a `coding` array → CodeableConcept, `reference` → Reference, …).

use crate::store::{IndexRow, IndexValue};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Field(String),
    Index(usize),
    WhereResolveIs(String),
    WhereEq(String, String),
    OfType(String),
    Extension(String),
}

/// One compiled union branch: the type it starts from and its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    pub start: String,
    pub steps: Vec<Step>,
}

/// Split on top-level `|`.
pub fn split_union(expr: &str) -> Vec<&str> {
    let mut out = vec![];
    let (mut depth, mut quote, mut start) = (0i32, false, 0usize);
    for (i, c) in expr.char_indices() {
        match c {
            '\'' => quote = !quote,
            '(' if !quote => depth += 1,
            ')' if !quote => depth -= 1,
            '|' if !quote && depth == 0 => {
                out.push(expr[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(expr[start..].trim());
    out
}

fn strip_parens(s: &str) -> &str {
    let s = s.trim();
    if s.starts_with('(') && s.ends_with(')') {
        // only if the parens enclose the whole thing
        let mut depth = 0;
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 && i != s.len() - 1 {
                        return s;
                    }
                }
                _ => {}
            }
        }
        return strip_parens(&s[1..s.len() - 1]);
    }
    s
}

/// Split a path on top-level dots.
fn split_dots(s: &str) -> Vec<&str> {
    let mut out = vec![];
    let (mut depth, mut quote, mut start) = (0i32, false, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quote = !quote,
            '(' if !quote => depth += 1,
            ')' if !quote => depth -= 1,
            '.' if !quote && depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn quoted(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'')).then(|| s[1..s.len() - 1].to_owned())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Compile one union branch; `None` when it uses more than the subset.
pub fn compile_branch(src: &str) -> Option<Branch> {
    let mut s = strip_parens(src);
    let mut trailing_as = None;
    if let Some((path, ty)) = s.rsplit_once(" as ") {
        if is_ident(ty.trim()) {
            trailing_as = Some(ty.trim().to_owned());
            s = strip_parens(path);
        }
    }
    if s.contains(" is ") && !s.contains("resolve() is") {
        return None;
    }
    let parts = split_dots(s);
    let mut it = parts.into_iter();
    let start = it.next()?.trim();
    if !is_ident(start) {
        return None;
    }
    let mut steps = vec![];
    for p in it {
        let p = p.trim();
        if let Some(inner) = p.strip_prefix("where(").and_then(|x| x.strip_suffix(')')) {
            if let Some(t) = inner.strip_prefix("resolve() is ") {
                steps.push(Step::WhereResolveIs(t.trim().to_owned()));
            } else if let Some((f, v)) = inner.split_once('=') {
                let f = f.trim();
                if !is_ident(f) {
                    return None;
                }
                steps.push(Step::WhereEq(f.to_owned(), quoted(v)?));
            } else {
                return None;
            }
        } else if let Some(t) = p.strip_prefix("as(").or_else(|| p.strip_prefix("ofType(")) {
            steps.push(Step::OfType(t.strip_suffix(')')?.trim().to_owned()));
        } else if let Some(u) = p.strip_prefix("extension(").and_then(|x| x.strip_suffix(')')) {
            steps.push(Step::Extension(quoted(u)?));
        } else if let Some((f, rest)) = p.split_once('[') {
            if !is_ident(f) {
                return None;
            }
            steps.push(Step::Field(f.to_owned()));
            steps.push(Step::Index(rest.strip_suffix(']')?.parse().ok()?));
        } else if is_ident(p) {
            steps.push(Step::Field(p.to_owned()));
        } else {
            return None;
        }
    }
    if let Some(t) = trailing_as {
        steps.push(Step::OfType(t));
    }
    Some(Branch { start: start.to_owned(), steps })
}

/// A value found by a path, with the choice-type suffix it was found under.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub v: &'a Value,
    pub choice: Option<&'a str>,
}

fn push_flat<'a>(out: &mut Vec<Node<'a>>, v: &'a Value, choice: Option<&'a str>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| out.push(Node { v: x, choice })),
        Value::Null => {}
        _ => out.push(Node { v, choice }),
    }
}

/// Type part of a reference string (`Patient/1`, `http://x/fhir/Patient/1`).
pub fn reference_type(r: &str) -> Option<&str> {
    let parts: Vec<&str> = r.split('/').collect();
    let n = parts.len();
    if n >= 4 && parts[n - 2] == "_history" {
        return Some(parts[n - 4]);
    }
    (n >= 2).then(|| parts[n - 2]).filter(|t| crate::fhir::looks_like_type(t))
}

/// Evaluate a branch on a resource.
pub fn eval<'a>(b: &Branch, res: &'a Value) -> Vec<Node<'a>> {
    let mut cur = vec![Node { v: res, choice: None }];
    for step in &b.steps {
        let mut next = Vec::new();
        match step {
            Step::Field(name) => {
                for n in &cur {
                    let Some(obj) = n.v.as_object() else { continue };
                    if let Some(v) = obj.get(name.as_str()) {
                        push_flat(&mut next, v, None);
                    } else {
                        for (k, v) in obj {
                            if let Some(suffix) = k.strip_prefix(name.as_str()) {
                                if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                                    push_flat(&mut next, v, Some(suffix));
                                }
                            }
                        }
                    }
                }
            }
            Step::Index(i) => {
                if let Some(n) = cur.get(*i) {
                    next.push(*n);
                }
            }
            Step::WhereResolveIs(t) => {
                next = cur
                    .into_iter()
                    .filter(|n| {
                        n.v.get("reference")
                            .and_then(Value::as_str)
                            .and_then(reference_type)
                            .is_some_and(|rt| rt == t)
                    })
                    .collect();
            }
            Step::WhereEq(f, lit) => {
                next = cur.into_iter().filter(|n| n.v.get(f.as_str()).and_then(Value::as_str) == Some(lit)).collect();
            }
            Step::OfType(t) => {
                next = cur
                    .into_iter()
                    .filter(|n| match n.choice {
                        Some(c) => c.eq_ignore_ascii_case(t),
                        None => true,
                    })
                    .collect();
            }
            Step::Extension(url) => {
                for n in &cur {
                    if let Some(Value::Array(exts)) = n.v.get("extension") {
                        for e in exts {
                            if e.get("url").and_then(Value::as_str) == Some(url) {
                                next.push(Node { v: e, choice: None });
                            }
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

/// Lower-case and strip accents (R4 search.html#string: "case- and accent-insensitive").
pub fn normalize(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'ß' => 's',
            _ => c,
        })
        .collect()
}

fn str_row(param: &str, s: &str, out: &mut Vec<IndexRow>) {
    if !s.is_empty() {
        out.push(IndexRow {
            param: param.to_owned(),
            value: IndexValue::String { norm: normalize(s), exact: s.to_owned() },
        });
    }
}

/// Extension values: take the `value[x]` of an extension node.
fn ext_value(n: Node<'_>) -> Node<'_> {
    if n.v.get("url").is_some() {
        if let Some(obj) = n.v.as_object() {
            for (k, v) in obj {
                if let Some(s) = k.strip_prefix("value") {
                    if !s.is_empty() {
                        return Node { v, choice: None };
                    }
                }
            }
        }
    }
    n
}

pub fn string_rows(param: &str, nodes: &[Node<'_>], out: &mut Vec<IndexRow>) {
    for n in nodes {
        let n = ext_value(*n);
        match n.v {
            Value::String(s) => str_row(param, s, out),
            Value::Object(m) => {
                for key in ["text", "family", "given", "prefix", "suffix", "line", "city", "district", "state", "postalCode", "country", "name", "display", "value"] {
                    match m.get(key) {
                        Some(Value::String(s)) => str_row(param, s, out),
                        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).for_each(|s| str_row(param, s, out)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

fn tok(param: &str, system: Option<&str>, code: Option<&str>, out: &mut Vec<IndexRow>) {
    if system.is_some() || code.is_some() {
        out.push(IndexRow {
            param: param.to_owned(),
            value: IndexValue::Token { system: system.map(str::to_owned), code: code.map(str::to_owned) },
        });
    }
}

pub fn token_rows(param: &str, nodes: &[Node<'_>], out: &mut Vec<IndexRow>) {
    for n in nodes {
        let n = ext_value(*n);
        match n.v {
            Value::String(s) => tok(param, None, Some(s), out),
            Value::Bool(b) => tok(param, None, Some(if *b { "true" } else { "false" }), out),
            Value::Number(x) => tok(param, None, Some(&x.to_string()), out),
            Value::Object(m) => {
                let s = |k: &str| m.get(k).and_then(Value::as_str);
                if let Some(Value::Array(codings)) = m.get("coding") {
                    for c in codings {
                        tok(param, c.get("system").and_then(Value::as_str), c.get("code").and_then(Value::as_str), out);
                    }
                } else if s("value").is_some() {
                    // Identifier (system is a URI) or ContactPoint (system is phone|email|…)
                    let sys = s("system").filter(|x| x.contains(':'));
                    tok(param, sys, s("value"), out);
                } else if s("code").is_some() || s("system").is_some() {
                    tok(param, s("system"), s("code"), out);
                }
            }
            _ => {}
        }
    }
}

/// Split a reference into (type, id); see [`crate::fhir::reference::parse`].
pub fn parse_reference(r: &str) -> (Option<String>, Option<String>) {
    crate::fhir::reference::parse(r)
}

pub fn reference_rows(param: &str, nodes: &[Node<'_>], out: &mut Vec<IndexRow>) {
    for n in nodes {
        let n = ext_value(*n);
        let r = match n.v {
            Value::Object(m) => m.get("reference").and_then(Value::as_str),
            Value::String(s) => Some(s.as_str()), // canonical / uri
            _ => None,
        };
        let Some(r) = r else { continue };
        if r.starts_with('#') || r.is_empty() {
            continue;
        }
        let (target_type, target_id) = parse_reference(r);
        out.push(IndexRow {
            param: param.to_owned(),
            value: IndexValue::Reference { target_type, target_id, url: r.to_owned() },
        });
    }
}

pub fn date_rows(param: &str, nodes: &[Node<'_>], out: &mut Vec<IndexRow>) {
    use crate::fhir::datetime::parse;
    let mut push = |lo: i64, hi: i64| out.push(IndexRow { param: param.to_owned(), value: IndexValue::Date { lo, hi } });
    for n in nodes {
        let n = ext_value(*n);
        match n.v {
            Value::String(s) => {
                if let Some(r) = parse(s) {
                    push(r.lo, r.hi)
                }
            }
            Value::Object(m) => {
                if m.contains_key("start") || m.contains_key("end") {
                    let lo = m.get("start").and_then(Value::as_str).and_then(parse).map(|r| r.lo).unwrap_or(i64::MIN);
                    let hi = m.get("end").and_then(Value::as_str).and_then(parse).map(|r| r.hi).unwrap_or(i64::MAX);
                    push(lo, hi);
                } else if let Some(Value::Array(ev)) = m.get("event") {
                    for e in ev.iter().filter_map(Value::as_str).filter_map(parse) {
                        push(e.lo, e.hi);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Half-width of the precision implied by a decimal's text (`1.50` → 0.005).
pub fn precision_half_width(text: &str) -> f64 {
    let t = text.trim_start_matches(['-', '+']);
    let (mant, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().unwrap_or(0)),
        None => (t, 0),
    };
    let decimals = mant.split_once('.').map(|(_, f)| f.len() as i32).unwrap_or(0);
    0.5 * 10f64.powi(exp - decimals)
}

fn number_of(v: &Value) -> Option<(f64, f64)> {
    match v {
        Value::Number(n) => {
            let text = n.to_string();
            Some((text.parse().ok()?, precision_half_width(&text)))
        }
        _ => None,
    }
}

pub fn number_rows(param: &str, nodes: &[Node<'_>], out: &mut Vec<IndexRow>) {
    for n in nodes {
        if let Some((v, w)) = number_of(ext_value(*n).v) {
            out.push(IndexRow { param: param.to_owned(), value: IndexValue::Number { value: v, lo: v - w, hi: v + w } });
        }
    }
}

pub fn quantity_rows(param: &str, nodes: &[Node<'_>], out: &mut Vec<IndexRow>) {
    for n in nodes {
        let n = ext_value(*n);
        let Some(m) = n.v.as_object() else { continue };
        let Some((v, w)) = m.get("value").and_then(number_of) else { continue };
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        let code = s("code").or_else(|| s("unit")).or_else(|| s("currency"));
        out.push(IndexRow {
            param: param.to_owned(),
            value: IndexValue::Quantity { system: s("system"), code, value: v, lo: v - w, hi: v + w },
        });
    }
}

pub fn uri_rows(param: &str, nodes: &[Node<'_>], out: &mut Vec<IndexRow>) {
    for n in nodes {
        if let Value::String(s) = ext_value(*n).v {
            if !s.is_empty() {
                out.push(IndexRow { param: param.to_owned(), value: IndexValue::Uri { uri: s.clone() } });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compile_subset() {
        let b = compile_branch("Observation.subject.where(resolve() is Patient)").unwrap();
        assert_eq!(b.start, "Observation");
        assert_eq!(b.steps.len(), 2);
        let b = compile_branch("(ActivityDefinition.useContext.value as CodeableConcept)").unwrap();
        assert_eq!(b.steps.last(), Some(&Step::OfType("CodeableConcept".into())));
        assert!(compile_branch("Patient.deceased.exists() and Patient.deceased != false").is_none());
        assert_eq!(split_union("A.b | (C.d as X) | E.f.where(g='|')").len(), 3);
    }

    #[test]
    fn choice_and_values() {
        let obs = json!({"resourceType":"Observation","valueQuantity":{"value":67.50,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},
            "effectivePeriod":{"start":"2024-01-01"},"subject":{"reference":"Patient/p1"},"code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]}});
        let b = compile_branch("(Observation.value as Quantity)").unwrap();
        let mut rows = vec![];
        quantity_rows("value-quantity", &eval(&b, &obs), &mut rows);
        assert!(matches!(&rows[0].value, IndexValue::Quantity { value, .. } if (*value - 67.5).abs() < 1e-9));
        let b = compile_branch("Observation.effective").unwrap();
        let mut rows = vec![];
        date_rows("date", &eval(&b, &obs), &mut rows);
        assert!(matches!(rows[0].value, IndexValue::Date { hi: i64::MAX, .. }));
        let b = compile_branch("Observation.subject.where(resolve() is Patient)").unwrap();
        let mut rows = vec![];
        reference_rows("patient", &eval(&b, &obs), &mut rows);
        assert_eq!(rows.len(), 1);
        assert_eq!(normalize("Müller-Lüdenscheidt"), "muller-ludenscheidt");
        assert_eq!(precision_half_width("100"), 0.5);
        assert!((precision_half_width("1.50") - 0.005).abs() < 1e-12);
    }
}
