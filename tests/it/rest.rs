//! REST interactions over HTTP (R4 http.html): headers, Prefer, conditional
//! operations, content negotiation and the OperationOutcome for every client
//! mistake (never a 5xx).

use crate::common::*;
use carebridge::api::ApiConfig;
use serde_json::json;

#[tokio::test]
async fn prefer_return_and_if_match() {
    let s = TestServer::start(Backend::Sqlite).await;
    let body = r#"{"resourceType":"Patient","gender":"male"}"#;
    let r = send(client().post(s.url("Patient")).header("content-type", "application/fhir+json").header("prefer", "return=minimal").body(body)).await;
    assert_eq!(r.status, 201);
    assert!(r.text.is_empty(), "minimal returns no body");
    let loc = r.header("location").unwrap();
    let id = loc.split('/').rev().nth(2).unwrap().to_owned();
    let r = send(client().post(s.url("Patient")).header("content-type", "application/fhir+json").header("prefer", "return=OperationOutcome").body(body)).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");

    // If-Match: wrong version → 412, right version → 200
    let upd = json!({"resourceType": "Patient", "id": id, "gender": "female"}).to_string();
    let r = send(client().put(s.url(&format!("Patient/{id}"))).header("content-type", "application/fhir+json").header("if-match", "W/\"7\"").body(upd.clone())).await;
    assert_outcome(&r, 412);
    let r = send(client().put(s.url(&format!("Patient/{id}"))).header("content-type", "application/fhir+json").header("if-match", "W/\"1\"").body(upd)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["gender"], "female");
    // If-None-Match on read → 304
    let r = send(client().get(s.url(&format!("Patient/{id}"))).header("if-none-match", "W/\"2\"")).await;
    assert_eq!(r.status, 304);
    s.stop().await;
}

#[tokio::test]
async fn conditional_update_and_delete() {
    let s = TestServer::start(Backend::Sqlite).await;
    let p = |v: &str| json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": v}], "active": true});
    // no match → create
    let r = put_json(&s, "Patient?identifier=urn:mrn|A1", &p("A1")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // one match, same content → no-op (still version 1)
    let r = put_json(&s, "Patient?identifier=urn:mrn|A1", &p("A1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["meta"]["versionId"], "1");
    // one match, changed content → update that one
    let mut changed = p("A1");
    changed["active"] = json!(false);
    let r = put_json(&s, "Patient?identifier=urn:mrn|A1", &changed).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id.as_str());
    assert_eq!(r.json()["meta"]["versionId"], "2");
    // two matches → 412
    post_json(&s, "Patient", &p("DUP")).await;
    post_json(&s, "Patient", &p("DUP")).await;
    assert_outcome(&put_json(&s, "Patient?identifier=urn:mrn|DUP", &p("DUP")).await, 412);
    assert_outcome(&delete(&s, "Patient?identifier=urn:mrn|DUP").await, 412);
    // conditional create: matches existing → 200 and no new resource
    let r = send(client().post(s.url("Patient")).header("content-type", "application/fhir+json").header("if-none-exist", "identifier=urn:mrn|A1").body(p("A1").to_string())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id.as_str());
    assert_outcome(&send(client().post(s.url("Patient")).header("content-type", "application/fhir+json").header("if-none-exist", "identifier=urn:mrn|DUP").body(p("DUP").to_string())).await, 412);
    // unknown parameter in a condition is an error (it must not widen the match)
    assert_outcome(&put_json(&s, "Patient?nonsense=1", &p("X")).await, 400);
    // conditional delete of one match
    assert_eq!(delete(&s, "Patient?identifier=urn:mrn|A1").await.status, 204);
    assert_eq!(get(&s, &format!("Patient/{id}")).await.status, 410);
    s.stop().await;
}

#[tokio::test]
async fn summary_elements_pretty() {
    let s = TestServer::start(Backend::Sqlite).await;
    let r = post_json(&s, "Patient", &json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}, "gender": "male", "birthDate": "1990-01-01", "name": [{"family": "Elem"}]})).await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let e = get(&s, &format!("Patient/{id}?_elements=gender")).await.json();
    assert_eq!(e["gender"], "male");
    assert!(e.get("birthDate").is_none() && e.get("name").is_none());
    assert_eq!(e["meta"]["tag"][0]["code"], "SUBSETTED");
    let d = get(&s, &format!("Patient/{id}?_summary=data")).await.json();
    assert!(d.get("text").is_none() && d["birthDate"] == "1990-01-01");
    let c = get(&s, "Patient?_summary=count").await.json();
    assert_eq!(c["total"], 1);
    assert!(c.get("entry").is_none());
    let pretty = get(&s, &format!("Patient/{id}?_pretty=true")).await.text;
    assert!(pretty.contains("\n  \"resourceType\""), "{pretty}");
    let se = get(&s, "Patient?_elements=name").await.json();
    assert!(se["entry"][0]["resource"].get("gender").is_none());
    s.stop().await;
}

