//! `PlanDefinition/[id]/$apply` (FHIR R4 `plandefinition-operation-apply.html`,
//! `plandefinition.html` §"Applying a PlanDefinition"; ActivityDefinition
//! `$apply` semantics for each action's `definitionCanonical`): a treatment
//! standard applied to one patient becomes a transaction Bundle — a
//! CarePlan (`instantiatesCanonical` = the standard's `url|version`, one
//! activity per action, the patient's cross-sector CareTeam) and, per
//! action, the request it implies: a `Task` (kind Task), or a
//! `ServiceRequest` plus the `Task` that carries its state at the
//! performer (kind ServiceRequest; workflow-management.html option H).
//!
//! Performers: an action's (or its ActivityDefinition's) `participant.role`
//! coded in [`MEMBER_TYPE_SYSTEM`] (gp-practice, nursing-service, …) is
//! matched against the `careTeam` parameter's participants (`role` in the
//! same system, `member` = the member Organization); the match becomes
//! `Task.owner`. Timing: `timingDuration` gives `Task.restriction.period.end`
//! (due within N days of applying); `timingTiming` is copied to
//! `ServiceRequest.occurrenceTiming`.
//!
//! The Bundle is written through the pipeline by the caller (api);
//! nothing here writes.

use super::WorkflowError;
use crate::fhir::datetime;
use crate::search::params::SearchRequest;
use crate::search::plan;
use crate::services::Services;
use serde_json::{json, Value};

/// Member types as codes (roles of CareTeam participants and plan actions).
pub const MEMBER_TYPE_SYSTEM: &str = "https://carebridge.example/fhir/CodeSystem/member-type";

/// Inputs of `$apply` (R4 parameters `subject`, `encounter`, `organization`,
/// plus `careTeam`, carebridge's parameter naming the patient's CareTeam).
#[derive(Debug, Clone, Default)]
pub struct ApplyInput {
    /// `Patient/{id}`
    pub subject: String,
    pub encounter: Option<String>,
    /// the author/requester (`Organization/{id}`)
    pub organization: Option<String>,
    /// the CareTeam resource (already read)
    pub care_team: Option<(String, Value)>,
    /// µs since the epoch: "now" for due dates
    pub now: i64,
}

