//! CSV / JSON import (`POST /import/{institution}`, `carebridge import`):
//! data-driven from `fixtures/import/<institution>/*.expected.json` (status,
//! summary, every error with row/column/reason, resources stored), plus
//! idempotent re-import, patients converging across files, Provenance,
//! all-or-nothing, HTTP errors and the CLI binary.

use crate::common::*;
use carebridge::api::ApiConfig;
use carebridge::translate::prune::find_empty;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn mappings_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"))
}

async fn server() -> TestServer {
    TestServer::start_with(Backend::Sqlite, ApiConfig { mappings_dir: Some(mappings_dir()), ..Default::default() }).await
}

fn fixture(inst: &str, name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("import").join(inst).join(name)).expect("fixture")
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".csv") {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    }
}

async fn post_import(s: &TestServer, inst: &str, name: &str, query: &str) -> Resp {
    let url = s.url(&format!("import/{inst}?filename={name}{query}"));
    send(client().post(url).header("content-type", content_type(name)).body(fixture(inst, name))).await
}

/// The number after `name: ` in the summary issue.
fn summary(r: &Resp, name: &str) -> usize {
    let d = r.json()["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_owned();
    carebridge::cli::import::summary_count(&d, name).unwrap_or_else(|| panic!("no '{name}' in summary {d:?}"))
}

async fn count(s: &TestServer, q: &str) -> i64 {
    let sep = if q.contains('?') { "&" } else { "?" };
    get(s, &format!("{q}{sep}_summary=count")).await.json()["total"].as_i64().unwrap_or(-1)
}

fn error_issues(r: &Resp) -> Vec<Value> {
    r.json()["issue"].as_array().unwrap().iter().filter(|i| i["severity"] == "error").cloned().collect()
}

/// Every stored resource of these types, checked for empty values and nulls.
async fn assert_clean(s: &TestServer, types: &[&str]) {
    for t in types {
        let b = get(s, &format!("{t}?_count=1000")).await.json();
        for e in b["entry"].as_array().into_iter().flatten() {
            assert_eq!(find_empty(&e["resource"]), None, "empty value in {}", e["resource"]);
            assert!(!serde_json::to_string(&e["resource"]).unwrap().contains("\"null\""));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_import_as_expected() {
    let root = fixtures().join("import");
    let mut cases = 0;
    for inst_dir in std::fs::read_dir(&root).unwrap().flatten().map(|e| e.path()) {
        let inst = inst_dir.file_name().unwrap().to_str().unwrap().to_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&inst_dir).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        for exp_path in files.iter().filter(|p| p.to_str().unwrap().ends_with(".expected.json")) {
            let base = exp_path.file_name().unwrap().to_str().unwrap().trim_end_matches(".expected.json").to_owned();
            let input = files
                .iter()
                .find(|p| p.file_stem().unwrap().to_str() == Some(&base) && !p.to_str().unwrap().ends_with(".expected.json"))
                .unwrap_or_else(|| panic!("no input for {}", exp_path.display()));
            let name = input.file_name().unwrap().to_str().unwrap();
            let exp: Value = serde_json::from_slice(&std::fs::read(exp_path).unwrap()).unwrap();
            let case = format!("{inst}/{name}");
            let s = server().await;
            let r = post_import(&s, &inst, name, "").await;
            assert_eq!(r.status, exp["status"].as_u64().unwrap() as u16, "{case}: {}", r.text);
            assert_eq!(r.json()["resourceType"], "OperationOutcome", "{case}");
            assert_eq!(content_type(name).split(';').next(), exp["content_type"].as_str(), "{case}");
            for (k, v) in exp["summary"].as_object().unwrap() {
                assert_eq!(summary(&r, k), v.as_u64().unwrap() as usize, "{case}: {k} in {}", r.text);
            }
            // exactly the expected errors, each at its row and column
            let got = error_issues(&r);
            let want = exp["errors"].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{case}: errors {}", serde_json::to_string_pretty(&got).unwrap());
            for w in want {
                let loc = w["location"].as_str().unwrap();
                let hit = got.iter().find(|g| g["location"][0] == loc).unwrap_or_else(|| panic!("{case}: no issue at {loc}: {}", r.text));
                assert_eq!(hit["code"], w["code"], "{case}: {hit}");
                let d = hit["diagnostics"].as_str().unwrap();
                assert!(d.contains(w["contains"].as_str().unwrap()), "{case}: {d:?} lacks {}", w["contains"]);
                assert!(d.starts_with(loc), "{case}: {d}");
            }
            for (t, n) in exp["counts"].as_object().unwrap() {
                assert_eq!(count(&s, t).await, n.as_i64().unwrap(), "{case}: {t}");
            }
            // every Provenance names the institution, the file's hash and what was written
            let provs = get(&s, "Provenance?_count=100").await.json();
            for e in provs["entry"].as_array().into_iter().flatten() {
                let p = &e["resource"];
                assert!(p["agent"][0]["who"]["reference"].as_str().unwrap().starts_with("Organization/"), "{p}");
                assert_eq!(p["entity"][0]["what"]["identifier"]["system"], "urn:carebridge:import:sha256");
                assert_eq!(p["entity"][0]["what"]["identifier"]["value"].as_str().unwrap().len(), 64);
                assert!(p["entity"][0]["what"]["display"].as_str().unwrap().contains(name), "{p}");
                assert_eq!(p["activity"]["coding"][0]["code"], "CREATE");
                for t in p["target"].as_array().unwrap() {
                    let rr = get(&s, t["reference"].as_str().unwrap()).await;
                    assert_eq!(rr.status, 200, "{case}: target {t} not stored");
                }
            }
            assert_clean(&s, &["Patient", "Observation", "Condition", "Encounter", "Provenance", "Organization"]).await;
            s.stop().await;
            cases += 1;
        }
    }
    assert_eq!(cases, 6, "fixture cases found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimport_is_a_noop_and_patients_converge() {
    let s = server().await;
    let inst = "pflegedienst-sonnenschein";
    let r = post_import(&s, inst, "export-2024-03.csv", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    // searchable by the mapped codes and identifiers, values exact
    let b = get(&s, "Observation?code=http://loinc.org|8310-5&_include=Observation:subject").await.json();
    assert_eq!(match_ids(&b).len(), 1, "{b}");
    let obs = &b["entry"][0]["resource"];
    assert_eq!(serde_json::to_string(&obs["valueQuantity"]["value"]).unwrap(), "37.2");
    assert_eq!(obs["effectiveDateTime"], "2024-03-05T08:20:00+01:00");
    assert_eq!(obs["note"][0]["text"], "leicht erhöht");
    assert_eq!(count(&s, "Condition?code=http://fhir.de/CodeSystem/bfarm/icd-10-gm|L89.17").await, 1);
    let p = get(&s, "Patient?identifier=http://fhir.de/sid/gkv/kvid-10|B987654320").await.json();
    assert_eq!(p["entry"][0]["resource"]["name"][0]["family"], "Großmann");
    assert_eq!(p["entry"][0]["resource"]["birthDate"], "1944-02-29");
    let mueller = get(&s, "Patient?identifier=http://fhir.de/sid/gkv/kvid-10|X110411319").await.json();
    let mueller_id = mueller["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();
    assert_eq!(count(&s, &format!("Provenance?target=Patient/{mueller_id}")).await, 1);

    // the same file again: nothing written, no version moves
    let hist = get(&s, "_history?_count=1000").await.json()["entry"].as_array().unwrap().len();
    let again = post_import(&s, inst, "export-2024-03.csv", "").await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(summary(&again, "resources written"), 0, "{}", again.text);
    assert_eq!(summary(&again, "resources unchanged"), 21);
    assert_eq!(get(&s, "_history?_count=1000").await.json()["entry"].as_array().unwrap().len(), hist);
    assert_eq!(count(&s, "Provenance").await, 3);

    // a later JSON export of the same service: Müller converges on one Patient
    let r = post_import(&s, inst, "export-2024-04.json", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(count(&s, "Patient?identifier=http://fhir.de/sid/gkv/kvid-10|X110411319").await, 1);
    assert_eq!(count(&s, "Patient").await, 4);
    assert_eq!(count(&s, &format!("Observation?subject=Patient/{mueller_id}")).await, 6);
    assert_eq!(count(&s, "Provenance").await, 5);
    // Müller existed: his April Provenance says UPDATE; Çelik is new: CREATE
    let provs = get(&s, &format!("Provenance?target=Patient/{mueller_id}")).await.json();
    let activities: Vec<&str> = provs["entry"].as_array().unwrap().iter().map(|e| e["resource"]["activity"]["coding"][0]["code"].as_str().unwrap()).collect();
    assert_eq!(activities.len(), 2);
    assert!(activities.contains(&"CREATE") && activities.contains(&"UPDATE"), "{activities:?}");
    let celik = get(&s, "Patient?identifier=http://fhir.de/sid/gkv/kvid-10|K555012340&_revinclude=Provenance:target").await.json();
    let prov = celik["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "Provenance").expect("Provenance of Çelik");
    assert_eq!(prov["resource"]["activity"]["coding"][0]["code"], "CREATE");
    assert_eq!(celik["entry"][0]["resource"]["name"][0]["given"][0], "Ayşe");
    // the April file re-imported is a no-op too (Provenance keeps its UPDATE)
    let again = post_import(&s, inst, "export-2024-04.json", "").await;
    assert_eq!(summary(&again, "resources written"), 0, "{}", again.text);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_nothing_stores_nothing_when_a_row_is_bad() {
    let s = server().await;
    let r = post_import(&s, "pflegedienst-sonnenschein", "broken-rows.csv", "&all-or-nothing=true").await;
    assert_outcome(&r, 422);
    assert_eq!(summary(&r, "rows imported"), 0);
    assert_eq!(summary(&r, "rows rejected"), 10);
    assert!(r.text.contains("all-or-nothing"), "{}", r.text);
    assert!(error_issues(&r).iter().any(|i| i["location"][0] == "row 3, column geburtsdatum"), "{}", r.text);
    for t in ["Patient", "Observation", "Provenance", "Organization"] {
        assert_eq!(count(&s, t).await, 0, "{t}");
    }
    // a good file in one transaction: everything stored
    let r = post_import(&s, "pflegedienst-sonnenschein", "export-2024-03.csv", "&all-or-nothing=true").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(summary(&r, "resources written"), 19);
    assert_eq!(count(&s, "Patient").await, 3);
    assert_eq!(count(&s, "Provenance").await, 3);
    // JSON too, and a broken JSON export with all-or-nothing stores nothing more
    let r = post_import(&s, "kommune-havnby", "broken.json", "&all-or-nothing=true").await;
    assert_outcome(&r, 422);
    assert_eq!(count(&s, "Encounter").await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_operation_outcomes() {
    let s = server().await;
    let csv = fixture("pflegedienst-sonnenschein", "export-2024-03.csv");
    // unknown institution
    let r = send(client().post(s.url("import/pflegedienst-mond")).header("content-type", "text/csv").body(csv.clone())).await;
    assert_outcome(&r, 404);
    assert!(r.diagnostics().contains("pflegedienst-mond"), "{}", r.text);
    // wrong content type, and one the institution does not take
    let r = send(client().post(s.url("import/pflegedienst-sonnenschein")).header("content-type", "application/xml").body(csv.clone())).await;
    assert_outcome(&r, 415);
    let r = send(client().post(s.url("import/kommune-havnby")).header("content-type", "text/csv").body(csv.clone())).await;
    assert_outcome(&r, 415);
    assert!(r.diagnostics().contains("application/json"), "{}", r.text);
    let r = send(client().post(s.url("import/pflegedienst-sonnenschein")).body(csv.clone())).await;
    assert_outcome(&r, 415);
    // wrong method, empty body, unreadable JSON, not UTF-8
    assert_outcome(&get(&s, "import/pflegedienst-sonnenschein").await, 405);
    let r = send(client().post(s.url("import/pflegedienst-sonnenschein")).header("content-type", "text/csv")).await;
    assert_outcome(&r, 400);
    let r = send(client().post(s.url("import/kommune-havnby")).header("content-type", "application/json").body("{\"besoeg\": [")).await;
    assert_outcome(&r, 400);
    let r = send(client().post(s.url("import/pflegedienst-sonnenschein")).header("content-type", "text/csv").body(b"kvnr;nachname\nX110411319;M\xfcller\n".to_vec())).await;
    assert_outcome(&r, 400);
    assert!(r.diagnostics().contains("UTF-8"), "{}", r.text);
    // only a header: no rows → 422
    let r = send(client().post(s.url("import/pflegedienst-sonnenschein")).header("content-type", "text/csv").body("kvnr;nachname;vorname;geburtsdatum;zeitpunkt\n")).await;
    assert_outcome(&r, 422);
    assert_eq!(count(&s, "Patient").await, 0);
    s.stop().await;
}

fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_carebridge"));
    c.env("CAREBRIDGE_LOG", "warn").env_remove("CAREBRIDGE_DATABASE_URL").env_remove("CAREBRIDGE_CONFIG");
    c
}

fn fixture_path(inst: &str, name: &str) -> PathBuf {
    fixtures().join("import").join(inst).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_import_into_server_and_store() {
    let s = server().await;
    // into the running server
    let out = tokio::task::spawn_blocking({
        let base = s.base.clone();
        move || {
            bin()
                .args(["import", "--institution", "pflegedienst-sonnenschein", "--server", &base, "--quiet"])
                .arg(fixture_path("pflegedienst-sonnenschein", "export-2024-03.csv"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("rows read: 12") && stdout.contains("resources written: 19") && stdout.contains("rows rejected: 0"), "{stdout}");
    assert_eq!(count(&s, "Patient").await, 3);
    s.stop().await;

    // straight into a store: bad rows listed, exit status 1, good rows stored
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("cli.db").display());
    let run = |file: &Path, extra: &[&str]| {
        bin()
            .args(["import", "--institution", "pflegedienst-sonnenschein", "--db", &db, "--mappings"])
            .arg(mappings_dir())
            .args(extra)
            .arg(file)
            .output()
            .unwrap()
    };
    let out = run(&fixture_path("pflegedienst-sonnenschein", "broken-rows.csv"), &["--quiet"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout} {stderr}");
    assert!(stdout.contains("rows read: 12, rows imported: 2, rows rejected: 10, resources written: 5"), "{stdout}");
    assert!(stderr.contains("row 3, column geburtsdatum: \"31.02.1950\" is not a valid date"), "{stderr}");
    assert!(stderr.contains("row 4, column messart: unknown code \"RR_MITTEL\""), "{stderr}");
    let out = run(&fixture_path("pflegedienst-sonnenschein", "export-2024-04.json"), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rows imported: 4"));
    // unknown institution: a clear error
    let out = bin().args(["import", "--institution", "nope", "--db", &db, "--mappings"]).arg(mappings_dir()).arg(fixture_path("pflegedienst-sonnenschein", "export-2024-04.json")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown institution 'nope'"));
    // what the CLI stored is there
    let store = carebridge::store::open(&db).await.unwrap();
    let services = carebridge::services::Services {
        store,
        registry: registry().await,
        validator: crate::validator_suite::validator_arc().await,
        validation: Default::default(),
        policy: Default::default(),
        mpi: Default::default(),
        access: Default::default(),
        facts: Default::default(),
    };
    let running = carebridge::server::start(services, ApiConfig::default(), "127.0.0.1:0").await.unwrap();
    let base = running.base_url();
    let total = |q: &str| {
        let url = format!("{base}/{q}?_summary=count");
        async move { send(client().get(url)).await.json()["total"].as_i64().unwrap() }
    };
    assert_eq!(total("Patient").await, 3); // Öztürk + Müller + Çelik
    assert_eq!(total("Provenance").await, 3);
    running.stop().await;
}

const TEST_SCHEMA: &str = r#"{"type": "object", "required": ["pid"], "properties": {"pid": {"type": "string"}, "geb": {"type": "string"}}}"#;

/// A mapping whose output the pipeline rejects for some rows (a birth date
/// copied as text is not a FHIR date): that patient group is reported row by
/// row with the validator's expression, the other groups are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_rejection_is_per_group_and_located() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"[institution]
name = "Testheim"
[input]
group = "{pid}"
csv = {}
[[resource]]
name = "p"
type = "Patient"
key = "{pid}"
fields = [
  { path = "identifier[0].system", value = "urn:test:pid" },
  { path = "identifier[0].value", column = "pid" },
  { path = "birthDate", column = "geb" },
]
"#;
    std::fs::write(dir.path().join("testheim.toml"), toml).unwrap();
    std::fs::write(dir.path().join("testheim.schema.json"), TEST_SCHEMA).unwrap();
    let s = TestServer::start_with(Backend::Sqlite, ApiConfig { mappings_dir: Some(dir.path().to_owned()), ..Default::default() }).await;
    let body = "pid,geb\n1,1956-03-14\n2,14.03.1956\n2,\n3,1960\n";
    let r = send(client().post(s.url("import/testheim")).header("content-type", "text/csv").body(body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(summary(&r, "rows imported"), 2);
    assert_eq!(summary(&r, "rows rejected"), 2);
    let errs = error_issues(&r);
    assert!(!errs.is_empty());
    for e in &errs {
        assert_eq!(e["location"][0], "rows 3–4", "{e}");
        assert!(e["expression"][0].as_str().unwrap().contains("birthDate"), "{e}");
        assert!(e["diagnostics"].as_str().unwrap().contains("patient group's transaction failed"), "{e}");
    }
    assert_eq!(count(&s, "Patient").await, 2);
    assert_eq!(count(&s, "Patient?identifier=urn:test:pid|2").await, 0);
    assert_eq!(count(&s, "Provenance").await, 2);
    s.stop().await;

    // a broken mapping is a start-up error naming file and line
    std::fs::write(dir.path().join("testheim.toml"), toml.replace("column = \"geb\"", "column = \"gebdat\"")).unwrap();
    let store = carebridge::store::open(&format!("sqlite:{}", dir.path().join("x.db").display())).await.unwrap();
    let services = carebridge::services::Services {
        store,
        registry: registry().await,
        validator: crate::validator_suite::validator_arc().await,
        validation: Default::default(),
        policy: Default::default(),
        mpi: Default::default(),
        access: Default::default(),
        facts: Default::default(),
    };
    let api = ApiConfig { mappings_dir: Some(dir.path().to_owned()), ..Default::default() };
    let err = carebridge::server::start(services, api, "127.0.0.1:0").await.err().expect("start-up error").to_string();
    assert!(err.contains("testheim.toml:13: column 'gebdat' is not a property of"), "{err}");
}

/// The municipality's JSON: visits become home-health Encounters, times
/// without an offset take Europe/Copenhagen, Danish decimals, references.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn municipality_visits_become_encounters() {
    let s = server().await;
    let r = post_import(&s, "kommune-havnby", "besoeg-2024-03.json", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = get(&s, "Encounter?identifier=urn:carebridge:kommune-havnby:besoeg|HB-24-000102&_include=Encounter:subject").await.json();
    assert_eq!(match_ids(&b).len(), 1, "{b}");
    let enc = &b["entry"][0]["resource"];
    assert_eq!(enc["period"]["start"], "2024-03-05T19:30:00+01:00");
    assert_eq!(enc["class"]["code"], "HH");
    assert_eq!(enc["type"][0]["coding"][0], serde_json::json!({"system": "http://snomed.info/sct", "code": "18629005", "display": "Administration of drug or medicament (procedure)"}));
    let patient = b["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "include").expect("subject included");
    assert_eq!(patient["resource"]["identifier"][0]["system"], "urn:oid:1.2.208.176.1.2");
    assert_eq!(patient["resource"]["name"][0]["family"], "Kjærgaard");
    let w = get(&s, "Observation?code=http://loinc.org|29463-7&value-quantity=61.3").await.json();
    assert_eq!(match_ids(&w).len(), 1, "{w}");
    assert_eq!(serde_json::to_string(&w["entry"][0]["resource"]["valueQuantity"]).unwrap(), r#"{"unit":"kg","system":"http://unitsofmeasure.org","code":"kg","value":61.3}"#);
    assert!(w["entry"][0]["resource"]["encounter"]["reference"].as_str().unwrap().starts_with("Encounter/"));
    assert_eq!(count(&s, "Observation?code=http://loinc.org|8867-4").await, 2);
    s.stop().await;
}
