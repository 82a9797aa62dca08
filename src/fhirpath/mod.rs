//! FHIRPath engine for the gateway: evaluates FHIRPath expressions (invariants, search
//! parameter expressions, profile rules, ad-hoc queries) directly on `serde_json::Value`
//! FHIR R4 resources.
//!
//! Specification: FHIRPath 2.0.0 (normative, N1, <http://hl7.org/fhirpath/N1/>) plus the
//! FHIR-specific additions of FHIR R4 (4.0.1) `fhirpath.html`: `%resource`,
//! `%rootResource`, `%context`, `%ucum`, `%sct`, `%loinc`, `` %`vs-…` ``, `` %`ext-…` ``,
//! `extension()`, `hasValue()`, `getValue()`, `resolve()`, `conformsTo()`, `memberOf()`,
//! `htmlChecks()`, `trace()`. A few FHIRPath 2.1 (STU) functions are included because they
//! are cheap and used in the wild: `sort`, `lowBoundary`, `highBoundary`, `precision`,
//! `comparable`, `encode`/`decode`, `escape`/`unescape`, `trim`, `split`, `join`,
//! `matchesFull`, `sum`/`min`/`max`/`avg` (and the non-standard `hasExtension(url)` used by
//! one core SearchParameter).
//!
//! Why hand-written: no maintained Rust crate covers FHIRPath with FHIR typing (choice
//! elements, primitive `_element` extensions, the R4 type hierarchy) on plain JSON without
//! generated resource structs, exact decimals and partial date/times.
//!
//! # Use
//! ```ignore
//! let model = Arc::new(ModelInfo::load_from_package(ModelInfo::default_package_dir())?);
//! let expr = fhirpath::compile("name.where(use = 'official').given.first()")?; // once
//! let ctx = EvalContext::new(&model, &resource);
//! let values = expr.evaluate(&resource, &ctx)?;          // Vec<Value<'_>>, borrows `resource`
//! let json: Vec<serde_json::Value> = values.iter().map(|v| v.to_json()).collect();
//! let ok: Option<bool> = fhirpath::compile("per-1 expr")?.evaluate_bool_typed(&period, "Period", &ctx)?;
//! ```
//! `Expression` is `Send + Sync` and cheap to clone (an `Arc`); `ModelInfo` is built once
//! (≈26 ms release / ≈140 ms debug for the R4 core package) and shared. Evaluation never
//! copies the input: `Value::Node` borrows the JSON. With `ModelInfo::empty()` types are
//! inferred from the JSON shape (choice elements by key prefix, resources by
//! `resourceType`).
//!
//! # Layout
//! `lexer` → `parser` (AST, precedence per spec) → `eval` (navigation, operators,
//! variables) + `functions` (library); `value` (runtime values), `compare` (`=`, `~`,
//! ordering), `datetime` (partial dates/times), `quantity` (UCUM subset), `model`
//! (StructureDefinition-derived type info).
//!
//! # Known limitations
//! * `memberOf()` returns an error (no terminology service). `conformsTo()` only checks the
//!   core type profiles (`http://hl7.org/fhir/StructureDefinition/<Type>`); any other URL is
//!   an error. `htmlChecks()` always returns true (no XHTML validation here).
//! * `resolve()` only resolves within the evaluated data: contained resources (`#id`),
//!   Bundle entries (by `fullUrl` or `Type/id`) of `%rootResource`/`%resource`, and the
//!   resource itself. Nothing is fetched.
//! * Regular expressions use the Rust `regex` syntax (no look-around, no back-references:
//!   such patterns give an evaluation error). `matches()` uses single-line (dot-all) mode.
//! * `now()`, `today()`, `timeOfDay()` use UTC unless `EvalContext::now` is set. A date-time
//!   without timezone compared with one that has a timezone gives empty when the answer
//!   depends on the (unknown) offset (-12:00..+14:00).
//! * Decimals have 28 significant digits (`rust_decimal`); boundaries beyond precision 28
//!   give empty. Integers are 64-bit (the spec's Integer is 32-bit).
//! * UCUM: a subset (SI prefixes; base, derived, time and common customary units; products,
//!   quotients, exponents, `10*n`, annotations). Offset units (`Cel`, `[degF]`) and unknown
//!   units only compare with the identical unit. Calendar `year`/`month` compare with each
//!   other only (not with UCUM `a`/`mo`); `week`…`millisecond` equal `wk`…`ms`.
//! * Static type checking is approximated at run time, and only in `strict` mode: unknown
//!   element names on model-typed nodes, `(x as T).e` where `T` has no `e`, and
//!   order-dependent functions applied directly to `children()`/`descendants()` are errors.
//!   Outside strict mode these yield empty, and `as` on several items behaves like
//!   `ofType` (real-world R4 search parameters rely on that).
//! * `as()`/`ofType()` match FHIR primitive types exactly (`Patient.gender.as(string)` is
//!   empty although `code` specializes `string`, as the official suite expects); `is()` and
//!   complex types follow the type hierarchy (`Age` is a `Quantity`).
//! * `evaluate_bool` returns `None` for an empty result; the HL7 Java validator treats an
//!   empty invariant result as failed, so callers decide (e.g. `per-1` on a date vs a
//!   date-time of different precision is empty).
//! * Not implemented (FHIRPath 2.1 / later): `defineVariable`, `repeatAll`, `coalesce`,
//!   long literals (`1L`), `%terminologies`, `elementDefinition()`, `slice()`,
//!   `checkModifiers()`.
//!
//! # Conformance
//! Official FHIRPath R4 suite (`shared/conformance/fhirpath/tests-fhir-r4.xml`, 937 tests;
//! harness `tests/it/fhirpath_suite.rs`): with the R4 core model in strict mode
//! **921 passed, 0 failed, 14 skipped** (inputs available only as XML:
//! parameters-example-types, patient-example-period, valueset-example-expansion). Without a
//! model (lenient): 901 passed, 20 failed (FHIR type names and semantic errors need the
//! model), 14 skipped. All 16,134 FHIRPath expressions of the core package (invariants and
//! SearchParameters) compile.

