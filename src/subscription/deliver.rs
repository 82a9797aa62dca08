//! The delivery worker: one tokio task per gateway process that claims due
//! subscriptions, POSTs their pending events (in event-number order, up to
//! [`BATCH`] per notification) to the rest-hook endpoint, and moves the
//! delivered watermark only after a 2xx answer (Backport IG
//! `channels.html#rest-hook`; at-least-once delivery).
//!
//! Claiming: on PostgreSQL `SELECT … FOR UPDATE SKIP LOCKED` picks due rows
//! no other replica is claiming, and a lease (`sub_state.lease`, [`LEASE`])
//! keeps the subscription to this worker while the HTTP request runs (one
//! endpoint is served by one worker at a time: order is kept across
//! replicas). On SQLite the single process is the only worker; leases of a
//! previous (crashed) run are cleared at start.
//!
//! Failures back off exponentially ([`backoff`]: 200 ms doubling up to 10 s);
//! after [`ERROR_AFTER`] consecutive failures the subscription shows status
//! `error` and is retried at the backoff ceiling; the first success (or a
//! client update of the Subscription) makes it `active` again. A
//! subscription with a heartbeat period gets a `heartbeat` notification when
//! nothing was sent for that long.

use super::notify::{self, load_events, Event, SubRow, SUB_COLUMNS};
use super::Payload;
use crate::auth::filter::Access;
use crate::auth::{Caller, MemberType};
use crate::fhir::datetime;
use crate::services::Services;
use crate::store::Sql;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::Notify;

/// Events per notification Bundle.
pub const BATCH: usize = 100;
/// How long a claim holds a subscription (µs); longer than [`TIMEOUT`].
pub const LEASE: i64 = 15_000_000;
/// HTTP timeout of one notification POST.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive failures before a subscription shows status `error`.
pub const ERROR_AFTER: i64 = 3;
/// Idle poll interval (the pipeline also wakes the worker after a commit with events).
pub const POLL: Duration = Duration::from_millis(100);

fn wake_signal() -> &'static Notify {
    static N: OnceLock<Notify> = OnceLock::new();
    N.get_or_init(Notify::new)
}

/// Wake the workers of this process (after a commit that wrote events).
pub fn wake() {
    wake_signal().notify_waiters();
}

/// Delay before retry `n` (1-based): 200 ms · 2^(n-1), at most 10 s.
pub fn backoff(n: i64) -> i64 {
    let n = n.clamp(1, 20) as u32;
    (200_000i64 << (n - 1)).min(10_000_000)
}

/// Start the worker; `base` is the public base URL used in notifications.
pub fn spawn(services: Services, base: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "subscription delivery disabled: HTTP client");
                return;
            }
        };
        if services.store.kind() == "sqlite" {
            // the only process on this file: leases of a crashed run are stale
            if let Ok(mut tx) = services.store.begin().await {
                let ok = tx.execute(Sql::new("UPDATE sub_state SET lease = 0 WHERE lease <> 0")).await.is_ok();
                if ok {
                    let _ = tx.commit().await;
                }
            }
        }
        loop {
            let signal = wake_signal().notified();
            tokio::pin!(signal);
            signal.as_mut().enable();
            let due = match claim(&services).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "subscription worker: claim failed");
                    vec![]
                }
            };
            if due.is_empty() {
                tokio::select! {
                    _ = &mut signal => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            let jobs = due.into_iter().map(|s| deliver(&services, &client, &base, s));
            futures_util::future::join_all(jobs).await;
        }
    })
}

/// Claim the subscriptions that have something due.
async fn claim(services: &Services) -> Result<Vec<SubRow>, crate::store::StoreError> {
    let now = datetime::now_micros();
    let due = |for_update: bool| {
        let mut sql = Sql::new("SELECT sub_id FROM sub_state WHERE active = 1 AND next_try <= ");
        sql.int_param(now).push(" AND lease <= ").int_param(now);
        sql.push(" AND (events > delivered OR (heartbeat > 0 AND last_sent + heartbeat * 1000000 <= ").int_param(now).push("))");
        sql.push(" ORDER BY sub_id LIMIT 32");
        if for_update {
            sql.push(" FOR UPDATE SKIP LOCKED");
        }
        sql
    };
    // cheap read first: the writer (SQLite) or a connection (PostgreSQL) only when something is due
    if services.store.rows(due(false)).await?.is_empty() {
        return Ok(vec![]);
    }
    let pg = services.store.kind() == "postgres";
    let mut tx = services.store.begin().await?;
    let ids: Vec<String> = tx.rows(due(pg)).await?.iter().filter_map(|r| r[0].as_str().map(str::to_owned)).collect();
    let mut claimed = vec![];
    for id in ids {
        let mut up = Sql::new("UPDATE sub_state SET lease = ");
        up.int_param(now + LEASE).push(" WHERE sub_id = ").text_param(id.clone()).push(" AND lease <= ").int_param(now);
        if tx.execute(up).await? == 1 {
            claimed.push(id);
        }
    }
    let mut rows = vec![];
    for id in &claimed {
        let mut q = Sql::new(format!("SELECT {SUB_COLUMNS} FROM sub_state WHERE sub_id = "));
        q.text_param(id.clone());
        if let Some(r) = tx.rows(q).await?.first().and_then(|r| SubRow::from_row(r)) {
            rows.push(r);
        }
    }
    tx.commit().await?;
    Ok(rows)
}

