//! FHIRPath function library (N1 §5 plus the FHIR-specific functions of R4 fhirpath.html).

use super::compare::{compare, equals};
use super::datetime::{
    datetime_boundary, datetime_precision_digits, parse_date, parse_datetime, parse_time, time_boundary, time_of,
    time_precision_digits, DtPrecision,
};
use super::eval::{contains_value, err, single, singleton_bool, union, Coll, Evaluator, Frame, R};
use super::parser::{Expr, TypeSpec, CALENDAR_UNITS};
use super::quantity::{is_known_unit, Quantity};
use super::value::{Node, NodeType, Value};
use super::FhirPathError;
use rust_decimal::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value as JsonValue;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Empty,
    Exists,
    All,
    AllTrue,
    AnyTrue,
    AllFalse,
    AnyFalse,
    SubsetOf,
    SupersetOf,
    Count,
    Distinct,
    IsDistinct,
    Where,
    Select,
    Repeat,
    OfType,
    Single,
    First,
    Last,
    Tail,
    Skip,
    Take,
    Intersect,
    Exclude,
    Union,
    Combine,
    Iif,
    ToBoolean,
    ConvertsToBoolean,
    ToInteger,
    ConvertsToInteger,
    ToDecimal,
    ConvertsToDecimal,
    ToStringFn,
    ConvertsToString,
    ToDate,
    ConvertsToDate,
    ToDateTime,
    ConvertsToDateTime,
    ToTime,
    ConvertsToTime,
    ToQuantity,
    ConvertsToQuantity,
    IndexOf,
    Substring,
    StartsWith,
    EndsWith,
    Contains,
    Upper,
    Lower,
    Replace,
    Matches,
    MatchesFull,
    ReplaceMatches,
    Length,
    ToChars,
    Split,
    Join,
    Trim,
    Encode,
    Decode,
    Escape,
    Unescape,
    Abs,
    Ceiling,
    Exp,
    Floor,
    Ln,
    Log,
    Power,
    Round,
    Sqrt,
    Truncate,
    Children,
    Descendants,
    Trace,
    Now,
    Today,
    TimeOfDay,
    Aggregate,
    Is,
    As,
    Type,
    Not,
    Extension,
    HasExtension,
    HasValue,
    GetValue,
    Resolve,
    ConformsTo,
    MemberOf,
    HtmlChecks,
    LowBoundary,
    Duration,
    HighBoundary,
    Precision,
    Comparable,
    Sort,
    Sum,
    Min,
    Max,
    Avg,
}

const TABLE: &[(&str, Func, usize, usize)] = &[
    ("empty", Func::Empty, 0, 0),
    ("exists", Func::Exists, 0, 1),
    ("all", Func::All, 1, 1),
    ("allTrue", Func::AllTrue, 0, 0),
    ("anyTrue", Func::AnyTrue, 0, 0),
    ("allFalse", Func::AllFalse, 0, 0),
    ("anyFalse", Func::AnyFalse, 0, 0),
    ("subsetOf", Func::SubsetOf, 1, 1),
    ("supersetOf", Func::SupersetOf, 1, 1),
    ("count", Func::Count, 0, 0),
    ("distinct", Func::Distinct, 0, 0),
    ("isDistinct", Func::IsDistinct, 0, 0),
    ("where", Func::Where, 1, 1),
    ("select", Func::Select, 1, 1),
    ("repeat", Func::Repeat, 1, 1),
    ("ofType", Func::OfType, 1, 1),
    ("single", Func::Single, 0, 0),
    ("first", Func::First, 0, 0),
    ("last", Func::Last, 0, 0),
    ("tail", Func::Tail, 0, 0),
    ("skip", Func::Skip, 1, 1),
    ("take", Func::Take, 1, 1),
    ("intersect", Func::Intersect, 1, 1),
    ("exclude", Func::Exclude, 1, 1),
    ("union", Func::Union, 1, 1),
    ("combine", Func::Combine, 1, 1),
    ("iif", Func::Iif, 2, 3),
    ("toBoolean", Func::ToBoolean, 0, 0),
    ("convertsToBoolean", Func::ConvertsToBoolean, 0, 0),
    ("toInteger", Func::ToInteger, 0, 0),
    ("convertsToInteger", Func::ConvertsToInteger, 0, 0),
    ("toDecimal", Func::ToDecimal, 0, 0),
    ("convertsToDecimal", Func::ConvertsToDecimal, 0, 0),
    ("toString", Func::ToStringFn, 0, 0),
    ("convertsToString", Func::ConvertsToString, 0, 0),
    ("toDate", Func::ToDate, 0, 0),
    ("convertsToDate", Func::ConvertsToDate, 0, 0),
    ("toDateTime", Func::ToDateTime, 0, 0),
    ("convertsToDateTime", Func::ConvertsToDateTime, 0, 0),
    ("toTime", Func::ToTime, 0, 0),
    ("convertsToTime", Func::ConvertsToTime, 0, 0),
    ("toQuantity", Func::ToQuantity, 0, 1),
    ("convertsToQuantity", Func::ConvertsToQuantity, 0, 1),
    ("indexOf", Func::IndexOf, 1, 1),
    ("substring", Func::Substring, 1, 2),
    ("startsWith", Func::StartsWith, 1, 1),
    ("endsWith", Func::EndsWith, 1, 1),
    ("contains", Func::Contains, 1, 1),
    ("upper", Func::Upper, 0, 0),
    ("lower", Func::Lower, 0, 0),
    ("replace", Func::Replace, 2, 2),
    ("matches", Func::Matches, 1, 1),
    ("matchesFull", Func::MatchesFull, 1, 1),
    ("replaceMatches", Func::ReplaceMatches, 2, 2),
    ("length", Func::Length, 0, 0),
    ("toChars", Func::ToChars, 0, 0),
    ("split", Func::Split, 1, 1),
    ("join", Func::Join, 0, 1),
    ("trim", Func::Trim, 0, 0),
    ("encode", Func::Encode, 1, 1),
    ("decode", Func::Decode, 1, 1),
    ("escape", Func::Escape, 1, 1),
    ("unescape", Func::Unescape, 1, 1),
    ("abs", Func::Abs, 0, 0),
    ("ceiling", Func::Ceiling, 0, 0),
    ("exp", Func::Exp, 0, 0),
    ("floor", Func::Floor, 0, 0),
    ("ln", Func::Ln, 0, 0),
    ("log", Func::Log, 1, 1),
    ("power", Func::Power, 1, 1),
    ("round", Func::Round, 0, 1),
    ("sqrt", Func::Sqrt, 0, 0),
    ("truncate", Func::Truncate, 0, 0),
    ("children", Func::Children, 0, 0),
    ("descendants", Func::Descendants, 0, 0),
    ("trace", Func::Trace, 1, 2),
    ("now", Func::Now, 0, 0),
    ("today", Func::Today, 0, 0),
    ("timeOfDay", Func::TimeOfDay, 0, 0),
    ("aggregate", Func::Aggregate, 1, 2),
    ("is", Func::Is, 1, 1),
    ("as", Func::As, 1, 1),
    ("type", Func::Type, 0, 0),
    ("not", Func::Not, 0, 0),
    ("extension", Func::Extension, 1, 1),
    ("hasExtension", Func::HasExtension, 1, 1),
    ("hasValue", Func::HasValue, 0, 0),
    ("getValue", Func::GetValue, 0, 0),
    ("resolve", Func::Resolve, 0, 0),
    ("conformsTo", Func::ConformsTo, 1, 1),
    ("memberOf", Func::MemberOf, 1, 1),
    ("htmlChecks", Func::HtmlChecks, 0, 0),
    ("htmlchecks", Func::HtmlChecks, 0, 0),
    ("lowBoundary", Func::LowBoundary, 0, 1),
    ("duration", Func::Duration, 2, 2),
    ("highBoundary", Func::HighBoundary, 0, 1),
    ("precision", Func::Precision, 0, 0),
    ("comparable", Func::Comparable, 1, 1),
    ("sort", Func::Sort, 0, 8),
    ("sum", Func::Sum, 0, 0),
    ("min", Func::Min, 0, 0),
    ("max", Func::Max, 0, 0),
    ("avg", Func::Avg, 0, 0),
];

