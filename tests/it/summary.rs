//! `Patient/[id]/$summary` (IPS document) and `$everything` across linked
//! records, from `fixtures/summary/`: de-duplication of clinically identical
//! entries of two institutions (kept once, sources in Provenance), no merge
//! of different codes or different times, empty-section reasons, paging,
//! `_type`/`_since`, 404 for unknown patients, and core validity of the
//! document.

use crate::common::*;
use serde_json::Value;

async fn load(s: &TestServer, name: &str) {
    let b: Value = serde_json::from_slice(&std::fs::read(fixtures().join("summary").join(name)).unwrap()).unwrap();
    let r = post_json(s, "", &b).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

fn section<'a>(doc: &'a Value, loinc: &str) -> Option<&'a Value> {
    doc["entry"][0]["resource"]["section"].as_array().unwrap().iter().find(|s| s["code"]["coding"][0]["code"] == loinc)
}

fn refs(sec: &Value) -> Vec<String> {
    let mut v: Vec<String> = sec["entry"].as_array().map(|a| a.iter().map(|e| e["reference"].as_str().unwrap().to_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn summary_deduplicates_across_institutions() {
    let s = TestServer::start(Backend::Sqlite).await;
    load(&s, "two-institutions.json").await;
    // asked from either record, the person is the same
    for subject in ["kh-nord-4711", "hausarzt-eppendorf-88"] {
        let r = get(&s, &format!("Patient/{subject}/$summary")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let doc = r.json();
        assert_eq!(doc["type"], "document");
        assert!(doc["identifier"]["value"].is_string() && doc["timestamp"].is_string());
        let comp = &doc["entry"][0]["resource"];
        assert_eq!(comp["resourceType"], "Composition");
        assert_eq!(comp["type"]["coding"][0]["code"], "60591-5");
        assert_eq!(comp["subject"]["reference"], format!("Patient/{subject}"));
        assert_eq!(doc["entry"][1]["resource"]["id"], subject, "the subject follows the Composition");
        // problems: the heart failure once (the subject's own record wins), diabetes, the old episode; no entered-in-error
        let problems = refs(section(&doc, "11450-4").expect("problems"));
        let own_hf = if subject == "kh-nord-4711" { "Condition/kh-cond-hf" } else { "Condition/gp-cond-hf" };
        let mut want = vec![own_hf.to_owned(), "Condition/gp-cond-dm".to_owned(), "Condition/gp-cond-hf-old".to_owned()];
        want.sort();
        assert_eq!(problems, want, "{subject}");
        // the merge is explained: a Provenance with both sources
        let prov: Vec<&Value> = doc["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).filter(|r| r["resourceType"] == "Provenance").collect();
        assert_eq!(prov.len(), 1, "one merged group");
        assert_eq!(prov[0]["target"][0]["reference"], own_hf);
        let mut sources: Vec<&str> = prov[0]["entity"].as_array().unwrap().iter().map(|e| e["what"]["reference"].as_str().unwrap()).collect();
        sources.sort();
        assert_eq!(sources, vec!["Condition/gp-cond-hf", "Condition/kh-cond-hf"]);
        assert_eq!(refs(section(&doc, "48765-2").unwrap()), vec!["AllergyIntolerance/gp-allergy-pen"]);
        assert_eq!(refs(section(&doc, "10160-0").unwrap()), vec!["MedicationStatement/gp-med-bisoprolol"]);
        assert_eq!(refs(section(&doc, "11369-6").unwrap()), vec!["Immunization/gp-imm-flu"]);
        assert_eq!(refs(section(&doc, "30954-2").unwrap()), vec!["Observation/kh-ntprobnp"]);
        assert_eq!(refs(section(&doc, "8716-3").unwrap()), vec!["Observation/kh-weight"]);
        assert_eq!(refs(section(&doc, "47519-4").unwrap()), vec!["Procedure/kh-proc-echo"]);
        assert!(section(&doc, "18776-5").is_none(), "empty optional sections are omitted");
        // every section has a narrative; the dropped duplicate is not in the document
        for sec in comp["section"].as_array().unwrap() {
            assert!(sec["text"]["div"].as_str().unwrap().starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\">"));
        }
        let ids: Vec<String> = doc["entry"].as_array().unwrap().iter().map(|e| format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())).collect();
        let dropped = if subject == "kh-nord-4711" { "Condition/gp-cond-hf" } else { "Condition/kh-cond-hf" };
        assert!(!ids.contains(&dropped.to_owned()), "{ids:?}");
        assert!(!ids.contains(&"Condition/kh-cond-error".to_owned()));
        // referenced resources are included: the practitioner, the encounter, the author
        for needed in ["Practitioner/dr-schulz", "Organization/carebridge-gateway", &format!("Patient/{subject}")] {
            assert!(ids.contains(&needed.to_owned()), "{needed} missing: {ids:?}");
        }
        // IPS: one Patient entry; the other institution's entries now point at the subject
        let other = if subject == "kh-nord-4711" { "hausarzt-eppendorf-88" } else { "kh-nord-4711" };
        assert!(!ids.contains(&format!("Patient/{other}")), "{ids:?}");
        assert!(!r.text.contains(&format!("\"Patient/{other}\"")), "a reference to the other record is left");
        let dm = doc["entry"].as_array().unwrap().iter().find(|e| e["resource"]["id"] == "gp-cond-dm").unwrap();
        assert_eq!(dm["resource"]["subject"]["reference"], format!("Patient/{subject}"));
        // fullUrls are absolute and unique
        let urls: std::collections::HashSet<&str> = doc["entry"].as_array().unwrap().iter().map(|e| e["fullUrl"].as_str().unwrap()).collect();
        assert_eq!(urls.len(), doc["entry"].as_array().unwrap().len());
        assert!(urls.iter().all(|u| u.starts_with("http://")));
        // the document is valid FHIR R4 (core)
        let v = post_json(&s, "Bundle/$validate", &doc).await.json();
        let errors: Vec<&Value> = v["issue"].as_array().unwrap().iter().filter(|i| i["severity"] == "error" || i["severity"] == "fatal").collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn summary_empty_and_unknown() {
    let s = TestServer::start(Backend::Sqlite).await;
    load(&s, "no-data.json").await;
    let doc = get(&s, "Patient/no-data/$summary").await.json();
    let secs = doc["entry"][0]["resource"]["section"].as_array().unwrap();
    let codes: Vec<&str> = secs.iter().map(|s| s["code"]["coding"][0]["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["11450-4", "48765-2", "10160-0"], "only the required sections, empty");
    for sec in secs {
        assert_eq!(sec["emptyReason"]["coding"][0]["code"], "unavailable");
        assert!(sec.get("entry").is_none());
    }
    let r = get(&s, "Patient/nobody/$summary").await;
    assert_outcome(&r, 404);
    let r = get(&s, "Patient/nobody/$everything").await;
    assert_outcome(&r, 404);
    let r = send(client().delete(s.url("Patient/no-data/$summary"))).await;
    assert_outcome(&r, 405);
    s.stop().await;
}

#[tokio::test]
async fn everything_across_linked_records_sqlite() {
    everything_across_linked_records(Backend::Sqlite).await;
}

#[tokio::test]
async fn everything_across_linked_records_postgres() {
    if postgres_url().is_none() {
        eprintln!("everything_across_linked_records_postgres: skipped (CAREBRIDGE_TEST_POSTGRES not set)");
        return;
    }
    everything_across_linked_records(Backend::Postgres).await;
}

async fn everything_across_linked_records(backend: Backend) {
    let s = TestServer::start(backend).await;
    load(&s, "two-institutions.json").await;
    let all = get(&s, "Patient/hausarzt-eppendorf-88/$everything").await;
    assert_eq!(all.status, 200, "{}", all.text);
    let all = all.json();
    assert_eq!(all["type"], "searchset");
    // every resource of the fixture (both records' compartments and what they
    // reference) plus what the MPI wrote when it linked the two records: the
    // Person and the AuditEvent of the link decision (both in the compartment)
    assert_eq!(all["total"], 17, "{all}");
    let types: Vec<&str> = all["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "Person").count(), 1, "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "AuditEvent").count(), 1, "{types:?}");
    let ids: Vec<String> = all["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids[0], "hausarzt-eppendorf-88", "the patient comes first");
    assert!(ids.contains(&"kh-cond-error".to_owned()), "$everything hides nothing");
    // paging with _count: pages cover the set exactly once
    let mut seen = vec![];
    let mut url = s.url("Patient/hausarzt-eppendorf-88/$everything?_count=4");
    let mut pages = 0;
    loop {
        let b = send(client().get(&url)).await.json();
        pages += 1;
        seen.extend(b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()));
        match b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(n) => url = n["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let mut a = seen.clone();
    a.sort();
    let mut b = ids.clone();
    b.sort();
    assert_eq!(a, b);
    // _type
    let conds = get(&s, "Patient/kh-nord-4711/$everything?_type=Condition").await.json();
    assert_eq!(conds["total"], 5, "{conds}");
    assert!(conds["entry"].as_array().unwrap().iter().all(|e| e["resource"]["resourceType"] == "Condition"));
    let r = get(&s, "Patient/kh-nord-4711/$everything?_type=Nonsense").await;
    assert_outcome(&r, 400);
    // _since: nothing changed after now
    let later = get(&s, "Patient/kh-nord-4711/$everything?_since=2999-01-01T00:00:00Z").await.json();
    assert_eq!(later["total"], 0);
    let r = get(&s, "Patient/kh-nord-4711/$everything?_since=yesterday").await;
    assert_outcome(&r, 400);
    s.stop().await;
}

#[tokio::test]
async fn summary_follows_the_master_patient_index() {
    // two institutions' records with the same KVNR and no explicit link: the
    // MPI links them deterministically, and the summary spans both
    let s = TestServer::start(Backend::Sqlite).await;
    let p = |id: &str, family: &str| serde_json::json!({"resourceType": "Patient", "id": id, "identifier": [{"system": "http://fhir.de/sid/gkv/kvid-10", "value": "X110411319"}], "name": [{"family": family, "given": ["Jürgen"]}], "gender": "male", "birthDate": "1956-03-14"});
    assert_eq!(put_json(&s, "Patient/mpi-a", &p("mpi-a", "Müller")).await.status, 201);
    assert_eq!(put_json(&s, "Patient/mpi-b", &p("mpi-b", "Mueller")).await.status, 201);
    let cond = serde_json::json!({"resourceType": "Condition", "id": "mpi-b-cond", "subject": {"reference": "Patient/mpi-b"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "code": "E11.9"}]}});
    assert_eq!(put_json(&s, "Condition/mpi-b-cond", &cond).await.status, 201);
    let doc = get(&s, "Patient/mpi-a/$summary").await.json();
    assert_eq!(refs(section(&doc, "11450-4").unwrap()), vec!["Condition/mpi-b-cond"], "{doc}");
    s.stop().await;
}
