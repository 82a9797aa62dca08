//! Access control at the HTTP boundary (issue 7): the SMART Backend
//! Services endpoints (`POST /auth/token`, `GET /.well-known/smart-configuration`,
//! `GET /.well-known/jwks.json`), bearer-token authentication of every FHIR
//! request (RFC 6750 §3: 401 with `WWW-Authenticate: Bearer`), per-client
//! rate limits (429 + `Retry-After`), the one place where the role policy is
//! enforced ([`authorize`]: the router's interaction and type → `auth::policy::decide`),
//! and the access audit of reads and refused requests (BALP AuditEvents,
//! written before the answer leaves).
//!
//! Invariant: with authentication configured, no FHIR endpoint except
//! `metadata` runs without a verified caller and an allowing policy decision
//! (or, for what belongs to one member or client — a Subscription's
//! `$status`/`$events`, an export job's status and files — its handler's
//! owner check);
//! every such request that reaches routing leaves exactly one AuditEvent
//! (changes: in their own transaction, see `pipeline::audit`; everything
//! else: [`audit_after`]).

use super::error::ApiError;
use super::{AppState, Req};
use crate::auth::audit::{patients_of, AccessRecord};
use crate::auth::policy::{decide, Interaction};
use crate::auth::token::{Authenticator, BearerError, TokenError};
use crate::auth::Caller;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::Value;

/// The SHA-256 fingerprint (lower-case hex) of the client certificate of
/// the TLS connection a request came on (a request extension set by the
/// HTTPS listener; absent on plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert(pub Option<String>);

/// Members configured with client certificates: the request must have come
/// over TLS with one of them (403 otherwise).
pub fn check_client_cert(auth: &Authenticator, caller: &Caller, ext: &axum::http::Extensions) -> Result<(), ApiError> {
    let Some(c) = auth.client(&caller.client_id) else { return Ok(()) };
    if c.client_cert_sha256.is_empty() {
        return Ok(());
    }
    match ext.get::<PeerCert>().and_then(|p| p.0.as_ref()) {
        Some(fp) if c.client_cert_sha256.iter().any(|x| x == fp) => Ok(()),
        _ => Err(forbidden("this member's clients must present their registered TLS client certificate")),
    }
}

/// The request header carrying the purpose of use (v3 ActReason code:
/// `TREAT`, `ETREAT`, `BTG`, …) the caller asserts.
pub const PURPOSE_OF_USE_HEADER: &str = "x-purpose-of-use";

/// What a request does, as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// no policy decision needed (`metadata`, the auth endpoints, unknown paths → 404/405 later)
    Public,
    One { interaction: Interaction, rtype: Option<String>, id: Option<String> },
    /// a batch/transaction Bundle: each entry is decided on its own
    Bundle,
    /// decided by its handler on who owns what is asked for (a
    /// Subscription's `$status`/`$events`: the member that created it; an
    /// export job's status and files: the client that started it), and
    /// audited like every other access
    Owned { interaction: Interaction, rtype: Option<String>, id: Option<String> },
}

