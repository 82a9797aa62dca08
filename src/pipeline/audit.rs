//! Writing access audit records (IHE BALP AuditEvents built by
//! `auth::audit`) durably:
//!
//! * for changes, [`change_record`] produces the AuditEvent as one more
//!   version write of the change's own database transaction (the pipeline
//!   calls it), so a change is never committed without its record;
//! * for reads and refused requests, [`AuditSink::record`] makes the
//!   AuditEvent durable before the answer is sent — as one row of the
//!   write-behind table `audit_queue` (the finished resource: id, meta,
//!   content), concurrent records committed together (group commit); the
//!   caller learns whether its record is durable, and if not the request
//!   fails. Turning queued rows into AuditEvent resources with their search
//!   index ([`materialize`]: one transaction writes a batch and deletes its
//!   rows) happens off the request path: when the sink has been idle for
//!   [`IDLE`], when [`BACKLOG`] rows are waiting, and always before anything
//!   reads AuditEvents ([`flush`], called by the API for AuditEvent reads,
//!   searches, system-level history/search, `$everything`, Bundles and
//!   exports). So the audit trail an operator reads is complete, and a read
//!   costs one small row instead of a resource with ~20 index rows.
//!
//! Invariant: [`AuditSink::record`] returns `Ok` only after the transaction
//! holding that record has committed; a queued row is deleted only in the
//! transaction that stores its AuditEvent.

use super::PipelineError;
use crate::auth::audit::{audit_event, patients_of, AccessRecord};
use crate::fhir::{datetime, json, IssueType, OperationOutcome};
use crate::services::Services;
use crate::store::{Sql, SqlValue, StoreError, VersionWrite, WriteMethod};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// The finished AuditEvent of `rec`: a new id, `meta` and `recorded` at `now`.
fn finished_event(rec: &AccessRecord, now: i64) -> (String, Value) {
    let recorded = datetime::format_instant(now);
    let mut ae = audit_event(rec, &recorded);
    let id = uuid::Uuid::new_v4().to_string();
    if let Some(obj) = ae.as_object_mut() {
        json::set_server_fields(obj, &id, 1, &recorded);
    }
    (id, ae)
}

/// The version write of a finished AuditEvent (`body` its bytes), indexed.
fn event_write(services: &Services, id: String, ae: &Value, body: Bytes, last_updated: i64) -> VersionWrite {
    let index = services.registry.index("AuditEvent", ae);
    VersionWrite { rtype: "AuditEvent".into(), id, version: 1, last_updated, method: WriteMethod::Post, body: Some(body), index }
}

/// The AuditEvent of `rec` as a version write (new id, version 1).
pub fn audit_write(services: &Services, rec: &AccessRecord, now: i64) -> Result<VersionWrite, PipelineError> {
    let (id, ae) = finished_event(rec, now);
    let body = serde_json::to_vec(&ae)
        .map_err(|e| PipelineError::BadRequest(OperationOutcome::error(IssueType::Exception, format!("audit record: {e}"))))?;
    Ok(event_write(services, id, &ae, Bytes::from(body), now))
}

/// The AuditEvent of a change: `rec` with the written versions as data and
/// the patients they concern.
pub fn change_record(services: &Services, rec: &AccessRecord, writes: &[VersionWrite], status: u16, now: i64) -> Result<VersionWrite, PipelineError> {
    let mut r = rec.clone();
    r.status = status;
    for w in writes {
        if w.rtype == "AuditEvent" && rec.rtype.as_deref().is_none_or(|t| t != "AuditEvent") {
            continue; // the MPI's own decision records
        }
        r.data.push(format!("{}/{}/_history/{}", w.rtype, w.id, w.version));
        let pats = match &w.body {
            Some(b) => serde_json::from_slice::<Value>(b).map(|v| patients_of(&w.rtype, &w.id, &v)).unwrap_or_default(),
            None if w.rtype == "Patient" => vec![format!("Patient/{}", w.id)],
            None => vec![],
        };
        for p in pats {
            if !r.patients.contains(&p) {
                r.patients.push(p);
            }
        }
    }
    audit_write(services, &r, now)
}

type Job = (AccessRecord, oneshot::Sender<Result<(), String>>);

/// Group-committing writer of read/refusal AuditEvents (into `audit_queue`).
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Job>,
}

/// Records committed together at most.
const GROUP: usize = 256;
/// Materialize queued records once the sink has been quiet this long.
pub const IDLE: std::time::Duration = std::time::Duration::from_millis(200);
/// ... or once this many wait, busy or not.
pub const BACKLOG: usize = 20_000;
/// AuditEvents written per materializing transaction.
const BATCH: usize = 1000;

