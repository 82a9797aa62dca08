//! The one write pipeline. Every way data comes in — REST create/update/
//! delete, batch/transaction, (later) HL7 v2, CSV/JSON import and
//! `carebridge load` — becomes a list of [`Entry`] values and runs through
//! [`Pipeline::transaction`] or [`Pipeline::batch`]:
//!
//! resolve (ids for creates, `urn:uuid:`/`urn:oid:` fullUrls, conditional
//! create/update/delete, conditional references) → check (shape, types, ids,
//! `If-Match`) → link identities (Patient changes feed the MPI, `identity`)
//! → workflow rules (Task state machine and who may move or delete it; who may edit or delete a CarePlan or CareTeam, `workflow`)
//! → the member's right to change what exists (`auth::filter::may_change`:
//! an update or delete of a stored patient-level resource needs what a read
//! of it needs, without break-glass; what a member creates carries its
//! `meta.source`)
//! → store (one database transaction: versions, history, index, MPI links,
//! subscription outbox rows, `subscription::outbox`) → after commit: wake
//! the subscription delivery worker.
//!
//! Follows FHIR R4 `http.html`: create/update/delete and their conditional
//! forms (§3.1.0.4–3.1.0.7), `If-Match` version-aware updates (§3.1.0.5.1),
//! transaction processing rules (§3.1.0.11.2: DELETE, then POST, then
//! PUT/PATCH, then GET/HEAD; fullUrl resolution; overlapping identities fail
//! the transaction), batch (entries independent).
//!
//! Invariant: a transaction is written entirely or not at all — any entry's
//! error rolls back the whole database transaction.
//! Invariant: stored bytes are the member's JSON (key order, unknown
//! elements, decimal text) plus server-set `id`, `meta.versionId`,
//! `meta.lastUpdated`; no typed model round-trip.

pub mod audit;
mod resolve;

use crate::fhir::{datetime, is_valid_id, json, IssueType, OperationOutcome};
use crate::search::params::SearchRequest;
use crate::search::plan;
use crate::search::SearchError;
use crate::services::Services;
use crate::store::{ResourceRow, StoreError, StoreTx, VersionWrite, WriteMethod};
use bytes::Bytes;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Pipeline errors: each carries the OperationOutcome the client sees; the
/// HTTP status for each variant is decided in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{}", .0.first_message())]
    BadRequest(OperationOutcome),
    #[error("{}", .0.first_message())]
    NotFound(OperationOutcome),
    #[error("{}", .0.first_message())]
    Gone(OperationOutcome),
    #[error("{}", .0.first_message())]
    Conflict(OperationOutcome),
    #[error("{}", .0.first_message())]
    PreconditionFailed(OperationOutcome),
    #[error("{}", .0.first_message())]
    Unprocessable(OperationOutcome),
    #[error("{}", .0.first_message())]
    MethodNotAllowed(OperationOutcome),
    #[error("{}", .0.first_message())]
    NotSupported(OperationOutcome),
    /// the caller's role does not allow this change (e.g. a Task transition)
    #[error("{}", .0.first_message())]
    Forbidden(OperationOutcome),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PipelineError {
    pub fn outcome(&self) -> OperationOutcome {
        match self {
            PipelineError::BadRequest(o)
            | PipelineError::NotFound(o)
            | PipelineError::Gone(o)
            | PipelineError::Conflict(o)
            | PipelineError::PreconditionFailed(o)
            | PipelineError::Unprocessable(o)
            | PipelineError::MethodNotAllowed(o)
            | PipelineError::NotSupported(o)
            | PipelineError::Forbidden(o) => o.clone(),
            PipelineError::Store(StoreError::Conflict(m)) => {
                OperationOutcome::error(IssueType::Conflict, format!("concurrent change, retry: {m}"))
            }
            PipelineError::Store(_) => OperationOutcome::error(IssueType::Exception, "internal storage error"),
        }
    }

    /// The same error with its issues located at a bundle entry.
    pub fn in_entry(self, i: usize) -> Self {
        use PipelineError::*;
        match self {
            BadRequest(o) => BadRequest(o.in_entry(i)),
            NotFound(o) => NotFound(o.in_entry(i)),
            Gone(o) => Gone(o.in_entry(i)),
            Conflict(o) => Conflict(o.in_entry(i)),
            PreconditionFailed(o) => PreconditionFailed(o.in_entry(i)),
            Unprocessable(o) => Unprocessable(o.in_entry(i)),
            MethodNotAllowed(o) => MethodNotAllowed(o.in_entry(i)),
            NotSupported(o) => NotSupported(o.in_entry(i)),
            Forbidden(o) => Forbidden(o.in_entry(i)),
            e => e,
        }
    }
}

impl From<crate::identity::IdentityError> for PipelineError {
    fn from(e: crate::identity::IdentityError) -> Self {
        use crate::identity::IdentityError as E;
        match e {
            E::Store(s) => PipelineError::Store(s),
            E::NotFound(m) => PipelineError::NotFound(OperationOutcome::error(IssueType::NotFound, m)),
            E::Invalid(m) => bad(IssueType::Invalid, m),
            E::Conflict(m) => PipelineError::Conflict(OperationOutcome::error(IssueType::Conflict, m)),
        }
    }
}

