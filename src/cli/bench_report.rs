//! `carebridge bench report` and `carebridge bench export`: generate
//! Synthea-shaped patients (Patient, Encounters, Conditions, member
//! Organizations; one person in ten has a second record at another
//! institution, linked in the MPI tables) straight into a fresh SQLite store
//! (rows written with `StoreTx::write`, no pipeline: this measures reading,
//! not ingest), then time
//!
//! * `report`: the first facts load, then every built-in measure (all
//!   stratifiers, period 2024), each on its own, after ingest;
//! * `export`: a system-level Bulk Data export (resources/s) and the peak
//!   resident memory (`VmHWM` of `/proc/self/status`) before and after.

use crate::report::evaluate::{self, EvalRequest};
use crate::report::export::{self, ExportParams};
use crate::report::{ReportConfig, Reports};
use crate::services::Services;
use crate::store::{Sql, VersionWrite, WriteMethod};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn vm_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system) this process has used so far (Linux
/// `/proc/self/stat`, clock ticks of 10 ms); lets the figures be read on a
/// machine that other work shares.
fn cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the parenthesised command name; utime and stime are the 14th and 15th
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A tiny deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const HOSPITALS: usize = 10;
const GPS: usize = 40;
const CITIES: [(&str, &str); 6] = [("Hamburg", "20"), ("Kiel", "24"), ("Lübeck", "23"), ("Bremen", "28"), ("Hannover", "30"), ("Rostock", "18")];
const ICD: [&str; 10] = ["I50.01", "I50.13", "J18.9", "E11.9", "I10", "K35.8", "S72.0", "C34.1", "F32.1", "N39.0"];

async fn setup(patients: usize, db: Option<String>) -> Result<(Services, Option<std::path::PathBuf>, usize), String> {
    let (url, dir) = match db {
        Some(u) => (u, None),
        None => {
            let dir = std::env::temp_dir().join(format!("carebridge-bench-report-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            (format!("sqlite:{}", dir.join("bench.db").display()), Some(dir))
        }
    };
    let opts = crate::server::ServerOptions {
        database_url: url,
        package_cache: None,
        api: Default::default(),
        validation: Default::default(),
        packs: vec![],
        mpi: Default::default(),
        access: Default::default(),
    };
    let services = crate::server::services(&opts).await.map_err(|e| e.to_string())?;
    // a given database that already holds data is reused as it is (repeat runs)
    let existing = services.store.count(crate::store::Sql::new("SELECT COUNT(*) FROM resources WHERE deleted = 0")).await.map_err(|e| e.to_string())?;
    if dir.is_none() && existing > 0 {
        println!("reusing the {existing} resources in the given database (no data generated)");
        return Ok((services, dir, existing as usize));
    }
    let t0 = Instant::now();
    let n = generate(&services, patients).await?;
    println!("generated {patients} persons, {n} resources in {:.1} s", t0.elapsed().as_secs_f64());
    Ok((services, dir, n))
}

async fn generate(services: &Services, persons: usize) -> Result<usize, String> {
    let now = crate::fhir::datetime::now_micros();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut batch: Vec<VersionWrite> = vec![];
    let mut mpi: Vec<Sql> = vec![];
    let mut total = 0usize;
    let w = |rtype: &str, id: String, body: serde_json::Value| VersionWrite {
        rtype: rtype.to_owned(),
        id,
        version: 1,
        last_updated: now,
        method: WriteMethod::Post,
        body: Some(bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default())),
        index: vec![],
    };
    for h in 0..HOSPITALS {
        batch.push(w("Organization", format!("hosp-{h}"), json!({"resourceType": "Organization", "id": format!("hosp-{h}"), "name": format!("Klinikum {h}"),
            "type": [{"coding": [{"system": "https://carebridge.example/fhir/CodeSystem/member-type", "code": "hospital"}]}]})));
    }
    for g in 0..GPS {
        batch.push(w("Organization", format!("gp-{g}"), json!({"resourceType": "Organization", "id": format!("gp-{g}"), "name": format!("Praxis {g}"),
            "type": [{"coding": [{"system": "https://carebridge.example/fhir/CodeSystem/member-type", "code": "gp-practice"}]}]})));
    }
    for p in 0..persons {
        let records = if p % 10 == 0 { 2 } else { 1 };
        let (city, plz) = CITIES[rng.below(CITIES.len() as u64) as usize];
        let birth = format!("{}-{:02}-{:02}", 1930 + rng.below(90), 1 + rng.below(12), 1 + rng.below(28));
        let gender = if rng.below(2) == 0 { "female" } else { "male" };
        for r in 0..records {
            let pid = format!("p{p}-{r}");
            batch.push(w("Patient", pid.clone(), json!({"resourceType": "Patient", "id": pid,
                "identifier": [{"system": format!("urn:bench:hosp-{r}:mrn"), "value": p.to_string()}],
                "name": [{"family": format!("Family{p}"), "given": ["Given"]}], "gender": gender, "birthDate": birth,
                "address": [{"line": ["Hauptstraße 1"], "city": city, "postalCode": format!("{plz}{:03}", rng.below(1000))}]})));
            if records > 1 {
                let mut s = Sql::new("INSERT INTO mpi_patient (pid, grp, how, assurance, score, feat, updated) VALUES (");
                s.text_param(&pid).push(", ").text_param(format!("person-{p}")).push(", 'manual', 'level4', 0, '{}', ").int_param(now).push(")");
                mpi.push(s);
            }
            let encounters = 1 + rng.below(5) as usize;
            let mut day = rng.below(700) as i64;
            for e in 0..encounters {
                let eid = format!("{pid}-e{e}");
                let k = rng.below(100);
                let (class, provider) = match k {
                    0..=59 => ("AMB", format!("gp-{}", rng.below(GPS as u64))),
                    60..=89 => ("IMP", format!("hosp-{}", rng.below(HOSPITALS as u64))),
                    90..=94 => ("HH", format!("hosp-{}", rng.below(HOSPITALS as u64))),
                    _ => ("EMER", format!("hosp-{}", rng.below(HOSPITALS as u64))),
                };
                let los = if class == "IMP" || class == "HH" { rng.below(14) as i64 } else { 0 };
                let start = jiff::civil::date(2023, 1, 1).checked_add(jiff::Span::new().days(day)).map_err(|e| e.to_string())?;
                let end = start.checked_add(jiff::Span::new().days(los)).map_err(|e| e.to_string())?;
                let cid = format!("{pid}-c{e}");
                let with_dx = class != "AMB" || e % 2 == 0;
                let mut enc = json!({"resourceType": "Encounter", "id": eid, "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
                    "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}], "text": "Encounter"}],
                    "subject": {"reference": format!("Patient/{pid}")},
                    "period": {"start": format!("{start}T08:00:00+01:00"), "end": format!("{end}T12:00:00+01:00")},
                    "serviceProvider": {"reference": format!("Organization/{provider}")}});
                if with_dx {
                    enc["diagnosis"] = json!([{"condition": {"reference": format!("Condition/{cid}")}, "rank": 1}]);
                    let code = ICD[rng.below(ICD.len() as u64) as usize];
                    batch.push(w("Condition", cid.clone(), json!({"resourceType": "Condition", "id": cid,
                        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                        "code": {"coding": [{"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "version": "2024", "code": code}]},
                        "subject": {"reference": format!("Patient/{pid}")}, "encounter": {"reference": format!("Encounter/{eid}")},
                        "onsetDateTime": format!("{start}T08:00:00+01:00"), "note": [{"text": "free text"}]})));
                }
                batch.push(w("Encounter", eid, enc));
                day += los + 1 + rng.below(60) as i64;
            }
        }
        if batch.len() >= 5000 {
            total += flush(services, &mut batch, &mut mpi).await?;
        }
    }
    total += flush(services, &mut batch, &mut mpi).await?;
    Ok(total)
}

async fn flush(services: &Services, batch: &mut Vec<VersionWrite>, mpi: &mut Vec<Sql>) -> Result<usize, String> {
    let n = batch.len();
    let mut tx = services.store.begin().await.map_err(|e| e.to_string())?;
    tx.write(std::mem::take(batch)).await.map_err(|e| e.to_string())?;
    if !mpi.is_empty() {
        tx.execute_many(std::mem::take(mpi)).await.map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(n)
}

pub async fn report(patients: usize, db: Option<String>, config: ReportConfig) -> Result<(), String> {
    let (services, dir, _) = setup(patients, db).await?;
    let reports = Reports::new(config, services.validator.fhirpath_model()).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let snap = reports.facts.snapshot(services.store.as_ref(), None).await.map_err(|e| e.to_string())?;
    println!(
        "facts: first load {:.2} s ({} resources, {} persons), RSS {} MiB",
        t0.elapsed().as_secs_f64(),
        snap.resources,
        snap.persons.len(),
        vm_rss_kib().unwrap_or(0) / 1024
    );
    let t1 = Instant::now();
    let snap = reports.facts.snapshot(services.store.as_ref(), None).await.map_err(|e| e.to_string())?;
    println!("facts: refresh without changes {:.3} s", t1.elapsed().as_secs_f64());
    let caller = crate::auth::Caller::dev_operator();
    let filter = crate::report::access::RowFilter::for_report(&services, &caller, false).await.map_err(|e| e.to_string())?;
    let req = EvalRequest { period_start: "2024-01-01".into(), period_end: "2024-12-31".into(), subject: None, want_subjects: false, stratify: None };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("measure timings ({threads} threads, all stratifiers, period 2024):");
    for m in reports.builtin_measures() {
        let t = Instant::now();
        let c0 = cpu_secs().unwrap_or(0.0);
        let tally = evaluate::evaluate(&m, &snap, &reports.model, &filter, &req, None).map_err(|e| format!("{}: {e}", m.id))?;
        let masks = crate::report::output::masks(&m, &tally, reports.config.min_cell);
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_secs().unwrap_or(0.0) - c0;
        let ip = tally.groups.first().map(|g| g.total.counts[0]).unwrap_or(0);
        println!(
            "  {:<22} {:>7.3} s wall, {:>5.2} CPU-s  ({} items, initial population {ip}, {} groups masked)",
            m.id,
            secs,
            cpu,
            tally.items,
            masks.len()
        );
    }
    drop(services);
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}

pub async fn export(patients: usize, deidentify: bool, db: Option<String>, mut config: ReportConfig) -> Result<(), String> {
    let (services, dir, n) = setup(patients, db).await?;
    if let Some(d) = &dir {
        config.export_dir = d.join("export");
    }
    let hwm_before = vm_hwm_kib().unwrap_or(0);
    let rss_before = vm_rss_kib().unwrap_or(0);
    let reports = Arc::new(Reports::new(config, services.validator.fhirpath_model()).map_err(|e| e.to_string())?);
    let types = vec!["Patient".to_owned(), "Encounter".to_owned(), "Condition".to_owned(), "Organization".to_owned()];
    let params = ExportParams { level: "system".into(), group: None, types, since: None, type_filters: vec![], deidentify, member: None, member_type: crate::auth::MemberType::Operator, scopes: vec![], purpose_of_use: None };
    let caller = crate::auth::Caller::dev_operator();
    let t = Instant::now();
    let id = export::kick_off(&services, &reports, &caller, "bench", params).await.map_err(|e| e.to_string())?;
    let job = loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let j = export::load_job(&services, &id).await.map_err(|e| e.to_string())?.ok_or("job vanished")?;
        if j.status != "in-progress" {
            break j;
        }
    };
    let secs = t.elapsed().as_secs_f64();
    if job.status != "completed" {
        return Err(format!("export {}: {}", job.status, job.error.unwrap_or_default()));
    }
    let written: u64 = job.output.iter().filter_map(|o| o.get("count").and_then(|c| c.as_u64())).sum();
    println!(
        "export ({}): {written} of {n} resources in {secs:.2} s = {:.0} resources/s",
        if deidentify { "de-identified" } else { "as stored" },
        written as f64 / secs.max(1e-9)
    );
    println!(
        "memory: RSS before export {} MiB, peak (VmHWM) before {} MiB, after {} MiB",
        rss_before / 1024,
        hwm_before / 1024,
        vm_hwm_kib().unwrap_or(0) / 1024
    );
    drop(services);
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}
