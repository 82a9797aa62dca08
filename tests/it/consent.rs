//! Care relationship, break-glass and Consent on every read path (issue 7),
//! on SQLite and (with `CAREBRIDGE_TEST_POSTGRES`) PostgreSQL. The server
//! runs with `ApiConfig::dev_caller_header`, so a request names its caller
//! in `X-Carebridge-Dev-Caller: client;member-type;member-id` (until token
//! authentication exists); callers are written `<member-type> <member-id>`
//! here and in the fixtures. Data: `fixtures/consent/` — the network's members and one
//! patient per relationship kind (`network.json`, `relationships.json`),
//! and one privacy Consent per provision type with the expected outcome
//! for each of four resources (`provisions.json`).

use crate::common::*;
use carebridge::services::access::{AccessConfig, DefaultPolicy};
use serde_json::{json, Value};

const HOSP: &str = "hospital org-hosp";
const GP: &str = "gp-practice org-gp";
const INSURER: &str = "insurer org-ins";

fn fixture(name: &str) -> Value {
    let p = fixtures().join("consent").join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).expect("fixture JSON")
}

fn opt_in() -> AccessConfig {
    AccessConfig::default()
}

fn opt_out() -> AccessConfig {
    AccessConfig { default_policy: DefaultPolicy::OptOut, ..Default::default() }
}

/// `hospital org-hosp` → `test-hospital;hospital;org-hosp`
fn dev_header(caller: &str) -> String {
    let (t, m) = caller.split_once(' ').unwrap_or((caller, ""));
    format!("test-{t};{t};{m}")
}

async fn as_caller(s: &TestServer, caller: &str, purpose: Option<&str>, path: &str) -> Resp {
    let mut rb = client().get(s.url(path)).header("x-carebridge-dev-caller", dev_header(caller));
    if let Some(p) = purpose {
        rb = rb.header("x-purpose-of-use", p);
    }
    send(rb).await
}