impl From<SearchError> for PipelineError {
    fn from(e: SearchError) -> Self {
        let code = match e {
            SearchError::Unsupported(_) => IssueType::NotSupported,
            _ => IssueType::Invalid,
        };
        PipelineError::BadRequest(OperationOutcome::error(code, e.to_string()))
    }
}

impl From<crate::subscription::SubscriptionError> for PipelineError {
    fn from(e: crate::subscription::SubscriptionError) -> Self {
        use crate::subscription::SubscriptionError as E;
        match e {
            E::Store(s) => PipelineError::Store(s),
            E::Invalid(m) => PipelineError::Unprocessable(OperationOutcome::error(IssueType::Invalid, m)),
            E::NotFound(m) => PipelineError::NotFound(OperationOutcome::error(IssueType::NotFound, m)),
        }
    }
}

impl From<crate::workflow::WorkflowError> for PipelineError {
    fn from(e: crate::workflow::WorkflowError) -> Self {
        use crate::workflow::WorkflowError as E;
        match e {
            E::Store(s) => PipelineError::Store(s),
            E::Invalid(m) => PipelineError::BadRequest(OperationOutcome::error(IssueType::Invalid, m)),
            E::Transition(m) => PipelineError::Unprocessable(OperationOutcome::error(IssueType::BusinessRule, m)),
            E::Forbidden(m) => PipelineError::Forbidden(OperationOutcome::error(IssueType::Forbidden, m)),
            E::NotFound(m) => PipelineError::NotFound(OperationOutcome::error(IssueType::NotFound, m)),
        }
    }
}

/// `meta.source` of a restricted member's write, whatever the client sent:
/// `urn:carebridge:member:{member}` when it creates the resource, the
/// stored version's (or none) when it updates it — so `meta.source` names
/// the member that created the resource, what the own-records rule of
/// reads and changes (`auth::filter`) relies on.
fn stamp_creator(p: &mut Planned, member: &str) {
    let Some(obj) = p.resource.as_mut().and_then(Value::as_object_mut) else { return };
    let source = match p.current.as_ref().filter(|c| !c.deleted) {
        None => Some(Value::String(format!("{}{member}", crate::auth::filter::MEMBER_SOURCE))),
        Some(cur) => cur
            .body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            .and_then(|v| v.pointer("/meta/source").cloned()),
    };
    match source {
        Some(src) => {
            let meta = obj.entry("meta").or_insert_with(|| Value::Object(Default::default()));
            if let Some(m) = meta.as_object_mut() {
                m.insert("source".into(), src);
            }
        }
        None => {
            if let Some(Value::Object(m)) = obj.get_mut("meta") {
                m.remove("source");
                if m.is_empty() {
                    obj.remove("meta");
                }
            }
        }
    }
}

fn access_error(e: crate::auth::filter::AccessError) -> PipelineError {
    match e {
        crate::auth::filter::AccessError::Denied(m) => PipelineError::Forbidden(OperationOutcome::error(IssueType::Forbidden, m)),
        crate::auth::filter::AccessError::Store(s) => PipelineError::Store(s),
    }
}

pub(crate) fn bad(code: IssueType, msg: impl Into<String>) -> PipelineError {
    PipelineError::BadRequest(OperationOutcome::error(code, msg))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            _ => return None,
        })
    }
    fn order(self) -> u8 {
        match self {
            Method::Delete => 0,
            Method::Post => 1,
            Method::Put | Method::Patch => 2,
            Method::Get | Method::Head => 3,
        }
    }
}

/// One requested change (or read), as in `Bundle.entry.request`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub method: Method,
    /// relative URL: `Patient`, `Patient/1`, `Patient?identifier=…`
    pub url: String,
    pub full_url: Option<String>,
    pub resource: Option<Value>,
    pub if_none_exist: Option<String>,
    pub if_match: Option<String>,
}

/// Entries of a batch/transaction Bundle value as pipeline entries (for
/// sources that build Bundles: `carebridge load`, the v2 translation).
pub fn bundle_entries(b: &Value) -> Result<Vec<Entry>, String> {
    let mut out = vec![];
    for (i, e) in b.get("entry").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let req = e.get("request").ok_or_else(|| format!("entry {i} has no request"))?;
        let method = req.get("method").and_then(Value::as_str).and_then(Method::parse).ok_or_else(|| format!("entry {i}: bad method"))?;
        let s = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_owned);
        out.push(Entry {
            method,
            url: s("url").ok_or_else(|| format!("entry {i}: no url"))?,
            full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_owned),
            resource: e.get("resource").cloned(),
            if_none_exist: s("ifNoneExist"),
            if_match: s("ifMatch"),
        });
    }
    Ok(out)
}

