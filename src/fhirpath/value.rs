//! Runtime values: System primitives, quantities, date/times and FHIR nodes that borrow
//! from the input JSON tree.

use super::datetime::{parse_date, parse_datetime, parse_time, DateTimeValue, TimeValue};
use super::model::TypeId;
use super::quantity::Quantity;
use rust_decimal::Decimal;
use serde_json::Value as JsonValue;
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A FHIRPath value. Nodes borrow from the evaluated JSON (`'a`).
#[derive(Clone, Debug)]
pub enum Value<'a> {
    /// System.Boolean
    Boolean(bool),
    /// System.String (borrowed from the input where possible)
    String(Cow<'a, str>),
    /// System.Integer (64-bit)
    Integer(i64),
    /// System.Decimal (exact; keeps the written scale)
    Decimal(Decimal),
    /// System.Date
    Date(DateTimeValue),
    /// System.DateTime
    DateTime(DateTimeValue),
    /// System.Time
    Time(TimeValue),
    /// System.Quantity
    Quantity(Quantity),
    /// An element of the FHIR resource (complex or primitive).
    Node(Node<'a>),
    /// Result of `type()`.
    TypeInfo(TypeInfoValue),
}

/// Result of `type()`: a simple type descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfoValue {
    /// `System` or `FHIR`.
    pub namespace: String,
    /// Type name, e.g. `Integer`, `HumanName`, `code`.
    pub name: String,
}

/// A reference into the JSON tree plus its FHIR type.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    /// The JSON value (object for complex types, scalar for primitives); `None` for a
    /// primitive that only has an `_element` sibling (id/extension without value).
    pub(crate) value: Option<&'a JsonValue>,
    /// The `_name` sibling of a primitive (id / extension).
    pub(crate) element: Option<&'a JsonValue>,
    pub(crate) ty: NodeType<'a>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeType<'a> {
    pub id: Option<TypeId>,
    /// FHIR type name, empty if unknown.
    pub name: &'a str,
}

impl<'a> NodeType<'a> {
    pub(crate) const UNKNOWN: NodeType<'static> = NodeType { id: None, name: "" };
}

impl<'a> fmt::Debug for Node<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.value.map(|v| v.to_string()).unwrap_or_else(|| "null".into());
        if s.len() > 80 {
            let mut cut = 80;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        write!(f, "Node<{}>({})", self.type_name(), s)
    }
}

/// Primitive categories of FHIR primitive types (mapped to System types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PrimKind {
    Boolean,
    String,
    Integer,
    Decimal,
    Date,
    DateTime,
    Time,
}

pub(crate) fn prim_kind(fhir_type: &str) -> Option<PrimKind> {
    Some(match fhir_type {
        "boolean" => PrimKind::Boolean,
        "string" | "code" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid" | "markdown" | "base64Binary" | "xhtml" => PrimKind::String,
        "integer" | "positiveInt" | "unsignedInt" | "integer64" => PrimKind::Integer,
        "decimal" => PrimKind::Decimal,
        "date" => PrimKind::Date,
        "dateTime" | "instant" => PrimKind::DateTime,
        "time" => PrimKind::Time,
        _ => return None,
    })
}

