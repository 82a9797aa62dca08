//! The Task state machine of FHIR R4 `task.html` §"Task state machine"
//! (states of `http://hl7.org/fhir/task-status`), used as the referral
//! exchange of R4 `workflow-management.html` option H ("Task with
//! request"): the requester creates the Task (status `requested`), the
//! owner moves it through received → accepted/rejected → (ready) →
//! in-progress → completed/failed; the requester may cancel.
//!
//! Who may move which state (decided on [`Caller`]'s member): the owner
//! (`Task.owner = Organization/{member}` of the version before the change)
//! takes every step of the work (received, accepted, rejected, ready,
//! in-progress, on-hold, completed, failed); the requester
//! (`Task.requester`) sends a draft (requested) and cancels; either may mark
//! entered-in-error, update the Task without changing its status, or
//! delete it ([`check_delete`]).
//! System sources (HL7 v2, import, load: no caller), the development
//! operator and integration engines are not role-checked; the transitions
//! themselves are checked for everyone.

use super::WorkflowError;
use crate::auth::{Caller, MemberType};
use serde_json::Value;

/// Terminal states: nothing follows but entered-in-error.
pub const TERMINAL: [&str; 5] = ["completed", "cancelled", "failed", "rejected", "entered-in-error"];

/// The states reachable from `from` (besides staying and entered-in-error).
pub fn next_states(from: &str) -> &'static [&'static str] {
    match from {
        "draft" => &["requested", "cancelled"],
        "requested" => &["received", "accepted", "rejected", "cancelled"],
        "received" => &["accepted", "rejected", "cancelled"],
        "accepted" => &["ready", "in-progress", "cancelled"],
        "ready" => &["in-progress", "cancelled", "failed"],
        "in-progress" => &["on-hold", "completed", "failed", "cancelled"],
        "on-hold" => &["in-progress", "cancelled", "failed"],
        _ => &[],
    }
}

/// Is `from → to` a transition of the state machine?
pub fn allowed(from: &str, to: &str) -> bool {
    from == to || (to == "entered-in-error" && from != "entered-in-error") || next_states(from).contains(&to)
}

/// Which party may move a Task into `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    Owner,
    Requester,
    Either,
}

fn party_for(to: &str) -> Party {
    match to {
        "requested" | "cancelled" => Party::Requester,
        "entered-in-error" => Party::Either,
        _ => Party::Owner,
    }
}

fn reference_of<'a>(task: &'a Value, field: &str) -> Option<&'a str> {
    task.get(field)?.get("reference")?.as_str()
}

/// Does a reference (`Organization/x`, `https://…/Organization/x`) name the member?
pub fn names_member(reference: Option<&str>, member: &str) -> bool {
    let Some(r) = reference else { return false };
    let want = format!("Organization/{member}");
    r == want || r.ends_with(&format!("/{want}"))
}

