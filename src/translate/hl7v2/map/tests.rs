//! Unit tests for the v2 → FHIR mapping: every supported trigger and
//! segment, on our own German-flavoured messages in `fixtures/hl7v2/`
//! (KVNR with check digit, umlauts as `\X00FC\` escapes, UTF-8 and
//! ISO 8859-1, ICD-10-GM, OPS, Europe/Berlin summer and winter time) plus
//! small inline messages for edge cases.

use serde_json::Value;

use super::ids::resource_id;
use super::prune::find_empty;
use super::types::{kvnr_valid, normalize_number};
use super::{translate, InstitutionConfig, Translation};
use crate::translate::hl7v2::{AckError, MessageBuf, Severity};

const RECEIVED: &str = "2024-03-05T10:00:00+01:00";

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/hl7v2/",
            $name
        ))
        .as_slice()
    };
}

fn cfg() -> InstitutionConfig {
    InstitutionConfig::new("klinikum-nord")
}

fn run(raw: &[u8]) -> Result<Translation, Vec<AckError>> {
    let buf = MessageBuf::from_bytes(raw).expect("parses");
    translate(&buf.message(), raw, &cfg(), RECEIVED)
}

fn ok(raw: &[u8]) -> Translation {
    let t = run(raw).unwrap_or_else(|e| panic!("translation failed: {e:?}"));
    assert_eq!(find_empty(&t.bundle), None, "empty value in output");
    t
}

/// Inline message with CR terminators.
fn msg(segments: &[&str]) -> Vec<u8> {
    let mut s = segments.join("\r");
    s.push('\r');
    s.into_bytes()
}

const MSH_A01: &str =
    "MSH|^~\\&|ORBIS|KHNORD|CAREBRIDGE|REGION|20240305103000||ADT^A01^ADT_A01|T-1|P|2.5.1";

fn all<'a>(b: &'a Value, rtype: &str) -> Vec<&'a Value> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("resource"))
        .filter(|r| r["resourceType"] == rtype)
        .collect()
}

fn one<'a>(b: &'a Value, rtype: &str) -> &'a Value {
    let v = all(b, rtype);
    assert_eq!(v.len(), 1, "expected one {rtype}, got {}", v.len());
    v[0]
}

fn by_code<'a>(b: &'a Value, rtype: &str, code: &str) -> &'a Value {
    all(b, rtype)
        .into_iter()
        .find(|r| r["code"]["coding"][0]["code"] == code)
        .unwrap_or_else(|| panic!("no {rtype} with code {code}"))
}

fn reference(r: &Value) -> String {
    format!(
        "{}/{}",
        r["resourceType"].as_str().unwrap(),
        r["id"].as_str().unwrap()
    )
}

// ---------------------------------------------------------------------------
// ADT triggers
// ---------------------------------------------------------------------------

