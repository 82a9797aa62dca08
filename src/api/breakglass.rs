//! What the read handlers do with the access filter's outcome
//! (`auth::filter`): a withheld resource answers 403 with an
//! OperationOutcome (R4 `http.html` §3.1.0.1.2 "403 Forbidden"); a response
//! that break-glass released carries `X-Break-Glass: BTG` and is recorded
//! as an AuditEvent before it is sent.
//!
//! The break-glass AuditEvent follows IHE BALP's RESTful read/query shape
//! (`AuditEvent.type` `rest`, `subtype` the FHIR interaction, the
//! requesting client as agent with `purposeOfUse`, the patients as entities
//! of type person / role patient) and adds `purposeOfEvent` =
//! `v3-ActReason#BTG` (or the asserted code). It is written through the one
//! write pipeline, so it is durable before the response leaves. When the
//! general access audit (every access, issue 7 "Audit") records requests,
//! this event is the break-glass instance of it: same shape, with the
//! purpose of use filled.

use super::error::ApiError;
use super::{AppState, Req};
use crate::auth::filter::{Access, ACT_REASON};
use crate::fhir::datetime;
use crate::pipeline::{Entry, Method, Pipeline};
use axum::http::HeaderValue;
use axum::response::Response;
use serde_json::json;

/// The response header that marks a break-glass release.
pub const BREAK_GLASS_HEADER: &str = "x-break-glass";

/// Record and flag a break-glass release (nothing when there was none).
/// `interaction` is the FHIR restful-interaction code (`read`, `vread`,
/// `search-type`, `history-instance`, `operation`, …).
pub async fn finish(app: &AppState, r: &Req, access: &Access<'_>, interaction: &str, mut resp: Response) -> Result<Response, ApiError> {
    let patients = access.break_glass_patients();
    if patients.is_empty() {
        return Ok(resp);
    }
    let purpose = access.purpose().unwrap_or("BTG").to_owned();
    let pou = json!({"coding": [{"system": ACT_REASON, "code": purpose}]});
    let who = match r.caller.member_reference() {
        Some(m) => json!({"reference": m}),
        None => json!({"display": r.caller.client_id}),
    };
    let mut entity: Vec<serde_json::Value> = patients
        .iter()
        .map(|p| {
            json!({"what": {"reference": format!("Patient/{p}")},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}})
        })
        .collect();
    entity.push(json!({
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
        "description": format!("{} /{}", r.method, r.segs.join("/")),
    }));
    let ae = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": if interaction == "operation" { "E" } else { "R" },
        "recorded": datetime::format_instant(datetime::now_micros()),
        "outcome": "0",
        "outcomeDesc": "break-glass access: released without care relationship or consent",
        "purposeOfEvent": [pou.clone()],
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "who": who,
            "altId": r.caller.client_id,
            "requestor": true,
            "purposeOfUse": [pou],
        }],
        "source": {"observer": {"display": "carebridge"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
        "entity": entity,
    });
    let entry = Entry { method: Method::Post, url: "AuditEvent".into(), full_url: None, resource: Some(ae), if_none_exist: None, if_match: None };
    Pipeline::single(&app.services).transaction(vec![entry]).await?;
    resp.headers_mut().insert(BREAK_GLASS_HEADER, HeaderValue::from_static("BTG"));
    Ok(resp)
}
