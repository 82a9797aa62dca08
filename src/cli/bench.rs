//! `carebridge bench …`: throughput and latency figures (printed, never
//! asserted). Each benchmark targets `--server URL`, or starts an in-process
//! gateway on a temporary SQLite database on a free loopback port. For load
//! from a separate process, see README (wrk, hyperfine).
//!
//! * `ingest` — Synthea transaction bundles posted by N concurrent clients;
//!   resources/s, beside the rate at which the same bytes merely parse with
//!   serde_json (the ceiling).
//! * `read` — GET by id at C concurrent clients: req/s, p50, p99.
//! * `validate` — validator throughput over the Synthea resources (each
//!   entry resource against core, plus `--profile`s of its type): one thread,
//!   then all cores (entries split across threads).
//! * `search` — token + date searches over generated Observations
//!   (default 100,000): req/s, p50, p99.
//! * `access` — read by id and search by patient, each as the unfiltered
//!   operator and as a clinical member (care relationship + Consent checks
//!   on every row): p99 of both and the difference in percent.
//! * `import` — a generated N-row CSV export of the shipped nursing-service
//!   mapping: translate-only rows/s (one thread), then translate + validate
//!   + store rows/s into a fresh SQLite store, then the idempotent re-import.

use super::percentile;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Target {
    pub base: String,
    _server: Option<crate::server::Running>,
    _dir: Option<PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Use `server`, or start an in-process gateway on a fresh SQLite file.
pub async fn target(server: Option<String>) -> Result<Target, String> {
    target_with(server, Default::default()).await
}

/// [`target`] with a validation mode for the in-process gateway.
pub async fn target_with(server: Option<String>, validation: crate::services::ValidationMode) -> Result<Target, String> {
    if let Some(s) = server {
        return Ok(Target { base: s.trim_end_matches('/').to_owned(), _server: None, _dir: None });
    }
    let dir = std::env::temp_dir().join(format!("carebridge-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let opts = crate::server::ServerOptions {
        database_url: format!("sqlite:{}", dir.join("bench.db").display()),
        package_cache: None,
        api: Default::default(),
        validation,
        packs: vec![],
        mpi: Default::default(),
        access: Default::default(),
    };
    let services = crate::server::services(&opts).await.map_err(|e| e.to_string())?;
    let running = crate::server::start(services, opts.api, "127.0.0.1:0").await.map_err(|e| e.to_string())?;
    println!("in-process gateway at {} (SQLite, {})", running.base_url(), dir.display());
    Ok(Target { base: running.base_url(), _server: Some(running), _dir: Some(dir) })
}

fn client() -> reqwest::Client {
    client_with(None)
}

/// A client that sends `Authorization: Bearer <token>` on every request when given one.
fn client_with(token: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().pool_max_idle_per_host(64);
    if let Some(t) = token {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::AUTHORIZATION, reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).expect("ascii token"));
        b = b.default_headers(h);
    }
    b.build().expect("http client")
}

/// An in-process gateway with authentication: one hospital client (ES384
/// key generated here), the shipped role policy, audit on; returns the
/// target and an access token for `system/*.cruds`.
pub async fn target_auth() -> Result<(Target, String), String> {
    use crate::auth::token::{AuthSettings, Authenticator, ClientReg, GatewayKey};
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    use base64::Engine;
    let kp = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).map_err(|e| e.to_string())?;
    let pkcs8 = kp.to_pkcs8v1().map_err(|e| e.to_string())?;
    let public = kp.public_key().as_ref().to_vec();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(json!({"keys": [{"kty": "EC", "crv": "P-384", "alg": "ES384", "kid": "bench", "x": b64(&public[1..49]), "y": b64(&public[49..97])}]}))
        .map_err(|e| e.to_string())?;
    let reg = ClientReg {
        client_id: "bench".into(),
        member: "bench-hospital".into(),
        member_type: crate::auth::MemberType::Hospital,
        jwks,
        scopes: vec![crate::auth::scope::Scope::parse("system/*.cruds")?],
        rate: None,
        max_body_bytes: None,
        client_cert_sha256: vec![],
    };
    let settings = AuthSettings {
        clients: [("bench".to_owned(), reg)].into_iter().collect(),
        members: Default::default(),
        policy: crate::auth::policy::RolePolicy::default_policy(),
        token_url: None,
        issuer: "urn:carebridge:bench".into(),
        token_lifetime: 3600,
        clock_skew: 60,
        key: GatewayKey::generate(),
        rate: None,
    };
    let dir = std::env::temp_dir().join(format!("carebridge-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let opts = crate::server::ServerOptions {
        database_url: format!("sqlite:{}", dir.join("bench.db").display()),
        package_cache: None,
        api: crate::api::ApiConfig { auth: Some(Arc::new(Authenticator::new(settings))), ..Default::default() },
        validation: Default::default(),
        packs: vec![],
        mpi: Default::default(),
        access: Default::default(),
    };
    let services = crate::server::services(&opts).await.map_err(|e| e.to_string())?;
    let running = crate::server::start(services, opts.api, "127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let base = running.base_url();
    println!("in-process gateway with authentication at {base} (SQLite, {})", dir.display());
    let now = crate::fhir::datetime::now_micros() / 1_000_000;
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    h.kid = Some("bench".into());
    let claims = json!({"iss": "bench", "sub": "bench", "aud": format!("{base}/auth/token"), "exp": now + 240, "jti": uuid::Uuid::new_v4().to_string()});
    let assertion = jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref())).map_err(|e| e.to_string())?;
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_assertion_type", crate::auth::token::ASSERTION_TYPE)
        .append_pair("client_assertion", &assertion)
        .append_pair("scope", "system/*.cruds")
        .finish();
    let r = client().post(format!("{base}/auth/token")).header("content-type", "application/x-www-form-urlencoded").body(form).send().await.map_err(|e| e.to_string())?;
    let v: Value = r.json_bytes().await?;
    let token = v.get("access_token").and_then(Value::as_str).ok_or_else(|| format!("no token: {v}"))?.to_owned();
    Ok((Target { base, _server: Some(running), _dir: Some(dir) }, token))
}