async fn load(s: &TestServer, bundle: &Value) {
    let r = post_json(s, "", bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

async fn network(s: &TestServer) {
    load(s, &fixture("network.json")).await;
}

fn put(res: Value) -> Value {
    let url = format!("{}/{}", res["resourceType"].as_str().unwrap(), res["id"].as_str().unwrap());
    json!({"resource": res, "request": {"method": "PUT", "url": url}})
}

/// A patient treated by the hospital and the GP (two in-progress
/// Encounters) with four resources: `hb` (LOINC 718-7, 2024), `old`
/// (2339-0, 2019), `sec` (labelled R, 2024) and `cond` (a Condition, onset
/// 2022); plus a privacy Consent with `provision`, when given.
async fn seed_case(s: &TestServer, pid: &str, provision: Option<&Value>) {
    let subj = json!({"reference": format!("Patient/{pid}")});
    let family = format!("Casefam{}", pid.replace('-', ""));
    let obs = |id: &str, code: &str, date: &str| {
        json!({"resourceType": "Observation", "id": format!("{pid}-{id}"), "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "subject": subj, "effectiveDateTime": date})
    };
    let mut sec = obs("sec", "5195-3", "2024-02-01");
    sec["meta"] = json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]});
    let enc = |id: &str, org: &str| {
        json!({"resourceType": "Encounter", "id": format!("{pid}-{id}"), "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subj,
            "serviceProvider": {"reference": format!("Organization/{org}")}})
    };
    let mut entries = vec![
        put(json!({"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["Case"]}]})),
        put(enc("enc-h", "org-hosp")),
        put(enc("enc-g", "org-gp")),
        put(obs("hb", "718-7", "2024-03-01")),
        put(obs("old", "2339-0", "2019-05-01")),
        put(sec),
        put(json!({"resourceType": "Condition", "id": format!("{pid}-cond"), "subject": subj,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}, "onsetDateTime": "2022-01-01"})),
    ];
    if let Some(p) = provision {
        let p: Value = serde_json::from_str(&serde_json::to_string(p).unwrap().replace("{pid}", pid)).unwrap();
        entries.push(put(privacy_consent(pid, p)));
    }
    load(s, &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
}

fn privacy_consent(pid: &str, provision: Value) -> Value {
    json!({"resourceType": "Consent", "id": format!("{pid}-privacy"), "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{pid}")}, "dateTime": "2024-01-01",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision})
}

const ITEMS: [(&str, &str); 4] = [("hb", "Observation"), ("old", "Observation"), ("sec", "Observation"), ("cond", "Condition")];

async fn expect_items(s: &TestServer, pid: &str, caller: &str, purpose: Option<&str>, expect: &Value, case: &str) {
    for (item, t) in ITEMS {
        let want = expect[item].as_u64().unwrap() as u16;
        let r = as_caller(s, caller, purpose, &format!("{t}/{pid}-{item}")).await;
        assert_eq!(r.status, want, "case {case}: {caller} reading {item}: {}", r.text);
        if want == 403 {
            assert_outcome(&r, 403);
        }
    }
    // search returns exactly the readable ones, and total agrees
    let r = as_caller(s, caller, purpose, &format!("Observation?subject=Patient/{pid}&_total=accurate")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    let mut got = match_ids(&b);
    got.sort();
    let mut want: Vec<String> =
        ITEMS.iter().filter(|(i, t)| *t == "Observation" && expect[*i] == 200).map(|(i, _)| format!("{pid}-{i}")).collect();
    want.sort();
    assert_eq!(got, want, "case {case}: search as {caller}");
    assert_eq!(b["total"].as_u64(), Some(want.len() as u64), "case {case}: total");
}

async fn provision_case(backend: Backend, name: &str) {
    let cases = fixture("provisions.json");
    let case = cases.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no case {name}")).clone();
    let s = TestServer::start_access(backend, opt_in()).await;
    network(&s).await;
    let pid = format!("case-{}", name.to_ascii_lowercase());
    seed_case(&s, &pid, Some(&case["provision"])).await;
    expect_items(&s, &pid, HOSP, case["purpose"].as_str(), &case["expect"], name).await;
    if let Some(o) = case.get("other") {
        expect_items(&s, &pid, o["caller"].as_str().unwrap(), o["purpose"].as_str(), &o["expect"], name).await;
    }
    // the unfiltered operator sees everything
    for (item, t) in ITEMS {
        assert_eq!(get(&s, &format!("{t}/{pid}-{item}")).await.status, 200);
    }
    s.stop().await;
}

/// One test per backend: SQLite always, PostgreSQL when configured.
macro_rules! on_both {
    ($name:ident, $body:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let f = $body;
            f(Backend::Sqlite).await;
            if postgres_url().is_some() {
                f(Backend::Postgres).await;
            } else {
                eprintln!("{}: PostgreSQL skipped (CAREBRIDGE_TEST_POSTGRES not set)", stringify!($name));
            }
        }
    };
}

on_both!(provision_permit, |b| provision_case(b, "permit"));
on_both!(provision_deny, |b| provision_case(b, "deny"));
on_both!(provision_nested_deny_in_permit, |b| provision_case(b, "nested"));
on_both!(provision_actor, |b| provision_case(b, "actor"));
on_both!(provision_purpose, |b| provision_case(b, "purpose"));
on_both!(provision_period, |b| provision_case(b, "period"));
on_both!(provision_data_period, |b| provision_case(b, "dataPeriod"));
on_both!(provision_class, |b| provision_case(b, "class"));
on_both!(provision_code, |b| provision_case(b, "code"));
on_both!(provision_security_label, |b| provision_case(b, "securityLabel"));
on_both!(provision_data, |b| provision_case(b, "data"));

/// Without Consent: opt-in withholds other institutions' records, opt-out shows them.
async fn default_policy(backend: Backend) {
    for (cfg, want) in [(opt_in(), 403), (opt_out(), 200)] {
        let s = TestServer::start_access(backend, cfg).await;
        network(&s).await;
        seed_case(&s, "case-default", None).await;
        let r = as_caller(&s, HOSP, None, "Observation/case-default-hb").await;
        assert_eq!(r.status, want, "{}", r.text);
        s.stop().await;
    }
}
on_both!(default_opt_in_vs_opt_out, default_policy);

/// Each relationship kind grants its member and no other member.
async fn relationships(backend: Backend) {
    let s = TestServer::start_access(backend, opt_out()).await;
    network(&s).await;
    for rel in fixture("relationships.json").as_array().unwrap() {
        let pid = rel["patient"].as_str().unwrap();
        let kind = rel["kind"].as_str().unwrap();
        let (member, other) = (rel["member"].as_str().unwrap(), rel["other"].as_str().unwrap());
        let path = format!("Observation/{pid}-obs");
        let r = as_caller(&s, member, None, &path).await;
        assert_eq!(r.status, 200, "{kind}: {member} must read {path}: {}", r.text);
        let r = as_caller(&s, other, None, &path).await;
        assert_outcome(&r, 403);
        // search: the member finds it, the other member does not (total 0)
        let q = format!("Observation?subject=Patient/{pid}&_total=accurate");
        let b = as_caller(&s, member, None, &q).await.json();
        assert_eq!(match_ids(&b), vec![format!("{pid}-obs")], "{kind}");
        let b = as_caller(&s, other, None, &q).await.json();
        assert!(match_ids(&b).is_empty(), "{kind}: {b}");
        assert_eq!(b["total"], 0, "{kind}");
    }
    // a finished Encounter is no relationship
    assert_outcome(&as_caller(&s, HOSP, None, "Observation/rel-fin-obs").await, 403);
    // what the member sent itself is always visible (meta.source), the rest is not
    assert_eq!(as_caller(&s, GP, None, "Observation/rel-none-own").await.status, 200);
    assert_outcome(&as_caller(&s, GP, None, "Observation/rel-none-obs").await, 403);
    s.stop().await;
}
on_both!(care_relationship_kinds, relationships);

/// Break-glass: allowed, labelled, flagged and audited; a Consent
/// provision naming the purpose still denies.
async fn break_glass(backend: Backend) {
    let s = TestServer::start_access(backend, opt_in()).await;
    network(&s).await;
    assert_outcome(&as_caller(&s, GP, None, "Observation/rel-none-obs").await, 403);
    let r = as_caller(&s, GP, Some("BTG"), "Observation/rel-none-obs").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-break-glass").as_deref(), Some("BTG"));
    let sec = r.json()["meta"]["security"].clone();
    assert!(sec.as_array().unwrap().iter().any(|c| c["code"] == "BTG"), "{sec}");
    // recorded: an AuditEvent with the purpose of use, about the patient
    let audits = get(&s, "AuditEvent?patient=Patient/rel-none").await.json();
    let btg: Vec<&Value> = audits["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|a| a["purposeOfEvent"][0]["coding"][0]["code"] == "BTG")
        .collect();
    assert_eq!(btg.len(), 1, "{audits}");
    assert_eq!(btg[0]["agent"][0]["who"]["reference"], "Organization/org-gp");
    assert_eq!(btg[0]["agent"][0]["purposeOfUse"][0]["coding"][0]["code"], "BTG");
    // ETREAT works the same way in a search; the stored bytes are unchanged
    let b = as_caller(&s, GP, Some("ETREAT"), "Observation?subject=Patient/rel-enc").await;
    assert_eq!(b.header("x-break-glass").as_deref(), Some("BTG"));
    assert_eq!(match_ids(&b.json()), vec!["rel-enc-obs".to_owned()]);
    assert!(get(&s, "Observation/rel-none-obs").await.json()["meta"].get("security").is_none());
    // a provision that denies exactly this purpose holds even under break-glass
    let deny_btg = json!({"type": "permit", "provision": [{"type": "deny", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}]}]});
    seed_case(&s, "case-nobtg", Some(&deny_btg)).await;
    assert_outcome(&as_caller(&s, "pharmacy org-pharm", Some("BTG"), "Observation/case-nobtg-hb").await, 403);
    assert_eq!(as_caller(&s, "pharmacy org-pharm", Some("ETREAT"), "Observation/case-nobtg-hb").await.status, 200);
    s.stop().await;
}
on_both!(break_glass_allowed_flagged_audited, break_glass);

/// Search over many patients: only permitted matches, `_total` equals what
/// paging returns, `_summary=count` agrees, includes are filtered.
async fn search_filtering(backend: Backend) {
    let s = TestServer::start_access(backend, opt_out()).await;
    network(&s).await;
    // the hospital treats rel-enc and rel-mpi-a (linked to rel-mpi-b); others not
    let q = "Observation?code=http://loinc.org|718-7&_total=accurate";
    let all = get(&s, q).await.json();
    assert!(all["total"].as_u64().unwrap() >= 10, "{all}");
    let b = as_caller(&s, HOSP, None, q).await.json();
    let mut ids = match_ids(&b);
    ids.sort();
    assert_eq!(ids, vec!["rel-enc-obs".to_owned(), "rel-mpi-a-obs".to_owned(), "rel-mpi-b-obs".to_owned()]);
    assert_eq!(b["total"], 3);
    // paging one at a time yields the same two, and the count agrees
    let mut paged = vec![];
    let mut next = Some(s.url("Observation?code=http://loinc.org|718-7&_count=1"));
    while let Some(url) = next.take() {
        let p = send(client().get(&url).header("x-carebridge-dev-caller", dev_header(HOSP))).await.json();
        paged.extend(match_ids(&p));
        next = p["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(str::to_owned);
        assert!(paged.len() <= 3, "{paged:?}");
    }
    paged.sort();
    assert_eq!(paged, ids);
    let c = as_caller(&s, HOSP, None, "Observation?code=http://loinc.org|718-7&_summary=count").await.json();
    assert_eq!(c["total"], 3);
    // sorted search: filtered the same way
    let b = as_caller(&s, HOSP, None, "Observation?code=http://loinc.org|718-7&_sort=-date&_count=1").await.json();
    assert_eq!(match_ids(&b).len(), 1);
    // _revinclude / _include pass the filter too
    let b = as_caller(&s, HOSP, None, "Patient?_id=rel-enc,rel-eoc&_revinclude=Observation:subject").await.json();
    let ids: Vec<&str> = b["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["id"].as_str()).collect();
    assert!(ids.contains(&"rel-enc") && ids.contains(&"rel-enc-obs"), "{ids:?}");
    assert!(!ids.contains(&"rel-eoc") && !ids.contains(&"rel-eoc-obs"), "{ids:?}");
    let b = as_caller(&s, GP, None, "Observation?_id=rel-enc-obs,rel-none-own&_include=Observation:subject").await.json();
    let ids: Vec<&str> = b["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["id"].as_str()).collect();
    assert_eq!(ids, vec!["rel-none-own"], "the GP's own record, not the Patient or the hospital's record");
    // history of an instance the caller may not see: 403; type history filtered
    assert_outcome(&as_caller(&s, GP, None, "Observation/rel-enc-obs/_history").await, 403);
    let h = as_caller(&s, HOSP, None, "Observation/_history").await.json();
    let hist: Vec<&str> = h["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["id"].as_str()).collect();
    assert!(hist.contains(&"rel-enc-obs") && !hist.contains(&"rel-eoc-obs"), "{hist:?}");
    assert_eq!(as_caller(&s, HOSP, None, "Observation/rel-enc-obs/_history/1").await.status, 200);
    assert_outcome(&as_caller(&s, GP, None, "Observation/rel-enc-obs/_history/1").await, 403);
    // a batch read entry is filtered like a read
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/rel-enc-obs"}},
        {"request": {"method": "GET", "url": "Observation/rel-eoc-obs"}}]});
    let r = send(client().post(s.url("")).header("x-carebridge-dev-caller", dev_header(HOSP)).header("content-type", "application/fhir+json").body(batch.to_string())).await;
    let e = r.json()["entry"].clone();
    assert!(e[0]["response"]["status"].as_str().unwrap().starts_with("200"), "{e}");
    assert!(e[1]["response"]["status"].as_str().unwrap().starts_with("403"), "{e}");
    s.stop().await;
}
on_both!(search_filtered_total_consistent, search_filtering);

/// The insurer sees nothing patient-level, whatever the relationships.
async fn insurer(backend: Backend) {
    let s = TestServer::start_access(backend, opt_out()).await;
    network(&s).await;
    assert_outcome(&as_caller(&s, INSURER, None, "Patient/rel-enc").await, 403);
    assert_outcome(&as_caller(&s, INSURER, None, "Observation/rel-enc-obs").await, 403);
    let b = as_caller(&s, INSURER, None, "Observation?_total=accurate").await.json();
    assert!(match_ids(&b).is_empty());
    assert_eq!(b["total"], 0);
    assert_eq!(as_caller(&s, INSURER, None, "Organization/org-hosp").await.status, 200);
    assert_outcome(&as_caller(&s, INSURER, None, "Patient/rel-enc/$everything").await, 403);
    // operators and integration engines are not subject to relationships or Consent
    let all = get(&s, "Observation?_total=accurate").await.json()["total"].clone();
    for who in ["integration-engine org-ie", "operator org-op"] {
        assert_eq!(as_caller(&s, who, None, "Observation/rel-enc-obs").await.status, 200, "{who}");
        assert_eq!(as_caller(&s, who, None, "Observation?_total=accurate").await.json()["total"], all, "{who}");
    }
    s.stop().await;
}
on_both!(insurer_sees_no_patient_data, insurer);

/// `$summary` and `$everything` are built from permitted resources only.
async fn summary_views(backend: Backend) {
    let s = TestServer::start_access(backend, opt_in()).await;
    network(&s).await;
    let deny_conditions = json!({"type": "permit", "provision": [{"type": "deny", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]},
        {"type": "deny", "code": [{"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}]}]});
    seed_case(&s, "case-sum", Some(&deny_conditions)).await;
    // no relationship: 403
    assert_outcome(&as_caller(&s, "therapist org-ther", None, "Patient/case-sum/$summary").await, 403);
    assert_outcome(&as_caller(&s, "therapist org-ther", None, "Patient/case-sum/$everything").await, 403);
    let r = as_caller(&s, HOSP, None, "Patient/case-sum/$summary").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let doc = r.json();
    let ids: Vec<String> =
        doc["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned)).collect();
    assert!(!ids.contains(&"case-sum-cond".to_owned()) && !ids.contains(&"case-sum-old".to_owned()), "{ids:?}");
    assert!(ids.contains(&"case-sum-hb".to_owned()), "{ids:?}");
    let sections = doc["entry"][0]["resource"]["section"].as_array().unwrap().clone();
    let problems = sections.iter().find(|s| s["code"]["coding"][0]["code"] == "11450-4").expect("problems section");
    assert_eq!(problems["emptyReason"]["coding"][0]["code"], "withheld", "{problems}");
    assert!(problems.get("entry").is_none());
    let results = sections.iter().find(|s| s["code"]["coding"][0]["code"] == "30954-2").expect("results section");
    let refs: Vec<&str> = results["entry"].as_array().unwrap().iter().filter_map(|e| e["reference"].as_str()).collect();
    assert!(refs.contains(&"Observation/case-sum-hb") && !refs.contains(&"Observation/case-sum-old"), "{refs:?}");
    // unfiltered, the problem is there
    let full = get(&s, "Patient/case-sum/$summary").await.json();
    assert!(full["entry"].as_array().unwrap().iter().any(|e| e["resource"]["id"] == "case-sum-cond"));

    let e = as_caller(&s, HOSP, None, "Patient/case-sum/$everything").await.json();
    let ids: Vec<&str> = e["entry"].as_array().unwrap().iter().filter_map(|x| x["resource"]["id"].as_str()).collect();
    assert!(ids.contains(&"case-sum-hb") && ids.contains(&"case-sum-sec"), "{ids:?}");
    assert!(!ids.contains(&"case-sum-cond") && !ids.contains(&"case-sum-old"), "{ids:?}");
    assert_eq!(e["total"].as_u64(), Some(ids.len() as u64));
    let full = get(&s, "Patient/case-sum/$everything").await.json();
    assert_eq!(full["total"].as_u64().unwrap(), e["total"].as_u64().unwrap() + 2);
    s.stop().await;
}
on_both!(summary_and_everything_filtered, summary_views);

/// Without the dev-caller header (the development operator) nothing is
/// filtered; a server without `dev_caller_header` ignores the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_caller_header_only_when_enabled() {
    let s = TestServer::start(Backend::Sqlite).await;
    network(&s).await;
    assert_eq!(as_caller(&s, INSURER, None, "Observation/rel-enc-obs").await.status, 200);
    s.stop().await;
    let s = TestServer::start_access(Backend::Sqlite, opt_in()).await;
    network(&s).await;
    assert_eq!(get(&s, "Observation/rel-enc-obs").await.status, 200);
    s.stop().await;
}

/// A research opt-out: sharing for care stays as it is, research is denied.
fn research_opt_out() -> Value {
    json!({"type": "permit", "provision": [{"type": "deny",
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]}]})
}

/// Every `Type/id` of an export's files (and each file's manifest count checked).
async fn exported(s: &TestServer, query: &str, caller: &str) -> std::collections::BTreeSet<String> {
    let st = crate::export::kick_off(s, query, caller).await;
    let m = crate::export::wait(&st, caller).await;
    let mut out = std::collections::BTreeSet::new();
    for o in m["output"].as_array().unwrap() {
        let rows = crate::export::lines(o["url"].as_str().unwrap(), caller).await;
        assert_eq!(o["count"].as_u64(), Some(rows.len() as u64), "manifest count = lines: {o}");
        for r in rows {
            out.insert(format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()));
        }
    }
    out
}

/// Bulk export and measure reports pass the same filter as every read
/// (issue 7): a clinical member's export holds exactly what it may read
/// (relationship kinds, MPI links, own records, Consent provisions); the
/// insurer's de-identified export and aggregate counts leave out exactly
/// the persons whose Consent explicitly denies research (or the insurer),
/// while a plain deny of sharing keeps a person in de-identified data.
async fn exports(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let api = carebridge::api::ApiConfig {
        dev_caller_header: true,
        report: carebridge::report::ReportConfig { export_dir: dir.path().to_path_buf(), export_page: 3, ..Default::default() },
        ..Default::default()
    };
    let s = TestServer::start_api_access(backend, api, carebridge::services::ValidationMode::Enforce, opt_out()).await;
    network(&s).await;
    let no_insurer = json!({"type": "permit", "provision": [{"type": "deny", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}, "reference": {"reference": "Organization/org-ins"}}]}]});
    seed_case(&s, "exp-ok", None).await;
    seed_case(&s, "exp-deny", Some(&json!({"type": "deny"}))).await;
    seed_case(&s, "exp-code", Some(&fixture("provisions.json")[8]["provision"])).await;
    seed_case(&s, "exp-research", Some(&research_opt_out())).await;
    seed_case(&s, "exp-noins", Some(&no_insurer)).await;
    let q = "$export?_type=Patient,Observation,Encounter,Condition,CareTeam";
    let all = exported(&s, q, "ops;operator").await;
    assert!(all.contains("Observation/exp-deny-hb") && all.contains("Patient/rel-none"), "the operator exports everything");

    // each clinical member's export = exactly what it may read
    let members = [HOSP, GP, "nursing-service org-nurse", "therapist org-ther", "pharmacy org-pharm", "municipality org-muni"];
    for member in members {
        let got = exported(&s, q, &dev_header(member)).await;
        assert!(got.is_subset(&all));
        for key in &all {
            let r = as_caller(&s, member, None, key).await;
            assert_eq!(got.contains(key), r.status == 200, "{member}: {key} exported iff readable ({})", r.status);
        }
        if member == HOSP {
            for want in ["Observation/exp-ok-hb", "Observation/exp-research-hb", "Observation/exp-code-old", "Observation/rel-enc-obs", "Observation/rel-mpi-b-obs"] {
                assert!(got.contains(want), "hospital export lacks {want}");
            }
            for gone in ["Observation/exp-deny-hb", "Patient/exp-deny", "Observation/exp-code-hb", "Observation/rel-none-obs", "Observation/rel-fin-obs"] {
                assert!(!got.contains(gone), "hospital export holds {gone}");
            }
        }
        if member == GP {
            assert!(got.contains("Observation/rel-none-own") && !got.contains("Observation/rel-none-obs"), "own record only");
        }
    }
    // a Group-level export is filtered the same way
    let g = json!({"resourceType": "Group", "id": "exp-cohort", "type": "person", "actual": true,
        "member": [{"entity": {"reference": "Patient/exp-ok"}}, {"entity": {"reference": "Patient/exp-deny"}}]});
    assert_eq!(put_json(&s, "Group/exp-cohort", &g).await.status, 201);
    let got = exported(&s, "Group/exp-cohort/$export?_type=Observation", &dev_header(HOSP)).await;
    assert!(got.contains("Observation/exp-ok-hb") && !got.iter().any(|k| k.contains("exp-deny")), "{got:?}");

    // the insurer: de-identified, and without the persons who opted out of research or named the insurer
    let ins = exported(&s, "$export?_type=Patient,Observation", &dev_header(INSURER)).await;
    let count = |set: &std::collections::BTreeSet<String>, t: &str| set.iter().filter(|k| k.starts_with(&format!("{t}/"))).count();
    let of = |pid: &str| all.iter().filter(|k| k.starts_with("Observation/") && k.contains(&format!("/{pid}-"))).count();
    assert_eq!(of("exp-research"), 3);
    assert_eq!(count(&ins, "Patient"), count(&all, "Patient") - 2, "exp-research and exp-noins left out, exp-deny kept");
    assert_eq!(count(&ins, "Observation"), count(&all, "Observation") - of("exp-research") - of("exp-noins"));
    assert!(!ins.iter().any(|k| k.contains("exp-")), "pseudonymous ids only");

    // measure counts: only an explicit denial of the purpose removes a person
    let m = json!({"resourceType": "Measure", "id": "all-persons", "status": "active",
        "scoring": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-scoring", "code": "cohort"}]},
        "group": [{"id": "all", "population": [{"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-population", "code": "initial-population"}]},
            "criteria": {"language": "text/fhirpath", "expression": "true"}}]}]});
    assert_eq!(put_json(&s, "Measure/all-persons", &m).await.status, 201);
    let period = "periodStart=2024-01-01&periodEnd=2024-12-31";
    let subjects = |rep: &Value| -> Vec<String> {
        let list = rep["contained"].as_array().unwrap().iter().find(|c| c["resourceType"] == "List").unwrap();
        list["entry"].as_array().unwrap().iter().map(|e| e["item"]["reference"].as_str().unwrap().to_owned()).collect()
    };
    let ips = |rep: &Value| rep["group"][0]["population"][0]["count"].as_u64().unwrap();
    let everyone = get(&s, &format!("Measure/all-persons/$evaluate-measure?{period}&reportType=subject-list")).await.json();
    let persons = subjects(&everyone);
    assert!(persons.contains(&"Patient/exp-research".to_owned()) && persons.contains(&"Patient/exp-deny".to_owned()), "{persons:?}");
    let op = get(&s, &format!("Measure/all-persons/$evaluate-measure?{period}")).await.json();
    assert_eq!(ips(&op), persons.len() as u64 - 1, "the research opt-out is not counted: {op}");
    let r = as_caller(&s, INSURER, None, &format!("Measure/all-persons/$evaluate-measure?{period}")).await;
    assert_eq!(ips(&r.json()), persons.len() as u64 - 2, "nor, for the insurer, the person who denied the insurer");
    // a clinical member's subject list: only the persons it may read
    let hosp = subjects(&as_caller(&s, HOSP, None, &format!("Measure/all-persons/$evaluate-measure?{period}&reportType=subject-list")).await.json());
    for want in ["Patient/exp-ok", "Patient/exp-research", "Patient/rel-enc"] {
        assert!(hosp.contains(&want.to_owned()), "{want} in {hosp:?}");
    }
    for gone in ["Patient/exp-deny", "Patient/rel-none", "Patient/rel-fin", "Patient/rel-eoc"] {
        assert!(!hosp.contains(&gone.to_owned()), "{gone} in {hosp:?}");
    }
    s.stop().await;
}
on_both!(export_and_reports_filtered, exports);