mod compare;
mod datetime;
mod eval;
mod functions;
mod lexer;
mod model;
mod parser;
mod quantity;
mod value;

#[cfg(test)]
mod tests;

pub use datetime::{now_utc, parse_datetime, DateTimeValue, DtPrecision, TimeValue};
pub use model::{ElementInfo, ModelInfo};
pub use quantity::Quantity;
pub use value::{Node, TypeInfoValue, Value};

use serde_json::Value as JsonValue;
use std::fmt;
use std::sync::Arc;

/// Errors from compiling or evaluating a FHIRPath expression, or loading the model.
#[derive(Debug, Clone, PartialEq)]
pub enum FhirPathError {
    /// Syntax (or static) error: byte offset into the source and message.
    Parse {
        /// Byte offset into the source text.
        pos: usize,
        /// What went wrong.
        msg: String,
    },
    /// Run-time error (e.g. a collection with more than one item where one is required).
    Eval(String),
    /// Failure loading the FHIR model.
    Model(String),
}

impl fmt::Display for FhirPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FhirPathError::Parse { pos, msg } => write!(f, "FHIRPath syntax error at {}: {}", pos, msg),
            FhirPathError::Eval(m) => write!(f, "FHIRPath evaluation error: {}", m),
            FhirPathError::Model(m) => write!(f, "FHIR model error: {}", m),
        }
    }
}

impl std::error::Error for FhirPathError {}

struct Compiled {
    source: String,
    ast: parser::Expr,
}

/// A compiled expression: immutable, `Send + Sync`, cheap to clone.
#[derive(Clone)]
pub struct Expression {
    inner: Arc<Compiled>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expression({:?})", self.inner.source)
    }
}

/// Compiles FHIRPath source text. Syntax errors, unknown functions and wrong argument
/// counts are reported as [`FhirPathError::Parse`].
pub fn compile(src: &str) -> Result<Expression, FhirPathError> {
    let ast = parser::parse(src)?;
    Ok(Expression { inner: Arc::new(Compiled { source: src.to_string(), ast }) })
}

/// Callback receiving `trace(name)` output.
pub type TraceFn<'a> = dyn Fn(&str, &[Value<'a>]) + 'a;

/// Evaluation environment.
pub struct EvalContext<'a> {
    /// Type model (use [`ModelInfo::empty()`] for JSON-shape inference only).
    pub model: &'a ModelInfo,
    /// `%resource`: the resource containing the evaluated element.
    pub resource: &'a JsonValue,
    /// `%rootResource` (e.g. the Bundle or container); defaults to `resource`.
    pub root_resource: Option<&'a JsonValue>,
    /// Extra `%name` variables (override the built-in constants of the same name).
    pub variables: rustc_hash::FxHashMap<String, Vec<Value<'a>>>,
    /// Strict mode: navigating to a name that is not an element of a model-known type (e.g.
    /// `Observation.valueQuantity`, a misspelt element), or a leading type name that does not
    /// match, is an error instead of an empty result; `as` on several items is an error.
    pub strict: bool,
    /// Fixed clock for `now()`/`today()`/`timeOfDay()` (default: system clock, UTC).
    pub now: Option<DateTimeValue>,
    /// Receives `trace()` output; ignored when `None`.
    pub trace: Option<&'a TraceFn<'a>>,
}

