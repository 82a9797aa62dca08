//! Tree-walking evaluator: navigation, operators, variables. Functions are in `functions.rs`.

use super::compare::{compare, equals, equivalent};
use super::datetime::{add_to_datetime, add_to_time, cal_unit, now_utc, DateTimeValue};
use super::model::{ModelInfo, TypeId, TypeKind};
use super::functions::Func;
use super::parser::{BinOp, Expr, TypeSpec};
use super::quantity::Quantity;
use super::value::{prim_kind, Node, NodeType, TypeInfoValue, Value, SYSTEM_TYPES};
use super::{EvalContext, FhirPathError};
use rust_decimal::prelude::*;
use rust_decimal::Decimal;
use serde_json::Value as JsonValue;
use std::borrow::Cow;
use std::cmp::Ordering;

pub(crate) type Coll<'a> = Vec<Value<'a>>;
pub(crate) type R<T> = Result<T, FhirPathError>;

pub(crate) fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(FhirPathError::Eval(msg.into()))
}

/// Iteration variables (`$this`, `$index`, `$total`).
#[derive(Clone, Default)]
pub(crate) struct Frame<'a> {
    pub this: Option<Value<'a>>,
    pub index: Option<i64>,
    pub total: Option<Coll<'a>>,
}

pub(crate) struct Evaluator<'a, 'c> {
    pub ctx: &'c EvalContext<'a>,
    pub model: &'a ModelInfo,
    /// the clock for `now()`/`today()`/`timeOfDay()`, read once per evaluation when first needed
    pub now: std::cell::OnceCell<DateTimeValue>,
    pub context: Coll<'a>,
}

/// Singleton evaluation of collections as Boolean.
pub(crate) fn singleton_bool(c: &[Value]) -> R<Option<bool>> {
    match c.len() {
        0 => Ok(None),
        1 => Ok(Some(c[0].as_bool().unwrap_or(true))),
        n => err(format!("expected a single boolean but got a collection of {} items", n)),
    }
}

pub(crate) fn single<'b, 'a>(c: &'b [Value<'a>], what: &str) -> R<Option<&'b Value<'a>>> {
    match c.len() {
        0 => Ok(None),
        1 => Ok(Some(&c[0])),
        n => err(format!("{} requires a single item but got {}", what, n)),
    }
}

/// Type names that exist without a model (FHIR primitives), as static strings.
pub(crate) fn static_type_name(name: &str) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "boolean", "string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown", "base64Binary", "xhtml",
        "integer", "positiveInt", "unsignedInt", "decimal", "date", "dateTime", "instant", "time", "Quantity", "Age",
        "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity", "Coding", "CodeableConcept", "Reference",
        "Identifier", "HumanName", "Address", "ContactPoint", "Period", "Range", "Ratio", "Attachment", "Extension",
        "Meta", "Narrative", "Annotation", "Money", "Timing", "SampledData", "Signature", "BackboneElement", "Element",
    ];
    NAMES.iter().copied().find(|n| *n == name)
}

/// Objects up to this many members are searched by a linear scan (a length
/// check, then the bytes) instead of hashing the key: FHIR elements are small
/// objects, and SipHash per lookup dominated navigation.
const SCAN_MAX: usize = 16;

/// Byte equality without a `memcmp` call (keys are short).
#[inline(always)]
fn key_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// `obj[key]`, scanning small objects.
#[inline]
pub(crate) fn get_small<'j>(obj: &'j serde_json::Map<String, JsonValue>, key: &str) -> Option<&'j JsonValue> {
    if obj.len() <= SCAN_MAX {
        obj.iter().find(|(k, _)| key_eq(k, key)).map(|(_, v)| v)
    } else {
        obj.get(key)
    }
}

