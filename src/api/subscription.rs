//! Subscription operations of the R4 Subscriptions Backport IG 1.1
//! (HTTP side; topics, outbox and delivery are in `subscription`):
//!
//! * `GET /Subscription/[id]/$status` — `$status`
//!   (OperationDefinition `backport-subscription-status`): a `searchset`
//!   Bundle with the SubscriptionStatus Parameters (type `query-status`:
//!   status active/error/off, events-since-subscription-start, the last
//!   delivery error).
//! * `GET|POST /Subscription/[id]/$events` — `$events`
//!   (OperationDefinition `backport-subscription-events`):
//!   `eventsSinceNumber`, `eventsUntilNumber`, `content`
//!   (`empty | id-only | full-resource`): replays stored events as a
//!   notification Bundle of type `query-event` (at most 1,000 per call).
//! * `GET /SubscriptionTopic` is not an R4 type; the topics this server
//!   offers are listed in README (Subscriptions) and answered in the 422 of
//!   a Subscription naming an unknown one.
//!
//! Only the member that created a Subscription (or the operator) may ask.

use super::error::ApiError;
use super::negotiate::fhir_response;
use super::workflow::operation_params;
use super::{AppState, Req};
use crate::fhir::IssueType;
use crate::subscription::notify::{self, SubRow};
use crate::subscription::Payload;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

async fn owned_sub(app: &AppState, r: &Req, id: &str) -> Result<SubRow, ApiError> {
    let sub = notify::load_sub(app.services.store.as_ref(), id)
        .await
        .map_err(sub_err)?
        .ok_or_else(|| ApiError::not_found(format!("Subscription/{id} not found")))?;
    if let (Some(me), Some(owner)) = (r.caller.member.as_deref(), sub.owner.as_deref()) {
        if me != owner {
            return Err(ApiError::new(StatusCode::FORBIDDEN, IssueType::Forbidden, format!("Subscription/{id} belongs to another member")));
        }
    }
    Ok(sub)
}

fn sub_err(e: crate::subscription::SubscriptionError) -> ApiError {
    ApiError::Pipeline(e.into())
}

pub async fn status(app: &AppState, r: &Req, id: &str) -> Result<Response, ApiError> {
    let sub = owned_sub(app, r, id).await?;
    let b = notify::status_bundle(&r.base, &[sub]);
    Ok(fhir_response(StatusCode::OK, serde_json::to_vec(&b).unwrap_or_default(), r.pretty))
}

pub async fn events(app: &AppState, r: &Req, id: &str) -> Result<Response, ApiError> {
    let params = operation_params(r)?;
    let num = |name: &str| -> Result<Option<i64>, ApiError> {
        match params.iter().find(|(k, _)| k == name) {
            Some((_, v)) => v.parse::<i64>().map(Some).map_err(|_| ApiError::bad_request(format!("{name} must be an event number, got '{v}'"))),
            None => Ok(None),
        }
    };
    let sub = owned_sub(app, r, id).await?;
    let from = num("eventsSinceNumber")?.unwrap_or(1).max(1);
    let to = num("eventsUntilNumber")?.unwrap_or(sub.events).min(sub.events);
    let content = match params.iter().find(|(k, _)| k == "content") {
        Some((_, c)) => Payload::parse(c).ok_or_else(|| ApiError::bad_request(format!("content '{c}': expected empty, id-only or full-resource")))?,
        None => sub.payload,
    };
    let evs = notify::load_events(app.services.store.as_ref(), id, from, to, 1000).await.map_err(sub_err)?;
    let resources: Vec<Option<Value>> =
        if content == Payload::FullResource { crate::subscription::deliver::visible(&app.services, &sub, &evs).await } else { vec![] };
    let b = notify::notification(&r.base, &sub, "query-event", &evs, &resources, content);
    Ok(fhir_response(StatusCode::OK, serde_json::to_vec(&b).unwrap_or_default(), r.pretty))
}
