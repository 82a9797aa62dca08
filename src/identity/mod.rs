//! The master patient index (MPI): every institution's Patient stays that
//! institution's record; the gateway keeps links between records of the same
//! person (FHIR R4 `person.html`, `patient.html#links`), matches incoming
//! Patients incrementally inside the write transaction, and answers
//! `Patient/$match` (R4 `patient-operation-match.html`) and IHE PIXm
//! `Patient/$ihe-pix` (ITI-83).
//!
//! | file | what |
//! |---|---|
//! | `normalize.rs` | name folding, Kölner Phonetik, Jaro–Winkler, date typos, phone/postcode keys |
//! | `ids.rs` | KVNR and GB 11643 check digits (trusted identifiers) |
//! | `features.rs` | a Patient's matching features and blocking keys |
//! | `score.rs` | Fellegi–Sunter comparison, grades, reasons |
//! | `link.rs` | incremental linking, review Tasks, Person per group, AuditEvents, manual operations |
//! | `query.rs` | read side: `$match`, PIXm, group members for `Patient.link` on read |
//!
//! Invariant: matching is pure (features → comparison); every database
//! change happens on the caller's store transaction.

pub mod features;
pub mod ids;
pub mod link;
pub mod normalize;
pub mod query;
pub mod score;

use crate::services::Services;
use crate::store::{StoreError, StoreTx};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}

/// One Patient change of a write transaction: the new content, or `None` for a delete.
pub type PatientChange = (String, Option<Value>);

/// The pipeline hook: link every Patient written in this transaction.
/// Merges (`replaced-by`) are applied after all records are indexed, so an
/// A40 message's survivor and merged-away record can arrive together.
pub async fn link_patients(services: &Services, tx: &mut dyn StoreTx, changes: &[PatientChange], now: i64) -> Result<(), IdentityError> {
    if !services.mpi.enabled || changes.is_empty() {
        return Ok(());
    }
    let mut l = link::Linker::new(services, tx, now).await?;
    let ids: Vec<&str> = changes.iter().map(|(id, _)| id.as_str()).collect();
    l.read_ahead(&ids).await?;
    for (id, body) in changes {
        match body {
            Some(p) => l.upsert(id, p).await?,
            None => l.remove(id).await?,
        }
    }
    for (id, body) in changes {
        if body.as_ref().and_then(|p| p.get("link")).is_some() {
            l.follow_survivor(id).await?;
        }
    }
    l.finish().await
}

/// A manual MPI operation (run by the pipeline in its own transaction).
#[derive(Debug, Clone, PartialEq)]
pub enum ManualOp {
    Link { a: String, b: String, note: String },
    Unlink { patient: String, note: String },
    Review { task: String, confirm: bool, note: String },
}

/// Run a manual operation; returns a short description of what was done.
pub async fn manual(services: &Services, tx: &mut dyn StoreTx, op: &ManualOp, now: i64) -> Result<String, IdentityError> {
    let mut l = link::Linker::new(services, tx, now).await?;
    let msg = match op {
        ManualOp::Link { a, b, note } => {
            let g = l.link(a, b, note).await?;
            format!("Patient/{a} and Patient/{b} linked in Person/{g}")
        }
        ManualOp::Unlink { patient, note } => {
            l.unlink(patient, note).await?;
            format!("Patient/{patient} unlinked")
        }
        ManualOp::Review { task, confirm, note } => {
            let (a, b) = l.resolve_review(task, *confirm, note).await?;
            if *confirm {
                format!("review Task/{task} confirmed: Patient/{a} and Patient/{b} linked")
            } else {
                format!("review Task/{task} rejected: Patient/{a} and Patient/{b} kept apart")
            }
        }
    };
    l.finish().await?;
    Ok(msg)
}