pub async fn ingest(
    server: Option<String>,
    dir: PathBuf,
    concurrency: usize,
    limit: Option<usize>,
    validation: crate::services::ValidationMode,
) -> Result<(), String> {
    let mut files = super::collect_files(std::slice::from_ref(&dir), &[".json"]).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(l) = limit {
        files.truncate(l);
    }
    if files.is_empty() {
        return Err(format!("no bundles in {}", dir.display()));
    }
    let bodies: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let total_bytes: usize = bodies.iter().map(Vec::len).sum();
    // ceiling: parse only
    let t0 = Instant::now();
    let mut resources = 0usize;
    for b in &bodies {
        let v: Value = serde_json::from_slice(b).map_err(|e| e.to_string())?;
        resources += v.get("entry").and_then(Value::as_array).map_or(0, Vec::len);
    }
    let parse_s = t0.elapsed().as_secs_f64();
    let t = target_with(server, validation).await?;
    let c = client();
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (bodies, next, c, base) = (bodies.clone(), next.clone(), c.clone(), t.base.clone());
        set.spawn(async move {
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(b) = bodies.get(i) else { break };
                let r = c.post(&base).header("content-type", "application/fhir+json").body(b.clone()).send().await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        errors += 1;
                        eprintln!("bundle {i}: HTTP {}: {}", r.status(), r.text().await.unwrap_or_default().chars().take(200).collect::<String>());
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("bundle {i}: {e}");
                    }
                }
            }
            errors
        });
    }
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        errors += r.unwrap_or(1);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bench ingest: {} bundles, {resources} resources, {:.1} MB, {concurrency} clients, validation {validation:?}",
        files.len(),
        total_bytes as f64 / 1e6
    );
    println!("  ingest:       {:>10.0} resources/s  ({secs:.2} s, {errors} failed bundles)", resources as f64 / secs);
    println!("  parse only:   {:>10.0} resources/s  ({parse_s:.2} s, serde_json ceiling)", resources as f64 / parse_s);
    Ok(())
}

async fn load_generator(base: &str, urls: Arc<Vec<String>>, concurrency: usize, duration: Duration) -> (usize, usize, Vec<u64>) {
    load_generator_as(base, urls, concurrency, duration, None).await
}

/// [`load_generator`] with `X-Carebridge-Dev-Caller: caller` on every request (a
/// development gateway, `ApiConfig::dev_caller_header`).
async fn load_generator_as(base: &str, urls: Arc<Vec<String>>, concurrency: usize, duration: Duration, caller: Option<&str>) -> (usize, usize, Vec<u64>) {
    load_generator_with(client(), base, urls, concurrency, duration, caller).await
}

async fn load_generator_with(c: reqwest::Client, base: &str, urls: Arc<Vec<String>>, concurrency: usize, duration: Duration, caller: Option<&str>) -> (usize, usize, Vec<u64>) {
    let caller = caller.map(str::to_owned);
    let deadline = Instant::now() + duration;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let (c, urls, base, caller) = (c.clone(), urls.clone(), base.to_owned(), caller.clone());
        set.spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let (mut ok, mut err) = (0usize, 0usize);
            let mut i = w * 7919;
            while Instant::now() < deadline {
                i = (i + 104_729) % urls.len();
                let t = Instant::now();
                let mut rb = c.get(format!("{base}/{}", urls[i]));
                if let Some(who) = &caller {
                    rb = rb.header("x-carebridge-dev-caller", who.as_str());
                }
                match rb.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok += 1;
                    }
                    _ => err += 1,
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            (ok, err, lat)
        });
    }
    let (mut ok, mut err, mut lat) = (0, 0, vec![]);
    while let Some(Ok((o, e, l))) = set.join_next().await {
        ok += o;
        err += e;
        lat.extend(l);
    }
    lat.sort_unstable();
    (ok, err, lat)
}

