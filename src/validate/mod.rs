//! Validation of FHIR resources against the R4 core definitions (R4
//! `validation.html`, `elementdefinition.html`, `json.html`): the JSON shape
//! of every element — known properties only, cardinality, arrays exactly for
//! repeating elements, primitive kinds and formats, choice types, no empty
//! objects/arrays/strings, nested and contained resources, reference format.
//! Definitions come from the installed packages, compiled once (`model`).
//!
//! Output: OperationOutcome issues with severity, issue-type code, the
//! FHIRPath location in `expression` and a message naming the element and the
//! definition. Data problems are values, never panics.
//!
//! Invariants: every `constraint` of the elements walked (resource, backbone,
//! datatype) is evaluated with our FHIRPath engine (`crate::fhirpath`),
//! compiled once at load; `%resource` is the enclosing resource and
//! `%rootResource` the outermost. `ele-1` is checked natively (no empty
//! elements). An invariant that evaluates to empty counts as satisfied
//! (the HL7 Java validator counts it as failed); one whose evaluation errors
//! (e.g. needs terminology) is skipped.
//!
//! Not yet here (the validation issue continues): regional profiles with
//! snapshot generation and slicing, fixed/pattern and binding checks against
//! profiles, terminology.

pub mod model;
pub mod primitives;
pub mod packs;
pub mod snapshot;

use crate::fhir::definitions::{DefinitionsError, CORE_PACKAGE};
use crate::fhir::{IssueType, OperationOutcome, Severity};
use crate::fhirpath::{self, EvalContext, Expression, ModelInfo};
use model::{Max, Model, StructDef};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Definitions(#[from] DefinitionsError),
    #[error("FHIRPath model: {0}")]
    FhirPath(String),
}

/// The validator: compiled definitions and invariants, shared and immutable.
#[derive(Clone)]
pub struct Validator {
    pub model: Arc<Model>,
    fp_model: Arc<ModelInfo>,
    invariant_count: usize,
}

/// How deep nested resources may go before we stop (a guard against hostile input).
const MAX_DEPTH: usize = 64;

struct Walk<'m, 'v> {
    v: &'m Validator,
    model: &'m Model,
    oo: OperationOutcome,
    root: &'v Value,
    /// enclosing resources, innermost last
    resources: Vec<&'v Value>,
    /// `%rootResource` per level: a contained resource's root is its container;
    /// a resource in a Bundle entry or Parameters is its own root
    roots: Vec<&'v Value>,
}

impl Validator {
    /// Load the core package from the cache (about 20 MB of snapshots).
    pub fn load(cache: &Path) -> Result<Self, ValidateError> {
        let mut model = Model::default();
        let dir = cache.join(CORE_PACKAGE).join("package");
        if !dir.join(".index.json").exists() {
            return Err(DefinitionsError::MissingPackage(CORE_PACKAGE.into(), cache.display().to_string()).into());
        }
        model.add_package(&dir)?;
        let fp_model = ModelInfo::load_from_package(&dir).map_err(|e| ValidateError::FhirPath(e.to_string()))?;
        // compile every invariant once (identical expressions share one compilation)
        let mut cache: HashMap<String, Option<Expression>> = HashMap::new();
        for sd in model.by_url.values() {
            for e in &sd.elements {
                for c in e.constraints.iter().filter(|c| c.key != "ele-1") {
                    if let Some(x) = &c.expression {
                        let compiled = cache.entry(x.clone()).or_insert_with(|| fhirpath::compile(x).ok()).clone();
                        let _ = c.compiled.set(compiled);
                    }
                }
            }
        }
        let invariant_count = cache.values().filter(|c| c.is_some()).count();
        Ok(Validator { model: Arc::new(model), fp_model: Arc::new(fp_model), invariant_count })
    }

    /// Validate a resource against the core definition of its type.
    pub fn validate(&self, res: &Value) -> OperationOutcome {
        let mut w = Walk { v: self, model: &self.model, oo: OperationOutcome::new(), root: res, resources: vec![], roots: vec![] };
        w.resource(res, "", 0, false);
        w.oo
    }

    /// Number of compiled invariant expressions.
    pub fn invariant_count(&self) -> usize {
        self.invariant_count
    }
}

fn push(oo: &mut OperationOutcome, sev: Severity, code: IssueType, path: &str, msg: String) {
    oo.push(sev, code, msg, Some(path.to_owned()));
}

impl<'m, 'v> Walk<'m, 'v> {
    fn err(&mut self, code: IssueType, path: &str, msg: String) {
        push(&mut self.oo, Severity::Error, code, path, msg);
    }

