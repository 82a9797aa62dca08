//! Runs the official FHIRPath R4 test suite (`shared/conformance/fhirpath/tests-fhir-r4.xml`)
//! against `carebridge::fhirpath`. Locates the shared folder via `CAREBRIDGE_SHARED`
//! (default: `$CARGO_MANIFEST_DIR/../shared`) and the FHIR package cache via
//! `CAREBRIDGE_PACKAGE_CACHE` or `$HOME/.fhir/packages` (see
//! `ModelInfo::default_package_dir`). Prints a skip message and passes when data is missing.
//! Run with `cargo test --test it fhirpath_suite -- --nocapture` to see the report.

use carebridge::fhirpath as fp;

use fp::{compile, EvalContext, ModelInfo, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- tiny XML reader

#[derive(Debug, Default, Clone)]
struct XmlElem {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<XmlElem>,
    text: String,
}

impl XmlElem {
    fn attr(&self, n: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str())
    }
    fn child(&self, n: &str) -> Option<&XmlElem> {
        self.children.iter().find(|c| c.name == n)
    }
}

fn unescape_xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        o.push_str(&rest[..i]);
        let tail = &rest[i..];
        let Some(j) = tail.find(';') else {
            o.push_str(tail);
            return o;
        };
        let ent = &tail[1..j];
        match ent {
            "lt" => o.push('<'),
            "gt" => o.push('>'),
            "amp" => o.push('&'),
            "quot" => o.push('"'),
            "apos" => o.push('\''),
            _ if ent.starts_with("#x") => o.extend(u32::from_str_radix(&ent[2..], 16).ok().and_then(char::from_u32)),
            _ if ent.starts_with('#') => o.extend(ent[1..].parse::<u32>().ok().and_then(char::from_u32)),
            _ => o.push_str(&tail[..=j]),
        }
        rest = &tail[j + 1..];
    }
    o.push_str(rest);
    o
}

fn parse_xml(src: &str) -> Result<XmlElem, String> {
    let mut stack: Vec<XmlElem> = vec![XmlElem { name: "#document".into(), ..Default::default() }];
    let mut i = 0;
    let b = src.as_bytes();
    while i < b.len() {
        if b[i] == b'<' {
            if src[i..].starts_with("<!--") {
                let end = src[i..].find("-->").ok_or("unterminated comment")?;
                i += end + 3;
            } else if src[i..].starts_with("<?") {
                let end = src[i..].find("?>").ok_or("unterminated PI")?;
                i += end + 2;
            } else if src[i..].starts_with("<![CDATA[") {
                let end = src[i..].find("]]>").ok_or("unterminated CDATA")?;
                stack.last_mut().unwrap().text.push_str(&src[i + 9..i + end]);
                i += end + 3;
            } else if src[i..].starts_with("<!") {
                let end = src[i..].find('>').ok_or("unterminated decl")?;
                i += end + 1;
            } else if src[i..].starts_with("</") {
                let end = src[i..].find('>').ok_or("unterminated end tag")?;
                let name = src[i + 2..i + end].trim();
                let el = stack.pop().ok_or("unbalanced")?;
                if el.name != name {
                    return Err(format!("mismatched </{}> for <{}>", name, el.name));
                }
                stack.last_mut().ok_or("unbalanced")?.children.push(el);
                i += end + 1;
            } else {
                // start tag: find '>' outside quotes
                let mut j = i + 1;
                let mut q: Option<u8> = None;
                while j < b.len() {
                    match (q, b[j]) {
                        (None, b'"') | (None, b'\'') => q = Some(b[j]),
                        (Some(c), x) if c == x => q = None,
                        (None, b'>') => break,
                        _ => {}
                    }
                    j += 1;
                }
                if j >= b.len() {
                    return Err("unterminated start tag".into());
                }
                let mut inner = &src[i + 1..j];
                let self_close = inner.ends_with('/');
                if self_close {
                    inner = &inner[..inner.len() - 1];
                }
                let name_end = inner.find(|c: char| c.is_whitespace()).unwrap_or(inner.len());
                let mut el = XmlElem { name: inner[..name_end].to_string(), ..Default::default() };
                let mut rest = inner[name_end..].trim_start();
                while !rest.is_empty() {
                    let eq = rest.find('=').ok_or("bad attribute")?;
                    let key = rest[..eq].trim().to_string();
                    let after = rest[eq + 1..].trim_start();
                    let qc = after.chars().next().ok_or("bad attribute value")?;
                    let close = after[1..].find(qc).ok_or("unterminated attribute")?;
                    el.attrs.push((key, unescape_xml(&after[1..1 + close])));
                    rest = after[close + 2..].trim_start();
                }
                if self_close {
                    stack.last_mut().unwrap().children.push(el);
                } else {
                    stack.push(el);
                }
                i = j + 1;
            }
        } else {
            let end = src[i..].find('<').map(|e| i + e).unwrap_or(b.len());
            stack.last_mut().unwrap().text.push_str(&unescape_xml(&src[i..end]));
            i = end;
        }
    }
    if stack.len() != 1 {
        return Err("unclosed elements".into());
    }
    Ok(stack.pop().unwrap())
}

