//! Bulk Data export (FHIR Bulk Data Access 2.0.0) end to end on SQLite and
//! (with `CAREBRIDGE_TEST_POSTGRES`) PostgreSQL: kick-off rules, polling,
//! the manifest, NDJSON content, `_type`, `_since`, `_typeFilter`,
//! Patient- and Group-level exports, cancel, files for their client only,
//! and the insurer's de-identified export.

use crate::common::*;
use carebridge::api::ApiConfig;
use carebridge::report::ReportConfig;
use serde_json::{json, Value};

const A: &str = "client-a;operator";
const B: &str = "client-b;operator";
const INS: &str = "insurer-client;insurer;aok";

fn req(method: reqwest::Method, s: &TestServer, path: &str, caller: &str) -> reqwest::RequestBuilder {
    client().request(method, s.url(path)).header("x-carebridge-dev-caller", caller)
}

pub(crate) async fn kick_off(s: &TestServer, path: &str, caller: &str) -> String {
    let r = send(req(reqwest::Method::GET, s, path, caller).header("prefer", "respond-async").header("accept", "application/fhir+json")).await;
    assert_eq!(r.status, 202, "{path}: {}", r.text);
    r.header("content-location").expect("Content-Location")
}

pub(crate) async fn wait(status_url: &str, caller: &str) -> Value {
    for _ in 0..600 {
        let r = send(client().get(status_url).header("x-carebridge-dev-caller", caller)).await;
        match r.status {
            202 => {
                assert!(r.header("x-progress").is_some());
                assert_eq!(r.header("retry-after").as_deref(), Some("1"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            200 => return r.json(),
            s => panic!("status {s}: {}", r.text),
        }
    }
    panic!("export did not finish");
}

pub(crate) async fn lines(url: &str, caller: &str) -> Vec<Value> {
    let r = send(client().get(url).header("x-carebridge-dev-caller", caller)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type").as_deref(), Some("application/fhir+ndjson"));
    r.text.lines().map(|l| serde_json::from_str(l).expect("one JSON resource per line")).collect()
}

pub(crate) fn output<'a>(m: &'a Value, t: &str) -> Option<&'a Value> {
    m["output"].as_array().unwrap().iter().find(|o| o["type"] == t)
}

async fn suite(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ApiConfig {
        report: ReportConfig { export_dir: dir.path().to_path_buf(), export_page: 3, ..Default::default() },
        dev_caller_header: true,
        ..Default::default()
    };
    let s = TestServer::start_with(backend, cfg).await;
    let bundle: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("reports/population.json")).unwrap()).unwrap();
    assert_eq!(post_json(&s, "", &bundle).await.status, 200);

    // kick-off rules
    let r = send(req(reqwest::Method::GET, &s, "$export", A)).await;
    assert_outcome(&r, 400); // no Prefer: respond-async
    for bad in ["$export?_type=Nope", "$export?_outputFormat=text/csv", "$export?_since=yesterday", "$export?_typeFilter=Encounter%3Fbogus-param%3D1", "Patient/$export?_type=Organization", "Group/nope/$export"] {
        let r = send(req(reqwest::Method::GET, &s, bad, A).header("prefer", "respond-async")).await;
        assert!(r.status == 400 || r.status == 404, "{bad}: {} {}", r.status, r.text);
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }

    // system level, _type
    let status = kick_off(&s, "$export?_type=Patient,Encounter", A).await;
    assert!(status.contains("/_export/status/"));
    let m = wait(&status, A).await;
    assert!(m["transactionTime"].is_string());
    assert!(m["request"].as_str().unwrap().contains("$export?_type=Patient%2CEncounter") || m["request"].as_str().unwrap().contains("_type=Patient"));
    assert_eq!(m["requiresAccessToken"], true);
    assert_eq!(m["error"], json!([]));
    assert_eq!(m["output"].as_array().unwrap().len(), 2, "{m}");
    let pat = output(&m, "Patient").unwrap();
    assert_eq!(pat["count"], 6);
    let pats = lines(pat["url"].as_str().unwrap(), A).await;
    assert_eq!(pats.len(), 6);
    assert!(pats.iter().all(|p| p["resourceType"] == "Patient"));
    assert!(pats.iter().any(|p| p["id"] == "pa1" && p["name"][0]["family"] == "Albers"), "stored content as is");
    let encs = lines(output(&m, "Encounter").unwrap()["url"].as_str().unwrap(), A).await;
    assert_eq!(encs.len(), 10);

    // another client sees neither the status nor the files
    assert_outcome(&send(client().get(&status).header("x-carebridge-dev-caller", B)).await, 403);
    assert_outcome(&send(client().get(pat["url"].as_str().unwrap()).header("x-carebridge-dev-caller", B)).await, 403);
    assert_outcome(&send(client().get(s.url("_export/file/nope/Patient.ndjson")).header("x-carebridge-dev-caller", A)).await, 404);

    // _typeFilter: only inpatient stays
    let st = kick_off(&s, "$export?_type=Encounter&_typeFilter=Encounter%3Fclass%3DIMP", A).await;
    let m = wait(&st, A).await;
    let imp = lines(output(&m, "Encounter").unwrap()["url"].as_str().unwrap(), A).await;
    assert_eq!(imp.len(), 7);
    assert!(imp.iter().all(|e| e["class"]["code"] == "IMP"));

    // _since: only what changed after
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since = carebridge::fhir::datetime::format_instant(carebridge::fhir::datetime::now_micros());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut p = get(&s, "Patient/pc2").await.json();
    p["gender"] = json!("other");
    assert_eq!(put_json(&s, "Patient/pc2", &p).await.status, 200);
    let st = kick_off(&s, &format!("$export?_since={}", since.replace('+', "%2B")), A).await;
    let m = wait(&st, A).await;
    let pats = lines(output(&m, "Patient").unwrap()["url"].as_str().unwrap(), A).await;
    assert_eq!(pats.iter().map(|p| p["id"].as_str().unwrap()).collect::<Vec<_>>(), vec!["pc2"]);
    assert!(output(&m, "Encounter").is_none(), "{m}");

    // Patient level: compartment types only (no Organization)
    let st = kick_off(&s, "Patient/$export", A).await;
    let m = wait(&st, A).await;
    assert!(output(&m, "Organization").is_none());
    assert_eq!(output(&m, "Condition").unwrap()["count"], 4);

    // Group level: the members' compartments
    let g = json!({"resourceType": "Group", "id": "cohort", "type": "person", "actual": true,
        "member": [{"entity": {"reference": "Patient/pe4"}}, {"entity": {"reference": "Patient/pf5"}}]});
    assert_eq!(put_json(&s, "Group/cohort", &g).await.status, 201);
    let st = kick_off(&s, "Group/cohort/$export?_type=Patient,Encounter", A).await;
    let m = wait(&st, A).await;
    let mut ids: Vec<String> = lines(output(&m, "Encounter").unwrap()["url"].as_str().unwrap(), A).await.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, vec!["e10", "e7", "e8", "e9"]);

    // cancel: 202, then the status URL and the files are gone
    let st = kick_off(&s, "$export", A).await;
    let r = send(client().delete(&st).header("x-carebridge-dev-caller", B)).await;
    assert_outcome(&r, 403);
    let r = send(client().delete(&st).header("x-carebridge-dev-caller", A)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_outcome(&send(client().get(&st).header("x-carebridge-dev-caller", A)).await, 404);
    let job = st.rsplit('/').next().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!dir.path().join(job).exists(), "files removed");

    // the insurer: de-identified, identity/audit types withheld
    let r = send(req(reqwest::Method::GET, &s, "$export?_type=Person", INS).header("prefer", "respond-async")).await;
    assert_outcome(&r, 403);
    let st = kick_off(&s, "$export?_type=Patient,Encounter,Condition,Organization", INS).await;
    let m = wait(&st, INS).await;
    let pats = lines(output(&m, "Patient").unwrap()["url"].as_str().unwrap(), INS).await;
    assert_eq!(pats.len(), 6);
    for p in &pats {
        let id = p["id"].as_str().unwrap();
        assert_eq!(id.len(), 32, "pseudonymous id");
        assert!(!id.starts_with('p'));
        for gone in ["name", "identifier", "address", "telecom", "text", "meta"] {
            assert!(p.get(gone).is_none(), "{gone} removed: {p}");
        }
        assert_eq!(p["birthDate"].as_str().unwrap().len(), 4, "birth year only");
    }
    let encs = lines(output(&m, "Encounter").unwrap()["url"].as_str().unwrap(), INS).await;
    let pat_ids: Vec<&str> = pats.iter().map(|p| p["id"].as_str().unwrap()).collect();
    for e in &encs {
        let subj = e["subject"]["reference"].as_str().unwrap();
        assert!(pat_ids.contains(&subj.trim_start_matches("Patient/")), "references follow the pseudonyms");
        assert_eq!(e["period"]["start"].as_str().unwrap().len(), 7, "dates to year-month");
        assert!(e["serviceProvider"]["reference"].as_str().unwrap().starts_with("Organization/hosp-") || e["serviceProvider"]["reference"].as_str().unwrap().starts_with("Organization/gp-"));
    }
    let text = serde_json::to_string(&pats).unwrap() + &serde_json::to_string(&encs).unwrap();
    for needle in ["Albers", "Hamburg", "20095", "pa1", "https://hosp-a.example/mrn"] {
        assert!(!text.contains(needle), "insurer export contains {needle}");
    }
    // the same pseudonym in a second export (keyed hash, stable)
    let st2 = kick_off(&s, "$export?_type=Patient", INS).await;
    let m2 = wait(&st2, INS).await;
    let mut again: Vec<String> = lines(output(&m2, "Patient").unwrap()["url"].as_str().unwrap(), INS).await.iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect();
    let mut first: Vec<String> = pat_ids.iter().map(|x| x.to_string()).collect();
    again.sort();
    first.sort();
    assert_eq!(again, first);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_sqlite() {
    suite(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    suite(Backend::Postgres).await;
}