fn codes(cc: Option<&Value>) -> Vec<String> {
    cc.and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("system").and_then(Value::as_str) == Some(MEMBER_TYPE_SYSTEM))
        .filter_map(|c| c.get("code").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn participant_roles(v: &Value) -> Vec<String> {
    v.get("participant").and_then(Value::as_array).into_iter().flatten().flat_map(|p| codes(p.get("role"))).collect()
}

/// The CareTeam member (`Organization/x`) that plays `role`.
fn member_for(team: &Value, role: &str) -> Option<String> {
    team.get("participant").and_then(Value::as_array)?.iter().find_map(|p| {
        let roles: Vec<String> = p.get("role").and_then(Value::as_array).into_iter().flatten().flat_map(|r| codes(Some(r))).collect();
        if roles.iter().any(|r| r == role) {
            p.get("member").and_then(|m| m.get("reference")).and_then(Value::as_str).map(str::to_owned)
        } else {
            None
        }
    })
}

/// Find an ActivityDefinition by canonical (`url` or `url|version`).
async fn activity_definition(services: &Services, canonical: &str) -> Result<Value, WorkflowError> {
    let (url, version) = match canonical.split_once('|') {
        Some((u, v)) => (u, Some(v)),
        None => (canonical, None),
    };
    let mut pairs = vec![("url".to_owned(), url.to_owned())];
    if let Some(v) = version {
        pairs.push(("version".to_owned(), v.to_owned()));
    }
    let mut req = SearchRequest::parse(&services.registry, "ActivityDefinition", &pairs, true).map_err(|e| WorkflowError::Invalid(e.to_string()))?;
    req.count = 2;
    let sql = plan::page_sql(&req, plan::Page::First).map_err(|e| WorkflowError::Invalid(e.to_string()))?;
    let rows = services.store.query(sql).await?;
    let row = match rows.len() {
        1 => &rows[0],
        0 => return Err(WorkflowError::Transition(format!("the standard's ActivityDefinition '{canonical}' is not on this server"))),
        _ => return Err(WorkflowError::Transition(format!("ActivityDefinition '{canonical}' is ambiguous: name a version"))),
    };
    row.body.as_ref().and_then(|b| serde_json::from_slice(b).ok()).ok_or_else(|| WorkflowError::NotFound(format!("ActivityDefinition '{canonical}' was deleted")))
}

fn days_from(v: &Value) -> Option<f64> {
    let value = v.get("value")?.as_f64().or_else(|| v.get("value")?.as_str()?.parse().ok())?;
    let unit = v.get("code").or_else(|| v.get("unit")).and_then(Value::as_str).unwrap_or("d");
    Some(match unit {
        "h" | "hour" | "hours" => value / 24.0,
        "wk" | "week" | "weeks" => value * 7.0,
        "min" => value / 1440.0,
        _ => value,
    })
}

/// Build the transaction Bundle applying `plan` for `input.subject`.
pub async fn apply(services: &Services, plan: &Value, input: &ApplyInput) -> Result<Value, WorkflowError> {
    if plan.get("status").and_then(Value::as_str) == Some("retired") {
        return Err(WorkflowError::Transition("a retired PlanDefinition cannot be applied".into()));
    }
    let plan_url = plan.get("url").and_then(Value::as_str).ok_or_else(|| WorkflowError::Transition("the PlanDefinition has no canonical url".into()))?;
    let canonical = match plan.get("version").and_then(Value::as_str) {
        Some(v) => format!("{plan_url}|{v}"),
        None => plan_url.to_owned(),
    };
    let now = datetime::format_instant(input.now);
    let careplan_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let subject = json!({"reference": input.subject});
    let mut entries: Vec<Value> = vec![];
    let mut activities: Vec<Value> = vec![];
    let actions = plan.get("action").and_then(Value::as_array).cloned().unwrap_or_default();
    if actions.is_empty() {
        return Err(WorkflowError::Transition("the PlanDefinition has no actions".into()));
    }
    for (i, action) in actions.iter().enumerate() {
        let ad = match action.get("definitionCanonical").and_then(Value::as_str) {
            Some(c) => Some(activity_definition(services, c).await?),
            None => None,
        };
        let kind = ad.as_ref().and_then(|a| a.get("kind")).and_then(Value::as_str).unwrap_or("Task");
        if kind != "Task" && kind != "ServiceRequest" {
            return Err(WorkflowError::Transition(format!("action {i}: ActivityDefinition kind '{kind}' is not supported by $apply (Task, ServiceRequest)")));
        }
        let title = action
            .get("title")
            .or_else(|| ad.as_ref().and_then(|a| a.get("title")))
            .and_then(Value::as_str)
            .unwrap_or("activity")
            .to_owned();
        let code = ad.as_ref().and_then(|a| a.get("code")).cloned().or_else(|| action.get("code").and_then(|c| c.get(0)).cloned()).unwrap_or_else(|| json!({"text": title}));
        let mut roles = participant_roles(action);
        if let Some(a) = &ad {
            roles.extend(participant_roles(a));
        }
        let owner = input.care_team.as_ref().and_then(|(_, team)| roles.iter().find_map(|r| member_for(team, r)));
        let ad_canonical = ad.as_ref().and_then(|a| {
            let u = a.get("url")?.as_str()?;
            Some(match a.get("version").and_then(Value::as_str) {
                Some(v) => format!("{u}|{v}"),
                None => u.to_owned(),
            })
        });
        let due = action.get("timingDuration").and_then(days_from).map(|d| datetime::format_instant(input.now + (d * 86_400_000_000.0) as i64));

        let mut task = json!({
            "resourceType": "Task",
            "status": "requested",
            "intent": "plan",
            "priority": "routine",
            "code": code,
            "description": title,
            "basedOn": [{"reference": careplan_urn}],
            "for": subject,
            "authoredOn": now,
            "lastModified": now,
        });
        if let Some(c) = &ad_canonical {
            task["instantiatesCanonical"] = json!(c);
        }
        if let Some(e) = &input.encounter {
            task["encounter"] = json!({"reference": e});
        }
        if let Some(o) = &input.organization {
            task["requester"] = json!({"reference": o});
        }
        if let Some(o) = &owner {
            task["owner"] = json!({"reference": o});
        }
        if let Some(d) = &due {
            task["restriction"] = json!({"period": {"start": now, "end": d}});
        }
        let task_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let activity_ref;
        if kind == "ServiceRequest" {
            let sr_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
            let mut sr = json!({
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "plan",
                "code": code,
                "basedOn": [{"reference": careplan_urn}],
                "subject": subject,
                "authoredOn": now,
            });
            if let Some(c) = &ad_canonical {
                sr["instantiatesCanonical"] = json!([c]);
            }
            if let Some(t) = ad.as_ref().and_then(|a| a.get("timingTiming")).or_else(|| action.get("timingTiming")) {
                sr["occurrenceTiming"] = t.clone();
            }
            if let Some(o) = &input.organization {
                sr["requester"] = json!({"reference": o});
            }
            if let Some(o) = &owner {
                sr["performer"] = json!([{"reference": o}]);
            }
            task["focus"] = json!({"reference": sr_urn});
            task["intent"] = json!("order");
            entries.push(json!({"fullUrl": sr_urn, "resource": sr, "request": {"method": "POST", "url": "ServiceRequest"}}));
            activity_ref = sr_urn;
        } else {
            activity_ref = task_urn.clone();
        }
        entries.push(json!({"fullUrl": task_urn, "resource": task, "request": {"method": "POST", "url": "Task"}}));
        activities.push(json!({"reference": {"reference": activity_ref, "display": title}}));
    }
    let mut careplan = json!({
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "instantiatesCanonical": [canonical],
        "title": plan.get("title").and_then(Value::as_str).unwrap_or("care plan"),
        "subject": subject,
        "period": {"start": now},
        "created": now,
        "activity": activities,
    });
    if let Some(e) = &input.encounter {
        careplan["encounter"] = json!({"reference": e});
    }
    if let Some(o) = &input.organization {
        careplan["author"] = json!({"reference": o});
    }
    if let Some((team_ref, _)) = &input.care_team {
        careplan["careTeam"] = json!([{"reference": team_ref}]);
    }
    if let Some(goals) = plan.get("goal").and_then(Value::as_array) {
        let notes: Vec<Value> = goals.iter().filter_map(|g| g.get("description")?.get("text")?.as_str()).map(|t| json!({"text": format!("Goal: {t}")})).collect();
        if !notes.is_empty() {
            careplan["note"] = json!(notes);
        }
    }
    let mut all = vec![json!({"fullUrl": careplan_urn, "resource": careplan, "request": {"method": "POST", "url": "CarePlan"}})];
    all.extend(entries);
    Ok(json!({"resourceType": "Bundle", "type": "transaction", "entry": all}))
}