/// `obj[key]` and (with `ext`) its primitive extension sibling `obj["_" + key]`, in one pass.
#[inline]
fn lookup_with_ext<'j>(obj: &'j serde_json::Map<String, JsonValue>, key: &str, ext: bool) -> (Option<&'j JsonValue>, Option<&'j JsonValue>) {
    if obj.len() <= SCAN_MAX {
        let (mut v, mut e) = (None, None);
        for (k, x) in obj {
            if k.len() == key.len() {
                if key_eq(k, key) {
                    v = Some(x);
                }
            } else if ext && k.len() == key.len() + 1 && k.as_bytes()[0] == b'_' && key_eq(&k[1..], key) {
                e = Some(x);
            }
        }
        (v, e)
    } else {
        let e = if ext {
            let mut k = String::with_capacity(key.len() + 1);
            k.push('_');
            k.push_str(key);
            obj.get(&k)
        } else {
            None
        };
        (obj.get(key), e)
    }
}

fn upper_first_is(s: &str) -> bool {
    s.chars().next().map(|c| c.is_ascii_uppercase()).unwrap_or(false)
}

impl<'a, 'c> Evaluator<'a, 'c> {
    pub(crate) fn new(ctx: &'c EvalContext<'a>) -> Evaluator<'a, 'c> {
        Evaluator { ctx, model: ctx.model, now: std::cell::OnceCell::new(), context: Vec::new() }
    }

    pub(crate) fn run(mut self, ast: &Expr, input: &'a JsonValue, type_name: Option<&str>) -> R<Coll<'a>> {
        let ty = match type_name {
            Some(t) => self.type_by_name(t),
            None => self.type_of_json(Some(input), NodeType::UNKNOWN),
        };
        let root = Value::Node(Node::new(Some(input), None, ty));
        self.context = vec![root.clone()];
        let fr = Frame { this: Some(root.clone()), index: None, total: None };
        self.eval(ast, &[root], &fr)
    }

    pub(crate) fn run_on(mut self, ast: &Expr, focus: &[Value<'a>]) -> R<Coll<'a>> {
        self.context = focus.to_vec();
        let fr = Frame { this: if focus.len() == 1 { Some(focus[0].clone()) } else { None }, index: None, total: None };
        self.eval(ast, focus, &fr)
    }

    // ------------------------------------------------------------------ typing helpers

    pub(crate) fn now(&self) -> DateTimeValue {
        *self.now.get_or_init(|| self.ctx.now.unwrap_or_else(now_utc))
    }

    pub(crate) fn nt(&self, id: TypeId) -> NodeType<'a> {
        NodeType { id: Some(id), name: self.model.label(id) }
    }

    pub(crate) fn type_by_name(&self, name: &str) -> NodeType<'a> {
        match self.model.type_id(name) {
            Some(id) => self.nt(id),
            None => NodeType { id: None, name: static_type_name(name).unwrap_or("") },
        }
    }

    /// Resources carry their own type (`resourceType`), overriding the declared one.
    pub(crate) fn type_of_json(&self, v: Option<&'a JsonValue>, declared: NodeType<'a>) -> NodeType<'a> {
        // only an element declared as a resource (contained, entry.resource …) or of
        // unknown type can carry its own `resourceType`
        if let Some(id) = declared.id {
            if self.model.kind(id) != TypeKind::Resource {
                return declared;
            }
        }
        if let Some(JsonValue::Object(o)) = v {
            if let Some(JsonValue::String(rt)) = get_small(o, "resourceType") {
                return match self.model.type_id(rt) {
                    Some(id) => self.nt(id),
                    None => NodeType { id: None, name: rt.as_str() },
                };
            }
        }
        declared
    }

