//! HTTP only: routing, content negotiation, headers, status codes (FHIR R4
//! `http.html`). One file per interaction group; the single error → status
//! mapping is `error.rs`. Handlers translate HTTP into calls of the write
//! pipeline (`pipeline`) or the read path (`read`, `store` lookups) and back.
//!
//! Routing is done by one dispatcher over the FHIR URL patterns
//! (`[type]`, `[type]/[id]`, `…/_history[/vid]`, `[type]/_search`,
//! `_history`, `metadata`, `/`), so that unknown types answer 404 and wrong
//! methods 405, each with an OperationOutcome.
//!
//! Invariant: no handler writes to the store except through `pipeline`.

pub mod access;
mod breakglass;
mod bundle;
mod crud;
pub mod error;
mod history;
mod hl7v2;
mod import;
mod metadata;
mod mpi;
pub mod negotiate;
mod search;
mod subscription;
mod summary;
mod validate;
mod workflow;
mod report;

use crate::fhir::IssueType;
use crate::services::Services;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use error::ApiError;
use std::sync::Arc;

/// Server settings the API needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Public base URL (e.g. `https://gw.example.org/fhir`); derived from `Host` when unset.
    pub base_url: Option<String>,
    /// Request bodies over this many bytes are answered 413.
    pub max_body_bytes: usize,
    /// HL7 v2 ingest settings (institutions by sending facility)
    pub hl7: crate::ingest::hl7v2::Hl7Config,
    /// CSV/JSON import mapping files (`<institution>.toml`); `None`: `mappings/` if it exists.
    pub mappings_dir: Option<std::path::PathBuf>,
    /// reports and bulk export (`[report]`)
    pub report: crate::report::ReportConfig,
    /// Take the caller from the `X-Carebridge-Dev-Caller` header
    /// (`client_id;member-type[;member]`, purpose of use from
    /// `X-Purpose-Of-Use`). Tests and `bench access` only — never set by
    /// configuration, and the server refuses it on a non-loopback address;
    /// authentication replaces it.
    pub dev_caller_header: bool,
    /// SMART Backend Services authentication, role policy, rate limits
    /// (`[auth]`); `None` = insecure development mode (loopback only):
    /// every request runs as the development operator, unaudited.
    pub auth: Option<Arc<crate::auth::token::Authenticator>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { base_url: None, max_body_bytes: 64 * 1024 * 1024, hl7: Default::default(), mappings_dir: None, report: Default::default(), dev_caller_header: false, auth: None }
    }
}

pub struct AppState {
    pub services: Services,
    pub config: ApiConfig,
    /// HL7 v2 ingest settings (institutions by sending facility)
    pub hl7: crate::ingest::hl7v2::Hl7Config,
    /// CSV/JSON import: one mapping per institution
    pub import: crate::ingest::import::Mappings,
    /// measures, report facts, export jobs
    pub reports: Arc<crate::report::Reports>,
    /// writer of access AuditEvents (reads, refusals); `Some` when auth is configured
    pub audit: Option<crate::pipeline::audit::AuditSink>,
}

pub type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

/// What every handler gets: method, path segments, query pairs, headers, body.
pub struct Req {
    pub method: Method,
    pub segs: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    pub base: String,
    pub pretty: bool,
    /// who is calling (see `auth`)
    pub caller: crate::auth::Caller,
    /// the request's audit record template, for handlers that write through
    /// the pipeline (the change's AuditEvent goes into its transaction)
    pub audit: Option<crate::auth::audit::AccessRecord>,
}