fn report(name: &str, ok: usize, err: usize, lat: &[u64], secs: f64) {
    println!(
        "bench {name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({ok} ok, {err} failed, {secs:.1} s)",
        ok as f64 / secs,
        percentile(lat, 0.50) as f64 / 1000.0,
        percentile(lat, 0.99) as f64 / 1000.0,
        lat.last().copied().unwrap_or(0) as f64 / 1000.0
    );
}

async fn post_tx(c: &reqwest::Client, base: &str, entries: Vec<Value>) -> Result<Value, String> {
    let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = c.post(base).header("content-type", "application/fhir+json").body(serde_json::to_vec(&b).unwrap_or_default()).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json_bytes().await?;
    if !status.is_success() {
        return Err(format!("seeding failed: HTTP {status}: {v}"));
    }
    Ok(v)
}

trait JsonBytes {
    async fn json_bytes(self) -> Result<Value, String>;
}
impl JsonBytes for reqwest::Response {
    async fn json_bytes(self) -> Result<Value, String> {
        let b = self.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&b).map_err(|e| e.to_string())
    }
}

/// `bench read --auth off|on|both`: without authentication (insecure
/// development mode), with it (bearer token, role policy, audit record of
/// every read), or both one after the other with the p99 overhead.
pub async fn read(server: Option<String>, resources: usize, concurrency: usize, seconds: u64, auth: &str) -> Result<(), String> {
    match auth {
        "off" => read_one(server, resources, concurrency, seconds, false).await.map(|_| ()),
        "on" if server.is_none() => read_one(None, resources, concurrency, seconds, true).await.map(|_| ()),
        "both" if server.is_none() => {
            let off = read_one(None, resources, concurrency, seconds, false).await?;
            let on = read_one(None, resources, concurrency, seconds, true).await?;
            println!(
                "bench read auth overhead: p99 {:.3} ms without auth, {:.3} ms with auth (token check, role policy, audit record): {:+.1} %",
                off as f64 / 1000.0,
                on as f64 / 1000.0,
                (on as f64 - off as f64) / off.max(1) as f64 * 100.0
            );
            Ok(())
        }
        "on" | "both" => Err("--auth on|both runs its own in-process gateway (no --server)".into()),
        a => Err(format!("--auth '{a}': expected off, on or both")),
    }
}

const GIVEN: [&str; 7] = ["Anna", "Ben", "Cem", "Dora", "Emil", "Frida", "Gus"];

/// A family name of letters only, different for every `k` (phonetic keys
/// ignore digits, so `Bench1`, `Bench2`, … would all sound alike).
fn bench_family(k: usize) -> String {
    const SYL: [&str; 16] = ["ba", "ke", "lo", "mi", "nu", "ra", "se", "ti", "vo", "wu", "xa", "ze", "do", "fi", "gu", "ho"];
    let mut out = String::from("B");
    let mut n = k;
    loop {
        out.push_str(SYL[n % 16]);
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out
}

/// A birth date between 1971 and 2010, different for neighbouring `k`.
fn bench_birth_date(k: usize) -> String {
    let days = (k * 7919) % (39 * 365);
    let d = crate::fhir::datetime::format_instant((365 + days as i64) * 86_400 * 1_000_000);
    d[..10].to_owned()
}

/// One read run; returns the p99 latency in µs.
async fn read_one(server: Option<String>, resources: usize, concurrency: usize, seconds: u64, auth: bool) -> Result<u64, String> {
    let (t, token) = if auth {
        let (t, tok) = target_auth().await?;
        (t, Some(tok))
    } else {
        (target(server).await?, None)
    };
    let c = client_with(token.as_deref());
    let mut urls = Vec::with_capacity(resources);
    for chunk_start in (0..resources).step_by(500) {
        let n = (resources - chunk_start).min(500);
        let entries: Vec<Value> = (0..n)
            .map(|i| {
                let k = chunk_start + i;
                // distinct people: the MPI must not see one person ten thousand times
                json!({"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:bench", "value": k.to_string()}],
                    "name": [{"family": bench_family(k), "given": [GIVEN[k % GIVEN.len()]]}],
                    "gender": if k % 2 == 0 { "female" } else { "male" }, "birthDate": bench_birth_date(k)},
                    "request": {"method": "POST", "url": "Patient"}})
            })
            .collect();
        let out = post_tx(&c, &t.base, entries).await?;
        for e in out.get("entry").and_then(Value::as_array).into_iter().flatten() {
            if let Some(loc) = e.pointer("/response/location").and_then(Value::as_str) {
                let parts: Vec<&str> = loc.split('/').collect();
                urls.push(format!("{}/{}", parts[0], parts[1]));
            }
        }
    }
    println!("seeded {} Patients; reading with {concurrency} clients for {seconds} s", urls.len());
    let (ok, err, mut lat) = load_generator_with(c, &t.base, Arc::new(urls), concurrency, Duration::from_secs(seconds), None).await;
    lat.sort_unstable();
    report(if auth { "read (auth on)" } else { "read (auth off)" }, ok, err, &lat, seconds as f64);
    Ok(percentile(&lat, 0.99))
}

