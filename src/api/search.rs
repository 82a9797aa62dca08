//! Search interaction (R4 `http.html` §3.1.0.9, `search.html`): `GET [type]?…`
//! and `POST [type]/_search` (form body + URL parameters), answered with a
//! `searchset` Bundle with self/next/previous links, `total`, `_include`d
//! entries (`search.mode = include`) and, under lenient handling, an
//! OperationOutcome entry naming the parameters that were ignored.
//! Matches and included resources pass the caller's access filter
//! (`auth::filter`, see `read` for how pages and `total` stay consistent).

use super::crud::shape_body;
use super::error::ApiError;
use super::negotiate::{fhir_response, prefer};
use super::{AppState, Req};
use crate::fhir::{datetime, IssueType, OperationOutcome, Severity};
use crate::read;
use crate::search::params::{SearchRequest, Summary};
use crate::store::ResourceRow;
use axum::http::{header, StatusCode};
use axum::response::Response;

pub async fn search(app: &AppState, r: &Req, t: &str) -> Result<Response, ApiError> {
    let mut pairs: Vec<(String, String)> = r.query.clone();
    if r.method == axum::http::Method::POST {
        let ct = r.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !r.body.is_empty() {
            if !ct.starts_with("application/x-www-form-urlencoded") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    IssueType::NotSupported,
                    "POST _search takes application/x-www-form-urlencoded parameters",
                ));
            }
            pairs.extend(form_urlencoded::parse(&r.body).map(|(k, v)| (k.into_owned(), v.into_owned())));
        }
    }
    let (_, strict) = prefer(&r.headers);
    let req = SearchRequest::parse(&app.services.registry, t, &pairs, strict)?;
    let mut access = crate::auth::filter::Access::new(&app.services, &r.caller);
    let out = read::search(&app.services, &req, &mut access).await?;
    let body = searchset_bundle(&r.base, &req, &out);
    super::breakglass::finish(app, r, &access, "search-type", fhir_response(StatusCode::OK, body, r.pretty)).await
}

fn link_url(base: &str, req: &SearchRequest, page: Option<&str>) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &req.echoed {
        if k != "_count" {
            ser.append_pair(k, v);
        }
    }
    ser.append_pair("_count", &req.count.to_string());
    if let Some(p) = page {
        ser.append_pair("_page", p);
    }
    format!("{base}/{}?{}", req.rtype, ser.finish())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn push_entry(out: &mut Vec<u8>, first: &mut bool, base: &str, row: &ResourceRow, mode: &str, req: &SearchRequest) {
    let Some(body) = &row.body else { return };
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.extend_from_slice(b"{\"fullUrl\":");
    out.extend_from_slice(json_str(&format!("{base}/{}/{}", row.rtype, row.id)).as_bytes());
    out.extend_from_slice(b",\"resource\":");
    let summary = req.summary.filter(|s| matches!(s, Summary::Text | Summary::Data));
    if summary.is_some() || (req.elements.is_some() && mode == "match") {
        out.extend_from_slice(&shape_body(body, summary, req.elements.as_deref()));
    } else {
        out.extend_from_slice(body);
    }
    out.extend_from_slice(b",\"search\":{\"mode\":\"");
    out.extend_from_slice(mode.as_bytes());
    out.extend_from_slice(b"\"}}");
}

/// Build the searchset Bundle bytes directly, embedding stored resource bytes as they are.
pub fn searchset_bundle(base: &str, req: &SearchRequest, out: &read::SearchOutcome) -> Vec<u8> {
    let mut b: Vec<u8> = Vec::with_capacity(1024 + out.matches.iter().map(|r| r.body.as_ref().map_or(0, |b| b.len())).sum::<usize>());
    b.extend_from_slice(b"{\"resourceType\":\"Bundle\",\"id\":");
    b.extend_from_slice(json_str(&uuid::Uuid::new_v4().to_string()).as_bytes());
    b.extend_from_slice(b",\"meta\":{\"lastUpdated\":");
    b.extend_from_slice(json_str(&datetime::format_instant(datetime::now_micros())).as_bytes());
    b.extend_from_slice(b"},\"type\":\"searchset\"");
    if let Some(t) = out.total {
        b.extend_from_slice(format!(",\"total\":{t}").as_bytes());
    }
    b.extend_from_slice(b",\"link\":[{\"relation\":\"self\",\"url\":");
    b.extend_from_slice(json_str(&link_url(base, req, req.page.as_deref())).as_bytes());
    b.push(b'}');
    if let Some(n) = &out.next {
        b.extend_from_slice(b",{\"relation\":\"next\",\"url\":");
        b.extend_from_slice(json_str(&link_url(base, req, Some(n))).as_bytes());
        b.push(b'}');
    }
    if let Some(p) = &out.prev {
        b.extend_from_slice(b",{\"relation\":\"previous\",\"url\":");
        b.extend_from_slice(json_str(&link_url(base, req, Some(p))).as_bytes());
        b.push(b'}');
    }
    b.push(b']');
    let has_entries = !out.matches.is_empty() || !out.included.is_empty() || !req.ignored.is_empty();
    if has_entries {
        b.extend_from_slice(b",\"entry\":[");
        let mut first = true;
        for row in &out.matches {
            push_entry(&mut b, &mut first, base, row, "match", req);
        }
        for row in &out.included {
            push_entry(&mut b, &mut first, base, row, "include", req);
        }
        if !req.ignored.is_empty() {
            let mut oo = OperationOutcome::new();
            for i in &req.ignored {
                oo.push(Severity::Warning, IssueType::NotSupported, format!("search parameter ignored: {i}"), None);
            }
            if !first {
                b.push(b',');
            }
            b.extend_from_slice(b"{\"resource\":");
            b.extend_from_slice(&serde_json::to_vec(&oo.to_json()).unwrap_or_default());
            b.extend_from_slice(b",\"search\":{\"mode\":\"outcome\"}}");
        }
        b.push(b']');
    }
    b.push(b'}');
    b
}
