//! De-identification of exported resources for the insurer role (policy;
//! README "Bulk Data export"). Follows the spirit of HIPAA Safe Harbor /
//! ISO 25237 pseudonymisation, applied to FHIR JSON:
//!
//! * **Pseudonymous ids**: the `id` of every resource not in [`KEEP_IDS`]
//!   and every reference to such a resource (`Type/id`, absolute or
//!   versioned) becomes `HMAC-SHA-256(key, "Type/id")` (hex, 32 characters)
//!   — stable across exports with the same key, not reversible without it;
//!   references that are not `Type/id` shaped (`urn:`, `#contained`) are
//!   removed.
//! * **Dates generalised**: `birthDate` to the year; every other date,
//!   dateTime and instant value to year-month.
//! * **Free text and direct identifiers removed**: `text` (narrative and
//!   CodeableConcept text), `note`, `comment`, `description`, `display`,
//!   `name` (of Patient, Practitioner, RelatedPerson, Person), `address`,
//!   `telecom`, `identifier`, `photo`, `contact`, `qualification`,
//!   `communication`, `extension`/`modifierExtension` (may carry anything),
//!   `meta` (sources, tags), `contained`, attachments' `data`/`url`.
//!
//! Organizations, Locations and definitional resources keep their ids and
//! names (members are not people).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Resource types whose ids stay as they are.
pub const KEEP_IDS: &[&str] = &[
    "Organization", "Location", "HealthcareService", "Endpoint", "Medication", "Substance", "Measure", "Library",
    "ValueSet", "CodeSystem", "StructureDefinition", "PlanDefinition", "ActivityDefinition", "Questionnaire",
];

/// Types never exported to the insurer (identity management and audit trails).
pub const WITHHELD: &[&str] = &["Person", "AuditEvent", "Provenance", "Binary"];

const PERSON_TYPES: &[&str] = &["Patient", "Practitioner", "RelatedPerson", "Person"];
const DROP_ALWAYS: &[&str] = &[
    "text", "note", "comment", "description", "display", "address", "telecom", "identifier", "photo", "contact",
    "qualification", "communication", "extension", "modifierExtension", "meta", "contained", "data", "url",
];

/// Keyed pseudonym of `Type/id`.
pub fn pseudonym(key: &[u8], rtype: &str, id: &str) -> String {
    // HMAC-SHA-256 (RFC 2104) over sha2's Sha256
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new().chain_update(ipad).chain_update(rtype.as_bytes()).chain_update(b"/").chain_update(id.as_bytes()).finalize();
    let outer = Sha256::new().chain_update(opad).chain_update(inner).finalize();
    outer.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 7 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[5..7].iter().all(u8::is_ascii_digit) && (b.len() == 7 || (b.len() >= 10 && b[7] == b'-'))
}

fn reference(key: &[u8], r: &str) -> Option<String> {
    let parts: Vec<&str> = r.split('/').collect();
    let (t, id) = match parts.iter().position(|p| *p == "_history") {
        Some(h) if h >= 2 => (parts[h - 2], parts[h - 1]),
        _ if parts.len() >= 2 => (parts[parts.len() - 2], parts[parts.len() - 1]),
        _ => return None,
    };
    if !t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) || r.starts_with('#') || r.starts_with("urn:") {
        return None;
    }
    Some(if KEEP_IDS.contains(&t) { format!("{t}/{id}") } else { format!("{t}/{}", pseudonym(key, t, id)) })
}

fn walk(key: &[u8], v: &mut Value, top_type: Option<&str>) {
    match v {
        Value::Object(o) => {
            let person = top_type.is_some_and(|t| PERSON_TYPES.contains(&t));
            let mut out = Map::new();
            for (k, mut x) in std::mem::take(o) {
                if DROP_ALWAYS.contains(&k.as_str()) || k.starts_with('_') || (person && k == "name") {
                    continue;
                }
                if k == "reference" {
                    if let Some(r) = x.as_str().and_then(|r| reference(key, r)) {
                        out.insert(k, Value::String(r));
                    }
                    continue;
                }
                if k == "birthDate" {
                    if let Some(s) = x.as_str() {
                        out.insert(k, Value::String(s.chars().take(4).collect()));
                    }
                    continue;
                }
                walk(key, &mut x, None);
                out.insert(k, x);
            }
            // a Reference left without its reference says nothing: drop empties
            out.retain(|_, x| !matches!(x, Value::Object(m) if m.is_empty()) && !matches!(x, Value::Array(a) if a.is_empty()));
            *o = out;
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                walk(key, x, None);
            }
            a.retain(|x| !matches!(x, Value::Object(m) if m.is_empty()));
        }
        Value::String(s) if is_date(s) => {
            *s = s.chars().take(7).collect();
        }
        _ => {}
    }
}

/// De-identify one resource in place.
pub fn deidentify(key: &[u8], resource: &mut Value) {
    let rtype = resource.get("resourceType").and_then(Value::as_str).unwrap_or("").to_owned();
    let id = resource.get("id").and_then(Value::as_str).map(str::to_owned);
    walk(key, resource, Some(&rtype));
    if let (Some(id), Some(o)) = (id, resource.as_object_mut()) {
        let new = if KEEP_IDS.contains(&rtype.as_str()) { id } else { pseudonym(key, &rtype, &id) };
        o.insert("id".into(), Value::String(new));
    }
}
