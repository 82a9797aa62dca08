//! Writing access audit records (IHE BALP AuditEvents built by
//! `auth::audit`) durably:
//!
//! * for changes, [`change_record`] produces the AuditEvent as one more
//!   version write of the change's own database transaction (the pipeline
//!   calls it), so a change is never committed without its record;
//! * for reads and refused requests, [`AuditSink::record`] writes the
//!   AuditEvent before the answer is sent; concurrent records are committed
//!   together (group commit: one transaction for everything queued), and
//!   the caller learns whether its record is durable — if not, the request
//!   fails.
//!
//! Invariant: [`AuditSink::record`] returns `Ok` only after the transaction
//! holding that record has committed.

use super::PipelineError;
use crate::auth::audit::{audit_event, patients_of, AccessRecord};
use crate::fhir::{datetime, json, IssueType, OperationOutcome};
use crate::services::Services;
use crate::store::{StoreError, VersionWrite, WriteMethod};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// The AuditEvent of `rec` as a version write (new id, version 1).
pub fn audit_write(services: &Services, rec: &AccessRecord, now: i64) -> Result<VersionWrite, PipelineError> {
    let recorded = datetime::format_instant(now);
    let mut ae = audit_event(rec, &recorded);
    let id = uuid::Uuid::new_v4().to_string();
    if let Some(obj) = ae.as_object_mut() {
        json::set_server_fields(obj, &id, 1, &recorded);
    }
    let index = services.registry.index("AuditEvent", &ae);
    let body = serde_json::to_vec(&ae)
        .map_err(|e| PipelineError::BadRequest(OperationOutcome::error(IssueType::Exception, format!("audit record: {e}"))))?;
    Ok(VersionWrite { rtype: "AuditEvent".into(), id, version: 1, last_updated: now, method: WriteMethod::Post, body: Some(Bytes::from(body)), index })
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

/// Group-committing writer of read/refusal AuditEvents.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Job>,
}

/// Records committed together at most.
const GROUP: usize = 256;

impl AuditSink {
    /// Start the writer task (needs a tokio runtime).
    pub fn start(services: Services) -> AuditSink {
        let (tx, mut rx) = mpsc::channel::<Job>(4096);
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
                for (_, reply) in jobs {
                    let _ = reply.send(result.clone());
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
        let (reply, wait) = oneshot::channel();
        let gone = || PipelineError::Store(StoreError::Backend("audit writer stopped".into()));
        self.tx.send((rec, reply)).await.map_err(|_| gone())?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PipelineError::Store(StoreError::Backend(format!("audit record not written: {e}")))),
            Err(_) => Err(gone()),
        }
    }
}

async fn write_group(services: &Services, jobs: &[Job], now: i64) -> Result<(), String> {
    let mut writes = Vec::with_capacity(jobs.len());
    for (rec, _) in jobs {
        writes.push(audit_write(services, rec, now).map_err(|e| e.to_string())?);
    }
    let mut tx = services.store.begin().await.map_err(|e| e.to_string())?;
    tx.write(writes).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}
