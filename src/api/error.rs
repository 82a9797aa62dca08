//! The single mapping from every module's errors to HTTP status codes
//! (R4 `http.html` status codes; `operationoutcome.html`). Every error leaves
//! as an OperationOutcome; server faults are logged without patient data and
//! answered 500 with a generic message.

use super::negotiate::fhir_response;
use crate::fhir::{IssueType, OperationOutcome};
use crate::ingest::import::ImportError;
use crate::pipeline::PipelineError;
use crate::auth::filter::AccessError;
use crate::read::ReadError;
use crate::search::SearchError;
use crate::store::StoreError;
use crate::summary::SummaryError;
use crate::auth::token::{BearerError, TokenError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub enum ApiError {
    Pipeline(PipelineError),
    Read(ReadError),
    Summary(SummaryError),
    Report(crate::report::ReportError),
    /// a client error decided by the api layer itself
    Status(StatusCode, OperationOutcome),
    /// no or a bad access token (401 + `WWW-Authenticate: Bearer`, RFC 6750 §3)
    Bearer(crate::auth::token::BearerError),
    /// the client's rate limit is used up: retry after this many seconds (429)
    TooManyRequests(u64),
}

impl ApiError {
    pub fn new(status: StatusCode, code: IssueType, msg: impl Into<String>) -> Self {
        ApiError::Status(status, OperationOutcome::error(code, msg))
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, IssueType::Invalid, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, msg)
    }
    /// An access-control refusal (role policy, scopes, client certificate): 403.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, IssueType::Forbidden, msg)
    }

    pub fn status_and_outcome(&self) -> (StatusCode, OperationOutcome) {
        match self {
            ApiError::Status(s, o) => (*s, o.clone()),
            ApiError::Bearer(e) => (StatusCode::UNAUTHORIZED, OperationOutcome::error(IssueType::Login, e.to_string())),
            ApiError::TooManyRequests(s) => (
                StatusCode::TOO_MANY_REQUESTS,
                OperationOutcome::error(IssueType::Throttled, format!("rate limit of this client exceeded; retry after {s} s")),
            ),
            ApiError::Pipeline(e) => {
                let s = match e {
                    PipelineError::BadRequest(_) => StatusCode::BAD_REQUEST,
                    PipelineError::NotFound(_) => StatusCode::NOT_FOUND,
                    PipelineError::Gone(_) => StatusCode::GONE,
                    PipelineError::Conflict(_) => StatusCode::CONFLICT,
                    PipelineError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
                    PipelineError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    PipelineError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
                    PipelineError::NotSupported(_) => StatusCode::BAD_REQUEST,
                    PipelineError::Forbidden(_) => StatusCode::FORBIDDEN,
                    PipelineError::Store(se) => store_status(se),
                };
                (s, e.outcome())
            }
            ApiError::Read(ReadError::Search(e)) => {
                let code = match e {
                    SearchError::Unsupported(_) => IssueType::NotSupported,
                    _ => IssueType::Invalid,
                };
                (StatusCode::BAD_REQUEST, OperationOutcome::error(code, e.to_string()))
            }
            ApiError::Read(ReadError::Access(AccessError::Denied(m))) => {
                (StatusCode::FORBIDDEN, OperationOutcome::error(IssueType::Forbidden, m.clone()))
            }
            ApiError::Read(ReadError::Access(AccessError::Store(se))) => {
                (store_status(se), OperationOutcome::error(IssueType::Exception, "internal storage error"))
            }
            ApiError::Read(ReadError::Store(se)) => {
                (store_status(se), OperationOutcome::error(IssueType::Exception, "internal storage error"))
            }
            ApiError::Report(e) => {
                use crate::report::ReportError as R;
                match e {
                    R::NotFound(m) => (StatusCode::NOT_FOUND, OperationOutcome::error(IssueType::NotFound, m.clone())),
                    R::Invalid(m) => (StatusCode::BAD_REQUEST, OperationOutcome::error(IssueType::Invalid, m.clone())),
                    R::Forbidden(m) => (StatusCode::FORBIDDEN, OperationOutcome::error(IssueType::Forbidden, m.clone())),
                    R::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, OperationOutcome::error(IssueType::Processing, m.clone())),
                    R::Gone(m) => (StatusCode::NOT_FOUND, OperationOutcome::error(IssueType::NotFound, m.clone())),
                    R::Store(se) => (store_status(se), OperationOutcome::error(IssueType::Exception, "internal storage error")),
                    R::Io(m) => {
                        tracing::error!(error = %m, "export file failure");
                        (StatusCode::INTERNAL_SERVER_ERROR, OperationOutcome::error(IssueType::Exception, "export file error"))
                    }
                }
            }
            ApiError::Summary(SummaryError::UnknownPatient(id)) => {
                (StatusCode::NOT_FOUND, OperationOutcome::error(IssueType::NotFound, format!("Patient/{id} is not known")))
            }
            // `From<SummaryError>` turns read errors into `ApiError::Read`
            ApiError::Summary(SummaryError::Read(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, OperationOutcome::error(IssueType::Exception, "internal error"))
            }
            ApiError::Summary(SummaryError::Access(AccessError::Denied(m))) => {
                (StatusCode::FORBIDDEN, OperationOutcome::error(IssueType::Forbidden, m.clone()))
            }
            ApiError::Summary(SummaryError::Access(AccessError::Store(se))) => {
                (store_status(se), OperationOutcome::error(IssueType::Exception, "internal storage error"))
            }
            ApiError::Summary(SummaryError::Store(se)) => {
                (store_status(se), OperationOutcome::error(IssueType::Exception, "internal storage error"))
            }
            ApiError::Summary(e @ (SummaryError::Corrupt(_) | SummaryError::Identity(_))) => {
                tracing::error!(error = %e, "corrupt stored resource");
                (StatusCode::INTERNAL_SERVER_ERROR, OperationOutcome::error(IssueType::Exception, "internal storage error"))
            }
        }
    }
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Conflict(_) => StatusCode::CONFLICT,
        _ => {
            tracing::error!(error = %e, "storage failure");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<SummaryError> for ApiError {
    fn from(e: SummaryError) -> Self {
        match e {
            SummaryError::Read(r) => ApiError::Read(r),
            SummaryError::Access(a) => ApiError::Read(ReadError::Access(a)),
            e => ApiError::Summary(e),
        }
    }
}

impl From<ImportError> for ApiError {
    /// An unreadable export is the client's (400); a storage fault is ours.
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Store(se) => ApiError::Read(ReadError::Store(se)),
            ImportError::Input(ie) => ApiError::new(StatusCode::BAD_REQUEST, IssueType::Invalid, ie.to_string()),
            other => {
                tracing::error!(error = %other, "import configuration failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, "import configuration error")
            }
        }
    }
}