/// The member that created a subscription, as the [`Caller`] its
/// notifications are filtered for; `None`: created by the operator or a
/// system source (unrestricted).
pub fn owner_caller(sub: &SubRow) -> Option<Caller> {
    let member = sub.owner.clone()?;
    let member_type: MemberType = serde_json::from_value(Value::String(sub.owner_type.clone()?)).ok()?;
    Some(Caller { client_id: format!("subscription:{}", sub.sub_id), member: Some(member), member_type, scopes: vec![], purpose_of_use: None })
}

/// The focus resources of events as sent in a full-resource notification:
/// for each event the version it is about, if the subscription's owner may
/// see it — the same care-relationship / Consent filter as every read path
/// (`auth::filter`, one [`Access`] per notification) — else `None` (the
/// entry goes out id-only; the member can still read what it may through
/// the read path). Operators, integration engines and system-created
/// subscriptions are unrestricted; insurers get no patient-level data.
pub async fn visible(services: &Services, sub: &SubRow, events: &[Event]) -> Vec<Option<Value>> {
    let owner = owner_caller(sub);
    let mut access = owner.as_ref().map(|c| Access::new(services, c));
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let body = match services.store.vread(&e.rtype, &e.rid, e.version).await {
            Ok(Some(row)) => row.body,
            _ => None,
        };
        let Some(body) = body else {
            out.push(None);
            continue;
        };
        let allowed = match access.as_mut() {
            None => Some(body),
            Some(a) => match a.check_bytes(&e.rtype, &e.rid, &body).await {
                Ok(Ok(b)) => Some(b),
                Ok(Err(_)) => None,
                Err(err) => {
                    tracing::warn!(error = %err, subscription = %sub.sub_id, "access check failed: sent id-only");
                    None
                }
            },
        };
        out.push(allowed.and_then(|b| serde_json::from_slice(&b).ok()));
    }
    out
}

/// Deliver one claimed subscription's next batch (or its heartbeat).
async fn deliver(services: &Services, client: &reqwest::Client, base: &str, sub: SubRow) {
    let store = services.store.as_ref();
    let events = if sub.events > sub.delivered {
        match load_events(store, &sub.sub_id, sub.delivered + 1, sub.events, BATCH).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, subscription = %sub.sub_id, "loading events failed");
                release(services, &sub.sub_id).await;
                return;
            }
        }
    } else {
        vec![]
    };
    let kind = if events.is_empty() { "heartbeat" } else { "event-notification" };
    let resources = if sub.payload == Payload::FullResource { visible(services, &sub, &events).await } else { vec![] };
    let bundle = notify::notification(base, &sub, kind, &events, &resources, sub.payload);
    let mut req = client.post(&sub.endpoint).header("content-type", "application/fhir+json").body(bundle.to_string());
    for h in &sub.headers {
        if let Some((k, v)) = h.split_once(':') {
            req = req.header(k.trim(), v.trim());
        }
    }
    let result = match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("endpoint answered {}", r.status().as_u16())),
        Err(e) => Err(format!("endpoint unreachable: {}", if e.is_timeout() { "timeout".to_owned() } else { e.to_string() })),
    };
    let now = datetime::now_micros();
    let mut sql = Sql::new("UPDATE sub_state SET lease = 0, ");
    match result {
        Ok(()) => {
            let last = events.last().map(|e| e.num).unwrap_or(sub.delivered);
            sql.push("delivered = CASE WHEN delivered < ").int_param(last).push(" THEN ").int_param(last).push(" ELSE delivered END, ");
            sql.push("errors = 0, status = 'active', last_error = NULL, next_try = 0, last_sent = ").int_param(now);
        }
        Err(msg) => {
            let n = sub.errors + 1;
            tracing::warn!(subscription = %sub.sub_id, attempt = n, error = %msg, "notification not delivered");
            sql.push("errors = ").int_param(n).push(", last_error = ").text_param(msg);
            sql.push(", next_try = ").int_param(now + backoff(n));
            if n >= ERROR_AFTER {
                sql.push(", status = 'error'");
            }
        }
    }
    sql.push(" WHERE sub_id = ").text_param(sub.sub_id.clone());
    if let Err(e) = update(services, sql).await {
        tracing::warn!(error = %e, subscription = %sub.sub_id, "recording delivery state failed");
    }
}

async fn update(services: &Services, sql: Sql) -> Result<(), crate::store::StoreError> {
    let mut tx = services.store.begin().await?;
    tx.execute(sql).await?;
    tx.commit().await
}

async fn release(services: &Services, sub_id: &str) {
    let mut sql = Sql::new("UPDATE sub_state SET lease = 0 WHERE sub_id = ");
    sql.text_param(sub_id);
    let _ = update(services, sql).await;
}
