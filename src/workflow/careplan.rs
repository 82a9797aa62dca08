//! Who may edit a cross-sector care plan (issue 8 "Cross-sector care
//! plans": each participant sees and updates its activities). A `CarePlan`
//! (R4 `careplan.html`) names its author (`CarePlan.author`) and the
//! patient's `CareTeam`s (`CarePlan.careTeam`); a `CareTeam`
//! (`careteam.html`) names its participants (`participant.member`, or the
//! Organization a participant acts for, `participant.onBehalfOf`) and its
//! `managingOrganization`.
//!
//! Rules, decided on [`Caller`]'s member and the stored version before the
//! change (like the Task rules in `task.rs`):
//!
//! * **CarePlan**: a member may update it only when it is the plan's
//!   author (`CarePlan.author = Organization/{member}`) or a participant of
//!   a CareTeam the plan references (`CarePlan.careTeam`); only the author
//!   may change `author` or `careTeam` (so nobody writes itself into a
//!   plan).
//! * **CareTeam**: a member may update it only when it is a participant or
//!   the `managingOrganization` (so nobody joins a team it is not part of,
//!   which would also make it a participant of the team's care plans and
//!   give it a care relationship).
//! * **Deletes** follow the same rules: a CarePlan only by its author (a
//!   delete drops `author` and `careTeam`), a CareTeam by its participants
//!   or managing organization.
//!
//! Creating a new CarePlan or CareTeam is not restricted here (the role
//! policy decides). Operators, integration engines and system sources (HL7
//! v2, import, load: no caller) are not role-checked, as for Tasks. The
//! activities themselves are Tasks: each participant moves its own
//! (`task.rs`).

use super::task::names_member;
use super::WorkflowError;
use crate::auth::{Caller, MemberType};
use crate::fhir::reference;
use serde_json::Value;

/// The member whose rights are checked; `None` for unrestricted callers.
pub fn restricted_member(caller: Option<&Caller>) -> Option<&str> {
    let caller = caller?;
    if matches!(caller.member_type, MemberType::Operator | MemberType::IntegrationEngine) {
        return None;
    }
    caller.member.as_deref()
}

fn refs<'a>(v: &'a Value, field: &str, inner: Option<&str>) -> Vec<&'a str> {
    let items: Vec<&Value> = match v.get(field) {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(x) => vec![x],
        None => vec![],
    };
    items
        .into_iter()
        .filter_map(|x| match inner {
            Some(k) => x.get(k),
            None => Some(x),
        })
        .filter_map(|x| x.get("reference").and_then(Value::as_str))
        .collect()
}