pub(crate) fn lookup_function(name: &str) -> Option<(Func, usize, usize)> {
    TABLE.iter().find(|(n, ..)| *n == name).map(|(_, f, a, b)| (*f, *a, *b))
}

fn fname(f: Func) -> &'static str {
    TABLE.iter().find(|(_, g, ..)| *g == f).map(|(n, ..)| *n).unwrap_or("?")
}

fn boolean<'a>(b: bool) -> R<Coll<'a>> {
    Ok(vec![Value::Boolean(b)])
}

fn opt<'a>(v: Option<Value<'a>>) -> R<Coll<'a>> {
    Ok(v.into_iter().collect())
}

const MAX_ITEMS: usize = 1_000_000;

// ------------------------------------------------------------------ regex cache

fn regex_cached(pattern: &str) -> R<Arc<regex::Regex>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Ok(c) = cache.lock() {
        if let Some(r) = c.get(pattern) {
            return Ok(r.clone());
        }
    }
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 22)
        .build()
        .map_err(|e| FhirPathError::Eval(format!("invalid regular expression '{}': {}", pattern, e)))?;
    let re = Arc::new(re);
    if let Ok(mut c) = cache.lock() {
        if c.len() > 512 {
            c.clear();
        }
        c.insert(pattern.to_string(), re.clone());
    }
    Ok(re)
}

// ------------------------------------------------------------------ conversions

fn str_to_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
        "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
        _ => None,
    }
}

fn is_integer_text(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
}

fn is_decimal_text(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (i, f) = match t.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (t, None),
    };
    !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) && f.map(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit())).unwrap_or(true)
}

fn to_boolean<'a>(v: &Value<'a>) -> Option<bool> {
    match v.to_system() {
        Value::Boolean(b) => Some(b),
        Value::Integer(1) => Some(true),
        Value::Integer(0) => Some(false),
        Value::Decimal(d) => {
            if d == Decimal::ONE {
                Some(true)
            } else if d.is_zero() {
                Some(false)
            } else {
                None
            }
        }
        Value::String(s) => str_to_bool(&s),
        _ => None,
    }
}

fn to_integer<'a>(v: &Value<'a>) -> Option<i64> {
    match v.to_system() {
        Value::Integer(i) => Some(i),
        Value::Boolean(b) => Some(b as i64),
        Value::String(s) if is_integer_text(&s) => s.trim_start_matches('+').parse().ok(),
        _ => None,
    }
}

fn to_decimal<'a>(v: &Value<'a>) -> Option<Decimal> {
    match v.to_system() {
        Value::Integer(i) => Some(Decimal::from(i)),
        Value::Decimal(d) => Some(d),
        Value::Boolean(b) => Some(if b { Decimal::new(10, 1) } else { Decimal::new(0, 1) }),
        Value::String(s) if is_decimal_text(&s) => Decimal::from_str(s.trim_start_matches('+')).ok(),
        _ => None,
    }
}

fn to_string_value<'a>(v: &Value<'a>) -> Option<Cow<'a, str>> {
    match v.to_system() {
        Value::String(s) => Some(s),
        Value::Node(_) | Value::TypeInfo(_) => None,
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Parses `'<number> <unit>'` quantity text: `1 day`, `1 'wk'`, `1.5`.
fn parse_quantity_text(s: &str) -> Option<Quantity> {
    let s = s.trim();
    let end = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || ((*c == '+' || *c == '-') && *i == 0)))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, rest) = s.split_at(end);
    if !is_decimal_text(num) {
        return None;
    }
    let value = Decimal::from_str(num.trim_start_matches('+')).ok()?;
    let rest = rest.trim();
    if rest.is_empty() {
        return Some(Quantity::new(value, "1", false));
    }
    if let Some(u) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        if u.is_empty() || u.contains('\'') {
            return None;
        }
        return Some(Quantity::new(value, u, false));
    }
    if CALENDAR_UNITS.contains(&rest) {
        return Some(Quantity::new(value, rest, true));
    }
    None
}

fn to_quantity<'a>(v: &Value<'a>) -> Option<Quantity> {
    match v.to_system() {
        Value::Integer(i) => Some(Quantity::new(Decimal::from(i), "1", false)),
        Value::Decimal(d) => Some(Quantity::new(d, "1", false)),
        Value::Quantity(q) => Some(q),
        Value::Boolean(b) => Some(Quantity::new(if b { Decimal::new(10, 1) } else { Decimal::new(0, 1) }, "1", false)),
        Value::String(s) => parse_quantity_text(&s),
        _ => None,
    }
}

fn f64_to_decimal(x: f64) -> Option<Decimal> {
    if !x.is_finite() {
        return None;
    }
    let s = format!("{:.14e}", x);
    Decimal::from_scientific(&s).ok().map(|d| d.normalize())
}

fn num_value<'a>(v: &Value<'a>, f: Func) -> R<Value<'a>> {
    match v.to_system() {
        x @ (Value::Integer(_) | Value::Decimal(_)) => Ok(x),
        other => err(format!("{}() expects a number but got {}", fname(f), other.type_name())),
    }
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Integer(i) => *i as f64,
        Value::Decimal(d) => d.to_f64().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

fn dec_pow(base: Decimal, e: i64) -> Option<Decimal> {
    if e.abs() > 128 {
        return None;
    }
    let mut r = Decimal::ONE;
    for _ in 0..e.abs() {
        r = r.checked_mul(base)?;
    }
    if e < 0 {
        r = Decimal::ONE.checked_div(r)?;
    }
    Some(r)
}

// ------------------------------------------------------------------ decimal boundaries

fn round_half_up(d: Decimal, p: u32) -> Decimal {
    let mut r = d.round_dp_with_strategy(p, RoundingStrategy::MidpointAwayFromZero);
    r.rescale(p);
    r
}

fn trunc_dp(d: Decimal, p: u32) -> Decimal {
    let mut r = d.round_dp_with_strategy(p, RoundingStrategy::ToZero);
    r.rescale(p);
    r
}