pub(crate) fn is_quantity_type(fhir_type: &str) -> bool {
    matches!(fhir_type, "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "MoneyQuantity" | "SimpleQuantity")
}

pub(crate) const SYSTEM_TYPES: &[&str] = &["Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity"];

/// Parses a JSON number's exact text into a Decimal (keeps the written scale).
pub(crate) fn json_number_decimal(n: &serde_json::Number) -> Option<Decimal> {
    let s = n.to_string();
    if s.contains(['e', 'E']) {
        Decimal::from_scientific(&s).ok()
    } else {
        Decimal::from_str(&s).ok()
    }
}

impl<'a> Node<'a> {
    pub(crate) fn new(value: Option<&'a JsonValue>, element: Option<&'a JsonValue>, ty: NodeType<'a>) -> Node<'a> {
        Node { value, element, ty }
    }

    /// The JSON value this node refers to (`None` for value-less primitives).
    pub fn json(&self) -> Option<&'a JsonValue> {
        self.value
    }

    /// The `_element` companion of a primitive (id/extension), if any.
    pub fn element_json(&self) -> Option<&'a JsonValue> {
        self.element
    }

    /// The FHIR type name (inferred from the JSON shape when no model is available).
    pub fn type_name(&self) -> &'a str {
        if !self.ty.name.is_empty() {
            return self.ty.name;
        }
        match self.value {
            Some(JsonValue::Bool(_)) => "boolean",
            Some(JsonValue::String(_)) => "string",
            Some(JsonValue::Number(n)) => {
                if n.is_i64() || n.is_u64() {
                    "integer"
                } else {
                    "decimal"
                }
            }
            Some(JsonValue::Object(o)) => match o.get("resourceType") {
                Some(JsonValue::String(s)) => s.as_str(),
                _ => "Element",
            },
            _ => "Element",
        }
    }

    pub(crate) fn prim_kind(&self) -> Option<PrimKind> {
        if !self.ty.name.is_empty() {
            return prim_kind(self.ty.name);
        }
        match self.value {
            Some(JsonValue::Bool(_)) => Some(PrimKind::Boolean),
            Some(JsonValue::String(_)) => Some(PrimKind::String),
            Some(JsonValue::Number(n)) => Some(if n.is_i64() || n.is_u64() { PrimKind::Integer } else { PrimKind::Decimal }),
            _ => None,
        }
    }

    /// Whether this is a primitive (scalar or value-less primitive) rather than a complex element.
    pub fn is_primitive(&self) -> bool {
        match self.value {
            Some(JsonValue::Object(_)) | Some(JsonValue::Array(_)) => false,
            Some(_) => true,
            None => self.element.is_some(),
        }
    }

    /// The object holding child properties: the value itself for complex nodes, the
    /// `_element` object for primitives.
    pub(crate) fn children_obj(&self) -> Option<&'a serde_json::Map<String, JsonValue>> {
        match self.value {
            Some(JsonValue::Object(o)) => Some(o),
            _ => self.element.and_then(|e| e.as_object()),
        }
    }

    /// Converts a primitive (or Quantity-typed) node to its System value.
    pub(crate) fn to_system(self) -> Option<Value<'a>> {
        let v = self.value?;
        if let JsonValue::Object(o) = v {
            if is_quantity_type(self.ty.name) {
                return quantity_from_json(o).map(Value::Quantity);
            }
            return None;
        }
        match self.prim_kind()? {
            PrimKind::Boolean => v.as_bool().map(Value::Boolean),
            PrimKind::String => v.as_str().map(|s| Value::String(Cow::Borrowed(s))),
            PrimKind::Integer => match v {
                JsonValue::Number(n) => n.as_i64().map(Value::Integer).or_else(|| {
                    let d = json_number_decimal(n)?;
                    if d.fract().is_zero() {
                        rust_decimal::prelude::ToPrimitive::to_i64(&d).map(Value::Integer)
                    } else {
                        Some(Value::Decimal(d))
                    }
                }),
                JsonValue::String(s) => s.parse().ok().map(Value::Integer),
                _ => None,
            },
            PrimKind::Decimal => match v {
                JsonValue::Number(n) => json_number_decimal(n).map(Value::Decimal),
                JsonValue::String(s) => Decimal::from_str(s).ok().map(Value::Decimal),
                _ => None,
            },
            PrimKind::Date => {
                let s = v.as_str()?;
                parse_date(s).map(Value::Date).or_else(|| parse_datetime(s).map(Value::DateTime))
            }
            PrimKind::DateTime => {
                let s = v.as_str()?;
                parse_datetime(s).map(Value::DateTime)
            }
            PrimKind::Time => v.as_str().and_then(parse_time).map(Value::Time),
        }
    }

    pub(crate) fn same_node(&self, other: &Node<'a>) -> bool {
        let pv = match (self.value, other.value) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let pe = match (self.element, other.element) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        };
        pv && pe
    }
}

pub(crate) fn quantity_from_json(o: &serde_json::Map<String, JsonValue>) -> Option<Quantity> {
    let value = match o.get("value")? {
        JsonValue::Number(n) => json_number_decimal(n)?,
        _ => return None,
    };
    let system = o.get("system").and_then(|s| s.as_str());
    let code = o.get("code").and_then(|s| s.as_str());
    let unit = o.get("unit").and_then(|s| s.as_str());
    let u = match (system, code) {
        (Some("http://unitsofmeasure.org"), Some(c)) => c,
        (None, Some(c)) => c,
        (_, _) => unit.or(code).unwrap_or("1"),
    };
    Some(Quantity::new(value, u, false))
}