#[tokio::test]
async fn negotiation() {
    let s = TestServer::start(Backend::Sqlite).await;
    let accept = |a: &'static str| send(client().get(s.url("metadata")).header("accept", a));
    assert_eq!(accept("application/fhir+json").await.status, 200);
    assert_eq!(accept("application/json").await.status, 200);
    assert_eq!(accept("*/*").await.status, 200);
    // the fhir-sdk client's R4B Accept is served as 4.0 (documented in README)
    let r = accept("application/fhir+json; fhirVersion=4.3").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().contains("fhirVersion=4.0"));
    assert_outcome(&accept("application/fhir+json; fhirVersion=5.0").await, 406);
    assert_outcome(&accept("application/fhir+xml").await, 406);
    assert_outcome(&get(&s, "metadata?_format=xml").await, 406);
    assert_eq!(get(&s, "metadata?_format=json").await.status, 200);
    let r = send(client().post(s.url("Patient")).header("content-type", "application/fhir+xml").body("<Patient xmlns=\"http://hl7.org/fhir\"/>")).await;
    assert_outcome(&r, 415);
    assert!(r.diagnostics().contains("XML"));
    s.stop().await;
}

#[tokio::test]
async fn client_errors_are_operation_outcomes() {
    let s = TestServer::start_with(Backend::Sqlite, ApiConfig { base_url: None, max_body_bytes: 4096, ..Default::default() }).await;
    assert_outcome(&get(&s, "NotAType/1").await, 404);
    assert_outcome(&get(&s, "NotAType").await, 404);
    assert_outcome(&get(&s, "Patient/does-not-exist").await, 404);
    assert_outcome(&get(&s, "Patient/bad$id!").await, 400);
    assert_outcome(&send(client().post(s.url("Patient/1"))).await, 405);
    assert_outcome(&send(client().patch(s.url("Patient"))).await, 405);
    assert_outcome(&send(client().post(s.url("Patient")).header("content-type", "application/fhir+json").body("{not json")).await, 400);
    assert_outcome(&send(client().post(s.url("Patient")).header("content-type", "application/fhir+json").body("[1,2]")).await, 400);
    assert_outcome(&post_json(&s, "Patient", &json!({"resourceType": "Observation"})).await, 400);
    assert_outcome(&post_json(&s, "Patient", &json!({"name": []})).await, 400);
    assert_outcome(&put_json(&s, "Patient/a", &json!({"resourceType": "Patient", "id": "b"})).await, 400);
    assert_outcome(&put_json(&s, "Patient/a", &json!({"resourceType": "Patient"})).await, 400);
    assert_outcome(&post_json(&s, "Patient", &json!({"resourceType": "Patient", "id": "has spaces"})).await, 400);
    assert_outcome(&send(client().post(s.url("Patient")).header("content-type", "application/fhir+json").body(vec![b' '; 5000])).await, 413);
    assert_outcome(&get(&s, "Patient/x/_history/abc").await, 400);
    assert_outcome(&get(&s, "Patient?birthdate=notadate").await, 400);
    assert_outcome(&get(&s, "Patient?_count=-1").await, 400);
    assert_outcome(&get(&s, "Patient?_sort=nonsense").await, 400);
    assert_outcome(&get(&s, "Patient?_page=zzz").await, 400);
    assert_outcome(&send(client().get(s.url("Patient?gender=male&bogus=1")).header("prefer", "handling=strict")).await, 400);
    // lenient (default): ignored, reported in an outcome entry
    let r = get(&s, "Patient?bogus=1").await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("\"mode\":\"outcome\""), "{}", r.text);
    assert_outcome(&post_json(&s, "", &json!({"resourceType": "Bundle", "type": "collection"})).await, 400);
    assert_outcome(&post_json(&s, "", &json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}}]})).await, 400);
    assert_outcome(&get(&s, "$convert").await, 404);
    s.stop().await;
}

