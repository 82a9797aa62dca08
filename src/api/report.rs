//! Reports and bulk data over HTTP:
//! `Measure/$evaluate-measure` and `Measure/[id]/$evaluate-measure`
//! (R4 `measure-operation-evaluate-measure.html`: `periodStart`,
//! `periodEnd`, `reportType`, `subject`, `measure`; plus `stratify`, a
//! comma list of stratifier codes), as MeasureReport JSON or CSV
//! (`Accept: text/csv` / `_format=csv`); and the Bulk Data Access 2.0.0
//! export (`export.html`): `$export`, `Patient/$export`,
//! `Group/[id]/$export`, the status URL `_export/status/[job]` (GET polls,
//! DELETE cancels) and the files `_export/file/[job]/[Type].ndjson`.

use super::error::ApiError;
use super::negotiate::fhir_response;
use super::{AppState, Req};
use crate::auth::MemberType;
use crate::fhir::{datetime, IssueType};
use crate::report::evaluate::{self, EvalRequest};
use crate::report::export::{self, ExportParams};
use crate::report::output::{self, ReportType};
use crate::report::{deid, ReportError};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::Value;

/// Query parameters plus those of a `Parameters` body (POST).
fn params(r: &Req) -> Vec<(String, String)> {
    let mut p = r.query.clone();
    if r.method == Method::POST && !r.body.is_empty() {
        if let Ok(v) = serde_json::from_slice::<Value>(&r.body) {
            for x in v.get("parameter").and_then(Value::as_array).into_iter().flatten() {
                let name = x.get("name").and_then(Value::as_str).unwrap_or("");
                let val = ["valueDate", "valueDateTime", "valueInstant", "valueString", "valueCode", "valueUri", "valueCanonical"]
                    .iter()
                    .find_map(|k| x.get(*k).and_then(Value::as_str).map(str::to_owned))
                    .or_else(|| x.pointer("/valueReference/reference").and_then(Value::as_str).map(str::to_owned));
                if let Some(val) = val {
                    p.push((name.to_owned(), val));
                }
            }
        }
    }
    p
}

fn wants_csv(r: &Req) -> bool {
    if let Some(f) = r.param("_format") {
        return matches!(f, "csv" | "text/csv");
    }
    r.headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').next().is_some_and(|m| m.trim().starts_with("text/csv")))
}

pub async fn evaluate_measure(app: &AppState, r: &Req, id: Option<&str>) -> Result<Response, ApiError> {
    if r.method != Method::GET && r.method != Method::POST && r.method != Method::HEAD {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, IssueType::NotSupported, "use GET or POST for $evaluate-measure"));
    }
    let p = params(r);
    let get = |n: &str| p.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let reports = &app.reports;
    let key = id.or(get("measure")).ok_or_else(|| ApiError::bad_request("which measure? give Measure/[id]/$evaluate-measure or the measure parameter"))?;
    let m = match reports.builtin(key) {
        Some(m) => m,
        None => {
            // a stored Measure: by id (instance level) or by url (type level)
            let row = if id.is_some() {
                app.services.store.read("Measure", key).await?
            } else {
                let req = crate::search::params::SearchRequest::parse(&app.services.registry, "Measure", &[("url".into(), key.into())], true)?;
                crate::read::search(&app.services, &req, &mut crate::auth::filter::Access::new(&app.services, &r.caller)).await?.matches.into_iter().next()
            };
            let row = row.filter(|x| !x.deleted).ok_or_else(|| ApiError::not_found(format!("Measure '{key}' is not known")))?;
            let body = row.body.clone().unwrap_or_default();
            let json: Value = serde_json::from_slice(&body).map_err(|_| ApiError::from(ReportError::Unprocessable("stored Measure is not JSON".into())))?;
            reports.compile_stored(&row.id, row.version, &json)?
        }
    };
    let period_start = get("periodStart").ok_or_else(|| ApiError::bad_request("periodStart is required"))?.to_owned();
    let period_end = get("periodEnd").ok_or_else(|| ApiError::bad_request("periodEnd is required"))?.to_owned();
    let subject = get("subject").map(|s| crate::report::facts::patient_id(s).unwrap_or_else(|| s.to_owned()));
    let rtype = match get("reportType") {
        None if subject.is_some() => ReportType::Individual,
        None | Some("summary") | Some("population") => ReportType::Summary,
        Some("subject-list") | Some("patient-list") => ReportType::SubjectList,
        Some("subject") | Some("individual") => ReportType::Individual,
        Some(o) => return Err(ApiError::bad_request(format!("reportType '{o}': expected summary, subject-list or subject"))),
    };
    let may_see_subjects = r.caller.member_type.is_clinical() || r.caller.member_type == MemberType::Operator;
    if rtype != ReportType::Summary && !may_see_subjects {
        return Err(ReportError::Forbidden(format!("reportType {} is for clinical roles only; ask for a summary report", rtype.as_str())).into());
    }
    if subject.is_some() && !may_see_subjects {
        return Err(ReportError::Forbidden("a subject report is for clinical roles only".into()).into());
    }
    if rtype == ReportType::Individual && subject.is_none() {
        return Err(ApiError::bad_request("reportType subject needs the subject parameter"));
    }
    let stratify = get("stratify").map(|s| s.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect::<Vec<_>>());
    let req = EvalRequest { period_start, period_end, subject, want_subjects: rtype != ReportType::Summary, stratify };
    // validate the period before the (possibly long) refresh
    evaluate::period_bound(&req.period_start, false)?;
    evaluate::period_bound(&req.period_end, true)?;
    let snap = reports.facts.snapshot(app.services.store.as_ref(), None).await?;
    // counts: only an explicit Consent denial of the purpose removes a person;
    // lists of subjects: the caller's care relationships and Consent, as every read
    let filter = crate::report::access::RowFilter::for_report(&app.services, &r.caller, rtype != ReportType::Summary).await?;
    let (m2, req2, model) = (m.clone(), req.clone(), reports.model.clone());
    let tally = tokio::task::spawn_blocking(move || evaluate::evaluate(&m2, &snap, &model, &filter, &req2, None))
        .await
        .map_err(|_| ApiError::from(ReportError::Unprocessable("measure evaluation failed".into())))??;
    let k = reports.config.min_cell;
    let masks = (rtype == ReportType::Summary).then(|| output::masks(&m, &tally, k));
    if wants_csv(r) {
        let body = output::csv(&m, &tally, &req, masks.as_deref());
        let mut resp = Response::new(axum::body::Body::from(body));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
        return Ok(resp);
    }
    let now = datetime::format_instant(datetime::now_micros());
    let report = output::measure_report(&m, &tally, &req, rtype, masks.as_deref(), k, &now);
    Ok(fhir_response(StatusCode::OK, serde_json::to_vec(&report).unwrap_or_default(), r.pretty))
}

