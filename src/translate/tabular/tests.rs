//! Unit tests of the CSV/JSON translator with the shipped mapping files
//! (`mappings/`): ids, grouping, merging, conversions, every error located
//! at its row and column, output hygiene.

use super::*;
use crate::translate::prune::find_empty;

fn sonnenschein() -> Mapping {
    Mapping::parse(
        "pflegedienst-sonnenschein",
        "pflegedienst-sonnenschein.toml",
        include_str!("../../../mappings/pflegedienst-sonnenschein.toml"),
        "pflegedienst-sonnenschein.schema.json",
        include_str!("../../../mappings/pflegedienst-sonnenschein.schema.json"),
    )
    .unwrap()
}

const HEADER: &str = "kvnr;nachname;vorname;geburtsdatum;geschlecht;zeitpunkt;messart;wert;einheit;diagnose;bemerkung\n";

fn csv(rows: &[&str]) -> String {
    let mut s = HEADER.to_owned();
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    s
}

fn run(m: &Mapping, text: &str) -> Translation {
    translate(m, &Input { bytes: text.as_bytes(), format: Format::Csv, file_name: "t.csv" }, "2024-03-06T10:00:00+01:00").unwrap()
}

fn resources<'a>(g: &'a Group, t: &str) -> Vec<&'a Value> {
    g.bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).filter(|r| r["resourceType"] == t).collect()
}

