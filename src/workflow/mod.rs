//! Brokering care between members (issue 8): referrals as a Task state
//! machine (FHIR R4 `task.html` state machine, `workflow-management.html`
//! option H; `task.rs`) and shared treatment standards applied as care
//! plans (`PlanDefinition/$apply`, R4 `plandefinition.html`; `apply.rs`).
//!
//! | file | what |
//! | --- | --- |
//! | `task.rs` | Task transitions and who (owner / requester) may make them |
//! | `apply.rs` | PlanDefinition + ActivityDefinitions → CarePlan, Tasks, ServiceRequests (a transaction Bundle) |
//!
//! Invariant: workflow rules are checked inside the one write pipeline
//! ([`check_change`]), so a REST update, a transaction entry, an HL7 v2 or
//! import write all obey the same state machine.
//! Invariant: nothing here writes: `$apply` produces a Bundle the pipeline
//! writes as one transaction.

pub mod apply;
pub mod task;

use crate::auth::Caller;
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

/// Workflow rules for one resolved change (`previous` = the stored live
/// version's bytes). Called by the pipeline inside the write transaction.
pub fn check_change(rtype: &str, _id: &str, previous: Option<&Bytes>, new: &Value, caller: Option<&Caller>) -> Result<(), WorkflowError> {
    if rtype != "Task" {
        return Ok(());
    }
    let prev: Option<Value> = previous.and_then(|b| serde_json::from_slice(b).ok());
    task::check(prev.as_ref(), new, caller)
}
