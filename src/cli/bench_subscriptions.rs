//! `carebridge bench subscriptions`: delivery reliability of the
//! subscription outbox (issue 8, "Evidence"). A real gateway runs as a
//! child process (`carebridge serve` on a fresh SQLite file, or `--db` a
//! PostgreSQL URL); one rest-hook subscription (topic encounter-discharge,
//! id-only) points at a receiver on loopback that fails a share of the
//! requests (half of the failures after it has read the notification, so
//! the gateway re-sends what was already seen) and restarts once (its
//! runtime dropped: open connections die); N Encounters are discharged by
//! concurrent clients; mid-way the gateway is killed (SIGKILL) and started
//! again on the same database, the clients retrying what failed.
//!
//! Reported: events written, delivered (unique), lost, duplicates,
//! order violations (an event first seen after a higher-numbered one),
//! latency from the write's answer to the first receipt (p50/p99), and the
//! wall time. The integration test `subscription::delivery_reliability`
//! runs the same function with fewer events and asserts no loss and no
//! order violation.

use super::percentile;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "https://carebridge.example/fhir/SubscriptionTopic/encounter-discharge";
const BP: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

#[derive(Debug, Clone)]
pub struct Options {
    /// the `carebridge` executable to run as the gateway
    pub exe: PathBuf,
    pub events: usize,
    /// percentage of receiver requests answered 500
    pub fail_percent: u64,
    pub concurrency: usize,
    /// kill -9 the gateway once half the writes were answered, then restart it
    pub kill_gateway: bool,
    /// restart the receiver once a third of the events arrived
    pub restart_receiver: bool,
    /// database URL for the gateway (default: a fresh SQLite file)
    pub db: Option<String>,
    /// give up waiting for deliveries after this long
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub events: i64,
    pub delivered: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub order_violations: usize,
    pub notifications: usize,
    pub failed_requests: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub seconds: f64,
    pub gateway_restarts: usize,
    pub receiver_restarts: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events {} · delivered {} · lost {} · duplicates {} · order violations {} · notifications {} ({} answered 500) · latency p50 {} ms p99 {} ms · {:.1} s · gateway restarts {} · receiver restarts {}",
            self.events,
            self.delivered,
            self.lost,
            self.duplicates,
            self.order_violations,
            self.notifications,
            self.failed_requests,
            self.p50_ms,
            self.p99_ms,
            self.seconds,
            self.gateway_restarts,
            self.receiver_restarts
        )
    }
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// event numbers in arrival order, one list per accepted-or-read notification
    arrivals: Vec<Vec<i64>>,
    /// resource id → first receipt
    first: HashMap<String, Instant>,
    unique: HashSet<i64>,
}

struct Shared {
    seen: Mutex<Seen>,
    requests: AtomicUsize,
    failed: AtomicUsize,
    fail_percent: u64,
}

fn numbers_and_ids(b: &Value) -> (Vec<i64>, Vec<String>) {
    let mut nums = vec![];
    for p in b.pointer("/entry/0/resource/parameter").and_then(Value::as_array).into_iter().flatten() {
        if p["name"] == "notification-event" {
            for part in p["part"].as_array().into_iter().flatten() {
                if part["name"] == "event-number" {
                    if let Some(n) = part["valueString"].as_str().and_then(|s| s.parse().ok()) {
                        nums.push(n);
                    }
                }
            }
        }
    }
    let ids = b["entry"].as_array().into_iter().flatten().skip(1).filter_map(|e| e["fullUrl"].as_str()?.rsplit('/').next().map(str::to_owned)).collect();
    (nums, ids)
}

async fn hook(axum::extract::State(sh): axum::extract::State<Arc<Shared>>, body: axum::body::Bytes) -> axum::http::StatusCode {
    let n = sh.requests.fetch_add(1, Ordering::SeqCst) as u64;
    // deterministic pseudo-random failures
    let roll = n.wrapping_mul(2_654_435_761) % 100;
    let fail = roll < sh.fail_percent;
    let Ok(b) = serde_json::from_slice::<Value>(&body) else { return axum::http::StatusCode::BAD_REQUEST };
    if b.pointer("/entry/0/resource/parameter").is_none() {
        return axum::http::StatusCode::BAD_REQUEST;
    }
    let (nums, ids) = numbers_and_ids(&b);
    if fail && roll.is_multiple_of(2) {
        sh.failed.fetch_add(1, Ordering::SeqCst);
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR; // failed before reading
    }
    if !nums.is_empty() {
        let now = Instant::now();
        let mut s = sh.seen.lock().expect("receiver state");
        for id in ids {
            s.first.entry(id).or_insert(now);
        }
        s.unique.extend(nums.iter().copied());
        s.arrivals.push(nums);
    }
    if fail {
        sh.failed.fetch_add(1, Ordering::SeqCst);
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR; // read, but the answer says it failed
    }
    axum::http::StatusCode::OK
}