fn decimal_json(d: &Decimal) -> JsonValue {
    match serde_json::Number::from_str(&d.to_string()) {
        Ok(n) => JsonValue::Number(n),
        Err(_) => JsonValue::String(d.to_string()),
    }
}

impl<'a> Value<'a> {
    /// Type name: System types as `Boolean`, `String`, ...; nodes by FHIR type (`code`, `HumanName`).
    pub fn type_name(&self) -> &str {
        match self {
            Value::Boolean(_) => "Boolean",
            Value::String(_) => "String",
            Value::Integer(_) => "Integer",
            Value::Decimal(_) => "Decimal",
            Value::Date(_) => "Date",
            Value::DateTime(_) => "DateTime",
            Value::Time(_) => "Time",
            Value::Quantity(_) => "Quantity",
            Value::Node(n) => n.type_name(),
            Value::TypeInfo(_) => "SimpleTypeInfo",
        }
    }

    /// `System` or `FHIR`.
    pub fn namespace(&self) -> &'static str {
        match self {
            Value::Node(_) => "FHIR",
            _ => "System",
        }
    }

    /// The FHIR node, if this value is one.
    pub fn as_node(&self) -> Option<&Node<'a>> {
        match self {
            Value::Node(n) => Some(n),
            _ => None,
        }
    }

    /// The value as a System value (primitive FHIR nodes are converted; others unchanged).
    pub fn to_system(&self) -> Value<'a> {
        match self {
            Value::Node(n) => n.to_system().unwrap_or_else(|| self.clone()),
            v => v.clone(),
        }
    }

    /// Boolean content (System Boolean or FHIR boolean).
    pub fn as_bool(&self) -> Option<bool> {
        match self.to_system() {
            Value::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// String content (System String or string-like FHIR primitive).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Node(n) => match (n.prim_kind(), n.value) {
                (Some(PrimKind::String), Some(JsonValue::String(s))) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// Converts to JSON: primitives to JSON scalars (decimals keep their exact text),
    /// date/times to ISO strings, quantities to FHIR Quantity objects, nodes to a copy of
    /// their JSON.
    pub fn to_json(&self) -> JsonValue {
        match self {
            Value::Boolean(b) => JsonValue::Bool(*b),
            Value::String(s) => JsonValue::String(s.to_string()),
            Value::Integer(i) => JsonValue::from(*i),
            Value::Decimal(d) => decimal_json(d),
            Value::Date(d) => JsonValue::String(d.to_date_string()),
            Value::DateTime(d) => JsonValue::String(d.to_datetime_string()),
            Value::Time(t) => JsonValue::String(t.to_time_string()),
            Value::Quantity(q) => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), decimal_json(&q.value));
                m.insert("unit".into(), JsonValue::String(q.unit.clone()));
                if let Some(code) = q.ucum_code() {
                    m.insert("system".into(), JsonValue::String("http://unitsofmeasure.org".into()));
                    m.insert("code".into(), JsonValue::String(code.to_string()));
                }
                JsonValue::Object(m)
            }
            Value::Node(n) => match (n.value, n.element) {
                (Some(v), _) => v.clone(),
                (None, Some(e)) => e.clone(),
                _ => JsonValue::Null,
            },
            Value::TypeInfo(t) => {
                let mut m = serde_json::Map::new();
                m.insert("namespace".into(), JsonValue::String(t.namespace.clone()));
                m.insert("name".into(), JsonValue::String(t.name.clone()));
                JsonValue::Object(m)
            }
        }
    }
}

/// String form as produced by `toString()` (complex nodes print as JSON).
impl<'a> fmt::Display for Value<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{}", b),
            Value::String(s) => f.write_str(s),
            Value::Integer(i) => write!(f, "{}", i),
            Value::Decimal(d) => write!(f, "{}", d),
            Value::Date(d) => f.write_str(&d.to_date_string()),
            Value::DateTime(d) => f.write_str(&d.to_datetime_string()),
            Value::Time(t) => f.write_str(&t.to_time_string()),
            Value::Quantity(q) => f.write_str(&q.to_fhirpath_string()),
            Value::Node(n) => match n.value {
                Some(JsonValue::String(s)) => f.write_str(s),
                Some(JsonValue::Number(x)) => write!(f, "{}", x),
                Some(JsonValue::Bool(b)) => write!(f, "{}", b),
                Some(v) => write!(f, "{}", v),
                None => Ok(()),
            },
            Value::TypeInfo(t) => write!(f, "{}.{}", t.namespace, t.name),
        }
    }
}
