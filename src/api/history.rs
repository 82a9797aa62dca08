//! History interaction (R4 `http.html` §3.1.0.12): instance, type and system
//! history as a `history` Bundle, newest version first, with `_since` and
//! `_count` (`_at` is not supported); paging continues strictly below the last
//! version seen, so concurrent writes never shift pages. Versions pass the
//! caller's access filter (`auth::filter`): an instance the caller may not
//! see answers 403; type and system history hold only permitted versions
//! (no deletion entries for restricted callers), pages filled up to
//! `_count`.

use super::error::ApiError;
use super::negotiate::fhir_response;
use super::{AppState, Req};
use crate::auth::filter::{Access, AccessError, Denial};
use crate::fhir::datetime;
use crate::store::{HistoryQuery, HistoryScope};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

pub async fn history(app: &AppState, r: &Req, t: Option<&str>, id: Option<&str>) -> Result<Response, ApiError> {
    let count: usize = match r.param("_count") {
        Some(c) => c.parse().map_err(|_| ApiError::bad_request("_count must be a non-negative integer"))?,
        None => 50,
    };
    let count = count.clamp(1, 1000);
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        match r.param(name) {
            None => Ok(None),
            Some(s) => datetime::parse(s)
                .map(|d| Some(d.lo))
                .ok_or_else(|| ApiError::bad_request(format!("{name} '{s}' is not a FHIR instant/dateTime"))),
        }
    };
    let since = time("_since")?;
    if r.param("_at").is_some() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, crate::fhir::IssueType::NotSupported, "_at is not supported on history; use _since"));
    }
    let before = None;
    let before_hkey = match r.param("_page") {
        Some(p) => Some(p.strip_prefix('h').and_then(|n| n.parse().ok()).ok_or_else(|| ApiError::bad_request("bad _page token"))?),
        None => None,
    };
    let mut access = Access::new(&app.services, &r.caller);
    let scope = match (t, id) {
        (Some(t), Some(i)) => {
            let Some(cur) = app.services.store.read(t, i).await? else {
                return Err(ApiError::not_found(format!("{t}/{i} is not known")));
            };
            if !access.is_unrestricted() {
                // the instance must be visible (its last content when deleted)
                let last = match cur.body {
                    Some(b) => Some(b),
                    None => {
                        let q = HistoryQuery { scope: HistoryScope::Instance(t.to_owned(), i.to_owned()), since: None, before: None, before_hkey: None, limit: 1000 };
                        app.services.store.history(q).await?.into_iter().find_map(|h| h.body)
                    }
                };
                match last {
                    Some(b) => {
                        super::crud::permitted(&mut access, t, i, &b).await?;
                    }
                    None => return Err(AccessError::Denied(format!("{t}/{i}: {}", Denial::Consent.message())).into()),
                }
            }
            HistoryScope::Instance(t.to_owned(), i.to_owned())
        }
        (Some(t), None) => HistoryScope::Type(t.to_owned()),
        _ => HistoryScope::System,
    };
    let instance = matches!(scope, HistoryScope::Instance(..));
    let mut rows = vec![];
    let mut cursor = before_hkey;
    loop {
        let raw = app.services.store.history(HistoryQuery { scope: scope.clone(), since, before, before_hkey: cursor, limit: count + 1 }).await?;
        let exhausted = raw.len() <= count;
        cursor = raw.last().map(|h| h.hkey);
        for mut h in raw {
            if rows.len() > count {
                break;
            }
            if !access.is_unrestricted() {
                match &h.body {
                    // deletions: only in the history of an instance already checked
                    None if !instance => continue,
                    None => {}
                    Some(b) => match access.check_bytes(&h.rtype, &h.id, b).await? {
                        Ok(b) => h.body = Some(b),
                        Err(_) => continue,
                    },
                }
            }
            rows.push(h);
        }
        if rows.len() > count || exhausted || access.is_unrestricted() {
            break;
        }
    }
    let more = rows.len() > count;
    rows.truncate(count);
    let path = match (t, id) {
        (Some(t), Some(i)) => format!("{t}/{i}/_history"),
        (Some(t), None) => format!("{t}/_history"),
        _ => "_history".to_owned(),
    };
    let mut keep: Vec<(String, String)> = r.query.iter().filter(|(k, _)| k != "_page").cloned().collect();
    let self_url = format!("{}/{path}?{}", r.base, form_urlencoded::Serializer::new(String::new()).extend_pairs(&r.query).finish());
    let mut links = vec![json!({"relation": "self", "url": self_url})];
    if more {
        if let Some(last) = rows.last() {
            keep.push(("_page".into(), format!("h{}", last.hkey)));
            let q = form_urlencoded::Serializer::new(String::new()).extend_pairs(&keep).finish();
            links.push(json!({"relation": "next", "url": format!("{}/{path}?{q}", r.base)}));
        }
    }
    let mut entries = Vec::with_capacity(rows.len());
    for h in &rows {
        let mut e = serde_json::Map::new();
        e.insert("fullUrl".into(), json!(format!("{}/{}/{}", r.base, h.rtype, h.id)));
        if let Some(b) = &h.body {
            let v: Value = serde_json::from_slice(b).unwrap_or(Value::Null);
            e.insert("resource".into(), v);
        }
        let (url, status) = match h.method.as_str() {
            "POST" => (h.rtype.clone(), "201 Created"),
            "DELETE" => (format!("{}/{}", h.rtype, h.id), "204 No Content"),
            _ => (format!("{}/{}", h.rtype, h.id), if h.version == 1 { "201 Created" } else { "200 OK" }),
        };
        e.insert("request".into(), json!({"method": h.method, "url": url}));
        e.insert(
            "response".into(),
            json!({"status": status, "etag": format!("W/\"{}\"", h.version), "lastModified": datetime::format_instant(h.last_updated)}),
        );
        entries.push(Value::Object(e));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": datetime::format_instant(datetime::now_micros())},
        "type": "history",
        "link": links,
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    let interaction = match (t, id) {
        (Some(_), Some(_)) => "history-instance",
        (Some(_), None) => "history-type",
        _ => "history-system",
    };
    let resp = fhir_response(StatusCode::OK, serde_json::to_vec(&bundle).unwrap_or_default(), r.pretty);
    super::breakglass::finish(app, r, &access, interaction, resp).await
}
