//! The storage suite: one set of checks written once, run on SQLite always and
//! on PostgreSQL when `CAREBRIDGE_TEST_POSTGRES` holds a server URL. Each
//! check talks to the real server over HTTP.

use crate::common::*;
use carebridge::services::ValidationMode;
use serde_json::{json, Value};

async fn suite(backend: Backend) {
    let s = TestServer::start(backend).await;
    crud_and_history(&s).await;
    exact_decimals_valid(&s).await;
    {
        // unknown elements are kept when validation does not reject them
        let w = TestServer::start_opts(backend, Default::default(), ValidationMode::Warn).await;
        exact_bytes(&w).await;
        w.stop().await;
    }
    transaction_atomic(&s).await;
    conditional_create_race(&s).await;
    paging_under_writes(&s).await;
    concurrent_updates(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_suite_sqlite() {
    suite(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_suite_postgres() {
    if postgres_url().is_none() {
        eprintln!("storage_suite_postgres: skipped (CAREBRIDGE_TEST_POSTGRES not set)");
        return;
    }
    suite(Backend::Postgres).await;
}

async fn crud_and_history(s: &TestServer) {
    let r = post_json(s, "Patient", &json!({"resourceType": "Patient", "name": [{"family": "Storage"}]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("etag").as_deref(), Some("W/\"1\""));
    assert!(r.header("last-modified").is_some());
    let loc = r.header("location").expect("Location");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert!(loc.ends_with(&format!("/Patient/{id}/_history/1")), "{loc}");

    let r = get(s, &format!("Patient/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["meta"]["versionId"], "1");

    // update → version 2
    let r = put_json(s, &format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id, "name": [{"family": "Storage2"}]})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("etag").as_deref(), Some("W/\"2\""));
    // vread v1 still has the old name
    let r = get(s, &format!("Patient/{id}/_history/1")).await;
    assert_eq!(r.json()["name"][0]["family"], "Storage");
    // create-on-update with a client id
    let r = put_json(s, "Patient/client-chosen-1", &json!({"resourceType": "Patient", "id": "client-chosen-1"})).await;
    assert_eq!(r.status, 201, "{}", r.text);

    // delete → 410, history shows 3 versions newest first
    let r = delete(s, &format!("Patient/{id}")).await;
    assert_eq!(r.status, 204);
    assert_outcome(&get(s, &format!("Patient/{id}")).await, 410);
    let h = get(s, &format!("Patient/{id}/_history")).await.json();
    assert_eq!(h["type"], "history");
    let methods: Vec<&str> = h["entry"].as_array().unwrap().iter().map(|e| e["request"]["method"].as_str().unwrap()).collect();
    assert_eq!(methods, vec!["DELETE", "PUT", "POST"]);
    // an update with identical content is a no-op: no new version
    let same = put_json(s, "Patient/client-chosen-1", &json!({"resourceType": "Patient", "id": "client-chosen-1"})).await;
    assert_eq!(same.status, 200);
    assert_eq!(same.header("etag").as_deref(), Some("W/\"1\""));
    // re-create after delete continues the version line
    let r = put_json(s, &format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id})).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("etag").as_deref(), Some("W/\"4\""));
    // _since / _at bound the versions by lastUpdated
    let v2_time = h["entry"][1]["response"]["lastModified"].as_str().unwrap().to_owned();
    let since = get(s, &format!("Patient/{id}/_history?_since={}", v2_time.replace('+', "%2B"))).await.json();
    let since_methods: Vec<&str> = since["entry"].as_array().unwrap().iter().map(|e| e["request"]["method"].as_str().unwrap()).collect();
    assert_eq!(since_methods, vec!["PUT", "DELETE", "PUT"], "v4, v3, v2 — not v1");
    assert_outcome(&get(s, &format!("Patient/{id}/_history?_since=yesterday")).await, 400);
    // type and system history include it
    let th = get(s, "Patient/_history?_count=100").await.json();
    assert!(th["entry"].as_array().unwrap().len() >= 5);
    let sh = get(s, "_history?_count=2").await.json();
    assert_eq!(sh["entry"].as_array().unwrap().len(), 2);
    let next = sh["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").expect("next link")["url"].as_str().unwrap().to_owned();
    let sh2 = send(client().get(next)).await.json();
    assert_eq!(sh2["entry"].as_array().unwrap().len(), 2);
    assert_ne!(sh["entry"][0]["response"]["lastModified"].as_str().map(|_| sh["entry"][1]["fullUrl"].clone()), Some(sh2["entry"][0]["fullUrl"].clone()));
}

async fn exact_decimals_valid(s: &TestServer) {
    let raw = r#"{"resourceType":"Observation","status":"final","code":{"text":"weight"},"valueQuantity":{"value":67.50,"unit":"kg"},"referenceRange":[{"low":{"value":-0.0},"high":{"value":100.000}}],"extension":[{"url":"http://example.org/x","valueDecimal":2.10}]}"#;
    let r = send(client().post(s.url("Observation")).header("content-type", "application/fhir+json").body(raw)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let read = get(s, &format!("Observation/{}", r.json()["id"].as_str().unwrap())).await.text;
    for frag in [r#""value":67.50"#, r#""value":-0.0"#, r#""value":100.000"#, r#""valueDecimal":2.10"#] {
        assert!(read.contains(frag), "{frag} in {read}");
    }
    // the same content with an unknown element is rejected (422) under enforced validation
    let bad = raw.replacen(r#""status":"final","#, r#""status":"final","unknownElement":1,"#, 1);
    let r = send(client().post(s.url("Observation")).header("content-type", "application/fhir+json").body(bad)).await;
    assert_outcome(&r, 422);
    assert!(r.text.contains("Observation.unknownElement"), "{}", r.text);
}

async fn exact_bytes(s: &TestServer) {
    let raw = r#"{"resourceType":"Observation","status":"final","code":{"text":"weight"},"valueQuantity":{"value":67.50,"unit":"kg"},"component":[{"code":{"text":"x"},"valueDecimal":100.000},{"code":{"text":"y"},"valueDecimal":-0.0}],"unknownElement":{"keep":[1,2.10]},"extension":[{"url":"http://example.org/x","valueString":"ü"}]}"#;
    let r = send(client().post(s.url("Observation")).header("content-type", "application/fhir+json").body(raw)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let read = get(s, &format!("Observation/{id}")).await.text;
    assert!(read.contains(r#""valueQuantity":{"value":67.50,"unit":"kg"}"#), "{read}");
    assert!(read.contains(r#""valueDecimal":100.000}"#), "{read}");
    assert!(read.contains(r#""valueDecimal":-0.0}"#), "{read}");
    assert!(read.contains(r#""unknownElement":{"keep":[1,2.10]}"#), "{read}");
    // key order kept: status before code before valueQuantity
    let (a, b, c) = (read.find("\"status\"").unwrap(), read.find("\"code\"").unwrap(), read.find("\"valueQuantity\"").unwrap());
    assert!(a < b && b < c);
    assert!(read.find("\"id\"").unwrap() < a && read.find("\"meta\"").unwrap() < a);
}

async fn transaction_atomic(s: &TestServer) {
    let before = get(s, "Patient?family=Atomic&_summary=count").await.json()["total"].as_i64().unwrap();
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111", "resource": {"resourceType": "Patient", "name": [{"family": "Atomic"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}}, "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Patient", "id": "bad", "name": [{"family": "Atomic"}]}, "request": {"method": "PUT", "url": "Patient/other"}}
    ]});
    let r = post_json(s, "", &tx).await;
    assert_outcome(&r, 400);
    assert!(r.text.contains("Bundle.entry[2]"), "error names the entry: {}", r.text);
    let after = get(s, "Patient?family=Atomic&_summary=count").await.json()["total"].as_i64().unwrap();
    assert_eq!(before, after, "a failed transaction stored nothing");
}

async fn conditional_create_race(s: &TestServer) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = s.url("Patient");
        set.spawn(async move {
            send(client()
                .post(url)
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "identifier=urn:race|42")
                .body(r#"{"resourceType":"Patient","identifier":[{"system":"urn:race","value":"42"}]}"#))
            .await
            .status
        });
    }
    let mut created = 0;
    while let Some(st) = set.join_next().await {
        let st = st.unwrap();
        assert!(st == 201 || st == 200, "status {st}");
        if st == 201 {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    let n = get(s, "Patient?identifier=urn:race|42&_summary=count").await.json()["total"].as_i64().unwrap();
    assert_eq!(n, 1, "exactly one resource for one identifier");
}

async fn paging_under_writes(s: &TestServer) {
    // 45 matching resources, pages of 10, while another task updates and creates
    let entries: Vec<Value> = (0..45)
        .map(|i| json!({"resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}, "identifier": [{"system": "urn:page", "value": i.to_string()}]}, "request": {"method": "POST", "url": "Encounter"}}))
        .collect();
    let r = post_json(s, "", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ids: Vec<String> = r.json()["entry"].as_array().unwrap().iter().map(|e| e["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned()).collect();
    let writer = {
        let (url, ids) = (s.base.clone(), ids.clone());
        tokio::spawn(async move {
            for (k, id) in ids.iter().enumerate().take(30) {
                let body = json!({"resourceType": "Encounter", "id": id, "status": "finished", "class": {"code": "AMB"}, "identifier": [{"system": "urn:page", "value": k.to_string()}]});
                send(client().put(format!("{url}/Encounter/{id}")).header("content-type", "application/fhir+json").body(body.to_string())).await;
                send(client().post(format!("{url}/Encounter")).header("content-type", "application/fhir+json").body(r#"{"resourceType":"Encounter","status":"planned","class":{"code":"AMB"}}"#)).await;
            }
        })
    };
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut url = s.url("Encounter?identifier=urn:page|&_count=10");
    loop {
        let b = send(client().get(&url)).await.json();
        for id in match_ids(&b) {
            *seen.entry(id).or_default() += 1;
        }
        match b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(n) => url = n["url"].as_str().unwrap().to_owned(),
            None => break,
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    writer.await.unwrap();
    assert_eq!(seen.len(), 45, "every match visited");
    assert!(seen.values().all(|&n| n == 1), "no match visited twice: {seen:?}");
}

async fn concurrent_updates(s: &TestServer) {
    let r = put_json(s, "Patient/concurrent-1", &json!({"resourceType": "Patient", "id": "concurrent-1"})).await;
    assert_eq!(r.status, 201);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = s.url("Patient/concurrent-1");
        set.spawn(async move {
            let r = send(client().put(url).header("content-type", "application/fhir+json").body(format!(r#"{{"resourceType":"Patient","id":"concurrent-1","birthDate":"2000-01-{:02}"}}"#, i + 1))).await;
            (r.status, r.header("etag"))
        });
    }
    let mut versions = std::collections::BTreeSet::from([1usize]);
    while let Some(r) = set.join_next().await {
        let (st, etag) = r.unwrap();
        assert!(st == 200 || st == 409, "status {st}");
        if let Some(e) = etag {
            versions.insert(e.trim_start_matches("W/").trim_matches('"').parse::<usize>().unwrap());
        }
    }
    let v = get(s, "Patient/concurrent-1").await.json()["meta"]["versionId"].as_str().unwrap().parse::<usize>().unwrap();
    // versions answered (new ones, or the current one for a no-op update) are exactly 1..=v: none lost, none twice
    assert_eq!(versions, (1..=v).collect(), "every version accounted for");
    let h = get(s, "Patient/concurrent-1/_history?_count=100").await.json();
    assert_eq!(h["entry"].as_array().unwrap().len(), v);
}