impl Req {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn base_url(cfg: &ApiConfig, headers: &HeaderMap, https: bool) -> String {
    if let Some(b) = &cfg.base_url {
        return b.trim_end_matches('/').to_owned();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("{}://{host}", if https { "https" } else { "http" })
}

async fn dispatch(State(app): State<Shared>, req: Request) -> Response {
    match handle(&app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn read_body(limit: usize, body: Body, headers: &HeaderMap) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueType::TooLong,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()) {
        if len > limit {
            return Err(too_large());
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut src: Option<&dyn std::error::Error> = Some(&e);
        while let Some(s) = src {
            if s.to_string().contains("length limit") {
                return too_large();
            }
            src = s.source();
        }
        ApiError::bad_request(format!("could not read request body: {e}"))
    })
}

async fn handle(app: &AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default();
    let format = query.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.as_str());
    let is_v2 = parts.uri.path().trim_matches('/') == "hl7v2";
    // CSV/JSON import checks its own Content-Type (415 there)
    let is_import = parts.uri.path().trim_matches('/').starts_with("import/");
    // CSV reports and NDJSON export files negotiate their own formats
    let raw_path = parts.uri.path().trim_matches('/');
    let own_format = raw_path.starts_with("_export/file/")
        || (raw_path.ends_with("$evaluate-measure")
            && (matches!(format, Some("csv" | "text/csv"))
                || parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.trim_start().starts_with("text/csv"))));
    if !is_v2 && !own_format {
        negotiate::check_accept(&parts.headers, format)?;
    }
    let path = parts.uri.path().trim_matches('/');
    // the TLS listener marks its requests with the peer certificate (or its absence)
    let https = parts.extensions.get::<access::PeerCert>().is_some();
    let base = base_url(&app.config, &parts.headers, https);
    // the SMART endpoints answer without a bearer token (RFC 6749 / SMART discovery)
    if app.config.auth.is_some() && (path == "auth/token" || path.starts_with(".well-known/")) {
        let b = if parts.method == Method::POST { read_body(64 * 1024, body, &parts.headers).await? } else { bytes::Bytes::new() };
        return match access::auth_endpoint(app, &parts.method, path, &parts.headers, &b, &base).await {
            Some(r) => Ok(r),
            None => Err(ApiError::not_found(format!("no endpoint at /{path}"))),
        };
    }
    // who is calling: 401 before anything else is read (metadata stays public)
    let caller = if path == "metadata" { crate::auth::Caller::dev_operator() } else { access::authenticate(app, &parts.headers)? };
    let mut limit = app.config.max_body_bytes;
    if let Some(auth) = &app.config.auth {
        if path != "metadata" {
            access::rate_limit(auth, &caller)?;
            access::check_client_cert(auth, &caller, &parts.extensions)?;
            if let Some(l) = auth.client(&caller.client_id).and_then(|c| c.max_body_bytes) {
                limit = l;
            }
        }
    }
    let segs: Vec<String> = if path.is_empty() {
        vec![]
    } else {
        path.split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect()
    };
    let has_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    let body = if has_body {
        let b = read_body(limit, body, &parts.headers).await?;
        let is_form_search = segs.last().map(|s| s == "_search").unwrap_or(false);
        if !is_form_search && !is_v2 && !is_import && !b.is_empty() {
            negotiate::check_content_type(&parts.headers)?;
        }
        b
    } else {
        bytes::Bytes::new()
    };
    let pretty = query.iter().any(|(k, v)| k == "_pretty" && v == "true");
    // development servers without [auth]: the test-only caller header, when enabled
    let caller = if app.config.auth.is_none() && app.config.dev_caller_header { dev_caller(&app.config, &parts.headers) } else { caller };
    let what = access::classify(app, &parts.method, &segs);
    let record = if app.audit.is_some() { access::record_for(&caller, &what, &segs, &query) } else { None };
    if let Err(denied) = access::authorize(app, &caller, &what, &query, &body) {
        return match record {
            Some(rec) => access::audit_after(app, rec, Err(denied)).await,
            None => Err(denied),
        };
    }
    let r = Req { method: parts.method.clone(), base, segs, query, headers: parts.headers, body, pretty, caller, audit: record.clone() };
    // the audit trail is complete before anything reads it (pipeline::audit)
    if may_read_audit_events(&r) {
        crate::pipeline::audit::flush(&app.services).await?;
    }
    let result = route(app, r).await;
    match record {
        Some(rec) => access::audit_after(app, rec, result).await,
        None => result,
    }
}

