//! batch and transaction Bundles (R4 http.html §3.1.0.11): urn:uuid
//! resolution (nested references too), conditional references, processing
//! order, per-entry responses, batch independence.

use crate::common::*;
use serde_json::{json, Value};

fn tx(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[tokio::test]
async fn urn_uuid_and_nested_references_are_rewritten() {
    let s = TestServer::start(Backend::Sqlite).await;
    let pat = "urn:uuid:0b7c6f2e-8d27-4c3c-9d7e-000000000001";
    let org = "urn:oid:1.2.276.0.76.4.8";
    let b = tx(vec![
        json!({"fullUrl": org, "resource": {"resourceType": "Organization", "name": "Klinik"}, "request": {"method": "POST", "url": "Organization"}}),
        json!({"fullUrl": pat, "resource": {"resourceType": "Patient", "managingOrganization": {"reference": org},
            "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"{pat}\">self</a></div>")}},
            "request": {"method": "POST", "url": "Patient"}}),
        json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"}, "subject": {"reference": pat},
            "performer": [{"reference": org}], "extension": [{"url": "http://example.org/ref", "valueReference": {"reference": pat}}],
            "component": [{"code": {"text": "c"}, "extension": [{"url": "x", "valueReference": {"reference": org}}]}]},
            "request": {"method": "POST", "url": "Observation"}}),
    ]);
    let r = send(client().post(s.url("")).header("content-type", "application/fhir+json").header("prefer", "return=representation").body(b.to_string())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json();
    assert_eq!(out["type"], "transaction-response");
    let entries = out["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for e in entries {
        assert_eq!(e["response"]["status"], "201 Created");
        assert!(e["response"]["etag"] == "W/\"1\"" && e["response"]["lastModified"].is_string());
    }
    let org_id = entries[0]["resource"]["id"].as_str().unwrap();
    let pat_id = entries[1]["resource"]["id"].as_str().unwrap();
    let obs = &entries[2]["resource"];
    assert_eq!(obs["subject"]["reference"], format!("Patient/{pat_id}"));
    assert_eq!(obs["performer"][0]["reference"], format!("Organization/{org_id}"));
    assert_eq!(obs["extension"][0]["valueReference"]["reference"], format!("Patient/{pat_id}"));
    assert_eq!(obs["component"][0]["extension"][0]["valueReference"]["reference"], format!("Organization/{org_id}"));
    assert!(entries[1]["resource"]["text"]["div"].as_str().unwrap().contains(&format!("Patient/{pat_id}")));
    // the rewritten reference is searchable
    let found = get(&s, &format!("Observation?subject=Patient/{pat_id}")).await.json();
    assert_eq!(match_ids(&found).len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn conditional_references_and_unresolved_ones() {
    let s = TestServer::start(Backend::Sqlite).await;
    put_json(&s, "Patient/kv1", &json!({"resourceType": "Patient", "id": "kv1", "identifier": [{"system": "http://fhir.de/sid/gkv/kvid-10", "value": "A123456780"}]})).await;
    let obs = |r: &str| json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "t"}, "subject": {"reference": r}}, "request": {"method": "POST", "url": "Observation"}});
    let r = post_json(&s, "", &tx(vec![obs("Patient?identifier=http://fhir.de/sid/gkv/kvid-10|A123456780")])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let loc = r.json()["entry"][0]["response"]["location"].as_str().unwrap().to_owned();
    let stored = get(&s, &loc).await.json();
    assert_eq!(stored["subject"]["reference"], "Patient/kv1");
    // no match → 400, several → 412, dangling urn:uuid → 400; nothing stored
    let before = get(&s, "Observation?_summary=count").await.json()["total"].clone();
    assert_outcome(&post_json(&s, "", &tx(vec![obs("Patient?identifier=urn:none|0")])).await, 400);
    post_json(&s, "Patient", &json!({"resourceType": "Patient", "identifier": [{"system": "urn:two", "value": "2"}]})).await;
    post_json(&s, "Patient", &json!({"resourceType": "Patient", "identifier": [{"system": "urn:two", "value": "2"}]})).await;
    assert_outcome(&post_json(&s, "", &tx(vec![obs("Patient?identifier=urn:two|2")])).await, 412);
    assert_outcome(&post_json(&s, "", &tx(vec![obs("urn:uuid:5e0c1b8a-0000-0000-0000-000000000000")])).await, 400);
    assert_eq!(get(&s, "Observation?_summary=count").await.json()["total"], before);
    s.stop().await;
}

