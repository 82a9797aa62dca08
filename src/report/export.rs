//! FHIR Bulk Data Access 2.0.0 export (`export.html`): kick-off at system,
//! `Patient` and `Group/[id]` level, asynchronous jobs kept in the database
//! (`export_job`, so status survives a restart and any replica can answer
//! a poll), NDJSON files per resource type under the configured export
//! directory, served only to the client that asked, until they expire.
//!
//! Rows are read through the one read path (`read::search` with keyset
//! pages of `[report] export_page` resources, or `read::patient_compartment`
//! per 200 Group members), pass the job's [`super::access::RowFilter`] (the
//! caller's care relationships and the patients' Consents, loaded once when
//! the job starts), and are written line by line: memory holds one page,
//! whatever the export's size. Insurer exports are de-identified
//! ([`super::deid`]) and leave out the persons whose Consent explicitly
//! denies secondary use; the manifest's `count` is what was written.
//!
//! Invariant: a job's files are only ever served to the `client_id` that
//! started it, and are removed on cancel (`DELETE`) and after expiry.

use super::access::{RowBody, RowFilter, RowRef};
use super::{deid, ReportError, Reports};
use crate::auth::Caller;
use crate::fhir::datetime::{format_instant, now_micros};
use crate::search::params::{SearchRequest, Total};
use crate::services::Services;
use crate::store::{ResourceRow, Sql, SqlValue};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What was asked for at kick-off.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportParams {
    /// `system`, `patient` or `group`
    pub level: String,
    pub group: Option<String>,
    pub types: Vec<String>,
    /// µs; only resources last updated at or after
    pub since: Option<i64>,
    /// (type, search query) pairs
    pub type_filters: Vec<(String, String)>,
    pub deidentify: bool,
    /// the requesting caller's member and member type (the row filter runs as them)
    #[serde(default)]
    pub member: Option<String>,
    #[serde(default = "operator")]
    pub member_type: crate::auth::MemberType,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub purpose_of_use: Option<String>,
}

fn operator() -> crate::auth::MemberType {
    crate::auth::MemberType::Operator
}

/// One job row.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub client_id: String,
    pub status: String,
    pub request: String,
    pub params: ExportParams,
    pub transaction_time: i64,
    pub progress: String,
    pub output: Vec<Value>,
    pub error: Option<String>,
    pub expires: Option<i64>,
}