/// Check an update of a Task (`previous` = the stored version, if any).
pub fn check(previous: Option<&Value>, new: &Value, caller: Option<&Caller>) -> Result<(), WorkflowError> {
    let to = new.get("status").and_then(Value::as_str).unwrap_or("");
    let Some(prev) = previous else {
        return Ok(()); // a create: any initial state (validation checks the code)
    };
    let from = prev.get("status").and_then(Value::as_str).unwrap_or("");
    if !allowed(from, to) {
        let mut next: Vec<&str> = next_states(from).to_vec();
        if from != "entered-in-error" {
            next.push("entered-in-error");
        }
        return Err(WorkflowError::Transition(format!(
            "Task status cannot change from '{from}' to '{to}' (allowed from '{from}': {})",
            if next.is_empty() { "none, it is final".to_owned() } else { next.join(", ") }
        )));
    }
    let Some(caller) = caller else { return Ok(()) };
    let Some(member) = caller.member.as_deref() else { return Ok(()) };
    if matches!(caller.member_type, MemberType::Operator | MemberType::IntegrationEngine) {
        return Ok(());
    }
    let is_owner = names_member(reference_of(prev, "owner"), member);
    let is_requester = names_member(reference_of(prev, "requester"), member);
    let ok = if from == to {
        is_owner || is_requester
    } else {
        match party_for(to) {
            Party::Owner => is_owner,
            Party::Requester => is_requester,
            Party::Either => is_owner || is_requester,
        }
    };
    if ok {
        // the owner may not hand the Task to someone else; the requester may re-route it while nobody works on it
        let owner_changed = reference_of(prev, "owner") != reference_of(new, "owner");
        if owner_changed && !(is_requester && matches!(from, "draft" | "requested" | "received" | "rejected")) {
            return Err(WorkflowError::Forbidden(format!(
                "Organization/{member} may not change the owner of a Task in status '{from}' (only its requester, before it is accepted)"
            )));
        }
        return Ok(());
    }
    let who = if from == to {
        "its owner or requester".to_owned()
    } else {
        match party_for(to) {
            Party::Owner => "its owner".to_owned(),
            Party::Requester => "its requester".to_owned(),
            Party::Either => "its owner or requester".to_owned(),
        }
    };
    Err(WorkflowError::Forbidden(format!(
        "Organization/{member} may not move this Task from '{from}' to '{to}': only {who} may"
    )))
}

/// Check a DELETE of a stored Task: like an update that keeps the status,
/// only its owner or its requester may (unrestricted callers and system
/// sources always).
pub fn check_delete(previous: Option<&Value>, caller: Option<&Caller>) -> Result<(), WorkflowError> {
    let (Some(prev), Some(caller)) = (previous, caller) else { return Ok(()) };
    let Some(member) = caller.member.as_deref() else { return Ok(()) };
    if matches!(caller.member_type, MemberType::Operator | MemberType::IntegrationEngine) {
        return Ok(());
    }
    if names_member(reference_of(prev, "owner"), member) || names_member(reference_of(prev, "requester"), member) {
        return Ok(());
    }
    Err(WorkflowError::Forbidden(format!("Organization/{member} may not delete this Task: only its owner or requester may")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(m: &str) -> Caller {
        Caller { client_id: m.into(), member: Some(m.into()), member_type: MemberType::Hospital, scopes: vec![], purpose_of_use: None }
    }

    #[test]
    fn state_machine() {
        assert!(allowed("requested", "accepted"));
        assert!(allowed("in-progress", "completed"));
        assert!(!allowed("completed", "in-progress"));
        assert!(!allowed("requested", "completed"));
        assert!(allowed("completed", "entered-in-error"));
    }

    #[test]
    fn roles() {
        let t = json!({"resourceType":"Task","status":"requested","owner":{"reference":"Organization/lead"},"requester":{"reference":"Organization/county"}});
        let acc = json!({"resourceType":"Task","status":"accepted","owner":{"reference":"Organization/lead"},"requester":{"reference":"Organization/county"}});
        let can = json!({"resourceType":"Task","status":"cancelled","owner":{"reference":"Organization/lead"},"requester":{"reference":"Organization/county"}});
        assert!(check(Some(&t), &acc, Some(&member("lead"))).is_ok());
        assert!(matches!(check(Some(&t), &acc, Some(&member("county"))), Err(WorkflowError::Forbidden(_))));
        assert!(check(Some(&t), &can, Some(&member("county"))).is_ok());
        assert!(matches!(check(Some(&t), &can, Some(&member("lead"))), Err(WorkflowError::Forbidden(_))));
        assert!(matches!(check(Some(&t), &acc, Some(&member("other"))), Err(WorkflowError::Forbidden(_))));
        assert!(check(Some(&t), &acc, None).is_ok());
        // deletes: owner or requester
        assert!(check_delete(Some(&t), Some(&member("lead"))).is_ok());
        assert!(check_delete(Some(&t), Some(&member("county"))).is_ok());
        assert!(matches!(check_delete(Some(&t), Some(&member("other"))), Err(WorkflowError::Forbidden(_))));
        assert!(check_delete(Some(&t), None).is_ok());
    }
}
