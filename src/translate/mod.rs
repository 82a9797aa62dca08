//! Source adapters that turn members' non-FHIR records into FHIR: bytes in,
//! Bundle out, pure functions (DESIGN.md: translators never write to the
//! store; they produce a Bundle for the write pipeline).
//!
//! * `hl7v2` — HL7 v2.x parsing (ER7), timestamps, ACKs and MLLP framing.
//! * `tabular` — CSV / JSON exports through per-institution mapping files.
//! * `ids`, `prune` — shared by both: deterministic UUIDv5 ids, SHA-256 of
//!   sources, removal of empty values.

pub mod hl7v2;
pub mod ids;
pub mod prune;
pub mod tabular;
