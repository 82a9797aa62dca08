//! Reports: every built-in measure on the hand-made population of
//! `fixtures/reports/` against its known answers (`expected.json`), on SQLite
//! and (with `CAREBRIDGE_TEST_POSTGRES`) PostgreSQL; subject lists for
//! clinical roles only and no patient references for the insurer; CSV;
//! POSTed Measures; client errors; small-cell suppression that naive
//! suppression would leak through a total; and the built-in measures on the
//! Synthea samples against an independent computation in this file.

use crate::common::*;
use carebridge::api::ApiConfig;
use carebridge::report::ReportConfig;
use serde_json::{json, Value};

fn config(min_cell: u64) -> ApiConfig {
    ApiConfig { report: ReportConfig { min_cell, ..Default::default() }, dev_caller_header: true, ..Default::default() }
}

async fn get_as(s: &TestServer, path: &str, caller: &str) -> Resp {
    send(client().get(s.url(path)).header("x-carebridge-dev-caller", caller)).await
}

fn pop_count(group: &Value, code: &str) -> Option<i64> {
    group["population"].as_array()?.iter().find(|p| p["code"]["coding"][0]["code"] == code)?.get("count")?.as_i64()
}

fn pop_masked(group: &Value, code: &str) -> bool {
    group["population"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["code"]["coding"][0]["code"] == code))
        .is_some_and(|p| p["_count"]["extension"][0]["valueCode"] == "masked" && p.get("count").is_none())
}

fn group<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["group"].as_array().and_then(|g| g.iter().find(|g| g["id"] == id)).unwrap_or_else(|| panic!("group {id} in {report}"))
}

fn stratum<'a>(g: &'a Value, stratifier: &str, value: &str) -> Option<&'a Value> {
    g["stratifier"]
        .as_array()?
        .iter()
        .find(|s| s["code"][0]["coding"][0]["code"] == stratifier)?["stratum"]
        .as_array()?
        .iter()
        .find(|x| x["value"]["text"] == value)
}

async fn load_population(s: &TestServer) {
    let bundle: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("reports/population.json")).unwrap()).unwrap();
    let r = post_json(s, "", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // pa1 and pb1 are one person at two hospitals (the MPI links them by their demographics; make it explicit)
    let link = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/pa1"}},
        {"name": "patient", "valueReference": {"reference": "Patient/pb1"}}]});
    let _ = post_json(s, "Person/$link", &link).await;
    let p = get(s, "Person?link=Patient/pa1").await.json();
    let q = get(s, "Person?link=Patient/pb1").await.json();
    assert_eq!(match_ids(&p), match_ids(&q), "pa1 and pb1 share one Person");
    assert_eq!(match_ids(&p).len(), 1);
}

const PERIOD: &str = "periodStart=2024-01-01&periodEnd=2024-12-31";