/// Classify a request by its method and path (the router's patterns).
pub fn classify(app: &AppState, method: &Method, segs: &[String]) -> Access {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let known = |t: &str| app.services.registry.is_type(t);
    let one = |i: Interaction, t: Option<&str>, id: Option<&str>| Access::One { interaction: i, rtype: t.map(str::to_owned), id: id.map(str::to_owned) };
    match s.as_slice() {
        [] if post => Access::Bundle,
        ["_history"] if get => one(Interaction::History, None, None),
        ["$export"] if get || post => one(Interaction::Export, None, None),
        ["hl7v2"] if post => one(Interaction::Hl7v2, None, None),
        ["import", _] if post => one(Interaction::Import, None, None),
        ["Patient", "$match" | "$ihe-pix"] => one(Interaction::Match, Some("Patient"), None),
        ["Person", "$link" | "$unlink"] => one(Interaction::Link, Some("Person"), None),
        ["Task", id, "$confirm" | "$reject"] => one(Interaction::Link, Some("Person"), Some(id)),
        // writes a CarePlan (and the Tasks/ServiceRequests it implies: each decided in the handler)
        ["PlanDefinition", _, "$apply"] if get || post => one(Interaction::Create, Some("CarePlan"), None),
        ["Subscription", id, "$status" | "$events"] => {
            Access::Owned { interaction: Interaction::Read, rtype: Some("Subscription".into()), id: Some((*id).to_owned()) }
        }
        ["_export", "status", _] | ["_export", "file", _, _] => Access::Owned { interaction: Interaction::Export, rtype: None, id: None },
        [t, "$validate"] if known(t) => one(Interaction::Validate, Some(t), None),
        [t, id, "$validate"] if known(t) => one(Interaction::Validate, Some(t), Some(id)),
        [t, "$evaluate-measure"] if known(t) => one(Interaction::EvaluateMeasure, Some(t), None),
        [t, id, "$evaluate-measure"] if known(t) => one(Interaction::EvaluateMeasure, Some(t), Some(id)),
        [t, "$export"] if known(t) => one(Interaction::Export, Some(t), None),
        [t, id, "$export"] if known(t) => one(Interaction::Export, Some(t), Some(id)),
        ["Patient", id, "$everything"] => one(Interaction::Everything, Some("Patient"), Some(id)),
        ["Patient", id, "$summary"] => one(Interaction::Summary, Some("Patient"), Some(id)),
        [t] if known(t) => match *method {
            _ if get => one(Interaction::Search, Some(t), None),
            Method::POST => one(Interaction::Create, Some(t), None),
            Method::PUT => one(Interaction::Update, Some(t), None),
            Method::DELETE => one(Interaction::Delete, Some(t), None),
            _ => Access::Public,
        },
        [t, "_search"] if known(t) && post => one(Interaction::Search, Some(t), None),
        [t, "_history"] if known(t) && get => one(Interaction::History, Some(t), None),
        [t, id] if known(t) && !id.starts_with('$') => match *method {
            _ if get => one(Interaction::Read, Some(t), Some(id)),
            Method::PUT => one(Interaction::Update, Some(t), Some(id)),
            Method::DELETE => one(Interaction::Delete, Some(t), Some(id)),
            _ => Access::Public,
        },
        [t, id, "_history"] if known(t) && get => one(Interaction::History, Some(t), Some(id)),
        [t, id, "_history", _] if known(t) && get => one(Interaction::Vread, Some(t), Some(id)),
        _ => Access::Public,
    }
}

fn forbidden(d: impl std::fmt::Display) -> ApiError {
    ApiError::forbidden(d.to_string())
}

/// The one policy decision point: the request's interaction and type (and,
/// for searches, the types `_include`/`_revinclude` would add; for Bundles,
/// every entry) against the caller's role and scopes.
pub fn authorize(app: &AppState, caller: &Caller, access: &Access, r_query: &[(String, String)], body: &[u8]) -> Result<(), ApiError> {
    let policy = match &app.config.auth {
        Some(a) => &a.settings.policy,
        None => return Ok(()), // insecure development mode: no access control
    };
    match access {
        Access::Public | Access::Owned { .. } => Ok(()),
        Access::One { interaction, rtype, .. } => {
            decide(policy, caller, *interaction, rtype.as_deref()).map_err(forbidden)?;
            if *interaction == Interaction::Search || *interaction == Interaction::History {
                for (k, v) in r_query {
                    let k = k.split(':').next().unwrap_or(k);
                    if k != "_include" && k != "_revinclude" {
                        continue;
                    }
                    let parts: Vec<&str> = v.split(':').collect();
                    let mut types: Vec<String> = vec![];
                    if k == "_revinclude" {
                        types.push(parts[0].to_owned());
                    } else if let Some(t) = parts.get(2) {
                        types.push((*t).to_owned());
                    } else if parts.len() >= 2 {
                        if let Some(p) = app.services.registry.param(parts[0], parts[1]) {
                            types.extend(p.targets.iter().cloned());
                        }
                    }
                    for t in types.iter().filter(|t| app.services.registry.is_type(t)) {
                        decide(policy, caller, Interaction::Search, Some(t)).map_err(|d| forbidden(format!("{k}={v}: {d}")))?;
                    }
                }
            }
            Ok(())
        }
        Access::Bundle => {
            let Ok(b) = serde_json::from_slice::<Value>(body) else { return Ok(()) }; // the bundle handler answers 400
            for (i, e) in b.get("entry").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let req = e.get("request");
                let m = req.and_then(|r| r.get("method")).and_then(Value::as_str).unwrap_or("");
                let url = req.and_then(|r| r.get("url")).and_then(Value::as_str).unwrap_or("");
                let path = url.split('?').next().unwrap_or("").trim_matches('/');
                let segs: Vec<&str> = path.split('/').collect();
                let t = segs.first().copied().filter(|t| app.services.registry.is_type(t));
                let Some(t) = t else { continue }; // the pipeline rejects it
                let i_of = match (m, segs.len()) {
                    ("GET" | "HEAD", 1) => Interaction::Search,
                    ("GET" | "HEAD", 2) => Interaction::Read,
                    ("GET" | "HEAD", _) => Interaction::Vread,
                    ("POST", _) => Interaction::Create,
                    ("PUT" | "PATCH", _) => Interaction::Update,
                    ("DELETE", _) => Interaction::Delete,
                    _ => continue,
                };
                decide(policy, caller, i_of, Some(t)).map_err(|d| forbidden(format!("Bundle.entry[{i}]: {d}")))?;
            }
            Ok(())
        }
    }
}