/// Could this request return AuditEvents? AuditEvent reads and searches,
/// system-level search and history, `$everything`, `$export`, includes
/// naming AuditEvent and Bundles mentioning it: queued access records are
/// materialized first (`pipeline::audit::flush`).
fn may_read_audit_events(r: &Req) -> bool {
    let first = r.segs.first().map(String::as_str);
    match first {
        Some("AuditEvent") => true,
        Some("_history" | "_search" | "$export") => true,
        None => r.method == Method::GET || memchr::memmem::find(&r.body, b"AuditEvent").is_some(),
        Some(_) => {
            r.segs.iter().any(|s| s == "$everything" || s == "$export")
                || r.query.iter().any(|(k, v)| (k.starts_with("_include") || k.starts_with("_revinclude")) && v.contains("AuditEvent"))
        }
    }
}

/// The caller of a request: the development operator, or (tests only, when
/// `ApiConfig::dev_caller_header` is set) the `X-Carebridge-Dev-Caller`
/// header `client_id;member-type[;member]`.
fn dev_caller(cfg: &ApiConfig, headers: &HeaderMap) -> crate::auth::Caller {
    let mut c = crate::auth::Caller::dev_operator();
    if !cfg.dev_caller_header {
        return c;
    }
    if let Some(h) = headers.get("x-carebridge-dev-caller").and_then(|v| v.to_str().ok()) {
        let mut it = h.split(';').map(str::trim);
        if let Some(id) = it.next().filter(|s| !s.is_empty()) {
            c.client_id = id.to_owned();
        }
        if let Some(t) = it.next() {
            if let Some(mt) = crate::auth::MemberType::ALL.iter().find(|m| m.as_str() == t) {
                c.member_type = *mt;
            }
        }
        c.member = it.next().map(str::to_owned);
        // the purpose of use the request asserts (break-glass: ETREAT, BTG)
        c.purpose_of_use = headers.get("x-purpose-of-use").and_then(|v| v.to_str().ok()).map(|p| p.trim().to_owned()).filter(|p| !p.is_empty());
    }
    c
}

fn method_not_allowed(r: &Req) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueType::NotSupported,
        format!("{} is not allowed on /{}", r.method, r.segs.join("/")),
    )
}

fn check_type(app: &AppState, t: &str) -> Result<(), ApiError> {
    if t.starts_with('$') {
        return Err(ApiError::new(StatusCode::NOT_FOUND, IssueType::NotSupported, format!("operation '{t}' is not supported")));
    }
    if !app.services.registry.is_type(t) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, IssueType::NotSupported, format!("unknown resource type '{t}'")));
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.starts_with('$') {
        return Err(ApiError::new(StatusCode::NOT_FOUND, IssueType::NotSupported, format!("operation '{id}' is not supported")));
    }
    if !crate::fhir::is_valid_id(id) {
        return Err(ApiError::bad_request(format!("'{id}' is not a valid resource id")));
    }
    Ok(())
}