#[test]
fn a01_admit_german_patient() {
    let t = ok(fixture!("adt-a01-de.hl7"));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.message_type, ("ADT".into(), "A01".into()));
    assert_eq!(t.control_id, "KN-0001");
    let b = &t.bundle;
    assert_eq!(b["type"], "transaction");

    // Patient: id from the first PID-3 identifier, escapes decoded, KVNR typed
    let p = one(b, "Patient");
    let want = resource_id(
        "klinikum-nord",
        "Patient",
        "urn:carebridge:klinikum-nord:mrn:KHNORD|4711",
    );
    assert_eq!(p["id"], want);
    assert_eq!(p["name"][0]["family"], "Müller");
    assert_eq!(p["name"][0]["given"][0], "Jürgen");
    assert_eq!(p["name"][0]["use"], "official");
    assert_eq!(p["name"][1]["use"], "maiden"); // XPN-7 B (Geburtsname)
    let kvnr = &p["identifier"][1];
    assert_eq!(kvnr["system"], "http://fhir.de/sid/gkv/kvid-10");
    assert_eq!(kvnr["value"], "X110411319");
    assert_eq!(kvnr["type"]["coding"][0]["code"], "KVZ10");
    assert_eq!(p["birthDate"], "1956-03-14");
    assert_eq!(p["gender"], "male");
    assert_eq!(p["address"][0]["line"][0], "Hauptstraße 5");
    assert_eq!(
        p["address"][0]["_line"][0]["extension"][1]["valueString"],
        "5"
    );
    assert_eq!(p["address"][0]["use"], "home");
    assert_eq!(p["telecom"][0]["value"], "+49 40 1234567");
    assert_eq!(p["telecom"][1]["system"], "email");
    assert_eq!(p["telecom"][2]["value"], "+49 40 7654321");
    assert_eq!(p["telecom"][2]["use"], "work");
    assert_eq!(p["maritalStatus"]["coding"][0]["code"], "M");
    assert_eq!(
        p["communication"][0]["language"]["coding"][0]["system"],
        "urn:ietf:bcp:47"
    );
    // PD1-4: general practitioner with a LANR
    let gp = &p["generalPractitioner"][0]["reference"];
    let gp_res = all(b, "Practitioner")
        .into_iter()
        .find(|x| reference(x) == gp.as_str().unwrap())
        .unwrap();
    assert_eq!(
        gp_res["identifier"][0]["system"],
        "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"
    );
    assert_eq!(
        p["managingOrganization"]["reference"],
        reference(all(b, "Organization")[0])
    );

    // Encounter
    let e = one(b, "Encounter");
    assert_eq!(e["status"], "in-progress");
    assert_eq!(e["class"]["code"], "IMP");
    assert_eq!(e["period"]["start"], "2024-03-05T10:30:00+01:00");
    assert!(e["period"].get("end").is_none());
    assert_eq!(e["identifier"][0]["value"], "V2024-0001");
    assert_eq!(
        e["id"],
        resource_id("klinikum-nord", "Encounter", "visit|V2024-0001")
    );
    assert_eq!(e["subject"]["reference"], reference(p));
    assert_eq!(e["participant"][0]["type"][0]["coding"][0]["code"], "ATND");
    assert_eq!(
        e["participant"][0]["individual"]["display"],
        "Dr. med. Anna Schulz"
    );
    assert_eq!(e["participant"][1]["type"][0]["coding"][0]["code"], "ADM");
    assert_eq!(
        e["reasonCode"][0]["coding"][0]["system"],
        "http://fhir.de/CodeSystem/bfarm/icd-10-gm"
    );
    assert_eq!(e["diagnosis"].as_array().unwrap().len(), 2);
    assert_eq!(e["diagnosis"][0]["use"]["coding"][0]["code"], "AD");
    assert_eq!(e["diagnosis"][0]["rank"], 1);
    // location: ward → room → bed
    let bed_ref = e["location"][0]["location"]["reference"].as_str().unwrap();
    assert_eq!(e["location"][0]["status"], "active");
    let locs = all(b, "Location");
    assert_eq!(locs.len(), 3);
    let bed = locs.iter().find(|l| reference(l) == bed_ref).unwrap();
    assert_eq!(bed["physicalType"]["coding"][0]["code"], "bd");
    let room = locs
        .iter()
        .find(|l| reference(l) == bed["partOf"]["reference"].as_str().unwrap())
        .unwrap();
    assert_eq!(room["name"], "201");
    let ward = locs
        .iter()
        .find(|l| reference(l) == room["partOf"]["reference"].as_str().unwrap())
        .unwrap();
    assert_eq!(ward["name"], "KARD");

    // DG1 → Condition (ICD-10-GM)
    let c = by_code(b, "Condition", "I50.13");
    assert_eq!(
        c["code"]["coding"][0]["system"],
        "http://fhir.de/CodeSystem/bfarm/icd-10-gm"
    );
    assert_eq!(
        c["code"]["coding"][0]["display"],
        "Linksherzinsuffizienz: Mit Beschwerden bei stärkerer Belastung"
    );
    assert_eq!(c["encounter"]["reference"], reference(e));
    assert_eq!(c["category"][0]["coding"][0]["code"], "encounter-diagnosis");
    assert_eq!(c["onsetDateTime"], "2024-03-05");
    by_code(b, "Condition", "E11.90");

    // PR1 → Procedure (OPS)
    let pr = by_code(b, "Procedure", "5-361.03");
    assert_eq!(
        pr["code"]["coding"][0]["system"],
        "http://fhir.de/CodeSystem/bfarm/ops"
    );
    assert_eq!(pr["status"], "completed");
    assert_eq!(pr["performedDateTime"], "2024-03-06T09:00:00+01:00");
    assert_eq!(pr["performer"][0]["function"]["text"], "surgeon");
    assert_eq!(pr["reasonCode"][0]["coding"][0]["code"], "I50.13");

    // AL1 → AllergyIntolerance
    let al = one(b, "AllergyIntolerance");
    assert_eq!(al["category"][0], "medication");
    assert_eq!(al["type"], "allergy");
    assert_eq!(al["clinicalStatus"]["coding"][0]["code"], "active");
    assert_eq!(al["reaction"][0]["manifestation"][0]["text"], "Anaphylaxie");
    assert_eq!(al["reaction"][0]["severity"], "severe");
    assert_eq!(al["onsetDateTime"], "2010-01-01");

    // IN1 → Coverage + insurer (IKNR)
    let cov = one(b, "Coverage");
    assert_eq!(cov["type"]["coding"][0]["code"], "GKV");
    assert_eq!(
        cov["identifier"][0]["system"],
        "http://fhir.de/sid/gkv/kvid-10"
    );
    assert_eq!(cov["subscriberId"], "X110411319");
    assert_eq!(cov["relationship"]["coding"][0]["code"], "self");
    assert_eq!(cov["period"]["start"], "2024-01-01");
    let insurer = all(b, "Organization")
        .into_iter()
        .find(|o| reference(o) == cov["payor"][0]["reference"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        insurer["identifier"][0]["system"],
        "http://fhir.de/sid/arge-ik/iknr"
    );
    assert_eq!(insurer["identifier"][0]["value"], "109519005");

    // NK1 → RelatedPerson (UTF-8 umlauts)
    let rp = one(b, "RelatedPerson");
    assert_eq!(rp["name"][0]["family"], "Müller");
    assert_eq!(rp["relationship"][0]["coding"][0]["code"], "SPO");
    assert_eq!(rp["patient"]["reference"], reference(p));

    // OBX (ADT) → Observation with UCUM, NTE → note
    let w = by_code(b, "Observation", "29463-7");
    assert_eq!(w["valueQuantity"]["system"], "http://unitsofmeasure.org");
    assert_eq!(w["valueQuantity"]["code"], "kg");
    assert_eq!(
        serde_json::to_string(&w["valueQuantity"]["value"]).unwrap(),
        "82.5"
    );
    assert_eq!(w["effectiveDateTime"], "2024-03-05T10:45:00+01:00");
    assert_eq!(w["encounter"]["reference"], reference(e));
    let h = by_code(b, "Observation", "8302-2");
    assert_eq!(h["note"][0]["text"], "gemessen im Stehen");

    // Provenance
    let prov = one(b, "Provenance");
    assert_eq!(prov["activity"]["coding"][0]["code"], "CREATE");
    assert_eq!(prov["recorded"], RECEIVED);
    assert_eq!(prov["occurredDateTime"], "2024-03-05T10:30:00+01:00"); // EVN-6
    assert_eq!(prov["entity"][0]["what"]["identifier"]["value"], "KN-0001");
    assert_eq!(
        prov["entity"][0]["what"]["identifier"]["system"],
        "urn:carebridge:hl7v2:control-id"
    );
    let sha = super::provenance::sha256_hex(fixture!("adt-a01-de.hl7"));
    assert!(prov["entity"][0]["what"]["display"]
        .as_str()
        .unwrap()
        .ends_with(&format!("sha256:{sha}")));
    assert_eq!(
        prov["agent"][0]["who"]["reference"],
        reference(all(b, "Organization")[0])
    );
    assert_eq!(prov["agent"][1]["type"]["coding"][0]["code"], "enterer"); // EVN-5
    let n_resources = b["entry"].as_array().unwrap().len();
    assert_eq!(prov["target"].as_array().unwrap().len(), n_resources - 1);
    assert_eq!(
        prov["id"],
        resource_id("klinikum-nord", "Provenance", "KN-0001")
    );

    // every entry: PUT Type/id with fullUrl urn:uuid:id
    for entry in b["entry"].as_array().unwrap() {
        let r = &entry["resource"];
        assert_eq!(entry["request"]["method"], "PUT");
        assert_eq!(entry["request"]["url"], reference(r));
        assert_eq!(
            entry["fullUrl"],
            format!("urn:uuid:{}", r["id"].as_str().unwrap())
        );
    }
}