    /// A resource at `path` (empty for the root).
    fn resource(&mut self, v: &'v Value, path: &str, depth: usize, contained: bool) {
        if depth > MAX_DEPTH {
            self.err(IssueType::TooCostly, path, "resources nested too deeply".into());
            return;
        }
        let Some(obj) = v.as_object() else {
            self.err(IssueType::Structure, path, format!("a resource must be a JSON object, not {}", primitives::kind(v)));
            return;
        };
        let Some(rt) = obj.get("resourceType").and_then(Value::as_str) else {
            self.err(IssueType::Required, path, "resourceType is missing".into());
            return;
        };
        let Some(sd) = self.model.type_def(rt).filter(|sd| sd.kind == "resource" && !sd.is_abstract) else {
            self.err(IssueType::Value, path, format!("unknown resource type '{rt}'"));
            return;
        };
        let sd = sd.clone();
        let here = if path.is_empty() { rt.to_owned() } else { path.to_owned() };
        if let Some(id) = obj.get("id").and_then(Value::as_str) {
            if !crate::fhir::is_valid_id(id) {
                let why = if id.len() > 64 { format!("Too long ({} chars)", id.len()) } else { format!("Invalid Characters ('{id}')") };
                self.err(IssueType::Value, &format!("{here}.id"), format!("Invalid Resource id: {why}"));
            }
        }
        let root = if contained { self.roots.last().copied().unwrap_or(v) } else { v };
        self.resources.push(v);
        self.roots.push(root);
        self.object(&sd, 0, v, &here, true, depth, rt);
        self.resources.pop();
        self.roots.pop();
    }

    /// Evaluate the invariants of element `ei` on `node` (typed as `type_name`).
    fn invariants(&mut self, sd: &StructDef, ei: usize, node: &'v Value, type_name: &str, path: &str) {
        let e = &sd.elements[ei];
        if e.constraints.iter().all(|c| c.key == "ele-1") {
            return;
        }
        let resource = self.resources.last().copied().unwrap_or(self.root);
        let mut ctx = EvalContext::new(&self.v.fp_model, resource);
        ctx.root_resource = Some(self.roots.last().copied().unwrap_or(self.root));
        for c in &e.constraints {
            let Some(Some(expr)) = c.compiled.get() else { continue };
            if let Ok(Some(false)) = expr.evaluate_bool_typed(node, type_name, &ctx) {
                let sev = if c.severity_error { Severity::Error } else { Severity::Warning };
                push(&mut self.oo, sev, IssueType::Invariant, path, format!("Constraint failed: {}: '{}' (defined in {})", c.key, c.human, sd.url));
            }
        }
    }

