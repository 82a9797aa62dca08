//! Source adapters that turn members' non-FHIR records into FHIR: bytes in,
//! Bundle out, pure functions (DESIGN.md: translators never write to the
//! store; they produce a Bundle for the write pipeline).
//!
//! * `hl7v2` — HL7 v2.x parsing (ER7), timestamps, ACKs and MLLP framing.

pub mod hl7v2;
