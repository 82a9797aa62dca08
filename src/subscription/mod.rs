//! Topic-based subscriptions: R4 Subscriptions Backport IG 1.1
//! (`http://hl7.org/fhir/uv/subscriptions-backport/`, STU 1.1): an R4
//! `Subscription` names a topic canonical in `criteria` (or the
//! `backport-topic-canonical` extension), filters in
//! `_criteria.extension[backport-filter-criteria]` (search queries such as
//! `Encounter?patient.address-postalcode=…` or `Task?owner=Organization/x`),
//! the payload in `channel._payload.extension[backport-payload-content]`
//! (`empty`, `id-only`, `full-resource`) and an optional heartbeat
//! (`channel.extension[backport-heartbeat-period]`). Only the `rest-hook`
//! channel is offered (R4 `subscription.html` §2.46.7.1).
//!
//! | file | what |
//! | --- | --- |
//! | `topics.rs` | the topics (data in `profiles/topics/`), their triggers |
//! | `outbox.rs` | inside the write transaction: Subscription bookkeeping, topic evaluation, outbox rows |
//! | `deliver.rs` | the delivery worker: rest-hook POSTs, backoff, error/resume, heartbeat (the only outbound HTTP) |
//! | `notify.rs` | notification Bundles (`history` + `SubscriptionStatus` Parameters first), `$status`, `$events` |
//!
//! Invariant: an event is written to the outbox (`sub_event`) in the same
//! database transaction as the change that caused it — committed together
//! or not at all; a crash never loses one.
//! Invariant: per subscription (= per endpoint) events are numbered in
//! commit order and delivered in number order; the delivered watermark only
//! moves forward after the endpoint answered 2xx (at-least-once).
//! Invariant: full-resource payloads carry only what the subscription's
//! owner may see (`auth::filter`, the read path's filter); other events go
//! out as id-only.

pub mod deliver;
pub mod notify;
pub mod outbox;
pub mod topics;

use serde_json::Value;

pub const EXT_FILTER: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
pub const EXT_TOPIC: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-topic-canonical";
pub const EXT_PAYLOAD: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
pub const EXT_HEARTBEAT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
pub const EXT_MAX_COUNT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count";

/// Subscription errors (the HTTP status is decided in `api::error` /
/// through the pipeline's error).
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// the Subscription resource cannot be served (unknown topic, bad filter, channel)
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Payload content of notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Empty,
    IdOnly,
    FullResource,
}

impl Payload {
    pub fn parse(s: &str) -> Option<Payload> {
        Some(match s {
            "empty" => Payload::Empty,
            "id-only" => Payload::IdOnly,
            "full-resource" => Payload::FullResource,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Payload::Empty => "empty",
            Payload::IdOnly => "id-only",
            Payload::FullResource => "full-resource",
        }
    }
}

/// What a Subscription resource asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// resource status: requested, active, error, off
    pub status: String,
    pub topic: String,
    /// filter criteria as one search query on the topic's resource type (`Type?a=b&c=d`)
    pub filter: Option<String>,
    pub endpoint: String,
    pub payload: Payload,
    pub headers: Vec<String>,
    /// seconds (0: no heartbeat)
    pub heartbeat: i64,
}

fn ext_value<'a>(v: Option<&'a Value>, url: &str) -> Vec<&'a Value> {
    v.and_then(|v| v.get("extension"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(url))
        .collect()
}

