//! Master patient index operations (HTTP side; matching and linking are in
//! `identity`, writes go through the pipeline):
//!
//! * `POST /Patient/$match` — R4 `patient-operation-match.html`: a
//!   `Parameters` with `resource` (a Patient), `onlyCertainMatches`, `count`;
//!   answers a `searchset` Bundle, best first, each entry with
//!   `search.score` (0–1) and the `match-grade` extension
//!   (`certain | probable | possible`).
//! * `GET|POST /Patient/$ihe-pix` — IHE ITI-83 (PIXm):
//!   `sourceIdentifier=system|value`, optional `targetSystem` (repeatable);
//!   answers `Parameters` with `targetIdentifier` and `targetId`; 404 when
//!   no Patient carries the source identifier, 400 for a malformed one.
//! * `POST /Person/$link` (`patient` ×2 as valueReference, optional `note`),
//!   `POST /Person/$unlink` (`patient`, optional `note`),
//!   `POST /Task/[id]/$confirm`, `POST /Task/[id]/$reject` (a review Task of
//!   code `urn:carebridge:mpi|review`) — manual decisions, carebridge
//!   operations in FHIR style; each answers an OperationOutcome saying what
//!   was done and leaves an AuditEvent.

use super::error::ApiError;
use super::negotiate::fhir_response;
use super::{AppState, Req};
use crate::fhir::{json, IssueType, OperationOutcome};
use crate::identity::{query, ManualOp};
use crate::pipeline::Pipeline;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

const MATCH_GRADE: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

fn parameters(r: &Req) -> Result<Vec<Value>, ApiError> {
    if r.body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, IssueType::Required, "the operation needs a Parameters body"));
    }
    let v = json::parse(&r.body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, IssueType::Structure, e))?;
    if json::resource_type(&v) != Some("Parameters") {
        return Err(ApiError::bad_request("the body must be a Parameters resource"));
    }
    Ok(v.get("parameter").and_then(Value::as_array).cloned().unwrap_or_default())
}

fn param<'a>(ps: &'a [Value], name: &str) -> Option<&'a Value> {
    ps.iter().find(|p| p["name"] == name)
}

fn ok_outcome(r: &Req, msg: String) -> Response {
    fhir_response(StatusCode::OK, serde_json::to_vec(&OperationOutcome::info(msg).to_json()).unwrap_or_default(), r.pretty)
}

/// `POST /Patient/$match`
pub async fn patient_match(app: &AppState, r: &Req) -> Result<Response, ApiError> {
    if r.method != Method::POST {
        return Err(super::method_not_allowed(r));
    }
    let ps = parameters(r)?;
    let resource = param(&ps, "resource").and_then(|p| p.get("resource")).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, IssueType::Required, "$match needs a 'resource' parameter with a Patient")
    })?;
    if json::resource_type(resource) != Some("Patient") {
        return Err(ApiError::bad_request("$match 'resource' must be a Patient"));
    }
    let only_certain = match param(&ps, "onlyCertainMatches").map(|p| p.get("valueBoolean")) {
        None => false,
        Some(Some(Value::Bool(b))) => *b,
        Some(_) => return Err(ApiError::bad_request("'onlyCertainMatches' must be a valueBoolean")),
    };
    let count = match param(&ps, "count").map(|p| p.get("valueInteger").and_then(Value::as_i64)) {
        None => 10,
        Some(Some(n)) if n >= 1 => (n as usize).min(100),
        Some(_) => return Err(ApiError::bad_request("'count' must be a positive valueInteger")),
    };
    let found = query::match_patient(&app.services, resource, only_certain, count).await?;
    // candidates pass the caller's access filter like any read
    let mut access = crate::auth::filter::Access::new(&app.services, &r.caller);
    let mut shown = Vec::with_capacity(found.len());
    for (mut row, c) in found {
        let Some(b) = row.body.clone() else { continue };
        if let Ok(b) = access.check_bytes("Patient", &row.id, &b).await? {
            row.body = Some(b);
            shown.push((row, c));
        }
    }
    let entries: Vec<Value> = shown
        .iter()
        .map(|(row, c)| {
            let res: Value = row.body.as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            json!({
                "fullUrl": format!("{}/Patient/{}", r.base, row.id),
                "resource": res,
                "search": {
                    "extension": [{"url": MATCH_GRADE, "valueCode": c.grade.code()}],
                    "mode": "match",
                    "score": serde_json::Number::from_f64(c.score01(&app.services.mpi)).map(Value::Number).unwrap_or(Value::Null),
                },
            })
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    });
    super::breakglass::finish(app, r, &access, "operation", fhir_response(StatusCode::OK, serde_json::to_vec(&bundle).unwrap_or_default(), r.pretty)).await
}