/// Low/high boundary of a decimal given its written precision (scale).
fn decimal_boundary(d: Decimal, precision: Option<i64>, high: bool) -> Option<Decimal> {
    let p = precision.unwrap_or(8);
    if !(0..=28).contains(&p) {
        return None;
    }
    let p = p as u32;
    let scale = d.scale();
    if scale >= 28 {
        return Some(d);
    }
    let half = Decimal::new(5, scale + 1);
    let neg = d.is_sign_negative() && !d.is_zero();
    let a = d.abs();
    let r = if high != neg {
        // moving away from zero
        round_half_up(a.checked_add(half)?, p)
    } else {
        trunc_dp(a.checked_sub(half)?, p)
    };
    let mut r = if neg { -r } else { r };
    if neg && r.is_zero() {
        r.set_sign_negative(true);
    }
    Some(r)
}

// ------------------------------------------------------------------ encoding helpers

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_encode(data: &[u8], alpha: &[u8; 64]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        s.push(alpha[(n >> 18) as usize & 63] as char);
        s.push(alpha[(n >> 12) as usize & 63] as char);
        s.push(if chunk.len() > 1 { alpha[(n >> 6) as usize & 63] as char } else { '=' });
        s.push(if chunk.len() > 2 { alpha[n as usize & 63] as char } else { '=' });
    }
    s
}

fn b64_decode(s: &str, alpha: &[u8; 64]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        if c == b'=' {
            break;
        }
        if c.is_ascii_whitespace() {
            continue;
        }
        let v = alpha.iter().position(|&a| a == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn html_unescape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        o.push_str(&rest[..i]);
        let tail = &rest[i..];
        let Some(j) = tail.find(';').filter(|j| *j <= 10) else {
            o.push('&');
            rest = &tail[1..];
            continue;
        };
        let ent = &tail[1..j];
        let rep = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ if ent.starts_with("#x") || ent.starts_with("#X") => u32::from_str_radix(&ent[2..], 16).ok().and_then(char::from_u32),
            _ if ent.starts_with('#') => ent[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match rep {
            Some(c) => {
                o.push(c);
                rest = &tail[j + 1..];
            }
            None => {
                o.push('&');
                rest = &tail[1..];
            }
        }
    }
    o.push_str(rest);
    o
}

fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

fn json_unescape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            o.push(c);
            continue;
        }
        match it.next() {
            Some('n') => o.push('\n'),
            Some('r') => o.push('\r'),
            Some('t') => o.push('\t'),
            Some('b') => o.push('\u{8}'),
            Some('f') => o.push('\u{c}'),
            Some('u') => {
                let h: String = it.by_ref().take(4).collect();
                match u32::from_str_radix(&h, 16).ok().and_then(char::from_u32) {
                    Some(ch) => o.push(ch),
                    None => {
                        o.push_str("\\u");
                        o.push_str(&h);
                    }
                }
            }
            Some(x) => o.push(x),
            None => o.push('\\'),
        }
    }
    o
}

// ------------------------------------------------------------------ the dispatcher

/// Arguments of a function call, passed to the per-group implementations.
#[derive(Clone, Copy)]
struct Call<'x, 'a> {
    f: Func,
    target: Option<&'x Expr>,
    args: &'x [Expr],
    type_arg: Option<&'x TypeSpec>,
    focus: &'x [Value<'a>],
    fr: &'x Frame<'a>,
}

impl<'a, 'c> Evaluator<'a, 'c> {
    fn arg(&self, args: &[Expr], i: usize, focus: &[Value<'a>], fr: &Frame<'a>) -> R<Coll<'a>> {
        match args.get(i) {
            Some(e) => self.eval(e, focus, fr),
            None => Ok(Vec::new()),
        }
    }

    fn arg_single(&self, args: &[Expr], i: usize, focus: &[Value<'a>], fr: &Frame<'a>, f: Func) -> R<Option<Value<'a>>> {
        let c = self.arg(args, i, focus, fr)?;
        Ok(single(&c, fname(f))?.map(|v| v.to_system()))
    }

