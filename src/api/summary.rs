//! `GET|POST Patient/[id]/$everything` (R4 `patient-operation-everything.html`:
//! `_since`, `_type`, `_count`; a `searchset` Bundle with next/previous links)
//! and `GET Patient/[id]/$summary` (the IPS document, IPS IG 2.0.0
//! `$summary`), both across the person's linked records (`crate::summary`).
//!
//! Paging of `$everything` is by offset over the deterministic result order
//! (`_page=o<n>`): the set is recomputed per page, so a page reflects the
//! store at the time it is asked for. Both answer only what the caller's
//! access filter permits (`auth::filter`; `total` counts the permitted
//! resources).

use super::error::ApiError;
use super::negotiate::fhir_response;
use super::{AppState, Req};
use crate::fhir::datetime;
use crate::summary::{self, EverythingOptions};
use axum::http::StatusCode;
use axum::response::Response;

const DEFAULT_COUNT: usize = 100;
const MAX_COUNT: usize = 1000;

fn params(r: &Req) -> Vec<(String, String)> {
    let mut p = r.query.clone();
    if r.method == axum::http::Method::POST && !r.body.is_empty() {
        // a Parameters body: valueInstant/valueString/valueCode/valueInteger by name
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body) {
            for x in v.get("parameter").and_then(|a| a.as_array()).into_iter().flatten() {
                let name = x.get("name").and_then(|n| n.as_str()).unwrap_or("");
                let val = ["valueInstant", "valueDateTime", "valueString", "valueCode", "valueUri"]
                    .iter()
                    .find_map(|k| x.get(*k).and_then(|s| s.as_str()).map(str::to_owned))
                    .or_else(|| x.get("valueInteger").map(|i| i.to_string()));
                if let Some(val) = val {
                    p.push((name.to_owned(), val));
                }
            }
        }
    }
    p
}

pub async fn everything(app: &AppState, r: &Req, id: &str) -> Result<Response, ApiError> {
    let p = params(r);
    let get = |n: &str| p.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let since = match get("_since") {
        None => None,
        Some(s) => Some(datetime::parse(s).map(|d| d.lo).ok_or_else(|| ApiError::bad_request(format!("_since '{s}' is not a FHIR instant")))?),
    };
    let types = match get("_type") {
        None => None,
        Some(t) => {
            let ts: Vec<String> = t.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect();
            if let Some(bad) = ts.iter().find(|x| !app.services.registry.is_type(x)) {
                return Err(ApiError::bad_request(format!("_type: '{bad}' is not a resource type")));
            }
            Some(ts)
        }
    };
    let count = match get("_count") {
        None => DEFAULT_COUNT,
        Some(c) => c.parse::<usize>().map_err(|_| ApiError::bad_request(format!("_count '{c}' is not a number")))?.clamp(1, MAX_COUNT),
    };
    let offset = match get("_page") {
        None => 0,
        Some(pg) => pg.strip_prefix('o').and_then(|n| n.parse::<usize>().ok()).ok_or_else(|| ApiError::bad_request("bad _page token"))?,
    };
    let mut access = crate::auth::filter::Access::new(&app.services, &r.caller);
    let rows = summary::everything(&app.services, id, &EverythingOptions { types: types.clone(), since }, &mut access).await?;
    let total = rows.len();
    let page: Vec<_> = rows.into_iter().skip(offset).take(count).collect();
    let link = |off: usize| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = get("_since") {
            ser.append_pair("_since", s);
        }
        if let Some(t) = &types {
            ser.append_pair("_type", &t.join(","));
        }
        ser.append_pair("_count", &count.to_string());
        if off > 0 {
            ser.append_pair("_page", &format!("o{off}"));
        }
        format!("{}/Patient/{id}/$everything?{}", r.base, ser.finish())
    };
    let mut links = vec![serde_json::json!({"relation": "self", "url": link(offset)})];
    if offset + count < total {
        links.push(serde_json::json!({"relation": "next", "url": link(offset + count)}));
    }
    if offset > 0 {
        links.push(serde_json::json!({"relation": "previous", "url": link(offset.saturating_sub(count))}));
    }
    let mut b: Vec<u8> = Vec::with_capacity(512 + page.iter().map(|r| r.body.as_ref().map_or(0, |b| b.len() + 96)).sum::<usize>());
    b.extend_from_slice(b"{\"resourceType\":\"Bundle\",\"id\":");
    b.extend_from_slice(serde_json::to_string(&uuid::Uuid::new_v4().to_string()).unwrap_or_default().as_bytes());
    b.extend_from_slice(format!(",\"type\":\"searchset\",\"total\":{total},\"link\":").as_bytes());
    b.extend_from_slice(&serde_json::to_vec(&links).unwrap_or_default());
    if !page.is_empty() {
        b.extend_from_slice(b",\"entry\":[");
        let mut first = true;
        for row in &page {
            let Some(body) = &row.body else { continue };
            if !first {
                b.push(b',');
            }
            first = false;
            b.extend_from_slice(b"{\"fullUrl\":");
            b.extend_from_slice(serde_json::to_string(&format!("{}/{}/{}", r.base, row.rtype, row.id)).unwrap_or_default().as_bytes());
            b.extend_from_slice(b",\"resource\":");
            b.extend_from_slice(body);
            b.extend_from_slice(b",\"search\":{\"mode\":\"match\"}}");
        }
        b.push(b']');
    }
    b.push(b'}');
    super::breakglass::finish(app, r, &access, "operation", fhir_response(StatusCode::OK, b, r.pretty)).await
}

pub async fn summary(app: &AppState, r: &Req, id: &str) -> Result<Response, ApiError> {
    let mut access = crate::auth::filter::Access::new(&app.services, &r.caller);
    let doc = summary::ips(&app.services, id, &r.base, datetime::now_micros(), &mut access).await?;
    super::breakglass::finish(app, r, &access, "operation", fhir_response(StatusCode::OK, doc, r.pretty)).await
}