#[test]
fn a02_transfer_moves_location() {
    let t = ok(fixture!("adt-a02-de.hl7"));
    let b = &t.bundle;
    let e = one(b, "Encounter");
    assert_eq!(e["status"], "in-progress");
    let locs = e["location"].as_array().unwrap();
    assert_eq!(locs.len(), 2);
    assert_eq!(locs[0]["status"], "active");
    assert_eq!(locs[1]["status"], "completed");
    let name_of = |r: &Value| {
        all(b, "Location")
            .into_iter()
            .find(|l| reference(l) == r["location"]["reference"].as_str().unwrap())
            .unwrap()["description"]
            .clone()
    };
    assert_eq!(name_of(&locs[0]), "IMC / 12 / 1");
    assert_eq!(name_of(&locs[1]), "KARD / 201 / 2");
    assert_eq!(
        one(b, "Provenance")["activity"]["coding"][0]["code"],
        "UPDATE"
    );
}

#[test]
fn a03_discharge_finishes_in_summer_time() {
    let t = ok(fixture!("adt-a03-de.hl7"));
    let e = one(&t.bundle, "Encounter");
    assert_eq!(e["status"], "finished");
    assert_eq!(e["period"]["start"], "2024-03-05T10:30:00+01:00");
    assert_eq!(e["period"]["end"], "2024-04-02T12:00:00+02:00"); // CEST
    assert_eq!(e["location"][0]["status"], "completed");
    assert_eq!(e["diagnosis"][0]["use"]["coding"][0]["code"], "DD");
}

#[test]
fn a04_register_outpatient() {
    let t = ok(fixture!("adt-a04-de.hl7"));
    let e = one(&t.bundle, "Encounter");
    assert_eq!(e["status"], "in-progress");
    assert_eq!(e["class"]["code"], "AMB");
    assert_eq!(e["identifier"][0]["value"], "A2024-7777");
}

#[test]
fn a05_preadmit_is_planned_with_expected_dates() {
    let t = ok(fixture!("adt-a05-de.hl7"));
    let e = one(&t.bundle, "Encounter");
    assert_eq!(e["status"], "planned");
    assert_eq!(e["class"]["code"], "PRENC");
    assert_eq!(e["period"]["start"], "2024-03-15T08:00:00+01:00"); // PV2-8
    assert_eq!(
        e["hospitalization"]["preAdmissionIdentifier"]["value"],
        "V2024-0042"
    );
    assert_eq!(e["location"][0]["status"], "planned");
}

