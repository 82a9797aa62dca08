//! Pure FHIR helpers at the bottom of the layer stack: JSON access, ids and
//! references, `OperationOutcome`, date/time precision ranges and the FHIR
//! package (definitions) loader.
//!
//! Specs: FHIR R4 (4.0.1) `json.html` (JSON representation), `datatypes.html`
//! (primitive formats), `references.html`, `operationoutcome.html`, and the FHIR
//! NPM package specification (package layout, `.index.json`).
//!
//! Invariant: nothing here performs I/O except `definitions`, which only reads
//! a package folder; nothing here depends on any other carebridge module.

pub mod datetime;
pub mod definitions;
pub mod json;
pub mod outcome;
pub mod reference;

pub use outcome::{IssueType, OperationOutcome, Severity};

/// FHIR version this server implements.
pub const FHIR_VERSION: &str = "4.0.1";

/// `id` datatype: `[A-Za-z0-9\-\.]{1,64}` (R4 datatypes.html#id).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A resource type name has the shape of one (the definitions decide whether it exists).
pub fn looks_like_type(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_uppercase()) && b.all(|c| c.is_ascii_alphanumeric())
}
