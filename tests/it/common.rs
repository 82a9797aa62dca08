//! Test harness: the real gateway on a free loopback port, on SQLite (a temp
//! file) or on PostgreSQL (a uniquely named database created for the test and
//! dropped after it; server URL from `CAREBRIDGE_TEST_POSTGRES`).
//!
//! `ApiConfig::default()` has no authentication: the equivalent of
//! `serve --insecure-dev`, allowed because the servers listen on loopback
//! (every request runs as the development operator). Tests of access
//! control pass `ApiConfig { auth: Some(…) }` (see `auth.rs`).

use carebridge::api::ApiConfig;
use carebridge::search::Registry;
use carebridge::server::{self, Running};
use carebridge::services::{Services, ValidationMode};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::OnceCell;

static REGISTRY: OnceCell<Arc<Registry>> = OnceCell::const_new();

pub async fn registry() -> Arc<Registry> {
    REGISTRY
        .get_or_init(|| async {
            server::registry(None).await.expect("FHIR core package installed (run scripts/fhir-packages.sh)")
        })
        .await
        .clone()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn postgres_url() -> Option<String> {
    std::env::var("CAREBRIDGE_TEST_POSTGRES").ok().filter(|s| !s.is_empty())
}

pub fn shared_dir() -> Option<PathBuf> {
    let p = std::env::var("CAREBRIDGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")));
    p.is_dir().then_some(p)
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))
}