/// Cancellation flags of the jobs running in this process.
#[derive(Default)]
pub struct Running {
    flags: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

fn text(v: Option<&SqlValue>) -> String {
    v.and_then(|x| x.as_str()).unwrap_or("").to_owned()
}

const JOB_COLUMNS: &str = "id, client_id, status, request, params, transaction_time, progress, output, error, expires";

fn job_from_row(r: &[SqlValue]) -> Option<Job> {
    Some(Job {
        id: text(r.first()),
        client_id: text(r.get(1)),
        status: text(r.get(2)),
        request: text(r.get(3)),
        params: serde_json::from_str(&text(r.get(4))).ok()?,
        transaction_time: r.get(5).and_then(|v| v.as_i64()).unwrap_or(0),
        progress: text(r.get(6)),
        output: serde_json::from_str(&text(r.get(7))).unwrap_or_default(),
        error: r.get(8).and_then(|v| v.as_str()).map(str::to_owned),
        expires: r.get(9).and_then(|v| v.as_i64()),
    })
}

pub async fn load_job(services: &Services, id: &str) -> Result<Option<Job>, ReportError> {
    let mut sql = Sql::new(format!("SELECT {JOB_COLUMNS} FROM export_job WHERE id = "));
    sql.text_param(id);
    Ok(services.store.rows(sql).await?.first().and_then(|r| job_from_row(r)))
}

async fn update(services: &Services, id: &str, set: &str, params: Vec<crate::store::SqlParam>) -> Result<(), ReportError> {
    let mut sql = Sql::new(format!("UPDATE export_job SET {set} WHERE id = "));
    sql.params = params;
    sql.text_param(id);
    let mut tx = services.store.begin().await?;
    tx.execute(sql).await?;
    tx.commit().await?;
    Ok(())
}

fn job_dir(reports: &Reports, id: &str) -> PathBuf {
    reports.config.export_dir.join(id)
}

/// Kick-off: store the job and start it; returns the job id.
pub async fn kick_off(services: &Services, reports: &Arc<Reports>, caller: &Caller, request: &str, params: ExportParams) -> Result<String, ReportError> {
    cleanup_expired(services, reports).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let now = now_micros();
    let mut sql = Sql::new(
        "INSERT INTO export_job (id, client_id, status, request, params, transaction_time, progress, output, created) VALUES (",
    );
    sql.text_param(&id).push(", ").text_param(&caller.client_id).push(", ").text_param("in-progress").push(", ");
    sql.text_param(request).push(", ").text_param(serde_json::to_string(&params).unwrap_or_default()).push(", ");
    sql.int_param(now).push(", ").text_param("queued").push(", ").text_param("[]").push(", ").int_param(now).push(")");
    let mut tx = services.store.begin().await?;
    tx.execute(sql).await?;
    tx.commit().await?;
    spawn(services.clone(), reports.clone(), id.clone());
    Ok(id)
}

/// Start (or restart after a restart of the gateway) every unfinished job.
pub async fn resume(services: &Services, reports: &Arc<Reports>) -> Result<usize, ReportError> {
    let rows = services.store.rows(Sql::new("SELECT id FROM export_job WHERE status = 'in-progress'")).await?;
    let ids: Vec<String> = rows.iter().map(|r| text(r.first())).collect();
    for id in &ids {
        spawn(services.clone(), reports.clone(), id.clone());
    }
    Ok(ids.len())
}

fn spawn(services: Services, reports: Arc<Reports>, id: String) {
    let flag = Arc::new(AtomicBool::new(false));
    if let Ok(mut f) = reports.running.flags.lock() {
        f.insert(id.clone(), flag.clone());
    }
    tokio::spawn(async move {
        let r = run(&services, &reports, &id, &flag).await;
        if let Ok(mut f) = reports.running.flags.lock() {
            f.remove(&id);
        }
        match r {
            Ok(()) => {}
            Err(_) if flag.load(Ordering::Relaxed) => {}
            Err(e) => {
                tracing::error!(job = %id, error = %e, "export failed");
                let _ = update(&services, &id, "status = 'error', error = ?", vec![crate::store::SqlParam::Text(e.to_string())]).await;
            }
        }
    });
}

/// Cancel a job: stop it, remove its files and its row. `false` if unknown.
pub async fn cancel(services: &Services, reports: &Reports, caller: &Caller, id: &str) -> Result<bool, ReportError> {
    let Some(job) = load_job(services, id).await? else { return Ok(false) };
    if job.client_id != caller.client_id {
        return Err(ReportError::Forbidden("this export belongs to another client".into()));
    }
    if let Some(f) = reports.running.flags.lock().ok().and_then(|f| f.get(id).cloned()) {
        f.store(true, Ordering::Relaxed);
    }
    let mut sql = Sql::new("DELETE FROM export_job WHERE id = ");
    sql.text_param(id);
    let mut tx = services.store.begin().await?;
    tx.execute(sql).await?;
    tx.commit().await?;
    let _ = std::fs::remove_dir_all(job_dir(reports, id));
    Ok(true)
}

/// Remove expired jobs and their files.
pub async fn cleanup_expired(services: &Services, reports: &Reports) -> Result<(), ReportError> {
    let mut sql = Sql::new("SELECT id FROM export_job WHERE expires IS NOT NULL AND expires < ");
    sql.int_param(now_micros());
    let rows = services.store.rows(sql).await?;
    for r in rows {
        let id = text(r.first());
        let _ = std::fs::remove_dir_all(job_dir(reports, &id));
        let mut d = Sql::new("DELETE FROM export_job WHERE id = ");
        d.text_param(&id);
        let mut tx = services.store.begin().await?;
        tx.execute(d).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The path of an output file, for its owner only.
pub async fn file(services: &Services, reports: &Reports, caller: &Caller, id: &str, name: &str) -> Result<PathBuf, ReportError> {
    let job = load_job(services, id).await?.ok_or_else(|| ReportError::NotFound(format!("no export {id}")))?;
    if job.client_id != caller.client_id {
        return Err(ReportError::Forbidden("export files are served only to the client that requested the export".into()));
    }
    if job.expires.is_some_and(|e| e < now_micros()) {
        return Err(ReportError::Gone(format!("export {id} has expired")));
    }
    let ok = name.ends_with(".ndjson") && !name.contains(['/', '\\']) && !name.starts_with('.');
    let p = job_dir(reports, id).join(name);
    if !ok || !p.is_file() {
        return Err(ReportError::NotFound(format!("no file {name} in export {id}")));
    }
    Ok(p)
}

/// The completion manifest (Bulk Data `export.html` "Complete Status").
pub fn manifest(job: &Job, base: &str) -> Value {
    let output: Vec<Value> = job
        .output
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if let Some(f) = o.get("file").and_then(Value::as_str).map(str::to_owned) {
                o["url"] = json!(format!("{base}/_export/file/{}/{f}", job.id));
                if let Some(m) = o.as_object_mut() {
                    m.remove("file");
                }
            }
            o
        })
        .collect();
    json!({
        "transactionTime": format_instant(job.transaction_time),
        "request": job.request,
        "requiresAccessToken": true,
        "output": output,
        "error": [],
    })
}

struct Writer {
    dir: PathBuf,
    files: HashMap<String, (std::io::BufWriter<std::fs::File>, u64)>,
}

impl Writer {
    fn line(&mut self, rtype: &str, bytes: &[u8]) -> Result<(), ReportError> {
        if !self.files.contains_key(rtype) {
            let f = std::fs::File::create(self.dir.join(format!("{rtype}.ndjson"))).map_err(|e| ReportError::Io(e.to_string()))?;
            self.files.insert(rtype.to_owned(), (std::io::BufWriter::with_capacity(1 << 16, f), 0));
        }
        let Some((w, n)) = self.files.get_mut(rtype) else { return Ok(()) };
        w.write_all(bytes).and_then(|_| w.write_all(b"\n")).map_err(|e| ReportError::Io(e.to_string()))?;
        *n += 1;
        Ok(())
    }
    fn finish(self) -> Result<Vec<Value>, ReportError> {
        let mut out = vec![];
        let mut files: Vec<_> = self.files.into_iter().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (t, (mut w, n)) in files {
            w.flush().map_err(|e| ReportError::Io(e.to_string()))?;
            out.push(json!({"type": t, "file": format!("{t}.ndjson"), "count": n}));
        }
        Ok(out)
    }
}

/// One row → one NDJSON line (de-identified for the insurer); `None` when filtered out.
fn line_of(reports: &Reports, caller_deid: bool, row: &ResourceRow) -> Option<Vec<u8>> {
    let body = row.body.as_ref()?;
    if caller_deid {
        let mut v: Value = serde_json::from_slice(body).ok()?;
        deid::deidentify(reports.config.pseudonym_key.as_bytes(), &mut v);
        serde_json::to_vec(&v).ok()
    } else if body.contains(&b'\n') || body.contains(&b'\r') {
        serde_json::from_slice::<Value>(body).ok().and_then(|v| serde_json::to_vec(&v).ok())
    } else {
        Some(body.to_vec())
    }
}

async fn run(services: &Services, reports: &Arc<Reports>, id: &str, cancel: &AtomicBool) -> Result<(), ReportError> {
    let job = load_job(services, id).await?.ok_or_else(|| ReportError::NotFound(id.to_owned()))?;
    let caller = Caller {
        client_id: job.client_id.clone(),
        member: job.params.member.clone(),
        member_type: job.params.member_type,
        scopes: job.params.scopes.clone(),
        purpose_of_use: job.params.purpose_of_use.clone(),
    };
    let dir = job_dir(reports, id);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| ReportError::Io(format!("{}: {e}", dir.display())))?;
    let mut w = Writer { dir, files: HashMap::new() };
    let p = &job.params;
    let filter = RowFilter::for_export(services, &caller, p.deidentify).await?;
    let upto = format_instant(job.transaction_time);
    let page = reports.config.export_page.max(1);
    let ntypes = p.types.len().max(1);
    for (ti, t) in p.types.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(ReportError::Gone("cancelled".into()));
        }
        update(services, id, "progress = ?", vec![crate::store::SqlParam::Text(format!("{}% ({t})", ti * 100 / ntypes))]).await?;
        let filters: Vec<&str> = p.type_filters.iter().filter(|(ft, _)| ft == t).map(|(_, q)| q.as_str()).collect();
        let queries: Vec<Option<&str>> = if filters.is_empty() { vec![None] } else { filters.into_iter().map(Some).collect() };
        let mut seen = std::collections::HashSet::new();
        let multi = queries.len() > 1;
        if p.level == "group" {
            let members = group_members(services, p.group.as_deref().unwrap_or("")).await?;
            for chunk in members.chunks(200) {
                let since = p.since;
                let rows = crate::read::patient_compartment(services, chunk, Some(std::slice::from_ref(t)), since)
                    .await
                    .map_err(|e| ReportError::Unprocessable(e.to_string()))?;
                for r in rows {
                    if r.rtype != *t || r.last_updated > job.transaction_time {
                        continue;
                    }
                    if !queries.iter().all(Option::is_none) {
                        // _typeFilter at group level: keep rows the filter query matches
                        if !matches_filter(services, t, &queries, &r).await? {
                            continue;
                        }
                    }
                    emit(reports, &filter, p.deidentify, &r, &mut w)?;
                }
            }
            continue;
        }
        for q in queries {
            let mut pairs: Vec<(String, String)> = q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
            if let Some(s) = p.since {
                pairs.push(("_lastUpdated".into(), format!("ge{}", format_instant(s))));
            }
            pairs.push(("_lastUpdated".into(), format!("le{upto}")));
            let mut req = SearchRequest::parse(&services.registry, t, &pairs, true).map_err(|e| ReportError::Invalid(format!("_typeFilter {t}: {e}")))?;
            req.count = page;
            req.total = Total::None;
            let mut after: Option<String> = None;
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Err(ReportError::Gone("cancelled".into()));
                }
                req.page = after.clone();
                let out = crate::read::search(services, &req, &mut crate::auth::filter::Access::internal(services)).await.map_err(|e| ReportError::Unprocessable(e.to_string()))?;
                for r in &out.matches {
                    if multi && !seen.insert(r.rkey) {
                        continue;
                    }
                    emit(reports, &filter, p.deidentify, r, &mut w)?;
                }
                match out.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(ReportError::Gone("cancelled".into()));
    }
    let output = w.finish()?;
    let expires = now_micros() + reports.config.export_ttl_secs as i64 * 1_000_000;
    update(
        services,
        id,
        "status = 'completed', progress = '100%', output = ?, expires = ?",
        vec![crate::store::SqlParam::Text(serde_json::to_string(&output).unwrap_or_default()), crate::store::SqlParam::Int(expires)],
    )
    .await?;
    Ok(())
}

