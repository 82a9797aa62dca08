//! `$validate` (R4 `resource-operation-validate.html`): `POST [type]/$validate`
//! and `POST [type]/[id]/$validate` with the resource as the body or inside a
//! `Parameters` (`resource`, `mode` = create | update | delete, `profile`),
//! and `GET [type]/[id]/$validate` for the stored version. The answer is 200
//! with an OperationOutcome listing the issues ("All OK" when none); a request
//! that is not a resource at all is a 400. Nothing is stored.
//!
//! What is checked: core, the resource's `meta.profile`, the loaded packs'
//! mandatory profiles for its type (as on write) and the `profile` parameter;
//! a profile the server does not know is an error issue naming it.

use super::error::ApiError;
use super::negotiate::fhir_response;
use super::{AppState, Req};
use crate::fhir::{json, IssueType, OperationOutcome, Severity};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

pub async fn validate(app: &AppState, r: &Req, t: &str, id: Option<&str>) -> Result<Response, ApiError> {
    let (resource, mode, profile) = if r.method == axum::http::Method::GET {
        let Some(id) = id else { return Err(ApiError::bad_request("GET $validate needs an instance id")) };
        let row = app.services.store.read(t, id).await?;
        let body = row.and_then(|x| x.body).ok_or_else(|| ApiError::not_found(format!("{t}/{id} is not known")))?;
        // validating a stored resource reads it: the caller must be allowed to see it
        let mut access = crate::auth::filter::Access::new(&app.services, &r.caller);
        let body = super::crud::permitted(&mut access, t, id, &body).await?;
        (json::parse(&body).map_err(ApiError::bad_request)?, None, r.param("profile").map(str::to_owned))
    } else {
        if r.body.is_empty() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, IssueType::Required, "$validate needs a resource or Parameters body"));
        }
        let v = json::parse(&r.body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, IssueType::Structure, e))?;
        if json::resource_type(&v) == Some("Parameters") && t != "Parameters" {
            let params = v.get("parameter").and_then(Value::as_array).cloned().unwrap_or_default();
            let get = |name: &str| params.iter().find(|p| p["name"] == name);
            let res = get("resource").and_then(|p| p.get("resource")).cloned().ok_or_else(|| ApiError::bad_request("Parameters has no 'resource'"))?;
            let mode = get("mode").and_then(|p| p.get("valueCode")).and_then(Value::as_str).map(str::to_owned);
            let profile = get("profile").and_then(|p| p.get("valueUri").or_else(|| p.get("valueCanonical"))).and_then(Value::as_str).map(str::to_owned);
            (res, mode, profile.or_else(|| r.param("profile").map(str::to_owned)))
        } else {
            (v, r.param("mode").map(str::to_owned), r.param("profile").map(str::to_owned))
        }
    };
    if json::resource_type(&resource) != Some(t) {
        return Err(ApiError::bad_request(format!("$validate on {t} needs a {t} resource")));
    }
    let mut oo = match mode.as_deref() {
        None | Some("create") | Some("update") => {
            let mut wanted = app.services.policy.mandatory(t, crate::validate::packs::Member::default());
            wanted.extend(profile.as_deref());
            app.services.validator.validate_with_profiles(&resource, &wanted)
        }
        Some("delete") => OperationOutcome::new(),
        Some(m) => return Err(ApiError::bad_request(format!("mode '{m}' is not one of create, update, delete"))),
    };
    if mode.as_deref() == Some("update") {
        match (resource.get("id").and_then(Value::as_str), id) {
            (None, _) => {
                oo.push(Severity::Error, IssueType::Required, "mode=update: the resource must have an id", Some(format!("{t}.id")));
            }
            (Some(rid), Some(url_id)) if rid != url_id => {
                oo.push(Severity::Error, IssueType::Invalid, format!("mode=update: resource id '{rid}' differs from the URL id '{url_id}'"), Some(format!("{t}.id")));
            }
            _ => {}
        }
    }
    Ok(fhir_response(StatusCode::OK, serde_json::to_vec(&oo.to_json()).unwrap_or_default(), r.pretty))
}
