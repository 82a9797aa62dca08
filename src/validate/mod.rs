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
//! Not yet here (the validation issue continues): FHIRPath invariants,
//! regional profiles with snapshot generation and slicing, fixed/pattern and
//! binding checks against profiles, terminology.

pub mod model;
pub mod primitives;

use crate::fhir::definitions::{DefinitionsError, CORE_PACKAGE};
use crate::fhir::{IssueType, OperationOutcome, Severity};
use model::{Max, Model, StructDef};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Definitions(#[from] DefinitionsError),
}

/// The validator: compiled definitions, shared and immutable.
#[derive(Clone)]
pub struct Validator {
    pub model: Arc<Model>,
}

/// How deep nested resources may go before we stop (a guard against hostile input).
const MAX_DEPTH: usize = 64;

struct Walk<'m> {
    model: &'m Model,
    oo: OperationOutcome,
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
        Ok(Validator { model: Arc::new(model) })
    }

    /// Validate a resource against the core definition of its type.
    pub fn validate(&self, res: &Value) -> OperationOutcome {
        let mut w = Walk { model: &self.model, oo: OperationOutcome::new() };
        w.resource(res, "", 0);
        w.oo
    }
}

fn push(oo: &mut OperationOutcome, sev: Severity, code: IssueType, path: &str, msg: String) {
    oo.push(sev, code, msg, Some(path.to_owned()));
}

impl<'m> Walk<'m> {
    fn err(&mut self, code: IssueType, path: &str, msg: String) {
        push(&mut self.oo, Severity::Error, code, path, msg);
    }

    /// A resource at `path` (empty for the root).
    fn resource(&mut self, v: &Value, path: &str, depth: usize) {
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
        self.object(&sd, 0, obj, &here, true, depth);
    }

    /// The properties of a JSON object against element `ei` of `sd`.
    fn object(&mut self, sd: &Arc<StructDef>, ei: usize, obj: &Map<String, Value>, path: &str, is_resource: bool, depth: usize) {
        if obj.is_empty() {
            self.err(IssueType::Structure, path, "empty objects are not allowed; omit the element".into());
            return;
        }
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
    fn value(&mut self, sd: &Arc<StructDef>, ci: usize, type_code: &str, is_prim: bool, companion: bool, v: &Value, path: &str, depth: usize) {
        let e = &sd.elements[ci];
        if companion {
            // `_x`: an Element (id, extension)
            match v.as_object() {
                Some(o) => {
                    if let Some(el) = self.model.type_def("Element").cloned() {
                        self.object(&el, 0, o, path, false, depth);
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
                Some(o) => self.object(sd, r, o, path, false, depth + 1),
                None => self.err(IssueType::Structure, path, format!("{} must be an object", e.path)),
            }
            return;
        }
        if type_code == "Resource" || self.model.is_resource_type(type_code) {
            self.resource(v, path, depth + 1);
            return;
        }
        let Some(o) = v.as_object() else {
            self.err(IssueType::Structure, path, format!("{} ({type_code}) must be a JSON object, not {}", e.path, primitives::kind(v)));
            return;
        };
        if !sd.children[ci].is_empty() {
            // backbone element defined inline
            self.object(sd, ci, o, path, false, depth + 1);
        } else if let Some(tsd) = self.model.type_def(type_code).cloned() {
            if type_code == "Reference" {
                self.reference(e, o, path);
            }
            if type_code == "Narrative" {
                self.narrative(o, path);
            }
            self.object(&tsd, 0, o, path, false, depth + 1);
        }
    }

    fn reference(&mut self, e: &model::Element, o: &Map<String, Value>, path: &str) {
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

    fn narrative(&mut self, o: &Map<String, Value>, path: &str) {
        if let Some(div) = o.get("div").and_then(Value::as_str) {
            let t = div.trim_start();
            if !(t.starts_with("<div") && t.contains("http://www.w3.org/1999/xhtml")) {
                self.err(IssueType::Value, &format!("{path}.div"), "Narrative.div must be an XHTML <div> in the http://www.w3.org/1999/xhtml namespace".into());
            }
        }
    }
}