pub struct TestServer {
    pub base: String,
    pub mllp_addr: Option<std::net::SocketAddr>,
    pub services: Services,
    running: Option<Running>,
    _dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

fn with_db(url: &str, db: &str) -> String {
    // replace (or add) the database name of a postgres URL
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

async fn pg_admin(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(&with_db(url, "postgres"), tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    let h = tokio::spawn(conn);
    client.batch_execute(sql).await.expect("admin SQL");
    drop(client);
    let _ = h.await;
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, ApiConfig::default()).await
    }

    pub async fn start_with(backend: Backend, api: ApiConfig) -> TestServer {
        Self::start_opts(backend, api, ValidationMode::Enforce).await
    }

    /// A server that also listens for HL7 v2 over MLLP on a free loopback port.
    pub async fn start_mllp(backend: Backend) -> TestServer {
        Self::start_full(backend, ApiConfig::default(), ValidationMode::Enforce, true).await
    }

    pub async fn start_opts(backend: Backend, api: ApiConfig, validation: ValidationMode) -> TestServer {
        Self::start_full(backend, api, validation, false).await
    }

    async fn start_full(backend: Backend, api: ApiConfig, validation: ValidationMode, mllp: bool) -> TestServer {
        Self::start_validator(backend, api, validation, mllp, crate::validator_suite::validator_arc().await, Default::default()).await
    }

    /// A server with its own validator and mandatory-profile policy (profile packs).
    pub async fn start_validator(
        backend: Backend,
        api: ApiConfig,
        validation: ValidationMode,
        mllp: bool,
        validator: Arc<carebridge::validate::Validator>,
        policy: Arc<carebridge::validate::packs::Policy>,
    ) -> TestServer {
        Self::start_inner(backend, api, validation, mllp, validator, policy, Default::default()).await
    }

    /// A server that takes the caller from `X-Carebridge-Dev-Caller` (see
    /// `ApiConfig::dev_caller_header`) under the given access policy.
    pub async fn start_access(backend: Backend, access: carebridge::services::access::AccessConfig) -> TestServer {
        let api = ApiConfig { dev_caller_header: true, ..Default::default() };
        let validator = crate::validator_suite::validator_arc().await;
        Self::start_inner(backend, api, ValidationMode::Enforce, false, validator, Default::default(), access).await
    }

    /// A server with `api` settings (e.g. `[auth]`) under the given access policy.
    pub async fn start_api_access(backend: Backend, api: ApiConfig, validation: ValidationMode, access: carebridge::services::access::AccessConfig) -> TestServer {
        let validator = crate::validator_suite::validator_arc().await;
        Self::start_inner(backend, api, validation, false, validator, Default::default(), access).await
    }

    async fn start_inner(
        backend: Backend,
        api: ApiConfig,
        validation: ValidationMode,
        mllp: bool,
        validator: Arc<carebridge::validate::Validator>,
        policy: Arc<carebridge::validate::packs::Policy>,
        access: carebridge::services::access::AccessConfig,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, pg) = match backend {
            Backend::Sqlite => (format!("sqlite:{}", dir.path().join("test.db").display()), None),
            Backend::Postgres => {
                let admin = postgres_url().expect("CAREBRIDGE_TEST_POSTGRES set");
                let name = format!("carebridge_test_{}", uuid::Uuid::new_v4().simple());
                pg_admin(&admin, &format!("CREATE DATABASE {name}")).await;
                (with_db(&admin, &name), Some((admin, name)))
            }
        };
        let store = carebridge::store::open(&url).await.expect("open store");
        let services = Services {
            store,
            registry: registry().await,
            validator,
            validation,
            policy,
            mpi: Default::default(),
            access: Arc::new(access),
            facts: Default::default(),
        };
        let running = server::start_with_mllp(services.clone(), api, "127.0.0.1:0", mllp.then_some("127.0.0.1:0"))
            .await
            .expect("start server");
        TestServer { base: running.base_url(), mllp_addr: running.mllp_addr, services, running: Some(running), _dir: dir, pg }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        if let Some((admin, name)) = self.pg.take() {
            drop(self.services.store.clone());
            pg_admin(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // a test that panicked before stop(): still drop its database
        if let Some((admin, name)) = self.pg.take() {
            std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    rt.block_on(pg_admin(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")));
                }
            })
            .join()
            .ok();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Small HTTP helpers returning (status, headers, body JSON or Null).
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
    /// The OperationOutcome's first diagnostics (for assertion messages).
    pub fn diagnostics(&self) -> String {
        self.json().pointer("/issue/0/diagnostics").and_then(Value::as_str).unwrap_or("").to_owned()
    }
}

pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let r = rb.send().await.expect("request sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    Resp { status, headers, text }
}

pub async fn get(s: &TestServer, path: &str) -> Resp {
    send(client().get(s.url(path))).await
}

pub async fn post_json(s: &TestServer, path: &str, body: &Value) -> Resp {
    send(client().post(s.url(path)).header("content-type", "application/fhir+json").body(serde_json::to_vec(body).expect("json"))).await
}

pub async fn put_json(s: &TestServer, path: &str, body: &Value) -> Resp {
    send(client().put(s.url(path)).header("content-type", "application/fhir+json").body(serde_json::to_vec(body).expect("json"))).await
}

pub async fn delete(s: &TestServer, path: &str) -> Resp {
    send(client().delete(s.url(path))).await
}

/// Assert an OperationOutcome response with the given status.
pub fn assert_outcome(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "expected {status}, got {} with body {}", r.status, r.text);
    assert_eq!(r.json()["resourceType"], "OperationOutcome", "body is not an OperationOutcome: {}", r.text);
    assert!(r.json()["issue"][0]["code"].is_string());
}

/// Ids of the `match` entries of a searchset.
pub fn match_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// -- SMART Backend Services clients (test-only keys in `fixtures/auth/`) --

/// The test-only keys and JWKS files (`fixtures/auth/`).
pub fn auth_dir() -> PathBuf {
    fixtures().join("auth")
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A client assertion (`private_key_jwt`) as a SMART Backend Services
/// client signs it; fields are public so tests can spoil one.
pub struct Assertion<'a> {
    pub alg: jsonwebtoken::Algorithm,
    pub kid: &'a str,
    pub key: &'a str,
    pub iss: &'a str,
    pub aud: String,
    pub exp: i64,
    pub jti: String,
}

impl<'a> Assertion<'a> {
    /// ES384 with `es384-client.pem` (kid `es384-1`) for the server's token endpoint.
    pub fn es(s: &TestServer, client: &'a str) -> Self {
        Assertion { alg: jsonwebtoken::Algorithm::ES384, kid: "es384-1", key: "es384-client.pem", iss: client, aud: s.url("auth/token"), exp: now() + 240, jti: uuid::Uuid::new_v4().to_string() }
    }
    /// RS384 with `rs384-client.pem` (kid `rs384-1`).
    pub fn rs(s: &TestServer, client: &'a str) -> Self {
        Assertion { alg: jsonwebtoken::Algorithm::RS384, kid: "rs384-1", key: "rs384-client.pem", iss: client, aud: s.url("auth/token"), exp: now() + 240, jti: uuid::Uuid::new_v4().to_string() }
    }
    pub fn sign(&self) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let pem = std::fs::read(auth_dir().join(self.key)).expect("test key");
        let key = match self.alg {
            Algorithm::RS384 => EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
            _ => EncodingKey::from_ec_pem(&pem).expect("ec key"),
        };
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.to_owned());
        let claims = serde_json::json!({"iss": self.iss, "sub": self.iss, "aud": self.aud, "exp": self.exp, "iat": now(), "jti": self.jti});
        jsonwebtoken::encode(&h, &claims, &key).expect("sign")
    }
}

/// `POST /auth/token` (client credentials grant with a client assertion).
pub async fn token_request(base: &str, assertion: &str, scope: &str) -> Resp {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        .append_pair("client_assertion", assertion)
        .append_pair("scope", scope)
        .finish();
    send(client().post(format!("{base}/auth/token")).header("content-type", "application/x-www-form-urlencoded").body(body)).await
}

/// An access token for an ES384 client (`es384-client.jwks.json`) with `system/*.cruds`.
pub async fn token_for(s: &TestServer, client_id: &str) -> String {
    let r = token_request(&s.base, &Assertion::es(s, client_id).sign(), "system/*.cruds").await;
    assert_eq!(r.status, 200, "token for {client_id}: {}", r.text);
    r.json()["access_token"].as_str().unwrap().to_owned()
}

/// An `[auth]` section (TOML, paths relative to `fixtures/auth/`) built
/// into the server's authenticator.
pub fn authenticator_from(toml_text: &str) -> Arc<carebridge::auth::token::Authenticator> {
    let section: carebridge::config::AuthSection = toml::from_str(toml_text).expect("auth toml");
    Arc::new(section.build(&auth_dir()).expect("auth config builds"))
}
