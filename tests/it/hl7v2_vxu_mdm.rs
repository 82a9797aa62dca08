//! HL7 v2 VXU^V04 (→ Immunization) and MDM^T01–T11 (→ DocumentReference)
//! end to end: `POST /hl7v2` through the translation and the one write
//! pipeline into the store; idempotent re-delivery, an edit (T08) updating
//! the same DocumentReference, an addendum (T06) linking to it, and AE with
//! the ERR location for the `bad-*` fixtures (nothing stored).

use crate::common::*;
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("hl7v2").join(name)).unwrap()
}

async fn post_v2(s: &TestServer, body: Vec<u8>) -> Resp {
    send(
        client()
            .post(s.url("hl7v2"))
            .header("content-type", "x-application/hl7-v2+er7")
            .body(body),
    )
    .await
}

fn msa(ack: &str) -> String {
    ack.split(['\r', '\n'])
        .find(|l| l.starts_with("MSA|"))
        .unwrap_or("")
        .split('|')
        .nth(1)
        .unwrap_or("")
        .to_owned()
}

async fn count(s: &TestServer, query: &str) -> i64 {
    get(
        s,
        &format!(
            "{query}{}_summary=count",
            if query.contains('?') { "&" } else { "?" }
        ),
    )
    .await
    .json()["total"]
        .as_i64()
        .unwrap()
}

async fn history_len(s: &TestServer) -> usize {
    get(s, "_history?_count=1000").await.json()["entry"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxu_is_stored_as_immunization_and_redelivery_is_a_no_op() {
    let s = TestServer::start(Backend::Sqlite).await;
    let r = post_v2(&s, fixture("vxu-v04-de.hl7")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(msa(&r.text), "AA", "{}", r.text);
    let b = get(
        &s,
        "Immunization?vaccine-code=http://hl7.org/fhir/sid/cvx|03",
    )
    .await
    .json();
    let entries = b["entry"].as_array().expect("an Immunization");
    assert_eq!(entries.len(), 1, "{b}");
    let imm = &entries[0]["resource"];
    assert_eq!(imm["status"], "completed");
    assert_eq!(imm["lotNumber"], "AB123C");
    // the patient is found by KVNR and the Immunization points at it
    let p = get(
        &s,
        "Patient?identifier=http://fhir.de/sid/gkv/kvid-10|K220645122",
    )
    .await
    .json();
    let pid = p["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();
    assert_eq!(p["entry"][0]["resource"]["name"][0]["family"], "Schröder");
    assert_eq!(imm["patient"]["reference"], format!("Patient/{pid}"));
    assert_eq!(
        count(&s, &format!("Observation?subject=Patient/{pid}")).await,
        4
    );
    // re-delivery: AA, only the Provenance (recorded) may get a version
    let before = history_len(&s).await;
    let again = post_v2(&s, fixture("vxu-v04-de.hl7")).await;
    assert_eq!(msa(&again.text), "AA", "{}", again.text);
    assert!(history_len(&s).await - before <= 1);
    assert_eq!(count(&s, "Immunization").await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdm_documents_edits_and_addenda() {
    let s = TestServer::start(Backend::Sqlite).await;
    let r = post_v2(&s, fixture("mdm-t02-de.hl7")).await;
    assert_eq!(msa(&r.text), "AA", "{}", r.text);
    let find = |b: Value| b["entry"][0]["resource"].clone();
    let d1 = find(
        get(&s, "DocumentReference?identifier=DOC-2024-4711")
            .await
            .json(),
    );
    assert_eq!(d1["docStatus"], "final", "{d1}");
    assert_eq!(d1["meta"]["versionId"], "1");
    let id = d1["id"].as_str().unwrap().to_owned();
    // re-delivery changes nothing
    let again = post_v2(&s, fixture("mdm-t02-de.hl7")).await;
    assert_eq!(msa(&again.text), "AA");
    let same = get(&s, &format!("DocumentReference/{id}")).await.json();
    assert_eq!(same["meta"]["versionId"], "1", "idempotent: {same}");
    // the edit (T08) updates the same DocumentReference
    let r = post_v2(&s, fixture("mdm-t08-de.hl7")).await;
    assert_eq!(msa(&r.text), "AA", "{}", r.text);
    let d2 = get(&s, &format!("DocumentReference/{id}")).await.json();
    assert_eq!(d2["meta"]["versionId"], "2");
    assert_eq!(d2["docStatus"], "amended");
    assert_ne!(d2["content"], d1["content"]);
    assert_eq!(count(&s, "DocumentReference").await, 1);
    // the addendum (T06) is a second document that appends to the first
    let r = post_v2(&s, fixture("mdm-t06-de.hl7")).await;
    assert_eq!(msa(&r.text), "AA", "{}", r.text);
    let add = find(
        get(&s, "DocumentReference?identifier=DOC-2024-4712")
            .await
            .json(),
    );
    assert_eq!(add["relatesTo"][0]["code"], "appends");
    assert_eq!(
        add["relatesTo"][0]["target"]["reference"],
        format!("DocumentReference/{id}")
    );
    // the PDF
    let r = post_v2(&s, fixture("mdm-t02-pdf.hl7")).await;
    assert_eq!(msa(&r.text), "AA", "{}", r.text);
    let pdf = find(
        get(&s, "DocumentReference?identifier=DOC-2024-4713")
            .await
            .json(),
    );
    assert_eq!(
        pdf["content"][0]["attachment"]["contentType"],
        "application/pdf"
    );
    assert_eq!(count(&s, "DocumentReference").await, 3);
    s.stop().await;
}

#[tokio::test]
async fn bad_vxu_and_mdm_answer_ae_with_the_field_and_store_nothing() {
    let s = TestServer::start(Backend::Sqlite).await;
    for (f, erl) in [
        ("bad-vxu-missing-vaccine.hl7", "RXA^1^5"),
        ("bad-mdm-missing-docnumber.hl7", "TXA^1^12"),
    ] {
        let r = post_v2(&s, fixture(f)).await;
        assert_eq!(r.status, 422, "{f}: {}", r.text);
        assert_eq!(msa(&r.text), "AE", "{f}: {}", r.text);
        let err = r
            .text
            .split(['\r', '\n'])
            .find(|l| l.starts_with("ERR|"))
            .unwrap_or_else(|| panic!("{f}: no ERR in {}", r.text));
        assert!(err.contains(erl), "{f}: {err}");
        assert!(err.contains("101"), "{f}: {err}");
    }
    assert_eq!(count(&s, "Patient").await, 0);
    assert_eq!(count(&s, "Provenance").await, 0);
    s.stop().await;
}