/// The outcome of one entry (Bundle.entry.response + resource).
#[derive(Debug, Clone)]
pub struct EntryResult {
    pub status: u16,
    pub location: Option<String>,
    pub version: Option<i64>,
    pub last_modified: Option<i64>,
    /// stored bytes of the resulting resource (creates, updates, matched conditional creates, reads)
    pub body: Option<Bytes>,
    pub outcome: Option<OperationOutcome>,
    /// the rtype and id written/read, if any
    pub target: Option<(String, String)>,
}

impl EntryResult {
    fn status_only(status: u16) -> Self {
        EntryResult { status, location: None, version: None, last_modified: None, body: None, outcome: None, target: None }
    }
    /// An entry that failed on its own (batch entries, reads after a transaction's writes).
    pub fn failed(e: &PipelineError) -> Self {
        let status = match e {
            PipelineError::BadRequest(_) | PipelineError::NotSupported(_) => 400,
            PipelineError::NotFound(_) => 404,
            PipelineError::Gone(_) => 410,
            PipelineError::Conflict(_) => 409,
            PipelineError::PreconditionFailed(_) => 412,
            PipelineError::Unprocessable(_) => 422,
            PipelineError::MethodNotAllowed(_) => 405,
            PipelineError::Forbidden(_) => 403,
            PipelineError::Store(StoreError::Conflict(_)) => 409,
            PipelineError::Store(_) => 500,
        };
        EntryResult { outcome: Some(e.outcome()), ..EntryResult::status_only(status) }
    }
    fn from_row(status: u16, row: &ResourceRow) -> Self {
        EntryResult {
            status,
            location: Some(format!("{}/{}/_history/{}", row.rtype, row.id, row.version)),
            version: Some(row.version),
            last_modified: Some(row.last_updated),
            body: row.body.clone(),
            outcome: None,
            target: Some((row.rtype.clone(), row.id.clone())),
        }
    }
}

/// Parsed request URL of an entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Type(String),
    Instance(String, String),
    Conditional(String, String),
}

pub fn parse_target(services: &Services, url: &str) -> Result<Target, PipelineError> {
    let url = url.trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(t) = segs.first() else { return Err(bad(IssueType::Invalid, format!("request url '{url}' names no resource type"))) };
    if !services.registry.is_type(t) {
        return Err(PipelineError::NotFound(OperationOutcome::error(IssueType::NotSupported, format!("unknown resource type '{t}'"))));
    }
    match (segs.len(), query) {
        (1, Some(q)) => Ok(Target::Conditional((*t).to_owned(), q.to_owned())),
        (1, None) => Ok(Target::Type((*t).to_owned())),
        (2, None) if is_valid_id(segs[1]) => Ok(Target::Instance((*t).to_owned(), segs[1].to_owned())),
        (2, _) => Err(bad(IssueType::Invalid, format!("'{}' is not a valid resource id", segs[1]))),
        _ => Err(bad(IssueType::NotSupported, format!("request url '{url}' is not supported here"))),
    }
}

/// Parse a conditional query string into a strict search request (unknown
/// parameters are errors: ignoring one would widen the match).
pub fn conditional_request(services: &Services, rtype: &str, query: &str) -> Result<SearchRequest, PipelineError> {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if pairs.is_empty() {
        return Err(bad(IssueType::Invalid, "conditional request without search parameters"));
    }
    let mut req = SearchRequest::parse(&services.registry, rtype, &pairs, true)?;
    req.count = 2;
    req.sort.clear();
    Ok(req)
}

/// Matches of a conditional query inside the transaction (at most 2 returned).
async fn conditional_matches(
    services: &Services,
    tx: &mut Box<dyn StoreTx>,
    rtype: &str,
    query: &str,
) -> Result<Vec<ResourceRow>, PipelineError> {
    let req = conditional_request(services, rtype, query)?;
    tx.lock(&format!("cond:{rtype}?{query}")).await?;
    let sql = plan::page_sql(&req, plan::Page::First)?;
    Ok(tx.query(sql).await?)
}

/// `W/"3"` or `"3"` or `3` → 3
pub fn parse_etag(s: &str) -> Option<i64> {
    s.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPref {
    Minimal,
    Representation,
    OperationOutcome,
}

pub struct Pipeline<'a> {
    pub services: &'a Services,
    /// entries came in a Bundle: locate issues at `Bundle.entry[n]`
    in_bundle: bool,
    /// who asks (REST: the request's caller); None for system sources
    /// (HL7 v2, import, load) that run with the gateway's own authority
    caller: Option<crate::auth::Caller>,
    /// who asked: every transaction then also writes the request's
    /// AuditEvent (IHE BALP) in the same database transaction
    audit: Option<crate::auth::audit::AccessRecord>,
}

/// An entry after identity resolution.
struct Planned {
    index: usize,
    method: Method,
    rtype: String,
    /// resolved id (None: nothing to do, e.g. conditional delete with no match)
    id: Option<String>,
    /// row current at resolution time
    current: Option<ResourceRow>,
    /// conditional create matched an existing resource
    matched: bool,
    resource: Option<Value>,
    if_match: Option<i64>,
}

