//! FHIR search (R4 `search.html`, `searchparameter-registry.html`): the
//! parameter registry built from the core package's SearchParameter
//! definitions (not hand-listed), index extraction (`extract`), request
//! parsing (`params`) and SQL planning over the store's index tables (`plan`).
//!
//! Invariant: the parameters a server advertises in `/metadata` are exactly
//! the ones in this registry, and every one of them is indexed on write.

pub mod extract;
pub mod params;
pub mod plan;

use crate::fhir::definitions::Definitions;
use crate::store::IndexRow;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("unknown search parameter '{0}' for {1}")]
    UnknownParameter(String, String),
    #[error("invalid value for search parameter '{param}': {msg}")]
    InvalidValue { param: String, msg: String },
    #[error("not supported: {0}")]
    Unsupported(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    String,
    Token,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
    Composite,
    Special,
}

impl ParamKind {
    pub fn parse(s: &str) -> ParamKind {
        match s {
            "string" => ParamKind::String,
            "token" => ParamKind::Token,
            "reference" => ParamKind::Reference,
            "date" => ParamKind::Date,
            "number" => ParamKind::Number,
            "quantity" => ParamKind::Quantity,
            "uri" => ParamKind::Uri,
            "composite" => ParamKind::Composite,
            _ => ParamKind::Special,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::String => "string",
            ParamKind::Token => "token",
            ParamKind::Reference => "reference",
            ParamKind::Date => "date",
            ParamKind::Number => "number",
            ParamKind::Quantity => "quantity",
            ParamKind::Uri => "uri",
            ParamKind::Composite => "composite",
            ParamKind::Special => "special",
        }
    }
}

/// A search parameter as it applies to one resource type.
#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    pub kind: ParamKind,
    pub targets: Vec<String>,
    pub branches: Vec<extract::Branch>,
}

impl SearchParam {
    /// Whether values can be searched (composite/special and expression-less are not).
    pub fn is_indexed(&self) -> bool {
        !self.branches.is_empty()
            && !matches!(self.kind, ParamKind::Composite | ParamKind::Special)
            && self.code != "_id"
            && self.code != "_lastUpdated"
    }

    fn extract(&self, res: &Value, out: &mut Vec<IndexRow>) {
        let mut nodes = Vec::new();
        for b in &self.branches {
            nodes.extend(extract::eval(b, res));
        }
        if nodes.is_empty() {
            return;
        }
        match self.kind {
            ParamKind::String => extract::string_rows(&self.code, &nodes, out),
            ParamKind::Token => extract::token_rows(&self.code, &nodes, out),
            ParamKind::Reference => extract::reference_rows(&self.code, &nodes, out),
            ParamKind::Date => extract::date_rows(&self.code, &nodes, out),
            ParamKind::Number => extract::number_rows(&self.code, &nodes, out),
            ParamKind::Quantity => extract::quantity_rows(&self.code, &nodes, out),
            ParamKind::Uri => extract::uri_rows(&self.code, &nodes, out),
            ParamKind::Composite | ParamKind::Special => {}
        }
    }
}

/// All search parameters, per resource type.
#[derive(Debug, Default)]
pub struct Registry {
    pub resource_types: BTreeSet<String>,
    by_type: HashMap<String, HashMap<String, Arc<SearchParam>>>,
    /// union branches outside the supported FHIRPath subset (not indexed)
    pub skipped_branches: usize,
    /// the Patient compartment: member type → reference parameters (only
    /// parameters this registry knows and indexes as references)
    pub patient_compartment: Vec<(String, Vec<String>)>,
}

impl Registry {
    pub fn from_definitions(defs: &Definitions) -> Registry {
        let mut reg = Registry { resource_types: defs.resource_types.clone(), ..Default::default() };
        for sp in &defs.search_params {
            let branches_src: Vec<&str> = sp.expression.as_deref().map(extract::split_union).unwrap_or_default();
            let mut compiled = Vec::new();
            for b in &branches_src {
                match extract::compile_branch(b) {
                    Some(c) => compiled.push(c),
                    None => reg.skipped_branches += 1,
                }
            }
            let kind = ParamKind::parse(&sp.type_);
            let applies_to: Vec<String> = if sp.base.iter().any(|b| b == "Resource" || b == "DomainResource") {
                reg.resource_types.iter().cloned().collect()
            } else {
                sp.base.iter().filter(|b| reg.resource_types.contains(*b)).cloned().collect()
            };
            for t in applies_to {
                let branches: Vec<extract::Branch> = compiled
                    .iter()
                    .filter(|b| b.start == t || b.start == "Resource" || b.start == "DomainResource")
                    .cloned()
                    .collect();
                let p = SearchParam {
                    code: sp.code.clone(),
                    url: sp.url.clone(),
                    kind,
                    targets: sp.target.clone(),
                    branches,
                };
                reg.by_type.entry(t).or_default().insert(sp.code.clone(), Arc::new(p));
            }
        }
        if let Some(members) = defs.compartments.get("Patient") {
            for (t, params) in members {
                let ps: Vec<String> = params
                    .iter()
                    .filter(|p| reg.param(t, p).is_some_and(|sp| sp.kind == ParamKind::Reference && sp.is_indexed()))
                    .cloned()
                    .collect();
                if !ps.is_empty() {
                    reg.patient_compartment.push((t.clone(), ps));
                }
            }
        }
        reg
    }

    pub fn is_type(&self, t: &str) -> bool {
        self.resource_types.contains(t)
    }

    pub fn param(&self, rtype: &str, code: &str) -> Option<&Arc<SearchParam>> {
        self.by_type.get(rtype)?.get(code)
    }

    /// Parameters of a type, sorted by code.
    pub fn params_for(&self, rtype: &str) -> Vec<&Arc<SearchParam>> {
        let mut v: Vec<_> = self.by_type.get(rtype).map(|m| m.values().collect()).unwrap_or_default();
        v.sort_by(|a, b| a.code.cmp(&b.code));
        v
    }

    /// Index rows for a resource (every indexed parameter of its type).
    pub fn index(&self, rtype: &str, res: &Value) -> Vec<IndexRow> {
        let mut out = Vec::new();
        if let Some(ps) = self.by_type.get(rtype) {
            for p in ps.values() {
                if p.is_indexed() {
                    p.extract(res, &mut out);
                }
            }
        }
        out.sort_by(|a, b| a.param.cmp(&b.param));
        out.dedup();
        out
    }
}
