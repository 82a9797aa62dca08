//! Workflow operations (HTTP side; the rules are in `workflow`, writes go
//! through the pipeline):
//!
//! * `GET|POST /PlanDefinition/[id]/$apply` — R4
//!   `plandefinition-operation-apply.html`: `subject` (required,
//!   `Patient/[id]`), `encounter`, `organization` (author/requester), and
//!   carebridge's `careTeam` (`CareTeam/[id]`: whose participants perform
//!   which activity). Writes the CarePlan and the Tasks/ServiceRequests it
//!   implies as one transaction and answers the stored CarePlan (201, with
//!   `Location`).
//!
//! The role policy decides `$apply` as a create of a CarePlan (`api::access`)
//! and, here, every resource the applied plan writes; the change is audited
//! in its own transaction like any write.
//!
//! Referral state changes are plain Task updates (`PUT /Task/[id]`),
//! checked by the pipeline's workflow rules.

use super::error::ApiError;
use super::negotiate::fhir_response;
use super::{AppState, Req};
use crate::fhir::{datetime, json, IssueType};
use crate::pipeline::{bundle_entries, Pipeline};
use crate::workflow::apply::{apply, ApplyInput};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::Value;

/// Operation parameters from the query (GET) or a Parameters body (POST).
pub fn operation_params(r: &Req) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = r.query.iter().filter(|(k, _)| !k.starts_with('_')).cloned().collect();
    if r.method == Method::POST && !r.body.is_empty() {
        let v = json::parse(&r.body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, IssueType::Structure, e))?;
        if json::resource_type(&v) != Some("Parameters") {
            return Err(ApiError::bad_request("the body must be a Parameters resource"));
        }
        for p in v.get("parameter").and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = p.get("name").and_then(Value::as_str) else { continue };
            let val = p
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
                .map(|(_, v)| match v {
                    Value::Object(o) => o.get("reference").and_then(Value::as_str).unwrap_or("").to_owned(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            if let Some(val) = val {
                out.push((name.to_owned(), val));
            }
        }
    }
    Ok(out)
}

fn reference_param(params: &[(String, String)], name: &str, rtype: &str) -> Result<Option<String>, ApiError> {
    let Some(v) = params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()) else { return Ok(None) };
    let id = v.strip_prefix(&format!("{rtype}/")).unwrap_or(v);
    if !crate::fhir::is_valid_id(id) {
        return Err(ApiError::bad_request(format!("parameter '{name}' must be a {rtype} reference ({rtype}/[id]), got '{v}'")));
    }
    Ok(Some(format!("{rtype}/{id}")))
}

async fn read_live(app: &AppState, rtype: &str, id: &str) -> Result<Value, ApiError> {
    let row = app.services.store.read(rtype, id).await.map_err(crate::read::ReadError::Store)?;
    match row.and_then(|r| r.body) {
        Some(b) => serde_json::from_slice(&b).map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, "corrupt stored resource")),
        None => Err(ApiError::not_found(format!("{rtype}/{id} not found"))),
    }
}

pub async fn plan_apply(app: &AppState, r: &Req, id: &str) -> Result<Response, ApiError> {
    let params = operation_params(r)?;
    let subject = reference_param(&params, "subject", "Patient")?.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, IssueType::Required, "$apply needs a subject (Patient/[id])"))?;
    let plan = read_live(app, "PlanDefinition", id).await?;
    let sid = subject.trim_start_matches("Patient/");
    read_live(app, "Patient", sid).await.map_err(|_| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueType::NotFound, format!("subject {subject} is not known")))?;
    let care_team = match reference_param(&params, "careTeam", "CareTeam")? {
        Some(t) => Some((t.clone(), read_live(app, "CareTeam", t.trim_start_matches("CareTeam/")).await?)),
        None => None,
    };
    let input = ApplyInput {
        subject,
        encounter: reference_param(&params, "encounter", "Encounter")?,
        organization: reference_param(&params, "organization", "Organization")?.or_else(|| r.caller.member_reference()),
        care_team,
        now: datetime::now_micros(),
    };
    let bundle = apply(&app.services, &plan, &input).await.map_err(|e| ApiError::Pipeline(e.into()))?;
    // the role policy decides every resource the plan writes, as for a transaction Bundle
    let bytes = serde_json::to_vec(&bundle).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, e.to_string()))?;
    super::access::authorize(app, &r.caller, &super::access::Access::Bundle, &[], &bytes)?;
    let entries = bundle_entries(&bundle).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, e))?;
    let results = Pipeline::single(&app.services).by(&r.caller).audited(r.audit.clone()).transaction(entries).await?;
    let cp = results.into_iter().next().and_then(|x| x.body.map(|b| (b, x.location))).ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, "CarePlan not written"))?;
    let mut resp = fhir_response(StatusCode::CREATED, cp.0.to_vec(), r.pretty);
    if let Some(loc) = cp.1.and_then(|l| HeaderValue::from_str(&format!("{}/{l}", r.base)).ok()) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}
