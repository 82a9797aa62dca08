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
//! Profiles (R4 `profiling.html`): constrained StructureDefinitions with a
//! snapshot are registered with [`Validator::add_profile`]; a resource is
//! checked against core, against each profile named in `meta.profile` that is
//! known (unknown: a warning) and against the profiles the caller names
//! ([`Validator::validate_with_profiles`]; unknown: an error). A profile walk
//! reports only what the profile adds over core (tightened cardinality, type
//! restrictions, fixed/pattern, bindings, slices, its own invariants), so an
//! instance error is reported once. Slicing: discriminators value, pattern,
//! exists, type and profile (`slicing.rs`); rules closed/open/openAtEnd;
//! ordered. Extensions resolve by url to their definition (core, the
//! extensions package, added profiles); an unknown absolute extension url is
//! an error, as in the HL7 validator. Bindings: `terminology.rs`.

pub mod model;
pub mod primitives;
pub mod packs;
pub mod slicing;
pub mod snapshot;
pub mod terminology;
#[cfg(test)]
mod tests;

use crate::fhir::definitions::{DefinitionsError, CORE_PACKAGE};
use crate::fhir::{IssueType, OperationOutcome, Severity};
use crate::fhirpath::{self, EvalContext, Expression, ModelInfo};
use model::{Max, Model, StructDef};
use rustc_hash::FxHashMap;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use terminology::Terminology;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Definitions(#[from] DefinitionsError),
    #[error("FHIRPath model: {0}")]
    FhirPath(String),
    #[error("StructureDefinition {0} has no snapshot (generate it first)")]
    NoSnapshot(String),
    #[error("not a usable StructureDefinition: {0}")]
    BadProfile(String),
}

/// The extensions package (`hl7.fhir.uv.extensions.r4`), read lazily by url.
const EXTENSIONS_PREFIX: &str = "hl7.fhir.uv.extensions.r4#";

/// The validator: compiled definitions and invariants, shared and immutable
/// once built (profiles are added before it is shared).
#[derive(Clone)]
pub struct Validator {
    pub model: Arc<Model>,
    fp_model: Arc<ModelInfo>,
    invariant_count: usize,
    pub terminology: Arc<Terminology>,
    ext_dir: Option<PathBuf>,
    ext_cache: Arc<RwLock<FxHashMap<String, Option<Arc<StructDef>>>>>,
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
    /// walking against a profile (url): only what the profile adds over core is reported
    profile: Option<String>,
    /// Bundle entry resources are validated separately (in parallel)
    skip_entry_resources: bool,
}

/// A Bundle with at least this many entries validates its entries on all cores.
const PARALLEL_ENTRIES: usize = 32;

/// Compile the invariants of a definition (identical expressions share one compilation).
fn compile_invariants(sd: &StructDef, cache: &mut HashMap<String, Option<Expression>>) {
    for e in &sd.elements {
        for c in e.constraints.iter().filter(|c| c.key != "ele-1") {
            if let Some(x) = &c.expression {
                let compiled = cache.entry(x.clone()).or_insert_with(|| fhirpath::compile(x).ok()).clone();
                let _ = c.compiled.set(compiled);
            }
        }
    }
}

impl Validator {
    /// The FHIRPath type model the validator evaluates invariants with (shared).
    pub fn fhirpath_model(&self) -> Arc<ModelInfo> {
        self.fp_model.clone()
    }