    fn type_from_suffix(&self, suffix: &str) -> NodeType<'a> {
        // `DateTime` -> `dateTime`, `Quantity` -> `Quantity`
        let lower = {
            let mut c = suffix.chars();
            match c.next() {
                Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
                None => String::new(),
            }
        };
        if prim_kind(&lower).is_some() {
            return self.type_by_name(&lower);
        }
        self.type_by_name(suffix)
    }

    pub(crate) fn json_node(&self, v: &'a JsonValue) -> Value<'a> {
        Value::Node(Node::new(Some(v), None, self.type_of_json(Some(v), NodeType::UNKNOWN)))
    }

    // ------------------------------------------------------------------ navigation

    /// Pushes the value(s) of property `key` (and its `_key` companion) from `obj`.
    pub(crate) fn push_prop(&self, out: &mut Coll<'a>, obj: &'a serde_json::Map<String, JsonValue>, key: &str, ty: NodeType<'a>, look_ext: bool) -> bool {
        let (v, e) = lookup_with_ext(obj, key, look_ext);
        if v.is_none() && e.is_none() {
            return false;
        }
        let va = match v {
            Some(JsonValue::Array(a)) => Some(a.as_slice()),
            _ => None,
        };
        let ea = match e {
            Some(JsonValue::Array(a)) => Some(a.as_slice()),
            _ => None,
        };
        let before = out.len();
        if va.is_some() || ea.is_some() {
            let n = va.map(|a| a.len()).unwrap_or(0).max(ea.map(|a| a.len()).unwrap_or(0));
            for i in 0..n {
                let vi = va.and_then(|a| a.get(i)).filter(|x| !x.is_null());
                let ei = ea.and_then(|a| a.get(i)).filter(|x| !x.is_null());
                if vi.is_none() && ei.is_none() {
                    continue;
                }
                out.push(Value::Node(Node::new(vi, ei, self.type_of_json(vi, ty))));
            }
        } else {
            let vi = v.filter(|x| !x.is_null());
            let ei = e.filter(|x| !x.is_null());
            if vi.is_some() || ei.is_some() {
                out.push(Value::Node(Node::new(vi, ei, self.type_of_json(vi, ty))));
            }
        }
        out.len() > before
    }

    /// Navigates to child `name` of `node`. Returns false if the node has a model type that
    /// does not define `name` (used for strict-mode checks).
    fn children_named(&self, node: &Node<'a>, name: &str, out: &mut Coll<'a>) -> bool {
        let Some(obj) = node.children_obj() else {
            // a primitive without id/extension: still "knows" id/extension
            return match node.ty.id {
                Some(tid) => self.model.element(tid, name).is_some(),
                None => true,
            };
        };
        if let Some(tid) = node.ty.id {
            if let Some(ed) = self.model.element(tid, name) {
                for (key, ctid) in &ed.choices {
                    let ty = self.nt(*ctid);
                    let prim = self.model.kind(*ctid) == TypeKind::Primitive;
                    if self.push_prop(out, obj, key, ty, prim) && ed.is_choice {
                        break;
                    }
                }
                return true;
            }
            // lenient: a concrete choice key such as `valueQuantity`
            for ed in self.model.def(tid).elements.values() {
                if ed.is_choice {
                    if let Some((k, ctid)) = ed.choices.iter().find(|(k, _)| k == name) {
                        let ty = self.nt(*ctid);
                        self.push_prop(out, obj, k, ty, true);
                        return false;
                    }
                }
            }
            self.push_prop(out, obj, name, NodeType::UNKNOWN, true);
            return false;
        }
        if self.push_prop(out, obj, name, NodeType::UNKNOWN, true) {
            return true;
        }
        // choice element without a model: `value` -> `valueQuantity`
        for k in obj.keys() {
            if k.len() > name.len() && k.starts_with(name) && upper_first_is(&k[name.len()..]) {
                let ty = self.type_from_suffix(&k[name.len()..]);
                if self.push_prop(out, obj, k, ty, true) {
                    break;
                }
            }
        }
        true
    }

    fn node_matches_type_name(&self, n: &Node<'a>, name: &str) -> bool {
        match n.ty.id {
            Some(tid) => self.model.is_a(tid, name),
            None => n.type_name() == name,
        }
    }

    /// Member navigation over a collection. `root` enables matching the focus' type name
    /// (`Patient.name` evaluated on a Patient).
    fn navigate(&self, input: &[Value<'a>], name: &str, root: bool) -> R<Coll<'a>> {
        let mut out = Vec::new();
        let mut any_known = false;
        let mut any_typed = false;
        for item in input {
            match item {
                Value::Node(n) => {
                    if root && upper_first_is(name) {
                        let has_elem = n.ty.id.map(|t| self.model.element(t, name).is_some()).unwrap_or(false);
                        if !has_elem && self.node_matches_type_name(n, name) {
                            out.push(item.clone());
                            any_known = true;
                            continue;
                        }
                        if !has_elem && n.ty.id.is_none() && self.model.has_type(name) {
                            // a type name that does not match: empty
                            any_known = true;
                            continue;
                        }
                    }
                    if n.ty.id.is_some() {
                        any_typed = true;
                    }
                    if self.children_named(n, name, &mut out) {
                        any_known = true;
                    }
                }
                Value::TypeInfo(t) => {
                    any_known = true;
                    match name {
                        "namespace" => out.push(Value::String(Cow::Owned(t.namespace.clone()))),
                        "name" => out.push(Value::String(Cow::Owned(t.name.clone()))),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if self.ctx.strict && any_typed && !any_known {
            let tn = input.iter().find_map(|v| v.as_node().map(|n| n.type_name())).unwrap_or("?");
            return err(format!("'{}' is not an element of type {}", name, tn));
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ type tests

    /// Whether `v` is of type `ts`. `exact_primitives`: FHIR primitive types only match
    /// exactly (used by `as`/`ofType`: `code` is not returned by `as(string)`).
    pub(crate) fn value_is(&self, v: &Value<'a>, ts: &TypeSpec, exact_primitives: bool) -> R<bool> {
        let name = ts.name.as_str();
        let ns = ts.ns.as_deref();
        self.check_type_spec(ts)?;
        Ok(match v {
            Value::Node(n) => {
                if ns == Some("System") {
                    false
                } else {
                    match n.ty.id {
                        Some(tid) => {
                            if exact_primitives && self.model.kind(tid) == TypeKind::Primitive {
                                self.model.label(tid) == name
                            } else {
                                self.model.is_a(tid, name)
                            }
                        }
                        None => n.type_name() == name,
                    }
                }
            }
            Value::TypeInfo(_) => false,
            sys => {
                if ns == Some("FHIR") {
                    false
                } else {
                    sys.type_name() == name || (name == "Any" && ns == Some("System"))
                }
            }
        })
    }

    /// Rejects unknown namespaces and (with a model) unknown type names.
    pub(crate) fn check_type_spec(&self, ts: &TypeSpec) -> R<()> {
        let ns = ts.ns.as_deref();
        if let Some(ns) = ns {
            if ns != "System" && ns != "FHIR" {
                return err(format!("unknown type namespace '{}'", ns));
            }
        }
        let is_system_name = SYSTEM_TYPES.contains(&ts.name.as_str()) || ts.name == "Any";
        if ns != Some("System") && !is_system_name && !self.model.is_empty() && !self.model.has_type(&ts.name) {
            return err(format!("unknown type '{}'", ts));
        }
        Ok(())
    }

    pub(crate) fn type_info(&self, v: &Value<'a>) -> Value<'a> {
        Value::TypeInfo(TypeInfoValue { namespace: v.namespace().to_string(), name: v.type_name().to_string() })
    }

    // ------------------------------------------------------------------ evaluation

    pub(crate) fn eval(&self, e: &Expr, focus: &[Value<'a>], fr: &Frame<'a>) -> R<Coll<'a>> {
        match e {
            Expr::Lit(v) => Ok(vec![v.clone()]),
            Expr::Coll(vs) => Ok(vs.clone()),
            Expr::Empty => Ok(Vec::new()),
            Expr::Ident(name) => self.navigate(focus, name, true),
            Expr::Member(t, name) => {
                if self.ctx.strict {
                    self.check_static_member(t, name)?;
                }
                let c = self.eval(t, focus, fr)?;
                self.navigate(&c, name, false)
            }
            Expr::Call { target, func, args, type_arg } => {
                if self.ctx.strict && matches!(func, Func::First | Func::Last | Func::Tail | Func::Skip | Func::Take) {
                    if let Some(t) = target {
                        self.check_ordered(t)?;
                    }
                }
                self.call(*func, target.as_deref(), args, type_arg.as_ref(), focus, fr)
            }
            Expr::Index(t, i) => {
                if self.ctx.strict {
                    self.check_ordered(t)?;
                }
                let c = self.eval(t, focus, fr)?;
                let iv = self.eval(i, focus, fr)?;
                let Some(idx) = single(&iv, "indexer")? else { return Ok(Vec::new()) };
                match idx.to_system() {
                    Value::Integer(n) => Ok(if n >= 0 { c.into_iter().nth(n as usize).into_iter().collect() } else { Vec::new() }),
                    _ => err("indexer requires an integer"),
                }
            }
            Expr::This => Ok(fr.this.clone().into_iter().collect()),
            Expr::IndexVar => Ok(fr.index.map(Value::Integer).into_iter().collect()),
            Expr::Total => Ok(fr.total.clone().unwrap_or_default()),
            Expr::Const(name) => self.constant(name),
            Expr::Neg(inner) => {
                let c = self.eval(inner, focus, fr)?;
                let Some(v) = single(&c, "unary minus")? else { return Ok(Vec::new()) };
                Ok(vec![match v.to_system() {
                    Value::Integer(i) => Value::Integer(i.checked_neg().ok_or_else(|| FhirPathError::Eval("integer overflow".into()))?),
                    Value::Decimal(d) => Value::Decimal(if d.is_zero() { d } else { -d }),
                    Value::Quantity(q) => Value::Quantity(Quantity { value: if q.value.is_zero() { q.value } else { -q.value }, ..q }),
                    other => return err(format!("unary minus cannot be applied to {}", other.type_name())),
                }])
            }
            Expr::Bin(op, l, r) => self.binary(*op, l, r, focus, fr),
            Expr::Is(inner, ts) => {
                let c = self.eval(inner, focus, fr)?;
                self.check_type_spec(ts)?;
                let Some(v) = single(&c, "is")? else { return Ok(Vec::new()) };
                Ok(vec![Value::Boolean(self.value_is(v, ts, false)?)])
            }
            Expr::As(inner, ts) => {
                let c = self.eval(inner, focus, fr)?;
                self.as_type(&c, ts)
            }
        }
    }

    /// Strict mode: `(x as T).name` / `x.ofType(T).name` where the model type `T` has no
    /// element `name` is a (static) error even when the left side is empty.
    fn check_static_member(&self, target: &Expr, name: &str) -> R<()> {
        let ts = match target {
            Expr::As(_, ts) => ts,
            Expr::Call { func: Func::As | Func::OfType, type_arg: Some(ts), .. } => ts,
            _ => return Ok(()),
        };
        if ts.ns.as_deref() == Some("System") {
            return Ok(());
        }
        if let Some(tid) = self.model.type_id(&ts.name) {
            if self.model.kind(tid) != TypeKind::Primitive && self.model.element(tid, name).is_none() {
                return err(format!("'{}' is not an element of type {}", name, ts));
            }
        }
        Ok(())
    }

    /// Strict mode: order-dependent functions applied directly to `children()` /
    /// `descendants()` (whose order is undefined) are rejected.
    fn check_ordered(&self, target: &Expr) -> R<()> {
        if let Expr::Call { func: Func::Children | Func::Descendants, .. } = target {
            return err("order-dependent function applied to the unordered result of children()/descendants()");
        }
        Ok(())
    }

    pub(crate) fn as_type(&self, c: &[Value<'a>], ts: &TypeSpec) -> R<Coll<'a>> {
        self.check_type_spec(ts)?;
        if c.len() > 1 && self.ctx.strict {
            return err(format!("as({}) requires a single item but got {}", ts, c.len()));
        }
        let mut out = Vec::new();
        for v in c {
            if self.value_is(v, ts, true)? {
                out.push(v.clone());
            }
        }
        Ok(out)
    }

    fn constant(&self, name: &str) -> R<Coll<'a>> {
        if let Some(v) = self.ctx.variables.get(name) {
            return Ok(v.clone());
        }
        let s = |x: &'static str| Ok(vec![Value::String(Cow::Borrowed(x))]);
        match name {
            "ucum" => s("http://unitsofmeasure.org"),
            "sct" => s("http://snomed.info/sct"),
            "loinc" => s("http://loinc.org"),
            "resource" => Ok(vec![self.json_node(self.ctx.resource)]),
            "rootResource" => Ok(vec![self.json_node(self.ctx.root_resource.unwrap_or(self.ctx.resource))]),
            "context" => Ok(self.context.clone()),
            _ => {
                if let Some(vs) = name.strip_prefix("vs-") {
                    return Ok(vec![Value::String(Cow::Owned(format!("http://hl7.org/fhir/ValueSet/{}", vs)))]);
                }
                if let Some(ext) = name.strip_prefix("ext-") {
                    return Ok(vec![Value::String(Cow::Owned(format!("http://hl7.org/fhir/StructureDefinition/{}", ext)))]);
                }
                err(format!("undefined variable '%{}'", name))
            }
        }
    }

    fn binary(&self, op: BinOp, l: &Expr, r: &Expr, focus: &[Value<'a>], fr: &Frame<'a>) -> R<Coll<'a>> {
        let b = |x: bool| Ok(vec![Value::Boolean(x)]);
        match op {
            BinOp::And => {
                let a = singleton_bool(&self.eval(l, focus, fr)?)?;
                if a == Some(false) {
                    return b(false);
                }
                let c = singleton_bool(&self.eval(r, focus, fr)?)?;
                match (a, c) {
                    (_, Some(false)) => b(false),
                    (Some(true), Some(true)) => b(true),
                    _ => Ok(Vec::new()),
                }
            }
            BinOp::Or => {
                let a = singleton_bool(&self.eval(l, focus, fr)?)?;
                if a == Some(true) {
                    return b(true);
                }
                let c = singleton_bool(&self.eval(r, focus, fr)?)?;
                match (a, c) {
                    (_, Some(true)) => b(true),
                    (Some(false), Some(false)) => b(false),
                    _ => Ok(Vec::new()),
                }
            }
            BinOp::Xor => {
                let a = singleton_bool(&self.eval(l, focus, fr)?)?;
                let c = singleton_bool(&self.eval(r, focus, fr)?)?;
                match (a, c) {
                    (Some(x), Some(y)) => b(x != y),
                    _ => Ok(Vec::new()),
                }
            }
            BinOp::Implies => {
                let a = singleton_bool(&self.eval(l, focus, fr)?)?;
                if a == Some(false) {
                    return b(true);
                }
                let c = singleton_bool(&self.eval(r, focus, fr)?)?;
                match (a, c) {
                    (_, Some(true)) => b(true),
                    (Some(true), Some(false)) => b(false),
                    _ => Ok(Vec::new()),
                }
            }
            // membership in a constant: compared in place, the constant is not copied
            BinOp::In if matches!(r, Expr::Coll(_) | Expr::Lit(_)) => {
                let a = self.eval(l, focus, fr)?;
                let Some(x) = single(&a, "membership")? else { return Ok(Vec::new()) };
                let consts: &[Value<'static>] = match r {
                    Expr::Coll(vs) => vs,
                    Expr::Lit(v) => std::slice::from_ref(v),
                    _ => &[],
                };
                b(consts.iter().any(|y| equals(x, y) == Some(true)))
            }
            _ => {
                let a = self.eval(l, focus, fr)?;
                let c = self.eval(r, focus, fr)?;
                self.binary_values(op, a, c)
            }
        }
    }

    pub(crate) fn binary_values(&self, op: BinOp, a: Coll<'a>, c: Coll<'a>) -> R<Coll<'a>> {
        let b = |x: bool| Ok(vec![Value::Boolean(x)]);
        match op {
            BinOp::Union => Ok(union(a, c)),
            BinOp::Eq | BinOp::Ne => {
                let r = collection_equals(&a, &c);
                Ok(match r {
                    Some(x) => vec![Value::Boolean(if op == BinOp::Eq { x } else { !x })],
                    None => Vec::new(),
                })
            }
            BinOp::Equiv | BinOp::NotEquiv => {
                let x = collection_equivalent(&a, &c);
                b(if op == BinOp::Equiv { x } else { !x })
            }
            BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
                let (Some(x), Some(y)) = (single(&a, "comparison")?, single(&c, "comparison")?) else { return Ok(Vec::new()) };
                match compare(x, y)? {
                    None => Ok(Vec::new()),
                    Some(o) => b(match op {
                        BinOp::Lt => o == Ordering::Less,
                        BinOp::Gt => o == Ordering::Greater,
                        BinOp::Le => o != Ordering::Greater,
                        _ => o != Ordering::Less,
                    }),
                }
            }
            BinOp::In | BinOp::Contains => {
                let (item, coll) = if op == BinOp::In { (a, c) } else { (c, a) };
                let Some(x) = single(&item, "membership")? else { return Ok(Vec::new()) };
                b(coll.iter().any(|y| equals(x, y) == Some(true)))
            }
            BinOp::Concat => {
                let x = single(&a, "&")?.map(|v| self.string_of(v)).transpose()?.unwrap_or_default();
                let y = single(&c, "&")?.map(|v| self.string_of(v)).transpose()?.unwrap_or_default();
                Ok(vec![Value::String(Cow::Owned(x + &y))])
            }
            _ => {
                let (Some(x), Some(y)) = (single(&a, "arithmetic")?, single(&c, "arithmetic")?) else { return Ok(Vec::new()) };
                Ok(arith(op, &x.to_system(), &y.to_system())?.into_iter().collect())
            }
        }
    }

    pub(crate) fn string_of(&self, v: &Value<'a>) -> R<String> {
        match v.to_system() {
            Value::String(s) => Ok(s.into_owned()),
            other => err(format!("expected a string but got {}", other.type_name())),
        }
    }
}

// ---------------------------------------------------------------------- collection ops

pub(crate) fn contains_value<'a>(c: &[Value<'a>], v: &Value<'a>) -> bool {
    c.iter().any(|x| equals(x, v) == Some(true))
}

pub(crate) fn union<'a>(a: Coll<'a>, b: Coll<'a>) -> Coll<'a> {
    let mut out: Coll<'a> = Vec::with_capacity(a.len() + b.len());
    for v in a.into_iter().chain(b) {
        if !contains_value(&out, &v) {
            out.push(v);
        }
    }
    out
}

pub(crate) fn collection_equals<'a>(a: &[Value<'a>], b: &[Value<'a>]) -> Option<bool> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    if a.len() != b.len() {
        return Some(false);
    }
    for (x, y) in a.iter().zip(b.iter()) {
        match equals(x, y) {
            None => return None,
            Some(false) => return Some(false),
            Some(true) => {}
        }
    }
    Some(true)
}

pub(crate) fn collection_equivalent<'a>(a: &[Value<'a>], b: &[Value<'a>]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    'outer: for x in a {
        for (j, y) in b.iter().enumerate() {
            if !used[j] && equivalent(x, y) {
                used[j] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}

// ---------------------------------------------------------------------- arithmetic

fn to_dec(v: &Value) -> Option<Decimal> {
    match v {
        Value::Integer(i) => Some(Decimal::from(*i)),
        Value::Decimal(d) => Some(*d),
        _ => None,
    }
}

fn overflow<T>() -> R<T> {
    err("arithmetic overflow")
}

fn date_add<'a>(v: &Value<'a>, q: &Quantity, negate: bool) -> R<Option<Value<'a>>> {
    let Some(unit) = cal_unit(&q.unit, !q.calendar) else {
        return err(format!("cannot add a quantity with unit '{}' to a date/time", q.unit));
    };
    let amt = q.value.trunc().to_i64().ok_or_else(|| FhirPathError::Eval("date arithmetic overflow".into()))?;
    let amt = if negate { amt.checked_neg().ok_or_else(|| FhirPathError::Eval("date arithmetic overflow".into()))? } else { amt };
    Ok(match v {
        Value::Date(d) => add_to_datetime(d, amt, unit).map(Value::Date),
        Value::DateTime(d) => add_to_datetime(d, amt, unit).map(Value::DateTime),
        Value::Time(t) => match add_to_time(t, amt, unit) {
            Some(t) => Some(Value::Time(t)),
            None => return err("only hours, minutes, seconds and milliseconds can be added to a time"),
        },
        _ => None,
    })
}

pub(crate) fn arith<'a>(op: BinOp, x: &Value<'a>, y: &Value<'a>) -> R<Option<Value<'a>>> {
    use Value::*;
    let bad = || err(format!("operator {:?} cannot be applied to {} and {}", op, x.type_name(), y.type_name()));
    match op {
        BinOp::Add | BinOp::Sub => {
            let neg = op == BinOp::Sub;
            match (x, y) {
                (Integer(a), Integer(b)) => {
                    let r = if neg { a.checked_sub(*b) } else { a.checked_add(*b) };
                    r.map(|v| Some(Integer(v))).map_or_else(overflow, Ok)
                }
                (Integer(_) | Decimal(_), Integer(_) | Decimal(_)) => {
                    let (a, b) = (to_dec(x).unwrap_or_default(), to_dec(y).unwrap_or_default());
                    let r = if neg { a.checked_sub(b) } else { a.checked_add(b) };
                    r.map(|v| Some(Decimal(v))).map_or_else(overflow, Ok)
                }
                (String(a), String(b)) if !neg => Ok(Some(String(Cow::Owned(format!("{}{}", a, b))))),
                (Quantity(a), Quantity(b)) => match a.add(b, neg) {
                    Some(q) => Ok(Some(Quantity(q))),
                    None => err(format!("cannot add/subtract quantities with units '{}' and '{}'", a.unit, b.unit)),
                },
                (Date(_) | DateTime(_) | Time(_), Quantity(q)) => date_add(x, q, neg),
                _ => bad(),
            }
        }
        BinOp::Mul => match (x, y) {
            (Integer(a), Integer(b)) => a.checked_mul(*b).map(|v| Some(Integer(v))).map_or_else(overflow, Ok),
            (Integer(_) | Decimal(_), Integer(_) | Decimal(_)) => {
                to_dec(x).unwrap_or_default().checked_mul(to_dec(y).unwrap_or_default()).map(|v| Some(Decimal(v))).map_or_else(overflow, Ok)
            }
            (Quantity(a), Quantity(b)) => Ok(a.mul(b, false).map(Quantity)),
            (Quantity(a), Integer(_) | Decimal(_)) => Ok(a.value.checked_mul(to_dec(y).unwrap_or_default()).map(|v| Quantity(super::quantity::Quantity { value: v, ..a.clone() }))),
            (Integer(_) | Decimal(_), Quantity(b)) => Ok(b.value.checked_mul(to_dec(x).unwrap_or_default()).map(|v| Quantity(super::quantity::Quantity { value: v, ..b.clone() }))),
            _ => bad(),
        },
        BinOp::Div => match (x, y) {
            (Integer(_) | Decimal(_), Integer(_) | Decimal(_)) => {
                let b = to_dec(y).unwrap_or_default();
                if b.is_zero() {
                    return Ok(None);
                }
                Ok(to_dec(x).unwrap_or_default().checked_div(b).map(Decimal))
            }
            (Quantity(a), Quantity(b)) => {
                if b.value.is_zero() {
                    return Ok(None);
                }
                Ok(a.mul(b, true).map(Quantity))
            }
            (Quantity(a), Integer(_) | Decimal(_)) => {
                let b = to_dec(y).unwrap_or_default();
                if b.is_zero() {
                    return Ok(None);
                }
                Ok(a.value.checked_div(b).map(|v| Quantity(super::quantity::Quantity { value: v, ..a.clone() })))
            }
            _ => bad(),
        },
        BinOp::IntDiv => match (x, y) {
            (Integer(a), Integer(b)) => {
                if *b == 0 {
                    return Ok(None);
                }
                Ok(a.checked_div(*b).map(Integer))
            }
            (Integer(_) | Decimal(_), Integer(_) | Decimal(_)) => {
                let b = to_dec(y).unwrap_or_default();
                if b.is_zero() {
                    return Ok(None);
                }
                Ok(to_dec(x).unwrap_or_default().checked_div(b).and_then(|v| v.trunc().to_i64()).map(Integer))
            }
            _ => bad(),
        },
        BinOp::Mod => match (x, y) {
            (Integer(a), Integer(b)) => {
                if *b == 0 {
                    return Ok(None);
                }
                Ok(a.checked_rem(*b).map(Integer))
            }
            (Integer(_) | Decimal(_), Integer(_) | Decimal(_)) => {
                let b = to_dec(y).unwrap_or_default();
                if b.is_zero() {
                    return Ok(None);
                }
                Ok(to_dec(x).unwrap_or_default().checked_rem(b).map(Decimal))
            }
            _ => bad(),
        },
        _ => bad(),
    }
}
