//! Inside the write transaction: keep `sub_state` in step with the
//! Subscription resources written, evaluate the topics against every
//! changed resource and append outbox rows (`sub_event`), numbered per
//! subscription. Runs after the resources are written (filters are search
//! queries that see this transaction's index rows) and before commit.

use super::{parse_spec, topics, SubscriptionError};
use crate::auth::Caller;
use crate::search::params::SearchRequest;
use crate::search::plan;
use crate::services::Services;
use crate::store::{Sql, SqlValue, StoreTx, WriteMethod};
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeMap;

/// One resource change of the transaction.
#[derive(Debug, Clone)]
pub struct Change {
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub method: WriteMethod,
    /// the version before (None: created)
    pub previous: Option<Bytes>,
    /// the version written (None: deleted)
    pub current: Option<Bytes>,
}

fn opt_text(sql: &mut Sql, v: Option<&str>) {
    match v {
        Some(s) => {
            sql.text_param(s);
        }
        None => {
            sql.push("NULL");
        }
    }
}

/// Record Subscription bookkeeping and the events the changes fire.
/// Returns the number of outbox rows written.
pub async fn record(
    services: &Services,
    tx: &mut dyn StoreTx,
    changes: &[Change],
    caller: Option<&Caller>,
    now: i64,
) -> Result<usize, SubscriptionError> {
    let topics = topics::topics();
    // 1. Subscription resources: their delivery state
    for c in changes.iter().filter(|c| c.rtype == "Subscription") {
        match &c.current {
            None => {
                let mut sql = Sql::new("UPDATE sub_state SET active = 0 WHERE sub_id = ");
                sql.text_param(c.id.clone());
                tx.execute(sql).await?;
            }
            Some(body) => {
                let res: Value = serde_json::from_slice(body).map_err(|e| SubscriptionError::Invalid(e.to_string()))?;
                let spec = parse_spec(&services.registry, &res)?;
                let active = i64::from(spec.status != "off");
                let headers = serde_json::to_string(&spec.headers).unwrap_or_else(|_| "[]".into());
                let mut sql = Sql::new(
                    "INSERT INTO sub_state (sub_id, topic, filter, endpoint, payload, headers, heartbeat, owner, owner_type, active, status, events, delivered, errors, last_error, next_try, lease, last_sent) VALUES (",
                );
                sql.text_param(c.id.clone()).push(", ").text_param(spec.topic.clone()).push(", ");
                opt_text(&mut sql, spec.filter.as_deref());
                sql.push(", ").text_param(spec.endpoint.clone()).push(", ").text_param(spec.payload.as_str()).push(", ").text_param(headers);
                sql.push(", ").int_param(spec.heartbeat).push(", ");
                opt_text(&mut sql, caller.and_then(|c| c.member.as_deref()));
                sql.push(", ");
                opt_text(&mut sql, caller.map(|c| c.member_type.as_str()));
                sql.push(", ").int_param(active).push(", 'active', 0, 0, 0, NULL, 0, 0, ").int_param(now).push(")");
                // an update resumes a subscription in error (R4 subscription.html: the client sets it active again)
                sql.push(
                    " ON CONFLICT (sub_id) DO UPDATE SET topic = excluded.topic, filter = excluded.filter, endpoint = excluded.endpoint, \
                     payload = excluded.payload, headers = excluded.headers, heartbeat = excluded.heartbeat, \
                     owner = COALESCE(excluded.owner, sub_state.owner), owner_type = COALESCE(excluded.owner_type, sub_state.owner_type), \
                     active = excluded.active, status = 'active', errors = 0, last_error = NULL, next_try = 0",
                );
                tx.execute(sql).await?;
            }
        }
    }
    // 2. topics that fire on these changes, per active subscription
    if !changes.iter().any(|c| topics.watches(&c.rtype)) {
        return Ok(0);
    }
    let subs = tx.rows(Sql::new("SELECT sub_id, topic, filter FROM sub_state WHERE active = 1 ORDER BY sub_id")).await?;
    if subs.is_empty() {
        return Ok(0);
    }
    let mut fired: BTreeMap<String, Vec<&Change>> = BTreeMap::new();
    for c in changes.iter().filter(|c| topics.watches(&c.rtype)) {
        let prev: Option<Value> = c.previous.as_ref().and_then(|b| serde_json::from_slice(b).ok());
        let cur: Option<Value> = c.current.as_ref().and_then(|b| serde_json::from_slice(b).ok());
        for row in &subs {
            let (Some(sub_id), Some(topic_url)) = (row[0].as_str(), row[1].as_str()) else { continue };
            let Some(topic) = topics.get(topic_url) else { continue };
            if !topic.fires(&c.rtype, prev.as_ref(), cur.as_ref()) {
                continue;
            }
            if let SqlValue::Text(filter) = &row[2] {
                if !filter_matches(services, tx, filter, c).await? {
                    continue;
                }
            }
            fired.entry(sub_id.to_owned()).or_default().push(c);
        }
    }
    let mut n = 0;
    // subscriptions in a stable order: concurrent writers lock their counters in the same order
    for (sub_id, evs) in fired {
        let mut up = Sql::new("UPDATE sub_state SET events = events + ");
        up.int_param(evs.len() as i64).push(" WHERE sub_id = ").text_param(sub_id.clone());
        tx.execute(up).await?;
        let mut q = Sql::new("SELECT events FROM sub_state WHERE sub_id = ");
        q.text_param(sub_id.clone());
        let last = tx.rows(q).await?.first().and_then(|r| r[0].as_i64()).unwrap_or(0);
        let first = last - evs.len() as i64 + 1;
        let mut ins = vec![];
        for (k, c) in evs.iter().enumerate() {
            let mut s = Sql::new("INSERT INTO sub_event (sub_id, num, rtype, rid, version, method, ts) VALUES (");
            s.text_param(sub_id.clone()).push(", ").int_param(first + k as i64).push(", ").text_param(c.rtype.clone());
            s.push(", ").text_param(c.id.clone()).push(", ").int_param(c.version).push(", ").text_param(c.method.as_str());
            s.push(", ").int_param(now).push(")");
            ins.push(s);
        }
        n += ins.len();
        tx.execute_many(ins).await?;
    }
    Ok(n)
}

/// Does the changed resource match a subscription's filter (`Type?query`)?
/// Evaluated as a search restricted to the resource, inside the transaction.
async fn filter_matches(services: &Services, tx: &mut dyn StoreTx, filter: &str, c: &Change) -> Result<bool, SubscriptionError> {
    let Some((t, q)) = filter.split_once('?') else { return Ok(true) };
    if t != c.rtype || c.current.is_none() {
        // filters apply to their resource type; a deleted resource has no index to match
        return Ok(false);
    }
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    pairs.push(("_id".into(), c.id.clone()));
    let Ok(mut req) = SearchRequest::parse(&services.registry, t, &pairs, true) else { return Ok(false) };
    req.count = 1;
    req.sort.clear();
    let Ok(sql) = plan::page_sql(&req, plan::Page::First) else { return Ok(false) };
    Ok(!tx.query(sql).await?.is_empty())
}