#[test]
fn a08_updates_the_same_encounter_in_any_order() {
    let a01 = ok(fixture!("adt-a01-de.hl7"));
    let a08 = ok(fixture!("adt-a08-de.hl7"));
    let (e1, e8) = (one(&a01.bundle, "Encounter"), one(&a08.bundle, "Encounter"));
    assert_eq!(e1["id"], e8["id"]);
    assert_eq!(e8["status"], "in-progress"); // from PV1-44, no PV1-45
    let (p1, p8) = (one(&a01.bundle, "Patient"), one(&a08.bundle, "Patient"));
    assert_eq!(p1["id"], p8["id"]);
    assert_eq!(p8["address"][0]["line"][0], "Gänsemarkt 12");
    // A08 first, A01 later: ids do not depend on order or on time
    let again = ok(fixture!("adt-a08-de.hl7"));
    assert_eq!(one(&again.bundle, "Encounter")["id"], e1["id"]);
}

#[test]
fn a11_cancel_admit_and_a13_cancel_discharge() {
    let a11 = ok(fixture!("adt-a11-de.hl7"));
    assert_eq!(one(&a11.bundle, "Encounter")["status"], "cancelled");
    let a13 = ok(fixture!("adt-a13-de.hl7"));
    let e = one(&a13.bundle, "Encounter");
    assert_eq!(e["status"], "in-progress");
    assert!(
        e["period"].get("end").is_none(),
        "A13 removes the discharge time"
    );
    let a01 = ok(fixture!("adt-a01-de.hl7"));
    assert_eq!(e["id"], one(&a01.bundle, "Encounter")["id"]);
}

#[test]
fn a28_person_without_visit() {
    let t = ok(fixture!("adt-a28-de.hl7"));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings); // M123456785 has a valid check digit
    let b = &t.bundle;
    assert!(all(b, "Encounter").is_empty(), "PV1-2 N: no Encounter");
    let p = one(b, "Patient");
    assert_eq!(p["birthDate"], "1956-03"); // month precision kept
    assert_eq!(p["gender"], "other");
    assert_eq!(p["_gender"]["extension"][0]["valueCoding"]["code"], "D");
    assert_eq!(p["name"][0]["family"], "Öztürk");
    assert_eq!(p["address"][0]["city"], "München");
}

#[test]
fn a31_latin1_update_hits_the_same_patient() {
    let raw = fixture!("adt-a31-de-latin1.hl7");
    assert!(
        std::str::from_utf8(raw).is_err(),
        "fixture must be ISO 8859-1 bytes"
    );
    let t = ok(raw);
    let p = one(&t.bundle, "Patient");
    assert_eq!(p["name"][0]["family"], "Öztürk");
    assert_eq!(p["address"][0]["line"][0], "Schloßstraße 3");
    let a28 = ok(fixture!("adt-a28-de.hl7"));
    assert_eq!(p["id"], one(&a28.bundle, "Patient")["id"]);
    assert_eq!(
        one(&t.bundle, "Provenance")["activity"]["coding"][0]["code"],
        "UPDATE"
    );
}

#[test]
fn a40_merge_links_both_patients() {
    let t = ok(fixture!("adt-a40-de.hl7"));
    let b = &t.bundle;
    let pats = all(b, "Patient");
    assert_eq!(pats.len(), 2);
    let survivor = pats[0];
    let old = pats[1];
    assert_eq!(
        old["id"],
        resource_id(
            "klinikum-nord",
            "Patient",
            "urn:carebridge:klinikum-nord:mrn:KHNORD|4713"
        )
    );
    assert_eq!(old["active"], false);
    assert_eq!(old["link"][0]["type"], "replaced-by");
    assert_eq!(old["link"][0]["other"]["reference"], reference(survivor));
    assert_eq!(old["name"][0]["family"], "Müller");
    assert_eq!(survivor["active"], true);
    assert_eq!(survivor["link"][0]["type"], "replaces");
    assert_eq!(survivor["link"][0]["other"]["reference"], reference(old));
    let a01 = ok(fixture!("adt-a01-de.hl7"));
    assert_eq!(survivor["id"], one(&a01.bundle, "Patient")["id"]);
}

// ---------------------------------------------------------------------------
// ORU
// ---------------------------------------------------------------------------