    /// Load the core package from the cache (about 20 MB of snapshots).
    pub fn load(cache: &Path) -> Result<Self, ValidateError> {
        let mut model = Model::default();
        let dir = cache.join(CORE_PACKAGE).join("package");
        if !dir.join(".index.json").exists() {
            return Err(DefinitionsError::MissingPackage(CORE_PACKAGE.into(), cache.display().to_string()).into());
        }
        model.add_package(&dir)?;
        let fp_model = ModelInfo::load_from_package(&dir).map_err(|e| ValidateError::FhirPath(e.to_string()))?;
        let mut exprs: HashMap<String, Option<Expression>> = HashMap::new();
        for sd in model.by_url.values() {
            compile_invariants(sd, &mut exprs);
        }
        let invariant_count = exprs.values().filter(|c| c.is_some()).count();
        let ext_dir = std::fs::read_dir(cache).ok().and_then(|rd| {
            rd.flatten().map(|e| e.path()).find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(EXTENSIONS_PREFIX)))
        });
        Ok(Validator {
            model: Arc::new(model),
            fp_model: Arc::new(fp_model),
            invariant_count,
            terminology: Arc::new(Terminology::load(cache)),
            ext_dir: ext_dir.map(|d| d.join("package")),
            ext_cache: Arc::default(),
        })
    }

    /// Register a constrained StructureDefinition (with snapshot) by its canonical url
    /// (and `url|version`). Returns the url.
    pub fn add_profile(&mut self, sd: &Value) -> Result<String, ValidateError> {
        let url = sd.get("url").and_then(Value::as_str).unwrap_or("(no url)").to_owned();
        if sd.get("resourceType").and_then(Value::as_str) != Some("StructureDefinition") {
            return Err(ValidateError::BadProfile(url));
        }
        if sd.pointer("/snapshot/element").is_none() {
            return Err(ValidateError::NoSnapshot(url));
        }
        let compiled = StructDef::compile(sd).ok_or_else(|| ValidateError::BadProfile(url.clone()))?;
        compile_invariants(&compiled, &mut HashMap::new());
        let model = Arc::make_mut(&mut self.model);
        if compiled.derivation == "constraint" || !model.by_type.contains_key(&compiled.type_name) {
            // a profile never replaces the core definition of its type
            let arc = Arc::new(compiled);
            if let Some(v) = &arc.version {
                model.by_url.insert(format!("{url}|{v}"), arc.clone());
            }
            model.by_url.insert(url.clone(), arc);
        } else {
            model.insert(compiled);
        }
        Ok(url)
    }

    /// Register a conformance resource: a StructureDefinition with snapshot (as
    /// [`add_profile`](Self::add_profile)), a ValueSet, CodeSystem, Questionnaire
    /// or any resource with a `url`; a Bundle registers its entries.
    pub fn add_definition(&mut self, res: &Value) -> Result<(), ValidateError> {
        match res.get("resourceType").and_then(Value::as_str) {
            Some("StructureDefinition") => self.add_profile(res).map(|_| ()),
            Some("Bundle") => {
                for e in res.get("entry").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(r) = e.get("resource") {
                        self.add_definition(r)?;
                    }
                }
                Ok(())
            }
            _ => {
                if Arc::get_mut(&mut self.terminology).is_none() {
                    self.terminology = Arc::new(self.terminology.fork());
                }
                self.terminology.add(res);
                Ok(())
            }
        }
    }

    /// A StructureDefinition by canonical url: loaded packages, added profiles, the extensions package.
    pub fn definition(&self, url: &str) -> Option<Arc<StructDef>> {
        if let Some(sd) = self.model.by_canonical(url) {
            return Some(sd.clone());
        }
        let url = url.split('|').next().unwrap_or(url);
        if let Some(c) = self.ext_cache.read().unwrap_or_else(|e| e.into_inner()).get(url) {
            return c.clone();
        }
        let found = self.ext_dir.as_ref().and_then(|dir| {
            let id = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/")?;
            let raw = std::fs::read(dir.join(format!("StructureDefinition-{id}.json"))).ok()?;
            let v: Value = serde_json::from_slice(&raw).ok()?;
            let sd = StructDef::compile(&v).filter(|sd| sd.url == url)?;
            compile_invariants(&sd, &mut HashMap::new());
            Some(Arc::new(sd))
        });
        self.ext_cache.write().unwrap_or_else(|e| e.into_inner()).insert(url.to_owned(), found.clone());
        found
    }

    /// Validate a resource against the core definition of its type and the
    /// known profiles of its `meta.profile`.
    pub fn validate(&self, res: &Value) -> OperationOutcome {
        self.validate_with_profiles(res, &[])
    }

    /// Validate against core, `meta.profile`, and each of `profiles` (canonical
    /// url, optionally `|version`); an unknown profile is an error issue naming it.
    pub fn validate_with_profiles(&self, res: &Value, profiles: &[&str]) -> OperationOutcome {
        self.validate_opts(res, profiles, true)
    }

    /// [`validate_with_profiles`](Self::validate_with_profiles) on the calling thread only.
    pub fn validate_single_threaded(&self, res: &Value, profiles: &[&str]) -> OperationOutcome {
        self.validate_opts(res, profiles, false)
    }

    fn validate_opts(&self, res: &Value, profiles: &[&str], parallel: bool) -> OperationOutcome {
        let entries = res.get("entry").and_then(Value::as_array).filter(|_| res.get("resourceType").and_then(Value::as_str) == Some("Bundle"));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let split = parallel && threads > 1 && entries.is_some_and(|e| e.len() >= PARALLEL_ENTRIES);
        let mut w = Walk {
            v: self,
            model: &self.model,
            oo: OperationOutcome::new(),
            root: res,
            resources: vec![],
            roots: vec![],
            profile: None,
            skip_entry_resources: split,
        };
        w.resource(res, "", 0, false);
        if let (true, Some(entries)) = (split, entries) {
            // the entries' resources on all cores, issues merged in entry order
            let chunk = entries.len().div_ceil(threads);
            let parts: Vec<OperationOutcome> = std::thread::scope(|s| {
                let handles: Vec<_> = entries
                    .chunks(chunk)
                    .enumerate()
                    .map(|(ci, part)| {
                        s.spawn(move || {
                            let mut oo = OperationOutcome::new();
                            for (j, e) in part.iter().enumerate() {
                                let Some(r) = e.get("resource") else { continue };
                                let mut ew = Walk {
                                    v: self,
                                    model: &self.model,
                                    oo: OperationOutcome::new(),
                                    root: r,
                                    resources: vec![],
                                    roots: vec![],
                                    profile: None,
                                    skip_entry_resources: false,
                                };
                                ew.resource(r, &format!("Bundle.entry[{}].resource", ci * chunk + j), 1, false);
                                oo.issues.append(&mut ew.oo.issues);
                            }
                            oo
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
            });
            for mut p in parts {
                w.oo.issues.append(&mut p.issues);
            }
        }
        let rt = res.get("resourceType").and_then(Value::as_str).unwrap_or("");
        for p in profiles {
            let declared = res.pointer("/meta/profile").and_then(Value::as_array).is_some_and(|a| a.iter().any(|x| x.as_str() == Some(p)));
            if declared {
                continue; // already checked through meta.profile
            }
            match self.definition(p) {
                Some(sd) if sd.type_name == rt => w.profile_walk(&sd, res, rt, 0),
                Some(sd) => w.err(IssueType::Invalid, rt, format!("Profile {p} is for type {}, not {rt}", sd.type_name)),
                None => w.err(IssueType::NotFound, rt, format!("Profile reference '{p}' could not be resolved, so has not been checked")),
            }
        }
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

/// The JSON text of a value for messages (short).
fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    if s.len() > 200 {
        format!("{}…", &s[..s.floor_char_boundary(200)])
    } else {
        s
    }
}

impl<'m, 'v> Walk<'m, 'v> {
    fn err(&mut self, code: IssueType, path: &str, msg: String) {
        push(&mut self.oo, Severity::Error, code, path, msg);
    }

    fn warn(&mut self, code: IssueType, path: &str, msg: String) {
        push(&mut self.oo, Severity::Warning, code, path, msg);
    }

    fn in_profile(&self) -> bool {
        self.profile.is_some()
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
        // the profiles the resource claims
        for p in obj.get("meta").and_then(|m| m.get("profile")).and_then(Value::as_array).into_iter().flatten() {
            let Some(p) = p.as_str() else { continue };
            match self.v.definition(p) {
                Some(psd) if psd.type_name == rt && psd.url != sd.url => {
                    let saved = (self.resources.len(), self.roots.len());
                    self.resources.push(v);
                    self.roots.push(root);
                    self.profile_walk_inner(&psd, v, &here, depth, rt);
                    self.resources.truncate(saved.0);
                    self.roots.truncate(saved.1);
                }
                Some(_) => {}
                None => self.warn(
                    IssueType::NotFound,
                    &format!("{here}.meta.profile"),
                    format!("Profile reference '{p}' has not been checked because it is unknown"),
                ),
            }
        }
    }

    /// Walk `v` (a resource at the root) against profile `sd`.
    fn profile_walk(&mut self, sd: &Arc<StructDef>, v: &'v Value, rt: &str, depth: usize) {
        self.resources.push(v);
        self.roots.push(v);
        self.profile_walk_inner(sd, v, rt, depth, rt);
        self.resources.pop();
        self.roots.pop();
    }

    fn profile_walk_inner(&mut self, sd: &Arc<StructDef>, v: &'v Value, path: &str, depth: usize, type_name: &str) {
        let saved = self.profile.replace(sd.url.clone());
        self.object(sd, 0, v, path, true, depth, type_name);
        self.profile = saved;
    }

    /// Whether `v` conforms to profile `url` (no errors), for `profile` discriminators.
    fn conforms(&self, v: &'v Value, url: &str, type_name: &str) -> bool {
        let Some(sd) = self.v.definition(url) else { return false };
        let mut w = Walk {
            v: self.v,
            model: self.model,
            oo: OperationOutcome::new(),
            root: self.root,
            resources: self.resources.clone(),
            roots: self.roots.clone(),
            profile: None,
            skip_entry_resources: false,
        };
        if v.get("resourceType").is_some() {
            w.resources.push(v);
            w.roots.push(v);
        }
        w.profile_walk_inner(&sd, v, type_name, 0, type_name);
        !w.oo.has_errors()
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
            // on a profile walk only the profile's own invariants (core ones ran on the core walk)
            if self.in_profile() && c.source.as_deref().is_none_or(|s| s.starts_with("http://hl7.org/fhir/StructureDefinition/")) {
                continue;
            }
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
        let profile = self.in_profile();
        if obj.is_empty() {
            if !profile {
                self.err(IssueType::Structure, path, "empty objects are not allowed; omit the element".into());
            }
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
                if !profile {
                    self.err(IssueType::Structure, &format!("{path}.{k}"), format!("Unrecognized property '{k}' (not an element of {})", sd.elements[ei].path));
                } else if let Some(&c) = sd.children[ei].iter().find(|&&c| sd.elements[c].choice && key.starts_with(&sd.elements[c].name)) {
                    let e = &sd.elements[c];
                    let allowed: Vec<&str> = e.types.iter().map(|t| t.code.as_str()).collect();
                    let suffix = &key[e.name.len()..];
                    let lower = suffix[..1].to_lowercase() + &suffix[1..];
                    let shown = if self.model.is_primitive(&lower) { lower } else { suffix.to_owned() };
                    self.err(
                        IssueType::Structure,
                        &format!("{path}.{k}"),
                        format!("{}: type {shown} is not allowed by profile {} (allowed: {})", e.path, sd.url, allowed.join(", ")),
                    );
                    // present, though of the wrong type: no cardinality error besides
                    if !counts.iter().any(|(x, _)| *x == c) {
                        counts.push((c, 1));
                    }
                }
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
                if !profile {
                    self.err(IssueType::Structure, &format!("{path}.{k}"), format!("'{k}' is only allowed for primitive elements"));
                }
                continue;
            }
            let many = child.max.allows_many() || child.base_max.allows_many();
            let here = format!("{path}.{key}");
            let sliced = !companion && !sd.slices[ci].is_empty();
            let n = match val {
                Value::Array(items) => {
                    if !profile {
                        if !many {
                            self.err(IssueType::Structure, &here, format!("{} is not repeating; expected a single value, found an array", child.path));
                        }
                        if items.is_empty() {
                            self.err(IssueType::Structure, &here, "Array cannot be empty - the property should not be present if it has no values".into());
                        }
                    }
                    if sliced {
                        self.sliced(sd, ci, type_code, is_prim, items, &here, many, depth);
                    } else {
                        for (i, item) in items.iter().enumerate() {
                            let p = if many { format!("{here}[{i}]") } else { here.clone() };
                            if item.is_null() {
                                // allowed only as a placeholder aligned with the `_x` companion
                                continue;
                            }
                            self.value(sd, ci, type_code, is_prim, companion, item, &p, depth);
                        }
                    }
                    items.iter().filter(|x| !x.is_null()).count()
                }
                Value::Null => {
                    if !profile {
                        self.err(IssueType::Structure, &here, "null is not allowed; omit the element".into());
                    }
                    0
                }
                single => {
                    if many && !profile {
                        self.err(IssueType::Structure, &here, format!("{} repeats; expected an array", child.path));
                    }
                    if sliced {
                        self.sliced(sd, ci, type_code, is_prim, std::slice::from_ref(single), &here, false, depth);
                    } else {
                        self.value(sd, ci, type_code, is_prim, companion, single, &here, depth);
                    }
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
            let n = counts.iter().find(|(c, _)| *c == ci).map_or(0, |(_, m)| *m) as u32;
            let base_violated_min = profile && n < e.base_min;
            if n < e.min && !base_violated_min {
                self.err(IssueType::Required, path, format!("{}: minimum required = {}, but only found {n} (from {})", e.path, e.min, sd.url));
            }
            if let Max::N(m) = e.max {
                let report = if profile { !matches!(e.base_max, Max::N(b) if n > b) } else { m > 1 };
                if n > m && report {
                    self.err(IssueType::Structure, path, format!("{}: max allowed = {m}, but found {n} (from {})", e.path, sd.url));
                }
            }
        }
    }

    /// Items of a sliced element: each goes to the first slice its
    /// discriminators match; then slice cardinalities, closed and ordered rules.
    #[allow(clippy::too_many_arguments)]
    fn sliced(&mut self, sd: &Arc<StructDef>, ci: usize, type_code: &str, is_prim: bool, items: &'v [Value], here: &str, many: bool, depth: usize) {
        let e = &sd.elements[ci];
        let slicing = e.slicing.clone().unwrap_or(model::Slicing { discriminators: vec![], ordered: false, rules: "open".into() });
        let slices = sd.slices[ci].clone();
        let mut counts = vec![0u32; slices.len()];
        let mut last_slice = 0usize;
        let mut unmatched_seen = false;
        for (i, item) in items.iter().enumerate() {
            if item.is_null() {
                continue;
            }
            let p = if many { format!("{here}[{i}]") } else { here.to_owned() };
            let matched = slices.iter().position(|&s| self.slice_matches(sd, s, &slicing, item, type_code));
            match matched {
                Some(si) => {
                    counts[si] += 1;
                    if slicing.ordered && si < last_slice {
                        self.err(IssueType::Structure, &p, format!("As specified by profile {}, Element '{}' is out of order", sd.url, sd.elements[slices[si]].id));
                    }
                    if slicing.rules == "openAtEnd" && unmatched_seen {
                        self.err(IssueType::Structure, &p, format!("{}: slice items must come before the open part (openAtEnd, profile {})", e.path, sd.url));
                    }
                    last_slice = si;
                    self.value(sd, slices[si], type_code, is_prim, false, item, &p, depth);
                }
                None => {
                    unmatched_seen = true;
                    if slicing.rules == "closed" {
                        self.err(IssueType::Structure, &p, format!("This element does not match any known slice defined in the profile {}", sd.url));
                    }
                    self.value(sd, ci, type_code, is_prim, false, item, &p, depth);
                }
            }
        }
        for (si, &s) in slices.iter().enumerate() {
            let se = &sd.elements[s];
            let n = counts[si];
            if n < se.min {
                self.err(IssueType::Structure, here, format!("Slice '{}': a matching slice is required, but not found (from {})", se.id, sd.url));
            }
            if let Max::N(m) = se.max {
                if n > m {
                    self.err(IssueType::Structure, here, format!("{}: max allowed = {m}, but found {n} (from {})", se.id, sd.url));
                }
            }
        }
    }

    /// Whether `item` belongs to slice `s` (all discriminators agree).
    fn slice_matches(&self, sd: &StructDef, s: usize, slicing: &model::Slicing, item: &'v Value, type_code: &str) -> bool {
        let se = &sd.elements[s];
        let ds: Vec<model::Discriminator> = if slicing.discriminators.is_empty() {
            // extensions are sliced by url even where the slicing says nothing
            vec![model::Discriminator { kind: "value".into(), path: "url".into() }]
        } else {
            slicing.discriminators.clone()
        };
        for d in &ds {
            let steps = slicing::parse_path(&d.path);
            let Some(found) = slicing::eval(item, &steps) else { return false };
            let (pe, rest) = slicing::profile_element(sd, s, &steps);
            let pel = &sd.elements[pe];
            let ok = match d.kind.as_str() {
                "value" | "pattern" => {
                    let expected = if rest.is_empty() {
                        pel.fixed.clone().or_else(|| pel.pattern.clone()).or_else(|| {
                            // extension slice defined by its profile: the url is the profile's url
                            (steps == [slicing::Step::Name("url".into())])
                                .then(|| se.types.iter().flat_map(|t| t.profiles.iter()).next().map(|p| Value::String(p.clone())))
                                .flatten()
                        })
                    } else {
                        // look into the fixed/pattern value of an ancestor
                        pel.fixed.as_ref().or(pel.pattern.as_ref()).and_then(|v| {
                            let r = slicing::eval(v, rest)?;
                            r.first().map(|(x, _)| (*x).clone())
                        })
                    };
                    match (expected, d.path.as_str()) {
                        (Some(exp), _) => found.iter().any(|(x, _)| slicing::matches_pattern(&exp, x)),
                        (None, "url") if se.path.ends_with("xtension") => {
                            // no fixed url: match by slice name is impossible; treat as not matching
                            false
                        }
                        (None, _) => {
                            // a binding-discriminated or unconstrained value: cannot decide → the pattern
                            // of the slice itself, if any
                            match se.pattern.as_ref().or(se.fixed.as_ref()) {
                                Some(p) => slicing::matches_pattern(p, item),
                                None => false,
                            }
                        }
                    }
                }
                "exists" => {
                    // the slice requires the element (min ≥ 1) or forbids it (max = 0)
                    let want = !rest.is_empty() || !matches!(pel.max, Max::N(0));
                    want != found.is_empty()
                }
                "type" => {
                    let actual: Option<String> = found.first().map(|(x, t)| {
                        t.map(str::to_owned).or_else(|| x.get("resourceType").and_then(Value::as_str).map(str::to_owned)).unwrap_or_else(|| type_code.to_owned())
                    });
                    match actual {
                        Some(a) => pel.types.iter().any(|t| t.code.eq_ignore_ascii_case(&a)),
                        None => false,
                    }
                }
                "profile" => {
                    let profiles: Vec<&String> = pel.types.iter().flat_map(|t| t.profiles.iter().chain(t.target_profiles.iter())).collect();
                    match found.first() {
                        Some((x, _)) => {
                            let tn = x.get("resourceType").and_then(Value::as_str).unwrap_or(type_code);
                            profiles.iter().any(|p| self.conforms(x, p, tn))
                        }
                        None => false,
                    }
                }
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn value(&mut self, sd: &Arc<StructDef>, ci: usize, type_code: &str, is_prim: bool, companion: bool, v: &'v Value, path: &str, depth: usize) {
        let e = &sd.elements[ci];
        let profile = self.in_profile();
        if companion {
            // `_x`: an Element (id, extension)
            if profile {
                return;
            }
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
        self.rules(sd, ci, type_code, v, path);
        if is_prim {
            if profile {
                return;
            }
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
                None if !profile => self.err(IssueType::Structure, path, format!("{} must be an object", e.path)),
                None => {}
            }
            return;
        }
        if type_code == "Resource" || self.model.is_resource_type(type_code) {
            if self.skip_entry_resources && !self.in_profile() && e.path == "Bundle.entry.resource" && self.resources.len() == 1 {
                return;
            }
            if profile {
                // a nested resource with a profile on its type
                let rt = v.get("resourceType").and_then(Value::as_str).unwrap_or("");
                let urls: Vec<String> = e.types.iter().flat_map(|t| t.profiles.iter().cloned()).collect();
                for u in urls {
                    if let Some(psd) = self.v.definition(&u).filter(|p| p.type_name == rt) {
                        let (nr, nroot) = (self.resources.len(), self.roots.len());
                        self.resources.push(v);
                        self.roots.push(v);
                        let saved = self.profile.replace(psd.url.clone());
                        self.object(&psd, 0, v, path, true, depth + 1, rt);
                        self.profile = saved;
                        self.resources.truncate(nr);
                        self.roots.truncate(nroot);
                    }
                }
                return;
            }
            let contained = e.path.ends_with(".contained");
            self.resource(v, path, depth + 1, contained);
            return;
        }
        let Some(o) = v.as_object() else {
            if !profile {
                self.err(IssueType::Structure, path, format!("{} ({type_code}) must be a JSON object, not {}", e.path, primitives::kind(v)));
            }
            return;
        };
        if type_code == "Extension" && !profile {
            self.extension(sd, ci, v, path, depth);
        }
        if !sd.children[ci].is_empty() {
            // backbone element, or a datatype unrolled in a profile
            let tn = if sd.children[ci].iter().any(|&c| sd.elements[c].path.starts_with(&e.path)) && self.model.type_def(type_code).is_none() {
                e.path.clone()
            } else {
                type_code.to_owned()
            };
            if !profile && self.model.type_def(type_code).is_some() && type_code != "BackboneElement" && type_code != "Element" {
                // a core datatype seen through a profile's unrolled children: the datatype's own rules too
                if let Some(tsd) = self.model.type_def(type_code).cloned() {
                    self.object(&tsd, 0, v, path, false, depth + 1, type_code);
                    return;
                }
            }
            self.object(sd, ci, v, path, false, depth + 1, &tn);
        } else if profile {
            // a datatype with a profile on its type (not an extension: those ran on the core walk)
            if type_code != "Extension" {
                let urls: Vec<String> = e.types.iter().filter(|t| t.code == type_code).flat_map(|t| t.profiles.iter().cloned()).collect();
                for u in urls {
                    if let Some(psd) = self.v.definition(&u) {
                        let saved = self.profile.replace(psd.url.clone());
                        self.object(&psd, 0, v, path, false, depth + 1, type_code);
                        self.profile = saved;
                    }
                }
            }
            if type_code == "Reference" {
                self.reference(e, o, path);
            }
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

    /// fixed[x], pattern[x], minValue/maxValue and the binding of element `ci` on value `v`.
    fn rules(&mut self, sd: &Arc<StructDef>, ci: usize, type_code: &str, v: &'v Value, path: &str) {
        let e = &sd.elements[ci];
        if let Some(f) = &e.fixed {
            if !slicing::matches_fixed(f, v) {
                self.err(
                    IssueType::Value,
                    path,
                    format!("Value is '{}' but is fixed to '{}' in the profile {} ({})", show(v), show(f), sd.url, e.id),
                );
            }
        }
        if let Some(p) = &e.pattern {
            if !slicing::matches_pattern(p, v) {
                self.err(
                    IssueType::Value,
                    path,
                    format!("The pattern [value {}] defined in the profile {} ({}) is not matched by '{}'", show(p), sd.url, e.id, show(v)),
                );
            }
        }
        if e.min_value.is_some() || e.max_value.is_some() {
            self.min_max(sd, ci, v, path);
        }
        if let Some(b) = &e.binding {
            if let Some(vs) = &b.value_set {
                if b.strength == "required" || b.strength == "extensible" {
                    let required = b.strength == "required";
                    let vs = vs.clone();
                    self.binding(&sd.url, &e.id, required, &vs, type_code, v, path);
                }
            }
        }
        // CodeableConcept: its codings come through here as Coding
        if !self.in_profile() && matches!(type_code, "Coding" | "Quantity") {
            self.codes_known(type_code, v, path);
        }
    }

    fn min_max(&mut self, sd: &Arc<StructDef>, ci: usize, v: &'v Value, path: &str) {
        let e = &sd.elements[ci];
        let val = v.get("value").unwrap_or(v);
        let as_num = |x: &Value| x.as_f64().or_else(|| x.get("value").and_then(Value::as_f64));
        let cmp = |bound: &Value| -> Option<std::cmp::Ordering> {
            match (val, bound.get("value").unwrap_or(bound)) {
                (Value::Number(a), b) => a.as_f64()?.partial_cmp(&as_num(b)?),
                (Value::String(a), Value::String(b)) => {
                    let (ra, rb) = (crate::fhir::datetime::parse(a)?, crate::fhir::datetime::parse(b)?);
                    Some(ra.lo.cmp(&rb.lo))
                }
                _ => None,
            }
        };
        if let Some(min) = &e.min_value {
            if cmp(min) == Some(std::cmp::Ordering::Less) {
                self.err(IssueType::Value, path, format!("value {} is less than the minimum {} ({} in {})", show(val), show(min), e.id, sd.url));
            }
        }
        if let Some(max) = &e.max_value {
            if cmp(max) == Some(std::cmp::Ordering::Greater) {
                self.err(IssueType::Value, path, format!("value {} is greater than the maximum {} ({} in {})", show(val), show(max), e.id, sd.url));
            }
        }
    }

    /// Codings against the CodeSystems we hold completely: unknown code → error;
    /// UCUM units: syntax.
    fn codes_known(&mut self, type_code: &str, v: &'v Value, path: &str) {
        let check = |w: &mut Self, c: &Value, p: &str| {
            let (Some(sys), Some(code)) = (c.get("system").and_then(Value::as_str), c.get("code").and_then(Value::as_str)) else { return };
            if sys == "http://unitsofmeasure.org" {
                if !terminology::ucum_ok(code) {
                    w.err(IssueType::CodeInvalid, p, format!("The UCUM code '{code}' is not valid"));
                }
                return;
            }
            if let Some(cs) = w.v.terminology.code_system(sys).filter(|cs| cs.complete && !cs.codes.is_empty()) {
                let known = if cs.case_sensitive { cs.codes.contains_key(code) } else { cs.codes.keys().any(|k| k.eq_ignore_ascii_case(code)) };
                if !known {
                    w.err(IssueType::CodeInvalid, p, format!("Unknown code '{code}' in the CodeSystem '{sys}'"));
                }
            }
        };
        let _ = type_code;
        check(self, v, path);
    }

    /// A required (error) or extensible (warning) binding.
    #[allow(clippy::too_many_arguments)]
    fn binding(&mut self, sd_url: &str, eid: &str, required: bool, vs_url: &str, type_code: &str, v: &'v Value, path: &str) {
        let Some(set) = self.v.terminology.value_set(vs_url) else { return };
        let codings: Vec<(Option<&str>, &str)> = match (type_code, v) {
            ("code" | "string" | "uri", Value::String(s)) => vec![(None, s.as_str())],
            ("Coding" | "Quantity", o) => match o.get("code").and_then(Value::as_str) {
                Some(c) => vec![(o.get("system").and_then(Value::as_str), c)],
                None => return,
            },
            ("CodeableConcept", o) => o
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| Some((c.get("system").and_then(Value::as_str), c.get("code").and_then(Value::as_str)?)))
                .collect(),
            _ => return,
        };
        if codings.is_empty() {
            return; // text only
        }
        if codings.iter().any(|(s, c)| set.contains(*s, c)) {
            return;
        }
        let shown: Vec<String> = codings.iter().map(|(s, c)| s.map_or_else(|| c.to_string(), |s| format!("{s}#{c}"))).collect();
        let from = if self.in_profile() { format!(" (profile {sd_url}, {eid})") } else { String::new() };
        if required {
            self.err(
                IssueType::CodeInvalid,
                path,
                format!("The value provided ('{}') is not in the value set '{vs_url}', and a code is required from this value set{from}", shown.join("', '")),
            );
        } else {
            self.warn(IssueType::CodeInvalid, path, format!("None of the codes provided ('{}') are in the value set '{vs_url}' (extensible){from}", shown.join("', '")));
        }
    }

    /// An extension on the core walk: its url resolves to a definition, which must
    /// allow this context, and the extension is checked against it.
    fn extension(&mut self, sd: &Arc<StructDef>, ci: usize, v: &'v Value, path: &str, depth: usize) {
        let Some(url) = v.get("url").and_then(Value::as_str) else { return };
        if !url.contains(':') {
            return; // a sub-extension of a complex extension: checked by its parent's definition
        }
        let Some(xsd) = self.v.definition(url) else {
            // The HL7 validator (as the conformance cases show) rejects an unknown extension on a
            // primitive value and lets other unknown extensions pass with a hint.
            if sd.elements[ci].path == "Element.extension" {
                self.err(IssueType::Structure, path, format!("The extension {url} could not be found so is not allowed here"));
            } else {
                push(&mut self.oo, Severity::Information, IssueType::Informational, path, format!("The extension {url} is unknown, and not validated"));
            }
            return;
        };
        if let Some(msg) = self.context_problem(sd, ci, &xsd) {
            self.err(IssueType::Structure, path, format!("The extension {url} is not allowed to be used at this point ({msg})"));
        }
        let saved = self.profile.replace(xsd.url.clone());
        self.object(&xsd, 0, v, path, false, depth + 1, "Extension");
        self.profile = saved;
    }

    /// `StructureDefinition.context` of an extension against where it is used
    /// (element `ci` of `sd` is the `extension` element): None when allowed.
    fn context_problem(&self, sd: &StructDef, ci: usize, xsd: &StructDef) -> Option<String> {
        if xsd.contexts.is_empty() {
            return None;
        }
        let epath = &sd.elements[ci].path;
        let parent_path = epath.rsplit_once('.').map_or("", |(p, _)| p);
        // what the extension sits on: the element path, its type and the type's ancestors
        let mut here: Vec<String> = vec![parent_path.to_owned()];
        let mut ty = Some(sd.type_name.clone());
        if parent_path.contains('.') {
            // inside a backbone element of a resource: only the path names it
            ty = None;
        }
        while let Some(t) = ty {
            let next = self.model.type_def(&t).and_then(|d| d.base.as_deref()).map(|b| b.rsplit('/').next().unwrap_or(b).to_owned());
            here.push(t);
            ty = next;
        }
        if parent_path.starts_with("Element") || here.iter().any(|h| h == "Element") {
            here.push("Element".into());
        }
        for (kind, expr) in &xsd.contexts {
            match kind.as_str() {
                "element" | "" => {
                    let expr = expr.split('#').next_back().unwrap_or(expr);
                    if expr == "Element" || expr == "Base" || here.iter().any(|h| h == expr) {
                        return None;
                    }
                    // on a backbone element whose child the context names (lenient, as the HL7 validator)
                    if parent_path.contains('.') && expr.strip_prefix(parent_path).is_some_and(|r| r.starts_with('.')) {
                        return None;
                    }
                    // a primitive's companion: the element path is not known here
                    if parent_path == "Element" {
                        return None;
                    }
                }
                // fhirpath and extension contexts are not evaluated
                _ => return None,
            }
        }
        let allowed: Vec<&str> = xsd.contexts.iter().map(|(_, e)| e.as_str()).collect();
        Some(format!("this element is [{}]; allowed: {}", here.join(", "), allowed.join(", ")))
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
                    if !self.in_profile() {
                        self.err(IssueType::Value, &format!("{path}.reference"), format!("reference '{r}' names unknown resource type '{t}'"));
                    }
                    return;
                }
                let targets: Vec<String> = e
                    .types
                    .iter()
                    .flat_map(|ty| ty.target_profiles.iter())
                    .map(|p| self.v.definition(p).map(|sd| sd.type_name.clone()).unwrap_or_else(|| p.rsplit('/').next().unwrap_or(p).to_owned()))
                    .collect();
                if !targets.is_empty() && !targets.iter().any(|x| x == "Resource" || *x == t) {
                    self.err(
                        IssueType::Structure,
                        &format!("{path}.reference"),
                        format!("{}: reference to {t} is not allowed (allowed: {})", e.path, targets.join(", ")),
                    );
                }
            }
            _ if r.contains("://") => {}
            _ if self.in_profile() => {}
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