pub async fn search(server: Option<String>, observations: usize, concurrency: usize, seconds: u64) -> Result<(), String> {
    let t = target(server).await?;
    let c = client();
    let codes = ["8867-4", "8480-6", "8462-4", "29463-7", "8302-2", "2339-0", "718-7", "4548-4", "2093-3", "39156-5"];
    let started = Instant::now();
    let mut seed: u64 = 42;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let batch = 1000;
    for chunk_start in (0..observations).step_by(batch) {
        let n = (observations - chunk_start).min(batch);
        let entries: Vec<Value> = (0..n)
            .map(|_| {
                let code = codes[(rnd() % codes.len() as u64) as usize];
                let day = rnd() % 730;
                let (y, m, d) = crate::fhir::datetime::civil_from_days(19_723 + day as i64); // from 2024-01-01
                json!({"resource": {"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": {"reference": format!("Patient/p{}", rnd() % 1000)},
                    "effectiveDateTime": format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:00Z", rnd() % 24, rnd() % 60),
                    "valueQuantity": {"value": (rnd() % 2000) as f64 / 10.0, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}},
                    "request": {"method": "POST", "url": "Observation"}})
            })
            .collect();
        post_tx(&c, &t.base, entries).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("seeded {observations} Observations in {secs:.1} s ({:.0} resources/s)", observations as f64 / secs);
    let mut urls = vec![];
    for i in 0..200 {
        let code = codes[i % codes.len()];
        let day = (i * 37) % 700;
        let (y, m, d) = crate::fhir::datetime::civil_from_days(19_723 + day as i64);
        let (y2, m2, d2) = crate::fhir::datetime::civil_from_days(19_723 + day as i64 + 7);
        urls.push(format!("Observation?code=http://loinc.org|{code}&date=ge{y:04}-{m:02}-{d:02}&date=lt{y2:04}-{m2:02}-{d2:02}&_count=20"));
    }
    println!("searching (token + date range) with {concurrency} clients for {seconds} s");
    let (ok, err, lat) = load_generator(&t.base, Arc::new(urls), concurrency, Duration::from_secs(seconds)).await;
    report("search", ok, err, &lat, seconds as f64);
    Ok(())
}

/// An ADT^A01 with a German patient, a visit, two observations and a
/// diagnosis; `{n}` makes the control id, MRN and visit number unique.
const V2_TEMPLATE: &str = "MSH|^~\\&|ORBIS|KHNORD^1.2.276.0.76.3.1.999.1^ISO|CAREBRIDGE|REGION|20240305103000||ADT^A01^ADT_A01|B-{n}|P|2.5.1|||AL|NE|DEU|UNICODE UTF-8\r\
EVN|A01|20240305103500\r\
PID|1||{n}^^^KHNORD^PI||M\\X00FC\\ller^J\\X00FC\\rgen||19560314|M|||Hauptstra\\X00DF\\e 5^^Hamburg^^20095^DEU^H\r\
PV1|1|I|KARD^201^2^KHNORD||||123456789^Schulz^Anna^^^Dr. med.^^^LANR^^^^LANR|||KAR||||1|||||V-{n}^^^KHNORD^VN|||||||||||||||||||||||||20240305103000\r\
OBX|1|NM|29463-7^K\\X00F6\\rpergewicht^LN||82.5|kg^kg^UCUM|||||F|||20240305104500\r\
OBX|2|NM|8302-2^K\\X00F6\\rpergr\\X00F6\\\\X00DF\\e^LN||178|cm^cm^UCUM|||||F|||20240305104500\r\
DG1|1|I10|I50.13^Linksherzinsuffizienz^I10||20240305|A\r";

pub fn v2_message(n: usize) -> String {
    V2_TEMPLATE.replace("{n}", &n.to_string())
}

/// One parse + translate pass over `msgs`: (messages, bundle entries).
/// Not inlined, so `valgrind --tool=callgrind
/// --toggle-collect='*hl7v2_pass*'` counts exactly this work (instructions
/// per message = Ir / 1000 with `--seconds 0`).
#[inline(never)]
pub fn hl7v2_pass(
    msgs: &[String],
    cfg: &crate::translate::hl7v2::map::InstitutionConfig,
) -> Result<(usize, usize), String> {
    use crate::translate::hl7v2::map::translate;
    use crate::translate::hl7v2::Message;
    let mut resources = 0usize;
    for m in msgs {
        let msg = Message::parse(m).map_err(|e| e.to_string())?;
        let t = translate(&msg, m.as_bytes(), cfg, "2024-03-05T10:31:00+01:00").map_err(|e| format!("{e:?}"))?;
        resources += t.bundle["entry"].as_array().map_or(0, Vec::len);
    }
    Ok((msgs.len(), resources))
}

/// `bench hl7v2`: parse + translate alone (one thread), then end to end over
/// MLLP into the store (in-process gateway, `connections` MLLP clients).
/// `--seconds 0` makes exactly one pass over the 1000 generated messages
/// (deterministic work, for callgrind); `--messages 0` skips the MLLP part.
pub async fn hl7v2(messages: usize, connections: usize, seconds: u64) -> Result<(), String> {
    use crate::translate::hl7v2::map::InstitutionConfig;
    use crate::translate::hl7v2::{encode_frame, MllpDecoder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // 1. parse + translate, single thread
    let msgs: Vec<String> = (0..1000).map(v2_message).collect();
    let cfg = InstitutionConfig::new("klinikum-nord");
    let t0 = Instant::now();
    let mut n = 0usize;
    let mut resources = 0usize;
    loop {
        let (k, r) = hl7v2_pass(&msgs, &cfg)?;
        n += k;
        resources += r;
        if t0.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "bench hl7v2 parse+translate: {:.0} messages/s on one thread ({:.1} resources/message)",
        n as f64 / secs,
        resources as f64 / n as f64
    );
    if messages == 0 {
        return Ok(());
    }
    // 2. end to end over MLLP
    let dir = std::env::temp_dir().join(format!("carebridge-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let opts = crate::server::ServerOptions {
        database_url: format!("sqlite:{}", dir.join("bench.db").display()),
        package_cache: None,
        api: Default::default(),
        validation: Default::default(),
        packs: vec![],
        mpi: Default::default(),
        access: Default::default(),
    };
    let services = crate::server::services(&opts).await.map_err(|e| e.to_string())?;
    let running = crate::server::start_with_mllp(services, opts.api, "127.0.0.1:0", Some("127.0.0.1:0")).await.map_err(|e| e.to_string())?;
    let addr = running.mllp_addr.ok_or("no MLLP listener")?;
    let per_conn = messages.div_ceil(connections.max(1));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..connections.max(1) {
        set.spawn(async move {
            let mut sock = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut dec = MllpDecoder::new();
            let mut buf = vec![0u8; 65536];
            let (mut aa, mut lat) = (0usize, Vec::with_capacity(per_conn));
            for i in 0..per_conn {
                let m = v2_message(1_000_000 + c * per_conn + i);
                let t = Instant::now();
                sock.write_all(&encode_frame(m.as_bytes())).await.map_err(|e| e.to_string())?;
                let ack = loop {
                    if let Some(f) = dec.next_frame() {
                        break f.map_err(|e| e.to_string())?;
                    }
                    let k = sock.read(&mut buf).await.map_err(|e| e.to_string())?;
                    if k == 0 {
                        return Err("connection closed".to_string());
                    }
                    dec.push(&buf[..k]);
                };
                lat.push(t.elapsed().as_micros() as u64);
                if String::from_utf8_lossy(&ack).contains("MSA|AA") {
                    aa += 1;
                }
            }
            Ok::<_, String>((aa, lat))
        });
    }
    let (mut aa, mut lat) = (0, vec![]);
    while let Some(r) = set.join_next().await {
        let (a, l) = r.map_err(|e| e.to_string())??;
        aa += a;
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "bench hl7v2 MLLP end to end: {:.0} messages/s ({aa}/{} AA, {connections} connections), ACK p50 {:.2} ms, p99 {:.2} ms",
        lat.len() as f64 / secs,
        lat.len(),
        percentile(&lat, 0.5) as f64 / 1000.0,
        percentile(&lat, 0.99) as f64 / 1000.0
    );
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `$summary` and `$everything` latency for persons known to three
/// institutions (three linked Patient records) with `per_person` resources
/// in all; a quarter of the coded entries are the same finding recorded by
/// two institutions, so de-duplication has work to do.
pub async fn summary(server: Option<String>, persons: usize, per_person: usize, concurrency: usize, seconds: u64) -> Result<(), String> {
    let t = target(server).await?;
    let c = client();
    let per_inst = (per_person.saturating_sub(3) / 3).max(1);
    let mut summary_urls = vec![];
    let mut everything_urls = vec![];
    for p in 0..persons {
        let ids: Vec<String> = (0..3).map(|i| format!("bench-p{p}-inst{i}")).collect();
        let mut entries = vec![];
        for (i, id) in ids.iter().enumerate() {
            // one person = one name and birth date; persons differ in both, so the
            // master patient index groups exactly the three records of a person
            const FAMILIES: [&str; 8] = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker"];
            const GIVEN: [&str; 8] = ["Anna", "Jürgen", "Hildegard", "Björn", "Lena", "Tobias", "Greta", "Emil"];
            let birth = format!("{}-{:02}-{:02}", 1930 + p % 70, 1 + p % 12, 1 + (p * 7) % 28);
            let mut pat = json!({"resourceType": "Patient", "id": id, "identifier": [{"system": format!("urn:bench:inst{i}:mrn"), "value": p.to_string()}],
                "name": [{"family": FAMILIES[p % 8], "given": [GIVEN[(p / 8) % 8]]}], "gender": if p % 2 == 0 { "female" } else { "male" }, "birthDate": birth});
            if i == 0 {
                pat["link"] = json!([{"other": {"reference": format!("Patient/{}", ids[1])}, "type": "seealso"}, {"other": {"reference": format!("Patient/{}", ids[2])}, "type": "seealso"}]);
            }
            entries.push(json!({"resource": pat, "request": {"method": "PUT", "url": format!("Patient/{id}")}}));
            for k in 0..per_inst {
                // codes shared between institutions for k % 4 == 0 (same day), own codes otherwise
                let (code, day) = if k % 4 == 0 { (format!("S{k}"), k % 28 + 1) } else { (format!("I{i}-{k}"), k % 28 + 1) };
                let subject = json!({"reference": format!("Patient/{id}")});
                let when = format!("2024-02-{day:02}");
                let res = match k % 10 {
                    0 | 1 => json!({"resourceType": "Condition", "subject": subject, "onsetDateTime": when,
                        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                        "code": {"coding": [{"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "code": code}]}}),
                    2 => json!({"resourceType": "Procedure", "status": "completed", "subject": subject, "performedDateTime": when,
                        "code": {"coding": [{"system": "http://fhir.de/CodeSystem/bfarm/ops", "code": code}]}}),
                    3 => json!({"resourceType": "Immunization", "status": "completed", "patient": subject, "occurrenceDateTime": when,
                        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": code}]}}),
                    4 => json!({"resourceType": "MedicationStatement", "status": "active", "subject": subject, "effectiveDateTime": when,
                        "medicationCodeableConcept": {"coding": [{"system": "http://fhir.de/CodeSystem/bfarm/atc", "code": code}]}}),
                    _ => json!({"resourceType": "Observation", "status": "final", "subject": subject, "effectiveDateTime": when,
                        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": if k % 2 == 0 { "vital-signs" } else { "laboratory" }}]}],
                        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                        "valueQuantity": {"value": k, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
                };
                entries.push(json!({"resource": res, "request": {"method": "POST", "url": res["resourceType"]}}));
            }
        }
        post_tx(&c, &t.base, entries).await?;
        summary_urls.push(format!("Patient/{}/$summary", ids[0]));
        everything_urls.push(format!("Patient/{}/$everything?_count=1000", ids[0]));
    }
    println!("seeded {persons} persons × 3 institutions, {} resources each; {concurrency} clients, {seconds} s per operation", 3 * (per_inst + 1));
    let (ok, err, lat) = load_generator(&t.base, Arc::new(summary_urls), concurrency, Duration::from_secs(seconds)).await;
    report("$summary", ok, err, &lat, seconds as f64);
    let (ok, err, lat) = load_generator(&t.base, Arc::new(everything_urls), concurrency, Duration::from_secs(seconds)).await;
    report("$everything", ok, err, &lat, seconds as f64);
    Ok(())
}

/// A KVNR (`http://fhir.de/sid/gkv/kvid-10`) with a valid check digit for `n`.
fn bench_kvnr(n: usize) -> String {
    let letter = (b'A' + (n / 100_000_000 % 26) as u8) as char;
    let digits = format!("{:08}", n % 100_000_000);
    let all = format!("{:02}{digits}", letter as u8 - b'A' + 1);
    let sum: u32 = all
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            let p = u32::from(b - b'0') * if i.is_multiple_of(2) { 1 } else { 2 };
            p / 10 + p % 10
        })
        .sum();
    format!("{letter}{digits}{}", sum % 10)
}

/// A nursing-service CSV export in the shipped `pflegedienst-sonnenschein` layout.
fn import_csv(rows: usize, per_patient: usize) -> String {
    let names = [("Müller", "Jürgen"), ("Schäfer", "Hildegard"), ("Weiß", "Björn"), ("Öztürk", "Ayşe"), ("Groß", "Lütfiye")];
    let vitals = [("RR_SYS", "mmHg", "142"), ("RR_DIA", "mmHg", "88"), ("PULS", "/min", "72"), ("TEMP", "°C", "37,2"), ("GEW", "kg", "72,5")];
    let mut s = String::from("kvnr;nachname;vorname;geburtsdatum;geschlecht;zeitpunkt;messart;wert;einheit;diagnose;bemerkung\n");
    for i in 0..rows {
        let p = i / per_patient.max(1);
        let (family, given) = names[p % names.len()];
        let (code, unit, value) = vitals[i % vitals.len()];
        let day = 1 + (i / vitals.len()) % 28;
        let hour = 6 + (i / (vitals.len() * 28)) % 14;
        s.push_str(&format!(
            "{};{family};{given};{:02}.{:02}.19{:02};{};{day:02}.03.2024 {hour:02}:{:02};{code};{value};{unit};;\n",
            bench_kvnr(p),
            1 + p % 28,
            1 + p % 12,
            30 + p % 60,
            if p.is_multiple_of(2) { "m" } else { "w" },
            (i % 12) * 5,
        ));
    }
    s
}

pub async fn import(rows: usize, per_patient: usize) -> Result<(), String> {
    use crate::ingest::import::{import, ImportRequest};
    use crate::translate::tabular::{translate, Format, Input, Mapping};
    let mapping = Mapping::parse(
        "pflegedienst-sonnenschein",
        "mappings/pflegedienst-sonnenschein.toml",
        include_str!("../../mappings/pflegedienst-sonnenschein.toml"),
        "mappings/pflegedienst-sonnenschein.schema.json",
        include_str!("../../mappings/pflegedienst-sonnenschein.schema.json"),
    )
    .map_err(|e| e.to_string())?;
    let csv = import_csv(rows, per_patient);
    // 1. translate only (one thread)
    let input = Input { bytes: csv.as_bytes(), format: Format::Csv, file_name: "bench.csv" };
    let t0 = Instant::now();
    let t = translate(&mapping, &input, "2024-03-05T10:31:00+01:00").map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    let resources: usize = t.groups.iter().map(|g| g.bundle["entry"].as_array().map_or(0, Vec::len)).sum();
    if !t.rejected_rows.is_empty() {
        return Err(format!("generated rows rejected: {:?}", t.issues.first()));
    }
    println!(
        "bench import translate: {rows} rows, {} groups, {resources} resources in {secs:.2} s: {:.0} rows/s on one thread",
        t.groups.len(),
        rows as f64 / secs
    );
    // 2. translate + validate + store, then the same file again (no-op)
    let dir = std::env::temp_dir().join(format!("carebridge-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let opts = crate::server::ServerOptions {
        database_url: format!("sqlite:{}", dir.join("bench.db").display()),
        package_cache: None,
        api: Default::default(),
        validation: Default::default(),
        packs: vec![],
        mpi: Default::default(),
        access: Default::default(),
    };
    let services = crate::server::services(&opts).await.map_err(|e| e.to_string())?;
    let mapping = Arc::new(mapping);
    for pass in ["first import", "re-import (idempotent)"] {
        let req = ImportRequest { bytes: csv.clone().into_bytes().into(), format: Format::Csv, file_name: "bench.csv".into(), all_or_nothing: false, audit: None };
        let t0 = Instant::now();
        let r = import(&services, mapping.clone(), req, &|_| {}).await.map_err(|e| e.to_string())?;
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "bench import {pass}: {:.0} rows/s, {:.0} resources/s ({}; {secs:.2} s, SQLite, validation enforce)",
            rows as f64 / secs,
            (r.resources_written + r.resources_unchanged) as f64 / secs,
            r.summary()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `bench validate`: resources/s of the validator, one thread and all cores.
pub fn validate(dir: PathBuf, cache: Option<PathBuf>, profiles: &[String], packs: &[PathBuf], limit: Option<usize>) -> Result<(), String> {
    let mut files = super::collect_files(std::slice::from_ref(&dir), &[".json"]).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(l) = limit {
        files.truncate(l);
    }
    let t0 = Instant::now();
    let (v, policy) = super::validate::load_with_packs(cache, packs)?;
    println!("definitions compiled in {:.2} s", t0.elapsed().as_secs_f64());
    let mut resources: Vec<Value> = vec![];
    for f in &files {
        let raw = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let b: Value = serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", f.display()))?;
        match b.get("entry").and_then(Value::as_array) {
            Some(es) => resources.extend(es.iter().filter_map(|e| e.get("resource").cloned())),
            None => resources.push(b),
        }
    }
    if resources.is_empty() {
        return Err(format!("no resources in {}", dir.display()));
    }
    let profiles_for = |r: &Value| -> Vec<&str> {
        let rt = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
        let mut ps = policy.mandatory(rt, crate::validate::packs::Member::default());
        ps.extend(profiles.iter().map(String::as_str).filter(|p| v.definition(p).is_some_and(|sd| sd.type_name == rt)));
        ps
    };
    let run = |part: &[Value]| -> (usize, usize) {
        let (mut errors, mut invalid) = (0, 0);
        for r in part {
            let n = v.validate_single_threaded(r, &profiles_for(r)).issues.iter().filter(|i| i.severity <= crate::fhir::Severity::Error).count();
            errors += n;
            invalid += usize::from(n > 0);
        }
        (errors, invalid)
    };
    // warm-up (lazy ValueSet and extension caches)
    run(&resources[..resources.len().min(2000)]);
    let t1 = Instant::now();
    let (errors, invalid) = run(&resources);
    let one = t1.elapsed().as_secs_f64();
    println!(
        "{} resources from {} files: one thread {:.2} s = {:.0} resources/s ({invalid} with errors, {errors} errors)",
        resources.len(),
        files.len(),
        one,
        resources.len() as f64 / one.max(1e-9)
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = resources.len().div_ceil(threads);
    let t2 = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = resources.chunks(chunk).map(|p| s.spawn(move || run(p))).collect();
        for h in hs {
            let _ = h.join();
        }
    });
    let all = t2.elapsed().as_secs_f64();
    println!(
        "all cores ({threads} threads): {all:.2} s = {:.0} resources/s ({:.0} per core)",
        resources.len() as f64 / all.max(1e-9),
        resources.len() as f64 / all.max(1e-9) / threads as f64
    );
    Ok(())
}

/// `access`: read and search p99 of the same requests as the unfiltered
/// development operator and as a clinical member, whose every response
/// passes the care-relationship and Consent checks (`auth::filter`). Seeds
/// `patients` Patients with `per_patient` Observations each, an in-progress
/// Encounter with the member and a privacy Consent (permit with a nested
/// deny) for every patient; an in-process gateway
/// with dev callers (loopback only). Each pair runs twice, alternating.
pub async fn access(patients: usize, per_patient: usize, concurrency: usize, seconds: u64) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("carebridge-bench-access-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let opts = crate::server::ServerOptions {
        database_url: format!("sqlite:{}", dir.join("bench.db").display()),
        package_cache: None,
        api: crate::api::ApiConfig { dev_caller_header: true, ..Default::default() },
        validation: crate::services::ValidationMode::Off,
        packs: vec![],
        mpi: Default::default(),
        access: Default::default(),
    };
    let services = crate::server::services(&opts).await.map_err(|e| e.to_string())?;
    let running = crate::server::start(services, opts.api, "127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let t = Target { base: running.base_url(), _server: Some(running), _dir: Some(dir) };
    let c = client();
    let member = "org-bench";
    let mut reads = vec![];
    let mut searches = vec![];
    let started = Instant::now();
    for chunk_start in (0..patients).step_by(100) {
        let mut entries = vec![];
        for k in chunk_start..(chunk_start + 100).min(patients) {
            let pid = format!("bp{k}");
            let subj = json!({"reference": format!("Patient/{pid}")});
            let mut put = |res: Value| {
                let url = format!("{}/{}", res["resourceType"].as_str().unwrap_or(""), res["id"].as_str().unwrap_or(""));
                entries.push(json!({"resource": res, "request": {"method": "PUT", "url": url}}));
            };
            put(json!({"resourceType": "Patient", "id": pid, "identifier": [{"system": "urn:bench:access", "value": pid}]}));
            put(json!({"resourceType": "Encounter", "id": format!("{pid}-e"), "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subj,
                "serviceProvider": {"reference": format!("Organization/{member}")}}));
            put(json!({"resourceType": "Consent", "id": format!("{pid}-c"), "status": "active",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}], "patient": subj,
                "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
                "provision": {"type": "permit", "provision": [{"type": "deny", "code": [{"coding": [{"system": "http://loinc.org", "code": "5195-3"}]}]}]}}));
            for j in 0..per_patient {
                let id = format!("{pid}-o{j}");
                put(json!({"resourceType": "Observation", "id": id, "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}, "subject": subj,
                    "effectiveDateTime": format!("2024-01-{:02}", 1 + j % 28)}));
                reads.push(format!("Observation/{id}"));
            }
            searches.push(format!("Observation?subject=Patient/{pid}"));
        }
        post_tx(&c, &t.base, entries).await?;
    }
    println!("seeded {patients} patients x {per_patient} Observations in {:.1} s", started.elapsed().as_secs_f64());
    let who = format!("bench;hospital;{member}");
    for (name, urls) in [("read", Arc::new(reads)), ("search", Arc::new(searches))] {
        let (mut plain, mut checked) = (vec![], vec![]);
        for round in 0..2 {
            for as_member in [false, true] {
                let caller = as_member.then_some(who.as_str());
                let (ok, err, lat) = load_generator_as(&t.base, urls.clone(), concurrency, Duration::from_secs(seconds), caller).await;
                let label = format!("{name} {} (round {})", if as_member { "as member (relationship + Consent checks)" } else { "unfiltered (operator)" }, round + 1);
                report(&label, ok, err, &lat, seconds as f64);
                let p99 = percentile(&lat, 0.99) as f64 / 1000.0;
                if as_member { checked.push(p99) } else { plain.push(p99) }
            }
        }
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (p, q) = (best(&plain), best(&checked));
        println!("bench access {name}: p99 {p:.3} ms unfiltered, {q:.3} ms with checks ({:+.1} %)", (q - p) / p * 100.0);
    }
    Ok(())
}
