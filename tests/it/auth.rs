//! Access control (issue 7): SMART Backend Services tokens (RS384, ES384,
//! and every rejection: wrong signature, expired, wrong `aud`, replayed
//! `jti` — also at a second replica sharing the database —, unknown client,
//! scope escalation), bearer checks at the FHIR endpoints (401 +
//! `WWW-Authenticate` + OperationOutcome, 403 + OperationOutcome), the role
//! matrix (every member type × interaction × resource category against the
//! policy, printed), audit counts (N accesses → N AuditEvents, also
//! concurrently), rate limits (429) and the loopback rule of the insecure
//! development mode. Keys: test-only, `fixtures/auth/`.

use crate::common::{assert_outcome, auth_dir, authenticator_from, client, fixtures, now, postgres_url, send, token_for, token_request, Assertion, Backend, Resp, TestServer};
use carebridge::api::ApiConfig;
use carebridge::auth::policy::{Interaction, RolePolicy, INGEST, SYSTEM};
use carebridge::auth::MemberType;
use carebridge::services::ValidationMode;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::sync::Arc;

/// One member and one client per member type (`c-<type>`, ES384 key,
/// `system/*.cruds`), plus `rs-client` (RS384) and `narrow` (a hospital
/// client registered for `system/Observation.rs` only).
fn auth_toml(extra: &str) -> String {
    let mut t = String::from("signing_key = \"gateway-es256.pem\"\nclock_skew_seconds = 60\n");
    for mt in MemberType::ALL {
        t.push_str(&format!("[[member]]\nid = \"org-{0}\"\ntype = \"{0}\"\n", mt.as_str()));
    }
    for mt in MemberType::ALL {
        t.push_str(&format!(
            "[[client]]\nclient_id = \"c-{0}\"\nmember = \"org-{0}\"\njwks = \"es384-client.jwks.json\"\nscopes = [\"system/*.cruds\"]\n",
            mt.as_str()
        ));
    }
    t.push_str("[[client]]\nclient_id = \"rs-client\"\nmember = \"org-hospital\"\njwks = \"rs384-client.jwks.json\"\nscopes = [\"system/*.cruds\"]\n");
    t.push_str("[[client]]\nclient_id = \"narrow\"\nmember = \"org-hospital\"\njwks = \"es384-client.jwks.json\"\nscopes = [\"system/Observation.rs\"]\n");
    t.push_str(extra);
    t
}

fn authenticator(extra: &str) -> Arc<carebridge::auth::token::Authenticator> {
    authenticator_from(&auth_toml(extra))
}

/// Every member type sends for an institution of its own: HL7 v2 facility
/// `ORG-<TYPE>` and import mapping `org-<type>` (a copy of the nursing
/// service's mapping) are mapped to member `org-<type>`; the shipped
/// mappings stay unmapped (only integration engines and operators send
/// for them).
fn member_institutions() -> (carebridge::ingest::hl7v2::Hl7Config, std::path::PathBuf) {
    let mut v2 = String::new();
    for mt in MemberType::ALL {
        v2.push_str(&format!("[[hl7v2.institution]]\nid = \"v2-{0}\"\nfacilities = [\"ORG-{1}\"]\nmember = \"org-{0}\"\n", mt.as_str(), mt.as_str().to_ascii_uppercase()));
    }
    let file: carebridge::config::FileConfig = toml::from_str(&v2).unwrap();
    let shipped = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"));
    let dir = std::env::temp_dir().join(format!("carebridge-auth-mappings-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(&shipped).unwrap().flatten() {
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    let text = std::fs::read_to_string(shipped.join("pflegedienst-sonnenschein.toml")).unwrap();
    for mt in MemberType::ALL {
        let own = text.replacen("[institution]\n", &format!("[institution]\nmember = \"org-{}\"\n", mt.as_str()), 1);
        std::fs::write(dir.join(format!("org-{}.toml", mt.as_str())), own).unwrap();
    }
    (file.hl7v2.to_hl7_config().unwrap(), dir)
}

/// The HL7 v2 fixture `name` as sent by the facility of member type `mt`.
fn v2_from(name: &str, mt: MemberType) -> Vec<u8> {
    let msg = std::fs::read_to_string(fixtures().join("hl7v2").join(name)).unwrap();
    msg.replacen("|KHNORD^1.2.276.0.76.3.1.999.1^ISO|", &format!("|ORG-{}|", mt.as_str().to_ascii_uppercase()), 1).into_bytes()
}

async fn start(backend: Backend, extra: &str) -> TestServer {
    let (hl7, mappings) = member_institutions();
    let api = ApiConfig { auth: Some(authenticator(extra)), mappings_dir: Some(mappings), hl7, ..Default::default() };
    // These tests check the role-policy layer; care relationships and Consent
    // (the next layer, `consent::*`) are switched off: an opt-out region
    // without the care-relationship rule.
    let access = carebridge::services::access::AccessConfig {
        default_policy: carebridge::services::access::DefaultPolicy::OptOut,
        care_relationship: false,
        ..Default::default()
    };
    TestServer::start_api_access(backend, api, ValidationMode::Off, access).await
}

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if postgres_url().is_some() {
        v.push(Backend::Postgres);
    }
    v
}

fn assert_token_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "expected {status} {code}, got {}: {}", r.status, r.text);
    assert_eq!(r.json()["error"], code, "{}", r.text);
    assert!(r.json()["error_description"].is_string());
}

async fn get_with(s: &TestServer, token: &str, path: &str) -> Resp {
    send(client().get(s.url(path)).bearer_auth(token)).await
}

