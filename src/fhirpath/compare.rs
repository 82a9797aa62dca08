//! Equality (`=`), equivalence (`~`) and ordering of single values.

use super::datetime::{compare_datetimes, compare_times, parse_date, parse_datetime, parse_time};
use super::value::{Node, Value};
use super::FhirPathError;
use rust_decimal::Decimal;
use serde_json::Value as JsonValue;
use std::cmp::Ordering;

/// System form of a value for comparison with `other`. Untyped string nodes (no model) are
/// parsed as date/time when compared with a date/time.
pub(crate) fn sys_for<'a>(v: &Value<'a>, other: &Value<'a>) -> Value<'a> {
    let s = v.to_system();
    if let (Value::String(txt), Value::Node(n)) = (&s, v) {
        if n.ty.name.is_empty() {
            let o = other.to_system();
            match o {
                Value::Date(_) | Value::DateTime(_) => {
                    if let Some(d) = parse_date(txt) {
                        return Value::Date(d);
                    }
                    if let Some(d) = parse_datetime(txt) {
                        return Value::DateTime(d);
                    }
                }
                Value::Time(_) => {
                    if let Some(t) = parse_time(txt) {
                        return Value::Time(t);
                    }
                }
                _ => {}
            }
        }
    }
    s
}

fn dec(v: &Value) -> Option<Decimal> {
    match v {
        Value::Integer(i) => Some(Decimal::from(*i)),
        Value::Decimal(d) => Some(*d),
        _ => None,
    }
}

fn json_equal(a: Option<&JsonValue>, b: Option<&JsonValue>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => json_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn json_eq(a: &JsonValue, b: &JsonValue) -> bool {
    match (a, b) {
        (JsonValue::Number(x), JsonValue::Number(y)) => {
            match (super::value::json_number_decimal(x), super::value::json_number_decimal(y)) {
                (Some(p), Some(q)) => p == q,
                _ => x == y,
            }
        }
        (JsonValue::Object(x), JsonValue::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).map(|w| json_eq(v, w)).unwrap_or(false))
        }
        (JsonValue::Array(x), JsonValue::Array(y)) => x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| json_eq(p, q)),
        _ => a == b,
    }
}

fn node_eq(a: &Node, b: &Node) -> bool {
    a.same_node(b) || (json_equal(a.value, b.value) && json_equal(a.element, b.element))
}

/// `=` on two single items. `None` = empty result (unknown).
pub(crate) fn equals<'a>(a: &Value<'a>, b: &Value<'a>) -> Option<bool> {
    let x = sys_for(a, b);
    let y = sys_for(b, a);
    match (&x, &y) {
        (Value::Boolean(p), Value::Boolean(q)) => Some(p == q),
        (Value::String(p), Value::String(q)) => Some(p == q),
        (Value::Integer(p), Value::Integer(q)) => Some(p == q),
        (Value::Integer(_) | Value::Decimal(_), Value::Integer(_) | Value::Decimal(_)) => Some(dec(&x)? == dec(&y)?),
        (Value::Date(p) | Value::DateTime(p), Value::Date(q) | Value::DateTime(q)) => compare_datetimes(p, q).map(|o| o == Ordering::Equal),
        (Value::Time(p), Value::Time(q)) => compare_times(p, q).map(|o| o == Ordering::Equal),
        (Value::Quantity(p), Value::Quantity(q)) => p.compare(q).map(|o| o == Ordering::Equal),
        (Value::Node(p), Value::Node(q)) => Some(node_eq(p, q)),
        (Value::TypeInfo(p), Value::TypeInfo(q)) => Some(p == q),
        _ => Some(false),
    }
}

fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn json_equiv(a: &JsonValue, b: &JsonValue) -> bool {
    match (a, b) {
        (JsonValue::String(x), JsonValue::String(y)) => normalize_ws(x) == normalize_ws(y),
        (JsonValue::Object(x), JsonValue::Object(y)) => {
            let xs: Vec<_> = x.iter().filter(|(k, _)| k.as_str() != "id").collect();
            let ys: Vec<_> = y.iter().filter(|(k, _)| k.as_str() != "id").collect();
            xs.len() == ys.len() && xs.iter().all(|(k, v)| y.get(k.as_str()).map(|w| json_equiv(v, w)).unwrap_or(false))
        }
        (JsonValue::Array(x), JsonValue::Array(y)) => x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| json_equiv(p, q)),
        _ => json_eq(a, b),
    }
}

/// `~` on two single items.
pub(crate) fn equivalent<'a>(a: &Value<'a>, b: &Value<'a>) -> bool {
    let x = sys_for(a, b);
    let y = sys_for(b, a);
    match (&x, &y) {
        (Value::String(p), Value::String(q)) => normalize_ws(p) == normalize_ws(q),
        (Value::Integer(_) | Value::Decimal(_), Value::Integer(_) | Value::Decimal(_)) => {
            let (p, q) = match (dec(&x), dec(&y)) {
                (Some(p), Some(q)) => (p, q),
                _ => return false,
            };
            let scale = p.scale().min(q.scale());
            p.round_dp(scale) == q.round_dp(scale)
        }
        (Value::Date(p) | Value::DateTime(p), Value::Date(q) | Value::DateTime(q)) => compare_datetimes(p, q) == Some(Ordering::Equal),
        (Value::Time(p), Value::Time(q)) => compare_times(p, q) == Some(Ordering::Equal),
        (Value::Quantity(p), Value::Quantity(q)) => p.equivalent(q),
        (Value::Node(p), Value::Node(q)) => {
            p.same_node(q)
                || (match (p.value, q.value) {
                    (Some(a), Some(b)) => json_equiv(a, b),
                    (None, None) => true,
                    _ => false,
                })
        }
        _ => equals(&x, &y) == Some(true),
    }
}

/// Ordering for `<`, `>`, `<=`, `>=`. `Ok(None)` = empty result; error for incompatible types.
pub(crate) fn compare<'a>(a: &Value<'a>, b: &Value<'a>) -> Result<Option<Ordering>, FhirPathError> {
    let x = sys_for(a, b);
    let y = sys_for(b, a);
    Ok(match (&x, &y) {
        (Value::Integer(p), Value::Integer(q)) => Some(p.cmp(q)),
        (Value::Integer(_) | Value::Decimal(_), Value::Integer(_) | Value::Decimal(_)) => match (dec(&x), dec(&y)) {
            (Some(p), Some(q)) => Some(p.cmp(&q)),
            _ => None,
        },
        (Value::String(p), Value::String(q)) => Some(p.as_ref().cmp(q.as_ref())),
        (Value::Date(p) | Value::DateTime(p), Value::Date(q) | Value::DateTime(q)) => compare_datetimes(p, q),
        (Value::Time(p), Value::Time(q)) => compare_times(p, q),
        (Value::Quantity(p), Value::Quantity(q)) => p.compare(q),
        (Value::Quantity(p), Value::Integer(_) | Value::Decimal(_)) if p.unit == "1" => dec(&y).map(|q| p.value.cmp(&q)),
        (Value::Integer(_) | Value::Decimal(_), Value::Quantity(q)) if q.unit == "1" => dec(&x).map(|p| p.cmp(&q.value)),
        _ => {
            return Err(FhirPathError::Eval(format!("cannot compare {} with {}", a.type_name(), b.type_name())));
        }
    })
}