#[test]
fn rows_group_into_one_patient_with_exact_values() {
    let m = sonnenschein();
    let t = run(
        &m,
        &csv(&[
            "X110411319;Müller;Jürgen;14.03.1956;m;05.03.2024 08:15;TEMP;37,2;°C;;",
            "X110411319;Müller;Jürgen;14.03.1956;m;05.03.2024 08:20;;;;DEK2-FERSE;Rötung",
            "A123456780;Schäfer;Hildegard;02.11.1938;w;05.03.2024 09:00;GEW;58,40;kg;;",
        ]),
    );
    assert!(t.issues.is_empty(), "{:?}", t.issues);
    assert_eq!((t.rows_read, t.groups.len()), (3, 2));
    let g = &t.groups[0];
    assert_eq!(g.rows, vec![2, 3]);
    let p = resources(g, "Patient")[0];
    assert_eq!(p["id"], resource_id("pflegedienst-sonnenschein", "Patient", "http://fhir.de/sid/gkv/kvid-10|X110411319"));
    assert_eq!(p["name"][0]["family"], "Müller");
    assert_eq!(p["birthDate"], "1956-03-14");
    assert_eq!(p["gender"], "male");
    let o = resources(g, "Observation")[0];
    assert_eq!(serde_json::to_string(&o["valueQuantity"]).unwrap(), r#"{"value":37.2,"unit":"°C","system":"http://unitsofmeasure.org","code":"Cel"}"#);
    assert_eq!(o["effectiveDateTime"], "2024-03-05T08:15:00+01:00");
    assert_eq!(o["code"]["coding"][0]["code"], "8310-5");
    assert_eq!(o["subject"]["reference"], format!("Patient/{}", p["id"].as_str().unwrap()));
    let c = resources(g, "Condition")[0];
    assert_eq!(c["code"]["coding"][0], serde_json::json!({"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "version": "2024", "code": "L89.17", "display": "Dekubitus 2. Grades: Ferse"}));
    assert_eq!(c["note"][0]["text"], "Rötung");
    // decimal text kept exactly
    let w = resources(&t.groups[1], "Observation")[0];
    assert_eq!(serde_json::to_string(&w["valueQuantity"]["value"]).unwrap(), "58.40");
    // Organization first, Provenance last, targets = everything else
    let entries = g.bundle["entry"].as_array().unwrap();
    assert_eq!(entries[0]["resource"]["resourceType"], "Organization");
    let prov = &entries.last().unwrap()["resource"];
    assert_eq!(prov["resourceType"], "Provenance");
    assert_eq!(prov["target"].as_array().unwrap().len(), entries.len() - 1);
    assert_eq!(prov["entity"][0]["what"]["identifier"]["value"], t.sha256);
    assert_eq!(prov["entity"][0]["what"]["display"], "CSV export t.csv, rows 2–3");
    assert_eq!(g.entry_rows.len(), entries.len());
    assert_eq!(find_empty(&g.bundle), None);
    for e in entries {
        assert_eq!(e["request"]["method"], "PUT");
        assert_eq!(e["fullUrl"], format!("urn:uuid:{}", e["resource"]["id"].as_str().unwrap()));
    }
}

#[test]
fn same_input_same_bundles() {
    let m = sonnenschein();
    let text = csv(&["X110411319;Müller;Jürgen;14.03.1956;m;05.03.2024 08:15;TEMP;37,2;°C;;"]);
    let a = run(&m, &text);
    let b = run(&m, &text);
    assert_eq!(a.groups[0].bundle, b.groups[0].bundle);
}

#[test]
fn every_bad_row_is_located() {
    let m = sonnenschein();
    let t = run(
        &m,
        &csv(&[
            "X110411319;Müller;Jürgen;31.02.1956;m;05.03.2024 08:15;TEMP;37,2;°C;;",
            "X110411319;Müller;Jürgen;14.03.1956;m;05.03.2024 08:15;RR_MITTEL;37,2;mmHg;;",
            "X110411319;Müller;Jürgen;14.03.1956;m;05.03.2024 08:15;TEMP;37,2,1;°C;;",
            "1234;Müller;Jürgen;14.03.1956;m;05.03.2024 08:15;TEMP;37;°C;;",
            "X110411319;Müller;Jürgen;14.03.1956;x;05.03.2024 08:15;;;;;",
            "X110411319;;Jürgen;14.03.1956;m;05.03.2024 08:15;;;;;",
            "X110411319;Müller;Jürgen;14.03.1956;m;05.03.2024 08:15;TEMP;;;;",
            "X110411319;Müller",
            "X110411319;Müller;Jürgen;14.03.1956;m;05.03.2024 08:15;PULS;72;/min;;",
        ]),
    );
    let got: Vec<(Option<String>, IssueType)> = t.issues.iter().map(|i| (i.location(), i.code)).collect();
    let want = [
        ("row 2, column geburtsdatum", IssueType::Value),
        ("row 3, column messart", IssueType::CodeInvalid),
        ("row 4, column wert", IssueType::Value),
        ("row 5, column kvnr", IssueType::Value),
        ("row 6, column geschlecht", IssueType::CodeInvalid),
        ("row 7, column nachname", IssueType::Required),
        ("row 8, column wert", IssueType::Required),
        ("row 8, column einheit", IssueType::Required),
        ("row 9", IssueType::Structure),
    ];
    let want: Vec<(Option<String>, IssueType)> = want.iter().map(|(l, c)| (Some((*l).to_owned()), *c)).collect();
    assert_eq!(got, want, "{:#?}", t.issues);
    assert_eq!(t.rejected_rows, vec![2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(t.groups.len(), 1);
    assert_eq!(t.groups[0].rows, vec![10]);
    assert!(t.issues[0].message.contains("not a valid date"), "{}", t.issues[0].message);
    assert!(t.issues[1].message.contains("unknown code \"RR_MITTEL\""), "{}", t.issues[1].message);
    assert!(t.issues[2].message.contains("not a decimal"), "{}", t.issues[2].message);
}

#[test]
fn missing_required_column_rejects_everything() {
    let m = sonnenschein();
    let t = run(&m, "nachname;vorname;geburtsdatum;zeitpunkt\nMüller;Jürgen;14.03.1956;05.03.2024 08:15\n");
    assert_eq!(t.rejected_rows, vec![2]);
    assert!(t.groups.is_empty());
    assert_eq!(t.issues.len(), 1);
    assert_eq!(t.issues[0].location().as_deref(), Some("row 1, column kvnr"));
}

#[test]
fn conflicting_rows_warn_and_keep_the_first() {
    let m = sonnenschein();
    let t = run(
        &m,
        &csv(&[
            "X110411319;Müller;Jürgen;14.03.1956;m;05.03.2024 08:15;TEMP;37,2;°C;;",
            "X110411319;Mueller;Jürgen;14.03.1956;m;05.03.2024 09:15;TEMP;37,4;°C;;",
        ]),
    );
    assert_eq!(t.groups[0].rows, vec![2, 3]);
    assert_eq!(t.issues.len(), 1, "{:?}", t.issues);
    assert_eq!(t.issues[0].severity, Severity::Warning);
    assert_eq!(t.issues[0].location().as_deref(), Some("row 3"));
    assert_eq!(resources(&t.groups[0], "Patient")[0]["name"][0]["family"], "Müller");
    assert_eq!(resources(&t.groups[0], "Observation").len(), 2);
}

#[test]
fn json_input_with_numbers_and_wrong_format() {
    let m = sonnenschein();
    let json = r#"{"eintraege": [{"kvnr": "X110411319", "nachname": "Müller", "vorname": "Jürgen", "geburtsdatum": "14.03.1956",
        "zeitpunkt": "05.03.2024 08:15", "messart": "TEMP", "wert": 37.25, "einheit": "°C"}]}"#;
    let t = translate(&m, &Input { bytes: json.as_bytes(), format: Format::Json, file_name: "t.json" }, "2024-03-06T10:00:00+01:00").unwrap();
    assert!(t.issues.is_empty(), "{:?}", t.issues);
    let o = resources(&t.groups[0], "Observation")[0];
    assert_eq!(serde_json::to_string(&o["valueQuantity"]["value"]).unwrap(), "37.25");
    assert!(matches!(
        translate(&m, &Input { bytes: b"{", format: Format::Json, file_name: "x" }, "2024-03-06T10:00:00+01:00"),
        Err(TabularError::Unreadable(_))
    ));
}

#[test]
fn row_ranges_compress() {
    assert_eq!(row_ranges(&[2, 3, 4, 7, 9, 10]), "2–4, 7, 9–10");
    assert_eq!(row_ranges(&[5]), "5");
}