#[tokio::test]
async fn smart_configuration_and_tokens_rs384_es384() {
    for b in backends() {
        let s = start(b, "").await;
        let conf = send(client().get(s.url(".well-known/smart-configuration"))).await;
        assert_eq!(conf.status, 200);
        assert_eq!(conf.json()["token_endpoint"], s.url("auth/token"));
        assert!(conf.json()["token_endpoint_auth_signing_alg_values_supported"].as_array().unwrap().contains(&json!("ES384")));
        for a in [Assertion::rs(&s, "rs-client"), Assertion::es(&s, "c-hospital")] {
            let r = token_request(&s.base, &a.sign(), "system/Patient.rs system/Observation.cruds").await;
            assert_eq!(r.status, 200, "{:?}: {}", a.alg, r.text);
            let t = r.json();
            assert_eq!(t["token_type"], "bearer");
            assert_eq!(t["scope"], "system/Patient.rs system/Observation.cruds");
            assert!(t["expires_in"].as_i64().unwrap() <= 300);
            let tok = t["access_token"].as_str().unwrap();
            let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
            let c = send(client().post(s.url("Observation")).bearer_auth(tok).header("content-type", "application/fhir+json").body(obs.to_string())).await;
            assert_eq!(c.status, 201, "{}", c.text);
            let r = get_with(&s, tok, "Patient?_count=1").await;
            assert_eq!(r.status, 200, "{}", r.text);
            // granted Patient.rs only: creating a Patient is outside the token's scopes
            let p = send(client().post(s.url("Patient")).bearer_auth(tok).header("content-type", "application/fhir+json").body(r#"{"resourceType":"Patient"}"#)).await;
            assert_outcome(&p, 403);
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn token_rejections() {
    for b in backends() {
        let s = start(b, "").await;
        // wrong signature: a different key under the registered kid
        let mut a = Assertion::es(&s, "c-hospital");
        a.key = "es384-other.pem";
        assert_token_error(&token_request(&s.base, &a.sign(), "system/*.rs").await, 401, "invalid_client");
        // expired (beyond the 60 s clock skew)
        let mut a = Assertion::es(&s, "c-hospital");
        a.exp = now() - 120;
        assert_token_error(&token_request(&s.base, &a.sign(), "system/*.rs").await, 401, "invalid_client");
        // exp more than 5 minutes ahead
        let mut a = Assertion::es(&s, "c-hospital");
        a.exp = now() + 3600;
        assert_token_error(&token_request(&s.base, &a.sign(), "system/*.rs").await, 401, "invalid_client");
        // wrong aud
        let mut a = Assertion::es(&s, "c-hospital");
        a.aud = "https://elsewhere.example/auth/token".into();
        assert_token_error(&token_request(&s.base, &a.sign(), "system/*.rs").await, 401, "invalid_client");
        // unknown client
        let a = Assertion::es(&s, "nobody");
        assert_token_error(&token_request(&s.base, &a.sign(), "system/*.rs").await, 401, "invalid_client");
        // RS384 key named but ES384 used: no registered key verifies
        let mut a = Assertion::es(&s, "rs-client");
        a.kid = "rs384-1";
        assert_token_error(&token_request(&s.base, &a.sign(), "system/*.rs").await, 401, "invalid_client");
        // scope escalation: registered Observation.rs, asks for more
        let a = Assertion::es(&s, "narrow");
        assert_token_error(&token_request(&s.base, &a.sign(), "system/Observation.rs system/Patient.rs").await, 400, "invalid_scope");
        let a = Assertion::es(&s, "narrow");
        assert_token_error(&token_request(&s.base, &a.sign(), "system/Observation.cruds").await, 400, "invalid_scope");
        // role policy: the insurer can never be granted patient data
        let a = Assertion::es(&s, "c-insurer");
        assert_token_error(&token_request(&s.base, &a.sign(), "system/Patient.rs").await, 400, "invalid_scope");
        // replayed jti: accepted once, then refused — here and at a second replica on the same database
        let a = Assertion::es(&s, "c-hospital");
        let signed = a.sign();
        assert_eq!(token_request(&s.base, &signed, "system/*.rs").await.status, 200);
        assert_token_error(&token_request(&s.base, &signed, "system/*.rs").await, 401, "invalid_client");
        let api = ApiConfig { auth: Some(authenticator("")), base_url: Some(s.base.clone()), ..Default::default() };
        let replica = carebridge::server::start(s.services.clone(), api, "127.0.0.1:0").await.expect("replica");
        assert_token_error(&token_request(&replica.base_url(), &signed, "system/*.rs").await, 401, "invalid_client");
        replica.stop().await;
        // bad grant and request shapes
        let r = send(client().post(s.url("auth/token")).header("content-type", "application/x-www-form-urlencoded").body("grant_type=password")).await;
        assert_token_error(&r, 400, "unsupported_grant_type");

        // at the FHIR endpoints: 401 with WWW-Authenticate + OperationOutcome
        let r = send(client().get(s.url("Patient"))).await;
        assert_outcome(&r, 401);
        assert!(r.header("www-authenticate").unwrap_or_default().starts_with("Bearer"));
        let r = get_with(&s, "not.a.token", "Patient").await;
        assert_outcome(&r, 401);
        assert!(r.header("www-authenticate").unwrap_or_default().contains("invalid_token"));
        // a token signed by someone else than the gateway
        let forged = Assertion::es(&s, "c-operator").sign();
        assert_outcome(&get_with(&s, &forged, "Patient").await, 401);
        // 403 for a scope the token lacks, and for the role policy
        let a = Assertion::es(&s, "narrow");
        let t = token_request(&s.base, &a.sign(), "system/Observation.rs").await.json()["access_token"].as_str().unwrap().to_owned();
        assert_eq!(get_with(&s, &t, "Observation").await.status, 200);
        assert_outcome(&get_with(&s, &t, "Condition").await, 403);
        let ins = token_request(&s.base, &Assertion::es(&s, "c-insurer").sign(), "system/Measure.rs").await;
        let ins = ins.json()["access_token"].as_str().unwrap().to_owned();
        assert_outcome(&get_with(&s, &ins, "Patient").await, 403);
        // metadata stays public
        assert_eq!(send(client().get(s.url("metadata"))).await.status, 200);
        s.stop().await;
    }
}

#[tokio::test]
async fn insecure_mode_only_on_loopback() {
    let s = TestServer::start(Backend::Sqlite).await;
    let r = carebridge::server::start(s.services.clone(), ApiConfig::default(), "0.0.0.0:0").await;
    assert!(matches!(r, Err(carebridge::server::ServerError::Insecure(_))), "non-loopback without auth must be refused");
    let ok = carebridge::server::start(s.services.clone(), ApiConfig::default(), "127.0.0.1:0").await.expect("loopback is fine");
    ok.stop().await;
    let with_auth = ApiConfig { auth: Some(authenticator("")), ..Default::default() };
    let ok = carebridge::server::start(s.services.clone(), with_auth, "0.0.0.0:0").await.expect("with auth any address");
    ok.stop().await;
    s.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let s = start(Backend::Sqlite, "[client.rate_limit]\nper_second = 0.01\nburst = 3\n").await;
    // the last client in the toml is `narrow`: it gets the tight bucket
    let t = token_request(&s.base, &Assertion::es(&s, "narrow").sign(), "system/Observation.rs").await.json()["access_token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(get_with(&s, &t, "Observation").await.status, 200);
    }
    let r = get_with(&s, &t, "Observation").await;
    assert_outcome(&r, 429);
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json()["issue"][0]["code"], "throttled");
    // other clients are not affected
    let other = token_for(&s, "c-hospital").await;
    assert_eq!(get_with(&s, &other, "Observation").await.status, 200);
    s.stop().await;
}

/// AuditEvents of the REST access audit (not the MPI's link decisions).
async fn rest_audit_count(s: &TestServer, op: &str) -> i64 {
    count(s, op, "AuditEvent?type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest").await
}

#[tokio::test]
async fn audit_n_accesses_n_events() {
    for b in backends() {
        let s = start(b, "").await;
        let op = token_for(&s, "c-operator").await;
        let hosp = token_for(&s, "c-hospital").await;
        let base = rest_audit_count(&s, &op).await;
        // a patient and an observation: two changes
        let p = send(client().put(s.url("Patient/pa1")).bearer_auth(&hosp).header("content-type", "application/fhir+json").body(r#"{"resourceType":"Patient","id":"pa1"}"#)).await;
        assert!(p.status == 201 || p.status == 200, "{}", p.text);
        let o = json!({"resourceType": "Observation", "id": "ob1", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/pa1"}});
        let o = send(client().put(s.url("Observation/ob1")).bearer_auth(&hosp).header("content-type", "application/fhir+json").body(o.to_string())).await;
        assert!(o.status == 201 || o.status == 200, "{}", o.text);
        // N sequential reads, then N concurrent reads and searches
        let n = 10;
        for _ in 0..n {
            assert_eq!(get_with(&s, &hosp, "Observation/ob1").await.status, 200);
        }
        let mut tasks = vec![];
        for i in 0..n {
            let (url, tok) = (if i % 2 == 0 { s.url("Observation/ob1") } else { s.url("Observation?subject=Patient/pa1") }, hosp.clone());
            tasks.push(tokio::spawn(async move { send(client().get(url).bearer_auth(tok)).await.status }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        // a refused access is audited too
        let ins = token_request(&s.base, &Assertion::es(&s, "c-insurer").sign(), "system/Measure.rs").await.json()["access_token"].as_str().unwrap().to_owned();
        assert_eq!(get_with(&s, &ins, "Patient/pa1").await.status, 403);
        // 2 changes + 2n reads + 1 refusal (the operator's own count searches are audited after they answer)
        let after = rest_audit_count(&s, &op).await;
        assert_eq!(after - base - 1, 2 + 2 * n + 1, "exactly one AuditEvent per access (minus the first count search itself)");
        // the read's record names client, member and patient (BALP)
        let r = get_with(&s, &op, "AuditEvent?entity=Patient/pa1&subtype=read&_count=1").await;
        let ae = &r.json()["entry"][0]["resource"];
        assert_eq!(ae["agent"][0]["who"]["identifier"]["value"], "c-hospital", "{}", r.text);
        assert_eq!(ae["agent"][1]["who"]["reference"], "Organization/org-hospital");
        assert!(ae["entity"].as_array().unwrap().iter().any(|e| e["what"]["reference"] == "Patient/pa1" && e["role"]["code"] == "1"));
        // only operators search the audit trail
        assert_outcome(&get_with(&s, &hosp, "AuditEvent").await, 403);
        assert_outcome(&get_with(&s, &hosp, "Patient?_revinclude=AuditEvent:patient").await, 403);
        s.stop().await;
    }
}

/// A representative type per resource category.
/// Reads inside a batch or transaction Bundle are audited like direct
/// reads: N `GET` entries → N AuditEvents (data, patient, status), and a
/// failed batch write entry is audited too.
#[tokio::test]
async fn audit_bundle_reads_one_event_each() {
    for b in backends() {
        let s = start(b, "").await;
        let op = token_for(&s, "c-operator").await;
        let hosp = token_for(&s, "c-hospital").await;
        let post = |body: Value| {
            let (url, tok) = (s.url(""), hosp.clone());
            async move { send(client().post(url).bearer_auth(tok).header("content-type", "application/fhir+json").body(body.to_string())).await }
        };
        let obs = |id: &str| json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/pb1"}});
        let setup = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "id": "pb1"}, "request": {"method": "PUT", "url": "Patient/pb1"}},
            {"resource": obs("bo1"), "request": {"method": "PUT", "url": "Observation/bo1"}},
            {"resource": obs("bo2"), "request": {"method": "PUT", "url": "Observation/bo2"}}]});
        assert_eq!(post(setup).await.status, 200);
        let base = rest_audit_count(&s, &op).await;
        // a batch of five reads (one of them of a missing resource): five records
        let get = |url: &str| json!({"request": {"method": "GET", "url": url}});
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [get("Observation/bo1"), get("Observation/bo2"), get("Patient/pb1"), get("Observation/bo1"), get("Observation/nope")]});
        let r = post(batch).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let statuses: Vec<String> = r.json()["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()[..3].to_owned()).collect();
        assert_eq!(statuses, vec!["200", "200", "200", "200", "404"]);
        let after = rest_audit_count(&s, &op).await;
        assert_eq!(after - base - 1, 5, "one AuditEvent per batch read");
        let r = get_with(&s, &op, "AuditEvent?entity=Observation/bo2&subtype=read").await;
        let entries = r.json()["entry"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), 1, "{}", r.text);
        let ae = &entries[0]["resource"];
        assert_eq!(ae["action"], "R");
        assert_eq!(ae["outcome"], "0");
        assert_eq!(ae["agent"][0]["who"]["identifier"]["value"], "c-hospital");
        assert!(ae["entity"].as_array().unwrap().iter().any(|e| e["what"]["reference"] == "Patient/pb1" && e["role"]["code"] == "1"), "{ae}");
        assert!(ae["subtype"].as_array().unwrap().iter().any(|c| c["display"] == "Bundle.entry[1]"), "{ae}");
        let r = get_with(&s, &op, "AuditEvent?entity=Observation/nope").await;
        assert_eq!(r.json()["entry"][0]["resource"]["outcome"], "4", "the failed read is recorded as a failure");
        // a transaction with one write and two reads: the change's record plus one per read
        let base = rest_audit_count(&s, &op).await;
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": obs("bo3"), "request": {"method": "PUT", "url": "Observation/bo3"}}, get("Observation/bo1"), get("Observation/bo3")]});
        assert_eq!(post(tx).await.status, 200);
        assert_eq!(rest_audit_count(&s, &op).await - base - 1, 3);
        // a batch write entry that fails is recorded (nothing was written)
        let base = rest_audit_count(&s, &op).await;
        let bad = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": obs("bo4"), "request": {"method": "PUT", "url": "Observation/other-id"}}, get("Observation/bo2")]});
        let r = post(bad).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(rest_audit_count(&s, &op).await - base - 1, 2);
        let r = get_with(&s, &op, "AuditEvent?entity=Observation/other-id").await;
        assert_eq!(r.json()["entry"][0]["resource"]["outcome"], "4", "{}", r.text);
        s.stop().await;
    }
}

/// A write that gives the writing member a care relationship (an
/// Encounter it provides, …) is audited as such; the role policy decides
/// which member types may write those resources at all.
#[tokio::test]
async fn self_granted_relationship_audited() {
    for b in backends() {
        let s = start(b, "").await;
        let op = token_for(&s, "c-operator").await;
        let put = |tok: String, path: &'static str, body: Value| {
            let url = s.url(path);
            async move { send(client().put(url).bearer_auth(tok).header("content-type", "application/fhir+json").body(body.to_string())).await }
        };
        let hosp = token_for(&s, "c-hospital").await;
        let enc = |provider: &str| {
            json!({"resourceType": "Encounter", "status": "in-progress", "subject": {"reference": "Patient/pr1"},
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "serviceProvider": {"reference": format!("Organization/{provider}")}})
        };
        assert_eq!(put(hosp.clone(), "Patient/pr1", json!({"resourceType": "Patient", "id": "pr1"})).await.status, 201);
        let mut e1 = enc("org-hospital");
        e1["id"] = json!("er1");
        assert_eq!(put(hosp.clone(), "Encounter/er1", e1.clone()).await.status, 201);
        let marked = |s: &TestServer, op: String| {
            let url = s.url("AuditEvent?subtype=care-relationship");
            async move { send(client().get(url).bearer_auth(op)).await.json()["entry"].as_array().cloned().unwrap_or_default() }
        };
        let found = marked(&s, op.clone()).await;
        assert_eq!(found.len(), 1, "{found:?}");
        let ae = &found[0]["resource"];
        assert!(ae["subtype"].as_array().unwrap().iter().any(|c| c["code"] == "care-relationship" && c["display"] == "Encounter/er1 (encounter)"), "{ae}");
        assert!(ae["entity"].as_array().unwrap().iter().any(|e| e["what"]["reference"] == "Patient/pr1"), "{ae}");
        // updating it is no new relationship; another provider's Encounter is none of the writer's
        e1["priority"] = json!({"text": "routine"});
        assert_eq!(put(hosp.clone(), "Encounter/er1", e1).await.status, 200);
        let mut e2 = enc("org-gp-practice");
        e2["id"] = json!("er2");
        assert_eq!(put(hosp.clone(), "Encounter/er2", e2).await.status, 201);
        assert_eq!(marked(&s, op.clone()).await.len(), 1);
        // a pharmacy may not open Encounters at all (role policy), so it cannot make itself a provider
        let pharm = token_for(&s, "c-pharmacy").await;
        let mut e3 = enc("org-pharmacy");
        e3["id"] = json!("er3");
        assert_outcome(&put(pharm, "Encounter/er3", e3).await, 403);
        assert_eq!(marked(&s, op.clone()).await.len(), 1);
        s.stop().await;
    }
}

fn representative(cat: &str) -> &'static str {
    match cat {
        "patient" => "Patient",
        "clinical" => "Observation",
        "medication" => "MedicationRequest",
        "administrative" => "Organization",
        "financial" => "Coverage",
        "knowledge" => "ValueSet",
        "report" => "Measure",
        "consent" => "Consent",
        "audit" => "Provenance",
        "workflow" => "CareTeam",
        "subscription" => "Subscription",
        _ => "Basic",
    }
}

/// Does the interaction apply to the category at all (else the cell is n/a)?
fn applies(i: Interaction, cat: &str) -> bool {
    use Interaction::*;
    match i {
        Hl7v2 | Import => cat == INGEST,
        Summary | Everything | Match | Link => cat == "patient",
        EvaluateMeasure => cat == "report",
        Export => cat == SYSTEM || cat == "patient",
        History => cat != INGEST,
        _ => cat != INGEST && cat != SYSTEM,
    }
}

/// Endpoints of other issues, not routed yet: the policy is checked, the cell cannot "work" yet.
fn no_endpoint(i: Interaction) -> bool {
    matches!(i, Interaction::EvaluateMeasure | Interaction::Export)
}

fn body_for(t: &str, id: Option<&str>) -> Value {
    let mut v = json!({"resourceType": t});
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    if t == "Basic" {
        v["code"] = json!({"text": "x"});
    }
    if t == "CareTeam" {
        // every member is a participant: the workflow rules let participants update a CareTeam
        let members: Vec<Value> = MemberType::ALL.iter().map(|mt| json!({"member": {"reference": format!("Organization/org-{}", mt.as_str())}})).collect();
        v["participant"] = json!(members);
    }
    if t == "Subscription" {
        // the topic and channel checks need a usable subscription
        v["status"] = json!("requested");
        v["reason"] = json!("role matrix");
        v["criteria"] = json!("https://carebridge.example/fhir/SubscriptionTopic/encounter-discharge");
        v["channel"] = json!({"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"});
    }
    v
}

async fn cell(s: &TestServer, tok: &str, mt: MemberType, i: Interaction, t: &str, n: usize) -> Resp {
    use Interaction::*;
    let c = client();
    let fhir = "application/fhir+json";
    let seeded = format!("m-{t}");
    let rb = match i {
        Read => c.get(s.url(&format!("{t}/{seeded}"))),
        Vread => c.get(s.url(&format!("{t}/{seeded}/_history/1"))),
        Search => c.get(s.url(&format!("{t}?_id={seeded}"))),
        History if t == "*" => c.get(s.url("_history?_count=1")),
        History => c.get(s.url(&format!("{t}/{seeded}/_history"))),
        Create => c.post(s.url(t)).header("content-type", fhir).body(body_for(t, None).to_string()),
        Update => c.put(s.url(&format!("{t}/{seeded}"))).header("content-type", fhir).body(body_for(t, Some(&seeded)).to_string()),
        Delete => c.delete(s.url(&format!("{t}/gone-{n}"))),
        Validate => c.post(s.url(&format!("{t}/$validate"))).header("content-type", fhir).body(body_for(t, None).to_string()),
        Summary => c.get(s.url("Patient/m-Patient/$summary")),
        Everything => c.get(s.url("Patient/m-Patient/$everything")),
        Match => c.post(s.url("Patient/$match")).header("content-type", fhir).body(
            json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Patient", "name": [{"family": "Muster", "given": ["Max"]}], "birthDate": "1970-01-01"}}]}).to_string(),
        ),
        Link => c.post(s.url("Person/$unlink")).header("content-type", fhir).body(
            json!({"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {"reference": "Patient/m-Patient"}}]}).to_string(),
        ),
        // each member sends for its own institution (`member_institutions`)
        Hl7v2 => c.post(s.url("hl7v2")).header("content-type", "x-application/hl7-v2+er7").body(v2_from("adt-a01-de.hl7", mt)),
        Import => c
            .post(s.url(&format!("import/org-{}?filename=export-2024-03.csv", mt.as_str())))
            .header("content-type", "text/csv; charset=utf-8")
            .body(std::fs::read(fixtures().join("import/pflegedienst-sonnenschein/export-2024-03.csv")).unwrap()),
        EvaluateMeasure => c.get(s.url("Measure/m-Measure/$evaluate-measure")),
        Export if t == "*" => c.get(s.url("$export")),
        Export => c.get(s.url("Patient/$export")),
    };
    send(rb.bearer_auth(tok)).await
}

#[tokio::test]
async fn role_matrix() {
    let s = start(Backend::Sqlite, "").await;
    let policy = RolePolicy::default_policy();
    // seed one resource per representative type
    for cat in policy.categories() {
        let t = representative(cat);
        if cat == INGEST || cat == SYSTEM {
            continue;
        }
        // straight through the pipeline: the audit category is read-only even for operators
        let id = format!("m-{t}");
        let e = carebridge::pipeline::Entry {
            method: carebridge::pipeline::Method::Put,
            url: format!("{t}/{id}"),
            full_url: None,
            resource: Some(body_for(t, Some(&id))),
            if_none_exist: None,
            if_match: None,
        };
        carebridge::pipeline::Pipeline::single(&s.services).transaction(vec![e]).await.unwrap_or_else(|e| panic!("seed {t}: {e}"));
    }
    let mut lines = vec![];
    let (mut denied_ok, mut denied_total, mut allowed_ok, mut allowed_total, mut pending) = (0, 0, 0, 0, 0);
    let mut failures = vec![];
    let mut n = 0;
    for mt in MemberType::ALL {
        let tok = token_for(&s, &format!("c-{}", mt.as_str())).await;
        for cat in policy.categories() {
            let mut row = format!("{:<19} {:<15}", mt.as_str(), cat);
            for i in Interaction::ALL {
                if !applies(i, cat) {
                    continue;
                }
                n += 1;
                let t = if cat == INGEST || cat == SYSTEM { "*" } else { representative(cat) };
                let allowed = policy.allows_category(mt, i, cat);
                let r = cell(&s, &tok, mt, i, t, n).await;
                let mark;
                if allowed {
                    allowed_total += 1;
                    // MPI manual decisions on a patient without a link: any answer but a refusal or a fault
                    let loose = no_endpoint(i) || i == Interaction::Link;
                    let works = if loose { r.status != 401 && r.status != 403 && r.status < 500 } else { (200..300).contains(&r.status) };
                    if no_endpoint(i) {
                        pending += 1;
                    }
                    if works {
                        allowed_ok += 1;
                        mark = if no_endpoint(i) { "a" } else { "A" };
                    } else {
                        mark = "!";
                        failures.push(format!("{} {} {}: allowed but {} {}", mt.as_str(), i.as_str(), cat, r.status, r.text.chars().take(200).collect::<String>()));
                    }
                } else {
                    denied_total += 1;
                    if r.status == 403 && r.json()["resourceType"] == "OperationOutcome" {
                        denied_ok += 1;
                        mark = "-";
                    } else {
                        mark = "X";
                        failures.push(format!("{} {} {}: forbidden but {}", mt.as_str(), i.as_str(), cat, r.status));
                    }
                }
                row.push_str(&format!(" {}:{}", i.as_str(), mark));
            }
            lines.push(row);
        }
    }
    println!("role matrix (A allowed and works, a allowed / endpoint not built yet, - denied 403, ! or X wrong):");
    for l in &lines {
        println!("{l}");
    }
    println!("forbidden cells denied: {denied_ok}/{denied_total}; allowed cells working: {allowed_ok}/{allowed_total} ({pending} without endpoint yet)");
    assert!(failures.is_empty(), "{} wrong cells:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(denied_ok, denied_total);
    s.stop().await;
}

fn https_client(root: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let pem = std::fs::read(auth_dir().join(root)).unwrap();
    let mut b = reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()]).pool_max_idle_per_host(0);
    if let Some((crt, key)) = identity {
        let mut id = std::fs::read(auth_dir().join(crt)).unwrap();
        id.extend(std::fs::read(auth_dir().join(key)).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&id).unwrap());
    }
    b.build().unwrap()
}

/// HTTPS via rustls, certificate reload on SIGHUP without dropping the
/// listener, and a member bound to its client certificate.
#[tokio::test]
async fn tls_reload_and_client_certificates() {
    // install the process-wide SIGHUP handler first: the signal must never take the test binary down
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
    std::fs::copy(auth_dir().join("tls-server1.crt"), &cert).unwrap();
    std::fs::copy(auth_dir().join("tls-server1.key"), &key).unwrap();
    let fp = std::fs::read_to_string(auth_dir().join("tls-client.sha256")).unwrap();
    let plain = TestServer::start(Backend::Sqlite).await;
    // the hospital member is bound to its client certificate
    let toml = auth_toml("").replace(
        "[[member]]\nid = \"org-hospital\"\ntype = \"hospital\"\n",
        &format!("[[member]]\nid = \"org-hospital\"\ntype = \"hospital\"\nclient_cert_sha256 = [\"{}\"]\n", fp.trim()),
    );
    let section: carebridge::config::AuthSection = toml::from_str(&toml).unwrap();
    let api = ApiConfig { auth: Some(Arc::new(section.build(&auth_dir()).unwrap())), ..Default::default() };
    let files = carebridge::server::TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: Some(auth_dir().join("tls-members-ca.crt")) };
    let running = carebridge::server::start_full(plain.services.clone(), api, "127.0.0.1:0", None, Some(files)).await.expect("https server");
    let base = format!("https://127.0.0.1:{}", running.addr.port());
    let c1 = https_client("tls-server1.crt", None);
    let r = c1.get(format!("{base}/metadata")).send().await.expect("https with certificate 1");
    assert_eq!(r.status().as_u16(), 200);
    assert!(https_client("tls-server2.crt", None).get(format!("{base}/metadata")).send().await.is_err(), "certificate 2 is not served yet");

    // client certificates: the hospital's client needs its certificate, others do not
    let aud = format!("{base}/auth/token");
    let tok = |client: &'static str| {
        let aud = aud.clone();
        async move {
            Assertion { alg: Algorithm::ES384, kid: "es384-1", key: "es384-client.pem", iss: client, aud, exp: now() + 240, jti: uuid::Uuid::new_v4().to_string() }.sign()
        }
    };
    let form = |assertion: String| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            .append_pair("client_assertion", &assertion)
            .append_pair("scope", "system/Patient.rs")
            .finish()
    };
    let with_cert = https_client("tls-server1.crt", Some(("tls-client.crt", "tls-client.key")));
    let t: Value = with_cert.post(&aud).header("content-type", "application/x-www-form-urlencoded").body(form(tok("c-hospital").await)).send().await.unwrap().json().await.unwrap();
    let hosp = t["access_token"].as_str().expect("token").to_owned();
    let r = c1.get(format!("{base}/Patient")).bearer_auth(&hosp).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "without its client certificate the hospital is refused");
    let r = with_cert.get(format!("{base}/Patient")).bearer_auth(&hosp).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "with it, allowed");
    let t: Value = c1.post(&aud).header("content-type", "application/x-www-form-urlencoded").body(form(tok("c-gp-practice").await)).send().await.unwrap().json().await.unwrap();
    let gp = t["access_token"].as_str().expect("token").to_owned();
    assert_eq!(c1.get(format!("{base}/Patient")).bearer_auth(&gp).send().await.unwrap().status().as_u16(), 200);

    // swap the files, SIGHUP: new connections get certificate 2 on the same listener
    std::fs::copy(auth_dir().join("tls-server2.crt"), &cert).unwrap();
    std::fs::copy(auth_dir().join("tls-server2.key"), &key).unwrap();
    let pid = std::process::id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    hup.recv().await;
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if https_client("tls-server2.crt", None).get(format!("{base}/metadata")).send().await.is_ok_and(|r| r.status().as_u16() == 200) {
            ok = true;
            break;
        }
    }
    assert!(ok, "certificate 2 served after SIGHUP");
    assert!(https_client("tls-server1.crt", None).get(format!("{base}/metadata")).send().await.is_err(), "certificate 1 no longer served");
    running.stop().await;
    plain.stop().await;
}