// ---------------------------------------------------------------- suite runner

fn shared_dir() -> PathBuf {
    match std::env::var_os("CAREBRIDGE_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")),
    }
}

struct Outcome {
    passed: usize,
    failed: Vec<(String, String)>,
    skipped: Vec<(String, String)>,
}

/// Renders a result value as (type, text) in the suite's notation.
fn render(v: &Value) -> (String, String) {
    match v {
        Value::Boolean(b) => ("boolean".into(), b.to_string()),
        Value::String(s) => ("string".into(), s.to_string()),
        Value::Integer(i) => ("integer".into(), i.to_string()),
        Value::Decimal(d) => ("decimal".into(), d.to_string()),
        Value::Date(d) => ("date".into(), format!("@{}", d.to_date_string())),
        Value::DateTime(d) => ("dateTime".into(), format!("@{}", d.to_datetime_string())),
        Value::Time(t) => ("time".into(), format!("@T{}", t.to_time_string())),
        Value::Quantity(q) => ("Quantity".into(), q.to_fhirpath_string()),
        Value::Node(n) => {
            let t = n.type_name().to_string();
            let text = match n.json() {
                Some(serde_json::Value::String(s)) => match t.as_str() {
                    "date" | "dateTime" | "instant" => format!("@{}", s),
                    "time" => format!("@T{}", s),
                    _ => s.clone(),
                },
                Some(serde_json::Value::Number(x)) => x.to_string(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            (t, text)
        }
        Value::TypeInfo(t) => ("TypeInfo".into(), format!("{}.{}", t.namespace, t.name)),
    }
}

fn run_suite(model: &ModelInfo, strict: bool) -> Option<Outcome> {
    let dir = shared_dir().join("conformance").join("fhirpath");
    let xml_path = dir.join("tests-fhir-r4.xml");
    let Ok(xml) = std::fs::read_to_string(&xml_path) else {
        println!("SKIP: FHIRPath suite not found at {} (set CAREBRIDGE_SHARED)", xml_path.display());
        return None;
    };
    let doc = parse_xml(&xml).expect("suite XML parses");
    let root = doc.child("tests").expect("<tests> root");
    let mut inputs: HashMap<String, Option<serde_json::Value>> = HashMap::new();
    let empty_input = serde_json::json!({});
    let mut out = Outcome { passed: 0, failed: Vec::new(), skipped: Vec::new() };
    let mut tests = Vec::new();
    for g in &root.children {
        if g.name == "group" {
            for t in &g.children {
                if t.name == "test" {
                    tests.push((g.attr("name").unwrap_or("").to_string(), t));
                }
            }
        }
    }
    for (_group, t) in tests {
        let name = t.attr("name").unwrap_or("(unnamed)").to_string();
        let Some(expr_el) = t.child("expression") else { continue };
        let expr = expr_el.text.clone();
        let invalid = expr_el.attr("invalid").or(t.attr("invalid"));
        let predicate = t.attr("predicate") == Some("true");
        let ordered = t.attr("ordered") != Some("false");
        // input
        let input: &serde_json::Value = match t.attr("inputfile") {
            None => &empty_input,
            Some(f) => {
                let json_name = f.strip_suffix(".xml").map(|s| format!("{}.json", s)).unwrap_or_else(|| f.to_string());
                let entry = inputs.entry(json_name.clone()).or_insert_with(|| {
                    let p: &Path = &dir.join(&json_name);
                    std::fs::read_to_string(p).ok().and_then(|s| serde_json::from_str(&s).ok())
                });
                match entry {
                    Some(v) => v,
                    None => {
                        out.skipped.push((name, format!("input {} only available as XML", f)));
                        continue;
                    }
                }
            }
        };
        let expected: Vec<(Option<String>, String)> = t
            .children
            .iter()
            .filter(|c| c.name == "output")
            .map(|c| (c.attr("type").map(|s| s.to_string()), c.text.trim().to_string()))
            .collect();
        let mut ctx = EvalContext::new(model, input);
        ctx.strict = strict;
        let result = compile(&expr).and_then(|e| e.evaluate(input, &ctx));
        let one_line = expr.split_whitespace().collect::<Vec<_>>().join(" ");
        match (result, invalid) {
            (Err(_), Some(_)) => out.passed += 1,
            (Err(e), None) => out.failed.push((name, format!("`{}`: unexpected error: {}", one_line, e))),
            (Ok(r), Some(kind)) => out.failed.push((
                name,
                format!("`{}`: expected {} error, got {:?}", one_line, kind, r.iter().map(|v| render(v).1).collect::<Vec<_>>()),
            )),
            (Ok(r), None) => {
                let actual: Vec<(String, String)> = if predicate {
                    vec![("boolean".into(), (!r.is_empty()).to_string())]
                } else {
                    r.iter().map(render).collect()
                };
                let item_ok = |a: &(String, String), e: &(Option<String>, String)| {
                    a.1 == e.1 && e.0.as_ref().map(|t| *t == a.0).unwrap_or(true)
                };
                let ok = actual.len() == expected.len()
                    && if ordered {
                        actual.iter().zip(expected.iter()).all(|(a, e)| item_ok(a, e))
                    } else {
                        let mut used = vec![false; actual.len()];
                        expected.iter().all(|e| {
                            if let Some(k) = (0..actual.len()).find(|&k| !used[k] && item_ok(&actual[k], e)) {
                                used[k] = true;
                                true
                            } else {
                                false
                            }
                        })
                    };
                if ok {
                    out.passed += 1;
                } else {
                    let fmt_e: Vec<String> = expected.iter().map(|(t, v)| format!("{}:{}", t.clone().unwrap_or_default(), v)).collect();
                    let fmt_a: Vec<String> = actual.iter().map(|(t, v)| format!("{}:{}", t, v)).collect();
                    out.failed.push((name, format!("`{}`: expected {:?}, got {:?}", one_line, fmt_e, fmt_a)));
                }
            }
        }
    }
    Some(out)
}

fn report(label: &str, o: &Outcome) {
    println!("== {} ==", label);
    for (n, why) in &o.failed {
        println!("FAIL {}: {}", n, why);
    }
    for (n, why) in &o.skipped {
        println!("SKIP {}: {}", n, why);
    }
    println!(
        "{}: passed {} / failed {} / skipped {} (pass rate {:.1}% of {} run)",
        label,
        o.passed,
        o.failed.len(),
        o.skipped.len(),
        100.0 * o.passed as f64 / (o.passed + o.failed.len()).max(1) as f64,
        o.passed + o.failed.len()
    );
}

#[test]
fn fhirpath_r4_suite_with_model() {
    let pkg = ModelInfo::default_package_dir();
    let model = if pkg.join(".index.json").exists() {
        let t = std::time::Instant::now();
        let m = ModelInfo::load_from_package(&pkg).expect("model loads");
        println!("model loaded from {} in {:?} ({} types)", pkg.display(), t.elapsed(), m.type_count());
        m
    } else {
        println!("SKIP: FHIR package hl7.fhir.r4.core#4.0.1 not found at {}", pkg.display());
        return;
    };
    let Some(o) = run_suite(&model, true) else { return };
    report("FHIRPath R4 suite (model, strict)", &o);
    let run = o.passed + o.failed.len();
    assert!(o.passed * 100 >= run * 95, "pass rate below 95%: {} of {}", o.passed, run);
}

#[test]
fn fhirpath_r4_suite_without_model() {
    let model = ModelInfo::empty();
    let Some(o) = run_suite(&model, false) else { return };
    report("FHIRPath R4 suite (no model, lenient)", &o);
    let run = o.passed + o.failed.len();
    assert!(o.passed * 100 >= run * 80, "pass rate without model below 80%: {} of {}", o.passed, run);
}