impl<'a> EvalContext<'a> {
    /// A context with `%resource` = `resource`, no extra variables, lenient mode, system clock.
    pub fn new(model: &'a ModelInfo, resource: &'a JsonValue) -> EvalContext<'a> {
        EvalContext { model, resource, root_resource: None, variables: Default::default(), strict: false, now: None, trace: None }
    }

    /// Adds a `%name` variable.
    pub fn with_variable(mut self, name: impl Into<String>, value: Vec<Value<'a>>) -> Self {
        self.variables.insert(name.into(), value);
        self
    }
}

/// A FHIR resource (or any JSON element with a `resourceType`) as a FHIRPath value, typed
/// from its `resourceType` — for `%name` variables in [`EvalContext::variables`] (e.g. the
/// measure evaluation context of `report`). Borrows `json`.
pub fn resource_value<'a>(model: &'a ModelInfo, json: &'a JsonValue) -> Value<'a> {
    let ctx = EvalContext::new(model, json);
    eval::Evaluator::new(&ctx).json_node(json)
}

/// Like [`resource_value`] for a resource whose type the caller already knows
/// (no `resourceType` lookup; for hot loops over many resources of a few types).
pub fn typed_resource_value<'a>(model: &'a ModelInfo, json: &'a JsonValue, type_name: &str) -> Value<'a> {
    let ctx = EvalContext::new(model, json);
    let ty = eval::Evaluator::new(&ctx).type_by_name(type_name);
    Value::Node(Node::new(Some(json), None, ty))
}

impl Expression {
    /// The source text.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Whether the result can depend on the input (the focus, `$this`, `$index`,
    /// `$total`) or on one of the `%` variables in `item_vars`. When `false`, the
    /// expression gives the same result for every input under the same other
    /// variables — callers may evaluate it once (e.g. a measure's per-person
    /// stratifier over each of the person's Encounters). Conservative: may say
    /// `true` for an expression that does not really depend on its input.
    pub fn depends_on_input(&self, item_vars: &[&str]) -> bool {
        parser::reads_input(&self.inner.ast, true, item_vars)
    }

    /// Evaluates against `input` (usually the resource itself; its type comes from
    /// `resourceType`). Results borrow from `input` / the context's JSON.
    pub fn evaluate<'a>(&self, input: &'a JsonValue, ctx: &EvalContext<'a>) -> Result<Vec<Value<'a>>, FhirPathError> {
        eval::Evaluator::new(ctx).run(&self.inner.ast, input, None)
    }

    /// Evaluates with an explicitly typed input element, e.g. `("HumanName", name_json)` or a
    /// backbone element path such as `"Patient.contact"`.
    pub fn evaluate_typed<'a>(&self, input: &'a JsonValue, type_name: &str, ctx: &EvalContext<'a>) -> Result<Vec<Value<'a>>, FhirPathError> {
        eval::Evaluator::new(ctx).run(&self.inner.ast, input, Some(type_name))
    }

    /// Evaluates with an existing collection as the focus (`$this` is its single item, if
    /// any), e.g. nodes returned by a previous evaluation. `%context` is that collection.
    pub fn evaluate_on<'a>(&self, focus: &[Value<'a>], ctx: &EvalContext<'a>) -> Result<Vec<Value<'a>>, FhirPathError> {
        eval::Evaluator::new(ctx).run_on(&self.inner.ast, focus)
    }

    /// Evaluates with singleton-boolean semantics (for invariants): empty -> `None`, a
    /// single Boolean -> its value, a single non-Boolean item -> `Some(true)`, more than one
    /// item -> error.
    pub fn evaluate_bool<'a>(&self, input: &'a JsonValue, ctx: &EvalContext<'a>) -> Result<Option<bool>, FhirPathError> {
        let r = self.evaluate(input, ctx)?;
        eval::singleton_bool(&r)
    }

    /// Like [`Expression::evaluate_bool`] with an explicitly typed input.
    pub fn evaluate_bool_typed<'a>(&self, input: &'a JsonValue, type_name: &str, ctx: &EvalContext<'a>) -> Result<Option<bool>, FhirPathError> {
        let r = self.evaluate_typed(input, type_name, ctx)?;
        eval::singleton_bool(&r)
    }
}