async fn count(s: &TestServer, tok: &str, query: &str) -> i64 {
    let r = get_with(s, tok, &format!("{query}{}_summary=count", if query.contains('?') { "&" } else { "?" })).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    r.json()["total"].as_i64().unwrap()
}

/// HL7 v2 and imports are written in the sending member's name: a hospital
/// sends only for institutions mapped to it (`member`), its records then
/// name `Organization/<member>` (serviceProvider, Provenance agent) and no
/// Organization of the institution is written; another member's or an
/// unmapped institution → 403 with an AR ACK / OperationOutcome, nothing
/// stored, the refusal audited. Integration engines send for everyone.
#[tokio::test]
async fn ingest_only_for_own_institutions() {
    for b in backends() {
        let s = start(b, "").await;
        let (hosp, engine, op) = (token_for(&s, "c-hospital").await, token_for(&s, "c-integration-engine").await, token_for(&s, "c-operator").await);
        let post_v2 = |tok: String, body: Vec<u8>| {
            let url = s.url("hl7v2");
            async move { send(client().post(url).header("content-type", "x-application/hl7-v2+er7").body(body).bearer_auth(tok)).await }
        };
        // as another member, or for an unmapped institution: 403, AR, nothing stored
        for body in [v2_from("adt-a01-de.hl7", MemberType::GpPractice), std::fs::read(fixtures().join("hl7v2/adt-a01-de.hl7")).unwrap()] {
            let r = post_v2(hosp.clone(), body).await;
            assert_eq!(r.status, 403, "{}", r.text);
            assert_eq!(crate::hl7v2_ingest::msa(&r.text), "AR", "{}", r.text);
            assert!(r.text.contains("Organization/org-hospital may send only") || r.text.contains("not mapped to a network member"), "{}", r.text);
        }
        assert_eq!(count(&s, &op, "Encounter").await, 0, "nothing stored");
        assert_eq!(count(&s, &op, "AuditEvent?subtype=hl7v2&outcome=4").await, 2, "both refusals audited");
        for inst in ["org-gp-practice", "pflegedienst-sonnenschein"] {
            let r = send(
                client()
                    .post(s.url(&format!("import/{inst}")))
                    .header("content-type", "text/csv; charset=utf-8")
                    .body(std::fs::read(fixtures().join("import/pflegedienst-sonnenschein/export-2024-03.csv")).unwrap())
                    .bearer_auth(&hosp),
            )
            .await;
            assert_outcome(&r, 403);
        }
        assert_eq!(count(&s, &op, "Observation").await, 0, "no import stored");

        // its own institution: stored in its name
        let r = post_v2(hosp.clone(), v2_from("adt-a01-de.hl7", MemberType::Hospital)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(crate::hl7v2_ingest::msa(&r.text), "AA");
        let enc = get_with(&s, &op, "Encounter").await.json();
        assert_eq!(enc["entry"][0]["resource"]["serviceProvider"]["reference"], "Organization/org-hospital", "{enc}");
        let prov = get_with(&s, &op, "Provenance").await.json();
        assert_eq!(prov["entry"][0]["resource"]["agent"][0]["who"]["reference"], "Organization/org-hospital", "{prov}");
        assert_eq!(count(&s, &op, "Organization?identifier=urn:carebridge:institution|").await, 0, "no institution Organization of its own");
        let r = send(
            client()
                .post(s.url("import/org-hospital"))
                .header("content-type", "text/csv; charset=utf-8")
                .body(std::fs::read(fixtures().join("import/pflegedienst-sonnenschein/export-2024-03.csv")).unwrap())
                .bearer_auth(&hosp),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let prov = get_with(&s, &op, "Provenance?agent=Organization/org-hospital&_summary=count").await.json();
        assert!(prov["total"].as_i64().unwrap() >= 2, "v2 and import attributed to the member: {prov}");

        // the integration engine sends for any institution
        let r = post_v2(engine.clone(), std::fs::read(fixtures().join("hl7v2/adt-a01-de.hl7")).unwrap()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(crate::hl7v2_ingest::msa(&r.text), "AA");
        s.stop().await;
    }
}

async fn mllp_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(sock: &mut S, msg: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(&carebridge::translate::hl7v2::encode_frame(msg)).await.unwrap();
    let mut dec = carebridge::translate::hl7v2::MllpDecoder::new();
    let mut buf = vec![0u8; 8192];
    loop {
        if let Some(f) = dec.next_frame() {
            return String::from_utf8_lossy(&f.expect("a framed ACK")).into_owned();
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), sock.read(&mut buf)).await.expect("ACK in time").unwrap();
        assert!(n > 0, "connection closed without an ACK");
        dec.push(&buf[..n]);
    }
}

fn tls_connector(identity: bool) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(auth_dir().join("tls-server1.crt")).unwrap()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = if identity {
        let certs = vec![CertificateDer::from_pem_file(auth_dir().join("tls-client.crt")).unwrap()];
        b.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(auth_dir().join("tls-client.key")).unwrap()).unwrap()
    } else {
        b.with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// MLLP senders (issue 7): plain MLLP only on loopback (an integration
/// engine on the host, `mllp-loopback`) — `serve` refuses plain MLLP on
/// any other address; with TLS the sender is the member of its registered
/// client certificate, which sends only for its own institutions; a
/// connection without one gets AR for every message; every message leaves
/// an AuditEvent naming its sender.
#[tokio::test]
async fn mllp_senders_tls_and_audit() {
    use tokio::io::AsyncWriteExt;
    let plain = TestServer::start(Backend::Sqlite).await;
    let (hl7, mappings) = member_institutions();
    let fp = std::fs::read_to_string(auth_dir().join("tls-client.sha256")).unwrap();
    let toml = auth_toml("").replace(
        "[[member]]\nid = \"org-hospital\"\ntype = \"hospital\"\n",
        &format!("[[member]]\nid = \"org-hospital\"\ntype = \"hospital\"\nclient_cert_sha256 = [\"{}\"]\n", fp.trim()),
    );
    let section: carebridge::config::AuthSection = toml::from_str(&toml).unwrap();
    let auth = Arc::new(section.build(&auth_dir()).unwrap());
    let api = || ApiConfig { auth: Some(auth.clone()), hl7: hl7.clone(), mappings_dir: Some(mappings.clone()), ..Default::default() };

    // plain MLLP off loopback is refused before anything listens
    let e = carebridge::server::start_full(plain.services.clone(), api(), "127.0.0.1:0", Some("0.0.0.0:0"), None).await.err().expect("refused");
    assert!(e.to_string().contains("refusing MLLP"), "{e}");

    // plain MLLP on loopback: the host's integration engine
    let running = carebridge::server::start_full(plain.services.clone(), api(), "127.0.0.1:0", Some("127.0.0.1:0"), None).await.unwrap();
    let mut sock = tokio::net::TcpStream::connect(running.mllp_addr.unwrap()).await.unwrap();
    let ack = mllp_exchange(&mut sock, &std::fs::read(fixtures().join("hl7v2/adt-a01-de.hl7")).unwrap()).await;
    assert_eq!(crate::hl7v2_ingest::msa(&ack), "AA", "{ack}");
    // the audit trail, read through the development server on the same store
    let b = crate::common::get(&plain, "AuditEvent?subtype=hl7v2").await.json();
    assert_eq!(b["entry"].as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(b["entry"][0]["resource"]["agent"][0]["who"]["identifier"]["value"], "mllp-loopback");
    drop(sock);
    running.stop().await;

    // MLLP over TLS (loopback here; the only way off loopback)
    let files = carebridge::server::TlsFiles {
        cert: auth_dir().join("tls-server1.crt"),
        key: auth_dir().join("tls-server1.key"),
        client_ca: Some(auth_dir().join("tls-members-ca.crt")),
    };
    let running = carebridge::server::start_full(plain.services.clone(), api(), "127.0.0.1:0", Some("127.0.0.1:0"), Some(files)).await.unwrap();
    let addr = running.mllp_addr.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    // the hospital's certificate: its own facility AA, another's AR; one connection
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tls_connector(true).connect(name.clone(), tcp).await.expect("TLS with client certificate");
    let ack = mllp_exchange(&mut tls, &v2_from("adt-a04-de.hl7", MemberType::Hospital)).await;
    assert_eq!(crate::hl7v2_ingest::msa(&ack), "AA", "{ack}");
    let ack = mllp_exchange(&mut tls, &v2_from("adt-a04-de.hl7", MemberType::GpPractice)).await;
    assert_eq!(crate::hl7v2_ingest::msa(&ack), "AR", "{ack}");
    assert!(ack.contains("may send only"), "{ack}");
    tls.shutdown().await.ok();
    // no client certificate: AR for every message, nothing stored
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut anon = tls_connector(false).connect(name, tcp).await.expect("TLS without client certificate");
    for _ in 0..2 {
        let ack = mllp_exchange(&mut anon, &v2_from("adt-a04-de.hl7", MemberType::Hospital)).await;
        assert_eq!(crate::hl7v2_ingest::msa(&ack), "AR", "{ack}");
        assert!(ack.contains("client certificate"), "{ack}");
    }
    // the audit trail: 1 loopback + 1 stored + 1 refused hospital message + 2 anonymous refusals
    let all = crate::common::get(&plain, "AuditEvent?subtype=hl7v2&_count=50").await.json();
    let who: Vec<String> = all["entry"].as_array().unwrap().iter().map(|e| e["resource"]["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(who.iter().filter(|w| *w == "c-hospital").count(), 2, "{who:?}");
    assert_eq!(who.iter().filter(|w| *w == "mllp-loopback").count(), 1, "{who:?}");
    assert_eq!(who.iter().filter(|w| *w == "mllp-unidentified").count(), 2, "{who:?}");
    let failed = all["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["outcome"] != "0").count();
    assert_eq!(failed, 3, "{all}");
    running.stop().await;
    plain.stop().await;
}

/// Read audits go through the write-behind queue: durable as a queue row
/// before the answer, turned into AuditEvent resources in the background
/// once the sink is idle (no reader needed), deleted from the queue in that
/// transaction; rows left by an earlier run are materialized too.
#[tokio::test]
async fn audit_queue_materializes_in_the_background() {
    for b in backends() {
        let s = start(b, "").await;
        let hosp = token_for(&s, "c-hospital").await;
        let o = json!({"resourceType": "Observation", "id": "q1", "status": "final", "code": {"text": "x"}});
        assert!(send(client().put(s.url("Observation/q1")).bearer_auth(&hosp).header("content-type", "application/fhir+json").body(o.to_string())).await.status < 300);
        for _ in 0..5 {
            assert_eq!(get_with(&s, &hosp, "Observation/q1").await.status, 200);
        }
        let queued = |s: &TestServer| {
            let store = s.services.store.clone();
            async move { store.rows(carebridge::store::Sql::new("SELECT seq FROM audit_queue")).await.unwrap().len() }
        };
        let stored = |s: &TestServer| {
            let store = s.services.store.clone();
            async move {
                store.rows(carebridge::store::Sql::new("SELECT id FROM resources WHERE rtype = 'AuditEvent' AND deleted = 0")).await.unwrap().len()
            }
        };
        // idle: the background materializer empties the queue without any reader
        let mut left = usize::MAX;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            left = queued(&s).await;
            if left == 0 {
                break;
            }
        }
        assert_eq!(left, 0, "queue drained in the background");
        // token + 1 change + 5 reads (the token request is not a FHIR access)
        let n = stored(&s).await;
        assert!(n >= 6, "{n} AuditEvents stored");
        // a row left behind (as by a crash after commit) becomes an AuditEvent on materialize
        let ae = json!({"resourceType": "AuditEvent", "id": "left-behind", "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}, "recorded": "2026-01-01T00:00:00Z",
            "agent": [{"requestor": true, "who": {"display": "x"}}], "source": {"observer": {"display": "carebridge"}}});
        let mut tx = s.services.store.begin().await.unwrap();
        let mut sql = carebridge::store::Sql::new("INSERT INTO audit_queue (id, recorded, body) VALUES ('left-behind', 0, ");
        sql.text_param(ae.to_string()).push(")");
        tx.execute(sql).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(carebridge::pipeline::audit::materialize(&s.services).await.unwrap(), 1);
        assert_eq!(queued(&s).await, 0);
        assert_eq!(stored(&s).await, n + 1);
        let op = token_for(&s, "c-operator").await;
        assert_eq!(get_with(&s, &op, "AuditEvent/left-behind").await.status, 200);
        s.stop().await;
    }
}
