//! `POST [base]` with a `transaction` or `batch` Bundle (R4 `http.html`
//! §3.1.0.11): the Bundle's entries become pipeline entries; the answer is a
//! `transaction-response` / `batch-response` Bundle with `response.status`,
//! `location`, `etag` and `lastModified` per entry, in request order. A
//! failing transaction is answered with the failing entry's status and an
//! OperationOutcome that names the entry; nothing is stored.
//!
//! Entry resources are included when `Prefer: return=representation`;
//! by default responses are minimal (status, location, etag). Reads and
//! returned representations pass the caller's access filter
//! (`auth::filter`): a withheld read answers 403 in its entry.
//!
//! Audit (with authentication configured): the writes are audited by the
//! pipeline in their own transaction (a transaction: one AuditEvent; a
//! batch: one per committed entry); every `GET`/`HEAD` entry leaves an
//! AuditEvent of its own like a direct read (`read`, the data, its patient,
//! the entry's status; subtype `path` = `Bundle.entry[n]`), and so does
//! every batch write entry that failed — all written before the answer
//! leaves.

use super::error::ApiError;
use super::negotiate::{fhir_response, prefer};
use super::{AppState, Req};
use crate::auth::audit::{patients_of, AccessRecord};
use crate::auth::policy::Interaction;
use crate::fhir::{datetime, json, IssueType, OperationOutcome};
use crate::pipeline::{Entry, EntryResult, Method, Pipeline, PipelineError, ReturnPref};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

fn status_text(s: u16) -> String {
    let reason = StatusCode::from_u16(s).ok().and_then(|c| c.canonical_reason()).unwrap_or("");
    format!("{s} {reason}").trim().to_owned()
}

fn invalid_entry(i: usize, msg: impl Into<String>) -> ApiError {
    ApiError::Pipeline(PipelineError::BadRequest(crate::fhir::OperationOutcome::error(IssueType::Invalid, msg)).in_entry(i))
}

pub async fn post_bundle(app: &AppState, r: &Req) -> Result<Response, ApiError> {
    if r.body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, IssueType::Required, "request body is empty"));
    }
    let v = json::parse(&r.body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, IssueType::Structure, e))?;
    if json::resource_type(&v) != Some("Bundle") {
        return Err(ApiError::bad_request("POST to the base takes a Bundle of type transaction or batch"));
    }
    let btype = v.get("type").and_then(Value::as_str).unwrap_or("");
    let is_tx = match btype {
        "transaction" => true,
        "batch" => false,
        other => return Err(ApiError::bad_request(format!("Bundle.type '{other}' cannot be processed; send transaction or batch"))),
    };
    let Value::Object(mut bundle) = v else { unreachable!("checked resourceType") };
    let entries_v = match bundle.remove("entry") {
        Some(Value::Array(a)) => a,
        None => vec![],
        Some(_) => return Err(ApiError::bad_request("Bundle.entry must be an array")),
    };
    let mut entries = Vec::with_capacity(entries_v.len());
    for (i, e) in entries_v.into_iter().enumerate() {
        let Value::Object(mut e) = e else { return Err(invalid_entry(i, "entry must be an object")) };
        let Some(Value::Object(req)) = e.remove("request") else { return Err(invalid_entry(i, "entry.request is required in a transaction/batch")) };
        let method = req
            .get("method")
            .and_then(Value::as_str)
            .and_then(Method::parse)
            .ok_or_else(|| invalid_entry(i, "entry.request.method must be GET, HEAD, POST, PUT, DELETE or PATCH"))?;
        let url = req.get("url").and_then(Value::as_str).ok_or_else(|| invalid_entry(i, "entry.request.url is required"))?;
        let url = url.strip_prefix(&format!("{}/", r.base)).unwrap_or(url).to_owned();
        let s = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_owned);
        let resource = e.remove("resource");
        if matches!(method, Method::Post | Method::Put) && resource.is_none() {
            return Err(invalid_entry(i, format!("entry with {method:?} needs a resource")));
        }
        entries.push(Entry {
            method,
            url,
            full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_owned),
            resource,
            if_none_exist: s("ifNoneExist"),
            if_match: s("ifMatch"),
        });
    }
    let (ret, _) = prefer(&r.headers);
    let include_resources = ret == Some(ReturnPref::Representation);
    let reads: Vec<bool> = entries.iter().map(|e| matches!(e.method, Method::Get | Method::Head)).collect();
    let requests: Vec<(Method, String)> = entries.iter().map(|e| (e.method, e.url.clone())).collect();
    let mut audits: Vec<AccessRecord> = vec![];
    let mut access = crate::auth::filter::Access::new(&app.services, &r.caller);
    let pipe = Pipeline::new(&app.services).by(&r.caller).audited(r.audit.clone());
    let raw: Vec<Result<EntryResult, crate::pipeline::PipelineError>> =
        if is_tx { pipe.transaction(entries).await?.into_iter().map(Ok).collect() } else { pipe.batch(entries).await };
    let mut results: Vec<Value> = Vec::with_capacity(raw.len());
    for (i, x) in raw.into_iter().enumerate() {
        let template = r.audit.as_ref().filter(|_| app.audit.is_some());
        results.push(match x {
            Ok(x) => {
                let patients = match (&x.body, &x.target, template.is_some() && reads[i]) {
                    (Some(b), Some((t, id)), true) => serde_json::from_slice::<Value>(b).map(|v| patients_of(t, id, &v)).unwrap_or_default(),
                    _ => vec![],
                };
                match visible(&mut access, x, reads[i]).await? {
                    Ok(x) => {
                        if let (Some(t), true) = (template, reads[i]) {
                            audits.push(entry_record(t, &requests[i], i, x.status, None, patients));
                        }
                        entry_json(&r.base, x, include_resources)
                    }
                    Err(oo) => {
                        if let Some(t) = template {
                            audits.push(entry_record(t, &requests[i], i, 403, Some(oo.first_message().to_owned()), patients));
                        }
                        json!({"response": {"status": status_text(403), "outcome": oo.to_json()}})
                    }
                }
            }
            Err(e) => {
                let (status, oo) = ApiError::Pipeline(e).status_and_outcome();
                // a failed batch entry wrote nothing, so no audit of its own yet
                if let Some(t) = template {
                    audits.push(entry_record(t, &requests[i], i, status.as_u16(), Some(oo.first_message().to_owned()), vec![]));
                }
                json!({"response": {"status": status_text(status.as_u16()), "outcome": oo.to_json()}})
            }
        });
    }
    if let (Some(sink), false) = (&app.audit, audits.is_empty()) {
        sink.record_all(audits).await.map_err(|e| {
            tracing::error!(error = %e, "audit records of bundle entries could not be written; request failed");
            ApiError::Pipeline(e)
        })?;
    }
    let out = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": datetime::format_instant(datetime::now_micros())},
        "type": if is_tx { "transaction-response" } else { "batch-response" },
        "entry": results,
    });
    let interaction = if is_tx { "transaction" } else { "batch" };
    super::breakglass::finish(app, r, &access, interaction, fhir_response(StatusCode::OK, serde_json::to_vec(&out).unwrap_or_default(), r.pretty)).await
}