/// A write as `caller` (`<member-type> <member-id>`, or a raw dev header with `;`).
async fn write_as(s: &TestServer, caller: &str, method: reqwest::Method, path: &str, body: Option<&Value>, purpose: Option<&str>) -> Resp {
    let header = if caller.contains(';') { caller.to_owned() } else { dev_header(caller) };
    let mut rb = client().request(method, s.url(path)).header("x-carebridge-dev-caller", header);
    if let Some(b) = body {
        rb = rb.header("content-type", "application/fhir+json").body(b.to_string());
    }
    if let Some(p) = purpose {
        rb = rb.header("x-purpose-of-use", p);
    }
    send(rb).await
}

/// Changes do not depend on the client behaving well (issue 7): a member
/// updates or deletes a stored patient-level resource only when it may
/// read it (care relationship + Consent) or created it (`meta.source`,
/// set by the gateway); break-glass does not extend to changes; creates
/// stay the role policy's; operators and integration engines are not
/// restricted. Refusals are 403 with an OperationOutcome and store nothing.
async fn change_rules(backend: Backend) {
    use reqwest::Method;
    let s = TestServer::start_access(backend, opt_in()).await;
    network(&s).await;
    seed_case(&s, "chg", Some(&json!({"type": "permit"}))).await; // hospital and GP treat her, she consents
    seed_case(&s, "chg-deny", Some(&json!({"type": "deny"}))).await; // treated, but she objects
    const THER: &str = "therapist org-ther";
    let stored = |id: &'static str| {
        let s = &s;
        async move { get(s, &format!("Observation/{id}")).await.json() }
    };
    let mut hb = stored("chg-hb").await;
    hb["status"] = json!("amended");

    // no relationship: update and delete refused, nothing stored
    for (m, body) in [(Method::PUT, Some(&hb)), (Method::DELETE, None)] {
        let r = write_as(&s, THER, m.clone(), "Observation/chg-hb", body, None).await;
        assert_outcome(&r, 403);
        assert!(r.text.contains("care relationship"), "{}", r.text);
    }
    let now = stored("chg-hb").await;
    assert_eq!((now["meta"]["versionId"].as_str(), now["status"].as_str()), (Some("1"), Some("final")), "nothing stored");
    // break-glass reads, but never changes
    assert_eq!(as_caller(&s, THER, Some("BTG"), "Observation/chg-hb").await.status, 200);
    assert_outcome(&write_as(&s, THER, Method::PUT, "Observation/chg-hb", Some(&hb), Some("BTG")).await, 403);
    // relationship and consent: allowed
    assert_eq!(write_as(&s, HOSP, Method::PUT, "Observation/chg-hb", Some(&hb), None).await.status, 200);
    // relationship without consent: refused
    let mut dhb = stored("chg-deny-hb").await;
    dhb["status"] = json!("amended");
    let r = write_as(&s, HOSP, Method::PUT, "Observation/chg-deny-hb", Some(&dhb), None).await;
    assert_outcome(&r, 403);
    assert!(r.text.contains("consent"), "{}", r.text);

    // creates are free (role policy); the creator is recorded by the gateway, not by the client
    let mine = json!({"resourceType": "Observation", "id": "chg-ther", "status": "final", "code": {"text": "gait"},
        "subject": {"reference": "Patient/chg-deny"}, "meta": {"source": "urn:carebridge:member:org-hosp"}});
    let r = write_as(&s, THER, Method::PUT, "Observation/chg-ther", Some(&mine), None).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(stored("chg-ther").await["meta"]["source"], "urn:carebridge:member:org-ther");
    // the creator changes what it created, even without a relationship; the claim to be the hospital is void
    let mut again = mine.clone();
    again["status"] = json!("amended");
    assert_eq!(write_as(&s, THER, Method::PUT, "Observation/chg-ther", Some(&again), None).await.status, 200);
    assert_outcome(&write_as(&s, HOSP, Method::PUT, "Observation/chg-ther", Some(&again), None).await, 403);
    // another member's update keeps the creator
    let mut ok = stored("chg-hb").await;
    ok["status"] = json!("corrected");
    ok["meta"]["source"] = json!("urn:carebridge:member:org-gp");
    assert_eq!(write_as(&s, GP, Method::PUT, "Observation/chg-hb", Some(&ok), None).await.status, 200);
    assert!(stored("chg-hb").await["meta"].get("source").is_none(), "the operator created it: no member source");
    assert_eq!(write_as(&s, THER, Method::DELETE, "Observation/chg-ther", None, None).await.status, 204);

    // a transaction with one refused entry stores nothing
    let mut cond = get(&s, "Condition/chg-cond").await.json();
    cond["note"] = json!([{"text": "x"}]);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": cond, "request": {"method": "PUT", "url": "Condition/chg-cond"}},
        {"request": {"method": "DELETE", "url": "Observation/chg-deny-old"}}]});
    let r = write_as(&s, HOSP, Method::POST, "", Some(&tx), None).await;
    assert_outcome(&r, 403);
    assert_eq!(get(&s, "Condition/chg-cond").await.json()["meta"]["versionId"], "1");
    assert_eq!(get(&s, "Observation/chg-deny-old").await.status, 200);
    // in a batch, the refused entry is 403 on its own
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "DELETE", "url": "Observation/chg-deny-old"}}]});
    let r = write_as(&s, HOSP, Method::POST, "", Some(&batch), None).await;
    assert!(r.json()["entry"][0]["response"]["status"].as_str().unwrap().starts_with("403"), "{}", r.text);

    // operators, integration engines: unrestricted
    assert_eq!(write_as(&s, "test-ie;integration-engine;org-ie", Method::PUT, "Observation/chg-deny-hb", Some(&dhb), None).await.status, 200);
    assert_eq!(delete(&s, "Observation/chg-deny-old").await.status, 204);
    s.stop().await;
}
on_both!(changes_need_relationship_or_creator, change_rules);

