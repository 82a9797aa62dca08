//! `POST /import/{institution}`: a CSV (`text/csv`) or JSON
//! (`application/json`) export of a member institution, translated with the
//! institution's mapping file and stored through the write pipeline
//! (`ingest::import`).
//!
//! | answer | when |
//! |---|---|
//! | 200 OperationOutcome | at least one row imported: the summary issue, then every rejected row (error) and warning with `location` = `row N, column C` |
//! | 422 OperationOutcome | nothing imported: every row bad, no rows, or `all-or-nothing` with any bad row (or a failed transaction) |
//! | 400 | the body is not readable as the declared format (not UTF-8, CSV header broken, JSON syntax, no records array) |
//! | 403 | the caller is a member other than an integration engine or operator and the institution is not mapped to it (`[institution] member`) |
//! | 404 | no mapping file for the institution |
//! | 415 | a Content-Type other than `text/csv` / `application/json`, or one the institution's mapping does not accept |
//!
//! Query: `all-or-nothing=true` (one transaction, nothing stored when any
//! row is bad), `filename=…` (the name shown in the Provenance; default
//! the `filename` of a `Content-Disposition` header, else `upload`).

use super::error::ApiError;
use super::{AppState, Req};
use crate::fhir::IssueType;
use crate::ingest::import::{import, ImportRequest};
use crate::translate::tabular::Format;
use axum::http::{header, StatusCode};
use axum::response::Response;

fn format_of(r: &Req) -> Option<Format> {
    let ct = r.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "text/csv" | "application/csv" | "text/comma-separated-values" => Some(Format::Csv),
        "application/json" | "text/json" => Some(Format::Json),
        _ => None,
    }
}

fn file_name(r: &Req) -> String {
    if let Some(f) = r.param("filename").filter(|f| !f.trim().is_empty()) {
        return f.trim().to_owned();
    }
    let cd = r.headers.get(header::CONTENT_DISPOSITION).and_then(|v| v.to_str().ok()).unwrap_or("");
    cd.split(';')
        .filter_map(|p| p.trim().strip_prefix("filename="))
        .map(|f| f.trim_matches('"').to_owned())
        .find(|f| !f.is_empty())
        .unwrap_or_else(|| "upload".to_owned())
}

pub async fn post(app: &AppState, r: &Req, institution: &str) -> Result<Response, ApiError> {
    let Some(mapping) = app.import.get(institution) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            format!("unknown institution '{institution}': there is no mapping file {institution}.toml"),
        ));
    };
    if let Err(m) = r.caller.may_send_for(institution, mapping.member.as_deref()) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, IssueType::Forbidden, m));
    }
    let Some(format) = format_of(r).filter(|f| mapping.accepts(*f)) else {
        let accepted: Vec<&str> = [(Format::Csv, "text/csv"), (Format::Json, "application/json")]
            .iter()
            .filter(|(f, _)| mapping.accepts(*f))
            .map(|(_, m)| *m)
            .collect();
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            format!("POST /import/{institution} takes {} (Content-Type)", accepted.join(" or ")),
        ));
    };
    if r.body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, IssueType::Required, format!("POST /import/{institution} needs the export as the body")));
    }
    let all_or_nothing = matches!(r.param("all-or-nothing"), Some("true" | "1" | ""));
    let req = ImportRequest { bytes: r.body.clone(), format, file_name: file_name(r), all_or_nothing, audit: r.audit.clone() };
    let report = import(&app.services, mapping, req, &|_| {}).await?;
    let status = if report.nothing_imported() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    Ok(super::negotiate::fhir_response(status, serde_json::to_vec(&report.to_outcome()).unwrap_or_default(), r.pretty))
}