/// `GET|POST /Patient/$ihe-pix`
pub async fn ihe_pix(app: &AppState, r: &Req) -> Result<Response, ApiError> {
    let mut source: Option<String> = None;
    let mut targets: Vec<String> = vec![];
    if r.method == Method::POST {
        for p in parameters(r)? {
            match p["name"].as_str() {
                Some("sourceIdentifier") => {
                    let (s, v) = (p.pointer("/valueIdentifier/system"), p.pointer("/valueIdentifier/value"));
                    source = match (s.and_then(Value::as_str), v.and_then(Value::as_str), p.get("valueString").and_then(Value::as_str)) {
                        (Some(s), Some(v), _) => Some(format!("{s}|{v}")),
                        (_, _, Some(t)) => Some(t.to_owned()),
                        _ => None,
                    }
                }
                Some("targetSystem") => {
                    if let Some(t) = p.get("valueUri").or_else(|| p.get("valueString")).and_then(Value::as_str) {
                        targets.push(t.to_owned());
                    }
                }
                _ => {}
            }
        }
    } else if r.method == Method::GET || r.method == Method::HEAD {
        for (k, v) in &r.query {
            match k.as_str() {
                "sourceIdentifier" => source = Some(v.clone()),
                "targetSystem" => targets.extend(v.split(',').map(str::to_owned)),
                "_format" | "_pretty" => {}
                other => return Err(ApiError::bad_request(format!("$ihe-pix does not know the parameter '{other}'"))),
            }
        }
    } else {
        return Err(super::method_not_allowed(r));
    }
    let source = source.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, IssueType::Required, "$ihe-pix needs sourceIdentifier=system|value"))?;
    let Some((system, value)) = source.split_once('|').filter(|(s, v)| !s.is_empty() && !v.is_empty()) else {
        return Err(ApiError::bad_request(format!("sourceIdentifier '{source}' is not system|value")));
    };
    let Some((identifiers, ids)) = query::pix(&app.services, system, value, &targets).await? else {
        return Err(ApiError::not_found(format!("no Patient has the identifier {system}|{value}")));
    };
    // cross-references are patient data: a restricted caller must be allowed
    // to see every record they come from (403 otherwise)
    let mut access = crate::auth::filter::Access::new(&app.services, &r.caller);
    if !access.is_unrestricted() {
        for p in &ids {
            if let Some(b) = app.services.store.read("Patient", p).await?.and_then(|row| row.body) {
                super::crud::permitted(&mut access, "Patient", p, &b).await?;
            }
        }
    }
    let mut out: Vec<Value> = identifiers.into_iter().map(|i| json!({"name": "targetIdentifier", "valueIdentifier": i})).collect();
    out.extend(ids.into_iter().map(|p| json!({"name": "targetId", "valueReference": {"reference": format!("Patient/{p}")}})));
    let params = json!({"resourceType": "Parameters", "parameter": out});
    super::breakglass::finish(app, r, &access, "operation", fhir_response(StatusCode::OK, serde_json::to_vec(&params).unwrap_or_default(), r.pretty)).await
}

fn patient_ref(p: &Value) -> Option<String> {
    let r = p.pointer("/valueReference/reference").and_then(Value::as_str)?;
    let id = r.rsplit_once("Patient/").map(|(_, id)| id)?;
    crate::fhir::is_valid_id(id).then(|| id.to_owned())
}

fn note(ps: &[Value]) -> String {
    param(ps, "note").and_then(|p| p.get("valueString")).and_then(Value::as_str).unwrap_or("").to_owned()
}

/// `POST /Person/$link` and `POST /Person/$unlink`
pub async fn person_op(app: &AppState, r: &Req, op: &str) -> Result<Response, ApiError> {
    if r.method != Method::POST {
        return Err(super::method_not_allowed(r));
    }
    let ps = parameters(r)?;
    let pats: Vec<String> = ps.iter().filter(|p| p["name"] == "patient").filter_map(patient_ref).collect();
    let m = match (op, pats.as_slice()) {
        ("$link", [a, b]) => ManualOp::Link { a: a.clone(), b: b.clone(), note: note(&ps) },
        ("$link", _) => return Err(ApiError::bad_request("$link needs two 'patient' parameters (valueReference Patient/…)")),
        ("$unlink", [p]) => ManualOp::Unlink { patient: p.clone(), note: note(&ps) },
        _ => return Err(ApiError::bad_request("$unlink needs one 'patient' parameter (valueReference Patient/…)")),
    };
    let msg = Pipeline::single(&app.services).audited(r.audit.clone()).identity(&m).await?;
    Ok(ok_outcome(r, msg))
}

/// `POST /Task/[id]/$confirm` and `POST /Task/[id]/$reject`
pub async fn review(app: &AppState, r: &Req, id: &str, confirm: bool) -> Result<Response, ApiError> {
    if r.method != Method::POST {
        return Err(super::method_not_allowed(r));
    }
    let ps = if r.body.is_empty() { vec![] } else { parameters(r)? };
    let m = ManualOp::Review { task: id.to_owned(), confirm, note: note(&ps) };
    let msg = Pipeline::single(&app.services).audited(r.audit.clone()).identity(&m).await?;
    Ok(ok_outcome(r, msg))
}