/// Deleting a Task, CarePlan or CareTeam follows the workflow rules of
/// their updates: a Task its owner or requester, a CarePlan its author, a
/// CareTeam its participants or managing organization.
async fn workflow_deletes(backend: Backend) {
    use reqwest::Method;
    let s = TestServer::start_access(backend, opt_out()).await;
    network(&s).await;
    seed_case(&s, "wfd", None).await;
    let subj = json!({"reference": "Patient/wfd"});
    let org = |m: &str| json!({"reference": format!("Organization/{m}")});
    let team = json!({"resourceType": "CareTeam", "id": "wfd-team", "status": "active", "subject": subj,
        "managingOrganization": [org("org-hosp")], "participant": [{"member": org("org-gp")}, {"member": org("org-nurse")}]});
    let plan = json!({"resourceType": "CarePlan", "id": "wfd-plan", "status": "active", "intent": "plan", "subject": subj,
        "author": org("org-hosp"), "careTeam": [{"reference": "CareTeam/wfd-team"}]});
    let task = |id: &str| json!({"resourceType": "Task", "id": id, "status": "requested", "intent": "order", "for": subj,
        "requester": org("org-hosp"), "owner": org("org-nurse")});
    let entries: Vec<Value> = [team, plan, task("wfd-t1"), task("wfd-t2")].into_iter().map(put).collect();
    load(&s, &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    let refused = |r: Resp, why: &str| {
        assert_outcome(&r, 403);
        assert!(r.text.contains(why), "{why}: {}", r.text);
    };
    // Task: not a third party (the GP treats her, but is neither owner nor requester)
    refused(write_as(&s, GP, Method::DELETE, "Task/wfd-t1", None, None).await, "only its owner or requester");
    assert_eq!(get(&s, "Task/wfd-t1").await.status, 200, "still there");
    assert_eq!(write_as(&s, "nursing-service org-nurse", Method::DELETE, "Task/wfd-t1", None, None).await.status, 204, "the owner");
    assert_eq!(write_as(&s, HOSP, Method::DELETE, "Task/wfd-t2", None, None).await.status, 204, "the requester");
    // CarePlan: a participant may update it, but only the author delete it
    refused(write_as(&s, GP, Method::DELETE, "CarePlan/wfd-plan", None, None).await, "only its author");
    assert_eq!(get(&s, "CarePlan/wfd-plan").await.status, 200);
    assert_eq!(write_as(&s, HOSP, Method::DELETE, "CarePlan/wfd-plan", None, None).await.status, 204);
    // CareTeam: not an outsider
    refused(write_as(&s, "pharmacy org-pharm", Method::DELETE, "CareTeam/wfd-team", None, None).await, "only its participants");
    assert_eq!(get(&s, "CareTeam/wfd-team").await.status, 200);
    assert_eq!(write_as(&s, GP, Method::DELETE, "CareTeam/wfd-team", None, None).await.status, 204, "a participant");
    s.stop().await;
}
on_both!(workflow_deletes_follow_update_rules, workflow_deletes);