/// Read and check a Subscription resource against the topics and the
/// search registry (a filter must be a valid search on the topic's type
/// and on a parameter the topic allows).
pub fn parse_spec(reg: &crate::search::Registry, res: &Value) -> Result<Spec, SubscriptionError> {
    let inv = |m: String| SubscriptionError::Invalid(m);
    let status = res.get("status").and_then(Value::as_str).unwrap_or("requested").to_owned();
    let topic_url = ext_value(Some(res), EXT_TOPIC)
        .first()
        .and_then(|e| e.get("valueCanonical").or_else(|| e.get("valueUri")))
        .and_then(Value::as_str)
        .or_else(|| res.get("criteria").and_then(Value::as_str))
        .ok_or_else(|| inv("Subscription.criteria must name a topic canonical URL".into()))?
        .to_owned();
    let topic = topics::topics().get(&topic_url).ok_or_else(|| {
        let known: Vec<&str> = topics::topics().all.iter().map(|t| t.url.as_str()).collect();
        inv(format!("unknown subscription topic '{topic_url}' (known: {})", known.join(", ")))
    })?;
    // filters: one or more `Type?query` strings, all on one resource type of the topic
    let mut filter_type: Option<String> = None;
    let mut filter_pairs: Vec<String> = vec![];
    for e in ext_value(res.get("_criteria"), EXT_FILTER) {
        let f = e.get("valueString").and_then(Value::as_str).ok_or_else(|| inv("backport-filter-criteria needs valueString".into()))?;
        let (t, q) = match f.split_once('?') {
            Some((t, q)) => (t.to_owned(), q.to_owned()),
            None => (topic.triggers[0].resource.clone(), f.to_owned()),
        };
        if !topic.resource_types().any(|r| r == t) {
            return Err(inv(format!("filter '{f}': topic {topic_url} does not fire on {t}")));
        }
        if filter_type.as_deref().is_some_and(|ft| ft != t) {
            return Err(inv("all filter criteria of one Subscription must be on the same resource type".into()));
        }
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        if pairs.is_empty() {
            return Err(inv(format!("filter '{f}' has no parameters")));
        }
        for (k, _) in &pairs {
            let base = k.split(['.', ':']).next().unwrap_or(k);
            if !topic.can_filter_by.is_empty() && !topic.can_filter_by.iter().any(|(r, p)| *r == t && p == base) {
                let allowed: Vec<&str> = topic.can_filter_by.iter().filter(|(r, _)| *r == t).map(|(_, p)| p.as_str()).collect();
                return Err(inv(format!("topic {topic_url} cannot filter by '{base}' (allowed: {})", allowed.join(", "))));
            }
        }
        crate::search::params::SearchRequest::parse(reg, &t, &pairs, true).map_err(|e| inv(format!("filter '{f}': {e}")))?;
        filter_pairs.push(q);
        filter_type = Some(t);
    }
    let filter = filter_type.map(|t| format!("{t}?{}", filter_pairs.join("&")));
    let channel = res.get("channel").ok_or_else(|| inv("Subscription.channel is required".into()))?;
    let ctype = channel.get("type").and_then(Value::as_str).unwrap_or("");
    if ctype != "rest-hook" {
        return Err(inv(format!("channel type '{ctype}' is not supported (only rest-hook)")));
    }
    let endpoint = channel.get("endpoint").and_then(Value::as_str).ok_or_else(|| inv("a rest-hook channel needs an endpoint".into()))?;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) || reqwest::Url::parse(endpoint).is_err() {
        return Err(inv(format!("channel endpoint '{endpoint}' is not an http(s) URL")));
    }
    let payload = match ext_value(channel.get("_payload"), EXT_PAYLOAD).first() {
        Some(e) => {
            let c = e.get("valueCode").and_then(Value::as_str).unwrap_or("");
            Payload::parse(c).ok_or_else(|| inv(format!("payload content '{c}': expected empty, id-only or full-resource")))?
        }
        None if channel.get("payload").is_some() => Payload::IdOnly,
        None => Payload::Empty,
    };
    let headers: Vec<String> = channel.get("header").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
    for h in &headers {
        if !h.contains(':') {
            return Err(inv(format!("channel header '{h}' is not 'Name: value'")));
        }
    }
    let heartbeat = ext_value(Some(channel), EXT_HEARTBEAT).first().and_then(|e| e.get("valueUnsignedInt")).and_then(Value::as_i64).unwrap_or(0);
    Ok(Spec { status, topic: topic.url.clone(), filter, endpoint: endpoint.to_owned(), payload, headers, heartbeat })
}