/// The receiver on its own thread and runtime: stopping drops the runtime
/// (listener and open connections die, as in a process restart).
struct Receiver {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(addr: SocketAddr, sh: Arc<Shared>) -> Result<Receiver, String> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() else { return };
            rt.block_on(async move {
                let mut tries = 0;
                let l = loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) if tries > 100 => {
                            let _ = addr_tx.send(Err(e.to_string()));
                            return;
                        }
                        Err(_) => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                let _ = addr_tx.send(l.local_addr().map_err(|e| e.to_string()));
                let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(sh);
                tokio::select! {
                    _ = async { let _ = axum::serve(l, app).await; } => {}
                    _ = stop_rx => {}
                }
            });
            drop(rt);
        });
        let addr = addr_rx.recv().map_err(|e| e.to_string())??;
        Ok(Receiver { addr, stop: Some(stop_tx), thread: Some(thread) })
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Gateway {
    child: std::process::Child,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

async fn start_gateway(exe: &PathBuf, listen: &str, db: &str, client: &reqwest::Client) -> Result<Gateway, String> {
    let child = std::process::Command::new(exe)
        .args(["serve", "--insecure-dev", "--listen", listen, "--db", db])
        .env("CAREBRIDGE_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    let mut g = Gateway { child };
    let t0 = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://{listen}/metadata")).send().await {
            if r.status().is_success() {
                return Ok(g);
            }
        }
        if let Ok(Some(st)) = g.child.try_wait() {
            return Err(format!("gateway exited during start: {st}"));
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = g.child.kill();
            return Err("gateway did not start within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the reliability scenario.
pub async fn run(opts: Options) -> Result<Report, String> {
    let t_start = Instant::now();
    let dir = std::env::temp_dir().join(format!("carebridge-bench-subs-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let db = opts.db.clone().unwrap_or_else(|| format!("sqlite:{}", dir.join("gw.db").display()));
    let listen = format!("127.0.0.1:{}", free_port()?);
    let base = format!("http://{listen}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(|e| e.to_string())?;

    let sh = Arc::new(Shared { seen: Default::default(), requests: Default::default(), failed: Default::default(), fail_percent: opts.fail_percent });
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), sh.clone())?;
    let recv_addr = receiver.addr;
    let receiver = Arc::new(Mutex::new(Some(receiver)));

    let gateway = Arc::new(Mutex::new(Some(start_gateway(&opts.exe, &listen, &db, &client).await?)));
    let sub = json!({
        "resourceType": "Subscription", "status": "requested", "reason": "bench", "criteria": TOPIC,
        "channel": {"type": "rest-hook", "endpoint": format!("http://{recv_addr}/hook"), "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": format!("{BP}backport-payload-content"), "valueCode": "id-only"}]}}
    });
    let r = client.post(format!("{base}/Subscription")).header("content-type", "application/fhir+json").body(sub.to_string()).send().await.map_err(|e| e.to_string())?;
    if r.status().as_u16() != 201 {
        return Err(format!("creating the Subscription: {} {}", r.status(), r.text().await.unwrap_or_default()));
    }
    let sub_id = r.bytes().await.ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).and_then(|v| v["id"].as_str().map(str::to_owned)).ok_or("no Subscription id")?;

    // the disruptions
    let acked = Arc::new(AtomicUsize::new(0));
    let gateway_restarts = Arc::new(AtomicUsize::new(0));
    let receiver_restarts = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let disrupt = {
        let (acked, gateway, receiver, sh, done) = (acked.clone(), gateway.clone(), receiver.clone(), sh.clone(), done.clone());
        let (gr, rr, o, listen, db, client) = (gateway_restarts.clone(), receiver_restarts.clone(), opts.clone(), listen.clone(), db.clone(), client.clone());
        tokio::spawn(async move {
            let (mut killed, mut restarted) = (!o.kill_gateway, !o.restart_receiver);
            while !(done.load(Ordering::SeqCst) || killed && restarted) {
                if !killed && acked.load(Ordering::SeqCst) >= o.events / 2 {
                    let old = gateway.lock().expect("gateway").take();
                    drop(old); // SIGKILL + wait
                    match start_gateway(&o.exe, &listen, &db, &client).await {
                        Ok(g) => *gateway.lock().expect("gateway") = Some(g),
                        Err(e) => {
                            eprintln!("bench subscriptions: restarting the gateway failed: {e}");
                            return;
                        }
                    }
                    gr.fetch_add(1, Ordering::SeqCst);
                    killed = true;
                }
                if !restarted && sh.seen.lock().expect("seen").unique.len() >= o.events / 3 {
                    let r = receiver.lock().expect("receiver").take();
                    if let Some(r) = r {
                        let addr = r.addr;
                        tokio::task::spawn_blocking(move || r.stop()).await.ok();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        match tokio::task::spawn_blocking({
                            let sh = sh.clone();
                            move || Receiver::start(addr, sh)
                        })
                        .await
                        {
                            Ok(Ok(r2)) => *receiver.lock().expect("receiver") = Some(r2),
                            Ok(Err(e)) => eprintln!("bench subscriptions: restarting the receiver failed: {e}"),
                            Err(e) => eprintln!("bench subscriptions: restarting the receiver failed: {e}"),
                        }
                        rr.fetch_add(1, Ordering::SeqCst);
                    }
                    restarted = true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // the writers: each Encounter discharged once; retried until answered (a retry of a committed write is a no-op)
    let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = vec![];
    for _ in 0..opts.concurrency.max(1) {
        let (next, acked, acks, client, base, n) = (next.clone(), acked.clone(), acks.clone(), client.clone(), base.clone(), opts.events);
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return Ok::<(), String>(());
                }
                let id = format!("bench-{i}");
                let body = json!({"resourceType": "Encounter", "id": id, "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                    "subject": {"reference": format!("Patient/bench-p{}", i % 100)}})
                .to_string();
                let t0 = Instant::now();
                loop {
                    let r = client.put(format!("{base}/Encounter/{id}")).header("content-type", "application/fhir+json").body(body.clone()).send().await;
                    match r {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) if r.status().is_client_error() => return Err(format!("write {id}: {}", r.status())),
                        _ if t0.elapsed() > Duration::from_secs(180) => return Err(format!("write {id}: gateway unreachable")),
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                acks.lock().expect("acks").insert(id, Instant::now());
                acked.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for w in writers {
        w.await.map_err(|e| e.to_string())??;
    }

    // wait for every event to arrive
    let status_events = async {
        let r = client.get(format!("{base}/Subscription/{sub_id}/$status")).send().await.ok()?;
        let b: Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
        b.pointer("/entry/0/resource/parameter")?.as_array()?.iter().find(|p| p["name"] == "events-since-subscription-start")?["valueString"].as_str()?.parse::<i64>().ok()
    };
    let mut total = status_events.await.unwrap_or(opts.events as i64);
    let t_wait = Instant::now();
    loop {
        let got = sh.seen.lock().expect("seen").unique.len();
        if got as i64 >= total || t_wait.elapsed() > opts.timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if t_wait.elapsed().as_millis() % 2000 < 50 {
            let st = async {
                let r = client.get(format!("{base}/Subscription/{sub_id}/$status")).send().await.ok()?;
                let b: Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
                b.pointer("/entry/0/resource/parameter")?.as_array()?.iter().find(|p| p["name"] == "events-since-subscription-start")?["valueString"].as_str()?.parse::<i64>().ok()
            };
            if let Some(t) = st.await {
                total = t;
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let _ = disrupt.await;
    let seconds = t_start.elapsed().as_secs_f64();
    drop(gateway.lock().expect("gateway").take());
    let last_receiver = receiver.lock().expect("receiver").take();
    if let Some(r) = last_receiver {
        tokio::task::spawn_blocking(move || r.stop()).await.ok();
    }
    let _ = std::fs::remove_dir_all(&dir);

    let seen = sh.seen.lock().expect("seen");
    let mut dup = 0;
    let mut violations = 0;
    let mut first_seen: HashSet<i64> = HashSet::new();
    let mut max_first = 0;
    let mut notifications = 0;
    for a in &seen.arrivals {
        notifications += 1;
        for &n in a {
            if !first_seen.insert(n) {
                dup += 1;
            } else {
                if n < max_first {
                    violations += 1;
                }
                max_first = max_first.max(n);
            }
        }
    }
    let acks = acks.lock().expect("acks");
    let mut lat: Vec<u64> = seen
        .first
        .iter()
        .filter_map(|(id, t)| acks.get(id).map(|a| t.saturating_duration_since(*a).as_millis() as u64))
        .collect();
    lat.sort_unstable();
    let lost = (1..=total).filter(|n| !seen.unique.contains(n)).count();
    Ok(Report {
        events: total,
        delivered: seen.unique.len(),
        lost,
        duplicates: dup,
        order_violations: violations,
        notifications,
        failed_requests: sh.failed.load(Ordering::SeqCst),
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        seconds,
        gateway_restarts: gateway_restarts.load(Ordering::SeqCst),
        receiver_restarts: receiver_restarts.load(Ordering::SeqCst),
    })
}
