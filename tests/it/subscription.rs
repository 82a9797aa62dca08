//! Topic-based subscriptions (R4 Subscriptions Backport IG 1.1), on SQLite
//! and (with `CAREBRIDGE_TEST_POSTGRES`) PostgreSQL: Subscription checks
//! (unknown topic, filter, channel → 422), rest-hook notifications
//! (`history` Bundle, SubscriptionStatus first, id-only and full-resource),
//! filters, no event from a rolled-back transaction, retry with backoff,
//! `error` status and resume, per-endpoint order, heartbeat, `$status`,
//! `$events`. A test HTTP server on loopback is the subscriber.

use crate::common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DISCHARGE: &str = "https://carebridge.example/fhir/SubscriptionTopic/encounter-discharge";
pub const REFERRAL: &str = "https://carebridge.example/fhir/SubscriptionTopic/referral-received";
pub const TASK_STATUS: &str = "https://carebridge.example/fhir/SubscriptionTopic/task-status-changed";
const BP: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

/// A subscriber endpoint: records every notification Bundle it accepts;
/// answers 500 to the first `fail_first` requests, or (with `fail_every`)
/// to every request whose sequence number n has n % 10 < fail_every.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Value>>>,
    pub requests: Arc<AtomicUsize>,
    handle: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct RecvState {
    got: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
    fail_first: usize,
    fail_every: usize,
}

async fn receive(axum::extract::State(st): axum::extract::State<RecvState>, body: axum::body::Bytes) -> axum::http::StatusCode {
    let n = st.requests.fetch_add(1, Ordering::SeqCst);
    if n < st.fail_first || (st.fail_every > 0 && n % 10 < st.fail_every) {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            st.got.lock().unwrap().push(v);
            axum::http::StatusCode::OK
        }
        Err(_) => axum::http::StatusCode::BAD_REQUEST,
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_failing(0, 0).await
    }

    pub async fn start_failing(fail_first: usize, fail_every: usize) -> Receiver {
        let st = RecvState { got: Default::default(), requests: Default::default(), fail_first, fail_every };
        let (got, requests) = (st.got.clone(), st.requests.clone());
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(st);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Receiver { url, got, requests, handle }
    }

    /// Notifications of type event-notification received so far.
    pub fn events(&self) -> Vec<Value> {
        self.got.lock().unwrap().iter().filter(|b| status_param(b, "type") == Some("event-notification".into())).cloned().collect()
    }

    /// Wait until `n` notification events arrived (or the time is up); returns (event numbers, elapsed).
    pub async fn wait_events(&self, n: usize, within: Duration) -> (Vec<i64>, Duration) {
        let t0 = Instant::now();
        loop {
            let nums = event_numbers(&self.events());
            if nums.len() >= n || t0.elapsed() > within {
                return (nums, t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A parameter of the SubscriptionStatus (first entry) of a notification Bundle.
pub fn status_param(bundle: &Value, name: &str) -> Option<String> {
    let p = &bundle["entry"][0]["resource"];
    p["parameter"].as_array()?.iter().find(|x| x["name"] == name).and_then(|x| {
        x.as_object()?.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| match v {
            Value::String(s) => s.clone(),
            Value::Object(o) => o.get("reference").and_then(Value::as_str).unwrap_or("").to_owned(),
            v => v.to_string(),
        })
    })
}

/// Event numbers of notification-event parameters, over all bundles, in arrival order.
pub fn event_numbers(bundles: &[Value]) -> Vec<i64> {
    let mut out = vec![];
    for b in bundles {
        for p in b["entry"][0]["resource"]["parameter"].as_array().into_iter().flatten() {
            if p["name"] == "notification-event" {
                for part in p["part"].as_array().into_iter().flatten() {
                    if part["name"] == "event-number" {
                        out.push(part["valueString"].as_str().unwrap().parse().unwrap());
                    }
                }
            }
        }
    }
    out
}

pub fn subscription(topic: &str, filter: Option<&str>, endpoint: &str, payload: &str) -> Value {
    let mut s = json!({
        "resourceType": "Subscription",
        "meta": {"profile": [format!("{BP}backport-subscription")]},
        "status": "requested",
        "reason": "test",
        "criteria": topic,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BP}backport-payload-content"), "valueCode": payload}]},
        }
    });
    if let Some(f) = filter {
        s["_criteria"] = json!({"extension": [{"url": format!("{BP}backport-filter-criteria"), "valueString": f}]});
    }
    s
}

pub async fn subscribe(s: &TestServer, sub: &Value) -> String {
    let r = post_json(s, "Subscription", sub).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["status"], "active");
    r.json()["id"].as_str().unwrap().to_owned()
}