impl AuditSink {
    /// Start the writer task and the materializer (needs a tokio runtime).
    pub fn start(services: Services) -> AuditSink {
        let (tx, mut rx) = mpsc::channel::<Job>(4096);
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        {
            let (services, queued, wake) = (services.clone(), queued.clone(), wake.clone());
            tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    let mut jobs = vec![first];
                    while jobs.len() < GROUP {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let now = datetime::now_micros();
                    let result = write_group(&services, &jobs, now).await;
                    if result.is_ok() {
                        queued.fetch_add(jobs.len(), std::sync::atomic::Ordering::AcqRel);
                        wake.notify_one();
                    }
                    for (_, reply) in jobs {
                        let _ = reply.send(result.clone());
                    }
                }
            });
        }
        // the materializer: rows queued (by this process or an earlier run)
        // become AuditEvents when the sink is idle or the backlog is large
        tokio::spawn(async move {
            let mut pending = true; // rows an earlier run left behind
            loop {
                if !pending {
                    wake.notified().await;
                }
                // wait for a quiet moment, unless the backlog is large
                loop {
                    let before = queued.load(std::sync::atomic::Ordering::Acquire);
                    if before >= BACKLOG {
                        break;
                    }
                    tokio::time::sleep(IDLE).await;
                    if queued.load(std::sync::atomic::Ordering::Acquire) == before {
                        break;
                    }
                }
                queued.store(0, std::sync::atomic::Ordering::Release);
                match materialize(&services).await {
                    Ok(_) => pending = false,
                    Err(e) => {
                        tracing::error!(error = %e, "queued audit records not materialized; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        pending = true;
                    }
                }
            }
        });
        AuditSink { tx }
    }

    /// Write several records durably (queued together, so they share a
    /// group commit); `Ok` once all are committed.
    pub async fn record_all(&self, recs: Vec<AccessRecord>) -> Result<(), PipelineError> {
        let gone = || PipelineError::Store(StoreError::Backend("audit writer stopped".into()));
        let mut waits = Vec::with_capacity(recs.len());
        for rec in recs {
            let (reply, wait) = oneshot::channel();
            self.tx.send((rec, reply)).await.map_err(|_| gone())?;
            waits.push(wait);
        }
        for wait in waits {
            match wait.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(PipelineError::Store(StoreError::Backend(format!("audit record not written: {e}")))),
                Err(_) => return Err(gone()),
            }
        }
        Ok(())
    }

    /// Write `rec` durably; `Ok` once committed.
    pub async fn record(&self, rec: AccessRecord) -> Result<(), PipelineError> {
        self.record_all(vec![rec]).await
    }
}

/// The finished AuditEvent of `rec`: (id, JSON text).
fn event_text(rec: &AccessRecord, now: i64) -> Result<(String, String), String> {
    let (id, ae) = finished_event(rec, now);
    serde_json::to_string(&ae).map(|t| (id, t)).map_err(|e| format!("audit record: {e}"))
}

async fn write_group(services: &Services, jobs: &[Job], now: i64) -> Result<(), String> {
    let mut sqls = Vec::with_capacity(jobs.len());
    for (rec, _) in jobs {
        let (id, text) = event_text(rec, now)?;
        let mut sql = Sql::new("INSERT INTO audit_queue (id, recorded, body) VALUES (");
        sql.text_param(id).push(", ").int_param(now).push(", ").text_param(text).push(")");
        sqls.push(sql);
    }
    let mut tx = services.store.begin().await.map_err(|e| e.to_string())?;
    tx.execute_many(sqls).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}

/// One materializer at a time in this process (across replicas on
/// PostgreSQL, `FOR UPDATE SKIP LOCKED` keeps them apart).
static MATERIALIZING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Turn every queued audit record into its AuditEvent resource (search
/// index included), in batches of [`BATCH`]; each batch's rows are deleted
/// in the transaction that stores them. Returns how many were written.
pub async fn materialize(services: &Services) -> Result<usize, StoreError> {
    let _one = MATERIALIZING.lock().await;
    let mut total = 0;
    loop {
        let mut tx = services.store.begin().await?;
        let mut q = Sql::new("SELECT seq, id, recorded, body FROM audit_queue ORDER BY seq LIMIT ");
        q.int_param(BATCH as i64);
        if services.store.kind() == "postgres" {
            q.push(" FOR UPDATE SKIP LOCKED");
        }
        let rows = tx.rows(q).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(total);
        }
        let mut writes = Vec::with_capacity(rows.len());
        let mut del = Sql::new("DELETE FROM audit_queue WHERE seq IN (");
        for (i, r) in rows.iter().enumerate() {
            let (Some(seq), Some(id), Some(recorded), Some(body)) = (r.first().and_then(SqlValue::as_i64), r.get(1).and_then(SqlValue::as_str), r.get(2).and_then(SqlValue::as_i64), r.get(3).and_then(SqlValue::as_str)) else {
                return Err(StoreError::Backend("audit_queue row of unexpected shape".into()));
            };
            if i > 0 {
                del.push(", ");
            }
            del.int_param(seq);
            let ae: Value = serde_json::from_str(body).map_err(|e| StoreError::Backend(format!("audit_queue row {seq}: {e}")))?;
            writes.push(event_write(services, id.to_owned(), &ae, Bytes::from(body.to_owned()), recorded));
        }
        del.push(")");
        let n = writes.len();
        tx.write(writes).await?;
        tx.execute(del).await?;
        tx.commit().await?;
        total += n;
    }
}

/// Make every queued audit record readable as an AuditEvent now (before a
/// read that may return AuditEvents). Cheap when nothing is queued.
pub async fn flush(services: &Services) -> Result<(), StoreError> {
    let waiting = services.store.rows(Sql::new("SELECT seq FROM audit_queue LIMIT 1")).await?;
    if !waiting.is_empty() {
        materialize(services).await?;
    }
    Ok(())
}
