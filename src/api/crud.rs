//! Instance-level interactions (R4 `http.html` §3.1.0.2 read, §3.1.0.3 vread,
//! §3.1.0.4 update incl. create-on-update and conditional update, §3.1.0.6
//! delete incl. conditional delete, §3.1.0.8 create incl. `If-None-Exist`),
//! with `ETag`, `Last-Modified`, `Location`, `If-Match` and
//! `Prefer: return=…`. Writes are one-entry transactions of the pipeline.

use super::error::ApiError;
use super::negotiate::{fhir_response, prefer};
use super::{AppState, Req};
use crate::fhir::{datetime, json, IssueType, OperationOutcome};
use crate::pipeline::{Entry, EntryResult, Method, Pipeline, ReturnPref};
use crate::auth::filter::{Access, AccessError, Denial};
use crate::search::params::Summary;
use crate::store::{HistoryQuery, HistoryScope};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;

pub fn etag(v: i64) -> String {
    format!("W/\"{v}\"")
}

fn parse_body(r: &Req) -> Result<Value, ApiError> {
    if r.body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, IssueType::Required, "request body is empty"));
    }
    let v = json::parse(&r.body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, IssueType::Structure, e))?;
    if !v.is_object() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, IssueType::Structure, "body must be a JSON object (a FHIR resource)"));
    }
    Ok(v)
}

fn header_str<'a>(r: &'a Req, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Answer a write according to `Prefer: return`.
pub fn write_response(r: &Req, res: EntryResult) -> Result<Response, ApiError> {
    let (ret, _) = prefer(&r.headers);
    let status = StatusCode::from_u16(res.status).unwrap_or(StatusCode::OK);
    let body = match (ret.unwrap_or(ReturnPref::Representation), &res.body) {
        (_, _) if res.status == 204 => Vec::new(),
        (ReturnPref::Minimal, _) => Vec::new(),
        (ReturnPref::OperationOutcome, _) => {
            let msg = match res.status {
                201 => "created",
                200 => "ok",
                _ => "done",
            };
            serde_json::to_vec(&OperationOutcome::info(msg).to_json()).unwrap_or_default()
        }
        (ReturnPref::Representation, Some(b)) => b.to_vec(),
        (ReturnPref::Representation, None) => Vec::new(),
    };
    let mut resp = if body.is_empty() {
        let mut resp = Response::new(axum::body::Body::empty());
        *resp.status_mut() = status;
        resp
    } else {
        fhir_response(status, body, r.pretty)
    };
    let h = resp.headers_mut();
    if let Some(v) = res.version {
        if res.status != 204 {
            h.insert(header::ETAG, HeaderValue::from_str(&etag(v)).expect("ascii"));
        }
    }
    if let Some(lm) = res.last_modified {
        h.insert(header::LAST_MODIFIED, HeaderValue::from_str(&datetime::format_http_date(lm)).expect("ascii"));
    }
    if let Some(loc) = &res.location {
        if res.status == 201 || res.status == 200 {
            if let Ok(v) = HeaderValue::from_str(&format!("{}/{loc}", r.base)) {
                h.insert(header::LOCATION, v.clone());
                if res.status == 201 {
                    h.insert(header::CONTENT_LOCATION, v);
                }
            }
        }
    }
    Ok(resp)
}

/// Run one write; a representation of a resource the caller may not see
/// (a conditional create that matched someone else's record) is left out.
async fn run_one(app: &AppState, r: &Req, entry: Entry) -> Result<EntryResult, ApiError> {
    let mut v = Pipeline::single(&app.services).by(&r.caller).audited(r.audit.clone()).transaction(vec![entry]).await?;
    let mut res = v.remove(0);
    let mut access = Access::new(&app.services, &r.caller);
    if let (Some(body), Some((t, id)), false) = (res.body.clone(), res.target.clone(), access.is_unrestricted()) {
        res.body = access.check_bytes(&t, &id, &body).await?.ok();
    }
    Ok(res)
}

pub async fn create(app: &AppState, r: &Req, t: &str) -> Result<Response, ApiError> {
    let res = parse_body(r)?;
    let entry = Entry {
        method: Method::Post,
        url: t.to_owned(),
        full_url: None,
        resource: Some(res),
        if_none_exist: header_str(r, "if-none-exist").map(str::to_owned),
        if_match: None,
    };
    let out = run_one(app, r, entry).await?;
    write_response(r, out)
}

