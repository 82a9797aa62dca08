//! Reference resolution inside a transaction (R4 `http.html#trules`,
//! `bundle.html#references`): every reference to an entry's `fullUrl`
//! (`urn:uuid:`, `urn:oid:` or absolute) is rewritten to the entry's
//! `Type/id`, nested ones and those inside narrative too; conditional
//! references (`Patient?identifier=sys|val`) are replaced by the one
//! resource they match (0 matches → 400, several → 412).

use super::{bad, conditional_matches, PipelineError};
use crate::fhir::{IssueType, OperationOutcome};
use crate::services::Services;
use crate::store::StoreTx;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Rewrite references of one resource in place.
pub(super) async fn rewrite_references(
    services: &Services,
    tx: &mut Box<dyn StoreTx>,
    res: &mut Value,
    ids: &HashMap<String, String>,
) -> Result<(), PipelineError> {
    // 1. collect conditional references first (they need the store)
    let mut conditional: Vec<String> = Vec::new();
    collect_conditional(res, &mut conditional);
    let mut resolved: HashMap<String, String> = HashMap::new();
    for c in conditional {
        if resolved.contains_key(&c) {
            continue;
        }
        let (t, q) = c.split_once('?').expect("conditional reference has ?");
        if !services.registry.is_type(t) {
            return Err(bad(IssueType::Invalid, format!("conditional reference '{c}': unknown type {t}")));
        }
        let m = conditional_matches(services, tx, t, q).await?;
        match m.len() {
            1 => {
                resolved.insert(c.clone(), format!("{t}/{}", m[0].id));
            }
            0 => {
                return Err(PipelineError::BadRequest(OperationOutcome::error(
                    IssueType::NotFound,
                    format!("conditional reference '{c}' matches no resource"),
                )))
            }
            _ => {
                return Err(PipelineError::PreconditionFailed(OperationOutcome::error(
                    IssueType::MultipleMatches,
                    format!("conditional reference '{c}' matches more than one resource"),
                )))
            }
        }
    }
    // 2. rewrite
    let mut unresolved: Option<String> = None;
    crate::fhir::json::visit_strings_mut(res, "", &mut |key, s| {
        if key == "reference" {
            if let Some(n) = ids.get(s.as_str()).or_else(|| resolved.get(s.as_str())) {
                *s = n.clone();
            } else if (s.starts_with("urn:uuid:") || s.starts_with("urn:oid:")) && unresolved.is_none() {
                unresolved = Some(s.clone());
            }
        } else if key == "div" {
            for (from, to) in ids {
                if s.contains(from.as_str()) {
                    *s = s.replace(from.as_str(), to);
                }
            }
        } else if let Some(n) = ids.get(s.as_str()) {
            // uri/url elements that point at an entry (e.g. Attachment.url, extensions)
            if s.starts_with("urn:") {
                *s = n.clone();
            }
        }
    });
    if let Some(u) = unresolved {
        return Err(bad(IssueType::NotFound, format!("reference '{u}' does not resolve to an entry of this transaction")));
    }
    Ok(())
}

fn collect_conditional(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "reference" {
                    if let Some(s) = x.as_str() {
                        if let Some((t, _)) = s.split_once('?') {
                            if crate::fhir::looks_like_type(t) {
                                out.push(s.to_owned());
                            }
                        }
                    }
                } else {
                    collect_conditional(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_conditional(x, out)),
        _ => {}
    }
}

/// First `reference` value that points at one of `full_urls` (batch check).
pub(super) fn find_reference_to(v: &Value, full_urls: &HashSet<String>) -> Option<String> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, x)| match (k.as_str(), x) {
            ("reference", Value::String(s)) if full_urls.contains(s) => Some(s.clone()),
            _ => find_reference_to(x, full_urls),
        }),
        Value::Array(a) => a.iter().find_map(|x| find_reference_to(x, full_urls)),
        _ => None,
    }
}
