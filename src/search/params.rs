//! Parsing of search requests (R4 `search.html`): parameters with modifiers,
//! prefixes, OR-lists (`,`) and AND-repetition, chaining (`subject:Patient.name`),
//! reverse chaining (`_has`), and the result parameters `_sort`, `_count`,
//! `_include`, `_revinclude`, `_total`, `_summary`, `_elements`.
//! `Prefer: handling=strict` turns unknown parameters into errors; the default
//! (lenient) ignores them and reports them back in the result bundle.

use super::{ParamKind, Registry, SearchError, SearchParam};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// Split a leading two-letter prefix from a date/number/quantity value.
pub fn split_prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

#[derive(Debug, Clone)]
pub enum Criterion {
    /// `_id`
    Id(Vec<String>),
    /// `_lastUpdated` (OR-list)
    LastUpdated(Vec<String>),
    /// a parameter of the resource type with optional modifier and OR-list of raw values
    Param { param: Arc<SearchParam>, modifier: Option<String>, values: Vec<String> },
    /// `param:missing=true|false`
    Missing { param: Arc<SearchParam>, missing: bool },
    /// `ref[:Type].inner…` — resources whose reference points at a target matching `inner`
    Chain { param: Arc<SearchParam>, targets: Vec<(String, Box<Criterion>)> },
    /// `_has:Type:refparam:inner…` — resources referenced by a `Type` matching `inner`
    Has { source_type: String, ref_param: Arc<SearchParam>, inner: Box<Criterion> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Id,
    LastUpdated,
    Param(String, ParamKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
    /// not asked: include when cheap (single complete page)
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    Count,
    Data,
    Text,
    True,
    False,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source_type: String,
    /// None = `*`
    pub param: Option<String>,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub rtype: String,
    pub criteria: Vec<Criterion>,
    pub sort: Vec<(SortKey, bool)>, // (key, descending)
    pub count: usize,
    pub page: Option<String>,
    pub total: Total,
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// parameters ignored under lenient handling
    pub ignored: Vec<String>,
    /// the parameters understood, for the self link
    pub echoed: Vec<(String, String)>,
}

pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;

fn invalid(param: &str, msg: impl Into<String>) -> SearchError {
    SearchError::InvalidValue { param: param.to_owned(), msg: msg.into() }
}

/// Split an OR-list on unescaped commas (`\,` is a literal comma).
pub fn split_or(v: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(',') | Some('$') | Some('|') | Some('\\')) => {
                cur.push('\\');
                cur.push(chars.next().unwrap_or('\\'));
            }
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Remove search escapes (`\,` `\|` `\$` `\\`).
pub fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Split on the first unescaped `|`.
pub fn split_pipe(v: &str) -> Option<(String, String)> {
    let bytes: Vec<char> = v.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == '\\' {
            i += 2;
            continue;
        }
        if bytes[i] == '|' {
            let a: String = bytes[..i].iter().collect();
            let b: String = bytes[i + 1..].iter().collect();
            return Some((unescape(&a), b));
        }
        i += 1;
    }
    None
}

impl SearchRequest {
    /// Parse `(name, value)` pairs (already percent-decoded) for a resource type.
    pub fn parse(reg: &Registry, rtype: &str, pairs: &[(String, String)], strict: bool) -> Result<Self, SearchError> {
        let mut req = SearchRequest {
            rtype: rtype.to_owned(),
            criteria: vec![],
            sort: vec![],
            count: DEFAULT_COUNT,
            page: None,
            total: Total::Default,
            summary: None,
            elements: None,
            includes: vec![],
            revincludes: vec![],
            ignored: vec![],
            echoed: vec![],
        };
        for (name, value) in pairs {
            let mut echo = true;
            match name.as_str() {
                "_count" => {
                    let n: usize = value.parse().map_err(|_| invalid("_count", "not a non-negative integer"))?;
                    req.count = n.min(MAX_COUNT);
                }
                "_page" => req.page = Some(value.clone()),
                "_format" | "_pretty" => echo = false,
                "_total" => {
                    req.total = match value.as_str() {
                        "none" => Total::None,
                        "estimate" => Total::Estimate,
                        "accurate" => Total::Accurate,
                        _ => return Err(invalid("_total", "expected none, estimate or accurate")),
                    }
                }
                "_summary" => {
                    req.summary = Some(match value.as_str() {
                        "count" => Summary::Count,
                        "data" => Summary::Data,
                        "text" => Summary::Text,
                        "true" => Summary::True,
                        "false" => Summary::False,
                        _ => return Err(invalid("_summary", "expected count, data, text, true or false")),
                    })
                }
                "_elements" => {
                    req.elements = Some(value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                }
                "_sort" => {
                    for k in value.split(',').filter(|s| !s.is_empty()) {
                        let (desc, code) = match k.strip_prefix('-') {
                            Some(c) => (true, c),
                            None => (false, k),
                        };
                        let key = match code {
                            "_id" => SortKey::Id,
                            "_lastUpdated" => SortKey::LastUpdated,
                            c => {
                                let p = reg
                                    .param(rtype, c)
                                    .filter(|p| p.is_indexed())
                                    .ok_or_else(|| invalid("_sort", format!("'{c}' is not a sortable parameter of {rtype}")))?;
                                SortKey::Param(c.to_owned(), p.kind)
                            }
                        };
                        req.sort.push((key, desc));
                    }
                }
                n if n == "_include" || n.starts_with("_include:") || n == "_revinclude" || n.starts_with("_revinclude:") => {
                    let iterate = n.ends_with(":iterate") || n.ends_with(":recurse");
                    let inc = parse_include(reg, value, n)?;
                    let inc = Include { iterate, ..inc };
                    if n.starts_with("_include") {
                        req.includes.push(inc);
                    } else {
                        req.revincludes.push(inc);
                    }
                }
                _ => match parse_criterion(reg, rtype, name, value) {
                    Ok(c) => req.criteria.push(c),
                    Err(SearchError::UnknownParameter(p, t)) if !strict => {
                        req.ignored.push(format!("{p} (unknown for {t})"));
                        echo = false;
                    }
                    Err(SearchError::Unsupported(msg)) if !strict => {
                        req.ignored.push(msg);
                        echo = false;
                    }
                    Err(e) => return Err(e),
                },
            }
            if echo && name != "_page" {
                req.echoed.push((name.clone(), value.clone()));
            }
        }
        Ok(req)
    }
}

fn parse_include(reg: &Registry, value: &str, name: &str) -> Result<Include, SearchError> {
    let parts: Vec<&str> = value.split(':').collect();
    let bad = || invalid(name, format!("'{value}' is not Type:param[:targetType]"));
    let source_type = parts.first().copied().filter(|t| reg.is_type(t)).ok_or_else(bad)?;
    let param = match parts.get(1).copied() {
        Some("*") => None,
        Some(p) => {
            let sp = reg.param(source_type, p).ok_or_else(bad)?;
            if sp.kind != ParamKind::Reference {
                return Err(invalid(name, format!("{p} is not a reference parameter of {source_type}")));
            }
            Some(p.to_owned())
        }
        None => return Err(bad()),
    };
    let target_type = match parts.get(2) {
        Some(t) if reg.is_type(t) => Some((*t).to_owned()),
        Some(_) => return Err(bad()),
        None => None,
    };
    Ok(Include { source_type: source_type.to_owned(), param, target_type, iterate: false })
}

/// Parse one `name=value` criterion for `rtype`.
pub fn parse_criterion(reg: &Registry, rtype: &str, name: &str, value: &str) -> Result<Criterion, SearchError> {
    if let Some(rest) = name.strip_prefix("_has:") {
        // _has:Type:refparam:rest
        let mut it = rest.splitn(3, ':');
        let (Some(src), Some(rp), Some(inner_name)) = (it.next(), it.next(), it.next()) else {
            return Err(invalid(name, "expected _has:Type:reference:parameter"));
        };
        if !reg.is_type(src) {
            return Err(invalid(name, format!("unknown resource type {src}")));
        }
        let ref_param = reg
            .param(src, rp)
            .filter(|p| p.kind == ParamKind::Reference)
            .ok_or_else(|| invalid(name, format!("{rp} is not a reference parameter of {src}")))?
            .clone();
        let inner = parse_criterion(reg, src, inner_name, value)?;
        return Ok(Criterion::Has { source_type: src.to_owned(), ref_param, inner: Box::new(inner) });
    }
    // chaining: first '.' splits the reference parameter from the rest
    if let Some((head, rest)) = name.split_once('.') {
        let (code, type_mod) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let param = reg
            .param(rtype, code)
            .ok_or_else(|| SearchError::UnknownParameter(code.to_owned(), rtype.to_owned()))?
            .clone();
        if param.kind != ParamKind::Reference {
            return Err(invalid(name, format!("{code} is not a reference parameter; it cannot be chained")));
        }
        let candidates: Vec<String> = match type_mod {
            Some(t) if reg.is_type(t) => vec![t.to_owned()],
            Some(t) => return Err(invalid(name, format!("unknown resource type {t}"))),
            None => param.targets.clone(),
        };
        let inner_code = rest.split(['.', ':']).next().unwrap_or(rest);
        let mut targets = vec![];
        for t in candidates {
            if reg.param(&t, inner_code).is_some() || inner_code.starts_with('_') {
                targets.push((t.clone(), Box::new(parse_criterion(reg, &t, rest, value)?)));
            }
        }
        if targets.is_empty() {
            return Err(SearchError::UnknownParameter(rest.to_owned(), format!("targets of {rtype}.{code}")));
        }
        return Ok(Criterion::Chain { param, targets });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m.to_owned())),
        None => (name, None),
    };
    match code {
        "_id" => return Ok(Criterion::Id(split_or(value).iter().map(|v| unescape(v)).collect())),
        "_lastUpdated" => return Ok(Criterion::LastUpdated(split_or(value))),
        _ => {}
    }
    let param = reg.param(rtype, code).ok_or_else(|| SearchError::UnknownParameter(code.to_owned(), rtype.to_owned()))?.clone();
    if let Some(m) = modifier.as_deref() {
        if m == "missing" {
            let missing = match value {
                "true" => true,
                "false" => false,
                _ => return Err(invalid(name, "missing takes true or false")),
            };
            if !param.is_indexed() {
                return Err(SearchError::Unsupported(format!("{code}: parameter not indexed")));
            }
            return Ok(Criterion::Missing { param, missing });
        }
        let ok = match param.kind {
            ParamKind::String => matches!(m, "exact" | "contains"),
            ParamKind::Token => m == "not",
            ParamKind::Uri => m == "below",
            ParamKind::Reference => reg.is_type(m),
            _ => false,
        };
        if !ok {
            return Err(SearchError::Unsupported(format!("{name}: modifier :{m} is not supported for {} parameters", param.kind.as_str())));
        }
    }
    if !param.is_indexed() {
        return Err(SearchError::Unsupported(format!("{code}: {} parameters are not supported", param.kind.as_str())));
    }
    let values = split_or(value);
    if values.iter().any(|v| v.is_empty()) {
        return Err(invalid(name, "empty value"));
    }
    Ok(Criterion::Param { param, modifier, values })
}
