//! `carebridge load FILES|DIRS`: Bundles (`.json`) and NDJSON (`.ndjson`,
//! one resource per line) into a running server (`--server URL`, posted as
//! transaction Bundles) or straight into a store (`--db URL`, through the
//! same write pipeline in-process). A progress bar counts bytes; the closing
//! line reports resources/s. Transaction/batch Bundles are posted as they
//! are; other Bundles and NDJSON are wrapped into transactions (PUT when the
//! resource has an id — so re-loading is idempotent — POST otherwise).

use crate::pipeline::{bundle_entries, Pipeline};
use crate::services::Services;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub enum Target {
    Server(String),
    Store(Services),
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub files: usize,
    pub resources: usize,
    pub failed: Vec<String>,
    pub seconds: f64,
}

/// One unit of work: a transaction/batch Bundle.
fn units_of(path: &std::path::Path, bytes: &[u8]) -> Result<Vec<Value>, String> {
    let name = path.display().to_string();
    if name.ends_with(".ndjson") {
        let mut entries = vec![];
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(line).map_err(|e| format!("{name}:{}: {e}", i + 1))?;
            entries.push(v);
        }
        return Ok(entries.chunks(500).map(|c| wrap(c.to_vec())).collect());
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("{name}: {e}"))?;
    match (v.get("resourceType").and_then(Value::as_str), v.get("type").and_then(Value::as_str)) {
        (Some("Bundle"), Some("transaction" | "batch")) => Ok(vec![v]),
        (Some("Bundle"), _) => {
            let res: Vec<Value> = v
                .get("entry")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|e| e.get("resource").cloned()).collect())
                .unwrap_or_default();
            Ok(res.chunks(500).map(|c| wrap(c.to_vec())).collect())
        }
        (Some(_), _) => Ok(vec![wrap(vec![v])]),
        _ => Err(format!("{name}: not a FHIR resource")),
    }
}

fn wrap(resources: Vec<Value>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let t = r.get("resourceType").and_then(Value::as_str).unwrap_or("").to_owned();
            match r.get("id").and_then(Value::as_str) {
                Some(id) => json!({"resource": r, "request": {"method": "PUT", "url": format!("{t}/{id}")}}),
                None => json!({"resource": r, "request": {"method": "POST", "url": t}}),
            }
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn count_entries(b: &Value) -> usize {
    b.get("entry").and_then(Value::as_array).map_or(0, Vec::len)
}

pub async fn run(target: Target, paths: &[PathBuf], concurrency: usize, quiet: bool) -> Result<LoadReport, String> {
    let files = super::collect_files(paths, &[".json", ".ndjson"]).map_err(|e| e.to_string())?;
    let total_bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total_bytes) };
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let resources = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let target = Arc::new(target);
    let client = reqwest::Client::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for f in files.clone() {
        let permit = sem.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let (target, resources, failed, pb, client) = (target.clone(), resources.clone(), failed.clone(), pb.clone(), client.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let bytes = match tokio::fs::read(&f).await {
                Ok(b) => b,
                Err(e) => {
                    failed.lock().expect("lock").push(format!("{}: {e}", f.display()));
                    return;
                }
            };
            let len = bytes.len() as u64;
            match units_of(&f, &bytes) {
                Err(e) => failed.lock().expect("lock").push(e),
                Ok(units) => {
                    for u in units {
                        let n = count_entries(&u);
                        let r = match target.as_ref() {
                            Target::Server(base) => post(&client, base, &u).await,
                            Target::Store(services) => match bundle_entries(&u) {
                                Ok(entries) => {
                                    let p = Pipeline::new(services);
                                    if u.get("type").and_then(Value::as_str) == Some("batch") {
                                        let errs: Vec<String> = p.batch(entries).await.into_iter().filter_map(|r| r.err().map(|e| e.to_string())).collect();
                                        if errs.is_empty() { Ok(()) } else { Err(errs.join("; ")) }
                                    } else {
                                        p.transaction(entries).await.map(|_| ()).map_err(|e| e.to_string())
                                    }
                                }
                                Err(e) => Err(e),
                            },
                        };
                        match r {
                            Ok(()) => {
                                resources.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => failed.lock().expect("lock").push(format!("{}: {e}", f.display())),
                        }
                    }
                }
            }
            pb.inc(len);
        });
    }
    while tasks.join_next().await.is_some() {}
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let report = LoadReport {
        files: files.len(),
        resources: resources.load(Ordering::Relaxed),
        failed: std::mem::take(&mut *failed.lock().expect("lock")),
        seconds: secs,
    };
    Ok(report)
}

async fn post(client: &reqwest::Client, base: &str, bundle: &Value) -> Result<(), String> {
    let body = serde_json::to_vec(bundle).map_err(|e| e.to_string())?;
    let r = client
        .post(base.trim_end_matches('/'))
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        Err(format!("HTTP {status}: {}", text.chars().take(300).collect::<String>()))
    }
}