async fn known_answers(backend: Backend) {
    let s = TestServer::start_with(backend, config(1)).await;
    load_population(&s).await;
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("reports/expected.json")).unwrap()).unwrap();
    for (measure, groups) in expected.as_object().unwrap().iter().filter(|(k, _)| !k.starts_with('_')) {
        let r = get(&s, &format!("Measure/{measure}/$evaluate-measure?{PERIOD}")).await;
        assert_eq!(r.status, 200, "{measure}: {}", r.text);
        let report = r.json();
        assert_eq!(report["resourceType"], "MeasureReport");
        assert_eq!(report["type"], "summary");
        assert_eq!(report["measure"], format!("https://carebridge.example/fhir/Measure/{measure}|1.0.0"));
        for (gid, exp) in groups.as_object().unwrap() {
            let g = group(&report, gid);
            for (code, n) in exp["populations"].as_object().unwrap() {
                assert_eq!(pop_count(g, code), n.as_i64(), "{measure}/{gid} {code}");
            }
            if let Some(score) = exp.get("score").and_then(Value::as_f64) {
                let got = g["measureScore"]["value"].as_f64().unwrap_or(f64::NAN);
                assert!((got - score).abs() < 1e-4, "{measure}/{gid} score {got} != {score}");
            }
            for (strat, values) in exp.get("strata").and_then(Value::as_object).into_iter().flatten() {
                for (v, n) in values.as_object().unwrap() {
                    let st = stratum(g, strat, v).unwrap_or_else(|| panic!("{measure}/{gid} {strat}={v}"));
                    assert_eq!(pop_count(st, "initial-population"), n.as_i64(), "{measure}/{gid} {strat}={v}");
                }
            }
            if let Some(subjects) = exp.get("numerator-subjects") {
                let r = get(&s, &format!("Measure/{measure}/$evaluate-measure?{PERIOD}&reportType=subject-list")).await;
                assert_eq!(r.status, 200, "{}", r.text);
                let rep = r.json();
                assert_eq!(rep["type"], "subject-list");
                let g = group(&rep, gid);
                let num = g["population"].as_array().unwrap().iter().find(|p| p["code"]["coding"][0]["code"] == "numerator").unwrap();
                let list_ref = num["subjectResults"]["reference"].as_str().unwrap().trim_start_matches('#').to_owned();
                let list = rep["contained"].as_array().unwrap().iter().find(|c| c["id"] == list_ref.as_str()).unwrap();
                let mut got: Vec<&str> = list["entry"].as_array().unwrap().iter().map(|e| e["item"]["reference"].as_str().unwrap()).collect();
                got.sort();
                let want: Vec<&str> = subjects.as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
                assert_eq!(got, want, "{measure} numerator subjects");
            }
        }
    }
    // stratifiers: member institution and gender of the readmission measure
    let rep = get(&s, &format!("Measure/readmission-30d/$evaluate-measure?{PERIOD}&stratify=member,gender")).await.json();
    let g = group(&rep, "readmission");
    assert_eq!(g["stratifier"].as_array().unwrap().len(), 2, "only the selected stratifiers");
    let a = stratum(g, "member", "Organization/hosp-a").unwrap();
    assert_eq!(pop_count(a, "initial-population"), Some(3)); // e1, e4, e8
    assert_eq!(pop_count(a, "numerator"), Some(2)); // e1 (readmitted at hosp-b), e8
    let male = stratum(g, "gender", "male").unwrap();
    assert_eq!(pop_count(male, "initial-population"), Some(3)); // e4, e8, e9

    // type-level with the canonical URL, POST with Parameters
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "measure", "valueCanonical": "https://carebridge.example/fhir/Measure/home-treatment-share"},
        {"name": "periodStart", "valueDate": "2024-01-01"}, {"name": "periodEnd", "valueDate": "2024-12-31"}]});
    let r = post_json(&s, "Measure/$evaluate-measure", &params).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(pop_count(&r.json()["group"][0], "numerator"), Some(1));

    // a subject report for one person
    let r = get(&s, &format!("Measure/readmission-30d/$evaluate-measure?{PERIOD}&subject=Patient/pb1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rep = r.json();
    assert_eq!(rep["type"], "individual");
    assert_eq!(rep["subject"]["reference"], "Patient/pb1");
    assert_eq!(pop_count(&rep["group"][0], "initial-population"), Some(2)); // e1 and e2: one person

    // a Measure POSTed at run time is evaluable (network-defined measures)
    let m = json!({"resourceType": "Measure", "id": "women", "url": "https://region.example/Measure/women", "status": "active",
        "scoring": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-scoring", "code": "cohort"}]},
        "group": [{"id": "women", "population": [{"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-population", "code": "initial-population"}]},
            "criteria": {"language": "text/fhirpath", "expression": "%patients.gender contains 'female'"}}]}]});
    let r = put_json(&s, "Measure/women", &m).await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    let r = get(&s, &format!("Measure/women/$evaluate-measure?{PERIOD}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(pop_count(&r.json()["group"][0], "initial-population"), Some(3), "persons: pa1/pb1, pd3, pf5");
    let r = get(&s, &format!("Measure/$evaluate-measure?measure=https://region.example/Measure/women&{PERIOD}")).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // the insurer: summary only, never a patient reference
    let ins = "insurer-client;insurer;aok";
    for q in ["reportType=subject-list", "subject=Patient/pa1"] {
        let r = get_as(&s, &format!("Measure/readmission-30d/$evaluate-measure?{PERIOD}&{q}"), ins).await;
        assert_outcome(&r, 403);
    }
    for measure in ["admissions", "length-of-stay", "readmission-30d", "top-diagnoses", "home-treatment-share", "hf-gp-followup-7d"] {
        let r = get_as(&s, &format!("Measure/{measure}/$evaluate-measure?{PERIOD}"), ins).await;
        assert_eq!(r.status, 200, "{}", r.text);
        for needle in ["Patient/", "Encounter/", "Condition/", "subjectResults", "contained", "\"subject\""] {
            assert!(!r.text.contains(needle), "insurer report of {measure} contains {needle}");
        }
    }

    // CSV, by Accept and by _format
    for (path, accept) in [(format!("Measure/length-of-stay/$evaluate-measure?{PERIOD}"), Some("text/csv")), (format!("Measure/length-of-stay/$evaluate-measure?{PERIOD}&_format=csv"), None)] {
        let mut rb = client().get(s.url(&path));
        if let Some(a) = accept {
            rb = rb.header("accept", a);
        }
        let r = send(rb).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.header("content-type").unwrap().starts_with("text/csv"));
        let mut lines = r.text.lines();
        assert_eq!(lines.next(), Some("measure,period_start,period_end,group,stratifier,stratum,population,value"));
        assert!(r.text.contains(",average,,,measure-score,4\n"), "{}", r.text);
        assert!(r.text.contains(",median,,,measure-score,3\n"), "{}", r.text);
    }

    // client errors
    assert_outcome(&get(&s, "Measure/admissions/$evaluate-measure?periodEnd=2024-12-31").await, 400);
    assert_outcome(&get(&s, "Measure/admissions/$evaluate-measure?periodStart=2024-13-01&periodEnd=2024-12-31").await, 400);
    assert_outcome(&get(&s, "Measure/admissions/$evaluate-measure?periodStart=2025-01-01&periodEnd=2024-12-31").await, 400);
    assert_outcome(&get(&s, &format!("Measure/nope/$evaluate-measure?{PERIOD}")).await, 404);
    assert_outcome(&get(&s, &format!("Measure/admissions/$evaluate-measure?{PERIOD}&reportType=bogus")).await, 400);
    assert_outcome(&get(&s, &format!("Measure/admissions/$evaluate-measure?{PERIOD}&stratify=shoe-size")).await, 400);
    assert_outcome(&get(&s, &format!("Measure/$evaluate-measure?{PERIOD}")).await, 400);
    assert_outcome(&send(client().get(s.url(&format!("Measure/admissions/$evaluate-measure?{PERIOD}"))).header("accept", "application/xml")).await, 406);
    // a stored Measure whose criteria are not FHIRPath
    let mut bad = m.clone();
    bad["id"] = json!("bad");
    bad["group"][0]["population"][0]["criteria"]["language"] = json!("text/cql");
    assert!(put_json(&s, "Measure/bad", &bad).await.status < 300);
    assert_outcome(&get(&s, &format!("Measure/bad/$evaluate-measure?{PERIOD}")).await, 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_answers_sqlite() {
    known_answers(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_answers_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    known_answers(Backend::Postgres).await;
}

/// 43 admissions, 3 of men and 40 of women: suppressing only the men's 3
/// would leak it as 43 − 40. The women's cell must be suppressed too.
async fn suppression_leak(backend: Backend) {
    let s = TestServer::start_with(backend, config(5)).await;
    let mut entries = vec![];
    for i in 0..43 {
        let gender = if i < 3 { "male" } else { "female" };
        let pid = format!("sp{i}");
        entries.push(json!({"resource": {"resourceType": "Patient", "id": pid, "gender": gender, "birthDate": format!("{}-01-01", 1940 + i),
            "name": [{"family": format!("Supp{i}x"), "given": [format!("G{i}q")]}]}, "request": {"method": "PUT", "url": format!("Patient/{pid}")}}));
        entries.push(json!({"resource": {"resourceType": "Encounter", "id": format!("se{i}"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}, "subject": {"reference": format!("Patient/{pid}")},
            "period": {"start": "2024-02-01T08:00:00Z", "end": "2024-02-03T08:00:00Z"}, "serviceProvider": {"reference": "Organization/hosp"}},
            "request": {"method": "PUT", "url": format!("Encounter/se{i}")}}));
    }
    entries.push(json!({"resource": {"resourceType": "Organization", "id": "hosp", "name": "H"}, "request": {"method": "PUT", "url": "Organization/hosp"}}));
    let r = post_json(&s, "", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rep = get(&s, &format!("Measure/admissions/$evaluate-measure?{PERIOD}&stratify=gender,member")).await.json();
    let g = group(&rep, "admissions");
    assert_eq!(pop_count(g, "initial-population"), Some(43), "the total is published");
    assert!(pop_masked(stratum(g, "gender", "male").unwrap(), "initial-population"), "3 < k");
    assert!(pop_masked(stratum(g, "gender", "female").unwrap(), "initial-population"), "40 would leak 43 − 40 = 3: complementary suppression");
    // one stratum holding everything is fine
    assert_eq!(pop_count(stratum(g, "member", "Organization/hosp").unwrap(), "initial-population"), Some(43));
    // bed days follow: the men's and women's sums are masked as scores
    let b = group(&rep, "bed-days");
    assert!(stratum(b, "gender", "male").unwrap().get("measureScore").is_none());
    assert!(stratum(b, "gender", "female").unwrap().get("measureScore").is_none());
    assert_eq!(b["measureScore"]["value"].as_f64(), Some(86.0));
    // CSV says masked as well
    let csv = get(&s, &format!("Measure/admissions/$evaluate-measure?{PERIOD}&stratify=gender&_format=csv")).await.text;
    assert!(csv.contains(",admissions,gender,female,initial-population,masked\n"), "{csv}");
    assert!(csv.contains(",admissions,gender,male,initial-population,masked\n"), "{csv}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppression_leak_sqlite() {
    suppression_leak(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppression_leak_postgres() {
    if postgres_url().is_none() {
        eprintln!("skipped: CAREBRIDGE_TEST_POSTGRES not set");
        return;
    }
    suppression_leak(Backend::Postgres).await;
}

/// The suppression algorithm on hand-built tallies.
#[test]
fn complementary_suppression_rules() {
    use carebridge::report::evaluate::{Cell, GroupTally};
    use carebridge::report::measure::CompiledMeasure;
    use carebridge::report::suppress::suppress;
    use std::collections::BTreeMap;
    let m: Value = serde_json::from_str(carebridge::report::BUILTIN_MEASURES.iter().find(|(n, _)| *n == "admissions").unwrap().1).unwrap();
    let m = CompiledMeasure::compile(&m).unwrap();
    let g = &m.groups[0];
    let cell = |n: u64| {
        let mut c = Cell::default();
        c.counts[0] = n;
        c
    };
    let tally = |strata: &[(&str, u64)]| {
        let total: u64 = strata.iter().map(|(_, n)| n).sum();
        let map: BTreeMap<String, Cell> = strata.iter().map(|(k, n)| (k.to_string(), cell(*n))).collect();
        GroupTally { total: cell(total), strata: vec![(0, map)] }
    };
    let masked = |t: &GroupTally, k: &str| suppress(g, t, 5).strata[0][k].0[0];
    // naive leak through the total: 3 + 40
    let t = tally(&[("a", 3), ("b", 40)]);
    assert!(masked(&t, "a") && masked(&t, "b"));
    // two primary cells 1 + 1 would be known to be 1 each: a third is suppressed (the smallest, 9)
    let t = tally(&[("a", 1), ("b", 1), ("c", 9), ("d", 30)]);
    assert!(masked(&t, "a") && masked(&t, "b") && masked(&t, "c") && !masked(&t, "d"));
    // two primary cells 2 + 3: not recoverable, nothing more
    let t = tally(&[("a", 2), ("b", 3), ("c", 30)]);
    assert!(masked(&t, "a") && masked(&t, "b") && !masked(&t, "c"));
    // no small cell: nothing suppressed; zeros are published
    let t = tally(&[("a", 0), ("b", 12), ("c", 30)]);
    assert!(!masked(&t, "a") && !masked(&t, "b") && !masked(&t, "c"));
    // a small total hides itself and every non-zero stratum
    let t = tally(&[("a", 1), ("b", 2), ("c", 0)]);
    let mk = suppress(g, &t, 5);
    assert!(mk.total[0] && mk.strata[0]["a"].0[0] && mk.strata[0]["b"].0[0] && !mk.strata[0]["c"].0[0]);
    // the proportion complement: 38 of 40 readmitted leaves 2 not readmitted
    let m: Value = serde_json::from_str(carebridge::report::BUILTIN_MEASURES.iter().find(|(n, _)| *n == "readmission-30d").unwrap().1).unwrap();
    let m = CompiledMeasure::compile(&m).unwrap();
    let mut c = Cell::default();
    c.counts[0] = 40; // initial population
    c.counts[1] = 40; // denominator
    c.counts[4] = 38; // numerator
    let mk = suppress(&m.groups[0], &GroupTally { total: c, strata: vec![] }, 5);
    assert!(mk.total[4] && !mk.total[1] && mk.total_score);
}

/// The built-in measures on the Synthea samples against a computation
/// written here from the bundles themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthea_against_independent_computation() {
    let Some(shared) = shared_dir() else {
        eprintln!("skipped: ../shared is missing");
        return;
    };
    let dir = shared.join("samples/synthea");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    files.truncate(20);
    let s = TestServer::start_with(Backend::Sqlite, config(1)).await;
    let ts = |v: &Value| v.as_str().and_then(|x| x.parse::<jiff::Timestamp>().ok());
    let (p0, p1) = ("2010-01-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap(), "2020-12-31T23:59:59.999Z".parse::<jiff::Timestamp>().unwrap());
    let (mut admissions, mut los_sum, mut los_n, mut readmit_den, mut readmit_num) = (0i64, 0i64, 0i64, 0i64, 0i64);
    for f in &files {
        let b: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let r = post_json(&s, "", &b).await;
        assert_eq!(r.status, 200, "{}: {}", f.display(), r.diagnostics());
        // one Synthea bundle = one person
        let imp: Vec<&Value> = b["entry"].as_array().unwrap().iter().map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == "Encounter" && r["class"]["code"] == "IMP").collect();
        for e in &imp {
            let start = ts(&e["period"]["start"]).unwrap();
            if start >= p0 && start <= p1 {
                admissions += 1;
            }
            let Some(end) = ts(&e["period"]["end"]) else { continue };
            if e["status"] == "finished" && end >= p0 && end <= p1 {
                let d = |x: &Value| x.as_str().unwrap()[..10].parse::<jiff::civil::Date>().unwrap();
                los_sum += (d(&e["period"]["end"]) - d(&e["period"]["start"])).get_days() as i64;
                los_n += 1;
                readmit_den += 1;
                let limit = end.checked_add(jiff::SignedDuration::from_hours(24 * 30)).unwrap();
                if imp.iter().any(|o| !std::ptr::eq(*o, *e) && ts(&o["period"]["start"]).is_some_and(|s2| s2 > end && s2 <= limit)) {
                    readmit_num += 1;
                }
            }
        }
    }
    let period = "periodStart=2010-01-01&periodEnd=2020-12-31";
    let rep = get(&s, &format!("Measure/admissions/$evaluate-measure?{period}")).await.json();
    assert_eq!(pop_count(group(&rep, "admissions"), "initial-population"), Some(admissions), "admissions");
    let rep = get(&s, &format!("Measure/length-of-stay/$evaluate-measure?{period}")).await.json();
    let g = group(&rep, "average");
    assert_eq!(pop_count(g, "measure-observation"), Some(los_n));
    if los_n > 0 {
        let want = los_sum as f64 / los_n as f64;
        assert!((g["measureScore"]["value"].as_f64().unwrap() - want).abs() < 1e-3, "average LOS {} vs {want}", g["measureScore"]);
    }
    let rep = get(&s, &format!("Measure/readmission-30d/$evaluate-measure?{period}")).await.json();
    let g = group(&rep, "readmission");
    assert_eq!(pop_count(g, "denominator"), Some(readmit_den), "index stays");
    assert_eq!(pop_count(g, "numerator"), Some(readmit_num), "readmissions");
    println!("synthea ({} bundles, 2010–2020): {admissions} admissions, {los_n} discharges (LOS sum {los_sum} d), {readmit_num}/{readmit_den} readmitted", files.len());
    s.stop().await;
}
