//! Source adapters' orchestration: bytes from a member in, the one write
//! pipeline, an answer out. Each adapter here parses and translates with a
//! pure translator (`translate`), hands the resulting Bundle to
//! `pipeline::Pipeline::transaction` — so validation and storage rules apply
//! exactly as for FHIR clients — and answers in the source's own protocol.
//!
//! * `hl7v2` — ER7 messages (over HTTP or MLLP) → transaction → v2 ACK.
//! * `mllp` — the MLLP listener (HL7 v2 transport).
//! * `import` — CSV / JSON exports → one transaction per patient group
//!   (or one for the file) → a report OperationOutcome.

pub mod hl7v2;
pub mod import;
pub mod mllp;