/// The caller of a request: the bearer token's client, or the development
/// operator when no authentication is configured.
pub fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let purpose = headers
        .get(PURPOSE_OF_USE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    let Some(auth) = &app.config.auth else {
        let mut c = Caller::dev_operator();
        c.purpose_of_use = purpose;
        return Ok(c);
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or(ApiError::Bearer(BearerError::Missing))?;
    auth.verify(token, purpose).map_err(ApiError::Bearer)
}

/// Per-client rate limit (429 with `Retry-After`).
pub fn rate_limit(auth: &Authenticator, caller: &Caller) -> Result<(), ApiError> {
    let spec = auth.client(&caller.client_id).and_then(|c| c.rate).or(auth.settings.rate);
    let Some(spec) = spec else { return Ok(()) };
    auth.limiter.check(&caller.client_id, spec, std::time::Instant::now()).map_err(|wait| ApiError::TooManyRequests(wait.as_secs_f64().ceil().max(1.0) as u64))
}

/// The audit record template of a request (None: not audited).
pub fn record_for(caller: &Caller, access: &Access, segs: &[String], query: &[(String, String)]) -> Option<AccessRecord> {
    let (interaction, rtype, id) = match access {
        Access::Public => return None,
        Access::One { interaction, rtype, id } | Access::Owned { interaction, rtype, id } => (*interaction, rtype.clone(), id.clone()),
        Access::Bundle => (Interaction::Update, None, None),
    };
    let mut rec = AccessRecord {
        caller: caller.clone(),
        interaction,
        rtype: rtype.clone(),
        data: vec![],
        patients: vec![],
        query: None,
        status: 0,
        failure: None,
        operation: None,
        bundle: matches!(access, Access::Bundle),
        relationships: vec![],
    };
    if let Some(op) = segs.iter().find(|s| s.starts_with('$')) {
        rec.operation = Some(op.clone());
    }
    if matches!(interaction, Interaction::Hl7v2 | Interaction::Import) || matches!(access, Access::Owned { rtype: None, .. }) {
        rec.operation = Some(format!("/{}", segs.join("/")));
    }
    match (interaction, rtype.as_deref(), id.as_deref()) {
        (Interaction::Everything | Interaction::Summary, _, Some(p)) => rec.patients.push(format!("Patient/{p}")),
        (Interaction::Read | Interaction::Vread | Interaction::History, Some(t), Some(i)) => {
            let d = match segs.get(3) {
                Some(v) if interaction == Interaction::Vread => format!("{t}/{i}/_history/{v}"),
                _ => format!("{t}/{i}"),
            };
            rec.data.push(d);
            if t == "Patient" {
                rec.patients.push(format!("Patient/{i}"));
            }
        }
        (Interaction::Search | Interaction::History | Interaction::Export | Interaction::EvaluateMeasure | Interaction::Match, _, _) => {
            let q: Vec<(&str, &str)> = query.iter().filter(|(k, _)| k != "_format" && k != "_pretty").map(|(k, v)| (k.as_str(), v.as_str())).collect();
            if !q.is_empty() {
                rec.query = Some(form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish());
            }
            for (k, v) in query {
                let base = k.split(':').next().unwrap_or(k);
                if matches!(base, "patient" | "subject") || (rtype.as_deref() == Some("Patient") && base == "_id") {
                    for one in v.split(',') {
                        let one = one.trim_start_matches("Patient/");
                        if !one.is_empty() && crate::fhir::is_valid_id(one) {
                            rec.patients.push(format!("Patient/{one}"));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    Some(rec)
}

/// Write the AuditEvent of a request the pipeline did not audit (reads,
/// refusals, failed changes) before its answer leaves; a failed write turns
/// the answer into a 500.
pub async fn audit_after(app: &AppState, mut rec: AccessRecord, result: Result<Response, ApiError>) -> Result<Response, ApiError> {
    let Some(sink) = &app.audit else { return result };
    let status = match &result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status_and_outcome().0.as_u16(),
    };
    let is_change = !rec.interaction.is_read() || rec.bundle;
    if is_change && status < 400 {
        return result; // written in the change's own transaction
    }
    rec.status = status;
    let mut result = result;
    match &mut result {
        Err(e) => rec.failure = Some(e.status_and_outcome().1.first_message().chars().take(200).collect()),
        Ok(resp) if status < 300 && matches!(rec.interaction, Interaction::Read | Interaction::Vread) && rec.rtype.as_deref() != Some("Patient") => {
            // the patient the record concerns: from the resource sent back
            let body = std::mem::take(resp.body_mut());
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            if let (Ok(v), Some(t)) = (serde_json::from_slice::<Value>(&bytes), rec.rtype.clone()) {
                let id = v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
                rec.patients.extend(patients_of(&t, &id, &v));
            }
            *resp.body_mut() = axum::body::Body::from(bytes);
        }
        Ok(_) => {}
    }
    sink.record(rec).await.map_err(|e| {
        tracing::error!(error = %e, "audit record could not be written; request failed");
        ApiError::Pipeline(e)
    })?;
    result
}

/// `POST /auth/token` (RFC 6749 §4.4, form-encoded).
pub async fn token(app: &AppState, auth: &Authenticator, headers: &HeaderMap, body: &[u8], base: &str) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let result = if !ct.starts_with("application/x-www-form-urlencoded") {
        Err(TokenError::InvalidRequest("the token request must be application/x-www-form-urlencoded".into()))
    } else {
        let form: Vec<(String, String)> = form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        auth.token(app.services.store.as_ref(), &form, &auth.token_url(base)).await
    };
    match result {
        Ok(t) => json_response(StatusCode::OK, serde_json::to_vec(&t).unwrap_or_default()),
        Err(e) => super::error::token_error_response(&e),
    }
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// Is this request one of the unauthenticated auth endpoints? Answer it.
pub async fn auth_endpoint(app: &AppState, method: &Method, path: &str, headers: &HeaderMap, body: &[u8], base: &str) -> Option<Response> {
    let auth = app.config.auth.as_ref()?;
    match (path, method) {
        ("auth/token", &Method::POST) => Some(token(app, auth, headers, body, base).await),
        (".well-known/smart-configuration", &Method::GET) => {
            Some(json_response(StatusCode::OK, serde_json::to_vec(&auth.smart_configuration(base)).unwrap_or_default()))
        }
        (".well-known/jwks.json", &Method::GET) => Some(json_response(StatusCode::OK, serde_json::to_vec(&auth.jwks()).unwrap_or_default())),
        _ => None,
    }
}

/// Keep `Req` construction readable: the audit template travels with the request.
pub fn attach(r: &mut Req, rec: Option<AccessRecord>) {
    r.audit = rec;
}