#[tokio::test]
async fn processing_order_and_overlap() {
    let s = TestServer::start(Backend::Sqlite).await;
    put_json(&s, "Patient/old", &json!({"resourceType": "Patient", "id": "old"})).await;
    // GET listed first still sees the PUT that comes later in the Bundle (GETs run last);
    // the DELETE runs before the POST
    let b = tx(vec![
        json!({"request": {"method": "GET", "url": "Patient/new1"}}),
        json!({"resource": {"resourceType": "Patient", "id": "new1", "gender": "female"}, "request": {"method": "PUT", "url": "Patient/new1"}}),
        json!({"request": {"method": "DELETE", "url": "Patient/old"}}),
        json!({"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}),
    ]);
    let r = post_json(&s, "", &b).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = r.json()["entry"].as_array().unwrap().clone();
    assert_eq!(e[0]["response"]["status"], "200 OK");
    assert_eq!(e[1]["response"]["status"], "201 Created");
    assert_eq!(e[2]["response"]["status"], "204 No Content");
    assert_eq!(e[3]["response"]["status"], "201 Created");
    assert_eq!(get(&s, "Patient/old").await.status, 410);
    // the same resource changed twice → the transaction fails
    let b = tx(vec![
        json!({"resource": {"resourceType": "Patient", "id": "twice"}, "request": {"method": "PUT", "url": "Patient/twice"}}),
        json!({"request": {"method": "DELETE", "url": "Patient/twice"}}),
    ]);
    assert_outcome(&post_json(&s, "", &b).await, 400);
    assert_eq!(get(&s, "Patient/twice").await.status, 404);
    // duplicate fullUrl
    let b = tx(vec![
        json!({"fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}),
        json!({"fullUrl": "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}),
    ]);
    assert_outcome(&post_json(&s, "", &b).await, 400);
    s.stop().await;
}

#[tokio::test]
async fn batch_entries_are_independent() {
    let s = TestServer::start(Backend::Sqlite).await;
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/nope"}},
        {"resource": {"resourceType": "Patient", "id": "b1"}, "request": {"method": "PUT", "url": "Patient/b1"}},
        {"request": {"method": "GET", "url": "Patient/b1"}}
    ]});
    let r = post_json(&s, "", &b).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.json();
    assert_eq!(out["type"], "batch-response");
    let st: Vec<&str> = out["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(st, vec!["201 Created", "400 Bad Request", "404 Not Found", "201 Created", "200 OK"]);
    assert_eq!(out["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(get(&s, "Patient?gender=male&_summary=count").await.json()["total"], 1);
    s.stop().await;
}

#[tokio::test]
async fn synthea_bundles_load() {
    let Some(shared) = shared_dir() else {
        eprintln!("synthea_bundles_load: skipped (../shared not found)");
        return;
    };
    let s = TestServer::start(Backend::Sqlite).await;
    let mut files: Vec<_> = std::fs::read_dir(shared.join("samples/synthea")).unwrap().filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    files.sort();
    let mut total = 0usize;
    for f in files.iter().take(3) {
        let raw = std::fs::read(f).unwrap();
        let n = serde_json::from_slice::<Value>(&raw).unwrap()["entry"].as_array().unwrap().len();
        let r = send(client().post(s.url("")).header("content-type", "application/fhir+json").body(raw)).await;
        assert_eq!(r.status, 200, "{}: {}", f.display(), r.diagnostics());
        assert_eq!(r.json()["entry"].as_array().unwrap().len(), n);
        total += n;
    }
    // every urn:uuid reference was rewritten to a stored resource
    let obs = get(&s, "Observation?_count=50&_include=Observation:subject&_include=Observation:encounter").await.json();
    for e in obs["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "match") {
        let r = e["resource"]["subject"]["reference"].as_str().unwrap();
        assert!(r.starts_with("Patient/"), "{r}");
    }
    assert!(obs["entry"].as_array().unwrap().iter().any(|e| e["search"]["mode"] == "include" && e["resource"]["resourceType"] == "Patient"));
    let mut stored = 0;
    for t in ["Patient", "Observation", "Encounter", "Claim", "ExplanationOfBenefit", "Procedure", "Immunization", "DiagnosticReport", "MedicationRequest", "Condition", "CarePlan", "Goal", "Organization", "Practitioner", "AllergyIntolerance", "ImagingStudy"] {
        stored += get(&s, &format!("{t}?_summary=count")).await.json()["total"].as_u64().unwrap() as usize;
    }
    assert_eq!(stored, total, "every entry stored once");
    s.stop().await;
}