#[test]
fn oru_r01_lab_report_all_value_types() {
    let t = ok(fixture!("oru-r01-de.hl7"));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let b = &t.bundle;
    let dr = one(b, "DiagnosticReport");
    let sr = one(b, "ServiceRequest");
    assert_eq!(dr["status"], "final");
    assert_eq!(dr["code"]["coding"][0]["code"], "24331-1");
    assert_eq!(dr["basedOn"][0]["reference"], reference(sr));
    assert_eq!(dr["effectiveDateTime"], "2024-03-05T11:30:00+01:00");
    assert_eq!(dr["issued"], "2024-03-05T15:00:00+01:00");
    assert_eq!(dr["resultsInterpreter"][0]["display"], "Lena Becker");
    assert_eq!(dr["identifier"][0]["type"]["coding"][0]["code"], "PLAC");
    assert_eq!(dr["identifier"][1]["value"], "LAB-99001");
    assert_eq!(sr["status"], "completed");
    assert_eq!(sr["intent"], "order");
    assert_eq!(sr["note"][0]["text"], "Probe leicht hämolytisch");
    assert_eq!(sr["requester"]["display"], "Dr. med. Anna Schulz"); // ORC-12
    assert_eq!(sr["authoredOn"], "2024-03-05T11:00:00+01:00");

    let obs = all(b, "Observation");
    assert_eq!(
        obs.len(),
        10,
        "ED goes to presentedForm, not to an Observation"
    );
    assert_eq!(dr["result"].as_array().unwrap().len(), 10);
    let pdf = &dr["presentedForm"][0];
    assert_eq!(pdf["contentType"], "application/pdf");
    assert_eq!(pdf["data"], "JVBERi0xLjQKJcOkw7zDtsOfCg==");

    let chol = by_code(b, "Observation", "2093-3");
    assert_eq!(chol["status"], "final");
    assert_eq!(chol["category"], Value::Null, "OBR-24 empty: no category");
    assert_eq!(chol["valueQuantity"]["value"], 212);
    assert_eq!(chol["valueQuantity"]["system"], "http://unitsofmeasure.org");
    assert_eq!(chol["valueQuantity"]["code"], "mg/dL");
    assert_eq!(chol["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(chol["referenceRange"][0]["high"]["value"], 200);
    assert_eq!(chol["basedOn"][0]["reference"], reference(sr));
    let hdl = by_code(b, "Observation", "2085-9");
    assert_eq!(hdl["valueQuantity"]["comparator"], ">");
    assert_eq!(hdl["referenceRange"][0]["low"]["value"], 40);
    let ldl = by_code(b, "Observation", "13457-7");
    assert_eq!(ldl["valueRange"]["low"]["value"], 120);
    assert_eq!(ldl["valueRange"]["high"]["value"], 130);
    let ratio = by_code(b, "Observation", "9830-1");
    assert_eq!(ratio["valueRatio"]["numerator"]["value"], 3);
    assert_eq!(ratio["valueRatio"]["denominator"]["value"], 1);
    let st = by_code(b, "Observation", "8251-1");
    assert_eq!(st["valueString"], "Nüchtern abgenommen");
    assert_eq!(st["note"][0]["text"], "Patient war nüchtern");
    assert_eq!(
        by_code(b, "Observation", "883-9")["valueCodeableConcept"]["coding"][0]["code"],
        "A"
    );
    assert_eq!(
        by_code(b, "Observation", "21112-8")["valueDateTime"],
        "1956-03-14"
    );
    assert_eq!(
        by_code(b, "Observation", "33882-2")["valueDateTime"],
        "2024-03-05T11:30:00+01:00"
    );
    let tx = by_code(b, "Observation", "18842-5");
    assert_eq!(tx["valueString"], "Zeile 1\nZeile 2");
    assert_eq!(tx["status"], "preliminary");
    let glu = by_code(b, "Observation", "2345-7");
    assert_eq!(glu["status"], "corrected");
    // exact decimal, trailing zero kept (no float rounding)
    assert_eq!(
        serde_json::to_string(&glu["valueQuantity"]["value"]).unwrap(),
        "5.50"
    );
    assert_eq!(
        serde_json::to_string(&glu["referenceRange"][0]["low"]["value"]).unwrap(),
        "3.9"
    );
    // same patient/encounter ids as the ADT messages
    let a01 = ok(fixture!("adt-a01-de.hl7"));
    assert_eq!(
        chol["subject"]["reference"],
        reference(one(&a01.bundle, "Patient"))
    );
    assert_eq!(
        chol["encounter"]["reference"],
        reference(one(&a01.bundle, "Encounter"))
    );
}

#[test]
fn oru_observation_ids_follow_order_and_set_id() {
    let t = ok(fixture!("oru-r01-de.hl7"));
    let chol = by_code(&t.bundle, "Observation", "2093-3");
    let key = "filler|urn:carebridge:klinikum-nord:filler-order:LIS|LAB-99001|1";
    assert_eq!(chol["id"], resource_id("klinikum-nord", "Observation", key));
}

#[test]
fn oru_value_edge_cases() {
    let m = msg(&[
        "MSH|^~\\&|LIS|KHNORD|CB|REGION|20240305150500||ORU^R01|T-2|P|2.5.1",
        "PID|1||4711^^^KHNORD^PI||Muster^Max",
        "OBR|1|P-1||2093-3^Cholesterin^LN",
        "OBX|1|NM|2093-3^Cholesterin^LN||<5|mg/dL|||||F",
        "OBX|2|NM|2093-3^Cholesterin^LN||hämolytisch|mg/dL|||||F",
        "OBX|3|NM|8867-4^Puls^LN||60~120|/min|||||F",
        "OBX|4|RP|11502-2^Befund^LN||http://x/y^LIS^AP^PDF||||||F",
        "OBX|5|ED|11502-2^Befund^LN||^TEXT^^A^Hallo Welt||||||F",
        "OBX|6|ED|11502-2^Befund^LN||^AP^PDF^Hex^255044||||||F",
        "OBX|7|ST|8251-1^Bemerkung^LN||\"\"||||||F",
        "OBX|8|NM|2093-3^Cholesterin^LN||+007.50|mg/dL|||||F",
    ]);
    let t = ok(&m);
    let b = &t.bundle;
    let obs = all(b, "Observation");
    let by_set = |n: usize| {
        obs.iter()
            .find(|o| {
                o["id"]
                    == resource_id(
                        "klinikum-nord",
                        "Observation",
                        &format!("placer|urn:carebridge:klinikum-nord:placer-order|P-1|{n}"),
                    )
            })
            .copied()
            .unwrap()
    };
    assert_eq!(by_set(1)["valueQuantity"]["comparator"], "<");
    assert_eq!(by_set(1)["valueQuantity"]["value"], 5);
    assert_eq!(by_set(2)["valueString"], "hämolytisch");
    assert_eq!(
        by_set(3)["dataAbsentReason"]["coding"][0]["code"],
        "unsupported"
    );
    assert_eq!(by_set(3)["note"][0]["text"], "OBX-5 as sent: 60~120");
    assert!(by_set(3).get("valueQuantity").is_none());
    assert_eq!(
        by_set(4)["dataAbsentReason"]["coding"][0]["code"],
        "unsupported"
    );
    assert!(
        by_set(7).get("valueString").is_none(),
        "\"\" is the HL7 null: no value"
    );
    assert_eq!(
        serde_json::to_string(&by_set(8)["valueQuantity"]["value"]).unwrap(),
        "7.50"
    );
    let forms = one(b, "DiagnosticReport")["presentedForm"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(forms[0]["contentType"], "text/plain");
    assert_eq!(forms[0]["data"], "SGFsbG8gV2VsdA=="); // "Hallo Welt"
    assert_eq!(forms[1]["contentType"], "application/pdf");
    assert_eq!(forms[1]["data"], "JVBE"); // 0x25 0x50 0x44 = "%PD"
    let codes: Vec<u16> = t.warnings.iter().map(|w| w.code).collect();
    assert_eq!(codes, vec![102, 102, 102], "{:?}", t.warnings); // not a number, 2 repetitions, RP
    assert!(t.warnings.iter().all(|w| w.severity == Severity::Warning));
    // no filler number and no set-id problems: no other warnings
    assert_eq!(find_empty(b), None);
}

// ---------------------------------------------------------------------------
// Segment details and rules
// ---------------------------------------------------------------------------

#[test]
fn escaped_and_utf8_umlauts_give_the_same_patient_text() {
    let esc = msg(&[
        MSH_A01,
        "PID|1||1^^^KHNORD||M\\X00FC\\ller^J\\XC3BC\\rgen",
        "PV1|1|I|||||||||||||||||V-1",
    ]);
    let utf = msg(&[
        MSH_A01,
        "PID|1||1^^^KHNORD||Müller^Jürgen",
        "PV1|1|I|||||||||||||||||V-1",
    ]);
    let (a, b) = (ok(&esc), ok(&utf));
    let (pa, pb) = (one(&a.bundle, "Patient"), one(&b.bundle, "Patient"));
    assert_eq!(pa["name"], pb["name"]);
    assert_eq!(pa["name"][0]["family"], "Müller");
    assert_eq!(pa["name"][0]["given"][0], "Jürgen");
}

#[test]
fn hl7_null_and_gender_codes() {
    let m = msg(&[
        MSH_A01,
        "PID|1||1^^^KHNORD||Muster^Max||\"\"|\"\"",
        "PV1|1|I|||||||||||||||||V-1",
    ]);
    let t = ok(&m);
    let p = one(&t.bundle, "Patient");
    assert!(p.get("gender").is_none() && p.get("birthDate").is_none());
    for (code, want) in [
        ("M", "male"),
        ("F", "female"),
        ("O", "other"),
        ("A", "other"),
        ("U", "unknown"),
        ("N", "unknown"),
    ] {
        let m = msg(&[
            MSH_A01,
            &format!("PID|1||1^^^KHNORD||Muster^Max|||{code}"),
            "PV1|1|I|||||||||||||||||V-1",
        ]);
        assert_eq!(one(&ok(&m).bundle, "Patient")["gender"], want, "{code}");
    }
    let m = msg(&[
        MSH_A01,
        "PID|1||1^^^KHNORD||Muster^Max|||Q",
        "PV1|1|I|||||||||||||||||V-1",
    ]);
    let t = ok(&m);
    assert_eq!(one(&t.bundle, "Patient")["gender"], "unknown");
    assert_eq!(t.warnings[0].code, 103);
}

#[test]
fn identifier_systems_from_configuration() {
    let mut cfg = cfg();
    cfg.identifier_systems
        .push(("KHNORD".into(), "urn:oid:1.2.276.0.76.4.99".into()));
    let m = msg(&[
        MSH_A01,
        "PID|1||4711^^^KHNORD^PI~9^^^^MR~77^^^OTHER~X110411319^^^^KVNR||Muster^Max",
        "PV1|1|I|||||||||||||||||V-1",
    ]);
    let buf = MessageBuf::from_bytes(&m).unwrap();
    let t = translate(&buf.message(), &m, &cfg, RECEIVED).unwrap();
    let ids = &one(&t.bundle, "Patient")["identifier"];
    assert_eq!(ids[0]["system"], "urn:oid:1.2.276.0.76.4.99");
    assert_eq!(ids[1]["system"], "urn:carebridge:klinikum-nord:mrn"); // no authority → mrn_system
    assert_eq!(ids[2]["system"], "urn:carebridge:klinikum-nord:mrn:OTHER"); // unmapped authority
    assert_eq!(ids[3]["system"], "http://fhir.de/sid/gkv/kvid-10"); // by type code
    assert_eq!(
        one(&t.bundle, "Patient")["id"],
        resource_id("klinikum-nord", "Patient", "urn:oid:1.2.276.0.76.4.99|4711")
    );
}

#[test]
fn kvnr_check_digit() {
    assert!(kvnr_valid("X110411319"));
    assert!(kvnr_valid("A000500015"));
    assert!(kvnr_valid("M123456785"));
    assert!(!kvnr_valid("A123456789"));
    assert!(!kvnr_valid("a000500015"));
    assert!(!kvnr_valid("A00050001"));
    let t = ok(fixture!("warn-kvnr-check-digit.hl7"));
    assert_eq!(t.warnings.len(), 1);
    let w = &t.warnings[0];
    assert_eq!(w.code, 102);
    let loc = w.location.as_ref().unwrap();
    assert_eq!(
        (
            loc.segment.as_str(),
            loc.field,
            loc.repetition,
            loc.component
        ),
        ("PID", Some(3), Some(2), Some(1))
    );
    // the value is kept
    assert_eq!(
        one(&t.bundle, "Patient")["identifier"][1]["value"],
        "A123456789"
    );
}

#[test]
fn numbers_are_normalized_not_rounded() {
    for (i, o) in [
        ("5", "5"),
        ("+5", "5"),
        ("-0.50", "-0.50"),
        (".5", "0.5"),
        ("5.", "5"),
        ("007", "7"),
        ("0", "0"),
    ] {
        assert_eq!(normalize_number(i).as_deref(), Some(o), "{i}");
    }
    for bad in ["", "-", ".", "1e5", "5,5", "1.2.3", "abc"] {
        assert_eq!(normalize_number(bad), None, "{bad}");
    }
}

#[test]
fn dg1_delete_action_becomes_delete_entry() {
    let m = msg(&[
        MSH_A01,
        "PID|1||1^^^KHNORD||Muster^Max",
        "PV1|1|I|||||||||||||||||V-1",
        "DG1|1||I50.13^Herzinsuffizienz^I10|||W|||||||||||||||D",
    ]);
    let t = ok(&m);
    let entries = t.bundle["entry"].as_array().unwrap();
    let del: Vec<&Value> = entries
        .iter()
        .filter(|e| e["request"]["method"] == "DELETE")
        .collect();
    assert_eq!(del.len(), 1);
    assert!(del[0]["request"]["url"]
        .as_str()
        .unwrap()
        .starts_with("Condition/"));
    assert!(del[0].get("resource").is_none());
    assert!(all(&t.bundle, "Condition").is_empty());
    // not a Provenance target
    let targets = one(&t.bundle, "Provenance")["target"].to_string();
    assert!(!targets.contains(del[0]["request"]["url"].as_str().unwrap()));
}

#[test]
fn visit_without_number_is_keyed_on_admit_time_or_message() {
    let m = msg(&[
        MSH_A01,
        "PID|1||1^^^KHNORD||Muster^Max",
        &format!("PV1|1|I{}|20240305103000", "|".repeat(41)),
    ]);
    let t = ok(&m);
    let p = one(&t.bundle, "Patient")["id"].as_str().unwrap().to_owned();
    assert_eq!(
        one(&t.bundle, "Encounter")["id"],
        resource_id(
            "klinikum-nord",
            "Encounter",
            &format!("admit|{p}|2024-03-05T10:30:00+01:00")
        )
    );
    assert!(t.warnings.is_empty());
    let m = msg(&[MSH_A01, "PID|1||1^^^KHNORD||Muster^Max", "PV1|1|I"]);
    let t = ok(&m);
    assert_eq!(t.warnings[0].code, 101);
    assert_eq!(
        one(&t.bundle, "Encounter")["id"],
        resource_id("klinikum-nord", "Encounter", "message|T-1")
    );
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn errors(raw: &[u8]) -> Vec<AckError> {
    run(raw).expect_err("should fail")
}

#[test]
fn impossible_dates_are_errors_with_locations() {
    let e = errors(fixture!("bad-timestamp.hl7"));
    let locs: Vec<String> = e
        .iter()
        .filter(|e| e.severity == Severity::Error)
        .map(|e| {
            assert_eq!(e.code, 102);
            e.location.as_ref().unwrap().to_string()
        })
        .collect();
    assert!(locs.contains(&"PID-7.1".to_owned()), "{locs:?}");
    assert!(locs.contains(&"PV1-44.1".to_owned()), "{locs:?}");
    assert!(locs.contains(&"EVN-2.1".to_owned()), "{locs:?}");
    // a local time in the spring-forward gap does not exist in Berlin
    let m = msg(&[
        MSH_A01,
        "PID|1||1^^^KHNORD||Muster^Max",
        &format!("PV1|1|I{}|20240331023000", "|".repeat(41)),
    ]);
    let e = errors(&m);
    assert_eq!(e[0].code, 102);
    assert_eq!(e[0].location.as_ref().unwrap().to_string(), "PV1-44.1");
    // a name validity date inside a component: located to the subcomponent
    let m = msg(&[
        MSH_A01,
        "PID|1||1^^^KHNORD||Muster^Max^^^^^L^^^20231301",
        "PV1|1|I|||||||||||||||||V-1",
    ]);
    let e = errors(&m);
    assert_eq!(e[0].location.as_ref().unwrap().to_string(), "PID-5.10.1");
}

#[test]
fn structural_errors() {
    let e = errors(fixture!("bad-missing-pid.hl7"));
    assert_eq!(
        (e[0].code, e[0].location.as_ref().unwrap().to_string()),
        (100, "PID".to_owned())
    );
    let e = errors(fixture!("bad-empty-pid3.hl7"));
    assert_eq!(
        (e[0].code, e[0].location.as_ref().unwrap().to_string()),
        (101, "PID-3".to_owned())
    );
    let e = errors(fixture!("bad-a40-missing-mrg.hl7"));
    assert_eq!(
        (e[0].code, e[0].location.as_ref().unwrap().segment.as_str()),
        (100, "MRG")
    );
    let e = errors(fixture!("bad-oru-missing-obr.hl7"));
    assert_eq!(e[0].code, 100);
    let m = msg(&[MSH_A01, "PID|1||1^^^KHNORD||Muster^Max"]);
    let e = errors(&m);
    assert_eq!(
        (e[0].code, e[0].location.as_ref().unwrap().segment.as_str()),
        (100, "PV1")
    );
    let m = msg(&["MSH|^~\\&|A|B|C|D|20240101||ADT^A01|||2.5", "PID|1||1||X"]);
    assert_eq!(errors(&m)[0].code, 101); // MSH-10 empty
}

#[test]
fn unsupported_types_are_named() {
    let e = errors(fixture!("bad-unsupported-siu.hl7"));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].code, 200);
    assert_eq!(
        e[0].user_message.as_deref(),
        Some("unsupported message type SIU^S12")
    );
    assert_eq!(e[0].location.as_ref().unwrap().to_string(), "MSH-9.1");
    let e = errors(fixture!("bad-unsupported-event.hl7"));
    assert_eq!(e[0].code, 201);
    assert_eq!(
        e[0].user_message.as_deref(),
        Some("unsupported message type ADT^A06")
    );
    assert_eq!(e[0].location.as_ref().unwrap().to_string(), "MSH-9.2");
    for t in ["SIU^S12", "ORM^O01", "BAR^P01", "DFT^P03", "RDE^O11"] {
        let m = msg(&[
            &format!("MSH|^~\\&|A|B|C|D|20240101||{t}|1|P|2.5"),
            "PID|1||1||X",
        ]);
        let e = errors(&m);
        assert_eq!(e[0].code, 200, "{t}");
        assert_eq!(
            e[0].user_message.as_deref(),
            Some(format!("unsupported message type {t}").as_str())
        );
    }
}

// ---------------------------------------------------------------------------
// Idempotency and output hygiene
// ---------------------------------------------------------------------------

#[test]
fn same_message_twice_is_identical_except_recorded() {
    let raw = fixture!("adt-a01-de.hl7");
    let buf = MessageBuf::from_bytes(raw).unwrap();
    let a = translate(&buf.message(), raw, &cfg(), RECEIVED).unwrap();
    let b = translate(&buf.message(), raw, &cfg(), "2030-01-01T00:00:00Z").unwrap();
    let strip = |t: &Translation| {
        let mut v = t.bundle.clone();
        for e in v["entry"].as_array_mut().unwrap() {
            if e["resource"]["resourceType"] == "Provenance" {
                e["resource"].as_object_mut().unwrap().remove("recorded");
            }
        }
        serde_json::to_vec(&v).unwrap()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_ne!(
        serde_json::to_vec(&a.bundle).unwrap(),
        serde_json::to_vec(&b.bundle).unwrap()
    );
    // another institution: other ids
    let mut other = cfg();
    other.institution_id = "klinikum-sued".into();
    let c = translate(&buf.message(), raw, &other, RECEIVED).unwrap();
    assert_ne!(
        one(&a.bundle, "Patient")["id"],
        one(&c.bundle, "Patient")["id"]
    );
}

#[test]
fn no_empty_values_in_any_fixture() {
    for raw in [
        fixture!("adt-a01-de.hl7"),
        fixture!("adt-a02-de.hl7"),
        fixture!("adt-a03-de.hl7"),
        fixture!("adt-a04-de.hl7"),
        fixture!("adt-a05-de.hl7"),
        fixture!("adt-a08-de.hl7"),
        fixture!("adt-a11-de.hl7"),
        fixture!("adt-a13-de.hl7"),
        fixture!("adt-a28-de.hl7"),
        fixture!("adt-a31-de-latin1.hl7"),
        fixture!("adt-a40-de.hl7"),
        fixture!("oru-r01-de.hl7"),
        fixture!("warn-kvnr-check-digit.hl7"),
    ] {
        let t = ok(raw);
        let text = serde_json::to_string(&t.bundle).unwrap();
        assert!(
            !text.contains("\"null\"") && !text.contains(":null") && !text.contains("\"\""),
            "{text}"
        );
        assert!(!text.contains("[]") && !text.contains("{}"), "{text}");
    }
}