fn emit(reports: &Reports, filter: &RowFilter, deidentify: bool, r: &ResourceRow, w: &mut Writer) -> Result<(), ReportError> {
    let Some(body) = &r.body else { return Ok(()) };
    if !filter.visible(RowRef { rtype: &r.rtype, id: &r.id, patient: None, body: RowBody::Bytes(body) }) {
        return Ok(());
    }
    if let Some(line) = line_of(reports, deidentify, r) {
        w.line(&r.rtype, &line)?;
    }
    Ok(())
}

async fn matches_filter(services: &Services, t: &str, queries: &[Option<&str>], r: &ResourceRow) -> Result<bool, ReportError> {
    for q in queries.iter().flatten() {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        pairs.push(("_id".into(), r.id.clone()));
        let req = SearchRequest::parse(&services.registry, t, &pairs, true).map_err(|e| ReportError::Invalid(format!("_typeFilter {t}: {e}")))?;
        let out = crate::read::search(services, &req, &mut crate::auth::filter::Access::internal(services)).await.map_err(|e| ReportError::Unprocessable(e.to_string()))?;
        if !out.matches.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The Patient ids of a Group's members.
pub async fn group_members(services: &Services, group: &str) -> Result<Vec<String>, ReportError> {
    let row = services.store.read("Group", group).await?;
    let Some(body) = row.filter(|r| !r.deleted).and_then(|r| r.body) else {
        return Err(ReportError::NotFound(format!("Group/{group} is not known")));
    };
    let g: Value = serde_json::from_slice(&body).map_err(|_| ReportError::Unprocessable(format!("Group/{group} is not JSON")))?;
    Ok(g.get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter_map(|m| m.pointer("/entity/reference").and_then(Value::as_str).and_then(super::facts::patient_id))
        .collect())
}