#[tokio::test]
async fn capability_statement_reflects_registry() {
    let s = TestServer::start(Backend::Sqlite).await;
    let cs = get(&s, "metadata").await.json();
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let res = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(res.len(), 146, "every R4 resource type");
    let obs = res.iter().find(|r| r["type"] == "Observation").unwrap();
    let names: Vec<&str> = obs["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for p in ["code", "date", "subject", "patient", "value-quantity", "_id", "_lastUpdated", "_tag", "_profile"] {
        assert!(names.contains(&p), "Observation advertises {p}");
    }
    assert!(!names.contains(&"code-value-quantity"), "composite parameters are not advertised");
    s.stop().await;
}

#[tokio::test]
async fn validate_operation_and_validate_on_write() {
    let s = TestServer::start(Backend::Sqlite).await;
    // $validate: 200 with the issues, nothing stored
    let bad = json!({"resourceType": "Patient", "birthDate": "1970-13-01", "gender": ["male"], "nickname": "x"});
    let r = post_json(&s, "Patient/$validate", &bad).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let issues = r.json()["issue"].as_array().unwrap().clone();
    let exprs: Vec<&str> = issues.iter().flat_map(|i| i["expression"].as_array().unwrap().iter().map(|e| e.as_str().unwrap())).collect();
    assert!(exprs.contains(&"Patient.birthDate") && exprs.contains(&"Patient.gender") && exprs.contains(&"Patient.nickname"), "{exprs:?}");
    let ok = post_json(&s, "Patient/$validate", &json!({"resourceType": "Patient", "birthDate": "1970-12-01"})).await;
    let sev: Vec<String> = ok.json()["issue"].as_array().unwrap().iter().map(|i| i["severity"].as_str().unwrap().to_owned()).collect();
    assert!(sev.iter().all(|s| s == "information" || s == "warning"), "no errors: {}", ok.text);
    assert!(ok.text.contains("dom-6"), "a resource without narrative gets the dom-6 warning: {}", ok.text);
    // Parameters form with mode=update and a profile this server does not know
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient"}},
        {"name": "mode", "valueCode": "update"},
        {"name": "profile", "valueUri": "http://example.org/StructureDefinition/unknown"}]});
    let r = post_json(&s, "Patient/x1/$validate", &params).await;
    assert_eq!(r.status, 200);
    let errors = r.json()["issue"].as_array().unwrap().iter().filter(|i| i["severity"] == "error").count();
    assert_eq!(errors, 2, "{}", r.text);
    assert_outcome(&post_json(&s, "Patient/$validate", &json!({"resourceType": "Observation"})).await, 400);
    assert_eq!(get(&s, "Patient?_summary=count").await.json()["total"], 0, "$validate stores nothing");
    // validate-on-write: 422 with every issue; in a transaction located at the entry; nothing stored
    let r = post_json(&s, "Patient", &bad).await;
    assert_outcome(&r, 422);
    let n_errors = issues.iter().filter(|i| i["severity"] == "error").count();
    assert_eq!(r.json()["issue"].as_array().unwrap().len(), n_errors, "422 lists every error");
    assert!(!r.text.contains("Bundle.entry"), "a single REST write names no bundle entry: {}", r.text);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final"}, "request": {"method": "POST", "url": "Observation"}}]});
    let r = post_json(&s, "", &tx).await;
    assert_outcome(&r, 422);
    assert!(r.text.contains("Bundle.entry[1].resource"), "{}", r.text);
    assert!(r.text.contains("Observation.code: minimum required = 1"), "{}", r.text);
    assert_eq!(get(&s, "Patient?_summary=count").await.json()["total"], 0);
    // stored resources validate via GET [type]/[id]/$validate
    let id = post_json(&s, "Patient", &json!({"resourceType": "Patient", "active": true})).await.json()["id"].as_str().unwrap().to_owned();
    let stored = get(&s, &format!("Patient/{id}/$validate")).await;
    assert!(!stored.text.contains("\"error\""), "{}", stored.text);
    s.stop().await;
}