pub async fn update(app: &AppState, r: &Req, t: &str, id: &str) -> Result<Response, ApiError> {
    let res = parse_body(r)?;
    let entry = Entry {
        method: Method::Put,
        url: format!("{t}/{id}"),
        full_url: None,
        resource: Some(res),
        if_none_exist: None,
        if_match: header_str(r, "if-match").map(str::to_owned),
    };
    write_response(r, run_one(app, r, entry).await?)
}

fn raw_query(r: &Req) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(r.query.iter().filter(|(k, _)| k != "_format" && k != "_pretty"))
        .finish()
}

pub async fn conditional_update(app: &AppState, r: &Req, t: &str) -> Result<Response, ApiError> {
    let q = raw_query(r);
    if q.is_empty() {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, IssueType::NotSupported, "PUT needs an id or search parameters"));
    }
    let res = parse_body(r)?;
    let entry = Entry {
        method: Method::Put,
        url: format!("{t}?{q}"),
        full_url: None,
        resource: Some(res),
        if_none_exist: None,
        if_match: header_str(r, "if-match").map(str::to_owned),
    };
    write_response(r, run_one(app, r, entry).await?)
}

pub async fn delete(app: &AppState, r: &Req, t: &str, id: &str) -> Result<Response, ApiError> {
    let entry = Entry {
        method: Method::Delete,
        url: format!("{t}/{id}"),
        full_url: None,
        resource: None,
        if_none_exist: None,
        if_match: header_str(r, "if-match").map(str::to_owned),
    };
    write_response(r, run_one(app, r, entry).await?)
}

pub async fn conditional_delete(app: &AppState, r: &Req, t: &str) -> Result<Response, ApiError> {
    let q = raw_query(r);
    if q.is_empty() {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, IssueType::NotSupported, "DELETE needs an id or search parameters"));
    }
    let entry = Entry { method: Method::Delete, url: format!("{t}?{q}"), full_url: None, resource: None, if_none_exist: None, if_match: None };
    write_response(r, run_one(app, r, entry).await?)
}

