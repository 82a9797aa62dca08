//! Notification Bundles of the R4 Subscriptions Backport IG 1.1
//! (`notifications.html`): a Bundle of type `history` whose first entry is
//! the `SubscriptionStatus` Parameters (profile
//! `backport-subscription-status-r4`: subscription, topic, status, type,
//! events-since-subscription-start, one notification-event per event with
//! event-number, timestamp and focus), then one entry per focus resource —
//! full resource or id only. `$status` answers a `searchset` Bundle with the
//! Parameters alone (type `query-status`); `$events` a `history` Bundle of
//! type `query-event`.

use super::{Payload, SubscriptionError};
use crate::fhir::datetime;
use crate::store::{Sql, SqlValue, Store};
use serde_json::{json, Value};

pub const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
pub const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";

/// The delivery state of one subscription (`sub_state`).
#[derive(Debug, Clone)]
pub struct SubRow {
    pub sub_id: String,
    pub topic: String,
    pub filter: Option<String>,
    pub endpoint: String,
    pub payload: Payload,
    pub headers: Vec<String>,
    pub heartbeat: i64,
    pub owner: Option<String>,
    pub owner_type: Option<String>,
    pub active: bool,
    /// active | error
    pub status: String,
    pub events: i64,
    pub delivered: i64,
    pub errors: i64,
    pub last_error: Option<String>,
    pub next_try: i64,
    pub last_sent: i64,
}

pub const SUB_COLUMNS: &str =
    "sub_id, topic, filter, endpoint, payload, headers, heartbeat, owner, owner_type, active, status, events, delivered, errors, last_error, next_try, last_sent";

impl SubRow {
    pub fn from_row(r: &[SqlValue]) -> Option<SubRow> {
        let s = |i: usize| r.get(i).and_then(SqlValue::as_str).map(str::to_owned);
        let n = |i: usize| r.get(i).and_then(SqlValue::as_i64).unwrap_or(0);
        Some(SubRow {
            sub_id: s(0)?,
            topic: s(1)?,
            filter: s(2),
            endpoint: s(3)?,
            payload: Payload::parse(&s(4)?).unwrap_or(Payload::IdOnly),
            headers: s(5).and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
            heartbeat: n(6),
            owner: s(7),
            owner_type: s(8),
            active: n(9) != 0,
            status: s(10).unwrap_or_else(|| "active".into()),
            events: n(11),
            delivered: n(12),
            errors: n(13),
            last_error: s(14),
            next_try: n(15),
            last_sent: n(16),
        })
    }

    /// The status a client sees: off, or active/error.
    pub fn shown_status(&self) -> &str {
        if self.active {
            &self.status
        } else {
            "off"
        }
    }
}

/// One outbox row.
#[derive(Debug, Clone)]
pub struct Event {
    pub num: i64,
    pub rtype: String,
    pub rid: String,
    pub version: i64,
    pub method: String,
    pub ts: i64,
}

pub async fn load_sub(store: &dyn Store, sub_id: &str) -> Result<Option<SubRow>, SubscriptionError> {
    let mut sql = Sql::new(format!("SELECT {SUB_COLUMNS} FROM sub_state WHERE sub_id = "));
    sql.text_param(sub_id);
    Ok(store.rows(sql).await?.first().and_then(|r| SubRow::from_row(r)))
}

/// Events `from..=to` of a subscription (at most `limit`), in number order.
pub async fn load_events(store: &dyn Store, sub_id: &str, from: i64, to: i64, limit: usize) -> Result<Vec<Event>, SubscriptionError> {
    let mut sql = Sql::new("SELECT num, rtype, rid, version, method, ts FROM sub_event WHERE sub_id = ");
    sql.text_param(sub_id).push(" AND num >= ").int_param(from).push(" AND num <= ").int_param(to);
    sql.push(&format!(" ORDER BY num LIMIT {limit}"));
    Ok(store
        .rows(sql)
        .await?
        .iter()
        .filter_map(|r| {
            Some(Event {
                num: r[0].as_i64()?,
                rtype: r[1].as_str()?.to_owned(),
                rid: r[2].as_str()?.to_owned(),
                version: r[3].as_i64()?,
                method: r[4].as_str()?.to_owned(),
                ts: r[5].as_i64()?,
            })
        })
        .collect())
}

/// The SubscriptionStatus Parameters.
pub fn status_parameters(base: &str, sub: &SubRow, kind: &str, events: &[Event], payload: Payload) -> Value {
    let mut params = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{base}/Subscription/{}", sub.sub_id)}}),
        json!({"name": "topic", "valueCanonical": sub.topic}),
        json!({"name": "status", "valueCode": sub.shown_status()}),
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "events-since-subscription-start", "valueString": sub.events.to_string()}),
    ];
    for e in events {
        let mut part = vec![
            json!({"name": "event-number", "valueString": e.num.to_string()}),
            json!({"name": "timestamp", "valueInstant": datetime::format_instant(e.ts)}),
        ];
        if payload != Payload::Empty {
            part.push(json!({"name": "focus", "valueReference": {"reference": format!("{base}/{}/{}", e.rtype, e.rid)}}));
        }
        params.push(json!({"name": "notification-event", "part": part}));
    }
    if let Some(err) = &sub.last_error {
        if sub.status == "error" {
            params.push(json!({"name": "error", "valueCodeableConcept": {"text": err}}));
        }
    }
    json!({
        "resourceType": "Parameters",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": params,
    })
}

/// A notification Bundle (`history`): status first, then the focus entries.
/// `resources[i]` is the focus of `events[i]` when it may be sent in full.
pub fn notification(base: &str, sub: &SubRow, kind: &str, events: &[Event], resources: &[Option<Value>], payload: Payload) -> Value {
    let status = status_parameters(base, sub, kind, events, payload);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", status["id"].as_str().unwrap_or_default()),
        "resource": status,
        "request": {"method": "GET", "url": format!("{base}/Subscription/{}/$status", sub.sub_id)},
        "response": {"status": "200"},
    })];
    if payload != Payload::Empty {
        for (i, e) in events.iter().enumerate() {
            let (method, code) = match e.method.as_str() {
                "POST" => ("POST", "201"),
                "DELETE" => ("DELETE", "204"),
                _ => ("PUT", "200"),
            };
            let mut entry = json!({
                "fullUrl": format!("{base}/{}/{}", e.rtype, e.rid),
                "request": {"method": method, "url": format!("{}/{}", e.rtype, e.rid)},
                "response": {"status": code},
            });
            if payload == Payload::FullResource {
                if let Some(Some(r)) = resources.get(i) {
                    entry["resource"] = r.clone();
                }
            }
            entries.push(entry);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": datetime::format_instant(datetime::now_micros()),
        "entry": entries,
    })
}

/// `$status` (Backport IG `OperationDefinition-backport-subscription-status`):
/// a searchset Bundle with the status Parameters.
pub fn status_bundle(base: &str, subs: &[SubRow]) -> Value {
    let entries: Vec<Value> = subs
        .iter()
        .map(|s| {
            let p = status_parameters(base, s, "query-status", &[], Payload::Empty);
            json!({"fullUrl": format!("urn:uuid:{}", p["id"].as_str().unwrap_or_default()), "resource": p, "search": {"mode": "match"}})
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    })
}