fn split_type_filters(values: &[&str]) -> Vec<String> {
    let mut out = vec![];
    for v in values {
        let mut cur = String::new();
        let parts: Vec<&str> = v.split(',').collect();
        for (i, part) in parts.iter().enumerate() {
            let starts_query = part.split_once('?').is_some_and(|(t, _)| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()) && t.starts_with(|c: char| c.is_ascii_uppercase()));
            if i > 0 && !starts_query {
                cur.push(',');
                cur.push_str(part);
                continue;
            }
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.push_str(part);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

pub async fn export_kickoff(app: &AppState, r: &Req, level: &str, group: Option<&str>) -> Result<Response, ApiError> {
    if r.method != Method::GET && r.method != Method::POST {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, IssueType::NotSupported, "use GET or POST for $export"));
    }
    let prefer = r.headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !prefer.split([',', ';']).any(|x| x.trim() == "respond-async") {
        return Err(ApiError::bad_request("$export is asynchronous: send 'Prefer: respond-async'"));
    }
    let p = params(r);
    let all = |n: &str| p.iter().filter(|(k, _)| k == n).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    if let Some(f) = all("_outputFormat").first() {
        if !matches!(*f, "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
            return Err(ApiError::bad_request(format!("_outputFormat '{f}' is not supported; use application/fhir+ndjson")));
        }
    }
    for unsupported in ["_elements", "patient", "includeAssociatedData"] {
        if !all(unsupported).is_empty() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, IssueType::NotSupported, format!("export parameter {unsupported} is not supported")));
        }
    }
    let reg = &app.services.registry;
    let insurer = r.caller.is_insurer();
    let mut types: Vec<String> = vec![];
    for t in all("_type").iter().flat_map(|v| v.split(',')).map(str::trim).filter(|x| !x.is_empty()) {
        if !reg.is_type(t) {
            return Err(ApiError::bad_request(format!("_type: '{t}' is not a resource type")));
        }
        if insurer && deid::WITHHELD.contains(&t) {
            return Err(ReportError::Forbidden(format!("{t} is not exported to the insurer role")).into());
        }
        if !types.iter().any(|x| x == t) {
            types.push(t.to_owned());
        }
    }
    let compartment: Vec<&str> = std::iter::once("Patient").chain(reg.patient_compartment.iter().map(|(t, _)| t.as_str())).collect();
    if level != "system" {
        if let Some(bad) = types.iter().find(|t| !compartment.contains(&t.as_str())) {
            return Err(ApiError::bad_request(format!("_type: {bad} is not in the Patient compartment ({level}-level export)")));
        }
    }
    if types.is_empty() {
        // the types that hold data
        let rows = app.services.store.rows(crate::store::Sql::new("SELECT DISTINCT rtype FROM resources WHERE deleted = 0")).await?;
        let mut present: Vec<String> = rows.iter().filter_map(|x| x.first().and_then(|v| v.as_str()).map(str::to_owned)).collect();
        present.sort();
        types = present
            .into_iter()
            .filter(|t| level == "system" || compartment.contains(&t.as_str()))
            .filter(|t| !insurer || !deid::WITHHELD.contains(&t.as_str()))
            .collect();
    }
    let since = match all("_since").first() {
        None => None,
        Some(s) => Some(datetime::parse(s).map(|d| d.lo).ok_or_else(|| ApiError::bad_request(format!("_since '{s}' is not a FHIR instant")))?),
    };
    let mut type_filters = vec![];
    for f in split_type_filters(&all("_typeFilter")) {
        let (t, q) = f.split_once('?').ok_or_else(|| ApiError::bad_request(format!("_typeFilter '{f}': expected Type?query")))?;
        if !reg.is_type(t) {
            return Err(ApiError::bad_request(format!("_typeFilter: '{t}' is not a resource type")));
        }
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        crate::search::params::SearchRequest::parse(reg, t, &pairs, true).map_err(|e| ApiError::bad_request(format!("_typeFilter '{f}': {e}")))?;
        type_filters.push((t.to_owned(), q.to_owned()));
    }
    if let Some(g) = group {
        export::group_members(&app.services, g).await?;
    }
    let request = {
        let mut u = format!("{}/{}", r.base, r.segs.join("/"));
        if !r.query.is_empty() {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &r.query {
                ser.append_pair(k, v);
            }
            u.push('?');
            u.push_str(&ser.finish());
        }
        u
    };
    let params = ExportParams { level: level.to_owned(), group: group.map(str::to_owned), types, since, type_filters, deidentify: insurer, member: r.caller.member.clone(), member_type: r.caller.member_type, scopes: r.caller.scopes.clone(), purpose_of_use: r.caller.purpose_of_use.clone() };
    let id = export::kick_off(&app.services, &app.reports, &r.caller, &request, params).await?;
    let mut resp = fhir_response(StatusCode::ACCEPTED, serde_json::to_vec(&crate::fhir::OperationOutcome::info("export started").to_json()).unwrap_or_default(), false);
    if let Ok(v) = HeaderValue::from_str(&format!("{}/_export/status/{id}", r.base)) {
        resp.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(resp)
}