async fn route(app: &AppState, r: Req) -> Result<Response, ApiError> {
    let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    let m = r.method.clone();
    let get = m == Method::GET || m == Method::HEAD;
    match segs.as_slice() {
        [] if m == Method::POST => bundle::post_bundle(app, &r).await,
        [] => Err(method_not_allowed(&r)),
        ["metadata"] if get => metadata::capability_statement(app, &r),
        ["metadata"] => Err(method_not_allowed(&r)),
        ["_history"] if get => history::history(app, &r, None, None).await,
        ["_history"] => Err(method_not_allowed(&r)),
        ["hl7v2"] if m == Method::POST => hl7v2::post(app, &r).await,
        ["hl7v2"] => Err(method_not_allowed(&r)),
        ["import", inst] if m == Method::POST => import::post(app, &r, inst).await,
        ["import", _] => Err(method_not_allowed(&r)),
        ["$export"] => report::export_kickoff(app, &r, "system", None).await,
        ["_export", "status", id] => report::export_status(app, &r, id).await,
        ["_export", "file", id, name] => report::export_file(app, &r, id, name).await,
        [t, ..] if t.starts_with('$') || t.starts_with('_') => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotSupported,
            format!("'{t}' is not supported at the system level"),
        )),
        [t] => {
            check_type(app, t)?;
            match m {
                _ if get => search::search(app, &r, t).await,
                Method::POST => crud::create(app, &r, t).await,
                Method::PUT => crud::conditional_update(app, &r, t).await,
                Method::DELETE => crud::conditional_delete(app, &r, t).await,
                _ => Err(method_not_allowed(&r)),
            }
        }
        ["Patient", "$export"] => report::export_kickoff(app, &r, "patient", None).await,
        ["Group", id, "$export"] => {
            check_id(id)?;
            report::export_kickoff(app, &r, "group", Some(id)).await
        }
        ["Measure", "$evaluate-measure"] => report::evaluate_measure(app, &r, None).await,
        ["Measure", id, "$evaluate-measure"] => {
            check_id(id)?;
            report::evaluate_measure(app, &r, Some(id)).await
        }
        ["Patient", "$match"] => mpi::patient_match(app, &r).await,
        ["Patient", "$ihe-pix"] => mpi::ihe_pix(app, &r).await,
        ["Person", op @ ("$link" | "$unlink")] => mpi::person_op(app, &r, op).await,
        ["PlanDefinition", id, "$apply"] => {
            check_id(id)?;
            if get || m == Method::POST {
                workflow::plan_apply(app, &r, id).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        ["Subscription", id, "$status"] => {
            check_id(id)?;
            if get {
                subscription::status(app, &r, id).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        ["Subscription", id, "$events"] => {
            check_id(id)?;
            if get || m == Method::POST {
                subscription::events(app, &r, id).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        ["Task", id, op @ ("$confirm" | "$reject")] => {
            check_id(id)?;
            mpi::review(app, &r, id, *op == "$confirm").await
        }
        [t, "$validate"] => {
            check_type(app, t)?;
            if m == Method::POST {
                validate::validate(app, &r, t, None).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        [t, id, "$validate"] => {
            check_type(app, t)?;
            check_id(id)?;
            if m == Method::POST || get {
                validate::validate(app, &r, t, Some(id)).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        [t, "_search"] => {
            check_type(app, t)?;
            if m == Method::POST {
                search::search(app, &r, t).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        [t, "_history"] => {
            check_type(app, t)?;
            if get {
                history::history(app, &r, Some(t), None).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        [t, id] => {
            check_type(app, t)?;
            check_id(id)?;
            match m {
                _ if get => crud::read(app, &r, t, id).await,
                Method::PUT => crud::update(app, &r, t, id).await,
                Method::DELETE => crud::delete(app, &r, t, id).await,
                _ => Err(method_not_allowed(&r)),
            }
        }
        ["Patient", id, "$everything"] => {
            check_id(id)?;
            if get || m == Method::POST {
                summary::everything(app, &r, id).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        ["Patient", id, "$summary"] => {
            check_id(id)?;
            if get {
                summary::summary(app, &r, id).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        [t, id, "_history"] => {
            check_type(app, t)?;
            check_id(id)?;
            if get {
                history::history(app, &r, Some(t), Some(id)).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        [t, id, "_history", vid] => {
            check_type(app, t)?;
            check_id(id)?;
            if get {
                crud::vread(app, &r, t, id, vid).await
            } else {
                Err(method_not_allowed(&r))
            }
        }
        _ => Err(ApiError::not_found(format!("no FHIR endpoint at /{}", r.segs.join("/")))),
    }
}
