//! `POST /hl7v2`: one HL7 v2 message (ER7; any of `x-application/hl7-v2+er7`,
//! `application/hl7-v2`, `text/plain`) → the v2 ACK as the body
//! (`x-application/hl7-v2+er7`). HTTP status mirrors MSA-1: 200 `AA`,
//! 422 `AE`, 400 `AR`; 403 with an `AR` ACK when the caller is a member
//! that may not send for the message's institution (MSH-4 mapped to
//! another member, or to none: `Caller::may_send_for`).
//!
//! The FHIR side of the result: a `Link: <…/Provenance/id>; rel="related"`
//! header names the Provenance written for the message (its `target`s are
//! every resource written). With `Accept: multipart/mixed` the answer is a
//! two-part `multipart/mixed` body instead: the ACK, then the FHIR
//! transaction-response Bundle (or the OperationOutcome for `AE`).

use super::error::ApiError;
use super::{AppState, Req};
use crate::ingest::hl7v2::handle_for;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;

pub const ER7: &str = "x-application/hl7-v2+er7; charset=utf-8";

pub async fn post(app: &AppState, r: &Req) -> Result<Response, ApiError> {
    if r.body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, crate::fhir::IssueType::Required, "POST /hl7v2 needs an HL7 v2 message body"));
    }
    let out = handle_for(&app.services, &app.hl7, &r.body, Some(&r.caller), r.audit.clone()).await;
    let status = StatusCode::from_u16(out.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let multipart = r
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("multipart/mixed"));
    let mut resp = if multipart {
        let boundary = format!("cb-{}", uuid::Uuid::new_v4().simple());
        let fhir = out.fhir.as_ref().map(|v| serde_json::to_string(v).unwrap_or_default()).unwrap_or_default();
        let body = format!(
            "--{boundary}\r\nContent-Type: {ER7}\r\n\r\n{}\r\n--{boundary}\r\nContent-Type: application/fhir+json; fhirVersion=4.0\r\n\r\n{fhir}\r\n--{boundary}--\r\n",
            out.ack
        );
        let mut resp = Response::new(axum::body::Body::from(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")).expect("ascii boundary"),
        );
        resp
    } else {
        let mut resp = Response::new(axum::body::Body::from(out.ack.clone()));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ER7));
        resp
    };
    *resp.status_mut() = status;
    if let Some(p) = &out.provenance {
        if let Ok(v) = HeaderValue::from_str(&format!("<{}/{p}>; rel=\"related\"", r.base)) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}