/// The AuditEvent of one entry, like the record of the same request on
/// its own: a read of `Type/id` (or a search), or a failed change.
fn entry_record(template: &AccessRecord, request: &(Method, String), i: usize, status: u16, failure: Option<String>, mut patients: Vec<String>) -> AccessRecord {
    let (method, url) = request;
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (url.as_str(), None),
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let rtype = segs.first().map(|t| (*t).to_owned());
    let interaction = match (method, segs.len()) {
        (Method::Get | Method::Head, 1) => Interaction::Search,
        (Method::Get | Method::Head, 2) => Interaction::Read,
        (Method::Get | Method::Head, _) => Interaction::Vread,
        (Method::Post, _) => Interaction::Create,
        (Method::Delete, _) => Interaction::Delete,
        _ => Interaction::Update,
    };
    let data: Vec<String> = if segs.len() >= 2 { vec![segs.join("/")] } else { vec![] };
    if let (Some("Patient"), Some(id)) = (segs.first().copied(), segs.get(1)) {
        let p = format!("Patient/{id}");
        if !patients.contains(&p) {
            patients.insert(0, p);
        }
    }
    AccessRecord {
        caller: template.caller.clone(),
        interaction,
        rtype,
        data,
        patients,
        query: if interaction == Interaction::Search { query } else { None },
        status,
        failure: failure.map(|f| f.chars().take(200).collect()),
        operation: Some(format!("Bundle.entry[{i}]")),
        bundle: false,
        relationships: vec![],
    }
}

/// An entry's result as the caller may see it (`auth::filter`): a read the
/// caller may not see becomes a 403 outcome; a write's representation of a
/// resource it may not see (e.g. a conditional create that matched) is
/// left out.
async fn visible(access: &mut crate::auth::filter::Access<'_>, mut x: EntryResult, read: bool) -> Result<Result<EntryResult, OperationOutcome>, ApiError> {
    let (Some(body), Some((t, id))) = (x.body.clone(), x.target.clone()) else { return Ok(Ok(x)) };
    match access.check_bytes(&t, &id, &body).await? {
        Ok(b) => x.body = Some(b),
        Err(d) if read => return Ok(Err(OperationOutcome::error(IssueType::Forbidden, format!("{t}/{id}: {}", d.message())))),
        Err(_) => x.body = None,
    }
    Ok(Ok(x))
}

fn entry_json(base: &str, x: EntryResult, include_resource: bool) -> Value {
    let mut resp = Map::new();
    resp.insert("status".into(), Value::String(status_text(x.status)));
    if let Some(loc) = &x.location {
        resp.insert("location".into(), Value::String(loc.clone()));
    }
    if let (Some(v), true) = (x.version, x.status != 204) {
        resp.insert("etag".into(), Value::String(format!("W/\"{v}\"")));
    }
    if let Some(lm) = x.last_modified {
        resp.insert("lastModified".into(), Value::String(datetime::format_instant(lm)));
    }
    let mut e = Map::new();
    if let Some((t, id)) = &x.target {
        e.insert("fullUrl".into(), Value::String(format!("{base}/{t}/{id}")));
    }
    if include_resource {
        if let Some(b) = &x.body {
            if let Ok(v) = serde_json::from_slice::<Value>(b) {
                e.insert("resource".into(), v);
            }
        }
    }
    if let Some(oo) = &x.outcome {
        resp.insert("outcome".into(), oo.to_json());
    }
    e.insert("response".into(), Value::Object(resp));
    Value::Object(e)
}
