//! Building JSON values directly, without serde round trips.
//!
//! `serde_json::json!` turns every interpolated value into JSON by
//! serializing it, which deep-copies every `Value` placed inside another
//! (a reference object, a CodeableConcept …). The translator builds many
//! nested objects per message, so [`obj!`] and [`j`] move values in
//! instead ([`IntoJson`]), and [`put`] leaves out absent and empty values
//! on the spot (the final [`super::prune::prune`] remains the safety net).

use serde_json::{Map, Value};

/// Conversion into a JSON value by move (no serialization).
pub(crate) trait IntoJson {
    fn into_json(self) -> Value;
}

impl IntoJson for Value {
    #[inline]
    fn into_json(self) -> Value {
        self
    }
}
impl IntoJson for &Value {
    #[inline]
    fn into_json(self) -> Value {
        self.clone()
    }
}
impl IntoJson for String {
    #[inline]
    fn into_json(self) -> Value {
        Value::String(self)
    }
}
impl IntoJson for &String {
    #[inline]
    fn into_json(self) -> Value {
        Value::String(self.clone())
    }
}
impl IntoJson for &str {
    #[inline]
    fn into_json(self) -> Value {
        Value::String(self.to_owned())
    }
}
impl IntoJson for &&str {
    #[inline]
    fn into_json(self) -> Value {
        Value::String((*self).to_owned())
    }
}
impl IntoJson for bool {
    #[inline]
    fn into_json(self) -> Value {
        Value::Bool(self)
    }
}
impl IntoJson for u32 {
    #[inline]
    fn into_json(self) -> Value {
        Value::Number(self.into())
    }
}
impl<T: IntoJson> IntoJson for Option<T> {
    #[inline]
    fn into_json(self) -> Value {
        match self {
            Some(v) => v.into_json(),
            None => Value::Null,
        }
    }
}
impl<'a, T> IntoJson for &'a Option<T>
where
    &'a T: IntoJson,
{
    #[inline]
    fn into_json(self) -> Value {
        match self {
            Some(v) => v.into_json(),
            None => Value::Null,
        }
    }
}
impl<T: IntoJson> IntoJson for Vec<T> {
    #[inline]
    fn into_json(self) -> Value {
        Value::Array(self.into_iter().map(IntoJson::into_json).collect())
    }
}

/// Any [`IntoJson`] value as a `Value`.
#[inline]
pub(crate) fn j<T: IntoJson>(v: T) -> Value {
    v.into_json()
}

/// True for `null`, `""`, `[]` and `{}` (not looking deeper).
#[inline]
pub(crate) fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Inserts `k: v` unless `v` is blank.
#[inline]
pub(crate) fn put<T: IntoJson>(m: &mut Map<String, Value>, k: &str, v: T) {
    let v = v.into_json();
    if !is_blank(&v) {
        m.insert(k.to_owned(), v);
    }
}

/// `obj!{"key": value, …}` → a JSON object of the non-blank members, in
/// the order written.
macro_rules! obj {
    ($($k:literal : $v:expr),* $(,)?) => {{
        let mut m = ::serde_json::Map::with_capacity([$($k),*].len());
        $( $crate::translate::hl7v2::map::json::put(&mut m, $k, $v); )*
        ::serde_json::Value::Object(m)
    }};
}
pub(crate) use obj;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_skips_blanks() {
        let none: Option<String> = None;
        let v = obj! {"a": "x", "b": none, "c": Vec::<Value>::new(), "d": obj!{"e": ""}, "f": vec![1u32, 2], "g": true};
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"a":"x","f":[1,2],"g":true}"#
        );
    }
}