    /// The properties of a JSON object against element `ei` of `sd`.
    #[allow(clippy::too_many_arguments)]
    fn object(&mut self, sd: &Arc<StructDef>, ei: usize, node: &'v Value, path: &str, is_resource: bool, depth: usize, type_name: &str) {
        let Some(obj) = node.as_object() else { return };
        if obj.is_empty() {
            self.err(IssueType::Structure, path, "empty objects are not allowed; omit the element".into());
            return;
        }
        self.invariants(sd, ei, node, type_name, path);
        let props = &sd.props[ei];
        let mut counts: Vec<(usize, usize)> = Vec::new(); // (child element, occurrences)
        for (k, val) in obj {
            if is_resource && k == "resourceType" {
                continue;
            }
            let (key, companion) = match k.strip_prefix('_') {
                Some(base) => (base, true),
                None => (k.as_str(), false),
            };
            let Some(&(ci, ti)) = props.get(key) else {
                self.err(IssueType::Structure, &format!("{path}.{k}"), format!("Unrecognized property '{k}' (not an element of {})", sd.elements[ei].path));
                continue;
            };
            let child = &sd.elements[ci];
            let ty = match ti {
                Some(t) => child.types.get(t),
                None => child.types.first(),
            };
            let type_code = ty.map(|t| t.code.as_str()).unwrap_or("");
            let is_prim = self.model.is_primitive(type_code);
            if companion && !is_prim {
                self.err(IssueType::Structure, &format!("{path}.{k}"), format!("'{k}' is only allowed for primitive elements"));
                continue;
            }
            let many = child.max.allows_many();
            let here = format!("{path}.{key}");
            let n = match val {
                Value::Array(items) => {
                    if !many {
                        self.err(IssueType::Structure, &here, format!("{} is not repeating; expected a single value, found an array", child.path));
                    }
                    if items.is_empty() {
                        self.err(IssueType::Structure, &here, "Array cannot be empty - the property should not be present if it has no values".into());
                    }
                    for (i, item) in items.iter().enumerate() {
                        let p = if many { format!("{here}[{i}]") } else { here.clone() };
                        if item.is_null() {
                            // allowed only as a placeholder aligned with the `_x` companion
                            continue;
                        }
                        self.value(sd, ci, type_code, is_prim, companion, item, &p, depth);
                    }
                    items.iter().filter(|x| !x.is_null()).count()
                }
                Value::Null => {
                    self.err(IssueType::Structure, &here, "null is not allowed; omit the element".into());
                    0
                }
                single => {
                    if many {
                        self.err(IssueType::Structure, &here, format!("{} repeats; expected an array", child.path));
                    }
                    self.value(sd, ci, type_code, is_prim, companion, single, &here, depth);
                    1
                }
            };
            // value and its companion count once
            match counts.iter_mut().find(|(c, _)| *c == ci) {
                Some((_, m)) => *m = (*m).max(n),
                None => counts.push((ci, n)),
            }
        }
        // cardinality
        for &ci in &sd.children[ei] {
            let e = &sd.elements[ci];
            let n = counts.iter().find(|(c, _)| *c == ci).map_or(0, |(_, m)| *m);
            if (n as u32) < e.min {
                self.err(
                    IssueType::Required,
                    path,
                    format!("{}: minimum required = {}, but only found {n} (from {})", e.path, e.min, sd.url),
                );
            }
            if let Max::N(m) = e.max {
                if n as u32 > m && m > 1 {
                    self.err(IssueType::Structure, path, format!("{}: max allowed = {m}, but found {n} (from {})", e.path, sd.url));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn value(&mut self, sd: &Arc<StructDef>, ci: usize, type_code: &str, is_prim: bool, companion: bool, v: &'v Value, path: &str, depth: usize) {
        let e = &sd.elements[ci];
        if companion {
            // `_x`: an Element (id, extension)
            match v.as_object() {
                Some(o) => {
                    if let Some(el) = self.model.type_def("Element").cloned() {
                        self.object(&el, 0, v, path, false, depth, "Element");
                    } else if o.is_empty() {
                        self.err(IssueType::Structure, path, "empty objects are not allowed".into());
                    }
                }
                None => self.err(IssueType::Structure, path, format!("'_' companion must be an object, not {}", primitives::kind(v))),
            }
            return;
        }
        if is_prim {
            if let Err(m) = primitives::check(type_code, v) {
                self.err(IssueType::Value, path, format!("{}: {m}", e.path));
            } else if let (Some(max), Some(s)) = (e.max_length, v.as_str()) {
                if s.chars().count() > max {
                    self.err(IssueType::TooLong, path, format!("{}: longer than maxLength {max}", e.path));
                }
            }
            return;
        }
        if let Some(r) = e.content_ref {
            match v.as_object() {
                Some(_) => {
                    let tn = sd.elements[r].path.clone();
                    self.object(sd, r, v, path, false, depth + 1, &tn)
                }
                None => self.err(IssueType::Structure, path, format!("{} must be an object", e.path)),
            }
            return;
        }
        if type_code == "Resource" || self.model.is_resource_type(type_code) {
            let contained = e.path.ends_with(".contained");
            self.resource(v, path, depth + 1, contained);
            return;
        }
        let Some(o) = v.as_object() else {
            self.err(IssueType::Structure, path, format!("{} ({type_code}) must be a JSON object, not {}", e.path, primitives::kind(v)));
            return;
        };
        if !sd.children[ci].is_empty() {
            // backbone element defined inline
            let tn = e.path.clone();
            self.object(sd, ci, v, path, false, depth + 1, &tn);
        } else if let Some(tsd) = self.model.type_def(type_code).cloned() {
            if type_code == "Reference" {
                self.reference(e, o, path);
            }
            if type_code == "Narrative" {
                self.narrative(o, path);
            }
            // element-specific constraints of the using element, then the datatype's own
            self.invariants(sd, ci, v, type_code, path);
            self.object(&tsd, 0, v, path, false, depth + 1, type_code);
        }
    }

    fn reference(&mut self, e: &model::Element, o: &serde_json::Map<String, Value>, path: &str) {
        let Some(r) = o.get("reference").and_then(Value::as_str) else { return };
        if r.starts_with('#') || r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
            return;
        }
        let (t, id) = crate::fhir::reference::parse(r);
        if r.contains('?') {
            return; // conditional reference, resolved at write time
        }
        match (t, id) {
            (Some(t), Some(_)) => {
                if !self.model.is_resource_type(&t) {
                    self.err(IssueType::Value, &format!("{path}.reference"), format!("reference '{r}' names unknown resource type '{t}'"));
                    return;
                }
                let targets: Vec<&str> = e.types.iter().flat_map(|ty| ty.target_profiles.iter()).map(|p| p.rsplit('/').next().unwrap_or(p)).collect();
                if !targets.is_empty() && !targets.contains(&"Resource") && !targets.contains(&t.as_str()) {
                    self.err(
                        IssueType::Structure,
                        &format!("{path}.reference"),
                        format!("{}: reference to {t} is not allowed (allowed: {})", e.path, targets.join(", ")),
                    );
                }
            }
            _ if r.contains("://") => {}
            _ => self.err(IssueType::Value, &format!("{path}.reference"), format!("'{r}' is not a valid reference (Type/id, absolute URL, #id or urn)")),
        }
    }

    fn narrative(&mut self, o: &serde_json::Map<String, Value>, path: &str) {
        if let Some(div) = o.get("div").and_then(Value::as_str) {
            let t = div.trim_start();
            if !(t.starts_with("<div") && t.contains("http://www.w3.org/1999/xhtml")) {
                self.err(IssueType::Value, &format!("{path}.div"), "Narrative.div must be an XHTML <div> in the http://www.w3.org/1999/xhtml namespace".into());
            }
        }
    }
}