impl From<crate::report::ReportError> for ApiError {
    fn from(e: crate::report::ReportError) -> Self {
        ApiError::Report(e)
    }
}

impl From<crate::auth::policy::Denied> for ApiError {
    fn from(d: crate::auth::policy::Denied) -> Self {
        ApiError::forbidden(d.to_string())
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        ApiError::Pipeline(e)
    }
}
impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        ApiError::Read(ReadError::Access(e))
    }
}
impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        ApiError::Read(e)
    }
}
impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        ApiError::Read(ReadError::Search(e))
    }
}
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Read(ReadError::Store(e))
    }
}

impl From<crate::identity::IdentityError> for ApiError {
    fn from(e: crate::identity::IdentityError) -> Self {
        ApiError::Pipeline(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, oo) = self.status_and_outcome();
        let mut r = fhir_response(status, serde_json::to_vec(&oo.to_json()).unwrap_or_default(), false);
        match &self {
            ApiError::Bearer(e) => {
                let v = match e {
                    BearerError::Missing => "Bearer realm=\"carebridge\"".to_owned(),
                    BearerError::Invalid(m) => format!("Bearer realm=\"carebridge\", error=\"invalid_token\", error_description=\"{}\"", m.replace(['"', '\\'], "'")),
                };
                if let Ok(v) = HeaderValue::from_str(&v) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::TooManyRequests(s) => {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*s));
            }
            _ => {}
        }
        r
    }
}

/// A token endpoint error as RFC 6749 §5.2 JSON: 401 for `invalid_client`
/// (with `WWW-Authenticate`), 500 for storage faults, else 400.
pub fn token_error_response(e: &TokenError) -> Response {
    let status = match e {
        TokenError::InvalidClient(_) => StatusCode::UNAUTHORIZED,
        TokenError::Store(se) => {
            tracing::error!(error = %se, "token endpoint storage failure");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let desc = match e {
        TokenError::Store(_) => "internal error".to_owned(),
        e => e.to_string(),
    };
    let body = serde_json::json!({"error": e.code(), "error_description": desc});
    let mut r = super::access::json_response(status, serde_json::to_vec(&body).unwrap_or_default());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"carebridge\""));
    }
    r
}