impl<'a> Pipeline<'a> {
    /// A pipeline for Bundles (issues are located at their entry).
    pub fn new(services: &'a Services) -> Self {
        Pipeline { services, in_bundle: true, caller: None, audit: None }
    }

    /// A pipeline for a single REST interaction (no entry locations).
    pub fn single(services: &'a Services) -> Self {
        Pipeline { services, in_bundle: false, caller: None, audit: None }
    }

    /// Run this pipeline's changes on behalf of `caller` (role checks of
    /// workflow transitions; the owner of Subscriptions it creates).
    pub fn by(mut self, caller: &crate::auth::Caller) -> Self {
        self.caller = Some(caller.clone());
        self
    }

    /// Audit every transaction of this pipeline as `record` (data and
    /// patients are filled from what is written), in the same database
    /// transaction as the change.
    pub fn audited(mut self, record: Option<crate::auth::audit::AccessRecord>) -> Self {
        self.audit = record;
        self
    }

    /// The care relationship a restricted member's write gives the member
    /// itself (an Encounter it provides, a CareTeam naming it, a Task it
    /// owns, …) that the version before did not: recorded in the change's
    /// AuditEvent.
    fn establishes_relationship(&self, rtype: &str, new: &Value, prev: Option<&Bytes>, now: i64) -> Option<&'static str> {
        let member = crate::workflow::careplan::restricted_member(self.caller.as_ref())?;
        let kind = crate::auth::relationship::direct(rtype, new, member, now)?;
        let before = prev.and_then(|b| serde_json::from_slice::<Value>(b).ok()).and_then(|v| crate::auth::relationship::direct(rtype, &v, member, now));
        before.is_none().then_some(kind)
    }

    /// Locate an error at entry `i` when processing a Bundle.
    fn at(&self, e: PipelineError, i: usize) -> PipelineError {
        if self.in_bundle {
            e.in_entry(i)
        } else {
            e
        }
    }

    /// Process entries as one FHIR transaction: all or nothing. Errors carry
    /// the entry location. Results are in request order.
    pub async fn transaction(&self, entries: Vec<Entry>) -> Result<Vec<EntryResult>, PipelineError> {
        let n = entries.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| entries[i].method.order());

        // fullUrl uniqueness
        let mut seen = HashSet::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(f) = &e.full_url {
                if !seen.insert(f.as_str()) {
                    return Err(self.at(bad(IssueType::Invalid, format!("duplicate fullUrl '{f}'")), i));
                }
            }
        }

        // Subscriptions: checked against the topics; `requested` becomes `active`
        let mut entries = entries;
        for (i, e) in entries.iter_mut().enumerate() {
            if let (Method::Post | Method::Put, Some(res)) = (e.method, e.resource.as_mut()) {
                if res.get("resourceType").and_then(Value::as_str) == Some("Subscription") {
                    crate::subscription::parse_spec(&self.services.registry, res).map_err(|err| self.at(err.into(), i))?;
                    if res.get("status").and_then(Value::as_str) == Some("requested") {
                        res["status"] = Value::String("active".into());
                    }
                }
            }
        }

        // validate before the transaction takes the store: validity does not
        // depend on the ids the transaction assigns (urn:uuid references are
        // valid references too), and the single SQLite writer stays free meanwhile
        for (i, e) in entries.iter().enumerate() {
            // request-level mistakes (400) come before content validation (422)
            if let (Method::Post | Method::Put, Some(res)) = (e.method, e.resource.as_ref()) {
                let t = match parse_target(self.services, &e.url).map_err(|err| self.at(err, i))? {
                    Target::Type(t) | Target::Instance(t, _) | Target::Conditional(t, _) => t,
                };
                self.check_resource(&t, res).map_err(|err| self.at(err, i))?;
            }
        }
        self.validate(&entries)?;

        let mut tx = self.services.store.begin().await?;
        let now = datetime::now_micros();
        // lock (in a stable order: no deadlocks between transactions) and read
        // the current rows of every resource addressed by id, in one round trip
        let mut keys: Vec<(String, String)> = entries
            .iter()
            .filter(|e| matches!(e.method, Method::Put | Method::Delete))
            .filter_map(|e| match parse_target(self.services, &e.url) {
                Ok(Target::Instance(t, i)) => Some((t, i)),
                _ => None,
            })
            .collect();
        keys.sort();
        keys.dedup();
        for (t, i) in &keys {
            tx.lock(&format!("res:{t}/{i}")).await?;
        }
        let currents: HashMap<(String, String), Option<ResourceRow>> = if keys.is_empty() {
            HashMap::new()
        } else {
            let rows = tx.current_many(&keys).await?;
            keys.into_iter().zip(rows).collect()
        };
        let mut planned: Vec<Planned> = Vec::with_capacity(n);
        let mut ids: HashMap<String, String> = HashMap::new(); // fullUrl → Type/id
        let mut touched: HashSet<(String, String)> = HashSet::new();

        for &i in &order {
            let e = &mut entries[i];
            if matches!(e.method, Method::Get | Method::Head) {
                continue;
            }
            let p = self.resolve_entry(&mut tx, &currents, i, e).await.map_err(|err| self.at(err, i))?;
            if let (Some(id), Some(f)) = (&p.id, &e.full_url) {
                ids.insert(f.clone(), format!("{}/{}", p.rtype, id));
            }
            if let Some(id) = &p.id {
                if !p.matched && !touched.insert((p.rtype.clone(), id.clone())) {
                    return Err(self.at(
                        bad(IssueType::Duplicate, format!("{}/{} is changed by more than one entry of the transaction", p.rtype, id)),
                        i,
                    ));
                }
            }
            planned.push(p);
        }

        // rewrite references (urn:uuid, fullUrls, conditional references)
        for p in &mut planned {
            if let Some(res) = p.resource.as_mut() {
                resolve::rewrite_references(self.services, &mut tx, res, &ids).await.map_err(|e| self.at(e, p.index))?;
            }
        }

        // what a restricted member creates is recorded as its own
        // (meta.source); its updates keep the creator's
        if let Some(member) = crate::workflow::careplan::restricted_member(self.caller.as_ref()) {
            for p in planned.iter_mut().filter(|p| !p.matched) {
                stamp_creator(p, member);
            }
        }
        // workflow rules on the resolved changes (Task state machine and who
        // may move or delete it; who may update or delete a CarePlan or
        // CareTeam), then the member's right to change what exists
        let mut established: Vec<String> = vec![];
        for p in planned.iter().filter(|p| !p.matched) {
            let Some(id) = p.id.as_ref() else { continue };
            let prev = p.current.as_ref().filter(|c| !c.deleted).and_then(|c| c.body.as_ref());
            match (p.resource.as_ref(), prev) {
                (Some(new), _) => {
                    crate::workflow::check_change(tx.as_mut(), &p.rtype, id, prev, new, self.caller.as_ref()).await.map_err(|e| self.at(e.into(), p.index))?;
                    if let Some(kind) = self.establishes_relationship(&p.rtype, new, prev, now) {
                        established.push(format!("{}/{id} ({kind})", p.rtype));
                    }
                }
                (None, Some(prev)) if p.method == Method::Delete => {
                    crate::workflow::check_delete(tx.as_mut(), &p.rtype, id, prev, self.caller.as_ref()).await.map_err(|e| self.at(e.into(), p.index))?;
                }
                _ => {}
            }
            if let (Some(caller), Some(prev)) = (self.caller.as_ref(), prev) {
                crate::auth::filter::may_change(self.services, caller, &p.rtype, id, prev).await.map_err(|e| self.at(access_error(e), p.index))?;
            }
        }
        // the versions before the change, for the subscription topics' %previous
        let previous: HashMap<(String, String), Option<Bytes>> = planned
            .iter()
            .filter_map(|p| {
                let id = p.id.clone()?;
                Some(((p.rtype.clone(), id), p.current.as_ref().filter(|c| !c.deleted).and_then(|c| c.body.clone())))
            })
            .collect();

        let mut results: Vec<Option<EntryResult>> = vec![None; n];
        let mut writes = Vec::new();
        for p in planned {
            let (w, r) = self.prepare_write(p, now).map_err(|(e, i)| self.at(e, i))?;
            if let Some(w) = w {
                writes.push(w);
            }
            results[r.0] = Some(r.1);
        }
        // link identities: Patient changes feed the MPI, in this same transaction
        let patient_changes: Vec<crate::identity::PatientChange> = writes
            .iter()
            .filter(|w| w.rtype == "Patient")
            .map(|w| (w.id.clone(), w.body.as_ref().and_then(|b| serde_json::from_slice(b).ok())))
            .collect();
        let changes: Vec<crate::subscription::outbox::Change> = writes
            .iter()
            .map(|w| crate::subscription::outbox::Change {
                rtype: w.rtype.clone(),
                id: w.id.clone(),
                version: w.version,
                method: w.method,
                previous: previous.get(&(w.rtype.clone(), w.id.clone())).cloned().flatten(),
                current: w.body.clone(),
            })
            .collect();
        if let Some(rec) = &self.audit {
            let status = results.iter().flatten().map(|r| r.status).max().unwrap_or(200);
            let mut rec = rec.clone();
            rec.relationships = established;
            let w = audit::change_record(self.services, &rec, &writes, status, now)?;
            writes.push(w);
        }
        // anything but audit records may change what the read filter derives
        let changes_facts = !changes.is_empty() || !patient_changes.is_empty();
        if !writes.is_empty() {
            tx.write(writes).await?;
        }
        crate::identity::link_patients(self.services, tx.as_mut(), &patient_changes, now).await?;
        // subscription outbox rows: in this same transaction as the change
        let events = crate::subscription::outbox::record(self.services, tx.as_mut(), &changes, self.caller.as_ref(), now).await?;
        tx.commit().await?;
        if changes_facts {
            self.services.facts.bump();
        }
        if events > 0 {
            crate::subscription::deliver::wake();
        }

        // GET/HEAD entries are processed last, after the writes
        for &i in &order {
            let e = &entries[i];
            if matches!(e.method, Method::Get | Method::Head) {
                // the writes are committed: a failing read is reported in its entry, not as a failed transaction
                results[i] = Some(match self.read_entry(e).await {
                    Ok(r) => r,
                    Err(err) => EntryResult::failed(&self.at(err, i)),
                });
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or_else(|| EntryResult::status_only(200))).collect())
    }

    /// Run a manual MPI operation (link, unlink, resolve a review) as one
    /// transaction; returns what was done.
    pub async fn identity(&self, op: &crate::identity::ManualOp) -> Result<String, PipelineError> {
        let mut tx = self.services.store.begin().await?;
        let now = datetime::now_micros();
        let msg = crate::identity::manual(self.services, tx.as_mut(), op, now).await?;
        if let Some(rec) = &self.audit {
            tx.write(vec![audit::change_record(self.services, rec, &[], 200, now)?]).await?;
        }
        tx.commit().await?;
        self.services.facts.bump(); // links decide whose records are one person's
        Ok(msg)
    }

    /// Process entries independently (batch): each entry is its own transaction.
    pub async fn batch(&self, entries: Vec<Entry>) -> Vec<Result<EntryResult, PipelineError>> {
        let full_urls: HashSet<String> = entries.iter().filter_map(|e| e.full_url.clone()).collect();
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            if let Some(res) = &e.resource {
                if let Some(r) = resolve::find_reference_to(res, &full_urls) {
                    out.push(Err(bad(
                        IssueType::Invalid,
                        format!("batch entries cannot reference each other (reference '{r}')"),
                    )
                    .in_entry(i)));
                    continue;
                }
            }
            let r = if matches!(e.method, Method::Get | Method::Head) {
                self.read_entry(&e).await
            } else {
                let mut e = e;
                e.full_url = None;
                Pipeline { services: self.services, in_bundle: false, caller: self.caller.clone(), audit: self.audit.clone() }.transaction(vec![e]).await.map(|mut v| v.remove(0))
            };
            out.push(r.map_err(|err| err.in_entry(i)));
        }
        out
    }

    /// Validate every resource to be written; in enforce mode any error fails
    /// the whole request with 422 and every issue, located at its entry.
    fn validate(&self, entries: &[Entry]) -> Result<(), PipelineError> {
        use crate::services::ValidationMode;
        if self.services.validation == ValidationMode::Off {
            return Ok(());
        }
        let mut all = OperationOutcome::new();
        for (i, e) in entries.iter().enumerate() {
            if !matches!(e.method, Method::Post | Method::Put) {
                continue;
            }
            let Some(res) = e.resource.as_ref() else { continue };
            // core + the loaded packs' mandatory profiles + meta.profile
            let rt = res.get("resourceType").and_then(serde_json::Value::as_str).unwrap_or("");
            let mandatory = self.services.policy.mandatory(rt, crate::validate::packs::Member::default());
            let mut oo = self.services.validator.validate_with_profiles(res, &mandatory);
            oo.issues.retain(|i| i.severity <= crate::fhir::Severity::Error);
            if oo.issues.is_empty() {
                continue;
            }
            let oo = if self.in_bundle { oo.in_entry(i) } else { oo };
            all.issues.extend(oo.issues);
        }
        if all.issues.is_empty() {
            return Ok(());
        }
        match self.services.validation {
            ValidationMode::Enforce => Err(PipelineError::Unprocessable(all)),
            _ => {
                // warn-only: stored anyway; operators see the issue count (never patient data) in the log
                tracing::warn!(issues = all.issues.len(), "stored resources with validation errors (warn mode)");
                Ok(())
            }
        }
    }

    /// Structural checks of a resource body for a type.
    fn check_resource(&self, rtype: &str, res: &Value) -> Result<(), PipelineError> {
        let Some(obj) = res.as_object() else {
            return Err(bad(IssueType::Structure, "resource must be a JSON object"));
        };
        match json::resource_type(res) {
            Some(t) if t == rtype => {}
            Some(t) => {
                return Err(bad(IssueType::Invalid, format!("resourceType '{t}' does not match the request's type '{rtype}'")))
            }
            None => return Err(bad(IssueType::Required, "resource has no resourceType")),
        }
        if let Some(id) = obj.get("id") {
            match id.as_str() {
                Some(s) if is_valid_id(s) => {}
                _ => return Err(bad(IssueType::Value, "resource id is not a valid FHIR id").map_outcome_expr(&format!("{rtype}.id"))),
            }
        }
        if let Some(meta) = obj.get("meta") {
            if !meta.is_object() {
                return Err(bad(IssueType::Structure, "meta must be an object").map_outcome_expr(&format!("{rtype}.meta")));
            }
        }
        Ok(())
    }

    async fn resolve_entry(
        &self,
        tx: &mut Box<dyn StoreTx>,
        currents: &HashMap<(String, String), Option<ResourceRow>>,
        index: usize,
        e: &mut Entry,
    ) -> Result<Planned, PipelineError> {
        let target = parse_target(self.services, &e.url)?;
        let if_match = match &e.if_match {
            Some(s) => Some(parse_etag(s).ok_or_else(|| bad(IssueType::Invalid, format!("If-Match '{s}' is not a version ETag")))?),
            None => None,
        };
        let mut p = Planned {
            index,
            method: e.method,
            rtype: String::new(),
            id: None,
            current: None,
            matched: false,
            resource: e.resource.take(),
            if_match,
        };
        match (e.method, target) {
            (Method::Post, Target::Type(t)) => {
                let res = p.resource.as_ref().ok_or_else(|| bad(IssueType::Required, "POST needs a resource"))?;
                self.check_resource(&t, res)?;
                if let Some(q) = &e.if_none_exist {
                    let q = q.trim_start_matches('?');
                    let q = q.strip_prefix(&format!("{t}?")).unwrap_or(q).to_owned();
                    let m = conditional_matches(self.services, tx, &t, &q).await?;
                    match m.len() {
                        0 => {}
                        1 => {
                            p.id = Some(m[0].id.clone());
                            p.current = m.into_iter().next();
                            p.matched = true;
                        }
                        _ => {
                            return Err(PipelineError::PreconditionFailed(OperationOutcome::error(
                                IssueType::MultipleMatches,
                                format!("If-None-Exist '{q}' matches more than one {t}"),
                            )))
                        }
                    }
                }
                if p.id.is_none() {
                    p.id = Some(uuid::Uuid::new_v4().to_string());
                }
                p.rtype = t;
            }
            (Method::Put, Target::Instance(t, id)) => {
                let res = p.resource.as_ref().ok_or_else(|| bad(IssueType::Required, "PUT needs a resource"))?;
                self.check_resource(&t, res)?;
                match res.get("id").and_then(Value::as_str) {
                    Some(rid) if rid == id => {}
                    Some(rid) => {
                        return Err(bad(IssueType::Invalid, format!("resource id '{rid}' does not match the URL id '{id}'")))
                    }
                    None => return Err(bad(IssueType::Required, "PUT resource must carry the id of the URL")),
                }
                p.current = match currents.get(&(t.clone(), id.clone())) {
                    Some(c) => c.clone(),
                    None => tx.current(&t, &id).await?,
                };
                p.id = Some(id);
                p.rtype = t;
            }
            (Method::Put, Target::Conditional(t, q)) => {
                let res = p.resource.as_ref().ok_or_else(|| bad(IssueType::Required, "PUT needs a resource"))?;
                self.check_resource(&t, res)?;
                let m = conditional_matches(self.services, tx, &t, &q).await?;
                let body_id = res.get("id").and_then(Value::as_str).map(str::to_owned);
                match m.len() {
                    0 => {
                        let id = body_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                        p.current = tx.current(&t, &id).await?;
                        p.id = Some(id);
                    }
                    1 => {
                        if let Some(b) = body_id {
                            if b != m[0].id {
                                return Err(bad(IssueType::Invalid, format!("resource id '{b}' differs from the matched {t}/{}", m[0].id)));
                            }
                        }
                        p.id = Some(m[0].id.clone());
                        p.current = m.into_iter().next();
                    }
                    _ => {
                        return Err(PipelineError::PreconditionFailed(OperationOutcome::error(
                            IssueType::MultipleMatches,
                            format!("conditional update '{q}' matches more than one {t}"),
                        )))
                    }
                }
                p.rtype = t;
            }
            (Method::Delete, Target::Instance(t, id)) => {
                p.current = match currents.get(&(t.clone(), id.clone())) {
                    Some(c) => c.clone(),
                    None => tx.current(&t, &id).await?,
                };
                p.id = Some(id);
                p.rtype = t;
            }
            (Method::Delete, Target::Conditional(t, q)) => {
                let m = conditional_matches(self.services, tx, &t, &q).await?;
                match m.len() {
                    0 => {}
                    1 => {
                        p.id = Some(m[0].id.clone());
                        p.current = m.into_iter().next();
                    }
                    _ => {
                        return Err(PipelineError::PreconditionFailed(OperationOutcome::error(
                            IssueType::MultipleMatches,
                            format!("conditional delete '{q}' matches more than one {t}"),
                        )))
                    }
                }
                p.rtype = t;
            }
            (Method::Patch, _) => {
                return Err(PipelineError::NotSupported(OperationOutcome::error(IssueType::NotSupported, "PATCH is not supported")))
            }
            (m, t) => {
                return Err(PipelineError::MethodNotAllowed(OperationOutcome::error(
                    IssueType::NotSupported,
                    format!("{m:?} is not allowed on {t:?}"),
                )))
            }
        }
        Ok(p)
    }

    /// Turn a planned entry into a version write and its result.
    #[allow(clippy::type_complexity)]
    fn prepare_write(
        &self,
        p: Planned,
        now: i64,
    ) -> Result<(Option<VersionWrite>, (usize, EntryResult)), (PipelineError, usize)> {
        let i = p.index;
        let cur_live = p.current.as_ref().filter(|c| !c.deleted);
        if let Some(want) = p.if_match {
            let have = cur_live.map(|c| c.version);
            if have != Some(want) {
                return Err((
                    PipelineError::PreconditionFailed(OperationOutcome::error(
                        IssueType::Conflict,
                        format!(
                            "If-Match W/\"{want}\" does not match the current version {}",
                            have.map(|v| format!("W/\"{v}\"")).unwrap_or_else(|| "(none)".into())
                        ),
                    )),
                    i,
                ));
            }
        }
        match p.method {
            Method::Delete => {
                let (Some(id), Some(cur)) = (p.id, cur_live) else {
                    return Ok((None, (i, EntryResult::status_only(204))));
                };
                let version = cur.version + 1;
                let w = VersionWrite {
                    rtype: p.rtype.clone(),
                    id: id.clone(),
                    version,
                    last_updated: now,
                    method: WriteMethod::Delete,
                    body: None,
                    index: vec![],
                };
                let mut r = EntryResult::status_only(204);
                r.version = Some(version);
                r.target = Some((p.rtype, id));
                Ok((Some(w), (i, r)))
            }
            Method::Post if p.matched => {
                let cur = p.current.as_ref().expect("matched row");
                Ok((None, (i, EntryResult::from_row(200, cur))))
            }
            Method::Put if cur_live.is_some_and(|c| same_content(c, p.resource.as_ref())) => {
                // no-op update: identical content makes no new version (idempotent re-delivery)
                let cur = cur_live.expect("checked");
                Ok((None, (i, EntryResult::from_row(200, cur))))
            }
            Method::Post | Method::Put => {
                let id = p.id.clone().expect("resolved id");
                let mut res = p.resource.expect("resource");
                let version = p.current.as_ref().map(|c| c.version + 1).unwrap_or(1);
                let status = if cur_live.is_some() { 200 } else { 201 };
                let obj = res.as_object_mut().expect("checked object");
                json::set_server_fields(obj, &id, version, &datetime::format_instant(now));
                let index = self.services.registry.index(&p.rtype, &res);
                let body = Bytes::from(serde_json::to_vec(&res).map_err(|e| (bad(IssueType::Exception, e.to_string()), i))?);
                let method = if p.method == Method::Post { WriteMethod::Post } else { WriteMethod::Put };
                let w = VersionWrite {
                    rtype: p.rtype.clone(),
                    id: id.clone(),
                    version,
                    last_updated: now,
                    method,
                    body: Some(body.clone()),
                    index,
                };
                let r = EntryResult {
                    status,
                    location: Some(format!("{}/{}/_history/{}", p.rtype, id, version)),
                    version: Some(version),
                    last_modified: Some(now),
                    body: Some(body),
                    outcome: None,
                    target: Some((p.rtype, id)),
                };
                Ok((Some(w), (i, r)))
            }
            _ => Ok((None, (i, EntryResult::status_only(200)))),
        }
    }

    /// GET/HEAD entry of a batch/transaction: read or search.
    async fn read_entry(&self, e: &Entry) -> Result<EntryResult, PipelineError> {
        match parse_target(self.services, &e.url)? {
            Target::Instance(t, id) => {
                let row = self.services.store.read(&t, &id).await?;
                match row {
                    Some(r) if !r.deleted => Ok(EntryResult::from_row(200, &r)),
                    Some(_) => Err(PipelineError::Gone(OperationOutcome::error(IssueType::Deleted, format!("{t}/{id} was deleted")))),
                    None => Err(PipelineError::NotFound(OperationOutcome::error(IssueType::NotFound, format!("{t}/{id} not found")))),
                }
            }
            Target::Type(_) | Target::Conditional(..) => {
                Err(PipelineError::NotSupported(OperationOutcome::error(IssueType::NotSupported, "search inside a batch/transaction is served by GET entries only for reads by id")))
            }
        }
    }
}

/// Does `new` carry the same content as the stored row (ignoring the server-set
/// `meta.versionId` / `meta.lastUpdated`)?
fn same_content(current: &ResourceRow, new: Option<&Value>) -> bool {
    let (Some(body), Some(new)) = (&current.body, new) else { return false };
    let Ok(mut cur) = serde_json::from_slice::<Value>(body) else { return false };
    let mut new = new.clone();
    if let Some(m) = new.as_object_mut() {
        m.insert("id".into(), Value::String(current.id.clone()));
    }
    strip_server_meta(&mut cur);
    strip_server_meta(&mut new);
    cur == new
}

fn strip_server_meta(v: &mut Value) {
    if let Some(Value::Object(meta)) = v.get_mut("meta") {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            v.as_object_mut().map(|m| m.remove("meta"));
        }
    }
}

trait MapExpr {
    fn map_outcome_expr(self, expr: &str) -> Self;
}

impl MapExpr for PipelineError {
    fn map_outcome_expr(self, expr: &str) -> Self {
        match self {
            PipelineError::BadRequest(o) => PipelineError::BadRequest(o.with_expression(expr)),
            e => e,
        }
    }
}