/// `_summary` / `_elements` applied to one resource's bytes (R4 search.html#summary, #elements).
pub fn shape_body(body: &[u8], summary: Option<Summary>, elements: Option<&[String]>) -> Vec<u8> {
    if summary.is_none() && elements.is_none() {
        return body.to_vec();
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else { return body.to_vec() };
    if let Some(el) = elements {
        let keep: Vec<&str> = el.iter().map(String::as_str).collect();
        v = json::subset_elements(&v, &keep);
    }
    match summary {
        Some(Summary::Text) => {
            v = json::subset_elements(&v, &["text"]);
        }
        Some(Summary::Data) => {
            if let Some(m) = v.as_object_mut() {
                m.shift_remove("text");
                json::mark_subsetted(m);
            }
        }
        _ => {}
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
}

pub fn summary_param(r: &Req) -> Result<Option<Summary>, ApiError> {
    match r.param("_summary") {
        None | Some("false") => Ok(None),
        Some("text") => Ok(Some(Summary::Text)),
        Some("data") => Ok(Some(Summary::Data)),
        Some("true") => Ok(Some(Summary::True)),
        Some("count") => Ok(Some(Summary::Count)),
        Some(s) => Err(ApiError::bad_request(format!("_summary '{s}' is not one of true, false, text, data, count"))),
    }
}

pub fn elements_param(r: &Req) -> Option<Vec<String>> {
    r.param("_elements").map(|e| e.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
}

fn resource_response(r: &Req, body: &[u8], version: i64, last_updated: i64) -> Result<Response, ApiError> {
    let summary = summary_param(r)?.filter(|s| *s != Summary::True && *s != Summary::Count);
    let elements = elements_param(r);
    let shaped = shape_body(body, summary, elements.as_deref());
    let mut resp = fhir_response(StatusCode::OK, shaped, r.pretty);
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(&etag(version)).expect("ascii"));
    h.insert(header::LAST_MODIFIED, HeaderValue::from_str(&datetime::format_http_date(last_updated)).expect("ascii"));
    Ok(resp)
}

/// The bytes the caller may see of a resource, or 403 (`auth::filter`).
pub async fn permitted(access: &mut Access<'_>, t: &str, id: &str, body: &bytes::Bytes) -> Result<bytes::Bytes, ApiError> {
    match access.check_bytes(t, id, body).await? {
        Ok(b) => Ok(b),
        Err(d) => Err(AccessError::Denied(format!("{t}/{id}: {}", d.message())).into()),
    }
}

/// For a restricted caller asking about a deleted resource (or a deletion
/// version): the last version with content must be permitted, else 403.
async fn check_deleted(app: &AppState, access: &mut Access<'_>, t: &str, id: &str) -> Result<(), ApiError> {
    if access.is_unrestricted() {
        return Ok(());
    }
    let q = HistoryQuery { scope: HistoryScope::Instance(t.to_owned(), id.to_owned()), since: None, before: None, before_hkey: None, limit: 1000 };
    let last = app.services.store.history(q).await?.into_iter().find_map(|h| h.body);
    match last {
        Some(b) => permitted(access, t, id, &b).await.map(|_| ()),
        None => Err(AccessError::Denied(format!("{t}/{id}: {}", Denial::Consent.message())).into()),
    }
}

pub async fn read(app: &AppState, r: &Req, t: &str, id: &str) -> Result<Response, ApiError> {
    let row = app.services.store.read(t, id).await?;
    let mut access = Access::new(&app.services, &r.caller);
    match row {
        Some(row) if !row.deleted => {
            let body = permitted(&mut access, t, id, row.body.as_ref().unwrap_or(&bytes::Bytes::new())).await?;
            if let Some(inm) = header_str(r, "if-none-match") {
                if crate::pipeline::parse_etag(inm) == Some(row.version) {
                    let mut resp = Response::new(axum::body::Body::empty());
                    *resp.status_mut() = StatusCode::NOT_MODIFIED;
                    resp.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag(row.version)).expect("ascii"));
                    return super::breakglass::finish(app, r, &access, "read", resp).await;
                }
            }
            if t == "Patient" {
                // linked records of the same person (MPI): `link` seealso, added on read, never stored
                if let Some(b) = crate::identity::query::with_seealso(&app.services, id, &body).await? {
                    let resp = resource_response(r, &b, row.version, row.last_updated)?;
                    return super::breakglass::finish(app, r, &access, "read", resp).await;
                }
            }
            let resp = resource_response(r, &body, row.version, row.last_updated)?;
            super::breakglass::finish(app, r, &access, "read", resp).await
        }
        Some(row) => {
            check_deleted(app, &mut access, t, id).await?;
            let mut resp = ApiError::new(StatusCode::GONE, IssueType::Deleted, format!("{t}/{id} was deleted")).into_response_inner();
            resp.headers_mut().insert(header::ETAG, HeaderValue::from_str(&etag(row.version)).expect("ascii"));
            Ok(resp)
        }
        None => Err(ApiError::not_found(format!("{t}/{id} is not known"))),
    }
}

pub async fn vread(app: &AppState, r: &Req, t: &str, id: &str, vid: &str) -> Result<Response, ApiError> {
    let v: i64 = vid.parse().map_err(|_| ApiError::bad_request(format!("'{vid}' is not a version id")))?;
    let mut access = Access::new(&app.services, &r.caller);
    match app.services.store.vread(t, id, v).await? {
        Some(h) if h.body.is_some() => {
            let body = permitted(&mut access, t, id, h.body.as_ref().unwrap_or(&bytes::Bytes::new())).await?;
            let resp = resource_response(r, &body, h.version, h.last_updated)?;
            super::breakglass::finish(app, r, &access, "vread", resp).await
        }
        Some(_) => {
            check_deleted(app, &mut access, t, id).await?;
            Err(ApiError::new(StatusCode::GONE, IssueType::Deleted, format!("{t}/{id} version {v} is a deletion")))
        }
        None => Err(ApiError::not_found(format!("{t}/{id} has no version {v}"))),
    }
}

impl ApiError {
    fn into_response_inner(self) -> Response {
        axum::response::IntoResponse::into_response(self)
    }
}
