//! Brokering care between members (issue 8): referrals as a Task state
//! machine (FHIR R4 `task.html` state machine, `workflow-management.html`
//! option H; `task.rs`) and shared treatment standards applied as care
//! plans (`PlanDefinition/$apply`, R4 `plandefinition.html`; `apply.rs`).
//!
//! | file | what |
//! | --- | --- |
//! | `task.rs` | Task transitions and who (owner / requester) may make them or delete the Task |
//! | `careplan.rs` | who may update a CarePlan (author, care-team participants) and a CareTeam (participants, managing organization), and who may delete them |
//! | `apply.rs` | PlanDefinition + ActivityDefinitions → CarePlan, Tasks, ServiceRequests (a transaction Bundle) |
//!
//! Invariant: workflow rules are checked inside the one write pipeline
//! ([`check_change`], [`check_delete`]), so a REST update, a transaction entry, an HL7 v2 or
//! import write all obey the same state machine.
//! Invariant: nothing here writes: `$apply` produces a Bundle the pipeline
//! writes as one transaction.

pub mod apply;
pub mod careplan;
pub mod task;

use crate::auth::Caller;
use crate::store::StoreTx;
use bytes::Bytes;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// malformed input (400)
    #[error("{0}")]
    Invalid(String),
    /// a business rule: illegal state transition, unusable standard (422)
    #[error("{0}")]
    Transition(String),
    /// the caller's role may not do this (403)
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Workflow rules for a DELETE of a stored Task, CarePlan or CareTeam
/// (`previous` = the live version): a delete is decided like the update
/// that would change the most — a Task by its owner or requester (as an
/// update that keeps the status), a CarePlan by its author only (a delete
/// removes `author` and `careTeam`, which only the author may change), a
/// CareTeam by its participants or managing organization.
pub async fn check_delete(tx: &mut dyn StoreTx, rtype: &str, id: &str, previous: &Bytes, caller: Option<&Caller>) -> Result<(), WorkflowError> {
    let _ = (tx, id);
    if !matches!(rtype, "Task" | "CarePlan" | "CareTeam") {
        return Ok(());
    }
    let prev: Option<Value> = serde_json::from_slice(previous).ok();
    match rtype {
        "Task" => task::check_delete(prev.as_ref(), caller),
        "CareTeam" => careplan::check_care_team(prev.as_ref(), caller),
        _ => careplan::check_care_plan_delete(prev.as_ref(), caller),
    }
}

/// Workflow rules for one resolved change (`previous` = the stored live
/// version's bytes). Called by the pipeline inside the write transaction
/// (`tx`: the stored CareTeams a CarePlan references are read there, as
/// they were before this transaction's writes).
pub async fn check_change(
    tx: &mut dyn StoreTx,
    rtype: &str,
    _id: &str,
    previous: Option<&Bytes>,
    new: &Value,
    caller: Option<&Caller>,
) -> Result<(), WorkflowError> {
    if !matches!(rtype, "Task" | "CarePlan" | "CareTeam") || previous.is_none() {
        return Ok(()); // creates are the role policy's
    }
    let prev: Option<Value> = previous.and_then(|b| serde_json::from_slice(b).ok());
    match rtype {
        "Task" => task::check(prev.as_ref(), new, caller),
        "CareTeam" => careplan::check_care_team(prev.as_ref(), caller),
        _ => {
            if careplan::restricted_member(caller).is_none() {
                return Ok(());
            }
            let keys = prev.as_ref().map(careplan::care_team_keys).unwrap_or_default();
            let rows = if keys.is_empty() { vec![] } else { tx.current_many(&keys).await? };
            let teams: Vec<Value> = rows
                .into_iter()
                .flatten()
                .filter(|r| !r.deleted)
                .filter_map(|r| r.body.and_then(|b| serde_json::from_slice(&b).ok()))
                .collect();
            careplan::check_care_plan(prev.as_ref(), new, caller, &teams)
        }
    }
}