pub async fn export_status(app: &AppState, r: &Req, id: &str) -> Result<Response, ApiError> {
    if r.method == Method::DELETE {
        return if export::cancel(&app.services, &app.reports, &r.caller, id).await? {
            Ok(fhir_response(StatusCode::ACCEPTED, serde_json::to_vec(&crate::fhir::OperationOutcome::info("export cancelled").to_json()).unwrap_or_default(), false))
        } else {
            Err(ApiError::not_found(format!("no export {id}")))
        };
    }
    if r.method != Method::GET {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, IssueType::NotSupported, "GET polls, DELETE cancels"));
    }
    export::cleanup_expired(&app.services, &app.reports).await?;
    let job = export::load_job(&app.services, id).await?.ok_or_else(|| ApiError::not_found(format!("no export {id}")))?;
    if job.client_id != r.caller.client_id {
        return Err(ReportError::Forbidden("this export belongs to another client".into()).into());
    }
    match job.status.as_str() {
        "completed" => {
            let mut resp = Response::new(axum::body::Body::from(serde_json::to_vec(&export::manifest(&job, &r.base)).unwrap_or_default()));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(e) = job.expires {
                if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_micros(e.max(0) as u64))) {
                    resp.headers_mut().insert(header::EXPIRES, v);
                }
            }
            Ok(resp)
        }
        "error" => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, format!("export failed: {}", job.error.unwrap_or_default()))),
        _ => {
            let mut resp = Response::new(axum::body::Body::empty());
            *resp.status_mut() = StatusCode::ACCEPTED;
            if let Ok(v) = HeaderValue::from_str(&job.progress) {
                resp.headers_mut().insert("x-progress", v);
            }
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(resp)
        }
    }
}

pub async fn export_file(app: &AppState, r: &Req, id: &str, name: &str) -> Result<Response, ApiError> {
    if r.method != Method::GET {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, IssueType::NotSupported, "export files are read with GET"));
    }
    let path = export::file(&app.services, &app.reports, &r.caller, id, name).await?;
    let f = tokio::fs::File::open(&path).await.map_err(|e| ApiError::from(ReportError::Io(e.to_string())))?;
    let stream = tokio_util_stream(f);
    let mut resp = Response::new(axum::body::Body::from_stream(stream));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
    Ok(resp)
}

/// A file as a stream of 64 KiB chunks (no whole-file buffering).
fn tokio_util_stream(f: tokio::fs::File) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 1 << 16];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}