/// `(CareTeam, id)` of the CareTeams a CarePlan references.
pub fn care_team_keys(plan: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = refs(plan, "careTeam", None)
        .into_iter()
        .filter_map(|r| match reference::parse(r) {
            (Some(t), Some(i)) if t == "CareTeam" => Some((t, i)),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Is the member a participant of the CareTeam (`participant.member` or
/// `participant.onBehalfOf` = `Organization/{member}`)?
pub fn is_participant(team: &Value, member: &str) -> bool {
    team.get("participant").and_then(Value::as_array).into_iter().flatten().any(|p| {
        names_member(p.pointer("/member/reference").and_then(Value::as_str), member)
            || names_member(p.pointer("/onBehalfOf/reference").and_then(Value::as_str), member)
    })
}

/// Check an update of a CarePlan: `previous` = the stored version, `teams`
/// = the stored CareTeams it references (see [`care_team_keys`]).
pub fn check_care_plan(previous: Option<&Value>, new: &Value, caller: Option<&Caller>, teams: &[Value]) -> Result<(), WorkflowError> {
    let (Some(prev), Some(member)) = (previous, restricted_member(caller)) else { return Ok(()) };
    let is_author = refs(prev, "author", None).into_iter().any(|r| names_member(Some(r), member));
    let is_participant = teams.iter().any(|t| is_participant(t, member));
    if !is_author && !is_participant {
        return Err(WorkflowError::Forbidden(format!(
            "Organization/{member} may not update this CarePlan: only its author or a participant of its care team may"
        )));
    }
    if !is_author {
        for field in ["author", "careTeam"] {
            if refs(prev, field, None) != refs(new, field, None) {
                return Err(WorkflowError::Forbidden(format!(
                    "Organization/{member} may not change CarePlan.{field}: only the plan's author may"
                )));
            }
        }
    }
    Ok(())
}

/// Check a DELETE of a stored CarePlan: only its author may (a delete
/// drops `author` and `careTeam`, which participants may not change).
pub fn check_care_plan_delete(previous: Option<&Value>, caller: Option<&Caller>) -> Result<(), WorkflowError> {
    let (Some(prev), Some(member)) = (previous, restricted_member(caller)) else { return Ok(()) };
    if refs(prev, "author", None).into_iter().any(|r| names_member(Some(r), member)) {
        return Ok(());
    }
    Err(WorkflowError::Forbidden(format!("Organization/{member} may not delete this CarePlan: only its author may")))
}

/// Check an update or a delete of a CareTeam (`previous` = the stored version).
pub fn check_care_team(previous: Option<&Value>, caller: Option<&Caller>) -> Result<(), WorkflowError> {
    let (Some(prev), Some(member)) = (previous, restricted_member(caller)) else { return Ok(()) };
    let manages = refs(prev, "managingOrganization", None).into_iter().any(|r| names_member(Some(r), member));
    if manages || is_participant(prev, member) {
        return Ok(());
    }
    Err(WorkflowError::Forbidden(format!(
        "Organization/{member} may not update this CareTeam: only its participants or its managing organization may"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(m: &str, t: MemberType) -> Caller {
        Caller { client_id: m.into(), member: Some(m.into()), member_type: t, scopes: vec![], purpose_of_use: None }
    }

    #[test]
    fn care_plan_author_and_participants() {
        let team = json!({"resourceType": "CareTeam", "participant": [
            {"member": {"reference": "Organization/gp"}},
            {"member": {"reference": "Practitioner/p1"}, "onBehalfOf": {"reference": "Organization/nursing"}}]});
        let plan = json!({"resourceType": "CarePlan", "status": "active", "author": {"reference": "Organization/hosp"}, "careTeam": [{"reference": "CareTeam/t1"}]});
        assert_eq!(care_team_keys(&plan), vec![("CareTeam".to_owned(), "t1".to_owned())]);
        let mut noted = plan.clone();
        noted["note"] = json!([{"text": "seen"}]);
        let teams = [team];
        for m in ["hosp", "gp", "nursing"] {
            assert!(check_care_plan(Some(&plan), &noted, Some(&member(m, MemberType::GpPractice)), &teams).is_ok(), "{m}");
        }
        assert!(matches!(check_care_plan(Some(&plan), &noted, Some(&member("other", MemberType::Hospital)), &teams), Err(WorkflowError::Forbidden(_))));
        // a participant may not take over the plan or change its team; the author may
        let mut taken = plan.clone();
        taken["author"] = json!({"reference": "Organization/gp"});
        assert!(matches!(check_care_plan(Some(&plan), &taken, Some(&member("gp", MemberType::GpPractice)), &teams), Err(WorkflowError::Forbidden(_))));
        let mut reteamed = plan.clone();
        reteamed["careTeam"] = json!([{"reference": "CareTeam/t2"}]);
        assert!(matches!(check_care_plan(Some(&plan), &reteamed, Some(&member("nursing", MemberType::NursingService)), &teams), Err(WorkflowError::Forbidden(_))));
        assert!(check_care_plan(Some(&plan), &reteamed, Some(&member("hosp", MemberType::Hospital)), &teams).is_ok());
        // unrestricted callers, system sources and creates
        assert!(check_care_plan(Some(&plan), &taken, Some(&member("ops", MemberType::Operator)), &[]).is_ok());
        assert!(check_care_plan(Some(&plan), &taken, None, &[]).is_ok());
        assert!(check_care_plan(None, &plan, Some(&member("other", MemberType::Hospital)), &[]).is_ok());
        // deletes: the author only
        assert!(check_care_plan_delete(Some(&plan), Some(&member("hosp", MemberType::Hospital))).is_ok());
        assert!(matches!(check_care_plan_delete(Some(&plan), Some(&member("gp", MemberType::GpPractice))), Err(WorkflowError::Forbidden(_))));
        assert!(check_care_plan_delete(Some(&plan), Some(&member("ops", MemberType::Operator))).is_ok());
    }

    #[test]
    fn care_team_members_only() {
        let team = json!({"resourceType": "CareTeam", "managingOrganization": [{"reference": "Organization/hosp"}],
            "participant": [{"member": {"reference": "Organization/gp"}}]});
        assert!(check_care_team(Some(&team), Some(&member("hosp", MemberType::Hospital))).is_ok());
        assert!(check_care_team(Some(&team), Some(&member("gp", MemberType::GpPractice))).is_ok());
        assert!(matches!(check_care_team(Some(&team), Some(&member("pharm", MemberType::Pharmacy))), Err(WorkflowError::Forbidden(_))));
        assert!(check_care_team(None, Some(&member("pharm", MemberType::Pharmacy))).is_ok());
    }
}
