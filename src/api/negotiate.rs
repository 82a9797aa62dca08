//! Content negotiation and request headers (R4 `http.html` §3.1.0.1.8 mime
//! types and `_format`, §3.1.0.1.10 `fhirVersion` parameter, `Prefer`).
//!
//! JSON only: `application/fhir+json` and `application/json` (also `*/*` and
//! no Accept); an XML-only Accept or `_format=xml` is answered 406, an XML
//! body 415, each with an OperationOutcome that says JSON is required.
//!
//! `fhirVersion` in Accept: this server speaks 4.0 (4.0.1). `4.0` is served.
//! `4.3` (R4B, what the `fhir-sdk` client sends) is also served, as 4.0
//! content: R4B's JSON for the resources exchanged here is wire-compatible
//! with R4, and the response says `fhirVersion=4.0` honestly. Any other
//! version is answered 406.

use super::error::ApiError;
use crate::fhir::IssueType;
use crate::pipeline::ReturnPref;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8; fhirVersion=4.0";

/// Versions served (see module doc).
const SERVED_VERSIONS: [&str; 4] = ["4.0", "4.0.1", "4.3", "4.3.0"];

fn is_json_mime(m: &str) -> bool {
    matches!(m, "application/fhir+json" | "application/json" | "application/json+fhir" | "*/*" | "application/*" | "json")
}

fn is_xml_mime(m: &str) -> bool {
    matches!(m, "application/fhir+xml" | "application/xml" | "text/xml" | "application/xml+fhir" | "xml")
}

/// Check `_format` and `Accept`.
pub fn check_accept(headers: &HeaderMap, format: Option<&str>) -> Result<(), ApiError> {
    if let Some(f) = format {
        let m = f.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if is_json_mime(&m) {
            return Ok(());
        }
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            format!("_format '{f}' is not supported; this server answers application/fhir+json only"),
        ));
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(()) };
    if accept.trim().is_empty() {
        return Ok(());
    }
    let mut any_json = false;
    let mut version_problem = None;
    for part in accept.split(',') {
        let mut it = part.split(';');
        let mime = it.next().unwrap_or("").trim().to_ascii_lowercase();
        if !is_json_mime(&mime) && !mime.starts_with("text/html") {
            continue;
        }
        if mime.starts_with("text/html") {
            continue;
        }
        let mut ok = true;
        for p in it {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("fhirVersion") {
                    let v = v.trim().trim_matches('"');
                    if !SERVED_VERSIONS.contains(&v) {
                        ok = false;
                        version_problem = Some(v.to_owned());
                    }
                }
            }
        }
        if ok {
            any_json = true;
        }
    }
    if any_json {
        return Ok(());
    }
    if let Some(v) = version_problem {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            format!("fhirVersion {v} is not served; this server implements FHIR 4.0.1 (fhirVersion=4.0)"),
        ));
    }
    let xml = accept.split(',').any(|p| is_xml_mime(p.split(';').next().unwrap_or("").trim()));
    Err(ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        IssueType::NotSupported,
        if xml {
            "XML is not supported; ask for application/fhir+json".to_owned()
        } else {
            format!("cannot produce '{accept}'; this server answers application/fhir+json")
        },
    ))
}

/// Check the request body's Content-Type (absent is taken as JSON).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return Ok(()) };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if matches!(mime.as_str(), "application/fhir+json" | "application/json" | "application/json+fhir" | "") {
        return Ok(());
    }
    let msg = if is_xml_mime(&mime) {
        "XML bodies are not supported; send application/fhir+json".to_owned()
    } else {
        format!("Content-Type '{mime}' is not supported; send application/fhir+json")
    };
    Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, IssueType::NotSupported, msg))
}

/// Parse `Prefer` into (return preference, strict handling).
pub fn prefer(headers: &HeaderMap) -> (Option<ReturnPref>, bool) {
    let mut ret = None;
    let mut strict = false;
    for v in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
        for part in v.split([',', ';']) {
            match part.trim().replace(' ', "").as_str() {
                "return=minimal" => ret = Some(ReturnPref::Minimal),
                "return=representation" => ret = Some(ReturnPref::Representation),
                "return=OperationOutcome" => ret = Some(ReturnPref::OperationOutcome),
                "handling=strict" => strict = true,
                "handling=lenient" => strict = false,
                _ => {}
            }
        }
    }
    (ret, strict)
}

/// A FHIR JSON response; `pretty` re-indents (`_pretty=true`).
pub fn fhir_response(status: StatusCode, body: Vec<u8>, pretty: bool) -> Response {
    let body = if pretty {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| serde_json::to_vec_pretty(&v).ok())
            .unwrap_or(body)
    } else {
        body
    };
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}