fn encounter(id: &str, patient: &str, status: &str) -> Value {
    json!({"resourceType": "Encounter", "id": id, "status": status,
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
           "subject": {"reference": format!("Patient/{patient}")}})
}

async fn status_of(s: &TestServer, id: &str) -> Value {
    let r = get(s, &format!("Subscription/{id}/$status")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(b["type"], "searchset");
    b
}

async fn suite(backend: Backend) {
    let s = TestServer::start(backend).await;
    let rx = Receiver::start().await;
    for (pid, pc) in [("p1", "20095"), ("p2", "10115")] {
        let r = put_json(&s, &format!("Patient/{pid}"), &json!({"resourceType": "Patient", "id": pid, "address": [{"postalCode": pc}]})).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }

    // bad subscriptions: 422 with an OperationOutcome, nothing stored
    let bad = [
        subscription("http://example.org/no-such-topic", None, &rx.url, "id-only"),
        subscription(DISCHARGE, Some("Encounter?no-such-param=1"), &rx.url, "id-only"),
        subscription(DISCHARGE, Some("Observation?code=1"), &rx.url, "id-only"),
        subscription(DISCHARGE, None, "ftp://example.org/x", "id-only"),
        subscription(DISCHARGE, None, &rx.url, "everything"),
    ];
    for b in &bad {
        let r = post_json(&s, "Subscription", b).await;
        assert_outcome(&r, 422);
    }
    let mut email = subscription(DISCHARGE, None, &rx.url, "id-only");
    email["channel"]["type"] = json!("email");
    assert_outcome(&post_json(&s, "Subscription", &email).await, 422);
    assert_eq!(get(&s, "Subscription").await.json()["total"], 0);

    // a filtered id-only subscription (chained filter: the patient's postal code)
    let id = subscribe(&s, &subscription(DISCHARGE, Some("Encounter?patient.address-postalcode=20095"), &rx.url, "id-only")).await;
    assert_eq!(put_json(&s, "Encounter/e1", &encounter("e1", "p1", "in-progress")).await.status, 201);
    assert_eq!(put_json(&s, "Encounter/e2", &encounter("e2", "p2", "finished")).await.status, 201); // filtered out
    let t0 = Instant::now();
    assert_eq!(put_json(&s, "Encounter/e1", &encounter("e1", "p1", "finished")).await.status, 200);
    let (nums, _) = rx.wait_events(1, Duration::from_secs(5)).await;
    assert_eq!(nums, vec![1], "one event for the discharge of p1");
    assert!(t0.elapsed() < Duration::from_secs(1), "notified within 1 s, took {:?}", t0.elapsed());
    let b = &rx.events()[0];
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "history");
    assert_eq!(b["entry"][0]["resource"]["resourceType"], "Parameters");
    assert_eq!(status_param(b, "topic").as_deref(), Some(DISCHARGE));
    assert_eq!(status_param(b, "events-since-subscription-start").as_deref(), Some("1"));
    assert!(status_param(b, "subscription").unwrap().ends_with(&format!("Subscription/{id}")));
    assert!(b["entry"][1]["fullUrl"].as_str().unwrap().ends_with("Encounter/e1"));
    assert!(b["entry"][1].get("resource").is_none(), "id-only carries no resource");
    // an update that stays finished does not fire again
    let mut e1 = encounter("e1", "p1", "finished");
    e1["period"] = json!({"end": "2024-04-02"});
    assert_eq!(put_json(&s, "Encounter/e1", &e1).await.status, 200);

    // a rolled-back transaction announces nothing
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": encounter("e3", "p1", "finished"), "request": {"method": "PUT", "url": "Encounter/e3"}},
        {"resource": {"resourceType": "Observation", "status": "bogus", "code": {"text": "x"}}, "request": {"method": "POST", "url": "Observation"}},
    ]});
    let r = post_json(&s, "", &tx).await;
    assert!(r.status >= 400, "{}", r.text);
    // a successful transaction does (transactions go through the same pipeline)
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": encounter("e4", "p1", "finished"), "request": {"method": "PUT", "url": "Encounter/e4"}},
    ]});
    assert_eq!(post_json(&s, "", &tx).await.status, 200);
    let (nums, _) = rx.wait_events(2, Duration::from_secs(5)).await;
    assert_eq!(nums, vec![1, 2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(event_numbers(&rx.events()), vec![1, 2], "no event from e2 (filter), the no-op update or the rolled-back transaction");

    // $status and $events
    let st = status_of(&s, &id).await;
    let p = &st["entry"][0]["resource"];
    assert_eq!(p["resourceType"], "Parameters");
    let pv = |n: &str| p["parameter"].as_array().unwrap().iter().find(|x| x["name"] == n).cloned().unwrap();
    assert_eq!(pv("status")["valueCode"], "active");
    assert_eq!(pv("type")["valueCode"], "query-status");
    assert_eq!(pv("events-since-subscription-start")["valueString"], "2");
    let ev = get(&s, &format!("Subscription/{id}/$events?eventsSinceNumber=2&content=full-resource")).await;
    assert_eq!(ev.status, 200, "{}", ev.text);
    let evb = ev.json();
    assert_eq!(event_numbers(std::slice::from_ref(&evb)), vec![2]);
    assert_eq!(status_param(&evb, "type").as_deref(), Some("query-event"));
    assert_eq!(evb["entry"][1]["resource"]["id"], "e4");
    assert_eq!(get(&s, &format!("Subscription/{id}/$events?eventsSinceNumber=x")).await.status, 400);
    assert_eq!(get(&s, "Subscription/nope/$status").await.status, 404);

    // full-resource payload
    let rx2 = Receiver::start().await;
    subscribe(&s, &subscription(REFERRAL, Some("Task?owner=Organization/lead"), &rx2.url, "full-resource")).await;
    let task = json!({"resourceType": "Task", "status": "requested", "intent": "order",
                      "owner": {"reference": "Organization/lead"}, "for": {"reference": "Patient/p1"}});
    assert_eq!(post_json(&s, "Task", &task).await.status, 201);
    let (nums, _) = rx2.wait_events(1, Duration::from_secs(5)).await;
    assert_eq!(nums, vec![1]);
    let b = &rx2.events()[0];
    assert_eq!(b["entry"][1]["resource"]["resourceType"], "Task");
    assert_eq!(b["entry"][1]["request"]["method"], "POST");

    // a subscription turned off gets nothing more
    let mut off = get(&s, &format!("Subscription/{id}")).await.json();
    off["status"] = json!("off");
    assert_eq!(put_json(&s, &format!("Subscription/{id}"), &off).await.status, 200);
    assert_eq!(put_json(&s, "Encounter/e5", &encounter("e5", "p1", "finished")).await.status, 201);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(event_numbers(&rx.events()), vec![1, 2]);
    s.stop().await;
}

#[tokio::test]
async fn subscriptions_sqlite() {
    suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn subscriptions_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    suite(Backend::Postgres).await;
}

/// A failing endpoint: retried with backoff, `error` after three failures,
/// resumed on the first success; order kept; heartbeat when idle.
async fn retry_suite(backend: Backend) {
    let s = TestServer::start(backend).await;
    let rx = Receiver::start_failing(4, 0).await;
    let mut sub = subscription(DISCHARGE, None, &rx.url, "id-only");
    sub["channel"]["extension"] = json!([{"url": format!("{BP}backport-heartbeat-period"), "valueUnsignedInt": 1}]);
    let id = subscribe(&s, &sub).await;
    for i in 0..5 {
        assert_eq!(put_json(&s, &format!("Encounter/r{i}"), &encounter(&format!("r{i}"), "px", "finished")).await.status, 201);
    }
    // after three failed attempts the subscription shows `error`
    let t0 = Instant::now();
    loop {
        let st = status_of(&s, &id).await;
        let p = &st["entry"][0]["resource"]["parameter"];
        if p.as_array().unwrap().iter().any(|x| x["name"] == "status" && x["valueCode"] == "error") {
            assert!(p.as_array().unwrap().iter().any(|x| x["name"] == "error"), "the last error is reported");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "status error expected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the fifth attempt succeeds: every event, in order, and active again
    let (nums, _) = rx.wait_events(5, Duration::from_secs(20)).await;
    assert_eq!(nums, vec![1, 2, 3, 4, 5], "every event once, in order");
    assert!(rx.requests.load(Ordering::SeqCst) >= 5, "four failed attempts, then the delivery");
    // (the state is recorded right after the endpoint's answer)
    let t0 = Instant::now();
    loop {
        let st = status_of(&s, &id).await;
        let p = &st["entry"][0]["resource"]["parameter"];
        if p.as_array().unwrap().iter().any(|x| x["name"] == "status" && x["valueCode"] == "active") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "active again after the first success");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // idle: heartbeats (period 1 s)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let hb = rx.got.lock().unwrap().iter().filter(|b| status_param(b, "type").as_deref() == Some("heartbeat")).count();
    assert!(hb >= 1, "heartbeat notifications when idle");
    s.stop().await;
}

#[tokio::test]
async fn subscription_retry_sqlite() {
    retry_suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn subscription_retry_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    retry_suite(Backend::Postgres).await;
}

/// The delivery reliability scenario of `carebridge bench subscriptions`,
/// smaller: events to a receiver failing 30 % of requests and restarting
/// once, the gateway (a child `carebridge serve`) killed with SIGKILL and
/// restarted mid-way → every event delivered at least once, none lost,
/// order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_reliability() {
    let r = carebridge::cli::bench_subscriptions::run(carebridge::cli::bench_subscriptions::Options {
        exe: env!("CARGO_BIN_EXE_carebridge").into(),
        events: 400,
        fail_percent: 30,
        concurrency: 4,
        kill_gateway: true,
        restart_receiver: true,
        db: None,
        timeout: Duration::from_secs(120),
    })
    .await
    .expect("scenario runs");
    eprintln!("delivery_reliability: {r}");
    assert_eq!(r.events, 400, "one event per discharged Encounter, none from retried writes");
    assert_eq!(r.lost, 0, "{r}");
    assert_eq!(r.delivered, 400, "{r}");
    assert_eq!(r.order_violations, 0, "{r}");
    assert_eq!(r.gateway_restarts, 1);
    assert_eq!(r.receiver_restarts, 1);
    assert!(r.failed_requests > 0, "the receiver failed some requests: {r}");
}

/// A member's full-resource subscription passes the read path's access
/// filter: the focus of a patient the member has a care relationship with
/// (a CareTeam; opt-out region) goes out in full, another patient's id-only.
#[tokio::test]
async fn member_subscription_filtered_by_access() {
    use carebridge::auth::{Caller, MemberType};
    use carebridge::pipeline::{Entry, Method, Pipeline};
    use carebridge::services::access::{AccessConfig, DefaultPolicy};
    let s = TestServer::start_access(Backend::Sqlite, AccessConfig { default_policy: DefaultPolicy::OptOut, ..Default::default() }).await;
    let rx = Receiver::start().await;
    for (pid, _) in [("pm", 0), ("pr", 1)] {
        assert_eq!(put_json(&s, &format!("Patient/{pid}"), &json!({"resourceType": "Patient", "id": pid})).await.status, 201);
    }
    assert_eq!(put_json(&s, "Organization/gp", &json!({"resourceType": "Organization", "id": "gp", "name": "GP"})).await.status, 201);
    let team = json!({"resourceType": "CareTeam", "id": "t-pr", "status": "active", "subject": {"reference": "Patient/pr"},
                      "participant": [{"member": {"reference": "Organization/gp"}}]});
    assert_eq!(put_json(&s, "CareTeam/t-pr", &team).await.status, 201);
    let gp = Caller { client_id: "gp".into(), member: Some("gp".into()), member_type: MemberType::GpPractice, scopes: vec![], purpose_of_use: None };
    let e = Entry { method: Method::Post, url: "Subscription".into(), full_url: None, resource: Some(subscription(DISCHARGE, None, &rx.url, "full-resource")), if_none_exist: None, if_match: None };
    Pipeline::single(&s.services).by(&gp).transaction(vec![e]).await.unwrap();
    assert_eq!(put_json(&s, "Encounter/m1", &encounter("m1", "pm", "finished")).await.status, 201);
    assert_eq!(put_json(&s, "Encounter/m2", &encounter("m2", "pr", "finished")).await.status, 201);
    let (nums, _) = rx.wait_events(2, Duration::from_secs(5)).await;
    assert_eq!(nums, vec![1, 2]);
    let entries: Vec<Value> = rx.events().iter().flat_map(|b| b["entry"].as_array().unwrap()[1..].to_vec()).collect();
    let m1 = entries.iter().find(|e| e["fullUrl"].as_str().unwrap().ends_with("Encounter/m1")).unwrap();
    let m2 = entries.iter().find(|e| e["fullUrl"].as_str().unwrap().ends_with("Encounter/m2")).unwrap();
    assert!(m1.get("resource").is_none(), "no relationship with pm: id-only");
    assert_eq!(m2["resource"]["id"], "m2", "care team member of pr: the full resource");
    s.stop().await;
}