    fn arg_string(&self, args: &[Expr], i: usize, focus: &[Value<'a>], fr: &Frame<'a>, f: Func) -> R<Option<String>> {
        match self.arg_single(args, i, focus, fr, f)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.into_owned())),
            Some(o) => err(format!("{}() expects a string argument but got {}", fname(f), o.type_name())),
        }
    }

    fn arg_int(&self, args: &[Expr], i: usize, focus: &[Value<'a>], fr: &Frame<'a>, f: Func) -> R<Option<i64>> {
        match self.arg_single(args, i, focus, fr, f)? {
            None => Ok(None),
            Some(Value::Integer(n)) => Ok(Some(n)),
            Some(o) => err(format!("{}() expects an integer argument but got {}", fname(f), o.type_name())),
        }
    }

    fn input_string(&self, input: &[Value<'a>], f: Func) -> R<Option<Cow<'a, str>>> {
        match single(input, fname(f))? {
            None => Ok(None),
            Some(v) => match v.to_system() {
                Value::String(s) => Ok(Some(s)),
                o => err(format!("{}() expects a string input but got {}", fname(f), o.type_name())),
            },
        }
    }

    /// Evaluates a lambda argument for one item.
    fn lambda(&self, e: &Expr, item: &Value<'a>, index: usize) -> R<Coll<'a>> {
        let fr = Frame { this: Some(item.clone()), index: Some(index as i64), total: None };
        self.eval(e, std::slice::from_ref(item), &fr)
    }

    fn lambda_bool(&self, e: &Expr, item: &Value<'a>, index: usize) -> R<Option<bool>> {
        singleton_bool(&self.lambda(e, item, index)?)
    }

    pub(crate) fn call(
        &self,
        f: Func,
        target: Option<&Expr>,
        args: &[Expr],
        type_arg: Option<&TypeSpec>,
        focus: &[Value<'a>],
        fr: &Frame<'a>,
    ) -> R<Coll<'a>> {
        let input: Coll<'a> = match target {
            Some(t) => self.eval(t, focus, fr)?,
            None => focus.to_vec(),
        };
        // Dispatch through small per-group functions: keeps each stack frame small, which
        // matters for nested lambdas (`where(where(...))`) in debug builds.
        let c = Call { f, target, args, type_arg, focus, fr };
        use Func::*;
        match f {
            Empty | Exists | All | AllTrue | AnyTrue | AllFalse | AnyFalse | SubsetOf | SupersetOf | Count | Distinct | IsDistinct => self.call_existence(&c, input),
            Where | Select | Repeat | OfType => self.call_filtering(&c, input),
            Single | First | Last | Tail | Skip | Take | Intersect | Exclude | Union | Combine => self.call_subsetting(&c, input),
            Iif | ToBoolean | ConvertsToBoolean | ToInteger | ConvertsToInteger | ToDecimal | ConvertsToDecimal | ToStringFn | ConvertsToString | ToDate | ConvertsToDate | ToDateTime | ConvertsToDateTime | ToTime | ConvertsToTime | ToQuantity | ConvertsToQuantity => self.call_conversion(&c, input),
            IndexOf | Substring | StartsWith | EndsWith | Contains | Upper | Lower | Trim | Length | ToChars | Replace | Matches | MatchesFull | ReplaceMatches | Split | Join | Encode | Decode | Escape | Unescape => self.call_strings(&c, input),
            Abs | Ceiling | Floor | Truncate | Round | Exp | Ln | Sqrt | Log | Power => self.call_math(&c, input),
            Children | Descendants => self.call_tree(&c, input),
            Trace | Now | Today | TimeOfDay | Aggregate | Is | As | Type | Not => self.call_utility(&c, input),
            Extension | HasExtension | HasValue | GetValue | Resolve | ConformsTo | MemberOf | HtmlChecks | LowBoundary | HighBoundary | Duration | Precision | Comparable | Sort | Sum | Min | Max | Avg => self.call_fhir(&c, input),
        }
    }

    #[inline(never)]
    fn call_existence(&self, c: &Call<'_, 'a>, input: Coll<'a>) -> R<Coll<'a>> {
        let Call { f, target, args, type_arg, focus, fr } = *c;
        let _ = (target, args, type_arg, focus, fr);
        use Func::*;
        match f {
            Empty => boolean(input.is_empty()),
            Exists => {
                if let Some(c) = args.first() {
                    for (i, v) in input.iter().enumerate() {
                        if self.lambda_bool(c, v, i)? == Some(true) {
                            return boolean(true);
                        }
                    }
                    boolean(false)
                } else {
                    boolean(!input.is_empty())
                }
            }
            All => {
                for (i, v) in input.iter().enumerate() {
                    if self.lambda_bool(&args[0], v, i)? != Some(true) {
                        return boolean(false);
                    }
                }
                boolean(true)
            }
            AllTrue | AnyTrue | AllFalse | AnyFalse => {
                let mut bools = Vec::with_capacity(input.len());
                for v in &input {
                    match v.as_bool() {
                        Some(b) => bools.push(b),
                        None => return err(format!("{}() expects booleans but got {}", fname(f), v.type_name())),
                    }
                }
                boolean(match f {
                    AllTrue => bools.iter().all(|b| *b),
                    AnyTrue => bools.iter().any(|b| *b),
                    AllFalse => bools.iter().all(|b| !*b),
                    _ => bools.iter().any(|b| !*b),
                })
            }
            SubsetOf | SupersetOf => {
                let other = self.arg(args, 0, focus, fr)?;
                let (sub, sup) = if f == SubsetOf { (&input, &other) } else { (&other, &input) };
                boolean(sub.iter().all(|v| contains_value(sup, v)))
            }
            Count => Ok(vec![Value::Integer(input.len() as i64)]),
            Distinct => Ok(union(input, Vec::new())),
            IsDistinct => {
                let n = input.len();
                boolean(union(input, Vec::new()).len() == n)
            }
            _ => err("internal dispatch error"),
        }
    }

    #[inline(never)]
    fn call_filtering(&self, c: &Call<'_, 'a>, input: Coll<'a>) -> R<Coll<'a>> {
        let Call { f, target, args, type_arg, focus, fr } = *c;
        let _ = (target, args, type_arg, focus, fr);
        use Func::*;
        match f {
            Where => {
                let mut out = Vec::new();
                for (i, v) in input.iter().enumerate() {
                    if self.lambda_bool(&args[0], v, i)? == Some(true) {
                        out.push(v.clone());
                    }
                }
                Ok(out)
            }
            Select => {
                let mut out = Vec::new();
                for (i, v) in input.iter().enumerate() {
                    out.extend(self.lambda(&args[0], v, i)?);
                    if out.len() > MAX_ITEMS {
                        return err("select() produced too many items");
                    }
                }
                Ok(out)
            }
            Repeat => {
                let mut out: Coll<'a> = Vec::new();
                let mut current = input;
                while !current.is_empty() {
                    let mut next = Vec::new();
                    for (i, v) in current.iter().enumerate() {
                        for r in self.lambda(&args[0], v, i)? {
                            let seen = out.iter().any(|o| match (o, &r) {
                                (Value::Node(a), Value::Node(b)) => a.same_node(b),
                                (Value::Node(_), _) | (_, Value::Node(_)) => false,
                                (a, b) => equals(a, b) == Some(true),
                            });
                            if !seen {
                                out.push(r.clone());
                                next.push(r);
                            }
                        }
                    }
                    if out.len() > MAX_ITEMS {
                        return err("repeat() produced too many items");
                    }
                    current = next;
                }
                Ok(out)
            }
            OfType => {
                let ts = type_arg.ok_or_else(|| FhirPathError::Eval("ofType() requires a type".into()))?;
                self.check_type_spec(ts)?;
                let mut out = Vec::new();
                for v in &input {
                    if self.value_is(v, ts, true)? {
                        out.push(v.clone());
                    }
                }
                Ok(out)
            }
            _ => err("internal dispatch error"),
        }
    }

    #[inline(never)]
    fn call_subsetting(&self, c: &Call<'_, 'a>, input: Coll<'a>) -> R<Coll<'a>> {
        let Call { f, target, args, type_arg, focus, fr } = *c;
        let _ = (target, args, type_arg, focus, fr);
        use Func::*;
        match f {
            Single => match input.len() {
                0 | 1 => Ok(input),
                n => err(format!("single() called on a collection of {} items", n)),
            },
            First => Ok(input.into_iter().take(1).collect()),
            Last => Ok(input.last().cloned().into_iter().collect()),
            Tail => Ok(input.into_iter().skip(1).collect()),
            Skip => {
                let n = self.arg_int(args, 0, focus, fr, f)?.unwrap_or(0);
                Ok(input.into_iter().skip(n.max(0) as usize).collect())
            }
            Take => {
                let n = self.arg_int(args, 0, focus, fr, f)?.unwrap_or(0);
                Ok(input.into_iter().take(n.max(0) as usize).collect())
            }
            Intersect => {
                let other = self.arg(args, 0, focus, fr)?;
                let mut out: Coll<'a> = Vec::new();
                for v in input {
                    if contains_value(&other, &v) && !contains_value(&out, &v) {
                        out.push(v);
                    }
                }
                Ok(out)
            }
            Exclude => {
                let other = self.arg(args, 0, focus, fr)?;
                Ok(input.into_iter().filter(|v| !contains_value(&other, v)).collect())
            }
            Union => {
                let other = self.arg(args, 0, focus, fr)?;
                Ok(union(input, other))
            }
            Combine => {
                let mut input = input;
                input.extend(self.arg(args, 0, focus, fr)?);
                Ok(input)
            }
            _ => err("internal dispatch error"),
        }
    }

    #[inline(never)]
    fn call_conversion(&self, c: &Call<'_, 'a>, input: Coll<'a>) -> R<Coll<'a>> {
        let Call { f, target, args, type_arg, focus, fr } = *c;
        let _ = (target, args, type_arg, focus, fr);
        use Func::*;
        match f {
            Iif => {
                if input.len() > 1 {
                    return err("iif() called on a collection of more than one item");
                }
                let ifr = if target.is_some() { Frame { this: input.first().cloned(), index: None, total: fr.total.clone() } } else { fr.clone() };
                let ifocus: &[Value<'a>] = if target.is_some() { &input } else { focus };
                let crit = self.eval(&args[0], ifocus, &ifr)?;
                let cond = match crit.len() {
                    0 => false,
                    1 => match crit[0].as_bool() {
                        Some(b) => b,
                        None => return err(format!("iif() criterion must be a boolean, got {}", crit[0].type_name())),
                    },
                    _ => return err("iif() criterion must be a single boolean"),
                };
                if cond {
                    self.eval(&args[1], ifocus, &ifr)
                } else if let Some(e) = args.get(2) {
                    self.eval(e, ifocus, &ifr)
                } else {
                    Ok(Vec::new())
                }
            }
            ToBoolean | ConvertsToBoolean => self.convert(&input, f, |v| to_boolean(v).map(Value::Boolean)),
            ToInteger | ConvertsToInteger => self.convert(&input, f, |v| to_integer(v).map(Value::Integer)),
            ToDecimal | ConvertsToDecimal => self.convert(&input, f, |v| to_decimal(v).map(Value::Decimal)),
            ToStringFn | ConvertsToString => self.convert(&input, f, |v| to_string_value(v).map(Value::String)),
            ToDate | ConvertsToDate => self.convert(&input, f, |v| match v.to_system() {
                Value::Date(d) => Some(Value::Date(d)),
                Value::DateTime(d) => Some(Value::Date(d.truncate(d.precision.min(DtPrecision::Day)))),
                Value::String(s) => parse_date(&s).or_else(|| parse_datetime(&s).map(|d| d.truncate(d.precision.min(DtPrecision::Day)))).map(Value::Date),
                _ => None,
            }),
            ToDateTime | ConvertsToDateTime => self.convert(&input, f, |v| match v.to_system() {
                Value::DateTime(d) | Value::Date(d) => Some(Value::DateTime(d)),
                Value::String(s) => parse_datetime(&s).map(Value::DateTime),
                _ => None,
            }),
            ToTime | ConvertsToTime => self.convert(&input, f, |v| match v.to_system() {
                Value::Time(t) => Some(Value::Time(t)),
                Value::String(s) => parse_time(&s).map(Value::Time),
                _ => None,
            }),
            ToQuantity | ConvertsToQuantity => {
                let unit = self.arg_string(args, 0, focus, fr, f)?;
                self.convert(&input, f, |v| {
                    let q = to_quantity(v)?;
                    match &unit {
                        None => Some(Value::Quantity(q)),
                        Some(u) => {
                            let cal = CALENDAR_UNITS.contains(&u.as_str());
                            q.convert_to(u, cal).map(Value::Quantity)
                        }
                    }
                })
            }
            _ => err("internal dispatch error"),
        }
    }

    #[inline(never)]
    fn call_strings(&self, c: &Call<'_, 'a>, input: Coll<'a>) -> R<Coll<'a>> {
        let Call { f, target, args, type_arg, focus, fr } = *c;
        let _ = (target, args, type_arg, focus, fr);
        use Func::*;
        match f {
            IndexOf => {
                let Some(s) = self.input_string(&input, f)? else { return Ok(Vec::new()) };
                let Some(sub) = self.arg_string(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                Ok(vec![Value::Integer(match s.find(sub.as_str()) {
                    Some(b) => s[..b].chars().count() as i64,
                    None => -1,
                })])
            }
            Substring => {
                let Some(s) = self.input_string(&input, f)? else { return Ok(Vec::new()) };
                let Some(start) = self.arg_int(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let len = if args.len() > 1 {
                    match self.arg_int(args, 1, focus, fr, f)? {
                        Some(l) => Some(l),
                        None => return Ok(Vec::new()),
                    }
                } else {
                    None
                };
                let n = s.chars().count() as i64;
                if start < 0 || start >= n {
                    return Ok(Vec::new());
                }
                let take = len.unwrap_or(n).max(0) as usize;
                Ok(vec![Value::String(Cow::Owned(s.chars().skip(start as usize).take(take).collect()))])
            }
            StartsWith | EndsWith | Contains => {
                let Some(s) = self.input_string(&input, f)? else { return Ok(Vec::new()) };
                let Some(p) = self.arg_string(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                boolean(match f {
                    StartsWith => s.starts_with(p.as_str()),
                    EndsWith => s.ends_with(p.as_str()),
                    _ => s.contains(p.as_str()),
                })
            }
            Upper | Lower | Trim | Length | ToChars => {
                let Some(s) = self.input_string(&input, f)? else { return Ok(Vec::new()) };
                Ok(match f {
                    Upper => vec![Value::String(Cow::Owned(s.to_uppercase()))],
                    Lower => vec![Value::String(Cow::Owned(s.to_lowercase()))],
                    Trim => vec![Value::String(Cow::Owned(s.trim().to_string()))],
                    Length => vec![Value::Integer(s.chars().count() as i64)],
                    _ => s.chars().map(|c| Value::String(Cow::Owned(c.to_string()))).collect(),
                })
            }
            Replace => {
                let Some(s) = self.input_string(&input, f)? else { return Ok(Vec::new()) };
                let Some(p) = self.arg_string(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let Some(r) = self.arg_string(args, 1, focus, fr, f)? else { return Ok(Vec::new()) };
                Ok(vec![Value::String(Cow::Owned(s.replace(p.as_str(), &r)))])
            }
            Matches | MatchesFull => {
                let Some(s) = self.input_string(&input, f)? else { return Ok(Vec::new()) };
                let Some(p) = self.arg_string(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let pat = if f == MatchesFull { format!("(?s)^(?:{})$", p) } else { format!("(?s){}", p) };
                boolean(regex_cached(&pat)?.is_match(&s))
            }
            ReplaceMatches => {
                let Some(s) = self.input_string(&input, f)? else { return Ok(Vec::new()) };
                let Some(p) = self.arg_string(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let Some(r) = self.arg_string(args, 1, focus, fr, f)? else { return Ok(Vec::new()) };
                if p.is_empty() {
                    return Ok(vec![Value::String(s)]);
                }
                let re = regex_cached(&format!("(?s){}", p))?;
                Ok(vec![Value::String(Cow::Owned(re.replace_all(&s, r.as_str()).into_owned()))])
            }
            Split => {
                let Some(s) = self.input_string(&input, f)? else { return Ok(Vec::new()) };
                let Some(sep) = self.arg_string(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                if sep.is_empty() {
                    return Ok(s.chars().map(|c| Value::String(Cow::Owned(c.to_string()))).collect());
                }
                Ok(s.split(sep.as_str()).map(|p| Value::String(Cow::Owned(p.to_string()))).collect())
            }
            Join => {
                let sep = self.arg_string(args, 0, focus, fr, f)?.unwrap_or_default();
                let mut parts = Vec::with_capacity(input.len());
                for v in &input {
                    parts.push(self.string_of(v)?);
                }
                Ok(vec![Value::String(Cow::Owned(parts.join(&sep)))])
            }
            Encode | Decode | Escape | Unescape => {
                let Some(s) = self.input_string(&input, f)? else { return Ok(Vec::new()) };
                let Some(fmt) = self.arg_string(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let r = match (f, fmt.as_str()) {
                    (Encode, "base64") => Some(b64_encode(s.as_bytes(), B64)),
                    (Encode, "urlbase64") => Some(b64_encode(s.as_bytes(), B64URL)),
                    (Encode, "hex") => Some(s.bytes().map(|b| format!("{:02x}", b)).collect()),
                    (Decode, "base64") => b64_decode(&s, B64).and_then(|b| String::from_utf8(b).ok()),
                    (Decode, "urlbase64") => b64_decode(&s, B64URL).and_then(|b| String::from_utf8(b).ok()),
                    (Decode, "hex") => hex_decode(&s).and_then(|b| String::from_utf8(b).ok()),
                    (Escape, "html") => Some(html_escape(&s)),
                    (Escape, "json") => Some(json_escape(&s)),
                    (Unescape, "html") => Some(html_unescape(&s)),
                    (Unescape, "json") => Some(json_unescape(&s)),
                    _ => return err(format!("{}(): unsupported format '{}'", fname(f), fmt)),
                };
                opt(r.map(|x| Value::String(Cow::Owned(x))))
            }
            _ => err("internal dispatch error"),
        }
    }

    #[inline(never)]
    fn call_math(&self, c: &Call<'_, 'a>, input: Coll<'a>) -> R<Coll<'a>> {
        let Call { f, target, args, type_arg, focus, fr } = *c;
        let _ = (target, args, type_arg, focus, fr);
        use Func::*;
        match f {
            Abs => {
                let Some(v) = single(&input, "abs")? else { return Ok(Vec::new()) };
                Ok(vec![match v.to_system() {
                    Value::Integer(i) => Value::Integer(i.checked_abs().ok_or_else(|| FhirPathError::Eval("integer overflow".into()))?),
                    Value::Decimal(d) => Value::Decimal(d.abs()),
                    Value::Quantity(q) => Value::Quantity(Quantity { value: q.value.abs(), ..q }),
                    o => return err(format!("abs() expects a number but got {}", o.type_name())),
                }])
            }
            Ceiling | Floor | Truncate => {
                let Some(v) = single(&input, fname(f))? else { return Ok(Vec::new()) };
                match num_value(v, f)? {
                    Value::Integer(i) => Ok(vec![Value::Integer(i)]),
                    Value::Decimal(d) => {
                        let r = match f {
                            Ceiling => d.ceil(),
                            Floor => d.floor(),
                            _ => d.trunc(),
                        };
                        opt(r.to_i64().map(Value::Integer))
                    }
                    _ => Ok(Vec::new()),
                }
            }
            Round => {
                let Some(v) = single(&input, "round")? else { return Ok(Vec::new()) };
                let p = self.arg_int(args, 0, focus, fr, f)?.unwrap_or(0);
                if !(0..=28).contains(&p) {
                    return err("round() precision must be between 0 and 28");
                }
                match num_value(v, f)? {
                    Value::Integer(i) => Ok(vec![Value::Decimal(Decimal::from(i))]),
                    Value::Decimal(d) => Ok(vec![Value::Decimal(d.round_dp_with_strategy(p as u32, RoundingStrategy::MidpointAwayFromZero))]),
                    _ => Ok(Vec::new()),
                }
            }
            Exp | Ln | Sqrt => {
                let Some(v) = single(&input, fname(f))? else { return Ok(Vec::new()) };
                let x = as_f64(&num_value(v, f)?);
                let r = match f {
                    Exp => x.exp(),
                    Ln => x.ln(),
                    _ => x.sqrt(),
                };
                opt(f64_to_decimal(r).map(Value::Decimal))
            }
            Log => {
                let Some(v) = single(&input, "log")? else { return Ok(Vec::new()) };
                let x = as_f64(&num_value(v, f)?);
                let Some(b) = self.arg_single(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let b = as_f64(&num_value(&b, f)?);
                opt(f64_to_decimal(x.ln() / b.ln()).map(Value::Decimal))
            }
            Power => {
                let Some(v) = single(&input, "power")? else { return Ok(Vec::new()) };
                let base = num_value(v, f)?;
                let Some(e) = self.arg_single(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let e = num_value(&e, f)?;
                match (&base, &e) {
                    (Value::Integer(b), Value::Integer(x)) if *x >= 0 => {
                        opt(u32::try_from(*x).ok().and_then(|x| b.checked_pow(x)).map(Value::Integer))
                    }
                    (Value::Decimal(b), Value::Integer(x)) => opt(dec_pow(*b, *x).map(Value::Decimal)),
                    _ => opt(f64_to_decimal(as_f64(&base).powf(as_f64(&e))).map(Value::Decimal)),
                }
            }
            _ => err("internal dispatch error"),
        }
    }

    #[inline(never)]
    fn call_tree(&self, c: &Call<'_, 'a>, input: Coll<'a>) -> R<Coll<'a>> {
        let Call { f, target, args, type_arg, focus, fr } = *c;
        let _ = (target, args, type_arg, focus, fr);
        use Func::*;
        match f {
            Children => {
                let mut out = Vec::new();
                for v in &input {
                    if let Value::Node(n) = v {
                        self.all_children(n, &mut out);
                    }
                }
                Ok(out)
            }
            Descendants => {
                let mut out = Vec::new();
                let mut current: Coll<'a> = Vec::new();
                for v in &input {
                    if let Value::Node(n) = v {
                        self.all_children(n, &mut current);
                    }
                }
                while !current.is_empty() {
                    let mut next = Vec::new();
                    for v in &current {
                        if let Value::Node(n) = v {
                            self.all_children(n, &mut next);
                        }
                    }
                    out.extend(current);
                    if out.len() > MAX_ITEMS {
                        return err("descendants() produced too many items");
                    }
                    current = next;
                }
                Ok(out)
            }
            _ => err("internal dispatch error"),
        }
    }

    #[inline(never)]
    fn call_utility(&self, c: &Call<'_, 'a>, input: Coll<'a>) -> R<Coll<'a>> {
        let Call { f, target, args, type_arg, focus, fr } = *c;
        let _ = (target, args, type_arg, focus, fr);
        use Func::*;
        match f {
            Trace => {
                let name = self.arg_string(args, 0, focus, fr, f)?.unwrap_or_default();
                if let Some(t) = self.ctx.trace {
                    if let Some(p) = args.get(1) {
                        let mut projected = Vec::new();
                        for (i, v) in input.iter().enumerate() {
                            projected.extend(self.lambda(p, v, i)?);
                        }
                        t(&name, &projected);
                    } else {
                        t(&name, &input);
                    }
                }
                Ok(input)
            }
            Now => Ok(vec![Value::DateTime(self.now())]),
            Today => Ok(vec![Value::Date(self.now().truncate(DtPrecision::Day))]),
            TimeOfDay => Ok(vec![Value::Time(time_of(&self.now()))]),
            Aggregate => {
                let mut total = self.arg(args, 1, focus, fr)?;
                for (i, v) in input.iter().enumerate() {
                    let afr = Frame { this: Some(v.clone()), index: Some(i as i64), total: Some(total) };
                    total = self.eval(&args[0], std::slice::from_ref(v), &afr)?;
                }
                Ok(total)
            }
            Is => {
                let ts = type_arg.ok_or_else(|| FhirPathError::Eval("is() requires a type".into()))?;
                self.check_type_spec(ts)?;
                let Some(v) = single(&input, "is()")? else { return Ok(Vec::new()) };
                boolean(self.value_is(v, ts, false)?)
            }
            As => {
                let ts = type_arg.ok_or_else(|| FhirPathError::Eval("as() requires a type".into()))?;
                self.as_type(&input, ts)
            }
            Type => Ok(input.iter().map(|v| self.type_info(v)).collect()),
            Not => match singleton_bool(&input)? {
                None => Ok(Vec::new()),
                Some(b) => boolean(!b),
            },
            _ => err("internal dispatch error"),
        }
    }

    #[inline(never)]
    fn call_fhir(&self, c: &Call<'_, 'a>, input: Coll<'a>) -> R<Coll<'a>> {
        let Call { f, target, args, type_arg, focus, fr } = *c;
        let _ = (target, args, type_arg, focus, fr);
        use Func::*;
        match f {
            Extension | HasExtension => {
                let Some(url) = self.arg_string(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let ext_ty = self.type_by_name("Extension");
                let mut out = Vec::new();
                for v in &input {
                    if let Value::Node(n) = v {
                        if let Some(JsonValue::Array(exts)) = n.children_obj().and_then(|o| o.get("extension")) {
                            for e in exts {
                                if e.get("url").and_then(|u| u.as_str()) == Some(url.as_str()) {
                                    out.push(Value::Node(Node::new(Some(e), None, ext_ty)));
                                }
                            }
                        }
                    }
                }
                if f == HasExtension {
                    return boolean(!out.is_empty());
                }
                Ok(out)
            }
            HasValue => boolean(match input.as_slice() {
                [Value::Node(n)] => n.is_primitive() && n.value.is_some(),
                [Value::TypeInfo(_)] => false,
                [_] => true,
                _ => false,
            }),
            GetValue => match input.as_slice() {
                [Value::Node(n)] if n.is_primitive() => opt(n.to_system()),
                _ => Ok(Vec::new()),
            },
            Resolve => {
                let mut out = Vec::new();
                for v in &input {
                    let r: Option<&str> = match v {
                        Value::Node(n) => match n.value {
                            Some(JsonValue::Object(o)) => o.get("reference").and_then(|r| r.as_str()),
                            Some(JsonValue::String(s)) => Some(s.as_str()),
                            _ => None,
                        },
                        _ => None,
                    };
                    if let Some(r) = r {
                        if let Some(j) = self.resolve_reference(r) {
                            out.push(self.json_node(j));
                        }
                    } else if let Value::String(s) = v {
                        let owned = s.to_string();
                        if let Some(j) = self.resolve_reference(&owned) {
                            out.push(self.json_node(j));
                        }
                    }
                }
                Ok(out)
            }
            ConformsTo => {
                let Some(url) = self.arg_string(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let Some(v) = single(&input, "conformsTo()")? else { return Ok(Vec::new()) };
                match url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
                    Some(t) if self.model.has_type(t) || (self.model.is_empty() && t.starts_with(|c: char| c.is_ascii_uppercase())) => {
                        let ts = TypeSpec { ns: Some("FHIR".into()), name: t.to_string() };
                        boolean(self.value_is(v, &ts, false).unwrap_or(false))
                    }
                    _ => err(format!("conformsTo('{}'): only core FHIR type profiles can be checked by this engine", url)),
                }
            }
            MemberOf => err("memberOf() is not supported: no terminology service is available to the FHIRPath engine"),
            HtmlChecks => boolean(true),
            Duration => {
                // FHIRPath 3.0 (STU) `duration(value, precision)`: whole calendar
                // periods from the input to `value` (negative when earlier); empty
                // when either side is empty or not a date/date-time.
                let Some(v) = single(&input, "duration()")? else { return Ok(Vec::new()) };
                let Some(o) = self.arg_single(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                let Some(unit) = self.arg_string(args, 1, focus, fr, f)? else { return Ok(Vec::new()) };
                let as_dt = |x: Value<'a>| match x.to_system() {
                    Value::Date(d) | Value::DateTime(d) => Some(d),
                    _ => None,
                };
                let (Some(a), Some(b)) = (as_dt(v.clone()), as_dt(o)) else { return Ok(Vec::new()) };
                Ok(super::datetime::whole_periods(&a, &b, unit.trim_end_matches('s')).map(Value::Integer).into_iter().collect())
            }
            LowBoundary | HighBoundary => {
                let Some(v) = single(&input, fname(f))? else { return Ok(Vec::new()) };
                let p = self.arg_int(args, 0, focus, fr, f)?;
                let high = f == HighBoundary;
                Ok(match v.to_system() {
                    Value::Integer(i) => decimal_boundary(Decimal::from(i), p, high).map(Value::Decimal),
                    Value::Decimal(d) => decimal_boundary(d, p, high).map(Value::Decimal),
                    Value::Quantity(q) => decimal_boundary(q.value, p, high).map(|d| Value::Quantity(Quantity { value: d, ..q })),
                    Value::Date(d) => datetime_boundary(&d, p, high, true).map(Value::Date),
                    Value::DateTime(d) => datetime_boundary(&d, p, high, false).map(Value::DateTime),
                    Value::Time(t) => time_boundary(&t, p, high).map(Value::Time),
                    _ => None,
                }
                .into_iter()
                .collect())
            }
            Precision => {
                let Some(v) = single(&input, "precision()")? else { return Ok(Vec::new()) };
                Ok(match v.to_system() {
                    Value::Integer(_) => Some(0),
                    Value::Decimal(d) => Some(d.scale() as i64),
                    Value::Date(d) | Value::DateTime(d) => Some(datetime_precision_digits(d.precision)),
                    Value::Time(t) => Some(time_precision_digits(t.precision)),
                    Value::Quantity(q) => Some(q.value.scale() as i64),
                    _ => None,
                }
                .map(Value::Integer)
                .into_iter()
                .collect())
            }
            Comparable => {
                let Some(v) = single(&input, "comparable()")? else { return Ok(Vec::new()) };
                let Some(o) = self.arg_single(args, 0, focus, fr, f)? else { return Ok(Vec::new()) };
                match (v.to_system(), o) {
                    (Value::Quantity(a), Value::Quantity(b)) => {
                        let known = |q: &Quantity| q.calendar || is_known_unit(&q.unit);
                        boolean(known(&a) && known(&b) && a.comparable(&b))
                    }
                    _ => err("comparable() expects quantities"),
                }
            }
            Sort => self.sort(input, args),
            Sum | Min | Max | Avg => self.aggregate_fn(f, input),
            _ => err("internal dispatch error"),
        }
    }

    fn convert(&self, input: &[Value<'a>], f: Func, conv: impl Fn(&Value<'a>) -> Option<Value<'a>>) -> R<Coll<'a>> {
        let Some(v) = single(input, fname(f))? else { return Ok(Vec::new()) };
        let r = conv(v);
        if fname(f).starts_with("convertsTo") {
            boolean(r.is_some())
        } else {
            opt(r)
        }
    }

    fn sort(&self, input: Coll<'a>, args: &[Expr]) -> R<Coll<'a>> {
        // compute keys
        let mut keyed: Vec<(Vec<Coll<'a>>, Value<'a>)> = Vec::with_capacity(input.len());
        let mut desc = Vec::new();
        let key_exprs: Vec<&Expr> = args
            .iter()
            .map(|a| match a {
                Expr::Neg(inner) => {
                    desc.push(true);
                    &**inner
                }
                e => {
                    desc.push(false);
                    e
                }
            })
            .collect();
        for (i, v) in input.into_iter().enumerate() {
            let mut keys = Vec::new();
            if key_exprs.is_empty() {
                keys.push(vec![v.clone()]);
            }
            for k in &key_exprs {
                keys.push(self.lambda(k, &v, i)?);
            }
            keyed.push((keys, v));
        }
        if key_exprs.is_empty() {
            desc.push(false);
        }
        let mut failure: Option<FhirPathError> = None;
        keyed.sort_by(|a, b| {
            for (k, (x, y)) in a.0.iter().zip(b.0.iter()).enumerate() {
                // empty keys sort first whatever the direction
                let o = match (x.first(), y.first()) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(p), Some(q)) => match compare(p, q) {
                        Ok(Some(o)) => o,
                        Ok(None) => Ordering::Equal,
                        Err(e) => {
                            if failure.is_none() {
                                failure = Some(e);
                            }
                            Ordering::Equal
                        }
                    },
                };
                let o = if desc.get(k).copied().unwrap_or(false) { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(keyed.into_iter().map(|(_, v)| v).collect())
    }

    fn aggregate_fn(&self, f: Func, input: Coll<'a>) -> R<Coll<'a>> {
        let vals: Vec<Value<'a>> = input.iter().map(|v| v.to_system()).collect();
        if vals.is_empty() {
            return if f == Func::Sum { Ok(vec![Value::Integer(0)]) } else { Ok(Vec::new()) };
        }
        match f {
            Func::Min | Func::Max => {
                let mut best = vals[0].clone();
                for v in &vals[1..] {
                    match compare(v, &best)? {
                        Some(Ordering::Less) if f == Func::Min => best = v.clone(),
                        Some(Ordering::Greater) if f == Func::Max => best = v.clone(),
                        None => return Ok(Vec::new()),
                        _ => {}
                    }
                }
                Ok(vec![best])
            }
            _ => {
                let mut acc = vals[0].clone();
                for v in &vals[1..] {
                    acc = match super::eval::arith(super::parser::BinOp::Add, &acc, v)? {
                        Some(x) => x,
                        None => return Ok(Vec::new()),
                    };
                }
                if f == Func::Avg {
                    let n = Value::Integer(vals.len() as i64);
                    return opt(super::eval::arith(super::parser::BinOp::Div, &acc, &n)?);
                }
                Ok(vec![acc])
            }
        }
    }

    /// Type of a property key (handles concrete choice keys such as `valueQuantity`).
    fn child_type_for_key(&self, node: &Node<'a>, key: &str) -> NodeType<'a> {
        if let Some(tid) = node.ty.id {
            if let Some(ed) = self.model.element(tid, key) {
                if !ed.is_choice {
                    if let Some((_, t)) = ed.choices.first() {
                        return self.nt(*t);
                    }
                }
            }
            for ed in self.model.def(tid).elements.values() {
                if ed.is_choice {
                    if let Some((_, t)) = ed.choices.iter().find(|(k, _)| k == key) {
                        return self.nt(*t);
                    }
                }
            }
        }
        NodeType::UNKNOWN
    }

    pub(crate) fn all_children(&self, node: &Node<'a>, out: &mut Coll<'a>) {
        let Some(obj) = node.children_obj() else { return };
        for k in obj.keys() {
            if k == "resourceType" || k == "fhir_comments" {
                continue;
            }
            let key = match k.strip_prefix('_') {
                Some(base) => {
                    if obj.contains_key(base) {
                        continue;
                    }
                    base
                }
                None => k.as_str(),
            };
            let ty = self.child_type_for_key(node, key);
            self.push_prop(out, obj, key, ty, true);
        }
    }

    fn resolve_reference(&self, r: &str) -> Option<&'a JsonValue> {
        let resource = self.ctx.resource;
        let root = self.ctx.root_resource.unwrap_or(resource);
        if let Some(id) = r.strip_prefix('#') {
            if id.is_empty() {
                return Some(resource);
            }
            for container in [resource, root] {
                if let Some(JsonValue::Array(cs)) = container.get("contained") {
                    for c in cs {
                        if c.get("id").and_then(|i| i.as_str()) == Some(id) {
                            return Some(c);
                        }
                    }
                }
            }
            return None;
        }
        // strip version
        let base = match r.find("/_history/") {
            Some(i) => &r[..i],
            None => r,
        };
        let matches_res = |res: &JsonValue| -> bool {
            let (Some(rt), Some(id)) = (res.get("resourceType").and_then(|x| x.as_str()), res.get("id").and_then(|x| x.as_str())) else {
                return false;
            };
            let rel = format!("{}/{}", rt, id);
            base == rel || base.ends_with(&format!("/{}", rel))
        };
        for candidate in [root, resource] {
            if candidate.get("resourceType").and_then(|x| x.as_str()) == Some("Bundle") {
                if let Some(JsonValue::Array(entries)) = candidate.get("entry") {
                    for e in entries {
                        if e.get("fullUrl").and_then(|x| x.as_str()) == Some(r) {
                            if let Some(res) = e.get("resource") {
                                return Some(res);
                            }
                        }
                    }
                    for e in entries {
                        if let Some(res) = e.get("resource") {
                            if matches_res(res) {
                                return Some(res);
                            }
                        }
                    }
                }
            }
            if matches_res(candidate) {
                return Some(candidate);
            }
            if let Some(JsonValue::Array(cs)) = candidate.get("contained") {
                for c in cs {
                    if matches_res(c) {
                        return Some(c);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn boundaries() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(decimal_boundary(d("1.587"), None, false).unwrap().to_string(), "1.58650000");
        assert_eq!(decimal_boundary(d("1.587"), Some(2), false).unwrap().to_string(), "1.58");
        assert_eq!(decimal_boundary(d("-1.587"), Some(2), false).unwrap().to_string(), "-1.59");
        assert_eq!(decimal_boundary(d("1.587"), Some(2), true).unwrap().to_string(), "1.59");
        assert_eq!(decimal_boundary(d("-1.587"), Some(2), true).unwrap().to_string(), "-1.58");
        assert_eq!(decimal_boundary(d("0.0034"), Some(1), true).unwrap().to_string(), "0.0");
        assert_eq!(decimal_boundary(d("120"), Some(2), false).unwrap().to_string(), "119.50");
        assert_eq!(decimal_boundary(d("1"), Some(0), true).unwrap().to_string(), "2");
    }
    #[test]
    fn base64() {
        assert_eq!(b64_encode(b"subjects?_d", B64URL), "c3ViamVjdHM_X2Q=");
        assert_eq!(b64_decode("dGVzdA==", B64).unwrap(), b"test");
    }
}
